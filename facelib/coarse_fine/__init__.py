"""Networks and training: CoarseNet with iterative feedback, the rendering layer and FineNet
(Richardson et al. 2017, Sec. 3-4).

The pipeline, as the paper reads:

* **The solution space** (Sec. 3.1, Eq. 1-2): ``r = (alpha, pose)``, the first ``n_shape`` identity
  and ``n_expression`` expression coefficients of the face model (in units of sigma) and 6 pose
  parameters under weak perspective (3 Euler angles, a 2D translation, a log scale), normalised so
  that ``r = 0`` is the centred, frontal mean face (:class:`CoarseSpace`).
* **Renders** of ``r`` (:func:`render_view`): the grey-scale image (random reflectance and lighting),
  the z-buffered depth, the PNCC and the normal map (the feedback channels, Sec. 3.2.1).
* **CoarseNet** (Sec. 3.3, :class:`CoarseNet`): a small ResNet on the grey image masked by the visible
  region of the feedback plus the PNCC and normal map (7 channels) -> ``r``.  Trained on synthetic
  data with ``r_t = beta r_gt + (1 - beta) r_rnd`` (Eq. 3, :func:`feedback_state`, half of the states
  at the inference start ``r_t = 0``) to predict ``r_gt``
  (as ``r_t`` plus a correction, :func:`coarse_step`), with the GMSE (Eq. 4, :func:`gmse`) on the
  geometry plus an MSE on the pose weighted to equal initial error (:func:`train_coarsenets`); at test
  time it starts from ``r_0 = 0`` and is iterated (:func:`coarse_iterate`, Sec. 3.4).
* **The rendering layer** (Sec. 4.1, Eq. 5-7, :func:`rendering_layer`): ``r`` -> depth map with fixed
  barycentrics, so the gradient reaches the visible vertices weighted by their barycentric coordinates,
  none reaches hidden vertices, and Eq. 5 carries it to ``alpha`` and the pose.
* **FineNet** (Sec. 4.2, :class:`FineNet`): a hypercolumn network (a VGG-style trunk truncated before
  its third pooling, learned 2x2 stride-2 up-convolutions, 1x1 convolutions) from the image and the
  coarse depth to a depth residual; fully convolutional.
* **Unsupervised training** (Sec. 4.3-4.4): the shape-from-shading criterion of :mod:`facelib.coarse_fine.sfs`
  with the 10-component texture subspace seen through the coarse depth (:func:`texture_maps`);
  :func:`train_finenet` trains FineNet on CoarseNet's output and :func:`train_end_to_end` fine-tunes
  CoarseNet through the rendering layer with a fidelity term to its original output.
* **Evaluation** (Table 1, :func:`depth_errors`): depth error, mean and 90th percentile in mm, on
  held-out faces with fine detail (:mod:`facelib.model.detail`) and their ground-truth depth maps; the
  geometry of the coefficients, raw and similarity-aligned (:func:`geometry_errors`), next to the
  mean face and the best a picture allows (:func:`geometry_references`).

The open model is procedural and our CPU is small, so the profiles of the book chapter use the first
components of the model only (the paper: 200 identity + 84 expression coefficients) and images of
48-200 pixels (the paper: 200).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..render.camera import image_hw, perspective_project, rigid_transform, rotate, weak_perspective_project
from ..model.detail import apply_detail, detail_displacement
from ..eval.metrics import similarity_align
from ..model.params import rot_xyz
from ..render.raster import Fragments, interpolate, rasterize
from ..render import depth_layer, normal_map, pncc_map
from ..render.shading import shade, vertex_normals
from ..nets import _branch, _join, _output, optimizer_step, restore_grad, takes_landmarks, unfreeze
from . import sfs

__all__ = [
    "CoarseSpace", "View", "POSE_NAMES", "POSE_UNITS", "POSE_PRIOR", "FRAME_MM", "N_TEXTURE", "P_START",
    "P_EXACT", "MASK_DILATE", "geometry_errors", "geometry_references", "pooled_rms",
    "render_view", "rendering_layer", "texture_maps", "sample_r", "sample_appearance",
    "feedback_state", "own_states", "coarse_input", "image_landmarks", "detected_landmarks", "landmark_feedback",
    "pretrain_branch", "pretrained_branch", "branch_iterate", "sfs_mask", "gmse", "coarse_loss", "CoarseNet", "FineNet",
    "coarse_inputs", "coarse_step", "train_coarsenets", "train_coarsenet", "coarse_iterate", "curve_eval", "now_error_mm",
    "make_faces", "finenet_data",
    "train_finenet", "finenet_refine", "finenet_curve_eval", "true_fit", "detail_correlation", "train_end_to_end", "depth_errors",
    "align_depth",
]

POSE_NAMES = ("pitch", "yaw", "roll", "t_x", "t_y", "log_scale")
# r's pose entries times these give (radians, radians, radians, fraction of the image, fraction of the
# image, log of the scale relative to FRAME_MM across the image): every entry is of order 1.
POSE_UNITS = (math.radians(30.0), math.radians(30.0), math.radians(30.0), 0.1, 0.1, 0.1)
# half-widths of the uniform pose prior, in the units above: pitch 15 deg, yaw 30 deg, roll 10 deg,
# translation 5 % of the image, scale +-8 %
POSE_PRIOR = (0.5, 1.0, 1.0 / 3.0, 0.5, 0.5, 0.8)
FRAME_MM = 230.0  # at r = 0 the image spans FRAME_MM millimetres (the mean face is 200 mm tall)
N_TEXTURE = 10  # texture components of the SfS albedo subspace (Sec. 4.3.1)
P_START = 0.25  # share of training feedback states drawn at r_rnd = 0 (r_t = beta r_gt)
# share of training feedback states that are the inference start itself, r_t = 0 exactly: the first pass
# at test time sees the feedback of the centred frontal mean face, which Eq. 3 draws with probability 0
# (issue 17: without these states the first pass does not learn; benchmarks/cf_experiments.py)
P_EXACT = 0.5
# the image mask of CoarseNet's input (coarse_input): None = no mask (measured best at our scale,
# benchmarks/cf_experiments.py); 0 = the feedback's face pixels exactly, as the paper
MASK_DILATE = None
# CoarseNet's training and test images show the whole head (forehead, scalp, sides), as the wild faces
# and photos do, and are taken by a camera 600 mm from the model origin, the book's face_camera that
# draws the wild faces (Eq. 2's weak perspective stays the representation and the feedback's projection).
# On the wild faces neither showed a gain over the weak-perspective face region that one or two training
# seeds can measure (benchmarks/cf_photos.py: the black frame of the old crop was the damage); both are
# kept as the pictures a photo gives.
HEAD = True
DISTANCE_MM = 600.0


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` RGB -> ``(...)`` grey, the mean of the channels (the images are grey, Sec. 3.3)."""
    return rgb.mean(-1)


