"""A float32 GEMM for a small batch of coefficients times a large fixed basis, ``coef (M, K) @ basis
(K, N)``: the Eq. 2-3 offsets of the fused CPU renderer (M = batch, K = 100-300 coefficients,
N = 3 V = tens of thousands of columns).

BLAS libraries are tuned for large square products; with M = 32 OpenBLAS reaches about 60% of a
core's float32 peak here, because it repacks the whole basis on every call and its micro-kernel is
shaped for larger M. The basis of a face model does not change, so :func:`pack_basis` stores it once
as panels of ``NR`` columns, ``(P, K, NR)``, in the order the micro-kernel reads them, and
:func:`gemm` runs a register-blocked micro-kernel over them: ``MR`` rows times ``NR`` columns of the
output held in vector registers while ``k`` runs over the coefficients (one vector load of the basis,
``MR`` broadcasts and ``MR`` fused multiply-adds per step), about 90% of the peak.

The micro-kernel is LLVM IR written out below and compiled for the host CPU by llvmlite, the LLVM
binding that Numba is built on: no build step, ~30 ms of compilation per shape on first use. Each
output element is one chain of fused multiply-adds over k = 0 .. K-1, the same for any split of the
columns over threads, so the result does not depend on the thread count. Where llvmlite or the
compilation is unavailable, :func:`available` is False and the caller uses BLAS.
"""

from __future__ import annotations

import ctypes
import threading
from typing import NamedTuple

import numpy as np

from . import _llvm


class PackedBasis(NamedTuple):
    """A ``(K, N)`` basis in the layout of :func:`gemm`: ``panels`` ``(P, K, NR)`` hold columns
    ``0 .. P NR - 1``; ``tail`` ``(1, K, NR)`` the last ``N - P NR`` columns, zero-padded."""

    panels: np.ndarray
    tail: np.ndarray
    K: int
    N: int
    NR: int


_LOCK = threading.Lock()
_KERNELS: dict = {}  # (MR, NR, cpu, features) -> ctypes function (the code lives in facelib.render.fast._llvm's engines)
_STATE = {"shape": None, "error": None}  # (MR, NR) of this CPU, or why there is no kernel


