"""Tests for facelib.model.params: layout (Eq. 1), Rot_xyz (Sec. 4.2), the Sec. 5 sampler, Sec. 7 breeding."""

import math

import numpy as np
import pytest
import torch

from facelib.model.facemodel import FaceModel, orthonormal_basis
from facelib.model.params import (
    N_ILLUMINATION,
    ParamLayout,
    breed_children,
    breed_parent_index,
    illumination_rgb,
    rot_xyz,
    sample_sec5,
)

N_S, N_E, N_R = 10, 6, 8
EXPR_RANGE, MOUTH, BIAS = 3.0, 0, 1.2
N_BIG = 20000


def _basis(rng, n, V):
    b, _ = orthonormal_basis(rng.standard_normal((n, 3 * V)))
    return b.reshape(n, V, 3)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    V = 50
    return FaceModel(
        name="synthetic",
        mean_shape=rng.standard_normal((V, 3)) * 50,
        shape_basis=_basis(rng, N_S, V), sigma_s=np.linspace(5, 1, N_S),
        expression_basis=_basis(rng, N_E, V), sigma_e=np.linspace(3, 1, N_E),
        mean_albedo=rng.uniform(0.3, 0.7, (V, 3)),
        albedo_basis=_basis(rng, N_R, V), sigma_r=np.linspace(0.1, 0.01, N_R),
        triangles=np.array([[0, 1, 2], [1, 2, 3]]),
        expression_range=np.full(N_E, EXPR_RANGE),
        mouth_component=MOUTH, mouth_bias=BIAS,
    )


@pytest.fixture(scope="module")
def big(model):
    return sample_sec5(model, N_BIG, seed=123, dtype=torch.float64)


def _uniform_ok(x, a, b, n_se=5.0):
    """Range, mean and variance of samples ``x`` consistent with U(a, b)."""
    x = x.double().flatten()
    n, w = x.numel(), b - a
    assert x.min() >= a - 1e-9 and x.max() <= b + 1e-9
    assert abs(x.min().item() - a) < 0.01 * w and abs(x.max().item() - b) < 0.01 * w
    se_mean = w / math.sqrt(12 * n)
    assert abs(x.mean().item() - (a + b) / 2) < n_se * se_mean
    se_var = w ** 2 / math.sqrt(180 * n)  # Var[(x - mu)^2] = w^4 / 180
    assert abs(x.var().item() - w ** 2 / 12) < n_se * se_var


def _normal_ok(x, std, n_se=5.0):
    x = x.double().flatten()
    n = x.numel()
    assert abs(x.mean().item()) < n_se * std / math.sqrt(n)
    assert abs(x.std().item() - std) < n_se * std / math.sqrt(2 * n)


# ------------------------------------------------------------------------------ layout
def test_layout_sizes_paper():
    L = ParamLayout.inversefacenet(128, 64, 128)
    assert L.size == 350  # Eq. 1, m = 350
    assert L.names == ("rotation", "shape", "expression", "reflectance", "illumination")
    assert L.slices["rotation"] == slice(0, 3)
    assert L.slices["shape"] == slice(3, 131)
    assert L.slices["expression"] == slice(131, 195)
    assert L.slices["reflectance"] == slice(195, 323)
    assert L.slices["illumination"] == slice(323, 350)
    assert L["theta_e"] == L.slices["expression"]
    assert "theta_i" in L and "translation" not in L
    r = repr(L)
    for n in L.names:
        assert n in r
    assert "350" in r


def test_layout_extended_and_from_model(model):
    E = ParamLayout.extended(80, 64, 80, n_corrective=10)
    assert E.names == ("rotation", "translation", "scale", "shape", "expression", "reflectance",
                       "illumination", "corrective_geometry", "corrective_reflectance")
    assert E.size == 3 + 3 + 1 + 80 + 64 + 80 + 27 + 10 + 10
    E2 = ParamLayout.extended(80, 64, 80, translation=False, scale=False)
    assert E2 == ParamLayout.inversefacenet(80, 64, 80)
    assert ParamLayout.extended(5, 4, 3, scale=False).size == 3 + 3 + 5 + 4 + 3 + 27
    L = ParamLayout.from_model(model)
    assert L.size == 3 + N_S + N_E + N_R + 27
    Lx = ParamLayout.from_model(model, kind="extended", n_corrective=2)
    assert Lx.size == L.size + 3 + 1 + 4
    with pytest.raises(ValueError, match="unknown layout kind"):
        ParamLayout.from_model(model, kind="mofa")


