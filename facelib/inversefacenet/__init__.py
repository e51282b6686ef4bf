"""InverseFaceNet (Kim et al. 2018): losses (Sec. 6.2), training, breeding (Sec. 7) and evaluation (Sec. 8).

* :func:`model_space_weights` and :func:`model_space_loss` are Eq. 6-8; :func:`euclidean_loss` is the
  plain parameter loss of the baseline.
* :func:`train` is the training loop (seeded batches, AdamW, progress bar, cached checkpoints).
* :func:`breed` is Algorithm 1: regress theta for the images of R, perturb each estimate into two
  children (Sec. 7 noise, :func:`facelib.model.params.breed_children`), render them, continue training.
* :func:`make_test_set` and :func:`evaluate` measure Sec. 8's errors per image: photometric RMSE in
  8-bit units inside the face mask, geometric RMSE in mm on corresponding vertices, IoU of the face
  masks in %, and the test time in ms per image; :func:`paired_test` compares two rows image by image.
  A test set made with ``n_now`` also gets the book's shared NoW-style error on its first ``n_now``
  faces (:func:`facelib.eval.compare.now_mm`: landmark + rigid/scale alignment, point-to-surface distance).

Deviations from the paper, all stated in the book: networks are trained from scratch (no ImageNet
weights here) with AdamW instead of Caffe's AdaDelta, at the profile's size and budget.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_path
from .._linalg import solve
from ..data.corpus import landmark_features, landmark_input, landmark_side, network_input, render_crops, to_network
from ..eval.metrics import geometric_rmse, mask_iou, photometric_rmse
from ..model.params import ParamLayout, breed_children
from ..nets import takes_landmarks

__all__ = ["MSL_WEIGHTS", "model_space_weights", "model_space_loss", "euclidean_loss", "coefficient_displacement",
           "TensorCorpus", "lr_at", "train", "GEOMETRY_GROUPS", "pretrain_landmarks", "pretrained_branch", "predict",
           "test_time_ms", "breed", "make_test_set", "TEST_SEEDS", "chapter_test_sets", "corpus_real", "evaluate_theta", "now_errors",
           "evaluate", "mean_face_theta",
           "summarize", "paired_test", "checkpoint_dir", "TABLE1_ROWS", "TRAIN_OPTIONS", "make_regressor", "row_loss",
           "train_row", "curve_eval", "reference_rows", "train_rows", "seed_means", "table1_markdown",
           "compare_rows", "verdict", "rows_json", "curves_json", "LANDMARK_VARIANTS", "landmark_variants_markdown",
           "size_share", "target_ratios", "truncation_standing", "MEASURES", "MEASURE_LABELS",
           "expression_moments", "LANDMARK_UNKNOWNS", "landmark_map", "landmark_limit",
           "landmark_limit_markdown", "TEST_CHUNK", "BREED_OPTIONS", "wild_test_frames", "fit_limit", "fit_limit_rows",
           "budget_markdown"]

# Sec. 6.2: (w_R, w_s, w_e, w_r, w_i)
MSL_WEIGHTS = {"rotation": 400.0, "shape": 50.0, "expression": 50.0, "reflectance": 100.0, "illumination": 20.0}


# ------------------------------------------------------------------------------------------- losses
def model_space_weights(model, layout: ParamLayout | None = None, weights: dict | None = None,
                        units: str = "model") -> torch.Tensor:
    """Eq. 8: the diagonal of ``Sigma = diag(w_R 1_3, w_s sigma_s, w_e sigma_e, w_r sigma_r, w_i 1_27)``,
    ``(m,)`` float32, in the order of ``layout`` (default ``ParamLayout.from_model(model)``).

    ``units="model"`` takes the sigmas as the model stores them (Eq. 8 literally; their scale depends on
    how the model normalises its basis, for ours on the number of vertices).  ``units="rms"`` measures
    each sigma as the RMS change per vertex that one unit of the coefficient causes
    (:func:`coefficient_displacement`: mm for shape and expression, albedo units for reflectance), a
    unit that does not depend on the mesh resolution or the basis normalisation."""
    layout = layout or ParamLayout.from_model(model)
    w = dict(MSL_WEIGHTS, **(weights or {}))
    if units == "model":
        sig = {"shape": model.sigma_s, "expression": model.sigma_e, "reflectance": model.sigma_r}
    elif units == "rms":
        sig = coefficient_displacement(model)
    else:
        raise ValueError(f"units must be 'model' or 'rms'; got {units!r}")
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
    """Training pairs held as tensors: ``images (n, 3, N, N) uint8``, ``theta (n, m)`` and, for a network
    with a landmark input, the crops' ``landmarks (n, 68, 2)`` (crop pixels; ``landmark_noise`` and
    ``seed`` as :class:`facelib.data.corpus.SyntheticCorpus`).

    The interface :func:`train` needs (``len`` and ``batch(index, landmarks=False)``);
    :class:`facelib.data.corpus.SyntheticCorpus` has the same one.
    """

    def __init__(self, images: torch.Tensor, theta: torch.Tensor, landmarks: torch.Tensor | None = None,
                 landmark_noise: float | None = None, seed: int = 0):
        from ..data.corpus import _default_noise

        if images.shape[0] != theta.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {theta.shape[0]} parameter vectors")
        if landmarks is not None and landmarks.shape != (images.shape[0], 68, 2):
            raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected ({images.shape[0]}, 68, 2)")
        self.images, self.theta, self.landmarks = images, theta, landmarks
        self.landmark_noise, self.seed = _default_noise(landmark_noise), int(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor, landmarks: bool = False):
        x = to_network(self.images[index])
        if not landmarks:
            return x, self.theta[index]
        if self.landmarks is None:
            raise ValueError("this corpus has no landmarks, and the network takes them as its second input")
        return (x, landmark_input(self.landmarks[index], self.landmark_noise, self.seed, index)), self.theta[index]


def checkpoint_dir() -> Path:
    """``$FACELIB_CACHE/checkpoints`` or ``~/.cache/facelib/checkpoints``."""
    from ..model.open_model import cache_dir

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


def lr_at(step: int, total: int, lr: float, schedule: str = "constant", warmup: float = 0.0) -> float:
    """The learning rate of mini-batch ``step`` (0-based) of ``total``.

    ``"constant"``: ``lr`` throughout (after the warm-up).  ``"cosine"``: a linear warm-up over the
    first ``warmup * total`` steps, then a cosine decay from ``lr`` to ``lr / 50`` at the last step.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine'; got {schedule!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction in [0, 1); got {warmup!r}")
    w = int(round(warmup * total))
    if step < w:
        return lr * (step + 1) / w
    if schedule == "constant":
        return lr
    t = (step - w) / max(total - w - 1, 1)
    lo = lr / 50
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train(net: torch.nn.Module, corpus, loss_fn, iters: int, batch: int = 32, lr: float = 1e-3,
          weight_decay: float = 1e-3, seed: int = 0, device=None, progress: bool = True,
          desc: str = "training", cache_key: dict | None = None, optimizer_state: dict | None = None,
          schedule: str = "constant", warmup: float = 0.0, total_iters: int | None = None,
          start_iter: int = 0, eval_fn=None, eval_every: int = 0, init_fn=None) -> dict:
    """Train ``net`` on ``corpus`` for ``iters`` mini-batches (Sec. 6.1: batch 32, weight decay 1e-3).

    Args:
        net: the regressor (trained in place).  corpus: ``len`` and ``batch(index) -> (x, theta)``.
        loss_fn: ``(p, theta) -> scalar``, e.g. :func:`model_space_loss` with its sigma bound.
        iters, batch, lr, weight_decay: AdamW schedule.  seed: fixes the batch order.
        cache_key: if given, a dict that identifies this run (data, net, schedule); the trained weights
            and the log are saved under :func:`checkpoint_dir` and loaded instead of retraining when the
            same key is asked for again (the same computation, so the same numbers).
        optimizer_state: AdamW state to continue from (breeding continues training).
        schedule, warmup: the learning-rate schedule (:func:`lr_at`) over ``total_iters`` mini-batches
            (default ``iters``), of which this call runs ``start_iter .. start_iter + iters - 1`` (breeding
            runs one schedule across its rounds).
        eval_fn, eval_every: if given, ``eval_fn(net) -> dict`` of held-out errors is called every
            ``eval_every`` iterations and after the last one (the time it takes is not training time);
            the results form the learning curve ``log["curve"]``.
        init_fn: ``init_fn(net)``, called before the first mini-batch of a run that is not loaded from
            the cache (e.g. :func:`pretrain_landmarks`); its time counts as training time (or, if it
            returns a number, that many seconds: the original time of a step it loaded from a cache).
    Corpora with an ``indices(batch, iters, seed)`` method (:class:`facelib.data.corpus.FreshCorpus`) choose
    their own mini-batches; the others are drawn in seeded random epochs.  A net with a landmark input
    (:func:`facelib.nets.takes_landmarks`) gets ``corpus.batch(index, landmarks=True)``'s pair ``(x, l)``.
    Returns:
        log dict: ``loss`` (list per iteration), ``train_s`` (seconds of training), ``iters``,
        ``optimizer`` (state, for continued training), ``cached`` (bool), ``curve`` (list of
        ``{"iter", "train_s", **eval_fn(net)}``; empty without ``eval_fn``).
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    path = None
    if cache_key is not None:
        path = checkpoint_dir() / f"{_key(cache_key)}.pt"
        if path.exists():
            try:
                ck = torch.load(path, map_location=device, weights_only=False)
                net.load_state_dict(ck["net"])
                return dict({"curve": []}, **ck["log"], cached=True, optimizer=ck["optimizer"])
            except Exception:
                path.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    net.to(device).train()
    lm_in = takes_landmarks(net)
    t0 = time.perf_counter()
    if init_fn is not None:
        spent = init_fn(net)
        if spent is not None:  # the time the loaded step took when it ran
            t0 = time.perf_counter() - float(spent)
        net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    torch.manual_seed(seed)  # dropout
    total = total_iters or iters
    losses, curve = [], []
    spent_eval = 0.0

    def record(i):
        nonlocal spent_eval
        te = time.perf_counter()
        net.eval()
        row = {"iter": start_iter + i, "train_s": te - t0 - spent_eval, **eval_fn(net)}
        net.train()
        curve.append(row)
        spent_eval += time.perf_counter() - te

    draw = corpus.indices(batch, iters, seed) if hasattr(corpus, "indices") else _batches(len(corpus), batch,
                                                                                             iters, seed)
    bar = tqdm(draw, total=iters, desc=desc, disable=not progress)
    for i, idx in enumerate(bar):
        if eval_fn is not None and eval_every and i % eval_every == 0 and (i > 0 or start_iter == 0):
            record(i)  # a continued run (start_iter > 0) starts where the previous call's last point was
        for group in opt.param_groups:
            group["lr"] = lr_at(start_iter + i, total, lr, schedule, warmup)
        x, theta = corpus.batch(idx, landmarks=True) if lm_in else corpus.batch(idx)
        loss = loss_fn(_forward(net, x, device), theta.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at iteration {len(losses)}; "
                                     "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4g}")
    if eval_fn is not None:
        record(iters)
    log = {"loss": losses, "train_s": time.perf_counter() - t0 - spent_eval, "iters": iters, "curve": curve}
    net.eval()
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({"net": net.state_dict(), "log": log, "optimizer": opt.state_dict()}, tmp)
    return dict(log, cached=False, optimizer=opt.state_dict())


GEOMETRY_GROUPS = ("rotation", "shape", "expression")  # what a face's 68 landmarks show


def pretrain_landmarks(model, net: torch.nn.Module, steps: int, batch: int = 256, lr: float = 1e-3, seed: int = 0,
                       noise: float | None = None, progress: bool = True, outputs: tuple | None = None,
                       weights: torch.Tensor | None = None, spread: float = 1.0) -> dict:
    """Pre-train the landmark branch of ``net`` (:class:`facelib.nets.LandmarkBranch`: its MLP and its
    head) on landmarks alone, before the network sees an image.

    Every step draws ``batch`` new faces from the Sec. 5 prior (:func:`facelib.model.params.sample_sec5`),
    projects their 68 landmarks without rendering (:func:`facelib.render.project_landmarks`), moves them
    by detector noise (:func:`facelib.data.wild.detector_noise`, ``noise`` of the box side, default the
    wild set's) and normalises them like the crop's (:func:`facelib.data.corpus.landmark_features`).  The
    head learns the network's outputs for what landmarks show, the rotation, shape and expression
    coefficients (:data:`GEOMETRY_GROUPS`), by mean squared error in the network's output units (a
    :class:`facelib.nets.Standardized` net's: the prior's); its other outputs stay 0.  Adam, a 5%
    warm-up and cosine decay (:func:`lr_at`); seeded by ``seed``.  The rest of ``net`` is not touched.

    ``outputs``: for a network whose outputs are not InverseFaceNet's parameters (MoFA's code,
    :func:`facelib.mofa.landmark_outputs`), ``(cols (k,), to_output)``: the output columns the head learns
    and ``to_output(theta (B, m)) -> (B, k)``, their targets for faces ``theta`` of ``model``'s layout.

    ``weights``: ``(k,)`` weights of the learned outputs' squared errors (default equal: the mean).

    ``spread``: the drawn faces' shape coefficients times ``spread`` (1: the Sec. 5 prior; more: faces
    further from the mean than the prior draws, ``benchmarks/foreign_prior.py``).

    Returns ``{"loss": [per step], "train_s": seconds}``.
    """
    from tqdm.auto import tqdm

    from ..data.wild import WILD, detector_noise
    from ..model.params import sample_sec5
    from ..nets import Standardized, optimizer_step, restore_grad, unfreeze
    from ..render import project_landmarks

    if not takes_landmarks(net):
        raise ValueError("the network has no landmark input to pre-train (make it with landmarks=68)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    branch = _branch_of(net)
    device = next(branch.parameters()).device
    if outputs is None:  # InverseFaceNet's parameters, in the network's units
        layout = ParamLayout.from_model(model)
        cols = torch.cat([torch.arange(layout.size)[layout[k]] for k in GEOMETRY_GROUPS])
        mean, std = (net.mean.cpu(), net.std.cpu()) if isinstance(net, Standardized) else (0.0, 1.0)
        outputs = (cols, lambda theta: ((theta - mean) / std)[:, cols])
    cols, to_output = outputs
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (len(cols),) or not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
            raise ValueError(f"weights must be {len(cols)} non-negative values, not all 0")
        weights = (weights / weights.mean()).to(device)
    noise = WILD["landmark_noise"] if noise is None else float(noise)
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 0:
        raise ValueError(f"spread must be a positive number; got {spread!r}")
    shape_cols = ParamLayout.from_model(model)["shape"]
    g = torch.Generator().manual_seed(int(seed))
    flags = unfreeze(branch)  # a frozen branch (train_row's landmark_freeze) is trained here all the same
    opt = torch.optim.Adam(branch.parameters(), lr=lr)
    losses, t0 = [], time.perf_counter()
    branch.train()
    for step in tqdm(range(steps), desc="landmark branch", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, "cosine", 0.05)
        theta = sample_sec5(model, batch, seed=int(seed) * 1_000_003 + step).to(model.device, torch.float32)
        if spread != 1.0:
            theta[:, shape_cols] *= spread
        with torch.no_grad():
            lm = detector_noise(project_landmarks(model, theta).double().cpu(), noise, g)
            target = to_output(theta.cpu())
        pred = branch.head(branch(landmark_features(lm).to(device)))[:, cols]
        err = (pred - target.to(device)).square()
        losses.append(optimizer_step(opt, (err if weights is None else err * weights).mean()))
    restore_grad(branch, flags)
    return {"loss": losses, "train_s": time.perf_counter() - t0}


def pretrained_branch(model, net: torch.nn.Module, steps: int, batch: int, seed: int, progress: bool = True,
                      outputs: tuple | None = None, what: str = "landmark branch", pretrain=None,
                      threads: int | None = None, spread: float = 1.0) -> float:
    """:func:`pretrain_landmarks` of ``net``'s landmark branch, shared through the cache: the branch does not
    depend on the image network around it, so the Table 1 rows of one training seed pre-train it once
    (``checkpoint_dir()/branch-<key>.pt``, keyed by the face model, the branch's shape, steps, batch and
    seed) and load it after that.  Returns the seconds the pre-training took when it ran (each row
    counts them as its own training time).  ``outputs``: as :func:`pretrain_landmarks`'s, with ``what``
    naming the network kind it is for in the cache key (MoFA's: ``"mofa landmark branch"``).  ``pretrain``:
    a call ``() -> {"loss", "train_s"}`` that pre-trains the branch another way (CoarseNet's,
    :func:`facelib.coarse_fine.pretrain_branch`; ``what`` must then name all it depends on).  ``threads``:
    the CPU threads the pre-training runs with where a caller fixes them (:func:`train_rows` side by side),
    part of the key, since the thread count changes the order of sums and so the bits.  ``spread``: as
    :func:`pretrain_landmarks`'s (part of the key where it is not 1)."""
    from ..data.corpus import _model_key

    branch = _branch_of(net)
    key = {"what": what, "version": TRAIN_VERSION, "model": _model_key(model), "steps": int(steps),
           "batch": int(batch), "seed": int(seed), "shape": [branch.landmarks, branch.width, branch.head.out_features]}
    if threads is not None:
        key["threads"] = int(threads)
    if float(spread) != 1.0:
        key["spread"] = float(spread)
    path = checkpoint_dir() / f"branch-{_key(key)}.pt"
    if path.exists():
        try:
            ck = torch.load(path, map_location=next(branch.parameters()).device, weights_only=False)
            branch.load_state_dict(ck["branch"])
            return float(ck["train_s"])
        except Exception:  # a damaged file is pre-trained again, not trusted
            path.unlink(missing_ok=True)
    log = (pretrain() if pretrain is not None else
           pretrain_landmarks(model, net, steps, batch, seed=seed, progress=progress, outputs=outputs,
                              spread=spread))
    with atomic_path(path) as tmp:
        torch.save({"branch": branch.state_dict(), "train_s": log["train_s"], "loss": log["loss"]}, tmp)
    return log["train_s"]


def _forward(net: torch.nn.Module, x, device) -> torch.Tensor:
    """``net(x)``, or ``net(x, l)`` for an input pair ``x = (x, l)``, on ``device``."""
    if isinstance(x, (tuple, list)):
        return net(*(t.to(device) for t in x))
    return net(x.to(device))


@torch.no_grad()
def predict(net: torch.nn.Module, x: torch.Tensor, batch: int = 128,
            landmarks: torch.Tensor | None = None) -> torch.Tensor:
    """Regress parameters for network inputs ``x (n, 3, N, N)`` (float in [-0.5, 0.5] or uint8 crops);
    returns ``(n, m)`` on the CPU.  A net with a landmark input (:func:`facelib.nets.takes_landmarks`)
    needs the crops' ``landmarks (n, 68, 2)`` (pixels, as they were detected: no noise is added)."""
    net.eval()
    device = next(net.parameters()).device
    feats = None
    if takes_landmarks(net):
        if landmarks is None:
            raise ValueError("this network takes the crops' landmarks as a second input; pass landmarks=(n, 68, 2)")
        if landmarks.shape != (x.shape[0], 68, 2):
            raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected ({x.shape[0]}, 68, 2)")
        feats = landmark_features(landmarks)
    out = []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        xb = to_network(xb) if xb.dtype == torch.uint8 else xb
        out.append(_forward(net, xb if feats is None else (xb, feats[i:i + batch]), device).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def test_time_ms(net: torch.nn.Module, size: int, repeats: int = 20, min_seconds: float = 0.5) -> float:
    """Forward time of one image (batch 1) in ms on the net's device (Table 1's test time): the best of
    at least ``repeats`` runs spread over at least ``min_seconds``, because on a shared machine other
    jobs only ever add time, and the worker threads of a parallel kernel that ran just before (the
    NoW-style error's) keep spinning for a moment and can slow every run of a short burst 100-fold."""
    net.eval()
    device = next(net.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    if takes_landmarks(net):  # the landmark branch is part of the test time
        x = (x, torch.zeros(1, 2 * net.n_landmarks, device=device))
    for _ in range(3):
        _forward(net, x, device)
    times, start = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        _forward(net, x, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t))
    return float(np.min(times))


# ------------------------------------------------------------------------------------------- breeding
def breed(net: torch.nn.Module, model, real_x: torch.Tensor, rounds: int, iters: int, loss_fn, size: int,
          batch: int = 32, lr: float = 1e-3, seed: int = 0, children: int = 2, progress: bool = True,
          optimizer_state: dict | None = None, render_size: int | None = None, schedule: str = "constant",
          warmup: float = 0.0, total_iters: int | None = None, start_iter: int = 0, eval_fn=None,
          eval_every: int = 0, real_landmarks: torch.Tensor | None = None, keep: float = 0.0,
          keep_corpus=None) -> dict:
    """Algorithm 1, breeding with real images: for each of ``rounds`` (N_breed) rounds,

    1. ``theta_r = N(R)``: regress parameters for the images of R (``real_x (n, 3, N, N)``);
    2. ``theta_r' = resample_parameters(theta_r)``: ``children`` perturbed copies each (Sec. 7 noise);
    3. ``I_r = generate_images(theta_r')``: render and pre-process them like the Sec. 5 corpus;
    4. continue training ``net`` on ``{I_r, theta_r'}`` for ``iters`` mini-batches.

    The learning rate follows one ``schedule`` (:func:`lr_at`) over ``total_iters`` mini-batches, the
    rounds continuing it from ``start_iter`` (the pre-training's length).  ``eval_fn`` / ``eval_every``
    as in :func:`train` (a point at the end of every round at least).  A net with a landmark input needs
    ``real_landmarks (n, 68, 2)``, the landmarks of R's crops; the children train with their own.

    ``keep`` (not in the paper, whose step 4 trains on the children alone): the fraction of each round's
    training set drawn from ``keep_corpus`` (the Sec. 5 corpus the network was pre-trained on; its
    ``images``, ``theta`` and ``landmarks``), so that a round cannot teach the network its own bias on R
    without the prior's faces to hold it: ``round(keep / (1 - keep) * children)`` of them per round, drawn
    without replacement with seed ``seed * 1000 + k + 500``.

    Returns a dict with ``theta_r`` (list of ``(n, m)`` estimates per round, before its training),
    ``children`` (list of the bred parameter sets), ``train_s`` (seconds, all four steps, without the
    evaluations), ``loss``, ``curve``.
    """
    from tqdm.auto import tqdm

    if not 0.0 <= keep < 1.0:
        raise ValueError(f"keep must lie in [0, 1); got {keep!r}")
    if keep and keep_corpus is None:
        raise ValueError("keep > 0 needs the Sec. 5 corpus to keep faces from (keep_corpus)")
    t0 = time.perf_counter()
    total_iters = total_iters or start_iter + rounds * iters
    history = {"theta_r": [], "children": [], "loss": [], "curve": []}
    spent_eval = 0.0
    opt_state = optimizer_state
    for k in tqdm(range(rounds), desc="breeding rounds", disable=not progress):
        theta_r = predict(net, real_x, landmarks=real_landmarks)  # step 1
        kids = breed_children(theta_r, model, seed=seed * 1000 + k, children=children)  # step 2
        device = model.device
        imgs, lms = [], []
        for i in range(0, kids.shape[0], 256):  # step 3
            out = render_crops(model, kids[i:i + 256].to(device), size, render_size)
            imgs.append((out["crop"] * 255).round().to(torch.uint8).cpu())
            lms.append(out["landmarks"].float().cpu())
        imgs, theta, lms = torch.cat(imgs), kids.float().cpu(), torch.cat(lms)
        n_keep = min(round(keep / (1.0 - keep) * kids.shape[0]), len(keep_corpus)) if keep else 0
        if n_keep:  # Sec. 5 faces beside the children
            g = torch.Generator().manual_seed(seed * 1000 + k + 500)
            idx = torch.randperm(len(keep_corpus), generator=g)[:n_keep]
            imgs = torch.cat([imgs, keep_corpus.images[idx]])
            theta = torch.cat([theta, keep_corpus.theta[idx].float()])
            lms = torch.cat([lms, keep_corpus.landmarks[idx].float()])
        corpus = TensorCorpus(imgs, theta, lms, seed=seed * 1000 + k)
        t_round = time.perf_counter()
        log = train(net, corpus, loss_fn, iters, batch=batch, lr=lr, seed=seed * 1000 + k, progress=progress,
                    desc=f"round {k + 1}/{rounds}", optimizer_state=opt_state, schedule=schedule, warmup=warmup,
                    total_iters=total_iters, start_iter=start_iter + k * iters, eval_fn=eval_fn,
                    eval_every=eval_every or iters)  # step 4
        before = t_round - t0 - spent_eval  # training seconds of the run so far
        spent_eval += (time.perf_counter() - t_round) - log["train_s"]
        history["curve"] += [dict(r, train_s=before + r["train_s"]) for r in log["curve"]]
        opt_state = log["optimizer"]
        history["theta_r"].append(theta_r)
        history["children"].append(kids.cpu())
        history["loss"] += log["loss"]
    history["theta_r"].append(predict(net, real_x, landmarks=real_landmarks))  # the final network's estimates
    history["train_s"] = time.perf_counter() - t0 - spent_eval
    history["optimizer"] = opt_state
    return history


# ------------------------------------------------------------------------------------------- evaluation
TEST_CHUNK = 128  # faces per rendering chunk of make_test_set; each chunk has its own seed


def _test_chunk_seed(seed: int, i: int) -> int:
    """The seed of chunk ``i`` of a :func:`make_test_set` set of ``seed``."""
    return seed * 1_000_003 + i


def wild_test_frames(model, n: int, seed: int, frame_size: int):
    """The full frames of a wild :func:`make_test_set` set (same ``n`` and ``seed``) drawn at ``frame_size``
    pixels, in chunks: yields one :func:`facelib.data.wild.wild_batch` dict per chunk of at most
    :data:`TEST_CHUNK` faces.  The faces (parameters, detail, albedo, the camera's relative zoom and shift,
    the detector's noise relative to the landmark box) are those of the test set whatever the size, so a
    method that reads the whole frame, e.g. :func:`facelib.fit.fit`, can be scored on the same faces as
    the networks, at their frame size (the set's ``render_size``) or a larger one."""
    from ..data.wild import wild_batch

    for i, start in enumerate(range(0, n, TEST_CHUNK)):
        yield wild_batch(model, min(TEST_CHUNK, n - start), seed=_test_chunk_seed(seed, i), size=frame_size)


def make_test_set(model, kind: str, n: int, seed: int, size: int, render_size: int | None = None,
                  n_now: int = 0, cache: bool = False) -> dict:
    """A held-out test set with ground truth: ``kind`` ``"synthetic"`` (Sec. 5 prior) or ``"wild"``
    (:mod:`facelib.data.wild`, the stand-in for R; landmarks with detector noise, no renderer mask).

    Returns ``x (n, 3, N, N)`` uint8 crops (network input before :func:`to_network`), ``target``
    ``(n, 3, N, N)`` float in [0, 1], ``mask (n, N, N)``, ``theta (n, m)``, ``verts (n, V, 3)`` model-space
    ground-truth geometry (with the wild set's out-of-model detail), ``landmarks (n, 68, 2)`` the crops'
    landmarks in crop pixels (wild: the detector's, synthetic: the exact projection); ``n_now``: :func:`evaluate_theta`
    also measures the NoW-style error on the first ``n_now`` faces (about 0.1 s per face).

    ``cache``: keep the set in ``checkpoint_dir()/test_sets`` under a digest of its arguments (``n_now`` aside,
    a label), the face model, facelib's source and the machine's kernels and threads (:func:`_kept`), and read
    it from there when the same set is asked for again: chapters 2, 3 and 4 draw the same 256 wild faces
    (12.4 s to draw on the 2-core AMD EPYC, 0.04 s to read), the same tensors to the bit.
    """
    from ..data.wild import wild_batch
    from ..model.params import sample_sec5

    if isinstance(n_now, bool) or not isinstance(n_now, int) or not 0 <= n_now <= n:
        raise ValueError(f"n_now must be an integer in [0, n={n}]; got {n_now!r}")

    render_size = render_size or int(math.ceil(1.5 * size))
    if cache:
        from ..data.corpus import _model_key

        key = _digest(("test set", _model_key(model), kind, n, seed, size, render_size, TEST_CHUNK), {})
        data = _kept("test_sets", key, lambda: make_test_set(model, kind, n, seed, size, render_size))
        return dict(data, n_now=n_now)
    parts = []
    for i, start in enumerate(range(0, n, TEST_CHUNK)):
        b = min(TEST_CHUNK, n - start)
        s = _test_chunk_seed(seed, i)
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
                      "theta": theta.float().cpu(), "verts": verts.float().cpu(),
                      "landmarks": out["landmarks"].float().cpu()})
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    data["target"] = data["x"].float() / 255.0
    data.update(kind=kind, seed=seed, size=size, render_size=render_size, n_now=n_now)
    return data


