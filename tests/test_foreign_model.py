"""The foreign model (a population no network trains on), the model's best fit, and the reference rows on
faces of another model."""

import numpy as np
import pytest
import torch

import facelib
from facelib.model import foreign as fm
from facelib.model import open_model as om
from facelib.model.facemodel import basis_fit, geometry_fit


@pytest.fixture(scope="module")
def foreign_model():
    return facelib.load_model("foreign")


def test_foreign_population_has_its_stated_statistics():
    rng = np.random.default_rng(5)
    draws = [fm.sample_identity(rng) for _ in range(4000)]
    mean = fm.identity_mean()
    moved = 0
    for k in om.IDENTITY_MEAN:
        x = np.array([d[k] for d in draws])
        sd = fm.SPREAD * om.IDENTITY_SD[k]
        assert abs(x.mean() - mean[k]) < 4 * sd / np.sqrt(len(x)), k
        assert abs(x.std() / sd - 1) < 0.06, k
        shift = (mean[k] - om.IDENTITY_MEAN[k]) / om.IDENTITY_SD[k]
        assert abs(shift) <= fm.MEAN_SHIFT_SD + 1e-12, k
        moved += abs(shift) > 0.1
    assert moved >= len(om.IDENTITY_MEAN) // 2  # most means moved, not a copy of the open population
    tilt = np.array([[d["tilt"], d["shear"]] for d in draws])
    assert np.allclose(tilt.std(0), fm.TILT_SD_MM, rtol=0.06)
    s = np.concatenate([d["rbf_s"] for d in draws])
    assert fm.FIELD_SIZES_MM[0] <= s.min() and s.max() <= fm.FIELD_SIZES_MM[1]


def test_open_population_is_not_lopsided():
    """The tilt and shear of the foreign warp are absent from the open population, whose faces stay as they were."""
    p = om.sample_identity(np.random.default_rng(1))
    assert "tilt" not in p and "shear" not in p
    U, V = np.array([30.0, -30.0]), np.array([20.0, 20.0])
    q = dict(p, tilt=3.0, shear=0.0)
    _, v_open = om._warp(U, V, p)
    _, v_tilted = om._warp(U, V, q)
    assert v_open[0] == pytest.approx(v_open[1])  # symmetric features, left and right
    assert v_tilted[0] - v_tilted[1] == pytest.approx(2 * 3.0 * 30.0 / 70.0)


def test_foreign_model_is_another_model_on_the_same_mesh(foreign_model, open_model):
    f, o = foreign_model, open_model
    f.validate("foreign")
    assert f.name == "foreign" and f.n_vertices == o.n_vertices
    assert torch.equal(f.triangles.cpu(), o.triangles.cpu())
    rms = float((f.mean_shape - o.mean_shape).square().sum(-1).mean().sqrt())
    assert rms > 1.0  # mm: another mean face
    assert float(f.sigma_s[:10].sum()) > float(o.sigma_s[:10].sum())  # a wider population
    # its landmarks are the same points of the face: within a few mm of the open model's on the open mean
    d = (o.mean_shape[f.landmarks] - o.mean_shape[o.landmarks]).norm(dim=-1)
    assert float(d.max()) < 6.0
    assert f.metadata["spread"] == fm.SPREAD


def test_basis_fit_matches_the_normal_equations():
    g = torch.Generator().manual_seed(0)
    N, m, B = 40, 6, 3
    mean, basis = torch.randn(N * 3, generator=g), torch.randn(m, N * 3, generator=g)
    x = torch.randn(B, N, 3, generator=g)
    mask = torch.rand(N, generator=g) > 0.3
    fit = basis_fit(mean, basis, x, mask)
    sel = mask.repeat_interleave(3)
    A, y = basis[:, sel].double(), (x.reshape(B, -1) - mean)[:, sel].double()
    coef = torch.linalg.solve(A @ A.T, A @ y.T).T  # (B, m), brute force
    ref = (mean.double() + coef @ basis.double()).view(B, N, 3)
    assert torch.allclose(fit.double(), ref, atol=1e-4)
    with pytest.raises(ValueError, match="do not match"):
        basis_fit(mean, basis, x[:, :-1])


def test_geometry_fit_recovers_model_faces_and_not_what_lies_outside(open_model):
    m = open_model
    g = torch.Generator().manual_seed(3)
    v = m.geometry(torch.randn(2, m.n_shape, generator=g), torch.randn(2, m.n_expression, generator=g))
    assert float((geometry_fit(m, v) - v).abs().max()) < 1e-2  # mm
    face = m.masks["face"]
    bump = torch.zeros_like(v)
    bump[:, face, 2] = 3.0 * torch.sin(m.mean_shape[face, 0] / 2.0)  # a 12 mm ripple no component holds
    err = (geometry_fit(m, v + bump) - (v + bump))[:, face].norm(dim=-1).mean()
    assert float(err) > 1.0


def test_reference_rows_on_faces_of_another_model(foreign_model, open_model):
    from facelib.data.wild import wild_batch
    from facelib.eval.compare import reference_points

    frames = wild_batch(foreign_model, 3, seed=123, size=64)
    refs = reference_points(open_model, frames, gt_model=foreign_model)
    assert set(refs) == {"mean face", "true parameters (floor)", "best fit of the model"}
    assert (refs["best fit of the model"] < refs["mean face"]).all()
    assert (refs["true parameters (floor)"] < refs["best fit of the model"] + 0.05).all()
    assert set(reference_points(open_model, wild_batch(open_model, 1, seed=1, size=64))) == {
        "mean face", "true parameters (floor)"}