# ------------------------------------------------------------------------------------- the space
@dataclass
class CoarseSpace:
    """The representation ``r`` of Sec. 3.1 over a face model (first components only).

    ``basis (K, V, 3)``: ``sigma_i b_i`` of the first ``n_shape`` identity then ``n_expression``
    expression components (mm per unit of r); ``faces (T, 3)``: the triangles of the face region
    (all three vertices in ``model.masks["face"]``), the only ones rendered; ``gram (K, K)``:
    ``A^T A / V_f`` over the face vertices, so that :func:`gmse` is a mean squared vertex error (mm^2);
    ``grey_mean (V,)``, ``grey_basis (N_r, V)``: the reflectance model (Eq. 3) in grey (the mean of R, G,
    B), the images' and the texture subspace's (Eq. 10) albedo.
    """

    model: object
    n_shape: int
    n_expression: int
    basis: torch.Tensor
    faces: torch.Tensor
    face_vertices: torch.Tensor
    gram: torch.Tensor
    grey_mean: torch.Tensor
    grey_basis: torch.Tensor

    @classmethod
    def from_model(cls, model, n_shape: int = 30, n_expression: int = 10) -> "CoarseSpace":
        if not (0 < n_shape <= model.n_shape and 0 <= n_expression <= model.n_expression):
            raise ValueError(f"n_shape={n_shape}, n_expression={n_expression}; the model has "
                             f"{model.n_shape} and {model.n_expression} components")
        A = torch.cat([model.shape_basis[:n_shape] * model.sigma_s[:n_shape, None, None],
                       model.expression_basis[:n_expression] * model.sigma_e[:n_expression, None, None]])
        face = model.masks["face"].to(model.device)
        faces = model.triangles[face[model.triangles].all(1)]
        Af = A[:, face].reshape(A.shape[0], -1).double()
        gram = (Af @ Af.T / int(face.sum())).to(A.dtype)
        grey_basis = _grey(model.albedo_basis * model.sigma_r[:, None, None])  # (N_r, V) per unit of theta_r
        return cls(model, n_shape, n_expression, A, faces, face, gram, _grey(model.mean_albedo), grey_basis)

    @property
    def n_geometry(self) -> int:
        return self.n_shape + self.n_expression

    @property
    def n_params(self) -> int:
        return self.n_geometry + 6

    @property
    def device(self) -> torch.device:
        return self.basis.device

    def split(self, r: torch.Tensor) -> tuple:
        """``r (B, K + 6)`` -> ``alpha (B, K)``, ``pose (B, 6)``."""
        if not isinstance(r, torch.Tensor) or r.ndim != 2 or r.shape[1] != self.n_params:
            got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"r has shape {got}; expected (B, {self.n_params}) = {self.n_geometry} "
                             "geometry coefficients + 6 pose parameters")
        return r[:, :self.n_geometry], r[:, self.n_geometry:]

    def geometry(self, alpha: torch.Tensor) -> torch.Tensor:
        """Eq. 1: ``S = mu_S + [A_id | A_exp] alpha``: ``(B, K)`` -> ``(B, V, 3)`` mm."""
        return self.model.mean_shape + torch.einsum("bk,kvc->bvc", alpha, self.basis.to(alpha.dtype))

    def camera(self, pose: torch.Tensor, image_size: int) -> tuple:
        """``pose (B, 6)`` -> ``R (B, 3, 3)``, ``t2d (B, 2)`` pixels, ``scale (B,)`` pixels per mm."""
        u = pose * torch.tensor(POSE_UNITS, dtype=pose.dtype, device=pose.device)
        R = rot_xyz(u[:, :3])
        t2d = u[:, 3:5] * torch.tensor([1.0, -1.0], dtype=pose.dtype, device=pose.device) * image_size
        return R, t2d, (image_size / FRAME_MM) * torch.exp(u[:, 5])

    def project(self, verts: torch.Tensor, pose: torch.Tensor, image_size: int,
                distance: float | None = None) -> torch.Tensor:
        """Eq. 2 / Eq. 5: model-space ``(B, V, 3)`` -> screen ``(B, V, 3)`` (x, y pixels; depth mm).

        ``distance`` (mm): instead a real camera that far from the model origin, with the same pose,
        and the same scale (pixels per mm) at the origin's depth: what a photo shows (the book's
        :func:`facelib.render.face_camera` stands 600 mm away, so the tip of the nose is drawn ~25 %
        larger than the plane of the ears).  None: the weak perspective of Eq. 2."""
        R, t2d, s = self.camera(pose, image_size)
        if distance is None:
            return weak_perspective_project(verts, R, t2d, s, image_size)
        if not (math.isfinite(distance) and distance > 0):
            raise ValueError(f"distance must be positive and finite (mm); got {distance!r}")
        q = rigid_transform(verts, R, torch.tensor([0.0, 0.0, -float(distance)], dtype=verts.dtype,
                                                   device=verts.device))
        H, W = image_hw(image_size)
        centre = torch.tensor([W / 2.0, H / 2.0], dtype=verts.dtype, device=verts.device) + t2d
        return perspective_project(q, s * distance, centre)

    def pixel_mm(self, r: torch.Tensor, image_size: int) -> torch.Tensor:
        """Size of a pixel in mm, ``(B,)``."""
        return 1.0 / self.camera(self.split(r)[1], image_size)[2]


# ------------------------------------------------------------------------------------- renders
class View(NamedTuple):
    """A render of ``r`` at ``H x W`` pixels.

    ``image (B, 1, H, W)`` grey in [0, 1] (None without an appearance); ``mask (B, H, W)`` face pixels;
    ``depth (B, H, W)`` mm (0 outside); ``pncc (B, 3, H, W)`` in [0, 1] and ``normal_map (B, 3, H, W)``
    in [-1, 1] (camera frame, x right, y up, z to the viewer), 0 outside; ``fragments``;
    ``pixel_mm (B,)``.  An image-only render (:func:`render_view` ``maps=False``) leaves the maps it did not
    draw None.
    """

    image: torch.Tensor | None
    mask: torch.Tensor
    depth: torch.Tensor
    pncc: torch.Tensor
    normal_map: torch.Tensor
    fragments: Fragments
    pixel_mm: torch.Tensor


def render_view(space: CoarseSpace, r: torch.Tensor, image_size: int, appearance: dict | None = None,
                displacement: torch.Tensor | None = None, background: torch.Tensor | float = 0.0,
                head: bool | None = None, distance: float | None = None, maps: bool = True) -> View:
    """Render ``r (B, K + 6)``: depth, PNCC and normal map (Sec. 3.2.1), and with ``appearance`` (from
    :func:`sample_appearance`: ``theta_r (B, N_r)``, monochrome ``gamma (B, 9)``) the grey image.

    ``displacement (B, V)`` mm adds fine detail along the normals (:func:`facelib.model.detail.apply_detail`).
    ``head``: the grey image shows the whole mesh (forehead, scalp, sides of the head), as a photo
    does, instead of the face region alone; the mask, depth, PNCC and normal map are the face region's
    either way (None: :data:`HEAD`).  ``distance`` (mm): the grey image is taken by a real camera that
    far away (:meth:`CoarseSpace.project`), as a photo is; the other maps stay in Eq. 2's weak
    perspective, the representation's own.  No gradients (the training-data and feedback renders;
    :func:`rendering_layer` is the differentiable one).  ``maps=False`` (with an ``appearance``): only the
    grey image is wanted (CoarseNet's training pictures); the PNCC and normal map are not drawn, nor, where
    the image has a raster of its own (``head`` or ``distance``), the face region's mask, depth and
    fragments (those fields None; the image is the same to the bit).
    """
    if not maps and appearance is None:
        raise ValueError("maps=False leaves only the grey image; give an appearance")
    with torch.no_grad():
        alpha, pose = space.split(r)
        verts = space.geometry(alpha)
        tri = space.model.triangles
        if displacement is not None:
            verts = apply_detail(verts, tri, displacement.to(verts.dtype))
        R = space.camera(pose, image_size)[0]
        head = HEAD if head is None else head
        region = maps or not (head or distance is not None)  # the face region's raster is wanted
        screen = space.project(verts, pose, image_size) if region or distance is None else None
        frags = mask = depth = nmap = pncc = None
        if region:
            frags = rasterize(screen, space.faces, image_size, perspective_correct=False, cull_backfaces=True)
            mask = frags.pix_to_face[..., 0] >= 0
        normals = rotate(vertex_normals(verts, tri), R)  # camera frame
        if maps:
            nmap = normal_map(space.model, frags, normals, space.faces)
            pncc = pncc_map(space.model, frags, space.faces)
        if frags is not None:
            depth = torch.where(mask, frags.zbuf[..., 0], torch.zeros_like(frags.zbuf[..., 0]))
        image = None
        if appearance is not None:
            theta_r = appearance["theta_r"].to(verts.dtype)
            albedo = space.grey_mean + theta_r @ space.grey_basis[:theta_r.shape[1]]  # Eq. 3, grey (B, V)
            # Eq. 5 with monochrome light (9 SH, camera frame): the grey of the colour is grey albedo x irradiance
            grey_v = shade(albedo[..., None].expand(-1, -1, 3).contiguous(), normals,
                           appearance["gamma"].to(verts.dtype))
            f_img, drawn = frags, mask
            if head or distance is not None:
                s_img = screen if distance is None else space.project(verts, pose, image_size, distance)
                f_img = rasterize(s_img, tri if head else space.faces, image_size, perspective_correct=False,
                                  cull_backfaces=True)
                drawn = f_img.pix_to_face[..., 0] >= 0
            grey = interpolate(grey_v[..., :1], f_img, tri if head else space.faces)[..., 0, 0]
            bg = torch.as_tensor(background, dtype=grey.dtype, device=grey.device).reshape(-1, 1, 1)
            image = torch.where(drawn, grey, bg.expand_as(grey)).clamp(0.0, 1.0)[:, None]
        return View(image, mask, depth, pncc, nmap, frags,
                    space.pixel_mm(r, image_size))


def rendering_layer(space: CoarseSpace, r: torch.Tensor, image_size: int) -> tuple:
    """The rendering layer (Sec. 4.1): ``r (B, K + 6)`` -> ``depth (B, H, W)`` mm (0 outside), ``mask``,
    ``fragments``; differentiable in ``r``.

    Eq. 5 places the mesh (weak perspective, depth in mm); a z-buffer picks the nearest triangle per
    pixel; Eq. 6 interpolates the vertex depths with barycentrics that are held fixed (Eq. 7,
    :func:`facelib.render.depth_layer` with back faces culled), so the gradient reaches only the
    vertices of visible triangles, weighted by their barycentric coordinates, and from them ``r``
    through Eq. 5.
    """
    alpha, pose = space.split(r)
    return depth_layer(space.project(space.geometry(alpha), pose, image_size), space.faces, image_size,
                       cull_backfaces=True)


