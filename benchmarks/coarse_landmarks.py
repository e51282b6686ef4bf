"""CoarseNet with the detected landmarks (issue 17): what each change does to its geometry, per pass.

Chapter 7's CoarseNet read a grey 48-pixel picture and, within the `cpu` profile's budget, reached about
0.92 of the mean face's Eq. 4 RMSE after its first pass and 1.0 after the fourth.  This trains it (the
chapter's settings: 3,000 steps of 16 faces, width 8, 48 px) in these variants, one training seed per run:

* ``image``: the paper's input, Eq. 3's states;
* ``image-own``: the same, with half of the states the network's own estimates after 1-3 passes;
* ``landmarks``: plus the detected landmarks and the feedback's (:func:`facelib.coarse_fine.landmark_feedback`),
  read by a branch pre-trained on landmarks alone (:func:`facelib.coarse_fine.pretrained_branch`), Eq. 3's states;
* ``landmarks-own``: both (the book's);
* ``landmarks-own-x2``: the same, its branch pre-trained on faces whose identity coefficients are drawn twice
  as wide (``pretrained_branch(..., spread=2)``, as chapters 3-5's InverseFaceNet and MoFA branches).

``--kind mse`` trains with the plain parameter MSE instead of the GMSE (:func:`facelib.coarse_fine.coarse_loss`;
chapter 7 compares the two for its first seed only): ``<variant>-mse_s<seed>.json``.

Each is scored on 256 held-out faces (chapter 7's prior and photo camera, the wild detector's noise, a
seed no chapter draws) after every pass: the RMS vertex error (Eq. 4) and the similarity-aligned error,
over the mean face's, with the reference rows; for the landmark variants also the pre-trained branch
alone, before CoarseNet's training.  ``--branch-only``: the landmark branch alone, pre-trained and scored
without CoarseNet's training (its image path's read-out set to 0, so the whole inference path returns the
branch's passes).  ``--foreign N`` also scores every network on N pairs of wild faces of the
open and the foreign model (:func:`facelib.eval.compare.foreign_pairs`, NoW-style error over the open mean face's,
as chapter 8 scores the book's CoarseNet).

    FACELIB_THREADS=1 .venv/bin/python benchmarks/coarse_landmarks.py --variants landmarks-own --seeds 0 1 2 [--kind mse] [--foreign 64]
    .venv/bin/python benchmarks/coarse_landmarks.py --summary-only --foreign 64   # SUMMARY.md again, with the pairs' reference rows
                                                                                 # (also saved: pair_references_64.json)

Writes ``benchmarks/results/coarse_landmarks/<variant>_s<seed>.json`` (one file per run, so runs can share
the cores) and ``benchmarks/results/coarse_landmarks/SUMMARY.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.eval import compare  # noqa: E402
from facelib.networks import TrainedNetwork  # noqa: E402
from facelib.coarse_fine import (DISTANCE_MM, CoarseNet, CoarseSpace, coarse_iterate, detected_landmarks,  # noqa: E402
                                 geometry_errors, geometry_references, make_faces,
                                 pooled_rms, pretrained_branch, train_coarsenets, branch_iterate)

VARIANTS = {  # name: (landmarks, share of own states, spread of the branch's faces)
    "image": (False, 0.0, 1.0), "image-own": (False, 0.5, 1.0), "landmarks": (True, 0.0, 1.0),
    "landmarks-own": (True, 0.5, 1.0), "landmarks-own-x2": (True, 0.5, 2.0)}
LABELS = {"image": "image alone (the paper)", "image-own": "image alone, own states",
          "landmarks": "+ landmarks, Eq. 3's states", "landmarks-own": "+ landmarks, own states (the book's)",
          "landmarks-own-x2": "+ landmarks, own states, branch on a prior x2"}
KINDS = {"gmse": "", "mse": ", plain MSE"}  # CoarseNet's criterion: label suffix
OUT = Path(__file__).resolve().parent / "results" / "coarse_landmarks"


def passes(space, rs, alpha, refs):
    errs = [pooled_rms(geometry_errors(space, space.split(r)[0], alpha)) for r in rs]
    return {k: [round(e[k] / refs["mean face"][k], 4) for e in errs] for k in ("rmse_mm", "aligned_mm")}


def summary(out: Path, references: dict | None = None) -> str:
    """SUMMARY.md of the runs in ``out``; ``references``: :func:`facelib.eval.compare.pair_references` of the
    ``--foreign`` pairs, the reference rows of the pairs tables."""
    every = [json.loads(p.read_text()) for p in sorted(out.glob("*_s*.json"))]
    runs = [r for r in every if not r.get("branch_only")]  # whole CoarseNets; --branch-only runs: below
    lines = ["| variant | seeds | pass 1 | pass 2 | pass 3 | pass 4 | aligned, pass 4 | branch alone, pass 1 / 4 | train [s] |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for v, kind in ((v, k) for v in VARIANTS for k in KINDS):
        rs = [r for r in runs if r["variant"] == v and r.get("kind", "gmse") == kind]
        if not rs:
            continue
        m = lambda k, t: f"{np.mean([r['passes'][k][t] for r in rs]):.3f} ± {np.std([r['passes'][k][t] for r in rs]):.3f}"
        br = "-" if "branch_alone" not in rs[0] else " / ".join(
            f"{np.mean([r['branch_alone']['rmse_mm'][t] for r in rs]):.3f}" for t in (1, 4))
        lines.append(f"| {LABELS[v]}{KINDS[kind]} | {', '.join(str(r['seed']) for r in rs)} | " + " | ".join(m("rmse_mm", t) for t in (1, 2, 3, 4))
                     + f" | {m('aligned_mm', 4)} | {br} | {np.mean([r['train_s'] for r in rs]):.0f} |")
    if runs:
        ref = runs[0]["references"]
        lines.append("| *mean face* | | 1.000 | | | | 1.000 | | |")
        t = ref["true coefficients, mean head size"]
        lines.append(f"| *true coefficients, mean head size* | | {t['rmse_mm_ratio']:.3f} | | | | {t['aligned_mm_ratio']:.3f} | | |")
    text = ("Geometry RMSE (Eq. 4) per pass over the mean face's, mean ± std over seeds, 256 held-out faces "
            f"(mean face {runs[0]['references']['mean face']['rmse_mm']:.3f} mm RMSE)\n\n" if runs else "") + "\n".join(lines) + "\n"
    for alone, what in ((False, "whole CoarseNets"), (True, "the landmark branch alone (`--branch-only`)")):
        paired = {}
        for r in every:
            if "foreign_pairs" in r and bool(r.get("branch_only")) == alone:
                label = LABELS[r["variant"]] + KINDS[r.get("kind", "gmse")] + (", branch alone" if alone else "")
                paired.setdefault(label, []).append(r)
        if paired:
            base = LABELS["landmarks-own"] + (", branch alone" if alone else "")
            text += (f"\n{what[0].upper() + what[1:]}, NoW-style error over the open mean face's on "
                     f"{next(iter(paired.values()))[0]['foreign_pairs']['faces']} pairs of held-out wild faces of the open "
                     "and the foreign model (`--foreign`):\n\n"
                     + compare.pairs_markdown(paired, baseline=base if base in paired else None, references=references) + "\n")
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--faces", type=int, default=256)
    ap.add_argument("--kind", default="gmse", choices=list(KINDS), help="the training criterion (the book's: gmse)")
    ap.add_argument("--foreign", type=int, default=0,
                    help="also score each network on this many pairs of wild faces of the open and the foreign model")
    ap.add_argument("--branch-only", action="store_true",
                    help="pre-train the landmark branch only and score it alone (CoarseNet's image read-out set to 0): "
                         "<variant>-branch_s<seed>.json")
    ap.add_argument("--summary-only", action="store_true",
                    help="train nothing: write SUMMARY.md again from the saved runs (with --foreign N: its reference rows)")
    ap.add_argument("--profile", default="cpu", help="chapter 7's settings of this profile (the book's: cpu; ci: a smoke run)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.branch_only and not all(VARIANTS[v][0] for v in args.variants):
        ap.error("--branch-only needs variants with landmarks")
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = facelib.load_model("open")
    cfg = settings("07_coarse_fine", args.profile)
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    N, T = cfg["coarse_size"], cfg["iterations"]
    r_gt, view, _, _ = make_faces(space, args.faces, 987_654, N)  # held out: a seed no chapter draws
    alpha = space.split(r_gt)[0]
    lm = detected_landmarks(space, r_gt, N, 5)
    pairs = compare.foreign_pairs(model, args.foreign)  # None without --foreign
    refs = {k: pooled_rms(v) for k, v in geometry_references(space, alpha).items()}
    ref_out = {n: {k: round(v, 4) for k, v in r.items()} | {f"{k}_ratio": round(v / refs["mean face"][k], 4) for k, v in r.items()}
               for n, r in refs.items()}
    pair_refs = None if pairs is None else compare.pair_references(model, pairs)  # mean face, floor, best fit
    if pair_refs is not None:  # the same pairs as every --foreign run of the three landmark benchmarks: chapter 8 reads them
        rec = {"faces": args.foreign, "seed": compare.PAIR_SEED, "references": pair_refs,
               "environment": repro.environment(seed=compare.PAIR_SEED)}
        atomic_write_bytes(out / f"pair_references_{args.foreign}.json", (json.dumps(rec, indent=1) + "\n").encode())
    for v in ([] if args.summary_only else args.variants):
        use_lm, p_own, spread = VARIANTS[v]
        for seed in args.seeds:
            torch.manual_seed(seed)  # the chapter's initial weights of this seed
            net = CoarseNet(space.n_params, width=cfg["coarse_width"], blocks=cfg["coarse_blocks"],
                            landmarks=68 if use_lm else 0)
            rec = {"variant": v, "label": LABELS[v] + KINDS[args.kind], "kind": args.kind, "seed": seed, "faces": args.faces, "p_own": p_own,
                   "spread": spread, "landmarks": use_lm, "references": ref_out}
            branch_s = 0.0
            if use_lm:
                branch_s = pretrained_branch(space, net, cfg["landmark_steps"], cfg["landmark_batch"], N, seed,
                                             progress=False, p_own=p_own, spread=spread)
                rec["branch_alone"] = passes(space, branch_iterate(space, net.landmark_branch, lm, T, N), alpha, refs)
            t0 = time.perf_counter()
            if args.branch_only:  # the branch alone through the whole inference path: the image path's read-out at 0
                with torch.no_grad():
                    net.fc.weight.zero_()
                    net.fc.bias.zero_()
                rec["branch_only"] = True
            else:
                train_coarsenets(space, {args.kind: (net, args.kind)}, cfg["coarse_steps"], cfg["coarse_batch"], N,
                                 seed=10 + seed, lr=cfg["coarse_lr"], progress=False, p_own=p_own)
            rec["train_s"] = round(time.perf_counter() - t0 + branch_s, 1)
            rec["branch_s"] = round(branch_s, 1)
            rec["passes"] = passes(space, coarse_iterate(space, net, view.image, T, N, landmarks=lm), alpha, refs)
            rec["passes_damped"] = passes(space, coarse_iterate(space, net, view.image, T, N, step=0.5, landmarks=lm), alpha, refs)
            if pairs is not None:  # as chapter 8 scores the book's CoarseNet (facelib.load_network("coarsenet"))
                t = TrainedNetwork("coarsenet", "coarsenet", net.eval(), model, N,
                                   {"space": space, "config": {"iterations": T, "distance": DISTANCE_MM}})
                rec.update({f"{kind}_pairs": sc for kind, sc in compare.paired_scores(t, pairs).items()})
            rec["environment"] = repro.environment(seed=seed)
            stem = v + ("" if args.kind == "gmse" else f"-{args.kind}") + ("-branch" if args.branch_only else "")
            atomic_write_bytes(out / f"{stem}_s{seed}.json", (json.dumps(rec, indent=1) + "\n").encode())
            print(v, seed, rec["passes"]["rmse_mm"], rec.get("branch_alone", {}).get("rmse_mm"), f"{rec['train_s']} s",
                  *(f"{k} pairs {rec[k + '_pairs']['over_mean_face']:.3f}" for k in ("open", "foreign") if k + "_pairs" in rec),
                  flush=True)
    text = summary(out, pair_refs)
    atomic_write_bytes(out / "SUMMARY.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
