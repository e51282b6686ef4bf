"""``facelib._threads``: ``run_in_threads`` (calls side by side, results in order, at most ``workers`` at once) and
``cpu_threads`` (thread counts for a block), and the side-by-side benchmarks' helpers in ``facelib.bench``."""

import threading
import time

import numba
import pytest
import torch

from facelib._threads import cpu_threads, run_in_threads


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


def test_cpu_threads_sets_both_counts_in_the_block_and_restores_them():
    before = torch.get_num_threads(), numba.get_num_threads()
    with cpu_threads(1):
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
        # the threads of run_in_threads get the block's counts
        assert run_in_threads([lambda: (torch.get_num_threads(), numba.get_num_threads())] * 2, 2) == [(1, 1)] * 2
    assert (torch.get_num_threads(), numba.get_num_threads()) == before
    with pytest.raises(KeyError):
        with cpu_threads(1):
            raise KeyError("inside")
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


def test_the_benchmarks_time_one_by_one_against_side_by_side(capsys):
    """``facelib.bench.one_by_one_vs_side_by_side`` (benchmarks/coarse_workers.py, finenet_workers.py): each
    round runs workers 1 then 2, keeps every time (divided by ``per``), the best and the last results."""
    from facelib.bench import one_by_one_vs_side_by_side

    calls = []

    def train(workers):
        calls.append(workers)
        time.sleep(0.02 * (3 - workers))  # one by one: twice as long
        return f"nets of workers={workers}"
    t = one_by_one_vs_side_by_side(train, rounds=2, per=2.0, label=" per step")
    assert calls == [1, 2, 1, 2] and t["trained"] == {1: "nets of workers=1", 2: "nets of workers=2"}
    assert all(len(v) == 2 for v in t["seconds"].values())
    assert t["best"] == {w: min(v) for w, v in t["seconds"].items()} and t["best"][1] >= 0.02 - 1e-3
    assert t["speedup"] == round(t["best"][1] / t["best"][2], 3) and t["speedup"] > 1
    assert "round 1: workers=2:" in capsys.readouterr().out


def test_same_weights_compares_names_and_bits():
    from facelib.bench import same_weights

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert same_weights(a, b)
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(1.0))  # one bit of one number
    assert not same_weights(a, b)
    assert not same_weights(a, torch.nn.Sequential(a))  # the same tensors under other names


def test_scaled_runs_args_defaults_and_checks(capsys):
    from facelib.bench import scaled_runs_args

    args = scaled_runs_args("Doc line.\nmore", 0.1, 32, "steps times this", "faces", argv=[])
    assert (args.scale, args.rounds, args.faces) == (0.1, 2, 32)
    assert scaled_runs_args("d", 0.1, 32, "s", "f", argv=["--scale", "0.5", "--faces", "8"]).scale == 0.5
    for bad in (["--scale", "0"], ["--rounds", "0"], ["--faces", "-1"]):
        with pytest.raises(SystemExit):
            scaled_runs_args("d", 0.1, 32, "s", "f", argv=bad)
    assert "must be positive" in capsys.readouterr().err
