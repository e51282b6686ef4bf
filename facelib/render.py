"""Image formation: the renders built from the primitives (parameters -> image).

The pipeline of InverseFaceNet Sec. 4.2 / Tewari Sec. 5 for a batch of parameter vectors theta:
Eq. 2-3 (geometry and reflectance), ``Rot_xyz`` and the rigid transformation ``Phi``, per-vertex
normals in camera space, SH shading (Eq. 5), full-perspective projection, rasterization into
:class:`facelib.raster.Fragments`, and interpolation of the per-vertex colours.  Also the depth map
(Richardson's rendering layer), PNCC and normal maps (Richardson Sec. 3.2.1) and landmark positions.

Which barycentrics: :func:`render` interpolates colours with barycentrics that carry gradients to the
vertex positions (``detach_bary=False``); :func:`depth_map` follows Richardson Eq. 7 and treats them as
fixed (``detach_bary=True``): the gradient reaches the visible vertices weighted by the barycentric
coordinates, and none reaches hidden vertices.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .camera import Camera, default_camera, perspective_project, rigid_transform
from .params import ParamLayout, rot_xyz
from .raster import Fragments, interpolate, rasterize
from .shading import shade, vertex_normals

__all__ = ["Render", "face_camera", "render", "depth_map", "pncc_colors", "pncc_map", "normal_map",
           "landmarks_2d", "face_labels"]


class Render(NamedTuple):
    """Outputs of :func:`render` (B images of H x W).

    image ``(B, 3, H, W)`` shaded RGB over ``background``; mask ``(B, H, W)`` bool, any face pixel;
    input_mask ``(B, H, W)`` bool, face pixels without the mouth interior (InverseFaceNet's network
    input mask); depth ``(B, H, W)`` mm (0 outside); fragments; screen ``(B, V, 3)`` projected vertices;
    verts_cam ``(B, V, 3)`` and normals_cam ``(B, V, 3)``; colors ``(B, V, 3)`` shaded per-vertex colours.
    """

    image: torch.Tensor
    mask: torch.Tensor
    input_mask: torch.Tensor
    depth: torch.Tensor
    fragments: Fragments
    screen: torch.Tensor
    verts_cam: torch.Tensor
    normals_cam: torch.Tensor
    colors: torch.Tensor


def face_camera(image_size, device=None, dtype=None) -> Camera:
    """The default camera for renders of the open model: 600 mm away, the face fills the frame."""
    return default_camera(image_size, distance=600.0, face_height=215.0, fill=0.95, device=device, dtype=dtype)


def face_labels(model) -> dict:
    """Per-triangle labels (T,) bool: ``mouth_interior`` (all three vertices in the cavity)."""
    tri = model.triangles
    return {"mouth_interior": model.masks["mouth_interior"][tri].all(1)}


def render(model, theta: torch.Tensor, image_size=240, layout: ParamLayout | None = None,
           camera: Camera | None = None, background: float = 0.0, backend: str = "auto",
           detach_bary: bool = False, geometry: torch.Tensor | None = None,
           albedo: torch.Tensor | None = None) -> Render:
    """Render faces from InverseFaceNet parameter vectors ``theta (B, m)`` (Eq. 1 layout).

    The rotation of theta turns the head in front of ``camera`` (default :func:`face_camera`).
    ``geometry`` ``(B, V, 3)`` model-space vertices and ``albedo`` ``(B, V, 3)`` replace Eq. 2 and
    Eq. 3 when given (faces with detail the model cannot express, :mod:`facelib.wild`).
    """
    layout = layout or ParamLayout.from_model(model)
    p = layout.unpack(theta)
    cam = camera or face_camera(image_size, device=theta.device, dtype=theta.dtype)
    B = theta.shape[0]
    verts = model.geometry(p["shape"], p["expression"]) if geometry is None else geometry  # Eq. 2
    albedo = model.reflectance(p["reflectance"]) if albedo is None else albedo  # Eq. 3
    R = rot_xyz(p["rotation"])  # Sec. 4.2
    t = cam.t.to(theta).expand(B, 3)
    R = cam.R.to(theta) @ R
    verts_cam = rigid_transform(verts, R, t)  # Phi
    faces = model.triangles
    normals = vertex_normals(verts_cam, faces)
    colors = shade(albedo, normals, p["illumination"])  # Eq. 5
    screen = perspective_project(verts_cam, cam.focal, cam.principal_point)
    frags = rasterize(screen, faces, image_size, cull_backfaces=True, backend=backend)  # closed winding
    img = interpolate(colors, frags, faces, detach_bary=detach_bary)[..., 0, :]  # (B, H, W, 3)
    pix = frags.pix_to_face[..., 0]
    mask = pix >= 0
    F = faces.shape[0]
    mouth = face_labels(model)["mouth_interior"]
    inside_mouth = mouth[(pix % F).clamp_min(0)] & mask  # per-pixel lookup of the triangle label
    if background:  # interpolate leaves zeros where no face
        img = img + background * (~mask)[..., None].to(img.dtype)
    image = img.permute(0, 3, 1, 2)
    depth = frags.zbuf[..., 0].clamp_min(0.0)  # -1 where no face -> 0 (valid depths are > 0)
    return Render(image, mask, mask & ~inside_mouth, depth, frags, screen, verts_cam, normals, colors)


def depth_map(screen: torch.Tensor, faces: torch.Tensor, image_size, backend: str = "auto") -> torch.Tensor:
    """Richardson's rendering layer (Sec. 4.1, Eq. 5-7): ``(B, V, 3)`` screen vertices -> ``(B, H, W)``
    depth (0 where no face), z-buffered, barycentric interpolation with fixed barycentrics (Eq. 7)."""
    frags = rasterize(screen, faces, image_size, perspective_correct=False, backend=backend)
    z = interpolate(screen[..., 2:3], frags, faces, detach_bary=True)[..., 0, 0]
    return torch.where(frags.pix_to_face[..., 0] >= 0, z, torch.zeros_like(z))


def pncc_colors(model) -> torch.Tensor:
    """PNCC (Richardson Sec. 3.2.1): the mean shape normalised to [0, 1] per axis, ``(V, 3)``."""
    v = model.mean_shape
    lo, hi = v.min(0).values, v.max(0).values
    return (v - lo) / (hi - lo)


def pncc_map(model, fragments: Fragments) -> torch.Tensor:
    """PNCC image (Richardson Sec. 3.2.1): ``(B, 3, H, W)``, the normalised mean-face coordinates of the
    surface point seen at each pixel (0 outside the face)."""
    c = pncc_colors(model).to(fragments.bary_coords.dtype)
    return interpolate(c, fragments, model.triangles)[..., 0, :].permute(0, 3, 1, 2)


def normal_map(model, fragments: Fragments, normals: torch.Tensor) -> torch.Tensor:
    """Normal map (Richardson Sec. 3.2.1): per-vertex unit normals ``(B, V, 3)`` interpolated and
    renormalised, ``(B, 3, H, W)`` with components in [-1, 1] (0 outside the face)."""
    n = interpolate(normals, fragments, model.triangles)[..., 0, :]
    n = torch.nn.functional.normalize(n, dim=-1) * (fragments.pix_to_face[..., :1] >= 0)
    return n.permute(0, 3, 1, 2)


def landmarks_2d(model, screen: torch.Tensor) -> torch.Tensor:
    """Projected landmark positions ``(B, 68, 2)`` in pixels from screen vertices ``(B, V, 3)``."""
    return screen[:, model.landmarks, :2]
