"""Evaluation: reconstruction methods side by side on the same held-out faces (the fitting chapter).

Every method gets the same input, a frame with one face and its 68 detected landmarks (the wild
test faces of :func:`facelib.data.wild.wild_batch`, whose landmarks carry detector-like noise), and gives a
mesh in model space and a picture of itself drawn into the frame.  Two scores, one per face:

* geometric (:func:`now_mm`): the NoW benchmark's error (:func:`facelib.eval.metrics.now_error`: landmark
  similarity alignment, rigid ICP, then the mean distance from each ground-truth point of the face
  to the reconstruction's surface), so a decimated mesh (MoFA) and the full model compare alike.
  The ground truth is the wild face's mesh with its out-of-model detail.
* photometric (:func:`frame_photometric`): the RMSE in 8-bit units between the frame and the
  reconstruction drawn into it, over the pixels inside the detected landmarks' outline that the
  reconstruction covers (InverseFaceNet's Sec. 8 measure, in the frame rather than a crop).

:func:`fit_curve` scores a fit's trace (:class:`facelib.fit.FitResult` ``trace``) point by point, so
its error can be drawn against fitting seconds; :func:`network_point` scores a trained network
(:func:`facelib.networks.load_network`) with its inference time.
"""

from __future__ import annotations

import time

import torch

__all__ = ["now_mm", "frame_photometric", "fit_frames", "fit_curve", "network_point", "reference_points", "verdict",
           "paired_frames", "paired_scores", "pairs_markdown"]


def now_mm(model, verts: torch.Tensor, faces: torch.Tensor, landmark_ids: torch.Tensor,
           verts_gt: torch.Tensor) -> torch.Tensor:
    """NoW-style error ``(B,)`` mm of reconstructions ``verts (B, V, 3)`` on ``faces (F, 3)`` with their 68
    landmark vertices ``landmark_ids (68,)``, against ground-truth meshes ``verts_gt (B, V_m, 3)`` of
    ``model`` (points: the ``face`` mask's vertices; landmarks: ``model.landmarks``)."""
    from .metrics import now_error

    gt = verts_gt.detach().cpu().double()
    face = model.masks["face"].cpu()
    e = now_error(verts.detach().cpu().double(), faces.cpu(), verts.detach().cpu().double()[:, landmark_ids.cpu()],
                  gt[:, face], gt[:, model.landmarks.cpu()])
    return e.distance.mean(1)


def frame_photometric(image: torch.Tensor, rendering: torch.Tensor, mask: torch.Tensor,
                      landmarks: torch.Tensor) -> torch.Tensor:
    """Photometric RMSE ``(B,)`` (8-bit) of ``rendering (B, 3, H, W)`` against the frames ``image`` over
    ``mask (B, H, W)`` (the pixels the reconstruction covers) within the outline of the detected
    ``landmarks (B, 68, 2)`` (:func:`facelib.data.corpus.landmark_mask`)."""
    from ..data.corpus import landmark_mask
    from .metrics import photometric_rmse

    H, W = image.shape[-2:]
    region = landmark_mask(landmarks.float(), H, W) & mask.bool()
    return photometric_rmse(rendering.float().clamp(0, 1), image.float(), region)


@torch.no_grad()
def _fit_scores(model, theta_fit: torch.Tensor, frames: dict) -> dict:
    from ..fit import fit_layout, render_fit

    p = fit_layout(model).unpack(theta_fit)
    verts = model.geometry(p["shape"], p["expression"])
    H, W = frames["image"].shape[-2:]
    r = render_fit(model, theta_fit, (H, W))
    return {"now_mm": now_mm(model, verts, model.triangles, model.landmarks, frames["verts_model"]),
            "photometric_8bit": frame_photometric(frames["image"], r.image, r.mask, frames["landmarks"])}


def fit_frames(model, frames: dict, theta0: torch.Tensor | None = None, iters: tuple = (200, 80),
               trace_every: int = 20, seed: int = 0, progress: bool = True):
    """:func:`facelib.fit.fit` of the faces in ``frames`` (``image (B, 3, H, W)``, ``landmarks (B, 68, 2)``,
    e.g. :func:`facelib.data.wild.wild_batch`) as one batch, from the mean face or ``theta0`` (a network's
    Eq. 1 estimate), with a trace every ``trace_every`` iterations.  Returns the :class:`FitResult`."""
    from ..fit import fit

    return fit(model, frames["image"].float(), frames["landmarks"].float(), theta0=theta0, iters=tuple(iters),
               seed=seed, progress=progress, trace_every=trace_every)


def fit_curve(model, frames: dict, result, start_seconds: float = 0.0) -> list:
    """Score every point of a fit's trace (:func:`fit_frames`): one dict per point with ``iteration``,
    ``seconds_per_face`` (``start_seconds`` per face, e.g. a network's inference, plus the fit's time so
    far divided by the batch size: the faces are fitted as one batch) and the per-face ``now_mm`` and
    ``photometric_8bit`` ``(B,)``."""
    B = frames["image"].shape[0]
    out = []
    for it, sec, th in result.trace:
        out.append({"iteration": int(it), "seconds_per_face": start_seconds + sec / B,
                    **_fit_scores(model, th, frames)})
    return out


