"""Linear solves that run on every CPU (one place for a workaround of the CPU build's LAPACK).

PyTorch 2.13's CPU build solves a batch of systems by LU (``getrf``) in a parallel loop over the
batch, and MKL's ``getrf`` opens a thread team of its own inside it for matrices of about 150 rows
and more.  On AMD EPYC machines with two threads this nested team hangs or returns invalid pivots
(``Intel oneMKL ERROR: Parameter 6 was incorrect on entry to DLASWP``); on Intel Xeons it does not.
One thread for the factorisation runs each batch element through MKL's sequential ``getrf``, which
is what the nested call does where it works (MKL runs sequentially inside a parallel region), so the
numbers should not change there; below MKL's threading threshold they are the same bits on any CPU.
"""

from __future__ import annotations

import torch


def solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve(A, B)``: ``A (..., n, n)``, ``B (..., n)`` or ``(..., n, k)`` -> like ``B``.

    A batch of systems on the CPU is factorised with one PyTorch/MKL thread (restored afterwards);
    a single system, a GPU tensor or a one-thread process calls PyTorch directly.  Differentiable
    as ``torch.linalg.solve`` is (its backward reuses the factorisation, which is not affected).
    """
    threads = torch.get_num_threads()
    if A.device.type != "cpu" or A.ndim < 3 or A.shape[:-2].numel() <= 1 or threads == 1:
        return torch.linalg.solve(A, B)
    torch.set_num_threads(1)
    try:
        return torch.linalg.solve(A, B)
    finally:
        torch.set_num_threads(threads)
