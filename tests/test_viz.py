"""Plots (facelib.book.viz): the figure builders carry the traces, frames, slider steps and labelled axes the
book relies on, and the live panel really recomputes the face when a slider moves."""

import numpy as np
import pytest
import torch

pytest.importorskip("plotly")

import facelib  # noqa: E402
from facelib.book import viz  # noqa: E402
from facelib.model.params import sample_sec5  # noqa: E402
from facelib.render import landmarks_2d, render  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return facelib.load_model("open")


def _tiny_mesh():
    """A tetrahedron: (4, 3) mm vertices, (4, 3) faces."""
    v = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return v, f


def test_setup_plotly_sets_an_offline_renderer():
    import plotly.io as pio

    name = viz.setup_plotly()
    assert pio.renderers.default == name == viz.BOOK_RENDERER
    assert "connected" not in name  # no CDN: plotly.js must be embedded


def test_hex_colors_round_and_clip():
    assert viz.hex_colors(torch.tensor([[0.0, 0.5, 1.0], [2.0, -1.0, 1 / 255]])) == ["#0080ff", "#ff0001"]
    with pytest.raises(ValueError, match="expected \\(V, 3\\)"):
        viz.hex_colors(torch.zeros(3))


def test_mesh_figure_has_mesh_landmarks_and_mm_axes(model):
    P = model.mean_shape
    fig = viz.mesh_figure(P, model.triangles, model.mean_albedo, title="mean", landmarks=P[model.landmarks])
    mesh, lms = fig.data
    assert mesh.type == "mesh3d" and lms.type == "scatter3d"
    assert len(mesh.x) == model.n_vertices and len(mesh.i) == model.n_triangles
    assert len(mesh.vertexcolor) == model.n_vertices and mesh.flatshading is False
    assert np.allclose(np.asarray(mesh.x), P[:, 0].numpy(), atol=0.051)  # rounded to 0.1 mm
    assert np.asarray(mesh.i).max() == int(model.triangles[:, 0].max())
    assert len(lms.x) == 68
    sc = fig.layout.scene
    assert [sc.xaxis.title.text, sc.yaxis.title.text, sc.zaxis.title.text] == ["x [mm]", "y [mm]", "z [mm]"]
    assert sc.aspectmode == "data" and sc.camera.up.y == 1 and sc.camera.eye.z > 0
    assert fig.layout.title.text == "mean"


def test_slider_figure_frames_steps_and_static_split(model):
    S = 5
    vals = torch.linspace(-3, 3, S)
    te = torch.zeros(S, model.n_expression)
    te[:, model.mouth_component] = vals
    frames = model.geometry(torch.zeros(S, model.n_shape), te)
    fig = viz.slider_figure(frames, model.triangles, model.mean_albedo, vals, label="expression 1 [sigma]")
    assert len(fig.frames) == S and len(fig.layout.sliders[0].steps) == S
    assert fig.layout.sliders[0].active == 2  # the value closest to 0
    assert fig.layout.sliders[0].currentvalue.prefix.startswith("expression 1 [sigma]")
    static, moving = fig.data  # the mouth moves, the forehead does not
    assert 0 < len(moving.x) < model.n_vertices and len(static.i) + len(moving.i) == model.n_triangles
    for fr in fig.frames:
        assert list(fr.traces) == [1] and fr.data[0].vertexcolor is None  # only x, y, z change
        assert len(fr.data[0].x) == len(moving.x)
    z_first, z_last = np.asarray(fig.frames[0].data[0].y), np.asarray(fig.frames[-1].data[0].y)
    assert np.abs(z_first - z_last).max() > 5.0  # the jaw moves by millimetres
    assert fig.layout.scene.xaxis.title.text == "x [mm]"


def test_slider_figure_everything_moving_and_bad_input():
    v, f = _tiny_mesh()
    frames = torch.stack([v, v * 2, v * 3])
    colors = torch.rand(3, 4, 3, generator=torch.Generator().manual_seed(0))
    fig = viz.slider_figure(frames, f, colors, [0, 1, 2])
    assert len(fig.data) == 1 and fig.frames[0].traces == (0,) and fig.frames[2].data[0].vertexcolor
    with pytest.raises(ValueError, match="one value per frame"):
        viz.slider_figure(frames, f, colors, [0, 1])


