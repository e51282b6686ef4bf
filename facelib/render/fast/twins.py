"""Fast path: Numba twins of the reference renderer's per-pixel and per-vertex loops, for no-grad CPU work.

Each kernel computes what a reference function computes in PyTorch, with the same formulas, without an
autograd graph: :func:`facelib.render.raster.rasterize`'s fragments (barycentrics, depth, edge
distances), :func:`facelib.render.raster.interpolate`, :func:`facelib.render.shading.vertex_normals`,
:func:`facelib.render.shading.shade` (Tewari Eq. 5), :func:`facelib.render.camera.rigid_transform` (and
:func:`facelib.render.camera.rotate`), whose product with ``K = 3`` the BLAS runs several times slower, and the
image-plane steps of :func:`facelib.render.camera.perspective_project` and
:func:`facelib.render.camera.weak_perspective_project` (one pass instead of a tensor per operation).
:func:`register` lends them to the reference through :mod:`facelib.render._twins`; ``facelib.render`` calls it
on import.  The reference's PyTorch lines stay the definition: ``tests/test_raster.py`` and
``tests/test_camera_shading.py`` compare the two with the twins switched off
(:func:`facelib.render._twins.twins_disabled`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _twins
from ..raster import HAVE_NUMBA, Fragments
from ..shading import (_C1, _C2, _C20, _C22, _Y00, N_SH, SH_IRRADIANCE_CONSTANTS,  # noqa: F401
                       SH_SHADING_SCALE)

__all__ = ["register", "fragments", "interpolate", "vertex_normals", "shade", "rigid_transform", "weak_perspective",
           "perspective"]

if HAVE_NUMBA:
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def _fragments_kernel(verts, faces, p2f, perspective, zbuf, bary, dists):
        """No-grad twin of :func:`fragments_from_pix_to_face` (same formulas); outputs prefilled -1."""
        N, H, W, K = p2f.shape
        F = faces.shape[0]
        for job in prange(N * H):
            n = job // H
            i = job % H
            cy = i + 0.5
            for j in range(W):
                cx = j + 0.5
                for k in range(K):
                    pf = p2f[n, i, j, k]
                    if pf < 0:
                        continue
                    f = pf % F
                    a = faces[f, 0]
                    b = faces[f, 1]
                    c = faces[f, 2]
                    x0 = verts[n, a, 0] - cx
                    y0 = verts[n, a, 1] - cy
                    x1 = verts[n, b, 0] - cx
                    y1 = verts[n, b, 1] - cy
                    x2 = verts[n, c, 0] - cx
                    y2 = verts[n, c, 1] - cy
                    w0 = x1 * y2 - y1 * x2
                    w1 = x2 * y0 - y2 * x0
                    w2 = x0 * y1 - y0 * x1
                    s = w0 + w1 + w2
                    if abs(s) < 1e-300:
                        s = 1e-300
                    b0 = w0 / s
                    b1 = w1 / s
                    b2 = w2 / s
                    if perspective:
                        q0 = b0 / verts[n, a, 2]
                        q1 = b1 / verts[n, b, 2]
                        q2 = b2 / verts[n, c, 2]
                        d = 1.0 / (q0 + q1 + q2)
                        b0 = q0 * d
                        b1 = q1 * d
                        b2 = q2 * d
                    else:
                        d = b0 * verts[n, a, 2] + b1 * verts[n, b, 2] + b2 * verts[n, c, 2]
                    zbuf[n, i, j, k] = d
                    bary[n, i, j, k, 0] = b0
                    bary[n, i, j, k, 1] = b1
                    bary[n, i, j, k, 2] = b2
                    sg = 1.0 if s > 0 else -1.0
                    e0 = w0 * sg / max(math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2), 1e-300)
                    e1 = w1 * sg / max(math.sqrt((x0 - x2) ** 2 + (y0 - y2) ** 2), 1e-300)
                    e2 = w2 * sg / max(math.sqrt((x1 - x0) ** 2 + (y1 - y0) ** 2), 1e-300)
                    dists[n, i, j, k] = -min(e0, e1, e2)

    @njit(parallel=True, cache=True)
    def _interpolate_kernel(attrs, faces, p2f, bary, out):
        """No-grad twin of :func:`interpolate`; ``attrs`` (N or 1, V, D); ``out`` prefilled with 0."""
        N, H, W, K = p2f.shape
        F = faces.shape[0]
        D = attrs.shape[2]
        shared = attrs.shape[0] == 1
        for job in prange(N * H):
            n = job // H
            i = job % H
            m = 0 if shared else n
            for j in range(W):
                for k in range(K):
                    pf = p2f[n, i, j, k]
                    if pf < 0:
                        continue
                    f = pf % F
                    a = faces[f, 0]
                    b = faces[f, 1]
                    c = faces[f, 2]
                    b0 = bary[n, i, j, k, 0]
                    b1 = bary[n, i, j, k, 1]
                    b2 = bary[n, i, j, k, 2]
                    for d in range(D):
                        out[n, i, j, k, d] = b0 * attrs[m, a, d] + b1 * attrs[m, b, d] + b2 * attrs[m, c, d]

    @njit(parallel=True, cache=True)
    def _vertex_normals_kernel(verts, faces, out):
        B = verts.shape[0]
        V = verts.shape[1]
        for b in prange(B):
            for f in range(faces.shape[0]):
                i0 = faces[f, 0]
                i1 = faces[f, 1]
                i2 = faces[f, 2]
                ax = verts[b, i1, 0] - verts[b, i0, 0]
                ay = verts[b, i1, 1] - verts[b, i0, 1]
                az = verts[b, i1, 2] - verts[b, i0, 2]
                bx = verts[b, i2, 0] - verts[b, i0, 0]
                by = verts[b, i2, 1] - verts[b, i0, 1]
                bz = verts[b, i2, 2] - verts[b, i0, 2]
                nx = ay * bz - az * by
                ny = az * bx - ax * bz
                nz = ax * by - ay * bx
                for i in (i0, i1, i2):
                    out[b, i, 0] += nx
                    out[b, i, 1] += ny
                    out[b, i, 2] += nz
            for v in range(V):
                ln = (out[b, v, 0] ** 2 + out[b, v, 1] ** 2 + out[b, v, 2] ** 2) ** 0.5
                ln = max(ln, 1e-12)
                out[b, v, 0] /= ln
                out[b, v, 1] /= ln
                out[b, v, 2] /= ln

    @njit(parallel=True, cache=True)
    def _shade_kernel(albedo, normals, g, out):
        """No-grad twin of :func:`shade` for (B, P, 3) arrays and g (B, 9, 3) (normalised H_b)."""
        k0 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[0] * _Y00
        k1 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[1]
        k2 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[2]
        for b in prange(albedo.shape[0]):
            for p in range(albedo.shape[1]):
                x = normals[b, p, 0]
                y = normals[b, p, 1]
                z = normals[b, p, 2]
                h1 = k1 * _C1 * y
                h2 = k1 * _C1 * z
                h3 = k1 * _C1 * x
                h4 = k2 * _C2 * x * y
                h5 = k2 * _C2 * y * z
                h6 = k2 * _C20 * (3.0 * z * z - 1.0)
                h7 = k2 * _C2 * x * z
                h8 = k2 * _C22 * (x * x - y * y)
                for c in range(3):
                    e = (k0 * g[b, 0, c] + h1 * g[b, 1, c] + h2 * g[b, 2, c] + h3 * g[b, 3, c]
                         + h4 * g[b, 4, c] + h5 * g[b, 5, c] + h6 * g[b, 6, c] + h7 * g[b, 7, c]
                         + h8 * g[b, 8, c])
                    out[b, p, c] = albedo[b, p, c] * e

    @njit(parallel=True, cache=True)
    def _rigid_kernel(v, R, t, has_t, out):
        """No-grad twin of ``v @ R^T (+ t)`` (:func:`facelib.render.camera.rigid_transform`): each output
        coordinate ``((v_0 R_j0 + v_1 R_j1) + v_2 R_j2) (+ t_j)``, the order of the reference's product;
        ``R (1 or B, 3, 3)``, ``t (1 or B, 3)``."""
        B, V = v.shape[0], v.shape[1]
        for b in prange(B):
            rb = b % R.shape[0]  # R and t: one per face, or one for all
            tb = b % t.shape[0]
            r00, r01, r02 = R[rb, 0, 0], R[rb, 0, 1], R[rb, 0, 2]
            r10, r11, r12 = R[rb, 1, 0], R[rb, 1, 1], R[rb, 1, 2]
            r20, r21, r22 = R[rb, 2, 0], R[rb, 2, 1], R[rb, 2, 2]
            t0, t1, t2 = t[tb, 0], t[tb, 1], t[tb, 2]
            for i in range(V):
                x = v[b, i, 0]
                y = v[b, i, 1]
                z = v[b, i, 2]
                q0 = (x * r00 + y * r01) + z * r02
                q1 = (x * r10 + y * r11) + z * r12
                q2 = (x * r20 + y * r21) + z * r22
                if has_t:
                    q0 = q0 + t0
                    q1 = q1 + t1
                    q2 = q2 + t2
                out[b, i, 0] = q0
                out[b, i, 1] = q1
                out[b, i, 2] = q2

    @njit(parallel=True, cache=True)
    def _weak_kernel(q, s, t, c, out):
        """No-grad twin of :func:`facelib.render.camera.weak_perspective_project` after its rigid transform
        ``q (B, V, 3)``: ``x = (c_0 + s q_x) + t_x``, ``y = (c_1 - s q_y) + t_y``, ``depth = c_2 - q_z``, each
        product and sum rounded as the reference's tensor operations round them; ``s (1 or B, 1)``,
        ``t (1 or B, 1, 2)``, ``c = (W / 2, H / 2, depth_offset)`` of ``q``'s dtype."""
        B, V = q.shape[0], q.shape[1]
        cx, cy, off = c[0], c[1], c[2]
        for b in prange(B):
            sb = s[b % s.shape[0], 0]
            tx = t[b % t.shape[0], 0, 0]
            ty = t[b % t.shape[0], 0, 1]
            for i in range(V):
                out[b, i, 0] = (cx + sb * q[b, i, 0]) + tx
                out[b, i, 1] = (cy - sb * q[b, i, 1]) + ty
                out[b, i, 2] = off - q[b, i, 2]

    @njit(parallel=True, cache=True)
    def _perspective_kernel(v, f, c, eps, out):
        """No-grad twin of :func:`facelib.render.camera.perspective_project`: ``depth = -z``,
        ``inv = 1 / max(depth, eps)``, ``x = c_x + (f x) inv``, ``y = c_y - (f y) inv`` in the reference's
        order; ``f (1 or B, 1)``, ``c (1 or B, 1, 2)``, ``eps (1,)``, all of ``v``'s dtype."""
        B, V = v.shape[0], v.shape[1]
        e = eps[0]
        for b in prange(B):
            fb = f[b % f.shape[0], 0]
            cx = c[b % c.shape[0], 0, 0]
            cy = c[b % c.shape[0], 0, 1]
            for i in range(V):
                d = -v[b, i, 2]
                dc = d if d >= e else e
                inv = e / e / dc  # 1 / dc in v's dtype (e / e is exactly 1)
                out[b, i, 0] = cx + (fb * v[b, i, 0]) * inv
                out[b, i, 1] = cy - (fb * v[b, i, 1]) * inv
                out[b, i, 2] = d


