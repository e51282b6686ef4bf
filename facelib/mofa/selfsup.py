"""Losses: the self-supervised training loss of Tewari et al. 2018 (Sec. 6, Eq. 6-15).

    E_total = E_data + w_reg E_reg                                   (Eq. 6)
    E_data  = E_sparse + w_photo E_photo                             (Eq. 7)
    E_reg   = E_std + E_smo + E_ref + E_glo + E_sta                  (Eq. 8)

Every term is a small function of tensors that returns one value per image, ``(B,)``; the weights
that sit inside a term in the paper (``w_rstd`` in Eq. 11, ``w_smo``, ``w_ref``, ``w_glo``, ``w_sta`` in
Eq. 12-15) are arguments of that term, ``w_photo`` and ``w_reg`` are applied by :func:`e_total`.
:data:`STAGE1_PAPER` and :data:`STAGE2_PAPER` are the supplement's (Sec. 1) weights for pre-training the
base level and for fine-tuning with correctives; :data:`STAGE1` and :data:`STAGE2`, the weights the book
trains with, change one weight each for our units (``w_reg`` of stage 1, ``w_photo`` of stage 2, both
measured); the term functions default to the supplement's stage-2 values.

Units: vertex positions in mm, colours and reflectance in [0, 1].  The paper does not state the unit
of the landmark term; :func:`e_sparse` measures the landmark error in pixels of the image the network
sees (``scale`` converts to another unit).  With the supplement's weights this makes the landmark
term the strongest early signal and leaves the photometric term the refinement, as in MoFA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..render.points import backproject_rays, sample_image

__all__ = [
    "LossWeights",
    "STAGE1",
    "STAGE1_PAPER",
    "STAGE2",
    "STAGE2_PAPER",
    "e_photo_level",
    "e_photo",
    "slide_contour",
    "e_sparse",
    "e_std",
    "laplacian",
    "e_smo",
    "chromaticity",
    "chromaticity_weights",
    "e_ref",
    "constancy_partners",
    "e_glo",
    "e_sta",
    "e_total",
]

@dataclass(frozen=True)
class LossWeights:
    """The weights ``w_*`` of Eq. 6-15 (supplement Sec. 1)."""

    photo: float
    reg: float
    rstd: float
    smo: float
    ref: float
    glo: float
    sta: float

    def replace(self, **kw) -> "LossWeights":
        """A copy with some weights changed (the loss ablations)."""
        unknown = set(kw) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(asdict(self))}")
        return LossWeights(**{**asdict(self), **kw})


# Supplement Sec. 1: pre-training the base level (photometric term on the base level only) ...
STAGE1_PAPER = LossWeights(photo=1.9, reg=3e-5, rstd=0.002, smo=0.0, ref=0.0, glo=0.0, sta=0.0)
# ... and in our units (landmarks in pixels of a 64-pixel input, Eq. 9 a mean over vertices): with the
# paper's w_reg the stage-1 network regresses shape codes of 3x the prior's energy and its shapes are
# 35% worse than the mean face (issue 16, ``benchmarks/mofa_experiments.py``); w_reg = 0.1 was the best
# of 3e-5 ... 1 for the held-out geometry.  Chapter 5 shows the sweep.
STAGE1 = STAGE1_PAPER.replace(reg=0.1)
# ... and fine-tuning the whole network with the correctives ...
STAGE2_PAPER = LossWeights(photo=0.2, reg=0.003, rstd=0.002, smo=3.2e4, ref=13.0, glo=80.0, sta=0.08)
# ... and in our units: with the paper's w_photo = 0.2 (a tenth of stage 1's) the held-out photometric
# error rises during stage 2 and the correctives gain 1% over C = 0; w_photo = 3.8 (twice stage 1's: Eq. 9
# now sums two levels) gives them -17% against the base level and -11% against C = 0 (chapter 6).
STAGE2 = STAGE2_PAPER.replace(photo=3.8)


def _l2(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``||x||_2`` over the last axis with a finite gradient at 0."""
    return (x.square().sum(-1) + eps).sqrt()


