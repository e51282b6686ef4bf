"""Image formation: spherical-harmonics shading (Tewari et al. 2018 Eq. 5, InverseFaceNet Eq. 4,
Richardson et al. 2017 Eq. 9).

Lambertian surfaces under distant illumination: the colour of a point with reflectance ``r`` and unit
normal ``n`` is (Tewari Eq. 5)::

    c = r (.) sum_{b=1}^{9} gamma_b H_b(n),        gamma_b in R^3 (RGB)

Basis conventions
-----------------
:func:`sh_basis` gives the 9 real spherical harmonics ``Y_lm`` of bands l = 0, 1, 2, orthonormal on
the unit sphere (``int Y_i Y_j dw = delta_ij``), in the order ``(l, m)`` = (0,0), (1,-1), (1,0),
(1,1), (2,-2), (2,-1), (2,0), (2,1), (2,2), i.e. proportional to::

    1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2

Ramamoorthi and Hanrahan (2001): a distant radiance ``L(w) = sum L_lm Y_lm(w)`` gives the irradiance
``E(n) = int L(w) max(0, n.w) dw = sum A_l L_lm Y_lm(n)`` with ``A_0 = pi, A_1 = 2 pi / 3,
A_2 = pi / 4`` (:data:`SH_IRRADIANCE_CONSTANTS`, exact for band-limited ``L``).

Our ``H_b`` (:func:`sh_irradiance_basis`) is that irradiance basis **scaled so that H_1 = 1**::

    H_b(n) = A_l Y_lm(n) / (A_0 Y_00),         A_0 Y_00 = sqrt(pi) / 2

so ``gamma_b = (sqrt(pi) / 2) L_lm`` (:func:`gamma_from_radiance`), ``gamma_1`` is the average
irradiance, and ``gamma = (1, 0, ..., 0)`` shades every normal with irradiance 1 (``c = r``).  This is
the convention the InverseFaceNet Sec. 5 sampler (:data:`facelib.model.params.SEC5_SH_CONSTANT`:
``gamma_1 ~ U(0.6, 1.2)``, the others ``U(-0.2, 0.2)``) is meant for: ``gamma_1`` is the average
brightness and the others tint it.  ``normalize=False`` gives the unscaled ``A_l Y_lm``.

``gamma`` layouts accepted by :func:`shade`: ``(B, 27)`` (coefficient-major, as stored in theta),
``(B, 9, 3)`` (:func:`facelib.model.params.illumination_rgb`) or ``(B, 9)`` (monochrome, the same for R,
G, B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _twins
from .._checks import all_finite, check_vectors

__all__ = [
    "N_SH",
    "SH_IRRADIANCE_CONSTANTS",
    "SH_BAND",
    "SH_SHADING_SCALE",
    "sh_basis",
    "sh_irradiance_basis",
    "gamma_from_radiance",
    "illumination_gamma",
    "shade",
    "vertex_normals",
    "face_normals",
    "sh_first_order_basis",
    "shade_first_order",
]

N_SH = 9
SH_BAND = (0, 1, 1, 1, 2, 2, 2, 2, 2)  # band l of each of the 9 coefficients
# Ramamoorthi and Hanrahan 2001: the clamped-cosine kernel's SH coefficients per band.
SH_IRRADIANCE_CONSTANTS = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)  # A_0, A_1, A_2
_Y00 = 0.5 / math.sqrt(math.pi)
SH_SHADING_SCALE = 1.0 / (SH_IRRADIANCE_CONSTANTS[0] * _Y00)  # 1 / (A_0 Y_00) = 2 / sqrt(pi)

_C1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.4886
_C2 = math.sqrt(15.0 / (4.0 * math.pi))  # 1.0925 (xy, yz, xz)
_C20 = math.sqrt(5.0 / (16.0 * math.pi))  # 0.3154 (3z^2 - 1)
_C22 = math.sqrt(15.0 / (16.0 * math.pi))  # 0.5463 (x^2 - y^2)




def _check_normals(n, name: str = "normals") -> torch.Tensor:
    return check_vectors(n, name, batched=False)


# ---------------------------------------------------------------------------------- SH bases
def sh_basis(n: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` unit normals -> ``(..., 9)`` real orthonormal SH ``Y_lm(n)``, bands 0-2."""
    _check_normals(n)
    x, y, z = n.movedim(-1, 0).contiguous()  # contiguous planes: elementwise ops run 3x faster
    return torch.stack([
        torch.full_like(x, _Y00),
        _C1 * y, _C1 * z, _C1 * x,
        _C2 * x * y, _C2 * y * z, _C20 * (3.0 * z * z - 1.0), _C2 * x * z, _C22 * (x * x - y * y),
    ], dim=0).movedim(0, -1)  # (..., 9), a view of (9, ...) planes


