"""MoFA's evaluation: renders of each level, the panels the chapters show, per-face fitting of the
code, the error measures against the wild set's ground truth, the learning-curve probe and the
encoder's speed."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..eval.metrics import photometric_rgb_distance, similarity_align
from ..render.points import PointRendering
from ..render.raster import interpolate, rasterize
from .selfsup import STAGE1, LossWeights, e_total
from .network import MoFA
from .training import loss_terms


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
def panels(net: MoFA, image: torch.Tensor, level: str = "final", landmarks: torch.Tensor | None = None) -> dict:
    """What the autoencoder recovered from ``image (B, 3, N, N)`` (and its detected ``landmarks (B, 68, 2)``,
    which a landmark-input network needs), each ``(B, 3, N, N)`` in [0, 1]:
    ``overlay`` (the shaded reconstruction over the input), ``geometry`` (grey, under a fixed light),
    ``reflectance`` (albedo, unlit), ``illumination`` (a grey sphere under the regressed gamma)."""
    from ..render.shading import shade
    from ..book.viz import sphere_normals

    d = net(image, landmarks=landmarks)
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
        lm = corpus["landmarks"][s:s + batch].to(dev)  # the detector's: a landmark-input encoder reads them
        d = net(image, landmarks=lm) if codes is None else net.decode(codes[s:s + batch].to(dev))
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
    "over 250 Hz" is batch 1 on a GPU (4 ms).  ``net``: a :class:`MoFA` (with a landmark input: random
    landmarks, their normalisation included) or any encoder module;
    ``threads``: PyTorch CPU threads to time with (default: as set)."""
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    enc = net.to(dev).eval()
    x = torch.rand(batch, 3, size, size, device=dev)
    if isinstance(enc, MoFA):  # with a landmark input, the landmarks' features are part of the pass
        lm = torch.rand(batch, 68, 2, device=dev) * size if enc.n_landmarks else None
        fn = lambda x: enc.encode(x, lm)  # noqa: E731
    else:
        fn = lambda x: enc(x - 0.5)  # noqa: E731
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


# the variants of benchmarks/mofa_landmarks.py, in the order chapter 5 discusses them
LANDMARK_VARIANTS = {"off": "the image (the papers)",
                     "pretrained": "image + landmarks, branch trained on",
                     "pretrained, frozen": "image + landmarks, branch fixed",
                     "geometry from the landmarks": "image + landmarks, shape and expression from the branch",
                     "geometry from the landmarks, prior x2":
                         "image + landmarks, shape and expression from a branch on a prior twice as wide (this book)"}


def landmark_variants_markdown(record: dict) -> str:
    """Chapter 5's table of ``benchmarks/mofa_landmarks.py``'s ``record``: per variant of
    :data:`LANDMARK_VARIANTS` the stage-1 network's held-out errors (geometric and NoW-style as fractions of
    the mean face's, photometric RGB distance, landmark pixels; mean ± std over the seeds) and its mean
    training seconds (with the branch's pre-training); then the networks before stage 1 (the untrained
    image-only encoder; the pre-trained landmark read-out alone, one row per prior its branch learned from) and
    the mean face."""
    from ..book import markdown_table, pm

    runs = {}
    for r in record["runs"]:
        runs.setdefault(r["variant"], []).append(r)

    def row(label, inp, rs, part, seconds=True):
        return [label, inp, len(rs), pm([r[part]["geometric_mm_ratio"] for r in rs]),
                pm([r[part]["now_mm_ratio"] for r in rs]), pm([r[part]["photometric_rgb"] for r in rs], ".3f"),
                pm([r[part]["landmark_px"] for r in rs]),
                f"{sum(r['train_s'] for r in rs) / len(rs):.0f}" if seconds else "-"]

    rows = [row("MoFA stage 1", label, runs[v], "stage1") for v, label in LANDMARK_VARIANTS.items() if v in runs]
    if "off" in runs:
        rows.append(row("*untrained encoder (before stage 1)*", "the image", runs["off"], "before_stage1", False))
    readouts = [(v, inp) for v, inp in (("geometry from the landmarks", "landmarks, branch on the prior"),
                                        ("geometry from the landmarks, prior x2", "landmarks, branch on a prior twice as wide"))
                if v in runs] or [(v, "landmarks") for v in ("pretrained",) if v in runs]
    for v, inp in readouts:
        rows.append(row("*landmark read-out alone (pre-trained, before stage 1)*", inp, runs[v], "before_stage1", False))
    rows.append(["*mean face (shape, expression 0)*", "-", "-", "1.00", "1.00", "-", "-", "-"])
    return markdown_table(["network", "input", "seeds", "geometric × mean face", "NoW-style × mean face",
                           "photometric RGB", "landmarks [px]", "training [s]"], rows)
