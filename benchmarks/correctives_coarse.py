"""Do the correctives capture what the base model cannot express, when it is at their scale? (issue 16)

Chapter 6 measures the multi-level model on the wild set, whose out-of-model content (wrinkles of
1-2 mm over a few millimetres, stubble, moles) is finer than the 1,500-vertex template of the ``cpu``
profile. Here the same stage 2 runs on a wild corpus that also has centimetre-scale content the 3DMM
cannot express (``facelib.data.wild.coarse_out_of_model``: bumps and hollows of up to 2 mm at ~40 mm,
reflectance patches at ~45 mm): from chapter 5's stage-1 network (seed S), fine-tuned for chapter 6's
steps with C = 500 correctives and with C = 0, on 1,536 such faces, evaluated on 128 held-out ones.

Prints and saves, per seed: the photometric, geometric and reflectance error of the base level
(stage 1), the final level and the C = 0 run; what the best 3DMM fit leaves (the residual there is
for the correctives); the paired Wilcoxon tests of final against base and against C = 0; and the
mean size of the learned corrections against the true out-of-model displacement.

    .venv/bin/python benchmarks/correctives_coarse.py [--seeds 0 1 2]
        -> benchmarks/results/correctives_coarse.json   (run `make book` first: chapter 5's networks)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import mofa  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.data.wild import WILD_COARSE  # noqa: E402
from facelib.inversefacenet import paired_test  # noqa: E402
from facelib.mofa.multilevel import best_base_fit, decimate  # noqa: E402
from facelib.repro import environment  # noqa: E402

KEYS = ("photometric_rgb", "geometric_mm", "reflectance_rgb")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "correctives_coarse.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "1")))
    cfg = {**settings("05_mofa", args.profile), **settings("06_correctives", args.profile)}
    full = facelib.load_model("open")
    decoder_model, keep = decimate(full, cfg["n_vertices"])
    d = mofa.checkpoint_dir()
    t0 = time.perf_counter()
    coarse = {}
    for part, n, seed in (("train", cfg["train_images"], 7_000_000), ("test", cfg["test_images"], 7_050_000)):
        coarse[part] = mofa.make_corpus(full, n, cfg["size"], seed, keep, out_of_model="coarse",
                                        cache=d / f"coarse_{part}_{n}_{cfg['size']}px_{keep.numel()}v.pt")
    print(f"coarse corpora ready in {time.perf_counter() - t0:.0f} s")
    test = coarse["test"]
    face = decoder_model.masks["face"]
    res = {"seeds": {}}
    for s in args.seeds:
        train_std, _ = mofa.book_corpora(full, cfg, 0, keep, progress=False)  # chapter 5: every seed on this corpus
        base, _, _ = mofa.stage1_network(full, cfg, train_std, s, "cpu", args.profile)
        if s == args.seeds[0]:
            v_fit, r_fit = best_base_fit(base.decoder.cpu(), test["verts_model"], test["albedo"], face)
            res["best_base_fit"] = {"geometric_mm": round(float(mofa.geometric_error(v_fit, test["verts_model"], face).mean()), 4),
                                    "residual_geometry_mm": round(float((test["verts_model"] - v_fit)[:, face].norm(dim=-1).mean()), 4),
                                    "residual_reflectance_rgb": round(float((test["albedo"] - r_fit)[:, face].norm(dim=-1).mean()), 4)}
            res["mean_face"] = {"geometric_mm": round(float(mofa.mean_face_error(base, test).mean()), 4)}
        t1 = time.perf_counter()
        final, _ = mofa.stage2_network(full, base, cfg, coarse["train"], s, args.profile, cfg["C"], name="coarse_final")
        c0, _ = mofa.stage2_network(full, base, cfg, coarse["train"], s, args.profile, 0, name="coarse_C0")
        train_s = time.perf_counter() - t1
        ev = {"base": mofa.evaluate(base, test)["base"], "final": mofa.evaluate(final, test)["final"],
              "c0": mofa.evaluate(c0, test)["final"]}
        with torch.no_grad():
            lv = final(test["image"], landmarks=test["landmarks"]).levels
        row = {lvl: {k: round(float(ev[lvl][k].mean()), 4) for k in KEYS} for lvl in ev}
        row["final_vs_base"] = {k: paired_test(ev["base"][k], ev["final"][k]) for k in KEYS}
        row["final_vs_c0"] = {k: paired_test(ev["c0"][k], ev["final"][k]) for k in KEYS}
        row["correction_size"] = {"geometry_mm": round(float(lv.F_g.norm(dim=-1)[:, face].mean()), 4),
                                  "reflectance_rgb": round(float(lv.F_r.norm(dim=-1)[:, face].mean()), 4)}
        row["stage2_seconds"] = round(train_s, 1)
        res["seeds"][str(s)] = row
        print(f"seed {s}: " + "; ".join(f"{k}: base {row['base'][k]:.4f}, final {row['final'][k]:.4f}, C=0 {row['c0'][k]:.4f}"
                                        for k in KEYS))
    out = {"profile": args.profile, "coarse": WILD_COARSE, "train_images": cfg["train_images"],
           "test_images": cfg["test_images"], "C": cfg["C"], "steps2": cfg["steps2"], "n_vertices": cfg["n_vertices"],
           "command": "python benchmarks/correctives_coarse.py --seeds S", "environment": environment(), **res}
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
