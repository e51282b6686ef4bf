"""Image formation: cameras (Tewari et al. 2018 Sec. 5, Richardson et al. 2017 Eq. 2 and 5).

Frames and units
----------------
*Model space* (the face model's frame, mm): x right, y up, z out of the face, towards the viewer.

*Camera space* (mm) uses the same axes, OpenGL style: the camera sits at the origin and looks down
**-z**, so a point in front of the camera has ``z < 0`` and its **depth** is ``-z > 0``.  The rigid
transformation of Tewari et al. Sec. 5, ``Phi(v) = R v + t`` (:func:`rigid_transform`), maps model to
camera space; ``R = I`` shows the face frontally and ``t = (0, 0, -600)`` puts the model origin 600 mm
in front of the camera (:func:`default_camera`).

*Screen space* (what :func:`perspective_project` and :func:`weak_perspective_project` return, and the
``verts_screen (B, V, 3)`` input of :mod:`facelib.render.raster`): ``(x_pix, y_pix, depth)`` with x to the
right and y **down** in continuous pixel coordinates where pixel ``(i, j)`` (row i, column j) covers
``[j, j + 1) x [i, i + 1)`` and has its centre at ``(j + 0.5, i + 0.5)``; the image centre is
``(W / 2, H / 2)``.  ``depth > 0`` and smaller is closer.

Full perspective (Tewari Sec. 5, ``u = Pi(v_hat)``)::

    x_pix = c_x + f * x / (-z),   y_pix = c_y - f * y / (-z),   depth = -z

Weak perspective / scaled orthographic (Richardson Eq. 2 and Eq. 5, ``p = diag(f, f, 1) R v + t``)::

    q = R v
    x_pix = c_x + s * q_x + t_x,  y_pix = c_y - s * q_y + t_y,  depth = depth_offset - q_z

with ``s`` in pixels per mm and ``t = (t_x, t_y)`` the pixel offset (x right, y down) of the model
origin from the image centre.  Depth is the unscaled rotated z (Richardson Eq. 5 keeps ``p_z``) shifted
by ``depth_offset`` mm so that it is positive; it only serves z-buffering.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import all_finite, check_image_size, check_vectors
from . import _twins

__all__ = [
    "rigid_transform",
    "rotate",
    "perspective_project",
    "weak_perspective_project",
    "image_hw",
    "focal_from_fov",
    "look_at",
    "Camera",
    "default_camera",
    "DEFAULT_DISTANCE_MM",
    "DEFAULT_FACE_HEIGHT_MM",
]

DEFAULT_DISTANCE_MM = 600.0  # typical camera-to-head distance
DEFAULT_FACE_HEIGHT_MM = 200.0  # chin to top of forehead, roughly


# ---------------------------------------------------------------------------------- checks
def _check_points(x, name: str) -> torch.Tensor:
    return check_vectors(x, name, batched=True)


def _check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _per_batch(x, B: int, ref: torch.Tensor, name: str, size: int | None = None) -> torch.Tensor:
    """A float, ``(B,)``/``(1,)``/``()`` tensor (``size=None``) or a ``(B, size)``/``(size,)`` tensor,
    as a tensor on ``ref``'s device and dtype broadcastable to ``(B, 1)`` resp. ``(B, 1, size)``."""
    x = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    if size is None:
        if x.ndim > 1 or (x.ndim == 1 and x.shape[0] not in (1, B)):
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected a float or a ({B},) tensor")
        x = x.reshape(-1, 1)
    else:
        if x.ndim not in (1, 2) or x.shape[-1] != size or (x.ndim == 2 and x.shape[0] not in (1, B)):
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected ({B}, {size}) or ({size},)")
        x = x.reshape(-1, 1, size)
    return _check_finite(x, name)


def image_hw(image_size) -> tuple:
    """``image_size`` as ``(H, W)``: an int (square) or an ``(H, W)`` pair of positive ints, at most
    :data:`facelib._checks.MAX_IMAGE_SIZE` per side (:func:`facelib._checks.check_image_size`, the one
    check every renderer uses)."""
    return check_image_size(image_size)


def _principal_point(principal_point, image_size, B, ref) -> torch.Tensor:
    if principal_point is None:
        if image_size is None:
            raise ValueError("give image_size or principal_point (the principal point defaults to the "
                             "image centre (W / 2, H / 2))")
        H, W = image_hw(image_size)
        principal_point = (W / 2.0, H / 2.0)
    return _per_batch(principal_point, B, ref, "principal_point", size=2)


