"""Tests of facelib.model.loaders: Basel Face Model 2009 .mat, OBJ-folder models, the OBJ reader/writer."""

import re

import numpy as np
import pytest
import scipy.io
import torch

import facelib
from facelib.model.facemodel import FaceModel, ModelFileError
from facelib.model.loaders import BFM_KEYS, load_bfm2009, load_obj_folder, read_obj, write_obj

NX, NY = 6, 5  # a 30-vertex grid mesh
V = NX * NY
K = 4


# ------------------------------------------------------------------------------------------ helpers
def grid_mesh():
    """30 vertices (mm) of a bumpy grid facing +z and its triangles, counter-clockwise seen from +z."""
    x, y = np.meshgrid(np.linspace(-50, 50, NX), np.linspace(-40, 40, NY))
    z = 80.0 - 0.01 * (x ** 2 + y ** 2)
    verts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    tris = []
    for j in range(NY - 1):
        for i in range(NX - 1):
            a, b, c, d = j * NX + i, j * NX + i + 1, (j + 1) * NX + i, (j + 1) * NX + i + 1
            tris += [(a, b, d), (a, d, c)]
    return verts, np.array(tris, dtype=np.int64)


def normals_z(verts, tris):
    v = np.asarray(verts, dtype=np.float64)
    return np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])[:, 2]


def orthonormal_columns(rng, rows, cols):
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def bfm_dict(rng, expression=True, exp_mu=True):
    """A tiny BFM 2009 layout: micrometres, 0..255 colours, 1-based clockwise ``tl``."""
    verts, tris = grid_mesh()
    d = {
        "shapeMU": (verts * 1000.0).reshape(-1, 1).astype(np.float32),
        "shapePC": orthonormal_columns(rng, 3 * V, K).astype(np.float32),
        "shapeEV": np.array([[4000.0], [3000.0], [2000.0], [1000.0]], dtype=np.float32),
        "texMU": rng.uniform(50, 200, (3 * V, 1)).astype(np.float32),
        "texPC": orthonormal_columns(rng, 3 * V, K).astype(np.float32),
        "texEV": np.array([[40.0], [20.0], [10.0], [5.0]], dtype=np.float32),
        "tl": (tris[:, [0, 2, 1]] + 1).astype(np.float64),  # clockwise, 1-based, as BFM stores them
    }
    if expression:
        d.update(expression_dict(rng, mu=exp_mu))
    return d


def expression_dict(rng, n_vertices=V, mu=True, ke=3):
    d = {"expPC": orthonormal_columns(rng, 3 * n_vertices, ke).astype(np.float32),
         "expEV": np.array([[5000.0], [2500.0], [1000.0]][:ke], dtype=np.float32)}
    if mu:
        d["expMU"] = rng.uniform(-500, 500, (3 * n_vertices, 1)).astype(np.float32)
    return d


def save_mat(path, d):
    scipy.io.savemat(path, d)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def covariance(basis, sigma):
    """``B^T diag(sigma^2) B`` of an ``(N, V, 3)`` basis, float64."""
    B = basis.double().reshape(basis.shape[0], -1)
    return B.T @ torch.diag(sigma.double() ** 2) @ B


# ================================================================================ BFM 2009 .mat
def test_bfm_units_and_structure(tmp_path, rng):
    d = bfm_dict(rng, expression=False)
    m = load_bfm2009(save_mat(tmp_path / "model.mat", d))
    assert m.name == "bfm2009"
    assert (m.n_vertices, m.n_shape, m.n_expression, m.n_reflectance) == (V, K, 0, K)
    np.testing.assert_allclose(m.mean_shape.numpy(), d["shapeMU"].reshape(V, 3) / 1000, rtol=1e-6)
    np.testing.assert_allclose(m.sigma_s.numpy(), d["shapeEV"].ravel() / 1000, rtol=1e-5)
    np.testing.assert_allclose(m.mean_albedo.numpy(), d["texMU"].reshape(V, 3) / 255, rtol=1e-6)
    np.testing.assert_allclose(m.sigma_r.numpy(), d["texEV"].ravel() / 255, rtol=1e-5)
    assert 0 <= m.mean_albedo.min() and m.mean_albedo.max() <= 1
    assert m.expression_basis.shape == (0, V, 3) and m.sigma_e.shape == (0,)
    assert set(m.masks) == {"face"} and bool(m.masks["face"].all())
    assert m.landmarks is None
    # Zero expression components: Eq. 2 still works with an empty theta_e.
    g = m.geometry(torch.zeros(2, K), torch.zeros(2, 0))
    torch.testing.assert_close(g, m.mean_shape.expand(2, V, 3))
    # Bases have orthonormal rows and keep the file's signs (no re-orthonormalisation needed).
    B = m.shape_basis.double().reshape(K, -1)
    torch.testing.assert_close(B @ B.T, torch.eye(K, dtype=torch.float64), atol=1e-5, rtol=0)
    np.testing.assert_allclose(B.numpy(), d["shapePC"].T, atol=1e-5)
    assert m.metadata["reorthonormalised"] == {"shape": False, "expression": False, "reflectance": False}


