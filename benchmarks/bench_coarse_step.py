"""Chapter 7's CoarseNet training step with and without the camera's Numba twins (issue 17's 30 minutes).

A CoarseNet training step is mostly rendering: the training picture and, for every feedback state, the
mean-face, PNCC and normal-map render of :func:`facelib.coarse_fine.render_view` (about five renders a step at
the chapter's settings).  Two of each render's products were ``v @ R^T`` with ``K = 3`` (the rigid transform of
Eq. 2 / 5 and the rotation of the normals into the camera), which the BLAS runs several times slower than the
arithmetic needs, and the projections to the image plane made a tensor per operation;
:func:`facelib.render.camera.rigid_transform`, :func:`facelib.render.camera.rotate`,
:func:`facelib.render.camera.weak_perspective_project` and :func:`facelib.render.camera.perspective_project` now
lend them to Numba twins without gradients (:mod:`facelib.render.fast.twins`: the same operations in the same
order, so the same bits).  The training pictures are also drawn without the maps no one reads
(``make_faces(..., maps=False)``: the same image).  This times, alternating ``--rounds`` times, with the camera's
twins and without them (removed from the registry, so the PyTorch lines run; every other twin stays; the
pictures image-only both ways):

* ``rigid_transform`` of 16 faces of the open model (22,594 vertices) and ``rotate`` of their normals;
* ``render_view`` at the chapter's ``coarse_size``: a feedback render (16 states) and a training picture
  (appearance, whole head, the photo camera, image only);
* ``--steps`` steps of :func:`facelib.coarse_fine.train_coarsenets` (the chapter's network, batch, own states
  and landmark input), one thread, and whether the trained weights and losses agree to the bit.

Run it as the machine's CPU or as an AVX2-only one (``make`` ``AVX2_ENV``)::

    .venv/bin/python benchmarks/bench_coarse_step.py [--steps 40] [--rounds 3]
    FACELIB_CPU=haswell NUMBA_CPU_NAME=haswell ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/bench_coarse_step.py

Writes ``benchmarks/results/coarse_step_<isa>.json`` (``avx512`` or ``avx2``, PyTorch's kernels' instruction set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import repro  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.bench import same_weights, time_alternating  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import (DISTANCE_MM, CoarseNet, CoarseSpace, render_view, sample_appearance, sample_r,  # noqa: E402
                                 train_coarsenets)
from facelib.render import _twins  # noqa: E402
from facelib.render.camera import rigid_transform, rotate  # noqa: E402
from facelib.render.shading import vertex_normals  # noqa: E402


CAMERA_TWINS = ("rigid_transform", "weak_perspective", "perspective")


@contextlib.contextmanager
def without_camera_twins():
    """The PyTorch lines instead of the camera's twins (:data:`CAMERA_TWINS`); the other twins stay lent."""
    fns = {k: _twins.TWINS.pop(k) for k in CAMERA_TWINS if k in _twins.TWINS}
    try:
        yield
    finally:
        _twins.TWINS.update(fns)


def best_ms(call, repeats: int) -> float:
    """The best of ``repeats`` timings of ``call()``, in ms (after one warm-up call)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="CoarseNet training steps per timing")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of)")
    ap.add_argument("--repeats", type=int, default=20, help="timings per render figure (best of)")
    args = ap.parse_args(argv)
    cfg = settings("07_coarse_fine", "cpu")
    torch.set_num_threads(cfg["threads"])
    numba.set_num_threads(cfg["threads"])
    if not all(k in _twins.TWINS for k in CAMERA_TWINS):
        sys.exit("the camera's twins are not registered (no Numba?): nothing to compare")
    model = facelib.load_model("open")
    space = CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    N, B = cfg["coarse_size"], cfg["coarse_batch"]
    r = sample_r(space, B, 0)
    app = sample_appearance(space, B, 1)
    verts = space.geometry(space.split(r)[0])
    R = space.camera(space.split(r)[1], N)[0]
    normals = vertex_normals(verts, space.model.triangles)
    t = torch.randn(B, 3, generator=torch.Generator().manual_seed(2), dtype=verts.dtype)
    figures = {
        "rigid_transform (16 faces) [ms]": lambda: rigid_transform(verts, R, t),
        "rotate (16 faces' normals) [ms]": lambda: rotate(normals, R),
        f"render_view, feedback ({B} states, {N} px) [ms]": lambda: render_view(space, r, N),
        f"render_view, training picture ({B} faces, {N} px, head, photo camera, image only) [ms]":
            lambda: render_view(space, r, N, app, head=True, distance=DISTANCE_MM, maps=False),
    }
    renders = {}
    with torch.no_grad():
        for way, ctx in (("twins", contextlib.nullcontext), ("PyTorch lines", without_camera_twins)):
            with ctx():
                renders[way] = {k: round(best_ms(f, args.repeats), 3) for k, f in figures.items()}
                print(way, json.dumps(renders[way]))

    def train():
        torch.manual_seed(0)
        net = CoarseNet(space.n_params, width=cfg["coarse_width"], blocks=cfg["coarse_blocks"], landmarks=cfg["landmarks"])
        hist = train_coarsenets(space, {"gmse": (net, "gmse")}, args.steps, B, N, 0, cfg["coarse_lr"], progress=False,
                                p_own=cfg["p_own"])
        return net, hist["gmse"]["loss"]

    def train_without():
        with without_camera_twins():
            return train()

    train()  # warm-up: kernels compiled or loaded, the branch's shapes allocated
    t_ = time_alternating({"twins": train, "PyTorch lines": train_without}, args.rounds, per=args.steps,
                          label=" per step")
    (na, la), (nb, lb) = t_["trained"]["twins"], t_["trained"]["PyTorch lines"]
    rec = {
        "what": "chapter 7's CoarseNet training step and renders, with the camera's Numba twins (rigid transform, "
                "rotation, projections) and with the PyTorch lines",
        "steps": args.steps, "rounds": args.rounds, "batch": B, "size": N, "threads": cfg["threads"],
        "renders_ms": renders,
        "train_ms_per_step": {w: round(1000 * s, 1) for w, s in t_["best"].items()},
        "train_ms_per_step_runs": {w: [round(1000 * s, 1) for s in v] for w, v in t_["seconds"].items()},
        "speedup_train_step": round(t_["best"]["PyTorch lines"] / t_["best"]["twins"], 3),
        "same_weights_and_losses": bool(same_weights(na, nb) and la == lb),
        "command": "python benchmarks/bench_coarse_step.py --steps S --rounds R",
        "environment": repro.environment(seed=0),
    }
    print(json.dumps({k: v for k, v in rec.items() if k != "environment"}, indent=1))
    isa = (rec["environment"].get("torch_cpu_capability") or "cpu").lower()
    out = Path(__file__).resolve().parent / "results" / f"coarse_step_{isa}.json"
    atomic_write_bytes(out, (json.dumps(rec, indent=1) + "\n").encode())
    print("wrote", out)


if __name__ == "__main__":
    main()
