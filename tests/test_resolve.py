"""facelib._resolve: the fused renderer's per-pixel resolve, 16 pixels at a time (LLVM IR), against its
NumPy reference and against the scalar Numba code it replaces (bit-identical renders)."""

import numpy as np
import pytest
import torch

from facelib import _llvm, _resolve
from facelib.params import sample_sec5
from facelib.raster import HAVE_NUMBA
from facelib.render import render

try:
    HAVE_AVX512 = "avx512f" in _llvm.host_features()
except ImportError:  # no llvmlite
    HAVE_AVX512 = False

needs_kernel = pytest.mark.skipif(not (HAVE_NUMBA and HAVE_AVX512), reason="needs numba, llvmlite and AVX-512")


@needs_kernel
def test_kernel_compiles_and_passes_its_self_test():
    assert _resolve.address() != 0, _resolve._STATE["error"]


@needs_kernel
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_kernel_equals_the_numpy_reference_on_random_rows(seed):
    """Random triangles (some degenerate, some with a vertex behind the camera: 1/z = 0), covered and
    background pixels, blocks starting at any column: every output bit-identical to the float32
    reference; the pixels outside the blocks are not touched."""
    rng = np.random.default_rng(seed)
    V, F, W = 200, 150, 7 * 16 + 9
    pf = np.zeros((V, 8), np.float32)
    pf[:, :2] = rng.uniform(-20, W + 20, (V, 2))
    pf[:, 2] = np.where(rng.random(V) < 0.05, 0, rng.uniform(1e-3, 2e-3, V))
    pf[:, 3:6] = rng.uniform(0, 1, (V, 3))
    fl = rng.integers(0, V, (F, 3)).astype(np.int32)
    fl[:5, 1] = fl[:5, 0]  # degenerate
    mouth = rng.random(F) < 0.3
    f = rng.integers(0, F, W)
    q = rng.uniform(1e-3, 2e-3, W).astype(np.float32).view(np.int32).astype(np.int64)
    zr = np.where(rng.random(W) < 0.6, (q << 32) | (_resolve._KEY_LO - f), 0).astype(np.int64)
    zr[16:40] = 0
    addr = _resolve.address()
    assert addr != 0, _resolve._STATE["error"]
    for j0, nblk in [(0, 7), (3, 5), (9, 1)]:
        outs = [np.full(W, -3, np.float32) for _ in range(3)] + [np.full(W, 7, np.uint8) for _ in range(2)] + [
            np.full(W, -3, np.float32)]
        py, bg = np.float32(rng.uniform(0, 50)) + np.float32(0.5), np.float32(0.4)
        _resolve._call(addr, zr, fl, pf, mouth.view(np.uint8), j0, nblk, py, bg, *outs)
        planes, mk, ik, dp = _resolve._reference_row(zr, fl, pf, mouth, j0, 16 * nblk, py, bg)
        sl = slice(j0, j0 + 16 * nblk)
        for o, r in zip(outs[:3] + [outs[5]], planes + [dp]):
            assert np.array_equal(o[sl], r, equal_nan=True)
        assert np.array_equal(outs[3][sl], mk) and np.array_equal(outs[4][sl], ik)
        for o in outs:
            assert (np.delete(o, np.arange(j0, j0 + 16 * nblk)) == o[-1]).all()


@needs_kernel
@pytest.mark.parametrize("size", [240, 97, (40, 33), 15])
def test_renders_with_and_without_the_kernel_are_bit_identical(open_model, monkeypatch, size):
    """Image widths with and without a remainder of W % 16 pixels (done by the Numba code), and narrower
    than a block."""
    import facelib.render as R

    theta = sample_sec5(open_model, 3, seed=4)
    with torch.no_grad():
        a = render(open_model, theta, size, background=0.2, outputs="image")
        monkeypatch.setattr(R._resolve, "address", lambda: 0)
        b = render(open_model, theta, size, background=0.2, outputs="image")
    assert float(a.mask.float().mean()) > 0.2
    for x, y in zip(a[:4], b[:4]):
        assert torch.equal(x, y)


def test_without_llvmlite_the_address_is_zero_and_render_still_works(open_model, monkeypatch):
    """Where the kernel cannot be compiled, address() is 0 (with the reason kept) and the Numba code
    resolves every pixel."""
    monkeypatch.setattr(_resolve, "_STATE", {"addr": None, "error": None})

    compile_ir = _llvm.compile_ir

    def fail(ir, name, *a, **k):  # the GEMM kernels still compile
        if name == "resolve_row":
            raise ImportError("No module named 'llvmlite'")
        return compile_ir(ir, name, *a, **k)

    monkeypatch.setattr(_llvm, "compile_ir", fail)
    monkeypatch.setattr(_llvm, "host_features", lambda: {"avx512f"})
    assert _resolve.address() == 0 and "llvmlite" in _resolve._STATE["error"]
    with torch.no_grad():
        r = render(open_model, sample_sec5(open_model, 1, seed=0), 32, outputs="image")
    assert bool(r.mask.any())
