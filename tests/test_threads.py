"""``facelib._threads.run_in_threads``: calls side by side, results in order, at most ``workers`` at once."""

import threading
import time

import pytest
import torch

from facelib._threads import run_in_threads


def _counting(calls_running: list, peak: list, lock: threading.Lock, value):
    def call():
        with lock:
            calls_running[0] += 1
            peak[0] = max(peak[0], calls_running[0])
        time.sleep(0.05)  # long enough for the other threads to start theirs
        with lock:
            calls_running[0] -= 1
        return value, torch.get_num_threads(), torch.is_grad_enabled()
    return call


@pytest.mark.parametrize("workers, most", [(None, 6), (2, 2), (1, 1), (10, 6)])
def test_results_in_order_and_at_most_workers_at_once(workers, most):
    running, peak, lock = [0], [0], threading.Lock()
    threads = torch.get_num_threads()
    with torch.no_grad():  # the caller's grad mode and thread count are the calls'
        out = run_in_threads([_counting(running, peak, lock, v) for v in range(6)], workers)
    assert out == [(v, threads, False) for v in range(6)]
    assert peak[0] == most


def test_an_exception_reaches_the_caller_and_bad_workers_are_refused():
    def fails():
        raise KeyError("seventh")
    with pytest.raises(KeyError, match="seventh"):
        run_in_threads([lambda: 1, fails, lambda: 3], 2)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers"):
            run_in_threads([lambda: 1], bad)
    assert run_in_threads([], 2) == []