def texture_maps(space: CoarseSpace, fragments: Fragments, n_texture: int = N_TEXTURE) -> tuple:
    """The texture subspace of Eq. 10 seen through ``fragments`` (grey): ``mu_T (B, H, W)``,
    ``A_T (B, n_texture, H, W)`` (the components times their sigma)."""
    with torch.no_grad():
        comps = torch.cat([space.grey_mean[None], space.grey_basis[:n_texture]]).T  # (V, 1 + n_texture)
        maps = interpolate(comps.to(fragments.bary_coords.dtype).contiguous(), fragments, space.faces)[..., 0, :]
    return maps[..., 0], maps[..., 1:].permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------- sampling
def _gen(seed) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def _detector_gen(g: torch.Generator) -> torch.Generator:
    """A generator of its own for the detector noise of a loop seeded by ``g``: the faces and feedback
    states the loop draws from ``g`` stay the same whether or not a network reads the landmarks."""
    return torch.Generator().manual_seed((g.initial_seed() * 1_000_003 + 68) % 2 ** 63)


def sample_r(space: CoarseSpace, batch: int, seed, expression_scale: float = 0.5) -> torch.Tensor:
    """Random ``r_gt (B, K + 6)``: identity ~ N(0, 1); expression j ~ U(-c r_j, c r_j) with the model's
    ``expression_range`` r_j and ``c = expression_scale``; pose ~ U(-POSE_PRIOR, POSE_PRIOR)."""
    g = _gen(seed)
    ids = torch.randn(batch, space.n_shape, generator=g, dtype=torch.float64)
    rng = space.model.expression_range[:space.n_expression].double().cpu() * expression_scale
    exp = (torch.rand(batch, space.n_expression, generator=g, dtype=torch.float64) * 2 - 1) * rng
    half = torch.tensor(POSE_PRIOR, dtype=torch.float64)
    pose = (torch.rand(batch, 6, generator=g, dtype=torch.float64) * 2 - 1) * half
    return torch.cat([ids, exp, pose], 1).to(device=space.device, dtype=space.basis.dtype)


def sample_appearance(space: CoarseSpace, batch: int, seed) -> dict:
    """Random texture and lighting: ``theta_r (B, N_r) ~ N(0, 1)``; monochrome second-order SH
    ``gamma (B, 9)`` as InverseFaceNet Sec. 5 (gamma_1 ~ U(0.6, 1.2), the others ~ U(-0.2, 0.2)), the
    band-1 (directional) terms ~ U(-0.4, 0.4) so that the shading shows the shape; a background grey
    level ``(B,)`` ~ U(0, 0.6)."""
    g = _gen(seed)
    m = space.model
    theta_r = torch.randn(batch, m.n_reflectance, generator=g, dtype=torch.float64)
    gamma = (torch.rand(batch, 9, generator=g, dtype=torch.float64) * 2 - 1) * 0.2
    gamma[:, 0] = 0.6 + 0.6 * torch.rand(batch, generator=g, dtype=torch.float64)
    gamma[:, 1:4] *= 2.0
    bg = 0.6 * torch.rand(batch, generator=g, dtype=torch.float64)
    to = dict(device=space.device, dtype=space.basis.dtype)
    return dict(theta_r=theta_r.to(**to), gamma=gamma.to(**to), background=bg.to(**to))


def feedback_state(space: CoarseSpace, r_gt: torch.Tensor, seed, p_exact: float = P_EXACT,
                   p_start: float = P_START) -> torch.Tensor:
    """Eq. 3: ``r_t = beta r_gt + (1 - beta) r_rnd``, ``beta ~ U(0, 1)``, ``r_rnd`` from the prior;
    for a share ``p_exact`` of the samples ``r_t = 0`` (the inference start ``r_0`` itself, the first
    pass's input) and for a share ``p_start`` of the others ``r_rnd = 0`` (``r_t = beta r_gt``, on the
    way from the start to the truth).  ``r_gt (B, P)`` -> ``r_t (B, P)``."""
    if not (0 <= p_exact <= 1 and 0 <= p_start <= 1):
        raise ValueError(f"p_exact={p_exact}, p_start={p_start}: shares must lie in [0, 1]")
    g = _gen(seed)
    B = r_gt.shape[0]
    r_rnd = sample_r(space, B, g)
    u = torch.rand(B, generator=g, dtype=torch.float64)
    exact = u < p_exact
    start = (u - p_exact) < p_start * (1 - p_exact)  # a share p_start of the rest (and the exact ones)
    r_rnd[start.to(r_rnd.device)] = 0.0
    beta = torch.rand(B, 1, generator=g, dtype=torch.float64).to(r_gt)
    beta[exact.to(beta.device)] = 0.0
    return beta * r_gt + (1 - beta) * r_rnd  # Eq. 3


def coarse_input(image: torch.Tensor, feedback: View, mask_dilate: float | None = MASK_DILATE) -> torch.Tensor:
    """CoarseNet's input ``(B, 7, H, W)``: the grey image masked by the visible region of the feedback
    (Sec. 3.4), centred, then the PNCC and the normal map (Sec. 3.2.1).

    ``mask_dilate``: 0 masks the image by the feedback's face pixels exactly (the paper); ``d > 0``
    by that region grown by ``round(d W)`` pixels; None does not mask the image.  At 48 pixels the exact
    mask of the first pass (the mean face) cuts off the face's outline, the strongest cue for pose and
    shape at that size, and CoarseNet learns no shape (:data:`MASK_DILATE`)."""
    m = feedback.mask[:, None].to(image.dtype)
    if mask_dilate is None:
        mi = torch.ones_like(m)
    elif mask_dilate < 0:
        raise ValueError(f"mask_dilate must be >= 0 or None; got {mask_dilate}")
    else:
        k = int(round(mask_dilate * image.shape[-1]))
        mi = F.max_pool2d(m, 2 * k + 1, 1, k) if k else m
    return torch.cat([(image - 0.5) * mi, feedback.pncc * 2 - m, feedback.normal_map], 1)


def image_landmarks(space: CoarseSpace, r: torch.Tensor, image_size: int,
                    distance: float | None = DISTANCE_MM) -> torch.Tensor:
    """The 68 landmarks of faces ``r (B, K + 6)`` as their picture shows them: ``(B, 68, 2)`` pixels of the
    ``image_size`` image, drawn by the camera of the pictures (:meth:`CoarseSpace.project`; ``distance``
    as :func:`make_faces`: by default :data:`DISTANCE_MM`, a photo's)."""
    alpha, pose = space.split(r)
    lmk = space.model.landmarks
    verts = space.model.mean_shape[lmk] + torch.einsum("bk,kvc->bvc", alpha, space.basis[:, lmk].to(alpha.dtype))
    return space.project(verts, pose, image_size, distance)[..., :2]  # Eq. 1 at the 68 points only


def detected_landmarks(space: CoarseSpace, r_gt: torch.Tensor, image_size: int, seed, noise: float | None = None,
                       distance: float | None = DISTANCE_MM) -> torch.Tensor:
    """What a landmark detector finds in the pictures of faces ``r_gt (B, K + 6)``: :func:`image_landmarks`
    moved by detector noise (:func:`facelib.data.wild.detector_noise`, ``noise`` of the landmark box's side,
    default the wild set's), drawn from ``seed``.  ``(B, 68, 2)`` pixels."""
    from ..data.wild import WILD, detector_noise

    with torch.no_grad():
        lm = image_landmarks(space, r_gt, image_size, distance)
        noise = WILD["landmark_noise"] if noise is None else float(noise)
        return detector_noise(lm.double().cpu(), noise, _gen(seed)).to(lm)


def landmark_feedback(space: CoarseSpace, landmarks: torch.Tensor, r_t: torch.Tensor, image_size: int) -> torch.Tensor:
    """CoarseNet's landmark input ``(B, 272)``: the detected landmarks ``landmarks (B, 68, 2)`` (pixels of
    the ``image_size`` input) and the feedback's, those of the current estimate ``r_t (B, K + 6)`` drawn by
    the same camera (:func:`image_landmarks`), as their difference ``feedback - detected``; both relative
    to the detected landmarks' box (centred on it, divided by its longer side, as
    :func:`facelib.data.corpus.landmark_features`).  The landmark counterpart of the rendered feedback
    (Sec. 3.2.1): what the image shows, and where the estimate puts it.  Not in the paper."""
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2) or landmarks.shape[0] != r_t.shape[0]:
        raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected ({r_t.shape[0]}, 68, 2) pixels "
                         "of the input image")
    with torch.no_grad():
        lm = landmarks.to(r_t)
        fb = image_landmarks(space, r_t, image_size)
        lo, hi = lm.min(1).values, lm.max(1).values
        centre, side = (lo + hi)[:, None] / 2, (hi - lo).max(-1).values.clamp_min(1e-6)[:, None, None]
        return torch.cat([((lm - centre) / side).flatten(1), ((fb - lm) / side).flatten(1)], 1).float()


