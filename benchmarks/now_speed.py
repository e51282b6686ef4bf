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

Before/after a change of the search, alternating fresh processes (the 2 cores are shared, so the load
changes between runs), with a SHA-256 of the ``now_error`` distances of each version (the same digest:
the same numbers to the bit)::

    mkdir -p /tmp/facelib_before && git archive <commit> facelib | tar -x -C /tmp/facelib_before
    .venv/bin/python benchmarks/now_speed.py --against /tmp/facelib_before --rounds 3 \\
        --out benchmarks/results/now_speed_before_after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# FACELIB_TREE: time the facelib of another folder (--against runs this script so for the old version)
sys.path.insert(0, os.environ.get("FACELIB_TREE") or str(Path(__file__).resolve().parent.parent))
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
    ap.add_argument("--against", default=None, help="a folder holding an older facelib: time both, alternating")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of --against")
    a = ap.parse_args(argv)
    if a.against:
        return compare(a)

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
        "now_error_sha256": hashlib.sha256(e.distance.numpy().tobytes()).hexdigest()[:16],
        "max_abs_diff_to_brute_force_mm": float((d - d_ref).abs().max()),
        "brute_force_points": int(len(sub)),
        "environment": environment(seed=a.seed),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "environment"}, indent=1))
    atomic_write_bytes(Path(a.out), (json.dumps(record, indent=1) + "\n").encode())
    print("wrote", a.out)
    return record


def compare(a) -> dict:
    """``--against``: this script in fresh processes, the old folder's facelib and this one's in turn."""
    keys = ("closest_points_unaligned_ms", "closest_points_aligned_ms", "now_error_ms_per_face")
    runs = {"before": [], "after": []}
    for _ in range(a.rounds):
        for version, tree in (("before", a.against), ("after", str(Path(__file__).resolve().parent.parent))):
            env = dict(os.environ, FACELIB_TREE=str(Path(tree).resolve()))
            out = Path(a.out).with_suffix(f".{version}.tmp")
            subprocess.run([sys.executable, __file__, "--faces", str(a.faces), "--repeats", str(a.repeats),
                            "--brute", str(a.brute), "--seed", str(a.seed), "--out", str(out)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            r = json.loads(out.read_text())
            out.unlink()
            runs[version].append({k: r[k] for k in keys + ("now_error_sha256", "max_abs_diff_to_brute_force_mm")}
                                 | {"load_avg_1min": round(os.getloadavg()[0], 2)})
    summary = {v: {k: round(statistics.median(r[k] for r in rs), 1) for k in keys} for v, rs in runs.items()}
    digests = {v: sorted({r["now_error_sha256"] for r in rs}) for v, rs in runs.items()}
    record = {"summary": summary, "speedup": {k: round(summary["before"][k] / summary["after"][k], 2) for k in keys},
              "same_distances": digests["before"] == digests["after"] and len(digests["after"]) == 1,
              "digests": digests, "runs": runs, "faces": a.faces, "repeats": a.repeats,
              "command": "benchmarks/now_speed.py " + " ".join(sys.argv[1:]), "environment": environment(seed=a.seed)}
    print(json.dumps({k: v for k, v in record.items() if k not in ("runs", "environment")}, indent=1))
    atomic_write_bytes(Path(a.out), (json.dumps(record, indent=1) + "\n").encode())
    print("wrote", a.out)
    return record


if __name__ == "__main__":
    main()
