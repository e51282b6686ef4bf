"""Benchmark: full rendering pipeline (Sec. 5 coefficients -> shaded RGB + mask), and its stages.

Run: ``.venv/bin/python benchmarks/bench_render.py [--device cpu|cuda] [--repeats 5]``; prints JSON and
writes ``benchmarks/results/render_<device>.json``. Targets (issue 3): >= 1,000 faces/s at 240x240 on
the 2-core CPU; a batch of 32 at 240x240 under 2 GiB.

What it records:

- ``faces_per_s`` (median of ``--repeats`` runs of ``--batches`` batches), from
  :func:`facelib.bench.bench_render`: sampling the coefficients, then :func:`facelib.render.render`
  to the shaded image, masks and depth (``outputs="image"``); ``faces_per_s_all`` with every Render
  field (fragments, per-vertex tensors) as well. The warm-up call is timed apart (``first_call_s``).
- ``compile_s``: the first render in a fresh process with an empty Numba cache (``NUMBA_CACHE_DIR``
  pointed at a new folder), i.e. the one-off just-in-time compilation of the fused kernels; later
  processes load them from the cache in ``first_call_s``.
- ``fused_stages``: where the time of the fused CPU path goes: the two GEMMs of Eq. 2-3
  (ms per batch, wall, on the render's worker threads) and each per-face kernel (microseconds per
  face, one thread, measured with the thread's CPU clock so that other processes on the machine
  disturb it less).
- ``pytorch_stages_ms_per_batch``: the unfused pipeline stage by stage (the Numba twins and the
  PyTorch code the differentiable path uses), for comparison.
- the 1-minute load average before and after: other processes share the 2 cores, so wall-clock
  figures vary; the per-run figures are kept.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import facelib
from facelib.render import camera, raster, shading
from facelib.render import render
from facelib.render.fast import fused as R, kernels as K
from facelib.bench import bench_render
from facelib.model.params import ParamLayout, rot_xyz, sample_sec5
from facelib.render import face_camera


def pytorch_stages(device, size=240, batch=32, reps=5):
    """Milliseconds per batch for each stage of the unfused :func:`facelib.render.render` (no grad)."""
    m = facelib.load_model("open", device=device)
    th = sample_sec5(m, batch, seed=0, device=m.device)
    p = ParamLayout.from_model(m).unpack(th)
    cam = face_camera(size, device=m.device)
    out = {}

    def tm(name, fn):
        fn()
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            r = fn()
            if m.device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        out[name] = round(statistics.median(ts) * 1000, 2)
        return r

    with torch.no_grad():
        v = tm("geometry (Eq. 2)", lambda: m.geometry(p["shape"], p["expression"]))
        a = tm("reflectance (Eq. 3)", lambda: m.reflectance(p["reflectance"]))
        Rm = rot_xyz(p["rotation"])
        vc = tm("rigid transform", lambda: camera.rigid_transform(v, Rm, cam.t.expand(batch, 3)))
        n = tm("vertex normals", lambda: shading.vertex_normals(vc, m.triangles))
        c = tm("SH shading (Eq. 5)", lambda: shading.shade(a, n, p["illumination"]))
        s = tm("projection", lambda: camera.perspective_project(vc, cam.focal, cam.principal_point))
        tm("visibility (numba z-buffer)", lambda: raster.visibility(s, m.triangles, size, cull_backfaces=True))
        fr = tm("rasterize (visibility + fragments)", lambda: raster.rasterize(s, m.triangles, size,
                                                                               cull_backfaces=True))
        tm("interpolate", lambda: raster.interpolate(c, fr, m.triangles))
        tm("render(fused=False), total", lambda: render(m, th, size, fused=False))
    return out


def gemms(m, p, n_jobs=1, pool=None) -> list:
    """The Eq. 2-3 offsets ``(B, 3 V)`` of the batch ``p`` (unpacked theta), as facelib.render.fast.fused._render_fused."""
    with torch.no_grad():
        c = torch.cat([p["shape"] * m.sigma_s, p["expression"] * m.sigma_e], 1)
        geo_basis, alb_basis = R._bases(m, m.n_shape, m.n_expression, m.n_reflectance)
        return R._offsets([(c, geo_basis), (p["reflectance"] * m.sigma_r, alb_basis)], n_jobs, pool)


def face_inputs(m, p, cam) -> dict:
    """The inputs of the fused path's per-face kernels for the batch ``p`` (unpacked theta) seen by
    ``cam``, as facelib.render.fast.fused._render_fused makes them: offsets, rotations, translations, SH gammas,
    focal length and principal point, the mesh arrays and the coordinate-major means."""
    B = p["rotation"].shape[0]
    f32 = np.float32
    with torch.no_grad():
        geo, alb = gemms(m, p)
        Rm = (cam.R @ rot_xyz(p["rotation"])).contiguous().numpy()
        gamma = shading.illumination_gamma(p["illumination"]).contiguous().numpy()
    return dict(geo=geo, alb=alb, R=Rm, t=cam.t.expand(B, 3).contiguous().numpy(), gamma=gamma,
                focal=f32(cam.focal), pp=(f32(cam.principal_point[0]), f32(cam.principal_point[1])),
                mesh=R._mesh_arrays(m), means=R._means(m))


def fused_stages(size=240, batch=32, reps=3):
    """Where the fused CPU path spends its time: the GEMMs (ms per batch, wall, both cores) and each
    per-face kernel (us per face, one thread's CPU time, median over ``reps`` passes over the batch)."""
    m = facelib.load_model("open")
    layout = ParamLayout.from_model(m)
    th = sample_sec5(m, batch, seed=0)
    p = layout.unpack(th)
    cam = face_camera(size)
    H = W = size
    V = m.n_vertices
    out = {}
    with torch.no_grad():
        render(m, th, size, outputs="image")  # compiled / loaded

        n_jobs = torch.get_num_threads()
        pool = R._thread_pool(n_jobs - 1) if n_jobs > 1 else None

        gemms(m, p, n_jobs, pool)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            gemms(m, p, n_jobs, pool)
            ts.append(time.perf_counter() - t)
        how = "facelib.render.fast._gemm micro-kernel" if R._gemm.available() else "NumPy BLAS"
        out[f"gemm Eq. 2-3 (ms per batch, wall, {how}, one thread per worker)"] = round(statistics.median(ts) * 1000, 2)
        fi = face_inputs(m, p, cam)
        geo, alb, Rm, t3, g, pp = fi["geo"], fi["alb"], fi["R"], fi["t"], fi["gamma"], fi["pp"]
        (faces, mouth, chunks), (mean_s, mean_a) = fi["mesh"], fi["means"]
        f32 = np.float32
        ws_cm = R._workspace(V, H, W)  # the scratch arrays of one worker thread, as render() uses them
        vc, nrm, col, pk, xyq, zb, ws_f32, ws_i32, ws_i64 = ws_cm.__enter__()
        image = np.empty((batch, 3, H, W), np.float32)  # the batch's outputs, as render() writes them
        mask = np.empty((batch, H, W), bool)
        imask = np.empty((batch, H, W), bool)
        depth = np.empty((batch, H, W), np.float32)
        steps = {
            "vertices: Eq. 2 mean + offsets, Phi, projection": lambda b: K._fz_vertices(
                geo[b], mean_s, Rm[b], t3[b], fi["focal"], *pp, vc, xyq),
            "vertex normals": lambda b: K._fz_normals(faces, chunks, vc, nrm, ws_f32),
            "SH shading (Eq. 3, 5)": lambda b: K._fz_shade(nrm, alb[b], mean_a, g[b], col),
            "z-buffer (setup, culling, visibility)": lambda b: K._fz_zbuffer(
                xyq, faces, chunks, H, W, zb, ws_f32, ws_i32, ws_i64, R._zchunk.address()),
            "packed vertex records": lambda b: K._fz_pack(xyq, col, pk),
            "resolve (barycentrics, Eq. 6 colour, masks, depth)": lambda b: K._fz_resolve(
                zb, faces, pk, mouth, H, W, f32(0), image[b], mask[b], imask[b], depth[b], R._resolve.address()),
        }
        per = {k: [] for k in steps}
        for _ in range(reps):
            acc = dict.fromkeys(steps, 0.0)
            for b in range(batch):
                for k, fn in steps.items():
                    t = time.thread_time()
                    fn(b)
                    acc[k] += time.thread_time() - t
            for k in steps:
                per[k].append(acc[k] / batch * 1e6)
        ws_cm.__exit__(None, None, None)
        kernels = {k: round(statistics.median(v), 1) for k, v in per.items()}
        out["kernels (us per face, one thread)"] = kernels
        out["kernels total (us per face)"] = round(sum(kernels.values()), 1)
    return out


def compile_seconds(size=240) -> float:
    """Seconds of the first fused render in a fresh process with an empty Numba cache."""
    code = ("import time, torch, facelib\nfrom facelib.model.params import sample_sec5\nfrom facelib.render import render\n"
            "m = facelib.load_model('open'); th = sample_sec5(m, 2, seed=0)\n"
            f"t = time.perf_counter()\nwith torch.no_grad(): render(m, th, {size})\nprint(time.perf_counter() - t)\n")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return round(float(r.stdout.strip().splitlines()[-1]), 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/render_<device>.json)")
    ap.add_argument("--note", default="", help="free text stored with the figures (e.g. how the CPU was shared)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    res = bench_render(size=args.size, batch=args.batch, device=args.device, batches=args.batches,
                       repeats=args.repeats)
    if res["device"] == "cpu" and res["fused"]:
        res["fused_stages"] = fused_stages(args.size, args.batch)
        res["compile_s"] = compile_seconds(args.size)
    res["pytorch_stages_ms_per_batch"] = pytorch_stages(res["device"], args.size, args.batch)
    res["load_avg_1min_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    res["cpu"] = platform.processor() or platform.machine()
    res["command"] = "benchmarks/bench_render.py " + " ".join(sys.argv[1:])
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    if args.note:
        res["note"] = args.note
    print(json.dumps(res, indent=1))
    path = Path(args.out) if args.out else \
        Path(__file__).parent / "results" / f"render_{res['device'].split(':')[0]}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
