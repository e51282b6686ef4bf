"""Reproducibility: the environment record (facelib.repro), and the same numbers twice on one machine
with the same settings (a training row, and a ci chapter executed twice)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facelib import repro
from facelib.book import save_results
from facelib.model.open_model import cache_dir

ROOT = Path(__file__).resolve().parent.parent


def test_environment_record():
    rec = repro.environment(seed=(0, 1), note="x")
    for key in ("seed", "python", "torch", "numpy", "numba", "torch_threads", "torch_interop_threads",
                "numba_threads", "cpu", "cpu_count", "cpu_flags", "torch_cpu_capability", "platform",
                "machine", "env"):
        assert key in rec, key
    assert rec["seed"] == [0, 1] and rec["note"] == "x"
    assert rec["torch"] == torch.__version__ and rec["torch_threads"] == torch.get_num_threads()
    assert set(rec["cpu_flags"]) <= set(repro.SIMD_FLAGS)
    if Path("/proc/cpuinfo").exists() and rec["machine"] == "x86_64":
        assert "sse4_2" in rec["cpu_flags"]  # every x86-64 CPU the wheels run on has it
        assert rec["torch_cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "NO AVX")
    assert json.loads(json.dumps(rec)) == rec  # JSON-ready
    assert repro.environment(seed=(0, 1), note="x") == rec  # nothing timed or random in it


def test_environment_names_the_model_files_loaded(open_model, tmp_path):
    import hashlib

    import facelib

    facelib.load_model("open")
    files = repro.environment()["model_files"]
    cached = sorted(cache_dir().glob("open-*.npz"), key=lambda p: p.stat().st_mtime)
    assert files["open"] in {hashlib.sha256(p.read_bytes()).hexdigest() for p in cached}
    path = open_model.save(tmp_path / "copy.npz")
    facelib.load_model(str(path))
    files = repro.environment()["model_files"]
    # identical content, identical bytes: the copy has the digest of the file it was loaded from
    assert files[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest() == files["open"]


def test_cpu_flags_come_from_the_cpu_the_code_runs_on():
    llvm = repro._cpuid_flags()
    if llvm is None:
        pytest.skip("llvmlite missing")
    assert repro.cpu_flags() == [f for f in repro.SIMD_FLAGS if f in llvm]
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and "ATEN_CPU_CAPABILITY" not in os.environ:
        assert "avx512f" in llvm  # PyTorch's own CPUID check agrees
    if Path("/proc/cpuinfo").exists() and repro._cpuinfo()[1]:
        # what CPUID reports is at most what the kernel lists (fewer under an emulator such as qemu-user)
        assert set(repro.cpu_flags()) <= repro._cpuinfo()[1]


def test_environment_sees_thread_and_blas_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("FACELIB_THREADS", "1")
    env = repro.environment()["env"]
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["FACELIB_THREADS"] == "1"
    assert "avx" in repro.cpu_summary() or not repro.cpu_flags()


def test_save_results_adds_environment_and_changes_nothing_else(tmp_path, monkeypatch):
    from facelib.book import setup

    monkeypatch.setenv("FACELIB_RESULTS", str(tmp_path))
    setup(7)
    data = {"a": 1.25, "rows": {"x": [1, 2]}, "train_s": 3.5}
    path = save_results("99_test", data, "ci")
    got = json.loads(path.read_text())
    env = got.pop("environment")
    assert got == {"chapter": "99_test", "profile": "ci", **data}
    assert env["seed"] == 7 and env["torch"] == torch.__version__


# ------------------------------------------------------------------------------------------------
# the same bits twice


ROW = r"""
import hashlib, json
import facelib
import facelib.inversefacenet as ifn
from facelib.book import settings, setup
from facelib.data.corpus import SyntheticCorpus
setup(0)
m = facelib.load_model("open")
cfg = settings("inversefacenet", "ci")
cfg.update(n_train=64, iters=20)
corpus = SyntheticCorpus(m, n=64, seed=0, size=cfg["size"])
test = ifn.make_test_set(m, "wild", n=8, seed=2, size=cfg["size"])
net, info = ifn.train_row(m, cfg, "+ model-space loss", corpus, progress=False)
err = ifn.evaluate(m, net, test)
h = hashlib.sha256()
for t in list(net.state_dict().values()) + [corpus.images, corpus.theta]:
    h.update(t.detach().contiguous().numpy().tobytes())
for k in sorted(err):
    if k != "test_ms" and hasattr(err[k], "numpy"):
        h.update(k.encode() + err[k].detach().contiguous().numpy().tobytes())
print(json.dumps({"bits": h.hexdigest(), "loss": info["loss"]}, default=str))
"""


def _fresh_cache(tmp: Path) -> Path:
    """An empty cache holding only the built open model (copied: no rebuild, nothing else reused)."""
    tmp.mkdir(parents=True)
    for f in cache_dir().glob("open-*.npz"):
        shutil.copy(f, tmp / f.name)
    return tmp


def test_training_row_is_bit_identical_twice(tmp_path):
    """A Table 1 row (ci profile, 20 iterations) in two fresh processes with cold corpus and checkpoint
    caches: the rendered corpus, the trained weights and the test errors are the same bits."""
    out = []
    for run in range(2):
        env = dict(os.environ, FACELIB_CACHE=str(_fresh_cache(tmp_path / f"cache{run}")))
        r = subprocess.run([sys.executable, "-c", ROW], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert out[0] == out[1]


TIMING = re.compile(r"(_s|_ms|_hz|_fps|fps|per_s)$")


def _without_timings(d):
    """``d`` less its wall-clock measurements (keys ending in _s, _ms, _hz, fps) and ``environment``."""
    if isinstance(d, dict):
        return {k: _without_timings(v) for k, v in d.items() if not TIMING.search(k) and k != "environment"}
    if isinstance(d, list):
        return [_without_timings(v) for v in d]
    return d


@pytest.mark.notebooks
def test_ci_chapter_results_are_bit_identical_twice(tmp_path):
    """Chapter 2 in the ci profile, executed twice with papermill (fresh kernels, cold corpus caches):
    results/02_sampling.json is the same, number for number (json keeps every float's bits), apart
    from the wall-clock timings; the environment records agree too."""
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    results = []
    for run in range(2):
        env = {"FACELIB_CACHE": str(_fresh_cache(tmp_path / f"cache{run}")),
               "FACELIB_RESULTS": str(tmp_path / f"results{run}")}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            build.execute_notebook(ROOT / "notebooks" / "02_sampling.ipynb", tmp_path / f"out{run}.ipynb", "ci",
                                   failed_dir=tmp_path / "failed")
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        results.append(json.loads((tmp_path / f"results{run}" / "02_sampling.json").read_text()))
    a, b = results
    assert a["environment"] == b["environment"] and a["environment"]["seed"] == 0
    assert _without_timings(a) == _without_timings(b)
    assert len(json.dumps(_without_timings(a))) > 500  # the comparison covers the chapter's numbers


def test_benchmark_threads_follow_the_environment(monkeypatch):
    import numba

    from facelib.bench import set_threads

    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        monkeypatch.setenv("FACELIB_THREADS", "1")
        assert set_threads(2) == 1
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1  # one pool each, the same size
        monkeypatch.delenv("FACELIB_THREADS")
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
