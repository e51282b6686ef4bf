"""What breeding's rounds do to the network's estimates of R, per seed (issue 15, chapter 3 point 8).

Loads (or trains, if they are not in the cache) chapter 4's bred row for each training seed with the ``cpu``
profile's settings, or with ``--n-train`` / ``--landmark-steps`` changed, exactly as the chapters train it (two
runs at a time is not needed to load; a missing run trains on one thread), and scores the estimates that start
each round and the final one (``info["history"]["theta_r"]``) against R's true parameters: the mean absolute
error of the angles (degrees), of the shape and of the expression coefficients (prior units), the mean and spread
of shape coefficient 1 (the head size, which no crop shows) and the spread of the estimated expressions against
the true ones.

    FACELIB_CACHE=... .venv/bin/python benchmarks/ifn_breed_drift.py [--n-train 24576] [--landmark-steps 8000]
        [--breed-keep 0.5] [--label NAME]

Adds ``{label: {seed: [per round]}}`` to ``benchmarks/results/ifn_breed_drift.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import SETTINGS  # noqa: E402
from facelib.data.corpus import SyntheticCorpus  # noqa: E402
from facelib.model.params import ParamLayout  # noqa: E402

ROW = "+ breeding (= InverseFaceNet)"


def round_scores(layout, theta: torch.Tensor, truth: dict) -> dict:
    """Errors of the estimates ``theta (n, m)`` of R's faces against ``truth`` (``layout.unpack`` of the true ones)."""
    p = layout.unpack(theta)
    return {"rotation_deg": round(float(torch.rad2deg((p["rotation"] - truth["rotation"]).abs().mean())), 3),
            "shape_abs": round(float((p["shape"] - truth["shape"]).abs().mean()), 4),
            "head_size_mean": round(float(p["shape"][:, 0].mean()), 3),
            "head_size_std": round(float(p["shape"][:, 0].std()), 3),
            "expression_abs": round(float((p["expression"] - truth["expression"]).abs().mean()), 4),
            "expression_std": round(float(p["expression"].std(0).mean()), 3),
            "expression_std_true": round(float(truth["expression"].std(0).mean()), 3)}


def main(argv=None):
    base = SETTINGS["inversefacenet"]["cpu"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=base["n_train"])
    ap.add_argument("--landmark-steps", type=int, default=base["landmark_steps"])
    ap.add_argument("--breed-keep", type=float, default=0.0,
                    help="share of Sec. 5 faces beside the children in each round (breed(keep=); 0: the paper's rounds)")
    ap.add_argument("--label", default=None, help="the record's name (default: the two settings)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ifn_breed_drift.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = dict(base, n_train=args.n_train, landmark_steps=args.landmark_steps)
    if args.breed_keep:
        cfg["breed_keep"] = args.breed_keep
    label = args.label or (f"n_train {args.n_train}, landmark_steps {args.landmark_steps}"
                           + (f", breed_keep {args.breed_keep}" if args.breed_keep else ""))
    model = facelib.load_model("open")
    layout = ParamLayout.from_model(model)
    corpus = SyntheticCorpus(model, cfg["n_train"], seed=0, size=cfg["size"], progress=False)
    tests = ifn.chapter_test_sets(model, cfg, seed=0)  # chapter 4's (seed parameter 0)
    real = ifn.corpus_real(model, cfg, seed=0)
    probe = ifn.curve_eval(model, tests, cfg["n_curve"])  # the chapters' probe, so their runs load from the cache
    key = [cfg["n_curve"], {k: [t["kind"], t["seed"], t["size"]] for k, t in tests.items()}]
    truth = layout.unpack(real["theta"])
    record = {}
    for seed in cfg["seeds"]:
        net = ifn.make_regressor(model, cfg, "alexnet", seed)
        net, info = ifn.train_row(model, cfg, ROW, corpus, real_x=real["x"].float() / 255 - 0.5, seed=seed,
                                  progress=False, eval_fn=probe, curve_key=key, real_landmarks=real["landmarks"],
                                  net=net, threads=1)
        record[str(seed)] = [round_scores(layout, th, truth) for th in info["history"]["theta_r"]]
        for k, r in enumerate(record[str(seed)]):
            print(f"{label}, seed {seed}, round {k}: " + ", ".join(f"{n} {v}" for n, v in r.items()), flush=True)
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {"what": __doc__.splitlines()[0], "runs": {}}
    out["runs"][label] = {"settings": dict({"n_train": args.n_train, "landmark_steps": args.landmark_steps},
                                                **({"breed_keep": args.breed_keep} if args.breed_keep else {})), "seeds": record}
    atomic_write_bytes(path, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", path)


if __name__ == "__main__":
    main()
