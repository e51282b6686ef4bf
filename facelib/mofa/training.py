"""MoFA's training: the loss of Eq. 6-15 for a batch, the two-stage resumable training loop, and the
book's runs (the corpora, stage 1 per seed, stage 2 per seed and variant, side by side on the CPU)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..model.facemodel import FaceModel
from ..render.points import sample_image
from .selfsup import (STAGE1, STAGE2, LossWeights, chromaticity_weights, constancy_partners, e_glo, e_photo,
                      e_ref, e_smo, e_sparse, e_sta, e_std, e_total, slide_contour)
from .network import Decoded, MoFA, build_mofa, init_translation, pretrain_branch
from .data import checkpoint_dir, _load, _save, make_corpus, shift_scale


# ---------------------------------------------------------------------------------- losses
class _LossCache:
    """Per-network constants of the loss: Eq. 14's partners (seeded)."""

    def __init__(self, net: MoFA, seed: int):
        self.idx, self.partners = constancy_partners(net.decoder.skin, 6, seed)


def loss_terms(net: MoFA, out: Decoded, image: torch.Tensor, landmarks: torch.Tensor, weights: LossWeights,
               stage: int, cache: _LossCache | None = None, landmark_scale: float | None = None) -> dict:
    """The terms of Eq. 6-15 for one batch, each ``(B,)`` (weights inside the terms as in the paper).

    Stage 1: photometric term on the base level only (supplement Sec. 1), landmarks, statistics.
    Stage 2: Eq. 9 on both levels plus the corrective regularisers whose weights are non-zero.
    ``landmark_scale`` converts landmark pixels to the unit of Eq. 10 (default 1: pixels of the input).
    """
    terms = {}
    levels = [(out.base.u, out.base.c, out.base.visible)]
    if stage == 2 and net.n_corrective:
        levels.append((out.final.u, out.final.c, out.final.visible))
    terms["photo"] = e_photo(image, levels)  # Eq. 9
    k = slide_contour(out.base.v_cam, landmarks, net.focal, torch.tensor(net.principal_point),
                      net.decoder.landmarks, net.decoder.landmark_sliding, net.decoder.contour_candidates)
    u_k = torch.gather(out.base.u, 1, k[..., None].expand(-1, -1, 2))
    scale = 1.0 if landmark_scale is None else landmark_scale
    terms["sparse"] = e_sparse(landmarks, u_k, scale=scale)  # Eq. 10
    p = out.parts
    terms["std"] = e_std(p["shape"], p["expression"], p["reflectance"], weights.rstd)  # Eq. 11
    lv = out.levels
    if stage == 2 and net.n_corrective:
        edges = net.decoder.edges
        if weights.smo:
            terms["smo"] = e_smo(lv.F_g, edges, weights.smo)  # Eq. 12
        if weights.ref:
            w = chromaticity_weights(sample_image(image, out.final.u.detach()), edges)
            terms["ref"] = e_ref(lv.r_f, edges, w, weights.ref)  # Eq. 13
        if weights.glo:
            cache = cache or _LossCache(net, 0)
            terms["glo"] = e_glo(lv.r_f, cache.idx, cache.partners, weights.glo)  # Eq. 14
        if weights.sta:
            terms["sta"] = e_sta(lv.F_g, weights.sta)  # Eq. 15
    return terms


# ---------------------------------------------------------------------------------- training
def _fingerprint(net: nn.Module) -> float:
    """A number that changes with any weight of ``net`` (the sum of its floating-point state)."""
    with torch.no_grad():
        return round(float(sum(v.double().sum() for v in net.state_dict().values() if v.is_floating_point())), 6)


