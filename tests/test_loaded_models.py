"""Models you bring render, preview and benchmark like the open model: a Basel Face Model 2009 ``.mat``
(with and without an expression basis) and an OBJ folder (no reflectance basis), written small here."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import facelib
from facelib.bench import bench_render
from facelib.model.params import ParamLayout, sample_sec5
from facelib.book.plot import model_preview
from facelib.render.raster import HAVE_NUMBA
from facelib.render import face_labels, landmarks_2d, render
from test_loaders import bfm_dict, make_obj_folder, orthogonal_modes, save_mat

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")

# name -> (components (shape, expression, reflectance), writer of the model file or folder)
MODELS = {
    "bfm": ((4, 3, 4), lambda root: save_mat(root / "bfm.mat", bfm_dict(np.random.default_rng(0)))),
    "bfm_no_expression": ((4, 0, 4), lambda root: save_mat(
        root / "bfm_noexp.mat", bfm_dict(np.random.default_rng(0), expression=False))),
    "obj_folder": ((2, 1, 0), lambda root: make_obj_folder(
        root / "objs", orthogonal_modes(2, 1.0), orthogonal_modes(1, 1.0))),
    "obj_mean_only": ((0, 0, 0), lambda root: make_obj_folder(root / "mean_only", [], [])),
}


@pytest.fixture(params=sorted(MODELS))
def model_path(request, tmp_path):
    """The path of a small model file or folder and its component counts."""
    counts, write = MODELS[request.param]
    return str(write(tmp_path)), counts


def test_loaded_model_has_the_expected_components(model_path):
    path, counts = model_path
    m = facelib.load_model(path)
    assert (m.n_shape, m.n_expression, m.n_reflectance) == counts
    assert m.landmarks is None and "mouth_interior" not in m.masks


@needs_numba
def test_loaded_model_renders_on_both_paths(model_path):
    """The fused no-grad path and the PyTorch reference draw the same face; no mouth interior, so the
    network-input mask is the face mask."""
    m = facelib.load_model(model_path[0])
    theta = sample_sec5(m, 3, seed=4)
    with torch.no_grad():
        a = render(m, theta, 48, background=0.2, fused=True)
        b = render(m, theta, 48, background=0.2, fused=False)
    assert a.image.shape == b.image.shape == (3, 3, 48, 48)
    assert bool(a.mask.any(dim=(1, 2)).all()), "every face covers some pixels"
    same = a.fragments.pix_to_face == b.fragments.pix_to_face
    assert float(same.float().mean()) >= 0.99  # differences only at ties (float32 sums in another order)
    s = same[..., 0]
    assert torch.equal(a.mask[s], b.mask[s]) and torch.equal(a.input_mask, a.mask)
    torch.testing.assert_close(torch.where(s[:, None], a.image, 0), torch.where(s[:, None], b.image, 0),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.colors, b.colors, rtol=1e-4, atol=1e-4)


def test_loaded_model_gradients_and_labels(model_path):
    """The differentiable path: gradients reach theta; the mouth label is all False."""
    m = facelib.load_model(model_path[0])
    theta = sample_sec5(m, 2, seed=1).requires_grad_()
    r = render(m, theta, 24)
    r.image.sum().backward()
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())
    assert not bool(face_labels(m)["mouth_interior"].any())
    with pytest.raises(ValueError, match=r"has no landmarks"):
        landmarks_2d(m, r.screen)


def test_loaded_model_preview(model_path, tmp_path):
    m = facelib.load_model(model_path[0])
    out = model_preview(m, tmp_path / "preview.png", show_landmarks=True)
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.ndim == 3 and img[..., :3].std() > 0.05


def test_loaded_model_benchmark(model_path):
    res = bench_render(size=32, batch=2, batches=1, repeats=1, model=model_path[0], all_fields=False)
    assert res["faces_per_s"] > 0 and res["vertices"] == 30 and res["triangles"] == 40
    assert res["fused"] == HAVE_NUMBA


def test_loaded_model_empty_batch(model_path):
    m = facelib.load_model(model_path[0])
    theta = torch.zeros(0, ParamLayout.from_model(m).size)
    with torch.no_grad():
        for fused in (None, False):
            r = render(m, theta, 8, fused=fused)
            assert r.image.shape == (0, 3, 8, 8) and r.mask.shape == (0, 8, 8)


def test_cli_preview_bench_and_render_a_loaded_model(tmp_path):
    """``facelib model preview|info``, ``render`` and ``bench render`` with ``--model PATH``."""
    folder = str(make_obj_folder(tmp_path / "objs", orthogonal_modes(2, 1.0), []))

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "facelib", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    cli("model", "preview", "--model", folder, "--out", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "landmarks       none" in cli("model", "info", "--model", folder)
    cli("render", "--model", folder, "--size", "32", "--out", str(tmp_path / "f.png"))
    d = json.loads(cli("bench", "render", "--model", folder, "--size", "32", "--batch", "2", "--batches", "1",
                       "--json"))
    assert d["vertices"] == 30 and d["faces_per_s"] > 0
