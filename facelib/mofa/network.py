"""MoFA's network (Tewari et al. 2018 Fig. 1): the encoder with one output block per code part, the
semantic code and the expert decoder of both levels, and the translation start from the landmarks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..model.facemodel import FaceModel
from ..model.params import rot_xyz
from ..nets import init_last_layer, make_encoder
from ..render import face_camera
from ..render.points import PointRendering, render_points
from .multilevel import MultiLevelModel, code_layout, decimate

# Stage-2 learning rates relative to stage 1's (supplement Sec. 1: 0.01 -> 0.001 / 0.005 / 0.01).
STAGE2_LR = {"base": 0.1, "geometry": 0.5, "reflectance": 1.0}

# The decoder reads the regressed numbers as ``offset + scale * output`` (per code entry); the offsets
# put the initial code at the mean face, frontal, lit by a grey ambient light.
CODE_SCALE = {"rotation": 0.5, "translation": 50.0, "shape": 1.0, "expression": 1.0, "reflectance": 1.0,
              "illumination": 0.5, "illumination_final": 0.5, "corrective_geometry": 1.0,
              "corrective_reflectance": 1.0}
AMBIENT = 0.8  # initial gamma_1 of both levels


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
        landmarks: 68 gives the encoder the image's detected landmarks as a second input (not in the
            papers; :class:`facelib.nets.LandmarkBranch`, joined before the code heads, its read-out added
            to the code, pre-trained by :func:`pretrain_branch`); 0: the image alone (the papers).
        landmark_geometry: with a landmark input, take the shape and expression codes from the branch's
            read-out alone (the image path's outputs for them are gated to 0) and keep the branch fixed
            after its pre-training: the self-supervised loss then trains pose, reflectance and light, and
            the landmarks with the model's prior give the base geometry (not in the papers; chapter 5
            measures why: at 64 pixels the loss's own shape optimum is worse than the read-out).
    ``forward(image (B, 3, N, N) in [0, 1], landmarks=None (B, 68, 2) pixels) -> Decoded``.
    """

    def __init__(self, model: FaceModel, size: int, encoder: str = "alexnet", width: float = 0.25,
                 n_corrective: int = 0, corrective: str = "linear", hidden: int | None = None, seed: int = 0,
                 encoder_kwargs: dict | None = None, landmarks: int = 0, landmark_geometry: bool = False):
        super().__init__()
        if landmarks not in (0, 68):
            raise ValueError(f"landmarks must be 0 (the image alone) or 68 (the detected landmarks); got {landmarks!r}")
        if landmark_geometry and not landmarks:
            raise ValueError("landmark_geometry needs the landmark input (landmarks=68)")
        self.config = dict(size=size, encoder=encoder, width=width, n_corrective=n_corrective,
                           corrective=corrective, hidden=hidden, seed=seed, model=model.name,
                           n_vertices=model.n_vertices, encoder_kwargs=dict(encoder_kwargs or {}))
        if landmarks:  # only then: the configs (and checkpoints) of image-only networks stay as they were
            self.config["landmarks"] = int(landmarks)
        if landmark_geometry:
            self.config["landmark_geometry"] = True
        self.n_landmarks = int(landmarks)
        self.landmark_geometry = bool(landmark_geometry)
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
            extra = {"landmarks": self.n_landmarks} if self.n_landmarks else {}
            self.encoder = make_encoder(encoder, self.layout.size, self.size, width, **(encoder_kwargs or {}), **extra)
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
        gate = torch.ones(self.layout.size)  # 1: the image path's output counts
        if self.landmark_geometry:
            gate[self.layout["shape"]] = 0
            gate[self.layout["expression"]] = 0
            self.encoder.landmark_branch.requires_grad_(False)  # pre-trained only (pretrain_branch)
        self.register_buffer("image_gate", gate, persistent=False)  # from the config, not a weight
        cam = face_camera(self.size)
        self.register_buffer("cam_R", cam.R.clone())
        self.register_buffer("cam_t", cam.t.clone())
        self.focal = cam.focal
        self.principal_point = cam.principal_point

    @property
    def n_corrective(self) -> int:
        return self.decoder.n_corrective

    @property
    def landmark_branch(self) -> nn.Module | None:
        """The encoder's :class:`facelib.nets.LandmarkBranch` (None without a landmark input)."""
        return getattr(self.encoder, "landmark_branch", None)

    def encode(self, image: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, N, N)`` in [0, 1] -> code ``(B, m)`` (:func:`facelib.mofa.multilevel.code_layout`).
        ``landmarks (B, 68, 2)``: the image's detected landmarks in pixels, read by a network with a
        landmark input (normalised by :func:`facelib.data.corpus.landmark_features`) and required by it;
        a network without one ignores them."""
        if image.ndim != 4 or image.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"image has shape {tuple(image.shape)}; expected (B, 3, {self.size}, {self.size})")
        if not self.n_landmarks:
            return self.code_offset + self.code_scale * self.encoder(image - 0.5)  # input in [-0.5, 0.5]
        from ..data.corpus import landmark_features

        if landmarks is None:
            raise ValueError("this MoFA network reads the image's 68 detected landmarks too; call it as "
                             "net(image, landmarks=...) with landmarks (B, 68, 2) in pixels")
        if landmarks.shape != (image.shape[0], self.n_landmarks, 2):
            raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected "
                             f"({image.shape[0]}, {self.n_landmarks}, 2) pixels")
        l = landmark_features(landmarks).to(image)
        out = self.encoder(image - 0.5, l)
        if self.landmark_geometry:  # the read-out r, plus the image path's part (out - r) where the gate lets it
            b = self.encoder.landmark_branch
            r = b.head(b(l))
            out = r + self.image_gate * (out - r)
        return self.code_offset + self.code_scale * out

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

    def forward(self, image: torch.Tensor, final: bool = True, landmarks: torch.Tensor | None = None) -> Decoded:
        return self.decode(self.encode(image, landmarks), final)

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
        part of the code head, of the landmark read-out and of the code offsets; the corrective parts keep
        their initialisation."""
        own = self.state_dict()
        n = self.layout.slices["illumination"].stop
        with torch.no_grad():
            for k, v in state.items():
                if k not in own:
                    continue
                if k in ("code_offset", "code_scale", "encoder.landmark_branch.head.weight",
                         "encoder.landmark_branch.head.bias"):
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
    return MoFA(model, int(config["size"]), landmarks=int(config.get("landmarks", 0)),
                landmark_geometry=bool(config.get("landmark_geometry", False)), **kw), keep


