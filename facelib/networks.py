"""Trained networks as files: the book's networks with their configuration and the face model's key,
loaded for inference without the training data, and never trained here.

Where they come from:

* ``"inversefacenet"``: the Table 1 rows of chapters 3-4.  :func:`facelib.inversefacenet.train_row`
  publishes every row it trains (or loads from its cache) with :func:`publish_inversefacenet`, under
  ``networks_dir()/inversefacenet/``; ``row=`` picks a row (default: the paper's InverseFaceNet,
  AlexNet + model-space loss + breeding), ``seed=`` a training seed.
* ``"mofa"`` and ``"mofa-final"``: the base level of chapter 5 (stage 1) and the final level of
  chapter 6 (stage 2 with the correctives), read from the checkpoints the book writes under
  :func:`facelib.mofa.checkpoint_dir` (``<profile>_stage1_s<seed>.pt``, ``<profile>_final_s<seed>.pt``);
  a checkpoint of an unfinished run is refused.

When several profiles trained a network, the largest wins (``gpu``, then ``cpu``, then ``ci``) unless
``profile=`` says which.  :func:`load_network` returns a :class:`TrainedNetwork`, whose
:meth:`TrainedNetwork.estimate` takes frames and their 68 landmarks, makes the crop its network was
trained on and returns the estimate with the meshes; nothing else about the method needs to be known.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .mofa import PHOTO_MARGIN

__all__ = ["NETWORKS", "PROFILE_ORDER", "networks_dir", "publish_inversefacenet", "save_network",
           "available_networks", "load_network", "TrainedNetwork", "NetworkNotFoundError", "frames_input"]

NETWORKS = {
    "inversefacenet": "InverseFaceNet, Kim et al. 2018 (chapters 3-4; row= picks a Table 1 row)",
    "mofa": "MoFA's base level, Tewari et al. 2017 (chapter 5, stage 1)",
    "mofa-final": "the multi-level model's final level, Tewari et al. 2018 (chapter 6, stage 2)",
    "coarsenet": "CoarseNet, Richardson et al. 2017 (chapter 7, the GMSE network of the first seed)",
    "finenet": "FineNet, Richardson et al. 2017 (chapter 7, the full Eq. 14 criterion)",
}
_SAVED = ("coarsenet", "finenet")  # saved by their chapter with save_network
PROFILE_ORDER = ("gpu", "cpu", "ci")  # the first one found wins
IFN_DEFAULT_ROW = "+ breeding (= InverseFaceNet)"
FORMAT = 1
_REGRESSOR_KEYS = ("size", "alexnet_width", "alexnet_fc", "alexnet_stride", "resnet_width", "resnet_blocks", "norm",
                   "dropout", "standardize", "landmarks")
# MoFA's crop of a frame, placed as its training frames place the face (facelib.data.wild.wild_batch, measured
# on 256 faces: the landmarks span 0.58 of the frame, their box's centre 0.098 of the frame below its
# centre): the landmark box plus 35% on every side (mofa.photo_corpus's margin), moved up by 0.098 side.
MOFA_MARGIN = PHOTO_MARGIN
MOFA_CENTRE_Y = 0.098
_HOW = {"inversefacenet": "run `make book` (chapters 3 and 4 train InverseFaceNet's rows)",
        "mofa": "run `make book` (chapter 5 trains MoFA's base level)",
        "mofa-final": "run `make book` (chapter 6 trains the final level)",
        "coarsenet": "run `make book` (chapter 7 trains CoarseNet)",
        "finenet": "run `make book` (chapter 7 trains FineNet)"}


class NetworkNotFoundError(FileNotFoundError):
    """No trained network of that name (for that face model and profile) is on disk."""


def networks_dir() -> Path:
    """``$FACELIB_CACHE/networks`` or ``~/.cache/facelib/networks``: the published networks."""
    from .model.open_model import cache_dir

    return cache_dir() / "networks"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "row"


def _profile_of(chapter: str, cfg: dict) -> str | None:
    """The book profile whose settings ``cfg`` holds unchanged, or None (a custom budget).  For InverseFaceNet
    the training options (:data:`facelib.inversefacenet.TRAIN_OPTIONS`) must be the profile's too: a run with
    an option of its own (a benchmark's variant, e.g. ``landmark_spread``) is not the profile's network."""
    from .book import PROFILES, SETTINGS

    for p in PROFILES:
        s = SETTINGS.get(chapter, {}).get(p)
        if s is not None and all(k in cfg and cfg[k] == v for k, v in s.items()):
            if chapter == "inversefacenet":
                from .inversefacenet import _options

                if _options(cfg) != _options(s):
                    continue
            return p
    return None


def publish_inversefacenet(model, cfg: dict, row: str, seed: int, kind: str, net: torch.nn.Module, info: dict,
                           key: str) -> Path:
    """Save one trained Table 1 network for :func:`load_network` (atomically; kept when already there with the
    same profile):
    its weights (on the CPU), the regressor's configuration (:func:`facelib.inversefacenet.make_regressor`
    keys of ``cfg``), ``kind``, ``row``, ``seed``, iterations and training seconds from ``info``, the
    face model's key and name, and the book profile ``cfg`` belongs to.  ``key``: the training cache's
    key of the run (:func:`facelib.inversefacenet.train_row`), so two runs never share a file."""
    from ._atomic import atomic_path
    from .data.corpus import _model_key

    path = networks_dir() / "inversefacenet" / f"{_slug(row)}-s{int(seed)}-{key}.pt"
    profile = _profile_of("inversefacenet", cfg)
    if path.exists() and (_read(path) or {}).get("profile", profile) == profile:
        return path  # the same run, saved before (a profile that came to hold its settings since: saved again)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    record = {"format": FORMAT, "method": "inversefacenet", "row": row, "seed": int(seed), "kind": kind,
              "config": {k: cfg[k] for k in _REGRESSOR_KEYS if k in cfg}, "iters": int(info.get("iters", 0)),
              "train_s": float(info.get("train_s", 0.0)), "model_key": _model_key(model), "model_name": model.name,
              "profile": profile, "state": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return path


def save_network(name: str, net: torch.nn.Module, config: dict, model, profile: str, seed: int = 0) -> Path:
    """Save a network a chapter trained (``name``: ``"coarsenet"`` or ``"finenet"``) for
    :func:`load_network`, atomically, as ``networks_dir()/<name>/<profile>-s<seed>.pt``: its weights (on
    the CPU), ``config`` (what rebuilds it: CoarseNet ``n_shape``, ``n_expression``, ``width``,
    ``blocks``, ``size``, ``iterations``, ``mask_dilate``; FineNet ``width``, ``head``, ``size``), the face
    model's key and name, the profile and the seed.  Returns the path."""
    from ._atomic import atomic_path
    from .book import PROFILES
    from .data.corpus import _model_key

    if name not in _SAVED:
        raise ValueError(f"save_network saves {_SAVED}; InverseFaceNet and MoFA save themselves (got {name!r})")
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    path = networks_dir() / name / f"{profile}-s{int(seed)}.pt"
    record = {"format": FORMAT, "method": name, "config": dict(config), "model_key": _model_key(model),
              "model_name": model.name, "profile": profile, "seed": int(seed),
              "state": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return path


def _saved_candidates(name: str, model_key: str) -> list:
    out = []
    for p in sorted((networks_dir() / name).glob("*.pt")):
        r = _read(p)
        if r and r.get("format") == FORMAT and r.get("method") == name and r.get("model_key") == model_key:
            out.append(dict(r, path=p))
    return out


def _read(path: Path) -> dict | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception:  # noqa: BLE001 (a truncated or foreign file: not a network)
        return None
    return obj if isinstance(obj, dict) else None


def _ifn_candidates(model_key: str) -> list:
    out = []
    for p in sorted((networks_dir() / "inversefacenet").glob("*.pt")):
        r = _read(p)
        if r and r.get("format") == FORMAT and r.get("model_key") == model_key:
            out.append(dict(r, path=p))
    return out


def _mofa_candidates(name: str, model, seed: int | None = None) -> list:
    """MoFA checkpoints of ``name`` (``"mofa"``: stage 1, ``"mofa-final"``: stage 2; of training seed
    ``seed``, every seed when None) whose decoder is ``model`` (full, or decimated to the checkpoint's
    ``n_vertices``: the key MoFA records is its decoder's), in :data:`PROFILE_ORDER`; each with its
    ``profile``, ``seed``, ``path`` and ``record``."""
    from .data.corpus import _model_key
    from .mofa import checkpoint_dir
    from .mofa.multilevel import decimate

    keys, out = {}, []
    for prof in PROFILE_ORDER:
        stem = "stage1" if name == "mofa" else "final"
        pattern = f"{prof}_{stem}_s{'*' if seed is None else int(seed)}.pt"
        for f in sorted(checkpoint_dir().glob(pattern)):
            r = _read(f)
            meta = (r or {}).get("meta") or {}
            if r is None or "net" not in r or "n_vertices" not in meta.get("config", {}):
                continue
            n = int(meta["config"]["n_vertices"])
            if n not in keys:
                keys[n] = _model_key(decimate(model, n)[0])
            if meta.get("model") != keys[n]:
                continue
            s = int(f.stem.rsplit("_s", 1)[1])
            out.append({"profile": prof, "seed": s, "path": f, "record": r})
    return out


def _rank(profile: str | None) -> int:
    return PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else len(PROFILE_ORDER)


def available_networks(model="open") -> list:
    """What :func:`load_network` can load for ``model`` (a name, path or :class:`facelib.FaceModel`):
    one dict per network file with ``name``, ``row`` (InverseFaceNet), ``seed``, ``profile``, ``iters``
    or ``step``, and ``path``."""
    from . import FaceModel, load_model
    from .data.corpus import _model_key

    m = model if isinstance(model, FaceModel) else load_model(model)
    key = _model_key(m)
    rows = [{"name": "inversefacenet", "row": r["row"], "seed": r["seed"], "profile": r["profile"],
             "iters": r["iters"], "path": str(r["path"])} for r in _ifn_candidates(key)]
    rows += [{"name": name, "row": None, "seed": r["seed"], "profile": r["profile"], "path": str(r["path"])}
             for name in _SAVED for r in _saved_candidates(name, key)]
    rows += [{"name": name, "row": None, "seed": c["seed"], "profile": c["profile"],
              "step": int(c["record"].get("step", 0)), "path": str(c["path"])}
             for name in ("mofa", "mofa-final") for c in _mofa_candidates(name, m)]
    return rows


@dataclass
class TrainedNetwork:
    """A trained network ready for inference (:func:`load_network`).

    ``name`` (:data:`NETWORKS`), ``method``, ``net`` (the ``nn.Module``, in eval mode), ``model`` (the full
    face model the estimates refer to), ``size`` (input side N), ``meta`` (row, seed, profile, training
    budget, file).  :meth:`estimate` is the whole inference path.
    """

    name: str
    method: str
    net: torch.nn.Module
    model: object
    size: int
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def crop(self, image: torch.Tensor, landmarks: torch.Tensor) -> dict:
        """The network's input made from frames ``image (B, 3, H, W)`` in [0, 1] and their 68 landmarks
        ``(B, 68, 2)`` (pixels): InverseFaceNet's Sec. 6.1 crop (:func:`facelib.data.corpus.network_input`:
        landmark box plus 8%, masked by the landmark outline) or MoFA's square, placed as in its training
        frames (:data:`MOFA_MARGIN`, :data:`MOFA_CENTRE_Y`).  MoFA's and CoarseNet's crops fill the outside
        of the frame with its edge pixels: neither saw a black frame in training (most wild faces' MoFA crops
        run past the frame).  Returns ``crop (B, 3, N, N)`` in
        [0, 1] and ``box (B, 3)`` (centre x, centre y, side) in frame pixels and ``landmarks (B, 68, 2)`` in
        crop pixels (a network with a landmark input reads them).  The inputs are checked and converted by
        :func:`frames_input` (8-bit frames are divided by 255; values outside [0, 1], NaN: ValueError)."""
        from .data.corpus import _box_points, crop_to_box, landmark_box, network_input

        image, landmarks = frames_input(image, landmarks)
        if self.method == "finenet":
            raise ValueError("FineNet refines CoarseNet's depth map, it has no input of its own from a frame: "
                             "use facelib.coarse_fine.finenet_data and finenet_refine with a CoarseNet")
        if self.method == "coarsenet":
            box = self._coarse_box(landmarks)
            grey = crop_to_box(image, box, self.size, padding="border").clamp(0, 1).mean(1, keepdim=True)  # grey (Sec. 3)
            return {"crop": grey, "box": box, "landmarks": _box_points(landmarks, box, self.size)}
        if self.method == "inversefacenet":
            d = network_input(image, landmarks, self.size)
            crop = (d["crop"] * 255).round() / 255  # the training corpus holds 8-bit crops
            return {"crop": crop, "box": d["box"], "landmarks": d["landmarks"]}
        box = landmark_box(landmarks, MOFA_MARGIN)
        box[:, 1] -= MOFA_CENTRE_Y * box[:, 2]
        return {"crop": crop_to_box(image, box, self.size, padding="border").clamp(0, 1), "box": box,  # no black frame
                "landmarks": _box_points(landmarks, box, self.size)}

    def _coarse_box(self, landmarks: torch.Tensor) -> torch.Tensor:
        """CoarseNet's crop ``(B, 3)``: the square that puts the landmarks where the mean face's lie at
        its start ``r_0 = 0`` (the centred frontal mean face of :func:`facelib.coarse_fine.coarse_iterate`),
        drawn by the camera of its training pictures (config ``distance``; none: Eq. 2's weak perspective)."""
        from .data.corpus import landmark_box

        space, N = self.meta["space"], self.size
        m = space.model
        lm0 = space.project(m.mean_shape[m.landmarks][None].float(), torch.zeros(1, 6), N,
                            self.meta["config"].get("distance"))[..., :2]
        b0, bp = landmark_box(lm0, 0.0), landmark_box(landmarks, 0.0)
        k = bp[:, 2] / b0[:, 2]  # photo pixels per crop pixel
        centre = bp[:, :2] - (b0[:, :2] - N / 2) * k[:, None]
        return torch.cat([centre, (N * k)[:, None]], 1)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, landmarks: torch.Tensor) -> dict:
        """The network's part alone: :meth:`crop` and one forward pass.  Returns ``theta (B, m)``
        (InverseFaceNet: Eq. 1 layout of ``model``; MoFA: its code, :func:`facelib.mofa.multilevel.code_layout`)
        with ``crop`` and ``box``."""
        c = self.crop(image, landmarks)
        dev = next(self.net.parameters()).device
        if self.method == "coarsenet":
            from .coarse_fine import coarse_iterate

            lm = c.pop("landmarks")  # the crop's landmarks (read by a CoarseNet with a landmark input)
            r = coarse_iterate(self.meta["space"], self.net, c["crop"].to(dev), int(self.meta["config"]["iterations"]),
                               self.size, landmarks=lm.to(dev))[-1]
            return {"theta": r.cpu(), **c}
        if self.method == "inversefacenet":
            from .data.corpus import to_network
            from .inversefacenet import predict

            lm = c.pop("landmarks")  # the crop's landmarks (the second input of a net that takes them)
            return {"theta": predict(self.net, to_network(c["crop"]).to(dev), landmarks=lm).cpu(), **c}
        lm = c.pop("landmarks")  # the crop's landmarks (read by a MoFA network with a landmark input)
        return {"theta": self.net.encode(c["crop"].to(dev), lm.to(dev)).cpu(), **c}

    @torch.no_grad()
    def estimate(self, image: torch.Tensor, landmarks: torch.Tensor) -> dict:
        """Reconstruct the faces of frames ``image (B, 3, H, W)`` in [0, 1] with 68 landmarks
        ``(B, 68, 2)`` in pixels (detected, e.g. :func:`facelib.data.photos.detect_landmarks`).

        Returns ``theta (B, m)`` and ``layout`` (InverseFaceNet: :class:`facelib.model.params.ParamLayout`
        of ``model``; MoFA: its code layout; CoarseNet: ``r`` after its iterations, shape, expression,
        pose; its albedo is the model's mean and its pictures are grey under a fixed light), ``verts (B, K, 3)`` (model space, mm), ``albedo (B, K, 3)``,
        ``faces (F, 3)`` (K = the model's vertices; MoFA: its decimated template), ``crop``, ``box``
        (:meth:`crop`), ``rendering (B, 3, N, N)`` / ``mask (B, N, N)`` (the estimate drawn in the crop,
        shaded with the estimated light), ``albedo_rendering (B, 3, N, N)`` (unlit) and ``landmarks
        (B, 68, 2)``: the estimate's own landmarks projected into the input frame (pixels)."""
        from .model.params import ParamLayout

        c = self.predict(image, landmarks)
        theta = c.pop("theta")
        dev = next(self.net.parameters()).device
        if self.method == "coarsenet":
            from .coarse_fine import render_view
            from .mofa import GREY_LIGHT

            space, B = self.meta["space"], theta.shape[0]
            alpha, pose = space.split(theta)
            verts = space.geometry(alpha)
            grey = dict(theta_r=torch.zeros(B, self.model.n_reflectance), gamma=torch.tensor(GREY_LIGHT).expand(B, 9))
            v = render_view(space, theta, self.size, grey, background=1.0, head=False)
            u = space.project(verts[:, self.model.landmarks], pose, self.size)[..., :2]
            lay = ParamLayout((("shape", space.n_shape), ("expression", space.n_expression), ("pose", 6)))
            return {"theta": theta, "layout": lay, "verts": verts,
                    "albedo": self.model.mean_albedo.expand(B, -1, -1).clamp(0, 1), "faces": space.faces,
                    "rendering": v.image.expand(-1, 3, -1, -1), "albedo_rendering": torch.where(
                        v.mask[:, None], torch.full_like(v.image, 0.7), torch.ones_like(v.image)).expand(-1, 3, -1, -1),
                    "mask": v.mask, "landmarks": _to_frame(u, c["box"], self.size), **c}
        if self.method == "inversefacenet":
            from .data.corpus import crop_to_box, landmark_box
            from .model.params import unlit
            from .render import landmarks_2d, render

            lay = ParamLayout.from_model(self.model)
            p = lay.unpack(theta)
            verts = self.model.geometry(p["shape"], p["expression"])
            albedo = self.model.reflectance(p["reflectance"]).clamp(0, 1)
            # drawn as the training faces were made (corpus.render_crops): rendered in a 1.5 N frame and
            # cropped to its own landmark box, which the input's box maps to the frame
            frame = math.ceil(1.5 * self.size)
            r = render(self.model, theta, frame, outputs=("screen",))
            lm = landmarks_2d(self.model, r.screen)
            box = landmark_box(lm)
            rgb = crop_to_box(r.image, box, self.size).clamp(0, 1)
            mask = crop_to_box(r.mask[:, None].float(), box, self.size)[:, 0] > 0.5
            alb = crop_to_box(render(self.model, unlit(theta, lay), frame).image, box, self.size).clamp(0, 1)
            u = (lm - box[:, None, :2]) / box[:, None, 2:3] * self.size + self.size / 2  # crop pixels
            return {"theta": theta, "layout": lay, "verts": verts, "albedo": albedo, "faces": self.model.triangles,
                    "rendering": rgb, "albedo_rendering": alb, "mask": mask,
                    "landmarks": _to_frame(u, c["box"], self.size), **c}
        from .mofa import render_level

        d = self.net.decode(theta.to(dev), final=self.name == "mofa-final")
        final = self.name == "mofa-final" and self.net.n_corrective > 0
        pr = d.final if final else d.base
        tri = self.net.decoder.triangles
        rgb, mask = render_level(pr, tri, self.net.focal, self.net.size)
        lv = d.levels
        albedo = (lv.r_f if final else lv.r_b).clamp(0, 1)
        alb = render_level(pr, tri, self.net.focal, self.net.size, albedo)[0]
        u = pr.u[:, self.net.decoder.landmarks].cpu()
        return {"theta": theta, "layout": self.net.layout, "verts": (lv.v_f if final else lv.v_b).cpu(),
                "albedo": albedo.cpu(), "faces": tri.cpu(), "rendering": rgb.clamp(0, 1).cpu(),
                "albedo_rendering": alb.clamp(0, 1).cpu(), "mask": mask.cpu(),
                "landmarks": _to_frame(u, c["box"], self.size), **c}


