"""Can FineNet learn the detail? Its unsupervised criterion against a supervised twin (issue 17).

``benchmarks/sfs_criterion.py`` asks what the criterion's minimum is; this asks whether the network
finds it.  FineNet (chapter 7's ``cpu`` settings: width, head, batch, learning rate, 128 training faces,
48 held-out ones) is trained on detailed faces whose coarse depth is the **true** one (the fit of the
true coefficients), so CoarseNet's errors play no part, with

* the library's criterion (:func:`facelib.coarse_fine.sfs.sfs_loss`, the paper's lambdas);
* the criterion as the paper writes it (``sfs.PAPER``);
* the library's criterion with a larger fidelity weight, ``library, lambda_f=X`` (``--lambda-f``):
  ``benchmarks/sfs_criterion.py`` found the per-face minimum closest to the true detail at
  ``lambda_f = 5`` in our units (mm^2 against grey levels^2), where the paper's ``5e-3`` lets the
  depth bend by millimetres;
* ``distilled, lambda_f=X, ...`` (``--variant``), not the paper's method but as unsupervised: the
  criterion is first minimised per training face, pixel by pixel (:func:`facelib.coarse_fine.sfs.criterion_minimum`,
  no ground truth), and the network is trained on the squared difference to those depth maps.  If the
  per-face minima follow the detail in part, a network fitted to them averages their noise over faces;
* a diagnostic that is not the paper's method: the same network trained *supervised*, on the squared
  difference between the depth it adds and the true detail.  If this one learns and the criterion
  does not, the network can represent the detail and the criterion's gradient does not lead it there.

Every ``--every`` steps: the correlation of the added depth with the true detail over the held-out face
pixels, and the mean depth error.  Writes ``benchmarks/results/finenet_training.json``.

``--size``: the faces' pixels (chapter 7's ``fine_size`` by default); another size writes
``finenet_training_<size>.json``, since ``benchmarks/sfs_criterion.py`` finds the criterion's minimum closer
to the detail at twice the size.  ``--start coarsenet``: FineNet's input depth is what chapter 7 gives it,
the depth of the saved CoarseNet's estimate (the chapter's training and held-out faces; ``detail_correlation``
against the fit of the true coefficients, as the chapter's); writes ``finenet_training_coarsenet[_<size>].json``.

    .venv/bin/python benchmarks/finenet_training.py [--steps 750] [--every 250] [--runs library,paper,supervised]
        [--lambda-f 5 ...] [--variant "library, lambda_f=5, lambda_sm=0.1, alternations=10" ...] [--size 192]
        [--start coarsenet]
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
from facelib.coarse_fine import sfs  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import (CoarseSpace, FineNet, align_depth, depth_errors, detail_correlation,  # noqa: E402
                                 finenet_data, finenet_refine, make_faces, rendering_layer, sfs_mask, texture_maps,
                                 true_fit)
from facelib.model.detail import detail_displacement  # noqa: E402

LAM = (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM)


def faces(space, n: int, seed: int, size: int, pool, batch: int = 16) -> dict:
    """Detailed faces at ``size`` pixels with the true coarse depth as ``z0`` (and as ``z_fit``, the fit of
    the true coefficients) and the true detail."""
    keys = ("image", "z0", "mask", "mu_T", "A_T", "pixel_mm", "depth_gt", "mask_gt", "detail", "both")
    out = {k: [] for k in keys}
    g = torch.Generator().manual_seed(seed)
    for s in range(0, n, batch):
        r_gt, view, _, _ = make_faces(space, min(batch, n - s), g, size, detail_pool=pool, distance=None, head=False)
        with torch.no_grad():
            z0, mask, frags = rendering_layer(space, r_gt, size)
            mu, A = texture_maps(space, frags)
        both = mask & view.mask
        detail = torch.where(both, view.depth - align_depth(z0, view.depth, both), torch.zeros_like(z0))
        for k, v in zip(keys, (view.image, z0, mask, mu, A, space.pixel_mm(r_gt, size), view.depth, view.mask,
                               detail, both)):
            out[k].append(v)
    out = {k: torch.cat(v) for k, v in out.items()}
    return dict(out, z_fit=out["z0"])


def coarsenet_faces(space, coarse, cfg: dict, n: int, seed: int, size: int, pool) -> dict:
    """The same keys as :func:`faces`, but ``z0`` is what FineNet really gets in chapter 7: the depth of
    CoarseNet's estimate after its passes (:func:`facelib.coarse_fine.finenet_data`, the chapter's faces for
    the chapter's seeds); ``z_fit`` is the fit of the true coefficients, ``detail`` the true detail (the ground
    truth less the aligned fit, what :func:`facelib.coarse_fine.detail_correlation` compares with: the supervised
    twin learns to add it, not CoarseNet's error) and ``both`` where ``z0``, the ground truth and the fit are all
    defined."""
    d = finenet_data(space, coarse, n, cfg["eval_batch"], cfg["coarse_size"], cfg["iterations"], seed,
                     detail_pool=pool, sizes=(size,))
    z_fit, _, both = true_fit(space, d, size)
    out = {k: d[(k, size)] for k in ("image", "z0", "mask", "mu_T", "A_T", "pixel_mm", "depth_gt", "mask_gt")}
    out["detail"] = torch.where(both, out["depth_gt"] - align_depth(z_fit, out["depth_gt"], both),
                                torch.zeros_like(out["z0"]))
    return dict(out, z_fit=z_fit, both=both)


def _criterion(how: str) -> tuple:
    """``((lambda_sh, lambda_f, lambda_sm), sfs_loss keywords)`` of a run named ``"library"``, ``"paper"`` or
    ``"library, lambda_f=X[, lambda_sm=Y][, alternations=N]"``."""
    lam, kw = list(LAM), ({} if how != "paper" else dict(sfs.PAPER))
    for part in how.split(",")[1:]:
        key, value = (t.strip() for t in part.split("="))
        if key == "lambda_f":
            lam[1] = float(value)
        elif key == "lambda_sm":
            lam[2] = float(value)
        elif key == "alternations":
            kw["alternations"] = int(value)
        else:
            raise ValueError(f"unknown setting {key!r} in run {how!r}")
    return tuple(lam), kw


def train(fine: FineNet, data: dict, how: str, steps: int, batch: int, lr: float, seed: int, every: int, test: dict):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(fine.parameters(), lr=lr)
    n = data["image"].shape[0]
    curve, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        fine.train()
        i = torch.randint(0, n, (batch,), generator=g)
        z_hat = fine.refine(data["image"][i], data["z0"][i], data["mask"][i])
        if how == "supervised":
            m = data["both"][i]
            loss = ((z_hat - data["z0"][i] - data["detail"][i]) ** 2)[m].mean()
        elif how.startswith("distilled"):
            loss = ((z_hat - data["z_min"][i]) ** 2)[data["mask"][i]].mean()
        else:
            lam, kw = _criterion(how)
            loss = sfs.sfs_loss(z_hat, data["z0"][i], data["image"][i][:, 0], data["mu_T"][i], data["A_T"][i],
                                sfs_mask(data["mask"][i]), data["pixel_mm"][i], *lam, **kw)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            zf = finenet_refine(fine, {(k, 0): v for k, v in test.items()}, 0)
            b = test["both"]
            r = detail_correlation(zf, test["z0"], test["depth_gt"], test["z_fit"], b)
            e = depth_errors({"fine": zf}, test["depth_gt"], test["mask_gt"], {"coarse": test["mask"]})[0]
            curve.append(dict(step=step, seconds=round(time.perf_counter() - t0, 1), detail_correlation=round(r, 3),
                              depth_mean_mm=round(e["depth_mean_mm"], 3)))
            print(how, json.dumps(curve[-1]), flush=True)
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=750)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="library,paper,supervised",
                    help="comma-separated: library, paper, supervised")
    ap.add_argument("--lambda-f", type=float, action="append", default=[],
                    help="also train the library's criterion with this lambda_f (repeatable)")
    ap.add_argument("--variant", action="append", default=[],
                    help='also train "library, lambda_f=X, lambda_sm=Y, alternations=N" (repeatable)')
    ap.add_argument("--size", type=int, default=None, help="pixels of the faces (default: chapter 7's fine_size)")
    ap.add_argument("--start", choices=("truth", "coarsenet"), default="truth",
                    help="FineNet's input depth: the fit of the true coefficients (default) or chapter 7's saved "
                         "CoarseNet (cpu profile, first seed; execute chapter 7 first), as the chapter trains it")
    ap.add_argument("--out", default=None,
                    help="default: benchmarks/results/finenet_training[_coarsenet][_<size>].json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    cfg = settings("07_coarse_fine", "cpu")
    model = facelib.load_model("open")
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    NF = args.size or cfg["fine_size"]
    if not 32 <= NF <= 512:
        ap.error(f"--size must be in [32, 512]; got {NF}")
    if args.out is None:
        name = ("finenet_training" + ("" if args.start == "truth" else "_coarsenet")
                + ("" if NF == cfg["fine_size"] else f"_{NF}") + ".json")
        args.out = str(Path(__file__).resolve().parent / "results" / name)
    pool = detail_displacement(model, cfg["detail_pool"], seed=args.seed + 1000, amplitude_mm=cfg["detail_mm"])
    if args.start == "truth":
        train_set = faces(space, cfg["fine_faces"], args.seed + 30_000, NF, pool)
        test = faces(space, cfg["test_faces"], args.seed + 20_000, NF, pool)
    else:
        net = facelib.load_network("coarsenet", profile="cpu", seed=cfg["seeds"][0]).net
        train_set = coarsenet_faces(space, net, cfg, cfg["fine_faces"], args.seed + 30_000, NF, pool)
        test = coarsenet_faces(space, net, cfg, cfg["test_faces"], args.seed + 20_000, NF, pool)
    coarse = depth_errors({"coarse": test["z0"]}, test["depth_gt"], test["mask_gt"], {"coarse": test["mask"]})[0]
    result = dict(size=NF, steps=args.steps, batch=cfg["fine_batch"], lr=cfg["fine_lr"], width=cfg["fine_width"],
                  train_faces=cfg["fine_faces"], test_faces=cfg["test_faces"],
                  coarse_depth_mean_mm=round(coarse["depth_mean_mm"], 3), seed=args.seed, start=args.start, runs={})
    if Path(args.out).exists():  # keep the runs of earlier calls with the same settings
        old = json.loads(Path(args.out).read_text())
        if all(old.get(k) == result[k] for k in ("size", "steps", "batch", "lr", "width", "train_faces", "test_faces")) \
                and old.get("seed", 0) == args.seed and old.get("start", "truth") == args.start:
            result["runs"] = old.get("runs", {})
            for k, v in old.items():  # notes and other runs' extras (the longer run, the distilled targets)
                result.setdefault(k, v)
    hows = [h.strip() for h in args.runs.split(",") if h.strip()] + [f"library, lambda_f={x:g}" for x in args.lambda_f]
    hows += [", ".join(t.strip() for t in v.split(",")) for v in args.variant]
    for how in hows:
        if how not in ("library", "paper", "supervised") and not how.startswith(("library, ", "distilled")):
            ap.error(f"unknown run {how!r}")
        try:
            _criterion(how)
        except ValueError as e:
            ap.error(str(e))
    for how in hows:
        if how.startswith("distilled"):  # the criterion's per-face minima: the targets, no ground truth
            lam, kw = _criterion(how)
            t0 = time.perf_counter()
            train_set["z_min"] = torch.cat([
                sfs.criterion_minimum(train_set["z0"][s], train_set["image"][s][:, 0], train_set["mu_T"][s],
                                      train_set["A_T"][s], sfs_mask(train_set["mask"][s]), train_set["pixel_mm"][s],
                                      lam, **kw)
                for s in (slice(a, a + 16) for a in range(0, train_set["z0"].shape[0], 16))])
            b = train_set["both"]
            r = detail_correlation(train_set["z_min"], train_set["z0"], train_set["depth_gt"], train_set["z_fit"], b)
            print(how, f"per-face minima of {train_set['z0'].shape[0]} training faces in "
                  f"{time.perf_counter() - t0:.0f} s; r with the true detail {r:.3f}", flush=True)
            result.setdefault("distilled_targets", {})[how] = dict(
                detail_correlation=round(r, 3), seconds=round(time.perf_counter() - t0, 1))
        torch.manual_seed(args.seed)
        fine = FineNet(width=cfg["fine_width"], head=cfg["fine_head"])
        result["runs"][how] = train(fine, train_set, how, args.steps, cfg["fine_batch"], cfg["fine_lr"],
                                    args.seed + 40, args.every, test)
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
