"""How large, in pixels, is each shape component of the open model at the book's input sizes, and
how much of it is the random bump field (issues 15-17: why networks learn the first shape components
only)?

For every shape component ``k`` of the open model (Eq. 2) it reports

* ``rms_mm``: the RMS displacement over the face vertices of one sigma, ``sigma_k b_k``, in mm;
* the same in pixels at the chapters' input sizes: CoarseNet's 48 pixels over ``FRAME_MM`` (230 mm),
  and InverseFaceNet's / MoFA's 64-pixel crop of the landmark box (its side in mm measured on the
  mean face, frontal);
* ``bump_share``: the share of the component's variance in the identity population that comes from
  the smooth random bump field of :func:`facelib.model.open_model.sample_identity` rather than from the
  anatomical parameters (the population rebuilt with the bumps' amplitudes set to 0, same seed).

    .venv/bin/python benchmarks/open_model_shape_scale.py   # about 2 min -> benchmarks/results/open_model_shape_scale.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib.model import open_model as om  # noqa: E402
from facelib.coarse_fine import FRAME_MM  # noqa: E402
from facelib.data.corpus import CROP_MARGIN  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "open_model_shape_scale.json"


def main() -> int:
    m = facelib.load_model("open")
    face = m.masks["face"].cpu().numpy()
    basis = m.shape_basis.double().cpu().numpy()  # (K, V, 3), orthonormal over all 3V coordinates
    sigma = m.sigma_s.double().cpu().numpy()
    rms_mm = sigma * np.sqrt((basis[:, face] ** 2).sum(-1).mean(1))
    lm = m.mean_shape[m.landmarks].double().cpu().numpy()  # (68, 3), frontal: x, y in mm
    box_mm = float((lm[:, :2].max(0) - lm[:, :2].min(0)).max() * (1 + 2 * CROP_MARGIN))

    T = om.build_template()
    rng = np.random.default_rng(om.SEED)  # the population of the build
    X = np.empty((om.N_ID, T.n_vertices * 3))
    Xa = np.empty_like(X)
    for i in range(om.N_ID):
        p = om.sample_identity(rng)
        X[i] = om.positions(T, p).ravel()
        Xa[i] = om.positions(T, dict(p, rbf_a=np.zeros_like(p["rbf_a"]))).ravel()
    B = basis.reshape(len(sigma), -1)
    c_all = (X - X.mean(0)) @ B.T
    c_bump = c_all - (Xa - Xa.mean(0)) @ B.T
    bump_share = c_bump.var(0) / c_all.var(0)
    rows = [dict(component=k + 1, rms_mm=round(float(rms_mm[k]), 3),
                 px_coarsenet_48=round(float(rms_mm[k] * 48 / FRAME_MM), 3),
                 px_crop_64=round(float(rms_mm[k] * 64 / box_mm), 3),
                 bump_share=round(float(bump_share[k]), 3)) for k in range(len(sigma))]
    out = dict(landmark_box_mm=round(box_mm, 1), frame_mm=FRAME_MM,
               bump_share_of_all_shape_variance=round(float(c_bump.var(0).sum() / c_all.var(0).sum()), 4),
               components=rows)
    atomic_write_bytes(OUT, json.dumps(out, indent=1).encode())
    print(f"landmark box {box_mm:.0f} mm; bumps hold {out['bump_share_of_all_shape_variance']:.1%} of the shape variance")
    print("component  rms mm  px@48 (CoarseNet)  px@64 (crop)  bump share")
    for r in rows[:20]:
        print(f"{r['component']:9d}  {r['rms_mm']:6.2f}  {r['px_coarsenet_48']:17.2f}  {r['px_crop_64']:12.2f}  {r['bump_share']:10.2f}")
    print(f"-> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