FRAME_TOLERANCE = 1e-3  # how far a float frame may stray outside [0, 1] (rounding), before it is refused
MIN_LANDMARK_SPAN = 4.0  # pixels: 68 landmarks closer together than this are not a face's in frame pixels


def frames_input(image, landmarks) -> tuple:
    """A trained network's inputs, checked and as float tensors: frames ``image (B, 3, H, W)`` RGB in [0, 1]
    (a ``uint8`` image, 0-255, is divided by 255; NumPy arrays are taken too) and their 68 landmarks
    ``(B, 68, 2)`` in pixels.  No frames, a wrong shape, NaN or infinite values, landmarks that span under
    :data:`MIN_LANDMARK_SPAN` pixels (normalised coordinates, say), or a float image outside [0, 1]
    (by more than :data:`FRAME_TOLERANCE`, e.g. 0-255 values in a float array) raise ValueError, so that a
    frame in other units is not reconstructed as a wrong face without a word."""
    image, landmarks = torch.as_tensor(image), torch.as_tensor(landmarks)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}; expected (B, 3, H, W) RGB in [0, 1]")
    if image.shape[0] == 0:
        raise ValueError("image holds no frames (B = 0)")
    if landmarks.shape != (image.shape[0], 68, 2):
        raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected ({image.shape[0]}, 68, 2)")
    image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    landmarks = landmarks.float()
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or infinite values")
    if not bool(torch.isfinite(landmarks).all()):
        raise ValueError("landmarks contain NaN or infinite values")
    span = float((landmarks.amax(1) - landmarks.amin(1)).amax(-1).min())  # the smallest face's larger side
    if span < MIN_LANDMARK_SPAN:
        raise ValueError(f"a face's 68 landmarks span {span:.3g} pixels; expected pixel coordinates (x, y) of the "
                         "frame (landmarks normalised to [0, 1]? multiply them by the frame's width and height)")
    lo, hi = float(image.min()), float(image.max())
    if lo < -FRAME_TOLERANCE or hi > 1 + FRAME_TOLERANCE:
        raise ValueError(f"image values lie in [{lo:.4g}, {hi:.4g}]; expected RGB in [0, 1] (divide 8-bit values "
                         "by 255, or pass the uint8 image)")
    return image, landmarks


