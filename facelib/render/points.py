"""Image formation: point-based rendering (MoFA / Tewari et al. 2018 Sec. 5).

Tewari et al.'s rendering layer does not rasterise triangles: every vertex i is mapped to camera
space ``v_hat_i = Phi(v_i)``, projected to the pixel position ``u_i = Pi(v_hat_i)`` and given the shaded
colour ``c_i = B~(r_i, n_hat_i, gamma)`` (Eq. 5).  The photometric loss then compares ``c_i`` with the
input image sampled at ``u_i`` over the visible vertices.  Visibility is approximated per vertex by
back-face culling (the camera-space normal faces the camera) and by the point lying inside the image.

Conventions are those of :mod:`facelib.render.camera` (camera at the origin looking down -z, pixel (i, j)
centred at ``(j + 0.5, i + 0.5)``, y down) and :mod:`facelib.render.shading` (``H_1 = 1``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import all_finite
import torch.nn.functional as F

from .camera import _check_points, image_hw, perspective_project, rigid_transform
from .shading import shade, vertex_normals

__all__ = [
    "ProjectedPoints",
    "PointRendering",
    "project_points",
    "backface_visibility",
    "inside_image",
    "sample_image",
    "render_points",
    "backproject_rays",
]


class ProjectedPoints(NamedTuple):
    """``u (B, V, 2)`` pixel positions, ``depth (B, V)`` mm, ``v_cam (B, V, 3)`` camera-space points."""

    u: torch.Tensor
    depth: torch.Tensor
    v_cam: torch.Tensor


class PointRendering(NamedTuple):
    """Tewari Sec. 5 point-based rendering: ``u (B, V, 2)``, shaded colours ``c (B, V, 3)``,
    ``visible (B, V)`` bool, ``depth (B, V)``, camera-space ``v_cam`` and unit ``n_cam`` ``(B, V, 3)``."""

    u: torch.Tensor
    c: torch.Tensor
    visible: torch.Tensor
    depth: torch.Tensor
    v_cam: torch.Tensor
    n_cam: torch.Tensor


def project_points(v: torch.Tensor, R: torch.Tensor, t: torch.Tensor, focal, principal_point=None,
                   image_size=None) -> ProjectedPoints:
    """``u_i = Pi(Phi(v_i))``: model-space ``v (B, V, 3)`` mm, ``R (B, 3, 3)``, ``t (B, 3)`` mm, ``focal``
    pixels (float or ``(B,)``), ``principal_point`` ``(B, 2)`` or None (image centre, needs
    ``image_size``) -> :class:`ProjectedPoints`."""
    v_cam = rigid_transform(v, R, t)  # Phi
    s = perspective_project(v_cam, focal, principal_point, image_size)  # Pi
    return ProjectedPoints(s[..., :2], s[..., 2], v_cam)


def backface_visibility(normals_cam: torch.Tensor, verts_cam: torch.Tensor,
                        orthographic: bool = False) -> torch.Tensor:
    """``(B, V, 3)`` camera-space normals and points -> ``(B, V)`` bool: the normal faces the camera.

    Perspective: ``n . (0 - v) > 0`` (the camera is at the origin); ``orthographic=True`` (weak
    perspective, viewing direction -z): ``n_z > 0``.
    """
    _check_points(normals_cam, "normals_cam")
    _check_points(verts_cam, "verts_cam")
    if normals_cam.shape != verts_cam.shape:
        raise ValueError(f"normals_cam {tuple(normals_cam.shape)} and verts_cam "
                         f"{tuple(verts_cam.shape)} must have the same shape")
    if orthographic:
        return normals_cam[..., 2] > 0
    return (normals_cam * verts_cam).sum(-1) < 0


def inside_image(u: torch.Tensor, image_size) -> torch.Tensor:
    """``(B, V, 2)`` pixel positions -> ``(B, V)`` bool: inside ``[0, W] x [0, H]``."""
    H, W = image_hw(image_size)
    return (u[..., 0] >= 0) & (u[..., 0] <= W) & (u[..., 1] >= 0) & (u[..., 1] <= H)


def sample_image(image: torch.Tensor, u: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Bilinear lookup ``I(u_i)``: ``image (B, C, H, W)``, ``u (B, V, 2)`` pixel coordinates -> ``(B, V, C)``.

    Pixel (i, j) is centred at ``u = (j + 0.5, i + 0.5)``, so integer-plus-half positions return pixel
    values exactly.  Differentiable w.r.t. ``image`` and ``u`` (``grid_sample``, ``align_corners=False``).
    ``padding_mode`` (``"border"``, ``"zeros"``, ``"reflection"``) sets values outside the image.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image has shape {got}; expected (B, C, H, W)")
    if not isinstance(u, torch.Tensor) or u.ndim != 3 or u.shape[-1] != 2 or u.shape[0] != image.shape[0]:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u has shape {got}; expected ({image.shape[0]}, V, 2) pixel coordinates")
    if not all_finite(u):
        raise ValueError("u contains NaN or infinite values")
    if not image.is_floating_point() or not u.is_floating_point():
        raise ValueError(f"image ({image.dtype}) and u ({u.dtype}) must be floating-point")
    dtype = torch.promote_types(image.dtype, u.dtype)
    image, u = image.to(dtype), u.to(dtype)
    H, W = image.shape[-2:]
    size = torch.tensor([W, H], dtype=u.dtype, device=u.device)
    grid = (2.0 * u / size - 1.0).unsqueeze(1)  # (B, 1, V, 2) in [-1, 1], pixel edges at +-1
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode,
                        align_corners=False)  # (B, C, 1, V)
    return out[:, :, 0].transpose(1, 2)


def render_points(v: torch.Tensor, albedo: torch.Tensor, faces: torch.Tensor, R: torch.Tensor,
                  t: torch.Tensor, gamma: torch.Tensor, focal, image_size,
                  principal_point=None) -> PointRendering:
    """Tewari Sec. 5 image formation: ``u_i = Pi(Phi(v_i))``, ``c_i = B~(r_i, n_hat_i, gamma)``.

    ``v (B, V, 3)`` model space mm, ``albedo (B, V, 3)``, ``faces (F, 3)`` (for the normals), ``R (B, 3,
    3)``, ``t (B, 3)``, ``gamma`` as in :func:`facelib.render.shading.shade`, ``focal`` pixels.  Normals are
    computed in camera space; ``visible`` = back-face test and inside the image (no occlusion test).
    """
    p = project_points(v, R, t, focal, principal_point, image_size)
    n_cam = vertex_normals(p.v_cam, faces)
    c = shade(albedo, n_cam, gamma)  # Eq. 5
    visible = backface_visibility(n_cam, p.v_cam) & inside_image(p.u, image_size) & (p.depth > 0)
    return PointRendering(p.u, c, visible, p.depth, p.v_cam, n_cam)


def backproject_rays(f: torch.Tensor, focal, principal_point) -> torch.Tensor:
    """Unit directions ``(B, L, 3)`` of the camera rays through the pixel positions ``f (B, L, 2)``.

    The inverse of :func:`facelib.render.camera.perspective_project` up to depth: the ray from the camera
    centre (the origin) through ``f``; ``focal`` pixels (float or ``(B,)``), ``principal_point`` ``(B, 2)``
    or ``(2,)`` pixels.  Used by the sliding contour points of Tewari et al. 2018 Eq. 10.
    """
    if not isinstance(f, torch.Tensor) or f.ndim != 3 or f.shape[-1] != 2:
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"f has shape {got}; expected (B, L, 2) pixel positions")
    fl = torch.as_tensor(focal, dtype=f.dtype, device=f.device).reshape(-1, 1)
    c = torch.as_tensor(principal_point, dtype=f.dtype, device=f.device).reshape(-1, 1, 2)
    x = (f[..., 0] - c[..., 0]) / fl
    y = -(f[..., 1] - c[..., 1]) / fl  # image y points down, camera y up
    d = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # the camera looks down -z
    return F.normalize(d, dim=-1)
