"""Data: a stand-in for in-the-wild photos (InverseFaceNet's corpus R, Sec. 7), with known ground truth.

Real photos cannot be downloaded here, so this module draws faces from a **separate, documented
distribution** that differs from the Sec. 5 prior the way photographs do, and renders them with the
things a 3DMM cannot explain.  It is never used to draw the Sec. 5 training corpus.

How it differs from Sec. 5 (:func:`sample_wild`):

* pose: near-frontal, pitch ~ N(0, 7 deg), yaw ~ N(0, 14 deg), roll ~ N(0, 4 deg) (clipped at
  +-25, +-40, +-12 deg) instead of U(-40, 40) / U(-15, 15);
* expression: sparse, not U(-r, r): most faces are near neutral with the mouth closed (mouth component near 0, not
  at the Sec. 5 bias), a few
  components are active at a time (Laplace-distributed), about one face in five has the mouth open;
* skin tone: three tone clusters on reflectance component 1 (+-0.45 around -1.4, 0.1, 1.3) and the
  other reflectance components shrunk to 0.7 sigma;
* light: coloured and directional: an ambient term plus a distant light from above-front, the
  lights' colours tinted warm or cool (all 27 SH numbers used), instead of monochrome U(0.6, 1.2).

What the model cannot express (:func:`wild_batch`): per-vertex geometric detail (wrinkles, folds,
dimples, :mod:`facelib.model.detail`) and painted albedo (beard stubble on ~40% of faces, darker brows,
moles, blotchy redness); the face is off-centre and at a random scale in the frame, over a cluttered
procedural background, with sensor noise, blur and JPEG artefacts; landmarks carry detector-like noise.
Everything is drawn from ``seed`` and the ground truth (parameters, mesh with detail, landmarks) is
returned, so reconstruction errors can be measured.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..render.camera import Camera
from .corpus import landmark_side
from ..model.detail import apply_detail, detail_displacement
from ..model.params import ParamLayout, _uniform
from ..render import face_camera, landmarks_2d, render
from ..render.shading import gamma_from_radiance, sh_basis

__all__ = ["sample_wild", "directional_sh", "wild_albedo", "wild_background", "degrade", "detector_noise",
           "wild_batch", "coarse_out_of_model", "WILD", "WILD_COARSE"]

# The distribution's constants in one place (documented in the module docstring and in the book).
WILD = dict(
    pitch_deg=7.0, yaw_deg=14.0, roll_deg=4.0, clip_deg=(25.0, 40.0, 12.0),
    expression_active=1.5,  # expected number of active (non-mouth) expression components
    expression_scale=0.25,  # Laplace scale of an active component, in units of its range r_j
    mouth_open_p=0.2,
    tones=(-1.4, 0.1, 1.3), tone_std=0.45, reflectance_std=0.7,
    ambient=(0.55, 0.85), light=(0.25, 0.6), tint_std=0.08,
    scale=(0.72, 0.95), shift=0.07,  # face scale in the frame, centre shift (fraction of the frame)
    beard_p=0.4, noise_std=(0.004, 0.025), blur_px=(0.0, 1.0), jpeg_quality=(35, 90),
    landmark_noise=0.012,  # detector noise, fraction of the face's landmark box side
    detail_mm=1.2,
)


def _gen(seed) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


_u = _uniform  # U(lo, hi) in float64 on the CPU, the samplers' one helper


def directional_sh(direction: torch.Tensor, strength: torch.Tensor, ambient: torch.Tensor,
                   colour: torch.Tensor) -> torch.Tensor:
    """SH illumination (our ``gamma`` convention, Eq. 4 with H_1 = 1) of a coloured ambient term plus a
    distant directional light: radiance ``L = s delta(w - d)`` projects to ``L_lm = s Y_lm(d)``.

    direction ``(B, 3)`` unit, camera space (+z towards the camera, +y up); strength ``(B,)``;
    ambient ``(B,)``; colour ``(B, 3)`` RGB multipliers.  Returns ``(B, 27)`` (coefficient-major, RGB
    last, as :func:`facelib.model.params.illumination_rgb`).
    """
    gamma = gamma_from_radiance(strength[:, None] * sh_basis(direction))  # (B, 9)
    gamma = gamma.clone()
    gamma[:, 0] = gamma[:, 0] + ambient
    return (gamma[:, :, None] * colour[:, None, :]).reshape(-1, 27)


def sample_wild(model, batch: int, seed: int, layout: ParamLayout | None = None) -> torch.Tensor:
    """Parameters ``(B, m)`` of the wild distribution (see the module docstring), in the Eq. 1 layout."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer; got {batch!r}")
    layout = layout or ParamLayout.from_model(model)
    g, B, w = _gen(seed), batch, WILD
    std = torch.tensor([w["pitch_deg"], w["yaw_deg"], w["roll_deg"]], dtype=torch.float64)
    clip = torch.tensor(w["clip_deg"], dtype=torch.float64)
    ang = (torch.randn(B, 3, generator=g, dtype=torch.float64) * std).clamp(-clip, clip)
    theta_s = torch.randn(B, model.n_shape, generator=g, dtype=torch.float64)
    # expression: sparse Laplace activations
    r = model.expression_range.detach().cpu().double()
    E = model.n_expression
    p_active = min(1.0, w["expression_active"] / max(E - 1, 1))
    active = torch.rand(B, E, generator=g, dtype=torch.float64) < p_active
    lap = torch.distributions.Laplace(0.0, 1.0).icdf(_u(g, (B, E), 1e-6, 1 - 1e-6))
    theta_e = (active * lap * w["expression_scale"] * r).clamp(-r, r)
    if E:
        mc = model.mouth_component
        opened = torch.rand(B, generator=g, dtype=torch.float64) < w["mouth_open_p"]
        closed = 0.03 * r[mc] * torch.randn(B, generator=g, dtype=torch.float64)  # 0 = neutral, closed
        open_ = _u(g, (B,), 0.3, 0.8) * r[mc]
        theta_e[:, mc] = torch.where(opened, open_, closed)
    # reflectance: skin tone clusters on component 1
    tones = torch.tensor(w["tones"], dtype=torch.float64)
    tone = tones[torch.randint(len(tones), (B,), generator=g)]
    theta_r = torch.randn(B, model.n_reflectance, generator=g, dtype=torch.float64) * w["reflectance_std"]
    if model.n_reflectance:
        theta_r[:, 0] = tone + w["tone_std"] * torch.randn(B, generator=g, dtype=torch.float64)
    # light: ambient + directional from above-front, tinted
    az = _u(g, (B,), -math.radians(60), math.radians(60))
    el = _u(g, (B,), math.radians(-10), math.radians(55))
    d = torch.stack([torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)], 1)
    colour = 1.0 + w["tint_std"] * torch.randn(B, 3, generator=g, dtype=torch.float64)
    theta_i = directional_sh(d, _u(g, (B,), *w["light"]), _u(g, (B,), *w["ambient"]), colour)
    theta = layout.pack({"rotation": torch.deg2rad(ang), "shape": theta_s, "expression": theta_e,
                         "reflectance": theta_r, "illumination": theta_i})
    return theta.to(device=model.device, dtype=torch.get_default_dtype())


