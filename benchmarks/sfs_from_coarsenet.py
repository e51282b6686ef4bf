"""Can shape from shading lower CoarseNet's depth error? The criterion's minimum from CoarseNet's depth (issue 17).

``benchmarks/sfs_criterion.py`` starts from the *true* coarse depth and asks whether the minimum of FineNet's
criterion (Eq. 14) follows the detail.  Issue 17 also asks FineNet to lower CoarseNet's depth error by 10%.
This starts from what FineNet really gets: chapter 7's CoarseNet (the saved ``cpu`` network, seed 0,
``facelib.load_network("coarsenet", profile="cpu")``; execute chapter 7 first) reads held-out detailed faces
(chapter 7's test faces, the first ``--faces``), the rendering layer draws its depth ``z0`` at ``fine_size``, and a
free depth map is moved from ``z0`` to the criterion's minimum, pixel by pixel
(:func:`facelib.coarse_fine.sfs.criterion_minimum`, L-BFGS, 300 iterations), for several weights.  No network
can do better than the criterion asks, so the depth error of these minima against CoarseNet's says what a
FineNet trained with the criterion could gain, and the correlation of the depth each minimum adds with the true
detail (``detail_r``, :func:`facelib.coarse_fine.detail_correlation`, on the pixels where CoarseNet's depth, the
ground truth and the fit of the true coefficients are all defined) how much of the detail it could find there.
``highpass_rows``: the same with E_sh on the shading residual less its blur (``sfs_loss(..., highpass_px=)``, not in
the paper), in case the smooth error CoarseNet's coarse shape leaves is what hides the detail.  Writes ``benchmarks/results/sfs_from_coarsenet.json``.

    .venv/bin/python benchmarks/sfs_from_coarsenet.py [--faces 16] [--steps 300]
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
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import (CoarseSpace, depth_errors, detail_correlation, finenet_data, sfs, sfs_mask,  # noqa: E402
                                 true_fit)
from facelib.model.detail import detail_displacement  # noqa: E402

WEIGHTS = [  # name, (lambda_sh, lambda_f, lambda_sm), sfs_loss keywords
    ("the library's criterion (the paper's lambdas)", (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM), {}),
    ("lambda_sm = 0.1", (1.0, 5e-3, 0.1), {}),
    ("lambda_sm = 0.1, 10 alternations", (1.0, 5e-3, 0.1), dict(alternations=10)),
    ("lambda_f = 0.5, lambda_sm = 0.1", (1.0, 0.5, 0.1), {}),
    ("lambda_f = 5, lambda_sm = 0.1", (1.0, 5.0, 0.1), {}),
]
HIGHPASS = [  # not in the paper: E_sh on the residual less its blur (sfs.high_pass), so that the smooth shading
    # error CoarseNet's coarse shape leaves does not count, only errors finer than the blur (the detail's)
    (f"E_sh high-passed ({px:g} px), {name}", lam, dict(highpass_px=px))
    for px in (1.5, 3.0) for name, lam in (("the paper's lambdas", (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM)),
                                            ("lambda_f = 5, lambda_sm = 0.1", (1.0, 5.0, 0.1)))
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="L-BFGS iterations")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sfs_from_coarsenet.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    cfg = settings("07_coarse_fine", "cpu")
    model = facelib.load_model("open")
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    coarse = facelib.load_network("coarsenet", profile="cpu", seed=cfg["seeds"][0]).net
    NF = cfg["fine_size"]
    pool = detail_displacement(model, cfg["detail_pool"], seed=cfg["seeds"][0] + 1000, amplitude_mm=cfg["detail_mm"])
    test = finenet_data(space, coarse, args.faces, cfg["eval_batch"], cfg["coarse_size"], cfg["iterations"],
                        cfg["seeds"][0] + 20_000, detail_pool=pool, sizes=(NF,))
    d = {k: test[(k, NF)] for k in ("image", "z0", "mask", "mu_T", "A_T", "pixel_mm", "depth_gt", "mask_gt")}
    masks = {"coarse": d["mask"]}
    first = depth_errors({"CoarseNet": d["z0"]}, d["depth_gt"], d["mask_gt"], masks)[0]
    z_fit, _, both = true_fit(space, test, NF)
    rows = [dict(name="CoarseNet (the start)", depth_mean_mm=round(first["depth_mean_mm"], 3),
                 depth_p90_mm=round(first["depth_p90_mm"], 3))]
    print(json.dumps(rows[0]), flush=True)
    hp_rows = []
    for name, lam, kw in WEIGHTS + HIGHPASS:
        t0 = time.perf_counter()
        z = sfs.criterion_minimum(d["z0"], d["image"][:, 0], d["mu_T"], d["A_T"], sfs_mask(d["mask"]), d["pixel_mm"],
                                  lam, args.steps, **kw)
        e = depth_errors({name: z}, d["depth_gt"], d["mask_gt"], masks)[0]
        out = hp_rows if "highpass_px" in kw else rows
        out.append(dict(name=f"minimum of the criterion, {name}", lambdas=list(lam), **kw,
                         depth_mean_mm=round(e["depth_mean_mm"], 3), depth_p90_mm=round(e["depth_p90_mm"], 3),
                         change=round(e["depth_mean_mm"] / first["depth_mean_mm"] - 1.0, 4),
                         detail_r=round(detail_correlation(z, d["z0"], d["depth_gt"], z_fit, both), 4),
                         seconds=round(time.perf_counter() - t0, 1)))
        print(json.dumps(out[-1]), flush=True)
    result = dict(faces=args.faces, size=NF, steps=args.steps, coarsenet="cpu, seed %d" % cfg["seeds"][0], rows=rows,
                  highpass_rows=hp_rows)
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