# the chapters' held-out sets and corpus R: offsets of their draws from a chapter's ``seed`` parameter
TEST_SEEDS = {"wild": 10_000, "synthetic": 20_000, "real": 30_000}


def chapter_test_sets(model, cfg: dict, seed: int = 0, kinds=("synthetic", "wild"), n_now: int | None = None) -> dict:
    """The held-out test sets of chapters 2-4, and of the benchmarks that load their runs: for each of
    ``kinds``, ``cfg["n_test"]`` faces of that kind at ``cfg["size"]`` pixels drawn from ``seed +``
    :data:`TEST_SEEDS` ``[kind]`` (:func:`make_test_set`, kept in the cache), the NoW-style error measured on
    the first ``n_now`` faces (default ``cfg["n_now"]``, 0 if ``cfg`` has none).  Returns ``{kind: set}`` in the
    order of ``kinds``."""
    bad = [k for k in kinds if k not in ("synthetic", "wild")]
    if bad:
        raise ValueError(f"kinds must be 'synthetic' or 'wild'; got {bad}")
    return {k: make_test_set(model, k, cfg["n_test"], seed=seed + TEST_SEEDS[k], size=cfg["size"],
                             n_now=cfg.get("n_now", 0) if n_now is None else n_now, cache=True) for k in kinds}


