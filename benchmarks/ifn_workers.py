"""Chapters 3-4's rows two at a time (issue 15: chapters 2-4 within 30 minutes on a slow day)

Chapters 3-4 trained each Table 1 row (AlexNet, ResNet; three seeds each) one after the other with PyTorch's
default two CPU threads on our 2-core machine.  Chapter 7 trains its networks two at a time with one
thread each (``facelib._threads.run_in_threads``), 1.4-1.8x faster there.  This measures what the same
would give for InverseFaceNet's rows: two trainings of a row (seeds 0
and 1, the ``cpu`` profile's network, batch and loss, ``--iters`` mini-batches, on a ``--faces``-face Sec. 5
corpus, no landmark pre-training and no learning curve, which do not change a step's cost)

* one by one with 2 threads each (what the chapters did),
* one by one with 1 thread each, and
* side by side, 1 thread each,

alternating, ``--rounds`` times, and reports seconds per mini-batch of one training.  Side by side gives the
same bits as one by one *with one thread* (checked), not as with two (other sums).  Chapters 3-4 now train
side by side (the profiles' ``workers=2``, :func:`facelib.inversefacenet.train_rows`); this record is the
measurement that decided it.

    .venv/bin/python benchmarks/ifn_workers.py [--rows ROW ...] [--iters 60] [--rounds 2] [--faces 1024]

Writes ``benchmarks/results/ifn_workers.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import inversefacenet as ifn  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib._threads import cpu_threads, run_in_threads  # noqa: E402
from facelib.bench import same_weights, time_alternating  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.data.corpus import SyntheticCorpus  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ifn_workers.json"
SEEDS = (0, 1)


def measure(model, cfg: dict, corpus, row: str, iters: int, rounds: int) -> dict:
    """Seconds per mini-batch of one training of ``row``, three ways, and whether their bits agree."""
    kind, loss, _ = ifn.TABLE1_ROWS[row]
    loss_fn = ifn.row_loss(model, loss)

    def one(seed: int):
        """A training of a net made here, in the calling thread: ``make_regressor`` seeds PyTorch's global
        generator, which two threads must not do at once (the training draws its batches from ``seed``
        and, without dropout, nothing from the global generator)."""
        net = ifn.make_regressor(model, cfg, kind, seed)

        def call():
            log = ifn.train(net, corpus, loss_fn, iters, cfg["batch"], cfg["lr"], seed=seed, progress=False,
                            schedule=cfg["schedule"], warmup=cfg["warmup"])
            return net, log["loss"]
        return call

    def with_threads(n: int, run):
        def way():
            with cpu_threads(n):
                return run()
        return way

    ways = {"one by one, 2 threads each": with_threads(2, lambda: [one(s)() for s in SEEDS]),
            "one by one, 1 thread each": with_threads(1, lambda: [one(s)() for s in SEEDS]),
            "side by side, 1 thread each": with_threads(1, lambda: run_in_threads([one(s) for s in SEEDS], 2))}
    with_threads(2, one(0))()  # warm-up: kernels loaded
    t = time_alternating(ways, rounds, per=len(SEEDS) * iters, label=f" per mini-batch of one training ({row})")
    seconds, trained, best = t["seconds"], t["trained"], t["best"]

    def same(a, b) -> bool:
        return all(same_weights(na, nb) and la == lb for (na, la), (nb, lb) in zip(trained[a], trained[b]))

    now, side = best["one by one, 2 threads each"], best["side by side, 1 thread each"]
    rec = {"seconds_per_minibatch": {w: [round(s, 4) for s in ts] for w, ts in seconds.items()},
           "best_seconds_per_minibatch": {w: round(b, 4) for w, b in best.items()},
           "speedup_side_by_side_vs_now": round(now / side, 3),
           "same_bits": {"side by side vs one by one, 1 thread": same("side by side, 1 thread each",
                                                                        "one by one, 1 thread each"),
                         "1 thread vs 2 threads": same("one by one, 1 thread each", "one by one, 2 threads each")}}
    print(f"{row}: best per mini-batch now {now:.4f} s, side by side {side:.4f} s "
          f"({rec['speedup_side_by_side_vs_now']}x); the same bits: {rec['same_bits']}")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=["+ model-space loss, RMS units", "ResNet + model-space loss"],
                    choices=list(ifn.TABLE1_ROWS)[:3] + ["ResNet + model-space loss"])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--faces", type=int, default=1024)
    args = ap.parse_args()
    if args.iters < 1 or args.rounds < 1 or args.faces < 32:
        ap.error("--iters and --rounds must be positive, --faces at least 32")
    cfg = settings("inversefacenet", "cpu")
    if cfg.get("dropout"):
        ap.error("the profile trains with dropout, drawn from PyTorch's global generator: not side by side")
    model = facelib.load_model("open")
    corpus = SyntheticCorpus(model, args.faces, seed=0, size=cfg["size"])
    rec = {"iters": args.iters, "rounds": args.rounds, "faces": args.faces, "seeds": list(SEEDS),
           "rows": {row: measure(model, cfg, corpus, row, args.iters, args.rounds) for row in args.rows},
           "environment": repro.environment(seed=0)}
    atomic_write_bytes(OUT, (json.dumps(rec, indent=1) + "\n").encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
