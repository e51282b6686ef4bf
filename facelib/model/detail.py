"""Model: fine facial detail the 3DMM cannot express (Richardson et al. 2017, Sec. 4 and Table 1).

Richardson et al. evaluate FineNet on faces with wrinkles, creases and dimples that no linear
morphable model spans.  Our open model has none either (see :mod:`facelib.model.open_model`), so this module
*adds* them: a per-vertex displacement ``d (B, V)`` in millimetres along the vertex normal,

    x_detailed = x + d n(x)                               (:func:`apply_detail`)

made of

* forehead wrinkles: 2-5 horizontal grooves above the brows, gently curved and wavy;
* glabellar (frown) lines: 0-2 short vertical grooves between the brows;
* nasolabial folds: a crease from each nose wing down past the mouth corner;
* crow's feet: 3-4 short grooves fanning out from each outer eye corner;
* dimples: with probability 1/2, a round pit on each cheek beside the mouth corner;
* a smooth random field (a sum of random plane waves, wavelengths 8-20 mm) for uneven skin.

The features are placed relative to the 68 landmarks on the model's mean shape (x right, y up, z
towards the viewer, mm), so the displacement is in dense correspondence and applies to any identity
and expression of the model.  It is restricted to ``model.masks["skin"]`` (else ``"face"``) and
tapered to zero at the mask's border; ``|d| <= amplitude_mm`` everywhere.  Each sample ``b`` draws its
features from ``numpy.random.default_rng([seed, b])``, so a batch's first rows do not depend on the
batch size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..render.shading import vertex_normals

__all__ = ["detail_displacement", "apply_detail", "detail_mask"]

_FIELD_WEIGHT = 0.15  # share of the amplitude given to the smooth random field
_TAPER_RINGS = 4  # rings of vertices over which the displacement fades in from the mask border


# ----------------------------------------------------------------------------- geometry helpers
def _polyline_distance(p: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance of points ``p (V, 2)`` to the polyline through ``pts (S, 2)`` -> ``(V,)``."""
    a, b = pts[:-1], pts[1:]  # (S-1, 2) segment ends
    ab = b - a
    t = ((p[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None]
    q = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
    return np.sqrt(((p[:, None] - q) ** 2).sum(-1)).min(axis=1)


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    """Quadratic Bezier through ``p0`` (control ``p1``) to ``p2``: ``(n, 2)`` points."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * t * (1 - t) * np.asarray(p1) + t ** 2 * np.asarray(p2)


def _groove(dist: np.ndarray, width: float) -> np.ndarray:
    """Groove profile in [0, 1]: 1 on the line, a Gaussian of standard deviation ``width`` mm across."""
    return np.exp(-0.5 * (dist / width) ** 2)


def _line_groove(p: np.ndarray, pts: np.ndarray, width: float) -> np.ndarray:
    """:func:`_groove` of the distance to the polyline ``pts (S, 2)`` for ``p (V, 2)``, evaluated only in
    the polyline's box widened by 5 widths (outside it the profile is below 4e-6 and set to 0)."""
    lo, hi = pts.min(0) - 5.0 * width, pts.max(0) + 5.0 * width
    near = np.nonzero(((p >= lo) & (p <= hi)).all(1))[0]
    out = np.zeros(p.shape[0])
    out[near] = _groove(_polyline_distance(p[near], pts), width)
    return out


def detail_mask(model) -> torch.Tensor:
    """``(V,)`` float64 weight in [0, 1]: the skin (else face) mask, 0 on its border vertices (those
    sharing a triangle with a vertex outside) and rising smoothly to 1 over the next rings."""
    name = "skin" if "skin" in model.masks else "face"
    hard = model.masks[name].cpu().numpy()
    faces = model.triangles.cpu().numpy()
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    hops = np.where(hard, np.inf, 0.0)  # mesh-edge distance to the nearest vertex outside the mask
    reached = ~hard
    for k in range(1, _TAPER_RINGS + 2):
        grow = np.zeros_like(reached)
        grow[e[reached[e[:, 1]], 0]] = True
        new = grow & ~reached
        hops[new] = k
        reached |= new
    t = np.clip((hops - 1.0) / _TAPER_RINGS, 0.0, 1.0)
    return torch.from_numpy(t * t * (3.0 - 2.0 * t))  # smoothstep


# ----------------------------------------------------------------------------- the features
def _anchors(model) -> dict:
    """Landmark positions on the mean shape (mm): brows, eye corners, nose wings, mouth corners."""
    if model.landmarks is None:
        raise ValueError(f"model {model.name!r} has no landmarks; detail_displacement places the "
                         "wrinkles relative to the 68 iBUG landmarks")
    L = model.mean_shape[model.landmarks].double().cpu().numpy()
    brow_y = float(L[17:27, 1].mean())
    return dict(
        brow_y=brow_y,
        brow_inner=(L[21, :2] + L[22, :2]) / 2,
        eye_outer=(L[36, :2], L[45, :2]),  # subject's right (-x), left (+x)
        eye_h=float(abs(L[36, 0] - L[39, 0])),  # eye width, the scale of the face
        ala=(L[31, :2], L[35, :2]),
        mouth=(L[48, :2], L[54, :2]),
        nose_bridge=L[27, :2],
    )


def _one_sample(P: np.ndarray, A: dict, rng: np.random.Generator) -> np.ndarray:
    """Unit-amplitude displacement ``(V,)`` for one face (grooves negative, in [-1, 1] before clamp)."""
    xy = P[:, :2]
    x, y = xy[:, 0], xy[:, 1]
    s = A["eye_h"] / 24.0  # our mean eye is ~24 mm wide: scale every length to the model's face
    depth = np.zeros(P.shape[0])  # union of grooves: the deepest one wins (keeps |d| <= 1)

    # forehead wrinkles: horizontal, curved up towards the temples, a little wavy
    n_fh = int(rng.integers(2, 6))
    y0 = A["brow_y"] + s * rng.uniform(9.0, 13.0)
    spacing = s * rng.uniform(6.0, 9.0)
    half = s * rng.uniform(38.0, 55.0)
    for k in range(n_fh):
        yk = y0 + k * spacing + s * rng.normal(0.0, 0.8)
        bend = s * rng.uniform(1.0, 5.0)
        phase, wl = rng.uniform(0, 2 * math.pi), s * rng.uniform(25.0, 45.0)
        line_y = yk + bend * (x / half) ** 2 + s * 0.8 * np.sin(2 * math.pi * x / wl + phase)
        env = np.exp(-((x - s * rng.normal(0.0, 3.0)) / (half * rng.uniform(0.7, 1.0))) ** 4)
        g = _groove(y - line_y, s * rng.uniform(1.4, 2.2)) * env * rng.uniform(0.4, 1.0)
        depth = np.maximum(depth, g)

    # glabellar (frown) lines: short vertical grooves between the brows
    for k in range(int(rng.integers(0, 3))):
        cx = A["brow_inner"][0] + (-1) ** k * s * rng.uniform(3.0, 6.0)
        yb = A["brow_y"] + s * rng.uniform(-6.0, -2.0)
        pts = np.array([[cx, yb], [cx + (-1) ** k * s * rng.uniform(0.0, 2.5), yb + s * rng.uniform(12, 18)]])
        g = _line_groove(xy, pts, s * rng.uniform(1.2, 1.8)) * rng.uniform(0.4, 0.9)
        depth = np.maximum(depth, g)

    # nasolabial folds: nose wing -> past the mouth corner, bowed out over the cheek
    w_nl, d_nl = s * rng.uniform(2.2, 3.5), rng.uniform(0.5, 1.0)
    for side, sign in ((0, -1.0), (1, 1.0)):
        ala, mc = A["ala"][side], A["mouth"][side]
        p0 = ala + np.array([sign * s * 3.0, s * 1.5])
        p2 = mc + np.array([sign * s * rng.uniform(5.0, 9.0), -s * rng.uniform(6.0, 14.0)])
        p1 = (p0 + p2) / 2 + np.array([sign * s * rng.uniform(4.0, 9.0), 0.0])
        g = _line_groove(xy, _bezier(p0, p1, p2), w_nl) * d_nl * rng.uniform(0.85, 1.0)
        depth = np.maximum(depth, g)

    # crow's feet: 3-4 grooves fanning out from each outer eye corner
    for side, sign in ((0, -1.0), (1, 1.0)):
        c = A["eye_outer"][side]
        for ang in np.sort(rng.uniform(-45.0, 40.0, size=int(rng.integers(3, 5)))):
            a = math.radians(ang)
            u = np.array([sign * math.cos(a), math.sin(a)])
            r0, length = s * rng.uniform(4.0, 7.0), s * rng.uniform(9.0, 16.0)
            pts = np.stack([c + r0 * u, c + (r0 + length) * u])
            g = _line_groove(xy, pts, s * rng.uniform(1.1, 1.6)) * rng.uniform(0.3, 0.8)
            depth = np.maximum(depth, g)

    # dimples: a round pit beside each mouth corner, for half of the faces
    if rng.random() < 0.5:
        r = s * rng.uniform(3.0, 5.0)
        for side, sign in ((0, -1.0), (1, 1.0)):
            c = A["mouth"][side] + np.array([sign * s * rng.uniform(9.0, 14.0), -s * rng.uniform(0.0, 6.0)])
            g = _groove(np.sqrt(((xy - c) ** 2).sum(-1)), r) * rng.uniform(0.6, 1.0)
            depth = np.maximum(depth, g)

    # smooth random field: plane waves in 3D (so the sides of the face are not stretched)
    K = 16
    dirs = rng.normal(size=(K, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * math.pi / (s * rng.uniform(8.0, 20.0, size=K))
    field = np.cos((P @ dirs.T) * k + rng.uniform(0, 2 * math.pi, size=K)).sum(1) / math.sqrt(K / 2)
    return np.clip(-depth + _FIELD_WEIGHT * np.tanh(field / 2.0), -1.0, 1.0)


def detail_displacement(model, batch: int, seed: int, amplitude_mm: float = 1.0, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    """Random fine detail: ``(B, V)`` displacements in mm along the vertex normals (negative = groove).

    Wrinkles on the forehead, frown lines, nasolabial folds, crow's feet, dimples and a smooth random
    field, restricted to the skin mask (exactly 0 outside it) with ``|d| <= amplitude_mm``.
    Deterministic for ``seed``; sample ``b`` depends only on ``(seed, b)``.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int; got {batch!r}")
    if not (isinstance(amplitude_mm, (int, float)) and math.isfinite(amplitude_mm) and amplitude_mm >= 0):
        raise ValueError(f"amplitude_mm must be a finite number >= 0; got {amplitude_mm!r}")
    A = _anchors(model)
    P = model.mean_shape.double().cpu().numpy()
    w = detail_mask(model).numpy()
    inside = w > 0
    out = np.zeros((batch, P.shape[0]))
    for b in range(batch):
        rng = np.random.default_rng([int(seed), b])
        out[b, inside] = _one_sample(P[inside], A, rng) * w[inside]
    d = torch.from_numpy(out * float(amplitude_mm))
    return d.to(device=device if device is not None else model.device, dtype=dtype)


def apply_detail(verts: torch.Tensor, faces: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """``x + d n(x)``: ``verts (B, V, 3)`` mm, ``faces (F, 3)``, ``displacement (B, V)`` mm -> ``(B, V, 3)``.

    The normals are the area-weighted vertex normals of the undisplaced mesh
    (:func:`facelib.render.shading.vertex_normals`); differentiable in ``verts`` and ``displacement``.
    """
    if not isinstance(displacement, torch.Tensor) or not isinstance(verts, torch.Tensor) \
            or displacement.ndim != 2 or verts.ndim != 3 or displacement.shape != verts.shape[:2]:
        got = tuple(displacement.shape) if isinstance(displacement, torch.Tensor) else type(displacement).__name__
        want = tuple(verts.shape[:2]) if isinstance(verts, torch.Tensor) else "(B, V)"
        raise ValueError(f"displacement has shape {got}; expected {want} (one value per vertex)")
    n = vertex_normals(verts, faces)
    return verts + displacement.to(verts.dtype).unsqueeze(-1) * n
