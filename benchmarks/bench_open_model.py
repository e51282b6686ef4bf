"""Benchmark: time to build the open face model from scratch (target: under 30 s on the CPU).

Run: ``.venv/bin/python benchmarks/bench_open_model.py``; prints one JSON object and writes it to
``benchmarks/results/open_model_build.json``.
"""

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from facelib.model.open_model import build_open_model


def main():
    times, digests = [], []
    for _ in range(2):
        t = time.perf_counter()
        m = build_open_model(progress=False)
        times.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            p = m.save(Path(d) / "open.npz")
            digests.append(hashlib.sha256(p.read_bytes()).hexdigest())
            size = p.stat().st_size
    out = dict(build_s=[round(x, 2) for x in times], bit_identical=digests[0] == digests[1],
               sha256=digests[0], npz_mb=round(size / 2**20, 1), vertices=m.n_vertices,
               triangles=m.n_triangles, cpu=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), cores=os.cpu_count())
    print(json.dumps(out))
    res = Path(__file__).parent / "results" / "open_model_build.json"
    res.parent.mkdir(exist_ok=True)
    res.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
