"""The open model built by real processes: two at once into one empty cache, with different thread
counts (the probe of issue 20: one died on a shared temporary name; the bits must not depend on the
threads), and the README's Python example as written."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BUILD = r"""
import hashlib, sys, tempfile
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[1]))
from facelib.model.open_model import open_model
m = open_model(rebuild=True, progress=False)  # builds and writes the cache, as a first use does
with tempfile.TemporaryDirectory() as d:
    print(hashlib.sha256(m.save(Path(d) / "m.npz").read_bytes()).hexdigest(), torch.get_num_threads())
"""


def _threads_env(n: int, cache: Path) -> dict:
    env = dict(os.environ, FACELIB_CACHE=str(cache))
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = str(n)
    return env


def test_two_processes_build_into_one_empty_cache_with_1_and_2_threads(tmp_path):
    """Both succeed, the cache holds one model file (no temporary left), and both built the same bits
    though one ran on 1 thread (PyTorch, OpenMP, OpenBLAS, Numba) and the other on 2."""
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(n)], env=_threads_env(n, cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    digests = [out.split()[0] for out, _ in outs]
    assert [out.split()[1] for out, _ in outs] == ["1", "2"]
    assert digests[0] == digests[1], "the open model's bits depend on the thread count"
    files = sorted(f.name for f in cache.iterdir())
    assert len(files) == 1 and re.fullmatch(r"open-.+-[0-9a-f]{12}\.npz", files[0]), files
    from facelib.model.facemodel import FaceModel
    with_cache = FaceModel.load(cache / files[0])
    saved = tmp_path / "back.npz"
    assert hashlib.sha256(with_cache.save(saved).read_bytes()).hexdigest() == digests[0]


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## In Python\s+```python\n(.*?)```", text, re.S)
    assert block, "README has no '## In Python' code block"
    return block.group(1)


@pytest.mark.notebooks  # book code at the ci profile's sizes: minutes (5 trainings), so with the chapters
def test_readme_python_example_runs_as_written(tmp_path):
    """The README's Python example, verbatim, in a fresh process (only the cache is a fresh folder
    holding the built open model, so the networks it trains are trained, not loaded)."""
    import shutil

    from facelib.model.open_model import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    for f in cache_dir().glob("open-*.npz"):
        shutil.copy(f, cache / f.name)
    env = dict(os.environ, FACELIB_CACHE=str(cache), FACELIB_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _readme_python()], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| " in r.stdout  # the Table 1 Markdown it prints
