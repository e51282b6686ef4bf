"""The render pipeline: parameters -> shaded image, masks, depth; CLI render and bench."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from facelib.render.camera import Camera
from facelib.model.params import ParamLayout, sample_sec5
from facelib.render.raster import HAVE_NUMBA
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
    """The no-grad render (the fused Numba path where it applies) gives the autograd path's picture."""
    theta = sample_sec5(open_model, 2, seed=3)
    with torch.no_grad():
        a = render(open_model, theta, 48)
    b = render(open_model, theta.clone().requires_grad_(True), 48)
    assert b.image.requires_grad and not a.image.requires_grad
    b = b._replace(fragments=type(b.fragments)(*(x.detach() for x in b.fragments)))
    assert _ties_only(a, b) <= 1e-3 * a.mask.numel()
    same = (a.fragments.pix_to_face == b.fragments.pix_to_face)[..., 0]
    assert torch.equal(a.mask[same], b.mask[same])
    torch.testing.assert_close(torch.where(same[:, None], a.image, 0), torch.where(same[:, None], b.image.detach(), 0),
                               atol=1e-4, rtol=1e-4)


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


# ------------------------------------------------------------------------------------------------
# the fused no-grad CPU path (one Numba kernel per face) against the PyTorch / Numba-twin path

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")


def _ties_only(a, b, edge_px=1e-3, rel_depth=1e-3):
    """Number of pixels where the face index of two renders differs; each must be a tie: the pixel
    centre lies within ``edge_px`` of an edge of a covering triangle (the two paths evaluate Eq. 2 with
    float32 sums in different orders, which moves vertices by ~1e-5 px), or both renders see surfaces
    within ``rel_depth`` of each other (neighbouring triangles, touching surfaces)."""
    pa, pb = a.fragments.pix_to_face, b.fragments.pix_to_face
    diff = pa != pb
    if bool(diff.any()):
        da, db = a.fragments.dists[diff], b.fragments.dists[diff]
        near_edge = ((pa[diff] >= 0) & (da.abs() <= edge_px)) | ((pb[diff] >= 0) & (db.abs() <= edge_px))
        za, zb = a.fragments.zbuf[diff], b.fragments.zbuf[diff]
        same_depth = (pa[diff] >= 0) & (pb[diff] >= 0) & ((za - zb).abs() <= rel_depth * za.abs())
        assert bool((near_edge | same_depth).all()), "pix_to_face differs away from ties"
    return int(diff.sum())


@needs_numba
@pytest.mark.parametrize("twins", [True, False], ids=["numba-twins", "torch-lines"])
@pytest.mark.parametrize("size", [(48, 40), 7, (3, 5)])
def test_fused_render_equals_the_pytorch_path(open_model, size, twins):
    """The fused kernel against ``fused=False`` under ``no_grad``: with the reference's Numba twins, and
    with the twins switched off, so that the reference's PyTorch lines themselves run."""
    from facelib.render._twins import twins_disabled

    theta = sample_sec5(open_model, 3, seed=11)
    with torch.no_grad():
        a = render(open_model, theta, size, background=0.3, fused=True)
        with contextlib.nullcontext() if twins else twins_disabled():
            b = render(open_model, theta, size, background=0.3, fused=False)
    H, W = (size, size) if isinstance(size, int) else size
    assert a.image.shape == (3, 3, H, W) and a.fragments.bary_coords.shape == (3, H, W, 1, 3)
    assert _ties_only(a, b) <= 1e-3 * a.mask.numel()
    same = a.fragments.pix_to_face == b.fragments.pix_to_face  # (B, H, W, 1): compare the rest there
    assert torch.equal(a.mask[same[..., 0]], b.mask[same[..., 0]])
    assert torch.equal(a.input_mask[same[..., 0]], b.input_mask[same[..., 0]])
    fa, fb = a.fragments, b.fragments
    # barycentrics of sub-pixel triangles move ~1e-4 with the ~1e-5 px float32 differences of Eq. 2
    for x, y, m, tol in [(a.image, b.image, same[..., 0][:, None], 1e-4), (a.depth, b.depth, same[..., 0], 1e-4),
                         (fa.zbuf, fb.zbuf, same, 1e-4), (fa.bary_coords, fb.bary_coords, same[..., None], 1e-3),
                         (fa.dists, fb.dists, same, 1e-3)]:
        torch.testing.assert_close(torch.where(m, x, 0), torch.where(m, y, 0), rtol=tol, atol=tol)
    for name in ("screen", "verts_cam", "normals_cam", "colors"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-3)


