"""Why do CoarseNet's later passes raise the geometry error? Damped and pose-only passes (issue 17)

Chapter 7's CoarseNet lowers the geometry error with its first pass (from the mean face) and raises it
with every later one. An iterative regressor whose update is not a contraction drifts: each pass adds
the network's error on its own output. This evaluates the saved ``cpu`` CoarseNet (chapter 7's GMSE
network of seed 0, ``facelib.load_network("coarsenet")``; run ``make book`` first) on held-out faces
drawn as chapter 7 draws them, with Sec. 3.4's passes changed at test time only:

* ``full``: ``r_{t+1} = f(I, r_t)`` (Sec. 3.4, the chapter's);
* ``damped 0.5`` / ``damped 0.25``: ``r_{t+1} = r_t + step (f(I, r_t) - r_t)``
  (``facelib.coarse_fine.coarse_iterate(..., step=)``).

Prints and saves the pooled geometry RMSE (mm, unaligned and similarity-aligned) and the pose MSE
(normalised units) after each pass, with the mean face and the true coefficients as reference rows.

    .venv/bin/python benchmarks/cf_damping.py [--faces 128] [--passes 6]   # -> benchmarks/results/cf_damping.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import (coarse_iterate, detected_landmarks, geometry_errors, geometry_references,  # noqa: E402
                                 make_faces, pooled_rms)
from facelib.repro import environment  # noqa: E402

STEPS = {"full": 1.0, "damped 0.5": 0.5, "damped 0.25": 0.25}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=128)
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cf_damping.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "1")))
    cfg = settings("07_coarse_fine", "cpu")
    trained = facelib.load_network("coarsenet", profile="cpu")
    space, net = trained.meta["space"], trained.net.cpu()
    N = cfg["coarse_size"]
    r_gt, view, _, _ = make_faces(space, args.faces, 40_000, N)  # held out: no chapter seed draws 40,000
    a_gt = space.split(r_gt)[0]
    lm = detected_landmarks(space, r_gt, N, 40_001)  # read by a CoarseNet with a landmark input, ignored by others
    refs = {k: pooled_rms(e) for k, e in geometry_references(space, a_gt).items()}
    res = {}
    with torch.no_grad():
        p_gt = space.split(r_gt)[1]
        for scheme, step in STEPS.items():
            rs = coarse_iterate(space, net, view.image, args.passes, N, step=step, landmarks=lm)
            res[scheme] = [{**{k: round(v, 4) for k, v in pooled_rms(geometry_errors(space, space.split(r)[0], a_gt)).items()},
                            "pose_mse": round(float((space.split(r)[1] - p_gt).square().mean()), 5)} for r in rs]
            print(f"{scheme:18s} RMSE per pass: " + " ".join(f"{e['rmse_mm']:.3f}" for e in res[scheme]))
    print("references: " + ", ".join(f"{k} {v['rmse_mm']:.3f}" for k, v in refs.items()))
    out = {"faces": args.faces, "passes": args.passes, "network": "coarsenet (cpu, GMSE, seed 0)",
           "references": {k: {a: round(b, 4) for a, b in v.items()} for k, v in refs.items()},
           "schemes": res, "command": "python benchmarks/cf_damping.py --faces N --passes T",
           "environment": environment()}
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