def corpus_real(model, cfg: dict, seed: int = 0) -> dict:
    """Chapter 4's corpus R (Sec. 7), the stand-in for real photographs that breeding reads:
    ``cfg["n_real"]`` wild faces at ``cfg["size"]`` drawn from ``seed +`` :data:`TEST_SEEDS` ``["real"]``
    (:func:`make_test_set`'s dict; ``x`` uint8 crops, ``landmarks (n_real, 68, 2)`` the detector's)."""
    return make_test_set(model, "wild", cfg["n_real"], seed=seed + TEST_SEEDS["real"], size=cfg["size"], cache=True)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """SHA-256 of every source file of ``facelib``: an evaluation cached by one version of the code is
    never read by another."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _machine() -> tuple:
    """What a computation's bits depend on besides its inputs: facelib's source, PyTorch's version, its CPU
    kernels (AVX2 or AVX-512) and threads, and Numba's threads."""
    try:
        import numba

        numba_threads = numba.get_num_threads()
    except ImportError:  # pragma: no cover - numba is a dependency
        numba_threads = None
    return (_code_digest(), torch.__version__, torch.backends.cpu.get_cpu_capability(),
            torch.get_num_threads(), numba_threads)


def _digest(parts: tuple, tensors: dict) -> str:
    """SHA-256 (32 hex digits) of ``parts`` (reprs), :func:`_machine` and the named ``tensors`` / arrays /
    values, every element of a tensor or array (not repr's abbreviation)."""
    h = hashlib.sha256()
    for part in tuple(parts) + _machine():
        h.update(repr(part).encode() + b"\0")
    for name, value in sorted(tensors.items()):
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            v = value.detach().cpu().contiguous()
            h.update(f"{v.dtype}{tuple(v.shape)}".encode() + v.view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, np.ndarray):  # every element, not repr's abbreviation
            h.update(f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:32]


def _evaluation_key(what: str, model, theta: torch.Tensor, test: dict, args: tuple) -> str:
    """What a measure ``what(model, theta, test, *args)`` depends on: the estimates, every tensor and setting
    of the test set, the face model and :func:`_machine` (the code, PyTorch's version, kernels and threads)."""
    from ..data.corpus import _model_key

    return _digest((what, _model_key(model), args), {"estimate": theta, **test})


def _kept(folder: str, key: str, compute):
    """``compute()``, kept in ``checkpoint_dir()/folder/key.pt`` and read from there when asked for again (a
    damaged file is computed again, not trusted; the file is written whole or not at all)."""
    path = checkpoint_dir() / folder / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            path.unlink(missing_ok=True)
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return out


def _measured(measure, model, theta: torch.Tensor, test: dict, *args):
    """``measure(model, theta, test, *args)``, kept in ``checkpoint_dir()/evaluations`` under
    :func:`_evaluation_key` and read from there when the same measurement is asked for again."""
    return _kept("evaluations", _evaluation_key(measure.__name__, model, theta, test, args),
                 lambda: measure(model, theta, test, *args))