def train(net: MoFA, corpus: dict, steps: int, stage: int, lr: float = 1e-3, batch: int = 8, seed: int = 0,
          weights: LossWeights | None = None, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 100, progress: bool = True, desc: str | None = None,
          landmark_scale: float | None = None, threads: int | None = None, eval_fn=None,
          eval_every: int = 0, augment: dict | None = None) -> list:
    """Self-supervised training of ``net`` on ``corpus`` (:func:`make_corpus`; images and landmarks).

    Stage 1 (MoFA) uses :data:`facelib.mofa.selfsup.STAGE1` weights, stage 2 :data:`STAGE2` (or ``weights``)
    and the learning rates of :meth:`MoFA.param_groups`.  Batches are drawn with a generator seeded by
    ``(seed, step)``, so a run resumed from ``checkpoint`` (written atomically every
    ``checkpoint_every`` steps and at the end) continues exactly; a finished checkpoint just loads.
    A checkpoint of the same run that holds more than ``steps`` steps is never overwritten: ValueError
    (ask for at least its steps to load it, or pass another path to train ``steps`` from the start).
    A checkpoint of another configuration is trained anew and replaced; a truncated or corrupt one
    (an interrupted copy, a full disk) is reported with a warning and trained anew.
    Adam replaces the paper's AdaDelta.  ``threads``: PyTorch CPU threads for the run (set here because
    Numba's OpenMP kernels, e.g. the corpus renderer, reset the count PyTorch shares with them).
    ``eval_fn(net) -> dict`` (e.g. held-out errors), called every ``eval_every`` steps and after the
    last, fills the learning curve: that step's record gains ``"eval"``.  Every record carries
    ``train_s``, the training seconds so far (evaluation excluded, kept across resumes).
    ``augment``: ``{"shift": f, "scale": (lo, hi)}`` moves each training face by up to ``f N`` pixels
    and zooms it by ``U(lo, hi)`` (:func:`shift_scale`, drawn from the step's seed), so a small corpus
    shows the encoder more positions than it holds; ``None``: the corpus as it is.
    Returns the history: one dict of mean loss terms per step.
    """
    from tqdm.auto import tqdm

    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2; got {stage!r}")
    weights = weights or (STAGE1 if stage == 1 else STAGE2)
    if threads:
        torch.set_num_threads(int(threads))
    dev = net.code_offset.device
    opt = torch.optim.Adam(net.param_groups(stage, lr))
    start, history = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    meta = {"config": net.config, "model": net.model_key, "stage": stage, "lr": lr, "batch": batch, "seed": seed,
            "landmark_scale": landmark_scale, "augment": augment,
            "corpus": [int(corpus["image"].shape[0]), round(float(corpus["landmarks"].double().sum()), 3)],
            "weights": weights.__dict__}
    if float(getattr(net, "landmark_spread", 1.0)) != 1.0:  # a branch pre-trained on a wider prior: another run
        meta["landmark_spread"] = float(net.landmark_spread)
    if stage == 2:  # stage 2 starts from a trained stage 1: a checkpoint fine-tuned from another one is not resumed
        meta["start"] = _fingerprint(net)
    fixed = [k for k, p in net.named_parameters() if not p.requires_grad]
    if fixed:  # parameters kept fixed (a frozen landmark branch): another run than one that trains them
        meta["fixed"] = fixed
    state = _load(ckpt, "checkpoint", map_location=dev, weights_only=False) if ckpt is not None else None
    if state is not None and state.get("meta") == meta:  # same run: resume (or extend) it
        if state["step"] > steps:
            raise ValueError(f"checkpoint {ckpt} holds {state['step']} steps of this run, more than the "
                             f"steps={steps} asked for; ask for steps >= {state['step']} to load it, or pass "
                             "another checkpoint path (or delete it) to train from the start")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
    if start == 0 and stage == 2:
        net.start_stage2()
    cache = _LossCache(net, seed)
    n = corpus["image"].shape[0]
    net.train()
    bar = tqdm(range(start, steps), desc=desc or f"stage {stage}", disable=not progress, initial=start, total=steps)
    elapsed = history[-1].get("train_s", 0.0) if history else 0.0
    curve = eval_fn is not None and eval_every > 0
    rec0 = None
    if curve and start == 0:
        rec0 = eval_fn(net.eval())
        net.train()
    t_last = time.perf_counter()
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (batch,), generator=g)
        image = corpus["image"][idx].to(dev)
        lm = corpus["landmarks"][idx].to(dev)
        if augment:
            N = image.shape[-1]
            sh = (torch.rand(batch, 2, generator=g) * 2 - 1) * augment.get("shift", 0.0) * N
            lo, hi = augment.get("scale", (1.0, 1.0))
            sc = lo + (hi - lo) * torch.rand(batch, generator=g)
            image, lm = shift_scale(image, lm, sh.to(dev), sc.to(dev))
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed * 1_000_003 + step)  # dropout masks: the same when resumed
            out = net(image, final=stage == 2, landmarks=lm)  # a landmark-input encoder reads them too
            terms = loss_terms(net, out, image, lm, weights, stage, cache, landmark_scale)
            loss = e_total(terms, weights).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        rec = {k: float(v.detach().mean()) for k, v in terms.items()}
        rec["total"] = float(loss.detach())
        now = time.perf_counter()
        elapsed += now - t_last
        rec["train_s"] = round(elapsed, 3)
        if rec0 is not None and step == 0:
            rec["eval_start"] = rec0
        done = step + 1
        if curve and (done % eval_every == 0 or done == steps):
            rec["eval"] = eval_fn(net.eval())
            net.train()
        history.append(rec)
        t_last = time.perf_counter()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{rec['total']:.3g}", photo=f"{rec['photo']:.3g}", lm=f"{rec['sparse']:.3g}")
        if ckpt is not None and (done % checkpoint_every == 0 or done == steps):
            _save(ckpt, {"meta": meta, "net": net.state_dict(), "opt": opt.state_dict(), "step": done,
                         "history": history})
    net.eval()
    return history


