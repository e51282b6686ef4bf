"""How much of CoarseNet's geometry do the 68 landmarks alone hold? A probe for issue 17.

Chapter 7's CoarseNet reads a grey 48-pixel crop and reaches about 0.95 of the mean face's geometry
RMSE on its held-out synthetic faces.  Chapters 3 and 5 found the geometry their networks lacked in
the detected landmarks, read by a branch pre-trained on landmarks alone.  This reads chapter 7's test
faces (``cpu`` profile: its space, its face prior :func:`facelib.coarse_fine.make_faces`, its photo
camera) with chapter 3's landmark branch as it is (:func:`facelib.inversefacenet.pretrained_branch`,
trained on the Sec. 5 prior, not on CoarseNet's, so a lower bound of what a branch of CoarseNet's own
would read): their projected landmarks with the wild set's detector noise -> the shape and expression
coefficients of CoarseNet's space (its first components) -> Eq. 4's RMSE and the aligned error, with
the reference rows of chapter 7 (mean face; true coefficients with the mean head size).

    FACELIB_THREADS=1 .venv/bin/python benchmarks/coarse_landmark_probe.py [--faces 256] [--seeds 0 1 2]

Writes ``benchmarks/results/coarse_landmark_probe.json``.
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
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import (DISTANCE_MM, CoarseSpace, geometry_errors, geometry_references,  # noqa: E402
                                 make_faces, pooled_rms)
from facelib.data.corpus import landmark_features  # noqa: E402
from facelib.data.wild import WILD, detector_noise  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib.model.params import ParamLayout  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the landmark branch's training seeds")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "coarse_landmark_probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model = facelib.load_model("open")
    cfg7 = settings("07_coarse_fine", "cpu")
    space = CoarseSpace.from_model(model, cfg7["n_shape"], cfg7["n_expression"])
    N = cfg7["coarse_size"]
    r_gt, _, _, _ = make_faces(space, args.faces, 987_654, N)  # held out: a seed no chapter draws
    alpha, pose = space.split(r_gt)
    lm_exact = space.project(space.geometry(alpha)[:, model.landmarks], pose, N, DISTANCE_MM)[..., :2]
    lm = detector_noise(lm_exact.double().cpu(), WILD["landmark_noise"], torch.Generator().manual_seed(5))
    refs = {k: pooled_rms(v) for k, v in geometry_references(space, alpha).items()}
    out = {"what": __doc__.splitlines()[0], "faces": args.faces, "size": N, "n_shape": space.n_shape,
           "n_expression": space.n_expression, "references": refs, "seeds": {}}
    L = ParamLayout.from_model(model)
    cfg = settings("inversefacenet", "cpu")
    for seed in args.seeds:
        net = ifn.make_regressor(model, cfg, "alexnet", seed)
        ifn.pretrained_branch(model, net, int(cfg["landmark_steps"]), int(cfg["landmark_batch"]), seed, progress=False)
        b = ifn._branch_of(net)
        with torch.no_grad():
            theta = net.mean + net.std * b.head(b(landmark_features(lm).float()))
        p = L.unpack(theta)
        alpha_hat = torch.cat([p["shape"][:, :space.n_shape], p["expression"][:, :space.n_expression]], 1)
        err = pooled_rms(geometry_errors(space, alpha_hat.to(alpha), alpha))
        out["seeds"][str(seed)] = {k: round(v, 4) for k, v in err.items()} | {
            f"{k}_ratio": round(v / refs["mean face"][k], 4) for k, v in err.items()}
        print(seed, out["seeds"][str(seed)], flush=True)
    out["references"] = {n: {k: round(v, 4) for k, v in r.items()} | {f"{k}_ratio": round(v / refs["mean face"][k], 4)
                                                                       for k, v in r.items()} for n, r in refs.items()}
    print("references", out["references"])
    out["environment"] = repro.environment(seed=args.seeds)
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
