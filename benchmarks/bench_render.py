"""Benchmark: full rendering pipeline (Sec. 5 coefficients -> shaded RGB + mask), and its stages.

Run: ``.venv/bin/python benchmarks/bench_render.py [--device cpu|cuda]``; prints JSON lines and writes
``benchmarks/results/render_<device>.json``. Targets (issue 3): >= 1,000 faces/s at 240x240 on the
2-core CPU; a batch of 32 at 240x240 under 2 GiB.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import facelib
from facelib import camera, raster, shading
from facelib.bench import bench_render
from facelib.params import ParamLayout, rot_xyz, sample_sec5
from facelib.render import face_camera


def stages(device, size=240, batch=32, reps=5):
    """Milliseconds per batch for each stage of :func:`facelib.render.render` (no grad)."""
    m = facelib.load_model("open", device=device)
    th = sample_sec5(m, batch, seed=0, device=m.device)
    p = ParamLayout.from_model(m).unpack(th)
    cam = face_camera(size, device=m.device)
    out = {}

    def tm(name, fn):
        fn()
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            r = fn()
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = round((time.perf_counter() - t) / reps * 1000, 2)
        return r

    with torch.no_grad():
        v = tm("geometry (Eq. 2)", lambda: m.geometry(p["shape"], p["expression"]))
        a = tm("reflectance (Eq. 3)", lambda: m.reflectance(p["reflectance"]))
        R = rot_xyz(p["rotation"])
        vc = tm("rigid transform", lambda: camera.rigid_transform(v, R, cam.t.expand(batch, 3)))
        n = tm("vertex normals", lambda: shading.vertex_normals(vc, m.triangles))
        c = tm("SH shading (Eq. 5)", lambda: shading.shade(a, n, p["illumination"]))
        s = tm("projection", lambda: camera.perspective_project(vc, cam.focal, cam.principal_point))
        tm("visibility (numba z-buffer)", lambda: raster.visibility(s, m.triangles, size, cull_backfaces=True))
        fr = tm("rasterize (visibility + fragments)", lambda: raster.rasterize(s, m.triangles, size, cull_backfaces=True))
        tm("interpolate", lambda: raster.interpolate(c, fr, m.triangles))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    res = bench_render(size=args.size, batch=args.batch, device=args.device, batches=10)
    res["stages_ms_per_batch"] = stages(res["device"], args.size, args.batch)
    res["cpu"] = platform.processor() or platform.machine()
    print(json.dumps(res, indent=1))
    path = Path(__file__).parent / "results" / f"render_{res['device'].split(':')[0]}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
