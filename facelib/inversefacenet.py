"""InverseFaceNet (Kim et al. 2018): losses (Sec. 6.2), training, breeding (Sec. 7) and evaluation (Sec. 8).

* :func:`model_space_weights` and :func:`model_space_loss` are Eq. 6-8; :func:`euclidean_loss` is the
  plain parameter loss of the baseline.
* :func:`train` is the training loop (seeded batches, AdamW, progress bar, cached checkpoints).
* :func:`breed` is Algorithm 1: regress theta for the images of R, perturb each estimate into two
  children (Sec. 7 noise, :func:`facelib.params.breed_children`), render them, continue training.
* :func:`make_test_set` and :func:`evaluate` measure Sec. 8's errors per image: photometric RMSE in
  8-bit units inside the face mask, geometric RMSE in mm on corresponding vertices, IoU of the face
  masks in %, and the test time in ms per image; :func:`paired_test` compares two rows image by image.

Deviations from the paper, all stated in the book: networks are trained from scratch (no ImageNet
weights here) with AdamW instead of Caffe's AdaDelta, at the profile's size and budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .corpus import network_input, render_crops, to_network
from .metrics import geometric_rmse, mask_iou, photometric_rmse
from .params import ParamLayout, breed_children

__all__ = ["MSL_WEIGHTS", "model_space_weights", "model_space_loss", "euclidean_loss", "coefficient_displacement",
           "TensorCorpus", "train", "predict", "test_time_ms", "breed", "make_test_set", "evaluate_theta",
           "evaluate",
           "summarize", "paired_test", "checkpoint_dir", "TABLE1_ROWS", "make_regressor", "row_loss", "train_row"]

# Sec. 6.2: (w_R, w_s, w_e, w_r, w_i)
MSL_WEIGHTS = {"rotation": 400.0, "shape": 50.0, "expression": 50.0, "reflectance": 100.0, "illumination": 20.0}


# ------------------------------------------------------------------------------------------- losses
def model_space_weights(model, layout: ParamLayout | None = None, weights: dict | None = None) -> torch.Tensor:
    """Eq. 8: the diagonal of ``Sigma = diag(w_R 1_3, w_s sigma_s, w_e sigma_e, w_r sigma_r, w_i 1_27)``,
    ``(m,)`` float32, in the order of ``layout`` (default ``ParamLayout.from_model(model)``)."""
    layout = layout or ParamLayout.from_model(model)
    w = dict(MSL_WEIGHTS, **(weights or {}))
    sig = {"shape": model.sigma_s, "expression": model.sigma_e, "reflectance": model.sigma_r}
    d = torch.zeros(layout.size, dtype=torch.float32)
    for name, sl in layout.slices.items():
        if name not in w:
            raise ValueError(f"layout entry {name!r} has no model-space weight; give weights[{name!r}]")
        d[sl] = w[name] * (sig[name].detach().cpu().float() if name in sig else 1.0)
    return d


def model_space_loss(p: torch.Tensor, theta: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7: ``||p - theta||_A^2 = (p - theta)^T Sigma^T Sigma (p - theta)``, averaged over the batch.

    ``p``, ``theta``: ``(B, m)``; ``sigma``: ``(m,)`` the diagonal of Sigma (:func:`model_space_weights`).
    Returns a scalar.
    """
    if p.shape != theta.shape or p.shape[-1] != sigma.shape[0]:
        raise ValueError(f"p {tuple(p.shape)}, theta {tuple(theta.shape)} and sigma {tuple(sigma.shape)} "
                         f"do not match; expected (B, m), (B, m), (m,)")
    return ((p - theta) * sigma.to(p)).square().sum(-1).mean()