# ---------------------------------------------------------------------------------- transforms
def rigid_transform(v: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tewari Sec. 5: ``Phi(v) = R v + t``, model space -> camera space.

    ``v (B, V, 3)`` mm, ``R (B, 3, 3)`` (or ``(3, 3)``), ``t (B, 3)`` (or ``(3,)``) mm -> ``(B, V, 3)``.
    """
    R = _check_rotation(v, R)
    return _rotate(v, R, _per_batch(t, v.shape[0], v, "t", size=3))


def rotate(v: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``R v`` for each point or direction: ``v (B, V, 3)`` (e.g. normals), ``R (B, 3, 3)`` (or ``(3, 3)``)
    -> ``(B, V, 3)`` (``v @ R^T``; :func:`rigid_transform` without the translation)."""
    return _rotate(v, _check_rotation(v, R))


def _check_rotation(v: torch.Tensor, R) -> torch.Tensor:
    """Checks points ``v (B, V, 3)`` and ``R (B, 3, 3)``, ``(1, 3, 3)`` or ``(3, 3)`` (finite); returns ``R``."""
    _check_points(v, "v")
    B = v.shape[0]
    if not isinstance(R, torch.Tensor) or R.shape[-2:] != (3, 3) or R.ndim not in (2, 3) \
            or (R.ndim == 3 and R.shape[0] not in (1, B)):
        got = tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__
        raise ValueError(f"R has shape {got}; expected ({B}, 3, 3) or (3, 3)")
    return _check_finite(R, "R")


def _rotate(v: torch.Tensor, R: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """``v @ R^T (+ t)`` for checked inputs (``t (1 or B, 1, 3)`` of ``v``'s dtype); on the CPU without
    gradients the Numba twin (:mod:`facelib.render.fast.twins`: the same products in the same order, several
    times faster than the BLAS's ``K = 3`` product)."""
    R = R.to(v.dtype).reshape(-1, 3, 3)
    tw = _twins.twin("rigid_transform", v, R, *(() if t is None else (t,)))
    if tw is not None:
        return tw(v, R, t)
    q = v @ R.transpose(-1, -2)
    return q if t is None else q + t  # Phi(v) = R v + t


def perspective_project(v_cam: torch.Tensor, focal, principal_point=None, image_size=None,
                        eps: float = 1e-8) -> torch.Tensor:
    """Full perspective camera ``u = Pi(v_hat)`` (Tewari Sec. 5): camera space -> screen space.

    ``v_cam (B, V, 3)`` mm (camera at the origin looking down -z); ``focal``: float or ``(B,)``, pixels;
    ``principal_point``: ``(B, 2)`` or ``(2,)`` pixels, or None for the image centre ``(W/2, H/2)``
    (then ``image_size``, an int or ``(H, W)``, is required).  Returns ``(B, V, 3)`` =
    ``(x_pix, y_pix, depth)``, y down, ``depth = -z``.  Points at depth ``<= eps`` are divided by
    ``eps`` instead (their depth is returned unchanged, so callers can cull them).
    """
    _check_points(v_cam, "v_cam")
    B = v_cam.shape[0]
    f = _per_batch(focal, B, v_cam, "focal")
    if (f <= 0).any():
        raise ValueError(f"focal must be positive (pixels); got {focal!r}")
    c = _principal_point(principal_point, image_size, B, v_cam)
    tw = _twins.twin("perspective", v_cam, f, c)
    if tw is not None:  # the Numba twin: the same operations in one pass (facelib.render.fast.twins)
        return tw(v_cam, f, c, eps)
    depth = -v_cam[..., 2]
    inv = 1.0 / depth.clamp(min=eps)
    x = c[..., 0] + f * v_cam[..., 0] * inv
    y = c[..., 1] - f * v_cam[..., 1] * inv  # image y points down
    return torch.stack([x, y, depth], dim=-1)


def weak_perspective_project(v: torch.Tensor, R: torch.Tensor, t2d, scale, image_size,
                             depth_offset: float = 1000.0) -> torch.Tensor:
    """Scaled orthographic projection, Richardson Eq. 2 / Eq. 5: ``p = diag(s, s, 1) R v + (t, 0)``.

    ``v (B, V, 3)`` model space mm; ``R (B, 3, 3)``; ``t2d (B, 2)`` pixel offset (x right, y down) of the
    model origin from the image centre; ``scale (B,)`` or float, pixels per mm; ``image_size`` an int or
    ``(H, W)``.  Returns ``(B, V, 3)`` = ``(x_pix, y_pix, depth)`` with
    ``depth = depth_offset - (R v)_z`` (mm, positive for ``|(R v)_z| < depth_offset``).
    """
    q = rigid_transform(v, R, torch.zeros(3, dtype=v.dtype, device=v.device))
    B = v.shape[0]
    s = _per_batch(scale, B, v, "scale")
    if (s <= 0).any():
        raise ValueError(f"scale must be positive (pixels per mm); got {scale!r}")
    t = _per_batch(t2d, B, v, "t2d", size=2)
    H, W = image_hw(image_size)
    if not math.isfinite(depth_offset):
        raise ValueError(f"depth_offset must be finite; got {depth_offset!r}")
    tw = _twins.twin("weak_perspective", q, s, t)
    if tw is not None:  # the Numba twin: the same operations in one pass (facelib.render.fast.twins)
        return tw(q, s, t, W / 2.0, H / 2.0, depth_offset)
    x = W / 2.0 + s * q[..., 0] + t[..., 0]
    y = H / 2.0 - s * q[..., 1] + t[..., 1]  # Eq. 5 in the image plane, y flipped to point down
    return torch.stack([x, y, depth_offset - q[..., 2]], dim=-1)


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None,
            up: torch.Tensor | None = None) -> tuple:
    """``R (B, 3, 3)``, ``t (B, 3)`` of ``Phi`` for a camera at model-space ``eye (B, 3)`` mm looking at
    ``target (B, 3)`` (default the origin) with ``up (B, 3)`` (default +y) pointing up in the image.

    The camera's -z axis points from ``eye`` to ``target``, so ``Phi(eye) = 0`` and ``Phi(target)``
    lies on the optical axis.  ``eye = (0, 0, d)`` gives ``R = I``, ``t = (0, 0, -d)``.
    """
    eye = torch.as_tensor(eye)
    if not eye.is_floating_point() or eye.shape[-1:] != (3,) or eye.ndim not in (1, 2):
        raise ValueError(f"eye has shape {tuple(eye.shape)}; expected (B, 3) or (3,) floats (mm)")
    target = torch.zeros_like(eye) if target is None else torch.as_tensor(target).to(eye)
    up = torch.tensor([0.0, 1.0, 0.0]).to(eye) if up is None else torch.as_tensor(up).to(eye)
    for name, x in (("eye", eye), ("target", target), ("up", up)):
        _check_finite(x, name)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    z = eye - target
    x = torch.cross(up, z, dim=-1)
    if (z.norm(dim=-1) == 0).any() or (x.norm(dim=-1) == 0).any():
        raise ValueError("look_at needs eye != target and up not parallel to the viewing direction")
    z = z / z.norm(dim=-1, keepdim=True)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows: the camera axes in model space
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)  # Phi(eye) = 0
    return R, t


