"""A parallel sweep of CoarseNet training settings (issue 17): what makes CoarseNet learn shape?

Each variant trains one GMSE CoarseNet on fresh synthetic faces (:func:`facelib.coarse_fine.train_coarsenet`)
and every ``--every`` steps iterates it on 128 held-out faces; the learning curve (held-out RMS vertex
error after the first and the last pass, raw and similarity-aligned, and the R^2 of the first
coefficients) is appended to ``<out>/<variant>.json`` as it grows, so a run cut short still reports.
One process per variant, one thread each: ``--jobs`` variants at a time. A process of its own is
also what makes the diagnostic settings safe: the pose range, the identity and expression scales,
the curriculum, the pose weight and the grid patch :mod:`facelib.coarse_fine`'s module state
(``POSE_PRIOR``, ``sample_r``, ``coarse_loss``, ``CoarseNet.GRID``) for that process only; the
library itself is unchanged.

    .venv/bin/python benchmarks/cf_sweep.py --out benchmarks/results/cf_sweep --jobs 2 base w16_64
    .venv/bin/python benchmarks/cf_sweep.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the chapter's cpu-profile CoarseNet before issue 17's second round
BASE = dict(size=48, width=8, blocks=(1, 1, 1, 1), steps=3000, batch=16, lr=1e-3, kind="gmse", p_exact=0.5,
            mask_dilate=None, pose_scale=1.0, nosize=False, id_scale=1.0,
            pose_mask=(1, 1, 1, 1, 1, 1), grid=4, backbone="resnet", pose_loss=1.0,
            curriculum=0.0, expression_scale=0.5, seed=0)
VARIANTS = {
    "base": {},
    "smoke": dict(steps=4, id_scale=0.0, p_exact=1.0, backbone="alexnet", pose_mask=(0, 1, 0, 0, 0, 0)),
    "steps10k": dict(steps=10000),
    "only_start": dict(p_exact=1.0),
    "frontal": dict(pose_scale=0.0, p_exact=1.0),
    "frontal_expr_only": dict(pose_scale=0.0, p_exact=1.0, id_scale=0.0),
    "expr_only": dict(p_exact=1.0, id_scale=0.0),
    "eo_rot": dict(p_exact=1.0, id_scale=0.0, pose_mask=(1, 1, 1, 0, 0, 0)),
    "eo_trans_scale": dict(p_exact=1.0, id_scale=0.0, pose_mask=(0, 0, 0, 1, 1, 1)),
    "eo_yaw": dict(p_exact=1.0, id_scale=0.0, pose_mask=(0, 1, 0, 0, 0, 0)),
    "eo_nopose_loss": dict(p_exact=1.0, id_scale=0.0, pose_loss=0.0),
    "eo_pose_loss0.1": dict(p_exact=1.0, id_scale=0.0, pose_loss=0.1),
    "curriculum": dict(curriculum=0.5),
    "eo_curriculum": dict(p_exact=1.0, id_scale=0.0, curriculum=0.5),
    "eo_full_expression": dict(p_exact=1.0, id_scale=0.0, expression_scale=1.0),
    "frontal_expr_only_seed1": dict(pose_scale=0.0, p_exact=1.0, id_scale=0.0, seed=1),
    "eo_yaw_seed1": dict(p_exact=1.0, id_scale=0.0, pose_mask=(0, 1, 0, 0, 0, 0), seed=1),
    "expr_only_seed1": dict(p_exact=1.0, id_scale=0.0, seed=1),
    "eo_pitch": dict(p_exact=1.0, id_scale=0.0, pose_mask=(1, 0, 0, 0, 0, 0)),
    "eo_roll": dict(p_exact=1.0, id_scale=0.0, pose_mask=(0, 0, 1, 0, 0, 0)),
    "eo_w16": dict(p_exact=1.0, id_scale=0.0, width=16),
    "eo_w32": dict(p_exact=1.0, id_scale=0.0, width=32),
    "eo_s64_w16": dict(p_exact=1.0, id_scale=0.0, size=64, width=16),
    "eo_lr3e-3": dict(p_exact=1.0, id_scale=0.0, lr=3e-3),
    "eo_batch64": dict(p_exact=1.0, id_scale=0.0, batch=64),
    "eo_alexnet": dict(p_exact=1.0, id_scale=0.0, backbone="alexnet"),
    "eo_grid1": dict(p_exact=1.0, id_scale=0.0, grid=1),
    "eo_grid8": dict(p_exact=1.0, id_scale=0.0, grid=8),
    "eo_mse": dict(p_exact=1.0, id_scale=0.0, kind="mse"),
    "eo_b2_w16": dict(p_exact=1.0, id_scale=0.0, width=16, blocks=(2, 2, 2, 2)),
    "alexnet": dict(backbone="alexnet"),
    "alexnet_only_start": dict(backbone="alexnet", p_exact=1.0),
    "mse": dict(kind="mse"),
    "nosize": dict(nosize=True),
    "lr3e-3": dict(lr=3e-3),
    "batch64": dict(batch=64),
    "w16": dict(width=16),
    "s64": dict(size=64),
    "s64_w16": dict(size=64, width=16),
    "s96_w16": dict(size=96, width=16),
    "s64_w16_b2": dict(size=64, width=16, blocks=(2, 2, 2, 2)),
    "s64_w32": dict(size=64, width=32),
    "s128_w16": dict(size=128, width=16),
    "s64_w16_only_start": dict(size=64, width=16, p_exact=1.0),
}


def _alexnet_coarse(n_params: int, size: int, mask_dilate):
    """InverseFaceNet's AlexNet (batch norm, width 1/4, fc 512, no dropout) on CoarseNet's 7 channels."""
    import torch
    from torch import nn
    from facelib.nets import AlexNet

    net = AlexNet(n_params, size=size, width=0.25, fc=512, dropout=0.0, norm="batch", stride=2)
    c0 = net.features[0]
    net.features[0] = nn.Conv2d(7, c0.out_channels, c0.kernel_size, c0.stride, c0.padding)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, 0.0, 0.01)
    nn.init.zeros_(last.bias)
    net.mask_dilate = mask_dilate

    class Seven(nn.Module):  # the same network without AlexNet's 3-channel input check
        def __init__(self):
            super().__init__()
            self.net, self.mask_dilate = net, mask_dilate

        def forward(self, x):
            return self.net.last(self.net.classifier(self.net.pool(self.net.features(x)).flatten(1)))
    return Seven()


def run(name: str, out: Path, every: int, n_test: int = 128) -> None:
    import torch

    torch.set_num_threads(1)
    import facelib
    import facelib.coarse_fine as cf
    from facelib.book import settings

    s = dict(BASE, **VARIANTS[name])
    cfg = settings("07_coarse_fine", "cpu")
    model = facelib.load_model("open")
    space = cf.CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    N = s["size"]
    # the training distribution's changes apply to the held-out faces too
    cf.POSE_PRIOR = tuple(x * s["pose_scale"] * m for x, m in zip(cf.POSE_PRIOR, s["pose_mask"]))
    if s["id_scale"] != 1.0 or s["expression_scale"] != 0.5:
        sample_r = cf.sample_r

        def scaled(space_, batch, seed, expression_scale=0.5):
            r = sample_r(space_, batch, seed, s["expression_scale"])
            r[:, :space_.n_shape] *= s["id_scale"]
            return r
        cf.sample_r = scaled
    r_gt, view, _, _ = cf.make_faces(space, n_test, 999, N)  # held out (training faces: seed 10 + seed)
    if s["curriculum"]:  # the pose prior widens linearly from 0 to full over the first share of the steps
        full, sample = cf.POSE_PRIOR, cf.sample_r
        calls = [0]

        def widening(space_, batch, seed, expression_scale=0.5):
            step = calls[0] // 2  # make_faces and feedback_state draw once per training step each
            calls[0] += 1
            k = min(1.0, step / (s["curriculum"] * s["steps"]))
            cf.POSE_PRIOR = tuple(x * k for x in full)
            try:
                return sample(space_, batch, seed, expression_scale)
            finally:
                cf.POSE_PRIOR = full
        cf.sample_r = widening
    a, p = space.split(r_gt)
    ref = {k: cf.pooled_rms(v) for k, v in cf.geometry_references(space, a).items()}
    train_space = cf.CoarseSpace.from_model(model, cfg["n_shape"], cfg["n_expression"])
    if s["nosize"]:  # GMSE without the head size (the first identity component), which no image shows
        train_space.gram[0, :] = 0
        train_space.gram[:, 0] = 0
    if s["pose_loss"] != 1.0:  # scale the pose term of the criterion
        coarse_loss = cf.coarse_loss

        def scaled_loss(space_, r_hat, r_gt, kind="gmse", pose_weight=1.0):
            return coarse_loss(space_, r_hat, r_gt, kind, pose_weight * s["pose_loss"])
        cf.coarse_loss = scaled_loss
    torch.manual_seed(s["seed"])  # the initial weights; the training faces use seed 10 + seed
    if s["backbone"] == "alexnet":
        net = _alexnet_coarse(space.n_params, N, s["mask_dilate"])
    else:
        cf.CoarseNet.GRID = s["grid"]
        net = cf.CoarseNet(space.n_params, width=s["width"], blocks=tuple(s["blocks"]), mask_dilate=s["mask_dilate"])
    record = dict(variant=name, settings=s, references=ref, curve=[], threads=1, cpu=os.cpu_count())
    path = out / f"{name}.json"
    t_start = time.time()

    def evaluate(net_):
        rs = cf.coarse_iterate(space, net_, view.image, 4, N)
        row = {}
        for t in (1, 4):
            e = cf.pooled_rms(cf.geometry_errors(space, space.split(rs[t])[0], a))
            row.update({f"{k}_{t}": round(v, 3) for k, v in e.items()})
        ah = space.split(rs[-1])[0]
        r2 = 1 - (ah - a).square().mean(0) / a.var(0)
        row.update(pose_mse_4=round(float((space.split(rs[-1])[1] - p).square().mean()), 4),
                   r2_id=[round(float(x), 2) for x in r2[:6]],
                   r2_exp=[round(float(x), 2) for x in r2[cfg["n_shape"]:cfg["n_shape"] + 4]],
                   wall_s=round(time.time() - t_start, 1))
        return row

    def eval_fn(net_):
        row = evaluate(net_)
        # train_coarsenets adds step and train_s to its own copy (the final record)
        record["curve"].append(dict(step=min(len(record["curve"]) * every, s["steps"]), **row))
        path.write_text(json.dumps(record, indent=1))
        return row

    hist = cf.train_coarsenet(train_space, net, s["steps"], s["batch"], N, seed=10 + s["seed"], lr=s["lr"], kind=s["kind"],
                              progress=False, eval_fn=eval_fn, eval_every=every, p_exact=s["p_exact"])
    record["curve"] = hist["curve"]
    path.write_text(json.dumps(record, indent=1))


def summary(out: Path) -> str:
    """A markdown table of the last curve point of every ``<out>/*.json``: steps done, training seconds,
    held-out RMS vertex error after pass 1 and pass 4 as a ratio to the mean face's, and R^2 of the
    first expression and the second identity coefficient after pass 4."""
    lines = ["| variant | changed | steps | train s | pass 1 / mean face | pass 4 / mean face | R2 expr 1 | R2 id 2 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in sorted(out.glob("*.json")):
        d = json.loads(f.read_text())
        if not d["curve"]:
            continue
        last, mean = d["curve"][-1], d["references"]["mean face"]["rmse_mm"]
        changed = {k: v for k, v in d["settings"].items() if BASE.get(k) != (tuple(v) if isinstance(v, list) else v)}
        lines.append(f"| {d['variant']} | {changed or ''} | {last.get('step', '?')} | {last.get('train_s', last.get('wall_s', '?'))} | "
                     f"{last['rmse_mm_1'] / mean:.2f} | {last['rmse_mm_4'] / mean:.2f} | {last['r2_exp'][0]:.2f} | "
                     f"{last['r2_id'][1]:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cf_sweep")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--summary", action="store_true", help="print the table of the results in --out")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k:20s} {v}")
        return 0
    if args.summary:
        print(summary(args.out))
        return 0
    if args.one:
        run(args.one, args.out, args.every)
        return 0
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        ap.error(f"unknown or no variant(s) {bad}; choose from {list(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", FACELIB_THREADS="1")
    pending, running = list(args.variants), []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a kill stops the variants too (finally below)
    try:
        _schedule(args, env, pending, running)
    finally:  # Ctrl-C or an error: no variant is left running
        for _, pr in running:
            pr.terminate()
    return 0


def _schedule(args, env, pending: list, running: list) -> None:
    while pending or running:
        while pending and len(running) < args.jobs:
            v = pending.pop(0)
            log = open(args.out / f"{v}.log", "w")
            running.append((v, subprocess.Popen([sys.executable, __file__, "--one", v, "--out", str(args.out),
                                                 "--every", str(args.every)], env=env, stdout=log,
                                                stderr=subprocess.STDOUT)))
        time.sleep(2)
        for v, pr in list(running):
            if pr.poll() is not None:
                running.remove((v, pr))
                print(f"{v}: exit {pr.returncode}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
