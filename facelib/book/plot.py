"""Plots: quick static pictures of face meshes with matplotlib (no renderer needed).

A painter's-algorithm preview: triangles sorted back to front, flat Lambertian shading with an
ambient term.  It is for looking at the model (``facelib model preview``), not for training; the
differentiable renderer lives in :mod:`facelib.render`.
"""

from __future__ import annotations

import io

import numpy as np

from .._atomic import atomic_write_bytes


def _rot(yaw_deg=0.0, pitch_deg=0.0):
    """Rot_xyz of InverseFaceNet Sec. 4.2 for a pitch (about x) and a yaw (about y), numpy (3, 3)."""
    import torch

    from ..model.params import rot_xyz

    ang = torch.tensor([[np.deg2rad(pitch_deg), np.deg2rad(yaw_deg), 0.0]], dtype=torch.float64)
    return rot_xyz(ang)[0].numpy()


def draw_mesh(ax, P, tris, colors, yaw=0.0, pitch=0.0, light=(0.3, 0.5, 1.0), ambient=0.35,
              landmarks=None, title=None):
    """Draw mesh ``P`` (V, 3) mm with triangles (T, 3) and per-vertex ``colors`` (V, 3) on ``ax``.

    Orthographic view along -z after rotating by ``yaw`` / ``pitch`` degrees; back faces culled.
    """
    from matplotlib.collections import PolyCollection

    P = np.asarray(P, float) @ _rot(yaw, pitch).T
    tris = np.asarray(tris)
    a, b, c = P[tris[:, 0]], P[tris[:, 1]], P[tris[:, 2]]
    n = np.cross(b - a, c - a)
    area = np.linalg.norm(n, axis=1)
    keep = (n[:, 2] > 0) & (area > 1e-9)
    n = n[keep] / area[keep, None]
    t = tris[keep]
    l = np.asarray(light, float) / np.linalg.norm(light)
    shade = ambient + (1 - ambient) * np.clip(n @ l, 0, None)
    col = np.asarray(colors, float)[t].mean(1) * shade[:, None]
    order = np.argsort(P[t].mean(1)[:, 2])
    polys = P[t[order]][:, :, :2]
    pc = PolyCollection(polys, facecolors=np.clip(col[order], 0, 1), edgecolors="none", antialiased=False)
    ax.add_collection(pc)
    if landmarks is not None:
        L = P[np.asarray(landmarks)]
        ax.scatter(L[:, 0], L[:, 1], s=6, c="lime", zorder=3)
    ax.set_xlim(P[:, 0].min() - 5, P[:, 0].max() + 5)
    ax.set_ylim(P[:, 1].min() - 5, P[:, 1].max() + 5)
    ax.set_aspect("equal")
    ax.set_xlabel("x [mm]")
    ax.set_ylabel("y [mm]")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def model_preview(model, path, yaw=0.0, components=(0,), show_landmarks=False):
    """Figure: the mean face and +-3 sigma along the first shape, expression and reflectance components.

    Rows: shape, expression, reflectance; columns: -3 sigma, mean, +3 sigma (and a side view).  A row
    whose basis has no component (an OBJ-folder model has no reflectance basis, a Basel Face Model
    without ``expPC`` no expression basis) shows the mean face and says so; ``show_landmarks`` marks
    the landmarks where the model has them.  Saved to ``path`` (PNG, written atomically; the folders are
    created).  Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = model if model.device.type == "cpu" else model.to("cpu")
    tris = model.triangles.numpy()
    landmarks = model.landmarks.numpy() if (show_landmarks and model.landmarks is not None) else None
    k = components[0]
    fig, axes = plt.subplots(3, 4, figsize=(13, 12))
    for r, label in enumerate(("shape", "expression", "reflectance")):
        n = {"shape": model.n_shape, "expression": model.n_expression, "reflectance": model.n_reflectance}[label]
        for cidx, s in enumerate([-3.0, 0.0, 3.0, 3.0]):
            s = s if k < n else 0.0
            P, C = _preview_face(model, label, k, s)
            side = " (side)" if cidx == 3 else ""
            title = (f"{label} component {k + 1}: {s:+.0f} sigma" if k < n
                     else f"mean ({label}: {n} components)") + side
            draw_mesh(axes[r, cidx], P, tris, C, yaw=55.0 if cidx == 3 else yaw,
                      landmarks=landmarks if cidx == 1 else None, title=title)
    fig.suptitle(f"face model '{model.name}': mean and +-3 sigma along the first components")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())  # no half-written file, errors name the path


def _preview_face(model, label: str, k: int, s: float):
    """Vertices ``(V, 3)`` mm and albedo ``(V, 3)`` with component ``k`` of ``label`` at ``s`` sigma
    (Eq. 2-3; the mean face when ``s`` is 0)."""
    import torch

    theta = {"shape": torch.zeros(1, model.n_shape), "expression": torch.zeros(1, model.n_expression),
             "reflectance": torch.zeros(1, model.n_reflectance)}
    if s:
        theta[label][0, k] = s
    with torch.no_grad():
        return (model.geometry(theta["shape"], theta["expression"])[0].numpy(),
                model.reflectance(theta["reflectance"])[0].numpy())
