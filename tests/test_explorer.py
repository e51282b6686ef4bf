"""The book's face explorer data (facelib.book.explorer): the asset the page decodes holds the model's mean
and first bases to well within the explorer's tolerances, and explorer_face is the face facelib's
renderer shades for the same sliders. (The page itself is checked in tests/test_browser.py.)"""

import base64
import json
import re

import numpy as np
import pytest
import torch

import facelib
from facelib.book.explorer import (IMAGE_SIZE, N_COMPONENTS, asset_name, explorer_arrays, explorer_face,
                              explorer_html, explorer_theta, write_asset)
from facelib.render import face_camera, render


@pytest.fixture(scope="module")
def model():
    return facelib.load_model("open")


def _decode(path):
    """The asset as the page reads it: header, then each array (int16 rows times their scale)."""
    text = path.read_text()
    header = json.loads(re.search(r"Object\.assign\((\{.*?\}), \{data:", text).group(1))
    blob = base64.b64decode(re.search(r'\{data: "([^"]*)"\}', text).group(1))
    assert len(blob) == header["bytes"]
    arrays = {}
    for name, spec in header["arrays"].items():
        n = int(np.prod(spec["shape"]))
        dtype = np.dtype(spec["dtype"])
        assert spec["offset"] % 4 == 0, f"{name} is not 4-byte aligned (typed-array view)"
        arrays[name] = np.frombuffer(blob, dtype, n, spec["offset"]).reshape(spec["shape"])
    return header, arrays


def test_asset_round_trip(model, tmp_path):
    path = tmp_path / asset_name("open")
    header = write_asset(model, path)
    got, a = _decode(path)
    assert got["vertices"] == model.n_vertices and got["components"] == N_COMPONENTS
    assert got["camera"]["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
    assert got["camera"]["focal"] == pytest.approx(face_camera(IMAGE_SIZE).focal)
    np.testing.assert_array_equal(a["mean_shape"], model.mean_shape.numpy())
    np.testing.assert_array_equal(a["triangles"], model.triangles.numpy())
    k = N_COMPONENTS
    for name, basis, sigma, tol in (("shape", model.shape_basis, model.sigma_s, 1e-3),
                                    ("expression", model.expression_basis, model.sigma_e, 1e-3),
                                    ("reflectance", model.albedo_basis, model.sigma_r, 1e-5)):
        want = (basis[:k] * sigma[:k, None, None]).numpy()
        back = a[name].astype(np.float64) * a[f"{name}_scale"][:, None, None]
        # per unit of theta: 30 sliders at 3 sigma stay well inside 0.05 mm and 1/255
        assert np.abs(back - want).max() < tol, name
    albedo = a["mean_albedo"].astype(np.float64) * a["mean_albedo_scale"][:, None, None]
    assert np.abs(albedo[0] - model.mean_albedo.numpy()).max() < 1e-4
    arrays = explorer_arrays(model).values()
    assert 0 <= header["bytes"] - sum(x.nbytes for x in arrays) < 4 * len(arrays)  # at most the padding


def test_explorer_face_is_what_render_shades(model):
    params = {"shape": [1.0, -2.0, 0.5], "expression": [2.0], "reflectance": [-1.0, 1.5], "yaw": -20.0,
              "pitch": 12.0, "sh": [1.0, 0.2, 0.3, -0.1, 0.05, 0.0, 0.1, 0.0, -0.05]}
    verts, colors = explorer_face(model, params)
    r = render(model, explorer_theta(model, params), 64, outputs="all")
    t = face_camera(64).t
    assert (r.verts_cam[0] - t - verts).abs().max() < 1e-3
    assert (r.colors[0] - colors).abs().max() < 1e-4
    # the sliders act: the mean face with the default light is something else
    mean, _ = explorer_face(model, {})
    assert (mean - model.mean_shape).abs().max() < 1e-4
    assert (verts - mean).abs().max() > 5.0


def test_explorer_theta_layout(model):
    theta = explorer_theta(model, {"shape": [1.0] * 12, "sh": [0.5] + [0.0] * 8, "yaw": 90.0})
    from facelib.model.params import ParamLayout

    p = ParamLayout.from_model(model).unpack(theta)
    assert p["shape"][0, :12].tolist() == [1.0] * 12 and p["shape"][0, 12:].abs().sum() == 0
    assert p["rotation"][0].tolist() == pytest.approx([0.0, np.pi / 2, 0.0])
    assert p["illumination"][0, :3].tolist() == [0.5, 0.5, 0.5]  # one white light: R = G = B


def test_explorer_html_names_its_asset():
    html = explorer_html("open")
    assert 'class="facelib-explorer"' in html and f'data-asset="{asset_name("open")}"' in html
