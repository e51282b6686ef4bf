"""Image formation: the renders built from the primitives (parameters -> image).

The pipeline of InverseFaceNet Sec. 4.2 / Tewari Sec. 5 for a batch of parameter vectors theta:
Eq. 2-3 (geometry and reflectance), ``Rot_xyz`` and the rigid transformation ``Phi``, per-vertex
normals in camera space, SH shading (Eq. 5), full-perspective projection, rasterization into
:class:`facelib.render.raster.Fragments`, and interpolation of the per-vertex colours.  Also the depth map
(Richardson's rendering layer), PNCC and normal maps (Richardson Sec. 3.2.1) and landmark positions.

Which barycentrics: :func:`render` interpolates colours with barycentrics that carry gradients to the
vertex positions (``detach_bary=False``); :func:`depth_map` follows Richardson Eq. 7 and treats them as
fixed (``detach_bary=True``): the gradient reaches the visible vertices weighted by the barycentric
coordinates, and none reaches hidden vertices.

This module is the PyTorch code (differentiable, any device; the reference). :func:`facelib.render.render`
(the package's ``render``) is this :func:`render` plus the choice of the fused Numba path of
:mod:`facelib.render.fast` on the CPU when no gradient is asked for (two GEMMs for Eq. 2-3, then one
kernel per face from the vertices to the pixels), which gives the same numbers, up to float32 rounding
and ties in the visibility decision; ``render(..., fused=False)`` there forces this code.
``outputs="image"`` skips the fields a corpus renderer does not keep.
"""

from __future__ import annotations

import functools
import weakref
from typing import NamedTuple

import torch

from .._checks import all_finite, check_theta
from ..model.params import ParamLayout, rot_xyz
from .camera import Camera, default_camera, image_hw, perspective_project, rigid_transform
from .raster import Fragments, interpolate, rasterize
from .shading import shade, vertex_normals

__all__ = ["Render", "face_camera", "render", "depth_layer", "depth_map", "pncc_colors", "pncc_map", "normal_map",
           "landmarks_2d", "face_labels", "mouth_interior_mask"]


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


@functools.lru_cache(maxsize=16)
def _face_camera_cached(hw: tuple, device, dtype) -> Camera:
    """:func:`face_camera` for :func:`render`, which only reads it: made once per size, device and dtype
    (building the tensors costs more than a small render's Python overhead)."""
    return face_camera(hw, device=device, dtype=dtype)


def mouth_interior_mask(model) -> torch.Tensor:
    """The model's ``mouth_interior`` vertex mask ``(V,)`` bool; all False for a model without one (a
    Basel Face Model or an OBJ folder: no cavity, so every face pixel is a network-input pixel)."""
    m = model.masks.get("mouth_interior")
    if m is None:
        return _cached(model, "no-mouth", (model.mean_shape,),
                       lambda: torch.zeros(model.n_vertices, dtype=torch.bool, device=model.device))
    return m


def face_labels(model) -> dict:
    """Per-triangle labels (T,) bool: ``mouth_interior`` (all three vertices in the cavity; none for a
    model without a ``mouth_interior`` mask)."""
    tri, m = model.triangles, mouth_interior_mask(model)
    return {"mouth_interior": m[tri[:, 0]] & m[tri[:, 1]] & m[tri[:, 2]]}


def render(model, theta: torch.Tensor, image_size=240, layout: ParamLayout | None = None,
           camera: Camera | None = None, background: float = 0.0, backend: str = "auto",
           detach_bary: bool = False, outputs: str = "all",
           geometry: torch.Tensor | None = None, albedo: torch.Tensor | None = None) -> Render:
    """Render faces from InverseFaceNet parameter vectors ``theta (B, m)`` (Eq. 1 layout).

    ``theta`` must be a finite ``(B, m)`` tensor of the model's dtype; ``image_size`` an int or
    ``(H, W)``, at most :data:`facelib._checks.MAX_IMAGE_SIZE` (8192) pixels per side (ValueError
    otherwise: a 20000-pixel image takes tens of GB).

    The rotation of theta turns the head in front of ``camera`` (default :func:`face_camera`).

    ``outputs``: ``"all"`` (default) fills every field of :class:`Render`; ``"image"`` only ``image``,
    ``mask``, ``input_mask`` and ``depth`` (the others are None): what a corpus renderer needs, and
    less memory to write; or a collection of field names to add to those four (e.g.
    ``("screen",)`` for landmarks).

    ``geometry`` ``(B, V, 3)`` model-space vertices and ``albedo`` ``(B, V, 3)`` replace Eq. 2 and Eq. 3
    when given (faces with detail the model cannot express, used by :mod:`facelib.data.wild`; NOTE to
    maintainers: keep these two arguments, other modules depend on them).
    """
    want, p, cam = _prepare(model, theta, image_size, layout, camera, outputs)
    return _render_torch(model, theta, p, cam, image_size, background, backend, detach_bary, want, geometry, albedo)


