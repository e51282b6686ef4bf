"""facelib._zchunk: the fused z-buffer's main pass, 16 triangles at a time (LLVM IR), against the Numba
loops it replaces (the same keys, so bit-identical renders)."""

import numpy as np
import pytest
import torch

from facelib import _llvm, _zchunk
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
    assert _zchunk.address() != 0, _zchunk._STATE["error"]


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
def test_renders_with_and_without_the_kernel_are_bit_identical(open_model, monkeypatch, size):
    import facelib.render as R

    theta = sample_sec5(open_model, 3, seed=8)
    with torch.no_grad():
        a = render(open_model, theta, size, outputs="all")
        monkeypatch.setattr(R._zchunk, "address", lambda: 0)
        b = render(open_model, theta, size, outputs="all")
    for x, y in zip(list(a[:4]) + list(a.fragments), list(b[:4]) + list(b.fragments)):
        assert torch.equal(x, y)


def test_without_the_kernel_the_address_is_zero_and_render_still_works(open_model, monkeypatch):
    monkeypatch.setattr(_zchunk, "_STATE", {"addr": None, "error": None})
    compile_ir = _llvm.compile_ir

    def fail(ir, name, *a, **k):
        if name == "zb_chunk":
            raise RuntimeError("LLVM IR parsing error")
        return compile_ir(ir, name, *a, **k)

    monkeypatch.setattr(_llvm, "compile_ir", fail)
    monkeypatch.setattr(_llvm, "host_features", lambda: {"avx512f"})
    assert _zchunk.address() == 0 and "parsing" in _zchunk._STATE["error"]
    with torch.no_grad():
        r = render(open_model, sample_sec5(open_model, 1, seed=0), 32, outputs="image")
    assert bool(r.mask.any())
