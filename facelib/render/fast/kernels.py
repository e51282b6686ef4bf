"""Fast path, kernels: the Numba kernels of the fused no-grad CPU renderer (one call renders a face).
"""

from __future__ import annotations

import numpy as np

from ..raster import HAVE_NUMBA
from ..shading import SH_IRRADIANCE_CONSTANTS, SH_SHADING_SCALE, _C1, _C2, _C20, _C22, _Y00
from . import _llvm
if HAVE_NUMBA:
    from numba import njit

# the normalised irradiance basis H_b of facelib.render.shading as constants times monomials of n
_K0 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[0] * _Y00  # H_1 = 1
_K1 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[1] * _C1  # y, z, x
_K2 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[2] * _C2  # xy, yz, xz
_K20 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[2] * _C20  # 3 z^2 - 1
_K22 = SH_SHADING_SCALE * SH_IRRADIANCE_CONSTANTS[2] * _C22  # x^2 - y^2


# ------------------------------------------------------------------------------------------------
# the fused no-grad path (CPU, Numba): coefficients -> image, one kernel per face
#
# Twins of the PyTorch code of :mod:`facelib.render.formation`, used by :func:`facelib.render.render` when no gradient is asked for on the CPU
# (corpus rendering, benchmarks); the PyTorch path stays the differentiable reference and the tests
# compare the two. Eq. 2-3 are two float32 GEMMs over the batch (:func:`_offsets`: the packed-basis
# micro-kernel of :mod:`facelib.render.fast._gemm`, else NumPy's BLAS; one thread per block of columns); then,
# on torch.get_num_threads() threads that take two faces at a time from a shared queue
# (:func:`_fz_faces`: one Numba call, so one GIL-held argument unboxing, per two faces), a few
# Numba kernels per face do Phi and the projection, the vertex normals, SH shading (Eq. 5), a
# z-buffer and the per-pixel interpolation (Eq. 6), writing the image, masks and depth
# directly: no (B, H, W, K, ...) intermediates and no fragments unless asked for. The per-vertex loops
# work on coordinate-major arrays (all x, then all y, then all z; the GEMMs write the offsets in that
# order, :func:`_stack_rows`), which LLVM vectorises without shuffles; then screen x, y, 1 / depth and
# the colour of each vertex are packed into one 32-byte record (``pk``) for the two passes that gather
# them per triangle and per pixel. The z-buffer takes the triangles in chunks of at most _CH
# (:func:`_triangle_chunks`; the strips of a grid mesh are copied with unit strides, other triangles
# gathered):
# the per-triangle setup (bounding box, back-face culling, the 1/z plane) and the inside test of the
# 2x2 block of pixel centres at the corner of each triangle's bounding box run in loops that LLVM
# vectorises (flat chunk arrays with constant offsets, float32); that block is also the first half of
# a 4x2 / 2x4 box, and the triangles larger than 2x2 are collected with their setup and finished in
# batches (a second 2x2 block, or row by row for larger ones). Two kernels written as LLVM IR take
# over the two hot loops, with the same formulas in the same order (so the same bits):
# :mod:`facelib.render.fast._zchunk` draws a whole chunk 16 triangles at a time in vector registers (CPUs with
# AVX-512), and :mod:`facelib.render.fast._resolve` resolves 16 pixels of a row at a time (AVX2 or AVX-512); the
# Numba loops stay as the fallback and as their reference in the tests. The depth test is a max
# over 64-bit keys (float32 bits of 1/z above, the complement of the face index below: the nearest
# wins, ties go to the lower face index), so it needs no branch. The inside test uses the visibility
# kernel's edge functions (inclusive), in float32, so coverage can differ from the float64 decision
# only for pixel centres within ~1e-6 px of an edge, and depth only for surfaces within ~1e-7 relative
# depth of each other: ties, for the tests.

_CH = 256  # triangles per chunk
_NT = 9  # rows of the gathered triangle chunk: x0 y0 x1 y1 x2 y2 (pixels), 1/z0 1/z1 1/z2 (1 / depth)
_NP = 8  # columns of the packed per-vertex records: screen x, y, 1 / depth, r, g, b, (2 unused: 32 bytes)
_NC = 9  # rows of the setup chunk (see _fz_setup)
_KEY_LO = (1 << 32) - 1


def _ws_f32_size(W: int) -> int:
    """Floats of the float32 workspace of :func:`_fz_zbuffer` for images W pixels wide."""
    return (2 * (_NT + _NC) + 8) * _CH + max(W, 1)

