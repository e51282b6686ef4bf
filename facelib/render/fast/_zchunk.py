"""The main pass of the fused renderer's z-buffer (:func:`facelib.render.fast.kernels._fz_zbuffer`) for one chunk of
triangles, 16 triangles at a time, as LLVM IR compiled by :mod:`facelib.render.fast._llvm`.

The Numba code runs the per-triangle setup, the 2x2 candidate blocks, the depth-test keys and the
z-buffer updates as separate loops over the chunk, which pass their results through memory (LLVM
vectorises each loop only when it is simple enough). Here they stay in 16-lane registers: setup
(bounding box, back-face culling, the 1/z plane), the 2x2 block at each bounding box corner and, when a
lane of the 16 is a 4x2 / 2x4 box, the second block, the 64-bit keys, then one scalar read-max-write of
the z-buffer per candidate with a pixel centre inside; larger triangles one at a time, row by row, 16
pixels of a row per masked vector read-max-write (``_fz_large``). The formulas are those of
``_fz_setup``, ``_fz_candidates`` and ``_fz_large``, in the same order and without fused
multiply-adds, so the z-buffer is bit-identical.

Where llvmlite or the compilation is missing, or the self-test fails, :func:`address` is 0 and the
Numba code runs.
"""

from __future__ import annotations

import struct

import numpy as np

from . import _llvm

L = 16
_CH = 256  # triangles per chunk (facelib.render.fast.kernels._CH): row stride of T and C
_KEY_LO = (1 << 32) - 1
_STATE: dict = {"addr": None, "error": None}
_ROWS = ("x0", "y0", "x1", "y1", "x2", "y2", "q0", "q1", "q2")  # the kernel's input rows, one pointer each
F16, I16, B16, N16 = "<16 x float>", "<16 x i64>", "<16 x i1>", "<16 x i32>"


def _f(x: float) -> str:
    """An LLVM float constant (the float32 value, written as a double)."""
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(np.float32(x))))[0]


def _splat(value: str, ty: str = "float") -> str:
    return "<" + ", ".join([f"{ty} {value}"] * L) + ">"


class _IR:
    """A small builder for the kernel's straight-line vector code (one SSA name per value)."""

    def __init__(self):
        self.lines = []
        self.n = 0

    def __call__(self, line: str):
        self.lines.append("  " + line)

    def v(self, expr: str, prefix: str = "t") -> str:
        self.n += 1
        name = f"%{prefix}{self.n}"
        self(f"{name} = {expr}")
        return name

    def fop(self, op: str, a: str, b: str) -> str:
        return self.v(f"{op} {F16} {a}, {b}")

    def fcmp(self, cond: str, a: str, b: str) -> str:
        return self.v(f"fcmp {cond} {F16} {a}, {b}")

    def sel(self, c: str, a: str, b: str, ty: str = F16) -> str:
        return self.v(f"select {B16} {c}, {ty} {a}, {ty} {b}")

    def min(self, a: str, b: str) -> str:  # Numba's min(a, b): b if b < a else a
        return self.sel(self.fcmp("olt", b, a), b, a)

    def max(self, a: str, b: str) -> str:  # Numba's max(a, b): b if b > a else a
        return self.sel(self.fcmp("ogt", b, a), b, a)

    def band(self, *xs: str) -> str:
        out = xs[0]
        for x in xs[1:]:
            out = self.v(f"and {B16} {out}, {x}")
        return out

    def bor(self, a: str, b: str) -> str:
        return self.v(f"or {B16} {a}, {b}")

    def bnot(self, a: str) -> str:
        return self.v(f"xor {B16} {a}, {_splat('true', 'i1')}")

    def loop(self, head: str, var: str, start: str, entry: str, step: str, latch: str, last: str, exit_: str,
             body: str) -> None:
        """The head of a counted loop: ``var`` (i64) from ``start`` (coming from block ``entry``) while
        ``var <= last``; ``step`` is the next value, made in block ``latch``; exits to ``exit_``, else
        goes on in the block ``body`` that starts here."""
        self(f"br label %{head}")
        self.lines.append(f"{head}:")
        self(f"{var} = phi i64 [{start}, %{entry}], [{step}, %{latch}]")
        self(f"br i1 {self.v(f'icmp sgt i64 {var}, {last}')}, label %{exit_}, label %{body}")
        self.lines.append(f"{body}:")

    def splat(self, x: str, ty: str) -> str:
        """The scalar ``x`` of type ``ty`` (float, i1, i32, i64) in all 16 lanes."""
        vt = f"<16 x {ty}>"
        return self.v(f"shufflevector {vt} {self.v(f'insertelement {vt} poison, {ty} {x}, i64 0')}, {vt} poison, "
                      f"{N16} zeroinitializer")


