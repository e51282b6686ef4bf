"""The open face model: mesh validity, Eq. 2-3, masks, landmarks, priors and determinism."""

import hashlib

import numpy as np
import pytest
import torch

from facelib import FaceModel
from facelib.model.facemodel import LANDMARK_GROUPS
from facelib.model.open_model import build_open_model, build_template, positions, mean_identity


def test_sizes_and_units(open_model):
    m = open_model
    assert m.n_vertices >= 10_000
    assert m.n_shape >= 80 and m.n_reflectance >= 80
    assert len(m.metadata["blendshapes"]) >= 25
    assert m.n_expression < len(m.metadata["blendshapes"])  # compressed, as 76 -> 64 in the paper
    width = float(m.mean_shape[:, 0].max() - m.mean_shape[:, 0].min())
    assert 120 <= width <= 170, width
    info = m.info()
    assert info["vertices"] == m.n_vertices and info["landmarks"] == 68


def _edges(tris):
    return np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])


def test_mesh_is_manifold_with_consistent_winding(open_model):
    tris = open_model.triangles.numpy()
    assert len(np.unique(np.sort(tris, 1), axis=0)) == len(tris), "duplicate triangles"
    assert (tris[:, 0] != tris[:, 1]).all() and (tris[:, 1] != tris[:, 2]).all() and (tris[:, 0] != tris[:, 2]).all()
    e = _edges(tris)
    # consistent winding: every directed edge occurs once at most
    _, cnt_dir = np.unique(e, axis=0, return_counts=True)
    assert cnt_dir.max() == 1
    und, cnt = np.unique(np.sort(e, 1), axis=0, return_counts=True)
    assert cnt.max() <= 2  # edge-manifold
    boundary = und[cnt == 1]
    deg = np.bincount(boundary.ravel(), minlength=open_model.n_vertices)
    assert set(np.unique(deg)) <= {0, 2}  # boundary vertices are manifold
    # exactly one boundary loop: the outer rim of the face
    from facelib.model.open_model import _boundary_loops

    loops = _boundary_loops(tris)
    assert len(loops) == 1 and len(loops[0]) == int((deg == 2).sum())
    # every vertex is used
    assert np.bincount(tris.ravel(), minlength=open_model.n_vertices).min() > 0


def test_normals_point_outwards(open_model):
    from facelib.model.open_model import vertex_normals

    P = open_model.mean_shape.numpy()
    n = vertex_normals(P, open_model.triangles.numpy())
    face = open_model.masks["skin"].numpy()
    # outward = away from the head centre for the skin surface
    assert (np.einsum("vc,vc->v", n[face], P[face]) > 0).mean() > 0.97
    for side in ("eye_left", "eye_right"):
        ids = open_model.masks[side].numpy()
        c = P[ids].mean(0)
        assert (np.einsum("vc,vc->v", n[ids], P[ids] - c) > 0).all()


def test_bases_orthonormal_and_sigmas_sorted(open_model):
    for B, s in ((open_model.shape_basis, open_model.sigma_s),
                 (open_model.expression_basis, open_model.sigma_e),
                 (open_model.albedo_basis, open_model.sigma_r)):
        F = B.reshape(B.shape[0], -1).double()
        assert torch.allclose(F @ F.T, torch.eye(len(F), dtype=torch.float64), atol=1e-4)
        assert (s > 0).all() and (s[1:] <= s[:-1] + 1e-6).all()


