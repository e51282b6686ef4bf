"""Losses: FineNet's unsupervised shape-from-shading criterion (Richardson et al. 2017, Sec. 4.3, Eq. 8-14).

Given the input intensity image ``I``, the coarse depth ``z0`` (CoarseNet through the rendering layer)
and FineNet's refined depth ``z_hat``, all ``(B, H, W)`` on the same pixel grid:

1. normals from depth by finite differences (:func:`depth_normals`);
2. the lighting ``l*`` (first-order SH, Eq. 9) by least squares with the mean albedo on ``z0``
   (Eq. 11, :func:`solve_lighting`);
3. the albedo coefficients ``alpha_T*`` of a 10-component texture subspace by least squares (Eq. 12,
   :func:`solve_albedo`), which gives the albedo image ``rho = mu_T + A_T alpha_T*`` (Eq. 10);
4. ``E_sh = || rho <l*, Y(z_hat)> - I ||^2`` (Eq. 8), ``E_f = ||z_hat - z0||^2`` and
   ``E_sm = || Laplacian z_hat ||_1`` (Eq. 13), combined as Eq. 14 with ``lambda_sh = 1``,
   ``lambda_f = 5e-3``, ``lambda_sm = 1`` (:func:`sfs_loss`).

Conventions.  Depth maps are in mm and grow away from the camera (``facelib.render.camera.
weak_perspective_project``'s third coordinate); pixel ``(i, j)`` is row ``i`` (down), column ``j``
(right); ``pixel_mm`` is the size of a pixel in mm (``1 / scale`` under weak perspective).  Normals are
returned in the camera frame the face model uses: x right, y up, z towards the viewer.  Every term is a
per-pixel mean over its valid pixels ("the final per-pixel loss", Sec. 4.3.1), one value per image.

Units matter for the lambdas, and the paper does not state its units: we take depth in mm and
intensities in 8-bit units (0-255, :data:`INTENSITY_UNITS` times an image in [0, 1]), so ``E_sh`` is in
grey levels squared, ``E_f`` in mm^2 and ``E_sm`` in mm (the 5-point stencil, not divided by the pixel
area).  The book chapter shows what each term does with these units.

Three choices of :func:`sfs_loss` go beyond the paper's text, each measured on detailed synthetic faces
(``benchmarks/sfs_criterion.py``: the depth that minimises the criterion, started from the true coarse
depth, against the true detail); ``PAPER`` holds the literal reading:

* ``max_laplacian_px``: E_sh (and the light and albedo solve) use only the pixels where the coarse
  depth is smooth (``|Laplacian z0|`` below this many pixel sizes, :func:`smooth_pixels`).  At
  self-occlusions (the nose over the cheek) and creases (lips, eyelids) a finite-difference normal
  is meaningless; with the exact albedo and light the shading error at the *true* depth has median
  0.01 but mean 22 grey levels^2 at 96 pixels, all of it from those pixels, and minimising it bends
  the surface by millimetres where the detail is tenths of one.
* ``order``: the lighting of Eq. 9 is first-order SH (4 numbers); ``order=2`` uses the 9 of the second
  order, the light model of our renders (and of InverseFaceNet and MoFA).
* ``alternations``: after Eq. 11 (light with the mean albedo) and Eq. 12 (albedo), solve the light
  again with the recovered albedo and the albedo with that light, this many times.

A fourth, ``highpass_px``, is off by default: E_sh on the shading residual less its blur (:func:`high_pass`),
so that the smooth error a wrong coarse shape leaves does not count; ``benchmarks/sfs_from_coarsenet.py``
measures its minimum from CoarseNet's depth (chapter 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._linalg import solve
from ..eval.metrics import masked_mean
from ..render.shading import sh_basis, sh_first_order_basis

__all__ = ["INTENSITY_UNITS", "LAMBDA_SH", "LAMBDA_F", "LAMBDA_SM", "LIGHT_ORDER", "ALTERNATIONS",
           "MAX_LAPLACIAN_PX", "PAPER", "depth_normals", "interior", "laplacian", "smooth_pixels", "sh_light_basis", "high_pass",
           "solve_lighting", "solve_albedo", "recover_light_albedo", "shading_image", "e_sh", "e_f", "e_sm",
           "sfs_loss", "minimise_depth", "criterion_minimum"]

INTENSITY_UNITS = 255.0  # image in [0, 1] -> 8-bit grey levels for E_sh
LAMBDA_SH, LAMBDA_F, LAMBDA_SM = 1.0, 5e-3, 1.0  # Eq. 14
# the criterion's choices beyond the paper's text (module docstring; benchmarks/sfs_criterion.py)
LIGHT_ORDER = 2  # SH bands of the light: 1 = Eq. 9 (4 coefficients), 2 = 9 coefficients
ALTERNATIONS = 3  # light and albedo solved again this many times after Eq. 11-12
MAX_LAPLACIAN_PX = 0.5  # E_sh only where |Laplacian z0| < this many pixel sizes (None: everywhere)
PAPER = dict(order=1, alternations=0, max_laplacian_px=None)  # the literal reading of Sec. 4.3


def _check_maps(name: str, x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} has shape {got}; expected (B, H, W)")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(like.shape)} like the depth")
    return x


def _pixel_mm(pixel_mm, depth: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(pixel_mm, dtype=depth.dtype, device=depth.device)
    if p.ndim == 0:
        p = p.expand(depth.shape[0])
    if p.shape != (depth.shape[0],) or bool((p <= 0).any()):
        raise ValueError(f"pixel_mm must be a positive float or ({depth.shape[0]},) tensor; got {pixel_mm!r}")
    return p


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of ``mask (B, H, W)`` whose 4 neighbours are in the mask too (not on the image border)."""
    m = mask.clone()
    m[:, 0, :] = m[:, -1, :] = m[:, :, 0] = m[:, :, -1] = False
    m[:, 1:-1, 1:-1] &= mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    return m


