"""Benchmark: the Eq. 2-3 products of the fused renderer, ``coef (B, K) @ basis (K, 3 V)``, on the
packed-basis micro-kernel of :mod:`facelib.render.fast._gemm` against NumPy's BLAS and torch.mm.

Run: ``.venv/bin/python benchmarks/bench_gemm.py [--batch 32] [--repeats 15]``; prints JSON and writes
``benchmarks/results/gemm_cpu.json``. The open model's two products (shape + expression rows, then
reflectance) at batch B, on one thread and split over two (as :func:`facelib.render.fast.fused._offsets` does).
Each figure is the best of ``--repeats`` calls (other processes share the CPU: the best is the least
disturbed), in GFLOP/s and ms per batch; the backends are timed in turns so that a busy spell hits
them alike. The products of the three backends are compared with a float64 reference.
"""

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import facelib
from facelib.render.fast import _gemm
from facelib.render.fast import fused as R
from facelib.model.params import ParamLayout, sample_sec5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gemm_cpu.json"))
    args = ap.parse_args()
    if not _gemm.available():
        raise SystemExit(f"the micro-kernel does not run here: {_gemm._STATE['error']}")
    m = facelib.load_model("open")
    p = ParamLayout.from_model(m).unpack(sample_sec5(m, args.batch, seed=0))
    ns, ne, nr = m.n_shape, m.n_expression, m.n_reflectance
    with torch.no_grad():
        coefs = [torch.cat([p["shape"] * m.sigma_s, p["expression"] * m.sigma_e], 1).numpy(),
                 (p["reflectance"] * m.sigma_r).numpy()]
    plain = [R._geometry_basis(m, ns, ne).numpy(), R._stack_rows(m.albedo_basis[:nr]).numpy()]  # as packed
    packed = list(R._bases(m, ns, ne, nr))
    outs = [np.empty((args.batch, b.shape[1]), np.float32) for b in plain]
    flop = sum(2 * c.shape[0] * c.shape[1] * b.shape[1] for c, b in zip(coefs, plain))

    def cols(n, j, jobs):  # as facelib.render.fast.fused._offsets splits the columns for BLAS
        return (n * j // jobs) // 16 * 16, (n * (j + 1) // jobs) // 16 * 16 if j + 1 < jobs else n

    def micro(j, jobs):
        for c, b, o in zip(coefs, packed, outs):
            _gemm.gemm(c, b, o, *_gemm.panel_ranges(b, jobs)[j])

    def blas(j, jobs):
        for c, b, o in zip(coefs, plain, outs):
            lo, hi = cols(b.shape[1], j, jobs)
            np.matmul(c, b[:, lo:hi], out=o[:, lo:hi])

    def torch_mm(j, jobs):
        for c, b, o in zip(coefs, plain, outs):
            lo, hi = cols(b.shape[1], j, jobs)
            torch.mm(torch.from_numpy(c), torch.from_numpy(b[:, lo:hi]), out=torch.from_numpy(o)[:, lo:hi])

    backends = {"facelib.render.fast._gemm (packed basis)": micro, "NumPy BLAS": blas, "torch.mm": torch_mm}
    refs = [c.astype(np.float64) @ b.astype(np.float64) for c, b in zip(coefs, plain)]
    res = {"batch": args.batch, "shapes (K, N)": [list(b.shape) for b in plain], "gflop_per_batch": round(flop / 1e9, 3),
           "repeats": args.repeats, "micro_kernel_block (MR, NR)": list(_gemm._STATE["shape"]),
           "blas": [f"{i['internal_api']} {i.get('version')} {i.get('architecture')}"
                    for i in __import__("threadpoolctl").threadpool_info() if i["user_api"] == "blas"],
           "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
           "load_avg_1min_before": round(os.getloadavg()[0], 2)}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per job, as the renderer holds BLAS
    try:
        with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
            for jobs in (1, 2):
                best = dict.fromkeys(backends, float("inf"))
                for _ in range(args.repeats):
                    for name, fn in backends.items():
                        t = time.perf_counter()
                        list(pool.map(fn, range(jobs), [jobs] * jobs))
                        best[name] = min(best[name], time.perf_counter() - t)
                for name, fn in backends.items():
                    list(pool.map(fn, range(jobs), [jobs] * jobs))
                    err = max(float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(outs, refs))
                    res[f"{name}, {jobs} thread(s)"] = {"ms_per_batch": round(best[name] * 1e3, 2),
                                                         "gflop_per_s": round(flop / best[name] / 1e9, 1),
                                                         "max_rel_error_vs_float64": float(f"{err:.2e}")}
    finally:
        torch.set_num_threads(torch_threads)
    res["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
