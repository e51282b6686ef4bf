"""The self-supervised loss of Tewari et al. 2018 (Eq. 6-15) against brute-force references and
float64 gradient checks."""

import math

import pytest
import torch

from facelib.render.camera import perspective_project
from facelib.mofa.multilevel import one_ring
from facelib.render.points import backproject_rays
from facelib.mofa.selfsup import (STAGE1, STAGE1_PAPER, STAGE2, STAGE2_PAPER, LossWeights, chromaticity_weights, constancy_partners, e_glo,
                             e_photo, e_photo_level, e_ref, e_smo, e_sparse, e_sta, e_std, e_total, laplacian,
                             slide_contour)

from test_multilevel import grid_model

D = torch.float64


def test_supplement_weights():
    assert STAGE1_PAPER == LossWeights(photo=1.9, reg=3e-5, rstd=0.002, smo=0, ref=0, glo=0, sta=0)
    assert STAGE1 == STAGE1_PAPER.replace(reg=0.1)  # our units (issue 16)
    assert STAGE2_PAPER == LossWeights(photo=0.2, reg=0.003, rstd=0.002, smo=3.2e4, ref=13, glo=80, sta=0.08)
    assert STAGE2 == STAGE2_PAPER.replace(photo=3.8)  # our units (issue 16)
    assert STAGE2.replace(smo=0, sta=0).smo == 0
    with pytest.raises(ValueError, match="unknown loss weights"):
        STAGE2.replace(smoothness=0)


def test_e_photo_brute_force():
    g = torch.Generator().manual_seed(0)
    B, H, W, N = 2, 6, 7, 9
    image = torch.rand(B, 3, H, W, generator=g, dtype=D)
    ij = torch.stack([torch.randint(0, W, (B, N), generator=g), torch.randint(0, H, (B, N), generator=g)], -1)
    u = ij.to(D) + 0.5  # pixel centres: I(u) is the pixel value
    c = torch.rand(B, N, 3, generator=g, dtype=D)
    vis = torch.rand(B, N, generator=g) > 0.3
    ref = torch.zeros(B, dtype=D)
    for b in range(B):
        for i in range(N):
            if vis[b, i]:
                ref[b] += (image[b, :, ij[b, i, 1], ij[b, i, 0]] - c[b, i]).norm() / N  # Eq. 9, 1/N over all
    assert torch.allclose(e_photo_level(image, u, c, vis), ref)
    assert torch.allclose(e_photo(image, [(u, c, vis), (u, c, vis)]), 2 * ref)  # two levels
    c.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda cc: e_photo_level(image, u + 0.2, cc, vis), (c,))
    with pytest.raises(ValueError, match="share"):
        e_photo_level(image, u, c[:, :3], vis)


def test_backproject_inverts_projection():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 5, 3, generator=g, dtype=D) * 30 + torch.tensor([0, 0, -600.0], dtype=D)
    s = perspective_project(p, 500.0, (32.0, 30.0))
    d = backproject_rays(s[..., :2], 500.0, torch.tensor([32.0, 30.0], dtype=D))
    assert torch.allclose(d, p / p.norm(dim=-1, keepdim=True))


def test_slide_contour_picks_vertex_nearest_to_ray():
    g = torch.Generator().manual_seed(2)
    B, N = 2, 30
    v = torch.randn(B, N, 3, generator=g, dtype=D) * 40 + torch.tensor([0, 0, -500.0], dtype=D)
    landmarks = torch.tensor([0, 1, 2, 3])
    sliding = torch.tensor([False, True, False, True])
    cand = torch.tensor([[5, 6, 7, 8, -1], [10, 11, 12, 13, 14]])
    f = torch.rand(B, 4, 2, generator=g, dtype=D) * 64
    focal, pp = 300.0, torch.tensor([32.0, 32.0], dtype=D)
    k = slide_contour(v, f, focal, pp, landmarks, sliding, cand)
    assert torch.equal(k[:, [0, 2]], torch.tensor([[0, 2], [0, 2]]))  # fixed points keep their vertex
    for b in range(B):
        for s, l in enumerate([1, 3]):
            x = (f[b, l, 0] - 32) / focal
            y = -(f[b, l, 1] - 32) / focal
            d = torch.tensor([x, y, -1.0], dtype=D)
            d = d / d.norm()
            dists = {int(c): float((v[b, c] - (v[b, c] @ d) * d).norm()) for c in cand[s] if c >= 0}
            assert int(k[b, l]) == min(dists, key=dists.get)


def test_e_sparse_brute_force():
    g = torch.Generator().manual_seed(3)
    f, u = torch.rand(2, 5, 2, generator=g, dtype=D), torch.rand(2, 5, 2, generator=g, dtype=D)
    c = torch.rand(2, 5, generator=g, dtype=D)
    ref = torch.stack([sum(c[b, i] * ((f[b, i] - u[b, i]) * 3).square().sum() for i in range(5)) / 5
                       for b in range(2)])
    assert torch.allclose(e_sparse(f, u, c, scale=3.0), ref)  # Eq. 10
    assert torch.allclose(e_sparse(f, u), ((f - u) ** 2).sum(-1).mean(1))


