"""Benchmark: the CPU renderer with code made for an AVX2-only CPU (Haswell) against the host's own
(AVX-512 here), on the same cores: what an AVX2 machine loses per core, and which kernel pays where.

Run: ``.venv/bin/python benchmarks/bench_avx2.py [--rounds 2]``; prints JSON and writes
``benchmarks/results/avx2_vs_avx512.json``.

An AVX2-only CPU is simulated in a fresh process: llvmlite reports a Haswell host (so our LLVM IR
kernels, :mod:`facelib.render.fast._gemm` / ``_zchunk`` / ``_resolve``, are compiled for AVX2 + FMA and the
z-buffer kernel, which needs AVX-512, steps aside), ``NUMBA_CPU_NAME=haswell`` (Numba's code),
``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's kernels) and ``OPENBLAS_CORETYPE=Haswell`` (NumPy's BLAS).
The instructions are an AVX2 CPU's; the core running them is still this one, so the figures say
what the code costs, not what an older core would do. Each round runs both set-ups in turn (the
host is shared): :mod:`benchmarks.bench_kernels` (z-buffer and resolve, LLVM kernel against Numba,
microseconds of one thread's CPU per face; here the z-buffer kernel is compiled for Haswell anyway,
to see whether it would pay) and :func:`facelib.bench.bench_render` on one thread (faces/s and CPU ms
per batch of 32 at 240x240, ``outputs="image"``).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PRELUDE = r"""
import sys
if sys.argv[1] == "haswell":
    import llvmlite.binding as ll
    HSW = ("+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,+sse4.1,+sse4.2,+ssse3,+sse3,+sse2,+sse,"
           "+cx16,+xsave,+fsgsbase,+rdrnd,+aes,+pclmul")
    class _Features:
        def flatten(self):
            return HSW
    ll.get_host_cpu_name = lambda: "haswell"
    ll.get_host_cpu_features = lambda: _Features()
"""

KERNELS = PRELUDE + r"""
sys.path.insert(0, sys.argv[2])
import json
from facelib.render.fast import _llvm, _zchunk
if sys.argv[1] == "haswell":  # the z-buffer kernel needs AVX-512; compile it for Haswell to time it
    addr = _llvm.compile_ir(_zchunk._chunk_kernel_ir(), "zb_chunk")
    _zchunk._self_test(addr)  # the same bits as the Numba code, or this raises
    _zchunk._STATE["addr"] = addr
import bench_kernels
sys.argv = ["bench_kernels.py", "--repeats", "5", "--out", sys.argv[3]]
bench_kernels.main()
"""

RENDER = PRELUDE + r"""
import json, torch
torch.set_num_threads(1)
from facelib.bench import bench_render
from facelib.repro import kernels
r = bench_render(240, 32, "cpu", batches=4, repeats=3, all_fields=False)
print(json.dumps({"kernels": kernels(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "faces_per_s": r["faces_per_s"], "cpu_ms_per_batch": r["cpu_ms_per_batch"],
                  "load_avg_1min_after": r["load_avg_1min_after"]}))
"""

SIM_ENV = {"NUMBA_CPU_NAME": "haswell", "ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell"}


def run(code, setup, *args):
    env = dict(os.environ, **(SIM_ENV if setup == "haswell" else {}))
    r = subprocess.run([sys.executable, "-c", code, setup, *args], capture_output=True, text=True, env=env,
                       check=True)
    return json.loads(r.stdout[r.stdout.index("{"):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "avx2_vs_avx512.json"))
    args = ap.parse_args()
    kern = {"host": [], "haswell": []}
    rend = {"host": [], "haswell": []}
    tmp = Path(args.out).with_name(".bench_avx2_kernels.json")
    for r in range(args.rounds):
        for setup in ("host", "haswell"):
            kern[setup].append(run(KERNELS, setup, str(HERE), str(tmp))["us_per_face_one_thread"])
            rend[setup].append(run(RENDER, setup))
            print(f"round {r + 1}: {setup}: {rend[setup][-1]['faces_per_s']} faces/s, "
                  f"{rend[setup][-1]['cpu_ms_per_batch']} ms CPU per batch", flush=True)
    tmp.unlink(missing_ok=True)
    out = {"note": "one thread; haswell = code for an AVX2-only CPU run on this CPU (module docstring)"}
    for setup in kern:
        stages = kern[setup][0].keys()
        out[setup] = {
            "us_per_face_one_thread": {k: round(statistics.median(x[k]["median"] for x in kern[setup]), 1)
                                       for k in stages},
            "faces_per_s_one_thread": [x["faces_per_s"] for x in rend[setup]],
            "cpu_ms_per_batch": [x["cpu_ms_per_batch"] for x in rend[setup]],
            "kernels": rend[setup][0]["kernels"],
            "torch_cpu_capability": rend[setup][0]["torch_cpu_capability"],
        }
    out["haswell_over_host_faces_per_s"] = round(statistics.median(out["haswell"]["faces_per_s_one_thread"])
                                                 / statistics.median(out["host"]["faces_per_s_one_thread"]), 2)
    out["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    from facelib import repro  # noqa: E402 - the host: which CPU family these figures are of

    out["cpu"] = repro.cpu_summary()
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