def learning_curve(history: list) -> list:
    """The points of a :func:`train` history that carry a held-out evaluation (``eval_fn``):
    ``[{"step", "train_s", **eval}, ...]``, starting with the untrained network at 0 s when recorded."""
    pts = []
    for i, rec in enumerate(history):
        if "eval_start" in rec:
            pts.append({"step": 0, "train_s": 0.0, **rec["eval_start"]})
        if "eval" in rec:
            pts.append({"step": i + 1, "train_s": rec["train_s"], **rec["eval"]})
    return pts


# ---------------------------------------------------------------------------------- the book's runs
def book_corpora(full_model: FaceModel, cfg: dict, seed: int, keep: torch.Tensor, progress: bool = True) -> tuple:
    """The training and test wild corpora of the book's chapters for the sizes in ``cfg`` (keys
    ``size``, ``train_images``, ``test_images``), cached under :func:`checkpoint_dir` so that chapter 6 reuses
    chapter 5's.  The test faces come from seeds disjoint from the training faces."""
    d = checkpoint_dir()
    tag = f"{cfg['size']}px_{keep.numel()}v_s{seed}"
    train = make_corpus(full_model, cfg["train_images"], cfg["size"], seed * 100_000, keep, progress=progress,
                        cache=d / f"train_{cfg['train_images']}_{tag}.pt")
    test = make_corpus(full_model, cfg["test_images"], cfg["size"], seed * 100_000 + 50_000, keep,
                       progress=progress, cache=d / f"test_{cfg['test_images']}_{tag}.pt")
    return train, test


def stage1_config(full_model: FaceModel, cfg: dict, seed: int) -> dict:
    """The :class:`MoFA` config (:func:`build_mofa`) of the book's stage-1 network for the chapter sizes
    ``cfg`` and ``seed``: the decimated decoder (``cfg["n_vertices"]``), the encoder (``cfg["encoder"]``,
    ``cfg["width"]``, ``cfg["encoder_kwargs"]``), no correctives; with ``cfg["landmarks"]`` the landmark
    input, and with ``cfg["landmark_geometry"]`` the geometry taken from it."""
    config = dict(size=cfg["size"], encoder=cfg["encoder"], width=cfg["width"], n_corrective=0,
                  corrective="linear", hidden=None, seed=seed, model=full_model.name, n_vertices=cfg["n_vertices"],
                  encoder_kwargs=dict(cfg.get("encoder_kwargs", {})))
    if cfg.get("landmarks"):
        config["landmarks"] = 68
        if cfg.get("landmark_geometry"):
            config["landmark_geometry"] = True
    return config


