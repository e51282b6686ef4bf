"""What holds InverseFaceNet back at our scale: one training change at a time (issue 15).

Each variant trains the plain AlexNet row (Euclidean loss, or the one it names) of the ``cpu``
profile with some settings changed, evaluates it on the chapter's held-out synthetic and wild test
sets and appends a row to ``benchmarks/results/ifn_experiments.json`` (the table the chapter
quotes), with the mean-face reference of the same sets.

    .venv/bin/python benchmarks/ifn_experiments.py VARIANT [VARIANT ...]   # see VARIANTS below
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
import facelib.inversefacenet as ifn  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.data.corpus import FreshCorpus, SyntheticCorpus  # noqa: E402

AUG = dict(landmark_noise=0.012, blur_px=(0.0, 1.0), noise_std=(0.0, 0.025), jpeg_quality=(35, 95))
# the cpu profile before issue 15 (the "baseline" variant); variants change it one setting at a time
OLD_CPU = dict(size=96, iters=1500, lr=1e-3, norm="none", standardize=False, dropout=0.5,
               landmarks=False)  # these experiments came before the landmark input (benchmarks/ifn_landmarks.py)
BASE = dict(loss="euclidean", fresh=False, augment=None, schedule="constant", warmup=0.0, kind="alexnet",
            prior="sec5")
VARIANTS = {
    "baseline": {},
    "msl": dict(loss="model_space"),
    "msl_rms": dict(loss="model_space_rms"),
    "best": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3),
    "best+msl_rms": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3,
                         loss="model_space_rms"),
    "best+vertex": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3, dropout=0.0,
                        loss="vertex"),
    "best+vertex_nosize": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3,
                               dropout=0.0, loss="vertex_nosize"),
    "best+msl_rms+fresh+aug": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3,
                                   dropout=0.0, loss="model_space_rms", fresh=True, augment=AUG),
    "best+msl_rms+aug": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3,
                             dropout=0.0, loss="model_space_rms", augment=AUG),
    "best+fresh": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3, fresh=True),
    "standardize": dict(standardize=True),
    "bn": dict(norm="batch"),
    "bn+std": dict(norm="batch", standardize=True),
    "bn+std+cos": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05),
    "bn+std+cos+lr3": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, lr=3e-3),
    "bn+std+cos+fresh": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, fresh=True),
    "bn+std+cos+fresh+aug": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, fresh=True,
                                 augment=AUG),
    "bn+std+cos+aug": dict(norm="batch", standardize=True, schedule="cosine", warmup=0.05, augment=AUG),
}


def _prior(name: str, ramp_faces: int = 0, corpus_seed: int = 0):
    """The training corpus' parameter prior for ``prior=NAME``: ``"sec5"`` (the paper's, default),
    ``"expr0.5"`` (Sec. 5 with every expression coefficient, mouth bias included, halved) or
    ``"frontal_neutral"`` (Sec. 5 shape, reflectance and light; pose and expression 0: the easiest
    faces, an upper bound of what the network learns of the shape in the budget), ``"curriculum"`` /
    ``"curriculum_all"`` (with ``fresh=true``: rotation, or rotation and expression, grown from 0 to the
    Sec. 5 ranges over the first ``ramp`` (default half) of the run, :func:`_curriculum`).  Experiments only:
    the book trains on the Sec. 5 prior."""
    from facelib.model.params import sample_sec5

    if name == "sec5":
        return None
    if name in ("curriculum", "curriculum_all"):  # fresh renders only: the faces of step k are easier early on
        groups = ("rotation",) if name == "curriculum" else ("rotation", "expression")
        return _curriculum(ramp_faces, groups, corpus_seed)

    def sampler(model, batch, seed):
        L = ifn.ParamLayout.from_model(model)
        th = sample_sec5(model, batch, seed=seed)
        if name == "expr0.5":
            th[:, L["expression"]] *= 0.5
        elif name == "frontal_neutral":
            th[:, L["expression"]] = 0
            th[:, L["rotation"]] = 0
        else:
            raise ValueError(f"unknown prior {name!r}")
        return th
    sampler.__name__ = f"prior_{name}"
    return sampler


def _curriculum(ramp_faces: int, groups, corpus_seed: int):
    """Experiment: a Sec. 5 sampler for ``FreshCorpus(seed=corpus_seed)`` whose ``groups`` (rotation; expression,
    around the mouth bias) are scaled by ``min(1, k / ramp_faces)`` for the virtual face ``k`` that opens
    a mini-batch (FreshCorpus passes ``seed * 1_000_003 + k``): frontal, neutral faces first, the full
    Sec. 5 ranges after ``ramp_faces`` faces."""
    from facelib.model.params import sample_sec5

    def sampler(model, batch, seed):
        L = ifn.ParamLayout.from_model(model)
        theta = sample_sec5(model, batch, seed=seed)
        frac = min(1.0, max(0, seed - corpus_seed * 1_000_003) / max(ramp_faces, 1))
        if "rotation" in groups:
            theta[:, L["rotation"]] *= frac
        if "expression" in groups:
            e = theta[:, L["expression"]]
            e[:, model.mouth_component] -= model.mouth_bias
            e *= frac
            e[:, model.mouth_component] += model.mouth_bias
            theta[:, L["expression"]] = e
        return theta
    return sampler


def _r2(pred, true, L, n=8):
    """Per-coefficient R^2 of the first ``n`` shape and expression coefficients."""
    r2 = ifn.coefficient_r2(pred, true)
    return {g: [round(float(v), 2) for v in r2[L[g]][:n]] for g in ("shape", "expression")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help=f"one of {list(VARIANTS)}, or NAME:key=value,... overrides")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ifn_experiments.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model = facelib.load_model("open")
    rows = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
    tests, mean_face = {}, {}
    for spec in args.variants:
        name, _, extra = spec.partition(":")
        v = dict(BASE, **VARIANTS[name])
        for kv in filter(None, extra.split(",")):
            k, val = kv.split("=")
            v[k] = json.loads(val)
        cfg = dict(settings("inversefacenet", "cpu"), **OLD_CPU)
        cfg.update({k: v[k] for k in v if k not in BASE and k != "ramp"})
        if args.iters:
            cfg["iters"] = args.iters
        if args.size:
            cfg["size"] = args.size
        key = (cfg["size"],)
        if key not in tests:
            tests[key] = {k: ifn.make_test_set(model, k, args.n_test, seed=args.seed + ifn.TEST_SEEDS[k],
                                               size=cfg["size"]) for k in ("synthetic", "wild")}
            mean_face[key] = {k: round(ifn.summarize(ifn.evaluate_theta(
                model, ifn.mean_face_theta(model, t["theta"]), t)["geometric_mm"])["mean"], 3)
                for k, t in tests[key].items()}  # the reference row, once per test set
        sampler = _prior(v["prior"], int(v.get("ramp", 0.5) * cfg["iters"] * cfg["batch"]), args.seed)
        if v["fresh"]:
            corpus = FreshCorpus(model, seed=args.seed, size=cfg["size"], augment=v["augment"], sampler=sampler)
        else:
            corpus = SyntheticCorpus(model, cfg["n_train"], seed=args.seed, size=cfg["size"], progress=False,
                                     sampler=sampler)
            if v["augment"]:
                corpus = _Augmented(corpus, v["augment"])
        net = ifn.make_regressor(model, cfg, v["kind"], args.seed)
        t0 = time.perf_counter()
        loss_fn = _vertex_loss(model, v["loss"]) if v["loss"].startswith("vertex") else ifn.row_loss(model, v["loss"])
        log = ifn.train(net, corpus, loss_fn, cfg["iters"], cfg["batch"], cfg["lr"],
                        seed=args.seed, progress=False, schedule=v["schedule"], warmup=v["warmup"])
        wall = time.perf_counter() - t0
        tail = log["loss"][-100:]
        row = {"variant": spec, "final_train_loss": round(sum(tail) / len(tail), 2), "iters": cfg["iters"], "size": cfg["size"], "train_s": round(log["train_s"], 1),
               "wall_s": round(wall, 1), "seed": args.seed}
        for k, t in tests[key].items():
            e = ifn.evaluate(model, net, t)
            row[k] = {"geometric_mm": round(ifn.summarize(e["geometric_mm"])["mean"], 3),
                      "photometric_8bit": round(ifn.summarize(e["photometric_8bit"])["mean"], 2),
                      "mean_face_mm": mean_face[key][k]}
            row[k]["ratio"] = round(row[k]["geometric_mm"] / row[k]["mean_face_mm"], 3)
        th_t, th_p = tests[key]["synthetic"]["theta"], ifn.predict(net, tests[key]["synthetic"]["x"])
        L = corpus.layout if hasattr(corpus, "layout") else ifn.ParamLayout.from_model(model)
        r2 = ifn.coefficient_r2(th_p, th_t)
        row["r2_synthetic"] = {g: [round(float(v), 2) for v in r2[L[g]][:n]] for g, n in
                               (("rotation", 3), ("shape", 6), ("expression", 6), ("reflectance", 3),
                                ("illumination", 3))}
        # where the wild error comes from: the network's shape with the true expression, and the true
        # shape (head size at the mean, which the crop hides) with the network's expression
        wt, wp = tests[key]["wild"]["theta"], ifn.predict(net, tests[key]["wild"]["x"])
        row["r2_wild"] = _r2(wp, wt, L)
        row["wild_error_sources_mm"] = {k: round(v, 3) for k, v in ifn.error_sources(model, wp, tests[key]["wild"]).items()}
        if sampler is not None:  # held-out faces of the training prior itself
            th = sampler(model, args.n_test, 777_000 + args.seed)
            from facelib.data.corpus import render_crops
            x = (render_crops(model, th, cfg["size"])["crop"] * 255).round().to(torch.uint8)
            row["r2_own_prior"] = _r2(ifn.predict(net, x), th.float(), L)
        print(json.dumps(row), flush=True)
        rows.append(row)
        atomic_write_bytes(args.out, (json.dumps(rows, indent=1) + "\n").encode())


def _vertex_loss(model, name):
    """Experiment: the mean squared vertex error over the face (mm^2, the square of the geometric error)
    through the Gram matrix of the shape and expression bases, plus the RMS-unit model-space terms of
    the other groups; ``vertex_nosize`` leaves out shape coefficient 1 (head size)."""
    L = ifn.ParamLayout.from_model(model)
    face = model.masks["face"]
    B = torch.cat([model.shape_basis.reshape(model.n_shape, -1, 3)[:, face] * model.sigma_s[:, None, None],
                   model.expression_basis.reshape(model.n_expression, -1, 3)[:, face]
                   * model.sigma_e[:, None, None]]).flatten(1).double()  # Eq. 2: b_i sigma_i
    G = (B @ B.T / face.sum()).float()  # (K, K)
    sl = slice(L["shape"].start, L["expression"].stop)
    sigma = ifn.model_space_weights(model, units="rms").clone()
    sigma[sl] = 0
    mask = torch.ones(G.shape[0])
    if name == "vertex_nosize":
        mask[0] = 0

    def fn(p, theta):
        d = (p - theta)[:, sl] * mask
        geo = torch.einsum("bk,kl,bl->b", d, G, d).mean()
        return geo * 2500 + ((p - theta) * sigma).square().sum(-1).mean()  # 2500 = omega_s^2
    return fn


class _Augmented:
    """A fixed corpus whose crops are degraded anew each time they are drawn."""

    def __init__(self, corpus, augment):
        self.c, self.aug, self.k = corpus, augment, 0

    def __len__(self):
        return len(self.c)

    def batch(self, index):
        from facelib.data.corpus import augment_crops, to_network
        self.k += 1
        imgs = self.c.images[index].float() / 255
        out = augment_crops(imgs, self.c.masks[index], self.k,
                            **{k: v for k, v in self.aug.items() if k != "landmark_noise"})
        return to_network((out * 255).round().to(torch.uint8)), self.c.theta[index]


if __name__ == "__main__":
    main()
