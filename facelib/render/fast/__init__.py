"""Fast path: what exists only for speed, the fused no-grad CPU render and its Numba and LLVM kernels.

:mod:`.fused` drives it (two GEMMs for Eq. 2-3, a thread pool, BLAS control, reused workspaces),
:mod:`.kernels` holds its Numba kernels, :mod:`._gemm`, :mod:`._resolve` and :mod:`._zchunk` kernels
written as LLVM IR (compiled by :mod:`._llvm`), each checked against the Numba code before it is used.
Every module here imports the reference renderer (:mod:`facelib.render`), never the reverse;
:func:`facelib.render.render` is the one place that chooses this path.
"""
