"""Training: MoFA's model-based face autoencoder and the multi-level fine-tuning of Tewari et al. 2018.

The network (Fig. 1 of Tewari et al. 2018): a trainable convolutional **encoder**
(:func:`facelib.nets.make_encoder`) regresses the semantic code of :func:`facelib.mofa.multilevel.code_layout`
(pose, shape, expression, reflectance, illumination, and for the final level its own illumination and
the corrective coefficients delta_g, delta_r); the **decoder** is expert-designed and fixed: the
multi-level face model (:class:`facelib.mofa.multilevel.MultiLevelModel`, whose corrective bases are the
only trainable part) and the point-based image formation of Sec. 5 (:func:`facelib.render.points.render_points`)
for the base and the final level.  Training is self-supervised (:mod:`facelib.mofa.selfsup`): the input
image and its sparse landmarks are the only supervision.

Two stages (supplement Sec. 1): stage 1 trains the base level (MoFA, Tewari et al. 2017); stage 2
fine-tunes everything with the correctives, with the base network at a tenth of stage 1's learning
rate and the geometry / reflectance correctives at five / ten times that (the paper's 0.01 ->
0.001, 0.005, 0.01).  :func:`train` shows a progress bar, writes checkpoints and resumes from them.

Differences from the paper, all forced by a 2-core CPU and stated in the book: a narrow encoder
trained from scratch, 64-128 pixel inputs, a decimated template (:func:`facelib.mofa.multilevel.decimate`)
in the small profiles, Adam instead of AdaDelta, thousands instead of 390k iterations, and the
synthetic wild corpus (:mod:`facelib.data.wild`) instead of 144k photos.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .._atomic import atomic_path
from ..model.facemodel import FaceModel
from ..eval.metrics import photometric_rgb_distance, similarity_align
from .multilevel import MultiLevelModel, code_layout, decimate
from ..nets import init_last_layer, make_encoder
from ..model.params import rot_xyz
from ..render.points import PointRendering, render_points, sample_image
from ..render.raster import interpolate, rasterize
from ..render import face_camera
from .selfsup import (STAGE1, STAGE2, LossWeights, chromaticity_weights, constancy_partners,
                      e_glo, e_photo, e_ref, e_smo, e_sparse, e_sta, e_std, e_total, slide_contour)

__all__ = [
    "STAGE2_LR",
    "CodeHeads",
    "Decoded",
    "MoFA",
    "build_mofa",
    "make_corpus",
    "landmark_detector",
    "photo_corpus",
    "init_translation",
    "shift_scale",
    "loss_terms",
    "train",
    "book_corpora",
    "stage1_network",
    "stage2_network",
    "settings_steps",
    "render_level",
    "panels",
    "mark_points",
    "evaluate",
    "learning_curve",
    "mean_errors",
    "curve_eval",
    "mean_face_error",
    "geometric_error",
    "now_error_mm",
    "mean_face_now",
    "fit_codes",
    "encoder_hz",
    "checkpoint_dir",
]

# Stage-2 learning rates relative to stage 1's (supplement Sec. 1: 0.01 -> 0.001 / 0.005 / 0.01).
STAGE2_LR = {"base": 0.1, "geometry": 0.5, "reflectance": 1.0}

# The decoder reads the regressed numbers as ``offset + scale * output`` (per code entry); the offsets
# put the initial code at the mean face, frontal, lit by a grey ambient light.
CODE_SCALE = {"rotation": 0.5, "translation": 50.0, "shape": 1.0, "expression": 1.0, "reflectance": 1.0,
              "illumination": 0.5, "illumination_final": 0.5, "corrective_geometry": 1.0,
              "corrective_reflectance": 1.0}
AMBIENT = 0.8  # initial gamma_1 of both levels
PHOTO_MARGIN = 0.35  # a photo's crop: the landmark box plus this fraction on every side (the paper's tight box)


def checkpoint_dir() -> Path:
    """``$FACELIB_CACHE/mofa`` (``~/.cache/facelib/mofa``): MoFA's checkpoints and cached corpora, under
    the one cache root of :func:`facelib.model.open_model.cache_dir` with the open model, the corpus
    shards and the saved networks."""
    from ..model.open_model import cache_dir

    return cache_dir() / "mofa"


# ---------------------------------------------------------------------------------- network
class CodeHeads(nn.Module):
    """The encoder's last fully-connected layer, stored as one block per part of the code so that the
    parts can train at their own learning rates: ``base`` (pose, alpha, beta, gamma_b),
    ``illumination_final``, ``corrective_geometry``, ``corrective_reflectance``.  ``(B, F) -> (B, m)``."""

    def __init__(self, in_features: int, sizes: dict):
        super().__init__()
        self.heads = nn.ModuleDict({k: init_last_layer(nn.Linear(in_features, n)) for k, n in sizes.items()})

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(h) for head in self.heads.values()], dim=-1)


class Decoded(NamedTuple):
    """What the decoder makes of a code: ``parts`` (name -> ``(B, n)``), the multi-level model's
    ``levels`` (:class:`facelib.mofa.multilevel.Levels`) and the point renderings ``base`` and ``final``
    (:class:`facelib.render.points.PointRendering`; ``final is base`` without correctives)."""

    parts: dict
    levels: object
    base: PointRendering
    final: PointRendering


class MoFA(nn.Module):
    """Encoder -> semantic code -> expert decoder for both levels (MoFA; Tewari et al. 2018 Fig. 1).

    Args:
        model: the face model the decoder uses (full or :func:`facelib.mofa.multilevel.decimate`-d).
        size: input side N in pixels; the decoder's camera is :func:`facelib.render.face_camera` ``(N)``.
        encoder, width: :func:`facelib.nets.make_encoder` kind (``"alexnet"`` | ``"resnet"``) and width.
        n_corrective: C (0: MoFA's base level only); corrective: the corrective space kind
            (:data:`facelib.mofa.multilevel.CORRECTIVE_KINDS`); hidden: its hidden width.
        seed: initialisation seed (encoder and corrective bases).
    ``forward(image (B, 3, N, N) in [0, 1]) -> Decoded``.
    """

    def __init__(self, model: FaceModel, size: int, encoder: str = "alexnet", width: float = 0.25,
                 n_corrective: int = 0, corrective: str = "linear", hidden: int | None = None, seed: int = 0,
                 encoder_kwargs: dict | None = None):
        super().__init__()
        self.config = dict(size=size, encoder=encoder, width=width, n_corrective=n_corrective,
                           corrective=corrective, hidden=hidden, seed=seed, model=model.name,
                           n_vertices=model.n_vertices, encoder_kwargs=dict(encoder_kwargs or {}))
        self.size = int(size)
        from ..data.corpus import _model_key

        self.model_key = _model_key(model)  # the face model's contents: part of a checkpoint's identity (train)
        self.layout = code_layout(model, n_corrective)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.decoder = MultiLevelModel(model, n_corrective, corrective, hidden, seed=seed)
            sizes = {"base": self.layout.slices["illumination"].stop}
            if n_corrective:
                sizes.update(illumination_final=27, corrective_geometry=n_corrective,
                             corrective_reflectance=n_corrective)
            self.encoder = make_encoder(encoder, self.layout.size, self.size, width, **(encoder_kwargs or {}))
            if not isinstance(getattr(self.encoder, "last", None), nn.Linear):
                raise ValueError(f"encoder {encoder!r} has no last fully-connected layer 'last' to split")
            self.encoder.last = CodeHeads(self.encoder.last.in_features, sizes)
        scale = torch.cat([torch.full((n,), CODE_SCALE[k]) for k, n in self.layout.entries])
        offset = torch.zeros(self.layout.size)
        for k in ("illumination", "illumination_final"):
            if k in self.layout:
                offset[self.layout[k].start:self.layout[k].start + 3] = AMBIENT  # gamma_1, RGB
        self.register_buffer("code_scale", scale)
        self.register_buffer("code_offset", offset)
        cam = face_camera(self.size)
        self.register_buffer("cam_R", cam.R.clone())
        self.register_buffer("cam_t", cam.t.clone())
        self.focal = cam.focal
        self.principal_point = cam.principal_point

    @property
    def n_corrective(self) -> int:
        return self.decoder.n_corrective

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, N, N)`` in [0, 1] -> code ``(B, m)`` (:func:`facelib.mofa.multilevel.code_layout`)."""
        if image.ndim != 4 or image.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"image has shape {tuple(image.shape)}; expected (B, 3, {self.size}, {self.size})")
        return self.code_offset + self.code_scale * self.encoder(image - 0.5)  # input in [-0.5, 0.5]

    def pose(self, parts: dict) -> tuple:
        """``R (B, 3, 3)``, ``t (B, 3)`` of Phi: the camera's frame times the regressed head pose."""
        R = self.cam_R @ rot_xyz(parts["rotation"])
        return R, self.cam_t + parts["translation"]

    def decode(self, code: torch.Tensor, final: bool = True) -> Decoded:
        """The fixed decoder: Eq. 1-4 and the Sec. 5 point rendering of both levels (``final=False``:
        the base level only)."""
        parts = self.layout.unpack(code)
        lv = self.decoder(parts)
        R, t = self.pose(parts)
        tri = self.decoder.triangles
        base = render_points(lv.v_b, lv.r_b, tri, R, t, parts["illumination"], self.focal, self.size)
        fin = base
        if final and self.n_corrective:
            fin = render_points(lv.v_f, lv.r_f, tri, R, t, parts["illumination_final"], self.focal, self.size)
        return Decoded(parts, lv, base, fin)

    def forward(self, image: torch.Tensor, final: bool = True) -> Decoded:
        return self.decode(self.encode(image), final)

    def start_stage2(self) -> None:
        """Stage-2 initialisation: the final level's illumination head starts as a copy of the base
        level's, so the final level equals the base level until the correctives move."""
        if not self.n_corrective:
            return
        h = self.encoder.last.heads
        sl = self.layout["illumination"]
        with torch.no_grad():
            h["illumination_final"].weight.copy_(h["base"].weight[sl])
            h["illumination_final"].bias.copy_(h["base"].bias[sl])

    def load_stage1(self, state: dict) -> None:
        """Initialise from a stage-1 (base level only) network's ``state_dict``: the encoder, the base
        part of the code head and of the code offsets; the corrective parts keep their initialisation."""
        own = self.state_dict()
        n = self.layout.slices["illumination"].stop
        with torch.no_grad():
            for k, v in state.items():
                if k not in own:
                    continue
                if k in ("code_offset", "code_scale"):
                    own[k][:n] = v[:n]
                elif own[k].shape == v.shape:
                    own[k].copy_(v)
                else:
                    raise ValueError(f"stage-1 state {k!r} has shape {tuple(v.shape)}; this network has "
                                     f"{tuple(own[k].shape)} (a different encoder or face model?)")

    def param_groups(self, stage: int, lr: float) -> list:
        """Optimizer groups: stage 1 everything at ``lr`` (the corrective parts are unused); stage 2 the
        base network at ``lr * 0.1``, delta_g's head and Theta_g at ``lr * 0.5``, delta_r's head and
        Theta_r at ``lr`` (:data:`STAGE2_LR`)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2; got {stage!r}")
        geo, ref = [], []
        if self.n_corrective:
            h = self.encoder.last.heads
            geo = list(h["corrective_geometry"].parameters()) + list(self.decoder.F_g.parameters())
            ref = list(h["corrective_reflectance"].parameters()) + list(self.decoder.F_r.parameters())
        special = {id(p) for p in geo + ref}
        base = [p for p in self.parameters() if id(p) not in special]
        if stage == 1:
            return [{"params": base, "lr": lr, "name": "base"}]
        return [{"params": base, "lr": lr * STAGE2_LR["base"], "name": "base"},
                {"params": geo, "lr": lr * STAGE2_LR["geometry"], "name": "geometry"},
                {"params": ref, "lr": lr * STAGE2_LR["reflectance"], "name": "reflectance"}]


def build_mofa(full_model: FaceModel, config: dict) -> tuple[MoFA, torch.Tensor]:
    """A :class:`MoFA` from a checkpoint's ``config`` (decimating ``full_model`` to
    ``config["n_vertices"]`` when that is smaller); returns ``(net, keep)`` with ``keep`` the full-model
    indices of the decoder's vertices."""
    model, keep = decimate(full_model, int(config["n_vertices"]))
    kw = {k: config[k] for k in ("encoder", "width", "n_corrective", "corrective", "hidden", "seed")}
    kw["encoder_kwargs"] = config.get("encoder_kwargs")
    return MoFA(model, int(config["size"]), **kw), keep