def _smooth_noise(points: torch.Tensor, g: torch.Generator, B: int, wavelength: float, waves: int = 12):
    """Smooth random field on the vertices ``points (V, 3)`` (mm): a sum of random plane waves, ``(B, V)``
    roughly in [-1, 1]."""
    k = torch.randn(B, waves, 3, generator=g, dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True) * (2 * math.pi / wavelength)
    phase = _u(g, (B, waves, 1), 0, 2 * math.pi)
    return (torch.cos((k @ points.T + phase).float()).sum(1) / math.sqrt(waves / 2)).double()


def wild_albedo(model, albedo: torch.Tensor, seed: int) -> torch.Tensor:
    """Paint out-of-model detail into per-vertex albedo ``(B, V, 3)`` in [0, 1] -> ``(B, V, 3)``:
    beard stubble (``model.masks["beard"]``, ~40% of faces), darker brows (``"brow_hair"``), 0-4 moles
    and blotchy redness on the skin."""
    g, B, w = _gen(seed), albedo.shape[0], WILD
    P = model.mean_shape.detach().cpu().double()
    out = albedo.detach().cpu().double().clone()
    masks = {k: v.detach().cpu() for k, v in model.masks.items()}
    skin = masks.get("skin", masks.get("face")).double()
    # beard: dark brown stubble, dense fine noise, strength per face
    if "beard" in masks:
        has = (torch.rand(B, generator=g, dtype=torch.float64) < w["beard_p"]).double()
        dens = _u(g, (B, 1), 0.35, 0.8) * has[:, None]
        fine = (_smooth_noise(P, g, B, 2.5, 24) > 0.3).double() * 0.6 + 0.4 * (_smooth_noise(P, g, B, 14.0) > -0.5).double()
        a = (dens * fine * masks["beard"].double()).clamp(0, 1)[..., None]
        hair = torch.tensor([0.10, 0.07, 0.05], dtype=torch.float64)
        out = out * (1 - a) + hair * a
    if "brow_hair" in masks:
        s = _u(g, (B, 1, 1), 0.35, 0.7)
        out = torch.where(masks["brow_hair"][None, :, None], out * (1 - s), out)
    # redness: smooth field on the skin raising red, lowering green/blue
    red = (_smooth_noise(P, g, B, 40.0).clamp(0, 1) * _u(g, (B, 1), 0.0, 0.12))[..., None] * skin[None, :, None]
    out = out + red * torch.tensor([0.6, -0.5, -0.4], dtype=torch.float64)
    # moles: up to 4 small dark spots on the skin
    skin_idx = torch.nonzero(skin > 0).flatten()
    for b in range(B):
        n = int(torch.randint(0, 5, (1,), generator=g))
        if n == 0 or skin_idx.numel() == 0:
            continue
        centres = P[skin_idx[torch.randint(skin_idx.numel(), (n,), generator=g)]]
        dist = (P[:, None, :] - centres[None]).square().sum(-1).min(1).values.sqrt()
        spot = torch.exp(-0.5 * (dist / 1.3) ** 2)[:, None]
        out[b] = out[b] * (1 - 0.6 * spot)
    return out.clamp(0, 1).to(albedo)