def weak_perspective(q, s, t, cx: float, cy: float, depth_offset: float) -> torch.Tensor:
    """Twin of :func:`facelib.render.camera.weak_perspective_project`'s image-plane step for checked inputs:
    ``q (B, V, 3)`` (the rotated vertices), ``s (1 or B, 1)``, ``t (1 or B, 1, 2)`` -> ``(B, V, 3)``."""
    B, V = q.shape[:2]
    out = torch.empty(B, V, 3, dtype=q.dtype)
    if B and V:
        c = torch.tensor([cx, cy, depth_offset], dtype=q.dtype)
        _weak_kernel(q.detach().contiguous().numpy(), s.detach().reshape(-1, 1).contiguous().numpy(),
                     t.detach().reshape(-1, 1, 2).contiguous().numpy(), c.numpy(), out.numpy())
    return out


def perspective(v, f, c, eps: float) -> torch.Tensor:
    """Twin of :func:`facelib.render.camera.perspective_project` for checked inputs: ``v (B, V, 3)`` camera
    space, ``f (1 or B, 1)``, ``c (1 or B, 1, 2)`` -> ``(B, V, 3)``."""
    B, V = v.shape[:2]
    out = torch.empty(B, V, 3, dtype=v.dtype)
    if B and V:
        _perspective_kernel(v.detach().contiguous().numpy(), f.detach().reshape(-1, 1).contiguous().numpy(),
                            c.detach().reshape(-1, 1, 2).contiguous().numpy(),
                            torch.tensor([eps], dtype=v.dtype).numpy(), out.numpy())
    return out


