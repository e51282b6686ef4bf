"""The book's in-page face explorer: the data it ships and the face it must show.

Chapter 1 of the HTML book has an explorer that runs with no kernel and no network: sliders for the
first :data:`N_COMPONENTS` shape, expression and reflectance components, the 9 (monochrome) SH
coefficients and yaw / pitch. Its JavaScript (``book/_ext/static/face_explorer.js``) recomputes Eq. 2-3,
the rotation of Sec. 4.2, the vertex normals and the SH shading (Eq. 5) in the browser and renders the
face with the book's camera (:func:`facelib.render.face_camera`, :data:`IMAGE_SIZE` pixels) and
:mod:`facelib.render.raster`'s conventions, from

- :func:`write_asset`: a compact binary asset of the model (the mean shape in float32, the first bases
  times their sigma in int16 with one scale per component, the mean albedo in int16, the triangles in
  uint16), base64 in a small ``.js`` file so that a book opened from disk (``file://``, where a page
  cannot fetch files) loads it with a ``<script>`` tag;

and :func:`explorer_face` is the same face computed by ``facelib`` (what the browser test compares the
page with: positions within 0.05 mm, colours within 1/255). :func:`explorer_html` is the placeholder a
notebook cell shows; the book's Sphinx extension adds the scripts to the page that has one.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..model.params import rot_xyz
from ..render.shading import (SH_BAND, SH_IRRADIANCE_CONSTANTS, SH_SHADING_SCALE, _C1, _C2, _C20, _C22, _Y00,
                      shade, vertex_normals)

__all__ = ["N_COMPONENTS", "IMAGE_SIZE", "DEFAULT_LIGHT", "asset_name", "explorer_arrays", "write_asset",
           "explorer_theta", "explorer_face", "explorer_html"]

N_COMPONENTS = 10
IMAGE_SIZE = 360  # pixels, the explorer's square image
# The explorer's starting light, monochrome gamma_1..gamma_9 (as facelib.book.viz.studio_light).
DEFAULT_LIGHT = (0.9, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
# H_b(n) = SH_POLY[b] * p_b(n) with p = (1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2): the constants of
# facelib.render.shading.sh_irradiance_basis, so that the page shades exactly as shade() does.
SH_POLY = tuple(SH_IRRADIANCE_CONSTANTS[l] * SH_SHADING_SCALE * c
                for l, c in zip(SH_BAND, (_Y00, _C1, _C1, _C1, _C2, _C2, _C20, _C2, _C22)))


def asset_name(model_name: str = "open") -> str:
    """File name of the explorer asset of a model in the book's ``_static``."""
    return f"face_explorer_{model_name}.js"


def _int16(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K, ...)`` float -> int16 and one float32 scale per row (``a ~ q * scale``)."""
    flat = a.reshape(len(a), -1).astype(np.float64)
    scale = np.maximum(np.abs(flat).max(1), 1e-12) / 32767.0
    q = np.round(flat / scale[:, None]).astype(np.int16)
    return q.reshape(a.shape), scale.astype(np.float32)


def explorer_arrays(model, k: int = N_COMPONENTS) -> dict:
    """The arrays the explorer needs, as stored: ``mean_shape (V, 3)`` float32 mm, ``shape``,
    ``expression``, ``reflectance`` ``(k, V, 3)`` int16 of ``sigma_i b_i`` with their ``*_scale (k,)``,
    ``mean_albedo (1, V, 3)`` int16 with its scale and ``triangles (T, 3)`` uint16 (uint32 for 65,536
    vertices or more)."""
    def np32(t):
        return t.detach().to("cpu", torch.float32).numpy()

    out = {"mean_shape": np32(model.mean_shape)}
    for name, basis, sigma in (("shape", model.shape_basis, model.sigma_s),
                               ("expression", model.expression_basis, model.sigma_e),
                               ("reflectance", model.albedo_basis, model.sigma_r)):
        n = min(k, len(sigma))
        out[name], out[f"{name}_scale"] = _int16(np32(basis[:n]) * np32(sigma[:n])[:, None, None])
    out["mean_albedo"], out["mean_albedo_scale"] = _int16(np32(model.mean_albedo)[None])
    tri = model.triangles.detach().cpu().numpy()
    out["triangles"] = tri.astype(np.uint16 if model.n_vertices < 65536 else np.uint32)
    return out


def _camera(size: int) -> dict:
    """The book's camera (:func:`facelib.render.face_camera`) as plain numbers for the page."""
    from ..render import face_camera

    cam = face_camera(size)
    return {"focal": cam.focal, "principal_point": list(cam.principal_point),
            "R": cam.R.reshape(-1).tolist(), "t": cam.t.tolist(), "image_size": list(cam.image_size)}


