"""Table 1's rows with and without the crop's landmarks as a second input (issue 15).

``benchmarks/landmark_regressor.py`` found that an MLP reading only the 68 detector landmarks (box
normalised, as the Sec. 6.1 crop is) beats every image network of chapters 3-4 on the wild faces.  This
trains the chapters' own rows (the ``cpu`` profile of :data:`facelib.book.SETTINGS`, the chapters' Sec. 5
corpus, test sets and seeds) in the variants of :data:`VARIANTS`: ``off``, the crop alone as the paper
has it; ``pretrained`` (:mod:`facelib.nets`: a two-layer MLP on the 136 coordinates
whose features join the image features before the fully connected layers and whose head adds a
read-out to the output, pre-trained on landmarks alone by :func:`facelib.inversefacenet.pretrain_landmarks`
on faces of the Sec. 5 prior, then trained with the rest; on the corpus the landmarks carry the wild set's
detector noise, :func:`facelib.data.corpus.landmark_input`); ``pretrained, frozen``, the branch kept as
pre-trained; ``pretrained, prior x2``, the book's setting: the branch pre-trained on faces whose shape
coefficients are drawn twice as wide (``landmark_spread``).  Runs are cached by
:func:`facelib.inversefacenet.train_row` under the same keys the chapters use, so a chapter run afterwards
loads them.  ``--foreign N`` also scores every run on N pairs of wild faces of the open and the foreign model
(:func:`facelib.eval.compare.paired_frames`, seed 950000: faces of a population no network trains on).

    FACELIB_THREADS=1 .venv/bin/python benchmarks/ifn_landmarks.py [--rows ...] [--landmarks off pretrained]
        [--foreign 64] [--out F]

Writes ``benchmarks/results/ifn_landmarks.json`` (adding to the runs already there): per row, variant
and seed the wild and synthetic test sets' geometric error (plain, aligned, NoW-style) and photometric
error, each also as a fraction of the mean face's, with the reference rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import SETTINGS  # noqa: E402
from facelib.data.corpus import SyntheticCorpus  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib.eval import compare  # noqa: E402
from facelib.networks import TrainedNetwork  # noqa: E402

MEASURES = ("geometric_mm", "geometric_aligned_mm", "now_mm", "photometric_8bit")
# off: the paper's input (the crop alone); joined: the landmark branch trained with the network from the
# start (no pre-training); pretrained: the branch pre-trained on the Sec. 5 prior; frozen: that branch kept as
# pre-trained; prior x2: pre-trained on shapes drawn twice as wide, the profiles' setting
VARIANTS = {"off": dict(landmarks=False), "joined": dict(landmarks=True, landmark_steps=0),
            "pretrained": dict(landmarks=True, landmark_freeze=False, landmark_spread=1.0),
            "pretrained, frozen": dict(landmarks=True, landmark_freeze=True, landmark_spread=1.0),
            "pretrained, prior x2": dict(landmarks=True, landmark_freeze=False, landmark_spread=2.0)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["AlexNet", "+ model-space loss, RMS units"],
                    choices=list(ifn.TABLE1_ROWS))
    ap.add_argument("--landmarks", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--profile", default="cpu", choices=["ci", "cpu"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the profile's)")
    ap.add_argument("--foreign", type=int, default=0,
                    help="also score each run on this many pairs of wild faces of the open and the foreign model "
                         "(chapter 8's kind of frames, seed 950000; NoW-style error over the open mean face's)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ifn_landmarks.json"))
    args = ap.parse_args(argv)
    threads = int(os.environ.get("FACELIB_THREADS", "2"))
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(threads)
    except ImportError:
        pass
    model = facelib.load_model("open")
    base = dict(SETTINGS["inversefacenet"][args.profile])
    if args.seeds:
        base["seeds"] = tuple(args.seeds)
    seed = 0  # the chapters' seed parameter
    corpus = SyntheticCorpus(model, base["n_train"], seed=seed, size=base["size"])
    tests = ifn.chapter_test_sets(model, base, seed, kinds=("wild", "synthetic"))
    real_x = real_lm = None
    if any(ifn.TABLE1_ROWS[r][2] for r in args.rows):  # chapter 4's corpus R
        real = ifn.corpus_real(model, base, seed)
        real_x, real_lm = real["x"].float() / 255 - 0.5, real["landmarks"]
    refs = ifn.reference_rows(model, tests)
    ref_means = {r: {k: {m: ifn.summarize(v[k][m])["mean"] for m in MEASURES} for k in tests}
                 for r, v in refs.items()}
    pairs = compare.foreign_pairs(model, args.foreign)  # None without --foreign
    out = {"what": __doc__.splitlines()[0], "profile": args.profile, "threads": threads,
           "budget": {k: base[k] for k in ("size", "n_train", "iters", "batch", "lr", "n_test", "n_now")},
           "references": ref_means, "runs": []}
    path = Path(args.out)
    if path.exists():  # add to (or replace in) an earlier run's file
        old = json.loads(path.read_text())
        keep = {(r["row"], r["landmarks"], r["seed"]) for r in old.get("runs", [])}
        out["runs"] = [r for r in old.get("runs", []) if (r["row"], r["landmarks"], r["seed"]) in keep]
    for variant in args.landmarks:
        cfg = dict(base, **VARIANTS[variant])
        t0 = time.perf_counter()
        res = ifn.train_rows(model, cfg, args.rows, corpus, tests, real_x=real_x, real_landmarks=real_lm)
        for row, runs in res.items():
            for s, r in runs.items():
                rec = {"row": row, "landmarks": variant, "seed": int(s), "train_s": round(r["info"]["train_s"], 1),
                       "iters": r["info"]["iters"]}
                for k in tests:
                    rec[k] = {}
                    for m in MEASURES:
                        v = ifn.summarize(r[k][m])["mean"]
                        rec[k][m] = round(v, 4)
                        rec[k][m + "_ratio"] = round(v / ref_means["mean face"][k][m], 4)
                if pairs is not None:
                    t = TrainedNetwork("inversefacenet", "inversefacenet", r["net"].eval(), model, cfg["size"], {})
                    rec.update({f"{kind}_pairs": v for kind, v in compare.paired_scores(t, pairs).items()})
                out["runs"] = [x for x in out["runs"] if (x["row"], x["landmarks"], x["seed"]) != (row, variant, s)]
                out["runs"].append(rec)
                print(f"{row:32s} {variant:18s} seed {s}: wild {rec['wild']['geometric_mm']:.3f} mm "
                      f"({rec['wild']['geometric_mm_ratio']:.3f}), "
                      f"aligned {rec['wild']['geometric_aligned_mm_ratio']:.3f}, "
                      f"NoW {rec['wild']['now_mm_ratio']:.3f}; synthetic {rec['synthetic']['geometric_mm_ratio']:.3f}; "
                      f"{rec['train_s']:.0f} s"
                      + "".join(f"; {k} pairs {rec[k + '_pairs']['over_mean_face']:.3f}" for k in ("open", "foreign")
                                if k + "_pairs" in rec), flush=True)
        print(f"variant {variant}: {time.perf_counter() - t0:.0f} s")
    out["environment"] = repro.environment()
    atomic_write_bytes(path, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", path)


if __name__ == "__main__":
    main()
