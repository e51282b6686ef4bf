"""Model: the trainable multi-level face model of Tewari et al. 2018 (Sec. 4, supplement Sec. 3).

Two levels share one template mesh of N vertices::

    v_f = v_b(alpha) + F_g(delta_g | Theta_g)      (Eq. 1, geometry, mm)
    r_f = r_b(beta)  + F_r(delta_r | Theta_r)      (Eq. 2, reflectance)

The base level ``v_b``, ``r_b`` is the fixed 3DMM (Eq. 3-4, :class:`facelib.model.facemodel.FaceModel`); the
correctives ``F_g``, ``F_r`` map C coefficients to per-vertex offsets and are learned with the
regressor.  :class:`Corrective` holds the three corrective spaces of the supplement behind one
interface: ``"linear"`` (supplement Eq. 1, the paper's choice), ``"one_nonlinearity"`` (Eq. 2) and
``"two_nonlinearities"`` (Eq. 3), with ReLU as Psi.

The semantic code the encoder regresses (:func:`code_layout`) is
``x = (R, t, alpha_s, alpha_e, beta, gamma_b, gamma_f, delta_g, delta_r)``: the Sec. 5 unknowns with a
separately regressed illumination for the final level (supplement Sec. 1).

:func:`decimate` builds a coarser template (a subset of the model's vertices with the same bases,
re-triangulated by vertex clustering) for the small-CPU book profiles: every kept vertex moves
exactly as in the full model.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..model.facemodel import FaceModel
from ..model.params import N_ILLUMINATION, ParamLayout

__all__ = [
    "CORRECTIVE_KINDS",
    "code_layout",
    "Corrective",
    "Levels",
    "MultiLevelModel",
    "one_ring",
    "constancy_mask",
    "decimate",
    "best_base_fit",
]

CORRECTIVE_KINDS = ("linear", "one_nonlinearity", "two_nonlinearities")  # supplement Eq. 1, 2, 3


# ---------------------------------------------------------------------------------- code layout
def code_layout(model: FaceModel, n_corrective: int = 0) -> ParamLayout:
    """The semantic code of the multi-level autoencoder as a :class:`ParamLayout`.

    Entries, in order: ``rotation`` (3 Euler angles, radians, :func:`facelib.model.params.rot_xyz`),
    ``translation`` (3, mm, added to the camera's own translation), ``shape`` (m_s) and
    ``expression`` (m_e), together alpha, in units of sigma; ``reflectance`` beta (m_r, units of
    sigma); ``illumination`` gamma of the base level (27); and when ``n_corrective`` C > 0 also
    ``illumination_final`` (27, the final level's own gamma, supplement Sec. 1),
    ``corrective_geometry`` delta_g (C) and ``corrective_reflectance`` delta_r (C).
    Size ``257 + 2C`` for the paper's 80 + 64 + 80 components (Sec. 5) plus 27 for gamma_f.
    """
    if isinstance(n_corrective, bool) or not isinstance(n_corrective, int) or n_corrective < 0:
        raise ValueError(f"n_corrective must be a non-negative integer; got {n_corrective!r}")
    e = [("rotation", 3), ("translation", 3), ("shape", model.n_shape), ("expression", model.n_expression),
         ("reflectance", model.n_reflectance), ("illumination", N_ILLUMINATION)]
    if n_corrective:
        e += [("illumination_final", N_ILLUMINATION), ("corrective_geometry", n_corrective),
              ("corrective_reflectance", n_corrective)]
    return ParamLayout(tuple(e))


# ---------------------------------------------------------------------------------- correctives
class Corrective(nn.Module):
    """A corrective space ``F: R^C -> R^{N x 3}`` (Tewari et al. 2018 Sec. 4.2, supplement Sec. 3).

    ``kind="linear"``: ``F(delta) = L_0(delta) = M_0 delta + b_0`` (supplement Eq. 1);
    ``"one_nonlinearity"``: ``L_1(Psi(L_0(delta)))`` (Eq. 2); ``"two_nonlinearities"``:
    ``L_2(Psi(L_1(Psi(L_0(delta)))))`` (Eq. 3); Psi = ReLU, hidden width ``hidden`` (default C).
    Theta (all ``M_i``, ``b_i``) are the module's parameters.  The output layer starts with weights
    ``N(0, init_std^2 / fan_in)`` and zero offset, so a coefficient vector of unit entries gives
    per-coordinate corrections of about ``init_std``.

    ``forward(delta (B, C)) -> (B, N, 3)``.
    """

    def __init__(self, n_vertices: int, n_corrective: int, kind: str = "linear", hidden: int | None = None,
                 init_std: float = 1e-2, seed: int = 0):
        super().__init__()
        if kind not in CORRECTIVE_KINDS:
            raise ValueError(f"unknown corrective kind {kind!r}; expected one of {CORRECTIVE_KINDS}")
        if isinstance(n_corrective, bool) or not isinstance(n_corrective, int) or n_corrective < 1:
            raise ValueError(f"n_corrective must be a positive integer; got {n_corrective!r}")
        self.kind, self.n_vertices, self.n_corrective = kind, int(n_vertices), n_corrective
        hidden = int(hidden or n_corrective)
        depth = CORRECTIVE_KINDS.index(kind)  # number of non-linearities
        dims = [n_corrective] + [hidden] * depth + [3 * self.n_vertices]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                last = i == len(self.layers) - 1
                std = (init_std if last else 1.0) / layer.in_features ** 0.5
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
                layer.bias.zero_()

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        if delta.ndim != 2 or delta.shape[1] != self.n_corrective:
            raise ValueError(f"delta has shape {tuple(delta.shape)}; expected (B, {self.n_corrective})")
        x = delta
        for i, layer in enumerate(self.layers):
            x = layer(x)  # L_i
            if i < len(self.layers) - 1:
                x = torch.relu(x)  # Psi
        return x.view(delta.shape[0], self.n_vertices, 3)


# ---------------------------------------------------------------------------------- the model
class Levels(NamedTuple):
    """Both levels of the multi-level model: ``v_b``, ``r_b``, ``v_f``, ``r_f`` ``(B, N, 3)`` (mm and
    reflectance) and the corrections ``F_g``, ``F_r`` ``(B, N, 3)`` (``None`` without correctives, when
    the final level equals the base level)."""

    v_b: torch.Tensor
    r_b: torch.Tensor
    v_f: torch.Tensor
    r_f: torch.Tensor
    F_g: torch.Tensor | None
    F_r: torch.Tensor | None


class MultiLevelModel(nn.Module):
    """The multi-level face model (Tewari et al. 2018 Eq. 1-4) as an ``nn.Module``.

    Buffers hold the fixed 3DMM (bases pre-scaled by sigma, so coefficients are in units of sigma, as
    in :meth:`FaceModel.geometry`), the triangles, landmarks, sliding contour candidates, the skin mask
    of Eq. 14 and the 1-ring edges of Eq. 12-13; parameters are Theta_g, Theta_r of the two
    :class:`Corrective` spaces (none when ``n_corrective == 0``).

    ``forward(parts)`` takes the dict of :meth:`ParamLayout.unpack` of a :func:`code_layout` code and
    returns :class:`Levels`.
    """

    def __init__(self, model: FaceModel, n_corrective: int = 0, kind: str = "linear",
                 hidden: int | None = None, init_std_geometry: float = 0.05,
                 init_std_reflectance: float = 0.002, seed: int = 0):
        super().__init__()
        self.face = model
        self.layout = code_layout(model, n_corrective)
        self.n_corrective, self.kind = n_corrective, kind
        V = model.n_vertices
        self.register_buffer("a_g", model.mean_shape.reshape(-1).clone())
        basis_g = torch.cat([model.shape_basis * model.sigma_s[:, None, None],
                             model.expression_basis * model.sigma_e[:, None, None]])
        self.register_buffer("b_g", basis_g.reshape(basis_g.shape[0], -1).clone())
        self.register_buffer("a_r", model.mean_albedo.reshape(-1).clone())
        basis_r = model.albedo_basis * model.sigma_r[:, None, None]
        self.register_buffer("b_r", basis_r.reshape(basis_r.shape[0], -1).clone())
        self.register_buffer("triangles", model.triangles.clone())
        L = 0 if model.landmarks is None else model.landmarks.numel()
        self.register_buffer("landmarks", torch.zeros(0, dtype=torch.long) if model.landmarks is None
                             else model.landmarks.clone())
        self.register_buffer("landmark_sliding", torch.zeros(L, dtype=torch.bool) if model.landmark_sliding is None
                             else model.landmark_sliding.clone())
        self.register_buffer("contour_candidates", torch.zeros(0, 1, dtype=torch.long)
                             if model.contour_candidates is None else model.contour_candidates.clone())
        self.register_buffer("skin", constancy_mask(model))
        self.register_buffer("face_mask", model.masks["face"].clone())
        self.register_buffer("edges", one_ring(model.triangles, V))
        if n_corrective:
            self.F_g = Corrective(V, n_corrective, kind, hidden, init_std_geometry, seed)
            self.F_r = Corrective(V, n_corrective, kind, hidden, init_std_reflectance, seed + 1)
        else:
            self.F_g = self.F_r = None

    @property
    def n_vertices(self) -> int:
        return self.a_g.shape[0] // 3

    def base_geometry(self, alpha_s: torch.Tensor, alpha_e: torch.Tensor) -> torch.Tensor:
        """Eq. 3: ``v_b = a_g + sum_k alpha_k b_k^g``; ``(B, m_s)``, ``(B, m_e)`` -> ``(B, N, 3)`` mm."""
        alpha = torch.cat([alpha_s, alpha_e], dim=-1)
        return torch.addmm(self.a_g, alpha, self.b_g).view(alpha.shape[0], -1, 3)  # Eq. 3

    def base_reflectance(self, beta: torch.Tensor) -> torch.Tensor:
        """Eq. 4: ``r_b = a_r + sum_k beta_k b_k^r``; ``(B, m_r)`` -> ``(B, N, 3)``."""
        return torch.addmm(self.a_r, beta, self.b_r).view(beta.shape[0], -1, 3)  # Eq. 4

    def forward(self, parts: dict) -> Levels:
        v_b = self.base_geometry(parts["shape"], parts["expression"])
        r_b = self.base_reflectance(parts["reflectance"])
        if not self.n_corrective:
            return Levels(v_b, r_b, v_b, r_b, None, None)
        F_g = self.F_g(parts["corrective_geometry"])
        F_r = self.F_r(parts["corrective_reflectance"])
        return Levels(v_b, r_b, v_b + F_g, r_b + F_r, F_g, F_r)  # Eq. 1-2


@torch.no_grad()
def best_base_fit(ml: MultiLevelModel, v: torch.Tensor, r: torch.Tensor, mask: torch.Tensor | None = None) -> tuple:
    """The closest the base level can come to given meshes: least-squares coefficients of Eq. 3-4 for
    model-space vertices ``v (B, N, 3)`` and reflectance ``r (B, N, 3)`` over ``mask (N,)`` (default all).
    Returns ``(v_fit, r_fit)`` ``(B, N, 3)``; ``v - v_fit`` is what no code of the 3DMM can express."""
    from ..model.facemodel import basis_fit

    return basis_fit(ml.a_g, ml.b_g, v, mask), basis_fit(ml.a_r, ml.b_r, r, mask)


# ---------------------------------------------------------------------------------- mesh helpers
def one_ring(faces: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """Directed 1-ring edges of a triangle mesh: ``(2, E)`` int64 pairs ``(i, j)``, ``j in N_i``, each
    undirected edge in both directions, sorted by ``i`` then ``j`` (Eq. 12-13's neighbourhoods)."""
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces has shape {tuple(faces.shape)}; expected (F, 3)")
    f = faces.long()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = torch.cat([e, e.flip(1)])
    e = e[e[:, 0] != e[:, 1]]
    key = torch.unique(e[:, 0] * n_vertices + e[:, 1])
    return torch.stack([key // n_vertices, key % n_vertices])


def constancy_mask(model: FaceModel) -> torch.Tensor:
    """Eq. 14's mask M ``(N,)`` bool: the skin without the regions that may carry facial hair (the
    beard and brow-hair masks), as the paper's Fig. 2 (right)."""
    skin = model.masks.get("skin", model.masks["face"]).clone()
    for hair in ("beard", "brow_hair"):
        if hair in model.masks:
            skin &= ~model.masks[hair]
    return skin


def _farthest_points(P: np.ndarray, n: int, seeds: np.ndarray) -> np.ndarray:
    """Indices of ``n`` points of ``P (V, 3)``: ``seeds`` first, then farthest-point sampling."""
    chosen = list(dict.fromkeys(int(s) for s in seeds))
    d = np.full(len(P), np.inf)
    for s in chosen:
        d = np.minimum(d, ((P - P[s]) ** 2).sum(1))
    while len(chosen) < n:
        s = int(np.argmax(d))
        chosen.append(s)
        d = np.minimum(d, ((P - P[s]) ** 2).sum(1))
    return np.asarray(chosen[:max(n, len(seeds))], dtype=np.int64)


def decimate(model: FaceModel, n_vertices: int) -> tuple[FaceModel, torch.Tensor]:
    """A coarser template: ``n_vertices`` of ``model``'s vertices with their bases, re-triangulated.

    The kept vertices are the 68 landmark vertices plus farthest-point samples of the mean shape
    (deterministic); every other vertex joins the kept vertex nearest along the mesh (multi-source
    Dijkstra on the edge graph, so the lips and eyelids are not merged across their openings), and a
    triangle whose three corners fall into three different clusters becomes a triangle of the coarse
    mesh (vertex clustering, winding kept).  Geometry and reflectance of a kept vertex are exactly those
    of the full model for every coefficient vector.  Contour candidates (Eq. 10) map to their clusters.

    Returns ``(coarse FaceModel, keep (n,) int64)``: ``keep[i]`` is the full-model index of coarse
    vertex ``i`` (index ground-truth meshes with it).
    """
    V = model.n_vertices
    if isinstance(n_vertices, bool) or not isinstance(n_vertices, int) or not 100 <= n_vertices <= V:
        raise ValueError(f"n_vertices must be an integer in [100, {V}]; got {n_vertices!r}")
    if n_vertices == V:
        return model, torch.arange(V)
    hit = _DECIMATED.get((id(model), n_vertices))
    if hit is not None and hit[0] is model:  # the same model object: reuse (deterministic anyway)
        return hit[1], hit[2].clone()
    coarse, keep = _decimate(model, n_vertices)
    _DECIMATED.clear()  # keep one entry: the book decimates one model to one size
    _DECIMATED[(id(model), n_vertices)] = (model, coarse, keep)
    return coarse, keep.clone()


_DECIMATED: dict = {}


def _decimate(model: FaceModel, n_vertices: int) -> tuple[FaceModel, torch.Tensor]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    V = model.n_vertices
    P = model.mean_shape.detach().cpu().double().numpy()
    tri = model.triangles.cpu().numpy()
    has_lm = model.landmarks is not None
    keep = _farthest_points(P, n_vertices, model.landmarks.cpu().numpy() if has_lm else np.zeros(0, np.int64))
    e = one_ring(model.triangles.cpu(), V).numpy()
    w = np.sqrt(((P[e[0]] - P[e[1]]) ** 2).sum(1))
    graph = coo_matrix((w, (e[0], e[1])), shape=(V, V)).tocsr()
    _, _, src = dijkstra(graph, indices=keep, min_only=True, return_predecessors=True)
    unreached = src < 0
    if unreached.any():  # a component without a kept vertex: nearest kept vertex in space
        d = ((P[unreached][:, None] - P[keep][None]) ** 2).sum(-1)
        src[unreached] = keep[d.argmin(1)]
    new_index = np.full(V, -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    cluster = new_index[src]  # (V,) coarse vertex of every full vertex
    ct = cluster[tri]
    good = (ct[:, 0] != ct[:, 1]) & (ct[:, 1] != ct[:, 2]) & (ct[:, 0] != ct[:, 2])
    ct = ct[good]
    _, first = np.unique(np.sort(ct, axis=1), axis=0, return_index=True)
    faces = ct[np.sort(first)]
    cand = None
    if model.contour_candidates is not None and model.contour_candidates.numel():
        rows = [list(dict.fromkeys(int(cluster[c]) for c in row if c >= 0))
                for row in model.contour_candidates.cpu().numpy()]
        cand = np.full((len(rows), max(len(r) for r in rows)), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            cand[i, :len(r)] = r
        cand = torch.as_tensor(cand)
    k = torch.as_tensor(keep)
    coarse = FaceModel(
        name=f"{model.name}-{len(keep)}", mean_shape=model.mean_shape[k], shape_basis=model.shape_basis[:, k],
        sigma_s=model.sigma_s, expression_basis=model.expression_basis[:, k], sigma_e=model.sigma_e,
        mean_albedo=model.mean_albedo[k], albedo_basis=model.albedo_basis[:, k], sigma_r=model.sigma_r,
        triangles=torch.as_tensor(faces), masks={n: m[k] for n, m in model.masks.items()},
        region=model.region[k], region_names=list(model.region_names),
        landmarks=torch.as_tensor(new_index[model.landmarks.cpu().numpy()]) if has_lm else None,
        landmark_sliding=model.landmark_sliding, contour_candidates=cand,
        expression_range=model.expression_range, mouth_component=model.mouth_component,
        mouth_bias=model.mouth_bias,
        metadata={**model.metadata, "decimated_from": model.name, "full_vertices": V})
    return coarse, k