def test_image_figures_and_slider(model):
    theta = sample_sec5(model, 3, seed=0)
    with torch.no_grad():
        r = render(model, theta, 48)
    fig = viz.image_figure(r.image, nrow=3, title="grid")
    assert fig.data[0].type == "image" and fig.data[0].source.startswith("data:image/png;base64,")
    assert fig.layout.xaxis.title.text == "x [pixels]" and fig.layout.yaxis.title.text == "y [pixels]"
    fs = viz.image_slider_figure(r.image, [-1, 0, 1], label="e1 [sigma]")
    assert len(fs.frames) == 3 and len(fs.layout.sliders[0].steps) == 3 and fs.layout.sliders[0].active == 1
    rf = viz.raster_figure(r, 0, landmarks=landmarks_2d(model, r.screen)[0], n_faces=model.n_triangles)
    types = [t.type for t in rf.data]
    assert types == ["image", "scatter", "heatmap", "heatmap", "heatmap"]
    face = np.asarray(rf.data[2].z, dtype=float)
    assert np.nanmax(face) < model.n_triangles and np.isnan(face).any()
    assert all(rf.layout[f"xaxis{k}"].title.text == "x [pixels]" for k in ("", "2", "3", "4"))


def test_sh_figures_use_the_library_basis():
    res = 16
    fig = viz.sh_basis_figure(res)
    assert len(fig.data) == 9 and all(t.type == "heatmap" for t in fig.data)
    n, inside = viz.sphere_normals(res)
    i, j = res // 2, res // 4
    from facelib.render.shading import sh_basis

    want = sh_basis(n[i, j][None])[0]
    got = torch.tensor([float(np.asarray(t.z, dtype=float)[i, j]) for t in fig.data])
    assert torch.allclose(got, want.float(), atol=1e-3)
    assert fig.layout.annotations[1].text == viz.SH_NAMES[1]
    lights = viz.example_lights()
    lf = viz.sh_lighting_figure(lights, res=res)
    assert len(lf.data) == len(lights) and all(t.type == "image" for t in lf.data)
    assert lf.layout.xaxis.title.text == "x [pixels]"


def test_live_panel_updates_figure_and_reports_rate(model):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    panel = viz.live_panel(model, image_size=48)
    z0 = np.asarray(panel.fig.data[0].z, dtype=float).copy()
    png0 = panel.image.value
    panel.sliders["yaw"].value = 30.0
    z1 = np.asarray(panel.fig.data[0].z, dtype=float)
    assert panel.n_updates == 1 and np.abs(z1 - z0).max() > 10.0  # the head turned by 30 degrees
    assert panel.image.value != png0 and panel.image.value[:4] == b"\x89PNG"
    panel.sliders["sh0"].value = 0.2  # darker light: darker vertex colours
    assert panel.fig.data[0].vertexcolor[0] != viz.hex_colors(torch.ones(1, 3))[0]
    theta = panel.theta()
    assert theta.shape == (1, panel.layout.size)
    assert torch.isclose(theta[0, 1], torch.deg2rad(torch.tensor(30.0)))  # yaw beta
    fps = panel.update_rate(n=3)
    assert fps > 0 and panel.sliders["yaw"].value == 30.0 and panel.n_updates >= 2 + 3


def test_running_mean_against_a_loop():
    import numpy as np
    from facelib.book.viz import running_mean
    y = np.arange(40.0) ** 1.5
    out = running_mean(y, 5)
    assert np.allclose(out, [y[i:i + 5].mean() for i in range(36)])
    assert np.allclose(running_mean(y[:3], 25), y[:3])  # short series: k shrinks to 1


def test_curves_figures_draw_reference_levels():
    fig = viz.curves_figure({"a": ([1, 2, 3], [3.0, 2.0, 1.0])}, "t", "x [k]", "y [mm]",
                            levels={"mean face": 2.5, "floor": 0.5})
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [s.y0 for s in lines] == [2.5, 0.5] and [s.line.dash for s in lines] == ["dash", "dot"]
    assert [a.text for a in fig.layout.annotations] == ["mean face", "floor"]
    assert len(viz.curves_figure({"a": ([1], [1.0])}, "t", "x", "y").layout.shapes) == 0
    curves = {"row": {0: [{"train_s": 1.0, "e": 3.0}, {"train_s": 2.0, "e": 2.0}]}}
    fig = viz.learning_curves_figure(curves, {"mean face": 4.0}, "e", "t", "y [mm]")
    assert [s.y0 for s in fig.layout.shapes] == [4.0] and list(fig.data[0].y) == [3.0, 2.0]