# ---------------------------------------------------------------------------------- data
def _corpus_key(model: FaceModel, n: int, size: int, seed: int, keep: torch.Tensor | None) -> list:
    """What a corpus cache depends on: its size, seed, kept vertices and the face model's contents
    (:func:`facelib.data.corpus._model_key`), so a cache of another model is never reused."""
    from ..data.corpus import _model_key

    return [n, size, seed, None if keep is None else int(keep.numel()), _model_key(model)]


def make_corpus(model: FaceModel, n: int, size: int, seed: int, keep: torch.Tensor | None = None,
                chunk: int = 32, progress: bool = True, cache: str | os.PathLike | None = None) -> dict:
    """``n`` wild faces (:func:`facelib.data.wild.wild_batch`) at ``size`` pixels, drawn in chunks with seeds
    ``seed, seed + 1, ...``: image ``(n, 3, N, N)``, mask, landmarks ``(n, 68, 2)`` (noisy, the only
    supervision), landmarks_gt, and the ground truth for evaluation only: verts_model ``(n, K, 3)`` (model
    space, mm, with the out-of-model detail, restricted to ``keep``), albedo ``(n, K, 3)`` (with the
    painted detail) and theta.  ``cache``: a ``.pt`` file read when present and
    written otherwise (a truncated or unreadable cache file is rendered again and replaced)."""
    from tqdm.auto import tqdm

    from ..data.wild import wild_batch

    if cache is not None:
        data = _load(Path(cache), "corpus cache", map_location="cpu", weights_only=True)
        if data is not None and data.get("_key") == _corpus_key(model, n, size, seed, keep):
            return {k: v for k, v in data.items() if k != "_key"}
    parts = []
    for i in tqdm(range((n + chunk - 1) // chunk), desc=f"wild corpus ({n} faces, {size}px)", disable=not progress):
        b = min(chunk, n - i * chunk)
        d = wild_batch(model, b, seed=seed + i, size=size, device="cpu")
        k = slice(None) if keep is None else keep
        parts.append({"image": d["image"].float(), "mask": d["mask"], "landmarks": d["landmarks"].float(),
                      "landmarks_gt": d["landmarks_gt"].float(), "verts_model": d["verts_model"][:, k].float(),
                      "albedo": d["albedo"][:, k].float(), "theta": d["theta"].float()})
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if cache is not None:
        _save(Path(cache), {**data, "_key": _corpus_key(model, n, size, seed, keep)})
    return data


def landmark_detector():
    """The optional detector for real photos (:func:`facelib.data.photos.detect_landmarks`: dlib's HOG face
    detector and its 68-point shape predictor, iBUG order as our landmarks, whose weights ship inside the
    ``face_recognition_models`` package of the ``photos`` extra).  Returns ``detect(rgb (H, W, 3) uint8)
    -> (68, 2)`` pixel positions (pixel centres at +0.5) of the largest face, or ``None`` when no face is
    found.  Raises ImportError with the install hint when the packages are missing."""
    from ..data.photos import NoFaceError, detect_landmarks, landmark_detector as load

    load()  # the ImportError with the install line now, not at the first photo

    def detect(rgb):
        try:
            return detect_landmarks(rgb).points
        except NoFaceError:
            return None

    return detect


def photo_corpus(folder: str | os.PathLike, size: int, margin: float = PHOTO_MARGIN, detect=None,
                 progress: bool = True) -> dict:
    """A training corpus from a folder of real photos (``*.jpg``, ``*.jpeg``, ``*.png``): each photo's
    68 landmarks are detected (:func:`landmark_detector`), the face is cropped to a square around them
    (``margin`` of the landmark box added on every side, as the paper's tight face box) and resized to
    ``size``.  Returns ``{"image": (n, 3, N, N), "landmarks": (n, 68, 2), "files": [...]}``; photos
    without a detected face are skipped."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    detect = detect or landmark_detector()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images, marks, used = [], [], []
    for f in tqdm(files, desc="detecting landmarks", disable=not progress):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        lm = detect(rgb)
        if lm is None:
            continue
        lo, hi = lm.min(0).values, lm.max(0).values
        side = max(int(round(float((hi - lo).max()) * (1 + 2 * margin))), 8)
        c = (lo + hi) / 2
        x0, y0 = int(round(float(c[0]) - side / 2)), int(round(float(c[1]) - side / 2))
        box = Image.fromarray(rgb).crop((x0, y0, x0 + side, y0 + side))  # black outside the photo
        crop = box.resize((size, size), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 255.0)
        marks.append((lm - torch.tensor([x0, y0])) * (size / side))
        used.append(str(f))
    if not images:
        raise ValueError(f"no face found in the {len(files)} photos of {folder}")
    return {"image": torch.stack(images), "landmarks": torch.stack(marks), "files": used}


@torch.no_grad()
def init_translation(net: MoFA, landmarks: torch.Tensor) -> torch.Tensor:
    """Start the regressed translation where the training faces are: place the mean face (frontal) so
    that its projected landmarks match the mean centre and size of the detected landmarks
    ``(n, 68, 2)`` (the only supervision; no ground truth).  Sets the translation entries of
    ``net.code_offset`` and returns them ``(3,)`` mm."""
    dev = net.code_offset.device
    z = net.code_offset[None].clone()
    sl = net.layout["translation"]
    lm = landmarks.to(dev)
    target_spread = lm.std(1).norm(dim=-1).mean()  # mean size of the landmark cloud, pixels
    target_centre = lm.mean(1).mean(0)
    for _ in range(4):  # fixed point: the depth from the size (size ~ 1 / depth), x and y from the centre
        u = net.decode(z, final=False).base.u[:, net.decoder.landmarks][0]
        depth = -(net.cam_t[2] + z[0, sl.start + 2])
        new_depth = depth * u.std(0).norm() / target_spread
        shift = target_centre - u.mean(0)
        z[0, sl.start] += shift[0] * depth / net.focal
        z[0, sl.start + 1] -= shift[1] * depth / net.focal  # image y points down
        z[0, sl.start + 2] = -new_depth - net.cam_t[2]
    net.code_offset[net.layout["translation"]] = z[0, net.layout["translation"]]
    return net.code_offset[net.layout["translation"]].clone()


def shift_scale(image: torch.Tensor, landmarks: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> tuple:
    """Move and zoom the faces of a batch, image and landmarks together (training augmentation: the
    loss is self-supervised, so a moved image with its moved landmarks is a new, consistent example).

    ``image (B, 3, N, N)``, ``landmarks (B, L, 2)`` pixels (centres at +0.5), ``shift (B, 2)`` pixels,
    ``scale (B,)``: ``u' = scale (u - N/2) + N/2 + shift``; the image is resampled bilinearly, the
    border pixels extended.  Returns ``(image', landmarks')``."""
    import torch.nn.functional as F

    B, _, H, W = image.shape
    if H != W or shift.shape != (B, 2) or scale.shape != (B,):
        raise ValueError(f"image {tuple(image.shape)} must be square and shift {tuple(shift.shape)}, scale "
                         f"{tuple(scale.shape)} must be (B, 2), (B,) for B = {B}")
    theta = image.new_zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -2 * shift / (W * scale[:, None])
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c = W / 2
    return out, scale[:, None, None] * (landmarks - c) + c + shift[:, None]


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
def _load(path: Path, what: str, **kwargs) -> dict | None:
    """``torch.load(path, **kwargs)``, or None when there is no such file or it is truncated or corrupt
    (then with a warning that names it: the caller rebuilds it and the next save replaces it)."""
    import warnings

    if not path.exists():
        return None
    try:
        obj = torch.load(path, **kwargs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 (a damaged file raises RuntimeError, EOFError, OSError, pickle errors)
        obj, why = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        why = "" if isinstance(obj, dict) else f"holds a {type(obj).__name__}, not a dict"
    if why:
        warnings.warn(f"{path}: unreadable {what} (truncated or corrupt?), rebuilding it: {why}", stacklevel=3)
        return None
    return obj


def _save(path: Path, obj: dict) -> None:
    """``torch.save`` to ``path`` atomically, under a temporary name of its own (safe under concurrent
    writers: :func:`facelib._atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    if stage == 2:  # stage 2 starts from a trained stage 1: a checkpoint fine-tuned from another one is not resumed
        meta["start"] = _fingerprint(net)
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
            out = net(image, final=stage == 2)
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


def stage1_network(full_model: FaceModel, cfg: dict, corpus: dict, seed: int, device, profile: str,
                   progress: bool = True, eval_fn=None, eval_every: int = 0) -> tuple:
    """Stage 1 (MoFA, the base level) as the book trains it, resumable from
    ``checkpoint_dir() / <profile>_stage1_s<seed>.pt``: the decimated decoder (``cfg["n_vertices"]``), the encoder
    (``cfg["encoder"]``, ``cfg["width"]``, initialised with ``seed``), the translation start from the
    landmarks, then ``cfg["steps1"]`` steps at ``cfg["lr"]`` with batch ``cfg["batch"]`` and the
    :data:`facelib.mofa.selfsup.STAGE1` weights; ``eval_fn``, ``eval_every``: the learning curve
    (:func:`train`).  Returns ``(net, keep, history)``."""
    config = dict(size=cfg["size"], encoder=cfg["encoder"], width=cfg["width"], n_corrective=0,
                  corrective="linear", hidden=None, seed=seed, model=full_model.name, n_vertices=cfg["n_vertices"],
                  encoder_kwargs=dict(cfg.get("encoder_kwargs", {})))
    net, keep = build_mofa(full_model, config)
    net = net.to(device)
    init_translation(net, corpus["landmarks"])
    hist = train(net, corpus, cfg["steps1"], 1, lr=cfg["lr"], batch=cfg["batch"], seed=seed,
                 checkpoint=checkpoint_dir() / f"{profile}_stage1_s{seed}.pt", progress=progress,
                 desc=f"stage 1 (MoFA, seed {seed})", threads=cfg.get("threads"), eval_fn=eval_fn, eval_every=eval_every)
    return net, keep, hist


def stage2_network(full_model: FaceModel, stage1: MoFA, cfg: dict, corpus: dict, seed: int, profile: str,
                   n_corrective: int, corrective: str = "linear", weights: LossWeights = STAGE2,
                   name: str = "final", progress: bool = True, eval_fn=None, eval_every: int = 0) -> tuple:
    """Stage 2 from a trained stage-1 network: a network with ``n_corrective`` correctives of kind
    ``corrective`` starts from ``stage1`` (:meth:`MoFA.load_stage1`) and fine-tunes for ``cfg["steps2"]``
    steps with ``weights`` (default :data:`facelib.mofa.selfsup.STAGE2`), checkpointed as
    ``checkpoint_dir() / <profile>_<name>_s<seed>.pt`` (the book's final level: ``name="final"``, which
    :func:`facelib.load_network` ``("mofa-final")`` reads); ``eval_fn``, ``eval_every``: the learning
    curve (:func:`train`).  Returns ``(net, history)``."""
    config = {**stage1.config, "n_corrective": n_corrective, "corrective": corrective}
    net, _ = build_mofa(full_model, config)
    net = net.to(stage1.code_offset.device)
    net.load_stage1(stage1.state_dict())
    hist = train(net, corpus, cfg["steps2"], 2, lr=cfg["lr"], batch=cfg["batch"], seed=seed + 1, weights=weights,
                 checkpoint=checkpoint_dir() / f"{profile}_{name}_s{seed}.pt", progress=progress,
                 desc=f"stage 2 ({name}, seed {seed})",
                 threads=cfg.get("threads"), eval_fn=eval_fn, eval_every=eval_every)
    return net, hist


def settings_steps(name: str, profile: str) -> int | None:
    """The steps the book trains network ``name`` for in ``profile``: ``"mofa"`` stage 1
    (``steps1`` of chapter 5), ``"mofa-final"`` stage 2 (``steps2`` of chapter 6); None for another name
    or profile.  :func:`facelib.networks.load_network` refuses a checkpoint that holds fewer."""
    from ..book import SETTINGS

    chapter, key = {"mofa": ("05_mofa", "steps1"), "mofa-final": ("06_correctives", "steps2")}.get(name, (None, None))
    return SETTINGS.get(chapter, {}).get(profile, {}).get(key) if chapter else None


# ---------------------------------------------------------------------------------- evaluation
def render_level(pr: PointRendering, faces: torch.Tensor, focal: float, size: int,
                 colors: torch.Tensor | None = None) -> tuple:
    """Rasterise a level's shaded vertices (or other per-vertex ``colors (B, N, 3)``) for display and the
    photometric error: ``pr`` a :class:`facelib.render.points.PointRendering` -> ``(image (B, 3, N, N), mask
    (B, N, N))``."""
    screen = torch.cat([pr.u, pr.depth[..., None]], dim=-1)
    frags = rasterize(screen, faces, size)
    img = interpolate(pr.c if colors is None else colors, frags, faces)[..., 0, :].permute(0, 3, 1, 2)
    return img, frags.pix_to_face[..., 0] >= 0


def mark_points(image: torch.Tensor, points: torch.Tensor, color=(0.1, 1.0, 0.2), radius: int = 0) -> torch.Tensor:
    """A copy of ``image (B, 3, H, W)`` with the pixels at ``points (B, L, 2)`` (pixel coordinates, centres
    at +0.5) painted ``color`` (squares of side ``2 radius + 1``), for landmark figures."""
    out = image.clone()
    H, W = image.shape[-2:]
    col = torch.tensor(color, dtype=image.dtype, device=image.device)
    ij = points.floor().long()
    for b in range(image.shape[0]):
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                x, y = ij[b, :, 0] + dx, ij[b, :, 1] + dy
                ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
                out[b, :, y[ok], x[ok]] = col[:, None]
    return out


GREY_LIGHT = (0.6, 0.0, 0.25, 0.35, 0.0, 0.0, 0.0, 0.0, 0.0)  # gamma for the geometry panels: front-above


@torch.no_grad()
def panels(net: MoFA, image: torch.Tensor, level: str = "final") -> dict:
    """What the autoencoder recovered from ``image (B, 3, N, N)``, each ``(B, 3, N, N)`` in [0, 1]:
    ``overlay`` (the shaded reconstruction over the input), ``geometry`` (grey, under a fixed light),
    ``reflectance`` (albedo, unlit), ``illumination`` (a grey sphere under the regressed gamma)."""
    from ..render.shading import shade
    from ..book.viz import sphere_normals

    d = net(image)
    pr = d.final if level == "final" else d.base
    v = d.levels.r_f if level == "final" else d.levels.r_b
    gamma = d.parts["illumination_final" if level == "final" and net.n_corrective else "illumination"]
    tri = net.decoder.triangles
    B = image.shape[0]
    shaded, mask = render_level(pr, tri, net.focal, net.size)
    m = mask[:, None]
    grey = shade(torch.full_like(pr.n_cam, 0.7), pr.n_cam,
                 torch.tensor(GREY_LIGHT, device=image.device).expand(B, 9))
    geo = render_level(pr, tri, net.focal, net.size, grey)[0]
    refl = render_level(pr, tri, net.focal, net.size, v)[0]
    n, disk = sphere_normals(net.size)
    n = n.to(image).expand(B, -1, -1, -1)
    sphere = shade(torch.full_like(n, 0.7), n, gamma).permute(0, 3, 1, 2) * disk.to(image)
    return {"input": image, "overlay": torch.where(m, shaded.clamp(0, 1), image),
            "geometry": torch.where(m, geo, torch.ones_like(geo)).clamp(0, 1),
            "reflectance": torch.where(m, refl, torch.ones_like(refl)).clamp(0, 1),
            "illumination": (sphere + (~disk).to(image)).clamp(0, 1)}


def fit_codes(net: MoFA, image: torch.Tensor, landmarks: torch.Tensor, weights: LossWeights | None = None,
              steps: int = 600, lr: float = 0.02, landmark_scale: float | None = None) -> torch.Tensor:
    """Analysis by synthesis, the reference row of the self-supervised loss: the stage-1 loss of
    Eq. 6-11 (:func:`loss_terms`, ``weights`` default :data:`facelib.mofa.selfsup.STAGE1`) minimised per
    image over the code itself, no encoder, with Adam for ``steps`` steps from the network's start
    code (``net.code_offset``: the mean face where :func:`init_translation` put it).  What an encoder
    trained with this loss could at best regress for these images.  ``image (B, 3, N, N)``,
    ``landmarks (B, 68, 2)`` -> code ``(B, m)`` (detached)."""
    weights = weights or STAGE1
    z = net.code_offset.detach().expand(image.shape[0], -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        out = net.decode(z, final=False)
        loss = e_total(loss_terms(net, out, image, landmarks, weights, 1, landmark_scale=landmark_scale),
                       weights).sum()  # per-image problems are independent: the sum keeps their scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return z.detach()


@torch.no_grad()
def mean_face_error(net: MoFA, corpus: dict, batch: int = 64) -> torch.Tensor:
    """The reference row of every table: the geometric error (as :func:`evaluate`, similarity-aligned,
    mm, over the face mask) of the **mean face** (shape and expression 0) against each face of
    ``corpus`` -> ``(n,)``."""
    dec = net.decoder
    mean = dec.a_g.view(1, -1, 3)  # Eq. 3 with alpha = 0
    out = []
    for s in range(0, corpus["verts_model"].shape[0], batch):
        gt = corpus["verts_model"][s:s + batch].to(dec.a_g.device)
        out.append(geometric_error(mean.expand(gt.shape[0], -1, -1), gt, dec.face_mask))
    return torch.cat(out).cpu()


def geometric_error(v: torch.Tensor, gt: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """The geometric error of every table of chapters 5-6: mean vertex distance (mm) over the ``face``
    mask ``(K,)`` of ``v (B, K, 3)`` to ``gt (B, K, 3)`` after a similarity alignment (rigid + isotropic
    scale, Tewari et al. 2018 Sec. 7.2) -> ``(B,)``."""
    al = similarity_align(v[:, face], gt[:, face])[0]
    return (al - gt[:, face]).norm(dim=-1).mean(1)


def now_error_mm(net: MoFA, v: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The book's shared measure (chapter 8, :func:`facelib.eval.metrics.now_error`) on the decoder's mesh:
    ``v (B, V, 3)`` reconstructions (model space, mm) against ``gt (B, V, 3)`` the true meshes of the
    same template; ground-truth points are the face mask's vertices, the alignment starts from the
    model's landmark vertices -> ``(B,)`` mm, the mean point-to-surface distance."""
    from ..eval.metrics import now_error

    dec = net.decoder
    lm, face = dec.landmarks.cpu(), dec.face_mask.cpu()
    v, gt = v.detach().cpu().double(), gt.detach().cpu().double()
    return now_error(v, dec.triangles.cpu(), v[:, lm], gt[:, face], gt[:, lm]).distance.mean(1).float()


def mean_face_now(net: MoFA, corpus: dict) -> torch.Tensor:
    """:func:`now_error_mm` of the **mean face** (shape and expression 0) against each face of
    ``corpus`` -> ``(n,)`` (the reference row, as :func:`mean_face_error`)."""
    gt = corpus["verts_model"]
    return now_error_mm(net, net.decoder.a_g.view(1, -1, 3).expand(gt.shape[0], -1, -1), gt)


@torch.no_grad()
def evaluate(net: MoFA, corpus: dict, batch: int = 32, codes: torch.Tensor | None = None, now: bool = False) -> dict:
    """Errors against the wild corpus's ground truth, per image ``(n,)`` for ``base`` and ``final``:

    ``photometric_rgb``: mean Euclidean RGB distance (channels in [0, 1]) between the input and the
    rasterised reconstruction over the pixels the reconstruction covers (Tewari et al. 2018 Sec. 7.2,
    Fig. 11); ``geometric_mm``: mean vertex distance (mm) over the face mask to the ground-truth mesh
    with its detail, after a similarity alignment (rigid + isotropic scale, as Sec. 7.2);
    ``reflectance_rgb`` (when the corpus has ``albedo``): mean RGB distance of the reflectance to the
    true painted albedo over the face mask, global shift compensated (supplement Sec. 4);
    also ``landmark_px``: mean distance of the projected landmark vertices to the true landmarks.
    ``codes (n, m)``: score these codes (e.g. :func:`fit_codes`) instead of the encoder's.
    ``now``: also ``now_mm``, the NoW-style error of every chapter (:func:`now_error_mm`).
    """
    if codes is not None and codes.shape[0] != corpus["image"].shape[0]:
        raise ValueError(f"{codes.shape[0]} codes for {corpus['image'].shape[0]} images")
    net.eval()
    dev = net.code_offset.device
    face = net.decoder.face_mask
    keys = ("photometric_rgb", "geometric_mm", "reflectance_rgb", "now_mm")
    out = {"base": {k: [] for k in keys}, "final": {k: [] for k in keys}, "landmark_px": []}
    for s in range(0, corpus["image"].shape[0], batch):
        image = corpus["image"][s:s + batch].to(dev)
        d = net(image) if codes is None else net.decode(codes[s:s + batch].to(dev))
        gt = corpus["verts_model"][s:s + batch].to(dev)
        alb = corpus["albedo"][s:s + batch].to(dev)[:, face] if "albedo" in corpus else None
        lv = d.levels
        for name, pr, v, r in (("base", d.base, lv.v_b, lv.r_b), ("final", d.final, lv.v_f, lv.r_f)):
            img, mask = render_level(pr, net.decoder.triangles, net.focal, net.size)
            out[name]["photometric_rgb"].append(photometric_rgb_distance(img.clamp(0, 1), image, mask))
            out[name]["geometric_mm"].append(geometric_error(v, gt, face))
            if now:  # without correctives the final mesh is the base one (the same tensor): measured once
                same = name == "final" and v is lv.v_b
                out[name]["now_mm"].append(out["base"]["now_mm"][-1] if same else now_error_mm(net, v, gt).to(gt.device))
            if alb is not None:  # reflectance, global shift compensated (supplement Sec. 4)
                dr = (r[:, face] - r[:, face].mean(1, keepdim=True)) - (alb - alb.mean(1, keepdim=True))
                out[name]["reflectance_rgb"].append(dr.norm(dim=-1).mean(1))
        u = d.base.u[:, net.decoder.landmarks]
        out["landmark_px"].append((u - corpus["landmarks_gt"][s:s + batch].to(dev)).norm(dim=-1).mean(1))
    cat = lambda x: torch.cat(x).cpu()  # noqa: E731
    return {"base": {k: cat(v) for k, v in out["base"].items() if v},
            "final": {k: cat(v) for k, v in out["final"].items() if v}, "landmark_px": cat(out["landmark_px"])}


def mean_errors(ev: dict, level: str = "base") -> dict:
    """The means over faces of an :func:`evaluate` result for one ``level`` (``"base"`` | ``"final"``):
    ``{"geometric_mm", "photometric_rgb", "landmark_px"}`` as floats (a learning-curve point, a table row)."""
    return {"geometric_mm": float(ev[level]["geometric_mm"].mean()),
            "photometric_rgb": float(ev[level]["photometric_rgb"].mean()),
            "landmark_px": float(ev["landmark_px"].mean())}


def curve_eval(curve_set: dict, level: str = "base"):
    """A learning-curve probe for :func:`train`'s ``eval_fn``: ``net -> mean_errors(evaluate(net,
    curve_set), level)`` on the held-out faces ``curve_set`` (a corpus dict, e.g. the first test faces)."""
    return lambda net: mean_errors(evaluate(net, curve_set), level)


@torch.no_grad()
def encoder_hz(net: nn.Module, batch: int, size: int, device="cpu", repeats: int = 10, warmup: int = 2,
               threads: int | None = None) -> float:
    """Images per second of a forward pass of the encoder (image -> code) at ``batch``; the paper's
    "over 250 Hz" is batch 1 on a GPU (4 ms).  ``net``: a :class:`MoFA` or any encoder module;
    ``threads``: PyTorch CPU threads to time with (default: as set)."""
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    enc = net.to(dev).eval()
    fn = enc.encode if isinstance(enc, MoFA) else (lambda x: enc(x - 0.5))
    x = torch.rand(batch, 3, size, size, device=dev)
    for _ in range(warmup):
        fn(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t)
