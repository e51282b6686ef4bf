"""What FineNet's shape-from-shading criterion asks for (issue 17): minimise it directly, per pixel.

FineNet is trained to minimise Eq. 14 (:func:`facelib.coarse_fine.sfs.sfs_loss`).  Before asking whether a network
learns to, this asks what the *minimum* of the criterion is: on detailed synthetic faces of chapter 7,
starting from the true coarse depth (the fit of the true coefficients, no detail), a free depth map is
moved by L-BFGS (300 iterations; ``--optimizer adam`` for the earlier 300 Adam steps of 0.05 mm, which stop
short of the minimum) to minimise the criterion, and the depth it adds is compared with the true detail
(ground truth minus that coarse depth): the correlation over the face pixels and the mean depth error.
A criterion whose minimum does not follow the detail cannot teach a network to find it; the loss at the
true depth against the loss at the minimum says how far the truth is from being the minimum.

Variants: the criterion as the paper writes it (``sfs.PAPER``), then the three choices of
:mod:`facelib.coarse_fine.sfs` one at a time, other fidelity and smoothness weights, more light/albedo
alternations, an upper bound with the exact albedo (and the light solved with it), and the ideal case: an
image drawn by the criterion's own model (the true albedo and light on the normals of the true depth map,
so E_sh is 0 at the truth), where only the regularisers and the ill-posedness of shape from shading keep
the minimum from the truth.  Writes ``benchmarks/results/sfs_criterion.json``.

    .venv/bin/python benchmarks/sfs_criterion.py [--sizes 96 192] [--faces 8] [--steps 300] [--optimizer lbfgs]
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
from facelib.coarse_fine import (CoarseSpace, align_depth, detail_correlation, make_faces,  # noqa: E402
                                 rendering_layer, texture_maps)
from facelib.model.detail import detail_displacement  # noqa: E402
from facelib.render.raster import interpolate  # noqa: E402
from facelib.render.shading import shade  # noqa: E402

LITERAL = (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM)
VARIANTS = [  # name, sfs_loss keywords (or "exact" / "self"), (lambda_sh, lambda_f, lambda_sm)
    ("Eq. 14 as written: first-order light, one solve, all face pixels", dict(sfs.PAPER), LITERAL),
    ("+ E_sh on smooth pixels only", dict(sfs.PAPER, max_laplacian_px=sfs.MAX_LAPLACIAN_PX), LITERAL),
    ("+ second-order light", dict(sfs.PAPER, max_laplacian_px=sfs.MAX_LAPLACIAN_PX, order=2), LITERAL),
    (f"+ {sfs.ALTERNATIONS} light/albedo alternations (the library's criterion)", {}, LITERAL),
    ("the library's criterion, lambda_f = 0.5", {}, (1.0, 0.5, 1.0)),
    ("the library's criterion, lambda_f = 5", {}, (1.0, 5.0, 1.0)),
    ("Eq. 14 as written, lambda_f = 5", dict(sfs.PAPER), (1.0, 5.0, 1.0)),
    ("the library's criterion, lambda_f = 5, lambda_sm = 0.1", {}, (1.0, 5.0, 0.1)),
    ("the same with 10 light/albedo alternations", dict(alternations=10), (1.0, 5.0, 0.1)),
    ("exact albedo, light solved with it (upper bound)", "exact", (1.0, 0.5, 1.0)),
    ("exact albedo and light, lambda_sm = 0.1", "exact", (1.0, 0.5, 0.1)),
    ("the criterion's own image formation (E_sh = 0 at the truth)", "self", (1.0, 0.5, 1.0)),
    ("the criterion's own image formation, lambda_sm = 0.1", "self", (1.0, 0.5, 0.1)),
]


def _faces(model, space, cfg, size: int, n: int, seed: int) -> dict:
    pool = detail_displacement(model, cfg["detail_pool"], seed=1000, amplitude_mm=cfg["detail_mm"])
    r_gt, view, _, app = make_faces(space, n, seed, size, detail_pool=pool, distance=None, head=False)
    with torch.no_grad():
        z0, mask0, frags = rendering_layer(space, r_gt, size)
        mu, A = texture_maps(space, frags)
        theta_r = app["theta_r"]
        albedo_v = space.grey_mean + theta_r @ space.grey_basis[:theta_r.shape[1]]
        albedo = interpolate(albedo_v[..., None].contiguous(), frags, space.faces)[..., 0, 0]
    pixel_mm = space.pixel_mm(r_gt, size)
    with torch.no_grad():  # the image the criterion's own model draws: normals of the true depth map, true light
        n, _ = sfs.depth_normals(torch.where(view.mask, view.depth, z0), pixel_mm)
        own = shade(albedo[..., None].expand(-1, -1, -1, 3).contiguous(), n, app["gamma"])[..., 0].clamp(0.0, 1.0)
    return dict(z0=z0, mask=sfs.interior(mask0), mu=mu, A=A, albedo=albedo, image=view.image[:, 0], gamma=app["gamma"],
                depth_gt=view.depth, mask_gt=view.mask, pixel_mm=pixel_mm, own_image=own)


def _minimise(d: dict, crit, lambdas, steps: int, lr: float, optimizer: str = "lbfgs"):
    """Minimise the criterion over a free depth map from ``z0`` (L-BFGS with a strong-Wolfe line search,
    ``steps`` iterations; or ``steps`` Adam steps of ``lr`` mm); returns the depth and the criterion's
    E_sh at the start, the true depth and the minimum, and the whole loss at the true depth and the minimum."""
    z0 = d["z0"]
    I = d["own_image"] if crit == "self" else d["image"]
    if crit in ("exact", "self"):  # E_sh with the true albedo; the (second-order) light solved with it on the true depth
        with torch.no_grad():
            sh = sfs.smooth_pixels(z0, d["pixel_mm"], d["mask"], sfs.MAX_LAPLACIAN_PX)
            n_gt, v_gt = sfs.depth_normals(torch.where(d["mask_gt"], d["depth_gt"], z0), d["pixel_mm"], sh)
            rho = d["albedo"] * sfs.INTENSITY_UNITS
            l = sfs.solve_lighting(I * sfs.INTENSITY_UNITS, rho, n_gt, v_gt & d["mask_gt"], order=2)

        def loss_fn(z):
            E_sh = sfs.e_sh(z, I * sfs.INTENSITY_UNITS, rho, l, d["pixel_mm"], sh)
            E_f, E_sm = sfs.e_f(z, z0, d["mask"]), sfs.e_sm(z, d["mask"])
            return dict(loss=lambdas[0] * E_sh + lambdas[1] * E_f + lambdas[2] * E_sm, E_sh=E_sh)
    else:
        def loss_fn(z):
            return sfs.sfs_loss(z, z0, I, d["mu"], d["A"], d["mask"], d["pixel_mm"], *lambdas, **crit)
    with torch.no_grad():
        start = loss_fn(z0)
        at_gt = loss_fn(torch.where(d["mask_gt"], align_depth(d["depth_gt"], z0, d["mask_gt"] & d["mask"]), z0))
    if optimizer == "lbfgs":
        z = sfs.minimise_depth(loss_fn, z0, steps)
    else:
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            loss = loss_fn(z)["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        out = loss_fn(z)
    return z.detach(), dict(E_sh_start=float(start["E_sh"].mean()), E_sh_truth=float(at_gt["E_sh"].mean()),
                            E_sh_min=float(out["E_sh"].mean()), loss_truth=float(at_gt["loss"].mean()),
                            loss_min=float(out["loss"].mean()))


def _exact_at_truth(d: dict, cfg: dict) -> dict:
    """The per-pixel shading error (grey levels^2) of the *true* detailed depth under the exact image
    formation of the renders (true albedo, the true second-order light: :func:`facelib.render.shading.shade`),
    with normals by finite differences: its mean and median over every interior face pixel and over the
    smooth pixels only (:func:`facelib.coarse_fine.sfs.smooth_pixels`).  Where it is not 0 the normals of a depth
    map, not the light or albedo, are what disagrees with the image."""
    from facelib.render.shading import shade

    out = {}
    with torch.no_grad():
        truth = torch.where(d["mask_gt"], d["depth_gt"], d["z0"])
        I = d["image"] * sfs.INTENSITY_UNITS
        for name, m in (("all face pixels", d["mask"]),
                        ("smooth pixels", sfs.smooth_pixels(d["z0"], d["pixel_mm"], d["mask"], sfs.MAX_LAPLACIAN_PX))):
            n, valid = sfs.depth_normals(truth, d["pixel_mm"], m)
            rgb = d["albedo"][..., None].expand(-1, -1, -1, 3).contiguous()
            s = shade(rgb, n, d["gamma"])[..., 0] * sfs.INTENSITY_UNITS
            e = ((s - I) ** 2)[valid & d["mask_gt"] & (I > 0.5) & (I < 254.5)]
            out[name] = dict(mean=round(float(e.mean()), 3), median=round(float(e.median()), 4),
                             pixels=int(e.numel()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 192])
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300, help="L-BFGS iterations (or Adam steps)")
    ap.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    ap.add_argument("--lr", type=float, default=0.05, help="Adam step on the depth map, mm")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sfs_criterion.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    torch.manual_seed(0)
    cfg = settings("07_coarse_fine", "cpu")
    model = facelib.load_model("open")
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    result = {"faces": args.faces, "steps": args.steps, "optimizer": args.optimizer,
              "lr": args.lr if args.optimizer == "adam" else None, "seed": args.seed,
              "detail_mm": cfg["detail_mm"], "sizes": {}}
    for size in args.sizes:
        d = _faces(model, space, cfg, size, args.faces, args.seed)
        both = sfs.interior(d["mask"] & d["mask_gt"])
        true_detail = d["depth_gt"] - align_depth(d["z0"], d["depth_gt"], both)

        def err(z):
            return float((align_depth(z, d["depth_gt"], both) - d["depth_gt"]).abs()[both].mean())
        rows = []
        for name, crit, lambdas in VARIANTS:
            t0 = time.perf_counter()
            z, e = _minimise(d, crit, lambdas, args.steps, args.lr, args.optimizer)
            added = (z - d["z0"])[both].double()
            r = detail_correlation(z, d["z0"], d["depth_gt"], d["z0"], both)
            kind = {"exact": "exact albedo and light", "self": "own image formation"}.get(crit, "criterion") \
                if isinstance(crit, str) else "criterion"
            row = dict(name=name, kind=kind, lambdas=list(lambdas), detail_correlation=round(r, 3),
                       added_std_mm=round(float(added.std()), 3), depth_mean_mm=round(err(z), 3),
                       **{k: round(v, 2) for k, v in e.items()}, seconds=round(time.perf_counter() - t0, 1))
            print(size, json.dumps(row), flush=True)
            rows.append(row)
        result["sizes"][str(size)] = dict(pixel_mm=round(float(d["pixel_mm"].mean()), 3),
                                          true_detail_std_mm=round(float(true_detail[both].std()), 3),
                                          coarse_depth_mean_mm=round(err(d["z0"]), 3),
                                          exact_shading_error_at_truth=_exact_at_truth(d, cfg), rows=rows)
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
