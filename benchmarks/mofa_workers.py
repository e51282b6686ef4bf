"""Chapters 5-6's MoFA trainings two at a time: ``cfg["workers"] = 2`` against one by one.

Chapter 5 trains stage 1 for three seeds (each pre-training its landmark branch first) and chapter 6 trains
seven stage-2 variants (the ablations and the other C) and, for the other seeds, the final level and C = 0,
each with one CPU thread (the profile's ``threads=1``).  Every training draws its batches from its own
generator, so with ``workers=2`` (:func:`facelib.mofa.stage1_networks`, :func:`facelib.mofa.stage2_networks`)
two side by side, one thread and one core each, train exactly as one by one.  This trains the chapter's three
stage-1 seeds and seven stage-2 variants (``cpu`` profile: 1,500 vertices, 64 px, batches of 8; the chapters'
steps scaled by ``--scale``) one by one and two at a time, alternating, ``--rounds`` times, each time in a
fresh checkpoint folder, on ``--faces`` training faces, and reports the seconds, the speed-up and whether
every weight and loss agrees to the bit.

    .venv/bin/python benchmarks/mofa_workers.py [--scale 0.05] [--rounds 2] [--faces 64]

Writes ``benchmarks/results/mofa_workers.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import mofa, repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.bench import one_by_one_vs_side_by_side, same_weights, scaled_runs_args  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.mofa.multilevel import decimate  # noqa: E402
from facelib.mofa.selfsup import STAGE2  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "mofa_workers.json"


def variants(cfg: dict) -> dict:
    """Chapter 6's stage-2 variants besides its main run (its cell of ablations, in its order)."""
    W = STAGE2
    out = {"w/o smoothness + stabilisation": dict(n_corrective=cfg["C"], weights=W.replace(smo=0.0, sta=0.0)),
           "w/o reflectance sparsity + constancy": dict(n_corrective=cfg["C"], weights=W.replace(ref=0.0, glo=0.0)),
           "one non-linearity": dict(n_corrective=cfg["C"], corrective="one_nonlinearity"),
           "two non-linearities": dict(n_corrective=cfg["C"], corrective="two_nonlinearities")}
    out.update({f"C = {C}": dict(n_corrective=C) for C in cfg["Cs"] if C != cfg["C"]})
    return out


def main() -> None:
    args = scaled_runs_args(__doc__, 0.05, 64, "the chapters' steps times this", "training faces (the chapters: 1,536)")
    base = {**settings("05_mofa", "cpu"), **settings("06_correctives", "cpu")}
    cfg = dict(base, steps1=max(1, round(base["steps1"] * args.scale)), steps2=max(1, round(base["steps2"] * args.scale)),
               landmark_steps=max(1, round(base["landmark_steps"] * args.scale)))
    torch.set_num_threads(cfg["threads"])
    numba.set_num_threads(cfg["threads"])
    full = facelib.load_model("open")  # before the checkpoint folder moves: the model stays in the user's cache
    corpus = mofa.make_corpus(full, args.faces, cfg["size"], 0, decimate(full, cfg["n_vertices"])[1], progress=False)
    seeds = list(cfg["seeds"])
    root = Path(tempfile.mkdtemp(prefix="mofa_workers_"))
    rounds = iter(range(10**6))

    def train(workers):
        os.environ["FACELIB_CACHE"] = str(root / f"{next(rounds)}")  # a fresh folder: nothing loaded
        c = dict(cfg, workers=workers)
        s1 = mofa.stage1_networks(full, c, corpus, seeds, "cpu", "bench", progress=False)
        runs = {name: dict(stage1=s1[seeds[0]][0], seed=seeds[0], name=name.replace(" ", "_"), **v)
                for name, v in variants(cfg).items()}
        return s1, mofa.stage2_networks(full, c, corpus, "bench", runs, progress=False)

    train(1)  # warm-up: kernels compiled, the decimated model's constants made
    t = one_by_one_vs_side_by_side(train, args.rounds, label=" for 3 stage-1 seeds and 7 stage-2 runs")
    (a1, a2), (b1, b2) = t["trained"][1], t["trained"][2]

    def losses(hist):
        return [{k: v for k, v in r.items() if k != "train_s"} for r in hist]

    same_bits = all(same_weights(a1[s][0], b1[s][0]) and losses(a1[s][2]) == losses(b1[s][2]) for s in seeds) and \
        all(same_weights(a2[k][0], b2[k][0]) and losses(a2[k][1]) == losses(b2[k][1]) for k in a2)
    best = t["best"]
    rec = {"scale": args.scale, "rounds": args.rounds, "faces": args.faces, "steps1": cfg["steps1"],
           "steps2": cfg["steps2"], "landmark_steps": cfg["landmark_steps"], "stage1_seeds": len(seeds),
           "stage2_runs": len(a2), "threads_per_worker": cfg["threads"],
           "seconds": {f"workers={w}": [round(s, 2) for s in ts] for w, ts in t["seconds"].items()},
           "best_seconds": {f"workers={w}": round(b, 2) for w, b in best.items()},
           "speedup": t["speedup"], "same_bits": bool(same_bits), "environment": repro.environment(seed=0)}
    print(f"best: {best[1]:.1f} -> {best[2]:.1f} s ({rec['speedup']}x); the same bits: {same_bits}")
    atomic_write_bytes(OUT, (json.dumps(rec, indent=1) + "\n").encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