if HAVE_NUMBA:
    _JIT = dict(cache=True, nogil=True, error_model="numpy")  # numpy error model: no zero-division branches

    @njit(**_JIT)
    def _fz_vertices(geo, mean_s, R, t, focal, ppx, ppy, vc, xyq):
        """Eq. 2 (the mean plus the offsets), Phi and the full perspective projection of one face,
        float32 in the order of the PyTorch code. Coordinate-major (3 V,) arrays (all x, then all y, then
        all z: unit strides, so LLVM vectorises the loop without shuffles): ``geo`` the offsets,
        ``mean_s`` the mean shape; out: ``vc`` camera space, ``xyq`` screen x, screen y and 1 / depth (0
        behind the camera)."""
        r00 = R[0, 0]; r01 = R[0, 1]; r02 = R[0, 2]  # noqa: E702
        r10 = R[1, 0]; r11 = R[1, 1]; r12 = R[1, 2]  # noqa: E702
        r20 = R[2, 0]; r21 = R[2, 1]; r22 = R[2, 2]  # noqa: E702
        t0 = t[0]; t1 = t[1]; t2 = t[2]  # noqa: E702
        one = np.float32(1.0)
        zero = np.float32(0.0)
        eps = np.float32(1e-8)
        V = mean_s.shape[0] // 3
        gx, gy, gz = geo[:V], geo[V: 2 * V], geo[2 * V:]  # views: indices v >= 0 (no negative-index
        mx, my, mz = mean_s[:V], mean_s[V: 2 * V], mean_s[2 * V:]  # select, which would stop the
        cx, cy, cz = vc[:V], vc[V: 2 * V], vc[2 * V:]  # vectoriser)
        xs, ys, qs = xyq[:V], xyq[V: 2 * V], xyq[2 * V:]
        for v in range(V):
            x = mx[v] + gx[v]  # Eq. 2
            y = my[v] + gy[v]
            z = mz[v] + gz[v]
            X = x * r00 + y * r01 + z * r02 + t0  # Phi(v) = R v + t
            Y = x * r10 + y * r11 + z * r12 + t1
            Z = x * r20 + y * r21 + z * r22 + t2
            cx[v] = X
            cy[v] = Y
            cz[v] = Z
            d = -Z
            inv = one / max(d, eps)
            xs[v] = ppx + focal * X * inv  # Tewari Sec. 5, u = Pi(v), y down
            ys[v] = ppy - focal * Y * inv
            qs[v] = one / d if d > 0 else zero

    @njit(**_JIT)
    def _fz_cross(xa, ya, za, xb, yb, zb, xc, yc, zc):
        """(b - a) x (c - a): the area-weighted normal of triangle a, b, c (as :func:`vertex_normals`)."""
        ax = xb - xa
        ay = yb - ya
        az = zb - za
        bx = xc - xa
        by = yc - ya
        bz = zc - za
        return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx

    @njit(**_JIT)
    def _fz_normals(faces, chunks, vc, nrm, tmp):
        """Area-weighted vertex normal sums (not normalised) of one face, as :func:`vertex_normals`, over
        the chunks of :func:`_triangle_chunks`; ``vc`` and ``nrm`` coordinate-major (3 V,). In a strip the
        k-th triangle's corners are ``a + k, b + k, c + k``: its normals go to ``tmp`` (3 _CH,), then
        each corner is one pass of unit-stride adds, which LLVM vectorises (no two triangles of a pass
        share a vertex); other triangles add one by one."""
        nrm[:] = 0
        fl = faces.reshape(-1)
        V = vc.shape[0] // 3
        X, Y, Z = vc[:V], vc[V: 2 * V], vc[2 * V:]
        NX, NY, NZ = nrm[:V], nrm[V: 2 * V], nrm[2 * V:]
        tx, ty, tz = tmp[:_CH], tmp[_CH: 2 * _CH], tmp[2 * _CH: 3 * _CH]
        for ci in range(chunks.shape[0]):
            start = chunks[ci, 0]
            n = chunks[ci, 1]
            if chunks[ci, 2]:
                a = np.int64(fl[3 * start])
                b = np.int64(fl[3 * start + 1])
                c = np.int64(fl[3 * start + 2])
                xa, ya, za = X[a:], Y[a:], Z[a:]  # views: the indices stay >= 0
                xb, yb, zb = X[b:], Y[b:], Z[b:]
                xc, yc, zc = X[c:], Y[c:], Z[c:]
                for k in range(n):
                    tx[k], ty[k], tz[k] = _fz_cross(xa[k], ya[k], za[k], xb[k], yb[k], zb[k], xc[k], yc[k], zc[k])
                for o in (a, b, c):
                    dx, dy, dz = NX[o:], NY[o:], NZ[o:]
                    for k in range(n):
                        dx[k] += tx[k]
                        dy[k] += ty[k]
                        dz[k] += tz[k]
                continue
            for f in range(start, start + n):
                a = faces[f, 0]
                b = faces[f, 1]
                c = faces[f, 2]
                nx, ny, nz = _fz_cross(X[a], Y[a], Z[a], X[b], Y[b], Z[b], X[c], Y[c], Z[c])
                for i in (a, b, c):
                    NX[i] += nx
                    NY[i] += ny
                    NZ[i] += nz

    @njit(**_JIT)
    def _fz_shade(nrm, alb, mean_a, g, col):
        """Normalise ``nrm`` in place and shade (Tewari Eq. 5): ``col = (mean_a + alb) * sum_b gamma_b
        H_b(n)`` with ``g`` (9, 3) and the normalised irradiance basis of :mod:`facelib.render.shading`; ``nrm``,
        ``alb`` (the Eq. 3 offsets), ``mean_a`` and ``col`` coordinate-major (3 V,) (r, g, b for colours)."""
        one = np.float32(1.0)
        eps = np.float32(1e-12)
        three = np.float32(3.0)
        k1 = np.float32(_K1)
        k2 = np.float32(_K2)
        k20 = np.float32(_K20)
        k22 = np.float32(_K22)
        k0 = np.float32(_K0)
        g00 = g[0, 0] * k0; g01 = g[0, 1] * k0; g02 = g[0, 2] * k0  # noqa: E702
        g10 = g[1, 0]; g11 = g[1, 1]; g12 = g[1, 2]  # noqa: E702
        g20 = g[2, 0]; g21 = g[2, 1]; g22 = g[2, 2]  # noqa: E702
        g30 = g[3, 0]; g31 = g[3, 1]; g32 = g[3, 2]  # noqa: E702
        g40 = g[4, 0]; g41 = g[4, 1]; g42 = g[4, 2]  # noqa: E702
        g50 = g[5, 0]; g51 = g[5, 1]; g52 = g[5, 2]  # noqa: E702
        g60 = g[6, 0]; g61 = g[6, 1]; g62 = g[6, 2]  # noqa: E702
        g70 = g[7, 0]; g71 = g[7, 1]; g72 = g[7, 2]  # noqa: E702
        g80 = g[8, 0]; g81 = g[8, 1]; g82 = g[8, 2]  # noqa: E702
        V = nrm.shape[0] // 3
        NX, NY, NZ = nrm[:V], nrm[V: 2 * V], nrm[2 * V:]
        ar, ag, ab = alb[:V], alb[V: 2 * V], alb[2 * V:]
        mr, mg, mb = mean_a[:V], mean_a[V: 2 * V], mean_a[2 * V:]
        cr, cg, cb = col[:V], col[V: 2 * V], col[2 * V:]
        for v in range(V):
            x = NX[v]
            y = NY[v]
            z = NZ[v]
            s = max(np.sqrt(x * x + y * y + z * z), eps)  # F.normalize
            x = x / s
            y = y / s
            z = z / s
            NX[v] = x
            NY[v] = y
            NZ[v] = z
            h1 = k1 * y
            h2 = k1 * z
            h3 = k1 * x
            h4 = k2 * x * y
            h5 = k2 * y * z
            h6 = k20 * (three * z * z - one)
            h7 = k2 * x * z
            h8 = k22 * (x * x - y * y)
            e0 = g00 + h1 * g10 + h2 * g20 + h3 * g30 + h4 * g40 + h5 * g50 + h6 * g60 + h7 * g70 + h8 * g80
            e1 = g01 + h1 * g11 + h2 * g21 + h3 * g31 + h4 * g41 + h5 * g51 + h6 * g61 + h7 * g71 + h8 * g81
            e2 = g02 + h1 * g12 + h2 * g22 + h3 * g32 + h4 * g42 + h5 * g52 + h6 * g62 + h7 * g72 + h8 * g82
            cr[v] = (mr[v] + ar[v]) * e0  # Eq. 3 and Eq. 5
            cg[v] = (mg[v] + ag[v]) * e1
            cb[v] = (mb[v] + ab[v]) * e2

    @njit(**_JIT)
    def _fz_pack(xyq, col, pk):
        """The packed vertex records ``pk`` (V, _NP) (screen x, y, 1 / depth, r, g, b, 0, 0: 32 bytes,
        one record per vertex for the passes that gather vertex data per triangle and per pixel) from
        the coordinate-major ``xyq`` and ``col`` (3 V,); whole records, so the stores vectorise."""
        V = xyq.shape[0] // 3
        xs, ys, qs = xyq[:V], xyq[V: 2 * V], xyq[2 * V:]
        cr, cg, cb = col[:V], col[V: 2 * V], col[2 * V:]
        pf = pk.reshape(-1)
        zero = np.float32(0.0)
        for v in range(V):
            pf[_NP * v] = xs[v]
            pf[_NP * v + 1] = ys[v]
            pf[_NP * v + 2] = qs[v]
            pf[_NP * v + 3] = cr[v]
            pf[_NP * v + 4] = cg[v]
            pf[_NP * v + 5] = cb[v]
            pf[_NP * v + 6] = zero
            pf[_NP * v + 7] = zero

    @njit(**_JIT)
    def _fz_vertex_major(src, dst):
        """``dst`` (V, 3) from the coordinate-major ``src`` (3 V,): the per-vertex outputs of
        :class:`Render` (only when asked for)."""
        V = dst.shape[0]
        for c in range(3):
            s = src[c * V: (c + 1) * V]
            for v in range(V):
                dst[v, c] = s[v]

    @njit(**_JIT)
    def _fz_screen(xyq, vc, sc):
        """``sc`` (V, 3): screen x, y and depth (-z in camera space) from ``xyq`` and ``vc``, as
        :func:`facelib.render.camera.perspective_project` (only when asked for)."""
        V = sc.shape[0]
        for v in range(V):
            sc[v, 0] = xyq[v]
            sc[v, 1] = xyq[V + v]
            sc[v, 2] = -vc[2 * V + v]

    @njit(**_JIT)
    def _fz_gather(n, start, faces, xyq, T):
        """Triangle chunk ``T`` (_NT * _CH,): screen x, y and 1 / depth of the vertices of faces
        ``start .. start + n - 1`` from ``xyq`` (3 V,) (x, y, 1 / depth of all vertices)."""
        V = xyq.shape[0] // 3
        xs, ys, qs = xyq[:V], xyq[V: 2 * V], xyq[2 * V:]
        fc = faces.reshape(-1)[3 * start: 3 * (start + n)]
        for k in range(n):
            a = fc[3 * k]
            b = fc[3 * k + 1]
            c = fc[3 * k + 2]
            T[0 * _CH + k] = xs[a]
            T[1 * _CH + k] = ys[a]
            T[2 * _CH + k] = xs[b]
            T[3 * _CH + k] = ys[b]
            T[4 * _CH + k] = xs[c]
            T[5 * _CH + k] = ys[c]
            T[6 * _CH + k] = qs[a]
            T[7 * _CH + k] = qs[b]
            T[8 * _CH + k] = qs[c]

    @njit(**_JIT)
    def _fz_copy(n, a, b, c, xyq, T):
        """Triangle chunk ``T`` as :func:`_fz_gather` for a strip: triangle k of the chunk has the
        vertices ``a + k, b + k, c + k``, so its data are unit-stride copies from ``xyq`` (3 V,) (x, y,
        1 / depth of all vertices): vector loads instead of gathers."""
        V = xyq.shape[0] // 3
        a = np.int64(a)
        b = np.int64(b)
        c = np.int64(c)
        offs = (a, V + a, b, V + b, c, V + c, 2 * V + a, 2 * V + b, 2 * V + c)
        for r in range(_NT):  # one stream per loop: LLVM vectorises each
            src = xyq[offs[r]:]  # views, so the index is k >= 0: no negative-index select,
            dst = T[r * _CH:]  # which would stop the vectoriser
            for k in range(n):
                dst[k] = src[k]

    @njit(**_JIT)
    def _fz_corners(T, k):
        """Screen x, y of the three corners of triangle ``k`` of a gathered chunk ``T``."""
        return (T[0 * _CH + k], T[1 * _CH + k], T[2 * _CH + k], T[3 * _CH + k], T[4 * _CH + k],
                T[5 * _CH + k])

    @njit(**_JIT)
    def _fz_setup(n, T, H, W, C):
        """Per-triangle setup (vectorised, float32). A triangle is drawn when front-facing (negative
        signed area, as ``cull_backfaces``), not degenerate, in front of the camera, with a pixel centre
        in its clipped bounding box. Rows of ``C``: 0 the 2x2 block at the bounding box corner covers it
        or its first half (the box is at most 2x2 or 4x2 / 2x4 pixels), 1 a second 2x2 block covers the
        rest (4x2 / 2x4), 2 drawn row by row (larger), 3 the 4x2 block is tall (else wide), 4-5 the
        bounding box corner (row, column), 6-8 1/z = q0 + gx (x - x0) + gy (y - y0) (perspective-correct:
        1/z is affine on the screen)."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        half = np.float32(0.5)
        eps = np.float32(1e-10)
        s2 = (H >= 2) & (W >= 2)
        s4 = (H >= 4) & (W >= 4)
        Hm = np.float32(H - 1)
        Wm = np.float32(W - 1)
        for k in range(n):
            x0, y0, x1, y1, x2, y2 = _fz_corners(T, k)
            q0 = T[6 * _CH + k]  # 1 / depth, 0 behind the camera
            q1 = T[7 * _CH + k]
            q2 = T[8 * _CH + k]
            fj0 = max(zero, np.ceil(min(x0, min(x1, x2)) - half))
            fj1 = min(Wm, np.floor(max(x0, max(x1, x2)) - half))
            fi0 = max(zero, np.ceil(min(y0, min(y1, y2)) - half))
            fi1 = min(Hm, np.floor(max(y0, max(y1, y2)) - half))
            ex1 = x1 - x0
            ey1 = y1 - y0
            ex2 = x2 - x0
            ey2 = y2 - y0
            area = ex1 * ey2 - ey1 * ex2
            ok = (fj0 <= fj1) & (fi0 <= fi1) & (area < -eps) & (q0 > zero) & (q1 > zero) & (q2 > zero)
            dj = fj1 - fj0
            di = fi1 - fi0
            o = one if ok else zero
            f2 = one if s2 & (dj <= one) & (di <= one) else zero
            f8 = one if s4 & (((di <= 3) & (dj <= one)) | ((di <= one) & (dj <= 3))) else zero
            C[0 * _CH + k] = o * max(f2, f8)
            C[1 * _CH + k] = o * (one - f2) * f8
            C[2 * _CH + k] = o * (one - f2) * (one - f8)
            C[3 * _CH + k] = one if di > one else zero
            C[4 * _CH + k] = fi0
            C[5 * _CH + k] = fj0
            d1 = q1 - q0
            d2 = q2 - q0
            inv = one / area
            C[6 * _CH + k] = q0
            C[7 * _CH + k] = (d1 * ey2 - d2 * ey1) * inv
            C[8 * _CH + k] = (d2 * ex1 - d1 * ex2) * inv

    @njit(**_JIT)
    def _fz_candidates(n, T, C, H, W, row, second, Q, P):
        """1/z (float32) at the four pixel centres of a 2x2 block of each triangle whose flag ``C[row]`` is
        set, 0 where the centre is outside, and the pixel indices ``P`` (vectorised, float32). The block
        is at the clipped bounding-box corner, or with ``second`` 2 pixels further along the long side of
        a 4x2 / 2x4 box (both blocks are moved inside the image: one may overlap the other, which the
        depth test's max does not mind). The edge functions are those of the visibility kernel
        (inclusive: a centre on an edge is inside)."""
        zero = np.float32(0.0)
        half = np.float32(0.5)
        Hb = np.float32(H - 2)
        Wb = np.float32(W - 2)
        shift = np.float32(2 * second)
        for c in range(4):
            for k in range(n):
                tall = C[3 * _CH + k] != zero
                i = min(C[4 * _CH + k] + (shift if tall else zero), Hb) + np.float32(c // 2)
                j = min(C[5 * _CH + k] + (zero if tall else shift), Wb) + np.float32(c % 2)
                py = i + half
                px = j + half
                ax = T[0 * _CH + k] - px
                ay = T[1 * _CH + k] - py
                bx = T[2 * _CH + k] - px
                by = T[3 * _CH + k] - py
                cx = T[4 * _CH + k] - px
                cy = T[5 * _CH + k] - py
                w0 = bx * cy - by * cx
                w1 = cx * ay - cy * ax
                w2 = ax * by - ay * bx
                q = C[6 * _CH + k] - C[7 * _CH + k] * ax - C[8 * _CH + k] * ay
                inside = (C[row * _CH + k] != zero) & (w0 <= zero) & (w1 <= zero) & (w2 <= zero)
                Q[c * _CH + k] = q if inside else zero
                P[c * _CH + k] = np.int32(i) * np.int32(W) + np.int32(j)

    @njit(**_JIT)
    def _fz_keys(n, ncand, ids, Qi, K):
        """Depth-test keys: float32 bits of 1/z (positive floats order as integers) above, ~face below."""
        for c in range(ncand):
            for k in range(n):
                qi = Qi[c * _CH + k]
                K[c * _CH + k] = ((np.int64(qi) << 32) | (_KEY_LO - ids[k])) if qi > 0 else np.int64(0)

    @njit(**_JIT)
    def _fz_blocks(n, ncand, P, K, idx, zb):
        """Depth test of the candidate blocks: zb = max(zb, key) (the nearest wins), no branches, for
        the triangles with a pixel centre inside (compacted into ``idx`` first, without branches)."""
        cnt = 0
        for k in range(n):
            idx[cnt] = k
            hit = K[k]
            for c in range(1, ncand):
                hit |= K[c * _CH + k]
            cnt += hit != 0
        for r in range(cnt):
            k = idx[r]
            for c in range(ncand):
                p = P[c * _CH + k]
                zb[p] = max(zb[p], K[c * _CH + k])

    @njit(**_JIT)
    def _fz_large(k, f, T, C, H, W, qrow, zb):
        """Z-buffer of one triangle larger than the blocks, row by row: the inside test and 1/z of the
        row's pixel centres into ``qrow`` (float32, 0 outside), then the depth test against the row of
        ``zb``; both loops are branch-free, so LLVM vectorises them (same formulas as the blocks)."""
        zero = np.float32(0.0)
        half = np.float32(0.5)
        x0, y0, x1, y1, x2, y2 = _fz_corners(T, k)
        q0 = C[6 * _CH + k]
        gx = C[7 * _CH + k]
        gy = C[8 * _CH + k]
        i0 = int(C[4 * _CH + k])
        j0 = int(C[5 * _CH + k])
        i1 = int(min(np.float32(H - 1), np.floor(max(y0, max(y1, y2)) - half)))
        j1 = int(min(np.float32(W - 1), np.floor(max(x0, max(x1, x2)) - half)))
        lo = _KEY_LO - f
        n = j1 - j0 + 1
        qri = qrow.view(np.int32)
        for i in range(i0, i1 + 1):
            py = np.float32(i) + half
            ay = y0 - py
            by = y1 - py
            cy = y2 - py
            for jj in range(n):
                px = np.float32(j0 + jj) + half
                ax = x0 - px
                bx = x1 - px
                cx = x2 - px
                inside = (bx * cy - by * cx <= zero) & (cx * ay - cy * ax <= zero) & (ax * by - ay * bx <= zero)
                q = q0 - gx * ax - gy * ay
                qrow[jj] = q if inside else zero
            p0 = i * W + j0
            for jj in range(n):
                qb = qri[jj]
                key = ((np.int64(qb) << 32) | lo) if qb > 0 else np.int64(0)
                zb[p0 + jj] = max(zb[p0 + jj], key)

    @njit(**_JIT)
    def _fz_flush(m, ids4, T4, C4, H, W, Q, Qi, P, K, idx, qrow, zb):
        """Depth test of the ``m`` collected triangles larger than 2x2 (their chunk rows copied to ``T4``,
        ``C4``, their indices in ``ids4``): the second 2x2 block of the 4x2 / 2x4 ones, then the larger
        ones row by row."""
        _fz_candidates(m, T4, C4, H, W, 1, 1, Q, P)
        _fz_keys(m, 4, ids4, Qi, K)
        _fz_blocks(m, 4, P, K, idx, zb)
        for r in range(m):
            if C4[2 * _CH + r] != 0:
                _fz_large(r, ids4[r], T4, C4, H, W, qrow, zb)

    @njit(**_JIT)
    def _fz_zbuffer(xyq, faces, chunks, H, W, zb, ws_f32, ws_i32, ws_i64, zb_fn):
        """Visibility of one face: ``zb`` (H W,) int64 keys, 0 where no triangle covers the centre.
        The triangles are taken in order, in the chunks of :func:`_triangle_chunks`: per chunk the 2x2
        block at each bounding box corner; the triangles larger than that are collected (their rows of
        the chunk copied while they are in the cache) and finished in batches of up to _CH
        (:func:`_fz_flush`: long vector loops). With ``zb_fn`` (the address of :mod:`facelib.render.fast._zchunk`'s
        kernel, else 0) that kernel draws each chunk whole, 16 triangles at a time (the same keys)."""
        fl = faces.reshape(-1)
        zb[:] = 0
        T = ws_f32[: _NT * _CH]
        C = ws_f32[_NT * _CH: (_NT + _NC) * _CH]
        T4 = ws_f32[(_NT + _NC) * _CH: (2 * _NT + _NC) * _CH]
        C4 = ws_f32[(2 * _NT + _NC) * _CH: 2 * (_NT + _NC) * _CH]
        Q = ws_f32[2 * (_NT + _NC) * _CH: (2 * (_NT + _NC) + 8) * _CH]
        Qi = Q.view(np.int32)
        qrow = ws_f32[(2 * (_NT + _NC) + 8) * _CH:]  # W floats: one image row
        P = ws_i32[: 8 * _CH]
        K = ws_i64[: 8 * _CH]
        ids = ws_i64[8 * _CH: 9 * _CH]
        ids4 = ws_i64[9 * _CH: 10 * _CH]
        idx = ws_i64[11 * _CH: 12 * _CH]
        big = ws_i64[10 * _CH: 11 * _CH]  # lanes of this chunk larger than 2x2
        m = np.int64(0)  # triangles collected in T4, C4, ids4
        for ci in range(chunks.shape[0]):
            start = chunks[ci, 0]
            n = chunks[ci, 1]
            if zb_fn != 0 and chunks[ci, 2]:  # a strip: the kernel reads x, y, 1/z where they are
                V = xyq.shape[0] // 3
                a = np.int64(fl[3 * start])
                b = np.int64(fl[3 * start + 1])
                c = np.int64(fl[3 * start + 2])
                _zbuffer_chunk(zb_fn, xyq[a:], xyq[V + a:], xyq[b:], xyq[V + b:], xyq[c:], xyq[V + c:],
                               xyq[2 * V + a:], xyq[2 * V + b:], xyq[2 * V + c:], n, start, H, W, zb)
                continue
            if chunks[ci, 2]:
                _fz_copy(n, fl[3 * start], fl[3 * start + 1], fl[3 * start + 2], xyq, T)
            else:
                _fz_gather(n, start, faces, xyq, T)
            if zb_fn != 0:  # every triangle of the chunk
                _zbuffer_chunk(zb_fn, T, T[_CH:], T[2 * _CH:], T[3 * _CH:], T[4 * _CH:], T[5 * _CH:], T[6 * _CH:],
                               T[7 * _CH:], T[8 * _CH:], n, start, H, W, zb)
                continue
            for k in range(n):
                ids[k] = start + k
            _fz_setup(n, T, H, W, C)
            _fz_candidates(n, T, C, H, W, 0, 0, Q, P)
            _fz_keys(n, 4, ids, Qi, K)
            _fz_blocks(n, 4, P, K, idx, zb)
            cnt = np.int64(0)
            for k in range(n):  # branch-free compaction
                big[cnt] = k
                cnt += (C[1 * _CH + k] != 0) | (C[2 * _CH + k] != 0)
            if m + cnt > _CH:
                _fz_flush(m, ids4, T4, C4, H, W, Q, Qi, P, K, idx, qrow, zb)
                m = np.int64(0)
            for row in range(6):  # corners (one gather per row: LLVM vectorises each)
                src = T[row * _CH: (row + 1) * _CH]
                dst = T4[row * _CH + m: (row + 1) * _CH]
                for r in range(cnt):
                    dst[r] = src[big[r]]
            for row in range(1, _NC):  # flags, corner, 1/z plane
                src = C[row * _CH: (row + 1) * _CH]
                dst = C4[row * _CH + m: (row + 1) * _CH]
                for r in range(cnt):
                    dst[r] = src[big[r]]
            for r in range(cnt):
                ids4[m + r] = start + big[r]
            m += cnt
        if m:
            _fz_flush(m, ids4, T4, C4, H, W, Q, Qi, P, K, idx, qrow, zb)

    @njit(**_JIT)
    def _fz_pixel(fl, pf, f, px, py):
        """Perspective-correct barycentrics (float32, the formulas of
        :func:`facelib.render.raster.fragments_from_pix_to_face`) of face ``f`` at the pixel centre (px, py):
        the offsets ``a, b, c`` of its three vertex records in the flat packed records ``pf``, the
        corners relative to the centre ``(x0, y0, x1, y1, x2, y2)``, the edge functions and their sum
        ``(w0, w1, w2, s)``, barycentrics ``q0, q1, q2`` and the depth ``d``."""
        one = np.float32(1.0)
        tiny = np.float32(1.1754944e-38)  # torch.finfo(float32).tiny
        a = _NP * fl[3 * f]  # offsets of the three vertex records
        b = _NP * fl[3 * f + 1]
        c = _NP * fl[3 * f + 2]
        x0 = pf[a] - px
        y0 = pf[a + 1] - py
        x1 = pf[b] - px
        y1 = pf[b + 1] - py
        x2 = pf[c] - px
        y2 = pf[c + 1] - py
        w0 = x1 * y2 - y1 * x2
        w1 = x2 * y0 - y2 * x0
        w2 = x0 * y1 - y0 * x1
        s = w0 + w1 + w2
        if abs(s) < tiny:
            s = tiny
        q0 = w0 * pf[a + 2]  # b_i / z_i up to the common factor 1 / s
        q1 = w1 * pf[b + 2]
        q2 = w2 * pf[c + 2]
        d = one / (q0 + q1 + q2)
        return a, b, c, (x0, y0, x1, y1, x2, y2), (w0, w1, w2, s), q0 * d, q1 * d, q2 * d, d * s

    # calls of the compiled kernels of facelib.render.fast._resolve and facelib.render.fast._zchunk (a: array, i: int, f: float32)
    _resolve_row = _llvm.numba_caller("aaaaiiffaaaaaa")
    _zbuffer_chunk = _llvm.numba_caller("aaaaaaaaaiiiia", "i")

    @njit(**_JIT)
    def _fz_resolve(zb, faces, pk, mouth, H, W, bg, image, mask, imask, depth, row_fn):
        """Per pixel: the winning face's barycentrics (:func:`_fz_pixel`), Eq. 6 colour, masks, depth.
        Vertex data come from the packed records ``pk`` (V, _NP): screen x, y, 1 / depth and the colour
        of a vertex share one 32-byte record. With ``row_fn`` (the address of :mod:`facelib.render.fast._resolve`'s
        kernel, else 0) each row goes 16 pixels at a time through that kernel (the same numbers) and the
        last ``W % 16`` pixels through the code below. Otherwise the background is filled first in
        vectorised loops, then the covered pixels are written."""
        half = np.float32(0.5)
        zero = np.float32(0.0)
        fl = faces.reshape(-1)
        pf = pk.reshape(-1)
        nblk = W // 16 if row_fn != 0 else 0
        if nblk == 0:
            im = image.reshape(-1)
            mk = mask.reshape(-1)
            ik = imask.reshape(-1)
            dp = depth.reshape(-1)
            for p in range(3 * H * W):
                im[p] = bg
            for p in range(H * W):
                mk[p] = False
                ik[p] = False
                dp[p] = zero
        for i in range(H):
            py = np.float32(i) + half
            if nblk:
                _resolve_row(row_fn, zb[i * W: (i + 1) * W], faces, pk, mouth, nblk, 0, py, bg, image[0, i],
                             image[1, i], image[2, i], mask[i], imask[i], depth[i])
            for j in range(16 * nblk, W):
                key = zb[i * W + j]
                if key != 0:
                    f = _KEY_LO - (key & _KEY_LO)
                    a, b, c, _, _, q0, q1, q2, d = _fz_pixel(fl, pf, f, np.float32(j) + half, py)
                    image[0, i, j] = q0 * pf[a + 3] + q1 * pf[b + 3] + q2 * pf[c + 3]  # Eq. 6
                    image[1, i, j] = q0 * pf[a + 4] + q1 * pf[b + 4] + q2 * pf[c + 4]
                    image[2, i, j] = q0 * pf[a + 5] + q1 * pf[b + 5] + q2 * pf[c + 5]
                    mask[i, j] = True
                    imask[i, j] = not mouth[f]
                    depth[i, j] = d
                elif nblk:  # (else filled above)
                    image[0, i, j] = bg
                    image[1, i, j] = bg
                    image[2, i, j] = bg
                    mask[i, j] = False
                    imask[i, j] = False
                    depth[i, j] = zero

    @njit(**_JIT)
    def _fz_fragments(zb, bi, faces, pk, H, W, p2f, zbuf, bary, dists):
        """The Fragments (K = 1) of face ``bi`` of the batch from its z-buffer: pix_to_face (packed batch
        index), zbuf, bary_coords and dists, -1 where no face (only when ``outputs`` asks for them)."""
        one = np.float32(1.0)
        half = np.float32(0.5)
        tiny = np.float32(1.1754944e-38)
        F = faces.shape[0]
        fl = faces.reshape(-1)
        pf = pk.reshape(-1)
        for i in range(H):
            py = np.float32(i) + half
            for j in range(W):
                key = zb[i * W + j]
                if key == 0:
                    p2f[i, j, 0] = -1
                    zbuf[i, j, 0] = -one
                    bary[i, j, 0, 0] = -one
                    bary[i, j, 0, 1] = -one
                    bary[i, j, 0, 2] = -one
                    dists[i, j, 0] = -one
                    continue
                px = np.float32(j) + half
                f = _KEY_LO - (key & _KEY_LO)
                _, _, _, xy, ws, q0, q1, q2, d = _fz_pixel(fl, pf, f, px, py)
                x0, y0, x1, y1, x2, y2 = xy  # corners relative to the pixel centre
                w0, w1, w2, s = ws
                p2f[i, j, 0] = bi * F + f
                zbuf[i, j, 0] = d
                bary[i, j, 0, 0] = q0
                bary[i, j, 0, 1] = q1
                bary[i, j, 0, 2] = q2
                sg = one if s > 0 else -one
                e0 = w0 * sg / max(np.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2), tiny)
                e1 = w1 * sg / max(np.sqrt((x0 - x2) ** 2 + (y0 - y2) ** 2), tiny)
                e2 = w2 * sg / max(np.sqrt((x1 - x0) ** 2 + (y1 - y0) ** 2), tiny)
                dists[i, j, 0] = -min(e0, e1, e2)

    @njit(**_JIT)
    def _fz_faces(b0, b1, geo, mean_s, alb, mean_a, R, t, focal, ppx, ppy, gamma, faces, mouth, chunks, H, W,
                  bg, image, mask, imask, depth, frags, p2f, zbuf, bary, dists, vc_o, sc_o, nrm_o, col_o, keep,
                  vc, nrm, col, pk, xyq, zb, ws_f32, ws_i32, ws_i64, row_fn, zb_fn):
        """Faces ``b0 .. b1 - 1`` of the batch from the Eq. 2-3 offsets ``geo``, ``alb`` (B, 3 V)
        (coordinate-major, as ``mean_s``, ``mean_a``) to the pixels: the per-face kernels in order.
        ``keep`` (4,) bool: also write camera-space vertices, screen vertices, normals, colours to
        ``vc_o``, ``sc_o``, ``nrm_o``, ``col_o`` (B, V, 3). ``vc``, ``nrm``, ``col`` (3 V,) are scratch.
        ``row_fn``, ``zb_fn``: see :func:`_fz_resolve`, :func:`_fz_zbuffer`. One call per few faces: Numba unboxes the ~40 arguments with
        the GIL held, once."""
        for b in range(b0, b1):
            _fz_vertices(geo[b], mean_s, R[b], t[b], focal[b], ppx[b], ppy[b], vc, xyq)
            _fz_normals(faces, chunks, vc, nrm, ws_f32)
            _fz_shade(nrm, alb[b], mean_a, gamma[b], col)
            if keep[0]:
                _fz_vertex_major(vc, vc_o[b])
            if keep[1]:
                _fz_screen(xyq, vc, sc_o[b])
            if keep[2]:
                _fz_vertex_major(nrm, nrm_o[b])
            if keep[3]:
                _fz_vertex_major(col, col_o[b])
            _fz_zbuffer(xyq, faces, chunks, H, W, zb, ws_f32, ws_i32, ws_i64, zb_fn)
            _fz_pack(xyq, col, pk)  # after the z-buffer: still in the cache for the resolve
            _fz_resolve(zb, faces, pk, mouth, H, W, bg, image[b], mask[b], imask[b], depth[b], row_fn)
            if frags:
                _fz_fragments(zb, b, faces, pk, H, W, p2f[b], zbuf[b], bary[b], dists[b])