def depth_normals(depth: torch.Tensor, pixel_mm, mask: torch.Tensor | None = None):
    """Normals from depth by central finite differences: ``(B, H, W)`` mm -> ``(B, H, W, 3)``, valid.

    The surface ``Z(X, Y) = -depth`` (X right, Y up, both in mm, ``pixel_mm`` per pixel) has the normal
    ``normalize(-dZ/dX, -dZ/dY, 1) = normalize(d depth/d col, -d depth/d row, pixel_mm)`` with the
    derivatives per pixel taken by central differences.  ``valid (B, H, W)``: pixels of ``mask`` (default all) whose
    four neighbours are in it (elsewhere the normals are computed but meaningless).
    """
    _check_maps("depth", depth)
    p = _pixel_mm(pixel_mm, depth)[:, None, None]
    mask = torch.ones_like(depth, dtype=torch.bool) if mask is None else _check_maps("mask", mask, depth).bool()
    d = F.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dcol = (d[:, 1:-1, 2:] - d[:, 1:-1, :-2]) / 2.0  # d depth / d column, mm per pixel
    drow = (d[:, 2:, 1:-1] - d[:, :-2, 1:-1]) / 2.0  # d depth / d row
    n = torch.stack([dcol, -drow, p.expand_as(dcol)], dim=-1)  # (-dZ/dX, -dZ/dY, 1) * pixel_mm
    return F.normalize(n, dim=-1), interior(mask)