def landmark_outputs(net: MoFA, model: FaceModel) -> tuple:
    """What the landmark branch of ``net`` is pre-trained to read (:func:`pretrain_branch`): the code entries
    a face's landmarks show, rotation, shape and expression
    (:data:`facelib.inversefacenet.GEOMETRY_GROUPS`), in the encoder's output units (``(code -
    code_offset) / code_scale``).  Returns ``(cols (k,), to_output)`` with ``to_output(theta (B, m'))
    -> (B, k)`` for faces ``theta`` in ``model``'s :class:`facelib.model.params.ParamLayout` (the
    decimated decoder keeps every component, so the coefficients are the same)."""
    from ..inversefacenet import GEOMETRY_GROUPS
    from ..model.params import ParamLayout

    src_layout = ParamLayout.from_model(model)
    cols = torch.cat([torch.arange(net.layout.size)[net.layout[k]] for k in GEOMETRY_GROUPS])
    src = torch.cat([torch.arange(src_layout.size)[src_layout[k]] for k in GEOMETRY_GROUPS])
    if cols.numel() != src.numel():
        raise ValueError(f"face model {model.name!r} has other components than the network's decoder")
    offset, scale = net.code_offset[cols].detach().cpu(), net.code_scale[cols].detach().cpu()
    return cols, lambda theta: (theta[:, src].to(offset) - offset) / scale


def pretrain_branch(net: MoFA, model: FaceModel, steps: int, batch: int, seed: int, progress: bool = True,
                    spread: float = 1.0) -> float:
    """Pre-train the landmark branch of ``net`` on landmarks alone, as chapter 3 pre-trains
    InverseFaceNet's (:func:`facelib.inversefacenet.pretrained_branch`: faces from the Sec. 5 prior, their
    projected landmarks with the detector's noise, no rendering, no image), to the code entries of
    :func:`landmark_outputs`; cached per face model, branch shape, steps, batch and seed.  Call it after
    :func:`init_translation` (the targets are relative to the code offsets).  ``spread``: the drawn faces'
    shape coefficients times ``spread`` (:func:`facelib.inversefacenet.pretrain_landmarks`; 1: the prior).
    Returns the seconds the pre-training took when it ran."""
    from ..inversefacenet import pretrained_branch

    if not net.n_landmarks:
        raise ValueError("this MoFA network has no landmark input to pre-train (build it with landmarks=68)")
    return pretrained_branch(model, net, steps, batch, seed, progress=progress,
                             outputs=landmark_outputs(net, model),
                             what=f"mofa landmark branch, rotation scale {CODE_SCALE['rotation']}", spread=spread)


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


