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

Writes ``benchmarks/results/landmark_regressor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.data.corpus import landmark_features  # noqa: E402
from facelib.data.wild import WILD, detector_noise, wild_batch  # noqa: E402
from facelib.eval import compare  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib.model.params import ParamLayout, sample_sec5  # noqa: E402
from facelib.render import project_landmarks  # noqa: E402


def normalise(lm: torch.Tensor) -> torch.Tensor:
    """``(B, 68, 2)`` pixels -> ``(B, 136)``: :func:`facelib.data.corpus.landmark_features` (centred on the
    landmark box, divided by its longer side: what the Sec. 6.1 crop keeps of them)."""
    return landmark_features(lm)


def synthetic_landmarks(model, theta: torch.Tensor, g: torch.Generator, size: int = 64) -> torch.Tensor:
    """The 68 landmarks ``(B, 68, 2)`` of Sec. 5 faces ``theta``, projected by the book's camera
    (:func:`facelib.render.project_landmarks`), with the wild set's detector noise
    (:func:`facelib.data.wild.detector_noise`, ``landmark_noise`` of the box side)."""
    return detector_noise(project_landmarks(model, theta, size), WILD["landmark_noise"], g)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--faces", type=int, default=24, help="chapter 8's held-out wild faces (seed 910000)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "landmark_regressor.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model = facelib.load_model("open")
    L = ParamLayout.from_model(model)
    groups = ("rotation", "shape", "expression")
    cols = torch.cat([torch.arange(L.size)[L[k]] for k in groups])
    # the targets in units of their Sec. 5 spread
    ref = sample_sec5(model, 20_000, seed=123_456)[:, cols]
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)
    frames = wild_batch(model, args.faces, seed=910_000, size=128)
    # chapter 3's wild test set (Table 1: 256 faces, seed 10000, size 64): its faces' detector landmarks,
    # drawn again from the same seeds as facelib.inversefacenet.make_test_set draws them
    t1 = [wild_batch(model, min(128, 256 - s), seed=10_000 * 1_000_003 + i, size=96) for i, s in enumerate(range(0, 256, 128))]
    t1_x = normalise(torch.cat([w["landmarks"] for w in t1]).float())
    t1_verts = torch.cat([w["verts_model"] for w in t1]).float()
    t1_mean = ifn.geometric_errors(model, ifn.mean_face_theta(model, torch.cat([w["theta"] for w in t1]).float()),
                                   t1_verts)
    refs = compare.reference_points(model, frames)
    wild_x = normalise(frames["landmarks"].float())
    out = {"what": __doc__.splitlines()[0], "steps": args.steps, "batch": args.batch, "width": args.width,
           "faces": args.faces, "mean_face_now_mm": round(float(refs["mean face"].mean()), 3),
           "floor_now_mm": round(float(refs["true parameters (floor)"].mean()), 3),
           "table1_wild_mean_face": {k: round(float(v.mean()), 3) for k, v in t1_mean.items()}, "seeds": {}}
    for seed in args.seeds:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(136, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                            nn.Linear(args.width, len(cols)))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.05)
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for step in range(args.steps):
            theta = sample_sec5(model, args.batch, seed=seed * 1_000_003 + step)
            with torch.no_grad():
                x = normalise(synthetic_landmarks(model, theta, g))
            loss = ((net(x) - (theta[:, cols] - mu) / sd) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            pred = net(wild_x) * sd + mu
        th = torch.zeros(args.faces, L.size)
        th[:, cols] = pred
        p = L.unpack(th)
        verts = model.geometry(p["shape"], p["expression"])
        now = compare.now_mm(model, verts, model.triangles, model.landmarks, frames["verts_model"])
        shape_only = model.geometry(p["shape"], torch.zeros_like(p["expression"]))
        now_s = compare.now_mm(model, shape_only, model.triangles, model.landmarks, frames["verts_model"])
        with torch.no_grad():
            th1 = torch.zeros(t1_x.shape[0], L.size)
            th1[:, cols] = net(t1_x) * sd + mu
        g1 = ifn.geometric_errors(model, th1, t1_verts)
        table1 = {k: round(float(v.mean()), 3) for k, v in g1.items()}
        table1.update({f"{k}_ratio": round(float(v.mean() / t1_mean[k].mean()), 3) for k, v in g1.items()})
        r = {"table1_wild": table1, "now_mm": round(float(now.mean()), 3), "ratio_to_mean_face": round(float(now.mean() / refs["mean face"].mean()), 3),
             "expression_zero_now_mm": round(float(now_s.mean()), 3), "final_loss": round(float(loss), 4),
             "train_s": round(train_s, 1)}
        out["seeds"][str(seed)] = r
        print(seed, json.dumps(r), flush=True)
    out["environment"] = repro.environment(seed=args.seeds)
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