def test_eq2_eq3_against_brute_force(open_model):
    m = open_model
    g = torch.Generator().manual_seed(1)
    ts, te, tr = (torch.randn(2, n, generator=g) for n in (m.n_shape, m.n_expression, m.n_reflectance))
    V = m.geometry(ts, te).double()
    R = m.reflectance(tr).double()
    for b in range(2):
        ref = m.mean_shape.double().clone()
        for i in range(m.n_shape):
            ref += m.shape_basis[i].double() * float(m.sigma_s[i]) * float(ts[b, i])
        for j in range(m.n_expression):
            ref += m.expression_basis[j].double() * float(m.sigma_e[j]) * float(te[b, j])
        assert torch.allclose(V[b], ref, atol=1e-2)  # mm, float32 accumulation
        ref = m.mean_albedo.double().clone()
        for i in range(m.n_reflectance):
            ref += m.albedo_basis[i].double() * float(m.sigma_r[i]) * float(tr[b, i])
        assert torch.allclose(R[b], ref, atol=1e-4)
    # fewer coefficients than components: the rest are zero
    assert torch.allclose(m.geometry(ts[:, :5]), m.geometry(torch.cat([ts[:, :5], torch.zeros(2, m.n_shape - 5)], 1)))


def test_masks(open_model):
    m = open_model
    k = {n: v.numpy() for n, v in m.masks.items()}
    for name in ("face", "skin", "mouth_interior", "lips_boundary", "eyes"):
        assert k[name].any(), name
    assert not (k["mouth_interior"] & k["face"]).any()
    assert not (k["skin"] & ~k["face"]).any()
    assert not (k["skin"] & (k["eyes"] | k["lips"] | k["mouth_interior"])).any()
    assert (k["eyes"] == (k["eye_left"] | k["eye_right"])).all()
    names = m.region_names
    reg = m.region.numpy()
    assert (reg[k["mouth_interior"]] == names.index("mouth_interior")).all()
    assert (reg[k["eyes"]] == names.index("eyeball")).all()
    # the lips boundary is the rim of the mouth cavity: every boundary vertex touches the cavity
    tris = m.triangles.numpy()
    touches = np.zeros(m.n_vertices, bool)
    cav = tris[k["mouth_interior"][tris].any(1)]
    touches[cav.ravel()] = True
    assert touches[k["lips_boundary"]].all()
    # left/right symmetry of the masks: mirrored mean-shape positions carry the same label
    P = m.mean_shape.numpy()
    face_ids = np.where(k["skin"])[0][::97]
    from scipy.spatial import cKDTree

    tree = cKDTree(P)
    _, mirror = tree.query(P[face_ids] * np.array([-1, 1, 1]))
    assert (k["skin"][mirror]).mean() > 0.95


REGION_OF_GROUP = {
    "jaw": {"jaw", "chin", "cheek", "side"},
    "brow_right": {"brow"}, "brow_left": {"brow"},
    "nose_bridge": {"nose"}, "nose_base": {"nose"},
    "eye_right": {"eyelid"}, "eye_left": {"eyelid"},
    "lips_outer": {"lips"}, "lips_inner": {"lips"},
}


def test_landmarks_lie_in_their_regions(open_model):
    m = open_model
    lm = m.landmarks.numpy()
    assert lm.shape == (68,) and len(set(lm.tolist())) == 68
    names = m.region_names
    for group, ids in LANDMARK_GROUPS.items():
        got = {names[int(m.region[lm[i]])] for i in ids}
        assert got <= REGION_OF_GROUP[group], (group, got)
    # inner lip landmarks are on the lips boundary; eye landmarks touch the eyelid opening
    assert m.masks["lips_boundary"][lm[60:68]].all()
    # image-left (iBUG 0-7, 17-21, 36-41, 48) is the subject's right: x < 0
    P = m.mean_shape.numpy()
    for i in list(range(0, 8)) + list(range(17, 22)) + list(range(36, 42)) + [48, 31]:
        assert P[lm[i], 0] < 0, i
    # mirrored pairs are mirror images (x -> -x) within 3 mm
    pairs = [(0, 16), (4, 12), (17, 26), (19, 24), (36, 45), (39, 42), (31, 35), (48, 54), (60, 64)]
    for a, b in pairs:
        assert np.allclose(P[lm[a]] * [-1, 1, 1], P[lm[b]], atol=3.0), (a, b)
    # vertical order of the anatomy: brows > eyes > nose tip > mouth > chin
    y = lambda i: P[lm[i], 1]  # noqa: E731
    assert y(19) > y(37) > y(30) > y(33) > y(51) > y(57) > y(8)
    # the nose tip is the most forward landmark
    assert np.argmax(P[lm, 2]) in (30, 29, 33)


