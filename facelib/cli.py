"""Command line: ``facelib model info|build|preview``."""

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
    print(f"landmarks       {info['landmarks']} (iBUG 68 order)")
    if m.name == "open":
        print(f"mouth opens     expression component {m.mouth_component + 1} (index {m.mouth_component}),"
              f" prior U(-{float(m.expression_range[m.mouth_component]):.2f}, "
              f"{float(m.expression_range[m.mouth_component]):.2f}) + bias {m.mouth_bias:.2f}")
    return 0


def _model_build(args) -> int:
    import time

    from .open_model import cache_dir, open_model

    t = time.perf_counter()
    m = open_model(rebuild=True)
    print(f"built face model 'open' in {time.perf_counter() - t:.1f} s: {m.n_vertices} vertices, "
          f"cached in {cache_dir()}")
    if args.out:
        m.save(args.out)
        print(f"saved to {args.out}")
    return 0


def _model_preview(args) -> int:
    from pathlib import Path

    from . import load_model
    from .plot import model_preview

    m = load_model(args.model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    model_preview(m, args.out, show_landmarks=True)
    print(f"wrote {args.out}: mean face and +-3 sigma along the first shape, expression and "
          "reflectance components")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facelib", description="Monocular inverse face rendering toolkit.")
    sub = p.add_subparsers(dest="cmd", required=True)
    model = sub.add_parser("model", help="face models").add_subparsers(dest="sub", required=True)
    info = model.add_parser("info", help="print the size of a face model")
    info.add_argument("--model", default="open", help="'open' (default), a .npz, a BFM 2009 .mat or an OBJ folder")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_model_info)
    build = model.add_parser("build", help="(re)build the open model into the cache")
    build.add_argument("--out", default=None, help="also save the model to this .npz")
    build.set_defaults(func=_model_build)
    prev = model.add_parser("preview", help="picture of the mean face and +-3 sigma components")
    prev.add_argument("--model", default="open")
    prev.add_argument("--out", default="out/model_preview.png")
    prev.set_defaults(func=_model_preview)
    return p


def main(argv=None) -> int:
    from .facemodel import ModelFileError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModelFileError as e:
        print(f"facelib: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