def _to_frame(u: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixels ``u (B, K, 2)`` of the ``size``-pixel crop of ``box (B, 3)`` -> frame pixels."""
    return box[:, None, :2] + (u / size - 0.5) * box[:, None, 2:3]


def _missing(name: str, what: str) -> NetworkNotFoundError:
    from .mofa import checkpoint_dir

    return NetworkNotFoundError(f"no trained {name!r} network {what}; {_HOW[name]} first (it saves the "
                                f"networks under {networks_dir() if name == 'inversefacenet' else checkpoint_dir()}), "
                                "or see facelib.networks.available_networks()")


def load_network(name: str = "inversefacenet", *, row: str | None = None, seed: int = 0, profile: str | None = None,
                 model="open", device="cpu") -> TrainedNetwork:
    """A network the book trained, ready for inference; never trains.

    ``name``: one of :data:`NETWORKS`.  ``row``: InverseFaceNet's Table 1 row (default the paper's
    InverseFaceNet, :data:`IFN_DEFAULT_ROW`).  ``seed``: the training seed.  ``profile``: ``"ci"``,
    ``"cpu"`` or ``"gpu"``; None takes the largest one on disk (:data:`PROFILE_ORDER`; of two runs with the
    same settings, the one saved last).  ``model``: the
    face model (name, path or :class:`facelib.FaceModel`) the network must have been trained with: a
    network of another model is never returned.  Raises :class:`NetworkNotFoundError` (with the command
    that trains it) when there is none, ValueError for a bad name, row or profile.
    """
    from . import FaceModel, load_model
    from .book import PROFILES
    from .data.corpus import _model_key
    from .device import pick_device

    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    dev = pick_device(device)
    m = model if isinstance(model, FaceModel) else load_model(model)
    m = m.to("cpu")
    key = _model_key(m)
    if name == "inversefacenet":
        from .inversefacenet import TABLE1_ROWS, make_regressor

        row = row or IFN_DEFAULT_ROW
        if row not in TABLE1_ROWS:
            raise ValueError(f"unknown Table 1 row {row!r}; expected one of {list(TABLE1_ROWS)}")
        cands = [r for r in _ifn_candidates(key) if r["row"] == row and r["seed"] == seed
                 and (profile is None or r["profile"] == profile)]
        if not cands:
            raise _missing(name, f"for row {row!r}, seed {seed}" + (f", profile {profile!r}" if profile else "")
                           + f" and face model {m.name!r}")
        # the largest profile and budget; of two runs of the same (e.g. trained with 2 threads, then one thread
        # side by side), the one saved last
        best = min(cands, key=lambda r: (_rank(r["profile"]), -r["iters"] * r["config"].get("size", 0) ** 2,
                                         -r["path"].stat().st_mtime))
        net = make_regressor(m, best["config"], best["kind"], seed)
        net.load_state_dict(best["state"])
        meta = {k: best[k] for k in ("row", "seed", "kind", "profile", "iters", "train_s", "config")}
        meta["path"] = str(best["path"])
        return TrainedNetwork(name, "inversefacenet", net.to(dev).eval(), m, int(best["config"]["size"]), meta)
    if name in _SAVED:
        cands = [r for r in _saved_candidates(name, key) if r["seed"] == seed
                 and (profile is None or r["profile"] == profile)]
        if not cands:
            raise _missing(name, f"for seed {seed}, " + (f"profile {profile!r}, " if profile else "")
                           + f"face model {m.name!r}")
        best = min(cands, key=lambda r: _rank(r["profile"]))
        from .coarse_fine import CoarseNet, CoarseSpace, FineNet

        cfg = best["config"]
        meta = {"seed": best["seed"], "profile": best["profile"], "config": cfg, "path": str(best["path"])}
        if name == "coarsenet":
            space = CoarseSpace.from_model(m, int(cfg["n_shape"]), int(cfg["n_expression"]))
            net = CoarseNet(space.n_params, width=int(cfg["width"]), blocks=tuple(cfg["blocks"]),
                            mask_dilate=cfg.get("mask_dilate"), landmarks=int(cfg.get("landmarks", 0)),
                            landmark_width=int(cfg.get("landmark_width", 256)))
            meta["space"] = space
        else:
            net = FineNet(width=int(cfg["width"]), head=int(cfg["head"]))
        net.load_state_dict(best["state"])
        return TrainedNetwork(name, name, net.to(dev).eval(), m, int(cfg["size"]), meta)
    from .mofa import build_mofa, settings_steps

    cands = [c for c in _mofa_candidates(name, m, seed) if profile is None or c["profile"] == profile]
    if not cands:
        raise _missing(name, f"for seed {seed}, "
                       + (f"profile {profile!r}, " if profile else "") + f"face model {m.name!r}")
    c = cands[0]  # PROFILE_ORDER
    rec = c["record"]
    need = settings_steps(name, c["profile"])
    if need is not None and int(rec.get("step", 0)) < need:
        raise NetworkNotFoundError(f"{c['path']}: training stopped at step {rec.get('step')} of {need}; "
                                   f"{_HOW[name]} to finish it")
    net, keep = build_mofa(m, rec["meta"]["config"])
    net.load_state_dict(rec["net"])
    meta = {"seed": c["seed"], "profile": c["profile"], "step": int(rec.get("step", 0)),
            "config": rec["meta"]["config"], "path": str(c["path"]), "keep": keep}
    return TrainedNetwork(name, "mofa", net.to(dev).eval(), m, int(rec["meta"]["config"]["size"]), meta)