@torch.no_grad()
def network_point(trained, frames: dict, gt_model=None) -> dict:
    """Score a trained network (:class:`facelib.networks.TrainedNetwork`) on ``frames``: ``estimate``
    (its :meth:`~facelib.networks.TrainedNetwork.estimate`), ``seconds_per_face`` (the network's part,
    :meth:`~facelib.networks.TrainedNetwork.predict`: crop and forward pass on a batch of all faces, best
    of 3 after a warm-up), ``now_mm`` and ``photometric_8bit`` ``(B,)`` (its crop rendering
    resampled into the frame, :func:`facelib.reconstruct.paste_crop`).  ``gt_model``: the model the
    frames' faces were drawn from, when not the network's (its face mask and landmarks are the ground
    truth's points; e.g. :mod:`facelib.model.foreign`)."""
    from ..reconstruct import paste_crop

    image, lm = frames["image"].float(), frames["landmarks"].float()
    B, (H, W) = image.shape[0], image.shape[-2:]
    trained.predict(image[:1], lm[:1])  # warm-up (thread pools, allocations)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        trained.predict(image, lm)
        times.append(time.perf_counter() - t0)
    seconds = min(times) / B
    est = trained.estimate(image, lm)
    rgb = paste_crop(est["rendering"], est["box"], (H, W))
    mask = paste_crop(est["mask"][:, None].float(), est["box"], (H, W))[:, 0] > 0.5
    ids = trained.net.decoder.landmarks if trained.method == "mofa" else trained.model.landmarks
    return {"estimate": est, "seconds_per_face": seconds,
            "now_mm": now_mm(gt_model or trained.model, est["verts"], est["faces"], ids, frames["verts_model"]),
            "photometric_8bit": frame_photometric(image, rgb, mask, frames["landmarks"])}


@torch.no_grad()
def reference_points(model, frames: dict, gt_model=None) -> dict:
    """The reference rows, NoW-style ``(B,)`` mm: ``"mean face"`` (the model's mean geometry) and
    ``"true parameters (floor)"`` (the true shape and expression without the wild faces' detail: the
    best the model can do).

    ``gt_model``: the model the frames' faces were drawn from, when not ``model`` (on the same mesh, e.g.
    :mod:`facelib.model.foreign`); then ``"true parameters (floor)"`` is that model's own, and ``"best fit of
    the model"`` (:func:`facelib.model.facemodel.geometry_fit` of ``model`` to the true shape and expression)
    is the best that ``model``'s coefficients can do."""
    from ..model.facemodel import geometry_fit
    from ..model.params import ParamLayout

    src = gt_model or model
    if src.n_vertices != model.n_vertices:
        raise ValueError(f"gt_model has {src.n_vertices} vertices and model {model.n_vertices}; the reference rows "
                         "need the same mesh")
    B = frames["image"].shape[0]
    p = ParamLayout.from_model(src).unpack(frames["theta"].to(src.mean_shape))
    mean = model.mean_shape.expand(B, -1, -1)
    true = src.geometry(p["shape"], p["expression"])
    gt = frames["verts_model"]
    out = {"mean face": now_mm(src, mean, model.triangles, model.landmarks, gt),
           "true parameters (floor)": now_mm(src, true, src.triangles, src.landmarks, gt)}
    if gt_model is not None:
        out["best fit of the model"] = now_mm(src, geometry_fit(model, true), model.triangles, model.landmarks, gt)
    return out


@torch.no_grad()
def paired_frames(model, other, n: int, seed: int, size: int = 128) -> dict:
    """The same ``n`` wild draws (:func:`facelib.data.wild.wild_batch`, ``seed``, ``size`` px frames) made with
    ``model`` (the networks' own, e.g. the open model) and with ``other`` (a model on the same mesh they never
    saw, e.g. :mod:`facelib.model.foreign`): ``{"open": pair, "foreign": pair}``, each ``pair`` ``{"frames",
    "gt_model" (None for ``model``), "mean_face_mm"}`` (the mean NoW-style error of ``model``'s mean face on
    them, :func:`reference_points`), for :func:`paired_scores`."""
    from ..data.wild import wild_batch

    out = {}
    for kind, m, gm in (("open", model, None), ("foreign", other, other)):
        frames = wild_batch(m, n, seed=seed, size=size)
        mf = float(reference_points(model, frames, gt_model=gm)["mean face"].mean())
        out[kind] = {"frames": frames, "gt_model": gm, "mean_face_mm": mf}
    return out


PAIR_SEED = 950_000  # the benchmarks' held-out pairs (``--foreign N``): a seed no chapter draws


