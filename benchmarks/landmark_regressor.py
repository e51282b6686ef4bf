"""What do the 68 landmarks alone say about the shape? A small MLP read-out, trained on the Sec. 5 prior (issue 15).

``benchmarks/fit_resolution.py`` found that chapter 8's fit from the detector's landmarks alone (no
photometric term) reaches about 0.73 of the mean face's NoW-style error on the held-out wild faces,
where the networks of chapters 3-7, which see only the pixels of a crop *made from* those landmarks,
reach 0.84-0.88.  This trains a plain MLP (no pixels at all) from the 68 landmarks, normalised by
their bounding box as the Sec. 6.1 crop is, to the shape and expression coefficients (and the
rotation), on faces drawn from the Sec. 5 training prior with the wild set's detector noise model
(:data:`facelib.data.wild.WILD` ``landmark_noise``: the only thing taken from the wild set), and scores
it on chapter 8's held-out wild faces (their noisy detector landmarks) with the NoW-style error, and on
chapter 3's wild test set (Table 1's 256 faces) with Table 1's geometric errors, plain and aligned.  A
diagnostic, not a method of the papers: if a landmark read-out beats the image networks, what they
miss is geometry that the crop's landmarks hold.

    FACELIB_THREADS=1 .venv/bin/python benchmarks/landmark_regressor.py [--steps 4000] [--seeds 0 1 2]
        [--width 256] [--weights equal|geometry] [--out PATH]

``--weights geometry`` weights each coefficient's squared error (in the prior's units) by the mean
squared vertex displacement it causes (:func:`facelib.inversefacenet.coefficient_displacement`, times the
prior's spread), as the geometric error counts it, instead of equally (rotation keeps weight 1).

The read-out is InverseFaceNet's landmark branch (:class:`facelib.nets.LandmarkBranch`) alone, trained by
:func:`facelib.inversefacenet.pretrain_landmarks` as the chapters pre-train it.  Writes
``benchmarks/results/landmark_regressor.json`` (``--faces 256 --out ..._256.json``: 256 held-out wild faces).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.data.corpus import landmark_features  # noqa: E402
from facelib.data.wild import wild_batch  # noqa: E402
from facelib.eval import compare  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib.model.params import ParamLayout, sample_sec5  # noqa: E402
from facelib.nets import LandmarkBranch, Standardized  # noqa: E402


class Readout(nn.Module):
    """InverseFaceNet's landmark branch with nothing around it (:class:`facelib.nets.LandmarkBranch`: two
    fully connected layers and its head), so that :func:`facelib.inversefacenet.pretrain_landmarks` trains it
    exactly as it pre-trains the chapters' branch.  ``forward(x, l)`` ignores the image ``x``."""

    def __init__(self, out_dim: int, width: int):
        super().__init__()
        self.n_landmarks = 68
        self.landmark_branch = LandmarkBranch(68, width, out_dim)

    def forward(self, x, l: torch.Tensor) -> torch.Tensor:
        return self.landmark_branch.head(self.landmark_branch(l))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=256, help="the branch's width (the chapters': 256)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weights", choices=("equal", "geometry"), default="equal",
                    help="the squared errors' weights (the chapters': equal)")
    ap.add_argument("--faces", type=int, default=24, help="chapter 8's held-out wild faces (seed 910000)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "landmark_regressor.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model = facelib.load_model("open")
    L = ParamLayout.from_model(model)
    # the network's output units: the Sec. 5 prior's mean and spread, as facelib.inversefacenet.make_regressor's
    ref = sample_sec5(model, 20_000, seed=123_456)
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)
    frames = wild_batch(model, args.faces, seed=910_000, size=128)
    # chapter 3's wild test set (Table 1: 256 faces, seed 10000, size 64): its faces' detector landmarks,
    # drawn again from the same seeds as facelib.inversefacenet.make_test_set draws them
    t1 = [wild_batch(model, min(128, 256 - s), seed=10_000 * 1_000_003 + i, size=96) for i, s in enumerate(range(0, 256, 128))]
    t1_x = landmark_features(torch.cat([w["landmarks"] for w in t1]))
    t1_verts = torch.cat([w["verts_model"] for w in t1]).float()
    t1_mean = ifn.geometric_errors(model, ifn.mean_face_theta(model, torch.cat([w["theta"] for w in t1]).float()),
                                   t1_verts)
    refs = compare.reference_points(model, frames)
    wild_x = landmark_features(frames["landmarks"])
    cols = torch.cat([torch.arange(L.size)[L[k]] for k in ifn.GEOMETRY_GROUPS])
    weights = None
    if args.weights == "geometry":  # mean squared vertex displacement of one prior std of each coefficient
        w, disp = torch.ones(L.size), ifn.coefficient_displacement(model)
        geo = torch.cat([torch.arange(L.size)[L[g]] for g in ("shape", "expression")])
        for g in ("shape", "expression"):
            w[L[g]] = (sd[L[g]] * disp[g]) ** 2
        w[geo] = w[geo] / w[geo].mean()
        weights = w[cols]
    out = {"what": __doc__.splitlines()[0], "steps": args.steps, "batch": args.batch, "width": args.width,
           "weights": args.weights,
           "trained_by": "facelib.inversefacenet.pretrain_landmarks",
           "faces": args.faces, "mean_face_now_mm": round(float(refs["mean face"].mean()), 3),
           "floor_now_mm": round(float(refs["true parameters (floor)"].mean()), 3),
           "table1_wild_mean_face": {k: round(float(v.mean()), 3) for k, v in t1_mean.items()}, "seeds": {}}

    def read(net, x):  # (B, 136) -> theta (B, m) with the geometry groups read out, the rest 0
        with torch.no_grad():
            th = torch.zeros(x.shape[0], L.size)
            th[:, cols] = net(None, x.float())[:, cols]
        return th

    for seed in args.seeds:
        torch.manual_seed(seed)
        net = Standardized(Readout(L.size, args.width), mu, sd)
        info = ifn.pretrain_landmarks(model, net, args.steps, args.batch, seed=seed, progress=False, weights=weights)
        p = L.unpack(read(net, wild_x))
        verts = model.geometry(p["shape"], p["expression"])
        now = compare.now_mm(model, verts, model.triangles, model.landmarks, frames["verts_model"])
        shape_only = model.geometry(p["shape"], torch.zeros_like(p["expression"]))
        now_s = compare.now_mm(model, shape_only, model.triangles, model.landmarks, frames["verts_model"])
        g1 = ifn.geometric_errors(model, read(net, t1_x), t1_verts)
        table1 = {k: round(float(v.mean()), 3) for k, v in g1.items()}
        table1.update({f"{k}_ratio": round(float(v.mean() / t1_mean[k].mean()), 3) for k, v in g1.items()})
        r = {"table1_wild": table1, "now_mm": round(float(now.mean()), 3), "ratio_to_mean_face": round(float(now.mean() / refs["mean face"].mean()), 3),
             "expression_zero_now_mm": round(float(now_s.mean()), 3),
             "final_loss": round(float(sum(info["loss"][-50:]) / len(info["loss"][-50:])), 4),
             "train_s": round(info["train_s"], 1)}
        out["seeds"][str(seed)] = r
        print(seed, json.dumps(r), flush=True)
    out["environment"] = repro.environment(seed=args.seeds)
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