# ---------------------------------------------------------------------------------- defaults
def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a field of view of ``fov_deg`` degrees across ``size`` pixels."""
    if not (0.0 < fov_deg < 180.0):
        raise ValueError(f"fov_deg must be in (0, 180) degrees; got {fov_deg!r}")
    return (size / 2.0) / math.tan(math.radians(fov_deg) / 2.0)


class Camera(NamedTuple):
    """A pinhole camera for :func:`perspective_project` after :func:`rigid_transform`.

    ``focal`` pixels; ``principal_point`` ``(c_x, c_y)`` pixels; ``R (3, 3)`` and ``t (3,)`` mm, the
    model-to-camera transformation ``Phi``; ``image_size`` ``(H, W)``; ``fov_deg`` vertical field of view.
    """

    focal: float
    principal_point: tuple
    R: torch.Tensor
    t: torch.Tensor
    image_size: tuple
    fov_deg: float

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Model-space ``v (B, V, 3)`` -> screen ``(B, V, 3)`` (``Pi(Phi(v))``)."""
        R, t = self.R.to(v), self.t.to(v)
        return perspective_project(rigid_transform(v, R, t), self.focal, self.principal_point)


def default_camera(image_size, fov_deg: float | None = None, distance: float = DEFAULT_DISTANCE_MM,
                   face_height: float = DEFAULT_FACE_HEIGHT_MM, fill: float = 0.75,
                   dtype: torch.dtype | None = None, device=None) -> Camera:
    """A frontal camera ``distance`` mm in front of the model origin (``R = I``, ``t = (0, 0, -d)``).

    With ``fov_deg=None`` the vertical field of view is chosen so that a face ``face_height`` mm tall
    at ``distance`` covers the fraction ``fill`` of the image height (about 25 degrees for the defaults);
    otherwise ``fov_deg`` is the vertical field of view.  The principal point is the image centre.
    (The open model's origin lies behind the face mask, whose front is then ~130 mm closer, so the mean
    face covers about 80 % of a 224-pixel image with the defaults.)
    """
    H, W = image_hw(image_size)
    for name, val in (("distance", distance), ("face_height", face_height), ("fill", fill)):
        if not (math.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be positive and finite; got {val!r}")
    if fov_deg is None:
        focal = fill * H * distance / face_height
        fov_deg = math.degrees(2.0 * math.atan((H / 2.0) / focal))
    else:
        focal = focal_from_fov(fov_deg, H)
    R = torch.eye(3, dtype=dtype, device=device)
    t = torch.tensor([0.0, 0.0, -float(distance)], dtype=dtype, device=device)
    return Camera(float(focal), (W / 2.0, H / 2.0), R, t, (H, W), float(fov_deg))
