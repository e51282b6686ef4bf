"""Benchmark: our rasterizer against PyTorch3D's CPU ``rasterize_meshes`` on the open model, side by side.

Run: ``.venv/bin/python benchmarks/render_vs_pytorch3d.py [--faces 2 --size 240 --rounds 3]`` (needs
PyTorch3D: ``pip install ../shared/wheels/pytorch3d-*.whl iopath``); prints JSON and writes
``benchmarks/results/render_vs_pytorch3d.json``.

The inputs are the screen vertices of ``--faces`` Sec. 5 faces (seed 0) as :func:`facelib.render.render`
projects them (float32, 44.6k triangles, back faces culled, one face per pixel, perspective-correct).
Timed, in turns within each round so that a busy spell on the shared host hits all alike (wall clock
and the process's CPU time, per call; ours, a few milliseconds, as the median of ``--inner`` calls per
round, PyTorch3D's one call per round):

- ``facelib visibility``: :func:`facelib.render.raster.visibility` (the Numba z-buffer, ``pix_to_face`` only);
- ``facelib rasterize``: :func:`facelib.render.raster.rasterize` under ``no_grad`` (plus zbuf, barycentrics,
  distances: what PyTorch3D returns);
- ``pytorch3d default``: ``rasterize_meshes(..., bin_size=None)`` (on the CPU its heuristic picks 0);
- ``pytorch3d naive``: ``bin_size=0``.

PyTorch3D gets the mesh in its NDC frame (converted outside the timing) with ``cull_backfaces=True``;
coarse-to-fine binning (``bin_size`` 16 at 240 px, PyTorch3D's CUDA heuristic) is tried once and its
error recorded (not implemented on the CPU in 0.7.9). The two ``pix_to_face`` are compared (the share of pixels that agree).
"""

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

import facelib
from facelib.model.params import sample_sec5
from facelib.render.raster import rasterize, visibility
from facelib.render import render
from facelib.repro import environment


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=2)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", type=int, default=21, help="calls per round of our (fast) rasterizer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "render_vs_pytorch3d.json"))
    args = ap.parse_args()
    from pytorch3d import __version__ as p3d_version
    from pytorch3d.renderer.mesh import rasterize_meshes
    from pytorch3d.structures import Meshes

    m = facelib.load_model("open")
    S = args.size
    with torch.no_grad():
        screen = render(m, sample_sec5(m, args.faces, seed=0), S, fused=False, outputs=("screen",)).screen
    faces = m.triangles
    ndc = torch.stack((-(2 * screen[..., 0] - S) / S, -(2 * screen[..., 1] - S) / S, screen[..., 2]), -1)
    meshes = Meshes(verts=list(ndc.float().contiguous()), faces=[faces] * args.faces)

    def ours_vis():
        return visibility(screen, faces, S, cull_backfaces=True)

    def ours_frag():
        with torch.no_grad():
            return rasterize(screen, faces, S, cull_backfaces=True).pix_to_face

    def p3d(bin_size):
        def run():
            with torch.no_grad():  # packed indices as ours: mesh n's faces start at n F
                return rasterize_meshes(meshes, image_size=S, faces_per_pixel=1, perspective_correct=True,
                                        cull_backfaces=True, bin_size=bin_size)[0]
        return run

    cases = {"facelib visibility": ours_vis, "facelib rasterize": ours_frag,
             "pytorch3d default (bin_size=None)": p3d(None), "pytorch3d naive (bin_size=0)": p3d(0)}
    ours_vis(), ours_frag()  # compiled / warm
    bin_size = int(2 ** max(math.ceil(math.log2(S)) - 4, 4))  # PyTorch3D's heuristic on CUDA (16 at 240)
    try:
        p3d(bin_size)()
        binned = "ran"
    except (RuntimeError, ValueError) as e:
        binned = f"{type(e).__name__}: {e}".strip()
    wall = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    outs = {}
    for r in range(args.rounds):
        for k, fn in cases.items():
            n = args.inner if k.startswith("facelib") else 1  # a few ms: the median of --inner calls
            runs = [timed(fn) for _ in range(n)]
            outs[k] = runs[-1][0]
            w, c = statistics.median(x[1] for x in runs), statistics.median(x[2] for x in runs)
            wall[k].append(w)
            cpu[k].append(c)
            print(f"round {r + 1}/{args.rounds}: {k}: {w * 1e3:.1f} ms wall, {c * 1e3:.1f} ms CPU", flush=True)
    ref = outs["facelib visibility"]
    agree = {k: round(float((v == ref).double().mean()), 6) for k, v in outs.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    res = {
        "faces": args.faces, "size": S, "triangles": int(faces.shape[0]), "rounds": args.rounds,
        "inner": args.inner, "torch_threads": torch.get_num_threads(),
        "pytorch3d": p3d_version,
        "ms_per_call_wall": {k: {"median": round(statistics.median(v) * 1e3, 2),
                                 "runs": [round(x * 1e3, 2) for x in v]} for k, v in wall.items()},
        "ms_per_call_cpu": {k: round(statistics.median(v) * 1e3, 2) for k, v in cpu.items()},
        "pytorch3d_naive_over_facelib_rasterize": round(med["pytorch3d naive (bin_size=0)"]
                                                        / med["facelib rasterize"], 1),
        "pix_to_face_agreement_with_facelib": agree,
        f"pytorch3d_binned_bin_size_{bin_size}": binned,
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "environment": environment(seed=0),
    }
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
