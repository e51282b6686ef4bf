"""Benchmarks: speed and memory of the full rendering pipeline (used by ``facelib bench render``)."""

from __future__ import annotations

import resource
import time

import torch

from .device import pick_device


def bench_render(size: int = 240, batch: int = 32, device="auto", batches: int = 10, model="open",
                 seed: int = 0) -> dict:
    """Render ``batches`` batches of Sec. 5 faces (coefficients -> shaded RGB + mask) after one warm-up
    batch (JIT compilation); returns faces/s and peak memory (GPU: allocator peak; CPU: process max RSS)."""
    from . import load_model
    from .params import sample_sec5
    from .render import render

    dev = pick_device(device)
    m = load_model(model, device=dev)
    thetas = [sample_sec5(m, batch, seed=seed + i, device=dev) for i in range(batches + 1)]
    with torch.no_grad():
        render(m, thetas[0], size)  # warm-up: numba JIT, allocator
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for th in thetas[1:]:
            r = render(m, th, size)
            r.image.sum().item()  # make sure the work is done (CUDA is asynchronous)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(faces_per_s=round(batch * batches / dt, 1), ms_per_batch=round(1000 * dt / batches, 2),
                size=size, batch=batch, batches=batches, device=str(dev), vertices=m.n_vertices,
                triangles=m.n_triangles, peak_mem_mb=round(peak, 1), threads=torch.get_num_threads(),
                torch=torch.__version__)
