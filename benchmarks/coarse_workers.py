"""Chapter 7's CoarseNets two at a time (issue 17): ``train_coarsenets(workers=2)`` against ``workers=1``.

Chapter 7 trains four CoarseNets (three GMSE seeds and the MSE one) on the same faces, each with one CPU
thread (``threads=1``: two PyTorch threads on a shared 2-core CPU spin against each other).  With
``workers=2`` two groups of two nets train side by side, one thread and one core each; each group draws
the same faces, so every net is the same to the bit.  This trains the chapter's four nets (``cpu``
profile: width 8, 48 px, batches of 16, the landmark input, half of the states their own) for ``--steps``
steps with ``workers=1`` and ``workers=2``, alternating, ``--rounds`` times, and reports seconds per
step, the speed-up and whether every weight, batch-norm statistic and loss agrees to the bit.

    .venv/bin/python benchmarks/coarse_workers.py [--steps 40] [--rounds 2]

Writes ``benchmarks/results/coarse_workers.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.bench import one_by_one_vs_side_by_side, same_weights  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import CoarseNet, CoarseSpace, train_coarsenets  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "coarse_workers.json"


def nets(space, cfg, seed: int = 0) -> dict:
    """The chapter's four nets with their initial weights (the pre-trained branches are left out: they do
    not change a step's cost)."""
    out = {}
    for s in [*cfg["seeds"], "MSE"]:
        torch.manual_seed(seed + (cfg["seeds"][0] if s == "MSE" else s))
        net = CoarseNet(space.n_params, width=cfg["coarse_width"], blocks=cfg["coarse_blocks"], landmarks=cfg["landmarks"])
        out["MSE, seed 0" if s == "MSE" else f"GMSE, seed {s}"] = (net, "mse" if s == "MSE" else "gmse")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cfg = settings("07_coarse_fine", "cpu")
    torch.set_num_threads(cfg["threads"])
    numba.set_num_threads(cfg["threads"])
    model = facelib.load_model("open")
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    N = cfg["coarse_size"]
    train_coarsenets(space, nets(space, cfg), 2, cfg["coarse_batch"], N, seed=10, progress=False,
                     p_own=cfg["p_own"], workers=2)  # warm-up: Numba's kernels loaded, threads started

    def train(workers):
        ns = nets(space, cfg)
        return ns, train_coarsenets(space, ns, args.steps, cfg["coarse_batch"], N, seed=10, lr=cfg["coarse_lr"],
                                    progress=False, p_own=cfg["p_own"], workers=workers)
    t = one_by_one_vs_side_by_side(train, args.rounds, per=args.steps,
                                   label=f" per step of {len(cfg['seeds']) + 1} nets")
    (n1, h1), (n2, h2) = t["trained"][1], t["trained"][2]
    same = all(same_weights(n1[k][0], n2[k][0]) for k in n1) and all(h1[k]["loss"] == h2[k]["loss"] for k in h1)
    best = t["best"]
    rec = {"steps": args.steps, "rounds": args.rounds, "nets": list(n1), "threads_per_worker": cfg["threads"],
           "seconds_per_step": {f"workers={w}": [round(s, 4) for s in ts] for w, ts in t["seconds"].items()},
           "best_seconds_per_step": {f"workers={w}": round(b, 4) for w, b in best.items()},
           "speedup": t["speedup"], "same_bits": bool(same),
           "chapter_steps": cfg["coarse_steps"],
           "chapter_cell_estimate_s": {f"workers={w}": round(b * cfg["coarse_steps"]) for w, b in best.items()},
           "environment": repro.environment(seed=10)}
    print(f"best: {best[1]:.3f} -> {best[2]:.3f} s per step ({rec['speedup']}x); the same bits: {same}")
    atomic_write_bytes(OUT, (json.dumps(rec, indent=1) + "\n").encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
