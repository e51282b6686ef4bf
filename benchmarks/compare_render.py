"""A/B benchmark of two versions of facelib on the same machine, alternating runs (the 2 cores are
shared with other processes, so the load changes between runs; alternating keeps it comparable).

Usage::

    mkdir -p /tmp/facelib_before && git archive <commit> facelib | tar -x -C /tmp/facelib_before
    .venv/bin/python benchmarks/compare_render.py /tmp/facelib_before . --rounds 3 \\
        --out benchmarks/results/render_cpu_before_after.json

Each run is a fresh process that imports ``facelib`` from the given folder, renders one warm-up batch,
then times ``--runs`` runs of 10 batches of 32 Sec. 5 faces at 240x240 (sampling + ``render``), with
``outputs="image"`` (image, masks, depth) and with every field (``"all"``); a version whose ``render``
has no ``outputs`` argument renders every field in both. On the CPU ``render`` returns when the work
is done, so nothing else is timed (no reduction over the image).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUN = r"""
import inspect, json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch, facelib
try:
    from facelib.model.params import sample_sec5
except ImportError:  # a tree from before the subpackages (issue 19)
    from facelib.params import sample_sec5
from facelib.render import render
m = facelib.load_model("open")
kw = {"outputs": sys.argv[2]} if "outputs" in inspect.signature(render).parameters else {}
fps, cpu = [], []
with torch.no_grad():
    render(m, sample_sec5(m, 32, seed=0), 240, **kw)
    for k in range(int(sys.argv[3])):
        t, c = time.perf_counter(), time.process_time()
        for i in range(10):
            render(m, sample_sec5(m, 32, seed=1 + 10 * k + i), 240, **kw)
        fps.append(320 / (time.perf_counter() - t))
        cpu.append((time.process_time() - c) / 10 * 1e3)
print(json.dumps({"faces_per_s_runs": [round(x, 1) for x in fps], "faces_per_s": round(statistics.median(fps), 1),
                  "cpu_ms_per_batch": round(statistics.median(cpu), 1), "outputs": kw.get("outputs", "all"),
                  "load_avg_1min": round(os.getloadavg()[0], 2)}))
"""


def run(path, outputs, runs):
    r = subprocess.run([sys.executable, "-c", RUN, str(Path(path).resolve()), outputs, str(runs)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    rows = []
    keys = [(v, o) for o in ("image", "all") for v in ("before", "after")]
    for _ in range(args.rounds):
        for version, outputs in keys:
            rows.append(dict(version=version, asked=outputs,
                             **run(args.before if version == "before" else args.after, outputs, args.runs)))
    summary = {}
    for key in keys:
        sel = [r for r in rows if (r["version"], r["asked"]) == key]
        summary[f"{key[0]} ({key[1]})"] = {
            "faces_per_s_median": round(statistics.median(x for r in sel for x in r["faces_per_s_runs"]), 1),
            "cpu_ms_per_batch_median": round(statistics.median(r["cpu_ms_per_batch"] for r in sel), 1)}
    res = {"summary": summary, "runs": rows, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
           "command": "benchmarks/compare_render.py " + " ".join(sys.argv[1:]), "note": args.note}
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
