"""The LLVM IR kernels of the fused renderer: facelib.render.fast._zchunk (the z-buffer's main pass, 16 triangles at
a time) and facelib.render.fast._resolve (the per-pixel resolve, 16 pixels at a time), against the Numba code they
replace and their NumPy reference; renders with and without them are bit-identical."""

import numpy as np
import pytest
import torch

from facelib.render.fast import _llvm, _resolve, _zchunk
from facelib.model.params import sample_sec5
from facelib.render.raster import HAVE_NUMBA
from facelib.render import render

try:
    FEATURES = _llvm.host_features()
except ImportError:  # no llvmlite
    FEATURES = set()

needs_kernel = pytest.mark.skipif(not (HAVE_NUMBA and "avx512f" in FEATURES), reason="needs numba, llvmlite, AVX-512")
needs_avx2 = pytest.mark.skipif(not (HAVE_NUMBA and "avx2" in FEATURES), reason="needs numba, llvmlite and AVX2")


@needs_avx2
@pytest.mark.parametrize("mod", [_zchunk, _resolve])
def test_kernels_compile_and_pass_their_self_tests(mod):
    if mod is _zchunk and "avx512f" not in FEATURES:
        pytest.skip("the z-buffer kernel is used with AVX-512 only")
    assert mod.address() != 0, mod._STATE["error"]


@needs_kernel
@pytest.mark.parametrize("seed,H,W,n", [(1, 21, 26, 256), (2, 40, 9, 37), (3, 3, 50, 100), (4, 1, 1, 16),
                                        (5, 5, 4, 255), (6, 64, 64, 1)])
def test_chunk_kernel_equals_the_numba_loops(seed, H, W, n):
    """Z-buffer keys, the setup rows of the chunk and the list of larger triangles, for chunks whose
    size is not a multiple of 16 and images smaller than the blocks (no 2x2 or 4x2 class)."""
    addr = _zchunk.address()
    assert addr != 0, _zchunk._STATE["error"]
    _zchunk._self_test(addr, seed, H, W, n)


@needs_kernel
@pytest.mark.parametrize("size", [240, 97, (7, 40), 3])
def test_renders_with_and_without_the_zbuffer_kernel_are_bit_identical(open_model, monkeypatch, size):
    import facelib.render.fast.fused as R

    theta = sample_sec5(open_model, 3, seed=8)
    with torch.no_grad():
        a = render(open_model, theta, size, outputs="all")
        monkeypatch.setattr(R._zchunk, "address", lambda: 0)
        b = render(open_model, theta, size, outputs="all")
    for x, y in zip(list(a[:4]) + list(a.fragments), list(b[:4]) + list(b.fragments)):
        assert torch.equal(x, y)


HASWELL = ("haswell", "+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+lzcnt")  # an AVX2-only CPU (runs on this one)


def _resolve_kernel(target):
    """The resolve kernel compiled for the host (what render() uses) or for an AVX2-only CPU."""
    if target == "host":
        addr = _resolve.address()
        assert addr != 0, _resolve._STATE["error"]
        return addr
    return _llvm.compile_ir(_resolve._row_kernel_ir(), "resolve_row", *HASWELL)


@needs_avx2
@pytest.mark.parametrize("target", ["host", "avx2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_kernel_equals_the_numpy_reference_on_random_rows(seed, target):
    """Random triangles (some degenerate, some with a vertex behind the camera: 1/z = 0), covered and
    background pixels, blocks starting at any column: every output bit-identical to the float32
    reference; the pixels outside the blocks are not touched. Also the code LLVM makes for an AVX2 CPU
    (the kernel runs there too; 16-lane vectors become pairs of 8)."""
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
    addr = _resolve_kernel(target)
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


@needs_avx2
@pytest.mark.parametrize("size", [240, 97, (40, 33), 15])
def test_renders_with_and_without_the_resolve_kernel_are_bit_identical(open_model, monkeypatch, size):
    """Image widths with and without a remainder of W % 16 pixels (done by the Numba code), and narrower
    than a block."""
    import facelib.render.fast.fused as R

    theta = sample_sec5(open_model, 3, seed=4)
    with torch.no_grad():
        a = render(open_model, theta, size, background=0.2, outputs="image")
        monkeypatch.setattr(R._resolve, "address", lambda: 0)
        b = render(open_model, theta, size, background=0.2, outputs="image")
    assert float(a.mask.float().mean()) > 0.2
    for x, y in zip(a[:4], b[:4]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("mod,name,error", [(_zchunk, "zb_chunk", RuntimeError("LLVM IR parsing error")),
                                            (_resolve, "resolve_row", ImportError("No module named 'llvmlite'"))])
def test_without_a_kernel_its_address_is_zero_and_render_still_works(open_model, monkeypatch, mod, name, error):
    """Where a kernel cannot be compiled, address() is 0 (with the reason kept, and a warning) and the
    Numba code runs."""
    monkeypatch.setattr(mod, "_STATE", {"addr": None, "error": None})
    compile_ir = _llvm.compile_ir

    def fail(ir, kernel, *a, **k):  # the other kernels still compile
        if kernel == name:
            raise error
        return compile_ir(ir, kernel, *a, **k)

    monkeypatch.setattr(_llvm, "compile_ir", fail)
    monkeypatch.setattr(_llvm, "host_features", lambda: {"avx512f", "avx2"})
    with pytest.warns(RuntimeWarning, match=f"the {name} kernel is not used"):  # loud, not silent
        assert mod.address() == 0 and str(error) in mod._STATE["error"]
    with torch.no_grad():
        r = render(open_model, sample_sec5(open_model, 1, seed=0), 32, outputs="image")
    assert bool(r.mask.any())


def test_a_kernel_that_fails_falls_back_loudly_and_a_missing_feature_quietly(monkeypatch):
    """A kernel that does not compile or fails its self-test warns and returns 0 (the Numba code runs);
    a CPU without the feature returns 0 without a warning; both reasons are kept for facelib.repro."""
    import warnings

    def bad_test(addr):
        raise AssertionError("wrong bits")

    tiny = 'define void @k() {\n  ret void\n}\n'  # compiles; its self-test fails
    state = {"addr": None, "error": None}
    with pytest.warns(RuntimeWarning, match="the k kernel is not used .*wrong bits"):
        assert _llvm.checked_kernel(state, lambda: tiny, "k", bad_test, needs="sse2") == 0
    assert state["error"] == "AssertionError: wrong bits"
    state = {"addr": None, "error": None}
    with pytest.warns(RuntimeWarning, match="not used"):  # IR that does not parse
        assert _llvm.checked_kernel(state, lambda: "not IR", "k", bad_test, needs="sse2") == 0
    state = {"addr": None, "error": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _llvm.checked_kernel(state, lambda: "", "k", bad_test, needs="no-such-feature") == 0
    assert state["error"] == "RuntimeError: the CPU has no no-such-feature"


def test_simulated_cpu_targets_avx2_only(monkeypatch):
    """FACELIB_CPU=haswell: the kernels see an AVX2-only CPU (so the z-buffer kernel steps aside and
    the GEMM takes its 6x16 tiles); an unknown name is an error that says which names exist."""
    monkeypatch.setenv("FACELIB_CPU", "haswell")
    assert _llvm.target()[0] == "haswell"
    feats = _llvm.host_features()
    assert "avx2" in feats and "fma" in feats and "avx512f" not in feats
    from facelib.render.fast import _gemm
    assert _gemm._shape() == (6, 16)
    monkeypatch.setenv("FACELIB_CPU", "pentium")
    with pytest.raises(ValueError, match="haswell"):
        _llvm.target()
