"""A MoFA training process killed with SIGKILL midway (checkpoint written every step, so the kill
often lands in a write): the checkpoint left behind is whole, and the rerun resumes from it to the
weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
STEPS = 40

RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import facelib
from facelib.mofa import make_corpus, train
from facelib.mofa.multilevel import decimate
from test_mofa import SIZE, net_for
m = facelib.load_model("open")
model, keep = decimate(m, 400)
corpus = make_corpus(m, 6, SIZE, seed=0, keep=keep, chunk=6, progress=False)
net = net_for(model, 0)
ck = sys.argv[3] if sys.argv[3] != "-" else None
print("ready", flush=True)
train(net, corpus, int(sys.argv[4]), 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, checkpoint_every=1, progress=False)
torch.save(net.state_dict(), sys.argv[2])
"""


def _cmd(out, ck, steps=STEPS):
    return [sys.executable, "-c", RUN, str(TESTS), str(out), str(ck) if ck else "-", str(steps)]


def test_sigkill_midway_then_resume(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(_cmd(tmp_path / "ref.pt", None), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ck = tmp_path / "ck" / "s1.pt"
    p = subprocess.Popen(_cmd(tmp_path / "killed.pt", ck), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    while not ck.exists() and time.monotonic() - t0 < 300:  # the first checkpoint is written
        time.sleep(0.005)
    time.sleep(0.05)  # a few steps (and writes) later
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    assert p.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.pt").exists(), "the run finished before the kill; nothing was tested"
    state = torch.load(ck, weights_only=False)  # whole: the temporary file is renamed only when complete
    assert 1 <= state["step"] < STEPS
    rerun = subprocess.run(_cmd(tmp_path / "resumed.pt", ck), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    a = torch.load(tmp_path / "ref.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert torch.load(ck, weights_only=False)["step"] == STEPS