@pytest.mark.parametrize("separate", [False, True])
def test_bfm_eq2_eq3_match_brute_force(tmp_path, rng, separate):
    d = bfm_dict(rng, expression=True)
    if separate:
        e = {k: d.pop(k) for k in ("expPC", "expEV", "expMU")}
        m = load_bfm2009(save_mat(tmp_path / "model.mat", d), expression=save_mat(tmp_path / "exp.mat", e))
        d.update(e)
        assert m.metadata["expression_source"] == "exp.mat"
    else:
        m = load_bfm2009(save_mat(tmp_path / "model.mat", d))
    assert m.n_expression == 3
    f64 = {k: v.astype(np.float64) for k, v in d.items()}
    ts, te, tr = rng.standard_normal((3, K)), rng.standard_normal((3, 3)), rng.standard_normal((3, K))
    # Brute force: mu + PC @ (EV * theta), micrometres -> mm.
    brute = (f64["shapeMU"] + f64["expMU"] + f64["shapePC"] @ (f64["shapeEV"] * ts.T)
             + f64["expPC"] @ (f64["expEV"] * te.T)).T.reshape(3, V, 3) / 1000
    g = m.geometry(torch.tensor(ts, dtype=torch.float32), torch.tensor(te, dtype=torch.float32))
    np.testing.assert_allclose(g.numpy(), brute, atol=1e-3)  # 1 micrometre
    brute_r = (f64["texMU"] + f64["texPC"] @ (f64["texEV"] * tr.T)).T.reshape(3, V, 3) / 255
    r = m.reflectance(torch.tensor(tr, dtype=torch.float32))
    np.testing.assert_allclose(r.numpy(), brute_r, atol=1e-5)


def test_bfm_triangle_winding_flipped(tmp_path, rng):
    d = bfm_dict(rng, expression=False)
    m = load_bfm2009(save_mat(tmp_path / "model.mat", d))
    tl = d["tl"].astype(np.int64)
    np.testing.assert_array_equal(m.triangles.numpy(), tl[:, [0, 2, 1]] - 1)
    assert m.triangles.dtype == torch.int64 and int(m.triangles.min()) == 0
    # The grid faces +z: BFM's stored (clockwise) order has -z normals, ours +z (outward).
    assert (normals_z(m.mean_shape.numpy(), tl - 1) < 0).all()
    assert (normals_z(m.mean_shape.numpy(), m.triangles.numpy()) > 0).all()


def test_bfm_component_truncation(tmp_path, rng):
    path = save_mat(tmp_path / "model.mat", bfm_dict(rng))
    m = load_bfm2009(path, n_shape=2, n_expression=1, n_reflectance=0)
    assert (m.n_shape, m.n_expression, m.n_reflectance) == (2, 1, 0)
    np.testing.assert_allclose(m.sigma_s.numpy(), [4.0, 3.0], rtol=1e-5)
    with pytest.raises(ValueError, match="n_shape=5"):
        load_bfm2009(path, n_shape=5)


