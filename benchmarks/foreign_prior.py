"""Does a wider training prior teach the landmark read-out the face rather than the open population?

Chapter 8 runs the book's networks on faces of the foreign model (:mod:`facelib.model.foreign`, a population
none of them trains on).  Every network of chapters 3-7 reads the detected landmarks through a branch
pre-trained on faces of the Sec. 5 prior (:func:`facelib.inversefacenet.pretrain_landmarks`), and what it
learns there is a regression towards that prior's mean.  This trains that branch alone (the read-out of
``benchmarks/landmark_regressor.py``: no pixels) on the prior with its shape coefficients times ``spread``
(``pretrain_landmarks(..., spread=)``), for a few spreads and training seeds, and scores it on wild faces of
the open model and of the foreign one drawn alike (NoW-style error over the open mean face's; the open
model's best fit, :func:`facelib.model.facemodel.geometry_fit`, as the reference row).  Held-out faces of
their own (seed 950000), not chapter 8's.

    FACELIB_THREADS=1 .venv/bin/python benchmarks/foreign_prior.py [--spreads 1 1.5 2] [--seeds 0 1 2] [--faces 128]
        [--steps 4000] [--append]

Writes ``benchmarks/results/foreign_prior.json``.
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
from facelib.data.corpus import landmark_features  # noqa: E402
from facelib.data.wild import wild_batch  # noqa: E402
from facelib.eval import compare  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib.model.params import ParamLayout, sample_sec5  # noqa: E402
from facelib.nets import Standardized  # noqa: E402

from landmark_regressor import Readout  # noqa: E402  (benchmarks/ is the script's folder)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spreads", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=4000, help="the chapters' pre-training steps (cpu profile: 4000)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--faces", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "foreign_prior.json"))
    ap.add_argument("--append", action="store_true", help="add the runs to those already in --out (same faces)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model, foreign = facelib.load_model("open"), facelib.load_model("foreign")
    L = ParamLayout.from_model(model)
    ref = sample_sec5(model, 20_000, seed=123_456)  # the network's output units, as make_regressor's
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)
    cols = torch.cat([torch.arange(L.size)[L[k]] for k in ifn.GEOMETRY_GROUPS])
    sets = {kind: (wild_batch(m, args.faces, seed=950_000, size=128), gm)
            for kind, m, gm in (("open", model, None), ("foreign", foreign, foreign))}
    refs = {kind: compare.reference_points(model, f, gt_model=gm) for kind, (f, gm) in sets.items()}
    mf = {kind: float(r["mean face"].mean()) for kind, r in refs.items()}
    out = {"what": __doc__.splitlines()[0], "steps": args.steps, "batch": args.batch, "width": args.width,
           "faces": args.faces, "seed_faces": 950_000,
           "references": {kind: {k: round(float(v.mean()), 4) for k, v in r.items()} for kind, r in refs.items()},
           "runs": []}
    for spread in args.spreads:
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = Standardized(Readout(L.size, args.width), mu, sd)
            info = ifn.pretrain_landmarks(model, net, args.steps, args.batch, seed=seed, progress=False, spread=spread)
            row = {"spread": spread, "seed": seed, "steps": args.steps, "train_s": round(info["train_s"], 1)}
            for kind, (f, gm) in sets.items():
                with torch.no_grad():
                    th = torch.zeros(f["landmarks"].shape[0], L.size)
                    th[:, cols] = net(None, landmark_features(f["landmarks"]).float())[:, cols]
                p = L.unpack(th)
                now = compare.now_mm(gm or model, model.geometry(p["shape"], p["expression"]), model.triangles,
                                     model.landmarks, f["verts_model"])
                row[kind] = {"now_mm": round(float(now.mean()), 4), "over_mean_face": round(float(now.mean()) / mf[kind], 4)}
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    out["environment"] = repro.environment(seed=args.seeds)
    if args.append and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        if old["faces"] != args.faces or old["references"] != out["references"]:
            raise SystemExit(f"{args.out} scored other faces; not appending")
        out["runs"] = old["runs"] + out["runs"]
        out["environments"] = (old.get("environments") or [old["environment"]]) + [out.pop("environment")]
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