@torch.no_grad()
def evaluate_theta(model, theta: torch.Tensor, test: dict, batch: int = 64, cache: bool = False) -> dict:
    """Sec. 8 errors of estimates ``theta (n, m)`` on a :func:`make_test_set` set, per image.

    The estimate is rendered and pre-processed exactly like a training face (cropped to its own
    projected landmarks), then compared with the input crop: photometric RMSE [8-bit] over the pixels
    inside both face masks, IoU [%] of the two masks, geometric RMSE [mm] between the estimated and the
    ground-truth model-space meshes over the ``face`` vertices (pose is not part of the geometric error),
    and the same RMSE after a least-squares similarity alignment (rotation, translation and scale,
    :func:`facelib.eval.metrics.similarity_align`): ``geometric_aligned_mm``.  The Sec. 6.1 crop resizes
    the landmark box to N x N, so a face's absolute size cannot be seen in the input; the open model's
    first shape component is 97% a uniform scale (head size) and carries half the shape variance, which
    the unaligned measure charges to every network alike, and the aligned one does not.
    Returns ``photometric_8bit``, ``geometric_mm``, ``geometric_aligned_mm``, ``iou_pct``, each ``(n,)``;
    and ``now_mm`` ``(n,)`` when the set has ``n_now > 0`` (:func:`now_errors`; nan after the first
    ``n_now`` faces).

    ``cache``: keep the result in ``checkpoint_dir()/evaluations`` under a digest of the estimates, the whole
    test set, the face model, facelib's source, PyTorch's version and thread count, and read it from there
    when the same evaluation is asked for again (chapter 4 evaluates chapter 3's rows and reference rows
    once more: the same numbers, without measuring them twice).
    """
    if theta.shape != test["theta"].shape:
        raise ValueError(f"theta has shape {tuple(theta.shape)}; the test set has {tuple(test['theta'].shape)}")
    if cache:
        return _measured(evaluate_theta, model, theta, test, batch)
    photo, geo, geo_a, iou = [], [], [], []
    for i in range(0, theta.shape[0], batch):
        th = theta[i:i + batch].to(model.device, torch.float32)
        out = render_crops(model, th, test["size"], test["render_size"])
        tgt, m = test["target"][i:i + batch], test["mask"][i:i + batch]
        est, em = out["crop"].cpu().float(), out["mask"].cpu()
        photo.append(photometric_rmse(est, tgt, m & em))
        iou.append(mask_iou(em, m))
        g = geometric_errors(model, th, test["verts"][i:i + batch])
        geo.append(g["geometric_mm"])
        geo_a.append(g["geometric_aligned_mm"])
    out = {"photometric_8bit": torch.cat(photo), "geometric_mm": torch.cat(geo),
           "geometric_aligned_mm": torch.cat(geo_a), "iou_pct": torch.cat(iou)}
    if test.get("n_now", 0):
        out["now_mm"] = now_errors(model, theta, test["verts"], test["n_now"])
    return out


@torch.no_grad()
def now_errors(model, theta: torch.Tensor, verts_gt: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """The book's shared NoW-style error [mm] (:func:`facelib.eval.compare.now_mm`, the measure of chapters
    5-8) of the model-space meshes of estimates ``theta (B, m)`` (Eq. 2, pose left out) against
    ``verts_gt (B, V, 3)``, on the first ``n`` faces (all when None); ``(B,)`` float32, nan after them."""
    from ..eval.compare import now_mm

    B = theta.shape[0]
    n = B if n is None else min(int(n), B)
    out = torch.full((B,), float("nan"))
    if n:
        p = ParamLayout.from_model(model).unpack(theta[:n].to(model.device, torch.float32))
        verts = model.geometry(p["shape"], p["expression"]).cpu()
        out[:n] = now_mm(model, verts, model.triangles.cpu(), model.landmarks.cpu(), verts_gt[:n].cpu()).float()
    return out


@torch.no_grad()
def geometric_errors(model, theta: torch.Tensor, verts_gt: torch.Tensor, aligned: bool = True) -> dict:
    """The two geometric errors of :func:`evaluate_theta` alone (no rendering): the RMSE [mm] over the
    ``face`` vertices between the model-space mesh of ``theta (n, m)`` (Eq. 2, pose left out) and
    ``verts_gt (n, V, 3)``, plain (``geometric_mm``) and, when ``aligned``, after a least-squares
    similarity alignment (``geometric_aligned_mm``); each ``(n,)``."""
    from ..eval.metrics import similarity_align

    face = model.masks["face"].cpu()
    p = ParamLayout.from_model(model).unpack(theta.to(model.device, torch.float32))
    verts = model.geometry(p["shape"], p["expression"]).cpu().float()
    gt = verts_gt.cpu().float()
    out = {"geometric_mm": geometric_rmse(verts, gt, face)}
    if aligned:
        al = similarity_align(verts[:, face].double(), gt[:, face].double())[0].float()
        out["geometric_aligned_mm"] = geometric_rmse(al, gt[:, face])
    return out


def truncated_truth(model, theta: torch.Tensor, k: int) -> torch.Tensor:
    """The ground truth ``theta (n, m)`` as a network that saw only the first ``k`` shape components
    would know it: shape components 2..k and every expression, pose, reflectance and light
    coefficient true; shape component 1 (the head size, hidden by the Sec. 6.1 crop,
    :func:`size_share`) and components k+1.. at their mean, 0.  ``k = 1``: only the expression is
    known; ``k = n_shape``: :func:`reference_rows`' "true parameters, mean head size".  Returns
    ``(n, m)``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= model.n_shape:
        raise ValueError(f"k must be an integer in [1, {model.n_shape}]; got {k!r}")
    sl = ParamLayout.from_model(model)["shape"]
    out = theta.clone()
    out[:, sl.start] = 0
    out[:, sl.start + int(k):sl.stop] = 0
    return out


def coefficient_r2(theta: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-coefficient R^2 of estimates ``theta (n, m)`` against ``truth (n, m)``: ``1 - mean((p -
    theta)^2) / var(theta)`` over the faces, ``(m,)`` (1: exact; 0: no better than predicting the
    test set's mean; below 0: worse, e.g. a coefficient estimated where the truth barely varies)."""
    if theta.shape != truth.shape or theta.ndim != 2:
        raise ValueError(f"theta {tuple(theta.shape)} and truth {tuple(truth.shape)} must be the same (n, m)")
    truth = truth.to(theta)
    return 1 - (theta - truth).square().mean(0) / truth.var(0).clamp_min(1e-12)


def error_sources(model, theta: torch.Tensor, test: dict, cache: bool = False) -> dict:
    """Where the geometric error of estimates ``theta (n, m)`` on a :func:`make_test_set` set comes
    from: the test-set mean [mm] of the plain geometric error of the estimates (``"estimate"``), of the
    estimated shape with the true expression (``"estimated shape, true expression"``) and of the true
    shape (head size at the mean, :func:`truncated_truth`) with the estimated expression (``"true
    shape, estimated expression"``).  Returns ``{row: float}``.  ``cache``: as :func:`evaluate_theta`'s."""
    if cache:
        return _measured(error_sources, model, theta, test)
    ex = ParamLayout.from_model(model)["expression"]
    truth = test["theta"]
    a = theta.clone()
    a[:, ex] = truth[:, ex]
    b = truncated_truth(model, truth, model.n_shape)
    b[:, ex] = theta[:, ex]
    rows = {"estimate": theta, "estimated shape, true expression": a, "true shape, estimated expression": b}
    return {k: float(geometric_errors(model, th, test["verts"], aligned=False)["geometric_mm"].mean())
            for k, th in rows.items()}


ERROR_SOURCES = ("estimate", "estimated shape, true expression", "true shape, estimated expression")


def error_sources_rows(model, results: dict, names, tests: dict) -> dict:
    """:func:`error_sources` of every row of ``names`` (:func:`train_rows`' ``results``) on every test
    set, averaged over the row's training seeds: ``{set: {row: {source: mm}}}`` (cached, as
    :func:`evaluate_theta`'s evaluations: chapter 4 reads chapter 3's rows)."""
    out = {}
    for key, t in tests.items():
        out[key] = {}
        for n in names:
            per_seed = [error_sources(model, r[key]["theta"], t, cache=True) for r in results[n].values()]
            out[key][n] = {k: float(np.mean([e[k] for e in per_seed])) for k in ERROR_SOURCES}
    return out


def error_sources_markdown(sources: dict, refs: dict | None = None) -> str:
    """A Markdown table of :func:`error_sources_rows` (one line per test set and row), with the plain
    geometric error of the reference rows ``refs`` (:func:`reference_rows`) "true expression, mean
    shape" and "true parameters, mean head size" under it: the levels the middle and the last column
    compare with."""
    lines = ["| test set | row | " + " | ".join(f"{k} [mm]" for k in ERROR_SOURCES) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in ERROR_SOURCES) + " |"]
    lines += [f"| {key} | {n} | " + " | ".join(f"{row[k]:.2f}" for k in ERROR_SOURCES) + " |"
              for key, rows in sources.items() for n, row in rows.items()]
    for key in sources if refs else ():
        for r in ("true expression, mean shape", "true parameters, mean head size"):
            lines.append(f"| {key} | *{r}* | {summarize(refs[r][key]['geometric_mm'])['mean']:.2f} | | |")
    return "\n".join(lines)


def truncation_floor(model, test: dict, ks=(1, 2, 3, 4, 6, 10, 20, 40, 80)) -> dict:
    """How much of the mean face's geometric error an image can be expected to explain: the errors of
    :func:`truncated_truth` for each ``k`` of ``ks`` on a :func:`make_test_set` set, next to the mean
    face's.  Returns ``{"k": [...], "geometric_mm": [...], "geometric_aligned_mm": [...]}`` (test-set
    means, one per ``k``) and ``"mean_face"`` ``{measure: mean}``."""
    theta, gt = test["theta"], test["verts"]
    mf = geometric_errors(model, mean_face_theta(model, theta), gt)
    out = {"k": [int(k) for k in ks], "geometric_mm": [], "geometric_aligned_mm": [],
           "mean_face": {m: float(v.mean()) for m, v in mf.items()}}
    for k in ks:
        e = geometric_errors(model, truncated_truth(model, theta, int(k)), gt)
        for m in ("geometric_mm", "geometric_aligned_mm"):
            out[m].append(float(e[m].mean()))
    return out


def truncation_standing(ratio: float, at: dict) -> str:
    """Where a network's error ``ratio`` (to the mean face's) falls on the truncation curve ``at``
    ``{k: ratio}`` of :func:`truncation_floor` (the truth known up to shape component ``k``), in words."""
    if ratio > at[1]:
        return "worse than knowing the expression exactly and no shape"
    k = max(k for k, v in at.items() if v >= ratio)
    known = f"shape components 2-{k}" if k > 2 else "shape component 2"
    return (f"between knowing {known} and the next point of the curve" if k > 1 else
            "better than knowing the expression exactly and no shape, worse than knowing component 2 as well")


# ---------------------------------------------------------------------- what the landmarks alone can tell
def expression_moments(model, theta: torch.Tensor) -> tuple:
    """Mean ``(E,)`` and covariance ``(E, E)`` (float64) of the expression coefficients of parameter
    samples ``theta (n, m)``: a Gaussian stand-in for a prior, for :func:`landmark_map`."""
    e = ParamLayout.from_model(model).unpack(theta.detach().cpu().double())["expression"]
    if e.shape[0] < 2:
        raise ValueError(f"expression_moments needs at least 2 samples; got {e.shape[0]}")
    mu = e.mean(0)
    return mu, (e - mu).T @ (e - mu) / (e.shape[0] - 1)


LANDMARK_UNKNOWNS = ("shape", "expression", "rotation")


