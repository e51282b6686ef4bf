"""Book: what every chapter notebook shares (profiles, seeding, results files).

A chapter's papermill ``parameters`` cell sets ``profile`` (``"ci"``, ``"cpu"``, ``"gpu"``),
``device`` (``"auto"``) and ``seed``; :func:`settings` turns the profile into the chapter's sizes from
the one table below, and :func:`save_results` writes the numbers the chapter measured to
``results/<chapter>.json`` so the book, the tests and readers see the same figures.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from ..device import pick_device

PROFILES = ("ci", "cpu", "gpu")

_RUN: dict = {}  # what setup() was given (the seed), for the results' environment record

# InverseFaceNet's training recipe (chapter 3, "what changed"); landmarks: the crop's 68 landmarks as a
# second input, its branch pre-trained on landmarks alone for landmark_steps x landmark_batch faces whose
# shape coefficients are drawn landmark_spread times as wide as the Sec. 5 prior's (benchmarks/ifn_landmarks.py);
# the cpu profile's 8,000 steps (4,000 until 2026-12-07) measured in benchmarks/ifn_budget.py (chapter 3, point 8).
# breed_keep: each breeding round trains on the children and as many Sec. 5 faces (not in the paper; ifn.breed(keep=),
# measured in benchmarks/ifn_budget.py: the bred row stops drifting, chapter 3 point 8).
_IFN_OPTIONS = dict(norm="batch", standardize=True, dropout=0.0, schedule="cosine", warmup=0.05, landmarks=True,
                    landmark_spread=2.0, breed_keep=0.5)

# One table of sizes per chapter and profile: "ci" runs in minutes on a 2-core CPU, "cpu" is the
# published book on a laptop, "gpu" is paper scale.
SETTINGS = {
    "01_face_model": {
        "ci": dict(image_size=96, slider_frames=5, sphere_res=24, grid_faces=4),
        "cpu": dict(image_size=240, slider_frames=9, sphere_res=48, grid_faces=8),
        "gpu": dict(image_size=240, slider_frames=25, sphere_res=64, grid_faces=16),
    },
    # InverseFaceNet (chapters 2-4 share it, so a network trained in one chapter is reused by the next):
    # size N of the network input, Sec. 5 corpus size, mini-batches per Table 1 row (ResNet: twice),
    # the regressors' widths, Algorithm 1's rounds, the corpus R and the held-out test sets; the training
    # seeds of every row, the learning-curve probe (faces per set, iterations between points), the test
    # faces that also get the NoW-style error of chapters 5-8 (n_now), and the training options of issue 15 (batch norm, outputs in prior units, no dropout, warm-up + cosine);
    # workers: (row, seed) runs trained that many side by side on the CPU, one thread each (train_rows).
    "inversefacenet": {
        "ci": dict(size=48, n_train=512, iters=40, batch=16, lr=3e-3, alexnet_width=0.125, alexnet_fc=128,
                   resnet_width=0.125, resnet_blocks=(1, 1, 1, 1), breed_rounds=2, n_real=64, n_test=48,
                   n_hist=500, n_show=8, seeds=(0, 1), n_curve=16, curve_every=20, n_now=8, landmark_steps=100,
                   landmark_batch=64, workers=2, **_IFN_OPTIONS),
        "cpu": dict(size=64, n_train=6144, iters=1800, batch=32, lr=3e-3, alexnet_width=0.25, alexnet_fc=512,
                    resnet_width=0.25, resnet_blocks=(2, 2, 2, 2), breed_rounds=4, n_real=768, n_test=256,
                    n_hist=4000, n_show=16, seeds=(0, 1, 2), n_curve=64, curve_every=300, n_now=64,
                    landmark_steps=8000, landmark_batch=256, workers=2, **_IFN_OPTIONS),
        "gpu": dict(size=240, n_train=100_000, iters=75_000, batch=32, lr=1e-3, alexnet_width=1.0,
                    alexnet_fc=4096, resnet_width=1.0, resnet_blocks=(3, 4, 6, 3), breed_rounds=8,
                    n_real=5000, n_test=1000, n_hist=20_000, n_show=16, seeds=(0, 1, 2), n_curve=256,
                    curve_every=5000, n_now=256, landmark_steps=20_000, landmark_batch=256, workers=1,
                    **_IFN_OPTIONS),
    },
    # Richardson et al. (chapter 7): model components kept, CoarseNet's input size and FineNet's grid,
    # CoarseNet width / blocks / steps (the GMSE and the MSE net each), feedback iterations, the fine
    # detail (mm, pool of fields), FineNet training / held-out faces, its width and steps (the full
    # criterion; each ablation), end-to-end steps, CPU threads (1 on the shared 2-core CPU), the
    # training seeds of the GMSE CoarseNet, held-out faces and steps between points of its learning curves.
    # CoarseNet's landmark input (68 points; 0: the paper's image alone), its branch's pre-training steps and
    # batch, and the share of training states that are the network's own estimates (coarse_fine.own_states);
    # workers: CoarseNets, their landmark branches and FineNets trained that many side by side (train_coarsenets,
    # run_in_threads: one thread, one core each, the same bits).
    "07_coarse_fine": {
        "ci": dict(n_shape=30, n_expression=10, coarse_size=48, fine_size=64, coarse_width=8,
                   coarse_blocks=(1, 1, 1, 1), coarse_steps=30, coarse_batch=8, coarse_lr=1e-3, iterations=4,
                   detail_mm=2.0, detail_pool=8, fine_faces=16, test_faces=8, eval_batch=8, fine_width=8,
                   fine_head=16, fine_steps=15, ablation_steps=6, fine_batch=4, fine_lr=1e-3, e2e_steps=3,
                   e2e_batch=4, threads=1, seeds=(0, 1), curve_faces=8, curve_every=15, landmarks=68,
                   landmark_steps=30, landmark_batch=32, p_own=0.5, workers=2),
        "cpu": dict(n_shape=30, n_expression=10, coarse_size=48, fine_size=96, coarse_width=8,
                    coarse_blocks=(1, 1, 1, 1), coarse_steps=3000, coarse_batch=16, coarse_lr=1e-3, iterations=4,
                    detail_mm=2.0, detail_pool=48, fine_faces=128, test_faces=48, eval_batch=16, fine_width=8,
                    fine_head=32, fine_steps=250, ablation_steps=80, fine_batch=8, fine_lr=1e-3, e2e_steps=40,
                    e2e_batch=8, threads=1, seeds=(0, 1, 2), curve_faces=64, curve_every=500, landmarks=68,
                    landmark_steps=4000, landmark_batch=256, p_own=0.5, workers=2),
        "gpu": dict(n_shape=80, n_expression=20, coarse_size=128, fine_size=200, coarse_width=32,
                    coarse_blocks=(2, 2, 2, 2), coarse_steps=6000, coarse_batch=64, coarse_lr=1e-3, iterations=4,
                    detail_mm=2.0, detail_pool=256, fine_faces=1024, test_faces=256, eval_batch=64,
                    fine_width=32, fine_head=64, fine_steps=1500, ablation_steps=500, fine_batch=16, fine_lr=1e-3,
                    e2e_steps=300, e2e_batch=16, threads=None, seeds=(0, 1, 2), curve_faces=128, curve_every=1000,
                    landmarks=68, landmark_steps=8000, landmark_batch=256, p_own=0.5, workers=1),
    },
    # MoFA / the multi-level model (chapters 5-6; chapter 6 reuses chapter 5's stage-1 network and
    # corpora): input size, decimated template, encoder, wild training / test faces, stage-1 steps,
    # batch, learning rate, training seeds, learning-curve faces and interval, analysis-by-synthesis
    # steps (mofa.fit_codes) and CPU threads (1: on a shared 2-core CPU two threads spin against each
    # other and a step takes 100x longer); the landmark input (mofa.MoFA landmarks, landmark_geometry:
    # the base geometry read from the detected landmarks) and its branch's pre-training steps, batch and the
    # spread of its faces' shape coefficients (2: twice the prior's, benchmarks/mofa_landmarks.py);
    # workers: the seeds' stage-1 trainings and chapter 6's stage-2 runs that many side by side
    # (mofa.stage1_networks, stage2_networks: one thread, one core each, the same bits as one by one).
    "05_mofa": {
        "ci": dict(size=64, n_vertices=600, encoder="resnet", width=0.125, encoder_kwargs=dict(blocks=(1, 1, 1, 1)),
                   train_images=48, test_images=16, steps1=50, batch=8, lr=1e-3, threads=1, seeds=(0, 1),
                   curve_faces=8, curve_every=25, fit_steps=20, landmarks=True, landmark_geometry=True,
                   landmark_steps=100, landmark_batch=64, landmark_spread=2.0, workers=2),
        "cpu": dict(size=64, n_vertices=1500, encoder="resnet", width=0.25, encoder_kwargs=dict(blocks=(1, 1, 1, 1)),
                    train_images=1536, test_images=128, steps1=4000, batch=8, lr=1e-3, threads=1, seeds=(0, 1, 2),
                    curve_faces=32, curve_every=500, fit_steps=400, landmarks=True, landmark_geometry=True,
                    landmark_steps=4000, landmark_batch=256, landmark_spread=2.0, workers=2),
        "gpu": dict(size=128, n_vertices=22594, encoder="alexnet", width=1.0, encoder_kwargs={},
                    train_images=8192, test_images=512, steps1=12000, batch=16, lr=1e-3, threads=None,
                    seeds=(0, 1, 2), curve_faces=128, curve_every=1000, fit_steps=600, landmarks=True,
                    landmark_geometry=True, landmark_steps=20000, landmark_batch=256, landmark_spread=2.0,
                    workers=1),
    },
    # Fitting by optimisation and a real photo (chapter 8): held-out wild faces and their frame size,
    # the fit's two stages and its trace interval, the photo crop and fit of `facelib reconstruct`, CPU
    # threads (the fit's small tensor ops gain nothing from two on a shared 2-core CPU), and the wild
    # faces of the foreign model (facelib.model.foreign) and of the open one drawn alike.
    "08_fitting": {
        "ci": dict(n_faces=2, frame_size=64, iters=(16, 4), trace_every=8, photo_size=64, photo_iters=(16, 4),
                   threads=1, n_foreign=2),
        "cpu": dict(n_faces=24, frame_size=128, iters=(200, 80), trace_every=40, photo_size=128,
                    photo_iters=(200, 80), threads=1, n_foreign=64),
        "gpu": dict(n_faces=64, frame_size=240, iters=(300, 150), trace_every=25, photo_size=240,
                    photo_iters=(300, 150), threads=None, n_foreign=128),
    },
    # Correctives (chapter 6): C of the main run, the C sweep, stage-2 steps, encoder-speed repeats,
    # learning-curve interval (on chapter 5's curve faces).
    "06_correctives": {
        "ci": dict(C=16, Cs=[0, 16], steps2=10, hz_repeats=3, curve_every=5),
        "cpu": dict(C=500, Cs=[0, 100, 250, 500], steps2=800, hz_repeats=10, curve_every=100),
        "gpu": dict(C=500, Cs=[0, 100, 250, 500], steps2=3000, hz_repeats=50, curve_every=500),
    },
}


def settings(chapter: str, profile: str) -> dict:
    """The sizes of ``chapter`` for ``profile``; a clear error for an unknown one."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    if chapter not in SETTINGS:
        raise ValueError(f"chapter {chapter!r} has no settings; known: {sorted(SETTINGS)}")
    return dict(SETTINGS[chapter][profile])


