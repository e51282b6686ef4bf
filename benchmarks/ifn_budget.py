"""Time to accuracy of Table 1's rows: where the training budget goes and what more of it buys (issue 15).

A Table 1 run of the ``cpu`` profile spends its seconds on two things: pre-training the landmark branch
(``landmark_steps`` steps of ``landmark_batch`` faces, :func:`facelib.inversefacenet.pretrain_landmarks`,
counted in each row's training time) and training the whole network (``iters`` mini-batches of a corpus of
``n_train`` faces; the bred row: a fifth of them, then rounds on children of the ``n_real`` faces of R).  Each
variant changes settings of the profile (``name:key=value,key=value``, values in JSON, e.g.
``"iters x1.5:iters=2700"``; ``book``: the profile as it is), trains the rows for the profile's seeds the way
the chapters do (:func:`facelib.inversefacenet.train_rows`, two runs at a time, one thread each, cached; with
``--curves`` under the chapters' own keys, so that the ``book`` variant loads the chapters' runs) and scores
them on the chapters' held-out synthetic and wild test sets, with the mean face's errors beside.

    .venv/bin/python benchmarks/ifn_budget.py [--rows AlexNet "+ breeding (= InverseFaceNet)"]
        [--variants book "iters x1.5:iters=2700" ...] [--curves]

Writes ``benchmarks/results/ifn_budget.json`` (adding to, or replacing in, the runs already there): per
variant, row and seed the training seconds (as each run measured them, on its thread beside the other
run), the geometric error (plain, aligned) and photometric error on both test sets and the geometric
error over the mean face's; and per variant and row the mean and std over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import SETTINGS  # noqa: E402
from facelib.data.corpus import SyntheticCorpus  # noqa: E402

MEASURES = ("geometric_mm", "geometric_aligned_mm", "photometric_8bit")
# the settings a variant's row of the table shows
SETTING_KEYS = ("n_train", "iters", "batch", "lr", "landmark_steps", "landmark_batch", "n_real")


def parse_variant(text: str) -> tuple:
    """``"name:key=value,key=value"`` (values JSON) -> ``(name, {key: value})``; ``"book"``: no change."""
    name, _, rest = text.partition(":")
    changes = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"variant {text!r}: expected key=value, got {part!r}")
        try:
            changes[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            changes[key.strip()] = value.strip()
    return name.strip(), changes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["AlexNet"], choices=list(ifn.TABLE1_ROWS))
    ap.add_argument("--variants", nargs="+", default=["book"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the profile's)")
    ap.add_argument("--curves", action="store_true",
                    help="train with the chapters' learning-curve probe, as they do, so that their runs load from the "
                         "cache (the probe does not change a run's weights)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ifn_budget.json"))
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    base = dict(SETTINGS["inversefacenet"]["cpu"])
    for name, changes in variants:
        unknown = set(changes) - set(base) - set(ifn.TRAIN_OPTIONS) - set(ifn.BREED_OPTIONS)
        if unknown:
            raise SystemExit(f"variant {name!r}: unknown settings {sorted(unknown)}")
        if changes.get("size", base["size"]) != base["size"]:
            raise SystemExit(f"variant {name!r}: the test sets are the profile's size; size cannot change here")
    if args.seeds:
        base["seeds"] = tuple(args.seeds)
    torch.set_num_threads(2)  # the chapters' threads for everything but the side-by-side training
    model = facelib.load_model("open")
    seed = 0  # the chapters' seed parameter
    corpora = {}  # n_train -> the chapters' Sec. 5 corpus of that size
    tests = ifn.chapter_test_sets(model, base, seed)
    refs = ifn.reference_rows(model, tests)
    mean_face = {k: {m: ifn.summarize(refs["mean face"][k][m])["mean"] for m in MEASURES} for k in tests}
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {"runs": [], "summary": []}
    out.update({"what": __doc__.splitlines()[0], "profile": "cpu", "mean_face": mean_face,
                "book": {k: base[k] for k in SETTING_KEYS + ("seeds",)}})
    for name, changes in variants:
        cfg = dict(base, **changes)
        t0 = time.perf_counter()
        if cfg["n_train"] not in corpora:
            corpora[cfg["n_train"]] = SyntheticCorpus(model, cfg["n_train"], seed=seed, size=cfg["size"])
        real_x = real_lm = None
        if any(ifn.TABLE1_ROWS[r][2] for r in args.rows):  # chapter 4's corpus R, cfg["n_real"] wild faces
            real = ifn.corpus_real(model, cfg, seed)
            real_x, real_lm = real["x"].float() / 255 - 0.5, real["landmarks"]
        res = ifn.train_rows(model, cfg, args.rows, corpora[cfg["n_train"]], tests, real_x=real_x,
                             real_landmarks=real_lm, curves=args.curves)
        for row, runs in res.items():
            recs = []
            for s, r in runs.items():
                rec = {"variant": name, "changes": changes, "row": row, "seed": int(s), "curves": bool(args.curves),
                       "train_s": round(r["info"]["train_s"], 1), "iters": r["info"]["iters"],
                       "cached": bool(r["info"]["cached"])}
                for k in tests:
                    rec[k] = {m: round(ifn.summarize(r[k][m])["mean"], 4) for m in MEASURES}
                    rec[k]["over_mean_face"] = round(rec[k]["geometric_mm"] / mean_face[k]["geometric_mm"], 4)
                recs.append(rec)
                print(f"{name:28s} {row:30s} seed {s}: synthetic {rec['synthetic']['over_mean_face']:.3f}, "
                      f"wild {rec['wild']['over_mean_face']:.3f} of the mean face; {rec['train_s']:.0f} s"
                      + (" (cached)" if rec["cached"] else ""), flush=True)
            out["runs"] = [x for x in out["runs"] if (x["variant"], x["row"]) != (name, row)] + recs
            summ = {"variant": name, "changes": changes, "row": row, "seeds": [r["seed"] for r in recs],
                    "settings": {k: cfg[k] for k in SETTING_KEYS + tuple(k for k in ifn.BREED_OPTIONS if cfg.get(k))},
                    "train_s": round(float(np.mean([r["train_s"] for r in recs])), 1)}
            for k in tests:
                v = np.array([r[k]["over_mean_face"] for r in recs])
                summ[k] = {"over_mean_face": {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4)},
                           "geometric_mm": round(float(np.mean([r[k]["geometric_mm"] for r in recs])), 4)}
            out["summary"] = [x for x in out["summary"] if (x["variant"], x["row"]) != (name, row)] + [summ]
            print(f"== {name}, {row}: synthetic {summ['synthetic']['over_mean_face']}, wild "
                  f"{summ['wild']['over_mean_face']}, {summ['train_s']:.0f} s per run", flush=True)
        print(f"variant {name}: {time.perf_counter() - t0:.0f} s")
        out["environment"] = repro.environment()
        atomic_write_bytes(path, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", path)


if __name__ == "__main__":
    main()