def landmark_map(model, landmarks: torch.Tensor, theta0: torch.Tensor, sigma_px, expression_prior: tuple,
                 unknown=LANDMARK_UNKNOWNS, iters: int = 10) -> torch.Tensor:
    """The maximum a posteriori estimate of a face from its 68 landmarks alone, with a Gaussian prior:
    Gauss-Newton on

        sum_k |s P_k(theta) + t - l_k|^2 / sigma^2 + |theta_s|^2 + (theta_e - mu)^T C^-1 (theta_e - mu)

    where ``P`` is :func:`facelib.render.project_landmarks` (the renderer's camera, 64 px), ``s, t`` a free
    scale and translation (the crop's, flat prior), ``theta_s ~ N(0, I)`` (Eq. 2's units, as both the
    Sec. 5 prior and the wild faces draw it), ``theta_e ~ N(mu, C)`` (``expression_prior``, e.g. from
    :func:`expression_moments`) and the head rotation flat.  For a known pose and expression the
    landmarks are nearly linear in ``theta_s`` and the noise Gaussian, so this is the posterior mean:
    the best any method that reads the landmarks alone can do, in the mean-squared sense.

    ``landmarks (n, 68, 2)`` pixels (any similarity frame, e.g. a crop's); ``theta0 (n, m)`` start and
    the values of the groups not in ``unknown`` (a subset of :data:`LANDMARK_UNKNOWNS`); ``sigma_px``
    float or ``(n,)``: the landmarks' noise per coordinate in their pixels (a detector's common offset
    is absorbed by ``t``).  Returns ``(n, m)`` float32 (reflectance and light are those of ``theta0``).
    """
    from ..render.formation import project_landmarks

    layout = ParamLayout.from_model(model)
    unknown = tuple(unknown)
    if not unknown or any(u not in LANDMARK_UNKNOWNS for u in unknown) or len(set(unknown)) != len(unknown):
        raise ValueError(f"unknown must be distinct names of {LANDMARK_UNKNOWNS}; got {unknown!r}")
    n = theta0.shape[0]
    if theta0.ndim != 2 or theta0.shape[1] != layout.size:
        raise ValueError(f"theta0 has shape {tuple(theta0.shape)}; expected (n, {layout.size})")
    if landmarks.shape != (n, 68, 2):
        raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected ({n}, 68, 2)")
    sigma = torch.as_tensor(sigma_px, dtype=torch.float64).flatten()
    sigma = sigma.expand(n) if sigma.numel() == 1 else sigma
    if sigma.shape != (n,) or not bool((sigma > 0).all()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError(f"sigma_px must be a positive float or {n} positive values")
    mu_e, cov_e = (torch.as_tensor(a, dtype=torch.float64) for a in expression_prior)
    ne = model.n_expression
    if mu_e.shape != (ne,) or cov_e.shape != (ne, ne):
        raise ValueError(f"expression_prior must be (mean ({ne},), covariance ({ne}, {ne}))")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive integer; got {iters!r}")
    idx = torch.cat([torch.arange(layout[g].start, layout[g].stop) for g in unknown])
    k = idx.numel()
    prec = torch.zeros(k, k, dtype=torch.float64)  # prior precision and mean of the unknowns
    mean = torch.zeros(k, dtype=torch.float64)
    at = 0
    for g in unknown:
        w = layout[g].stop - layout[g].start
        if g == "shape":
            prec[at:at + w, at:at + w] = torch.eye(w, dtype=torch.float64)
        elif g == "expression":
            prec[at:at + w, at:at + w] = torch.linalg.inv(cov_e + 1e-9 * torch.eye(ne, dtype=torch.float64))
            mean[at:at + w] = mu_e
        at += w
    dev = model.device
    idx_d = idx.to(dev)
    est = theta0.detach().to(dev, torch.float32).clone()
    obs = landmarks.detach().cpu().double().reshape(n, 136, 1)
    w = (1.0 / sigma.square())[:, None, None]
    ex = torch.tensor([1.0, 0.0] * 68, dtype=torch.float64).view(1, 136, 1).expand(n, -1, -1)
    ey = torch.tensor([0.0, 1.0] * 68, dtype=torch.float64).view(1, 136, 1).expand(n, -1, -1)
    s = torch.ones(n, dtype=torch.float64)
    for _ in range(iters):
        base = est.clone()

        def proj(x):
            th = base.clone()
            th[:, idx_d] = x
            return project_landmarks(model, th, image_size=64).sum(0)  # faces are independent

        J = torch.autograd.functional.jacobian(proj, base[:, idx_d], vectorize=True)  # (68, 2, n, k)
        J = J.permute(2, 0, 1, 3).reshape(n, 136, k).cpu().double()
        p0 = project_landmarks(model, base, image_size=64).cpu().double().reshape(n, 136, 1)
        # obs ~ s (p0 + J dx) + t is linear in z = (u = s dx, s, t); the prior on x + dx = x + u / s uses
        # the previous iteration's s (converged after a few iterations)
        A = torch.cat([J, p0, ex, ey], 2)  # (n, 136, k + 3)
        x = base[:, idx_d].cpu().double()
        H = w * A.transpose(1, 2) @ A
        H[:, :k, :k] += prec / s.square()[:, None, None]
        b = (w * A.transpose(1, 2) @ obs).squeeze(-1)
        b[:, :k] -= ((x - mean) @ prec) / s[:, None]
        z = solve(H, b)  # one thread for the batched LU: see facelib._linalg
        s = z[:, k]
        est[:, idx_d] = (x + z[:, :k] / s[:, None]).to(dev, torch.float32)
    return est.cpu()


def landmark_limit(model, test: dict, prior_theta: dict, iters: int = 10) -> dict:
    """How far the 68 landmarks of a :func:`make_test_set` set take a face, read by :func:`landmark_map`
    with the landmark noise of the set's detector (:data:`facelib.data.wild.WILD` ``landmark_noise``
    times the crop's landmark box side; the wild set).  One row per prior of ``prior_theta`` ``{name:
    theta samples (n, m)}`` with pose and expression estimated (started from the true pose; on the
    book's wild set a frontal start finds the same minimum), then, with the last prior, the true pose
    given, and the true pose and expression given (shape alone: for the Gaussian shape prior this is the
    posterior mean).  Returns ``{row: {"theta": (n, m),
    measure: {mean, std}}}`` for the plain and aligned geometric errors."""
    from ..data.wild import WILD

    if not prior_theta:
        raise ValueError("prior_theta needs at least one prior")
    lm, truth = test["landmarks"], test["theta"]
    side = landmark_side(lm).double()
    sigma = WILD["landmark_noise"] * side
    sl = ParamLayout.from_model(model)
    start = truth.clone()
    start[:, sl["shape"]] = 0
    runs = {}
    for name, th in prior_theta.items():
        prior = expression_moments(model, th)
        s0 = start.clone()
        s0[:, sl["expression"]] = prior[0].float()
        runs[f"landmarks, {name}, pose and expression estimated"] = landmark_map(
            model, lm, s0, sigma, prior, LANDMARK_UNKNOWNS, iters)
    runs[f"landmarks, {name}, true pose"] = landmark_map(model, lm, s0, sigma, prior, ("shape", "expression"), iters)
    runs["landmarks, true pose and expression"] = landmark_map(model, lm, start, sigma, prior, ("shape",), iters)
    out = {}
    for row, th in runs.items():
        e = geometric_errors(model, th, test["verts"])
        out[row] = {"theta": th, **{m: summarize(v) for m, v in e.items()}}
    return out


def fit_limit(model, test: dict, frame_size: int, iters: tuple = (200, 80), weights=None, batch: int = 32,
              seed: int = 0, progress: bool = True, theta0: torch.Tensor | None = None) -> dict:
    """How far chapter 8's analysis-by-synthesis fit (:func:`facelib.fit.fit`: landmark, photometric and
    prior terms, from the mean face, the renderer's default camera) takes the faces of a wild
    :func:`make_test_set` set when it reads every pixel of their frames, drawn at ``frame_size``
    (:func:`wild_test_frames`; the set's ``render_size`` is the frame its network crops come from).
    ``weights``: :class:`facelib.fit.FitWeights` (default :data:`facelib.fit.FIT_WEIGHTS`; ``photo=0``
    reads the landmarks alone).  Faces are fitted ``batch`` at a time, each batch with ``seed``.
    ``theta0``: ``(n, m)`` Eq. 1 layout start instead of the mean face, e.g. :func:`landmark_map`'s estimate
    with ``iters=(0, k)`` (the fit's pixel stage alone from it); it is placed on each frame's landmarks
    and its reflectance and light are used as given (the pixel stage first solves the light in closed
    form; zero the reflectance to start from the mean albedo).
    Returns ``{"theta": (n, m) Eq. 1 layout, "seconds_per_face": float, measure: {mean, std}}`` for the
    plain and aligned geometric errors of :func:`evaluate_theta` against the set's ground truth."""
    from ..fit import FIT_WEIGHTS, fit, from_fit_layout

    if test.get("kind") != "wild":
        raise ValueError(f"fit_limit needs a wild test set (make_test_set(model, 'wild', ...)); got {test.get('kind')!r}")
    if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 32:
        raise ValueError(f"frame_size must be an integer >= 32; got {frame_size!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer; got {batch!r}")
    n = test["theta"].shape[0]
    if theta0 is not None and tuple(theta0.shape) != tuple(test["theta"].shape):
        raise ValueError(f"theta0 has shape {tuple(theta0.shape)}; the test set has {tuple(test['theta'].shape)}")
    thetas, seconds, done = [], 0.0, 0
    for frames in wild_test_frames(model, n, test["seed"], frame_size):
        for i in range(0, frames["image"].shape[0], batch):
            image, lm = frames["image"][i:i + batch].float(), frames["landmarks"][i:i + batch].float()
            start = None if theta0 is None else theta0[done:done + image.shape[0]].to(image)
            res = fit(model, image, lm, theta0=start, iters=tuple(iters), weights=weights or FIT_WEIGHTS, seed=seed,
                      progress=progress)
            done += image.shape[0]
            thetas.append(from_fit_layout(model, res.theta.detach()).float().cpu())
            seconds += res.seconds
    theta = torch.cat(thetas)
    e = geometric_errors(model, theta, test["verts"])
    return {"theta": theta, "seconds_per_face": seconds / n, **{m: summarize(v) for m, v in e.items()}}


def fit_limit_rows(record: dict | None, test: dict) -> dict:
    """The rows of a saved :func:`fit_limit` record (``benchmarks/ifn_fit_limit.py``'s JSON, ``{"test_set":
    ..., "rows": {name: {measure: {mean, std}, ...}}}``) if it was measured on the faces of ``test`` (the
    same kind, count, seed, crop and frame size), else ``{}`` (no record, or another profile's set), so a
    table never puts a fit of other faces beside the networks."""
    if not record:
        return {}
    want = {"kind": test.get("kind"), "faces": int(test["theta"].shape[0]), "seed": test.get("seed"),
            "size": test.get("size"), "render_size": test.get("render_size")}
    return dict(record["rows"]) if record.get("test_set") == want else {}


def landmark_limit_markdown(limit: dict, results: dict, refs: dict, names, test_key: str = "wild") -> str:
    """A Markdown table of :func:`landmark_limit` on the ``test_key`` set between the networks of
    ``names`` (:func:`train_rows`' ``results``, means over the training seeds) and the reference rows
    "mean face" and "true parameters, mean head size" (:func:`reference_rows`): the plain and aligned
    geometric errors [mm], each with its ratio to the mean face's."""
    measures = ("geometric_mm", "geometric_aligned_mm")
    mf = {m: summarize(refs["mean face"][test_key][m])["mean"] for m in measures}

    def row(name, v):
        return f"| {name} | " + " | ".join(f"{v[m]:.2f} ({v[m] / mf[m]:.2f})" for m in measures) + " |"

    head = refs["true parameters, mean head size"][test_key]
    return "\n".join([f"| row ({test_key} test set) | geometric [mm] (x mean face) | aligned [mm] (x mean face) |",
                      "| --- | ---: | ---: |", row("*mean face*", mf)]
                     + [row(n, {m: float(seed_means(results[n], test_key, m).mean()) for m in measures}) for n in names]
                     + [row(n, {m: r[m]["mean"] for m in measures}) for n, r in limit.items()]
                     + [row("*true parameters, mean head size*", {m: summarize(head[m])["mean"] for m in measures})])


def mean_face_theta(model, theta: torch.Tensor) -> torch.Tensor:
    """The "mean face" reference of a results table: ``theta (n, m)`` with shape and expression set to 0
    (the model's mean geometry), pose, reflectance and light kept.  Its geometric error is what a
    network that learned nothing about the face's geometry would score."""
    layout = ParamLayout.from_model(model)
    out = theta.clone()
    out[:, layout["shape"]] = 0
    out[:, layout["expression"]] = 0
    return out


def evaluate(model, net: torch.nn.Module, test: dict, batch: int = 64, cache: bool = False) -> dict:
    """:func:`evaluate_theta` of the network's estimates (``cache``: as there), plus ``theta (n, m)`` and
    ``test_ms`` (the best-of-20 batch-1 forward time in ms, Table 1's test time, always measured)."""
    theta = predict(net, test["x"], landmarks=test.get("landmarks"))
    return dict(evaluate_theta(model, theta, test, batch, cache=cache), theta=theta,
                test_ms=test_time_ms(net, test["size"]))


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
# "+ model-space loss" is Eq. 8 as written (the model's stored sigmas); the RMS row measures sigma per
# vertex (mm, albedo units), and breeding and the ResNet row build on it (see the book, chapter 3).
TRAIN_VERSION = 2  # bump when training, breeding or the networks change (invalidates cached checkpoints)
TABLE1_ROWS = {
    "AlexNet": ("alexnet", "euclidean", False),
    "+ model-space loss": ("alexnet", "model_space", False),
    "+ model-space loss, RMS units": ("alexnet", "model_space_rms", False),
    "+ breeding (= InverseFaceNet)": ("alexnet", "model_space_rms", True),
    "ResNet + model-space loss": ("resnet", "model_space_rms", False),
}
TRAIN_OPTIONS = ("norm", "standardize", "dropout", "schedule", "warmup", "landmarks", "landmark_steps",
                 "landmark_batch", "landmark_freeze", "landmark_spread")  # cfg keys that change a run
# cfg keys that change only the bred row's rounds (in its breeding key, where set): breed_keep, the fraction of
# Sec. 5 faces beside the children in each round's training set (breed(keep=); not in the paper)
BREED_OPTIONS = ("breed_keep",)
_NEW_OPTIONS = ("landmarks", "landmark_steps", "landmark_batch", "landmark_freeze", "landmark_spread")


def _options(cfg: dict) -> dict:
    """The :data:`TRAIN_OPTIONS` of ``cfg`` for a cache key; the landmark options only where they are set
    and the network has a landmark input, so runs without one keep the keys they had before the options
    existed (``landmark_spread`` only where it is not 1, the Sec. 5 prior's)."""
    return {k: cfg.get(k) for k in TRAIN_OPTIONS if k not in _NEW_OPTIONS
            or (cfg.get(k) and cfg.get("landmarks") and not (k == "landmark_spread" and float(cfg[k]) == 1.0))}


def make_regressor(model, cfg: dict, kind: str, seed: int = 0) -> torch.nn.Module:
    """The profile's AlexNet or ResNet for ``model``'s parameter count, initialised from ``seed``.

    ``cfg`` keys: ``size``, ``alexnet_width``, ``alexnet_fc``, ``resnet_width``, ``resnet_blocks``; optional
    ``norm`` (AlexNet: ``"none"`` or ``"batch"``), ``dropout`` (AlexNet, default 0.5), ``standardize``
    (outputs in units of the Sec. 5 prior, :class:`facelib.nets.Standardized`) and ``landmarks`` (True:
    the crop's 68 landmarks as a second input, :mod:`facelib.nets`; not in the paper;
    :func:`train_row` pre-trains its branch for ``landmark_steps`` steps of ``landmark_batch`` faces)."""
    from ..nets import Standardized, make_encoder
    from ..model.params import sec5_moments

    m = ParamLayout.from_model(model).size
    torch.manual_seed(seed)
    lm = 68 if cfg.get("landmarks") else 0
    if kind == "alexnet":
        net = make_encoder("alexnet", m, cfg["size"], cfg["alexnet_width"], fc=cfg["alexnet_fc"],
                           norm=cfg.get("norm", "none"), dropout=cfg.get("dropout", 0.5),
                           stride=cfg.get("alexnet_stride", 4), landmarks=lm)
    elif kind == "resnet":
        net = make_encoder("resnet", m, cfg["size"], cfg["resnet_width"], blocks=tuple(cfg["resnet_blocks"]),
                           landmarks=lm)
    else:
        raise ValueError(f"unknown regressor {kind!r}; expected 'alexnet' or 'resnet'")
    if cfg.get("standardize", False):
        net = Standardized(net, *sec5_moments(model))
    return net


def row_loss(model, loss: str):
    """``"euclidean"`` -> :func:`euclidean_loss`; ``"model_space"`` -> Eq. 6-8 with the model's sigmas;
    ``"model_space_rms"`` -> Eq. 6-8 with the sigmas measured as RMS change per vertex
    (:func:`model_space_weights` ``units="rms"``)."""
    if loss == "euclidean":
        return euclidean_loss
    if loss in ("model_space", "model_space_rms"):
        sigma = model_space_weights(model, units="model" if loss == "model_space" else "rms")
        return lambda p, theta: model_space_loss(p, theta, sigma)
    raise ValueError(f"unknown loss {loss!r}; expected 'euclidean', 'model_space' or 'model_space_rms'")


def curve_eval(model, tests: dict, n: int = 64):
    """A learning-curve probe for :func:`train`'s ``eval_fn``: the mean geometric (plain and aligned)
    and photometric error of the net on the first ``n`` faces of each test set
    (``{"wild": make_test_set(...), ...}``); returns ``net -> {"<set>_<measure>": float}``."""
    subsets = {k: {**t, **{f: t[f][:n] for f in ("x", "target", "mask", "theta", "verts", "landmarks") if f in t},
                   "n_now": 0} for k, t in tests.items()}

    def fn(net):
        row = {}
        for k, t in subsets.items():
            e = evaluate_theta(model, predict(net, t["x"], landmarks=t.get("landmarks")), t)
            for m in ("geometric_mm", "geometric_aligned_mm", "photometric_8bit"):
                row[f"{k}_{m}"] = summarize(e[m])["mean"]
        return row
    return fn


def row_iters(cfg: dict, kind: str) -> int:
    """The mini-batches of a Table 1 run of ``kind`` in the profile ``cfg``: ``cfg["iters"]``, twice that for the
    ResNet."""
    return cfg["iters"] * (2 if kind == "resnet" else 1)


def train_row(model, cfg: dict, name: str, corpus, real_x: torch.Tensor | None = None, seed: int = 0,
              device=None, progress: bool = True, eval_fn=None, curve_key=None,
              real_landmarks: torch.Tensor | None = None, net: torch.nn.Module | None = None,
              threads: int | None = None) -> tuple:
    """Train one row of Table 1 (see :data:`TABLE1_ROWS`) with the profile's budget ``cfg``.

    Baselines train ``cfg["iters"]`` mini-batches on the Sec. 5 ``corpus`` (ResNet: twice that).
    Breeding follows Sec. 7: ``iters / 5`` on the corpus, then ``cfg["breed_rounds"]`` rounds of
    Algorithm 1 on the images of R (``real_x``) sharing the remaining 4/5 of the budget.  Runs are
    cached by their full configuration (:func:`train`), so a second chapter asking for the same row
    loads the weights instead of training again; ``train_s`` is always the time of the original run.

    ``cfg`` may also set the options of :data:`TRAIN_OPTIONS` (batch norm, standardised outputs,
    dropout, the learning-rate schedule and its warm-up); they are part of the cache key.  ``eval_fn``
    (e.g. :func:`curve_eval`) records a learning curve every ``cfg["curve_every"]`` iterations;
    ``curve_key`` names the probe in the cache key.  With ``cfg["landmarks"]`` the network takes the
    crop's landmarks as a second input, and breeding needs R's (``real_landmarks (n, 68, 2)``); a run
    that is not in the cache first pre-trains the landmark branch (:func:`pretrain_landmarks`,
    ``cfg["landmark_steps"]`` steps of ``cfg["landmark_batch"]`` faces, 0 or absent: none), which counts
    as training time; ``cfg["landmark_freeze"]`` keeps the branch as pre-trained while the rest of the
    network trains (the image path then learns what the landmarks' read-out leaves); ``cfg["landmark_spread"]``
    pre-trains it on faces whose shape coefficients are that many times the prior's (``spread`` of
    :func:`pretrain_landmarks`; default 1).

    ``net``: the row's untrained regressor, made by the caller (``make_regressor(model, cfg, kind, seed)``,
    which seeds PyTorch's global generator and so must not run in two threads at once; default: made here).
    ``threads``: the CPU threads the training runs with where the caller fixes them (:func:`train_rows`
    side by side: 1), part of the cache keys, since another thread count gives other bits.

    Returns ``(net, info)``; ``info`` has ``train_s``, ``iters``, ``loss``, ``curve`` (held-out errors
    against training seconds) and, for breeding, ``history`` (:func:`breed`'s estimates per round).
    """
    kind, loss, bred = TABLE1_ROWS[name] if name in TABLE1_ROWS else (None, None, None)
    if kind is None:
        raise ValueError(f"unknown Table 1 row {name!r}; expected one of {list(TABLE1_ROWS)}")
    net = (make_regressor(model, cfg, kind, seed) if net is None else net).to(device or "cpu")
    if cfg.get("landmarks") and cfg.get("landmark_freeze"):
        for p in _branch_of(net).parameters():
            p.requires_grad_(False)
    loss_fn = row_loss(model, loss)
    from ..data.corpus import _model_key

    key = {"version": TRAIN_VERSION, "model": _model_key(model),
           "corpus": [corpus.n, corpus.seed, corpus.size, corpus.render_size, getattr(corpus, "chunk", 0)],
           "kind": kind, "loss": loss, "seed": seed, "batch": cfg["batch"], "lr": cfg["lr"],
           "net": [cfg["size"], cfg["alexnet_width"], cfg["alexnet_fc"], cfg["resnet_width"],
                   list(cfg["resnet_blocks"])],
           "options": _options(cfg), "curve": [curve_key, cfg.get("curve_every", 0)]}
    if threads is not None:
        key["threads"] = int(threads)
    iters = row_iters(cfg, kind)
    sched = dict(schedule=cfg.get("schedule", "constant"), warmup=cfg.get("warmup", 0.0))
    every = cfg.get("curve_every", 0) if eval_fn is not None else 0
    init = None
    if cfg.get("landmarks") and cfg.get("landmark_steps"):  # the branch's pre-training, for a run not in the cache
        init = functools.partial(pretrained_branch, model, steps=int(cfg["landmark_steps"]),
                                 batch=int(cfg.get("landmark_batch", 256)), seed=seed, progress=progress,
                                 threads=threads, spread=float(cfg.get("landmark_spread", 1.0)))
    if not bred:
        log = train(net, corpus, loss_fn, iters, cfg["batch"], cfg["lr"], seed=seed, device=device,
                    progress=progress, desc=name, cache_key=dict(key, iters=iters), eval_fn=eval_fn,
                    eval_every=every, init_fn=init, **sched)
        info = {"train_s": log["train_s"], "iters": iters, "loss": log["loss"], "cached": log["cached"],
                "curve": log["curve"]}
        _publish(model, cfg, name, seed, kind, net, info, dict(key, iters=iters))
        return net, info
    if real_x is None:
        raise ValueError("the breeding row needs the images of R (real_x)")
    if cfg.get("landmarks") and real_landmarks is None:
        raise ValueError("a breeding row with a landmark input needs R's landmarks (real_landmarks)")
    pre = iters // 5
    rounds = cfg["breed_rounds"]
    per_round = (iters - pre) // rounds
    keep = float(cfg.get("breed_keep", 0.0))
    bkey = dict(key, iters=pre, breed=[rounds, per_round, real_x.shape[0],
                                       hashlib.sha256(real_x.cpu().numpy().tobytes()).hexdigest()[:16]]
                + ([keep] if keep else []))  # runs without breed_keep keep their keys
    path = checkpoint_dir() / f"{_key(bkey)}.pt"
    if path.exists():
        try:
            ck = torch.load(path, map_location=device or "cpu", weights_only=False)
            net.load_state_dict(ck["net"])
            _publish(model, cfg, name, seed, kind, net, ck["info"], bkey)
            return net, dict(ck["info"], cached=True)
        except Exception:
            path.unlink(missing_ok=True)
    total = pre + rounds * per_round
    log = train(net, corpus, loss_fn, pre, cfg["batch"], cfg["lr"], seed=seed, device=device,
                progress=progress, desc=f"{name}: synthetic pre-training", cache_key=dict(key, iters=pre, total=total),
                eval_fn=eval_fn, eval_every=every, total_iters=total, init_fn=init, **sched)
    hist = breed(net, model, real_x, rounds, per_round, loss_fn, cfg["size"], cfg["batch"], cfg["lr"],
                 seed=seed, progress=progress, optimizer_state=log["optimizer"], render_size=corpus.render_size,
                 total_iters=total, start_iter=pre, eval_fn=eval_fn, eval_every=every, real_landmarks=real_landmarks,
                 keep=keep, keep_corpus=corpus if keep else None, **sched)
    t_pre = log["train_s"]
    curve = log["curve"] + [dict(r, train_s=r["train_s"] + t_pre) for r in hist["curve"]]
    info = {"train_s": log["train_s"] + hist["train_s"], "iters": total,
            "loss": log["loss"] + hist["loss"], "pretrain_iters": pre, "rounds": rounds, "per_round": per_round,
            "curve": curve, "history": {"theta_r": hist["theta_r"], "children": hist["children"]}}
    with atomic_path(path) as tmp:
        torch.save({"net": net.state_dict(), "info": info}, tmp)
    _publish(model, cfg, name, seed, kind, net, info, bkey)
    return net, dict(info, cached=False)


def _branch_of(net: torch.nn.Module) -> torch.nn.Module:
    """The :class:`facelib.nets.LandmarkBranch` of a regressor (inside a :class:`facelib.nets.Standardized`)
    or of a :class:`facelib.mofa.MoFA` (its encoder's)."""
    from ..nets import unwrap

    return unwrap(net).landmark_branch


def _publish(model, cfg: dict, name: str, seed: int, kind: str, net, info: dict, key: dict) -> None:
    """Save the trained row for :func:`facelib.networks.load_network`; a cache that cannot be written
    costs the file only (a warning), never the training run."""
    import warnings

    from ..networks import publish_inversefacenet

    try:
        publish_inversefacenet(model, cfg, name, seed, kind, net, info, _key(key))
    except OSError as e:
        warnings.warn(f"the trained network {name!r} (seed {seed}) was not saved for load_network: {e}",
                      stacklevel=3)


# ------------------------------------------------------------------------------------------- the book's tables
MEASURES = ("photometric_8bit", "geometric_mm", "geometric_aligned_mm", "iou_pct", "now_mm")
MEASURE_LABELS = {"photometric_8bit": "photometric error [8 bits]", "geometric_mm": "geometric error [mm]",
                  "geometric_aligned_mm": "geometric error, aligned [mm]", "iou_pct": "IoU [%]",
                  "now_mm": "NoW-style error [mm]"}
LOWER_IS_BETTER = {"photometric_8bit": True, "geometric_mm": True, "geometric_aligned_mm": True, "iou_pct": False,
                   "now_mm": True}


def _measures(evaluation: dict) -> tuple:
    """The :data:`MEASURES` an evaluation holds (``now_mm`` only where the test set had ``n_now``)."""
    return tuple(m for m in MEASURES if m in evaluation)


def reference_rows(model, tests: dict) -> dict:
    """The reference rows of a results table, per test set: ``"mean face"`` (:func:`mean_face_theta`:
    shape and expression 0, the rest true) and ``"true parameters (floor)"`` (the ground-truth theta
    rendered through the model: what is left is what the model cannot express) and
    ``"true parameters, mean head size"`` (the truth with shape coefficient 1, the head size that the
    crop hides, at 0: the best a network that sees everything else can score; :func:`size_share`) and
    ``"true expression, mean shape"`` (:func:`truncated_truth` with ``k = 1``: a network that got every
    expression, pose, reflectance and light coefficient right and learned nothing of the shape).
    Returns ``{row: {set: evaluate_theta(...)}}`` (cached: a second chapter on the same test sets reads them).
    """
    rows = {"mean face": lambda th: mean_face_theta(model, th),
            "true parameters (floor)": lambda th: th,
            "true parameters, mean head size": lambda th: truncated_truth(model, th, model.n_shape),
            "true expression, mean shape": lambda th: truncated_truth(model, th, 1)}
    return {name: {k: evaluate_theta(model, fn(t["theta"]), t, cache=True) for k, t in tests.items()}
            for name, fn in rows.items()}


def train_rows(model, cfg: dict, names, corpus, tests: dict, real_x=None, device=None, progress: bool = True,
               curves: bool = True, real_landmarks=None) -> dict:
    """Train every row of ``names`` (:data:`TABLE1_ROWS`) for every seed of ``cfg["seeds"]`` and
    evaluate it on each test set.  Cached runs are loaded (:func:`train_row`), and so are evaluations
    measured before (:func:`evaluate_theta`'s ``cache``).

    ``cfg["workers"]`` (default 1) on the CPU: train that many (row, seed) runs at once, one thread and
    one CPU thread each (:func:`facelib._threads.run_in_threads`), and evaluate them one by one afterwards
    with the caller's threads.  Each run draws its batches, its landmark noise and its bred children from
    its own seed, so it is trained exactly as alone with one thread, to the bit (not as with two threads:
    another order of sums); ``info["train_s"]`` is then its own time on its thread while the others ran.
    The one-thread runs are cached under their own keys (``threads``).  The first row of ``names``
    pre-trains each seed's landmark branch (:func:`pretrained_branch`, from its own initial weights) and
    the seed's other rows load it, as one by one: those runs start first, and a later run of the seed
    waits for its end; the other runs follow, the longest first.

    Returns ``{name: {seed: {"net", "info", <set>: evaluate(...)}}}``; ``info["curve"]`` holds the
    learning curve on the first ``cfg["n_curve"]`` faces of each test set when ``curves``.
    """
    workers = cfg.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"cfg['workers'] must be a positive integer; got {workers!r}")
    for name in names:
        if name not in TABLE1_ROWS:
            raise ValueError(f"unknown Table 1 row {name!r}; expected one of {list(TABLE1_ROWS)}")
    probe = curve_eval(model, tests, cfg["n_curve"]) if curves else None
    key = [cfg["n_curve"], {k: [t["kind"], t["seed"], t["size"]] for k, t in tests.items()}] if curves else None
    jobs = [(name, seed) for name in names for seed in cfg["seeds"]]
    common = dict(real_x=real_x, device=device, eval_fn=probe, curve_key=key, real_landmarks=real_landmarks)
    side = workers > 1 and len(jobs) > 1 and torch.device(device or "cpu").type == "cpu"
    if side:
        from .._threads import run_side_by_side

        # the nets are made here, one after the other: make_regressor seeds PyTorch's global generator
        nets = {job: make_regressor(model, cfg, TABLE1_ROWS[job[0]][0], job[1]) for job in jobs}
        first = [(names[0], seed) for seed in cfg["seeds"]]  # each pre-trains its seed's landmark branch
        rest = sorted(jobs[len(first):], key=lambda j: -row_iters(cfg, TABLE1_ROWS[j[0]][0]))
        branch_ready = {seed: threading.Event() for seed in cfg["seeds"]}

        def run(job):
            def call():
                if job not in first:
                    branch_ready[job[1]].wait()
                try:
                    done = train_row(model, cfg, job[0], corpus, seed=job[1], progress=False, net=nets[job],
                                     threads=1, **common)
                finally:
                    if job in first:
                        branch_ready[job[1]].set()
                return done
            return call

        trained = dict(zip(first + rest, run_side_by_side([run(job) for job in first + rest], workers,
                                                          f"Table 1 runs, {workers} at a time", progress)))
    out = {}
    for name in names:
        out[name] = {}
        for seed in cfg["seeds"]:
            net, info = (trained[(name, seed)] if side else
                         train_row(model, cfg, name, corpus, seed=seed, progress=progress, **common))
            out[name][seed] = {"net": net, "info": info,
                               **{k: evaluate(model, net, t, cache=True) for k, t in tests.items()}}
            print(f"{name}, seed {seed}: {info['iters']} iterations, {info['train_s']:.0f} s"
                  + (" on one thread, side by side" if side else "")
                  + (" (loaded from the cache)" if info["cached"] else ""))
    return out