def test_sliding_contour(open_model):
    m = open_model
    sl = m.landmark_sliding.numpy()
    assert sl[:17].all() and not sl[17:].any()
    cc = m.contour_candidates.numpy()
    assert cc.shape[0] == 17 and (cc >= -1).all()
    for k in range(17):
        cand = cc[k][cc[k] >= 0]
        assert len(cand) >= 5
        assert m.landmarks[k].item() in cand
        assert m.masks["face"][cand].all()


def test_mouth_component_opens_the_mouth(open_model):
    m = open_model
    lm = m.landmarks
    te = torch.zeros(3, m.n_expression)
    te[0, m.mouth_component] = -m.expression_range[m.mouth_component] / 2
    te[2, m.mouth_component] = m.expression_range[m.mouth_component]
    V = m.geometry(torch.zeros(3, m.n_shape), te)
    gap = (V[:, lm[62], 1] - V[:, lm[66], 1])
    assert gap[2] > gap[1] + 10  # opens by more than 1 cm
    assert gap[0] < gap[1]
    assert 0 < m.mouth_bias < float(m.expression_range[m.mouth_component])
    assert m.metadata["blendshapes"][0] == "jaw_open"


def test_albedo_in_range_within_3_sigma(open_model):
    m = open_model
    a0, B, s = m.mean_albedo, m.albedo_basis, m.sigma_r
    for sign in (-3.0, 3.0):
        X = a0[None] + sign * s[:, None, None] * B
        assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    g = torch.Generator().manual_seed(7)
    R = m.reflectance(torch.randn(2000, m.n_reflectance, generator=g).clamp(-3, 3))
    assert float(R.min()) >= 0.0 and float(R.max()) <= 1.0


def test_expression_prior_spans_the_blendshapes(open_model):
    m = open_model
    r = m.expression_range
    assert r.shape == (m.n_expression,) and (r > 0).all()
    # no component range is wider than the paper's 12 sigma
    assert float(r.max()) <= 12.0


def test_template_is_deterministic_and_identity_in_correspondence():
    T1, T2 = build_template(), build_template()
    assert np.array_equal(T1.tris, T2.tris) and np.array_equal(T1.U, T2.U)
    P = positions(T1, mean_identity())
    assert P.shape == (T1.n_vertices, 3) and np.isfinite(P).all()


def test_build_is_bit_identical(tmp_path, open_model):
    """Two builds from scratch give the same bytes (and the same as the cached model)."""
    a = build_open_model(progress=False).save(tmp_path / "a.npz")
    b = build_open_model(progress=False).save(tmp_path / "b.npz")
    ha = hashlib.sha256(a.read_bytes()).hexdigest()
    assert ha == hashlib.sha256(b.read_bytes()).hexdigest()
    c = open_model.save(tmp_path / "c.npz")
    assert ha == hashlib.sha256(c.read_bytes()).hexdigest()


def test_save_load_roundtrip_and_device(tmp_path, open_model):
    p = open_model.save(tmp_path / "m.npz")
    m2 = FaceModel.load(p)
    assert m2.name == "open" and m2.mouth_component == open_model.mouth_component
    assert torch.equal(m2.shape_basis, open_model.shape_basis)
    assert set(m2.masks) == set(open_model.masks)
    m3 = open_model.to("cpu", dtype=torch.float64)
    assert m3.mean_shape.dtype == torch.float64 and m3.triangles.dtype == torch.int64


def test_truncated_model_file_gives_clear_error(tmp_path, open_model):
    from facelib import ModelFileError

    p = open_model.save(tmp_path / "m.npz")
    bad = tmp_path / "cut.npz"
    bad.write_bytes(p.read_bytes()[: 5000])
    with pytest.raises(ModelFileError, match="cut.npz"):
        FaceModel.load(bad)
    with pytest.raises(ModelFileError, match="no such"):
        FaceModel.load(tmp_path / "missing.npz")
