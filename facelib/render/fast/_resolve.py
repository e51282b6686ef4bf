"""The per-pixel resolve of the fused renderer (:func:`facelib.render.fast.kernels._fz_resolve`) for 16 pixels at a
time, as LLVM IR compiled by :mod:`facelib.render.fast._llvm`.

Per covered pixel the resolve reads the winning face's three packed vertex records (32 bytes each:
screen x, y, 1 / depth, r, g, b) and computes perspective-correct barycentrics, Eq. 6 colour and
depth: about 45 float operations and a division. Written per pixel (Numba), that is scalar code.
Here 16 pixels of an image row go together: the 48 records are loaded as 8-float vectors and
transposed with shuffles into 16-lane vectors of x, y, 1 / depth and colour (AVX-512 gathers are
slower on the CPUs we have), then the same formulas run on 16 lanes, in the same order and without
fused multiply-adds, so the results are bit-identical to the scalar code. Blocks of 16 background
pixels are filled without loading anything.

Where llvmlite, the compilation or the self-test fails, :func:`address` is 0 and the Numba code runs.
(The z-buffer kernel of :mod:`facelib.render.fast._zchunk` is used with AVX-512 only: made for Haswell it was no
faster than the Numba loops; this one was, by a third.)
"""

from __future__ import annotations

import numpy as np

from . import _llvm

L = 16  # pixels per block
_NP = 8  # floats per packed vertex record (facelib.render.fast.kernels._NP)
_KEY_LO = (1 << 32) - 1
_STATE: dict = {"addr": None, "error": None}


def _vec(values, ty: str) -> str:
    """An LLVM vector constant (without its type)."""
    return "<" + ", ".join(f"{ty} {v}" for v in values) + ">"


def _mask(idx) -> str:
    idx = list(idx)
    return f"<{len(idx)} x i32> " + _vec(idx, "i32")