def test_e_std_is_tikhonov_in_sigma_units():
    m = grid_model()
    a_s, a_e, beta = torch.randn(2, 4, dtype=D), torch.randn(2, 3, dtype=D), torch.randn(2, 4, dtype=D)
    # coefficients in units of sigma: alpha_k / sigma_k of Eq. 11 is the raw coefficient
    ref = (a_s ** 2).sum(1) + (a_e ** 2).sum(1) + 0.002 * (beta ** 2).sum(1)
    assert torch.allclose(e_std(a_s, a_e, beta, 0.002), ref)
    assert m.sigma_s.shape == (4,)


def test_laplacian_matches_dense_and_gradcheck():
    m = grid_model(4)
    V = m.n_vertices
    e = one_ring(m.triangles, V)
    A = torch.zeros(V, V, dtype=D)
    A[e[0], e[1]] = 1
    L = torch.eye(V, dtype=D) - A / A.sum(1, keepdim=True)  # (1/|N_i|) sum_j (x_i - x_j)
    x = torch.randn(2, V, 3, dtype=D, requires_grad=True)
    assert torch.allclose(laplacian(x, e), L @ x)
    assert torch.autograd.gradcheck(lambda y: laplacian(y, e), (x,))
    ref = 7.0 * (L @ x).square().sum(-1).mean(1)
    assert torch.allclose(e_smo(x, e, 7.0), ref)  # Eq. 12
    const = torch.ones(1, V, 3, dtype=D) * torch.tensor([1.0, -2.0, 3.0], dtype=D)
    assert torch.allclose(e_smo(const, e), torch.zeros(1, dtype=D))  # a rigid shift is smooth


def test_chromaticity_weights():
    e = torch.tensor([[0, 1, 0], [1, 0, 2]])
    col = torch.tensor([[[0.2, 0.3, 0.1], [0.4, 0.6, 0.2], [0.1, 0.3, 0.2]]], dtype=D)
    w = chromaticity_weights(col, e, alpha=50.0)
    assert torch.allclose(w[0, :2], torch.ones(2, dtype=D), atol=1e-4)  # same chromaticity, brighter: shading
    ch = col[0] / col[0].sum(-1, keepdim=True)
    assert torch.allclose(w[0, 2], torch.exp(-50 * (ch[0] - ch[2]).norm()), atol=1e-4)


def test_e_ref_brute_force_and_gradcheck():
    m = grid_model(3)
    V = m.n_vertices
    e = one_ring(m.triangles, V)
    g = torch.Generator().manual_seed(4)
    r = torch.rand(2, V, 3, generator=g, dtype=D, requires_grad=True)
    w = torch.rand(2, e.shape[1], generator=g, dtype=D)
    ref = torch.zeros(2, dtype=D)
    for b in range(2):
        for k, (i, j) in enumerate(e.T.tolist()):
            ref[b] += w[b, k] * (r[b, i] - r[b, j]).norm() ** 0.9
    ref = 13.0 * ref / V  # Eq. 13 with w_ref = 13, p = 0.9
    assert torch.allclose(e_ref(r, e, w, 13.0, p=0.9, eps=0.0), ref)
    assert torch.allclose(e_ref(r, e, w), ref, rtol=1e-4)  # the default eps barely changes it
    assert torch.autograd.gradcheck(lambda x: e_ref(x, e, w, 13.0), (r,))


def test_constancy_partners_seeded():
    mask = torch.zeros(50, dtype=torch.bool)
    mask[10:40] = True
    idx, part = constancy_partners(mask, 6, seed=3)
    assert torch.equal(idx, torch.arange(10, 40)) and part.shape == (30, 6)
    assert mask[part].all()
    assert torch.equal(part, constancy_partners(mask, 6, seed=3)[1])
    assert not torch.equal(part, constancy_partners(mask, 6, seed=4)[1])
    with pytest.raises(ValueError, match="bool"):
        constancy_partners(mask.long())


def test_e_glo_and_e_sta_brute_force():
    g = torch.Generator().manual_seed(5)
    r = torch.rand(2, 20, 3, generator=g, dtype=D, requires_grad=True)
    mask = torch.arange(20) % 2 == 0
    idx, part = constancy_partners(mask, 6, seed=0)
    ref = torch.stack([sum((r[b, i] - r[b, j]).square().sum() for n, i in enumerate(idx.tolist())
                           for j in part[n].tolist()) / len(idx) for b in range(2)])
    assert torch.allclose(e_glo(r, idx, part, 80.0), 80.0 * ref)  # Eq. 14
    assert torch.autograd.gradcheck(lambda x: e_glo(x, idx, part, 1.0), (r,))
    const = torch.full((1, 20, 3), 0.4, dtype=D)
    assert e_glo(const, idx, part) == 0
    Fg = torch.randn(2, 20, 3, generator=g, dtype=D)
    assert torch.allclose(e_sta(Fg, 0.08), 0.08 * Fg.square().sum(-1).mean(1))  # Eq. 15


def test_e_total_composition():
    t = {k: torch.tensor([float(i + 1)], dtype=D) for i, k in enumerate(["sparse", "photo", "std", "smo",
                                                                          "ref", "glo", "sta"])}
    w = STAGE2
    ref = 1 + w.photo * 2 + w.reg * (3 + 4 + 5 + 6 + 7)  # Eq. 6-8
    assert math.isclose(float(e_total(t, w)), ref)
    t3 = {k: t[k] for k in ("sparse", "photo", "std")}
    assert math.isclose(float(e_total(t3, STAGE1_PAPER)), 1 + 1.9 * 2 + 3e-5 * 3)
    with pytest.raises(ValueError, match="needs the terms"):
        e_total({"photo": t["photo"]}, w)