def wild_background(batch: int, size: int, seed: int) -> torch.Tensor:
    """Cluttered procedural backgrounds ``(B, 3, H, W)`` in [0, 1]: a colour gradient, 10-20 random
    rectangles and ellipses, and low-frequency texture."""
    g, B = _gen(seed), batch
    H = W = size
    y = torch.linspace(0, 1, H)[:, None].expand(H, W)
    x = torch.linspace(0, 1, W)[None, :].expand(H, W)
    c0 = torch.rand(B, 3, 1, 1, generator=g, dtype=torch.float64).float()
    c1 = torch.rand(B, 3, 1, 1, generator=g, dtype=torch.float64).float()
    a = _u(g, (B, 1, 1, 1), 0, 2 * math.pi).float()
    t = (0.5 + 0.7 * (torch.cos(a) * (x - 0.5) + torch.sin(a) * (y - 0.5))).clamp(0, 1)
    img = c0 * (1 - t) + c1 * t
    for b in range(B):
        for _ in range(int(torch.randint(10, 21, (1,), generator=g))):
            cx, cy = torch.rand(2, generator=g, dtype=torch.float64).tolist()
            rx, ry = _u(g, (2,), 0.04, 0.3).tolist()
            col = torch.rand(3, 1, generator=g, dtype=torch.float64).float()
            rect = bool(torch.rand(1, generator=g) < 0.5)
            # paint only inside the shape's bounding box
            i0, i1 = max(0, int((cy - ry) * (H - 1))), min(H, int((cy + ry) * (H - 1)) + 2)
            j0, j1 = max(0, int((cx - rx) * (W - 1))), min(W, int((cx + rx) * (W - 1)) + 2)
            if i0 >= i1 or j0 >= j1:
                continue
            xs, ys = x[i0:i1, j0:j1], y[i0:i1, j0:j1]
            m = (((xs - cx).abs() < rx) & ((ys - cy).abs() < ry)) if rect else \
                (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1)
            img[b, :, i0:i1, j0:j1][:, m] = col.expand(3, int(m.sum()))
    tex = F.interpolate(torch.rand(B, 3, 8, 8, generator=g, dtype=torch.float64).float(), size=(H, W),
                        mode="bicubic", align_corners=False)
    return (img + 0.15 * (tex - 0.5)).clamp(0, 1)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(3, H, W)``."""
    if sigma < 0.2:
        return img
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=img.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(img.device)
    x = F.conv2d(F.pad(img[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of ``(3, H, W)`` in [0, 1] through Pillow at ``quality``."""
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).to(img) / 255.0