def test_bfm_reorthonormalises_only_when_needed(tmp_path, rng):
    d = bfm_dict(rng, expression=False)
    # Slightly off (1e-5): columns kept (normalised), sigma scaled so that b_i sigma_i is unchanged.
    pc = d["shapePC"].astype(np.float64) * (1 + 1e-5 * rng.standard_normal((1, K)))
    d["shapePC"] = pc
    m = load_bfm2009(save_mat(tmp_path / "near.mat", d))
    assert not m.metadata["reorthonormalised"]["shape"]
    np.testing.assert_allclose((m.shape_basis.double().reshape(K, -1) * m.sigma_s.double()[:, None]).numpy(),
                               (pc * d["shapeEV"].ravel() / 1000).T, atol=1e-5)
    # Far off: re-orthonormalised through orthonormal_basis; the covariance is preserved.
    d["shapePC"] = rng.standard_normal((3 * V, K))
    m = load_bfm2009(save_mat(tmp_path / "far.mat", d))
    assert m.metadata["reorthonormalised"]["shape"]
    B = m.shape_basis.double().reshape(m.n_shape, -1)
    torch.testing.assert_close(B @ B.T, torch.eye(m.n_shape, dtype=torch.float64), atol=1e-5, rtol=0)
    Dm = (d["shapePC"] * d["shapeEV"].ravel().astype(np.float64) / 1000).T  # (K, 3V) in mm
    np.testing.assert_allclose(covariance(m.shape_basis, m.sigma_s).numpy(), Dm.T @ Dm, atol=1e-4)


# ----------------------------------------------------------------------------------- BFM errors
def test_bfm_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothere\.mat: no such \.mat file"):
        load_bfm2009(tmp_path / "nothere.mat")


@pytest.mark.parametrize("cut", [0, 10, 100, 400, -20])
def test_bfm_truncated_file(tmp_path, rng, cut):
    good = save_mat(tmp_path / "good.mat", bfm_dict(rng)).read_bytes()
    bad = tmp_path / "model.mat"
    bad.write_bytes(good[:cut])
    with pytest.raises(ModelFileError, match=r"model\.mat: not a readable MATLAB \.mat file \(truncated"):
        load_bfm2009(bad)


def test_bfm_garbage_file(tmp_path):
    bad = tmp_path / "model.mat"
    bad.write_bytes(b"this is not a MATLAB file " * 20)
    with pytest.raises(ModelFileError, match=r"model\.mat: not a readable MATLAB"):
        load_bfm2009(bad)


@pytest.mark.parametrize("key", BFM_KEYS)
def test_bfm_missing_key(tmp_path, rng, key):
    d = bfm_dict(rng, expression=False)
    del d[key]
    expected = "shapeMU, shapePC, shapeEV, texMU, texPC, texEV, tl"
    with pytest.raises(ModelFileError, match=re.escape(f"model.mat: key '{key}' missing; expected {expected}")):
        load_bfm2009(save_mat(tmp_path / "model.mat", d))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(shapePC=d["shapePC"][:-3]), r"shapePC has shape \(87, 4\); expected \(3V, K\) = \(90"),
    (lambda d: d.update(shapeEV=d["shapeEV"][:3]), r"shapeEV has 3 entries but shapePC has 4 columns"),
    (lambda d: d.update(texMU=d["texMU"][:60]), r"texMU has 60 entries but shapeMU has 90"),
    (lambda d: d.update(texPC=d["texPC"][:60]), r"texPC has shape \(60, 4\)"),
    (lambda d: d.update(texEV=d["texEV"][:2]), r"texEV has 2 entries but texPC has 4 columns"),
    (lambda d: d.update(shapeMU=d["shapeMU"][:-1]), r"shapeMU has 89 entries; expected 3 x V"),
    (lambda d: d["tl"].__setitem__((3, 1), 31), r"tl index out of range: indices span \[1, 31\].*\[1, 30\]"),
    (lambda d: d["tl"].__setitem__((0, 0), 0), r"tl index out of range: indices span \[0, 30\]"),
    (lambda d: d.update(tl=d["tl"][:, :2]), r"tl has shape \(40, 2\); expected \(T, 3\)"),
    (lambda d: d.update(shapeEV=-d["shapeEV"]), r"shapeEV has negative entries"),
    (lambda d: d["shapePC"].__setitem__((0, 0), np.nan), r"shapePC contains NaN"),
    (lambda d: d.pop("expEV"), r"key 'expEV' missing; expected expPC, expEV \(expMU optional\)"),
    (lambda d: d.update(expMU=d["expMU"][:30]), r"expMU has 30 entries but the shape model model\.mat has 90"),
])
def test_bfm_inconsistent_sizes(tmp_path, rng, change, message):
    d = bfm_dict(rng, expression=True)
    change(d)
    with pytest.raises(ModelFileError, match=r"model\.mat: .*" + message):
        load_bfm2009(save_mat(tmp_path / "model.mat", d))