@needs_numba
def test_fused_render_equals_the_differentiable_pytorch_path(open_model):
    """``fused=False`` under ``no_grad`` runs the Numba twins of the rasterizer and the shading; with a
    gradient the PyTorch code itself runs (the path every training loop differentiates): the fused
    kernel must agree with that one too."""
    theta = sample_sec5(open_model, 2, seed=12)
    with torch.no_grad():
        a = render(open_model, theta, (48, 40), background=0.3, fused=True)
    t = theta.clone().requires_grad_(True)
    b = render(open_model, t, (48, 40), background=0.3)
    assert b.image.requires_grad  # the differentiable path ran
    assert _ties_only(a, b) <= 1e-3 * a.mask.numel()
    same = (a.fragments.pix_to_face == b.fragments.pix_to_face)[..., 0]
    torch.testing.assert_close(torch.where(same[:, None], a.image, 0), torch.where(same[:, None], b.image.detach(), 0),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.colors, b.colors.detach(), rtol=1e-4, atol=1e-3)


@needs_numba
def test_fused_render_equals_the_pytorch_path_at_240(open_model):
    """The benchmark's setting: the whole batch agrees (visibility except at ties, colours to 1e-4)."""
    theta = sample_sec5(open_model, 4, seed=5)
    with torch.no_grad():
        a = render(open_model, theta, 240, fused=True)
        b = render(open_model, theta, 240, fused=False)
        c = render(open_model, theta, 240, outputs="image")
    assert _ties_only(a, b) <= 1e-4 * a.mask.numel()
    same = (a.fragments.pix_to_face == b.fragments.pix_to_face)[..., 0]
    assert torch.equal(a.mask[same], b.mask[same])
    torch.testing.assert_close(torch.where(same[:, None], a.image, 0), torch.where(same[:, None], b.image, 0),
                               rtol=1e-4, atol=1e-4)
    assert c.fragments is None and c.screen is None and c.colors is None
    assert torch.equal(c.image, a.image) and torch.equal(c.input_mask, a.input_mask) and torch.equal(c.depth, a.depth)


