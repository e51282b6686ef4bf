"""Command line: ``facelib model info|build|preview``, ``facelib render``, ``facelib bench render``,
``facelib reconstruct``."""

from __future__ import annotations

import argparse
import json
import sys


def _model_info(args) -> int:
    from . import load_model

    m = load_model(args.model)
    info = m.info()
    if args.json:
        print(json.dumps({k: info[k] for k in ("vertices", "triangles", "n_shape", "n_expression",
                                               "n_reflectance", "bbox_mm", "landmarks")}))
        return 0
    b = info["bbox_mm"]
    print(f"face model      {info['name']}")
    print(f"vertices        {info['vertices']}")
    print(f"triangles       {info['triangles']}")
    print(f"shape           {info['n_shape']} components (sigma_s)")
    print(f"expression      {info['n_expression']} components (sigma_e)")
    print(f"reflectance     {info['n_reflectance']} components (sigma_r)")
    print("bbox [mm]       x {:.1f}..{:.1f}  y {:.1f}..{:.1f}  z {:.1f}..{:.1f}  (size {:.1f} x {:.1f} x {:.1f})"
          .format(b["min"][0], b["max"][0], b["min"][1], b["max"][1], b["min"][2], b["max"][2], *b["size"]))
    print(f"landmarks       {info['landmarks']} (iBUG 68 order)" if info["landmarks"] else "landmarks       none")
    if m.name == "open":
        print(f"mouth opens     expression component {m.mouth_component + 1} (index {m.mouth_component}),"
              f" prior U(-{float(m.expression_range[m.mouth_component]):.2f}, "
              f"{float(m.expression_range[m.mouth_component]):.2f}) + bias {m.mouth_bias:.2f}")
    return 0


def _model_build(args) -> int:
    import time

    from .model.foreign import foreign_model
    from .model.open_model import cache_dir, open_model

    t = time.perf_counter()
    m = (foreign_model if args.model == "foreign" else open_model)(rebuild=True)
    print(f"built face model {args.model!r} in {time.perf_counter() - t:.1f} s: {m.n_vertices} vertices, "
          f"cached in {cache_dir()}")
    if args.out:
        m.save(args.out)
        print(f"saved to {args.out}")
    return 0


def _model_preview(args) -> int:
    from . import load_model
    from .book.plot import model_preview

    m = load_model(args.model)
    model_preview(m, args.out, show_landmarks=True)
    print(f"wrote {args.out}: mean face and +-3 sigma along the first shape, expression and "
          "reflectance components")
    return 0


def _render(args) -> int:
    import torch

    from . import load_model
    from .eval.export import save_image
    from .model.params import sample_sec5
    from .render import render

    m = load_model(args.model, device=args.device)
    theta = sample_sec5(m, 1, seed=args.seed, device=m.device)
    with torch.no_grad():
        r = render(m, theta, args.size, background=args.background)
    save_image(args.out, r.image[0].cpu())
    print(f"wrote {args.out}: a {args.size}x{args.size} face drawn from the Sec. 5 sampler (seed {args.seed})")
    return 0


def _bench_render(args) -> int:
    from .bench import bench_render

    res = bench_render(size=args.size, batch=args.batch, device=args.device, batches=args.batches,
                       model=args.model)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['faces_per_s']:.0f} faces/s at {res['size']}x{res['size']}, batch {res['batch']}, "
              f"{res['device']} ({res['vertices']} vertices, {res['triangles']} triangles); "
              f"peak memory {res['peak_mem_mb']:.0f} MB")
    return 0


def _reconstruct(args) -> int:
    from .reconstruct import reconstruct_photo, write_reconstruction

    rec = reconstruct_photo(args.photo, method=args.method, size=args.size, iters=args.iters, model=args.model,
                            seed=args.seed, progress=not args.quiet, profile=args.profile)
    for note in rec["notes"]:
        print(f"facelib: note: {note}", file=sys.stderr)
    paths = write_reconstruction(rec, args.out)
    prm = rec["params"]
    err = prm["landmark_error_px"]
    how = (f"fit in {prm['fit']['seconds']:.1f} s" if "fit" in prm else
           f"{prm['network']} ({prm['network_meta'].get('profile')} profile) in {prm['seconds']:.2f} s")
    print(f"wrote {', '.join(p.name for p in paths)} to {args.out} ({how}; "
          f"landmarks {err['inner_51']:.1f} px from the detected ones, inner 51)")
    return 0


def _networks(args) -> int:
    from .mofa import checkpoint_dir
    from .networks import NETWORKS, available_networks, networks_dir

    rows = available_networks(args.model)
    if not rows:
        print(f"no trained networks for model {args.model!r} yet (looked in {networks_dir()} and {checkpoint_dir()}); "
              "`make book` trains them")
        return 0
    for r in rows:
        budget = (f", {r['iters']} iterations" if "iters" in r else f", {r['step']} steps" if "step" in r else "")
        row = f" [{r['row']}]" if r["row"] else ""
        print(f"{r['name']}{row} seed {r['seed']}, profile {r['profile'] or 'custom'}{budget}: {r['path']}")
    print("names: " + "; ".join(f"{k}: {v}" for k, v in NETWORKS.items()))
    return 0