def test_bfm_expression_file_errors(tmp_path, rng):
    model = save_mat(tmp_path / "model.mat", bfm_dict(rng, expression=False))
    with pytest.raises(ModelFileError, match=r"exp\.mat: no such \.mat file"):
        load_bfm2009(model, expression=tmp_path / "exp.mat")
    other = save_mat(tmp_path / "exp.mat", expression_dict(rng, n_vertices=25, mu=False))
    with pytest.raises(ModelFileError, match=r"exp\.mat: expPC has shape \(75, 3\); expected .*90.*30 vertices"):
        load_bfm2009(model, expression=other)
    e = expression_dict(rng)
    del e["expPC"]
    with pytest.raises(ModelFileError, match=r"exp\.mat: key 'expPC' missing; expected expPC, expEV"):
        load_bfm2009(model, expression=save_mat(tmp_path / "exp.mat", e))
    (tmp_path / "exp.mat").write_bytes(b"MATLAB 5.0"[:5])
    with pytest.raises(ModelFileError, match=r"exp\.mat: not a readable MATLAB"):
        load_bfm2009(model, expression=tmp_path / "exp.mat")


# ============================================================================================= OBJ
def test_read_obj_forms(tmp_path):
    p = tmp_path / "forms.obj"
    p.write_text(
        "# a comment\n"
        "mtllib x.mtl\n"
        "o thing\n"
        "v 0 0 0\n"
        "v 1 0 0   # trailing comment\n"
        "v 1 1 0 0.5 0.5 0.5\n"
        "v 0 1 0\n"
        "vt 0 0\nvt 1 0\nvn 0 0 1\n"
        "\n"
        "f 1 2 3 4\n"                 # quad -> 2 triangles
        "f 1/1 2/2 3/1\n"             # v/t
        "f 1//1 2//1 3//1\n"          # v//n
        "f 1/1/1 2/2/1 3/1/1\n"       # v/t/n
        "v 2 0 0\n"
        "v 2 1 0\n"
        "f -5 -2 -1 -4\n"             # negative: 2 5 6 3
        "g group\ns off\nusemtl m\n"
        "f 1 5 6 3 4\n"               # pentagon -> 3 triangles (fan)
    )
    v, f = read_obj(p)
    assert v.dtype == np.float64 and f.dtype == np.int64
    np.testing.assert_array_equal(v, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0]])
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 1, 2], [0, 1, 2],
                                      [1, 4, 5], [1, 5, 2], [0, 4, 5], [0, 5, 2], [0, 2, 3]])
    assert (normals_z(v, f) > 0).all()  # fan triangulation keeps the winding


def test_write_read_obj_round_trip(tmp_path):
    verts, tris = grid_mesh()
    verts = verts + np.random.default_rng(1).standard_normal(verts.shape) * 1e-3
    write_obj(tmp_path / "sub" / "m.obj", torch.tensor(verts), tris)
    v, f = read_obj(tmp_path / "sub" / "m.obj")
    np.testing.assert_array_equal(v, verts)  # exact: repr precision
    np.testing.assert_array_equal(f, tris)
    write_obj(tmp_path / "pts.obj", verts)
    assert read_obj(tmp_path / "pts.obj")[1].shape == (0, 3)


@pytest.mark.parametrize("text, message", [
    ("v 0 0 0\nv 1 0\nv 0 1 0\n", r"bad\.obj: line 2: malformed vertex 'v 1 0'"),
    ("v 0 0 0\nv 1 0 0\nv 0 x 0\n", r"bad\.obj: line 3: malformed vertex 'v 0 x 0'"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", r"bad\.obj: line 4: malformed face 'f 1 2'; expected at least 3"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n\nf 1 a/2 3\n", r"bad\.obj: line 5: malformed face .*'a/2' is not a vertex"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", r"bad\.obj: line 4: face index 4 out of range; the file has 3"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", r"bad\.obj: line 4: face index 0 out of range"),
    ("v 0 0 0\nv 1 0 0\nf -1 -2 -3\nv 0 1 0\n", r"bad\.obj: line 3: face index -3 out of range"),
    ("# only a comment\nvt 0 0\n", r"bad\.obj: no vertices"),
    ("", r"bad\.obj: no vertices"),
])
def test_read_obj_errors(tmp_path, text, message):
    p = tmp_path / "bad.obj"
    p.write_text(text)
    with pytest.raises(ModelFileError, match=message):
        read_obj(p)


def test_read_obj_missing(tmp_path):
    with pytest.raises(ModelFileError, match=r"gone\.obj: no such OBJ file"):
        read_obj(tmp_path / "gone.obj")