def laplacian(z: torch.Tensor) -> torch.Tensor:
    """Discrete 5-point Laplacian of ``(B, H, W)`` (replicated borders), same shape, same units."""
    d = F.pad(z[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    return d[:, :-2, 1:-1] + d[:, 2:, 1:-1] + d[:, 1:-1, :-2] + d[:, 1:-1, 2:] - 4.0 * z


def smooth_pixels(z0: torch.Tensor, pixel_mm, mask: torch.Tensor, max_laplacian_px: float | None) -> torch.Tensor:
    """Pixels of ``mask (B, H, W)`` where the coarse depth ``z0 (B, H, W)`` mm is smooth: the interior of
    ``mask`` less the pixels with ``|Laplacian z0| >= max_laplacian_px * pixel_mm`` (self-occlusions and
    creases, where normals by finite differences are meaningless) -> ``(B, H, W)`` bool.  ``None``:
    the interior of ``mask``."""
    m = interior(_check_maps("mask", mask, z0).bool())
    if max_laplacian_px is None:
        return m
    if not max_laplacian_px > 0:
        raise ValueError(f"max_laplacian_px must be positive or None; got {max_laplacian_px!r}")
    p = _pixel_mm(pixel_mm, z0)[:, None, None]
    return m & (laplacian(z0).abs() < max_laplacian_px * p)


def sh_light_basis(normals: torch.Tensor, order: int = 1) -> torch.Tensor:
    """The lighting basis ``Y(n)``: ``order=1`` Eq. 9, ``(1, n_x, n_y, n_z)`` -> ``(..., 4)``;
    ``order=2`` the real SH of bands 0-2 (:func:`facelib.render.shading.sh_basis`) -> ``(..., 9)``."""
    if order == 1:
        return sh_first_order_basis(normals)
    if order == 2:
        return sh_basis(normals)
    raise ValueError(f"order must be 1 or 2; got {order!r}")


def _solve(AtA: torch.Tensor, Atb: torch.Tensor, ridge: float) -> torch.Tensor:
    """Batched normal equations ``(AtA + ridge * tr/n I) x = Atb`` (the ridge only guards singular ones)."""
    n = AtA.shape[-1]
    eye = torch.eye(n, dtype=AtA.dtype, device=AtA.device)
    tr = AtA.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-30)[:, None, None] / n
    return solve(AtA + ridge * tr * eye, Atb.unsqueeze(-1)).squeeze(-1)


def solve_lighting(image: torch.Tensor, rho: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor,
                   ridge: float = 1e-9, order: int = 1) -> torch.Tensor:
    """Eq. 11: ``l* = argmin_l || rho <l, Y(n)> - I ||^2`` over ``mask`` by least squares.

    ``image``, ``rho`` ``(B, H, W)``; ``normals (B, H, W, 3)`` (of the coarse depth ``z0``);
    ``mask (B, H, W)`` bool.  Returns ``l (B, 4)``, the first-order SH coefficients of Eq. 9
    (``order=2``: ``(B, 9)``, :func:`sh_light_basis`).
    """
    _check_maps("image", image)
    _check_maps("rho", rho, image)
    m = _check_maps("mask", mask, image).to(image.dtype)
    A = rho.unsqueeze(-1) * sh_light_basis(normals, order)  # (B, H, W, 4 or 9): the design matrix rows
    Am = (A * m.unsqueeze(-1)).flatten(1, 2)
    return _solve(Am.transpose(1, 2) @ A.flatten(1, 2), (Am * image.flatten(1).unsqueeze(-1)).sum(1), ridge)


def shading_image(l: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """``<l, Y(n)>`` (Eq. 8-9): ``l (B, 4)`` (first order) or ``(B, 9)`` (second order),
    ``normals (B, H, W, 3)`` -> ``(B, H, W)``."""
    if l.ndim != 2 or l.shape[1] not in (4, 9):
        raise ValueError(f"l has shape {tuple(l.shape)}; expected (B, 4) or (B, 9)")
    return (sh_light_basis(normals, 1 if l.shape[1] == 4 else 2) * l[:, None, None, :]).sum(-1)


def solve_albedo(image: torch.Tensor, mu_T: torch.Tensor, A_T: torch.Tensor, l: torch.Tensor,
                 normals: torch.Tensor, mask: torch.Tensor, ridge: float = 1e-9):
    """Eq. 12: ``alpha_T* = argmin || (mu_T + A_T alpha_T) <l*, Y(n)> - I ||^2`` by least squares.

    ``image``, ``mu_T`` ``(B, H, W)``: the image and the mean albedo seen at each pixel; ``A_T
    (B, K, H, W)``: the K texture components seen at each pixel; ``l (B, 4)``; ``normals (B, H, W, 3)``;
    ``mask (B, H, W)``.  Returns ``(alpha_T (B, K), rho (B, H, W))`` with ``rho = mu_T + A_T alpha_T``
    (Eq. 10).
    """
    _check_maps("image", image)
    _check_maps("mu_T", mu_T, image)
    if A_T.ndim != 4 or A_T.shape[:1] + A_T.shape[2:] != image.shape:
        raise ValueError(f"A_T has shape {tuple(A_T.shape)}; expected (B, K, H, W) with (B, H, W) = "
                         f"{tuple(image.shape)}")
    m = _check_maps("mask", mask, image).to(image.dtype)
    s = shading_image(l, normals)  # (B, H, W)
    A = (A_T * s[:, None]).flatten(2).transpose(1, 2)  # (B, P, K)
    b = (image - mu_T * s).flatten(1)  # (B, P)
    Am = A * m.flatten(1).unsqueeze(-1)
    alpha = _solve(Am.transpose(1, 2) @ A, (Am * b.unsqueeze(-1)).sum(1), ridge)
    return alpha, mu_T + (A_T * alpha[:, :, None, None]).sum(1)


def recover_light_albedo(image: torch.Tensor, mu_T: torch.Tensor, A_T: torch.Tensor, normals: torch.Tensor,
                         mask: torch.Tensor, order: int = 1, alternations: int = 0) -> tuple:
    """Eq. 11 then Eq. 12 on the coarse normals; then ``alternations`` times the light again with the
    recovered albedo and the albedo with that light.  Shapes as :func:`solve_albedo`; returns
    ``(l (B, 4 or 9), alpha_T (B, K), rho (B, H, W))``."""
    if isinstance(alternations, bool) or not isinstance(alternations, int) or alternations < 0:
        raise ValueError(f"alternations must be an integer >= 0; got {alternations!r}")
    l = solve_lighting(image, mu_T, normals, mask, order=order)  # Eq. 11, mean albedo
    alpha, rho = solve_albedo(image, mu_T, A_T, l, normals, mask)  # Eq. 12
    for _ in range(alternations):
        l = solve_lighting(image, rho, normals, mask, order=order)
        alpha, rho = solve_albedo(image, mu_T, A_T, l, normals, mask)
    return l, alpha, rho


def high_pass(x: torch.Tensor, valid: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``x (B, H, W)`` less its Gaussian blur (standard deviation ``sigma_px`` pixels) over the ``valid (B, H, W)``
    pixels only (a normalised convolution: the blur of ``x * valid`` over the blur of ``valid``; the truncated
    kernel reaches 3 sigma), so what is left are the details finer than ``sigma_px``, and a constant over the valid
    pixels leaves 0.  Same shape; where no valid pixel is within reach, ``x`` itself."""
    if isinstance(sigma_px, bool) or not isinstance(sigma_px, (int, float)) or not sigma_px > 0:
        raise ValueError(f"sigma_px must be a positive number; got {sigma_px!r}")
    _check_maps("x", x)
    v = _check_maps("valid", valid, x).to(x.dtype)
    half = int(3.0 * sigma_px + 0.5)
    t = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t / sigma_px) ** 2)
    g = g / g.sum()

    def blur(y):  # separable, zero outside the image
        y = F.conv2d(y[:, None], g.view(1, 1, 1, -1), padding=(0, half))
        return F.conv2d(y, g.view(1, 1, -1, 1), padding=(half, 0))[:, 0]

    w = blur(v)
    return x - blur(x * v) / w.clamp_min(torch.finfo(x.dtype).tiny) * (w > 0)


def e_sh(z_hat: torch.Tensor, image: torch.Tensor, rho: torch.Tensor, l: torch.Tensor, pixel_mm,
         mask: torch.Tensor, highpass_px: float | None = None) -> torch.Tensor:
    """Eq. 8: ``|| rho <l, Y(z_hat)> - I ||^2`` per pixel, averaged over the valid pixels -> ``(B,)``.
    ``highpass_px``: the residual's :func:`high_pass` instead (not in the paper: only shading errors finer than
    that many pixels count, not the smooth ones a wrong coarse shape, light or albedo leaves)."""
    n, valid = depth_normals(z_hat, pixel_mm, mask)
    r = rho * shading_image(l, n) - image
    if highpass_px is not None:
        r = high_pass(r, valid, highpass_px)
    return masked_mean(r * r, valid, empty=0.0)


def e_f(z_hat: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 13, fidelity: ``|| z_hat - z0 ||^2`` per pixel over ``mask`` -> ``(B,)`` mm^2."""
    d = z_hat - _check_maps("z0", z0, z_hat)
    return masked_mean(d * d, mask.bool(), empty=0.0)


def e_sm(z_hat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 13, smoothness: ``|| Laplacian z_hat ||_1`` per pixel over the interior of ``mask`` -> ``(B,)``."""
    return masked_mean(laplacian(z_hat).abs(), interior(mask.bool()), empty=0.0)


def sfs_loss(z_hat: torch.Tensor, z0: torch.Tensor, image: torch.Tensor, mu_T: torch.Tensor,
             A_T: torch.Tensor, mask: torch.Tensor, pixel_mm, lambda_sh: float = LAMBDA_SH,
             lambda_f: float = LAMBDA_F, lambda_sm: float = LAMBDA_SM,
             intensity_units: float = INTENSITY_UNITS, order: int = LIGHT_ORDER,
             alternations: int = ALTERNATIONS, max_laplacian_px: float | None = MAX_LAPLACIAN_PX,
             highpass_px: float | None = None) -> dict:
    """Eq. 14: ``lambda_sh E_sh + lambda_f E_f + lambda_sm E_sm``, with ``l*`` (Eq. 11) and ``alpha_T*``
    (Eq. 12) solved on the coarse depth ``z0`` and held fixed (no gradient flows through them).

    ``z_hat``, ``z0`` ``(B, H, W)`` mm; ``image (B, H, W)`` in [0, 1] (scaled by ``intensity_units``);
    ``mu_T (B, H, W)``, ``A_T (B, K, H, W)`` the texture subspace seen at each pixel; ``mask (B, H, W)``
    the face pixels; ``pixel_mm`` float or ``(B,)``.  ``order``, ``alternations``, ``max_laplacian_px``:
    the choices beyond the paper (module docstring; ``**PAPER`` is the literal Sec. 4.3): E_sh and the
    solve use the pixels of :func:`smooth_pixels`, E_f and E_sm all of ``mask``.  ``highpass_px``: E_sh on
    the residual's :func:`high_pass` (:func:`e_sh`; ``benchmarks/sfs_from_coarsenet.py``).  Returns a dict of
    ``(B,)`` tensors ``loss``, ``E_sh``, ``E_f``, ``E_sm`` and the recovered ``l (B, 4 or 9)``,
    ``alpha_T (B, K)``, ``rho (B, H, W)``, and ``sh_mask (B, H, W)`` the pixels of E_sh.
    """
    _check_maps("z_hat", z_hat)
    I = _check_maps("image", image, z_hat) * intensity_units
    mask = _check_maps("mask", mask, z_hat).bool()
    with torch.no_grad():
        sh_mask = mask if max_laplacian_px is None else smooth_pixels(z0.detach(), pixel_mm, mask, max_laplacian_px)
        n0, valid0 = depth_normals(z0.detach(), pixel_mm, sh_mask)
        l, alpha, rho = recover_light_albedo(I, mu_T, A_T, n0, valid0, order, alternations)  # Eq. 11-12
    E_sh = e_sh(z_hat, I, rho, l, pixel_mm, sh_mask, highpass_px)
    E_f = e_f(z_hat, z0, mask)
    E_sm = e_sm(z_hat, mask)
    loss = lambda_sh * E_sh + lambda_f * E_f + lambda_sm * E_sm  # Eq. 14
    return dict(loss=loss, E_sh=E_sh, E_f=E_f, E_sm=E_sm, l=l, alpha_T=alpha, rho=rho, sh_mask=sh_mask)


def minimise_depth(loss_fn, z0: torch.Tensor, steps: int = 300) -> torch.Tensor:
    """A free depth map that minimises ``loss_fn(z) -> dict with "loss" (B,)``, started from ``z0 (B, H, W)``:
    L-BFGS (strong-Wolfe line search, ``steps`` iterations) on the sum over the batch (the faces are
    independent, so the sum's minimum is each face's) -> ``(B, H, W)``, detached."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    z = _check_maps("z0", z0).detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = loss_fn(z)["loss"].sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    return z.detach()


def criterion_minimum(z0: torch.Tensor, image: torch.Tensor, mu_T: torch.Tensor, A_T: torch.Tensor,
                      mask: torch.Tensor, pixel_mm, lambdas: tuple = (LAMBDA_SH, LAMBDA_F, LAMBDA_SM),
                      steps: int = 300, **criterion) -> torch.Tensor:
    """The depth map that minimises Eq. 14 (:func:`sfs_loss` with ``lambdas`` and ``criterion`` keywords) for
    each face, pixel by pixel, from the coarse depth ``z0``: what the criterion asks for, with no network
    between (:func:`minimise_depth`).  Shapes as :func:`sfs_loss`; returns ``(B, H, W)`` mm."""
    return minimise_depth(lambda z: sfs_loss(z, z0, image, mu_T, A_T, mask, pixel_mm, *lambdas, **criterion),
                          z0, steps)