def _iters(text: str) -> tuple:
    """``"S1,S2"``: the two stages' iterations of the fit, non-negative integers."""
    parts = text.split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 2 or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"must be two non-negative integers S1,S2 (e.g. 200,80); got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facelib", description="Monocular inverse face rendering toolkit.")
    sub = p.add_subparsers(dest="cmd", required=True)
    model = sub.add_parser("model", help="face models").add_subparsers(dest="sub", required=True)
    info = model.add_parser("info", help="print the size of a face model")
    info.add_argument("--model", default="open", help="'open' (default), 'foreign', a .npz, a BFM 2009 .mat or an OBJ folder")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_model_info)
    build = model.add_parser("build", help="(re)build the open (or the foreign) model into the cache")
    build.add_argument("--model", choices=("open", "foreign"), default="open",
                       help="'open' (default) or 'foreign', a population no network trains on (facelib.model.foreign)")
    build.add_argument("--out", default=None, help="also save the model to this .npz")
    build.set_defaults(func=_model_build)
    prev = model.add_parser("preview", help="picture of the mean face and +-3 sigma components")
    prev.add_argument("--model", default="open")
    prev.add_argument("--out", default="out/model_preview.png")
    prev.set_defaults(func=_model_preview)
    ren = sub.add_parser("render", help="render one face drawn from the InverseFaceNet Sec. 5 sampler")
    ren.add_argument("--seed", type=int, default=0)
    ren.add_argument("--size", type=_image_size, default=240,
                     help="pixels per side, at most 8192")
    ren.add_argument("--out", default="face.png")
    ren.add_argument("--model", default="open")
    ren.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    ren.add_argument("--background", type=_unit_float, default=0.0, help="grey level of the background, 0..1")
    ren.set_defaults(func=_render)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="sub", required=True)
    br = bench.add_parser("render", help="full pipeline speed: coefficients -> shaded RGB + mask")
    br.add_argument("--size", type=_image_size, default=240,
                     help="pixels per side, at most 8192")
    br.add_argument("--batch", type=_positive_int, default=32)
    br.add_argument("--batches", type=_positive_int, default=10, help="timed batches after warm-up")
    br.add_argument("--device", default="auto")
    br.add_argument("--model", default="open")
    br.add_argument("--json", action="store_true", help="print one JSON object")
    br.set_defaults(func=_bench_render)
    rec = sub.add_parser("reconstruct", help="reconstruct the face in a photo: mesh.obj, mesh.ply, albedo.png, "
                                             "overlay.png, params.json")
    rec.add_argument("photo", help="a JPEG or PNG photo with a face (the largest one is reconstructed)")
    rec.add_argument("--method", default="fit", choices=("fit", "inversefacenet", "mofa", "coarse"),
                     help="fit: analysis by synthesis (facelib.fit); inversefacenet, mofa, coarse (CoarseNet): the "
                          "network make book trained (facelib.networks)")
    rec.add_argument("--profile", default=None, choices=("ci", "cpu", "gpu"),
                     help="the book profile whose trained network to use (default: the largest on disk)")
    rec.add_argument("--out", default="reconstruction", help="output folder (created)")
    rec.add_argument("--size", type=_image_size, default=128, help="pixels per side of the face crop that is fitted")
    rec.add_argument("--iters", type=_iters, default=(200, 80),
                     help="iterations of the fit's two stages: landmarks, then everything (default 200,80)")
    rec.add_argument("--model", default="open")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.set_defaults(func=_reconstruct)
    nets = sub.add_parser("networks", help="list the trained networks facelib.load_network can load")
    nets.add_argument("--model", default="open")
    nets.set_defaults(func=_networks)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return v


def _image_size(text: str) -> int:
    """A positive integer no larger than :data:`facelib._checks.MAX_IMAGE_SIZE` (pixels per side)."""
    from ._checks import MAX_IMAGE_SIZE

    v = _positive_int(text)
    if v > MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_IMAGE_SIZE} pixels per side; got {text}")
    return v


def _unit_float(text: str) -> float:
    """A number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]; got {text!r}")
    return v


def main(argv=None) -> int:
    """Run the command; a bad input or model file (or a missing optional package) ends with one line on
    stderr and exit status 2, a file that cannot be read or written (missing, read-only folder) with
    exit status 1."""
    from .model.facemodel import ModelFileError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelFileError, ValueError, ImportError) as e:  # ImportError: an optional extra is missing
        print(f"facelib: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"facelib: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