def _soup_model(T=120, seed=0):
    """A face model whose mean shape is a soup of T unshared triangles in front of a test camera
    (focal 100 px, 10 mm away): sizes from 0.2 to 40 px, random winding (half are back faces),
    overlapping, some partly off-screen, one behind the camera, one degenerate."""
    g = torch.Generator().manual_seed(seed)
    size = torch.cat([0.2 + 3 * torch.rand(T // 2, generator=g), 3 + 37 * torch.rand(T - T // 2, generator=g)])
    centre = torch.rand(T, 1, 2, generator=g) * torch.tensor([80.0, 64.0]) - 8  # pixels of a 64 x 48 image
    xy = centre + (torch.rand(T, 3, 2, generator=g) - 0.5) * size[:, None, None]
    d = 2 + 6 * torch.rand(T, 3, generator=g)  # depth, mm
    d[0, 1] = -1.0  # behind the camera
    xy[1, 2] = xy[1, 0] + 0.5 * (xy[1, 1] - xy[1, 0])  # degenerate
    d[1, 2] = d[1, 0] + 0.5 * (d[1, 1] - d[1, 0])
    return _screen_model(xy, d, g)


def _screen_model(xy, d, g, centre=(32.0, 24.0)):
    """A face model of unshared triangles with corners at pixels ``xy`` (T, 3, 2) and depths ``d``
    (T, 3) mm seen by a test camera (focal 100 px, principal point ``centre``, 10 mm away)."""
    from facelib.model.facemodel import FaceModel

    T = xy.shape[0]
    V = 3 * T
    f, (cx, cy) = 100.0, centre
    model_xyz = torch.stack([(xy[..., 0] - cx) * d / f, -(xy[..., 1] - cy) * d / f, 10 - d], -1).reshape(V, 3)
    z1 = torch.zeros(1, V, 3)
    model = FaceModel(name="soup", mean_shape=model_xyz, shape_basis=z1, sigma_s=torch.ones(1),
                      expression_basis=z1, sigma_e=torch.ones(1), mean_albedo=torch.rand(V, 3, generator=g),
                      albedo_basis=z1, sigma_r=torch.ones(1), triangles=torch.arange(V).reshape(T, 3),
                      masks={"mouth_interior": torch.rand(V, generator=g) < 0.7})
    cam = Camera(f, (cx, cy), torch.eye(3), torch.tensor([0.0, 0.0, -10.0]), (48, 64), 0.0)
    return model, cam


@needs_numba
@pytest.mark.parametrize("size", [(48, 64), (3, 2), (1, 1), (5, 4)])
def test_fused_rasterizer_on_a_triangle_soup(size):
    """Every size class of the fused z-buffer (2x2 blocks, 4x2 / 2x4 blocks, row by row, images
    smaller than the blocks), culling, clipping, triangles behind the camera and degenerate ones, against
    the Numba visibility kernel + PyTorch fragments (themselves checked against a brute-force reference
    in test_raster.py)."""
    model, cam = _soup_model()
    layout = ParamLayout.from_model(model)
    theta = layout.zeros(2)
    theta[:, layout["illumination"].start] = 1.0
    theta[1, layout["illumination"]] += 0.2 * torch.randn(27, generator=torch.Generator().manual_seed(1))
    theta[1, layout["rotation"]] = torch.tensor([0.01, -0.02, 0.03])
    with torch.no_grad():
        a = render(model, theta, size, camera=cam, fused=True)
        b = render(model, theta, size, camera=cam, fused=False)
    assert torch.equal(a.fragments.pix_to_face, b.fragments.pix_to_face)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.input_mask, b.input_mask)
    if size == (48, 64):
        assert 0.2 < float(a.mask.float().mean()) < 0.9 and bool((~a.input_mask & a.mask).any())
    for x, y in [(a.image, b.image), (a.depth, b.depth)] + list(zip(a.fragments[1:], b.fragments[1:])):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


@needs_numba
@pytest.mark.parametrize("size", [(9, 11), (4, 4), (5, 6)])
def test_fused_rasterizer_blocks_at_the_image_edges(size):
    """Triangles whose pixel boxes are 2x2, 4x2 or 2x4 (drawn as one or two 2x2 blocks, moved inside the
    image where they would stick out, so the two may overlap) and 3x3, at every offset from the
    bottom-right corner of the image and half off it, in both windings: pix_to_face and the image
    equal the Numba visibility kernel + PyTorch fragments."""
    H, W = size
    corners = []
    for h, w in [(2, 2), (4, 2), (2, 4), (3, 2), (2, 3), (1, 4), (3, 3)]:
        for i0 in [-1, 0, 1] + list(range(H - h - 1, H + 1)):
            for j0 in [-1, 0, 1] + list(range(W - w - 1, W + 1)):
                # a rectangle just around the pixel centres of the box (h rows, w columns at i0, j0),
                # split along a diagonal that passes no centre: two front-facing triangles whose
                # clipped boxes are that box
                xa, ya, xb, yb = j0 + 0.2, i0 + 0.3, j0 + w - 0.25, i0 + h - 0.15
                corners += [[(xa, ya), (xa, yb), (xb, yb)], [(xa, ya), (xb, yb), (xb, ya)]]
    xy = torch.tensor(corners, dtype=torch.float32)
    xy = torch.cat([xy, xy.flip(1)])  # both windings: the back faces are culled
    g = torch.Generator().manual_seed(3)
    d = 2 + 6 * torch.rand(xy.shape[0], 3, generator=g)
    model, cam = _screen_model(xy, d, g, centre=(W / 2, H / 2))
    theta = ParamLayout.from_model(model).zeros(1)
    theta[:, ParamLayout.from_model(model)["illumination"].start] = 1.0
    with torch.no_grad():
        a = render(model, theta, size, camera=cam, fused=True)
        b = render(model, theta, size, camera=cam, fused=False)
    assert float(a.mask.float().mean()) > 0.5
    assert torch.equal(a.fragments.pix_to_face, b.fragments.pix_to_face)
    torch.testing.assert_close(a.image, b.image, rtol=1e-4, atol=1e-4)


def test_fused_is_used_only_without_gradients(open_model):
    theta = sample_sec5(open_model, 1, seed=0).requires_grad_(True)
    with pytest.raises(ValueError, match="gradient"):
        render(open_model, theta, 16, fused=True)
    r = render(open_model, theta, 16)  # falls back to the differentiable path
    assert r.image.requires_grad
    with pytest.raises(ValueError, match="float32"):
        with torch.no_grad():
            render(open_model, theta.double(), 16, fused=True)
    with pytest.raises(ValueError, match="outputs"):
        render(open_model, theta, 16, outputs="pixels")
    with torch.no_grad():
        lean = render(open_model, theta, 16, outputs="image", fused=False)
    assert lean.fragments is None and lean.screen is None and lean.image.shape == (1, 3, 16, 16)


@needs_numba
def test_fused_render_of_an_empty_batch_and_non_finite_theta(open_model):
    layout = ParamLayout.from_model(open_model)
    with torch.no_grad():
        r = render(open_model, torch.zeros(0, layout.size), 8)
        assert r.image.shape == (0, 3, 8, 8) and r.mask.shape == (0, 8, 8)
        theta = layout.zeros(1)
        theta[0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            render(open_model, theta, 8)


def test_outputs_select_the_render_fields(open_model):
    """``outputs`` names the optional fields to fill (the rest are None), on both paths."""
    theta = sample_sec5(open_model, 2, seed=4)
    with torch.no_grad():
        full = render(open_model, theta, 24)
        for fused in ([None, False] if HAVE_NUMBA else [False]):
            r = render(open_model, theta, 24, outputs=("screen", "image"), fused=fused)
            assert r.fragments is None and r.verts_cam is None and r.normals_cam is None and r.colors is None
            torch.testing.assert_close(r.screen, full.screen, rtol=1e-5, atol=1e-3)
            assert torch.equal(r.mask, full.mask) and torch.equal(r.input_mask, full.input_mask)
    for bad in (("pixels",), 3, "everything"):
        with pytest.raises(ValueError, match="outputs"):
            render(open_model, theta, 24, outputs=bad)



def test_triangle_chunks_cover_the_triangles_in_order_and_mark_only_strips():
    """The z-buffer's chunks (start, count, strip): every triangle once and in order, at most _CH per
    chunk, and strip = 1 only where faces[start + k] == faces[start] + k (checked triangle by
    triangle); long strips are found, short ones and irregular triangles are gathered."""
    import numpy as np

    import facelib.render.fast.fused as R

    g = np.random.default_rng(0)
    strip = lambda base, n: base + np.arange(n)[:, None] + np.array([0, 1, 40])  # noqa: E731
    faces = np.concatenate([strip(0, 40), g.integers(0, 900, (5, 3)), strip(100, 600),
                            strip(5, R._RUN_MIN - 1), g.integers(0, 900, (3, 3))]).astype(np.int32)
    chunks = R._triangle_chunks(faces)
    assert chunks.dtype == np.int64 and chunks.shape[1] == 3
    assert chunks[0, 0] == 0 and np.all(chunks[1:, 0] == chunks[:-1, 0] + chunks[:-1, 1])
    assert chunks[-1, 0] + chunks[-1, 1] == len(faces) and np.all((chunks[:, 1] > 0) & (chunks[:, 1] <= R._CH))
    for start, n, is_strip in chunks:
        if is_strip:
            assert np.array_equal(faces[start:start + n], faces[start] + np.arange(n)[:, None])
    covered = np.zeros(len(faces), bool)
    for start, n, is_strip in chunks[chunks[:, 2] == 1]:
        covered[start:start + n] = True
    assert covered[:40].all() and covered[45:645].all() and not covered[40:45].any() and not covered[645:].any()
    assert R._triangle_chunks(np.zeros((0, 3), np.int32)).shape == (0, 3)


def test_face_ranges_cover_the_batch_once_and_end_one_face_at_a_time():
    import facelib.render.fast.fused as R

    for B in range(0, 40):
        for n_jobs in (1, 2, 3):
            ranges = R._face_ranges(B, n_jobs)
            assert [b for b0, b1 in ranges for b in range(b0, b1)] == list(range(B))
            assert all(1 <= b1 - b0 <= R._FACES_PER_CALL for b0, b1 in ranges)
            if n_jobs > 1:
                assert all(b1 - b0 == 1 for b0, b1 in ranges[-min(B, 2 * n_jobs):])


@needs_numba
def test_fused_offsets_micro_kernel_blas_and_torch_agree(open_model, monkeypatch):
    """Eq. 2-3 offsets of the fused path: the packed-basis micro-kernel (the default where it runs),
    NumPy's BLAS and torch.mm, split over threads, against a float64 reference; renders through each
    agree to float32 rounding."""
    from concurrent.futures import ThreadPoolExecutor

    import facelib.render.fast.fused as R

    g = torch.Generator().manual_seed(3)
    coef, basis = torch.randn(7, 19, generator=g), torch.randn(19, 1001, generator=g)
    ref = (coef.double() @ basis.double()).float()
    bases = [basis] + ([R._gemm.pack_basis(basis.numpy())] if R._gemm.available() else [])
    with ThreadPoolExecutor(3) as pool:
        for b in bases:
            outs = []
            for n_jobs, p in ((1, None), (3, pool), (4, pool)):
                (out,) = R._offsets([(coef, b)], n_jobs, p)
                torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-5, atol=1e-5)
                outs.append(out)
            if isinstance(b, R._gemm.PackedBasis):  # any split of the columns: the same sums
                assert all(np.array_equal(outs[0], o) for o in outs[1:])
    theta = sample_sec5(open_model, 5, seed=21)
    with torch.no_grad():
        a = render(open_model, theta, 40, outputs=("verts_cam", "colors"))
        monkeypatch.setattr(R._gemm, "available", lambda: False)
        b = render(open_model, theta, 40, outputs=("verts_cam", "colors"))  # NumPy's BLAS
        monkeypatch.setattr(R, "_blas_controller", lambda: None)
        c = render(open_model, theta, 40, outputs=("verts_cam", "colors"))  # torch.mm
    # The shaded colours depend on the normals, cross products of edges between float32 vertices about a
    # millimetre apart: a summation-order difference of ~1e-5 mm in a vertex turns a normal by ~1e-5 rad.
    # With OpenBLAS's Haswell kernels (AVX2 CPUs; OPENBLAS_CORETYPE=Haswell) 4 of 338,910 colours differed
    # by 2.4e-5, so colours are compared to 1e-4 (1/40 of an 8-bit level).
    for x in (b, c):
        torch.testing.assert_close(a.verts_cam, x.verts_cam, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.colors, x.colors, rtol=1e-5, atol=1e-4)
        assert float((a.mask != x.mask).float().mean()) < 1e-3


@needs_numba
def test_fused_render_reuses_workspaces_across_sizes_and_threads(open_model):
    """The per-thread workspaces and the worker pool are reused between calls: renders at changing
    sizes and thread counts equal a render of the same input on its own (nothing leaks between calls)."""
    theta = sample_sec5(open_model, 3, seed=8)
    threads = torch.get_num_threads()
    with torch.no_grad():
        first = {s: render(open_model, theta, s, outputs="image") for s in (24, (16, 30))}
        try:
            for n in (1, 2, threads):
                torch.set_num_threads(n)
                for s in ((16, 30), 24, (16, 30)):
                    r = render(open_model, theta, s, outputs="image")
                    assert torch.equal(r.image, first[s].image) and torch.equal(r.depth, first[s].depth)
        finally:
            torch.set_num_threads(threads)


@needs_numba
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fused_render_in_a_forked_child(open_model):
    """A forked child (a DataLoader worker, say) renders with its own worker threads: the parent's pool
    is not inherited as if alive (that would hang). The child exits 0 when its render equals the
    parent's."""
    theta = sample_sec5(open_model, 4, seed=2)
    with torch.no_grad():
        parent = render(open_model, theta, 20, outputs="image").image  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            with torch.no_grad():
                code = 0 if torch.equal(render(open_model, theta, 20, outputs="image").image, parent) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the render in the forked child hung")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@needs_numba
def test_fused_render_from_two_threads_at_once(open_model):
    """Two threads rendering at the same time share the worker pool and get what they would alone;
    NumPy's BLAS thread count is restored afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    import facelib.render.fast.fused as R

    thetas = [sample_sec5(open_model, 6, seed=s) for s in (30, 31)]
    with torch.no_grad():
        alone = [render(open_model, t, 32, outputs="image").image for t in thetas]
    ctl = R._blas_controller()
    before = [lib.num_threads for lib in ctl.lib_controllers] if ctl else None

    def job(t):
        with torch.no_grad():
            return [render(open_model, t, 32, outputs="image").image for _ in range(3)]

    with ThreadPoolExecutor(2) as users:
        results = list(users.map(job, thetas))
    for res, ref in zip(results, alone):
        assert all(torch.equal(x, ref) for x in res)
    if ctl:
        assert [lib.num_threads for lib in ctl.lib_controllers] == before