def seed_means(runs: dict, test_key: str, measure: str) -> np.ndarray:
    """Per-seed test-set means of one row's ``measure``: ``(n_seeds,)``."""
    return np.array([summarize(r[test_key][measure])["mean"] for r in runs.values()])


def _row_summary(runs: dict, test_key: str) -> dict:
    """One row over its training seeds: ``train_iters``, mean ``train_s`` and ``test_ms``, ``n_seeds``
    and each measure's ``{mean, std}`` over the per-seed test-set means."""
    row = {"train_iters": next(iter(runs.values()))["info"]["iters"],
           "train_s": float(np.mean([r["info"]["train_s"] for r in runs.values()])),
           "test_ms": float(np.mean([r[test_key]["test_ms"] for r in runs.values()])), "n_seeds": len(runs)}
    for m in _measures(next(iter(runs.values()))[test_key]):
        v = seed_means(runs, test_key, m)
        row[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    return row


def table1_markdown(results: dict, refs: dict, names, test_key: str) -> str:
    """Table 1 in the paper's layout for one test set: each row's mean over its training seeds of the
    test-set mean, +- the standard deviation over seeds; then the reference rows (mean over the test
    images +- their standard deviation).  Columns: training iterations, training time [s], test time
    [ms/image], photometric error [8 bits], geometric error [mm] without and with similarity
    alignment, IoU [%]."""
    short = {"photometric_8bit": "photo. [8 bit]", "geometric_mm": "geom. [mm]",
             "geometric_aligned_mm": "geom. aligned [mm]", "iou_pct": "IoU [%]", "now_mm": "NoW [mm]"}
    ms = _measures(next(iter(results[names[0]].values()))[test_key]) if names else _measures(
        next(iter(refs.values()))[test_key])
    head = ("| approach | seeds | iters | train [s] | test [ms] | " + " | ".join(short[m] for m in ms) + " |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in ms) + " |"]
    for n in names:
        r = _row_summary(results[n], test_key)
        cells = [f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}" for m in ms]
        lines.append(f"| {n} | {r['n_seeds']} | {r['train_iters']} | {r['train_s']:.0f} | {r['test_ms']:.2f} | "
                     + " | ".join(cells) + " |")
    for n, r in refs.items():
        cells = [f"{summarize(r[test_key][m])['mean']:.2f} ± {summarize(r[test_key][m])['std']:.2f}" for m in ms]
        lines.append(f"| *{n}* | - | - | - | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_rows(results: dict, a: str, b: str, test_key: str) -> dict:
    """Row ``b`` against row ``a`` on the same test images, seed by seed (the same training seed for
    both): ``{measure: {"per_seed": [paired_test(...)...], "better_seeds": k, "seeds": n,
    "significant_better": k_sig, "significant_worse": k_worse}}`` where "better" follows the measure's
    direction and "significant" is p < 0.05."""
    out = {}
    for m in _measures(next(iter(results[a].values()))[test_key]):
        tests, better, sig_b, sig_w = [], 0, 0, 0
        for seed in results[a]:
            if seed not in results[b]:
                continue
            t = paired_test(results[a][seed][test_key][m], results[b][seed][test_key][m])
            t["seed"] = seed
            tests.append(t)
            good = (t["mean_diff"] < 0) == LOWER_IS_BETTER[m] and t["mean_diff"] != 0
            better += good
            sig_b += good and t["p_value"] < 0.05
            sig_w += (not good) and t["p_value"] < 0.05
        out[m] = {"per_seed": tests, "better_seeds": int(better), "seeds": len(tests),
                  "significant_better": int(sig_b), "significant_worse": int(sig_w)}
    return out


def _verdict_kind(c: dict) -> str | None:
    """``"better"`` (every seed), ``"worse"`` (no seed) or None (no verdict) for one measure of :func:`compare_rows`."""
    return "better" if c["better_seeds"] == c["seeds"] else "worse" if c["better_seeds"] == 0 else None


def verdict_word(c: dict) -> str:
    """The verdict of one measure of :func:`compare_rows`: ``"better for every seed"``, ``"worse for every
    seed"`` or ``"better for k of n seeds only (no verdict)"``."""
    kind = _verdict_kind(c)
    return (f"{kind} for every seed" if kind else
            f"better for {c['better_seeds']} of {c['seeds']} seeds only (no verdict)")


def verdict(comparison: dict, a: str, b: str, test_key: str) -> str:
    """One sentence per measure, from :func:`compare_rows`: the verdict holds only if every seed agrees."""
    parts = []
    for m, c in comparison.items():
        diffs = [t["mean_diff"] for t in c["per_seed"]]
        word = verdict_word(c)
        parts.append(f"{MEASURE_LABELS[m]} {word} (b - a per seed: " + ", ".join(f"{d:+.2f}" for d in diffs)
                     + f"; significant better/worse in {c['significant_better']}/{c['significant_worse']} seeds)")
    return f"**{test_key}, {b} vs {a}**: " + "; ".join(parts) + "."


def rerun_verdicts(paired: dict, paired_other: dict) -> list:
    """The verdicts of two runs of the same comparisons side by side (does a verdict survive a rerun?).

    ``paired``, ``paired_other``: ``{test_key: {"b vs a": {measure: compare_rows entry}}}``, the
    ``paired_tests`` of two ``results/inversefacenet.json`` (e.g. the same seeds trained with another
    thread count, which changes the order of floating-point sums and so every step after the first).
    Returns ``[{"set", "comparison", "measure", "verdict", "verdict_other", "same"}]`` for the
    comparisons and measures both runs have; ``same``: both runs reach the same verdict (better for
    every seed, worse for every seed, or none)."""
    rows = []
    for key, comps in paired.items():
        for name, measures in comps.items():
            other = paired_other.get(key, {}).get(name, {})
            for m, c in measures.items():
                if m not in other:
                    continue
                a, b = verdict_word(c), verdict_word(other[m])
                rows.append({"set": key, "comparison": name, "measure": m, "verdict": a, "verdict_other": b,
                             "same": _verdict_kind(c) == _verdict_kind(other[m])})
    return rows


def rows_json(results: dict, refs: dict, names, test_key: str) -> dict:
    """The ``results/*.json`` form of a table: ``rows`` (the paper's layout; ``{mean, std}`` over the
    training seeds of the per-seed test means), ``seeds`` (each seed's row, ``{mean, std}`` over the
    images), ``mean_face`` and ``floor`` (``{mean, std}`` over the images)."""
    rows, per_seed = [], {}
    for n in names:
        runs = results[n]
        rows.append({"name": n, **_row_summary(runs, test_key)})
        per_seed[n] = [{"seed": int(s), "train_s": r["info"]["train_s"],
                        **{m: summarize(r[test_key][m]) for m in _measures(r[test_key])}} for s, r in runs.items()]
    ref = {k: {m: summarize(v[test_key][m]) for m in _measures(v[test_key])} for k, v in refs.items()}
    return {"rows": rows, "seeds": per_seed, "mean_face": ref["mean face"], "floor": ref["true parameters (floor)"],
            "floor_mean_head_size": ref.get("true parameters, mean head size"),
            "true_expression_mean_shape": ref.get("true expression, mean shape")}


def target_ratios(results: dict, refs: dict, names, test_key: str, measure: str = "geometric_mm") -> dict:
    """Each row's ``measure`` (mean over seeds) divided by the mean face's, and the same ratio for the
    reference rows: ``{row: ratio}`` (issue 15's acceptance measure: below 1 is better than no face)."""
    mf = summarize(refs["mean face"][test_key][measure])["mean"]
    out = {n: float(seed_means(results[n], test_key, measure).mean() / mf) for n in names}
    out.update({n: summarize(r[test_key][measure])["mean"] / mf for n, r in refs.items() if n != "mean face"})
    return out


LANDMARK_VARIANTS = {"off": "the crop (the paper)", "pretrained": "crop + landmarks, branch on the Sec. 5 prior",
                     "pretrained, frozen": "crop + landmarks, branch frozen after its pre-training",
                     "pretrained, prior x2": "crop + landmarks, branch on a prior twice as wide (this book)"}
_VARIANT_COLUMNS = (("wild", "geometric_mm"), ("wild", "geometric_aligned_mm"), ("wild", "now_mm"),
                    ("synthetic", "geometric_mm"))


def landmark_variants_markdown(record: dict, readout: dict | None = None) -> str:
    """Chapter 3's table of ``benchmarks/ifn_landmarks.py``'s ``record``: each Table 1 row in each variant
    of :data:`LANDMARK_VARIANTS` it holds, its geometric errors as a fraction of the mean face's (wild:
    plain, aligned, NoW-style; synthetic: plain; mean ± std over the seeds) and its mean training seconds;
    then the landmark read-out alone (``benchmarks/landmark_regressor.py``'s ``readout``, Table 1's wild
    faces) and the reference rows "true parameters, mean head size" and "true expression, mean shape"."""
    from ..book import markdown_table, pm

    runs = {}
    for r in record["runs"]:
        runs.setdefault((r["row"], r["landmarks"]), []).append(r)
    rows = [[row, label, len(rs)] + [pm([r[k][m + "_ratio"] for r in rs]) for k, m in _VARIANT_COLUMNS]
            + [f"{np.mean([r['train_s'] for r in rs]):.0f}"]
            for row in TABLE1_ROWS for v, label in LANDMARK_VARIANTS.items() for rs in [runs.get((row, v))] if rs]
    if readout:
        ro = [s["table1_wild"] for s in readout["seeds"].values()]
        rows.append(["*an MLP on the 68 landmarks alone, no pixels*", "landmarks", len(ro),
                     pm([s["geometric_mm_ratio"] for s in ro]), pm([s["geometric_aligned_mm_ratio"] for s in ro]),
                     "-", "-", "-"])
    ref = record["references"]
    for name in ("true parameters, mean head size", "true expression, mean shape"):
        rows.append([f"*{name}*", "-", "-"] + [f"{ref[name][k][m] / ref['mean face'][k][m]:.2f}"
                                               for k, m in _VARIANT_COLUMNS] + ["-"])
    return markdown_table(["row", "input", "seeds", "wild, plain", "wild, aligned", "wild, NoW", "synthetic, plain",
                           "training [s]"], rows)


def budget_markdown(record: dict, current: dict | None = None) -> str:
    """Chapter 3's table of ``benchmarks/ifn_budget.py``'s ``record``: per variant and row (in the order of the
    record's ``summary``) the settings it trained with (corpus faces, mini-batches x batch, learning rate, the
    landmark branch's pre-training steps x faces, and for a bred row the faces of R and the share of Sec. 5 faces
    kept in each round, ``breed_keep``), its geometric error on the
    synthetic and the wild test faces as a fraction of the mean face's (mean ± std over the seeds) and its mean
    training seconds per run; then the mean face's row (its errors in mm).  Variants whose settings are
    ``current``'s (a profile, e.g. ``cfg``) are set in bold."""
    from ..book import markdown_table, pm

    runs = {}
    for r in record["runs"]:
        runs.setdefault((r["variant"], r["row"]), []).append(r)
    rows = []
    for s in record["summary"]:
        rs, st = runs.get((s["variant"], s["row"])), s["settings"]
        if not rs:
            continue
        mine = current is not None and all(current.get(k) == v for k, v in st.items()) and (
            not TABLE1_ROWS[s["row"]][2] or float(current.get("breed_keep") or 0) == float(st.get("breed_keep") or 0))
        rows.append([f"**{s['variant']}**" if mine else s["variant"], s["row"], len(rs),
                     f"{st['n_train']:,}", f"{row_iters(st, TABLE1_ROWS[s['row']][0]):,} x {st['batch']}",
                     f"{st['lr']:g}",
                     f"{st['landmark_steps']:,} x {st['landmark_batch']}",
                     (f"{st['n_real']:,}" + (f" + {st['breed_keep']:.0%} Sec. 5" if st.get("breed_keep") else ""))
                     if TABLE1_ROWS[s["row"]][2] else "-",
                     pm([r["synthetic"]["over_mean_face"] for r in rs], ".3f"),
                     pm([r["wild"]["over_mean_face"] for r in rs], ".3f"),
                     f"{np.mean([r['train_s'] for r in rs]):.0f}"])
    mf = record["mean_face"]
    rows.append(["*mean face*", "-", "-", "-", "-", "-", "-", "-", f"1 ({mf['synthetic']['geometric_mm']:.2f} mm)",
                 f"1 ({mf['wild']['geometric_mm']:.2f} mm)", "-"])
    return markdown_table(["variant", "row", "seeds", "corpus faces", "mini-batches x batch", "learning rate",
                           "branch pre-training, steps x faces", "faces of R", "synthetic, x mean face",
                           "wild, x mean face", "training per run [s]"], rows)


def curves_json(results: dict, names) -> dict:
    """Learning curves ``{name: {seed: [{"iter", "train_s", "<set>_<measure>"...}]}}``."""
    return {n: {int(s): r["info"].get("curve", []) for s, r in results[n].items()} for n in names}


def size_share(model, component: int = 0) -> float:
    """How much of shape component ``component`` is a uniform scale of the face: the fraction of its
    squared displacement over the ``face`` vertices that ``s (mean - centroid) + t`` explains (least
    squares).  Near 1 means the component is head size, which the Sec. 6.1 crop (landmark box resized
    to N x N) hides from the network."""
    face = model.masks["face"].cpu()
    M = model.mean_shape.detach().cpu().double().reshape(-1, 3)[face]
    b = (model.shape_basis[component].detach().cpu().double().reshape(-1, 3)[face]
         * float(model.sigma_s[component]))
    A = torch.cat([(M - M.mean(0)).reshape(-1, 1), torch.eye(3, dtype=torch.float64).repeat(M.shape[0], 1)], 1)
    x = torch.linalg.lstsq(A, b.reshape(-1, 1)).solution
    r = b.reshape(-1, 1) - A @ x
    return float(1 - r.square().sum() / b.square().sum())