def _prepare(model, theta: torch.Tensor, image_size, layout, camera, outputs) -> tuple:
    """The checked inputs of :func:`render`: the optional fields ``outputs`` asks for, ``theta``
    unpacked by ``layout`` and the camera (default :func:`face_camera`)."""
    want = _wanted_fields(outputs)
    layout = layout or ParamLayout.from_model(model)
    p = layout.unpack(check_theta(theta, layout.size, model.mean_shape.dtype))
    cam = camera or _face_camera_cached(image_hw(image_size), theta.device, theta.dtype)
    return want, p, cam


def _to_camera(verts: torch.Tensor, rotation: torch.Tensor, cam: Camera) -> torch.Tensor:
    """Model-space vertices ``(B, V, 3)`` -> camera space ``(B, V, 3)``: the face's rotation (Sec. 4.2,
    Euler angles ``rotation (B, 3)``) followed by the camera's ``R, t`` (Phi).  The one place :func:`render`
    and :func:`project_landmarks` pose a face."""
    R = cam.R.to(verts) @ rot_xyz(rotation)
    return rigid_transform(verts, R, cam.t.to(verts).expand(verts.shape[0], 3))


def _render_torch(model, theta, p: dict, cam: Camera, image_size, background, backend, detach_bary, want: set,
                  geometry, albedo) -> Render:
    """The PyTorch image formation of :func:`render` on its checked inputs (:func:`_prepare`)."""
    if not all_finite(theta.detach()):
        raise ValueError("theta contains NaN or infinite values")
    verts = model.geometry(p["shape"], p["expression"]) if geometry is None else geometry  # Eq. 2
    albedo = model.reflectance(p["reflectance"]) if albedo is None else albedo  # Eq. 3
    verts_cam = _to_camera(verts, p["rotation"], cam)  # Sec. 4.2, Phi
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
    r = Render(image, mask, mask & ~inside_mouth, depth, frags, screen, verts_cam, normals, colors)
    return r._replace(**{k: None for k in _OPTIONAL_FIELDS if k not in want})


_OPTIONAL_FIELDS = ("fragments", "screen", "verts_cam", "normals_cam", "colors")


def _wanted_fields(outputs) -> set:
    """The optional :class:`Render` fields that ``outputs`` asks for (see :func:`render`)."""
    if isinstance(outputs, str):
        if outputs in ("all", "image"):
            return set(_OPTIONAL_FIELDS) if outputs == "all" else set()
    elif isinstance(outputs, (list, tuple, set, frozenset)) and all(isinstance(k, str) for k in outputs):
        want = {k for k in outputs if k not in ("image", "mask", "input_mask", "depth")}
        if want <= set(_OPTIONAL_FIELDS):
            return want
    raise ValueError(f"outputs must be 'all', 'image' or a collection of Render field names; got {outputs!r}")


def depth_layer(screen: torch.Tensor, faces: torch.Tensor, image_size, cull_backfaces: bool = False,
                backend: str = "auto") -> tuple:
    """Richardson's rendering layer (Sec. 4.1, Eq. 5-7), the one place it is written: ``(B, V, 3)``
    screen vertices (x, y pixels, depth) -> z-buffered depth ``(B, H, W)`` (0 where no face), ``mask
    (B, H, W)`` and the :class:`Fragments`.  Depth is interpolated with barycentrics held fixed (Eq. 7:
    ``dE/dz_i = dE/dz~ lambda_i`` for the vertices of the visible triangles, no gradient for hidden
    vertices or for x, y).  ``cull_backfaces``: drop triangles facing away from the camera (CoarseNet's
    renders use it; the others see every triangle)."""
    frags = rasterize(screen, faces, image_size, perspective_correct=False, cull_backfaces=cull_backfaces,
                      backend=backend)
    z = interpolate(screen[..., 2:3], frags, faces, detach_bary=True)[..., 0, 0]  # Eq. 6-7
    mask = frags.pix_to_face[..., 0] >= 0
    return torch.where(mask, z, torch.zeros_like(z)), mask, frags


def depth_map(screen: torch.Tensor, faces: torch.Tensor, image_size, backend: str = "auto",
              cull_backfaces: bool = False) -> torch.Tensor:
    """The depth ``(B, H, W)`` of :func:`depth_layer` alone."""
    return depth_layer(screen, faces, image_size, cull_backfaces, backend)[0]