# ------------------------------------------------------------------------------------ OBJ folder
def make_obj_folder(root, identity_D, expression_D, albedo=None):
    """neutral.obj + identity/id_k.obj (neutral + d_k) + expression/bs_k.obj; D rows are (3V,) mm."""
    verts, tris = grid_mesh()
    write_obj(root / "neutral.obj", verts, tris)
    for k, d in enumerate(identity_D):
        write_obj(root / "identity" / f"id_{k:02d}.obj", verts + d.reshape(V, 3), tris)
    for k, d in enumerate(expression_D):
        write_obj(root / "expression" / f"bs_{k:02d}.obj", verts + d.reshape(V, 3), tris)
    if albedo is not None:
        np.save(root / "albedo.npy", albedo)
    return root


def orthogonal_modes(n, scale):
    """``(n, 3V)`` orthogonal rows (disjoint vertex supports), decreasing norms, positive largest entry."""
    D = np.zeros((n, 3 * V))
    for k in range(n):
        D[k, 3 * (3 * k): 3 * (3 * k + 3)] = scale * (n - k) * np.linspace(0.2, 1.0, 9)
    return D


def test_obj_folder_orthogonal_modes_reproduce_objs(tmp_path):
    Di, De = orthogonal_modes(K, 2.0), orthogonal_modes(3, 1.0)[:, ::-1].copy()
    root = make_obj_folder(tmp_path / "ict", Di, -De)  # negative blendshapes: sign-flipped basis
    m = load_obj_folder(root)
    verts, tris = grid_mesh()
    assert (m.name, m.n_vertices, m.n_shape, m.n_expression, m.n_reflectance) == ("ict", V, K, 3, 0)
    np.testing.assert_allclose(m.mean_shape.numpy(), verts, atol=1e-5)
    np.testing.assert_array_equal(m.triangles.numpy(), tris)
    np.testing.assert_allclose(m.mean_albedo.numpy(), 0.6)
    assert m.albedo_basis.shape == (0, V, 3) and m.landmarks is None and set(m.masks) == {"face"}
    np.testing.assert_allclose(m.sigma_s.numpy(), np.linalg.norm(Di, axis=1), rtol=1e-6)
    assert m.metadata["identity_files"] == [f"id_{k:02d}.obj" for k in range(K)]
    g = m.geometry(torch.eye(K))  # theta = e_k: the mesh at +1 sigma of mode k
    for k in range(K):
        v, _ = read_obj(root / "identity" / f"id_{k:02d}.obj")
        np.testing.assert_allclose(g[k].numpy(), v, atol=1e-4)
    ge = m.geometry(torch.zeros(3, K), torch.eye(3))
    for k in range(3):  # largest entries of -d_k are negative: orthonormal_basis fixes the sign to +
        v, _ = read_obj(root / "expression" / f"bs_{k:02d}.obj")
        np.testing.assert_allclose((2 * m.mean_shape - ge[k]).numpy(), v, atol=1e-4)


