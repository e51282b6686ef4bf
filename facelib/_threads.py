"""Independent trainings side by side: one Python thread per call (one place for the thread set-up).

PyTorch's CPU kernels and Numba's compiled loops release the GIL, so on a 2-core CPU two trainings that
each use one thread run at once instead of one after the other.  Each call computes exactly what it
computes alone: every random draw of a training takes its own generator, PyTorch's thread count is global
and each thread gets the caller's Numba thread count (Numba's is per thread) and grad mode.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

__all__ = ["run_in_threads", "cpu_threads", "run_side_by_side"]


@contextmanager
def cpu_threads(n: int):
    """PyTorch's CPU threads (the process's) and Numba's (the calling thread's, which
    :func:`run_in_threads` hands to its threads) set to ``n`` inside the block; the previous counts are
    restored after it, also when it raises."""
    import numba

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


def run_in_threads(calls: list, workers: int | None = None) -> list:
    """Run the zero-argument ``calls`` side by side, one thread each; returns their results in order (the
    first failing call's exception is raised, after every call has ended).  ``workers``: at most that many
    at once, each thread taking the next call in order when its last one ends (default: all at once;
    1: one by one in the calling thread, stopping at a failure).  Which thread runs a call does not change
    what it computes."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None; got {workers!r}")
    try:
        import numba

        numba_threads = numba.get_num_threads()
    except ImportError:  # pragma: no cover - numba is a dependency
        numba = numba_threads = None
    torch_threads, grad = torch.get_num_threads(), torch.is_grad_enabled()

    def setup_and(call):
        def run():
            if numba is not None:
                numba.set_num_threads(numba_threads)
            torch.set_num_threads(torch_threads)
            with torch.set_grad_enabled(grad):
                return call()
        return run

    if len(calls) <= 1 or workers == 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(workers or len(calls), len(calls))) as pool:
        futures = [pool.submit(setup_and(call)) for call in calls]
    return [f.result() for f in futures]


def run_side_by_side(calls: list, workers: int, desc: str, progress: bool = True) -> list:
    """Trainings side by side as the book runs them: the zero-argument ``calls``, ``workers`` at a time
    (:func:`run_in_threads`), with one PyTorch and Numba thread each (:func:`cpu_threads`) and one progress
    bar ``desc`` of the finished calls; returns their results in order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(calls), desc=desc, disable=not progress)

    def counted(call):
        def run():
            out = call()
            bar.update(1)
            return out
        return run

    with cpu_threads(1), bar:
        return run_in_threads([counted(c) for c in calls], workers)