def degrade(image: torch.Tensor, seed: int, jpeg: bool = True, blur_px=None, noise_std=None,
            jpeg_quality=None) -> torch.Tensor:
    """Camera degradations of ``(B, 3, H, W)`` in [0, 1]: Gaussian blur (sigma ``U(blur_px)``, default
    0-1 px), sensor noise (std ``U(noise_std)``, default 0.004-0.025) and a JPEG round trip (quality
    ``U(jpeg_quality)``, default 35-90), each image drawn from ``seed``.  Returns the same shape."""
    g, w = _gen(seed), WILD
    blur_px, noise_std = blur_px or w["blur_px"], noise_std or w["noise_std"]
    jpeg_quality = jpeg_quality or w["jpeg_quality"]
    out = []
    for img in image:
        img = _gaussian_blur(img, float(_u(g, (1,), *blur_px)))
        img = (img + float(_u(g, (1,), *noise_std)) * torch.randn(img.shape, generator=g,
                                                                   dtype=torch.float64).to(img)).clamp(0, 1)
        q = int(torch.randint(jpeg_quality[0], jpeg_quality[1] + 1, (1,), generator=g))
        out.append(_jpeg(img, q) if jpeg else img)
    return torch.stack(out)


# Out-of-model content at the scale of centimetres (``wild_batch(out_of_model="coarse")``): smooth bumps
# and hollows of the skin (Gaussian-smooth random field, wavelength ~ geometry_scale_mm, up to
# geometry_mm along the normals) and coloured patches of reflectance (albedo, wavelength albedo_scale_mm),
# on top of the fine detail; what a corrective space on a template with a few millimetres between
# vertices can hold and the 3DMM cannot (Tewari et al. 2018, Sec. 7.2).
WILD_COARSE = dict(geometry_mm=2.0, geometry_scale_mm=40.0, albedo=0.08, albedo_scale_mm=45.0)