def test_grey_shaded_and_signed_pictures():
    """Chapter 7's pictures: grey to RGB, a depth map lit from the upper left (a plane facing the
    camera is uniform; one tilted towards the light is brighter), and a signed map's colours."""
    import pytest
    from facelib.book.viz import grey3, shaded_depth, signed_map

    g = torch.rand(2, 5, 6)
    assert torch.equal(grey3(g), g[:, None].expand(-1, 3, -1, -1)) and grey3(g[:, None]).shape == (2, 3, 5, 6)
    with pytest.raises(ValueError, match="grey images"):
        grey3(torch.rand(2, 3, 5, 6))
    H = W = 8
    cols = torch.arange(W, dtype=torch.float32).expand(H, W)
    flat = torch.full((1, H, W), 500.0)
    tilted = (500.0 - 0.5 * cols)[None]  # further away to the left: faces left, towards the light
    mask = torch.ones(1, H, W, dtype=torch.bool)
    a, b = shaded_depth(flat, 1.0, mask), shaded_depth(tilted, 1.0, mask)
    assert a.shape == (1, 3, H, W) and torch.allclose(a[0, :, 2:-2, 2:-2], a[0, 0, 3, 3].expand(3, H - 4, W - 4))
    assert b[0, 0, 4, 4] > a[0, 0, 4, 4]
    out = shaded_depth(flat, 1.0, mask & (cols < 4)[None])
    assert (out[0, :, :, 5:] == 1).all()  # outside the mask: white
    s = signed_map(torch.tensor([[[-2.0, 0.0, 1.0, 5.0]]]), 2.0)
    assert torch.allclose(s[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # -limit: blue
    assert torch.allclose(s[0, :, 0, 1], torch.ones(3))  # 0: white
    assert torch.allclose(s[0, :, 0, 2], torch.tensor([1.0, 0.5, 0.5]))
    assert torch.allclose(s[0, :, 0, 3], torch.tensor([1.0, 0.0, 0.0]))  # saturates at +limit: red
    with pytest.raises(ValueError, match="limit"):
        signed_map(s[:, 0], 0.0)


def test_parameter_panels_studio_theta_and_light_colour(model):
    """The histogram panels of chapters 2 and 4 from unpacked parameters, the studio start of chapter 1
    (a white light: the picture is not tinted), and the light-colour statistic."""
    from facelib.model.params import ParamLayout, light_colour_spread

    layout = ParamLayout.from_model(model)
    th = sample_sec5(model, 5, seed=2)
    p = layout.unpack(th)
    panels = viz.parameter_panels({"a": p}, ["yaw beta [deg]", "light colour: max - min over RGB",
                                             "expression theta_e[1] (mouth)"], model.mouth_component)
    assert list(panels) == ["yaw beta [deg]", "light colour: max - min over RGB", "expression theta_e[1] (mouth)"]
    assert torch.allclose(panels["yaw beta [deg]"]["a"], torch.rad2deg(p["rotation"][:, 1]))
    g = p["illumination"].reshape(-1, 9, 3)[:, 0]
    assert torch.equal(panels["light colour: max - min over RGB"]["a"], g.max(1).values - g.min(1).values)
    assert torch.equal(panels["expression theta_e[1] (mouth)"]["a"], p["expression"][:, model.mouth_component])
    with pytest.raises(ValueError, match="unknown panels"):
        viz.parameter_panels({"a": p}, ["nose length"], 0)
    st = viz.studio_theta(layout, 2)
    assert torch.equal(st[:, layout["illumination"]], viz.studio_light().expand(2, -1))
    assert not st[:, :layout["illumination"].start].any()
    assert torch.equal(light_colour_spread(st[:, layout["illumination"]]), torch.zeros(2))
    with torch.no_grad():
        r = render(model, st[:1], 64)
    rgb = [float(r.image[0, c][r.mask[0]].mean()) for c in range(3)]
    assert min(rgb) > 0.3 * max(rgb)  # skin under white light, not a red-only one
