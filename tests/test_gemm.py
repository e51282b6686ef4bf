"""facelib.render.fast._gemm: the packed-basis micro-kernel of the fused renderer's Eq. 2-3 products, against a
float64 reference, for every row and column remainder of its blocking and any split over threads."""

import numpy as np
import pytest

from facelib.render.fast import _gemm

needs_kernel = pytest.mark.skipif(not _gemm.available(), reason=f"no micro-kernel here: {_gemm._STATE['error']}")


@pytest.fixture(params=[(8, 32), (6, 16)], ids=["avx512-blocks", "avx2-blocks"])
def shape(request, monkeypatch):
    """Both block shapes of :func:`facelib.render.fast._gemm._shape`, whatever this CPU picks (the other one
    still compiles and runs here: LLVM lowers the vectors to the registers it has)."""
    monkeypatch.setitem(_gemm._STATE, "shape", request.param)
    return request.param


def _product(coef, packed, n_jobs):
    out = np.full((coef.shape[0], packed.N), np.nan, np.float32)
    for p0, p1 in _gemm.panel_ranges(packed, n_jobs):
        _gemm.gemm(coef, packed, out, p0, p1)
    return out


@needs_kernel
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 19, 1001), (9, 3, 31), (33, 5, 64), (16, 160, 97), (3, 2, 0)])
def test_gemm_matches_a_float64_product_for_any_split(M, K, N, shape):
    """Every output element is written, to float32 accuracy of the float64 product, and the split of
    the columns over 1-4 jobs does not change a bit (one FMA chain per element)."""
    MR, NR = shape
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    coef = rng.standard_normal((M, K), dtype=np.float32)
    basis = rng.standard_normal((K, N), dtype=np.float32)
    packed = _gemm.pack_basis(basis)
    assert packed.panels.shape == (N // NR, K, NR) and packed.tail.shape == (1, K, NR)
    ref = coef.astype(np.float64) @ basis.astype(np.float64)
    one = _product(coef, packed, 1)
    np.testing.assert_allclose(one, ref, rtol=1e-5, atol=1e-5 * max(1, K) ** 0.5)
    for n_jobs in (2, 3, 4):
        assert np.array_equal(_product(coef, packed, n_jobs), one)


@needs_kernel
def test_gemm_every_row_remainder_and_non_contiguous_coefficients(shape):
    """Batches of 1 .. 2 MR + 1 rows (each remainder of the MR-row blocks) and a transposed (non
    contiguous) coefficient matrix give the rows of the full product."""
    MR, NR = shape
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((11, 3 * NR + 5), dtype=np.float32)
    packed = _gemm.pack_basis(basis)
    coef_t = rng.standard_normal((11, 2 * MR + 1), dtype=np.float32)
    full = _product(coef_t.T, packed, 2)
    np.testing.assert_allclose(full, coef_t.T.astype(np.float64) @ basis, rtol=1e-5, atol=1e-5)
    for M in range(1, 2 * MR + 2):
        assert np.array_equal(_product(np.ascontiguousarray(coef_t.T[:M]), packed, 2), full[:M])


@needs_kernel
def test_gemm_zero_coefficients_and_bad_shapes():
    """K = 0 gives zeros; mismatched shapes, a float64 or non-contiguous output: a ValueError that names
    the shapes, and nothing written."""
    packed = _gemm.pack_basis(np.zeros((0, 40), np.float32))
    out = np.full((3, 40), np.nan, np.float32)
    for r in _gemm.panel_ranges(packed, 2):
        _gemm.gemm(np.zeros((3, 0), np.float32), packed, out, *r)
    assert np.array_equal(out, np.zeros((3, 40), np.float32))
    packed = _gemm.pack_basis(np.ones((4, 40), np.float32))
    for coef, o in [(np.ones((3, 5), np.float32), np.zeros((3, 40), np.float32)),
                    (np.ones((3, 4), np.float32), np.zeros((3, 41), np.float32)),
                    (np.ones((3, 4), np.float32), np.zeros((3, 40), np.float64)),
                    (np.ones((3, 4), np.float32), np.zeros((40, 3), np.float32).T)]:
        before = o.copy()
        with pytest.raises(ValueError, match="do not match"):
            _gemm.gemm(coef, packed, o, 0, 2)
        assert np.array_equal(o, before)
    with pytest.raises(ValueError, match=r"\(K, N\)"):
        _gemm.pack_basis(np.ones(5, np.float32))


def test_micro_kernel_ir_names_every_value_once():
    """The generated LLVM IR defines each SSA value once for any block shape (a name clash would only
    show on the CPUs that use that shape)."""
    for MR, NR in ((6, 16), (8, 32), (12, 8), (1, 4)):
        lines = _gemm._micro_kernel_ir(MR, NR).splitlines()
        defs = [line.split("=")[0].strip() for line in lines if line.startswith("  %") and "=" in line]
        assert len(defs) == len(set(defs)) and len(defs) > 4 * MR


@needs_kernel
def test_avx2_kernel_compiled_for_an_avx2_cpu_runs_right():
    """The 6 x 16 kernel compiled for an AVX2-only CPU (Haswell: 16 vector registers, no AVX-512), as
    an AVX2 machine would get it, computes the product (it runs here: AVX2 is a subset)."""
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features()
    if not (host.get("avx2") and host.get("fma")):
        pytest.skip("this CPU has no AVX2 / FMA")
    MR, NR = 6, 16
    fn = _gemm._compile(MR, NR, cpu="haswell", features="+avx,+avx2,+fma,+sse4.2,-avx512f")
    rng = np.random.default_rng(5)
    K, P, R = 37, 3, 2
    coef = rng.standard_normal((R * MR, K), dtype=np.float32)
    basis = rng.standard_normal((K, P * NR), dtype=np.float32)
    panels = np.ascontiguousarray(basis.reshape(K, P, NR).transpose(1, 0, 2))
    cT = np.ascontiguousarray(coef.T)
    out = np.full((R * MR, P * NR), np.nan, np.float32)
    fn(cT.ctypes.data, R * MR, panels.ctypes.data, out.ctypes.data, P * NR, K, P, R)
    np.testing.assert_allclose(out, coef.astype(np.float64) @ basis, rtol=1e-5, atol=1e-5)
