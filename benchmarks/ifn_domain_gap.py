"""How much of InverseFaceNet's wild error is the rendering gap, and how much the faces? (issue 15)

Loads the ``cpu`` profile's trained Table 1 networks (``facelib.load_network``, seed 0; run
``make book`` first) and evaluates them on three held-out sets of 256 faces:

* ``wild``: the chapter's in-the-wild stand-in (``facelib.data.wild``: detail, painted albedo,
  clutter, noise, blur, JPEG, detector-like landmarks);
* ``wild, clean``: the same faces' parameters rendered the Sec. 5 way (no detail, no degradation,
  exact landmarks): the wild *distribution* of faces without the wild *rendering*;
* ``synthetic``: the Sec. 5 prior.

Prints and saves each row's ratio to the mean face (plain and aligned geometric error, NoW-style
error on the first 64 faces) and the R^2 of the first shape and expression coefficients.

    .venv/bin/python benchmarks/ifn_domain_gap.py   # -> benchmarks/results/ifn_domain_gap.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.data.corpus import render_crops  # noqa: E402
from facelib.model.params import ParamLayout  # noqa: E402
from facelib.networks import load_network  # noqa: E402
from facelib.repro import environment  # noqa: E402

ROWS = ("AlexNet", "+ model-space loss, RMS units", "ResNet + model-space loss", "+ breeding (= InverseFaceNet)")
MEASURES = ("geometric_mm", "geometric_aligned_mm", "now_mm")


def main():
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model = facelib.load_model("open")
    size, n, seed = 64, 256, 7
    lay = ParamLayout.from_model(model)
    wild = ifn.make_test_set(model, "wild", n, seed=seed, size=size, n_now=64)
    p = lay.unpack(wild["theta"])
    out = render_crops(model, wild["theta"], size, wild["render_size"])
    clean = dict(wild, x=(out["crop"] * 255).round().to(torch.uint8), mask=out["mask"],
                 landmarks=out["landmarks"].float(),
                 verts=model.geometry(p["shape"], p["expression"]).float())
    clean["target"] = clean["x"].float() / 255
    sets = {"wild": wild, "wild, clean": clean,
            "synthetic": ifn.make_test_set(model, "synthetic", n, seed=seed, size=size, n_now=64)}
    res = {}
    for k, t in sets.items():
        mf = ifn.evaluate_theta(model, ifn.mean_face_theta(model, t["theta"]), t)
        res[k] = {"mean face": {m: round(float(mf[m].nanmean()), 3) for m in MEASURES}}
        print(f"== {k}: mean face " + ", ".join(f"{m} {res[k]['mean face'][m]:.2f}" for m in MEASURES))
        for row in ROWS:
            net = load_network("inversefacenet", row=row, seed=0, profile="cpu").net
            est = ifn.predict(net, t["x"], landmarks=t["landmarks"])
            e = ifn.evaluate_theta(model, est, t)
            r2 = ifn.coefficient_r2(est, t["theta"])
            d = {m: round(float(e[m].nanmean()), 3) for m in MEASURES}
            d["ratio"] = {m: round(d[m] / res[k]["mean face"][m], 3) for m in MEASURES}
            d["r2_shape"] = [round(float(v), 2) for v in r2[lay["shape"]][:6]]
            d["r2_expression"] = [round(float(v), 2) for v in r2[lay["expression"]][:4]]
            res[k][row] = d
            print(f"  {row:32s} x mean face: " + ", ".join(f"{m} {d['ratio'][m]:.3f}" for m in MEASURES)
                  + f"  R2 shape {d['r2_shape']}")
    path = Path(__file__).resolve().parent / "results" / "ifn_domain_gap.json"
    atomic_write_bytes(path, (json.dumps({"size": size, "n": n, "seed": seed, "training_seed": 0, "profile": "cpu",
                                          "environment": environment(), "sets": res}, indent=1) + "\n").encode())
    print("wrote", path)


if __name__ == "__main__":
    main()
