"""The rasterizer (facelib.render.raster) against a brute-force per-pixel reference, closed forms, gradcheck."""

import numpy as np
import pytest
import torch

from facelib.render import _twins, raster
from facelib.render.raster import Fragments, fragments_from_pix_to_face, interpolate, rasterize

BACKENDS = ["torch"] + (["numba"] if raster.HAVE_NUMBA else [])


# ------------------------------------------------------------------------------------------------
# brute-force reference: every pixel against every triangle, float64 numpy


def reference(verts, faces, H, W, K=1, perspective=True, cull=False):
    """(pix_to_face, zbuf, bary, dists) of one image, (H, W, K[, 3]), packed index = face index."""
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces)
    p2f = -np.ones((H, W, K), np.int64)
    zbuf = -np.ones((H, W, K))
    bary = -np.ones((H, W, K, 3))
    dists = -np.ones((H, W, K))
    for i in range(H):
        for j in range(W):
            p = np.array([j + 0.5, i + 0.5])
            hits = []
            for f, (a, b, c) in enumerate(faces):
                v0, v1, v2 = verts[a], verts[b], verts[c]
                if min(v0[2], v1[2], v2[2]) <= 0:
                    continue
                area = (v1[0] - v0[0]) * (v2[1] - v0[1]) - (v1[1] - v0[1]) * (v2[0] - v0[0])
                if abs(area) <= 1e-10 or (cull and area > 0):
                    continue
                def cross(u, w):
                    return (u[0] - p[0]) * (w[1] - p[1]) - (u[1] - p[1]) * (w[0] - p[0])
                l = np.array([cross(v1, v2), cross(v2, v0), cross(v0, v1)]) / area
                if l.min() < 0:
                    continue
                z = np.array([v0[2], v1[2], v2[2]])
                if perspective:
                    depth = 1 / (l / z).sum()
                    bc = l / z * depth
                else:
                    depth, bc = (l * z).sum(), l
                d = min(seg_dist(p, verts[u][:2], verts[w][:2]) for u, w in ((a, b), (b, c), (c, a)))
                hits.append((depth, f, bc, -d))
            hits.sort(key=lambda h: (h[0], h[1]))
            for k, (depth, f, bc, d) in enumerate(hits[:K]):
                p2f[i, j, k], zbuf[i, j, k], bary[i, j, k], dists[i, j, k] = f, depth, bc, d
    return p2f, zbuf, bary, dists


def seg_dist(p, a, b):
    t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1)
    return np.linalg.norm(p - (a + t * (b - a)))


