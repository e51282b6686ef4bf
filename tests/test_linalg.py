"""facelib._linalg.solve: a batch of large systems with two threads (hung PyTorch 2.13's MKL on AMD EPYC)."""

import subprocess
import sys

import pytest
import torch

from facelib._linalg import solve

SCRIPT = r"""
import torch
from facelib._linalg import solve
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
for n, d in [(2, 150), (3, 166), (16, 200)]:
    M = torch.randn(n, d, d, dtype=torch.float64, generator=g)
    A = M @ M.mT + d * torch.eye(d, dtype=torch.float64)
    b = torch.randn(n, d, dtype=torch.float64, generator=g)
    x = solve(A, b)
    assert torch.isfinite(x).all(), (n, d)
    assert ((A @ x[..., None])[..., 0] - b).abs().max() < 1e-9 * b.abs().max(), (n, d)
    assert torch.get_num_threads() == 2
print("ok")
"""


def test_batched_solve_with_two_threads_finishes_and_solves():
    """In a fresh process (a hang fails after 120 s instead of blocking the suite)."""
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("shape", [(5, 5), (1, 6, 6), (4, 7, 7), (2, 3, 8, 8)])
def test_solve_matches_each_system_alone(shape):
    """Same numbers as PyTorch on each system alone (which never takes the batched path), any batch
    shape, vector and matrix right-hand sides; the thread count is restored."""
    g = torch.Generator().manual_seed(1)
    M = torch.randn(*shape, dtype=torch.float64, generator=g)
    A = M @ M.mT + shape[-1] * torch.eye(shape[-1], dtype=torch.float64)
    threads = torch.get_num_threads()
    for B in (torch.randn(*shape[:-1], dtype=torch.float64, generator=g),
              torch.randn(*shape[:-1], 3, dtype=torch.float64, generator=g)):
        x = solve(A, B)
        assert torch.get_num_threads() == threads
        Af = A.reshape(-1, *shape[-2:])
        Bf = B.reshape(Af.shape[0], *B.shape[len(shape) - 2:])
        ref = torch.stack([torch.linalg.solve(a, b) for a, b in zip(Af, Bf)]).reshape(x.shape)
        torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-12)


def test_solve_is_differentiable():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(3, 4, 4, dtype=torch.float64, generator=g)
    A = (M @ M.mT + 4 * torch.eye(4, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (A, b))
