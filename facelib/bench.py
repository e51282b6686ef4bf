"""Benchmarks: speed and memory of the full rendering pipeline (used by ``facelib bench render``).

What is timed, per batch: drawing B parameter vectors from the Sec. 5 sampler, then
:func:`facelib.render.render` from those coefficients to the shaded RGB image and the masks: Eq. 2-3
(geometry and reflectance), the rigid transform and projection, vertex normals, SH shading (Eq. 5),
rasterization and interpolation. On the CPU without gradients that is the fused Numba path; its
just-in-time compilation (or, once compiled, the load from Numba's on-disk cache) happens in a warm-up
call that is timed separately (``first_call_s``). The machine may be shared: the figures are medians
over ``repeats`` runs, and the load average before and after is reported with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch

from ._checks import MAX_IMAGE_SIZE, check_positive_int
from .device import pick_device


def set_threads(default: int = 2) -> int:
    """A benchmark process's CPU threads: ``$FACELIB_THREADS`` (else ``default``) for PyTorch, and as many
    for Numba's pool (at most its ``NUMBA_NUM_THREADS``): two pools spinning against each other in one
    process made the fit about 10x slower on our 2-core machine.  Returns PyTorch's thread count."""
    import numba

    threads = int(os.environ.get("FACELIB_THREADS", str(default)))
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


def time_alternating(ways: dict, rounds: int, per: float = 1.0, label: str = "", show=str) -> dict:
    """Time each of ``ways`` (name -> a call that trains the same nets afresh and returns them), in turn,
    ``rounds`` times (alternating, so a machine that slows down charges every way alike).  ``per``: a divisor
    for the printed and returned figures (e.g. the steps, for seconds per step); ``show``: a way's name as
    printed.  Returns ``{"seconds": {name: [...]}, "best": {name: min}, "trained": {name: the last run's
    result}}``."""
    seconds, trained = {w: [] for w in ways}, {}
    for r in range(rounds):
        for way, run in ways.items():
            t0 = time.perf_counter()
            trained[way] = run()
            seconds[way].append((time.perf_counter() - t0) / per)
            print(f"round {r}: {show(way)}: {seconds[way][-1]:.4f} s{label}")
    return {"seconds": seconds, "best": {w: min(t) for w, t in seconds.items()}, "trained": trained}


def one_by_one_vs_side_by_side(train, rounds: int, per: float = 1.0, label: str = "") -> dict:
    """:func:`time_alternating` of ``train(workers)`` with ``workers`` 1 and 2 (chapter 7's trainings one by
    one and two at a time, :func:`facelib._threads.run_in_threads`), keyed by ``workers``, with ``"speedup"``
    (best of 1 / best of 2)."""
    t = time_alternating({1: lambda: train(1), 2: lambda: train(2)}, rounds, per, label, show=lambda w: f"workers={w}")
    return dict(t, speedup=round(t["best"][1] / t["best"][2], 3))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two networks hold the same tensors under the same names, to the bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def scaled_runs_args(doc: str, scale: float, faces: int, scale_help: str, faces_help: str,
                     argv: list | None = None) -> argparse.Namespace:
    """The command line of a benchmark that trains a chapter's runs one by one and side by side at a fraction
    of their steps (``doc``: its module docstring, whose first line describes it): ``--scale`` (the
    chapter's steps times this; default ``scale``), ``--rounds`` (2) and ``--faces`` (training faces; default
    ``faces``), each checked positive (else argparse's usage error)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--scale", type=float, default=scale, help=scale_help)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--faces", type=int, default=faces, help=faces_help)
    args = ap.parse_args(argv)
    if args.scale <= 0 or args.rounds < 1 or args.faces < 1:
        ap.error("--scale, --rounds and --faces must be positive")
    return args


def _rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def bench_render(size: int = 240, batch: int = 32, device="auto", batches: int = 10, model="open",
                 seed: int = 0, repeats: int = 5, outputs: str = "image", all_fields: bool = True) -> dict:
    """Render ``repeats`` runs of ``batches`` batches of Sec. 5 faces (coefficients -> shaded RGB + mask)
    after a warm-up call; returns the median faces/s and the per-run figures, peak memory (GPU:
    allocator peak; CPU: process max RSS), the warm-up (compile) time and the machine load.

    ``outputs`` is passed to :func:`facelib.render.render`: ``"image"`` (image, masks, depth: what a
    corpus renderer keeps) for the headline figure; with ``all_fields`` the default ``"all"`` (every
    :class:`facelib.render.Render` field, fragments included) is timed as well (``faces_per_s_all``).
    """
    from . import load_model
    from .model.params import sample_sec5
    from .render.raster import HAVE_NUMBA
    from .render import face_camera, render
    from .render.fast.fused import _fused_unavailable

    check_positive_int(size, "size", most=MAX_IMAGE_SIZE)
    for name, v in (("batch", batch), ("batches", batches), ("repeats", repeats)):
        check_positive_int(v, name)
    dev = pick_device(device)
    m = load_model(model, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss_model = _rss_mb()
    load_before = _load()

    cpu = []  # process CPU seconds of the timed runs (all threads): less sensitive to other load

    def run(n_batches, first_seed, outs):
        t, c = time.perf_counter(), time.process_time()
        for i in range(n_batches):
            theta = sample_sec5(m, batch, seed=first_seed + i, device=dev)  # coefficients
            render(m, theta, size, outputs=outs)  # -> shaded RGB + masks
            sync()  # the work is done (CUDA is asynchronous; on the CPU render() returns when done)
        cpu.append((time.process_time() - c) / n_batches)
        return time.perf_counter() - t

    with torch.no_grad():
        theta0 = sample_sec5(m, batch, seed=seed, device=dev)
        fused = HAVE_NUMBA and not _fused_unavailable(m, theta0, face_camera(size, device=dev), "auto")
        first = run(1, seed, outputs)  # warm-up: Numba compilation or cache load, allocator
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [run(batches, seed + 1 + k * batches, outputs) for k in range(repeats)]
        cpu_per_batch = statistics.median(cpu[1:])
        times_all = [run(batches, seed + 1 + k * batches, "all") for k in range(repeats)] if all_fields else []
    fps = [batch * batches / t for t in times]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _peak_rss_mb()
    res = dict(
        faces_per_s=round(statistics.median(fps), 1),
        ms_per_batch=round(1000 * statistics.median(times) / batches, 2),
        faces_per_s_runs=[round(x, 1) for x in fps],
        size=size, batch=batch, batches=batches, repeats=repeats, outputs=outputs,
        pipeline="sample_sec5 -> render(): Eq. 2-3, Phi, projection, normals, SH shading, "
                 "z-buffer, interpolation -> shaded RGB + mask + input mask + depth",
        device=str(dev), fused=bool(fused), vertices=m.n_vertices, triangles=m.n_triangles,
        cpu_ms_per_batch=round(1000 * cpu_per_batch, 2),
        first_call_s=round(first, 3),
        peak_mem_mb=round(peak, 1), rss_after_model_load_mb=round(rss_model, 1),
        load_avg_1min_before=load_before, load_avg_1min_after=_load(), cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
    )
    if times_all:
        fps_all = [batch * batches / t for t in times_all]
        res["faces_per_s_all"] = round(statistics.median(fps_all), 1)
        res["faces_per_s_all_runs"] = [round(x, 1) for x in fps_all]
    if HAVE_NUMBA:
        import numba

        res["numba"] = numba.__version__
    return res