def random_scene(seed, N=2, T=20, H=24, W=24):
    """T random overlapping triangles per image, some partly off-screen, one behind the camera, one
    degenerate; vertices not shared, so faces are (T, 3) = arange."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(N, T, 1, 2, generator=g) * torch.tensor([W + 8.0, H + 8.0]) - 4
    xy = centre + (torch.rand(N, T, 3, 2, generator=g) - 0.5) * 16
    z = 1 + 4 * torch.rand(N, T, 3, 1, generator=g)
    v = torch.cat([xy, z], -1)
    v[:, 0, 1, 2] = -0.5  # behind the camera
    v[:, 1, 2] = v[:, 1, 0] + 0.5 * (v[:, 1, 1] - v[:, 1, 0])  # degenerate (collinear)
    return v.reshape(N, T * 3, 3).double(), torch.arange(T * 3).reshape(T, 3)


def check_against_reference(frags, verts, faces, H, W, K, perspective, cull=False):
    F = faces.shape[0]
    for n in range(verts.shape[0]):
        p2f, zbuf, bary, dists = reference(verts[n].numpy(), faces.numpy(), H, W, K, perspective, cull)
        got = frags.pix_to_face[n].numpy()
        np.testing.assert_array_equal(np.where(got >= 0, got - n * F, -1), p2f)
        np.testing.assert_allclose(frags.zbuf[n].numpy(), zbuf, atol=1e-9)
        np.testing.assert_allclose(frags.bary_coords[n].numpy(), bary, atol=1e-9)
        np.testing.assert_allclose(frags.dists[n].numpy(), dists, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# visibility and fragments


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("perspective", [True, False])
def test_random_triangles_match_reference(backend, K, perspective):
    H, W = 24, 20
    verts, faces = random_scene(seed=K + 10 * perspective, H=H, W=W)
    frags = rasterize(verts, faces, (H, W), faces_per_pixel=K, perspective_correct=perspective,
                      backend=backend)
    assert isinstance(frags, Fragments)
    assert frags.pix_to_face.shape == (2, H, W, K) and frags.pix_to_face.dtype == torch.int64
    assert frags.bary_coords.shape == (2, H, W, K, 3)
    assert frags.zbuf.dtype == frags.dists.dtype == torch.float64
    assert (frags.pix_to_face[..., 0] >= 0).float().mean() > 0.2  # a non-trivial scene
    if K > 1:
        assert (frags.pix_to_face[..., 1] >= 0).any()  # overlaps exist
    check_against_reference(frags, verts, faces, H, W, K, perspective)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cull_backfaces_random_matches_reference(backend):
    verts, faces = random_scene(seed=3)
    frags = rasterize(verts, faces, 24, faces_per_pixel=2, cull_backfaces=True, backend=backend)
    check_against_reference(frags, verts, faces, 24, 24, 2, True, cull=True)


def test_cull_backfaces_winding_convention():
    # counter-clockwise as the viewer sees it (y up) = negative signed area in the y-down pixel frame
    front = torch.tensor([[2.0, 14.0, 1.0], [14.0, 14.0, 1.0], [2.0, 2.0, 1.0]])
    faces = torch.tensor([[0, 1, 2]])
    for backend in BACKENDS:
        for v, visible in ((front, True), (front.flip(0), False)):
            a = rasterize(v[None], faces, 16, cull_backfaces=True, backend=backend).pix_to_face
            b = rasterize(v[None], faces, 16, cull_backfaces=False, backend=backend).pix_to_face
            assert (b >= 0).sum() > 50
            assert torch.equal(a, b) if visible else (a == -1).all()


def project(shape_mm, size):
    """The quick orthographic projection of the brief, scaled to ``size`` pixels."""
    s = size / 240
    x, y, z = shape_mm.unbind(-1)
    return torch.stack([size / 2 + x * 0.9 * s, size / 2 - y * 0.9 * s, 300 - z], -1)


@pytest.fixture(scope="module")
def face48(open_model):
    v = project(open_model.mean_shape, 48)[None]
    return v, open_model.triangles


def test_face_matches_reference(face48):
    v, faces = face48
    H = 48
    frags = rasterize(v, faces, H, perspective_correct=False)
    # reference, vectorised over triangles and columns, one pixel row at a time
    tri = v[0].double()[faces].numpy()  # (F, 3, 3)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    p2f = -np.ones((H, H), np.int64)
    bary = np.zeros((H, H, 3))
    px = np.arange(H) + 0.5
    for i in range(H):
        py = i + 0.5
        t = np.nonzero((y.min(1) <= py) & (y.max(1) >= py) & (np.abs(area) > 1e-10))[0]
        if len(t) == 0:
            continue
        X, Y = x[t, :, None] - px, y[t, :, None] - py  # (T, 3, W)
        l = np.stack([X[:, 1] * Y[:, 2] - Y[:, 1] * X[:, 2], X[:, 2] * Y[:, 0] - Y[:, 2] * X[:, 0],
                      X[:, 0] * Y[:, 1] - Y[:, 0] * X[:, 1]], 1) / area[t, None, None]
        depth = np.where(l.min(1) >= 0, (l * z[t, :, None]).sum(1), np.inf)  # (T, W)
        best = depth.argmin(0)
        hit = np.isfinite(depth.min(0))
        p2f[i, hit] = t[best[hit]]
        bary[i, hit] = l[best[hit], :, np.nonzero(hit)[0]]
    got = frags.pix_to_face[0, ..., 0].numpy()
    assert (p2f >= 0).mean() > 0.25
    assert (got == p2f).mean() > 0.995
    same = (got == p2f) & (p2f >= 0)
    np.testing.assert_allclose(frags.bary_coords[0, ..., 0, :].numpy()[same], bary[same], atol=1e-4)


@pytest.mark.parametrize("perspective", [True, False])
def test_torch_backend_equals_numba(face48, perspective):
    if not raster.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    v, faces = face48
    v = v.repeat(2, 1, 1) + torch.tensor([[[0.0, 0, 0]], [[3.3, -2.1, 0]]])
    a = rasterize(v, faces, (48, 40), faces_per_pixel=2, perspective_correct=perspective, backend="numba")
    b = rasterize(v, faces, (48, 40), faces_per_pixel=2, perspective_correct=perspective, backend="torch")
    assert torch.equal(a.pix_to_face, b.pix_to_face)  # the same visibility decision, exactly
    for x, y in zip(a[1:], b[1:]):  # float32 numbers: Numba twin vs PyTorch, same formulas
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("perspective", [True, False])
def test_no_grad_fast_path_matches_the_differentiable_path(face48, perspective):
    """The Numba twins used under no_grad give the numbers of the PyTorch (autograd) code."""
    v, faces = face48
    v = v.repeat(2, 1, 1).double() + torch.tensor([[[0.0, 0, 0]], [[1.7, -0.6, 0]]], dtype=torch.float64)
    attrs = torch.rand(2, v.shape[1], 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fa = rasterize(v, faces, (48, 40), perspective_correct=perspective)
        ia = interpolate(attrs, fa, faces)
    vg = v.clone().requires_grad_(True)
    fb = rasterize(vg, faces, (48, 40), perspective_correct=perspective)
    ib = interpolate(attrs.requires_grad_(True), fb, faces)
    assert fb.zbuf.requires_grad and not fa.zbuf.requires_grad
    assert torch.equal(fa.pix_to_face, fb.pix_to_face)
    for x, y in zip(fa[1:], fb[1:]):
        torch.testing.assert_close(x, y.detach(), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(ia, ib.detach(), rtol=1e-12, atol=1e-12)


def test_cull_backfaces_keeps_the_visible_face(face48):
    # the model's winding is counter-clockwise from outside, so culling must not change the picture
    v, faces = face48
    a = rasterize(v, faces, 48, cull_backfaces=True).pix_to_face
    b = rasterize(v, faces, 48).pix_to_face
    assert (b >= 0).float().mean() > 0.25
    assert (a == b).float().mean() > 0.99
    assert (rasterize(v, faces.flip(1), 48, cull_backfaces=True).pix_to_face >= 0).float().mean() < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_scenes(backend):
    v = torch.rand(2, 5, 3) * 10 + 1
    for faces, verts in [
        (torch.zeros(0, 3, dtype=torch.int64), v),  # no faces
        (torch.tensor([[0, 1, 2]]), v + torch.tensor([100.0, 0, 0])),  # off-screen
        (torch.tensor([[0, 1, 2]]), v * torch.tensor([1.0, 1, -1])),  # behind the camera
        (torch.tensor([[0, 0, 1]]), v),  # degenerate
    ]:
        fr = rasterize(verts, faces, (8, 6), faces_per_pixel=2, backend=backend)
        assert fr.pix_to_face.shape == fr.zbuf.shape == fr.dists.shape == (2, 8, 6, 2)
        assert fr.bary_coords.shape == (2, 8, 6, 2, 3)
        for t in fr:
            assert (t == -1).all()
        assert (interpolate(v, fr, faces) == 0).all()
    assert rasterize(v[:0], torch.tensor([[0, 1, 2]]), 4, backend=backend).pix_to_face.shape == (0, 4, 4, 1)


@pytest.mark.parametrize("scale", [1.0, 1e5, 1e12])
def test_partly_offscreen_triangle_is_clipped(scale):
    v = torch.tensor([[[-50.0, -50.0, 2.0], [60.0, -40.0, 2.0], [-40.0, 70.0, 2.0]]], dtype=torch.float64)
    v[..., :2] *= scale
    for backend in BACKENDS:
        fr = rasterize(v, torch.tensor([[0, 1, 2]]), 10, backend=backend, perspective_correct=False)
        assert (fr.pix_to_face == 0).all() and torch.allclose(fr.zbuf, torch.tensor(2.0, dtype=v.dtype))


def test_perspective_correct_matches_closed_form():
    # a 3D triangle seen by a pinhole camera (focal 40 px, principal point (16, 16)); the pixel's ray
    # meets the triangle's plane at X; its 3D barycentrics and depth are the closed form
    f, c = 40.0, 16.0
    P = torch.tensor([[-1.0, -0.8, 2.0], [1.2, -0.5, 5.0], [-0.2, 1.0, 3.5]], dtype=torch.float64)
    screen = torch.stack([f * P[:, 0] / P[:, 2] + c, f * P[:, 1] / P[:, 2] + c, P[:, 2]], -1)
    faces = torch.tensor([[0, 1, 2]])
    fr = rasterize(screen[None], faces, 32, perspective_correct=True)
    mask = fr.pix_to_face[0, ..., 0] >= 0
    assert mask.sum() > 100
    i, j = mask.nonzero().unbind(1)
    ray = torch.stack([(j + 0.5 - c) / f, (i + 0.5 - c) / f, torch.ones_like(j, dtype=P.dtype)], -1)
    normal = torch.linalg.cross(P[1] - P[0], P[2] - P[0])
    X = ray * ((P[0] @ normal) / (ray @ normal))[:, None]  # (M, 3) points on the plane
    # barycentrics of X: solve X = P^T b with sum(b) = 1
    A = torch.cat([P.T, torch.ones(1, 3, dtype=P.dtype)])
    rhs = torch.cat([X, torch.ones(len(X), 1, dtype=P.dtype)], 1)[..., None]
    b = torch.linalg.lstsq(A.expand(len(X), 4, 3), rhs).solution[..., 0]
    torch.testing.assert_close(fr.bary_coords[0, i, j, 0], b)
    torch.testing.assert_close(fr.zbuf[0, i, j, 0], X[:, 2])
    # the screen-space (affine) barycentrics differ visibly for this slanted triangle
    affine = rasterize(screen[None], faces, 32, perspective_correct=False)
    assert (affine.bary_coords[0, i, j, 0] - b).abs().max() > 0.05
    # and reproduce the pixel centre by interpolating the screen positions
    xy = interpolate(screen[:, :2], affine, faces)[0, i, j, 0]
    torch.testing.assert_close(xy, torch.stack([j + 0.5, i + 0.5], -1).to(xy.dtype))


# ------------------------------------------------------------------------------------------------
# gradients


@pytest.fixture
def small_scene():
    verts, faces = random_scene(seed=7, N=2, T=6, H=12, W=12)
    verts = verts.clamp(min=0.5)  # every triangle in front of the camera
    return verts, faces


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_interpolate_attrs(small_scene, shared):
    verts, faces = small_scene
    fr = rasterize(verts, faces, 12, faces_per_pixel=2)
    assert (fr.pix_to_face >= 0).sum() > 20
    g = torch.Generator().manual_seed(0)
    shape = (verts.shape[1], 2) if shared else (2, verts.shape[1], 2)
    attrs = torch.rand(shape, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, fr, faces), (attrs,))


@pytest.mark.parametrize("perspective", [True, False])
def test_gradcheck_vertex_positions(small_scene, perspective):
    # the face assignment is held fixed (it is a hard decision); all the rest is differentiable
    verts, faces = small_scene
    p2f = raster.visibility(verts, faces, 12, faces_per_pixel=2, perspective_correct=perspective)
    attrs = torch.rand(verts.shape[1], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(v):
        fr = fragments_from_pix_to_face(v, faces, p2f, perspective)
        return interpolate(attrs, fr, faces), fr.zbuf, fr.dists

    assert torch.autograd.gradcheck(f, (verts.clone().requires_grad_(),))


def test_gradients_flow_through_rasterize(small_scene):
    verts, faces = small_scene
    v = verts.clone().requires_grad_()
    attrs = torch.rand(verts.shape[1], 3, dtype=torch.float64)
    interpolate(attrs, rasterize(v, faces, 12), faces).sum().backward()
    assert v.grad.abs().sum() > 0
    v.grad = None
    a = attrs.clone().requires_grad_()
    out = interpolate(a, rasterize(v, faces, 12), faces, detach_bary=True)  # Eq. 7 mode
    out.sum().backward()
    assert v.grad is None and a.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# errors, PyTorch3D


V3 = torch.rand(1, 4, 3) + 1
F1 = torch.tensor([[0, 1, 2]])


@pytest.mark.parametrize("args, kwargs, match", [
    ((V3[0], F1, 8), {}, r"\(N, V, 3\).*got \(4, 3\)"),
    ((V3[..., :2], F1, 8), {}, r"\(N, V, 3\).*got \(1, 4, 2\)"),
    ((V3.long(), F1, 8), {}, "floating-point"),
    ((V3, F1[0], 8), {}, r"\(F, 3\).*got \(3,\)"),
    ((V3, F1.float(), 8), {}, "integer"),
    ((V3, torch.tensor([[0, 1, 4]]), 8), {}, r"\[0, 3\]"),
    ((V3, torch.tensor([[0, -1, 2]]), 8), {}, r"\[0, 3\]"),
    ((V3 * torch.tensor([1.0, float("nan"), 1]), F1, 8), {}, "NaN or infinite"),
    ((V3 * torch.tensor([1.0, float("inf"), 1]), F1, 8), {}, "NaN or infinite"),
    ((V3, F1, 0), {}, "positive"),
    ((V3, F1, (8, -2)), {}, "positive"),
    ((V3, F1, (8, 8, 3)), {}, r"int or \(H, W\)"),
    ((V3, F1, 8), {"faces_per_pixel": 0}, "faces_per_pixel"),
    ((V3, F1, 8), {"backend": "opengl"}, "backend"),
])
def test_value_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rasterize(*args, **kwargs)


def test_interpolate_value_errors():
    fr = rasterize(V3, F1, 8)
    with pytest.raises(ValueError, match=r"\(N, V, D\) or \(V, D\)"):
        interpolate(torch.rand(4), fr, F1)
    with pytest.raises(ValueError, match="batch size 3"):
        interpolate(torch.rand(3, 4, 2), fr, F1)
    with pytest.raises(ValueError, match="only 2 vertices"):
        interpolate(torch.rand(2, 2), fr, F1)


def test_pytorch3d_backend_missing_raises(monkeypatch):
    import sys
    for name in ("pytorch3d", "pytorch3d.renderer", "pytorch3d.renderer.mesh", "pytorch3d.structures"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (import raises ImportError)
    assert not raster._have_pytorch3d()
    with pytest.raises(ImportError, match="PyTorch3D"):
        rasterize(V3, F1, 8, backend="pytorch3d")
    assert rasterize(V3, F1, 8).pix_to_face.shape == (1, 8, 8, 1)  # auto never needs it


# parity with PyTorch3D's own rasterizer: tests/test_pytorch3d.py


def test_falls_back_to_torch_without_numba(monkeypatch):
    verts, faces = random_scene(seed=5)
    expected = rasterize(verts, faces, 24, backend="torch")
    monkeypatch.setattr(raster, "HAVE_NUMBA", False)
    monkeypatch.setattr(_twins, "TWINS", {})  # without numba facelib.render registers no twins either
    for x, y in zip(rasterize(verts, faces, 24), expected):  # backend="auto"
        assert torch.equal(x, y)
    with pytest.raises(ImportError, match="numba"):
        rasterize(verts, faces, 24, backend="numba")


def test_no_grad_twins_are_lent_by_the_fast_path_and_can_be_switched_off(face48):
    """The reference lends its loops to Numba twins only through facelib.render._twins (registered by
    facelib.render from render/fast); switched off, the PyTorch lines run and give the same numbers."""
    from facelib.render import _twins
    from facelib.render.shading import shade, vertex_normals

    if not raster.HAVE_NUMBA:
        assert _twins.TWINS == {}
        return
    assert set(_twins.TWINS) == {"fragments", "interpolate", "vertex_normals", "shade", "rigid_transform",
                                 "weak_perspective", "perspective"}
    assert all(fn.__module__ == "facelib.render.fast.twins" for fn in _twins.TWINS.values())
    v, faces = face48
    v = v.repeat(2, 1, 1).double() + torch.tensor([[[0.0, 0, 0]], [[1.1, -0.4, 0]]], dtype=torch.float64)
    attrs = torch.rand(2, v.shape[1], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gamma = torch.randn(2, 27, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def run():
        f = rasterize(v, faces, (48, 40))
        n = vertex_normals(v, faces)
        return (*f[1:], interpolate(attrs, f, faces), n, shade(attrs, n, gamma))

    with torch.no_grad():
        assert _twins.twin("shade", v) is not None
        fast = run()
        with _twins.twins_disabled():
            assert all(_twins.twin(k, v) is None for k in _twins.TWINS)
            ref = run()
        assert _twins.twin("shade", v) is not None
    assert _twins.twin("shade", v.clone().requires_grad_(True)) is None  # a gradient is asked for
    for x, y in zip(fast, ref):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