def euclidean_loss(p: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Baseline: ``||p - theta||^2`` averaged over the batch; ``(B, m)`` -> scalar."""
    if p.shape != theta.shape:
        raise ValueError(f"p has shape {tuple(p.shape)}, theta {tuple(theta.shape)}; expected the same")
    return (p - theta).square().sum(-1).mean()


def coefficient_displacement(model) -> dict:
    """Why Sec. 6.2 weights by sigma: the RMS vertex displacement (mm) that a unit change of each
    coefficient causes, ``sigma_i ||b_i|| / sqrt(V)``, per group: ``{"shape": (N_s,), "expression": ...,
    "reflectance": (N_r,) (albedo units)}``."""
    V = model.n_vertices
    out = {}
    for name, basis, sig in (("shape", model.shape_basis, model.sigma_s),
                             ("expression", model.expression_basis, model.sigma_e),
                             ("reflectance", model.albedo_basis, model.sigma_r)):
        norms = basis.detach().cpu().double().flatten(1).norm(dim=1)
        out[name] = (sig.detach().cpu().double() * norms / math.sqrt(V)).float()
    return out


# ------------------------------------------------------------------------------------------- data
class TensorCorpus:
    """Training pairs held as tensors: ``images (n, 3, N, N) uint8``, ``theta (n, m)``.

    The interface :func:`train` needs (``len`` and ``batch(index)``); :class:`facelib.corpus.SyntheticCorpus`
    has the same one.
    """

    def __init__(self, images: torch.Tensor, theta: torch.Tensor):
        if images.shape[0] != theta.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {theta.shape[0]} parameter vectors")
        self.images, self.theta = images, theta

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor):
        return to_network(self.images[index]), self.theta[index]


def checkpoint_dir() -> Path:
    """``$FACELIB_CACHE/checkpoints`` or ``~/.cache/facelib/checkpoints``."""
    from .open_model import cache_dir

    return cache_dir() / "checkpoints"


def _key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _batches(n: int, batch: int, iters: int, seed: int):
    """Seeded random mini-batch indices: epochs of random permutations, ``iters`` batches."""
    g = torch.Generator().manual_seed(int(seed))
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(iters):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos:pos + min(batch, n)]
        pos += batch


def train(net: torch.nn.Module, corpus, loss_fn, iters: int, batch: int = 32, lr: float = 1e-3,
          weight_decay: float = 1e-3, seed: int = 0, device=None, progress: bool = True,
          desc: str = "training", cache_key: dict | None = None, optimizer_state: dict | None = None) -> dict:
    """Train ``net`` on ``corpus`` for ``iters`` mini-batches (Sec. 6.1: batch 32, weight decay 1e-3).

    Args:
        net: the regressor (trained in place).  corpus: ``len`` and ``batch(index) -> (x, theta)``.
        loss_fn: ``(p, theta) -> scalar``, e.g. :func:`model_space_loss` with its sigma bound.
        iters, batch, lr, weight_decay: AdamW schedule.  seed: fixes the batch order.
        cache_key: if given, a dict that identifies this run (data, net, schedule); the trained weights
            and the log are saved under :func:`checkpoint_dir` and loaded instead of retraining when the
            same key is asked for again (the same computation, so the same numbers).
        optimizer_state: AdamW state to continue from (breeding continues training).
    Returns:
        log dict: ``loss`` (list per iteration), ``train_s`` (seconds of training), ``iters``,
        ``optimizer`` (state, for continued training), ``cached`` (bool).
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    path = None
    if cache_key is not None:
        path = checkpoint_dir() / f"{_key(cache_key)}.pt"
        if path.exists():
            try:
                ck = torch.load(path, map_location=device, weights_only=False)
                net.load_state_dict(ck["net"])
                return dict(ck["log"], cached=True, optimizer=ck["optimizer"])
            except Exception:
                path.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    torch.manual_seed(seed)  # dropout
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(_batches(len(corpus), batch, iters, seed), total=iters, desc=desc, disable=not progress)
    for idx in bar:
        x, theta = corpus.batch(idx)
        loss = loss_fn(net(x.to(device)), theta.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at iteration {len(losses)}; "
                                     "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4g}")
    log = {"loss": losses, "train_s": time.perf_counter() - t0, "iters": iters}
    net.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"net": net.state_dict(), "log": log, "optimizer": opt.state_dict()}, tmp)
        os.replace(tmp, path)
    return dict(log, cached=False, optimizer=opt.state_dict())