def _pixel_key(e: _IR, tri: dict, ax: str, ay: str, bx: str, by: str, cx: str, cy: str, flag, key_lo: str) -> str:
    """The 64-bit depth-test key of a triangle at 16 pixel centres (``ax = x0 - px`` ... the corners
    relative to them): the edge functions (inclusive inside test, and ``flag`` where given), 1/z from the
    triangle's plane (``tri``: q0, gx, gy), then float bits of 1/z above, ``key_lo`` below; 0 outside."""
    zero = _splat(_f(0.0))
    w0 = e.fop("fsub", e.fop("fmul", bx, cy), e.fop("fmul", by, cx))
    w1 = e.fop("fsub", e.fop("fmul", cx, ay), e.fop("fmul", cy, ax))
    w2 = e.fop("fsub", e.fop("fmul", ax, by), e.fop("fmul", ay, bx))
    q = e.fop("fsub", e.fop("fsub", tri["q0"], e.fop("fmul", tri["gx"], ax)), e.fop("fmul", tri["gy"], ay))
    inside = e.band(*([flag] if flag else []), e.fcmp("ole", w0, zero), e.fcmp("ole", w1, zero),
                    e.fcmp("ole", w2, zero))
    qi = e.v(f"bitcast {F16} {e.sel(inside, q, zero)} to {N16}")
    pos = e.v(f"icmp sgt {N16} {qi}, zeroinitializer")
    hi = e.v(f"shl {I16} {e.v(f'sext {N16} {qi} to {I16}')}, {_splat('32', 'i64')}")
    return e.sel(pos, e.v(f"or {I16} {hi}, {key_lo}"), "zeroinitializer", I16)