def test_pack_unpack_round_trip():
    L = ParamLayout.extended(4, 3, 5, n_corrective=2)
    B = 7
    parts = {n: torch.randn(B, k) for n, k in L.entries}
    theta = L.pack(parts)
    assert theta.shape == (B, L.size)
    out = L.unpack(theta)
    assert list(out) == list(L.names)
    for n in L.names:
        assert torch.equal(out[n], parts[n])
    # views, not copies
    out["shape"][0, 0] = 42.0
    assert theta[0, L.slices["shape"]][0] == 42.0
    assert torch.equal(L.pack(L.unpack(theta)), theta)


def test_pack_missing_zeros_aliases_and_illumination_matrix():
    L = ParamLayout.inversefacenet(4, 3, 5)
    sh = torch.randn(2, 9, 3)
    theta = L.pack({"theta_s": torch.ones(2, 4), "illumination": sh})
    d = L.unpack(theta)
    assert torch.equal(d["shape"], torch.ones(2, 4))
    assert torch.equal(illumination_rgb(d["illumination"]), sh)
    for n in ("rotation", "expression", "reflectance"):
        assert torch.count_nonzero(d[n]) == 0
    assert L.pack({}, batch=3).shape == (3, L.size)
    assert torch.equal(L.zeros(3), torch.zeros(3, L.size))
    assert L.zeros(2, dtype=torch.float64).dtype == torch.float64


def test_illumination_rgb_order():
    theta_i = torch.arange(27.0).reshape(1, 27)
    rgb = illumination_rgb(theta_i)
    assert rgb.shape == (1, 9, 3)
    assert rgb[0, 0].tolist() == [0.0, 1.0, 2.0]  # coefficient 1, R G B
    assert rgb[0, 1, 0].item() == 3.0
    with pytest.raises(ValueError, match="27"):
        illumination_rgb(torch.zeros(1, 26))


