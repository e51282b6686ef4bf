"""Evaluation on a real photo: reconstruct the face of one photo and write it as files (``facelib
reconstruct``).

:func:`reconstruct_photo` reads the photo (:func:`facelib.data.photos.read_photo`), finds the 68 landmarks of
the largest face (:func:`facelib.data.photos.detect_landmarks`), crops the square around them
(:func:`facelib.data.photos.landmark_crop`) and fits the face model to the crop (:func:`facelib.fit.fit`);
the result is then drawn back into the photo's own frame (the crop camera scaled and moved to the
photo).  :func:`write_reconstruction` writes ``mesh.obj`` and ``mesh.ply`` (model space, mm, the fitted
albedo as vertex colours), ``albedo.png`` (the unlit albedo in the photo's view), ``overlay.png`` (the
photo | the reconstruction over it | the reconstruction alone) and ``params.json``.  Everything is
computed before the first file is written, and each file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .render.camera import Camera

__all__ = ["METHODS", "reconstruct_photo", "write_reconstruction", "photo_camera", "paste_crop", "face_panels"]

METHODS = ("fit", "inversefacenet", "mofa", "coarse")
NETWORK_METHODS = {"inversefacenet": "inversefacenet", "mofa": "mofa", "coarse": "coarsenet"}  # method -> facelib.networks name
OUTPUTS = ("mesh.obj", "mesh.ply", "albedo.png", "overlay.png", "params.json")


def photo_camera(crop_camera: Camera, box: torch.Tensor, crop_size: int, photo_hw: tuple) -> Camera:
    """The crop's camera re-expressed in the photo's pixels: a crop pixel ``u_c`` is the photo pixel
    ``(u_c - N/2) side / N + centre`` for ``box (1, 3)`` = (centre x, centre y, side), so the focal
    length scales by ``side / N`` and the principal point moves to the box centre."""
    cx, cy, side = (float(v) for v in box.reshape(3))
    k = side / crop_size
    pcx = (crop_camera.principal_point[0] - crop_size / 2) * k + cx
    pcy = (crop_camera.principal_point[1] - crop_size / 2) * k + cy
    return crop_camera._replace(focal=crop_camera.focal * k, principal_point=(pcx, pcy),
                                image_size=tuple(photo_hw))


def reconstruct_photo(path, method: str = "fit", size: int = 128, iters: tuple = (200, 80),
                      model="open", seed: int = 0, progress: bool = True, profile: str | None = None) -> dict:
    """Reconstruct the largest face in the photo at ``path``.

    ``method``: ``"fit"`` (analysis by synthesis, :func:`facelib.fit.fit`, ``iters`` its two stages,
    on a ``size``-pixel crop), ``"inversefacenet"``, ``"mofa"`` or ``"coarse"`` (CoarseNet; the network ``make book`` trained,
    :func:`facelib.networks.load_network`, of ``profile``: None takes the largest on disk; ``size`` and
    ``iters`` are then the network's own).  ``model``: a name or path for :func:`facelib.load_model`, or
    a :class:`facelib.FaceModel`.

    Returns a dict: ``rgb (H, W, 3)`` uint8 (the photo as read, after any downscale), ``notes`` (what was
    converted, and other faces ignored), ``model``, ``theta (1, m)`` and ``layout``
    (:func:`facelib.fit.fit_layout`), ``verts``, ``albedo``, ``faces``, ``overlay (H, 3W, 3)`` and
    ``albedo_image (H, W, 3)`` float in [0, 1], ``landmarks`` (detected) and ``landmarks_fit``
    (projected model landmarks), both ``(68, 2)`` photo pixels, and ``params`` (the JSON content).
    Raises ValueError (bad photo, no face, unknown method), OSError (file cannot be opened),
    ImportError (the landmark detector is not installed).
    """
    from . import FaceModel, load_model
    from .fit import fit, render_fit
    from .model.params import unlit
    from .data.photos import detect_landmarks, landmark_crop, read_photo
    from .render import face_camera

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    m = model if isinstance(model, FaceModel) else load_model(model)
    trained = None
    if method in NETWORK_METHODS:  # before the photo is read: a missing network is reported at once
        from .networks import load_network

        trained = load_network(NETWORK_METHODS[method], model=m, profile=profile)
    rgb, notes = read_photo(path)
    det = detect_landmarks(rgb)
    if det.n_faces > 1:
        notes.append(f"{det.n_faces} faces found; reconstructing the largest")
    if trained is not None:
        return _reconstruct_network(trained, rgb, det, notes, path, method)
    crop = landmark_crop(rgb, det.points, size)
    # the photometric term only where the photo surely shows the face (inside the landmarks' outline):
    # elsewhere hair, a hat or the background would pull the face's outline and albedo towards them
    res = fit(m, crop["image"], crop["landmarks"], iters=tuple(iters), mask=crop["face_mask"], seed=seed,
              progress=progress)
    lay, theta = res.layout, res.theta
    p = lay.unpack(theta)
    H, W = rgb.shape[:2]
    cam = photo_camera(face_camera(size), crop["box"], size, (H, W))
    with torch.no_grad():
        r = render_fit(m, theta, (H, W), cam, background=1.0, outputs=("screen",))
        a = render_fit(m, unlit(theta, lay), (H, W), cam, background=1.0)
        verts = m.geometry(p["shape"], p["expression"])[0]
        albedo = m.reflectance(p["reflectance"])[0].clamp(0, 1)
    photo = torch.from_numpy(np.array(rgb)).float() / 255.0  # (H, W, 3)
    shaded = r.image[0].permute(1, 2, 0).clamp(0, 1)
    over = torch.where(r.mask[0, ..., None], shaded, photo)
    overlay = torch.cat([photo, over, shaded], dim=1).numpy()
    lm_fit = r.screen[0, m.landmarks, :2]
    err = (lm_fit - det.points).norm(dim=-1)
    params = {
        "method": method, "model": m.name, "photo": str(path), "photo_size": [W, H], "notes": notes,
        "faces_found": det.n_faces, "face_box": list(det.box),
        "crop": {"centre": [float(crop["box"][0, 0]), float(crop["box"][0, 1])], "side": float(crop["box"][0, 2]),
                 "size": size},
        "camera": {"focal_px": cam.focal, "principal_point_px": list(cam.principal_point),
                   "R": cam.R.tolist(), "t_mm": (cam.t + p["translation"][0]).tolist()},
        "fit": {"iters": list(iters), "seed": seed, "seconds": round(res.seconds, 2),
                "energy_final": float(res.energy[-1, 0]) if len(res.energy) else None},
        "landmark_error_px": {"all_68": float(err.mean()), "inner_51": float(err[17:].mean())},
        "landmarks_detected_px": det.points.tolist(), "landmarks_fit_px": lm_fit.tolist(),
        "layout": [[n, k] for n, k in lay.entries],
        "theta": {n: v[0].tolist() for n, v in p.items()},
    }
    return {"rgb": rgb, "notes": notes, "model": m, "theta": theta, "layout": lay, "verts": verts,
            "albedo": albedo, "faces": m.triangles, "overlay": overlay,
            "albedo_image": a.image[0].permute(1, 2, 0).clamp(0, 1).numpy(), "landmarks": det.points,
            "landmarks_fit": lm_fit, "params": params}


def paste_crop(crop: torch.Tensor, box: torch.Tensor, photo_hw: tuple, mode: str = "bilinear") -> torch.Tensor:
    """The inverse of :func:`facelib.data.corpus.crop_to_box`: resample ``crop (B, C, N, N)`` of the square
    ``box (B, 3)`` (centre x, centre y, side; photo pixels) into the photo's frame ``(B, C, H, W)``
    (zeros outside the box).  A photo pixel centre ``x`` reads the crop at ``2 (x - c) / side`` in
    grid_sample's normalised coordinates."""
    import torch.nn.functional as F

    H, W = photo_hw
    b = box.to(crop.dtype)
    xs = torch.arange(W, dtype=crop.dtype) + 0.5
    ys = torch.arange(H, dtype=crop.dtype) + 0.5
    gx = 2 * (xs[None, None, :] - b[:, 0, None, None]) / b[:, 2, None, None]
    gy = 2 * (ys[None, :, None] - b[:, 1, None, None]) / b[:, 2, None, None]
    grid = torch.stack([gx.expand(-1, H, W), gy.expand(-1, H, W)], dim=-1)
    return F.grid_sample(crop, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _reconstruct_network(trained, rgb, det, notes: list, path, method: str) -> dict:
    """:func:`reconstruct_photo` with a trained network: its own crop from the detected landmarks, the
    estimate, and the estimate's rendering (in the crop) resampled back into the photo."""
    import time

    H, W = rgb.shape[:2]
    photo = torch.from_numpy(np.array(rgb)).float() / 255.0  # (H, W, 3)
    t0 = time.perf_counter()
    est = trained.estimate(photo.permute(2, 0, 1)[None], det.points[None].float())
    seconds = time.perf_counter() - t0
    rend = paste_crop(est["rendering"], est["box"], (H, W))[0].permute(1, 2, 0).clamp(0, 1)
    mask = paste_crop(est["mask"][:, None].float(), est["box"], (H, W))[0, 0] > 0.5
    over = torch.where(mask[..., None], rend, photo)
    alone = torch.where(mask[..., None], rend, torch.ones_like(photo))
    overlay = torch.cat([photo, over, alone], dim=1).numpy()
    alb = paste_crop(est["albedo_rendering"], est["box"], (H, W))[0].permute(1, 2, 0).clamp(0, 1)
    albedo_image = torch.where(mask[..., None], alb, torch.ones_like(photo)).numpy()
    lm_est = est["landmarks"][0]
    err = (lm_est - det.points).norm(dim=-1)
    box = est["box"][0]
    lay = est["layout"]
    params = {
        "method": method, "network": trained.name, "network_meta": {k: v for k, v in trained.meta.items()
                                                                    if k not in ("keep", "config")},
        "network_config": trained.meta.get("config"), "model": trained.model.name, "photo": str(path),
        "photo_size": [W, H], "notes": notes, "faces_found": det.n_faces, "face_box": list(det.box),
        "crop": {"centre": [float(box[0]), float(box[1])], "side": float(box[2]), "size": trained.size},
        "seconds": round(seconds, 3),
        "landmark_error_px": {"all_68": float(err.mean()), "inner_51": float(err[17:].mean())},
        "landmarks_detected_px": det.points.tolist(), "landmarks_fit_px": lm_est.tolist(),
        "layout": [[n, k] for n, k in lay.entries],
        "theta": {n: v[0].tolist() for n, v in lay.unpack(est["theta"]).items()},
    }
    return {"rgb": rgb, "notes": notes, "model": trained.model, "theta": est["theta"], "layout": lay,
            "verts": est["verts"][0], "albedo": est["albedo"][0], "faces": est["faces"], "overlay": overlay,
            "albedo_image": albedo_image, "landmarks": det.points, "landmarks_fit": lm_est, "params": params}


def face_panels(rec: dict, size: int = 192, margin: float = 0.3) -> torch.Tensor:
    """The three panels of ``rec["overlay"]`` (:func:`reconstruct_photo`: the photo, the reconstruction
    over it, the reconstruction alone) cut to the square around the detected landmarks (``margin`` of
    the landmark box added on each side) and resampled to ``size``: ``(3, 3, size, size)`` in [0, 1],
    for looking at the face when it fills little of the photo."""
    from .data.corpus import crop_to_box, landmark_box

    o = torch.as_tensor(rec["overlay"], dtype=torch.float32)  # (H, 3W, 3)
    W = o.shape[1] // 3
    panels = torch.stack([o[:, k * W:(k + 1) * W].permute(2, 0, 1) for k in range(3)])  # (3, 3, H, W)
    box = landmark_box(torch.as_tensor(rec["landmarks"], dtype=torch.float32)[None], margin)
    return crop_to_box(panels, box.expand(3, -1), size).clamp(0, 1)


def write_reconstruction(rec: dict, out_dir) -> list:
    """Write :func:`reconstruct_photo`'s result into ``out_dir`` (created): ``mesh.obj``, ``mesh.ply``,
    ``albedo.png``, ``overlay.png``, ``params.json``, each atomically.  Returns the paths."""
    from ._atomic import atomic_write_bytes
    from .eval.export import save_image, save_obj, save_ply

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    text = json.dumps(rec["params"], indent=1).encode()  # everything serialised before writing
    paths = [save_obj(out / "mesh.obj", rec["verts"], rec["faces"], rec["albedo"]),
             save_ply(out / "mesh.ply", rec["verts"], rec["faces"], rec["albedo"]),
             save_image(out / "albedo.png", rec["albedo_image"]),
             save_image(out / "overlay.png", rec["overlay"]),
             atomic_write_bytes(out / "params.json", text)]
    return paths