def _candidates(e: _IR, row: dict, flag: str, second: bool, lanes_key_lo: str, label: str) -> None:
    """The four candidates of a 2x2 block (the corner block, or the second block of a 4x2 / 2x4 box)
    and their z-buffer updates; as :func:`facelib.render.fast.kernels._fz_candidates`, ``_fz_keys``, ``_fz_blocks``."""
    zero, half = _splat(_f(0.0)), _splat(_f(0.5))
    if second:
        shift = _splat(_f(2.0))
        si = e.sel(row["tall"], shift, zero)  # C[4] + (shift if tall else zero)
        sj = e.sel(row["tall"], zero, shift)
        i_base = e.min(e.fop("fadd", row["fi0"], si), row["Hb"])
        j_base = e.min(e.fop("fadd", row["fj0"], sj), row["Wb"])
    else:
        i_base = e.min(e.fop("fadd", row["fi0"], zero), row["Hb"])
        j_base = e.min(e.fop("fadd", row["fj0"], zero), row["Wb"])
    for c in range(4):
        i = e.fop("fadd", i_base, _splat(_f(c // 2)))
        j = e.fop("fadd", j_base, _splat(_f(c % 2)))
        py = e.fop("fadd", i, half)
        px = e.fop("fadd", j, half)
        rel = [e.fop("fsub", row[v], p) for v, p in (("x0", px), ("y0", py), ("x1", px), ("y1", py), ("x2", px),
                                                       ("y2", py))]
        key = _pixel_key(e, row, *rel, flag, lanes_key_lo)
        ii = e.v(f"fptosi {F16} {i} to {N16}")
        jj = e.v(f"fptosi {F16} {j} to {N16}")
        wv = row["Wv"]
        pix = e.v(f"add {N16} {e.v(f'mul {N16} {ii}, {wv}')}, {jj}")
        bits = e.v(f"bitcast {B16} {e.v(f'icmp ne {I16} {key}, zeroinitializer')} to i16")
        # one read-max-write of the z-buffer per lane with a key (lanes may share a pixel: in turn)
        pre, loop, body, done = (f"{label}_{c}_{s}" for s in ("pre", "loop", "body", "done"))
        e(f"br label %{pre}")
        e.lines.append(f"{pre}:")
        e(f"br label %{loop}")
        e.lines.append(f"{loop}:")
        m = f"%{label}_{c}_m"
        m2 = f"%{label}_{c}_m2"
        e(f"{m} = phi i16 [{bits}, %{pre}], [{m2}, %{body}]")
        z = e.v(f"icmp eq i16 {m}, 0")
        e(f"br i1 {z}, label %{done}, label %{body}")
        e.lines.append(f"{body}:")
        lane = e.v(f"call i16 @llvm.cttz.i16(i16 {m}, i1 true)")
        kl = e.v(f"extractelement {I16} {key}, i16 {lane}")
        pl = e.v(f"extractelement {N16} {pix}, i16 {lane}")
        pp = e.v(f"getelementptr i64, ptr %zb, i32 {pl}")
        old = e.v(f"load i64, ptr {pp}, align 8")
        new = e.v(f"select i1 {e.v(f'icmp sgt i64 {kl}, {old}')}, i64 {kl}, i64 {old}")
        e(f"store i64 {new}, ptr {pp}, align 8")
        e(f"{m2} = and i16 {m}, {e.v(f'sub i16 {m}, 1')}")
        e(f"br label %{loop}")
        e.lines.append(f"{done}:")


def _chunk_kernel_ir() -> str:
    """LLVM IR of ``zb_chunk(x0, y0, x1, y1, x2, y2, q0, q1, q2, n, start, H, W, zb) -> i64`` (pointers
    as i64 addresses): triangles ``0 .. n - 1`` of a chunk (face indices ``start + k``), their corners
    and 1 / depth in nine float32 rows (element k: triangle k; views of the x, y, 1/z arrays for a strip,
    else the rows of a gathered chunk), into the int64 z-buffer ``zb`` (H W,):
    2x2 blocks, two for 4x2 / 2x4 boxes, row by row for larger ones; returns the number of the
    larger ones."""
    e = _IR()
    head = ["define i64 @zb_chunk(" + ", ".join(f"i64 %{nm}_a" for nm in _ROWS) +
            ", i64 %n, i64 %start, i64 %H, i64 %W, i64 %zb_a) #0 {", "entry:"]
    e.lines = head
    for nm in _ROWS + ("zb",):
        e(f"%{nm} = inttoptr i64 %{nm}_a to ptr")
    row = {}
    for nm, expr in (("Hm", "sub i64 %H, 1"), ("Wm", "sub i64 %W, 1"), ("Hb", "sub i64 %H, 2"), ("Wb", "sub i64 %W, 2")):
        s = e.v(expr)
        sf = e.v(f"sitofp i64 {s} to float")
        row[nm] = e.splat(sf, "float")
    s2 = e.v(f"and i1 {e.v('icmp sge i64 %H, 2')}, {e.v('icmp sge i64 %W, 2')}")
    s4 = e.v(f"and i1 {e.v('icmp sge i64 %H, 4')}, {e.v('icmp sge i64 %W, 4')}")
    row["s2"] = e.splat(s2, "i1")
    row["s4"] = e.splat(s4, "i1")
    w32 = e.v("trunc i64 %W to i32")
    row["Wv"] = e.splat(w32, "i32")
    ng = e.v("lshr i64 " + e.v("add i64 %n, 15") + ", 4")
    e(f"%any = icmp sgt i64 {ng}, 0")
    e("br i1 %any, label %group, label %exit")
    e.lines.append("group:")
    e("%g = phi i64 [0, %entry], [%g1, %next]")
    e("%cnt = phi i64 [0, %entry], [%cnt_out, %next]")
    k0 = e.v("mul i64 %g, 16")
    k0v = e.splat(k0, "i64")
    lanes = e.v(f"add {I16} {k0v}, <" + ", ".join(f"i64 {x}" for x in range(L)) + ">")
    nv = e.splat("%n", "i64")
    valid = e.v(f"icmp slt {I16} {lanes}, {nv}")
    sv = e.splat("%start", "i64")
    ids = e.v(f"add {I16} {sv}, {lanes}")
    key_lo = e.v(f"sub {I16} {_splat(str(_KEY_LO), 'i64')}, {ids}")
    for nm in _ROWS:  # masked: nothing is read past triangle n - 1 (the rows may be views of x, y, 1/z)
        p = e.v(f"getelementptr float, ptr %{nm}, i64 {k0}")
        row[nm] = e.v(f"call {F16} @llvm.masked.load.v16f32.p0(ptr {p}, i32 4, {B16} {valid}, {F16} zeroinitializer)")
    zero, one, half = _splat(_f(0.0)), _splat(_f(1.0)), _splat(_f(0.5))
    fabs = f"call {F16} @llvm.%s.v16f32({F16} %s)"
    # _fz_setup
    mnx = e.min(row["x0"], e.min(row["x1"], row["x2"]))
    mxx = e.max(row["x0"], e.max(row["x1"], row["x2"]))
    mny = e.min(row["y0"], e.min(row["y1"], row["y2"]))
    mxy = e.max(row["y0"], e.max(row["y1"], row["y2"]))
    fj0 = e.max(zero, e.v(fabs % ("ceil", e.fop("fsub", mnx, half))))
    fj1 = e.min(row["Wm"], e.v(fabs % ("floor", e.fop("fsub", mxx, half))))
    fi0 = e.max(zero, e.v(fabs % ("ceil", e.fop("fsub", mny, half))))
    fi1 = e.min(row["Hm"], e.v(fabs % ("floor", e.fop("fsub", mxy, half))))
    ex1 = e.fop("fsub", row["x1"], row["x0"])
    ey1 = e.fop("fsub", row["y1"], row["y0"])
    ex2 = e.fop("fsub", row["x2"], row["x0"])
    ey2 = e.fop("fsub", row["y2"], row["y0"])
    area = e.fop("fsub", e.fop("fmul", ex1, ey2), e.fop("fmul", ey1, ex2))
    ok = e.band(valid, e.fcmp("ole", fj0, fj1), e.fcmp("ole", fi0, fi1), e.fcmp("olt", area, _splat(_f(-1e-10))),
                e.fcmp("ogt", row["q0"], zero), e.fcmp("ogt", row["q1"], zero), e.fcmp("ogt", row["q2"], zero))
    dj = e.fop("fsub", fj1, fj0)
    di = e.fop("fsub", fi1, fi0)
    three = _splat(_f(3.0))
    f2 = e.band(row["s2"], e.fcmp("ole", dj, one), e.fcmp("ole", di, one))
    f8 = e.band(row["s4"], e.bor(e.band(e.fcmp("ole", di, three), e.fcmp("ole", dj, one)),
                                 e.band(e.fcmp("ole", di, one), e.fcmp("ole", dj, three))))
    first = e.band(ok, e.bor(f2, f8))  # C[0]
    second = e.band(ok, e.bnot(f2), f8)  # C[1]
    large = e.band(ok, e.bnot(f2), e.bnot(f8))  # C[2]
    tall = e.fcmp("ogt", di, one)  # C[3]
    d1 = e.fop("fsub", row["q1"], row["q0"])
    d2 = e.fop("fsub", row["q2"], row["q0"])
    inv = e.fop("fdiv", one, area)
    gx = e.fop("fmul", e.fop("fsub", e.fop("fmul", d1, ey2), e.fop("fmul", d2, ey1)), inv)
    gy = e.fop("fmul", e.fop("fsub", e.fop("fmul", d2, ex1), e.fop("fmul", d1, ex2)), inv)
    row.update(fi0=fi0, fj0=fj0, tall=tall, gx=gx, gy=gy)
    _candidates(e, row, first, False, key_lo, "A")
    sb = e.v(f"bitcast {B16} {second} to i16")
    e(f"br i1 {e.v(f'icmp ne i16 {sb}, 0')}, label %blockB, label %afterB")
    e.lines.append("blockB:")
    _candidates(e, row, second, True, key_lo, "B")
    e("br label %afterB")
    e.lines.append("afterB:")
    # the larger triangles, one at a time, row by row, 16 pixels of a row at a time (_fz_large)
    lb = e.v(f"bitcast {B16} {large} to i16")
    e("br label %big_loop")
    e.lines.append("big_loop:")
    e(f"%bm = phi i16 [{lb}, %afterB], [%bm2, %rows_done]")
    e("%bc = phi i64 [%cnt, %afterB], [%bc1, %rows_done]")
    e("%bz = icmp eq i16 %bm, 0")
    e("br i1 %bz, label %next, label %big_body")
    e.lines.append("big_body:")
    lane = e.v("call i16 @llvm.cttz.i16(i16 %bm, i1 true)")
    sc = {nm: e.v(f"extractelement {F16} {row[nm]}, i16 {lane}")
          for nm in ("x0", "y0", "x1", "y1", "x2", "y2", "q0", "gx", "gy")}
    vec = {nm: e.splat(v, "float") for nm, v in sc.items()}
    klo = e.v(f"extractelement {I16} {key_lo}, i16 {lane}")
    klov = e.splat(klo, "i64")
    bounds = {nm: e.v(f"fptosi float {e.v(f'extractelement {F16} {v}, i16 {lane}')} to i64")
              for nm, v in (("i0", fi0), ("i1", fi1), ("j0", fj0), ("j1", fj1))}
    j1 = bounds["j1"]
    j1v = e.splat(j1, "i64")
    e.loop("rows", "%ri", bounds["i0"], "big_body", "%ri1", "cols_done", bounds["i1"], "rows_done", "row_body")
    pys = e.v(f"fadd float {e.v('sitofp i64 %ri to float')}, {_f(0.5)}")
    pyv = e.splat(pys, "float")
    ay = e.fop("fsub", vec["y0"], pyv)
    by = e.fop("fsub", vec["y1"], pyv)
    cy = e.fop("fsub", vec["y2"], pyv)
    base = e.v("mul i64 %ri, %W")
    e.loop("cols", "%jb", bounds["j0"], "row_body", "%jb16", "col_body", j1, "cols_done", "col_body")
    jbv = e.splat("%jb", "i64")
    jj = e.v(f"add {I16} {jbv}, <" + ", ".join(f"i64 {x}" for x in range(L)) + ">")
    inrow = e.v(f"icmp sle {I16} {jj}, {j1v}")
    px = e.fop("fadd", e.v(f"sitofp {I16} {jj} to {F16}"), half)
    ax = e.fop("fsub", vec["x0"], px)
    bx = e.fop("fsub", vec["x1"], px)
    cx = e.fop("fsub", vec["x2"], px)
    key = _pixel_key(e, vec, ax, ay, bx, by, cx, cy, None, klov)
    zp = e.v(f"getelementptr i64, ptr %zb, i64 {e.v(f'add i64 {base}, %jb')}")
    old = e.v(f"call {I16} @llvm.masked.load.v16i64.p0(ptr {zp}, i32 8, {B16} {inrow}, {I16} zeroinitializer)")
    new = e.sel(e.v(f"icmp sgt {I16} {key}, {old}"), key, old, I16)
    e(f"call void @llvm.masked.store.v16i64.p0({I16} {new}, ptr {zp}, i32 8, {B16} {inrow})")
    e("%jb16 = add i64 %jb, 16")
    e("br label %cols")
    e.lines.append("cols_done:")
    e("%ri1 = add i64 %ri, 1")
    e("br label %rows")
    e.lines.append("rows_done:")
    e("%bc1 = add i64 %bc, 1")
    e(f"%bm2 = and i16 %bm, {e.v('sub i16 %bm, 1')}")
    e("br label %big_loop")
    e.lines.append("next:")
    e("%cnt_out = phi i64 [%bc, %big_loop]")
    e("%g1 = add i64 %g, 1")
    e(f"%gdone = icmp eq i64 %g1, {ng}")
    e("br i1 %gdone, label %exit, label %group")
    e.lines.append("exit:")
    e("%res = phi i64 [0, %entry], [%cnt_out, %next]")
    e("ret i64 %res")
    e.lines.append("}")
    e.lines += [f"declare {F16} @llvm.ceil.v16f32({F16})", f"declare {F16} @llvm.floor.v16f32({F16})",
                f"declare {I16} @llvm.masked.load.v16i64.p0(ptr, i32, {B16}, {I16})",
                f"declare {F16} @llvm.masked.load.v16f32.p0(ptr, i32, {B16}, {F16})",
                f"declare void @llvm.masked.store.v16i64.p0({I16}, ptr, i32, {B16})",
                "declare i16 @llvm.cttz.i16(i16, i1)",
                'attributes #0 = { nounwind "min-legal-vector-width"="512" }']
    return "\n".join(e.lines)


def _call(addr, T, n, start, H, W, zb) -> int:
    """Run the kernel on the chunk ``T`` (rows of _CH, as :func:`facelib.render.fast.kernels._fz_gather` writes it)."""
    import ctypes

    fn = ctypes.CFUNCTYPE(ctypes.c_int64, *([ctypes.c_int64] * 14))(addr)
    return fn(*(T.ctypes.data + 4 * r * _CH for r in range(len(_ROWS))), n, start, H, W, zb.ctypes.data)


def _self_test(addr, seed: int = 0, H: int = 21, W: int = 26, n: int = _CH) -> None:
    """The kernel against the Numba code (:func:`facelib.render.fast.kernels._fz_setup`, ``_fz_candidates``,
    ``_fz_keys``, ``_fz_blocks``) on ``n`` random small and large triangles, most front-facing, some
    partly outside an H x W image; raises RuntimeError where they differ."""
    from . import kernels as R

    rng = np.random.default_rng(seed)
    start = 1000
    T = np.zeros(R._NT * _CH, np.float32)
    size = np.where(rng.random(n) < 0.7, rng.uniform(0.5, 3, n), rng.uniform(3, 12, n)).astype(np.float32)
    xy = rng.uniform(-3, [W + 3, H + 3], (n, 1, 2)).astype(np.float32) + (
        rng.uniform(-0.5, 0.5, (n, 3, 2)) * size[:, None, None]).astype(np.float32)
    e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    back = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0
    xy[back] = xy[back][:, [0, 2, 1]]  # most front-facing (a tenth stays as drawn: culled)
    xy[: n // 10] = xy[: n // 10][:, [0, 2, 1]]
    for v in range(3):
        T[2 * v * _CH: 2 * v * _CH + n] = xy[:, v, 0]
        T[(2 * v + 1) * _CH: (2 * v + 1) * _CH + n] = xy[:, v, 1]
        T[(6 + v) * _CH: (6 + v) * _CH + n] = rng.uniform(1e-3, 2e-3, n)
    C = np.zeros(R._NC * _CH, np.float32)
    Q, P = np.zeros(8 * _CH, np.float32), np.zeros(8 * _CH, np.int32)
    K, idx = np.zeros(8 * _CH, np.int64), np.zeros(_CH, np.int64)
    qrow = np.zeros(max(W, 1), np.float32)
    ids = np.arange(start, start + n, dtype=np.int64)
    ref = np.zeros(H * W, np.int64)
    R._fz_setup(n, T, H, W, C)
    for row, second in ((0, 0), (1, 1)):
        R._fz_candidates(n, T, C, H, W, row, second, Q, P)
        R._fz_keys(n, 4, ids, Q.view(np.int32), K)
        R._fz_blocks(n, 4, P, K, idx, ref)
    large = np.flatnonzero(C[2 * _CH: 2 * _CH + n])
    for k in large:
        R._fz_large(k, start + k, T, C, H, W, qrow, ref)
    zb = np.zeros(H * W, np.int64)
    m = _call(addr, T, n, start, H, W, zb)
    if not (np.array_equal(zb, ref) and m == len(large)):
        raise RuntimeError("the compiled z-buffer kernel differs from the Numba code")


def address() -> int:
    """Address of the compiled chunk kernel for :func:`facelib.render.fast.kernels._fz_zbuffer`, 0 where it cannot
    run here (no llvmlite or AVX-512, or the self-test fails; then the Numba loops run)."""
    return _llvm.checked_kernel(_STATE, _chunk_kernel_ir, "zb_chunk", _self_test)
