"""The multi-level face model (Tewari et al. 2018 Sec. 4, supplement Sec. 3): code layout, corrective
spaces, the two levels, 1-ring edges, the skin mask of Eq. 14 and the decimated template."""

import pytest
import torch

from facelib.model.facemodel import FaceModel
from facelib.mofa.multilevel import (CORRECTIVE_KINDS, Corrective, MultiLevelModel, code_layout, constancy_mask,
                                decimate, one_ring)
from facelib.render.shading import vertex_normals


def grid_model(n=5, ns=4, ne=3, nr=4, seed=0, dtype=torch.float64) -> FaceModel:
    """A tiny face model on an n x n grid (z = a bump), random orthonormal-ish bases."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(n, dtype=dtype), torch.arange(n, dtype=dtype), indexing="ij")
    P = torch.stack([x, y, 0.1 * (x - n / 2) ** 2], -1).reshape(-1, 3) * 10
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            tris += [[a, b, d], [a, d, c]]
    V = n * n

    def basis(k):
        return torch.linalg.qr(torch.randn(3 * V, k, generator=g, dtype=dtype))[0].T.reshape(k, V, 3)

    skin = torch.ones(V, dtype=torch.bool)
    beard = torch.zeros(V, dtype=torch.bool)
    beard[:n] = True
    return FaceModel(name="grid", mean_shape=P, shape_basis=basis(ns), sigma_s=torch.linspace(3, 1, ns, dtype=dtype),
                     expression_basis=basis(ne), sigma_e=torch.linspace(2, 1, ne, dtype=dtype),
                     mean_albedo=torch.full((V, 3), 0.5, dtype=dtype), albedo_basis=basis(nr),
                     sigma_r=torch.linspace(0.2, 0.1, nr, dtype=dtype), triangles=torch.tensor(tris),
                     masks={"skin": skin, "beard": beard})


def test_code_layout_sizes(open_model):
    m = open_model
    base = 3 + 3 + m.n_shape + m.n_expression + m.n_reflectance + 27
    assert code_layout(m).size == base
    lay = code_layout(m, 10)
    assert lay.size == base + 27 + 20
    assert lay.names[-3:] == ("illumination_final", "corrective_geometry", "corrective_reflectance")
    assert lay["delta_g"] == lay["corrective_geometry"]  # the paper's names work as aliases
    with pytest.raises(ValueError, match="n_corrective"):
        code_layout(m, -1)


def test_linear_corrective_is_affine():
    F = Corrective(7, 4, "linear").double()
    delta = torch.randn(3, 4, dtype=torch.float64)
    M, b = F.layers[0].weight, F.layers[0].bias
    assert torch.allclose(F(delta), (delta @ M.T + b).view(3, 7, 3))  # supplement Eq. 1
    # affine: F(a + b) - F(b) = F(a) - F(0)
    z = torch.zeros(1, 4, dtype=torch.float64)
    assert torch.allclose(F(delta[:1] + delta[1:2]) - F(delta[1:2]), F(delta[:1]) - F(z))


@pytest.mark.parametrize("kind", CORRECTIVE_KINDS)
def test_corrective_kinds_match_equations(kind):
    F = Corrective(5, 3, kind, hidden=6).double()
    delta = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    x = delta
    for i, layer in enumerate(F.layers):  # L_k(Psi(...)) by hand (supplement Eq. 1-3)
        x = x @ layer.weight.T + layer.bias
        if i < len(F.layers) - 1:
            x = x.clamp_min(0)
    assert len(F.layers) == CORRECTIVE_KINDS.index(kind) + 1
    assert torch.allclose(F(delta), x.view(2, 5, 3))
    assert torch.autograd.gradcheck(lambda d: F(d), (delta,))


def test_corrective_errors():
    with pytest.raises(ValueError, match="unknown corrective kind"):
        Corrective(5, 3, "cubic")
    with pytest.raises(ValueError, match="n_corrective"):
        Corrective(5, 0)
    with pytest.raises(ValueError, match="expected \\(B, 3\\)"):
        Corrective(5, 3)(torch.zeros(2, 4))


def test_levels_follow_eq_1_to_4():
    m = grid_model()
    ml = MultiLevelModel(m, n_corrective=3).double()
    lay = ml.layout
    code = torch.randn(2, lay.size, dtype=torch.float64)
    parts = lay.unpack(code)
    lv = ml(parts)
    assert torch.allclose(lv.v_b, m.geometry(parts["shape"], parts["expression"]))  # Eq. 3
    assert torch.allclose(lv.r_b, m.reflectance(parts["reflectance"]))  # Eq. 4
    assert torch.allclose(lv.v_f, lv.v_b + ml.F_g(parts["corrective_geometry"]))  # Eq. 1
    assert torch.allclose(lv.r_f, lv.r_b + ml.F_r(parts["corrective_reflectance"]))  # Eq. 2
    # gradients reach the corrective bases Theta and the coefficients delta
    code.requires_grad_(True)
    lv = ml(lay.unpack(code))
    (lv.v_f.sum() + lv.r_f.sum()).backward()
    assert ml.F_g.layers[0].weight.grad.abs().sum() > 0
    assert code.grad[:, lay["corrective_reflectance"]].abs().sum() > 0


def test_no_correctives_final_is_base():
    m = grid_model()
    ml = MultiLevelModel(m).double()
    lv = ml(ml.layout.unpack(torch.randn(1, ml.layout.size, dtype=torch.float64)))
    assert lv.F_g is None and lv.v_f is lv.v_b and lv.r_f is lv.r_b
    assert list(ml.parameters()) == []  # the base level is fixed


def test_one_ring_matches_brute_force():
    m = grid_model(4)
    e = one_ring(m.triangles, m.n_vertices)
    brute = set()
    for t in m.triangles.tolist():
        for a in t:
            for b in t:
                if a != b:
                    brute.add((a, b))
    assert set(map(tuple, e.T.tolist())) == brute
    assert e.shape[1] == len(brute)


def test_constancy_mask_excludes_hair(open_model):
    M = constancy_mask(open_model)
    assert not (M & open_model.masks["beard"]).any()
    assert (M <= open_model.masks["skin"]).all() and M.sum() > 1000


def test_decimate_keeps_exact_vertices(open_model):
    m = open_model
    c, keep = decimate(m, 800)
    assert c.n_vertices == 800 and keep.shape == (800,)
    assert len(set(keep.tolist())) == 800
    th_s, th_e = torch.randn(2, m.n_shape), torch.randn(2, m.n_expression)
    assert torch.allclose(c.geometry(th_s, th_e), m.geometry(th_s, th_e)[:, keep], atol=1e-4)
    th_r = torch.randn(2, m.n_reflectance)
    assert torch.allclose(c.reflectance(th_r), m.reflectance(th_r)[:, keep], atol=1e-5)
    assert torch.equal(keep[c.landmarks], m.landmarks)  # landmark vertices are kept exactly
    assert c.triangles.min() >= 0 and c.triangles.max() < 800
    cand = c.contour_candidates
    assert cand.shape[0] == m.contour_candidates.shape[0] and (cand.max(1).values >= 0).all()
    # the coarse mesh's normals agree with the full mesh's at the kept vertices
    nf = vertex_normals(m.mean_shape[None], m.triangles)[0, keep]
    nc = vertex_normals(c.mean_shape[None], c.triangles)[0]
    face = c.masks["face"]
    assert (nf * nc).sum(-1)[face].mean() > 0.95
    assert decimate(m, m.n_vertices)[0] is m
    with pytest.raises(ValueError, match="n_vertices"):
        decimate(m, 10)


def test_best_base_fit_recovers_model_faces_and_leaves_detail():
    from facelib.mofa.multilevel import best_base_fit

    m = grid_model(6, ns=3, ne=2, nr=3)
    ml = MultiLevelModel(m).double()
    th_s, th_e, th_r = (torch.randn(2, k, dtype=torch.float64) for k in (3, 2, 3))
    v, r = m.geometry(th_s, th_e), m.reflectance(th_r)
    vf, rf = best_base_fit(ml, v, r)
    assert torch.allclose(vf, v, atol=1e-8) and torch.allclose(rf, r, atol=1e-8)  # in the span: exact
    bump = torch.zeros_like(v)
    bump[:, 7, 2] = 1.0  # a single-vertex bump is (mostly) outside a 5-component span
    vf2, _ = best_base_fit(ml, v + bump, r)
    assert (v + bump - vf2).norm() > 0.5