# ---------------------------------------------------------------------------------- data terms
def e_photo_level(image: torch.Tensor, u: torch.Tensor, c: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """One level of Eq. 9: ``(1/N) sum_{i visible} ||I(u_i) - c_i||_2`` (the l2,1 norm).

    ``image (B, 3, H, W)`` in [0, 1], ``u (B, N, 2)`` pixel positions, ``c (B, N, 3)`` shaded vertex
    colours, ``visible (B, N)`` bool (back-face culling) -> ``(B,)``.
    """
    if u.shape[:2] != c.shape[:2] or visible.shape != u.shape[:2]:
        raise ValueError(f"u {tuple(u.shape)}, c {tuple(c.shape)} and visible {tuple(visible.shape)} "
                         "must share (B, N)")
    diff = sample_image(image, u) - c  # I(u_i) - c_i
    return (_l2(diff) * visible.to(c.dtype)).sum(1) / u.shape[1]  # Eq. 9


def e_photo(image: torch.Tensor, levels) -> torch.Tensor:
    """Eq. 9, multi-level: the sum of :func:`e_photo_level` over ``levels``, an iterable of
    ``(u, c, visible)`` (the base level b and the final level f) -> ``(B,)``."""
    return sum(e_photo_level(image, u, c, vis) for u, c, vis in levels)  # Eq. 9


@torch.no_grad()
def slide_contour(v_cam: torch.Tensor, f: torch.Tensor, focal, principal_point, landmarks: torch.Tensor,
                  sliding: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The target vertices ``k_f`` of Eq. 10, re-chosen at every step.

    Fixed feature points keep their vertex ``landmarks[f]``; a sliding one (the face contour) takes the
    candidate vertex closest to the 3D line from the camera centre through the detected 2D point
    (squared Euclidean distance), as the alternation scheme of Sec. 6.1.

    ``v_cam (B, N, 3)`` camera-space vertices (base level); ``f (B, L, 2)`` detected landmarks in
    pixels; ``landmarks (L,)`` vertex ids; ``sliding (L,)`` bool; ``candidates (S, K)`` candidate vertex
    ids of the S sliding points in landmark order, padded with -1.  Returns ``(B, L)`` int64 vertex ids.
    """
    B, L = f.shape[:2]
    k = landmarks.to(f.device).expand(B, L).clone()
    slide = sliding.to(f.device).nonzero().squeeze(1)
    if slide.numel() == 0:
        return k
    if candidates.shape[0] != slide.numel():
        raise ValueError(f"{slide.numel()} sliding landmarks but candidates for {candidates.shape[0]}")
    cand = candidates.to(f.device)
    d = backproject_rays(f[:, slide], focal, principal_point)  # (B, S, 3) unit rays
    p = v_cam[:, cand.clamp_min(0)]  # (B, S, K, 3)
    along = (p * d[:, :, None]).sum(-1)
    dist2 = p.square().sum(-1) - along.square()  # squared distance of each candidate to the ray
    dist2 = dist2.masked_fill(cand < 0, float("inf"))
    k[:, slide] = cand[torch.arange(len(slide), device=f.device), dist2.argmin(-1)]
    return k


def e_sparse(f: torch.Tensor, u_k: torch.Tensor, confidence: torch.Tensor | None = None,
             scale: float = 1.0) -> torch.Tensor:
    """Eq. 10: ``(1/|F|) sum_f c_f ||f - u_{k_f}||^2``.

    ``f (B, L, 2)`` detected landmarks and ``u_k (B, L, 2)`` projected target vertices (base level), in
    pixels; ``confidence (B, L)`` in [0, 1] (default 1); ``scale`` converts pixels to the unit the
    error is measured in (default 1: pixels).  Returns ``(B,)``.
    """
    if f.shape != u_k.shape or f.ndim != 3 or f.shape[-1] != 2:
        raise ValueError(f"f {tuple(f.shape)} and u_k {tuple(u_k.shape)} must both be (B, L, 2)")
    err = ((f - u_k) * scale).square().sum(-1)
    if confidence is not None:
        err = err * confidence
    return err.mean(1)  # Eq. 10


# ---------------------------------------------------------------------------------- regularisers
def e_std(alpha_s: torch.Tensor, alpha_e: torch.Tensor, beta: torch.Tensor, w_rstd: float = STAGE2_PAPER.rstd) -> torch.Tensor:
    """Eq. 11: ``sum_k (alpha_k / sigma_k)^2 + w_rstd sum_k (beta_k / sigma_k)^2``.

    Our coefficients are already in units of sigma (:meth:`FaceModel.geometry`), so the divisions are
    done.  ``alpha_s (B, m_s)``, ``alpha_e (B, m_e)``, ``beta (B, m_r)`` -> ``(B,)``.
    """
    return alpha_s.square().sum(1) + alpha_e.square().sum(1) + w_rstd * beta.square().sum(1)  # Eq. 11


def laplacian(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Uniform 1-ring Laplacian ``(1/|N_i|) sum_{j in N_i} (x_i - x_j)`` of per-vertex values
    ``x (B, N, D)``; ``edges (2, E)`` directed pairs (i, j) (:func:`facelib.mofa.multilevel.one_ring`).
    Vertices without neighbours get 0."""
    i, j = edges
    N = x.shape[1]
    deg = torch.bincount(i, minlength=N).to(x.dtype).clamp_min(1)
    nb = torch.zeros_like(x).index_add(1, i, x[:, j])  # sum_j x_j
    has = (torch.bincount(i, minlength=N) > 0).to(x.dtype)
    return (x - nb / deg[:, None]) * has[:, None]


def e_smo(F_g: torch.Tensor, edges: torch.Tensor, w_smo: float = STAGE2_PAPER.smo) -> torch.Tensor:
    """Eq. 12: ``(w_smo / N) sum_i ||(1/|N_i|) sum_{j in N_i} (F_i - F_j)||^2``, corrective smoothness.

    ``F_g (B, N, 3)`` geometry corrections, ``edges (2, E)`` 1-ring pairs -> ``(B,)``.
    """
    return w_smo * laplacian(F_g, edges).square().sum(-1).mean(1)  # Eq. 12


def chromaticity(colors: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(..., 3)`` RGB -> chromaticity ``rgb / (r + g + b)`` (brightness removed)."""
    return colors / (colors.sum(-1, keepdim=True) + eps)


@torch.no_grad()
def chromaticity_weights(image_colors: torch.Tensor, edges: torch.Tensor, alpha: float = 50.0) -> torch.Tensor:
    """The constant weights of Eq. 13: ``w_ij = exp(-alpha ||chroma(I(u_i)) - chroma(I(u_j))||_2)``.

    ``image_colors (B, N, 3)``: the input image sampled at the vertices' positions of the previous
    iteration (pass them detached); ``edges (2, E)`` -> ``(B, E)``.  The paper's text speaks of
    chromaticity similarity; we compare chromaticities, so shading (a change of brightness only) keeps
    its neighbours tied together.
    """
    ch = chromaticity(image_colors.clamp_min(0))
    i, j = edges
    return torch.exp(-alpha * (ch[:, i] - ch[:, j]).norm(dim=-1))


def e_ref(r_f: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor, w_ref: float = STAGE2_PAPER.ref,
          p: float = 0.9, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 13: ``(w_ref / N) sum_i sum_{j in N_i} w_ij ||r_i - r_j||_2^p``, local reflectance sparsity.

    ``r_f (B, N, 3)`` final-level reflectance, ``edges (2, E)``, ``weights (B, E)`` from
    :func:`chromaticity_weights`; ``p = 0.9`` (the paper's); ``||.||^p`` is evaluated as
    ``(||.||^2 + eps)^(p/2)`` so its gradient stays finite.  Returns ``(B,)``.
    """
    i, j = edges
    d = (r_f[:, i] - r_f[:, j]).square().sum(-1)
    return w_ref * (weights * (d + eps).pow(p / 2)).sum(1) / r_f.shape[1]  # Eq. 13


def constancy_partners(mask: torch.Tensor, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14's sets G_i: for every vertex of the skin mask M, ``k`` (the paper's 6) random vertices of M.

    ``mask (N,)`` bool -> ``(idx (|M|,), partners (|M|, k))`` int64 vertex ids, drawn once with ``seed``
    (on the CPU, then moved to ``mask``'s device).
    """
    if mask.dtype != torch.bool or mask.ndim != 1:
        raise ValueError(f"mask must be a (N,) bool tensor; got {tuple(mask.shape)} {mask.dtype}")
    idx = mask.nonzero().squeeze(1)
    if idx.numel() < 2:
        raise ValueError("the skin mask needs at least two vertices")
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randint(0, idx.numel(), (idx.numel(), int(k)), generator=g).to(idx.device)
    return idx, idx[pick]


def e_glo(r_f: torch.Tensor, idx: torch.Tensor, partners: torch.Tensor, w_glo: float = STAGE2_PAPER.glo) -> torch.Tensor:
    """Eq. 14: ``(w_glo / |M|) sum_{i in M} sum_{j in G_i} ||r_i - r_j||^2``, global reflectance constancy.

    ``r_f (B, N, 3)``; ``idx (|M|,)`` and ``partners (|M|, k)`` from :func:`constancy_partners` -> ``(B,)``.
    """
    d = r_f[:, idx, None] - r_f[:, partners]  # (B, |M|, k, 3)
    return w_glo * d.square().sum(-1).sum(-1).mean(1)  # Eq. 14


def e_sta(F_g: torch.Tensor, w_sta: float = STAGE2_PAPER.sta) -> torch.Tensor:
    """Eq. 15: ``(w_sta / N) sum_i ||F_i||^2``, small corrective displacements; ``(B, N, 3)`` -> ``(B,)``."""
    return w_sta * F_g.square().sum(-1).mean(1)  # Eq. 15


def e_total(terms: dict, weights: LossWeights) -> torch.Tensor:
    """Eq. 6-8: ``E_sparse + w_photo E_photo + w_reg (E_std + E_smo + E_ref + E_glo + E_sta)``.

    ``terms``: name -> ``(B,)`` for ``sparse``, ``photo``, ``std`` and optionally ``smo``, ``ref``,
    ``glo``, ``sta`` (each already carrying its own inner weight).  Returns ``(B,)``.
    """
    missing = {"sparse", "photo", "std"} - set(terms)
    if missing:
        raise ValueError(f"e_total needs the terms {sorted(missing)}")
    reg = terms["std"]
    for name in ("smo", "ref", "glo", "sta"):
        if name in terms:
            reg = reg + terms[name]  # Eq. 8
    return terms["sparse"] + weights.photo * terms["photo"] + weights.reg * reg  # Eq. 6-7
