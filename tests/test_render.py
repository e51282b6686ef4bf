"""The render pipeline: parameters -> shaded image, masks, depth; CLI render and bench."""

import json
import subprocess
import sys

import torch

from facelib.params import ParamLayout, sample_sec5
from facelib.render import depth_map, landmarks_2d, pncc_colors, render


def _frontal(model, batch=1):
    layout = ParamLayout.from_model(model)
    theta = layout.zeros(batch)
    theta[:, layout["illumination"].start] = 1.0  # gamma_1 = 1: irradiance 1 everywhere
    return layout, theta


def test_frontal_mean_face_shows_albedo_and_masks(open_model):
    layout, theta = _frontal(open_model)
    with torch.no_grad():
        r = render(open_model, theta, 64, background=0.25)
    assert r.image.shape == (1, 3, 64, 64) and r.mask.shape == (1, 64, 64)
    assert 0.3 < r.mask.float().mean() < 0.9
    # with gamma = (1, 0, ...) the shaded colour is the albedo: inside [0, 1], background elsewhere
    img = r.image[0]
    assert torch.all(img[:, ~r.mask[0]] == 0.25)
    assert float(img[:, r.mask[0]].min()) >= 0 and float(img[:, r.mask[0]].max()) <= 1
    assert (r.depth[0][r.mask[0]] > 400).all() and (r.depth[0][~r.mask[0]] == 0).all()
    # the closed mouth (a 1.6 mm slit) shows almost no cavity: under 0.5 % of the face pixels
    assert int((r.mask & ~r.input_mask).sum()) <= 0.005 * int(r.mask.sum())
    lm = landmarks_2d(open_model, r.screen)
    assert lm.shape == (1, 68, 2) and (lm > 0).all() and (lm < 64).all()


def test_open_mouth_is_removed_from_the_input_mask(open_model):
    layout, theta = _frontal(open_model)
    theta[:, layout["expression"].start + open_model.mouth_component] = float(open_model.expression_range[0])
    with torch.no_grad():
        r = render(open_model, theta, 96)
    cavity = r.mask & ~r.input_mask
    assert int(cavity.sum()) > 20
    # the cavity lies between the inner-lip landmarks
    lm = landmarks_2d(open_model, r.screen)[0]
    ys, xs = torch.nonzero(cavity[0], as_tuple=True)
    assert float(xs.float().mean()) == torch.clamp(xs.float().mean(), lm[60, 0] - 2, lm[64, 0] + 2)


def test_gradients_reach_every_parameter_group(open_model):
    theta = sample_sec5(open_model, 2, seed=0).requires_grad_(True)
    r = render(open_model, theta, 48)
    (r.image * torch.rand_like(r.image)).sum().backward()
    g = ParamLayout.from_model(open_model).unpack(theta.grad)
    for name in ("rotation", "shape", "expression", "reflectance", "illumination"):
        assert torch.isfinite(g[name]).all() and g[name].abs().sum() > 0, name


def test_no_grad_render_equals_differentiable_render(open_model):
    theta = sample_sec5(open_model, 2, seed=3)
    with torch.no_grad():
        a = render(open_model, theta, 48)
    b = render(open_model, theta.clone().requires_grad_(True), 48)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.image, b.image.detach(), atol=1e-4, rtol=1e-4)


def test_depth_map_gradient_matches_finite_differences_on_visible_pixels(open_model):
    """Richardson's rendering layer (Eq. 5-7): d(depth)/d(vertices) = barycentric weights."""
    layout, theta = _frontal(open_model)
    with torch.no_grad():
        screen = render(open_model, theta, 32).screen.double()
    faces = open_model.triangles
    s = screen.clone().requires_grad_(True)
    D = depth_map(s, faces, 32)
    w = torch.rand_like(D)
    (D * w).sum().backward()
    # move every vertex's depth by eps: the depth map of the visible pixels moves by eps (sum b = 1)
    eps = 1e-3
    dz = torch.zeros_like(screen)
    dz[..., 2] = eps
    D2 = depth_map(screen + dz, faces, 32)
    vis = D > 0
    fd = float(((D2 - D.detach()) * w)[vis].sum() / eps)
    an = float(s.grad[..., 2].sum())
    assert abs(fd - an) < 1e-6 * max(1.0, abs(an))
    # hidden vertices (outside every visible triangle) get no gradient
    assert (s.grad[..., 2] != 0).sum() < screen.shape[1]


def test_pncc_colors_in_unit_cube(open_model):
    c = pncc_colors(open_model)
    assert c.shape == (open_model.n_vertices, 3) and float(c.min()) == 0 and float(c.max()) == 1


def test_cli_render_and_bench(tmp_path, open_model):
    out = tmp_path / "face.png"
    r = subprocess.run([sys.executable, "-m", "facelib", "render", "--seed", "1", "--size", "64", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[:2] == (64, 64) and img[..., :3].std() > 0.05
    r = subprocess.run([sys.executable, "-m", "facelib", "bench", "render", "--size", "32", "--batch", "2",
                        "--batches", "1", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"faces_per_s", "size", "batch", "device", "vertices", "triangles"} <= set(d)
    assert d["faces_per_s"] > 0 and d["size"] == 32
    r = subprocess.run([sys.executable, "-m", "facelib", "render", "--size", "0"], capture_output=True, text=True)
    assert r.returncode != 0 and "positive" in r.stderr


def test_pncc_and_normal_maps(open_model):
    from facelib.render import normal_map, pncc_map

    layout, theta = _frontal(open_model)
    with torch.no_grad():
        r = render(open_model, theta, 48)
        P = pncc_map(open_model, r.fragments)
        N = normal_map(open_model, r.fragments, r.normals_cam)
    m = r.mask[0]
    assert P.shape == (1, 3, 48, 48) and float(P.min()) >= 0 and float(P.max()) <= 1
    assert (P[0][:, ~m] == 0).all() and (N[0][:, ~m] == 0).all()
    assert torch.allclose(N[0][:, m].norm(dim=0), torch.ones(int(m.sum())), atol=1e-4)
    # a frontal face looks at the camera: the normals' z component is mostly positive
    assert float((N[0, 2][m] > 0).float().mean()) > 0.9
    # PNCC x grows from the subject's right (image left) to the left (image right)
    row = P[0, 0, 24][m[24]]
    assert float(row[-1]) > float(row[0])