def test_obj_folder_covariance_equals_DtD(tmp_path):
    rng = np.random.default_rng(2)
    Di, De = rng.standard_normal((5, 3 * V)) * 3.0, rng.standard_normal((4, 3 * V))
    m = load_obj_folder(make_obj_folder(tmp_path / "model", Di, De))
    assert (m.n_shape, m.n_expression) == (5, 4)
    for basis, sigma, D in ((m.shape_basis, m.sigma_s, Di), (m.expression_basis, m.sigma_e, De)):
        B = basis.double().reshape(basis.shape[0], -1)
        torch.testing.assert_close(B @ B.T, torch.eye(B.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
        np.testing.assert_allclose(covariance(basis, sigma).numpy(), D.T @ D, atol=1e-3)
        assert (np.diff(sigma.numpy()) <= 0).all()


def test_obj_folder_albedo_and_optional_parts(tmp_path):
    albedo = np.random.default_rng(3).uniform(0, 1, (V, 3))
    m = load_obj_folder(make_obj_folder(tmp_path / "a", [], [], albedo=albedo))
    assert (m.n_shape, m.n_expression) == (0, 0)  # no identity/ or expression/ folders
    np.testing.assert_allclose(m.mean_albedo.numpy(), albedo, atol=1e-6)
    torch.testing.assert_close(m.geometry(torch.zeros(1, 0), torch.zeros(1, 0))[0], m.mean_shape)
    np.save(tmp_path / "a" / "albedo.npy", (albedo * 255).astype(np.uint8))
    np.testing.assert_allclose(load_obj_folder(tmp_path / "a").mean_albedo.numpy(), albedo, atol=1 / 255)
    np.save(tmp_path / "a" / "albedo.npy", albedo * 255)
    with pytest.raises(ModelFileError, match=r"albedo\.npy: albedo values span .*expected finite"):
        load_obj_folder(tmp_path / "a")
    np.save(tmp_path / "a" / "albedo.npy", albedo[:10])
    with pytest.raises(ModelFileError, match=r"albedo\.npy: albedo has shape \(10, 3\); expected \(30, 3\)"):
        load_obj_folder(tmp_path / "a")


def test_obj_folder_scale(tmp_path):
    verts, _ = grid_mesh()
    m = load_obj_folder(make_obj_folder(tmp_path / "cm", orthogonal_modes(2, 1.0), []), scale=10.0)
    np.testing.assert_allclose(m.mean_shape.numpy(), verts * 10, rtol=1e-6)
    np.testing.assert_allclose(m.sigma_s.numpy(), 10 * np.linalg.norm(orthogonal_modes(2, 1.0), axis=1), rtol=1e-6)


# ----------------------------------------------------------------------------- OBJ folder errors
def test_obj_folder_missing(tmp_path):
    with pytest.raises(ModelFileError, match=r"nomodel: no such OBJ model folder"):
        load_obj_folder(tmp_path / "nomodel")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=r"empty: neutral\.obj missing"):
        load_obj_folder(tmp_path / "empty")


def test_obj_folder_vertex_count_mismatch(tmp_path):
    root = make_obj_folder(tmp_path / "m", orthogonal_modes(3, 1.0), [])
    verts, _ = grid_mesh()
    write_obj(root / "identity" / "id_01.obj", verts[:25])
    with pytest.raises(ModelFileError, match=r"id_01\.obj: 25 vertices but neutral\.obj has 30"):
        load_obj_folder(root)


def test_obj_folder_malformed_member(tmp_path):
    root = make_obj_folder(tmp_path / "m", [], orthogonal_modes(2, 1.0))
    p = root / "expression" / "bs_01.obj"
    lines = p.read_text().splitlines()
    lines[6] = "v 1.0 oops 2.0"
    p.write_text("\n".join(lines))
    with pytest.raises(ModelFileError, match=r"bs_01\.obj: line 7: malformed vertex 'v 1\.0 oops 2\.0'"):
        load_obj_folder(root)
    (root / "neutral.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 3\n")
    with pytest.raises(ModelFileError, match=r"neutral\.obj: line 3: face index 3 out of range"):
        load_obj_folder(root)
    (root / "neutral.obj").write_text("")
    with pytest.raises(ModelFileError, match=r"neutral\.obj: no vertices"):
        load_obj_folder(root)


# ==================================================================== save/load and load_model
def test_loaded_models_save_load_round_trip(tmp_path, rng):
    bfm = load_bfm2009(save_mat(tmp_path / "model.mat", bfm_dict(rng)))
    obj = load_obj_folder(make_obj_folder(tmp_path / "objs", orthogonal_modes(2, 1.0), []))
    for m in (bfm, obj):
        out = m.save(tmp_path / f"{m.name}.npz")
        back = FaceModel.load(out)
        assert back.name == m.name and back.metadata == m.metadata and back.info() == m.info()
        for k in ("mean_shape", "shape_basis", "sigma_s", "expression_basis", "sigma_e",
                  "mean_albedo", "albedo_basis", "sigma_r", "triangles"):
            torch.testing.assert_close(getattr(back, k), getattr(m, k), rtol=0, atol=0)
        assert back.masks.keys() == m.masks.keys()


def test_load_model_dispatches_to_loaders(tmp_path, rng):
    mat = save_mat(tmp_path / "model.mat", bfm_dict(rng, expression=False))
    m = facelib.load_model(str(mat))
    assert m.name == "bfm2009" and m.n_shape == K
    folder = make_obj_folder(tmp_path / "objs", orthogonal_modes(2, 1.0), orthogonal_modes(1, 1.0))
    m = facelib.load_model(str(folder))
    assert m.metadata["format"] == "obj-folder" and (m.n_shape, m.n_expression) == (2, 1)
    with pytest.raises(ModelFileError, match=r"missing\.mat: no such"):
        facelib.load_model(str(tmp_path / "missing.mat"))
