"""Image formation, rasterizer: which triangle covers each pixel, and its barycentrics (PyTorch3D
``Fragments``).

Three small functions, split as the rendering layer of Richardson et al. (2017, Eq. 6-7) and DRTK:

- :func:`visibility` decides which faces cover each pixel (``pix_to_face``). It is a hard,
  non-differentiable decision, made by a Numba kernel (CPU), a vectorised PyTorch fallback, or
  PyTorch3D's ``rasterize_meshes``.
- :func:`fragments_from_pix_to_face` recomputes barycentrics, depth and edge distances in PyTorch from
  ``pix_to_face`` and the vertex tensor, so gradients flow to the vertex positions.
- :func:`interpolate` carries per-vertex attributes to pixels (Eq. 6).

When no gradient is asked for (``torch.no_grad()`` or inputs that do not require grad) on the CPU,
``rasterize`` and ``interpolate`` use Numba twins of the PyTorch formulas (same numbers, no autograd
graph): the fast path for rendering corpora. With gradients, everything after the visibility
decision is PyTorch code.

:func:`rasterize` is the first two in a row and returns ``Fragments``.

Conventions (the screen frame, "pixel coordinates"):

- ``verts_screen[..., 0]`` = x in pixels, to the right; ``[..., 1]`` = y in pixels, downwards; pixel
  ``(i, j)`` (row i, column j) has its centre at ``x = j + 0.5, y = i + 0.5``. ``[..., 2]`` = z, the
  positive depth from the camera (smaller is closer); the nearest surface wins the depth test.
- Front faces are counter-clockwise as the viewer sees them (in a y-up frame), the winding of
  :attr:`FaceModel.triangles` seen from outside. In the y-down pixel frame this is a *negative* signed
  area ``(x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) < 0``; ``cull_backfaces=True`` drops faces whose
  signed area is positive.
- A pixel is covered when its centre lies inside the triangle or on its edges (inclusive test); ties in
  depth go to the lower packed face index.
- Skipped triangles: degenerate ones (``|signed area| <= 1e-10`` px^2) and those with any vertex at
  ``z <= 0`` (behind the camera). Triangles partly off-screen are clipped to the image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import _twins
from .camera import image_hw
from .._checks import MAX_IMAGE_SIZE, all_finite  # noqa: F401 (MAX_IMAGE_SIZE: public)

try:  # optional: the fast CPU visibility pass
    import numba
    from numba import njit, prange
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None
    HAVE_NUMBA = False

__all__ = ["Fragments", "rasterize", "visibility", "fragments_from_pix_to_face", "interpolate",
           "pytorch3d_fragments", "HAVE_NUMBA"]

AREA_EPS = 1e-10  # twice the signed area (px^2) at or below which a triangle is degenerate
BACKENDS = ("auto", "numba", "torch", "pytorch3d")


class Fragments(NamedTuple):
    """PyTorch3D's rasterizer output (``pytorch3d.renderer.mesh.rasterizer.Fragments``).

    - ``pix_to_face`` ``(N, H, W, K)`` int64: index of the face in the *packed* faces (face ``f`` of
      batch element ``n`` is ``n * F + f``), sorted nearest first; -1 where no face.
    - ``zbuf`` ``(N, H, W, K)``: depth z of the surface at the pixel centre; -1 where no face.
    - ``bary_coords`` ``(N, H, W, K, 3)``: barycentric coordinates of the pixel centre in the face
      (perspective-correct when asked for); -1 where no face.
    - ``dists`` ``(N, H, W, K)``: signed distance *in pixels* from the pixel centre to the nearest edge of
      the face, negative inside; -1 where no face. (PyTorch3D stores a signed *squared* distance in
      NDC units here; ours is the plain distance in pixels.)
    """

    pix_to_face: torch.Tensor
    zbuf: torch.Tensor
    bary_coords: torch.Tensor
    dists: torch.Tensor


# ------------------------------------------------------------------------------------------------
# input checks


def _check_inputs(verts_screen, faces, faces_per_pixel=1, backend="auto"):
    if not isinstance(verts_screen, torch.Tensor) or verts_screen.ndim != 3 \
            or verts_screen.shape[-1] != 3:
        shape = tuple(verts_screen.shape) if isinstance(verts_screen, torch.Tensor) else type(verts_screen)
        raise ValueError(f"verts_screen must have shape (N, V, 3) (x, y in pixels, z depth); got {shape}")
    if not verts_screen.is_floating_point():
        raise ValueError(f"verts_screen must be a floating-point tensor; got {verts_screen.dtype}")
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces)
        raise ValueError(f"faces must have shape (F, 3) (vertex indices shared by the batch); got {shape}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor; got {faces.dtype}")
    V = verts_screen.shape[1]
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= V):
        raise ValueError(f"faces index vertices {int(faces.min())}..{int(faces.max())}; "
                         f"expected indices in [0, {V - 1}] for {V} vertices")
    if not all_finite(verts_screen):
        raise ValueError("verts_screen contains NaN or infinite values; check the projection "
                         "(e.g. division by a zero depth)")
    if isinstance(faces_per_pixel, bool) or not isinstance(faces_per_pixel, (int, np.integer)) \
            or faces_per_pixel < 1:
        raise ValueError(f"faces_per_pixel must be an int >= 1; got {faces_per_pixel!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    return faces.to(device=verts_screen.device, dtype=torch.int64)


# ------------------------------------------------------------------------------------------------
# visibility: Numba kernel


if HAVE_NUMBA:
    @njit(parallel=True, cache=True)
    def _visibility_kernel(verts, faces, H, W, K, perspective, cull, n_bands, p2f, zbuf):
        """Z-buffer over the triangles of each image; ``prange`` over (image, band of rows) jobs.

        ``verts`` (N, V, 3) float64, ``faces`` (F, 3) int64; fills ``p2f`` (N, H, W, K) int64 (-1) and
        ``zbuf`` (N, H, W, K) float64 (+inf), each pixel's K nearest sorted by depth.
        """
        N = verts.shape[0]
        F = faces.shape[0]
        band_h = (H + n_bands - 1) // n_bands
        for job in prange(N * n_bands):
            n = job // n_bands
            r0 = (job % n_bands) * band_h
            r1 = min(H, r0 + band_h)
            for f in range(F):
                a = faces[f, 0]
                b = faces[f, 1]
                c = faces[f, 2]
                x0 = verts[n, a, 0]
                y0 = verts[n, a, 1]
                x1 = verts[n, b, 0]
                y1 = verts[n, b, 1]
                x2 = verts[n, c, 0]
                y2 = verts[n, c, 1]
                # pixels whose centre (j + 0.5, i + 0.5) lies in the bounding box, clipped to the band
                # as floats (huge off-screen coordinates cannot overflow an int); most triangles of a
                # dense mesh are rejected here, before anything else
                fj0 = max(0.0, np.ceil(min(x0, x1, x2) - 0.5))
                fj1 = min(W - 1.0, np.floor(max(x0, x1, x2) - 0.5))
                if fj0 > fj1:
                    continue
                fi0 = max(float(r0), np.ceil(min(y0, y1, y2) - 0.5))
                fi1 = min(r1 - 1.0, np.floor(max(y0, y1, y2) - 0.5))
                if fi0 > fi1:
                    continue
                area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
                if abs(area) <= 1e-10:
                    continue
                if cull and area > 0.0:
                    continue
                z0 = verts[n, a, 2]
                z1 = verts[n, b, 2]
                z2 = verts[n, c, 2]
                if z0 <= 0.0 or z1 <= 0.0 or z2 <= 0.0:
                    continue
                sg = 1.0 if area > 0.0 else -1.0
                packed = n * F + f
                for i in range(int(fi0), int(fi1) + 1):
                    py = i + 0.5
                    ay = y0 - py
                    by = y1 - py
                    cy = y2 - py
                    for j in range(int(fj0), int(fj1) + 1):
                        px = j + 0.5
                        ax = x0 - px
                        bx = x1 - px
                        cx = x2 - px
                        # edge functions at the pixel centre (as _edge_weights)
                        w0 = bx * cy - by * cx
                        w1 = cx * ay - cy * ax
                        w2 = ax * by - ay * bx
                        if min(w0 * sg, w1 * sg, w2 * sg) < 0.0:
                            continue
                        s = w0 + w1 + w2
                        if s == 0.0:
                            continue
                        b0 = w0 / s
                        b1 = w1 / s
                        b2 = w2 / s
                        if perspective:
                            z = 1.0 / (b0 / z0 + b1 / z1 + b2 / z2)
                        else:
                            z = b0 * z0 + b1 * z1 + b2 * z2
                        if not z < zbuf[n, i, j, K - 1]:
                            continue
                        k = K - 1  # insert, keeping the K nearest sorted (ties: earlier face first)
                        while k > 0 and zbuf[n, i, j, k - 1] > z:
                            zbuf[n, i, j, k] = zbuf[n, i, j, k - 1]
                            p2f[n, i, j, k] = p2f[n, i, j, k - 1]
                            k -= 1
                        zbuf[n, i, j, k] = z
                        p2f[n, i, j, k] = packed


def _visibility_numba(verts, faces, H, W, K, perspective, cull):
    """(pix_to_face, z) from the Numba kernel; z is float64, +inf where no face."""
    N = verts.shape[0]
    v = np.ascontiguousarray(verts.detach().to("cpu", torch.float64).numpy())
    f = np.ascontiguousarray(faces.to("cpu", torch.int64).numpy())
    p2f = np.full((N, H, W, K), -1, dtype=np.int64)
    z = np.full((N, H, W, K), np.inf, dtype=np.float64)
    if N and f.shape[0]:
        threads = numba.get_num_threads()
        n_bands = max(1, min(H, -(-2 * threads // N)))  # enough jobs for every thread, even at N = 1
        _visibility_kernel(v, f, H, W, K, perspective, cull, n_bands, p2f, z)
    return torch.from_numpy(p2f).to(verts.device), torch.from_numpy(z).to(verts.device)


# ------------------------------------------------------------------------------------------------
# visibility: vectorised PyTorch fallback


def _visibility_torch(verts, faces, H, W, K, perspective, cull, budget=1 << 20):
    """(pix_to_face, z) by expanding each triangle's bounding box into (triangle, pixel) candidates,
    a chunk of triangles at a time (about ``budget`` candidates per chunk), then a stable sort of the
    covered fragments by (pixel, depth). z is float64, +inf where no face."""
    N, F = verts.shape[0], faces.shape[0]
    dev = verts.device
    p2f = torch.full((N * H * W * K,), -1, dtype=torch.int64, device=dev)
    zb = torch.full((N * H * W * K,), math.inf, dtype=torch.float64, device=dev)
    if N == 0 or F == 0:
        return p2f.view(N, H, W, K), zb.view(N, H, W, K)
    tri = verts.detach().to(torch.float64)[:, faces].reshape(N * F, 3, 3)  # packed faces
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    j0 = torch.ceil(x.amin(1) - 0.5).clamp(0, W)
    j1 = torch.floor(x.amax(1) - 0.5).clamp(-1, W - 1)
    i0 = torch.ceil(y.amin(1) - 0.5).clamp(0, H)
    i1 = torch.floor(y.amax(1) - 0.5).clamp(-1, H - 1)
    bw = (j1 - j0 + 1).clamp(min=0).long()
    bh = (i1 - i0 + 1).clamp(min=0).long()
    ok = (z > 0).all(1) & (area.abs() > AREA_EPS) & (bw > 0) & (bh > 0)
    if cull:
        ok &= area < 0
    ids = ok.nonzero().squeeze(1)
    count = bw[ids] * bh[ids]
    ends = torch.cumsum(count, 0)
    budget = max(budget, H * W)  # one triangle always fits
    pix_all, z_all, face_all = [], [], []
    start = 0
    while start < len(ids):
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + budget, right=True))
        stop = max(stop, start + 1)
        t = ids[start:stop]
        c = count[start:stop]
        rep = torch.repeat_interleave(torch.arange(len(t), device=dev), c)
        off = torch.arange(int(c.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        tt = t[rep]
        w_ = bw[tt]
        jj = j0[tt].long() + off % w_
        ii = i0[tt].long() + off // w_
        p = torch.stack((jj + 0.5, ii + 0.5), -1).to(torch.float64)
        w = _edge_weights_xy(tri[tt, :, 0] - p[:, None, 0], tri[tt, :, 1] - p[:, None, 1])
        sgn = torch.sign(area[tt])[:, None]
        s = w.sum(1)
        inside = ((w * sgn) >= 0).all(1) & (s != 0)
        b = w[inside] / s[inside, None]
        zz = tri[tt[inside], :, 2]
        depth = 1.0 / (b / zz).sum(1) if perspective else (b * zz).sum(1)
        n = tt[inside] // F
        pix_all.append((n * H + ii[inside]) * W + jj[inside])
        z_all.append(depth)
        face_all.append(tt[inside])
        start = stop
    if not pix_all:
        return p2f.view(N, H, W, K), zb.view(N, H, W, K)
    _keep_k_nearest(torch.cat(pix_all), torch.cat(z_all), torch.cat(face_all), K, p2f, zb)
    return p2f.view(N, H, W, K), zb.view(N, H, W, K)


def _keep_k_nearest(pix, depth, face, K, p2f, zb):
    """Write the K nearest fragments of each pixel into the flat ``p2f``, ``zb`` ``(N H W K,)``."""
    # stable sorts: by depth, then by pixel -> per pixel nearest first, ties in face order
    o = torch.sort(depth, stable=True).indices
    o = o[torch.sort(pix[o], stable=True).indices]
    pix, depth, face = pix[o], depth[o], face[o]
    idx = torch.arange(len(pix), device=pix.device)
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    rank = idx - torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    keep = rank < K
    slot = pix[keep] * K + rank[keep]
    p2f[slot] = face[keep]
    zb[slot] = depth[keep]


def _edge_weights_xy(x, y):
    """Twice the signed areas ``(w0, w1, w2)`` ``(M, 3)`` of the sub-triangles (pixel, v_i+1, v_i+2)
    opposite each vertex, from the vertex coordinates ``x``, ``y`` ``(M, 3)`` taken relative to the
    pixel centre; ``w / w.sum()`` are the screen barycentrics (the Numba kernel uses the same formula)."""
    x1, y1 = x.roll(-1, 1), y.roll(-1, 1)
    x2, y2 = x.roll(-2, 1), y.roll(-2, 1)
    return x1 * y2 - y1 * x2


# ------------------------------------------------------------------------------------------------
# visibility: PyTorch3D


def pytorch3d_fragments(verts_screen, faces, image_size, faces_per_pixel=1, perspective_correct=True,
                        cull_backfaces=False, bin_size=None) -> Fragments:
    """PyTorch3D's own ``rasterize_meshes`` output in our conventions (needs PyTorch3D): the parity
    reference of :func:`rasterize`, and what ``backend="pytorch3d"`` takes ``pix_to_face`` from.

    ``verts_screen`` ``(N, V, 3)`` in our pixel frame (module docstring) is mapped to PyTorch3D's NDC
    (+x left, +y up, the shorter image side spanning [-1, 1]) in PyTorch, so gradients reach it through
    PyTorch3D's backward. The faces we skip (behind the camera, degenerate, culled) are removed before
    and the packed indices mapped back after. PyTorch3D computes in float32: ``zbuf`` and
    ``bary_coords`` are float32; ``dists`` is converted from its signed *squared* NDC distance to our
    signed distance in pixels. Its inside test is strict (a pixel centre exactly on an edge is covered
    by neither triangle; ours is inclusive) and its barycentrics divide by the area plus 1e-8 (NDC
    units). ``bin_size``: ``None`` (its heuristic: naive on the CPU), 0 (naive) or the bin width in
    pixels (coarse-to-fine).
    """
    try:
        from pytorch3d.renderer.mesh import rasterize_meshes
        from pytorch3d.structures import Meshes
    except ImportError as e:
        raise ImportError("backend='pytorch3d' needs PyTorch3D (https://github.com/facebookresearch/"
                          "pytorch3d); install it or use backend='numba' or 'torch'") from e
    faces = _check_inputs(verts_screen, faces, faces_per_pixel)
    H, W = image_hw(image_size)
    K = int(faces_per_pixel)
    v, (N, F) = verts_screen, (verts_screen.shape[0], faces.shape[0])
    s = min(H, W)
    ndc = torch.stack((-(2 * v[..., 0] - W) / s, -(2 * v[..., 1] - H) / s, v[..., 2]), -1)
    tri = v.detach().to(torch.float64)[:, faces]  # (N, F, 3, 3)
    x, y = tri[..., 0], tri[..., 1]
    area = ((x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0])
            - (y[..., 1] - y[..., 0]) * (x[..., 2] - x[..., 0]))
    keep = (tri[..., 2] > 0).all(-1) & (area.abs() > AREA_EPS)
    if cull_backfaces:
        keep &= area < 0
    if not bool(keep.any()):
        empty = torch.full((N, H, W, K), -1, dtype=torch.int64, device=v.device)
        minus = torch.full((N, H, W, K), -1.0, dtype=torch.float32, device=v.device)
        return Fragments(empty, minus, minus[..., None].expand(-1, -1, -1, -1, 3).clone(), minus.clone())
    faces_list = [faces[keep[n]] for n in range(N)]
    back = torch.cat([n * F + keep[n].nonzero().squeeze(1) for n in range(N)])
    meshes = Meshes(verts=list(ndc.float()), faces=faces_list)
    p2f, zbuf, bary, d2 = rasterize_meshes(meshes, image_size=(H, W), faces_per_pixel=K,
                                           perspective_correct=bool(perspective_correct),
                                           bin_size=bin_size)
    p2f = torch.where(p2f >= 0, back[p2f.clamp(min=0)], p2f)
    dists = torch.where(p2f >= 0, torch.sign(d2) * d2.abs().sqrt() * (s / 2), d2)
    return Fragments(p2f, zbuf, bary, dists)


def _visibility_pytorch3d(verts, faces, H, W, K, perspective, cull):
    """pix_to_face of :func:`pytorch3d_fragments` (no gradient)."""
    with torch.no_grad():
        return pytorch3d_fragments(verts, faces, (H, W), K, perspective, cull).pix_to_face


# ------------------------------------------------------------------------------------------------
# public API


def visibility(verts_screen, faces, image_size, faces_per_pixel=1, perspective_correct=True,
               cull_backfaces=False, backend="auto"):
    """Which faces cover each pixel: ``pix_to_face`` ``(N, H, W, K)`` int64, packed face indices,
    the K nearest sorted by depth, -1 where none. Not differentiable (a hard decision).

    ``verts_screen`` ``(N, V, 3)`` in pixel coordinates (module docstring), ``faces`` ``(F, 3)``.
    The depth test uses the depth :func:`fragments_from_pix_to_face` reports (perspective-correct or
    screen-linear as ``perspective_correct`` says). ``backend``: ``"numba"`` (CPU kernel, tensors on
    another device make a round trip), ``"torch"`` (vectorised PyTorch, any device), ``"pytorch3d"``,
    or ``"auto"``: numba for CPU tensors when importable, else PyTorch3D for CUDA tensors when
    importable, else torch.
    """
    faces = _check_inputs(verts_screen, faces, faces_per_pixel, backend)
    H, W = image_hw(image_size)
    return _visibility(verts_screen, faces, H, W, int(faces_per_pixel), perspective_correct,
                       cull_backfaces, backend)[0]


def _visibility(verts, faces, H, W, K, perspective, cull, backend):
    """Dispatch; returns (pix_to_face, z or None)."""
    if backend == "auto":
        if verts.device.type == "cpu" and HAVE_NUMBA:
            backend = "numba"
        elif verts.device.type == "cuda" and _have_pytorch3d():
            backend = "pytorch3d"
        else:
            backend = "torch"
    if backend == "numba":
        if not HAVE_NUMBA:
            raise ImportError("backend='numba' needs numba (pip install numba); or use backend='torch'")
        return _visibility_numba(verts, faces, H, W, K, bool(perspective), bool(cull))
    if backend == "torch":
        return _visibility_torch(verts, faces, H, W, K, bool(perspective), bool(cull))
    return _visibility_pytorch3d(verts, faces, H, W, K, bool(perspective), bool(cull)), None


def _have_pytorch3d() -> bool:
    try:
        import pytorch3d.renderer  # noqa: F401
    except ImportError:
        return False
    return True


def fragments_from_pix_to_face(verts_screen, faces, pix_to_face, perspective_correct=True) -> Fragments:
    """``Fragments`` recomputed in PyTorch from the face index image (DRTK's ``render`` step), so
    ``zbuf``, ``bary_coords`` and ``dists`` are differentiable w.r.t. ``verts_screen`` ``(N, V, 3)``.

    ``faces`` ``(F, 3)``; ``pix_to_face`` ``(N, H, W, K)`` packed face indices (-1: none). Only the
    covered pixels are gathered: O(N H W K) work. Screen barycentrics ``b_i`` are ratios of edge
    functions at the pixel centre; with ``perspective_correct`` they become
    ``(b_i / z_i) / sum_j (b_j / z_j)`` and ``zbuf = 1 / sum_j (b_j / z_j)``; otherwise (orthographic,
    weak perspective) ``bary = b`` and ``zbuf = sum_i b_i z_i``.
    """
    N, V = verts_screen.shape[:2]
    F = max(faces.shape[0], 1)
    _, H, W, K = pix_to_face.shape
    dtype, dev = verts_screen.dtype, verts_screen.device
    faces = faces.to(device=dev, dtype=torch.int64)
    p2f = pix_to_face.reshape(-1)
    flat = (p2f >= 0).nonzero().squeeze(1)
    pf = p2f.index_select(0, flat)
    pix = flat // K
    vidx = faces.index_select(0, pf % F) + (pf // F * V)[:, None]
    tri = verts_screen.reshape(N * V, 3).index_select(0, vidx.reshape(-1)).view(-1, 3, 3)
    # vertices relative to the pixel centre, one (M,) column per vertex and coordinate
    cx = (pix % W).to(dtype) + 0.5
    cy = ((pix // W) % H).to(dtype) + 0.5
    x = [tri[:, i, 0] - cx for i in range(3)]
    y = [tri[:, i, 1] - cy for i in range(3)]
    z = [tri[:, i, 2] for i in range(3)]
    w = [x[(i + 1) % 3] * y[(i + 2) % 3] - y[(i + 1) % 3] * x[(i + 2) % 3] for i in range(3)]
    s = w[0] + w[1] + w[2]
    tiny = torch.finfo(dtype).tiny
    s = torch.where(s.abs() < tiny, torch.full_like(s, tiny), s)  # guards float32 slivers
    b = [wi / s for wi in w]
    if perspective_correct:
        bz = [bi / zi for bi, zi in zip(b, z)]
        depth = 1.0 / (bz[0] + bz[1] + bz[2])
        bary = torch.stack(bz, 1) * depth[:, None]
    else:
        depth = b[0] * z[0] + b[1] * z[1] + b[2] * z[2]
        bary = torch.stack(b, 1)
    # distance to the nearest edge line (= to the boundary, the pixel being inside): |w_i| / |edge_i|,
    # edge i (opposite vertex i) joining vertices i + 1 and i + 2
    sgn = torch.sign(s)
    d = [w[i] * sgn / torch.hypot(x[(i + 2) % 3] - x[(i + 1) % 3], y[(i + 2) % 3] - y[(i + 1) % 3])
         .clamp_min(tiny) for i in range(3)]
    dist = -torch.minimum(torch.minimum(d[0], d[1]), d[2])

    def scatter(vals, trailing=()):
        out = torch.full((N * H * W * K, *trailing), -1.0, dtype=dtype, device=dev)
        return out.index_put_((flat,), vals).view(N, H, W, K, *trailing)  # in place: no copy

    return Fragments(pix_to_face, scatter(depth), scatter(bary, (3,)), scatter(dist))


def rasterize(verts_screen, faces, image_size, faces_per_pixel=1, perspective_correct=True,
              cull_backfaces=False, backend="auto") -> Fragments:
    """Rasterize a batch of meshes sharing one topology: :func:`visibility` then
    :func:`fragments_from_pix_to_face`.

    Args:
        verts_screen: ``(N, V, 3)`` x, y in pixels (x right, y down, pixel centres at +0.5), z positive
            depth (smaller is closer). Gradients flow to it through ``zbuf``, ``bary_coords``, ``dists``.
        faces: ``(F, 3)`` integer vertex indices, counter-clockwise as the viewer sees a front face
            (negative signed area in the y-down pixel frame). ``F = 0`` is an empty scene.
        image_size: ``int`` or ``(H, W)``.
        faces_per_pixel: K, the nearest K faces per pixel in depth order.
        perspective_correct: perspective-correct barycentrics and depth (for a pinhole projection);
            ``False`` for orthographic / weak perspective (screen-space barycentrics).
        cull_backfaces: skip faces with positive signed area (seen from behind).
        backend: ``"auto"``, ``"numba"``, ``"torch"`` or ``"pytorch3d"`` (see :func:`visibility`).

    Returns:
        :class:`Fragments` with ``pix_to_face`` ``(N, H, W, K)``, ``zbuf`` ``(N, H, W, K)``,
        ``bary_coords`` ``(N, H, W, K, 3)``, ``dists`` ``(N, H, W, K)``; -1 where no face.
    """
    faces = _check_inputs(verts_screen, faces, faces_per_pixel, backend)
    H, W = image_hw(image_size)
    p2f, _ = _visibility(verts_screen, faces, H, W, int(faces_per_pixel), perspective_correct,
                         cull_backfaces, backend)
    tw = _twins.twin("fragments", verts_screen) if backend in ("auto", "numba") else None
    if tw is not None:  # the Numba twin: the same numbers, no graph (facelib.render.fast.twins)
        return tw(verts_screen, faces, p2f, perspective_correct)
    return fragments_from_pix_to_face(verts_screen, faces, p2f, perspective_correct)


def interpolate(attrs, fragments, faces, detach_bary=False):
    """Per-pixel attributes ``(N, H, W, K, D)`` from per-vertex ``attrs`` ``(N, V, D)`` or shared
    ``(V, D)`` (Richardson et al. Eq. 6: ``a(p) = sum_i bary_i a_i``); zero where no face.

    Differentiable w.r.t. ``attrs``. ``detach_bary=False`` (default, DRTK / PyTorch3D mode): also
    w.r.t. the vertex positions through ``fragments.bary_coords``. ``detach_bary=True`` (Eq. 7 mode):
    barycentrics are held fixed, gradients reach the attributes only.
    """
    p2f, bary = fragments.pix_to_face, fragments.bary_coords
    if attrs.ndim not in (2, 3):
        raise ValueError(f"attrs must have shape (N, V, D) or (V, D); got {tuple(attrs.shape)}")
    faces = faces.to(device=attrs.device, dtype=torch.int64)
    N, H, W, K = p2f.shape
    F = faces.shape[0]
    shared = attrs.ndim == 2
    if not shared and attrs.shape[0] != N:
        raise ValueError(f"attrs has batch size {attrs.shape[0]}; the fragments have {N}")
    V, D = attrs.shape[-2:]
    if F and int(faces.max()) >= V:
        raise ValueError(f"faces index vertex {int(faces.max())}; attrs has only {V} vertices")
    if detach_bary:
        bary = bary.detach()
    tw = _twins.twin("interpolate", attrs, bary) if bary.dtype == attrs.dtype else None
    if tw is not None:  # the Numba twin when no gradient is needed (facelib.render.fast.twins)
        return tw(attrs, faces, p2f, bary)
    flat = (p2f.reshape(-1) >= 0).nonzero().squeeze(1)
    pf = p2f.reshape(-1)[flat]
    vidx = faces[pf % max(F, 1)]
    if not shared:
        vidx = vidx + (pf // max(F, 1) * V)[:, None]
    vals = (attrs.reshape(-1, D)[vidx] * bary.reshape(-1, 3)[flat][..., None]).sum(1)
    out = attrs.new_zeros(N * H * W * K, D).index_put_((flat,), vals.to(attrs.dtype))
    return out.view(N, H, W, K, D)
