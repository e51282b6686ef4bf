"""Fine detail beyond the 3DMM (facelib.model.detail): determinism, mask, amplitude bound, the features
where they should be, and the displacement along the normals."""

import pytest
import torch

from facelib.model.detail import apply_detail, detail_displacement, detail_mask
from facelib.render.shading import vertex_normals


def test_deterministic_and_batch_independent(open_model):
    a = detail_displacement(open_model, 3, seed=5)
    b = detail_displacement(open_model, 3, seed=5)
    assert torch.equal(a, b)
    # sample b depends on (seed, b) only: a smaller batch gives the same first rows
    assert torch.equal(detail_displacement(open_model, 2, seed=5), a[:2])
    assert a.shape == (3, open_model.n_vertices) and a.dtype == torch.float32


def test_seeds_and_samples_differ(open_model):
    a = detail_displacement(open_model, 2, seed=0)
    b = detail_displacement(open_model, 2, seed=1)
    assert (a - b).abs().max() > 0.3
    assert (a[0] - a[1]).abs().max() > 0.3


def test_zero_outside_mask_and_amplitude_bound(open_model):
    d = detail_displacement(open_model, 4, seed=2, amplitude_mm=2.5, dtype=torch.float64)
    skin = open_model.masks["skin"]
    assert (d[:, ~skin] == 0).all()
    assert d.abs().max() <= 2.5 + 1e-12
    # the features use the range: the deepest groove of each face reaches well below -1 mm
    assert (d.min(dim=1).values < -1.0).all()
    # zero at the mask border too (tapered, no step where skin meets lips or eyes)
    w = detail_mask(open_model)
    assert ((w > 0) <= skin).all() and w.max() == 1.0
    tri = open_model.triangles
    edge_to_outside = skin[tri].any(1) & ~skin[tri].all(1)
    border = torch.unique(tri[edge_to_outside])
    assert (d[:, border].abs() == 0).all()
    # amplitude scales linearly
    d1 = detail_displacement(open_model, 4, seed=2, amplitude_mm=1.0, dtype=torch.float64)
    assert torch.allclose(d, 2.5 * d1)


def test_features_sit_where_the_anatomy_says(open_model):
    """Forehead wrinkles above the brows, nasolabial folds beside the nose: deep grooves there, and
    the fine random field alone (elsewhere) stays within its 15 % share of the amplitude."""
    d = detail_displacement(open_model, 6, seed=3, amplitude_mm=1.0, dtype=torch.float64)
    P = open_model.mean_shape.double()
    L = P[open_model.landmarks]
    brow_y = L[17:27, 1].mean()
    forehead = (P[:, 1] > brow_y + 8) & (P[:, 1] < brow_y + 45) & (P[:, 0].abs() < 30) & open_model.masks["skin"]
    assert (d[:, forehead].min(1).values < -0.35).all()
    cheek = (P[:, 1] < L[31, 1]) & (P[:, 1] > L[48, 1] - 12) & (P[:, 0].abs() > L[48, 0].abs()) \
        & (P[:, 0].abs() < L[48, 0].abs() + 20) & open_model.masks["skin"]
    assert (d[:, cheek].min(1).values < -0.45).all()
    # far from every feature (the lower jaw sides) only the random field acts
    jaw = (P[:, 1] < -20) & (P[:, 0].abs() > 68) & open_model.masks["skin"]
    assert jaw.sum() > 10
    assert d[:, jaw].abs().max() <= 0.15 + 1e-9


def test_apply_detail_moves_along_normals(open_model):
    torch.manual_seed(0)
    v = open_model.mean_shape[None].double().repeat(2, 1, 1)
    d = detail_displacement(open_model, 2, seed=4, dtype=torch.float64)
    out = apply_detail(v, open_model.triangles, d)
    n = vertex_normals(v, open_model.triangles)
    step = out - v
    assert torch.allclose(step, d[..., None] * n)
    assert torch.allclose(step.norm(dim=-1), d.abs(), atol=1e-9)
    # differentiable in the displacement
    dd = d.clone().requires_grad_(True)
    apply_detail(v, open_model.triangles, dd).sum().backward()
    assert torch.allclose(dd.grad, n.sum(-1))


def test_errors(open_model):
    with pytest.raises(ValueError, match="batch"):
        detail_displacement(open_model, 0, seed=0)
    with pytest.raises(ValueError, match="amplitude"):
        detail_displacement(open_model, 1, seed=0, amplitude_mm=-1.0)
    v = open_model.mean_shape[None]
    with pytest.raises(ValueError, match="displacement"):
        apply_detail(v, open_model.triangles, torch.zeros(1, 5))


def test_coarse_out_of_model_content_is_bounded_and_leaves_the_rest_of_the_face(open_model):
    """``wild_batch(out_of_model="coarse")``: the same parameters, camera and background as the fine
    wild face; the mesh moves by at most WILD_COARSE's amplitude plus nothing outside the detail mask,
    along the normals, smoothly (neighbouring vertices move alike); the albedo changes on the skin only."""
    from facelib.data.wild import WILD_COARSE, coarse_out_of_model, wild_batch
    from facelib.model.detail import detail_mask

    m = open_model
    a = wild_batch(m, 2, seed=3, size=48)
    b = wild_batch(m, 2, seed=3, size=48, out_of_model="coarse")
    assert torch.equal(a["theta"], b["theta"]) and torch.equal(a["focal"], b["focal"])
    disp, dalb = coarse_out_of_model(m, 2, 9, dtype=torch.float64)
    assert disp.shape == (2, m.n_vertices) and dalb.shape == (2, m.n_vertices, 3)
    assert disp.abs().max() <= WILD_COARSE["geometry_mm"] and disp.abs().max() > 0.5 * WILD_COARSE["geometry_mm"]
    assert (disp[:, detail_mask(m) == 0] == 0).all()
    skin = m.masks.get("skin", m.masks["face"])
    assert (dalb[:, ~skin] == 0).all() and dalb.norm(dim=-1).max() <= WILD_COARSE["albedo"] + 1e-9
    e = m.triangles[:, :2]  # smooth bumps: the surface tilts by less than 45 degrees (slope < 1 mm per mm)
    edge = (m.mean_shape[e[:, 0]] - m.mean_shape[e[:, 1]]).norm(dim=-1).double()
    assert ((disp[:, e[:, 0]] - disp[:, e[:, 1]]).abs() / edge.clamp_min(1e-6)).max() < 1.0
    moved = (b["verts_model"] - a["verts_model"]).norm(dim=-1)
    assert moved.max() <= WILD_COARSE["geometry_mm"] + 1e-4 and moved.mean() > 0.1
    with pytest.raises(ValueError, match="out_of_model"):
        wild_batch(m, 1, seed=0, size=32, out_of_model="medium")