def _micro_kernel_ir(MR: int, NR: int) -> str:
    """LLVM IR of ``gemm(c, ldc, b, o, ldo, K, P, R)``: for panels p < P and row blocks r < R,
    ``o[r MR + i, p NR + j] = sum_k c[k, r MR + i] * b[p, k, j]`` (i < MR, j < NR), with ``c`` the
    coefficients transposed (row stride ``ldc``), ``b`` the packed panels, ``o`` row stride ``ldo``."""
    V = f"<{NR} x float>"
    L = ["define void @gemm(ptr noalias %c, i64 %ldc, ptr noalias %b, ptr noalias %o, i64 %ldo, i64 %K,"
         " i64 %P, i64 %R) #0 {",
         "entry:", "  br label %ploop",
         "ploop:", "  %p = phi i64 [0, %entry], [%p1, %pnext]",
         "  %pK = mul i64 %p, %K", f"  %pcol = mul i64 %p, {NR}", "  br label %rloop",
         "rloop:", "  %r = phi i64 [0, %ploop], [%r1, %store]", f"  %row0 = mul i64 %r, {MR}",
         "  br label %kloop",
         "kloop:", "  %k = phi i64 [0, %rloop], [%k1, %kloop]"]
    L += [f"  %acc_{i} = phi {V} [zeroinitializer, %rloop], [%next_{i}, %kloop]" for i in range(MR)]
    L += ["  %bk = add i64 %pK, %k", f"  %bi = mul i64 %bk, {NR}", "  %bp = getelementptr float, ptr %b, i64 %bi",
          f"  %bv = load {V}, ptr %bp, align 4",  # one row of the panel
          "  %ck = mul i64 %k, %ldc", "  %ci = add i64 %ck, %row0"]
    for i in range(MR):  # broadcast c[k, row0 + i], multiply-add
        L += [f"  %cix_{i} = add i64 %ci, {i}", f"  %cp_{i} = getelementptr float, ptr %c, i64 %cix_{i}",
              f"  %cs_{i} = load float, ptr %cp_{i}, align 4",
              f"  %cw_{i} = insertelement {V} poison, float %cs_{i}, i64 0",
              f"  %cv_{i} = shufflevector {V} %cw_{i}, {V} poison, <{NR} x i32> zeroinitializer",
              f"  %next_{i} = call {V} @llvm.fma.v{NR}f32({V} %cv_{i}, {V} %bv, {V} %acc_{i})"]
    L += ["  %k1 = add i64 %k, 1", "  %kdone = icmp eq i64 %k1, %K", "  br i1 %kdone, label %store, label %kloop",
          "store:"]
    for i in range(MR):
        L += [f"  %orow_{i} = add i64 %row0, {i}", f"  %ooff_{i} = mul i64 %orow_{i}, %ldo",
              f"  %oi_{i} = add i64 %ooff_{i}, %pcol", f"  %op_{i} = getelementptr float, ptr %o, i64 %oi_{i}",
              f"  store {V} %next_{i}, ptr %op_{i}, align 4"]
    L += ["  %r1 = add i64 %r, 1", "  %rdone = icmp eq i64 %r1, %R", "  br i1 %rdone, label %pnext, label %rloop",
          "pnext:", "  %p1 = add i64 %p, 1", "  %pdone = icmp eq i64 %p1, %P",
          "  br i1 %pdone, label %exit, label %ploop",
          "exit:", "  ret void", "}",
          f"declare {V} @llvm.fma.v{NR}f32({V}, {V}, {V})",
          f'attributes #0 = {{ nounwind "min-legal-vector-width"="{32 * NR}" }}']
    return "\n".join(L)


_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)  # ctypes releases the GIL in the call


def _compile(MR: int, NR: int, cpu: str | None = None, features: str | None = None):
    """The micro-kernel for ``MR`` rows (compiled once per process), for the host CPU or for ``cpu``
    with ``features`` (LLVM names, e.g. ``"haswell"``, ``"+avx2,+fma"``: the tests run the AVX2 code
    on an AVX-512 machine)."""
    with _LOCK:
        fn = _KERNELS.get((MR, NR, cpu, features))
        if fn is None:
            fn = _KERNELS[(MR, NR, cpu, features)] = _SIG(_llvm.compile_ir(_micro_kernel_ir(MR, NR), "gemm", cpu, features))
        return fn


def _shape() -> tuple:
    """``(MR, NR)`` for this CPU: 8 x 32 with AVX-512 (16 of its 32 vector registers accumulate),
    6 x 16 otherwise (12 of 16 AVX2 registers)."""
    return (8, 32) if "avx512f" in _llvm.host_features() else (6, 16)


def available() -> bool:
    """Whether :func:`gemm` can run here (llvmlite imports and a test product is right); where it cannot,
    a ``RuntimeWarning`` says why (once per process)."""
    if _STATE["shape"] is None and _STATE["error"] is None:
        try:
            MR, NR = _shape()
            _STATE["shape"] = (MR, NR)
            rng = np.random.default_rng(0)
            c, b = rng.standard_normal((MR + 3, 5), np.float32), rng.standard_normal((5, 2 * NR + 3), np.float32)
            out = np.empty((c.shape[0], b.shape[1]), np.float32)
            packed = pack_basis(b)
            gemm(c, packed, out, 0, panel_ranges(packed, 1)[0][1])
            if not np.allclose(out, c.astype(np.float64) @ b, rtol=1e-5, atol=1e-5):
                raise RuntimeError("the compiled micro-kernel gives wrong products")
        except Exception as e:  # noqa: BLE001 (no llvmlite, an LLVM without this IR, a CPU it cannot target)
            import warnings

            _STATE["shape"], _STATE["error"] = None, f"{type(e).__name__}: {e}"
            warnings.warn(f"facelib: the packed GEMM kernel is not used ({_STATE['error']}); NumPy's BLAS runs "
                          "instead (slower). `python -m facelib.repro` lists the kernels that run.",
                          RuntimeWarning, stacklevel=2)
    return _STATE["shape"] is not None