@torch.no_grad()
def predict(net: torch.nn.Module, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Regress parameters for network inputs ``x (n, 3, N, N)`` (float in [-0.5, 0.5] or uint8 crops);
    returns ``(n, m)`` on the CPU."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        xb = to_network(xb) if xb.dtype == torch.uint8 else xb
        out.append(net(xb.to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def test_time_ms(net: torch.nn.Module, size: int, repeats: int = 20) -> float:
    """Forward time of one image (batch 1) in ms on the net's device (Table 1's test time): the best of
    ``repeats`` runs, because on a shared machine other jobs only ever add time."""
    net.eval()
    device = next(net.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    for _ in range(3):
        net(x)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t))
    return float(np.min(times))


# ------------------------------------------------------------------------------------------- breeding
def breed(net: torch.nn.Module, model, real_x: torch.Tensor, rounds: int, iters: int, loss_fn, size: int,
          batch: int = 32, lr: float = 1e-3, seed: int = 0, children: int = 2, progress: bool = True,
          optimizer_state: dict | None = None, render_size: int | None = None) -> dict:
    """Algorithm 1, breeding with real images: for each of ``rounds`` (N_breed) rounds,

    1. ``theta_r = N(R)``: regress parameters for the images of R (``real_x (n, 3, N, N)``);
    2. ``theta_r' = resample_parameters(theta_r)``: ``children`` perturbed copies each (Sec. 7 noise);
    3. ``I_r = generate_images(theta_r')``: render and pre-process them like the Sec. 5 corpus;
    4. continue training ``net`` on ``{I_r, theta_r'}`` for ``iters`` mini-batches.

    Returns a dict with ``theta_r`` (list of ``(n, m)`` estimates per round, before its training),
    ``children`` (list of the bred parameter sets), ``train_s`` (seconds, all four steps), ``loss``.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    history = {"theta_r": [], "children": [], "loss": []}
    opt_state = optimizer_state
    for k in tqdm(range(rounds), desc="breeding rounds", disable=not progress):
        theta_r = predict(net, real_x)  # step 1
        kids = breed_children(theta_r, model, seed=seed * 1000 + k, children=children)  # step 2
        device = model.device
        imgs = []
        for i in range(0, kids.shape[0], 256):  # step 3
            out = render_crops(model, kids[i:i + 256].to(device), size, render_size)
            imgs.append((out["crop"] * 255).round().to(torch.uint8).cpu())
        corpus = TensorCorpus(torch.cat(imgs), kids.float().cpu())
        log = train(net, corpus, loss_fn, iters, batch=batch, lr=lr, seed=seed * 1000 + k, progress=progress,
                    desc=f"round {k + 1}/{rounds}", optimizer_state=opt_state)  # step 4
        opt_state = log["optimizer"]
        history["theta_r"].append(theta_r)
        history["children"].append(kids.cpu())
        history["loss"] += log["loss"]
    history["theta_r"].append(predict(net, real_x))  # the final network's estimates
    history["train_s"] = time.perf_counter() - t0
    history["optimizer"] = opt_state
    return history


# ------------------------------------------------------------------------------------------- evaluation
def make_test_set(model, kind: str, n: int, seed: int, size: int, render_size: int | None = None) -> dict:
    """A held-out test set with ground truth: ``kind`` ``"synthetic"`` (Sec. 5 prior) or ``"wild"``
    (:mod:`facelib.wild`, the stand-in for R; landmarks with detector noise, no renderer mask).

    Returns ``x (n, 3, N, N)`` uint8 crops (network input before :func:`to_network`), ``target``
    ``(n, 3, N, N)`` float in [0, 1], ``mask (n, N, N)``, ``theta (n, m)``, ``verts (n, V, 3)`` model-space
    ground-truth geometry (with the wild set's out-of-model detail).
    """
    from .params import sample_sec5
    from .wild import wild_batch

    render_size = render_size or int(math.ceil(1.5 * size))
    parts = []
    for i, start in enumerate(range(0, n, 128)):
        b = min(128, n - start)
        s = seed * 1_000_003 + i
        if kind == "synthetic":
            theta = sample_sec5(model, b, seed=s)
            out = render_crops(model, theta, size, render_size)
            p = ParamLayout.from_model(model).unpack(theta)
            verts = model.geometry(p["shape"], p["expression"])
        elif kind == "wild":
            w = wild_batch(model, b, seed=s, size=render_size)
            out = network_input(w["image"], w["landmarks"], size)
            theta, verts = w["theta"], w["verts_model"]
        else:
            raise ValueError(f"unknown test set kind {kind!r}; expected 'synthetic' or 'wild'")
        parts.append({"x": (out["crop"] * 255).round().to(torch.uint8).cpu(), "mask": out["mask"].cpu(),
                      "theta": theta.float().cpu(), "verts": verts.float().cpu()})
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    data["target"] = data["x"].float() / 255.0
    data.update(kind=kind, seed=seed, size=size, render_size=render_size)
    return data


@torch.no_grad()
def evaluate_theta(model, theta: torch.Tensor, test: dict, batch: int = 64) -> dict:
    """Sec. 8 errors of estimates ``theta (n, m)`` on a :func:`make_test_set` set, per image.

    The estimate is rendered and pre-processed exactly like a training face (cropped to its own
    projected landmarks), then compared with the input crop: photometric RMSE [8-bit] over the pixels
    inside both face masks, IoU [%] of the two masks, geometric RMSE [mm] between the estimated and the
    ground-truth model-space meshes over the ``face`` vertices (pose is not part of the geometric error).
    Returns ``photometric_8bit``, ``geometric_mm``, ``iou_pct``, each ``(n,)``.
    """
    layout = ParamLayout.from_model(model)
    if theta.shape != test["theta"].shape:
        raise ValueError(f"theta has shape {tuple(theta.shape)}; the test set has {tuple(test['theta'].shape)}")
    face = model.masks["face"].cpu()
    photo, geo, iou = [], [], []
    for i in range(0, theta.shape[0], batch):
        th = theta[i:i + batch].to(model.device, torch.float32)
        out = render_crops(model, th, test["size"], test["render_size"])
        tgt, m = test["target"][i:i + batch], test["mask"][i:i + batch]
        est, em = out["crop"].cpu().float(), out["mask"].cpu()
        photo.append(photometric_rmse(est, tgt, m & em))
        iou.append(mask_iou(em, m))
        p = layout.unpack(th)
        verts = model.geometry(p["shape"], p["expression"]).cpu().float()
        geo.append(geometric_rmse(verts, test["verts"][i:i + batch], face))
    return {"photometric_8bit": torch.cat(photo), "geometric_mm": torch.cat(geo), "iou_pct": torch.cat(iou)}


def evaluate(model, net: torch.nn.Module, test: dict, batch: int = 64) -> dict:
    """:func:`evaluate_theta` of the network's estimates, plus ``theta (n, m)`` and ``test_ms`` (the
    best-of-20 batch-1 forward time in ms, Table 1's test time)."""
    theta = predict(net, test["x"])
    return dict(evaluate_theta(model, theta, test, batch), theta=theta, test_ms=test_time_ms(net, test["size"]))


def summarize(values: torch.Tensor) -> dict:
    """``{mean, std}`` of a per-image metric (nan images ignored), as Table 1 reports."""
    v = values[torch.isfinite(values)].double()
    return {"mean": float(v.mean()) if v.numel() else float("nan"),
            "std": float(v.std(unbiased=True)) if v.numel() > 1 else 0.0}


def paired_test(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Paired two-sided Wilcoxon signed-rank test of per-image errors ``a`` vs ``b`` (same images).

    Returns ``{"mean_diff": mean(b - a), "p_value": p, "n": pairs}`` (nan images dropped)."""
    from scipy.stats import wilcoxon

    ok = torch.isfinite(a) & torch.isfinite(b)
    x, y = a[ok].double().numpy(), b[ok].double().numpy()
    if x.size < 2 or np.allclose(x, y):
        return {"mean_diff": float(np.mean(y - x)) if x.size else float("nan"), "p_value": 1.0, "n": int(x.size)}
    return {"mean_diff": float(np.mean(y - x)), "p_value": float(wilcoxon(x, y).pvalue), "n": int(x.size)}


# ------------------------------------------------------------------------------------------- Table 1
# The rows of Table 1: (encoder, loss, breeding).  Our ResNet trains twice the iterations, as the paper's
# ResNet-101 row (150K vs 75K).
TRAIN_VERSION = 1  # bump when training, breeding or the networks change (invalidates cached checkpoints)
TABLE1_ROWS = {
    "AlexNet": ("alexnet", "euclidean", False),
    "+ model-space loss": ("alexnet", "model_space", False),
    "+ breeding (= InverseFaceNet)": ("alexnet", "model_space", True),
    "ResNet + model-space loss": ("resnet", "model_space", False),
}


def make_regressor(model, cfg: dict, kind: str, seed: int = 0) -> torch.nn.Module:
    """The profile's AlexNet or ResNet for ``model``'s parameter count, initialised from ``seed``.

    ``cfg`` keys: ``size``, ``alexnet_width``, ``alexnet_fc``, ``resnet_width``, ``resnet_blocks``."""
    from .nets import make_encoder

    m = ParamLayout.from_model(model).size
    torch.manual_seed(seed)
    if kind == "alexnet":
        return make_encoder("alexnet", m, cfg["size"], cfg["alexnet_width"], fc=cfg["alexnet_fc"])
    if kind == "resnet":
        return make_encoder("resnet", m, cfg["size"], cfg["resnet_width"], blocks=tuple(cfg["resnet_blocks"]))
    raise ValueError(f"unknown regressor {kind!r}; expected 'alexnet' or 'resnet'")


def row_loss(model, loss: str):
    """``"euclidean"`` -> :func:`euclidean_loss`; ``"model_space"`` -> Eq. 6-8 with the model's sigmas."""
    if loss == "euclidean":
        return euclidean_loss
    if loss == "model_space":
        sigma = model_space_weights(model)
        return lambda p, theta: model_space_loss(p, theta, sigma)
    raise ValueError(f"unknown loss {loss!r}; expected 'euclidean' or 'model_space'")


def train_row(model, cfg: dict, name: str, corpus, real_x: torch.Tensor | None = None, seed: int = 0,
              device=None, progress: bool = True) -> tuple:
    """Train one row of Table 1 (see :data:`TABLE1_ROWS`) with the profile's budget ``cfg``.

    Baselines train ``cfg["iters"]`` mini-batches on the Sec. 5 ``corpus`` (ResNet: twice that).
    Breeding follows Sec. 7: ``iters / 5`` on the corpus, then ``cfg["breed_rounds"]`` rounds of
    Algorithm 1 on the images of R (``real_x``) sharing the remaining 4/5 of the budget.  Runs are
    cached by their full configuration (:func:`train`), so a second chapter asking for the same row
    loads the weights instead of training again; ``train_s`` is always the time of the original run.

    Returns ``(net, info)``; ``info`` has ``train_s``, ``iters``, ``loss`` and, for breeding,
    ``history`` (:func:`breed`'s estimates per round).
    """
    kind, loss, bred = TABLE1_ROWS[name] if name in TABLE1_ROWS else (None, None, None)
    if kind is None:
        raise ValueError(f"unknown Table 1 row {name!r}; expected one of {list(TABLE1_ROWS)}")
    net = make_regressor(model, cfg, kind, seed).to(device or "cpu")
    loss_fn = row_loss(model, loss)
    from .corpus import _model_key

    key = {"version": TRAIN_VERSION, "model": _model_key(model),
           "corpus": [corpus.n, corpus.seed, corpus.size, corpus.render_size, getattr(corpus, "chunk", 0)],
           "kind": kind, "loss": loss, "seed": seed, "batch": cfg["batch"], "lr": cfg["lr"],
           "net": [cfg["size"], cfg["alexnet_width"], cfg["alexnet_fc"], cfg["resnet_width"],
                   list(cfg["resnet_blocks"])]}
    iters = cfg["iters"] * (2 if kind == "resnet" else 1)
    if not bred:
        log = train(net, corpus, loss_fn, iters, cfg["batch"], cfg["lr"], seed=seed, device=device,
                    progress=progress, desc=name, cache_key=dict(key, iters=iters))
        return net, {"train_s": log["train_s"], "iters": iters, "loss": log["loss"], "cached": log["cached"]}
    if real_x is None:
        raise ValueError("the breeding row needs the images of R (real_x)")
    pre = iters // 5
    rounds = cfg["breed_rounds"]
    per_round = (iters - pre) // rounds
    bkey = dict(key, iters=pre, breed=[rounds, per_round, real_x.shape[0],
                                       hashlib.sha256(real_x.cpu().numpy().tobytes()).hexdigest()[:16]])
    path = checkpoint_dir() / f"{_key(bkey)}.pt"
    if path.exists():
        try:
            ck = torch.load(path, map_location=device or "cpu", weights_only=False)
            net.load_state_dict(ck["net"])
            return net, dict(ck["info"], cached=True)
        except Exception:
            path.unlink(missing_ok=True)
    log = train(net, corpus, loss_fn, pre, cfg["batch"], cfg["lr"], seed=seed, device=device,
                progress=progress, desc=f"{name}: synthetic pre-training", cache_key=dict(key, iters=pre))
    hist = breed(net, model, real_x, rounds, per_round, loss_fn, cfg["size"], cfg["batch"], cfg["lr"],
                 seed=seed, progress=progress, optimizer_state=log["optimizer"], render_size=corpus.render_size)
    info = {"train_s": log["train_s"] + hist["train_s"], "iters": pre + rounds * per_round,
            "loss": log["loss"] + hist["loss"], "pretrain_iters": pre, "rounds": rounds, "per_round": per_round,
            "history": {"theta_r": hist["theta_r"], "children": hist["children"]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"net": net.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    return net, dict(info, cached=False)
