"""MoFA's stage 1 with and without the detected landmarks as a second input of the encoder (issue 16).

Chapter 5 found that the self-supervised loss identifies little shape at 64 pixels: minimised face by
face it reaches about 0.85 of the mean face's geometric error, and the trained encoder about 1.0.  The
landmarks the loss already uses (Eq. 10) hold more: InverseFaceNet's landmark branch, pre-trained on
landmarks of faces from the model's prior alone, reads chapter 5's test faces to about 0.65 of the mean
face.  This trains chapter 5's stage 1 (the ``cpu`` profile of :data:`facelib.book.SETTINGS`, its corpus,
test faces and seeds) in the variants of :data:`VARIANTS`: ``off``, the image alone as the papers have
it; ``pretrained``, the book's setting (the encoder's :class:`facelib.nets.LandmarkBranch`, pre-trained by
:func:`facelib.mofa.pretrain_branch`, then trained with the rest by the self-supervised loss alone);
``pretrained, frozen``, the branch kept as pre-trained while the rest trains; ``geometry from the
landmarks``, the shape and expression read by the branch alone; ``..., prior x2``, that with the branch
pre-trained on faces whose shape coefficients are drawn twice as wide (``landmark_spread``), the book's
setting.  Each run is checkpointed under :func:`facelib.mofa.checkpoint_dir` (the book's setting under the
chapter's name, so chapter 5 loads it).  ``--foreign N`` also scores every run on N pairs of wild faces of the
open and the foreign model (:func:`facelib.eval.compare.paired_frames`, seed 950000).

    FACELIB_THREADS=1 .venv/bin/python benchmarks/mofa_landmarks.py [--variants ...] [--seeds 0 1 2] [--foreign 64]

Writes ``benchmarks/results/mofa_landmarks.json`` (adding to the runs already there): per variant and
seed the held-out geometric (similarity-aligned and NoW-style), photometric and landmark errors, the
same before stage 1 (the untrained image path; with a branch, its pre-trained read-out), the learning
curve and the training seconds, with the mean face as the reference row.
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
from facelib import mofa, repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.eval import compare  # noqa: E402
from facelib.mofa.multilevel import decimate  # noqa: E402
from facelib.networks import TrainedNetwork  # noqa: E402

VARIANTS = {"off": dict(landmarks=False),
            "pretrained": dict(landmarks=True, landmark_freeze=False, landmark_spread=1.0),
            "pretrained, frozen": dict(landmarks=True, landmark_freeze=True, landmark_spread=1.0),
            "geometry from the landmarks": dict(landmarks=True, landmark_geometry=True, landmark_spread=1.0),
            "geometry from the landmarks, prior x2": dict(landmarks=True, landmark_geometry=True, landmark_spread=2.0)}
STEMS = {"off": "image-only", "pretrained": "joined", "pretrained, frozen": "frozen",
         "geometry from the landmarks": "geometry", "geometry from the landmarks, prior x2": None}


def summary(ev: dict) -> dict:
    """Means over the test faces of a :func:`facelib.mofa.evaluate` result (base level)."""
    return {"geometric_mm": round(float(ev["base"]["geometric_mm"].mean()), 4),
            "now_mm": round(float(ev["base"]["now_mm"].mean()), 4),
            "photometric_rgb": round(float(ev["base"]["photometric_rgb"].mean()), 4),
            "landmark_px": round(float(ev["landmark_px"].mean()), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--profile", default="cpu", choices=["ci", "cpu"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the profile's)")
    ap.add_argument("--foreign", type=int, default=0,
                    help="also score each run on this many pairs of wild faces of the open and the foreign model "
                         "(chapter 8's kind of frames, seed 950000; NoW-style error over the open mean face's)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "mofa_landmarks.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    full = facelib.load_model("open")
    base_cfg = settings("05_mofa", args.profile)
    _, keep = decimate(full, base_cfg["n_vertices"])
    train_set, test_set = mofa.book_corpora(full, base_cfg, 0, keep, progress=False)  # chapter 5's (seed 0)
    seeds = args.seeds or list(base_cfg["seeds"])
    pairs = compare.foreign_pairs(full, args.foreign)  # None without --foreign
    out_path = Path(args.out)
    record = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    for variant in args.variants:
        cfg = dict(base_cfg, **VARIANTS[variant])
        for seed in seeds:
            stem = STEMS[variant] and f"{args.profile}_stage1_{STEMS[variant]}_s{seed}"
            probe = mofa.curve_eval({k: v[:base_cfg["curve_faces"]] for k, v in test_set.items()})
            net, _, hist = mofa.stage1_network(full, cfg, train_set, seed, "cpu", args.profile, progress=False,
                                               eval_fn=probe, eval_every=max(1, cfg["steps1"] // 8), name=stem)
            # the network before stage 1 (its image path untrained; with a branch, the pre-trained read-out)
            start, _, _ = mofa.stage1_network(full, dict(cfg, steps1=0), train_set, seed, "cpu", args.profile,
                                              progress=False, name=f"{args.profile}_bench_start")
            ev, ev0 = mofa.evaluate(net, test_set, now=True), mofa.evaluate(start, test_set, now=True)
            mean_geo = mofa.mean_face_error(net, test_set)
            mean_now = mofa.mean_face_now(net, test_set)
            refs = {"mean face": {"geometric_mm": round(float(mean_geo.mean()), 4),
                                  "now_mm": round(float(mean_now.mean()), 4)}}
            r = {"variant": variant, "seed": seed, "profile": args.profile, "steps": len(hist),
                 "stage1": summary(ev), "before_stage1": summary(ev0), "references": refs,
                 "train_s": round(hist[-1]["train_s"] + net.pretrain_s, 1) if hist else None,
                 "pretrain_s": round(net.pretrain_s, 1), "curve": mofa.learning_curve(hist)}
            if pairs is not None:
                t = TrainedNetwork("mofa", "mofa", net.eval(), full, int(net.config["size"]),
                                   {"seed": seed, "config": net.config, "keep": keep})
                r.update({f"{kind}_pairs": v for kind, v in compare.paired_scores(t, pairs).items()})
            for part in ("stage1", "before_stage1"):
                for k in ("geometric_mm", "now_mm"):
                    r[part][k + "_ratio"] = round(r[part][k] / refs["mean face"][k], 4)
            print(variant, seed, json.dumps({k: r[k] for k in ("stage1", "before_stage1", "train_s", "open_pairs",
                                                                "foreign_pairs") if k in r}), flush=True)
            record["runs"] = [x for x in record["runs"] if (x["variant"], x["seed"], x["profile"]) != (variant, seed, args.profile)]
            record["runs"].append(r)
            record["environment"] = repro.environment(seed=seeds)
            atomic_write_bytes(out_path, (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
