"""Does end-to-end training (Sec. 4.4) improve CoarseNet?  Step size and anchor of the fine-tuning (issue 17)

Chapter 7 fine-tunes its first CoarseNet and FineNet end to end with the unsupervised criterion of
Eq. 14 (``facelib.coarse_fine.train_end_to_end``).  This runs the same fine-tuning from the saved
``cpu`` networks (chapter 7's GMSE CoarseNet and Eq. 14 FineNet of seed 0,
``facelib.load_network``; run ``make book`` first) for a grid of CoarseNet learning rates (as a factor
of the chapter's ``coarse_lr``; 0 leaves CoarseNet as it was, so only FineNet trains) and weights of the
anchor ``lambda_fidelity`` (the MSE between the fine-tuned and the original CoarseNet's output), each
with several batch seeds, and scores CoarseNet and CoarseNet + FineNet before and after on chapter 7's
held-out detailed faces (the same faces, seed 20,000), on the pixels that every network and the
reference rows cover (``facelib.coarse_fine.depth_errors``).

    .venv/bin/python benchmarks/e2e_finetune.py [--seeds 3]   # -> benchmarks/results/e2e_finetune.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.coarse_fine import depth_errors, finenet_data, finenet_refine, rendering_layer, train_end_to_end  # noqa: E402
from facelib.model.detail import detail_displacement  # noqa: E402
from facelib.repro import environment  # noqa: E402

COARSE_LR = (0.0, 0.001, 0.01)  # x the chapter's coarse_lr; 0.01 is the chapter's
FIDELITY = (1.0, 1000.0)  # lambda_fidelity; 1 is the chapter's


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="batch seeds per setting (the chapter's seed + 50 + k)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "e2e_finetune.json"))
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "1")))
    seed = 0  # chapter 7's
    cfg = settings("07_coarse_fine", "cpu")
    coarse_t = facelib.load_network("coarsenet", profile="cpu", seed=seed)
    fine = facelib.load_network("finenet", profile="cpu", seed=seed).net.cpu()
    space, coarse = coarse_t.meta["space"], coarse_t.net.cpu()
    model = facelib.load_model("open")
    N, NF, T = cfg["coarse_size"], cfg["fine_size"], cfg["iterations"]
    pool = detail_displacement(model, cfg["detail_pool"], seed=seed + 1000, amplitude_mm=cfg["detail_mm"])
    test = finenet_data(space, coarse, cfg["test_faces"], cfg["eval_batch"], N, T, seed + 20_000, detail_pool=pool,
                        sizes=(NF,))
    gt, gtm = test[("depth_gt", NF)], test[("mask_gt", NF)]
    with torch.no_grad():
        _, m_fit, _ = rendering_layer(space, test["r_gt"], NF)
        alpha, pose = space.split(test["r_coarse"])
        _, m_mean, _ = rendering_layer(space, torch.cat([torch.zeros_like(alpha), pose], 1), NF)
    z0, z_f = test[("z0", NF)], finenet_refine(fine, test, NF)
    runs = []
    for clr, lam, k in itertools.product(COARSE_LR, FIDELITY, range(args.seeds)):
        if clr == 0.0 and lam != FIDELITY[0]:
            continue  # without CoarseNet's step the anchor does nothing
        ce, fe = copy.deepcopy(coarse), copy.deepcopy(fine)
        t0 = time.perf_counter()
        h = train_end_to_end(space, ce, fe, cfg["e2e_steps"], cfg["e2e_batch"], N, T, pool, seed=seed + 50 + k,
                             lr=cfg["fine_lr"] * 0.1, coarse_lr=cfg["coarse_lr"] * clr, lambda_fidelity=lam, fine_size=NF,
                             progress=False)
        train_s = time.perf_counter() - t0
        te = finenet_data(space, ce, cfg["test_faces"], cfg["eval_batch"], N, T, seed + 20_000, detail_pool=pool,
                          sizes=(NF,))
        if not torch.equal(te[("depth_gt", NF)], gt):
            raise RuntimeError("the held-out faces differ between the two scorings")
        masks = {"coarse": test[("mask", NF)], "mean": m_mean, "true": m_fit, "end-to-end": te[("mask", NF)]}
        rows = depth_errors({"CoarseNet": z0, "CoarseNet + FineNet": z_f, "CoarseNet, end-to-end": te[("z0", NF)],
                             "CoarseNet + FineNet, end-to-end": finenet_refine(fe, te, NF)}, gt, gtm, masks)
        run = dict(coarse_lr_factor=clr, lambda_fidelity=lam, batch_seed=seed + 50 + k, train_s=round(train_s, 1),
                   fidelity_last=h["fidelity"][-1], pixels=rows[0]["pixels"],
                   **{r["name"]: round(r["depth_mean_mm"], 4) for r in rows})
        runs.append(run)
        print(f"coarse_lr x{clr:g}, lambda_fidelity {lam:g}, batch seed {run['batch_seed']}: CoarseNet "
              f"{run['CoarseNet']:.3f} -> {run['CoarseNet, end-to-end']:.3f} mm, with FineNet "
              f"{run['CoarseNet + FineNet']:.3f} -> {run['CoarseNet + FineNet, end-to-end']:.3f} mm", flush=True)
    out = {"network": "coarsenet + finenet (cpu, seed 0)", "faces": cfg["test_faces"], "steps": cfg["e2e_steps"],
           "batch": cfg["e2e_batch"], "chapter_setting": {"coarse_lr_factor": 0.01, "lambda_fidelity": 1.0},
           "runs": runs, "command": "python benchmarks/e2e_finetune.py --seeds K", "environment": environment()}
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
