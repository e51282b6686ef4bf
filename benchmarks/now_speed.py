"""Speed of the shared NoW-style error (issue 21): :func:`facelib.eval.metrics.closest_points` and
:func:`facelib.eval.metrics.now_error` on the open model, checked against brute force.

The measure every chapter reports is the distance from each ground-truth point (the 18.8k vertices of
the open model's ``face`` mask) to the surface of a reconstruction (44.6k triangles), after landmark
and ICP alignment.  Chapters 3-4 need it for hundreds of faces per row, so it must take well under a
second per face.  This script times, on wild-like faces (random shape and expression) against the
mean face:

* ``closest_points``: one query of all face points, unaligned (the worst case: larger distances, so
  more cells to search) and after alignment (what ``now_error`` queries);
* ``now_error`` per face (index build, 3 ICP rounds on 2,000 points, the final query);
* the largest difference from a brute-force search (every point against every triangle) on a subset.

Writes ``benchmarks/results/now_speed.json``.

    .venv/bin/python benchmarks/now_speed.py [--faces 16] [--repeats 5] [--brute 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib.eval import metrics  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.repro import environment  # noqa: E402


def faces(model, n: int, seed: int) -> torch.Tensor:
    """``n`` random faces (shape ~ N(0, 1), expression ~ N(0, 0.5^2) in sigma units) ``(n, V, 3)``."""
    g = torch.Generator().manual_seed(seed)
    ts = torch.randn(n, model.n_shape, generator=g)
    te = 0.5 * torch.randn(n, model.n_expression, generator=g)
    return facelib.geometry(model, ts, te).double()


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=16, help="faces timed with now_error")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--brute", type=int, default=2000, help="points checked against brute force")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "now_speed.json"))
    a = ap.parse_args(argv)

    model = facelib.load_model("open")
    face, lm, tri = model.masks["face"], model.landmarks, model.triangles
    gt = faces(model, a.faces, a.seed)
    rec = model.mean_shape.double()[None].expand(a.faces, -1, -1)
    pts = gt[0, face]
    metrics.closest_points(pts[:10], rec[0], tri)  # compile the kernels

    e = metrics.now_error(rec, tri, rec[:, lm], gt[:, face], gt[:, lm])
    aligned = (gt[0, face] - e.t[0]) @ e.R[0] / e.scale[0]  # ground truth in the reconstruction's frame
    t_unaligned = best_of(lambda: metrics.closest_points(pts, rec[0], tri), a.repeats)
    t_aligned = best_of(lambda: metrics.closest_points(aligned, rec[0], tri), a.repeats)
    t_now = best_of(lambda: metrics.now_error(rec, tri, rec[:, lm], gt[:, face], gt[:, lm]), 1) / a.faces

    sub = pts[torch.randperm(len(pts), generator=torch.Generator().manual_seed(a.seed))[:a.brute]]
    d, _ = metrics.closest_points(sub, rec[0], tri)
    d_ref = metrics.point_to_surface_distance(sub, rec[0], tri, method="brute")
    record = {
        "points": int(len(pts)), "triangles": int(len(tri)), "faces": a.faces,
        "threads": int(os.environ.get("NUMBA_NUM_THREADS", 0)) or torch.get_num_threads(),
        "closest_points_unaligned_ms": round(1000 * t_unaligned, 1),
        "closest_points_aligned_ms": round(1000 * t_aligned, 1),
        "now_error_ms_per_face": round(1000 * t_now, 1),
        "now_error_mean_mm": round(float(e.distance.mean()), 4),
        "max_abs_diff_to_brute_force_mm": float((d - d_ref).abs().max()),
        "brute_force_points": int(len(sub)),
        "environment": environment(seed=a.seed),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "environment"}, indent=1))
    atomic_write_bytes(Path(a.out), (json.dumps(record, indent=1) + "\n").encode())
    print("wrote", a.out)
    return record


if __name__ == "__main__":
    main()