def rigid_transform(v, R, t) -> torch.Tensor:
    """Twin of :func:`facelib.render.camera.rigid_transform`'s product for checked inputs: ``v (B, V, 3)``,
    ``R (1 or B, 3, 3)`` and ``t (1 or B, 1, 3)`` (or None: ``v @ R^T`` alone, :func:`facelib.render.camera.rotate`),
    all of ``v``'s dtype -> ``(B, V, 3)``."""
    B, V = v.shape[:2]
    out = torch.empty(B, V, 3, dtype=v.dtype)
    tt = torch.zeros(1, 3, dtype=v.dtype) if t is None else t.detach().reshape(-1, 3)
    if B and V:
        _rigid_kernel(v.detach().contiguous().numpy(), R.detach().contiguous().numpy(), tt.contiguous().numpy(),
                      t is not None, out.numpy())
    return out


def fragments(verts_screen, faces, pix_to_face, perspective_correct) -> Fragments:
    """Twin of :func:`facelib.render.raster.fragments_from_pix_to_face` (``faces`` int64 ``(F, 3)``)."""
    N, H, W, K = pix_to_face.shape
    dt = verts_screen.dtype
    v = np.ascontiguousarray(verts_screen.detach().numpy())
    zbuf = torch.full((N, H, W, K), -1.0, dtype=dt)
    bary = torch.full((N, H, W, K, 3), -1.0, dtype=dt)
    dists = torch.full((N, H, W, K), -1.0, dtype=dt)
    if N and faces.shape[0]:
        _fragments_kernel(v, faces.numpy(), pix_to_face.numpy(), bool(perspective_correct),
                          zbuf.numpy(), bary.numpy(), dists.numpy())
    return Fragments(pix_to_face, zbuf, bary, dists)


