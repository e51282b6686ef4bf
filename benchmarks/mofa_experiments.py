"""Why MoFA's stage-1 shapes go wrong at our scale: one training change at a time (issue 16).

Each variant trains one stage-1 network (the ``cpu`` profile of chapter 5: corpus, encoder, decimated
template, steps) with some settings changed and evaluates it on the 128 held-out wild faces; a row
is appended to ``benchmarks/results/mofa_experiments.json`` (the table chapter 5 quotes; the stage-2
runs of ``STAGE2_RUNS`` go to ``mofa_stage2_experiments.json``, the weight table of chapter 6): geometric,
photometric and landmark error of the base level, the energy ``sum alpha^2`` of the regressed
shape, expression and reflectance codes, and the reference rows of the same faces (the mean face,
the untrained encoder).

    .venv/bin/python benchmarks/mofa_experiments.py VARIANT [VARIANT ...] [--seed S]   # VARIANTS, FITS, STAGE2_RUNS
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib import mofa  # noqa: E402
from facelib.mofa import selfsup
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.mofa.multilevel import decimate  # noqa: E402

# Training variants: changes to the chapter-5 run before issue 16 (the supplement's stage-1 weights,
# selfsup.STAGE1_PAPER); loss weights by name, or lr, batch, steps (a factor), augment, encoder.
VARIANTS = {
    "paper": {},
    "reg_1e-3": dict(reg=1e-3),
    "reg_3e-3": dict(reg=3e-3),
    "reg_1e-2": dict(reg=1e-2),
    "reg_1e-1": dict(reg=1e-1),
    "reg_1": dict(reg=1.0),
    "rstd_1": dict(rstd=1.0),
    "reg_1e-2+rstd_1": dict(reg=1e-2, rstd=1.0),
    "reg_1e-1+rstd_1": dict(reg=1e-1, rstd=1.0),
    "reg_3e-2": dict(reg=3e-2),
    "reg_1e-2+lr_3e-3": dict(reg=1e-2, lr=3e-3),
    "reg_1e-2+batch_32": dict(reg=1e-2, batch=32),
    "reg_1e-2+steps_x3": dict(reg=1e-2, steps=3.0),
    "reg_1e-2+lr_3e-3+steps_x3": dict(reg=1e-2, lr=3e-3, steps=3.0),
    "reg_1e-1+lr_3e-3+steps_x3": dict(reg=1e-1, lr=3e-3, steps=3.0),
    "reg_1e-2+spatial_4": dict(reg=1e-2, encoder_kwargs=dict(blocks=(1, 1, 1, 1), spatial=4)),
    "reg_1e-2+spatial_2": dict(reg=1e-2, encoder_kwargs=dict(blocks=(1, 1, 1, 1), spatial=2)),
    "reg_1e-2+alexnet_bn": dict(reg=1e-2, encoder="alexnet", encoder_kwargs=dict(norm="batch", dropout=0.0)),
    "reg_1e-2+augment": dict(reg=1e-2, augment=dict(shift=0.06, scale=(0.9, 1.1))),
    "reg_1e-2+augment+batch_32": dict(reg=1e-2, batch=32, augment=dict(shift=0.06, scale=(0.9, 1.1))),
    "reg_1e-1+augment": dict(reg=1e-1, augment=dict(shift=0.06, scale=(0.9, 1.1))),
    "landmarks_only": dict(photo=0.0),
    "photo_x10": dict(photo=19.0),
}
# Analysis by synthesis (mofa.fit_codes): the loss minimised per face over the code, no encoder, on the
# first 64 held-out faces: how much geometry the loss itself can identify.  At 128 px the landmark term
# (px^2) is 4x larger, so w_reg is scaled by 4 to keep the balance.
FITS = {
    "fit": dict(),
    "fit_landmarks_only": dict(photo=0.0),
    "fit_true_landmarks_only": dict(photo=0.0, true_landmarks=True),
    "fit_128px": dict(size=128, reg=0.4),
    "fit_reg_1e-2": dict(reg=1e-2),
    "fit_true_landmarks_only_reg_1e-2": dict(photo=0.0, true_landmarks=True, reg=1e-2),
}
# Stage 2 (chapter 6): fine-tuning chapter 5's seed-0 stage-1 network for the cpu profile's steps with
# the supplement's stage-2 weights changed (selfsup.STAGE2_PAPER); C = 500 and, with "c0", also C = 0.
STAGE2_RUNS = {
    "stage2_paper": dict(c0=True),
    "stage2_photo_1.9": dict(photo=1.9, c0=True),
    "stage2_photo_1.9+smo_x10": dict(photo=1.9, smo=3.2e5),
    "stage2_photo_3.8": dict(photo=3.8, c0=True),
    "stage2_photo_3.8+smo_x10": dict(photo=3.8, smo=3.2e5),
}
OUT = Path(__file__).resolve().parent / "results" / "mofa_experiments.json"
OUT_STAGE2 = OUT.with_name("mofa_stage2_experiments.json")  # the rows of chapter 6's weight table


def save_row(row: dict, out: Path = OUT) -> None:
    table = json.loads(out.read_text()) if out.exists() else []
    key = lambda r: (r["variant"], r["seed"], r["steps"])  # noqa: E731
    table = [r for r in table if key(r) != key(row)] + [row]
    atomic_write_bytes(out, json.dumps(table, indent=1).encode())  # a temp name of its own, renamed


def run_fit(name: str, full, cfg: dict, test_set: dict, keep, steps: int = 600, n: int = 64) -> dict:
    over = dict(FITS[name])
    size = over.pop("size", cfg["size"])
    true_lm = over.pop("true_landmarks", False)
    if size != cfg["size"]:  # the same faces (seeds) drawn at another resolution
        test_set = mofa.make_corpus(full, n, size, 50_000, keep, progress=False)
    sub = {k: v[:n] for k, v in test_set.items()}
    weights = selfsup.STAGE1.replace(**over)
    net, _ = mofa.build_mofa(full, mofa.stage1_config(full, dict(cfg, size=size), 0))
    mofa.init_translation(net, sub["landmarks"])
    t0 = time.time()
    codes = mofa.fit_codes(net, sub["image"], sub["landmarks_gt" if true_lm else "landmarks"], weights, steps=steps)
    ev = mofa.evaluate(net, sub, codes=codes)
    parts = net.layout.unpack(codes)
    return dict(variant=name, kind="fit", seed=0, steps=steps, faces=n, size=size, weights=weights.__dict__,
                true_landmarks=true_lm, fit_seconds=round(time.time() - t0, 1), **summary(ev),
                energy={k: round(float(parts[k].square().sum(1).mean()), 1) for k in ("shape", "expression", "reflectance")},
                references={"mean face": {"geometric_mm": round(float(mofa.mean_face_error(net, sub).mean()), 4)}})


def run_stage2(name: str, full, cfg: dict, train_set: dict, test_set: dict) -> dict:
    from facelib.book import settings as _settings

    over = dict(STAGE2_RUNS[name])
    c0 = over.pop("c0", False)
    weights = selfsup.STAGE2_PAPER.replace(**over)
    cfg2 = {**cfg, **_settings("06_correctives", "cpu")}
    base, _, _ = mofa.stage1_network(full, cfg2, train_set, 0, "cpu", "cpu", progress=False,
                                     name="cpu_stage1_image-only_s0")  # benchmarks/mofa_landmarks.py's "off" run
    ev_b = mofa.evaluate(base, test_set)["base"]
    row = dict(variant=name, kind="stage2", seed=0, steps=cfg2["steps2"], weights=weights.__dict__,
               base={k: round(float(ev_b[k].mean()), 4) for k in ("photometric_rgb", "geometric_mm")})
    for C in ((cfg2["C"], 0) if c0 else (cfg2["C"],)):
        t0 = time.time()
        net, _ = mofa.stage2_network(full, base, cfg2, train_set, 0, "cpu", C, "linear", weights,
                                     name=f"exp_{name}_C{C}", progress=False)
        ev = mofa.evaluate(net, test_set)["final"]
        row[f"C{C}"] = {k: round(float(ev[k].mean()), 4) for k in ("photometric_rgb", "geometric_mm", "reflectance_rgb")}
        row[f"C{C}"]["train_seconds"] = round(time.time() - t0, 1)
    return row


def energies(net, images) -> dict:
    with torch.no_grad():
        parts = net(images, final=False).parts
    return {k: round(float(parts[k].square().sum(1).mean()), 1) for k in ("shape", "expression", "reflectance")}


def summary(ev: dict) -> dict:
    m = mofa.mean_errors(ev)
    return {"geometric_mm": round(m["geometric_mm"], 4), "photometric_rgb": round(m["photometric_rgb"], 4),
            "landmark_px": round(m["landmark_px"], 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help=f"one of {list(VARIANTS) + list(FITS) + list(STAGE2_RUNS)}")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the corpus is chapter 5's, seed 0)")
    ap.add_argument("--steps", type=int, default=None, help="stage-1 steps (default: the cpu profile's)")
    args = ap.parse_args(argv)
    known = list(VARIANTS) + list(FITS) + list(STAGE2_RUNS)
    bad = [v for v in args.variants if v not in known]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {known}")
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    cfg = dict(settings("05_mofa", "cpu"), landmarks=False)  # the papers' image-only encoder (benchmarks/mofa_landmarks.py: with landmarks)
    steps = args.steps or cfg["steps1"]
    full = facelib.load_model("open")
    _, keep = decimate(full, cfg["n_vertices"])
    train_set, test_set = mofa.book_corpora(full, cfg, 0, keep)
    for name in args.variants:
        if name in STAGE2_RUNS:
            row = run_stage2(name, full, cfg, train_set, test_set)
            save_row(row, OUT_STAGE2)
            print(f"{name:26s} base photo {row['base']['photometric_rgb']:.4f}  " + "  ".join(
                f"{k}: photo {v['photometric_rgb']:.4f} geo {v['geometric_mm']:.3f}" for k, v in row.items()
                if k.startswith("C")), flush=True)
            continue
        if name in FITS:
            row = run_fit(name, full, cfg, test_set, keep)
            save_row(row)
            print(f"{name:20s} {row['fit_seconds']:5.0f} s  geo {row['geometric_mm']:.3f} mm (mean face "
                  f"{row['references']['mean face']['geometric_mm']:.3f})  photo {row['photometric_rgb']:.4f}  "
                  f"lm {row['landmark_px']:.2f} px  energy {row['energy']}", flush=True)
            continue
        over = dict(VARIANTS[name])
        lr, batch = over.pop("lr", cfg["lr"]), over.pop("batch", cfg["batch"])
        n_steps = int(round(steps * over.pop("steps", 1.0)))
        augment = over.pop("augment", None)
        encoder = over.pop("encoder", cfg["encoder"])
        encoder_kwargs = over.pop("encoder_kwargs", cfg["encoder_kwargs"])
        weights = selfsup.STAGE1_PAPER.replace(**over)
        net, _ = mofa.build_mofa(full, mofa.stage1_config(full, dict(cfg, encoder=encoder, encoder_kwargs=encoder_kwargs),
                                                          args.seed))
        mofa.init_translation(net, train_set["landmarks"])
        refs = {"untrained encoder": summary(mofa.evaluate(net, test_set)),
                "mean face": {"geometric_mm": round(float(mofa.mean_face_error(net, test_set).mean()), 4)}}
        t0 = time.time()
        hist = mofa.train(net, train_set, n_steps, 1, lr=lr, batch=batch, seed=args.seed, weights=weights,
                          progress=False, threads=1, augment=augment)
        seconds = time.time() - t0
        tail = hist[-max(1, len(hist) // 10):]
        row = dict(variant=name, seed=args.seed, steps=steps, train_steps=n_steps, lr=lr, batch=batch,
                   encoder=encoder, encoder_kwargs=encoder_kwargs, augment=augment,
                   weights=weights.__dict__, train_sparse_last10pct=round(sum(h["sparse"] for h in tail) / len(tail), 3),
                   train_seconds=round(seconds, 1), **summary(mofa.evaluate(net, test_set)),
                   energy=energies(net, test_set["image"]), references=refs)
        save_row(row)
        print(f"{name:20s} seed {args.seed} {seconds:5.0f} s  geo {row['geometric_mm']:.3f} mm (mean face "
              f"{refs['mean face']['geometric_mm']:.3f})  photo {row['photometric_rgb']:.4f}  "
              f"lm {row['landmark_px']:.2f} px  energy {row['energy']}", flush=True)


if __name__ == "__main__":
    main()
