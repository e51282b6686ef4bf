"""Benchmark: the InverseFaceNet pipeline's speeds in a profile (chapters 2-4).

Corpus rendering (Sec. 5 faces rendered and pre-processed, faces/s), wild-image generation (faces/s),
training throughput of the profile's AlexNet and ResNet (mini-batches/s) and test time (ms/image at
batch 1, Table 1's column).  Also ``os.getloadavg()`` before and after, because other jobs on the
machine slow everything down.

Run: ``.venv/bin/python benchmarks/bench_inversefacenet.py [--profile cpu] [--device auto]``; prints one
JSON object and writes ``benchmarks/results/inversefacenet_<profile>_<device>.json``.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import facelib
from facelib.book import settings, setup
from facelib.data.corpus import render_crops
from facelib.inversefacenet import make_regressor, model_space_weights, model_space_loss, test_time_ms
from facelib.model.params import sample_sec5
from facelib.nets import takes_landmarks
from facelib.data.wild import wild_batch


def _rate(fn, n_items, repeats=3):
    fn()  # warm-up (Numba compile, caches)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return n_items / times[len(times) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=("ci", "cpu", "gpu"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    cfg = settings("inversefacenet", args.profile)
    dev = setup(0, args.device)
    model = facelib.load_model("open", device=dev)
    load0 = os.getloadavg()[0]
    size, rs, B = cfg["size"], int(-(-3 * cfg["size"] // 2)), 256
    theta = sample_sec5(model, B, seed=0).to(dev)
    out = {"profile": args.profile, "device": str(dev), "size": size, "render_size": rs}
    out["corpus_faces_per_s"] = round(_rate(lambda: render_crops(model, theta, size, rs), B), 1)
    out["wild_faces_per_s"] = round(_rate(lambda: wild_batch(model, 64, seed=0, size=rs), 64, repeats=1), 1)
    sigma = model_space_weights(model).to(dev)
    for kind in ("alexnet", "resnet"):
        net = make_regressor(model, cfg, kind).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.rand(cfg["batch"], 3, size, size, device=dev) - 0.5
        inp = (x, torch.zeros(cfg["batch"], 136, device=dev)) if takes_landmarks(net) else (x,)  # the landmark input
        th = theta[: cfg["batch"]]

        def step():
            for _ in range(5):
                loss = model_space_loss(net(*inp), th, sigma)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        out[f"{kind}_iters_per_s"] = round(_rate(step, 5), 2)
        out[f"{kind}_test_ms"] = round(test_time_ms(net, size), 3)
    out.update(load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2),
               threads=torch.get_num_threads(), cores=os.cpu_count(), cpu=platform.processor() or platform.machine())
    print(json.dumps(out))
    res = Path(__file__).parent / "results" / f"inversefacenet_{args.profile}_{dev.type}.json"
    res.parent.mkdir(exist_ok=True)
    res.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