def stage1_start(full_model: FaceModel, cfg: dict, corpus: dict, seed: int, device) -> tuple:
    """The book's stage-1 network as built (:func:`stage1_config`, initialised with ``seed``), on ``device``,
    with the translation start from ``corpus``'s landmarks (:func:`init_translation`): ``(net, keep)``.
    Building draws the weights from PyTorch's global generator (seeded, :class:`MoFA`), so networks trained
    side by side are built first, one after the other (:func:`stage1_networks`)."""
    net, keep = build_mofa(full_model, stage1_config(full_model, cfg, seed))
    net = net.to(device)
    init_translation(net, corpus["landmarks"])
    return net, keep


def initial_network(full_model: FaceModel, cfg: dict, corpus: dict, seed: int, device, progress: bool = True,
                    start: tuple | None = None) -> tuple:
    """The book's stage-1 network before its self-supervised training: :func:`stage1_start` (or ``start``,
    its result made beforehand) and, with a landmark input, the branch pre-trained on landmarks alone
    (:func:`facelib.mofa.pretrain_branch`, ``cfg["landmark_steps"]`` steps of ``cfg["landmark_batch"]``
    faces; cached; ``cfg["landmark_spread"]``: its faces' shape coefficients that many times the prior's, default 1),
    kept fixed with ``cfg["landmark_freeze"]``.
    Returns ``(net, keep)``; ``net.pretrain_s`` holds the pre-training's seconds (0 without), ``net.landmark_spread``
    the spread its branch was pre-trained with (:func:`train` keys a checkpoint by it where it is not 1)."""
    net, keep = start if start is not None else stage1_start(full_model, cfg, corpus, seed, device)
    net.pretrain_s = 0.0
    if cfg.get("landmarks"):
        net.landmark_spread = float(cfg.get("landmark_spread", 1.0))
        net.pretrain_s = pretrain_branch(net, full_model, int(cfg["landmark_steps"]), int(cfg["landmark_batch"]),
                                         seed, progress=progress, spread=net.landmark_spread)
        if cfg.get("landmark_freeze"):
            net.landmark_branch.requires_grad_(False)
    return net, keep


def stage1_network(full_model: FaceModel, cfg: dict, corpus: dict, seed: int, device, profile: str,
                   progress: bool = True, eval_fn=None, eval_every: int = 0, name: str | None = None,
                   start: tuple | None = None) -> tuple:
    """Stage 1 (MoFA, the base level) as the book trains it, resumable from
    ``checkpoint_dir() / <profile>_stage1_s<seed>.pt``: :func:`initial_network` (initialised with ``seed``;
    ``start``: the network as :func:`stage1_start` built it beforehand),
    then ``cfg["steps1"]`` steps at ``cfg["lr"]`` with batch ``cfg["batch"]`` and the
    :data:`facelib.mofa.selfsup.STAGE1` weights; ``eval_fn``, ``eval_every``: the learning curve
    (:func:`train`).  ``name``: the checkpoint's stem for a variant (default ``<profile>_stage1_s<seed>``,
    the one :func:`facelib.load_network` reads).  Returns ``(net, keep, history)``; ``net.pretrain_s``
    holds the landmark branch's pre-training seconds (0 without)."""
    net, keep = initial_network(full_model, cfg, corpus, seed, device, progress=progress, start=start)
    hist = train(net, corpus, cfg["steps1"], 1, lr=cfg["lr"], batch=cfg["batch"], seed=seed,
                 checkpoint=checkpoint_dir() / f"{name or f'{profile}_stage1_s{seed}'}.pt", progress=progress,
                 desc=f"stage 1 (MoFA, seed {seed})", threads=cfg.get("threads"), eval_fn=eval_fn, eval_every=eval_every)
    return net, keep, hist