def _row_kernel_ir() -> str:
    """LLVM IR of ``resolve_row(zr, fl, pf, mouth, nblk, j0, py, bg, r0, r1, r2, mk, ik, dp)`` (pointers as
    i64 addresses): pixels ``j0 .. j0 + 16 nblk - 1`` of one image row, as the scalar resolve.
    ``zr`` int64 z-buffer keys of the row, ``fl`` int32 triangles (F, 3), ``pf`` float32 packed vertex
    records (V, 8), ``mouth`` uint8 (F,); out: float32 ``r0, r1, r2`` (the row of each colour plane),
    uint8 ``mk, ik`` (mask, input mask), float32 ``dp`` (depth), all indexed by the pixel's column."""
    F16, I16, B16 = "<16 x float>", "<16 x i64>", "<16 x i1>"
    out = []
    e = out.append
    e("define void @resolve_row(i64 %zr_a, i64 %fl_a, i64 %pf_a, i64 %mouth_a, i64 %nblk, i64 %j0, float %py,"
      " float %bg, i64 %r0_a, i64 %r1_a, i64 %r2_a, i64 %mk_a, i64 %ik_a, i64 %dp_a) #0 {")
    e("entry:")
    for n in ("zr", "fl", "pf", "mouth", "r0", "r1", "r2", "mk", "ik", "dp"):
        e(f"  %{n} = inttoptr i64 %{n}_a to ptr")
    e(f"  %bgv0 = insertelement {F16} poison, float %bg, i64 0")
    e(f"  %bgv = shufflevector {F16} %bgv0, {F16} poison, <16 x i32> zeroinitializer")
    e(f"  %pyv0 = insertelement {F16} poison, float %py, i64 0")
    e(f"  %pyv = shufflevector {F16} %pyv0, {F16} poison, <16 x i32> zeroinitializer")
    e("  %any = icmp sgt i64 %nblk, 0")
    e("  br i1 %any, label %block, label %exit")
    e("block:")
    e("  %k = phi i64 [0, %entry], [%k1, %next]")
    e("  %k16 = mul i64 %k, 16")
    e("  %j = add i64 %j0, %k16")
    e("  %zp = getelementptr i64, ptr %zr, i64 %j")
    e(f"  %keys = load {I16}, ptr %zp, align 8")
    e(f"  %cov = icmp ne {I16} %keys, zeroinitializer")
    e(f"  %covbits = bitcast {B16} %cov to i16")
    e("  %none = icmp eq i16 %covbits, 0")
    for n in ("r0", "r1", "r2", "dp"):
        e(f"  %{n}p = getelementptr float, ptr %{n}, i64 %j")
    for n in ("mk", "ik"):
        e(f"  %{n}p = getelementptr i8, ptr %{n}, i64 %j")
    e("  br i1 %none, label %background, label %work")
    e("background:")  # no face in these 16 pixels
    for n in ("r0", "r1", "r2"):
        e(f"  store {F16} %bgv, ptr %{n}p, align 4")
    e(f"  store {F16} zeroinitializer, ptr %dpp, align 4")
    e("  store <16 x i8> zeroinitializer, ptr %mkp, align 1")
    e("  store <16 x i8> zeroinitializer, ptr %ikp, align 1")
    e("  br label %next")
    e("work:")
    e(f"  %lo = and {I16} %keys, {_vec([_KEY_LO] * L, 'i64')}")
    e(f"  %fw = sub {I16} {_vec([_KEY_LO] * L, 'i64')}, %lo")
    e(f"  %f = select {B16} %cov, {I16} %fw, {I16} zeroinitializer")  # face 0 where none: valid memory
    for ln in range(L):  # per pixel: the face's vertex indices, its three records, its mouth label
        e(f"  %f{ln} = extractelement {I16} %f, i64 {ln}")
        e(f"  %f3_{ln} = mul i64 %f{ln}, 3")
        e(f"  %mo{ln}p = getelementptr i8, ptr %mouth, i64 %f{ln}")
        e(f"  %mo{ln} = load i8, ptr %mo{ln}p, align 1")
        for s, o in (("a", 0), ("b", 1), ("c", 2)):
            e(f"  %{s}{ln}i = add i64 %f3_{ln}, {o}")
            e(f"  %{s}{ln}ip = getelementptr i32, ptr %fl, i64 %{s}{ln}i")
            e(f"  %{s}{ln}v = load i32, ptr %{s}{ln}ip, align 4")
            e(f"  %{s}{ln}w = sext i32 %{s}{ln}v to i64")
            e(f"  %{s}{ln}o = mul i64 %{s}{ln}w, {_NP}")
            e(f"  %{s}{ln}rp = getelementptr float, ptr %pf, i64 %{s}{ln}o")
            e(f"  %{s}{ln}r = load <8 x float>, ptr %{s}{ln}rp, align 4")
    e("  %mo0v = insertelement <16 x i8> poison, i8 %mo0, i64 0")
    for ln in range(1, L):
        e(f"  %mo{ln}v = insertelement <16 x i8> %mo{ln - 1}v, i8 %mo{ln}, i64 {ln}")
    for s in "abc":  # transpose 16 records x 8 floats into 16-lane vectors of floats 0 .. 5
        for m in range(8):  # pairs of records
            e(f"  %{s}P{m} = shufflevector <8 x float> %{s}{2 * m}r, <8 x float> %{s}{2 * m + 1}r, {_mask(range(16))}")
        for t in range(4):  # records 4t .. 4t+3: floats 0-3, then 4-7
            for h in range(2):
                idx = [(r // 2) * 16 + (r % 2) * 8 + 4 * h + c for r in range(4) for c in range(4)]
                e(f"  %{s}U{t}_{h} = shufflevector {F16} %{s}P{2 * t}, {F16} %{s}P{2 * t + 1}, {_mask(idx)}")
        for u in range(2):  # records 8u .. 8u+7: floats (4h + 2g, 4h + 2g + 1)
            for h, g in ((0, 0), (0, 1), (1, 0)):
                idx = [(r // 4) * 16 + (r % 4) * 4 + 2 * g + c for r in range(8) for c in range(2)]
                e(f"  %{s}V{u}_{h}{g} = shufflevector {F16} %{s}U{2 * u}_{h}, {F16} %{s}U{2 * u + 1}_{h}, {_mask(idx)}")
        for h, g in ((0, 0), (0, 1), (1, 0)):
            for c in range(2):
                idx = [(r // 8) * 16 + (r % 8) * 2 + c for r in range(L)]
                e(f"  %{s}C{4 * h + 2 * g + c} = shufflevector {F16} %{s}V0_{h}{g}, {F16} %{s}V1_{h}{g}, {_mask(idx)}")
    # the formulas of facelib.render.fast.kernels._fz_pixel and _fz_resolve, in their order
    e(f"  %jv0 = insertelement {I16} poison, i64 %j, i64 0")
    e(f"  %jv = shufflevector {I16} %jv0, {I16} poison, <16 x i32> zeroinitializer")
    e(f"  %jl = add {I16} %jv, {_vec(range(L), 'i64')}")
    e(f"  %jf = sitofp {I16} %jl to {F16}")
    e(f"  %px = fadd {F16} %jf, {_vec(['0.5'] * L, 'float')}")
    ops = [("x0", "fsub", "%aC0", "%px"), ("y0", "fsub", "%aC1", "%pyv"), ("x1", "fsub", "%bC0", "%px"),
           ("y1", "fsub", "%bC1", "%pyv"), ("x2", "fsub", "%cC0", "%px"), ("y2", "fsub", "%cC1", "%pyv"),
           ("t0", "fmul", "%x1", "%y2"), ("t1", "fmul", "%y1", "%x2"), ("w0", "fsub", "%t0", "%t1"),
           ("t2", "fmul", "%x2", "%y0"), ("t3", "fmul", "%y2", "%x0"), ("w1", "fsub", "%t2", "%t3"),
           ("t4", "fmul", "%x0", "%y1"), ("t5", "fmul", "%y0", "%x1"), ("w2", "fsub", "%t4", "%t5"),
           ("s01", "fadd", "%w0", "%w1"), ("s0", "fadd", "%s01", "%w2")]
    for name, op, x, y in ops:
        e(f"  %{name} = {op} {F16} {x}, {y}")
    tiny = "0x3810000000000000"  # torch.finfo(float32).tiny as an LLVM float constant
    e(f"  %sabs = call {F16} @llvm.fabs.v16f32({F16} %s0)")
    e(f"  %small = fcmp olt {F16} %sabs, {_vec([tiny] * L, 'float')}")
    e(f"  %s = select {B16} %small, {F16} {_vec([tiny] * L, 'float')}, {F16} %s0")
    ops = [("q0", "fmul", "%w0", "%aC2"), ("q1", "fmul", "%w1", "%bC2"), ("q2", "fmul", "%w2", "%cC2"),
           ("qs01", "fadd", "%q0", "%q1"), ("qs", "fadd", "%qs01", "%q2")]
    for name, op, x, y in ops:
        e(f"  %{name} = {op} {F16} {x}, {y}")
    e(f"  %d = fdiv {F16} {_vec(['1.0'] * L, 'float')}, %qs")
    for i in range(3):
        e(f"  %b{i} = fmul {F16} %q{i}, %d")
    e(f"  %depth = fmul {F16} %d, %s")
    for ch in range(3):  # Eq. 6: ((b0 ra + b1 rb) + b2 rc)
        e(f"  %ca{ch} = fmul {F16} %b0, %aC{3 + ch}")
        e(f"  %cb{ch} = fmul {F16} %b1, %bC{3 + ch}")
        e(f"  %cc{ch} = fmul {F16} %b2, %cC{3 + ch}")
        e(f"  %cab{ch} = fadd {F16} %ca{ch}, %cb{ch}")
        e(f"  %col{ch} = fadd {F16} %cab{ch}, %cc{ch}")
        e(f"  %out{ch} = select {B16} %cov, {F16} %col{ch}, {F16} %bgv")
        e(f"  store {F16} %out{ch}, ptr %r{ch}p, align 4")
    e(f"  %dout = select {B16} %cov, {F16} %depth, {F16} zeroinitializer")
    e(f"  store {F16} %dout, ptr %dpp, align 4")
    e("  %mk8 = zext <16 x i1> %cov to <16 x i8>")
    e("  store <16 x i8> %mk8, ptr %mkp, align 1")
    e("  %inm = icmp eq <16 x i8> %mo15v, zeroinitializer")
    e("  %ikb = and <16 x i1> %cov, %inm")
    e("  %ik8 = zext <16 x i1> %ikb to <16 x i8>")
    e("  store <16 x i8> %ik8, ptr %ikp, align 1")
    e("  br label %next")
    e("next:")
    e("  %k1 = add i64 %k, 1")
    e("  %done = icmp eq i64 %k1, %nblk")
    e("  br i1 %done, label %exit, label %block")
    e("exit:")
    e("  ret void")
    e("}")
    e(f"declare {F16} @llvm.fabs.v16f32({F16})")
    e('attributes #0 = { nounwind "min-legal-vector-width"="512" }')
    return "\n".join(out)


def _reference_row(zr, fl, pf, mouth, j0, n, py, bg):
    """NumPy float32 twin of the kernel for pixels ``j0 .. j0 + n - 1`` (the self-test): colour planes,
    mask, input mask, depth."""
    f32 = np.float32
    key = zr[j0: j0 + n]
    cov = key != 0
    f = np.where(cov, _KEY_LO - (key & _KEY_LO), 0)
    tri = fl.reshape(-1, 3)[f]
    rec = pf.reshape(-1, _NP)
    a, b, c = rec[tri[:, 0]], rec[tri[:, 1]], rec[tri[:, 2]]
    px = np.arange(j0, j0 + n).astype(f32) + f32(0.5)
    py = f32(py)
    x0, y0, x1, y1, x2, y2 = a[:, 0] - px, a[:, 1] - py, b[:, 0] - px, b[:, 1] - py, c[:, 0] - px, c[:, 1] - py
    w0, w1, w2 = x1 * y2 - y1 * x2, x2 * y0 - y2 * x0, x0 * y1 - y0 * x1
    s = w0 + w1 + w2
    tiny = f32(np.finfo(np.float32).tiny)
    s = np.where(np.abs(s) < tiny, tiny, s)
    q0, q1, q2 = w0 * a[:, 2], w1 * b[:, 2], w2 * c[:, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = f32(1.0) / (q0 + q1 + q2)
        b0, b1, b2 = q0 * d, q1 * d, q2 * d
        col = [b0 * a[:, 3 + ch] + b1 * b[:, 3 + ch] + b2 * c[:, 3 + ch] for ch in range(3)]
        depth = d * s
    planes = [np.where(cov, x, f32(bg)).astype(f32) for x in col]
    return planes, cov, cov & ~mouth[f].astype(bool), np.where(cov, depth, f32(0)).astype(f32)


def _call(addr, zr, fl, pf, mouth, j0, nblk, py, bg, r0, r1, r2, mk, ik, dp):
    import ctypes

    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_int64] * 6), ctypes.c_float, ctypes.c_float,
                          *([ctypes.c_int64] * 6))(addr)
    fn(zr.ctypes.data, fl.ctypes.data, pf.ctypes.data, mouth.ctypes.data, nblk, j0, py, bg,
       *(x.ctypes.data for x in (r0, r1, r2, mk, ik, dp)))


def _self_test(addr) -> None:
    """Run the kernel on random faces, background and degenerate triangles against :func:`_reference_row`."""
    rng = np.random.default_rng(0)
    V, F, W = 50, 40, 3 * L + 5
    pf = np.zeros((V, _NP), np.float32)
    pf[:, :2] = rng.uniform(-5, W + 5, (V, 2))
    pf[:, 2] = rng.uniform(0.001, 0.01, V)
    pf[:, 3:6] = rng.uniform(0, 1, (V, 3))
    fl = rng.integers(0, V, (F, 3)).astype(np.int32)
    fl[0] = (1, 1, 1)  # degenerate: s = 0 -> tiny
    mouth = (rng.random(F) < 0.3).astype(np.uint8)
    f = rng.integers(0, F, W)
    q = rng.uniform(0.001, 0.01, W).astype(np.float32).view(np.int32).astype(np.int64)
    zr = np.where(rng.random(W) < 0.7, (q << 32) | (_KEY_LO - f), 0).astype(np.int64)
    zr[L: 2 * L] = 0  # a background block
    zr[2 * L + 3] = (q[0] << 32) | _KEY_LO  # face 0
    outs = [np.full(W, -7, np.float32) for _ in range(3)] + [np.full(W, 9, np.uint8) for _ in range(2)] + \
        [np.full(W, -7, np.float32)]
    j0, nblk, py, bg = 2, 3, np.float32(11.5), np.float32(0.25)
    _call(addr, zr, fl, pf, mouth, j0, nblk, py, bg, *outs)
    planes, mk, ik, dp = _reference_row(zr, fl, pf, mouth, j0, L * nblk, py, bg)
    sl = slice(j0, j0 + L * nblk)
    ok = all(np.array_equal(o[sl], r, equal_nan=True) for o, r in zip(outs[:3], planes))
    ok &= np.array_equal(outs[3][sl], mk.astype(np.uint8)) and np.array_equal(outs[4][sl], ik.astype(np.uint8))
    ok &= np.array_equal(outs[5][sl], dp, equal_nan=True)
    ok &= all((o[:j0] == o[0]).all() and (o[j0 + L * nblk:] == o[0]).all() for o in outs)  # nothing else written
    if not ok:
        raise RuntimeError("the compiled resolve kernel differs from its reference")


def address() -> int:
    """Address of the compiled row kernel for :func:`facelib.render.fast.kernels._fz_resolve`, 0 where it cannot run
    here (no llvmlite, no AVX2, or the self-test fails; then the Numba code resolves every pixel). On
    AVX2 CPUs LLVM splits the 16-lane vectors into pairs of 8 (measured with code made for Haswell: 240
    against 365 us per face for the Numba code made for Haswell)."""
    return _llvm.checked_kernel(_STATE, _row_kernel_ir, "resolve_row", _self_test, needs="avx2")