def interpolate(attrs, faces, pix_to_face, bary) -> torch.Tensor:
    """Twin of :func:`facelib.render.raster.interpolate`: ``attrs (N, V, D)`` or ``(V, D)``, ``faces``
    int64 ``(F, 3)``, ``pix_to_face (N, H, W, K)``, ``bary (N, H, W, K, 3)`` -> ``(N, H, W, K, D)``."""
    N, H, W, K = pix_to_face.shape
    V, D = attrs.shape[-2:]
    out = attrs.new_zeros(N, H, W, K, D)
    a = attrs.detach().reshape(1 if attrs.ndim == 2 else -1, V, D)
    _interpolate_kernel(np.ascontiguousarray(a.numpy()), faces.numpy(), pix_to_face.numpy(),
                        np.ascontiguousarray(bary.detach().numpy()), out.numpy())
    return out


def vertex_normals(verts, faces) -> torch.Tensor:
    """Twin of :func:`facelib.render.shading.vertex_normals` (``eps`` 1e-12; ``faces`` int64)."""
    out = torch.zeros_like(verts)
    _vertex_normals_kernel(verts.detach().contiguous().numpy(), faces.contiguous().numpy(), out.numpy())
    return out


def shade(albedo, normals, g) -> torch.Tensor:
    """Twin of :func:`facelib.render.shading.shade` for checked inputs: ``albedo`` and ``normals``
    ``(B, ..., 3)``, ``g`` ``(B or 1, 9, 3)`` (:func:`facelib.render.shading.illumination_gamma`)."""
    B = normals.shape[0]
    P = normals.numel() // (3 * B) if B else 0
    out = torch.empty_like(albedo)
    _shade_kernel(albedo.detach().reshape(B, P, 3).contiguous().numpy(),
                  normals.detach().reshape(B, P, 3).contiguous().numpy(),
                  g.detach().to(albedo.dtype).expand(B, N_SH, 3).contiguous().numpy(), out.view(B, P, 3).numpy())
    return out


def register() -> None:
    """Lend the reference renderer these twins (a no-op without Numba)."""
    if HAVE_NUMBA:
        for name, fn in (("fragments", fragments), ("interpolate", interpolate),
                         ("vertex_normals", vertex_normals), ("shade", shade), ("rigid_transform", rigid_transform),
                         ("weak_perspective", weak_perspective), ("perspective", perspective)):
            _twins.register(name, fn)