def stage2_network(full_model: FaceModel, stage1: MoFA, cfg: dict, corpus: dict, seed: int, profile: str,
                   n_corrective: int, corrective: str = "linear", weights: LossWeights = STAGE2,
                   name: str = "final", progress: bool = True, eval_fn=None, eval_every: int = 0,
                   net: MoFA | None = None) -> tuple:
    """Stage 2 from a trained stage-1 network: a network with ``n_corrective`` correctives of kind
    ``corrective`` starts from ``stage1`` (:func:`stage2_start`; ``net``: that network made beforehand) and
    fine-tunes for ``cfg["steps2"]``
    steps with ``weights`` (default :data:`facelib.mofa.selfsup.STAGE2`), checkpointed as
    ``checkpoint_dir() / <profile>_<name>_s<seed>.pt`` (the book's final level: ``name="final"``, which
    :func:`facelib.load_network` ``("mofa-final")`` reads); ``eval_fn``, ``eval_every``: the learning
    curve (:func:`train`).  Returns ``(net, history)``."""
    if net is None:
        net = stage2_start(full_model, stage1, n_corrective, corrective)
    hist = train(net, corpus, cfg["steps2"], 2, lr=cfg["lr"], batch=cfg["batch"], seed=seed + 1, weights=weights,
                 checkpoint=checkpoint_dir() / f"{profile}_{name}_s{seed}.pt", progress=progress,
                 desc=f"stage 2 ({name}, seed {seed})",
                 threads=cfg.get("threads"), eval_fn=eval_fn, eval_every=eval_every)
    return net, hist


def stage2_start(full_model: FaceModel, stage1: MoFA, n_corrective: int, corrective: str = "linear") -> MoFA:
    """A network with ``n_corrective`` correctives of kind ``corrective`` that starts from the trained
    ``stage1`` (:meth:`MoFA.load_stage1`), on its device, not yet trained.  Building draws the new weights
    from PyTorch's global generator (seeded), so networks trained side by side are made first, one after the
    other (:func:`stage2_networks`)."""
    config = {**stage1.config, "n_corrective": n_corrective, "corrective": corrective}
    net, _ = build_mofa(full_model, config)
    net = net.to(stage1.code_offset.device)
    net.load_stage1(stage1.state_dict())
    return net


def _workers(cfg: dict, device, runs: int) -> int:
    """How many of ``runs`` trainings go at once: ``cfg["workers"]`` (default 1) on the CPU, else 1."""
    workers = cfg.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"cfg['workers'] must be a positive integer; got {workers!r}")
    if workers == 1 or runs < 2 or torch.device(device).type != "cpu":
        return 1
    if cfg.get("threads") != 1:
        raise ValueError(f"cfg['workers'] = {workers} trains each run on one CPU thread, as one by one with "
                         f"cfg['threads'] = 1; got threads = {cfg.get('threads')!r} (set it to 1, or workers to 1)")
    return workers


def _side_by_side(nets: list, calls: list, workers: int, desc: str, progress: bool) -> list:
    """The zero-argument trainings ``calls`` of ``nets`` (made beforehand), ``workers`` at a time, one
    thread and one CPU thread each, with one progress bar of the finished runs
    (:func:`facelib._threads.run_side_by_side`); returns their results in order.  A training step seeds PyTorch's global generator inside
    ``fork_rng`` for its dropout masks, which two threads would share: networks with dropout are refused
    (ValueError).  The generator is left as it was (the threads' restores interleave)."""
    from .._threads import run_side_by_side

    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for net in nets for m in net.modules()):
        raise ValueError("cfg['workers'] > 1 needs networks without dropout (e.g. the resnet encoder): its masks "
                         "come from PyTorch's global generator, which trainings side by side would share; "
                         "set workers to 1")
    state = torch.get_rng_state()
    try:
        return run_side_by_side(calls, workers, desc, progress)
    finally:
        torch.set_rng_state(state)