def pack_basis(basis: np.ndarray) -> PackedBasis:
    """``basis`` ``(K, N)`` float32 as :class:`PackedBasis` panels of ``NR`` columns (a copy)."""
    if basis.ndim != 2:
        raise ValueError(f"basis must be (K, N); got shape {basis.shape}")
    _, NR = _STATE["shape"] or _shape()
    K, N = basis.shape
    P = N // NR
    basis = np.asarray(basis, np.float32)
    panels = np.ascontiguousarray(basis[:, :P * NR].reshape(K, P, NR).transpose(1, 0, 2))
    tail = np.zeros((1, K, NR), np.float32)
    tail[0, :, :N - P * NR] = basis[:, P * NR:]
    return PackedBasis(panels, tail, K, N, NR)


def panel_ranges(packed: PackedBasis, n_jobs: int) -> list:
    """``n_jobs`` ranges ``(p0, p1)`` of panel indices that split the columns evenly; index ``P`` (one past
    the full panels) stands for the tail."""
    P = packed.panels.shape[0] + (packed.N % packed.NR > 0)
    return [(P * j // n_jobs, P * (j + 1) // n_jobs) for j in range(n_jobs)]


def gemm(coef: np.ndarray, packed: PackedBasis, out: np.ndarray, p0: int, p1: int) -> None:
    """``out[:, cols] = coef @ basis[:, cols]`` for the columns of panels ``p0 .. p1 - 1`` (see
    :func:`panel_ranges`). ``coef`` ``(M, K)`` float32; ``out`` ``(M, N)`` float32, C-contiguous."""
    M, K = coef.shape
    MR, NR = _STATE["shape"] or _shape()
    if K != packed.K or out.shape != (M, packed.N) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"gemm: coef {coef.shape}, basis ({packed.K}, {packed.N}), out {out.shape} "
                         f"{out.dtype} do not match")
    if M == 0 or p1 <= p0:
        return
    if K == 0:  # the micro-kernel runs k at least once
        lo, hi = min(p0, packed.panels.shape[0]) * NR, min(p1 * NR, packed.N)
        out[:, lo:hi] = 0
        return
    cT = np.ascontiguousarray(coef.T, np.float32)  # (K, M): c[k, i] for the broadcasts
    P = packed.panels.shape[0]
    full = (p0, min(p1, P))
    blocks = [(0, M - M % MR, MR)] + ([(M - M % MR, M, M % MR)] if M % MR else [])
    for r0, r1, mr in blocks:
        if r1 == r0:
            continue
        fn = _compile(mr, NR)
        c_ptr = cT.ctypes.data + 4 * r0
        if full[1] > full[0]:
            b_ptr = packed.panels.ctypes.data + 4 * full[0] * K * NR
            o_ptr = out.ctypes.data + 4 * (r0 * packed.N + full[0] * NR)
            fn(c_ptr, M, b_ptr, o_ptr, packed.N, K, full[1] - full[0], (r1 - r0) // mr)
        if p1 > P and packed.N > P * NR:  # the tail: into a (rows, NR) buffer, then the valid columns
            tmp = np.empty((r1 - r0, NR), np.float32)
            fn(c_ptr, M, packed.tail.ctypes.data, tmp.ctypes.data, NR, K, 1, (r1 - r0) // mr)
            out[r0:r1, P * NR:] = tmp[:, :packed.N - P * NR]
