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

from .device import pick_device

PROFILES = ("ci", "cpu", "gpu")

# One table of sizes per chapter and profile: "ci" runs in minutes on a 2-core CPU, "cpu" is the
# published book on a laptop, "gpu" is paper scale.
SETTINGS = {
    "01_face_model": {
        "ci": dict(image_size=96, slider_frames=5, sphere_res=24, grid_faces=4),
        "cpu": dict(image_size=240, slider_frames=9, sphere_res=48, grid_faces=8),
        "gpu": dict(image_size=240, slider_frames=25, sphere_res=64, grid_faces=16),
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
    """Seed every generator (Python, NumPy, PyTorch) and pick the device; returns the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return pick_device(device)


def results_dir() -> Path:
    """``$FACELIB_RESULTS`` or ``results/`` at the repository root (or the working directory)."""
    env = os.environ.get("FACELIB_RESULTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return (here if (here / "pyproject.toml").exists() else Path.cwd()) / "results"


def save_results(chapter: str, data: dict, profile: str) -> Path:
    """Write ``results/<chapter>.json`` (atomically) with ``profile`` added; returns the path."""
    path = results_dir() / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"chapter": chapter, "profile": profile, **data}, indent=1, sort_keys=True,
                              default=float) + "\n")
    os.replace(tmp, path)
    return path
