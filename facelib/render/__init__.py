"""Image formation: camera, SH shading, rasterizer and ``Fragments``, point rendering, and the renders.

The modules are the readable, differentiable reference renderer (PyTorch, any device), in pipeline
order: :mod:`.camera` (``Phi`` and the projection), :mod:`.shading` (normals, SH shading, Eq. 4-5),
:mod:`.raster` (visibility, ``Fragments``, interpolation, Eq. 6-7), :mod:`.points` (per-vertex
rendering) and :mod:`.formation` (parameters -> image: :func:`render`, depth, PNCC and normal maps,
landmarks). :mod:`.fast` holds what exists only for speed (the fused no-grad CPU path, its kernels,
and the Numba twins of the reference's loops); it imports the reference, never the reverse, and this
file is the one place that chooses it: :func:`render` picks the fused path, and the twins are lent to
the reference through :mod:`._twins` when this package is imported.
"""

from __future__ import annotations

import torch

from . import camera, formation, points, raster, shading  # noqa: F401 (facelib.render.raster.X, ...)
from .camera import Camera
from .formation import (Render, depth_layer, depth_map, face_camera, face_labels, landmarks_2d, mouth_interior_mask,
                        normal_map, pncc_colors, pncc_map, project_landmarks)
from ..model.params import ParamLayout
from .fast import twins as _fast_twins

_fast_twins.register()  # the reference's no-grad Numba twins (facelib.render._twins), lent from render/fast

__all__ = ["Render", "face_camera", "render", "depth_layer", "depth_map", "pncc_colors", "pncc_map", "normal_map",
           "landmarks_2d", "project_landmarks", "face_labels", "mouth_interior_mask"]


def render(model, theta: torch.Tensor, image_size=240, layout: ParamLayout | None = None,
           camera: Camera | None = None, background: float = 0.0, backend: str = "auto",
           detach_bary: bool = False, outputs: str = "all", fused: bool | None = None,
           geometry: torch.Tensor | None = None, albedo: torch.Tensor | None = None) -> Render:
    """Render faces from InverseFaceNet parameter vectors ``theta (B, m)`` (Eq. 1 layout): the fused fast
    path where it applies, else the differentiable reference :func:`facelib.render.formation.render`
    (every argument but ``fused`` is the reference's; see there). Returns a :class:`Render`.

    ``fused``: on the CPU without gradients (``torch.no_grad()`` or nothing that requires grad), float32,
    no ``geometry`` / ``albedo`` overrides and ``backend`` ``"auto"`` or ``"numba"``, the whole pipeline
    runs as one Numba kernel per face (:func:`facelib.render.fast.fused._render_fused`, the twin of the
    reference, with the same numbers up to float32 rounding and ties in the visibility decision);
    ``None`` (default) uses it whenever it applies, ``False`` never, ``True`` insists (ValueError where
    it cannot run).
    """
    want, p, cam = formation._prepare(model, theta, image_size, layout, camera, outputs)
    from .fast import fused as _fast  # here only: the reference modules never import the fast path

    why = _fast._fused_unavailable(model, theta, cam, backend)
    if geometry is not None or albedo is not None:
        why = why or "geometry or albedo overrides are given"
    if fused and why:
        raise ValueError(f"fused=True, but the fused renderer cannot run here: {why}")
    if fused is not False and not why:
        return _fast._render_fused(model, p, cam, image_size, background, want)
    return formation._render_torch(model, theta, p, cam, image_size, background, backend, detach_bary, want,
                                   geometry, albedo)
