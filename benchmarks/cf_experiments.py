"""What holds CoarseNet back at our scale: one training change at a time (issue 17).

Each variant trains one CoarseNet (GMSE, the ``cpu`` profile's network and input size) with some
settings changed, iterates it on 128 held-out faces and appends a row to
``benchmarks/results/cf_experiments.json`` (the table chapter 7 quotes): the geometric error after
each pass, raw (RMS vertex distance, Eq. 4) and similarity-aligned, the pose MSE, and the mean-face
reference of the same faces.

    .venv/bin/python benchmarks/cf_experiments.py VARIANT [VARIANT ...]   # see VARIANTS below
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
import facelib.coarse_fine as cf  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402

# before issue 17: the exact feedback mask (the paper) and Eq. 3 states only
BASE = dict(steps=1500, width=8, lr=1e-3, mask_dilate=0.0, p_exact=0.0)
VARIANTS = {
    "paper": {},
    "start_states": dict(p_exact=0.5),
    "start_states+dilate": dict(p_exact=0.5, mask_dilate=4 / 48),
    "start_states+no_mask": dict(p_exact=0.5, mask_dilate=None),
    "only_start+no_mask": dict(p_exact=1.0, mask_dilate=None),
    "no_mask": dict(mask_dilate=None),
    "start_states+no_mask+width16": dict(p_exact=0.5, mask_dilate=None, width=16),
    "start_states+no_mask+3000": dict(p_exact=0.5, mask_dilate=None, steps=3000),
}
OUT = Path(__file__).resolve().parent / "results" / "cf_experiments.json"


def run(name: str, over: dict, cfg: dict, space, iterations: int, test) -> dict:
    s = dict(BASE, **over)
    torch.manual_seed(0)
    net = cf.CoarseNet(space.n_params, width=s["width"], blocks=cfg["coarse_blocks"], mask_dilate=s["mask_dilate"])
    N = cfg["coarse_size"]
    t0 = time.time()
    cf.train_coarsenet(space, net, s["steps"], cfg["coarse_batch"], N, seed=10, lr=s["lr"], progress=False,
                       p_exact=s["p_exact"])
    seconds = time.time() - t0
    r_gt, image = test
    a, p = space.split(r_gt)
    rows = []
    for t, r in enumerate(cf.coarse_iterate(space, net, image, iterations, N)):
        a_t, p_t = space.split(r)
        e = cf.pooled_rms(cf.geometry_errors(space, a_t, a))
        rows.append(dict(iteration=t, **{k: round(v, 3) for k, v in e.items()},
                         pose_mse=round(float((p_t - p).square().mean()), 4)))
    return dict(variant=name, settings=s, train_seconds=round(seconds, 1), iterations=rows,
                threads=torch.get_num_threads())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help=f"one of {list(VARIANTS)}")
    args = ap.parse_args(argv)
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    cfg = settings("07_coarse_fine", "cpu")
    model = facelib.load_model("open")
    space = cf.CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    r_gt, view, _, _ = cf.make_faces(space, 128, 20_000, cfg["coarse_size"])
    refs = {k: {m: round(v, 3) for m, v in cf.pooled_rms(e).items()}
            for k, e in cf.geometry_references(space, space.split(r_gt)[0]).items()}
    for name in args.variants:
        row = run(name, VARIANTS[name], cfg, space, cfg["iterations"], (r_gt, view.image))
        row["references"] = refs
        table = json.loads(OUT.read_text()) if OUT.exists() else []
        table = [r for r in table if r["variant"] != name] + [row]
        atomic_write_bytes(OUT, json.dumps(table, indent=1).encode())  # a temp name of its own, renamed
        it = row["iterations"]
        print(f"{name:32s} {row['train_seconds']:6.0f} s  rmse " + " ".join(f"{r['rmse_mm']:.2f}" for r in it)
              + f"  aligned {it[1]['aligned_mm']:.2f}  (mean face {refs['mean face']['rmse_mm']:.2f} / "
              f"{refs['mean face']['aligned_mm']:.2f})")


if __name__ == "__main__":
    main()
