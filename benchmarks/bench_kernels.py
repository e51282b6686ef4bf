"""Benchmark: the fused renderer's two LLVM IR kernels against the Numba loops they replace, per face.

Run: ``.venv/bin/python benchmarks/bench_kernels.py [--repeats 9]``; prints JSON and writes
``benchmarks/results/kernels_cpu.json``. For the faces of one Sec. 5 batch at 240x240, as
:func:`facelib.render.fast.kernels._fz_faces` runs them (vertices, normals, shading, then per face the z-buffer, the
packed records and the resolve, so the caches hold what they would), the z-buffer
(:func:`facelib.render.fast.kernels._fz_zbuffer`) and the resolve (``_fz_resolve``) are timed with the thread's CPU
clock, with the kernels of :mod:`facelib.render.fast._zchunk` / :mod:`facelib.render.fast._resolve` and with the Numba code, in
turns (a busy spell on the shared host hits both alike); microseconds per face, the best and the
median of ``--repeats`` passes over the batch. The outputs of the two are compared (they must be the
same bits).
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import facelib
from facelib.render.fast import _resolve, _zchunk
from facelib.render import render
from facelib.render.fast import fused as R, kernels as K
from facelib.model.params import ParamLayout, sample_sec5
from facelib.render import face_camera

from bench_render import face_inputs  # noqa: E402 (this folder is on sys.path when run as a script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernels_cpu.json"))
    args = ap.parse_args()
    zfn, rfn = _zchunk.address(), _resolve.address()
    if not (zfn and rfn):
        raise SystemExit(f"a kernel does not run here: {_zchunk._STATE['error'] or _resolve._STATE['error']}")
    m = facelib.load_model("open")
    B, H, W, V = args.batch, args.size, args.size, m.n_vertices
    theta = sample_sec5(m, B, seed=0)
    p = ParamLayout.from_model(m).unpack(theta)
    cam = face_camera(args.size)
    with torch.no_grad():
        render(m, theta[:1], args.size, outputs="image")  # compiled / loaded
    fi = face_inputs(m, p, cam)
    (faces, mouth, chunks), (mean_s, mean_a) = fi["mesh"], fi["means"]
    f32 = np.float32
    with R._workspace(V, H, W) as (vc, nrm, col, pk, xyq, zb, ws_f32, ws_i32, ws_i64):
        xyqs, cols = [], []
        for b in range(B):  # the per-vertex stages, once
            K._fz_vertices(fi["geo"][b], mean_s, fi["R"][b], fi["t"][b], fi["focal"], *fi["pp"], vc, xyq)
            K._fz_normals(faces, chunks, vc, nrm, ws_f32)
            K._fz_shade(nrm, fi["alb"][b], mean_a, fi["gamma"][b], col)
            xyqs.append(xyq.copy())
            cols.append(col.copy())
        outs = {v: [np.empty((B, 3, H, W), f32), np.empty((B, H, W), bool), np.empty((B, H, W), bool),
                    np.empty((B, H, W), f32)] for v in ("kernels", "numba")}
        fns = {"kernels": (zfn, rfn), "numba": (0, 0)}
        times = {f"{stage} ({v})": [] for stage in ("z-buffer", "resolve") for v in fns}
        for _ in range(args.repeats):
            for v, (zf, rf) in fns.items():
                tz = tr = 0.0
                image, mask, imask, depth = outs[v]
                for b in range(B):
                    t0 = time.thread_time()
                    K._fz_zbuffer(xyqs[b], faces, chunks, H, W, zb, ws_f32, ws_i32, ws_i64, zf)
                    t1 = time.thread_time()
                    K._fz_pack(xyqs[b], cols[b], pk)
                    t2 = time.thread_time()
                    K._fz_resolve(zb, faces, pk, mouth, H, W, f32(0), image[b], mask[b], imask[b], depth[b], rf)
                    tr += time.thread_time() - t2
                    tz += t1 - t0
                times[f"z-buffer ({v})"].append(tz / B * 1e6)
                times[f"resolve ({v})"].append(tr / B * 1e6)
    same = all(np.array_equal(a, b) for a, b in zip(outs["kernels"], outs["numba"]))
    res = {"batch": B, "size": args.size, "vertices": V, "triangles": len(faces), "repeats": args.repeats,
           "us_per_face_one_thread": {k: {"best": round(min(v), 1), "median": round(statistics.median(v), 1)}
                                      for k, v in times.items()},
           "same_bits": same, "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "load_avg_1min_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(res, indent=1))
    if not same:
        raise SystemExit("the kernels' outputs differ from the Numba code's")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