def setup(seed: int = 0, device="auto") -> torch.device:
    """Seed every generator (Python, NumPy, PyTorch) and pick the device; returns the device.

    ``$FACELIB_THREADS`` sets PyTorch's CPU threads: on a CPU shared with other jobs, ``1`` avoids
    OpenMP threads spinning against each other (we measured a training step 10x slower with 2 threads
    than with 1 on our 2-core machine under load); unset, PyTorch's default is kept.
    """
    threads = os.environ.get("FACELIB_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    _RUN["seed"] = seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return pick_device(device)


def chapter(name: str, profile: str, seed: int = 0, device="auto", base: str | None = None) -> tuple:
    """A chapter's setup in one call: its sizes (:func:`settings`; with ``base``, that chapter's sizes
    updated by this one's, e.g. chapter 6 on chapter 5's), every generator seeded and the device
    picked (:func:`setup`), PyTorch's and Numba's CPU threads set where the profile fixes them (a
    ``threads`` entry: on a small shared CPU one thread per process is faster than two spinning ones),
    Plotly's renderer for the book; prints the profile.  Returns ``(cfg, device)``."""
    from .viz import setup_plotly

    cfg = {**(settings(base, profile) if base else {}), **settings(name, profile)}
    dev = setup(seed, device)
    if cfg.get("threads"):
        import numba

        numba.set_num_threads(cfg["threads"])  # Numba's OpenMP kernels would reset PyTorch's count
        torch.set_num_threads(cfg["threads"])
    setup_plotly()
    print(f"profile {profile!r} on {dev}: {cfg}")
    return cfg, dev


def _benchmarks_root() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def benchmark_results(name: str):
    """The record ``benchmarks/results/<name>`` of this checkout, parsed (what a chapter quotes from a
    benchmark script), or None where there is no such file (an installed package has no benchmarks).
    Found from the package's location, so it does not depend on where the notebook runs."""
    path = _benchmarks_root() / name
    return json.loads(path.read_text()) if path.is_file() else None


def benchmark_records(pattern: str) -> list:
    """Every record ``benchmarks/results/<pattern>`` of this checkout (a glob, e.g.
    ``"coarse_landmarks/landmarks-own-branch_s*.json"``: one file per run), parsed, in the order of their
    paths; an empty list where none matches (or in an installed package)."""
    return [json.loads(p.read_text()) for p in sorted(_benchmarks_root().glob(pattern)) if p.is_file()]


def markdown_table(header, rows) -> str:
    """A Markdown table: ``header`` (column titles) and ``rows`` (lists of cells, printed with ``str``)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def mean_std(x, digits: int | None = 4) -> dict:
    """``{"mean", "std"}`` of the per-face values ``x (n,)``, rounded to ``digits`` (None: not rounded;
    a results file's entry; the std is the sample standard deviation, as ``torch.Tensor.std``, and 0
    for a single value)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    m, s = float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0
    return {"mean": m, "std": s} if digits is None else {"mean": round(m, digits), "std": round(s, digits)}


def mean_of(values) -> float:
    """The mean of per-face values (a tensor, an array or a list) in float64, as a float."""
    return float(torch.as_tensor(values, dtype=torch.float64).mean())


def seed_spread(values) -> tuple:
    """A figure over training seeds: ``(mean, std, values)`` of one value per seed (the population
    std, ``numpy.std``, as the chapters' "mean ± std over seeds")."""
    v = [float(x) for x in values]
    return float(np.mean(v)), float(np.std(v)), v


def pm(values, fmt: str = ".2f") -> str:
    """``"mean ± std"`` of one value per seed (:func:`seed_spread`), each formatted with ``fmt``."""
    m, s, _ = seed_spread(values)
    return f"{m:{fmt}} ± {s:{fmt}}"


def cell(x, fmt: str = ".2f", missing: str = "–") -> str:
    """A table cell: ``missing`` for None, ``"mean ± std"`` for a ``(mean, std, ...)`` tuple (e.g.
    :func:`seed_spread`) or a ``{"mean", "std"}`` dict (:func:`mean_std`), else the number."""
    if x is None:
        return missing
    if isinstance(x, dict):
        return f"{x['mean']:{fmt}} ± {x['std']:{fmt}}"
    if isinstance(x, tuple):
        return f"{x[0]:{fmt}} ± {x[1]:{fmt}}"
    return f"{x:{fmt}}"


def change_words(a: float, b: float, what: str = "the error", unit: str = "mm", fmt: str = ".2f",
                 tol: float = 0.0, percent: bool = False) -> str:
    """Words for a change of ``what`` from ``a`` to ``b``: "lowered/raised {what} from a to b {unit}"
    (with the relative change when ``percent``); a change under ``tol`` (relative) counts as none:
    "left {what} at a {unit} (to b)"."""
    a, b = float(a), float(b)
    u = f" {unit}" if unit else ""
    if abs(b - a) < tol * abs(a):
        return f"left {what} at {a:{fmt}}{u} (to {b:{fmt}})"
    out = f"{'lowered' if b < a else 'raised'} {what} from {a:{fmt}} to {b:{fmt}}{u}"
    return out + (f" ({100 * (b - a) / a:+.0f}%)" if percent and a else "")


def results_dir() -> Path:
    """``$FACELIB_RESULTS`` or ``results/`` at the repository root (or the working directory)."""
    env = os.environ.get("FACELIB_RESULTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    return (here if (here / "pyproject.toml").exists() else Path.cwd()) / "results"


def save_results(chapter: str, data: dict, profile: str) -> Path:
    """Write ``results/<chapter>.json`` (atomically) with ``profile`` added; returns the path.

    It also adds ``environment``: :func:`facelib.repro.environment` with the seed given to
    :func:`setup` (versions, thread counts, CPU flags: what the numbers depend on besides the code).
    """
    from ..repro import environment

    path = results_dir() / f"{chapter}.json"
    record = {"chapter": chapter, "profile": profile, **data}
    record.setdefault("environment", environment(seed=_RUN.get("seed")))
    text = json.dumps(record, indent=1, sort_keys=True, default=float)
    return atomic_write_bytes(path, (text + "\n").encode())