def stage1_networks(full_model: FaceModel, cfg: dict, corpus: dict, seeds, device, profile: str,
                    progress: bool = True, eval_fn=None, eval_every: int = 0) -> dict:
    """:func:`stage1_network` for each of ``seeds``: ``{seed: (net, keep, history)}``.

    ``cfg["workers"]`` (default 1) on the CPU: that many trainings at once, one thread and one CPU thread
    each (``cfg["threads"]`` must then be 1, as in the ``ci`` and ``cpu`` profiles), each computing exactly
    what it computes alone (every draw takes the run's own generator; the networks are built first, one
    after the other, :func:`stage1_start`), so the weights, histories and checkpoints are those of one by
    one; a history's ``train_s`` is then the run's own time on its thread while the others ran."""
    seeds = list(seeds)
    workers = _workers(cfg, device, len(seeds))
    if workers == 1:
        return {s: stage1_network(full_model, cfg, corpus, s, device, profile, progress=progress, eval_fn=eval_fn,
                                  eval_every=eval_every) for s in seeds}
    starts = {s: stage1_start(full_model, cfg, corpus, s, device) for s in seeds}
    calls = [functools.partial(stage1_network, full_model, cfg, corpus, s, device, profile, progress=False,
                               eval_fn=eval_fn, eval_every=eval_every, start=starts[s]) for s in seeds]
    desc = f"stage 1, {len(seeds)} seeds, {workers} at a time"
    return dict(zip(seeds, _side_by_side([n for n, _ in starts.values()], calls, workers, desc, progress)))


STAGE2_RUN = ("stage1", "seed", "n_corrective", "corrective", "weights", "name")  # a stage2_networks run's keys


def stage2_networks(full_model: FaceModel, cfg: dict, corpus: dict, profile: str, runs: dict,
                    progress: bool = True, eval_fn=None, eval_every: int = 0) -> dict:
    """:func:`stage2_network` for each of ``runs``, ``{key: dict(stage1=, seed=, n_corrective=,
    corrective="linear", weights=STAGE2, name="final")}`` (the arguments of :func:`stage2_network`):
    ``{key: (net, history)}``.  ``cfg["workers"]``: as :func:`stage1_networks` (the networks made first,
    :func:`stage2_start`; the weights, histories and checkpoints those of one by one), in the order of
    ``runs``."""
    for key, r in runs.items():
        bad = sorted(set(r) - set(STAGE2_RUN)) + [k for k in ("stage1", "seed", "n_corrective") if k not in r]
        if bad:
            raise ValueError(f"stage-2 run {key!r}: unknown or missing keys {bad}; expected {list(STAGE2_RUN)}")
    on_cpu = all(r["stage1"].code_offset.device.type == "cpu" for r in runs.values())
    workers = _workers(cfg, "cpu" if on_cpu else "cuda", len(runs))  # side by side only on the CPU

    def call(r, net=None, show=progress):
        return functools.partial(stage2_network, full_model, r["stage1"], cfg, corpus, r["seed"], profile,
                                 r["n_corrective"], r.get("corrective", "linear"), r.get("weights", STAGE2),
                                 name=r.get("name", "final"), progress=show, eval_fn=eval_fn,
                                 eval_every=eval_every, net=net)

    if workers == 1:
        return {key: call(r)() for key, r in runs.items()}
    nets = {key: stage2_start(full_model, r["stage1"], r["n_corrective"], r.get("corrective", "linear"))
            for key, r in runs.items()}
    desc = f"stage 2, {len(runs)} runs, {workers} at a time"
    done = _side_by_side(list(nets.values()), [call(r, nets[key], False) for key, r in runs.items()], workers, desc,
                         progress)
    return dict(zip(runs, done))


def settings_steps(name: str, profile: str) -> int | None:
    """The steps the book trains network ``name`` for in ``profile``: ``"mofa"`` stage 1
    (``steps1`` of chapter 5), ``"mofa-final"`` stage 2 (``steps2`` of chapter 6); None for another name
    or profile.  :func:`facelib.networks.load_network` refuses a checkpoint that holds fewer."""
    from ..book import SETTINGS

    chapter, key = {"mofa": ("05_mofa", "steps1"), "mofa-final": ("06_correctives", "steps2")}.get(name, (None, None))
    return SETTINGS.get(chapter, {}).get(profile, {}).get(key) if chapter else None


