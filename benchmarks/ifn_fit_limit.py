"""Can anything read more shape from the wild faces' pixels than from their landmarks? (issue 15)

Chapter 4 bounds what the 68 detected landmarks tell (``ifn.landmark_limit``, 0.61-0.68 x the mean face on
its wild test set) and says that to come closer to the issue's 0.6 x a network would have to read shape
from the shading inside the crop.  This asks whether the pixels hold that shape at all: chapter 8's
analysis-by-synthesis fit (``facelib.fit.fit``: landmark, photometric and prior terms, from the mean face,
its ``cpu`` iterations) reads every pixel of the same 256 wild test faces (``ifn.fit_limit``, the frames of
``ifn.wild_test_frames``), at the frame the networks' 64-pixel crops come from (96 pixels) and at larger
frames, and once without its photometric term (the landmarks alone, read by the fit's own energy).  The
``map`` runs start the fit's pixel stage (its stage 2, ``iters[1]`` iterations) from the best reading of
the landmarks, chapter 4's ``ifn.landmark_map`` with the Sec. 5 prior (reflectance at the mean, light
solved by the fit), with and without the photometric term: do the pixels improve on the landmarks' best?
Scored with chapter 4's geometric errors (plain and after a similarity alignment) against its mean face.

    FACELIB_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/ifn_fit_limit.py [--runs fit map] [--sizes 96 256] [--faces 256] [--seed 0]

Writes ``benchmarks/results/ifn_fit_limit.json`` (rows of an earlier record of the same faces are kept unless
run again), which chapter 4 shows beside the landmark limit when its test set is the one measured here (the
``cpu`` profile, seed 0).  One thread each for PyTorch and Numba: two spinning pools in one process are ~10x slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.bench import set_threads  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.fit import FIT_WEIGHTS  # noqa: E402
from facelib.model.params import ParamLayout, sample_sec5  # noqa: E402

MEASURES = ("geometric_mm", "geometric_aligned_mm")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", choices=("fit", "map"), default=["fit", "map"],
                    help="fit: from the mean face at each size, and landmarks only; map: the pixel stage from landmark_map")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 256], help="frame sizes [px] read by the fit")
    ap.add_argument("--faces", type=int, default=None, help="default: chapter 4's cpu test set (256)")
    ap.add_argument("--seed", type=int, default=0, help="chapter 4's seed (its wild test set is seed + 10000)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ifn_fit_limit.json"))
    args = ap.parse_args(argv)
    if any(s < 32 or s > 512 for s in args.sizes):
        ap.error("sizes must lie in [32, 512]")
    set_threads(2)
    cfg, fit_cfg = settings("inversefacenet", "cpu"), settings("08_fitting", "cpu")
    n = args.faces or cfg["n_test"]
    if not 1 <= n <= cfg["n_test"]:
        ap.error(f"faces must lie in [1, {cfg['n_test']}]")
    model = facelib.load_model("open")
    test = ifn.make_test_set(model, "wild", n, seed=args.seed + ifn.TEST_SEEDS["wild"], size=cfg["size"])
    mf = ifn.evaluate_theta(model, ifn.mean_face_theta(model, test["theta"]), test)
    mean_face = {m: round(float(mf[m].mean()), 4) for m in MEASURES}
    print(f"mean face: {mean_face}", flush=True)
    iters, s0, no_photo = tuple(fit_cfg["iters"]), args.sizes[0], FIT_WEIGHTS.replace(photo=0.0)
    runs = []  # name, frame size, weights, iterations, start
    if "fit" in args.runs:
        runs += [(f"fit, landmarks + pixels, {s}-px frame", s, FIT_WEIGHTS, iters, None) for s in args.sizes]
        runs.append((f"fit, landmarks only, {s0}-px frame", s0, no_photo, iters, None))
    if "map" in args.runs:  # chapter 4's landmark_map with the Sec. 5 prior (its cell lmlim002's sample)
        limit = ifn.landmark_limit(model, test, {"Sec. 5 prior": sample_sec5(model, 20_000, seed=args.seed + 40_000)})
        start = limit["landmarks, Sec. 5 prior, pose and expression estimated"]["theta"].clone()
        lay = ParamLayout.from_model(model)
        start[:, lay["reflectance"]] = 0  # the mean albedo; the pixel stage solves the light first
        start[:, lay["illumination"]] = 0
        runs += [(f"landmark_map, then the fit's pixel stage, {s0}-px frame", s0, FIT_WEIGHTS, (0, iters[1]), start),
                 (f"landmark_map, then the same stage without pixels, {s0}-px frame", s0, no_photo, (0, iters[1]), start)]
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    test_set = {"kind": "wild", "faces": n, "seed": args.seed + ifn.TEST_SEEDS["wild"], "size": cfg["size"],
                "render_size": test["render_size"]}
    kept = bool(old) and old.get("test_set") == test_set  # an earlier record of the same faces: keep its other rows
    rows = dict(old["rows"]) if kept else {}
    for name, size, weights, its, theta0 in runs:
        t0 = time.perf_counter()
        r = ifn.fit_limit(model, test, size, iters=its, weights=weights, seed=args.seed, theta0=theta0)
        rows[name] = {**{m: {k: round(v, 4) for k, v in r[m].items()} for m in MEASURES},
                      "ratio_to_mean_face": {m: round(r[m]["mean"] / mean_face[m], 3) for m in MEASURES},
                      "frame_size": size, "photometric_weight": weights.photo, "iters": list(its),
                      "start": "mean face" if theta0 is None else "landmark_map (Sec. 5 prior)",
                      "seconds_per_face": round(r["seconds_per_face"], 3),
                      "wall_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: rows[name]}), flush=True)
    out = {"what": "chapter 8's fit on chapter 4's wild test faces (cpu profile), drawn at each frame size: its cpu "
                   "iterations from the mean face, or its pixel stage alone from landmark_map (each row's start and "
                   "iters); chapter 4's geometric errors [mm], mean and std over the faces",
           "test_set": test_set, "iters": list(fit_cfg["iters"]), "mean_face": mean_face, "rows": rows,
           "command": "FACELIB_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/ifn_fit_limit.py "
                      + " ".join(sys.argv[1:] if argv is None else argv),
           "earlier_commands": (old.get("earlier_commands", []) + [old["command"]]) if kept else [],
           "environment": repro.environment(seed=args.seed)}
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