def test_foreign_is_a_built_in_model_name(tmp_path):
    from facelib.cli import build_parser

    assert build_parser().parse_args(["model", "build", "--model", "foreign"]).model == "foreign"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", "build", "--model", "bfm"])
    with pytest.raises(facelib.ModelFileError, match="'open', 'foreign'"):
        facelib.load_model(str(tmp_path / "nothing"))


def test_cached_model_loads_rebuilds_a_corrupt_file_and_warns_when_it_cannot_save(tmp_path, open_model):
    import warnings

    from facelib.model.open_model import cached_model

    calls = []
    build = lambda: calls.append(1) or open_model  # noqa: E731
    path = tmp_path / "m.npz"
    m = cached_model(path, build)
    assert path.exists() and len(calls) == 1 and m is open_model
    again = cached_model(path, build)  # from the file: no build
    assert len(calls) == 1 and torch.equal(again.mean_shape.cpu(), open_model.mean_shape.cpu())
    path.write_bytes(b"not a model")  # a corrupt cache is rebuilt, never trusted
    cached_model(path, build)
    assert len(calls) == 2 and facelib.load_model(str(path)).n_vertices == open_model.n_vertices
    blocked = tmp_path / "a file"  # a cache "folder" that is a file: no one can save there, root neither
    blocked.write_text("")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert cached_model(blocked / "m.npz", build) is open_model
    assert any("built but not cached" in str(x.message) for x in w)


def test_paired_frames_and_scores_of_a_network_that_answers_the_mean_face(foreign_model, open_model):
    """paired_frames: the same seed's draws of both models with the open mean face's error on each; paired_scores of
    a stand-in network that always answers the open mean face is that error (ratio 1 on both kinds of faces);
    pairs_markdown tabulates runs and counts the seeds below a baseline."""
    from facelib.eval import compare

    pairs = compare.paired_frames(open_model, foreign_model, 2, seed=77, size=64)
    assert set(pairs) == {"open", "foreign"} and pairs["open"]["gt_model"] is None
    assert not torch.allclose(pairs["open"]["frames"]["verts_model"], pairs["foreign"]["frames"]["verts_model"])
    for kind, p in pairs.items():
        want = compare.reference_points(open_model, p["frames"], gt_model=p["gt_model"])["mean face"].mean()
        assert p["mean_face_mm"] == pytest.approx(float(want), rel=1e-12)
    m, N = open_model, 16

    class MeanFace:  # the parts of a TrainedNetwork that compare.network_point uses
        method, model = "inversefacenet", open_model

        def predict(self, image, lm):
            return {}

        def estimate(self, image, lm):
            B = image.shape[0]
            return {"verts": m.mean_shape.expand(B, -1, -1), "faces": m.triangles,
                    "rendering": torch.full((B, 3, N, N), 0.5), "mask": torch.ones(B, N, N, dtype=torch.bool),
                    "box": torch.tensor([[32.0, 32.0, 40.0]]).expand(B, 3)}

    scores = compare.paired_scores(MeanFace(), pairs)
    for kind in ("open", "foreign"):
        assert scores[kind]["faces"] == 2 and scores[kind]["over_mean_face"] == pytest.approx(1.0, abs=1e-4)
        assert scores[kind]["now_mm"] == pytest.approx(pairs[kind]["mean_face_mm"], abs=1e-4)
    run = lambda seed, o, f: {"seed": seed, "open_pairs": {"over_mean_face": o}, "foreign_pairs": {"over_mean_face": f}}
    text = compare.pairs_markdown({"base": [run(0, 0.6, 0.7), run(1, 0.62, 0.7)],
                                   "wide": [run(1, 0.61, 0.65), run(0, 0.61, 0.66)]}, baseline="base")
    lines = text.splitlines()
    assert lines[2] == "| base | 0, 1 | 0.610 ± 0.010 | 0.700 ± 0.000 |"
    assert lines[-1] == "Paired by seed, wide against base: lower for 1 of 2 seeds on the open faces, 2 of 2 on the foreign ones."
    refs = compare.pair_references(open_model, pairs)
    assert refs["mean face"] == {"open": 1.0, "foreign": 1.0} and refs["best fit of the model"]["open"] is None
    assert 0 <= refs["best fit of the model"]["foreign"] < 1 and 0 <= refs["true parameters (floor)"]["open"] < 1
    lines = compare.pairs_markdown({"base": [run(0, 0.6, 0.7)]}, references=refs).splitlines()
    assert lines[2] == "| *mean face* | - | 1.000 | 1.000 |" and lines[4].startswith("| *best fit of the model* | - | - | 0.")
    assert lines[5] == "| base | 0 | 0.600 ± 0.000 | 0.700 ± 0.000 |"


def test_foreign_pairs_are_the_benchmarks_paired_frames(foreign_model, open_model):
    from facelib.eval import compare

    assert compare.foreign_pairs(open_model, 0) is None
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            compare.foreign_pairs(open_model, bad)
    got = compare.foreign_pairs(open_model, 2, seed=78, size=64)
    want = compare.paired_frames(open_model, foreign_model, 2, seed=78, size=64)
    for kind in ("open", "foreign"):
        # the same draws; the sums' order may follow the thread count another test left behind
        assert got[kind]["mean_face_mm"] == pytest.approx(want[kind]["mean_face_mm"], rel=1e-9)
        assert torch.allclose(got[kind]["frames"]["image"], want[kind]["frames"]["image"], atol=1e-5)