def write_asset(model, path, model_name: str = "open", k: int = N_COMPONENTS) -> dict:
    """Write the explorer asset of ``model`` to ``path`` (``window.facelibExplorerData = {...}``: a
    JSON header naming each array's dtype, shape and byte offset, and the arrays as one base64
    string); returns the header, with ``bytes``, the size of the binary data."""
    arrays = explorer_arrays(model, k)
    header = {"format": 1, "model": model_name, "vertices": int(model.n_vertices),
              "triangles": int(len(arrays["triangles"])), "components": k, "sh_poly": list(SH_POLY),
              "default_light": list(DEFAULT_LIGHT), "camera": _camera(IMAGE_SIZE), "arrays": {}}
    blob, offset = bytearray(), 0
    for name, a in arrays.items():  # every array starts at a multiple of 4 bytes (typed-array views)
        raw = np.ascontiguousarray(a).tobytes()
        header["arrays"][name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset}
        pad = (-len(raw)) % 4
        blob += raw + b"\0" * pad
        offset += len(raw) + pad
    header["bytes"] = len(blob)
    text = ("/* facelib face explorer data (facelib.book.explorer.write_asset); generated by the book build */\n"
            f"window.facelibExplorerData = Object.assign({json.dumps(header)}, "
            f"{{data: \"{base64.b64encode(bytes(blob)).decode()}\"}});\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return header


def explorer_theta(model, params: dict) -> torch.Tensor:
    """The explorer's ``params`` (see :func:`explorer_face`) as a ``(1, m)`` parameter vector (Eq. 1
    layout, roll 0, the light monochrome), for :func:`facelib.render.render`."""
    from ..model.params import ParamLayout

    layout = ParamLayout.from_model(model)
    theta = layout.zeros(1)
    theta[0, layout["rotation"]] = torch.tensor([math.radians(params.get("pitch", 0.0)),
                                                 math.radians(params.get("yaw", 0.0)), 0.0])
    for name in ("shape", "expression", "reflectance"):
        vals = torch.as_tensor(params.get(name, []), dtype=torch.float32)[:layout[name].stop - layout[name].start]
        theta[0, layout[name].start:layout[name].start + len(vals)] = vals
    sh = torch.as_tensor(params.get("sh", DEFAULT_LIGHT), dtype=torch.float32)
    theta[0, layout["illumination"]] = sh.repeat_interleave(3)  # coefficient-major RGB, one white light
    return theta


def explorer_face(model, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The face the explorer shows for ``params`` (its ``params()`` in the page), computed by facelib.

    ``params``: ``shape``, ``expression``, ``reflectance`` (up to :data:`N_COMPONENTS` values each, in
    sigma), ``sh`` (9 monochrome gamma), ``yaw`` and ``pitch`` (degrees). Returns ``(V, 3)`` vertex
    positions in mm (Eq. 2, rotated by ``Rot_xyz(pitch, yaw, 0)``) and ``(V, 3)`` shaded colours
    (Eq. 3 and Eq. 5 with the rotated normals, not clipped), as :func:`facelib.render.render` shades.
    """
    from ..model.params import ParamLayout

    m = model.to("cpu")
    p = ParamLayout.from_model(m).unpack(explorer_theta(m, params))
    with torch.no_grad():
        verts = m.geometry(p["shape"], p["expression"]) @ rot_xyz(p["rotation"]).transpose(-1, -2)  # Eq. 2, Sec. 4.2
        colors = shade(m.reflectance(p["reflectance"]), vertex_normals(verts, m.triangles), p["illumination"])
    return verts[0], colors[0]


def explorer_html(model_name: str = "open") -> str:
    """The placeholder a notebook cell shows (``IPython.display.HTML``): the HTML book's extension
    loads the explorer's scripts on the page that has it; JupyterLab shows the note."""
    return (f'<div class="facelib-explorer" data-model="{model_name}" data-asset="{asset_name(model_name)}">'
            "<p><em>The face explorer runs in the HTML book (no kernel needed); in JupyterLab, use the "
            "live panel below.</em></p></div>")
