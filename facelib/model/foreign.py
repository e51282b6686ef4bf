"""Model: ``foreign``, a stand-in for a face model the book's networks never saw.

The networks of chapters 3-7 learn from faces of the ``open`` model, and a later evaluation will run
them on faces of a model this project has never seen.  Whether they learned to read a face, or the
open population's habits, shows only on faces from elsewhere.  This module builds such faces with the
open model's generator (:mod:`facelib.model.open_model`) and other statistics, into a model of their own
(its own mean, PCA bases and sigmas):

* **anatomy**: every anatomical parameter's mean moved by a fixed draw of up to one of the open
  population's standard deviations (:data:`MEAN_SHIFT_SD`), and :data:`SPREAD` times its spread;
* **a random field of other sizes**: smooth bumps of 10-30 mm (the open model's: 7-22 mm) at
  :data:`FIELD_AMPLITUDE` times the amplitude;
* **lopsided faces**: the features tilted and sheared across the face by a few millimetres
  (:data:`TILT_SD_MM`), a variation the open population does not have at all;
* **other skin**: darker and redder on average, with more blotches.

What it shares with the open model, and so does not test: the template (mesh, regions, landmark
vertices), the shapes of the features (nose, lips, brows, eyes), the expression blendshapes, and the
renderer.  A scanned model (the Basel Face Model, FLAME) differs in all of these as well.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import open_model as om
from .facemodel import FaceModel

SEED = 77_000_001  # the population's draws (identities: SEED, appearances: SEED + 1, the mean shift: SEED + 2)
MEAN_SHIFT_SD = 1.0  # each anatomical mean moves by U(-1, 1) of the open population's standard deviation
SPREAD = 1.35  # the anatomical spread, times the open population's
FIELD_AMPLITUDE = 1.5  # the random field's bump amplitude, times the open population's
FIELD_SIZES_MM = (10.0, 30.0)  # the random field's bump sizes (the open model's: 7-22 mm)
TILT_SD_MM = 2.0  # lopsided faces: the tilt and the shear of the features, mm at the cheek bones


def identity_mean() -> dict:
    """The foreign population's neutral identity: the open mean moved by the fixed draw (no random field)."""
    keys = list(om.IDENTITY_MEAN)
    shift = np.random.default_rng(SEED + 2).uniform(-MEAN_SHIFT_SD, MEAN_SHIFT_SD, len(keys))
    p = {k: om.IDENTITY_MEAN[k] + om.IDENTITY_SD[k] * float(u) for k, u in zip(keys, shift)}
    p["rbf_c"], p["rbf_s"], p["rbf_a"] = np.zeros((0, 2)), np.ones(0), np.zeros(0)
    p["tilt"], p["shear"] = 0.0, 0.0
    return p


def sample_identity(rng: np.random.Generator) -> dict:
    """One identity of the foreign population (the keys of :func:`facelib.model.open_model.sample_identity`
    plus ``tilt`` and ``shear`` in mm)."""
    mean = identity_mean()
    p = {k: mean[k] + SPREAD * om.IDENTITY_SD[k] * rng.standard_normal() for k in om.IDENTITY_MEAN}
    p["rbf_c"] = np.stack([rng.uniform(-70, 70, om.N_RBF), rng.uniform(-95, 85, om.N_RBF)], -1)
    p["rbf_s"] = rng.uniform(*FIELD_SIZES_MM, om.N_RBF)
    p["rbf_a"] = rng.standard_normal(om.N_RBF) * 1.1 * FIELD_AMPLITUDE
    p["tilt"], p["shear"] = rng.normal(0.0, TILT_SD_MM, 2)
    return p


def sample_appearance(rng: np.random.Generator) -> dict:
    """One appearance of the foreign population: the open population's draw, darker and redder, with
    twice the blotches."""
    a = om.sample_appearance(rng)
    a["tone"] = 0.75 * a["tone"]
    a["red"] = 1.5 * a["red"] + 0.5
    a["rbf_a"] = 2.0 * a["rbf_a"]
    return a


def build_foreign_model(progress: bool = True) -> FaceModel:
    """Build the ``foreign`` model from scratch (deterministic; as long as the open model's build)."""
    return om.build_population_model(
        "foreign", SEED, sample_identity, identity_mean(), sample_appearance,
        description=__doc__.split("\n\n")[0].strip(), progress=progress,
        meta=dict(mean_shift_sd=MEAN_SHIFT_SD, spread=SPREAD, field_amplitude=FIELD_AMPLITUDE,
                  field_sizes_mm=list(FIELD_SIZES_MM), tilt_sd_mm=TILT_SD_MM))


def _source_hash() -> str:
    src = b"".join(Path(__file__).with_name(n).read_bytes() for n in ("foreign.py", "open_model.py", "facemodel.py"))
    return hashlib.sha256(src).hexdigest()[:12]


def cache_path() -> Path:
    """The ``foreign`` model's cache file (its name carries a hash of this module's and the open builder's source)."""
    return om.cache_dir() / f"foreign-{om.BUILDER_VERSION}-{_source_hash()}.npz"


def foreign_model(rebuild: bool = False, progress: bool = True) -> FaceModel:
    """The ``foreign`` model (``facelib.load_model("foreign")``): loaded from the cache, or built and cached
    on first use."""
    return om.cached_model(cache_path(), lambda: build_foreign_model(progress=progress), rebuild)
