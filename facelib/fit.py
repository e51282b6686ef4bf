"""Fitting: analysis by synthesis of the full parameter vector to an image (optimisation, no network).

The optimisation-based reconstruction that InverseFaceNet (Sec. 8.2-8.3), MoFA and Tewari et al. 2018
compare against (Garrido et al. 2016, Thies et al. 2016) and that Richardson et al. run after
CoarseNet: the parameters themselves are the unknowns, and the energy compares a render of them
with the input image::

    E(theta) = w_lan E_lan + w_photo E_photo + w_reg E_prior

- ``E_lan`` (:func:`e_landmark`): the 68 landmarks, Tewari et al. 2018 Eq. 10, with the sliding jaw
  contour (:func:`facelib.mofa.selfsup.slide_contour`, re-chosen at every step);
- ``E_photo`` (:func:`e_photo_dense`): the l2,1 colour error of Tewari Eq. 9, taken per pixel of the
  rasterised face (the differentiable PyTorch path of :func:`facelib.render.render`) over the face mask;
- ``E_prior`` (:func:`e_prior`): the statistical prior of Eq. 11 (:func:`facelib.mofa.selfsup.e_std`).

Coarse to fine (:func:`fit`): first the pose alone on the landmarks, then pose, shape and expression
on the landmarks and the prior (no rasterisation: only the landmark and contour-candidate vertices,
milliseconds a step), then the SH light in closed form for the current face (:func:`init_illumination`,
robust least squares), then everything on the whole energy (about 0.15-0.2 s a step per face on our
CPU: the render and its backward pass over the 22.6k vertices).

Measured on synthetic faces (8 Sec. 5 faces, seed 11, 128 px, ``iters=(200, 80)``, one CPU thread):
the NoW-style error (:func:`facelib.eval.metrics.now_error`) of the fitted geometry is 1.23 mm against the
mean face's 2.74 mm (1.42 mm after stage 1 alone), at 20-25 s per face on our shared 2-core CPU (0.8 s
for stage 1).  ``w_reg = 0.01`` was the best of 0.002, 0.01, 0.03 and 0.1 for stage 1's geometry,
with exact landmarks and with 1.5 px of noise on them.

The unknowns are those of :func:`fit_layout`: the Eq. 1 vector plus a translation (mm, camera
frame), which moves the face in front of the renderer's camera (:func:`fit_camera`); start from the
mean face or from a network's estimate (``theta0``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from .render.camera import Camera
from .model.facemodel import N_LANDMARKS, FaceModel
from .model.params import N_ILLUMINATION, N_SH, ParamLayout, SEC5_SH_CONSTANT, rot_xyz
from .render.points import backface_visibility, inside_image, project_points, sample_image
from .render import Render, face_camera, render
from .mofa.selfsup import e_sparse, e_std, slide_contour
from .render.shading import sh_irradiance_basis, vertex_normals

__all__ = [
    "FitWeights",
    "FIT_WEIGHTS",
    "FitResult",
    "fit_layout",
    "to_fit_layout",
    "from_fit_layout",
    "fit_camera",
    "render_fit",
    "initial_theta",
    "init_illumination",
    "e_landmark",
    "e_photo_dense",
    "e_prior",
    "fit",
]

LANDMARK_UNIT = 100.0  # E_lan measures landmark errors in percent of the image height
AMBIENT = sum(SEC5_SH_CONSTANT) / 2  # start light: the Sec. 5 prior's mean ambient coefficient (0.9)


@dataclass(frozen=True)
class FitWeights:
    """Weights of the fitting energy: ``landmark`` (E_lan, errors in % of the image height), ``photo``
    (E_photo, RGB in [0, 1]), ``reg`` (E_prior, coefficients in units of sigma), and
    inside E_prior the relative weights of the expression (``expression``) and reflectance
    (``rstd``, Eq. 11's ``w_rstd``) coefficients against the shape coefficients."""

    landmark: float = 1.0
    photo: float = 20.0
    reg: float = 1e-2
    expression: float = 0.25
    rstd: float = 0.5

    def replace(self, **kw) -> "FitWeights":
        """A copy with some weights changed."""
        unknown = set(kw) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown fit weights {sorted(unknown)}; known: {sorted(asdict(self))}")
        return FitWeights(**{**asdict(self), **kw})


FIT_WEIGHTS = FitWeights()

# Adam's step per iteration at the start of a stage, in the units of each entry (then decayed to a
# tenth over the stage): radians, mm, units of sigma, SH coefficients.  Stage 1 (landmarks only, from
# the mean face) takes long steps in shape and expression; stage 2 refines.
STEP = {"rotation": 0.03, "translation": 5.0, "shape": 0.2, "expression": 0.2, "reflectance": 0.05,
        "illumination": 0.01}
STEP2 = {**STEP, "rotation": 0.01, "translation": 2.0, "shape": 0.05, "expression": 0.05}


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    ``theta (B, m)`` the fitted parameters in ``layout`` (:func:`fit_layout`); ``energy (T, B)`` the
    energy of the current stage at each of the T iterations (before that iteration's step);
    ``terms``: name -> ``(T, B)`` for ``landmark``, ``photo`` (nan in stage 1) and ``prior``, unweighted;
    ``stage (T,)`` int64, 1 or 2; ``seconds`` wall-clock time of the whole fit; ``trace``: with
    ``fit(trace_every=k)``, one ``(iteration, seconds, theta (B, m))`` every k iterations and at the end
    of each stage, ``theta`` what the fit would return if stopped there (each face's lowest-energy
    parameters of the current stage), ``seconds`` the fit's time up to then.
    """

    theta: torch.Tensor
    layout: ParamLayout
    energy: torch.Tensor
    terms: dict
    stage: torch.Tensor
    seconds: float
    trace: list = ()


# ---------------------------------------------------------------------------------- parameters
def fit_layout(model: FaceModel) -> ParamLayout:
    """The unknowns of the fit: rotation (3, rad), translation (3, mm, added to the camera's ``t``),
    shape, expression, reflectance, illumination (27): :meth:`ParamLayout.extended` without scale."""
    return ParamLayout.from_model(model, "extended", translation=True, scale=False)


def to_fit_layout(model: FaceModel, theta: torch.Tensor) -> torch.Tensor:
    """``theta (B, m)`` in the Eq. 1 layout (translation 0) or already in :func:`fit_layout` ->
    ``(B, m_fit)``.  ValueError for any other length."""
    lay, eq1 = fit_layout(model), ParamLayout.from_model(model)
    if not isinstance(theta, torch.Tensor) or theta.ndim != 2:
        got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"theta0 has shape {got}; expected (B, {eq1.size}) (Eq. 1 layout) or "
                         f"(B, {lay.size}) (facelib.fit.fit_layout)")
    if theta.shape[1] == lay.size:
        return theta
    if theta.shape[1] == eq1.size:
        return lay.pack(eq1.unpack(theta))
    raise ValueError(f"theta0 has {theta.shape[1]} entries per face; expected {eq1.size} (Eq. 1 layout "
                     f"of model {model.name!r}) or {lay.size} (facelib.fit.fit_layout)")


def from_fit_layout(model: FaceModel, theta: torch.Tensor) -> torch.Tensor:
    """``theta (B, m_fit)`` in :func:`fit_layout` -> ``(B, m)`` in the Eq. 1 layout (the translation left
    out: it is the camera's, :func:`fit_camera`); the inverse of :func:`to_fit_layout` up to it."""
    p, eq1 = fit_layout(model).unpack(theta), ParamLayout.from_model(model)
    return eq1.pack({k: p[k] for k in eq1.names})


def fit_camera(translation: torch.Tensor, image_size, camera: Camera | None = None) -> Camera:
    """The renderer's camera (default :func:`facelib.render.face_camera`) moved by a per-face
    ``translation (B, 3)`` mm: ``t = camera.t + translation`` ``(B, 3)`` (gradients flow to it)."""
    cam = camera or face_camera(image_size, device=translation.device, dtype=translation.dtype)
    return cam._replace(t=cam.t.to(translation) + translation)


def render_fit(model: FaceModel, theta: torch.Tensor, image_size, camera: Camera | None = None,
               **kwargs) -> Render:
    """:func:`facelib.render.render` of ``theta (B, m_fit)`` (:func:`fit_layout`): the Eq. 1 part through
    the renderer, the translation through :func:`fit_camera`.  ``kwargs`` go to ``render``."""
    lay = fit_layout(model)
    th = lay.check(theta)
    return render(model, from_fit_layout(model, th), image_size,
                  camera=fit_camera(lay.unpack(th)["translation"], image_size, camera), **kwargs)


def _pp(cam: Camera, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(cam.principal_point, dtype=ref.dtype, device=ref.device)


class _Sparse(NamedTuple):
    """The vertices the landmark term reads (the 68 landmarks and the jaw candidates), with their rows
    of Eq. 2 (bases scaled by sigma) and the landmark ids renumbered into the subset."""

    mean: torch.Tensor  # (K, 3)
    shape: torch.Tensor  # (N_s, K, 3)
    expression: torch.Tensor  # (N_e, K, 3)
    landmarks: torch.Tensor  # (68,)
    sliding: torch.Tensor  # (68,)
    candidates: torch.Tensor  # (17, L), -1 padded


def _sparse(model: FaceModel) -> _Sparse:
    cand = model.contour_candidates
    idx = torch.unique(torch.cat([model.landmarks, cand[cand >= 0]]))
    new = torch.full((model.n_vertices,), -1, dtype=torch.int64, device=idx.device)
    new[idx] = torch.arange(len(idx), device=idx.device)
    return _Sparse(model.mean_shape[idx], model.shape_basis[:, idx] * model.sigma_s[:, None, None],
                   model.expression_basis[:, idx] * model.sigma_e[:, None, None], new[model.landmarks],
                   model.landmark_sliding, torch.where(cand >= 0, new[cand.clamp_min(0)], cand))


def _sparse_geometry(sp: _Sparse, theta_s: torch.Tensor, theta_e: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for the vertices of ``sp`` only: ``(B, N_s)``, ``(B, N_e)`` -> ``(B, K, 3)`` mm."""
    return (sp.mean + torch.einsum("bn,nkc->bkc", theta_s, sp.shape)
            + torch.einsum("bn,nkc->bkc", theta_e, sp.expression))  # Eq. 2


def _project(model: FaceModel, p: dict, cam: Camera, verts: torch.Tensor | None = None):
    """Every vertex of the face ``p`` (unpacked :func:`fit_layout` parts), or ``verts (B, K, 3)``
    model-space points, through ``cam`` with the pose of :func:`render_fit`, without rasterising ->
    :class:`facelib.render.points.ProjectedPoints`."""
    v = model.geometry(p["shape"], p["expression"]) if verts is None else verts  # Eq. 2
    R = cam.R.to(v) @ rot_xyz(p["rotation"])  # Sec. 4.2, camera @ head
    return project_points(v, R, cam.t.to(v) + p["translation"], cam.focal, _pp(cam, v))


@torch.no_grad()
def initial_theta(model: FaceModel, landmarks: torch.Tensor, image_size, camera: Camera | None = None,
                  theta0: torch.Tensor | None = None) -> torch.Tensor:
    """The start of the fit ``(B, m_fit)``: ``theta0`` in the fit layout as it is, or the face of
    ``theta0`` in the Eq. 1 layout (e.g. a network's estimate, which has no translation) or the mean
    face under a grey ambient light, moved (translation only, in closed form) so that the centre and
    spread of its projected landmarks match ``landmarks (B, 68, 2)`` (pixels)."""
    lay = fit_layout(model)
    B = landmarks.shape[0]
    if theta0 is not None:
        th = to_fit_layout(model, theta0).to(landmarks).clone()
        if th.shape[0] != B:
            raise ValueError(f"theta0 has {th.shape[0]} faces but landmarks {B}")
        if theta0.shape[1] == lay.size:
            return th
    else:
        th = lay.zeros(B, device=landmarks.device, dtype=landmarks.dtype)
        th[:, lay["illumination"].start:lay["illumination"].start + 3] = AMBIENT  # gamma_1, RGB
    cam = face_camera(image_size, device=landmarks.device, dtype=landmarks.dtype) if camera is None else camera
    p = lay.unpack(th)
    v = model.geometry(p["shape"], p["expression"])[:, model.landmarks]
    tr = p["translation"]
    spread = landmarks.std(1).norm(dim=-1)  # size of the landmark cloud, pixels
    for _ in range(4):  # fixed point: depth from the size (size ~ 1 / depth), x and y from the centre
        q = _project(model, p, cam, v)
        depth = q.depth.mean(1)
        shift = landmarks.mean(1) - q.u.mean(1)
        tr[:, 0] += shift[:, 0] * depth / cam.focal
        tr[:, 1] -= shift[:, 1] * depth / cam.focal  # image y points down, camera y up
        tr[:, 2] -= depth * (q.u.std(1).norm(dim=-1) / spread - 1)  # farther when it looks too large
    return th


# ---------------------------------------------------------------------------------- energy terms
def e_landmark(f: torch.Tensor, u: torch.Tensor, v_cam: torch.Tensor, landmark_ids: torch.Tensor,
               sliding: torch.Tensor, candidates: torch.Tensor, focal, principal_point: torch.Tensor,
               image_height: int, confidence: torch.Tensor | None = None) -> torch.Tensor:
    """Tewari et al. 2018 Eq. 10 with the sliding contour: ``(1/68) sum_f ||f - u_{k_f}||^2``.

    ``f (B, 68, 2)`` detected landmarks in pixels; ``u (B, V, 2)`` projected and ``v_cam (B, V, 3)``
    camera-space vertices; ``landmark_ids (68,)``, ``sliding (68,)`` and ``candidates (17, K)`` as the
    model's ``landmarks``, ``landmark_sliding``, ``contour_candidates`` (indices into V).  The target
    vertex ``k_f`` of a jaw point is re-chosen on its ray (:func:`facelib.mofa.selfsup.slide_contour`).
    Errors in percent of ``image_height``; ``confidence (B, 68)`` weights the points (Eq. 10's ``c_f``,
    default 1).  -> ``(B,)``.
    """
    k = slide_contour(v_cam.detach(), f, focal, principal_point, landmark_ids, sliding, candidates)
    u_k = torch.gather(u, 1, k[..., None].expand(-1, -1, 2))
    return e_sparse(f, u_k, confidence, scale=LANDMARK_UNIT / image_height)  # Eq. 10


def e_photo_dense(image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Tewari et al. 2018 Eq. 9 per pixel: ``sum_p w_p ||I_render(p) - I(p)||_2 / sum_p w_p``.

    ``image`` and ``target`` ``(B, 3, H, W)`` in [0, 1], ``weight (B, H, W)`` (the face mask, 0 or 1)
    -> ``(B,)``; 0 for a face with an empty mask.
    """
    if image.shape != target.shape or weight.shape != image.shape[:1] + image.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)}, target {tuple(target.shape)} and weight "
                         f"{tuple(weight.shape)} must be (B, 3, H, W), (B, 3, H, W), (B, H, W)")
    d = ((image - target).square().sum(1) + 1e-10).sqrt()  # ||.||_2 per pixel (finite gradient at 0)
    w = weight.to(d.dtype)
    return (d * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)  # Eq. 9


def e_prior(theta_s: torch.Tensor, theta_e: torch.Tensor, theta_r: torch.Tensor,
            weights: FitWeights = FIT_WEIGHTS) -> torch.Tensor:
    """Tewari et al. 2018 Eq. 11 (:func:`facelib.mofa.selfsup.e_std`): ``||theta_s||^2 + w_e ||theta_e||^2 +
    w_rstd ||theta_r||^2`` (coefficients in units of sigma); ``(B, N_s)``, ``(B, N_e)``, ``(B, N_r)`` ->
    ``(B,)``."""
    return e_std(theta_s, theta_e * math.sqrt(weights.expression), theta_r, weights.rstd)  # Eq. 11


# ---------------------------------------------------------------------------------- light
@torch.no_grad()
def init_illumination(model: FaceModel, theta: torch.Tensor, image: torch.Tensor, image_size,
                      camera: Camera | None = None, ridge: float = 1e-4, irls: int = 3) -> torch.Tensor:
    """The SH light that best explains ``image (B, 3, H, W)`` for the face of ``theta (B, m_fit)``, in
    closed form: per colour channel, least squares of Eq. 5, ``I(u_i) = r_i sum_b gamma_b H_b(n_i)``,
    over the visible vertices of the face mask (in front in the z-buffer of a render of ``theta``),
    with a small ridge towards the current light and ``irls`` re-weightings of the residuals (an l1
    fit: occluders, hair and glasses in a photo are outliers).  Returns a copy of ``theta`` with the
    new illumination."""
    lay = fit_layout(model)
    p = lay.unpack(theta)
    cam = camera or face_camera(image_size, device=theta.device, dtype=theta.dtype)
    q = _project(model, p, cam)
    n = vertex_normals(q.v_cam, model.triangles)
    zbuf = render_fit(model, theta, image_size, cam, outputs="image").depth  # (B, H, W), 0 outside
    z = sample_image(zbuf[:, None], q.u, padding_mode="zeros")[..., 0]
    vis = (backface_visibility(n, q.v_cam) & inside_image(q.u, image_size)
           & model.masks["face"].to(theta.device) & (q.depth <= z + 2.0) & (z > 0))  # 2 mm: in front
    obs = sample_image(image.to(theta), q.u)  # (B, V, 3)
    H = sh_irradiance_basis(n)  # (B, V, 9)
    r = model.reflectance(p["reflectance"])  # Eq. 3
    gamma = p["illumination"].reshape(-1, N_SH, 3).clone()
    eye = torch.eye(N_SH, dtype=theta.dtype, device=theta.device)
    for b in range(theta.shape[0]):
        m = vis[b]
        if int(m.sum()) < 3 * N_SH:
            continue  # too few visible vertices: keep the light
        for c in range(3):
            A, y = r[b, m, c, None] * H[b, m], obs[b, m, c]  # (K, 9), (K,)
            w = torch.ones_like(y)
            lam = ridge * A.shape[0]
            for _ in range(irls + 1):
                Aw = A * w[:, None]
                g = torch.linalg.solve(Aw.T @ A + lam * eye, Aw.T @ y + lam * gamma[b, :, c])
                w = 1.0 / (A @ g - y).abs().clamp_min(0.01)  # IRLS weights of the l1 norm
                w = w / w.mean()
            gamma[b, :, c] = g
    out = theta.clone()
    out[:, lay["illumination"]] = gamma.reshape(-1, N_ILLUMINATION)
    return out


# ---------------------------------------------------------------------------------- the fit
def _check_inputs(model: FaceModel, image: torch.Tensor, landmarks: torch.Tensor, mask) -> None:
    if not isinstance(model, FaceModel):
        raise ValueError(f"model must be a FaceModel (facelib.load_model()); got {type(model).__name__}")
    if model.landmarks is None or model.landmark_sliding is None or model.contour_candidates is None:
        raise ValueError(f"face model {model.name!r} has no landmarks; fitting needs a model with the 68 "
                         "iBUG landmark vertices and contour candidates (e.g. 'open')")
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image has shape {got}; expected (B, 3, H, W) RGB in [0, 1]")
    if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
        raise ValueError(f"image must be a finite floating-point tensor in [0, 1]; got {image.dtype}")
    B = image.shape[0]
    if not isinstance(landmarks, torch.Tensor) or tuple(landmarks.shape) != (B, N_LANDMARKS, 2):
        got = tuple(landmarks.shape) if isinstance(landmarks, torch.Tensor) else type(landmarks).__name__
        raise ValueError(f"landmarks have shape {got}; expected ({B}, {N_LANDMARKS}, 2) pixel positions "
                         "(iBUG 68 order) for the image batch")
    if not bool(torch.isfinite(landmarks).all()):
        raise ValueError("landmarks contain NaN or infinite values")
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, *image.shape[2:])):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask has shape {got}; expected (B, H, W) = ({B}, {image.shape[2]}, {image.shape[3]})")


def _steps(lay: ParamLayout, names, ref: torch.Tensor, step: dict = STEP) -> torch.Tensor:
    """Per-entry step sizes ``(m,)``: ``step`` (:data:`STEP`, :data:`STEP2`) for the entries in
    ``names``, 0 for the others."""
    s = torch.zeros(lay.size, dtype=ref.dtype, device=ref.device)
    for n in names:
        s[lay[n]] = step[n]
    return s


def _stage(theta: torch.Tensor, steps: torch.Tensor, iters: int, energy_fn, log: list, stage: int, bar,
           tracer=None):
    """Adam on ``theta = theta_0 + steps * z`` (per-entry step sizes; Adam's step is ~1 in z), the
    learning rate decayed to a tenth over ``iters``; returns the theta of the lowest energy per face.
    ``tracer(best, last)``: called after each iteration with the lowest-energy theta so far."""
    z = torch.zeros_like(theta, requires_grad=True)
    opt = torch.optim.Adam([z], lr=1.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / max(iters, 1)))
    best, best_e = theta.detach().clone(), torch.full(theta.shape[:1], float("inf"), device=theta.device)
    for _ in range(iters):
        th = theta + steps * z
        e, terms = energy_fn(th)
        better = e.detach() < best_e
        best[better], best_e[better] = th.detach()[better], e.detach()[better]
        log.append((stage, e.detach(), {k: v.detach() for k, v in terms.items()}))
        opt.zero_grad(set_to_none=True)
        e.sum().backward()  # faces are independent problems: the sum keeps each one's scale
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(stage=stage, E=f"{float(e.detach().mean()):.4g}")
        if tracer is not None:
            tracer(best, _ == iters - 1)
    return best


def fit(model: FaceModel, image: torch.Tensor, landmarks: torch.Tensor, theta0: torch.Tensor | None = None,
        iters: tuple = (200, 80), weights: FitWeights = FIT_WEIGHTS, mask: torch.Tensor | None = None,
        camera: Camera | None = None, confidence: torch.Tensor | None = None, seed: int = 0,
        progress: bool = True, trace_every: int = 0) -> FitResult:
    """Fit the full parameter vector to one image or a batch, by analysis by synthesis.

    Stage 1 (``iters[0]`` Adam steps, no rasterisation): the first half moves rotation and translation
    alone on ``E_lan`` (the face of ``theta0``, or the mean face, held fixed), the second half also
    shape and expression on ``w_lan E_lan + w_reg E_prior``.  Then the light in closed form
    (:func:`init_illumination`).  Stage 2 (``iters[1]`` steps): every entry on ``w_lan E_lan +
    w_photo E_photo + w_reg E_prior``, each step rendering through the differentiable PyTorch path
    (``render(..., fused=False)``).  Each stage keeps, per face, the parameters of its lowest energy.

    Args:
        model: the face model (with landmarks, e.g. ``facelib.load_model("open")``).
        image: ``(B, 3, H, W)`` float RGB in [0, 1].
        landmarks: ``(B, 68, 2)`` iBUG landmarks in pixels of ``image`` (pixel centres at +0.5).
        theta0: start ``(B, m)`` in the Eq. 1 layout or :func:`fit_layout` (a network's estimate);
            default the mean face placed on the landmarks (:func:`initial_theta`).
        iters: ``(stage 1, stage 2)`` iterations, each >= 0.
        weights: :class:`FitWeights`.
        mask: ``(B, H, W)`` bool, the pixels of ``image`` that may be compared (default all); the
            photometric term uses the rendered face (the model's ``face`` mask without the mouth
            interior) within it.
        camera: the renderer's camera for ``(H, W)`` (default :func:`facelib.render.face_camera`).
        confidence: ``(68,)`` or ``(B, 68)`` weights of the landmarks in E_lan (default 1), e.g. less
            for a detector's jaw points, whose convention differs from the model's contour.
        seed: seeds PyTorch's generator for the fit (restored afterwards), so a fit repeats exactly.
        progress: show a tqdm bar.
        trace_every: > 0 records the parameters every ``trace_every`` iterations and at each stage's
            end (:class:`FitResult` ``trace``: error against fitting time); 0: no trace.
    Returns:
        :class:`FitResult` (``theta`` in :func:`fit_layout`, energy and terms per iteration).
    """
    import time

    from tqdm.auto import tqdm

    _check_inputs(model, image, landmarks, mask)
    if (not isinstance(iters, (tuple, list)) or len(iters) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in iters)):
        raise ValueError(f"iters must be (stage 1, stage 2) non-negative integers; got {iters!r}")
    if not isinstance(weights, FitWeights):
        raise ValueError(f"weights must be a FitWeights; got {type(weights).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    if isinstance(trace_every, bool) or not isinstance(trace_every, int) or trace_every < 0:
        raise ValueError(f"trace_every must be a non-negative integer; got {trace_every!r}")
    dtype, dev = model.mean_shape.dtype, model.mean_shape.device
    image, landmarks = image.to(dev, dtype), landmarks.to(dev, dtype)
    if confidence is not None:
        c = torch.as_tensor(confidence, dtype=dtype, device=dev)
        if c.shape not in ((N_LANDMARKS,), (image.shape[0], N_LANDMARKS)) or not bool(torch.isfinite(c).all()) \
                or bool((c < 0).any()):
            raise ValueError(f"confidence has shape {tuple(c.shape)}; expected ({N_LANDMARKS},) or "
                             f"({image.shape[0]}, {N_LANDMARKS}) finite non-negative weights")
        confidence = c.expand(image.shape[0], N_LANDMARKS)
    H, W = image.shape[2:]
    cam = camera or face_camera((H, W), device=dev, dtype=dtype)
    lay = fit_layout(model)
    face_tri = model.masks["face"][model.triangles].all(1)  # triangles of the face mask
    F = model.triangles.shape[0]
    t0 = time.perf_counter()
    log: list = []
    trace: list = []

    def tracer(best, stage_end):
        if trace_every and (len(log) % trace_every == 0 or stage_end):
            trace.append((len(log), time.perf_counter() - t0, best.detach().clone()))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = initial_theta(model, landmarks, (H, W), cam, theta0)
        if trace_every:
            trace.append((0, time.perf_counter() - t0, theta.detach().clone()))

        sp = _sparse(model)

        def energy_landmarks(th):  # stage 1: E_lan (+ the prior once shape and expression move)
            p = lay.unpack(th)
            q = _project(model, p, cam, _sparse_geometry(sp, p["shape"], p["expression"]))
            terms = {"landmark": e_landmark(landmarks, q.u, q.v_cam, sp.landmarks, sp.sliding, sp.candidates,
                                            cam.focal, _pp(cam, th), H, confidence),
                     "prior": e_prior(p["shape"], p["expression"], p["reflectance"], weights)}
            return weights.landmark * terms["landmark"] + weights.reg * terms["prior"], terms

        def energy_full(th):  # stage 2: E_lan + E_photo + E_prior through the renderer
            p = lay.unpack(th)
            r = render_fit(model, th, (H, W), cam, fused=False)
            terms = {"landmark": e_landmark(landmarks, r.screen[..., :2], r.verts_cam, model.landmarks,
                                            model.landmark_sliding, model.contour_candidates, cam.focal,
                                            _pp(cam, th), H, confidence)}
            pix = r.fragments.pix_to_face[..., 0]
            w = r.input_mask & face_tri[(pix % F).clamp_min(0)]
            if mask is not None:
                w = w & mask.to(dev, torch.bool)
            terms["photo"] = e_photo_dense(r.image, image, w)
            terms["prior"] = e_prior(p["shape"], p["expression"], p["reflectance"], weights)
            e = (weights.landmark * terms["landmark"] + weights.photo * terms["photo"]
                 + weights.reg * terms["prior"])
            return e, terms

        n1 = iters[0] // 2
        with tqdm(total=sum(iters), desc="fit", disable=not progress) as bar:
            theta = _stage(theta, _steps(lay, ("rotation", "translation"), theta), n1, energy_landmarks,
                           log, 1, bar, tracer)
            theta = _stage(theta, _steps(lay, ("rotation", "translation", "shape", "expression"), theta),
                           iters[0] - n1, energy_landmarks, log, 1, bar, tracer)
            theta = init_illumination(model, theta, image, (H, W), cam)
            theta = _stage(theta, _steps(lay, lay.names, theta, STEP2), iters[1], energy_full, log, 2, bar,
                           tracer)
    B = image.shape[0]
    nan = torch.full((B,), float("nan"), dtype=dtype, device=dev)
    energy = torch.stack([e for _, e, _ in log]) if log else torch.zeros(0, B)
    terms = {k: torch.stack([t.get(k, nan) for _, _, t in log]) if log else torch.zeros(0, B)
             for k in ("landmark", "photo", "prior")}
    stage = torch.tensor([s for s, _, _ in log], dtype=torch.int64)
    return FitResult(theta.detach(), lay, energy.cpu(), {k: v.cpu() for k, v in terms.items()}, stage,
                     time.perf_counter() - t0, trace)