def _band_constants(normalize: bool, ref: torch.Tensor) -> torch.Tensor:
    a = torch.tensor([SH_IRRADIANCE_CONSTANTS[l] for l in SH_BAND], dtype=ref.dtype, device=ref.device)
    return a * SH_SHADING_SCALE if normalize else a


def sh_irradiance_basis(n: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``(..., 3)`` unit normals -> ``(..., 9)`` irradiance basis ``H_b(n)`` (Tewari Eq. 5).

    ``H_b = A_l Y_lm(n) / (A_0 Y_00)`` so that ``H_1 = 1`` (``normalize=True``, the convention of
    :func:`shade`), or ``A_l Y_lm(n)`` (``normalize=False``, Ramamoorthi and Hanrahan 2001).
    """
    return sh_basis(n) * _band_constants(normalize, n)


def gamma_from_radiance(L: torch.Tensor) -> torch.Tensor:
    """Radiance SH coefficients ``L_lm`` ``(B, 9, ...)`` -> shading coefficients ``gamma_b``
    (``gamma = A_0 Y_00 L = sqrt(pi) / 2 L``), so that :func:`shade` gives the irradiance ``E(n)``."""
    return L / SH_SHADING_SCALE


def illumination_gamma(gamma: torch.Tensor) -> torch.Tensor:
    """``(B, 27)``, ``(B, 9, 3)`` or monochrome ``(B, 9)`` -> ``(B, 9, 3)`` (coefficient-major, RGB last)."""
    if not isinstance(gamma, torch.Tensor):
        raise ValueError(f"gamma must be a tensor; got {type(gamma).__name__}")
    shape = tuple(gamma.shape)
    if gamma.ndim == 2 and shape[1] == 3 * N_SH:
        gamma = gamma.reshape(shape[0], N_SH, 3)  # same layout as facelib.model.params.illumination_rgb
    elif gamma.ndim == 2 and shape[1] == N_SH:
        gamma = gamma.unsqueeze(-1).expand(shape[0], N_SH, 3)  # monochrome
    elif not (gamma.ndim == 3 and shape[1:] == (N_SH, 3)):
        raise ValueError(f"gamma has shape {shape}; expected (B, 27), (B, 9, 3) or monochrome (B, 9)")
    if not all_finite(gamma):
        raise ValueError("gamma contains NaN or infinite values")
    return gamma


def shade(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Tewari Eq. 5: ``c = r (.) sum_b gamma_b H_b(n)``.

    ``albedo (B, ..., 3)`` linear RGB (e.g. ``(B, V, 3)`` per vertex or ``(B, H, W, 3)`` per pixel);
    ``normals`` of the same shape, unit length, in the frame the illumination is expressed in (camera
    space for Tewari et al.); ``gamma`` ``(B, 27)``, ``(B, 9, 3)`` or ``(B, 9)``.  Returns
    ``(B, ..., 3)``.
    """
    _check_normals(normals)
    if not isinstance(albedo, torch.Tensor) or albedo.shape != normals.shape:
        got = tuple(albedo.shape) if isinstance(albedo, torch.Tensor) else type(albedo).__name__
        raise ValueError(f"albedo has shape {got}; expected the normals' shape {tuple(normals.shape)}")
    if not all_finite(albedo):
        raise ValueError("albedo contains NaN or infinite values")
    g = illumination_gamma(gamma)
    B = normals.shape[0] if normals.ndim >= 2 else 0
    if normals.ndim < 2 or g.shape[0] not in (1, B):
        raise ValueError(f"gamma has batch size {g.shape[0]}; normals {tuple(normals.shape)} have "
                         f"batch size {B}")
    P = normals.numel() // (3 * B) if B else 0  # points per face (explicit: an empty batch has no -1)
    tw = _twins.twin("shade", albedo, normals, g)
    if tw is not None:  # the Numba twin: the same formula, no autograd graph (facelib.render.fast.twins)
        return tw(albedo, normals, g)
    H = sh_irradiance_basis(normals).movedim(-1, 0).reshape(N_SH, B, P)  # (9, B, P) planes
    irradiance = torch.einsum("kbp,bkc->bpc", H, g.to(H.dtype).expand(B, N_SH, 3))  # sum_b gamma_b H_b
    irradiance = irradiance.reshape(normals.shape)
    return albedo * irradiance  # Eq. 5


# ---------------------------------------------------------------------------------- normals
def _check_mesh(verts, faces) -> None:
    if not isinstance(verts, torch.Tensor) or verts.ndim != 3 or verts.shape[-1] != 3:
        got = tuple(verts.shape) if isinstance(verts, torch.Tensor) else type(verts).__name__
        raise ValueError(f"verts has shape {got}; expected (B, V, 3)")
    if not verts.is_floating_point() or not all_finite(verts):
        raise ValueError("verts must be a finite floating-point tensor")
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[-1] != 3:
        got = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise ValueError(f"faces has shape {got}; expected (F, 3) vertex indices")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise ValueError(f"faces has dtype {faces.dtype}; expected an integer tensor")
    if faces.numel() and (faces.min() < 0 or faces.max() >= verts.shape[1]):
        raise ValueError(f"faces index vertices in [{int(faces.min())}, {int(faces.max())}]; "
                         f"the mesh has {verts.shape[1]} vertices")


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(B, V, 3)``, ``(F, 3)`` -> ``(B, F, 3)`` un-normalised face normals
    ``(v1 - v0) x (v2 - v0)`` (length = twice the triangle area; counter-clockwise seen from the side
    the normal points to)."""
    _check_mesh(verts, faces)
    faces = faces.to(device=verts.device, dtype=torch.long)
    v0, v1, v2 = (verts[:, faces[:, k]] for k in range(3))
    return torch.cross(v1 - v0, v2 - v0, dim=-1)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(B, V, 3)``, ``(F, 3)`` -> ``(B, V, 3)`` unit, area-weighted vertex normals (differentiable).

    Each vertex sums the cross products of its triangles (which weights them by area) and normalises;
    faces must wind counter-clockwise seen from outside.  Vertices in no triangle get ``(0, 0, 0)``.
    """
    _check_mesh(verts, faces)
    idx = faces.to(device=verts.device, dtype=torch.long)
    B, V = verts.shape[:2]
    tw = _twins.twin("vertex_normals", verts) if eps == 1e-12 else None
    if tw is not None:  # the Numba twin: the same formula, no autograd graph (facelib.render.fast.twins)
        return tw(verts, idx)
    # vertex-major layout (V, B * 3): row gathers and row scatters are several times faster on the CPU
    vt = verts.permute(1, 0, 2).reshape(V, B * 3)
    v0, v1, v2 = (vt.index_select(0, idx[:, k]).view(-1, B, 3) for k in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1).reshape(-1, B * 3)  # = face_normals, (F, B * 3)
    n = vt.new_zeros(V, B * 3)
    for k in range(3):
        n = n.index_add(0, idx[:, k], fn)
    return F.normalize(n.view(V, B, 3).permute(1, 0, 2), dim=-1, eps=eps)


# ---------------------------------------------------------------------------------- first order
def sh_first_order_basis(n: torch.Tensor) -> torch.Tensor:
    """Richardson Eq. 9: ``(..., 3)`` -> ``(..., 4)`` = ``(1, n_x, n_y, n_z)``."""
    _check_normals(n)
    return torch.cat([torch.ones_like(n[..., :1]), n], dim=-1)


def shade_first_order(albedo: torch.Tensor, normals: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Richardson Eq. 8: ``rho <l, Y(n)>``.

    ``albedo (B, ..., C)`` (C = 1 or 3), ``normals (B, ..., 3)``, ``l`` ``(B, 4)`` (the same for every
    channel) or ``(B, 4, C)``.  Returns ``(B, ..., C)``.
    """
    Y = sh_first_order_basis(normals)  # Eq. 9
    B = normals.shape[0] if normals.ndim >= 2 else 0
    if not isinstance(albedo, torch.Tensor) or albedo.shape[:-1] != normals.shape[:-1]:
        got = tuple(albedo.shape) if isinstance(albedo, torch.Tensor) else type(albedo).__name__
        raise ValueError(f"albedo has shape {got}; expected {tuple(normals.shape[:-1])} + (C,)")
    if not isinstance(l, torch.Tensor) or l.ndim not in (2, 3) or l.shape[1] != 4 \
            or l.shape[0] not in (1, B) or (l.ndim == 3 and l.shape[2] != albedo.shape[-1]):
        got = tuple(l.shape) if isinstance(l, torch.Tensor) else type(l).__name__
        raise ValueError(f"l has shape {got}; expected ({B}, 4) or ({B}, 4, {albedo.shape[-1]})")
    if not all_finite(l) or not all_finite(albedo):
        raise ValueError("albedo and l must be finite")
    lc = l.unsqueeze(-1) if l.ndim == 2 else l  # (B, 4, 1 or C)
    s = Y.reshape(B, -1, 4) @ lc  # (B, N, 1 or C)
    return albedo * s.reshape(*normals.shape[:-1], lc.shape[-1])  # Eq. 8