def test_pack_unpack_errors():
    L = ParamLayout.inversefacenet(4, 3, 5)
    with pytest.raises(ValueError, match=r"'shape'.*\(2, 5\).*\(B, 4\)"):
        L.pack({"shape": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="'foo' is not in the layout"):
        L.pack({"foo": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="given twice"):
        L.pack({"shape": torch.zeros(2, 4), "theta_s": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="batch sizes"):
        L.pack({"shape": torch.zeros(2, 4), "expression": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"\(2, 41\).*\(B, 42\)"):
        L.unpack(torch.zeros(2, 41))
    with pytest.raises(ValueError, match="batch"):
        L.zeros(0)
    with pytest.raises(ValueError, match="duplicate"):
        ParamLayout((("a", 1), ("a", 2)))


# ------------------------------------------------------------------------------ rotation
def _elementary(a, b, g):
    ca, sa, cb, sb, cg, sg = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(g), math.sin(g)
    Rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    Ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    Rz = np.array([[cg, -sg, 0], [sg, cg, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def test_rot_xyz_brute_force_and_orthonormal():
    torch.manual_seed(0)
    ang = (torch.rand(64, 3, dtype=torch.float64) - 0.5) * 2 * math.pi
    R = rot_xyz(ang)
    assert R.shape == (64, 3, 3)
    ref = np.stack([_elementary(*a) for a in ang.tolist()])
    np.testing.assert_allclose(R.numpy(), ref, atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=torch.float64))


def test_rot_xyz_conventions():
    d = math.pi / 2
    z, x, y = torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])
    # yaw (beta) +90 degrees turns the face's forward direction +z to +x
    R = rot_xyz(torch.tensor([[0.0, d, 0.0]]))[0]
    torch.testing.assert_close(R @ z, x, atol=1e-6, rtol=0)
    # pitch (alpha) +90: +y -> +z ; roll (gamma) +90: +x -> +y
    torch.testing.assert_close(rot_xyz(torch.tensor([[d, 0.0, 0.0]]))[0] @ y, z, atol=1e-6, rtol=0)
    torch.testing.assert_close(rot_xyz(torch.tensor([[0.0, 0.0, d]]))[0] @ x, y, atol=1e-6, rtol=0)
    # order: x first, then y, then z (not commutative)
    a = torch.tensor([[0.3, 0.5, 0.0]])
    Rx = rot_xyz(torch.tensor([[0.3, 0.0, 0.0]]))
    Ry = rot_xyz(torch.tensor([[0.0, 0.5, 0.0]]))
    torch.testing.assert_close(rot_xyz(a), Ry @ Rx)
    assert not torch.allclose(rot_xyz(a), Rx @ Ry, atol=1e-3)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        rot_xyz(torch.zeros(2, 2))


def test_rot_xyz_gradcheck():
    ang = torch.tensor([[0.3, -0.7, 1.1], [2.0, 0.1, -0.4]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rot_xyz, (ang,))


# ------------------------------------------------------------------------------ Sec. 5
def test_sec5_shape_dtype_layout(model, big):
    L = ParamLayout.from_model(model)
    theta = sample_sec5(model, 5, seed=0)
    assert theta.shape == (5, L.size) and theta.dtype == torch.float32
    assert big.shape == (N_BIG, L.size) and big.dtype == torch.float64
    # float32 output is the float64 draw rounded
    torch.testing.assert_close(theta.double(), sample_sec5(model, 5, 0, dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)
    # an extended layout gets the same Eq. 1 entries; extra ones stay 0
    Lx = ParamLayout.from_model(model, kind="extended", n_corrective=3)
    tx = sample_sec5(model, 5, seed=0, layout=Lx)
    dx, d = Lx.unpack(tx), L.unpack(theta)
    for n in L.names:
        assert torch.equal(dx[n], d[n])
    assert torch.count_nonzero(dx["translation"]) == 0
    with pytest.raises(ValueError, match="'shape'"):
        sample_sec5(model, 5, 0, layout=ParamLayout.inversefacenet(N_S + 1, N_E, N_R))


def test_sec5_angles(model, big):
    ang = torch.rad2deg(ParamLayout.from_model(model).unpack(big)["rotation"])
    _uniform_ok(ang[:, 0], -40, 40)  # alpha, pitch
    _uniform_ok(ang[:, 1], -40, 40)  # beta, yaw
    _uniform_ok(ang[:, 2], -15, 15)  # gamma, roll


def test_sec5_shape_reflectance(model, big):
    d = ParamLayout.from_model(model).unpack(big)
    for n in ("shape", "reflectance"):
        for j in range(d[n].shape[1]):
            _normal_ok(d[n][:, j], 1.0)
    # components independent
    c = torch.corrcoef(d["shape"].T)
    assert (c - torch.eye(N_S, dtype=c.dtype)).abs().max() < 5 / math.sqrt(N_BIG)


def test_sec5_expression_with_mouth_bias(model, big):
    e = ParamLayout.from_model(model).unpack(big)["expression"]
    for j in range(N_E):
        b = BIAS if j == MOUTH else 0.0
        _uniform_ok(e[:, j], -EXPR_RANGE + b, EXPR_RANGE + b)


def test_sec5_expression_range_per_component(model):
    m = model.to()
    m.expression_range = torch.arange(1.0, N_E + 1)
    m.mouth_component, m.mouth_bias = 2, -0.5
    e = ParamLayout.from_model(m).unpack(sample_sec5(m, 4000, seed=1))["expression"]
    for j in range(N_E):
        b = -0.5 if j == 2 else 0.0
        assert e[:, j].min() >= -(j + 1) + b and e[:, j].max() <= (j + 1) + b
        assert e[:, j].max() - e[:, j].min() > 0.98 * 2 * (j + 1)


def test_sec5_illumination_monochrome(model, big):
    sh = illumination_rgb(ParamLayout.from_model(model).unpack(big)["illumination"])
    assert torch.equal(sh[..., 0], sh[..., 1]) and torch.equal(sh[..., 0], sh[..., 2])
    _uniform_ok(sh[:, 0, 0], 0.6, 1.2)
    for k in range(1, 9):
        _uniform_ok(sh[:, k, 0], -0.2, 0.2)


def test_sec5_determinism_and_errors(model):
    a = sample_sec5(model, 16, seed=7)
    assert torch.equal(a, sample_sec5(model, 16, seed=7))
    assert not torch.equal(a, sample_sec5(model, 16, seed=8))
    assert torch.equal(a, sample_sec5(model, 16, seed=7, device="cpu"))
    with pytest.raises(ValueError, match="batch"):
        sample_sec5(model, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sample_sec5(model, 2, seed=None)


# ------------------------------------------------------------------------------ Sec. 7
def test_breed_shapes_order_and_parent_index(model):
    parents = sample_sec5(model, 4, seed=3)
    kids = breed_children(parents, model, seed=0, children=3)
    assert kids.shape == (12, parents.shape[1]) and kids.dtype == parents.dtype
    idx = breed_parent_index(4, 3)
    assert idx.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # every child is close to its own parent, farther from the others
    dist = torch.cdist(kids.double(), parents.double())
    assert torch.equal(dist.argmin(1), idx)
    assert breed_children(parents, model, seed=0).shape == (8, parents.shape[1])  # default: 2
    # determinism
    assert torch.equal(kids, breed_children(parents, model, seed=0, children=3))
    assert not torch.equal(kids, breed_children(parents, model, seed=1, children=3))
    # a layout works in place of the model
    L = ParamLayout.from_model(model)
    assert torch.equal(kids, breed_children(parents, L, seed=0, children=3))


def test_breed_noise_statistics(model):
    L = ParamLayout.from_model(model)
    parents = sample_sec5(model, 5000, seed=4, dtype=torch.float64)
    kids = breed_children(parents, model, seed=5)
    delta = L.unpack(kids - parents.repeat_interleave(2, 0))
    ang = torch.rad2deg(delta["rotation"])
    assert ang.abs().max() <= 5.0 + 1e-9
    for j in range(3):
        _uniform_ok(ang[:, j], -5, 5)
    _normal_ok(delta["shape"], 0.05)
    _normal_ok(delta["expression"], 0.1)
    _normal_ok(delta["reflectance"], 0.2)
    _normal_ok(delta["illumination"], 0.02)
    # illumination becomes coloured: channels differ, independently perturbed
    sh = illumination_rgb(L.unpack(kids)["illumination"])
    assert (sh[..., 0] != sh[..., 1]).all() and (sh[..., 1] != sh[..., 2]).all()
    dsh = illumination_rgb(delta["illumination"])
    c = torch.corrcoef(torch.stack([dsh[..., 0].flatten(), dsh[..., 1].flatten()]))[0, 1]
    assert abs(c) < 5 / math.sqrt(dsh[..., 0].numel())


def test_breed_keeps_extra_entries_and_gradient(model):
    Lx = ParamLayout.from_model(model, kind="extended", n_corrective=2)
    parents = torch.randn(3, Lx.size, dtype=torch.float64, requires_grad=True)
    kids = breed_children(parents, Lx, seed=0)
    d = Lx.unpack(kids - parents.detach().repeat_interleave(2, 0))
    for n in ("translation", "scale", "corrective_geometry", "corrective_reflectance"):
        assert torch.count_nonzero(d[n]) == 0
    kids.sum().backward()
    assert torch.equal(parents.grad, torch.full_like(parents, 2.0))


def test_breed_errors(model):
    theta = sample_sec5(model, 2, seed=0)
    with pytest.raises(ValueError, match="children"):
        breed_children(theta, model, seed=0, children=0)
    with pytest.raises(ValueError, match="expected"):
        breed_children(theta[:, :-1], model, seed=0)
    with pytest.raises(ValueError, match="FaceModel or a ParamLayout"):
        breed_children(theta, "model", seed=0)