def detector_noise(landmarks: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Landmarks ``(B, K, 2)`` (pixels) moved as a landmark detector's would be: per point
    ``amount * side * (n + 0.5 c)``, where ``side`` is the longer side of the face's landmark box, ``n``
    a standard normal draw per point and coordinate and ``c`` one shared by all points of a face (a
    detector's common offset).  The draws are float64 from ``generator`` (so they do not depend on the
    landmarks' dtype); returns ``(B, K, 2)`` in the landmarks' dtype."""
    B, K = landmarks.shape[:2]
    side = landmark_side(landmarks)  # (B,)
    noise = torch.randn(B, K, 2, generator=generator, dtype=torch.float64).to(landmarks) \
        + 0.5 * torch.randn(B, 1, 2, generator=generator, dtype=torch.float64).to(landmarks)
    return landmarks + amount * side[:, None, None] * noise


def coarse_out_of_model(model, batch: int, seed: int, device=None, dtype=torch.float32) -> tuple:
    """Smooth out-of-model content (:data:`WILD_COARSE`), drawn from ``seed``: displacement ``(B, V)`` mm
    along the normals (restricted to the detail mask, :func:`facelib.model.detail.detail_mask`) and an
    additive albedo change ``(B, V, 3)`` on the skin."""
    from ..model.detail import detail_mask

    g, c = _gen(seed), WILD_COARSE
    P = model.mean_shape.detach().cpu().double()
    w = detail_mask(model)
    disp = c["geometry_mm"] * torch.tanh(_smooth_noise(P, g, batch, c["geometry_scale_mm"])) * w
    masks = {k: v.detach().cpu() for k, v in model.masks.items()}
    skin = masks.get("skin", masks.get("face")).double()
    colour = torch.randn(batch, 1, 3, generator=g, dtype=torch.float64)
    colour = colour / colour.norm(dim=-1, keepdim=True)
    dalb = c["albedo"] * torch.tanh(_smooth_noise(P, g, batch, c["albedo_scale_mm"]))[..., None] * colour
    dalb = dalb * skin[None, :, None]
    dev = device if device is not None else model.device
    return disp.to(device=dev, dtype=dtype), dalb.to(device=dev, dtype=dtype)


def wild_batch(model, batch: int, seed: int, size: int = 240, device=None, jpeg: bool = True,
               out_of_model: str = "fine") -> dict:
    """Render ``batch`` wild faces (full frames) with their ground truth.

    ``out_of_model``: ``"fine"`` (the wild set: wrinkles, folds, painted albedo detail) or ``"coarse"``
    (the same plus :func:`coarse_out_of_model`'s centimetre-scale shape and reflectance, drawn from
    their own seed stream, so the rest of each face is the same as with ``"fine"``).

    Returns a dict:
        image ``(B, 3, H, W)`` in [0, 1]; mask ``(B, H, W)`` bool (face pixels, ground truth);
        landmarks ``(B, 68, 2)`` pixels with detector-like noise; landmarks_gt ``(B, 68, 2)``;
        theta ``(B, m)`` ground-truth parameters (Eq. 1 layout); verts_model ``(B, V, 3)`` the
        ground-truth mesh with detail (model space, mm); verts ``(B, V, 3)`` the same in camera space;
        albedo ``(B, V, 3)`` painted albedo; focal ``(B,)`` and principal_point ``(B, 2)`` pixels (the
        face's own camera: :func:`facelib.render.face_camera` ``(size)`` zoomed and shifted).
    """
    if out_of_model not in ("fine", "coarse"):
        raise ValueError(f"out_of_model must be 'fine' or 'coarse'; got {out_of_model!r}")
    device = torch.device(device) if device is not None else model.device
    sub = [seed * 7 + k for k in range(5)]  # independent streams: params, detail, albedo, camera, image
    theta = sample_wild(model, batch, sub[0]).to(device)
    layout = ParamLayout.from_model(model)
    p = layout.unpack(theta)
    with torch.no_grad():
        base = model.geometry(p["shape"], p["expression"])
        disp = detail_displacement(model, batch, sub[1], amplitude_mm=WILD["detail_mm"], device=device,
                                   dtype=base.dtype)
        albedo = wild_albedo(model, model.reflectance(p["reflectance"]), sub[2])
        if out_of_model == "coarse":  # its own stream, apart from the fine set's seed * 7 + 0 .. 6
            d2, da = coarse_out_of_model(model, batch, seed * 7 + 5 + 10**9, device=device, dtype=base.dtype)
            disp = disp + d2
            albedo = (albedo + da.to(albedo)).clamp(0, 1)
        verts_model = apply_detail(base, model.triangles, disp)
        g = _gen(sub[3])
        cam = face_camera(size, device=device, dtype=theta.dtype)
        s = _u(g, (batch,), *WILD["scale"]).to(theta)
        shift = (_u(g, (batch, 2), -WILD["shift"], WILD["shift"]) * size).to(theta)
        pp = torch.tensor(cam.principal_point, dtype=theta.dtype, device=device) + shift
        cam_b = Camera(cam.focal * s, pp, cam.R, cam.t, cam.image_size, cam.fov_deg)
        r = render(model, theta, size, camera=cam_b, geometry=verts_model, albedo=albedo)
        lm_gt = landmarks_2d(model, r.screen)
        bg = wild_background(batch, size, sub[4]).to(r.image)
        img = torch.where(r.mask[:, None], r.image, bg)
        img = degrade(img, sub[4] + 1, jpeg=jpeg)
        lm = detector_noise(lm_gt, WILD["landmark_noise"], _gen(sub[4] + 2))
    return {"image": img, "mask": r.mask, "landmarks": lm, "landmarks_gt": lm_gt, "theta": theta,
            "verts_model": verts_model, "verts": r.verts_cam, "albedo": albedo, "focal": cam.focal * s,
            "principal_point": pp}