# ------------------------------------------------------------------------------------- losses
def gmse(alpha_hat: torch.Tensor, alpha: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``|| [A_id | A_exp] (alpha_hat - alpha) ||^2`` per vertex of the face, ``(B,)`` mm^2.

    ``gram = A^T A / V_f`` (:attr:`CoarseSpace.gram`) makes it exact without building the meshes.
    """
    d = alpha_hat - alpha
    return ((d @ gram.to(d.dtype)) * d).sum(1)


def geometry_errors(space: CoarseSpace, alpha_hat: torch.Tensor, alpha: torch.Tensor) -> dict:
    """Geometric error of the estimated coefficients ``alpha_hat (B, K)`` against ``alpha (B, K)`` over
    the face vertices, two ways, each ``(B,)`` mm:

    * ``rmse_mm``: the RMS vertex distance, ``sqrt`` of the GMSE (Eq. 4, :func:`gmse`);
    * ``aligned_mm``: the same after the similarity transform (scale, rotation, translation) that
      best maps the estimate onto the truth (:func:`facelib.eval.metrics.similarity_align`), as NoW-style
      benchmarks measure.  Under weak perspective (Eq. 2) a uniformly larger head and a larger camera
      scale give the same image, so the head's size cannot be read from the picture; the open model's
      first identity component is mostly that size (:func:`facelib.inversefacenet.size_share`).
    """
    fv = space.face_vertices
    S_hat, S = space.geometry(alpha_hat)[:, fv], space.geometry(alpha)[:, fv]
    aligned = similarity_align(S_hat.double(), S.double())[0]
    return {"rmse_mm": gmse(alpha_hat, alpha, space.gram).clamp_min(0).sqrt(),
            "aligned_mm": (aligned - S.double()).square().sum(-1).mean(1).sqrt().to(alpha.dtype)}


def pooled_rms(errors: dict) -> dict:
    """Per-face errors ``{name: (B,)}`` (:func:`geometry_errors`) -> ``{name: float}``, the RMS over
    the faces (the square root of the mean squared vertex error over all faces' vertices)."""
    return {k: float(v.square().mean().sqrt()) for k, v in errors.items()}


def geometry_references(space: CoarseSpace, alpha: torch.Tensor) -> dict:
    """The reference rows of CoarseNet's tables for true coefficients ``alpha (B, K)``:
    ``"mean face"`` (``alpha_hat = 0``) and ``"true coefficients, mean head size"`` (the first identity
    coefficient, the head size no image shows, set to 0: about the best an estimate from the picture
    can score in ``rmse_mm``).  Returns ``{row: geometry_errors(...)}``."""
    size_free = alpha.clone()
    size_free[:, 0] = 0
    return {"mean face": geometry_errors(space, torch.zeros_like(alpha), alpha),
            "true coefficients, mean head size": geometry_errors(space, size_free, alpha)}


def coarse_loss(space: CoarseSpace, r_hat: torch.Tensor, r_gt: torch.Tensor, kind: str = "gmse",
                pose_weight: float = 1.0) -> tuple:
    """CoarseNet's criterion (Sec. 3.3): GMSE on the geometry (``kind="gmse"``; ``"mse"`` is the plain
    parameter MSE it is compared with) plus ``pose_weight`` times the MSE of the 6 pose parameters.
    Returns ``(loss (), geometry term (B,), pose term (B,))``."""
    a_hat, p_hat = space.split(r_hat)
    a, p = space.split(r_gt)
    if kind == "gmse":
        geo = gmse(a_hat, a, space.gram)
    elif kind == "mse":
        geo = ((a_hat - a) ** 2).mean(1)
    else:
        raise ValueError(f"kind must be 'gmse' or 'mse'; got {kind!r}")
    pose = ((p_hat - p) ** 2).mean(1)
    return (geo + pose_weight * pose).mean(), geo, pose


# ------------------------------------------------------------------------------------- networks
class _Block(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class CoarseNet(nn.Module):
    """CoarseNet (Sec. 3.3): a ResNet on ``(B, 7, N, N)`` (grey image + PNCC + normal map) -> ``(B, P)``,
    the correction to the current estimate ``r_t`` (:func:`coarse_step`).

    A 5x5 stride-2 stem, four stages of ``blocks`` basic blocks with ``width * (1, 2, 4, 8)`` channels
    (stride 2 from the second stage on), average pooling to a ``GRID x GRID`` map (not to one value per
    channel: where the face and its feedback lie is what the pose correction needs) and a linear layer
    whose small initial weights make the first correction close to 0 (:func:`coarse_step` adds it to
    the current estimate).  ``mask_dilate`` is the input's image mask (:func:`coarse_input`), kept with
    the network so that training and iterating use the same one.

    ``landmarks``: 68 gives the network a second input, the detected landmarks and the feedback's
    (:func:`landmark_feedback`), read by a :class:`facelib.nets.LandmarkBranch` of ``landmark_width``
    features whose features join the image's before the linear layer and whose own linear read-out adds
    to the correction (:func:`pretrain_branch` trains it on landmarks alone).  Not in the paper; 0: none.
    """

    GRID = 4

    def __init__(self, n_params: int, width: int = 16, blocks=(1, 1, 1, 1), in_channels: int = 7,
                 mask_dilate: float | None = MASK_DILATE, landmarks: int = 0, landmark_width: int = 256):
        super().__init__()
        if landmarks not in (0, 68):
            raise ValueError(f"landmarks must be 0 (none) or 68; got {landmarks!r}")
        self.n_landmarks = landmarks
        # the branch reads 2 x 68 points: the detected landmarks and the feedback's offsets from them
        self.landmark_branch, lw = _branch(2 * landmarks, landmark_width, n_params)
        self.mask_dilate = mask_dilate  # how its input image is masked (coarse_input), part of the net
        chans = [width * k for k in (1, 2, 4, 8)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 5, 2, 2, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, (c, n) in enumerate(zip(chans, blocks)):
            for j in range(n):
                layers.append(_Block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(self.GRID)
        self.fc = nn.Linear(cin * self.GRID ** 2 + lw, n_params)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, l: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, 7, N, N)`` (:func:`coarse_input`), with a landmark input also ``l (B, 272)``
        (:func:`landmark_feedback`) -> the correction ``(B, P)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (B, {self.in_channels}, N, N): "
                             "grey image, PNCC and normal map (coarse_input)")
        h, f = _join(self, self.pool(self.stages(self.stem(x))).flatten(1), l)
        return _output(self, self.fc(h), f)


def _vgg_block(cin: int, cout: int, n: int) -> nn.Sequential:
    layers = []
    for k in range(n):
        layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, 1, 1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FineNet(nn.Module):
    """FineNet (Sec. 4.2): a hypercolumn network ``(B, 2, H, W)`` (grey image, coarse depth) ->
    ``(B, 1, H, W)`` depth residual (mm); ``H`` and ``W`` any multiples of 4.

    The trunk is VGG's first three blocks (2, 2 and 3 convolutions of ``width * (1, 2, 4)`` channels;
    VGG-Face has ``width = 64``) truncated before the third pooling.  The block outputs at 1/2 and
    1/4 resolution go back to full resolution through cascaded learned 2x2 stride-2 up-convolutions,
    and are concatenated with the input and the first block into the hypercolumn (``2 + 7 width``
    channels: 450 at ``width = 64``, the paper's 200 x 200 x 450 volume); 1x1 convolutions (``head``
    channels, ReLU between them) regress the residual.  The last one starts at zero, so an untrained
    FineNet returns the coarse depth.
    """

    DEPTH_UNIT = 20.0  # mm: the coarse depth enters as (z0 - mean) / DEPTH_UNIT
    RESIDUAL_UNIT = 2.0  # mm per unit of the network's output

    def __init__(self, width: int = 16, head: int = 32):
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.block1, self.block2, self.block3 = _vgg_block(2, c1, 2), _vgg_block(c1, c2, 2), _vgg_block(c2, c3, 3)
        self.up2 = nn.ConvTranspose2d(c2, c2, 2, 2)
        self.up3 = nn.Sequential(nn.ConvTranspose2d(c3, c3, 2, 2), nn.ReLU(inplace=True),
                                 nn.ConvTranspose2d(c3, c3, 2, 2))
        self.head = nn.Sequential(nn.Conv2d(2 + c1 + c2 + c3, head, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(head, head, 1), nn.ReLU(inplace=True), nn.Conv2d(head, 1, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.hypercolumn_channels = 2 + c1 + c2 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (B, 2, H, W) with H, W multiples of 4")
        f1 = self.block1(x)
        f2 = self.block2(F.max_pool2d(f1, 2))
        f3 = self.block3(F.max_pool2d(f2, 2))  # truncated before the third pooling
        hyper = torch.cat([x, f1, self.up2(f2), self.up3(f3)], 1)
        return self.head(hyper)

    def refine(self, image: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``image (B, 1, H, W)`` in [0, 1], ``z0 (B, H, W)`` mm, ``mask (B, H, W)`` -> ``z_hat (B, H, W)``."""
        m = mask.to(z0.dtype)
        mean = (z0 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
        zin = (z0 - mean[:, None, None]) / self.DEPTH_UNIT * m
        x = torch.stack([(image[:, 0] - 0.5) * m, zin], 1)
        return z0 + self.RESIDUAL_UNIT * self(x)[:, 0] * m


# ------------------------------------------------------------------------------------- CoarseNet
def _progress(it, total, desc, progress):
    if not progress:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc=desc, leave=False)


def make_faces(space: CoarseSpace, batch: int, seed, image_size: int, detail_pool: torch.Tensor | None = None,
               detail_mm: float = 0.0, distance: float | None = DISTANCE_MM, head: bool | None = None,
               maps: bool = True) -> tuple:
    """Synthetic training or test faces: ``r_gt``, an appearance and (with ``detail_pool (P, V)`` or
    ``detail_mm > 0``) a fine-detail displacement; returns ``(r_gt, View with the image, displacement,
    appearance)``.  ``distance``: the camera of the image (:func:`render_view`): by default
    :data:`DISTANCE_MM`, a photo's perspective; None: Eq. 2's weak perspective, the world of the depth
    maps and of FineNet's shape from shading; ``head`` and ``maps`` as :func:`render_view` (``maps=False``: the
    image alone, as CoarseNet's training reads it)."""
    g = _gen(seed)
    r_gt = sample_r(space, batch, g)
    app = sample_appearance(space, batch, g)
    disp = None
    if detail_pool is not None:
        idx = torch.randint(0, detail_pool.shape[0], (batch,), generator=g)
        disp = detail_pool[idx.to(detail_pool.device)]
    elif detail_mm > 0:
        disp = detail_displacement(space.model, batch, int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g)),
                                   amplitude_mm=detail_mm, device=space.device, dtype=space.basis.dtype)
    view = render_view(space, r_gt, image_size, app, disp, app["background"], head=head, distance=distance, maps=maps)
    return r_gt, view, disp, app


def coarse_inputs(space: CoarseSpace, net: CoarseNet, image: torch.Tensor, r_t: torch.Tensor,
                  image_size: int | None = None, landmarks: torch.Tensor | None = None) -> tuple:
    """What one CoarseNet pass reads at the state ``r_t (B, K + 6)``: ``(x,)`` with ``x (B, 7, N, N)`` the
    image masked by the feedback of ``r_t``, its PNCC and normal map (:func:`coarse_input`), and for a
    network with a landmark input also :func:`landmark_feedback` of the detected ``landmarks (B, 68, 2)``
    (``(x, l)``, ``l (B, 272)``).  ``net(*coarse_inputs(...))`` is the correction of :func:`coarse_step`."""
    N = image_size or image.shape[-1]
    x = coarse_input(image, render_view(space, r_t.detach(), N), net.mask_dilate)
    if not takes_landmarks(net):
        return (x,)
    if landmarks is None:
        raise ValueError("this CoarseNet reads the detected landmarks as a second input; pass landmarks=(B, 68, 2)")
    return x, landmark_feedback(space, landmarks, r_t.detach(), N)


def coarse_step(space: CoarseSpace, net: CoarseNet, image: torch.Tensor, r_t: torch.Tensor,
                image_size: int | None = None, landmarks: torch.Tensor | None = None) -> torch.Tensor:
    """One CoarseNet pass: ``r_{t+1} = r_t + CoarseNet(I masked by the feedback of r_t, PNCC, normal
    map)``.  The network outputs the correction to its current estimate, as in the iterative error
    feedback of Carreira et al. that Sec. 3.2 follows; the sum is the prediction of ``r_gt``.
    ``image (B, 1, N, N)``, ``r_t (B, K + 6)`` -> ``(B, K + 6)``.  A network with a landmark input also
    reads the detected ``landmarks (B, 68, 2)`` (pixels of ``image``) against the feedback's
    (:func:`landmark_feedback`); a network without one ignores them (:func:`coarse_inputs`)."""
    return r_t + net(*coarse_inputs(space, net, image, r_t, image_size, landmarks))


@torch.no_grad()
def own_states(space: CoarseSpace, net: CoarseNet, image: torch.Tensor, r_t: torch.Tensor, index: torch.Tensor,
               passes: torch.Tensor, image_size: int | None = None, landmarks: torch.Tensor | None = None) -> torch.Tensor:
    """Feedback states from the network itself: ``r_t (B, P)`` with the rows ``index (n,)`` replaced by
    ``net``'s own estimate of their faces after ``passes (n,)`` passes (1 or more) from ``r_0 = 0``
    (:func:`coarse_iterate`'s passes, in eval mode; the net's mode is restored).  Pass ``j`` runs only on
    the rows that still need it.  ``image (B, 1, N, N)``, ``landmarks (B, 68, 2)`` for a net that reads
    them."""
    out = r_t.clone()
    if len(index) == 0:
        return out
    was_training = net.training
    net.eval()
    index, passes = index.to(r_t.device), passes.to(r_t.device)
    r = torch.zeros(len(index), space.n_params, dtype=image.dtype, device=image.device)
    try:
        for j in range(1, int(passes.max()) + 1):
            todo = (passes >= j).nonzero()[:, 0]  # the rows that want pass j
            rows = index[todo]
            r[todo] = coarse_step(space, net, image[rows], r[todo], image_size,
                                  None if landmarks is None else landmarks[rows])
            done = passes == j
            out[index[done]] = r[done].to(out)
    finally:  # the net's mode comes back even when a pass fails
        net.train(was_training)
    return out


def train_coarsenets(space: CoarseSpace, nets: dict, steps: int, batch: int, image_size: int, seed: int = 0,
                     lr: float = 1e-3, progress: bool = True, eval_fn=None, eval_every: int = 0,
                     p_exact: float = P_EXACT, distance: float | None = DISTANCE_MM,
                     head: bool | None = None, p_own: float = 0.0, own_passes: int = 3, workers: int = 1) -> dict:
    """Train CoarseNets on synthetic faces (Sec. 3.2.2): each step draws ``r_gt`` and renders it with a
    random appearance, draws a feedback state ``r_t`` (Eq. 3), renders its PNCC and normal map, and
    regresses ``r_gt`` (:func:`coarse_step`).  ``nets``: name -> ``(CoarseNet, kind)`` with ``kind``
    ``"gmse"`` or ``"mse"`` (:func:`coarse_loss`); they see the same faces and feedback, so their
    criteria are compared on equal data.  Each net's pose weight equalises its geometry and pose terms on
    the first batch (Sec. 3.3).  Adam, cosine-decayed learning rate.  Returns name -> history (per-step
    ``loss``, ``geometry`` (the GMSE, mm^2, whatever the criterion), ``pose``, ``pose_weight``).

    ``p_exact``: the share of feedback states at the inference start (:func:`feedback_state`).
    ``distance``, ``head``: how the training pictures are drawn (:func:`make_faces`).  Networks with a
    landmark input read the faces' :func:`detected_landmarks` (drawn only when one of ``nets`` has it).
    ``p_own``: the share of the states that are instead each network's own estimate after 1 to
    ``own_passes`` passes from ``r_0 = 0`` (:func:`own_states`; each network then has feedback of its own):
    the states the passes after the first meet at test time, which Eq. 3 only imitates.
    ``eval_fn(net) -> dict`` of numbers (held-out errors), called in eval mode every ``eval_every``
    steps and after the last, fills ``curve``: ``[{step, train_s, **eval_fn(net)}]`` per net, where
    ``train_s`` is the training time so far (all nets together, evaluation excluded) divided by the
    number of nets: a learning curve against training time.

    ``workers``: train the nets in that many groups side by side, one thread each
    (:func:`facelib._threads.run_in_threads`; nets ``i``, ``i + workers``, ... in group ``i``).  Every group
    draws the same faces, feedback states and landmarks, so each net is trained exactly as with
    ``workers=1``, to the bit, on a CPU with a core per group in about ``len(nets) / workers`` of the time
    (each group renders the faces itself); ``train_s`` is then its group's time per net.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}")
    if workers > 1 and len(nets) > 1:
        from .._threads import run_in_threads

        items = list(nets.items())
        groups = [dict(items[i::workers]) for i in range(min(workers, len(items)))]
        done = run_in_threads([functools.partial(train_coarsenets, space, group, steps, batch, image_size, seed, lr,
                                                  progress and i == 0, eval_fn, eval_every, p_exact, distance, head,
                                                  p_own, own_passes) for i, group in enumerate(groups)])
        merged = {k: h for d in done for k, h in d.items()}
        return {k: merged[k] for k in nets}
    g = _gen(seed)
    opts = {k: torch.optim.Adam(net.parameters(), lr=lr) for k, (net, _) in nets.items()}
    scheds = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, steps, eta_min=lr * 0.05) for k, o in opts.items()}
    hist = {k: dict(loss=[], geometry=[], pose=[], pose_weight=None, curve=[]) for k in nets}
    clock = 0.0

    def evaluate(step):
        for k, (net, _) in nets.items():
            net.eval()
            with torch.no_grad():
                hist[k]["curve"].append(dict(step=step, train_s=round(clock / len(nets), 2), **eval_fn(net)))
            net.train()

    for net, _ in nets.values():
        net.train()
    if eval_fn is not None:
        evaluate(0)
    read_landmarks = any(takes_landmarks(net) for net, _ in nets.values())
    g_lm = _detector_gen(g)
    g_own = torch.Generator().manual_seed((g.initial_seed() * 1_000_003 + 71) % 2 ** 63)
    for step in _progress(range(steps), steps, "CoarseNet", progress):
        t0 = time.perf_counter()
        r_gt, view, _, _ = make_faces(space, batch, g, image_size, distance=distance, head=head, maps=False)
        r_eq3 = feedback_state(space, r_gt, g, p_exact)
        lm = detected_landmarks(space, r_gt, image_size, g_lm, distance=distance) if read_landmarks else None
        own = None
        if p_own > 0:
            own = (torch.rand(batch, generator=g_own) < p_own).nonzero()[:, 0]
            passes = torch.randint(1, own_passes + 1, (len(own),), generator=g_own)
        xs, fb = {}, None
        for k, (net, kind) in nets.items():
            h = hist[k]
            if own is not None and len(own):  # its own estimates: feedback of its own
                r_t = own_states(space, net, view.image, r_eq3, own, passes, image_size, lm)
                x = coarse_input(view.image, render_view(space, r_t, image_size), net.mask_dilate)
            else:  # Eq. 3's states: the feedback rendered once for all nets
                r_t = r_eq3
                fb = render_view(space, r_t, image_size) if fb is None else fb
                if net.mask_dilate not in xs:
                    xs[net.mask_dilate] = coarse_input(view.image, fb, net.mask_dilate)
                x = xs[net.mask_dilate]
            r_hat = r_t + (net(x, landmark_feedback(space, lm, r_t, image_size)) if takes_landmarks(net) else net(x))
            if h["pose_weight"] is None:  # equal initial error for both criteria (Sec. 3.3)
                _, geo0, pose0 = coarse_loss(space, r_hat.detach(), r_gt, kind)
                h["pose_weight"] = float(geo0.mean() / pose0.mean().clamp_min(1e-12))
            loss, geo, pose = coarse_loss(space, r_hat, r_gt, kind, h["pose_weight"])
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            scheds[k].step()
            h["loss"].append(float(loss.detach()))
            h["geometry"].append(float(gmse(*(space.split(x_)[0] for x_ in (r_hat.detach(), r_gt)), space.gram).mean()))
            h["pose"].append(float(pose.detach().mean()))
        clock += time.perf_counter() - t0
        if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            evaluate(step + 1)
    for net, _ in nets.values():
        net.eval()
    return hist


def train_coarsenet(space: CoarseSpace, net: CoarseNet, steps: int, batch: int, image_size: int, seed: int = 0,
                    kind: str = "gmse", lr: float = 1e-3, progress: bool = True, eval_fn=None,
                    eval_every: int = 0, p_exact: float = P_EXACT, distance: float | None = DISTANCE_MM,
                    head: bool | None = None, p_own: float = 0.0, own_passes: int = 3) -> dict:
    """:func:`train_coarsenets` for one network; returns its history."""
    return train_coarsenets(space, {kind: (net, kind)}, steps, batch, image_size, seed, lr, progress, eval_fn,
                            eval_every, p_exact, distance, head, p_own, own_passes)[kind]


def pretrain_branch(space: CoarseSpace, net: CoarseNet, steps: int, batch: int, image_size: int, seed: int = 0,
                    lr: float = 1e-3, noise: float | None = None, p_exact: float = P_EXACT,
                    distance: float | None = DISTANCE_MM, progress: bool = True, p_own: float = 0.0,
                    own_passes: int = 3, spread: float = 1.0) -> dict:
    """Pre-train the landmark branch of CoarseNet ``net`` (its MLP and its read-out) on landmarks alone,
    before the network sees an image: every step draws ``batch`` faces ``r_gt`` from CoarseNet's prior
    (:func:`sample_r`) and feedback states ``r_t`` (Eq. 3, :func:`feedback_state`), their
    :func:`detected_landmarks` (no rendering: the 68 points projected, detector noise ``noise``) and the
    feedback's (:func:`landmark_feedback`), and regresses the correction ``r_gt - r_t`` with CoarseNet's
    criterion (:func:`coarse_loss`: GMSE plus the pose MSE weighted to equal initial error).  Adam, 5 %
    warm-up and cosine decay; seeded by ``seed``; the rest of ``net`` is not touched.  The cascade of
    supervised descent: each pass reads where the estimate's landmarks lie against the detected ones.
    ``p_own``: the share of the states that are instead the branch's own estimate after 1 to
    ``own_passes`` passes of it from ``r_0 = 0`` (as :func:`train_coarsenets`' ``p_own``).
    ``spread``: the faces' identity coefficients ``r_gt[:, :K_shape]`` times ``spread`` (1: :func:`sample_r`'s
    prior; 2: faces twice as far from the mean, as :func:`facelib.inversefacenet.pretrain_landmarks`' ``spread``;
    the feedback states are drawn around those faces as ever).
    Returns ``{"loss": [per step], "train_s": seconds}``."""
    from ..inversefacenet import lr_at

    if not takes_landmarks(net):
        raise ValueError("the network has no landmark input to pre-train (make it with landmarks=68)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 0:
        raise ValueError(f"spread must be a positive number; got {spread!r}")
    branch = net.landmark_branch
    g = _gen(seed)
    flags = unfreeze(branch)  # a branch frozen for CoarseNet's training is trained here all the same
    opt = torch.optim.Adam(branch.parameters(), lr=lr)
    losses, pose_weight, t0 = [], None, time.perf_counter()
    branch.train()
    for step in _progress(range(steps), steps, "landmark branch", progress):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, "cosine", 0.05)
        r_gt = sample_r(space, batch, g)
        if spread != 1.0:
            r_gt[:, :space.n_shape] *= spread
        r_t = feedback_state(space, r_gt, g, p_exact)
        lm = detected_landmarks(space, r_gt, image_size, g, noise, distance)
        if p_own > 0:  # a share of the states: the branch's own estimate after 1..own_passes passes
            own = (torch.rand(batch, generator=g) < p_own).nonzero()[:, 0]
            k = torch.randint(1, own_passes + 1, (len(own),), generator=g)
            rs = branch_iterate(space, branch, lm[own], own_passes, image_size)
            for j in range(1, own_passes + 1):
                r_t[own[k == j]] = rs[j][k == j]
        lf = landmark_feedback(space, lm, r_t, image_size)
        r_hat = r_t + branch.head(branch(lf.to(next(branch.parameters()).device))).to(r_t)
        if pose_weight is None:  # equal initial error for geometry and pose (Sec. 3.3)
            _, geo0, pose0 = coarse_loss(space, r_t, r_gt)
            pose_weight = float(geo0.mean() / pose0.mean().clamp_min(1e-12))
        losses.append(optimizer_step(opt, coarse_loss(space, r_hat, r_gt, "gmse", pose_weight)[0]))
    restore_grad(branch, flags)
    return {"loss": losses, "train_s": time.perf_counter() - t0}


@torch.no_grad()
def branch_iterate(space: CoarseSpace, branch: nn.Module, landmarks: torch.Tensor, passes: int,
                   image_size: int) -> list:
    """CoarseNet's landmark branch alone (``net.landmark_branch``, with its read-out ``branch.head``) applied
    iteratively from ``r_0 = 0``: ``r_{t+1} = r_t + head(branch(landmark_feedback(landmarks, r_t)))``.
    ``landmarks (B, 68, 2)`` pixels of an ``image_size`` picture.  Returns ``[r_0, ..., r_passes]``, each
    ``(B, K + 6)``."""
    r = torch.zeros(landmarks.shape[0], space.n_params, dtype=space.basis.dtype, device=space.device)
    rs = [r]
    for _ in range(passes):
        r = r + branch.head(branch(landmark_feedback(space, landmarks, r, image_size))).to(r)
        rs.append(r)
    return rs


def pretrained_branch(space: CoarseSpace, net: CoarseNet, steps: int, batch: int, image_size: int, seed: int,
                      progress: bool = True, p_own: float = 0.0, spread: float = 1.0) -> float:
    """:func:`pretrain_branch` shared through the cache (the branch does not depend on the image network
    around it): keyed by the face model, CoarseNet's space, the input size, the branch's shape, steps,
    batch, seed, share of own states ``p_own`` and ``spread`` where it is not 1
    (:func:`facelib.inversefacenet.pretrained_branch`).  Returns the seconds the pre-training took when it ran."""
    from ..inversefacenet import pretrained_branch as cached

    what = (f"coarsenet landmark branch, {space.n_shape}+{space.n_expression} coefficients, {image_size} px, "
            f"p_exact {P_EXACT}, distance {DISTANCE_MM}" + (f", own states {p_own}" if p_own else ""))
    return cached(space.model, net, steps, batch, seed, progress, what=what, spread=spread,
                  pretrain=lambda: pretrain_branch(space, net, steps, batch, image_size, seed, progress=progress,
                                                   p_own=p_own, spread=spread))


@torch.no_grad()
def coarse_iterate(space: CoarseSpace, net: CoarseNet, image: torch.Tensor, iterations: int,
                   image_size: int | None = None, step: float = 1.0, landmarks: torch.Tensor | None = None) -> list:
    """Sec. 3.4: ``r_0 = 0`` (the centred frontal mean face), then ``iterations`` passes of
    :func:`coarse_step`.  ``step`` < 1 damps each pass, ``r_{t+1} = r_t + step (f(I, r_t) - r_t)`` (at
    test time only; 1, the paper's, takes the network's whole correction).  ``landmarks (B, 68, 2)``:
    the detected landmarks, for a network that reads them (:func:`coarse_step`).  Returns
    ``[r_0, r_1, ..., r_T]``, each ``(B, K + 6)``."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1]; got {step!r}")
    r = torch.zeros(image.shape[0], space.n_params, dtype=image.dtype, device=image.device)
    out = [r]
    net.eval()
    for _ in range(iterations):
        new = coarse_step(space, net, image, r, image_size, landmarks)
        r = new if step == 1 else r + step * (new - r)
        out.append(r)
    return out


def curve_eval(space: CoarseSpace, image: torch.Tensor, alpha: torch.Tensor, iterations: int,
               image_size: int | None = None, landmarks: torch.Tensor | None = None):
    """A learning-curve probe for :func:`train_coarsenets`' ``eval_fn``: ``net ->`` the pooled geometric
    errors (:func:`pooled_rms` of :func:`geometry_errors`, mm) after ``iterations`` passes on held-out
    faces ``image (B, 1, N, N)`` with true coefficients ``alpha (B, K)`` (and their detected
    ``landmarks (B, 68, 2)``, for networks that read them)."""
    def probe(net):
        r_T = coarse_iterate(space, net, image, iterations, image_size, landmarks=landmarks)[-1]
        return pooled_rms(geometry_errors(space, space.split(r_T)[0], alpha))
    return probe


def now_error_mm(model, space: CoarseSpace, alpha: torch.Tensor, mesh_gt: torch.Tensor) -> torch.Tensor:
    """The book's shared NoW-style error ``(B,)`` mm (:func:`facelib.eval.compare.now_mm`) of the meshes of
    coefficients ``alpha (B, K)`` against the true meshes ``mesh_gt (B, V, 3)`` of ``model``."""
    from ..eval.compare import now_mm

    return now_mm(model, space.geometry(alpha), model.triangles, model.landmarks, mesh_gt)


# ------------------------------------------------------------------------------------- FineNet
def finenet_data(space: CoarseSpace, net: CoarseNet, n: int, batch: int, image_size: int, iterations: int,
                 seed, detail_pool: torch.Tensor | None = None, sizes=None, progress: bool = False) -> dict:
    """Detailed synthetic faces with CoarseNet's estimate (FineNet's training and test data).

    CoarseNet sees each face at ``image_size`` pixels (``iterations`` passes).  For each size in
    ``sizes`` (default ``(image_size,)``) the face is rendered again at that size (same identity,
    appearance and detail): the ``image``, the coarse depth ``z0`` of the rendering layer, its ``mask``,
    the texture maps ``mu_T``, ``A_T``, ``pixel_mm`` and the ground-truth ``depth_gt`` and ``mask_gt``
    of the detailed face, so FineNet can work at a finer grid than CoarseNet (the paper: 200 and 400).
    A CoarseNet with a landmark input reads the faces' :func:`detected_landmarks` (their noise drawn
    apart from the faces: the faces are the same for any CoarseNet).  Returns a dict keyed ``(name, size)`` plus ``r_gt``, ``r_coarse`` ``(n, P)``,
    ``r_iters (n, T + 1, P)``, ``coarse_image (n, 1, N, N)`` and ``landmarks (n, 68, 2)`` (pixels of the
    coarse image; what the detector found, or without a landmark input the exact ones).
    """
    g = _gen(seed)
    g_lm = _detector_gen(g)
    sizes = tuple(dict.fromkeys(sizes or (image_size,)))  # unique, in order
    keys = ("image", "z0", "mask", "mu_T", "A_T", "pixel_mm", "depth_gt", "mask_gt")
    out = {(k, s): [] for k in keys for s in sizes}
    out["r_gt"], out["r_coarse"], out["r_iters"], out["coarse_image"], out["landmarks"] = [], [], [], [], []
    for start in _progress(range(0, n, batch), -(-n // batch), "faces", progress):
        b = min(batch, n - start)
        r_gt, view, disp, app = make_faces(space, b, g, image_size, detail_pool)
        lm = detected_landmarks(space, r_gt, image_size, g_lm) if takes_landmarks(net) else image_landmarks(space, r_gt, image_size)
        rs = coarse_iterate(space, net, view.image, iterations, image_size, landmarks=lm)
        out["landmarks"].append(lm)
        out["r_gt"].append(r_gt)
        out["r_coarse"].append(rs[-1])
        out["r_iters"].append(torch.stack(rs, 1))
        out["coarse_image"].append(view.image)
        for s in sizes:  # FineNet's pictures in Eq. 2's projection, the world of its depth maps and E_sh
            v = render_view(space, r_gt, s, app, disp, app["background"])
            with torch.no_grad():
                z0, mask, frags = rendering_layer(space, rs[-1], s)
                mu, A = texture_maps(space, frags)
            for k, val in zip(keys, (v.image, z0, mask, mu, A, space.pixel_mm(rs[-1], s), v.depth, v.mask)):
                out[(k, s)].append(val)
    return {k: torch.cat(v) for k, v in out.items()}


def sfs_mask(mask: torch.Tensor) -> torch.Tensor:
    """The coarse face mask less its one-pixel rim (silhouette pixels mix face and background)."""
    return sfs.interior(mask)


def train_finenet(fine: FineNet, data: dict, size: int, steps: int, batch: int, seed: int = 0, lr: float = 1e-3,
                  lambdas: tuple = (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM), progress: bool = True,
                  criterion: dict | None = None, eval_fn=None, eval_every: int = 0) -> dict:
    """Train FineNet with the unsupervised criterion of Eq. 14 (``lambdas`` = ``(lambda_sh, lambda_f,
    lambda_sm)``; ``criterion``: further keywords of :func:`facelib.coarse_fine.sfs.sfs_loss`, e.g. ``sfs.PAPER``)
    on the ``size``-pixel faces of :func:`finenet_data`: no ground-truth depth is used.
    Returns the per-step history of ``loss``, ``E_sh``, ``E_f``, ``E_sm`` and ``train_s`` (the training's
    seconds, evaluations not counted); with ``eval_fn`` (``fine -> dict``, e.g. :func:`finenet_curve_eval`)
    also ``curve``: its values before training, every ``eval_every`` steps and at the end, each with
    ``step`` and ``train_s`` so far.  Every draw takes the generator of ``seed``, so FineNets trained side by
    side (:func:`facelib._threads.run_in_threads`, one thread each) are trained as they are one by one."""
    g = _gen(seed)
    opt = torch.optim.Adam(fine.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    n = data[("image", size)].shape[0]
    hist = {k: [] for k in ("loss", "E_sh", "E_f", "E_sm")}
    clock = 0.0

    def evaluate(step):
        fine.eval()
        hist.setdefault("curve", []).append(dict(step=step, train_s=round(clock, 2), **eval_fn(fine)))
        fine.train()

    fine.train()
    if eval_fn is not None:
        evaluate(0)
    for step in _progress(range(steps), steps, "FineNet", progress):
        t0 = time.perf_counter()
        i = torch.randint(0, n, (min(batch, n),), generator=g)
        d = {k: data[(k, size)][i] for k in ("image", "z0", "mask", "mu_T", "A_T", "pixel_mm")}
        mask = sfs_mask(d["mask"])
        z_hat = fine.refine(d["image"], d["z0"], d["mask"])
        out = sfs.sfs_loss(z_hat, d["z0"], d["image"][:, 0], d["mu_T"], d["A_T"], mask, d["pixel_mm"],
                           *lambdas, **(criterion or {}))
        loss = out["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        for k in ("loss", "E_sh", "E_f", "E_sm"):
            hist[k].append(float(out[k].detach().mean()))
        clock += time.perf_counter() - t0
        if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            evaluate(step + 1)
    fine.eval()
    hist["train_s"] = clock
    return hist


@torch.no_grad()
def finenet_refine(fine: FineNet, data: dict, size: int, batch: int = 16) -> torch.Tensor:
    """FineNet's depth ``(n, size, size)`` for every face of :func:`finenet_data` at ``size`` pixels."""
    fine.eval()
    img, z0, mask = data[("image", size)], data[("z0", size)], data[("mask", size)]
    return torch.cat([fine.refine(img[i:i + batch], z0[i:i + batch], mask[i:i + batch])
                      for i in range(0, img.shape[0], batch)])


def train_end_to_end(space: CoarseSpace, coarse: CoarseNet, fine: FineNet, steps: int, batch: int,
                     image_size: int, iterations: int, detail_pool: torch.Tensor | None, seed: int = 0,
                     lr: float = 1e-4, coarse_lr: float = 1e-5, lambda_fidelity: float = 1.0,
                     fine_size: int | None = None, progress: bool = True,
                     lambdas: tuple = (sfs.LAMBDA_SH, sfs.LAMBDA_F, sfs.LAMBDA_SM), criterion: dict | None = None) -> dict:
    """End-to-end training (Sec. 4.4): CoarseNet (``iterations`` passes) -> rendering layer -> FineNet,
    the criterion of Eq. 14 on FineNet's output, plus ``lambda_fidelity`` times the MSE between
    CoarseNet's output and that of its original (frozen) copy.  The gradient reaches CoarseNet through
    the coarse depth (FineNet's input and ``E_f``) and the rendering layer (Eq. 7) (a CoarseNet with a
    landmark input reads the faces' :func:`detected_landmarks`); like an unrolled
    RNN the earlier passes only build the feedback, the last one is trained.  CoarseNet sees the faces at
    ``image_size`` pixels, the rendering layer and FineNet work at ``fine_size`` (default the same).
    CoarseNet's batch-norm statistics stay frozen.  ``lambdas``, ``criterion``: as :func:`train_finenet`.
    Returns the per-step history."""
    g = _gen(seed)
    g_lm = _detector_gen(g)
    original = copy.deepcopy(coarse).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([dict(params=fine.parameters(), lr=lr), dict(params=coarse.parameters(), lr=coarse_lr)])
    hist = {k: [] for k in ("loss", "E_sh", "E_f", "E_sm", "fidelity")}
    coarse.eval()
    fine.train()
    for _ in _progress(range(steps), steps, "end-to-end", progress):
        r_gt, view, disp, app = make_faces(space, batch, g, image_size, detail_pool)
        fs = fine_size or image_size
        image = render_view(space, r_gt, fs, app, disp, app["background"]).image  # FineNet's: Eq. 2's projection
        lm = detected_landmarks(space, r_gt, image_size, g_lm) if takes_landmarks(coarse) else None
        rs = coarse_iterate(space, coarse, view.image, iterations - 1, image_size, landmarks=lm)
        xs = coarse_inputs(space, coarse, view.image, rs[-1], image_size, lm)
        r = rs[-1] + coarse(*xs)  # the last pass (coarse_step), with gradients
        with torch.no_grad():
            r_orig = rs[-1] + original(*xs)
        z0, mask, frags = rendering_layer(space, r, fs)  # Eq. 5-7: differentiable in r
        mu, A = texture_maps(space, frags)
        z_hat = fine.refine(image, z0, mask)
        out = sfs.sfs_loss(z_hat, z0, image[:, 0], mu, A, sfs_mask(mask), space.pixel_mm(r.detach(), fs),
                           *lambdas, **(criterion or {}))
        fid = ((r - r_orig) ** 2).mean(1)
        loss = (out["loss"] + lambda_fidelity * fid).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k in ("loss", "E_sh", "E_f", "E_sm"):
            hist[k].append(float(out[k].detach().mean()))
        hist["fidelity"].append(float(fid.detach().mean()))
    fine.eval()
    return hist


# ------------------------------------------------------------------------------------- evaluation
def align_depth(depth: torch.Tensor, depth_gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Shift each depth map by the mean of ``depth_gt - depth`` over ``valid``: weak perspective has no
    depth translation, so depths agree only up to a constant."""
    m = valid.to(depth.dtype)
    off = ((depth_gt - depth) * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return depth + off[:, None, None]


def detail_correlation(z_fine: torch.Tensor, z0: torch.Tensor, depth_gt: torch.Tensor, z_fit: torch.Tensor,
                       valid: torch.Tensor) -> float:
    """Does the detail FineNet adds follow the true detail?  The correlation, over the ``valid`` pixels of
    all faces, of ``z_fine - z0`` (FineNet's depth minus its input) with ``depth_gt - z_fit`` (the ground
    truth minus the depth of the true coefficients, :func:`align_depth`-ed to it: the detail no model
    coefficient expresses).  All ``(B, H, W)``; ``valid`` where every map is defined.  0 where FineNet adds
    a constant (nothing: an untrained FineNet), where the correlation is undefined."""
    added = (z_fine - z0)[valid].double()
    if float(added.std()) == 0.0:
        return 0.0
    true = (depth_gt - align_depth(z_fit, depth_gt, valid))[valid].double()
    return float(torch.corrcoef(torch.stack([added, true]))[0, 1])


@torch.no_grad()
def true_fit(space: CoarseSpace, data: dict, size: int) -> tuple:
    """The fit of the true coefficients to the faces of :func:`finenet_data` ``data`` at ``size`` pixels
    (their depth through the rendering layer, no detail): ``z_fit (n, size, size)``, its mask ``m_fit`` and
    ``detail_pixels``, the pixels where CoarseNet's depth, the ground truth and the fit are all defined (where
    :func:`detail_correlation` compares the detail FineNet adds with the true detail)."""
    z_fit, m_fit, _ = rendering_layer(space, data["r_gt"], size)
    return z_fit, m_fit, data[("mask", size)] & data[("mask_gt", size)] & m_fit


def finenet_curve_eval(space: CoarseSpace, data: dict, size: int, batch: int = 16):
    """A held-out probe for :func:`train_finenet`'s ``eval_fn``: on the faces of :func:`finenet_data`
    ``data`` at ``size`` pixels, ``fine -> {"depth_mean_mm", "depth_p90_mm", "detail_r"}`` (Table 1's
    depth error of :func:`depth_errors` on CoarseNet's pixels, and :func:`detail_correlation`)."""
    z_fit, _, both = true_fit(space, data, size)
    z0, mask, gt, mask_gt = (data[(k, size)] for k in ("z0", "mask", "depth_gt", "mask_gt"))

    def probe(fine) -> dict:
        z = finenet_refine(fine, data, size, batch)
        e = depth_errors({"fine": z}, gt, mask_gt, {"coarse": mask})[0]
        return dict(depth_mean_mm=e["depth_mean_mm"], depth_p90_mm=e["depth_p90_mm"],
                    detail_r=detail_correlation(z, z0, gt, z_fit, both))
    return probe


def depth_errors(depths: dict, depth_gt: torch.Tensor, mask_gt: torch.Tensor, masks: dict,
                 q: float = 0.9) -> list:
    """Table 1: absolute depth error (mm), mean and ``q``-quantile, of each method in ``depths``
    (name -> ``(B, H, W)``) over the pixels valid for the ground truth and for every method (``masks``:
    name -> ``(B, H, W)``), after :func:`align_depth`; all pixels of all faces pooled.
    Returns ``[{name, depth_mean_mm, depth_p90_mm, pixels}]``."""
    valid = mask_gt.clone()
    for m in masks.values():
        valid &= m
    rows = []
    for name, d in depths.items():
        err = (align_depth(d, depth_gt, valid) - depth_gt).abs()[valid].double()
        rows.append(dict(name=name, depth_mean_mm=float(err.mean()), depth_p90_mm=float(torch.quantile(err, q)),
                         pixels=int(valid.sum())))
    return rows
