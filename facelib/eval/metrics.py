"""Evaluation: error measures of InverseFaceNet Sec. 8, Tewari et al. Sec. 7 and Richardson et al. Table 1.

Small tensor functions, batch first, that return one value per image ``(B,)`` so that callers report
``mean`` and ``std`` over a test set:

- :func:`photometric_rmse` (8-bit units) and :func:`photometric_rgb_distance` (RGB in [0, 1]) over a
  face mask;
- :func:`geometric_rmse` over corresponding vertices (mm), after :func:`similarity_align` if wanted;
- :func:`mask_iou` (%) and :func:`depth_error` (mean and 90th percentile, mm);
- :func:`point_to_surface_distance` and :func:`mesh_to_mesh_rmse` for meshes of different topology
  (e.g. a reconstruction against a ground-truth scan);
- :func:`now_error`, the NoW benchmark's measure shared by every chapter: landmark similarity
  alignment, rigid ICP, then the distance of each ground-truth point to the reconstruction's surface
  (:func:`closest_points`, exact, about 0.06 s per face of the open model).

An image whose mask (or valid region) is empty gets ``nan``, never an exception, so a batch is
never lost to one bad image; use ``torch.nanmean`` or filter before averaging.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "masked_mean",
    "photometric_rmse",
    "photometric_rgb_distance",
    "geometric_rmse",
    "mask_iou",
    "depth_error",
    "similarity_align",
    "closest_point_on_triangle",
    "point_to_surface_distance",
    "mesh_to_mesh_rmse",
    "closest_points",
    "NowError",
    "now_error",
]


# ----------------------------------------------------------------------------------------- checks

def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in x.shape) + ")" if x.ndim != 1 else f"({x.shape[0]},)"


def _check_image(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} has shape {_shape(x)}; expected (B, 3, H, W)")
    return x


def _check_map(x, name: str, like: torch.Size) -> torch.Tensor:
    """A per-pixel map ``(B, H, W)``; ``(H, W)`` is broadcast over the batch."""
    x = torch.as_tensor(x)
    B, H, W = like
    if x.ndim == 2:
        x = x.expand(B, *x.shape)
    if tuple(x.shape) != (B, H, W):
        raise ValueError(f"{name} has shape {_shape(x)}; expected (B, H, W) = ({B}, {H}, {W}) "
                         f"or (H, W) = ({H}, {W})")
    return x


def _check_mask(x, name: str, like: torch.Size) -> torch.Tensor:
    x = _check_map(x, name, like)
    if x.dtype != torch.bool:
        raise ValueError(f"{name} has dtype {x.dtype}; expected torch.bool (use mask > 0.5)")
    return x


def _check_same(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {_shape(a)} but {name_b} has shape {_shape(b)}; "
                         "they must match")


def _check_points(x, name: str, batched: bool) -> torch.Tensor:
    x = torch.as_tensor(x)
    if batched and (x.ndim != 3 or x.shape[-1] != 3):
        raise ValueError(f"{name} has shape {_shape(x)}; expected (B, V, 3)")
    if not batched and (x.ndim != 2 or x.shape[-1] != 3):
        raise ValueError(f"{name} has shape {_shape(x)}; expected (V, 3)")
    return x


def masked_mean(values: torch.Tensor, mask: torch.Tensor, empty: float = float("nan")) -> torch.Tensor:
    """Mean of ``values`` ``(B, ...)`` over ``mask`` (same shape, bool) per image -> ``(B,)``; ``empty``
    where the mask is empty (default ``nan``: an error measure over no pixels is undefined; the
    shape-from-shading energies take 0)."""
    m = mask.to(values.dtype)
    count = m.flatten(1).sum(1)
    total = (values * m).flatten(1).sum(1)
    mean = total / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, empty))



# ---------------------------------------------------------------------------------- photometric

def photometric_rmse(image, target, mask) -> torch.Tensor:
    """Photometric RMSE in 8-bit units over the pixels inside ``mask`` (InverseFaceNet Sec. 8).

    ``image``, ``target``: ``(B, 3, H, W)`` in [0, 1]; ``mask``: ``(B, H, W)`` (or ``(H, W)``) bool.
    Returns ``(B,)``: ``255 * sqrt(mean over masked pixels and all 3 channels of (image - target)^2)``;
    ``nan`` for an image whose mask is empty.
    """
    image, target = _check_image(image, "image"), _check_image(target, "target")
    _check_same(image, target, "image", "target")
    mask = _check_mask(mask, "mask", image.shape[:1] + image.shape[2:])
    mse = ((image - target) * 255.0).square().mean(1)  # (B, H, W), mean over channels
    return masked_mean(mse, mask).sqrt()


def photometric_rgb_distance(image, target, mask) -> torch.Tensor:
    """Mean Euclidean RGB distance over the pixels inside ``mask``, channels in [0, 1].

    Tewari et al. 2017 Sec. 7 (photometric error 0.092 -> 0.072).  ``image``, ``target``:
    ``(B, 3, H, W)``; ``mask``: ``(B, H, W)`` (or ``(H, W)``) bool.  Returns ``(B,)``, ``nan`` for an
    empty mask.
    """
    image, target = _check_image(image, "image"), _check_image(target, "target")
    _check_same(image, target, "image", "target")
    mask = _check_mask(mask, "mask", image.shape[:1] + image.shape[2:])
    dist = torch.linalg.vector_norm(image - target, dim=1)  # (B, H, W)
    return masked_mean(dist, mask)


# ------------------------------------------------------------------------------------ geometric

def geometric_rmse(verts, verts_gt, mask=None) -> torch.Tensor:
    """Geometric RMSE (mm) over corresponding vertices (InverseFaceNet Sec. 8, Tewari Sec. 7).

    ``verts``, ``verts_gt``: ``(B, V, 3)`` in mm with the same topology; ``mask``: ``(V,)`` bool
    (optional) selects the vertices that count, e.g. the face region.  Returns
    ``sqrt(mean_v |verts_v - verts_gt_v|^2)`` per mesh, ``(B,)``; ``nan`` if ``mask`` is all False.
    Align first with :func:`similarity_align` when the poses or scales differ.
    """
    verts, verts_gt = _check_points(verts, "verts", True), _check_points(verts_gt, "verts_gt", True)
    _check_same(verts, verts_gt, "verts", "verts_gt")
    d2 = (verts - verts_gt).square().sum(-1)  # (B, V)
    if mask is None:
        mask = torch.ones(d2.shape[1], dtype=torch.bool, device=d2.device)
    mask = torch.as_tensor(mask, device=d2.device)
    if mask.shape != (d2.shape[1],) or mask.dtype != torch.bool:
        raise ValueError(f"mask has shape {_shape(mask)} and dtype {mask.dtype}; expected a bool "
                         f"vector ({d2.shape[1]},), one entry per vertex")
    return masked_mean(d2, mask.expand_as(d2)).sqrt()


def mask_iou(mask_a, mask_b) -> torch.Tensor:
    """Intersection over union of two masks, in percent.

    ``mask_a``, ``mask_b``: ``(B, H, W)`` bool.  Returns ``(B,)`` = ``100 |a & b| / |a | b|``;
    ``nan`` where both masks are empty.
    """
    mask_a, mask_b = torch.as_tensor(mask_a), torch.as_tensor(mask_b)
    if mask_a.ndim != 3:
        raise ValueError(f"mask_a has shape {_shape(mask_a)}; expected (B, H, W)")
    _check_same(mask_a, mask_b, "mask_a", "mask_b")
    mask_a = _check_mask(mask_a, "mask_a", mask_a.shape)
    mask_b = _check_mask(mask_b, "mask_b", mask_a.shape)
    inter = (mask_a & mask_b).flatten(1).sum(1).double()
    union = (mask_a | mask_b).flatten(1).sum(1).double()
    iou = 100.0 * inter / union.clamp(min=1)
    return torch.where(union > 0, iou, torch.full_like(iou, float("nan"))).float()


def depth_error(depth, depth_gt, valid_a=None, valid_b=None, q: float = 0.9) -> dict:
    """Absolute depth error over the pixels valid in both maps (Richardson et al. Table 1).

    ``depth``, ``depth_gt``: ``(B, H, W)`` in mm; ``valid_a``, ``valid_b``: ``(B, H, W)`` (or
    ``(H, W)``) bool, default all True; non-finite depths are never valid.  Returns
    ``{"mean": (B,), "p90": (B,)}``: the mean and the ``q``-quantile (default the 90th percentile,
    linear interpolation as ``numpy.percentile``) of ``|depth - depth_gt|``; ``nan`` where no pixel
    is valid in both.
    """
    depth, depth_gt = torch.as_tensor(depth), torch.as_tensor(depth_gt)
    if depth.ndim != 3:
        raise ValueError(f"depth has shape {_shape(depth)}; expected (B, H, W)")
    _check_same(depth, depth_gt, "depth", "depth_gt")
    valid = torch.isfinite(depth) & torch.isfinite(depth_gt)
    for v, name in ((valid_a, "valid_a"), (valid_b, "valid_b")):
        if v is not None:
            valid = valid & _check_mask(v, name, depth.shape).to(valid.device)
    err = (depth - depth_gt).abs()
    err = torch.where(valid, err, torch.zeros_like(err))  # keeps nan/inf out of the mean
    mean = masked_mean(err, valid)
    p90 = torch.stack([torch.quantile(e[m], q) if m.any() else e.new_tensor(float("nan"))
                       for e, m in zip(err, valid)])
    return {"mean": mean, "p90": p90}


# ------------------------------------------------------------------------------------ alignment

def similarity_align(src, dst, weights=None, scale: bool = True):
    """Least-squares similarity transform ``dst ~ s R src + t`` (Umeyama 1991), differentiable.

    ``src``, ``dst``: ``(B, V, 3)`` corresponding points; ``weights``: ``(B, V)`` or ``(V,)``
    non-negative (optional).  ``R`` is a proper rotation (det +1, reflections excluded);
    ``scale=False`` fixes ``s = 1`` (rigid alignment).  Returns ``(aligned (B, V, 3), s (B,),
    R (B, 3, 3), t (B, 3))`` with ``aligned = s * src @ R^T + t``.  Gradients flow through the SVD;
    they are undefined when two singular values of the cross-covariance coincide.
    """
    src, dst = _check_points(src, "src", True), _check_points(dst, "dst", True)
    _check_same(src, dst, "src", "dst")
    B, V, _ = src.shape
    if weights is None:
        w = src.new_ones(B, V)
    else:
        w = torch.as_tensor(weights, dtype=src.dtype, device=src.device)
        if w.shape not in ((V,), (B, V)):
            raise ValueError(f"weights have shape {_shape(w)}; expected (B, V) = ({B}, {V}) or ({V},)")
        w = w.expand(B, V)
    w = w / w.sum(1, keepdim=True)
    mu_s = (w[..., None] * src).sum(1)  # (B, 3)
    mu_d = (w[..., None] * dst).sum(1)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    cov = torch.einsum("bv,bvi,bvj->bij", w, xd, xs)  # Sigma_xy of Umeyama Eq. 38, (B, 3, 3)
    U, S, Vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    d = torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1)  # Umeyama Eq. 39
    R = U @ (d[..., None] * Vh)  # Eq. 40
    if scale:
        var_s = (w * xs.square().sum(-1)).sum(1)  # Eq. 36
        s = (S * d).sum(-1) / var_s  # Eq. 42
    else:
        s = torch.ones_like(sign)
    t = mu_d - s[:, None] * torch.einsum("bij,bj->bi", R, mu_s)  # Eq. 41
    aligned = s[:, None, None] * src @ R.transpose(1, 2) + t[:, None]
    return aligned, s, R, t


# ----------------------------------------------------------------------- point to surface distance

def closest_point_on_triangle(p, a, b, c) -> torch.Tensor:
    """Closest point to ``p`` on triangle ``(a, b, c)``, all ``(..., 3)`` broadcastable.

    Ericson, *Real-Time Collision Detection*, Sec. 5.1.5: the Voronoi region of ``p`` (a vertex, an
    edge or the interior) decides the answer.  Exact, vectorised, differentiable; degenerate
    triangles fall back to their edges and vertices.
    """
    ab, ac, ap = b - a, c - a, p - a
    bp, cp = p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    def ratio(num, den):  # safe division: the unused branches of torch.where must not produce nan
        return num / torch.where(den == 0, torch.ones_like(den), den)

    denom = ratio(torch.ones_like(va), va + vb + vc)
    q = a + ab * (vb * denom)[..., None] + ac * (vc * denom)[..., None]  # interior
    steps = [  # (region condition, closest point), applied from the lowest priority up
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
         b + (c - b) * ratio(d4 - d3, (d4 - d3) + (d5 - d6))[..., None]),  # edge BC
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * ratio(d2, d2 - d6)[..., None]),  # edge AC
        ((d6 >= 0) & (d5 <= d6), c.expand_as(q)),  # vertex C
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * ratio(d1, d1 - d3)[..., None]),  # edge AB
        ((d3 >= 0) & (d4 <= d3), b.expand_as(q)),  # vertex B
        ((d1 <= 0) & (d2 <= 0), a.expand_as(q)),  # vertex A
    ]
    for cond, point in steps:
        q = torch.where(cond[..., None], point, q)
    return q


def _check_mesh(verts, faces, name: str):
    verts = _check_points(verts, f"{name} vertices", False)
    faces = torch.as_tensor(faces, device=verts.device)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise ValueError(f"{name} faces have shape {_shape(faces)} and dtype {faces.dtype}; "
                         "expected integer (F, 3)")
    if faces.numel() == 0:
        raise ValueError(f"{name} has no faces; a surface needs at least one triangle")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise ValueError(f"{name} face indices span [{int(faces.min())}, {int(faces.max())}] but "
                         f"there are {len(verts)} vertices (faces are 0-based)")
    return verts, faces.long()


def point_to_surface_distance(points, verts, faces, method: str = "pruned",
                              chunk: int = 1 << 20) -> torch.Tensor:
    """Exact Euclidean distance of each point to the nearest point of a triangle mesh's surface.

    ``points``: ``(P, 3)``; ``verts``: ``(V, 3)``; ``faces``: ``(F, 3)`` 0-based.  Returns ``(P,)``
    in the units of the inputs (mm).  The meshes may have any topology (e.g. a reconstruction
    against a scan).  Differentiable in ``points`` and ``verts`` (the nearest triangle is chosen
    without gradients, the distance to it then recomputed with them).

    ``method="pruned"`` (default) is exact and fast: the nearest triangle comes from the search of
    :func:`closest_points` (a grid of cells measured ring by ring until no unmeasured
    triangle can be closer).  ``method="brute"`` measures every point against every triangle in
    chunks of ``chunk`` pairs (a reference, and fine for small meshes).
    """
    points = _check_points(points, "points", False)
    verts, faces = _check_mesh(verts, faces, "mesh")
    if method not in ("pruned", "brute"):
        raise ValueError(f"method={method!r}; expected 'pruned' or 'brute'")
    dtype = torch.promote_types(points.dtype, verts.dtype)
    dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    points, verts = points.to(device=verts.device, dtype=dtype), verts.to(dtype)
    P, F = len(points), len(faces)
    if P == 0:
        return points.new_zeros(0)
    tri = verts[faces]  # (F, 3, 3)
    if method == "brute":
        best = torch.empty(P, dtype=torch.long, device=verts.device)
        step = max(1, chunk // F)
        with torch.no_grad():
            for s in range(0, P, step):
                p = points[s:s + step, None]  # (p, 1, 3) against (F, 3)
                q = closest_point_on_triangle(p, tri[:, 0], tri[:, 1], tri[:, 2])
                best[s:s + step] = (p - q).square().sum(-1).argmin(1)
    else:  # the nearest triangle of closest_points' exact search, then the distance with gradients
        t_np = np.ascontiguousarray(tri.detach().double().cpu().numpy())
        pts = np.ascontiguousarray(points.detach().double().cpu().numpy())
        best = torch.from_numpy(_Surface(t_np).query(pts)[2]).to(verts.device)
    t = tri[best]
    q = closest_point_on_triangle(points, t[:, 0], t[:, 1], t[:, 2])
    return torch.linalg.vector_norm(points - q, dim=-1)


def mesh_to_mesh_rmse(verts_a, verts_b, faces_b, faces_a=None) -> torch.Tensor:
    """RMSE (mm) of the distances from the vertices of mesh A to the surface of mesh B.

    ``verts_a``: ``(P, 3)``; ``verts_b``: ``(V, 3)``; ``faces_b``: ``(F, 3)``; the meshes may differ
    in topology.  With ``faces_a`` given the error is symmetric: the RMSE over the distances of
    A's vertices to B's surface together with those of B's vertices to A's surface.  Returns a
    scalar tensor.  Align first (e.g. :func:`similarity_align` on landmarks) if the frames differ.
    """
    d = point_to_surface_distance(verts_a, verts_b, faces_b)
    if faces_a is not None:
        d = torch.cat([d, point_to_surface_distance(verts_b, verts_a, faces_a)])
    return d.square().mean().sqrt()


# ------------------------------------------------------------------ NoW-style geometric error

@functools.lru_cache(maxsize=1)
def _grid_kernels():
    """The Numba kernels of :class:`_Surface` ``(build, query)``, compiled on first use and cached on
    disk."""
    from numba import njit, prange

    @njit(cache=True, inline="always")
    def closest_on(px, py, pz, tri, f):  # pragma: no cover - compiled
        """Squared distance and closest point of triangle ``tri[f]`` to ``p``: Ericson Sec. 5.1.5, the
        formulas of :func:`closest_point_on_triangle`."""
        ax, ay, az = tri[f, 0, 0], tri[f, 0, 1], tri[f, 0, 2]
        abx, aby, abz = tri[f, 1, 0] - ax, tri[f, 1, 1] - ay, tri[f, 1, 2] - az
        acx, acy, acz = tri[f, 2, 0] - ax, tri[f, 2, 1] - ay, tri[f, 2, 2] - az
        apx, apy, apz = px - ax, py - ay, pz - az
        d1 = abx * apx + aby * apy + abz * apz
        d2 = acx * apx + acy * apy + acz * apz
        bpx, bpy, bpz = px - tri[f, 1, 0], py - tri[f, 1, 1], pz - tri[f, 1, 2]
        d3 = abx * bpx + aby * bpy + abz * bpz
        d4 = acx * bpx + acy * bpy + acz * bpz
        cpx, cpy, cpz = px - tri[f, 2, 0], py - tri[f, 2, 1], pz - tri[f, 2, 2]
        d5 = abx * cpx + aby * cpy + abz * cpz
        d6 = acx * cpx + acy * cpy + acz * cpz
        va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
        if d1 <= 0 and d2 <= 0:  # vertex A
            u, v = 0.0, 0.0
        elif d3 >= 0 and d4 <= d3:  # vertex B
            u, v = 1.0, 0.0
        elif vc <= 0 and d1 >= 0 and d3 <= 0:  # edge AB
            u, v = d1 / (d1 - d3) if d1 - d3 != 0 else 0.0, 0.0
        elif d6 >= 0 and d5 <= d6:  # vertex C
            u, v = 0.0, 1.0
        elif vb <= 0 and d2 >= 0 and d6 <= 0:  # edge AC
            u, v = 0.0, d2 / (d2 - d6) if d2 - d6 != 0 else 0.0
        elif va <= 0 and d4 - d3 >= 0 and d5 - d6 >= 0:  # edge BC
            den = (d4 - d3) + (d5 - d6)
            w = (d4 - d3) / den if den != 0 else 0.0
            u, v = 1.0 - w, w
        else:  # interior
            s = va + vb + vc
            den = 1.0 / s if s != 0 else 1.0
            u, v = vb * den, vc * den
        qx, qy, qz = ax + abx * u + acx * v, ay + aby * u + acy * v, az + abz * u + acz * v
        return (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2, qx, qy, qz

    @njit(cache=True)
    def build(lo, hi, dims):  # pragma: no cover - compiled
        """Cells ``lo[f] .. hi[f]`` (inclusive, ``(F, 3)``) of each triangle -> CSR lists ``start
        (cells + 1,)``, ``items`` of the triangles whose bounding box overlaps each cell."""
        ny, nz = dims[1], dims[2]
        start = np.zeros(dims[0] * ny * nz + 1, dtype=np.int64)
        for f in range(lo.shape[0]):
            for i in range(lo[f, 0], hi[f, 0] + 1):
                for j in range(lo[f, 1], hi[f, 1] + 1):
                    for k in range(lo[f, 2], hi[f, 2] + 1):
                        start[(i * ny + j) * nz + k + 1] += 1
        for c in range(1, start.shape[0]):
            start[c] += start[c - 1]
        items = np.empty(start[-1], dtype=np.int64)
        fill = start[:-1].copy()
        for f in range(lo.shape[0]):
            for i in range(lo[f, 0], hi[f, 0] + 1):
                for j in range(lo[f, 1], hi[f, 1] + 1):
                    for k in range(lo[f, 2], hi[f, 2] + 1):
                        c = (i * ny + j) * nz + k
                        items[fill[c]] = f
                        fill[c] += 1
        return start, items

    @njit(parallel=True, cache=True)
    def query(pts, tri, origin, h, dims, start, items, big, out_d2, out_q, out_f):  # pragma: no cover
        """For each point: the nearest of the ``big`` triangles, then the grid's cells ring by ring
        (Chebyshev distance r = 0, 1, ... from the point's cell, clipped to the grid) until the best
        distance is at most ``r h + m`` (``m``: the point to its cell's nearest face): a closer
        surface point would lie in a visited cell.  A cell farther from the point than the best
        distance so far is skipped: the closest point of a nearer triangle lies in a cell at most that
        far, which is measured (the same distances; among triangles at exactly the same distance the
        one kept may differ)."""
        nx, ny, nz = dims[0], dims[1], dims[2]
        for n in prange(pts.shape[0]):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            best, bx, by, bz, bf = np.inf, 0.0, 0.0, 0.0, -1
            for f in big:
                dd, qx, qy, qz = closest_on(px, py, pz, tri, f)
                if dd < best:
                    best, bx, by, bz, bf = dd, qx, qy, qz, f
            ci = int(np.floor((px - origin[0]) / h))
            cj = int(np.floor((py - origin[1]) / h))
            ck = int(np.floor((pz - origin[2]) / h))
            fx, fy, fz = px - origin[0] - ci * h, py - origin[1] - cj * h, pz - origin[2] - ck * h
            m = min(fx, h - fx, fy, h - fy, fz, h - fz)  # p to its own cell's faces
            r = max(0, -ci, ci - nx + 1, -cj, cj - ny + 1, -ck, ck - nz + 1)  # nearer rings miss the grid
            rmax = max(ci, nx - 1 - ci, cj, ny - 1 - cj, ck, nz - 1 - ck)  # this ring covers the grid
            while r <= rmax:
                for i in range(max(ci - r, 0), min(ci + r, nx - 1) + 1):
                    x0 = origin[0] + i * h
                    dx = max(x0 - px, 0.0, px - x0 - h)  # p to cell column i, along x
                    for j in range(max(cj - r, 0), min(cj + r, ny - 1) + 1):
                        y0 = origin[1] + j * h
                        dy = max(y0 - py, 0.0, py - y0 - h)
                        side = abs(i - ci) == r or abs(j - cj) == r
                        k0, k1 = max(ck - r, 0), min(ck + r, nz - 1)
                        k = k0
                        while k <= k1:
                            if side or abs(k - ck) == r:
                                z0 = origin[2] + k * h
                                dz = max(z0 - pz, 0.0, pz - z0 - h)
                                if dx * dx + dy * dy + dz * dz > best:  # no nearer point in this cell
                                    k += 1
                                    continue
                                c = (i * ny + j) * nz + k
                                for s in range(start[c], start[c + 1]):
                                    f = items[s]
                                    dd, qx, qy, qz = closest_on(px, py, pz, tri, f)
                                    if dd < best:
                                        best, bx, by, bz, bf = dd, qx, qy, qz, f
                                k += 1
                            else:  # inside the ring's shell: jump to its far face
                                k = max(ck + r, k + 1)
                if best <= (r * h + m) ** 2:
                    break
                r += 1
            out_d2[n] = best
            out_q[n, 0], out_q[n, 1], out_q[n, 2] = bx, by, bz
            out_f[n] = bf

    return build, query


class _Surface:
    """A triangle mesh ``(F, 3, 3)`` float64 indexed for exact closest-point queries: a uniform grid of
    cubic cells (side ``cell``: by default the median of the triangles' bounding-box extents, enlarged
    so that the grid has at most ``max_cells`` cells), each listing the triangles whose bounding box
    overlaps it; a triangle that would span more than ``max_span`` cells is measured against every
    point instead."""

    def __init__(self, tri: np.ndarray, cell: float | None = None, max_cells: int = 1 << 22,
                 max_span: int = 512):
        self.tri = np.ascontiguousarray(tri, dtype=np.float64)
        t0, t1, t2 = self.tri[:, 0], self.tri[:, 1], self.tri[:, 2]
        lo, hi = np.minimum(np.minimum(t0, t1), t2), np.maximum(np.maximum(t0, t1), t2)  # (F, 3) boxes
        self.origin = lo.min(0) if len(tri) else np.zeros(3)
        extent = (hi.max(0) - self.origin) if len(tri) else np.zeros(3)
        h = float(np.median((hi - lo).max(1))) if cell is None and len(tri) else float(cell or 1.0)
        h = max(h, float(np.prod(np.maximum(extent, 1e-9)) / max_cells) ** (1 / 3), 1e-9)
        self.h = h
        self.dims = (np.floor(extent / h).astype(np.int64) + 1)
        c_lo = np.minimum(np.floor((lo - self.origin) / h).astype(np.int64), self.dims - 1)
        c_hi = np.minimum(np.floor((hi - self.origin) / h).astype(np.int64), self.dims - 1)
        span = (c_hi - c_lo + 1).prod(1)
        small = span <= max_span
        self.big = np.flatnonzero(~small).astype(np.int64)
        build, _ = _grid_kernels()
        self.start, items = build(c_lo[small], c_hi[small], self.dims)
        self.items = np.flatnonzero(small)[items] if len(items) else items

    def query(self, pts: np.ndarray) -> tuple:
        """``(P, 3)`` -> squared distance ``(P,)``, closest point ``(P, 3)`` and its triangle ``(P,)``,
        exact."""
        P = len(pts)
        d2, q, f = np.full(P, np.inf), np.zeros((P, 3)), np.full(P, -1, dtype=np.int64)
        if P and len(self.tri):
            _, query = _grid_kernels()
            query(np.ascontiguousarray(pts, dtype=np.float64), self.tri, self.origin, self.h, self.dims,
                  self.start, self.items, self.big, d2, q, f)
        return d2, q, f


def closest_points(points, verts, faces) -> tuple:
    """The nearest point of a triangle mesh's surface to each point, exact: ``(distance (P,), closest
    (P, 3))``, without gradients, float64 on the CPU.

    ``points (P, 3)``, ``verts (V, 3)``, ``faces (F, 3)`` 0-based.  The triangles are listed in a
    uniform grid of cubic cells (side: the median triangle's bounding-box extent), each cell holding
    those whose bounding box overlaps it; each point measures the triangles of the cells around its
    own, ring by ring (Chebyshev distance r = 0, 1, ...), with the formulas of
    :func:`closest_point_on_triangle` in a Numba kernel, and stops once its best distance is at most
    the distance to the outside of the rings measured: a closer surface point would lie in a cell
    already measured; a cell farther than the best distance so far is not opened.  About 35-50 ms for
    the 18.8k face vertices of the open model against its 44.6k triangles on 2 cores, and
    :func:`now_error` about 55 ms per face (AMD EPYC; 1.6x faster than without the skipped cells, the same
    distances to the bit, ``benchmarks/results/now_speed_before_after.json``; 8x faster than the kd-tree
    search before that; ``benchmarks/now_speed.py``).
    :func:`point_to_surface_distance` uses the same search and keeps gradients.
    """
    points = _check_points(points, "points", False)
    verts, faces = _check_mesh(verts, faces, "mesh")
    pts = np.ascontiguousarray(points.detach().cpu().double().numpy().reshape(-1, 3))
    tri = np.ascontiguousarray(verts.detach().cpu().double().numpy()[faces.cpu().numpy()])
    d2, q, _ = _Surface(tri).query(pts)
    return torch.from_numpy(np.sqrt(d2)), torch.from_numpy(q)


class NowError(NamedTuple):
    """:func:`now_error`'s result for B faces with P ground-truth points each.

    ``distance (B, P)`` mm from each ground-truth point to the aligned reconstruction's surface;
    ``closest (B, P, 3)`` the nearest points of that surface (ground-truth frame); ``aligned (B, V, 3)``
    the reconstruction's vertices in the ground-truth frame, ``aligned = s * verts @ R^T + t`` with
    ``scale (B,)``, ``R (B, 3, 3)``, ``t (B, 3)``.  All float64 on the CPU.
    """

    distance: torch.Tensor
    closest: torch.Tensor
    aligned: torch.Tensor
    scale: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor


def now_error(verts, faces, landmarks, gt_points, gt_landmarks, icp_iters: int = 3,
              icp_points: int = 2000) -> NowError:
    """The NoW benchmark's geometric error (Sanyal et al. 2019), the shared measure of the book.

    For each face: (1) a similarity transform (rigid + isotropic scale, :func:`similarity_align`) takes
    the reconstruction's landmarks onto the ground truth's; (2) ``icp_iters`` rounds of rigid alignment
    (scale kept) of the reconstruction onto the ground-truth points through their closest points on its
    surface (ICP, as NoW's refinement on the scan-to-mesh distance; on every ``ceil(P / icp_points)``-th
    point); (3) the distance from every
    ground-truth point to the reconstruction's surface (:func:`closest_points`, exact).  Report the
    mean, median and std of ``distance`` as NoW does.

    ``verts (B, V, 3)`` reconstructed vertices (mm) on ``faces (F, 3)``; ``landmarks (B, L, 3)`` their
    landmarks (e.g. ``verts[:, model.landmarks]``); ``gt_points (B, P, 3)`` the ground truth (scan
    points or a mesh's vertices, e.g. within the face mask); ``gt_landmarks (B, L, 3)`` the same
    landmarks on it.  Any topology; no gradients.  Returns :class:`NowError`.
    """
    verts = _check_points(verts, "verts", True).detach().cpu().double()
    landmarks = _check_points(landmarks, "landmarks", True).detach().cpu().double()
    gt_points = _check_points(gt_points, "gt_points", True).detach().cpu().double()
    gt_landmarks = _check_points(gt_landmarks, "gt_landmarks", True).detach().cpu().double()
    _check_same(landmarks, gt_landmarks, "landmarks", "gt_landmarks")
    B = verts.shape[0]
    if gt_points.shape[0] != B or landmarks.shape[0] != B:
        raise ValueError(f"verts {_shape(verts)}, landmarks {_shape(landmarks)} and gt_points "
                         f"{_shape(gt_points)} must have the same batch size")
    if landmarks.shape[1] < 3:
        raise ValueError(f"landmarks have shape {_shape(landmarks)}; a similarity alignment needs at least 3")
    if isinstance(icp_iters, bool) or not isinstance(icp_iters, int) or icp_iters < 0:
        raise ValueError(f"icp_iters must be a non-negative integer; got {icp_iters!r}")
    if isinstance(icp_points, bool) or not isinstance(icp_points, int) or icp_points < 3:
        raise ValueError(f"icp_points must be an integer >= 3; got {icp_points!r}")
    stride = -(-gt_points.shape[1] // icp_points)
    _check_mesh(verts[0], faces, "reconstruction")
    _, s, R, t = similarity_align(landmarks, gt_landmarks)  # (1) landmarks, rigid + scale
    out = {k_: [] for k_ in ("distance", "closest", "aligned", "R", "t")}
    f_np = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
    for b in range(B):
        surf = _Surface(np.ascontiguousarray(verts[b].numpy()[f_np]))  # indexed once, in its own frame

        def nearest(Rb, tb, gt):  # closest points of the aligned surface s R v + t: query gt in v's frame
            g = ((gt - tb) @ Rb / s[b]).numpy()
            d2, q, _ = surf.query(np.ascontiguousarray(g))
            return s[b] * torch.from_numpy(np.sqrt(d2)), s[b] * torch.from_numpy(q) @ Rb.T + tb

        Rb, tb = R[b], t[b]
        sub = gt_points[b][::stride]
        for _ in range(icp_iters):  # (2) rigid ICP on the point-to-surface correspondences
            _, q = nearest(Rb, tb, sub)
            _, _, dR, dt = similarity_align(q[None], sub[None], scale=False)
            Rb, tb = dR[0] @ Rb, dR[0] @ tb + dt[0]
        d, q = nearest(Rb, tb, gt_points[b])  # (3) ground truth -> reconstruction
        v = s[b] * verts[b] @ Rb.T + tb
        for key, val in (("distance", d), ("closest", q), ("aligned", v), ("R", Rb), ("t", tb)):
            out[key].append(val)
    st = {key: torch.stack(val) for key, val in out.items()}
    return NowError(st["distance"], st["closest"], st["aligned"], s, st["R"], st["t"])
