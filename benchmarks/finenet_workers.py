"""Chapter 7's FineNets two at a time (issue 17): ``run_in_threads(..., workers=2)`` against one by one.

Chapter 7 trains fifteen FineNets (five criteria, three seeds) on the same training faces, each with one CPU
thread (``threads=1``); every training draws its batches from its own generator, so two side by side,
one thread and one core each, train exactly as one by one.  This trains the chapter's fifteen FineNets
(``cpu`` profile: width 8, head 32, 96 px, batches of 8; the chapter's lengths scaled by ``--scale``,
250 and 80 steps at 1) one by one and two at a time, alternating, ``--rounds`` times, on faces
of an untrained CoarseNet (a step's cost does not depend on CoarseNet), and reports the seconds, the
speed-up and whether every weight and loss agrees to the bit.

    .venv/bin/python benchmarks/finenet_workers.py [--scale 0.1] [--rounds 2] [--faces 32]

Writes ``benchmarks/results/finenet_workers.json``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib._threads import run_in_threads  # noqa: E402
from facelib.bench import one_by_one_vs_side_by_side, same_weights, scaled_runs_args  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import CoarseNet, CoarseSpace, FineNet, finenet_data, sfs, train_finenet  # noqa: E402
from facelib.model.detail import detail_displacement  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "finenet_workers.json"


def jobs(cfg: dict, data: dict, scale: float, seed: int = 0) -> tuple:
    """The chapter's fifteen trainings (its variants in its order, per seed), not yet run: ``(nets, calls)``."""
    lam = (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM)
    long, short = max(1, round(cfg["fine_steps"] * scale)), max(1, round(cfg["ablation_steps"] * scale))
    variants = [(lam, {}, long), (lam, sfs.PAPER, long), ((1.0, sfs.LAMBDA_F, 0.0), {}, short),
                ((1.0, 0.0, 1.0), {}, short), ((0.0, sfs.LAMBDA_F, 1.0), {}, short)]
    nets, calls = [], []
    for s in cfg["seeds"]:
        for lambdas, criterion, steps in variants:
            torch.manual_seed(seed + s)
            nets.append(FineNet(width=cfg["fine_width"], head=cfg["fine_head"]))
            calls.append(functools.partial(train_finenet, nets[-1], data, cfg["fine_size"], steps, cfg["fine_batch"],
                                           seed=seed + 40 + s, lambdas=lambdas, lr=cfg["fine_lr"],
                                           criterion=criterion, progress=False))
    return nets, calls


def main() -> None:
    args = scaled_runs_args(__doc__, 0.1, 32, "the chapter's FineNet steps times this", "training faces (the chapter: 128)")
    cfg = settings("07_coarse_fine", "cpu")
    torch.set_num_threads(cfg["threads"])
    numba.set_num_threads(cfg["threads"])
    model = facelib.load_model("open")
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    torch.manual_seed(0)
    coarse = CoarseNet(space.n_params, width=cfg["coarse_width"], blocks=cfg["coarse_blocks"],
                       landmarks=cfg["landmarks"])
    pool = detail_displacement(model, cfg["detail_pool"], seed=1000, amplitude_mm=cfg["detail_mm"])
    data = finenet_data(space, coarse, args.faces, cfg["eval_batch"], cfg["coarse_size"], cfg["iterations"], 30_000,
                        detail_pool=pool, sizes=(cfg["fine_size"],))
    run_in_threads(jobs(cfg, data, 0.01)[1][:2], 2)  # warm-up: kernels loaded, threads started

    def train(workers):
        nets, calls = jobs(cfg, data, args.scale)
        return nets, run_in_threads(calls, workers)
    t = one_by_one_vs_side_by_side(train, args.rounds, label=" for the 15 FineNets")
    (n1, h1), (n2, h2) = t["trained"][1], t["trained"][2]
    same = all(same_weights(x, y) for x, y in zip(n1, n2)) and all(a["loss"] == b["loss"] for a, b in zip(h1, h2))
    best = t["best"]
    steps = sum(len(h["loss"]) for h in h1)
    rec = {"scale": args.scale, "rounds": args.rounds, "faces": args.faces, "trainings": len(n1), "steps": steps,
           "threads_per_worker": cfg["threads"],
           "seconds": {f"workers={w}": [round(s, 2) for s in ts] for w, ts in t["seconds"].items()},
           "best_seconds": {f"workers={w}": round(b, 2) for w, b in best.items()},
           "speedup": t["speedup"], "same_bits": bool(same),
           "chapter_cell_estimate_s": {f"workers={w}": round(b / args.scale) for w, b in best.items()},
           "environment": repro.environment(seed=0)}
    print(f"best: {best[1]:.1f} -> {best[2]:.1f} s ({rec['speedup']}x); the same bits: {same}")
    atomic_write_bytes(OUT, (json.dumps(rec, indent=1) + "\n").encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
