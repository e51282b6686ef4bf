"""How much shape does a picture hold at each size? Chapter 8's fit at 64, 128 and 256 pixels (issues 15-17).

The networks of chapters 3-7 see faces at 48-96 pixels and barely beat the mean face on the held-out
wild faces; chapter 8's fit by optimisation (photometric + landmark terms, :func:`facelib.fit.fit`)
reaches about 0.7 of it at 128 pixels.  This asks the same fit, on the same held-out wild faces drawn
at several frame sizes, how close the image and its landmarks let it come: with the detector-like
noisy landmarks the wild set gives (as chapter 8), with the exact ones (what is left when the
landmark detector is perfect), and with the noisy landmarks alone (no photometric term: what the
68 points say without the pixels).  The NoW-style error of the mean face and of the true parameters is
reported with each size.  If the fit's error falls with the frame size, the pixels are what the small
networks lack; if it does not, more pixels would not help them either.

    .venv/bin/python benchmarks/fit_resolution.py [--sizes 64 128 256] [--faces 24] [--seed 0]

Writes ``benchmarks/results/fit_resolution.json`` (one thread recommended: ``FACELIB_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.bench import set_threads  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.data.wild import wild_batch  # noqa: E402
from facelib.eval import compare  # noqa: E402
from facelib.fit import FIT_WEIGHTS, fit  # noqa: E402


def _mean(x: torch.Tensor) -> float:
    return round(float(x.double().mean()), 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--faces", type=int, default=None, help="default: chapter 8's cpu profile (24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fit_resolution.json"))
    args = ap.parse_args(argv)
    if any(s < 32 or s > 512 for s in args.sizes):
        ap.error("sizes must lie in [32, 512]")
    set_threads(2)
    cfg = settings("08_fitting", "cpu")
    n = args.faces or cfg["n_faces"]
    model = facelib.load_model("open")
    rows = []
    for size in args.sizes:
        # chapter 8's held-out wild faces (the same seed), drawn at this frame size
        frames = wild_batch(model, n, seed=910_000 + args.seed, size=size)
        refs = compare.reference_points(model, frames)
        row = {"size": size, "faces": n, "mean_face_now_mm": _mean(refs["mean face"]),
               "floor_now_mm": _mean(refs["true parameters (floor)"])}
        variants = (("detector landmarks", frames["landmarks"], FIT_WEIGHTS),
                    ("exact landmarks", frames["landmarks_gt"], FIT_WEIGHTS),
                    ("detector landmarks only, no photometric term", frames["landmarks"], FIT_WEIGHTS.replace(photo=0.0)))
        for name, lm, weights in variants:
            t0 = time.perf_counter()
            res = fit(model, frames["image"].float(), lm.float(), iters=tuple(cfg["iters"]), weights=weights,
                      seed=args.seed, progress=False, trace_every=max(cfg["iters"]))
            seconds = time.perf_counter() - t0
            final = compare.fit_curve(model, frames, res)[-1]
            row[name] = {"now_mm": _mean(final["now_mm"]),
                         "ratio_to_mean_face": round(_mean(final["now_mm"]) / row["mean_face_now_mm"], 3),
                         "photometric_8bit": _mean(final["photometric_8bit"]),
                         "seconds_per_face": round(seconds / n, 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"what": "chapter 8's fit from the mean face (iterations as its cpu profile) on its held-out wild "
                   "faces (seed 910000 + seed) drawn at each frame size; NoW-style error [mm]",
           "iters": list(cfg["iters"]), "seed": args.seed, "rows": rows,
           "command": "FACELIB_THREADS=1 .venv/bin/python benchmarks/fit_resolution.py "
                      + " ".join(sys.argv[1:] if argv is None else argv),
           "environment": repro.environment(seed=args.seed)}
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