def pncc_colors(model) -> torch.Tensor:
    """PNCC (Richardson Sec. 3.2.1): the mean shape normalised to [0, 1] per axis, ``(V, 3)``."""
    v = model.mean_shape
    lo, hi = v.min(0).values, v.max(0).values
    return (v - lo) / (hi - lo)


def pncc_map(model, fragments: Fragments, faces: torch.Tensor | None = None) -> torch.Tensor:
    """PNCC image (Richardson Sec. 3.2.1): ``(B, 3, H, W)``, the normalised mean-face coordinates of the
    surface point seen at each pixel (0 outside the face).  ``faces``: the triangles ``fragments`` were
    rasterized from (default ``model.triangles``)."""
    c = pncc_colors(model).to(fragments.bary_coords.dtype)
    faces = model.triangles if faces is None else faces
    return interpolate(c, fragments, faces)[..., 0, :].permute(0, 3, 1, 2)


def normal_map(model, fragments: Fragments, normals: torch.Tensor, faces: torch.Tensor | None = None) -> torch.Tensor:
    """Normal map (Richardson Sec. 3.2.1): per-vertex unit normals ``(B, V, 3)`` interpolated and
    renormalised, ``(B, 3, H, W)`` with components in [-1, 1] (0 outside the face).  ``faces`` as
    :func:`pncc_map`."""
    faces = model.triangles if faces is None else faces
    n = interpolate(normals, fragments, faces)[..., 0, :]
    n = torch.nn.functional.normalize(n, dim=-1) * (fragments.pix_to_face[..., :1] >= 0)
    return n.permute(0, 3, 1, 2)


def landmarks_2d(model, screen: torch.Tensor) -> torch.Tensor:
    """Projected landmark positions ``(B, 68, 2)`` in pixels from screen vertices ``(B, V, 3)``;
    ValueError for a model without landmarks (a Basel Face Model or an OBJ folder)."""
    if model.landmarks is None:
        raise ValueError(f"face model {model.name!r} has no landmarks; landmarks_2d needs a model with "
                         "68 landmark vertex ids (e.g. 'open')")
    return screen[:, model.landmarks, :2]


def project_landmarks(model, theta: torch.Tensor, image_size=64, layout: ParamLayout | None = None,
                      camera: Camera | None = None) -> torch.Tensor:
    """The 68 landmarks of faces ``theta (B, m)`` in pixels ``(B, 68, 2)``, as :func:`render`'s screen
    places them (:func:`landmarks_2d`), computed from the landmark vertices alone (Eq. 2 on 68 vertices,
    the rotation of Sec. 4.2 and the camera, default :func:`face_camera`): a face's landmarks without
    rendering it."""
    if model.landmarks is None:
        raise ValueError(f"face model {model.name!r} has no landmarks; project_landmarks needs a model with "
                         "68 landmark vertex ids (e.g. 'open')")
    layout = layout or ParamLayout.from_model(model)
    p = layout.unpack(check_theta(theta, layout.size, model.mean_shape.dtype))
    cam = camera or _face_camera_cached(image_hw(image_size), theta.device, theta.dtype)
    ids = model.landmarks
    ns, ne = p["shape"].shape[1], p["expression"].shape[1]
    v = model.mean_shape[ids] \
        + torch.einsum("bk,kvc->bvc", p["shape"] * model.sigma_s[:ns], model.shape_basis[:ns, ids]) \
        + torch.einsum("bk,kvc->bvc", p["expression"] * model.sigma_e[:ne], model.expression_basis[:ne, ids])
    screen = perspective_project(_to_camera(v, p["rotation"], cam), cam.focal, cam.principal_point)
    return screen[..., :2]


_MODEL_CACHE: dict = {}  # id(model) -> (the tensors used, their versions, arrays derived from them)


def _cached(model, key: str, tensors: tuple, build):
    """``build()``, cached per model and ``key`` while ``tensors`` are the same objects, unmodified."""
    versions = tuple(x._version for x in tensors)
    hit = _MODEL_CACHE.get((id(model), key))
    if hit is not None and all(a is b for a, b in zip(hit[0], tensors)) and hit[1] == versions:
        return hit[2]
    out = build()
    if len(_MODEL_CACHE) > 8:
        _MODEL_CACHE.clear()
    _MODEL_CACHE[(id(model), key)] = (tensors, versions, out)
    try:  # forget it with the model
        weakref.finalize(model, _MODEL_CACHE.pop, (id(model), key), None)
    except TypeError:
        pass
    return out