def foreign_pairs(model, n: int, seed: int = PAIR_SEED, size: int = 128) -> dict | None:
    """The benchmarks' ``--foreign N`` faces: :func:`paired_frames` of ``model`` and of the foreign model
    (:mod:`facelib.model.foreign`), ``n`` draws of ``seed``; ``None`` when ``n`` is 0 (nothing to score)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    if n == 0:
        return None
    from .. import load_model

    return paired_frames(model, load_model("foreign"), n, seed=seed, size=size)


def paired_scores(trained, pairs: dict) -> dict:
    """A trained network (:class:`facelib.networks.TrainedNetwork`) on :func:`paired_frames`' faces:
    ``{"open": {...}, "foreign": {...}}``, each ``{"faces", "now_mm", "over_mean_face"}`` (means over the faces;
    :func:`network_point`'s NoW-style error and its ratio to the mean face's on the same faces)."""
    out = {}
    for kind, p in pairs.items():
        now = float(network_point(trained, p["frames"], gt_model=p["gt_model"])["now_mm"].mean())
        out[kind] = {"faces": int(p["frames"]["image"].shape[0]), "now_mm": round(now, 4),
                     "over_mean_face": round(now / p["mean_face_mm"], 4)}
    return out


def pair_references(model, pairs: dict) -> dict:
    """The reference rows of :func:`paired_frames`' faces over the open mean face's error on them:
    ``{"mean face", "true parameters (floor)", "best fit of the model": {"open": ratio or None, "foreign": ratio
    or None}}`` (:func:`reference_points`; the best fit only on the other model's faces: on ``model``'s own it is
    the true parameters), for :func:`pairs_markdown`'s ``references``."""
    out = {}
    for kind, p in pairs.items():
        refs = reference_points(model, p["frames"], gt_model=p["gt_model"])
        for name in ("mean face", "true parameters (floor)", "best fit of the model"):
            v = refs.get(name)
            out.setdefault(name, {})[kind] = None if v is None else round(float(v.mean()) / p["mean_face_mm"], 4)
    return out


def pairs_markdown(groups: dict, baseline: str | None = None, references: dict | None = None) -> str:
    """A table of training runs scored by :func:`paired_scores` (each run a dict with ``"seed"``,
    ``"open_pairs"`` and ``"foreign_pairs"``): one row per ``groups`` entry ``{label: [run, ...]}``, the
    seeds and the mean ± std over them of the error over the mean face on the open and on the foreign faces;
    with ``baseline`` (a label of ``groups``), then a line per other group saying for how many seeds (paired
    by seed) it is lower than the baseline on each kind of face.  ``references``: rows printed first, in
    italics, ``{label: {"open": ratio or None, "foreign": ratio or None}}`` (:func:`pair_references`; None: "-")."""
    from ..book import markdown_table, pm

    rows = [[f"*{label}*", "-"] + ["-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("open", "foreign")]
            for label, r in (references or {}).items()]
    for label, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        rows.append([label, ", ".join(str(r["seed"]) for r in runs)]
                    + [pm([r[f"{k}_pairs"]["over_mean_face"] for r in runs], ".3f") for k in ("open", "foreign")])
    text = markdown_table(["run", "seeds", "open faces / mean face", "foreign faces / mean face"], rows)
    if baseline is not None:
        base = {r["seed"]: r for r in groups[baseline]}
        for label, runs in groups.items():
            paired = [(base[r["seed"]], r) for r in runs if r["seed"] in base]
            if label == baseline or not paired:
                continue
            counts = [sum(b[f"{k}_pairs"]["over_mean_face"] < a[f"{k}_pairs"]["over_mean_face"] for a, b in paired)
                      for k in ("open", "foreign")]
            text += (f"\n\nPaired by seed, {label} against {baseline}: lower for {counts[0]} of {len(paired)} seeds "
                     f"on the open faces, {counts[1]} of {len(paired)} on the foreign ones.")
    return text


def verdict(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, unit: str = "mm", alpha: float = 0.05) -> str:
    """One sentence comparing per-face errors ``a`` and ``b`` (same faces, lower is better) with a paired
    Wilcoxon signed-rank test (:func:`facelib.inversefacenet.paired_test`): which is lower, by how much
    on average, and the p-value; "no measurable difference" when ``p >= alpha``."""
    from ..inversefacenet import paired_test

    t = paired_test(torch.as_tensor(a).double(), torch.as_tensor(b).double())
    d = t["mean_diff"]  # mean(b - a)
    if t["p_value"] >= alpha:
        return (f"{name_a} and {name_b}: no measurable difference on these {t['n']} faces (mean difference "
                f"{abs(d):.2f} {unit}, paired Wilcoxon p = {t['p_value']:.2g})")
    lo, hi = (name_a, name_b) if d > 0 else (name_b, name_a)
    return (f"{lo} is lower than {hi} by {abs(d):.2f} {unit} on average over {t['n']} faces "
            f"(paired Wilcoxon p = {t['p_value']:.2g})")
