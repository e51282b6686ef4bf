"""Image formation: cameras (facelib.render.camera), SH shading (facelib.render.shading), point rendering
(facelib.render.points).  Closed-form references, quadrature on the sphere, and float64 gradchecks."""

import math

import numpy as np
import pytest
import torch

from facelib.render.camera import (default_camera, focal_from_fov, image_hw, look_at, perspective_project,
                            rigid_transform, weak_perspective_project)
from facelib.model.params import illumination_rgb, rot_xyz
from facelib.render.points import (backface_visibility, inside_image, project_points, render_points,
                            sample_image)
from facelib.render.shading import (SH_IRRADIANCE_CONSTANTS, face_normals, gamma_from_radiance,
                             sh_basis, sh_first_order_basis, sh_irradiance_basis, shade,
                             shade_first_order, vertex_normals)

D = torch.float64


# ---------------------------------------------------------------------------------- helpers
def sphere_quadrature(n_theta=200, n_phi=400):
    """Gauss-Legendre in cos(theta) x uniform in phi: directions (N, 3) and weights (N,), sum 4 pi."""
    x, w = np.polynomial.legendre.leggauss(n_theta)
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    ct, ph = np.meshgrid(x, phi, indexing="ij")
    st = np.sqrt(1 - ct ** 2)
    dirs = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
    wts = (w[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).reshape(-1)
    return torch.tensor(dirs, dtype=D), torch.tensor(wts, dtype=D)


def icosphere(subdiv=2):
    """Unit icosphere (V, 3) float64 and faces (F, 3), counter-clockwise seen from outside."""
    p = (1 + 5 ** 0.5) / 2
    v = [(-1, p, 0), (1, p, 0), (-1, -p, 0), (1, -p, 0), (0, -1, p), (0, 1, p), (0, -1, -p),
         (0, 1, -p), (p, 0, -1), (p, 0, 1), (-p, 0, -1), (-p, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
         (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
         (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(x, float) / np.linalg.norm(x) for x in v]
    for _ in range(subdiv):
        cache, nf = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = nf
    return torch.tensor(np.array(v), dtype=D), torch.tensor(f, dtype=torch.long)


def clamped_cosine_order2(c):
    """Order-2 SH approximation of max(0, cos): sum_l A_l (2l+1)/(4 pi) P_l(c)."""
    return 0.25 + 0.5 * c + (5.0 / 16.0) * 0.5 * (3 * c * c - 1)


# ---------------------------------------------------------------------------------- SH basis
def test_sh_basis_orthonormal_on_sphere():
    dirs, w = sphere_quadrature(40, 80)
    Y = sh_basis(dirs)
    gram = (Y * w[:, None]).T @ Y
    assert torch.allclose(gram, torch.eye(9, dtype=D), atol=1e-3)
    assert torch.allclose(w.sum(), torch.tensor(4 * math.pi, dtype=D))


def test_sh_basis_values_by_hand():
    Y = sh_basis(torch.tensor([[0.0, 0.0, 1.0]], dtype=D))[0]
    c0, c1, c20 = 0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi)), math.sqrt(5 / (16 * math.pi))
    expect = torch.tensor([c0, 0, c1, 0, 0, 0, 2 * c20, 0, 0], dtype=D)
    assert torch.allclose(Y, expect)
    assert SH_IRRADIANCE_CONSTANTS == pytest.approx((math.pi, 2 * math.pi / 3, math.pi / 4))


def test_irradiance_basis_constant_term_is_one():
    n = torch.nn.functional.normalize(torch.randn(50, 3, dtype=D), dim=-1)
    H = sh_irradiance_basis(n)
    assert torch.allclose(H[:, 0], torch.ones(50, dtype=D))
    raw = sh_irradiance_basis(n, normalize=False)
    assert torch.allclose(raw[:, 0], torch.full((50,), math.pi * 0.5 / math.sqrt(math.pi), dtype=D))
    assert torch.allclose(H / raw, (H / raw)[:1].expand(50, 9))  # one global scale


def test_directional_light_matches_clamped_cosine():
    """L = delta(w - l): L_lm = Y_lm(l), and E(n) is the order-2 clamped cosine of n.l (closed form);
    numerically integrating max(0, n.w) Y_lm(w) recovers A_l Y_lm(l) (the Ramamoorthi constants)."""
    torch.manual_seed(0)
    l = torch.nn.functional.normalize(torch.tensor([0.3, 0.5, 0.8], dtype=D), dim=0)
    n = torch.nn.functional.normalize(torch.randn(1, 200, 3, dtype=D), dim=-1)
    gamma = gamma_from_radiance(sh_basis(l))[None]  # (1, 9) monochrome
    E = shade(torch.ones(1, 200, 3, dtype=D), n, gamma)[..., 0]
    assert torch.allclose(E, clamped_cosine_order2(n @ l), atol=1e-12)
    # the kernel projection by quadrature
    dirs, w = sphere_quadrature(400, 200)
    kernel = (dirs @ l).clamp(min=0)
    coeffs = (sh_basis(dirs) * (w * kernel)[:, None]).sum(0)
    assert torch.allclose(coeffs, sh_irradiance_basis(l, normalize=False), atol=1e-4)
    # and the order-2 approximation of a directional light is close to the true clamped cosine
    assert (E - (n @ l).clamp(min=0)).abs().max() < 0.1


def test_sphere_under_smooth_environment_matches_quadrature():
    """For a band-limited L (bands 0-2), E(n) = int L(w) max(0, n.w) dw exactly equals shade()."""
    g = torch.Generator().manual_seed(1)
    L = torch.randn(9, 3, generator=g, dtype=D)
    L[0] += 3.0
    dirs, w = sphere_quadrature(400, 200)
    radiance = sh_basis(dirs) @ L  # (N, 3)
    verts, faces = icosphere(1)
    n = verts[:40]
    E_ref = ((n @ dirs.T).clamp(min=0) * w) @ radiance  # (40, 3)
    albedo = torch.rand(1, 40, 3, generator=g, dtype=D)
    c = shade(albedo, n[None], gamma_from_radiance(L)[None])
    assert torch.allclose(c[0], albedo[0] * E_ref, atol=1e-3)  # quadrature of the kink


def test_gamma_layouts_and_monochrome():
    g = torch.Generator().manual_seed(2)
    n = torch.nn.functional.normalize(torch.randn(2, 30, 3, generator=g, dtype=D), dim=-1)
    albedo = torch.rand(2, 30, 3, generator=g, dtype=D)
    theta_i = torch.randn(2, 27, generator=g, dtype=D)
    c27 = shade(albedo, n, theta_i)
    c93 = shade(albedo, n, illumination_rgb(theta_i))
    assert torch.equal(c27, c93)
    # channel k of coloured shading = monochrome shading with the k-th column
    for k in range(3):
        ck = shade(albedo, n, illumination_rgb(theta_i)[..., k])
        assert torch.allclose(ck[..., k], c27[..., k])
    # gamma_1 = 1, others 0: c = r
    unit = torch.zeros(2, 9, dtype=D)
    unit[:, 0] = 1
    assert torch.allclose(shade(albedo, n, unit), albedo)
    # explicit sum over b of gamma_b H_b
    H = sh_irradiance_basis(n)
    ref = albedo * torch.einsum("bvk,bkc->bvc", H, illumination_rgb(theta_i))
    assert torch.allclose(c27, ref)
    # per-pixel (B, H, W, 3) inputs
    img = shade(albedo.reshape(2, 5, 6, 3), n.reshape(2, 5, 6, 3), theta_i)
    assert torch.allclose(img.reshape(2, 30, 3), c27)


def test_first_order_shading():
    n = torch.nn.functional.normalize(torch.randn(2, 10, 3, dtype=D), dim=-1)
    Y = sh_first_order_basis(n)
    assert torch.equal(Y[..., 0], torch.ones(2, 10, dtype=D)) and torch.equal(Y[..., 1:], n)
    l = torch.randn(2, 4, dtype=D)
    albedo = torch.rand(2, 10, 3, dtype=D)
    ref = albedo * (l[:, None, 0] + (n * l[:, None, 1:]).sum(-1))[..., None]
    assert torch.allclose(shade_first_order(albedo, n, l), ref)
    lc = l[..., None].expand(2, 4, 3)
    assert torch.allclose(shade_first_order(albedo, n, lc), ref)


# ---------------------------------------------------------------------------------- normals
def test_vertex_normals_of_sphere_are_radial():
    verts, faces = icosphere(3)
    for r in (1.0, 90.0):
        n = vertex_normals(r * verts[None], faces)[0]
        cos = (n * verts).sum(-1)
        assert cos.min() > 1 - 1e-3
        assert torch.allclose(n.norm(dim=-1), torch.ones(len(verts), dtype=D))
    # flipped winding flips them
    assert ((vertex_normals(verts[None], faces.flip(-1))[0] * verts).sum(-1) < -0.999).all()


def test_vertex_normals_of_flat_grid_are_plus_z():
    n_side = 5
    ys, xs = torch.meshgrid(torch.arange(n_side, dtype=D), torch.arange(n_side, dtype=D), indexing="ij")
    verts = torch.stack([xs, ys, torch.zeros_like(xs) + 3.0], -1).reshape(1, -1, 3)
    faces = []
    for i in range(n_side - 1):
        for j in range(n_side - 1):
            a, b, c, d = i * n_side + j, i * n_side + j + 1, (i + 1) * n_side + j, (i + 1) * n_side + j + 1
            faces += [(a, b, d), (a, d, c)]  # counter-clockwise seen from +z
    n = vertex_normals(verts, torch.tensor(faces))
    assert torch.allclose(n, torch.tensor([0.0, 0.0, 1.0], dtype=D).expand_as(n))


def test_vertex_normals_area_weighted():
    """Two triangles sharing vertex 0: one in the xy plane (area 2), one in the xz plane (area 0.5)."""
    verts = torch.tensor([[[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0.0]]], dtype=D)
    faces = torch.tensor([[0, 1, 2], [0, 3, 4]])
    fn = face_normals(verts, faces)[0]
    assert torch.allclose(fn, torch.tensor([[0, 0, 4], [0, 1, 0.0]], dtype=D))
    n0 = vertex_normals(verts, faces)[0, 0]
    assert torch.allclose(n0, torch.nn.functional.normalize(torch.tensor([0, 1, 4.0], dtype=D), dim=0))


# ---------------------------------------------------------------------------------- cameras
def test_rigid_transform():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(2, 7, 3, generator=g, dtype=D)
    R = rot_xyz(torch.randn(2, 3, generator=g, dtype=D))
    t = torch.randn(2, 3, generator=g, dtype=D)
    out = rigid_transform(v, R, t)
    ref = torch.einsum("bij,bvj->bvi", R, v) + t[:, None]
    assert torch.allclose(out, ref)
    assert torch.allclose(rigid_transform(v, torch.eye(3, dtype=D), torch.zeros(3, dtype=D)), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rigid_transform_and_rotate_twin_give_the_reference_numbers(dtype):
    """Without gradients on the CPU rigid_transform and rotate run a Numba twin (facelib.render.fast.twins):
    the same three products and sums in the same order as ``v @ R^T + t``, so the same numbers, for one
    rotation per face or one for all, a translation per face or one for all; with a gradient asked for,
    the PyTorch product runs (and gradcheck passes through it, test_gradcheck_projections)."""
    from facelib.render import _twins
    from facelib.render.camera import rotate

    g = torch.Generator().manual_seed(5)
    v = (torch.randn(3, 2000, 3, generator=g, dtype=D) * 80).to(dtype)
    cases = [(rot_xyz(torch.randn(3, 3, generator=g, dtype=D)), torch.randn(3, 3, generator=g, dtype=D) * 100),
             (rot_xyz(torch.randn(1, 3, generator=g, dtype=D))[0], torch.randn(3, generator=g, dtype=D)),
             (rot_xyz(torch.randn(1, 3, generator=g, dtype=D)), torch.randn(1, 3, generator=g, dtype=D))]
    for R, t in cases:
        with torch.no_grad():
            fast = rigid_transform(v, R, t), rotate(v, R)
            with _twins.twins_disabled():
                ref = rigid_transform(v, R, t), rotate(v, R)
        Rb = R.to(dtype).reshape(-1, 3, 3)[:, None]  # (1 or B, 1, 3, 3)
        Rv = (v[..., 0:1] * Rb[..., 0] + v[..., 1:2] * Rb[..., 1]) + v[..., 2:3] * Rb[..., 2]  # the kernel's order
        want = (Rv + t.to(dtype).reshape(-1, 1, 3), Rv)
        for a, b, w in zip(fast, ref, want):
            assert a.dtype == dtype and a.shape == v.shape
            assert torch.equal(a, w)  # to the bit
            torch.testing.assert_close(a, b)  # the BLAS product: the same here, to the bit on our CPUs
    if _twins.TWINS:
        assert _twins.twin("rigid_transform", v) is not None
        assert _twins.twin("rigid_transform", v, R.requires_grad_(True)) is None  # a gradient is asked for
    with pytest.raises(ValueError, match="R has shape"):
        rotate(v, torch.eye(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_twins_give_the_reference_numbers(dtype):
    """Without gradients on the CPU the image-plane steps of weak_perspective_project and perspective_project
    run Numba twins (one pass instead of a tensor per operation, each product and sum rounded as the
    reference's): the same numbers to the bit as the PyTorch lines, for per-face and shared scales, offsets,
    focal lengths and principal points, and for points at or behind the camera (depth below eps)."""
    from facelib.render import _twins

    g = torch.Generator().manual_seed(6)
    B, V = 3, 500
    v = (torch.randn(B, V, 3, generator=g, dtype=D) * 80).to(dtype)
    R = rot_xyz(torch.randn(B, 3, generator=g, dtype=D) * 0.4)
    t2 = (torch.randn(B, 2, generator=g, dtype=D) * 3).to(dtype)
    s = (torch.rand(B, generator=g, dtype=D) + 0.1).to(dtype)
    vc = v.clone()
    vc[..., 2] -= 600
    vc[0, :3, 2] = torch.tensor([0.0, 1e-9, 5.0], dtype=dtype)  # on, just before and behind the camera
    calls = [lambda: weak_perspective_project(v, R, t2, s, 48),
             lambda: weak_perspective_project(v, R[0], t2[0], 2.5, (48, 40), depth_offset=700.0),
             lambda: perspective_project(vc, s * 600, torch.tensor([24.0, 20.0], dtype=dtype) + t2),
             lambda: perspective_project(vc, 500.0, image_size=(40, 48))]
    for call in calls:
        with torch.no_grad():
            fast = call()
            with _twins.twins_disabled():
                ref = call()
        assert fast.dtype == dtype and torch.equal(fast, ref)
    if _twins.TWINS:
        assert _twins.twin("perspective", vc) is not None
        assert _twins.twin("perspective", vc.clone().requires_grad_(True)) is None


def test_perspective_projection_by_hand():
    v = torch.tensor([[[0.0, 0.0, -500.0], [100.0, 50.0, -500.0], [-10.0, -20.0, -1000.0]]], dtype=D)
    s = perspective_project(v, 1000.0, image_size=(240, 320))
    expect = torch.tensor([[[160.0, 120.0, 500.0], [160 + 200, 120 - 100, 500.0],
                            [160 - 10, 120 + 20, 1000.0]]], dtype=D)
    assert torch.allclose(s, expect)
    # explicit principal point and per-batch focal
    s2 = perspective_project(v.expand(2, 3, 3), torch.tensor([1000.0, 500.0], dtype=D),
                             principal_point=torch.tensor([[10.0, 20.0], [0.0, 0.0]], dtype=D))
    assert torch.allclose(s2[0, 1], torch.tensor([210.0, -80.0, 500.0], dtype=D))
    assert torch.allclose(s2[1, 1], torch.tensor([100.0, -50.0, 500.0], dtype=D))


def test_pixel_centre_convention_matches_sampling():
    """A point projecting to (j + 0.5, i + 0.5) samples exactly pixel (i, j)."""
    H, W = 6, 8
    image = torch.arange(H * W, dtype=D).reshape(1, 1, H, W)
    i, j = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    u = torch.stack([j + 0.5, i + 0.5], -1).reshape(1, -1, 2)
    assert torch.equal(sample_image(image, u)[0, :, 0], image.reshape(-1))
    # bilinear halfway between pixel centres
    mid = sample_image(image, torch.tensor([[[1.0, 0.5], [1.5, 1.0]]], dtype=D))[0, :, 0]
    assert torch.allclose(mid, torch.tensor([0.5, (1 + 9) / 2.0], dtype=D))
    # float32 image, float64 u: promoted, never silently truncated
    assert sample_image(image.float(), u).dtype == D


def test_weak_perspective_matches_formula():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(2, 9, 3, generator=g, dtype=D) * 50
    R = rot_xyz(torch.randn(2, 3, generator=g, dtype=D) * 0.3)
    t2d = torch.randn(2, 2, generator=g, dtype=D) * 10
    scale = torch.tensor([0.8, 1.3], dtype=D)
    out = weak_perspective_project(v, R, t2d, scale, (100, 120))
    q = torch.einsum("bij,bvj->bvi", R, v)
    x = 60 + scale[:, None] * q[..., 0] + t2d[:, None, 0]
    y = 50 - scale[:, None] * q[..., 1] + t2d[:, None, 1]
    assert torch.allclose(out, torch.stack([x, y, 1000 - q[..., 2]], -1))
    assert (out[..., 2] > 0).all()


def test_default_camera_frames_a_face():
    cam = default_camera(224)
    assert cam.image_size == (224, 224) and cam.principal_point == (112.0, 112.0)
    face = torch.tensor([[[0.0, 100.0, 0.0], [0.0, -100.0, 0.0]]])
    s = cam.project(face)
    assert s[0, :, 1].tolist() == pytest.approx([112 - 0.375 * 224, 112 + 0.375 * 224])
    assert torch.allclose(s[..., 2], torch.full((1, 2), 600.0))
    cam30 = default_camera((240, 320), fov_deg=30.0)
    assert cam30.focal == pytest.approx(120 / math.tan(math.radians(15)))
    assert cam30.focal == pytest.approx(focal_from_fov(30.0, 240))
    assert default_camera(224).fov_deg == pytest.approx(2 * math.degrees(math.atan(112 / cam.focal)))


def test_weak_perspective_is_the_far_limit_of_perspective():
    """Perspective with focal f at distance d tends to weak perspective with s = f / d (same y flip)."""
    g = torch.Generator().manual_seed(9)
    v = torch.randn(1, 20, 3, generator=g, dtype=D) * 50
    R = rot_xyz(torch.tensor([[0.2, -0.4, 0.1]], dtype=D))
    d, s = 1e9, 0.5
    persp = perspective_project(rigid_transform(v, R, torch.tensor([0.0, 0.0, -d], dtype=D)), s * d,
                                image_size=(96, 128))
    weak = weak_perspective_project(v, R, torch.zeros(1, 2, dtype=D), s, (96, 128), depth_offset=d)
    assert torch.allclose(persp, weak, atol=1e-4)


def test_look_at():
    R, t = look_at(torch.tensor([0.0, 0.0, 600.0], dtype=D))
    assert torch.allclose(R, torch.eye(3, dtype=D))
    assert torch.allclose(t, torch.tensor([0, 0, -600.0], dtype=D))
    eye = torch.tensor([[300.0, 200.0, 500.0], [-400.0, 0.0, 100.0]], dtype=D)
    target = torch.tensor([[10.0, 20.0, 30.0], [0.0, 0.0, 0.0]], dtype=D)
    R, t = look_at(eye, target)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=D).expand(2, 3, 3))
    assert torch.allclose(torch.linalg.det(R), torch.ones(2, dtype=D))
    assert torch.allclose(rigid_transform(eye[:, None], R, t), torch.zeros(2, 1, 3, dtype=D), atol=1e-9)
    s = perspective_project(rigid_transform(target[:, None], R, t), 500.0, image_size=64)
    assert torch.allclose(s[..., :2], torch.full((2, 1, 2), 32.0, dtype=D))
    assert torch.allclose(s[..., 2, None], (eye - target).norm(dim=-1)[:, None, None])
    # a point above the target (model +y) appears above it in the image (smaller y_pix)
    above = perspective_project(rigid_transform((target + torch.tensor([0, 10.0, 0], dtype=D))[:, None],
                                                R, t), 500.0, image_size=64)
    assert (above[..., 1] < 32).all()
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0.0, 600.0, 0.0]))


# ---------------------------------------------------------------------------------- points
def test_backface_visibility_and_render_points():
    verts, faces = icosphere(2)
    v = (80.0 * verts)[None]
    R = torch.eye(3, dtype=D)[None]
    t = torch.tensor([[0.0, 0.0, -600.0]], dtype=D)
    p = project_points(v, R, t, 500.0, image_size=160)
    n_cam = vertex_normals(p.v_cam, faces)
    vis = backface_visibility(n_cam, p.v_cam)
    # exact silhouette of a sphere seen from distance d: visible iff n . (c - p) > 0
    to_cam = -p.v_cam
    assert torch.equal(vis, (n_cam * to_cam).sum(-1) > 0)
    assert vis[0, verts[:, 2] > 0.2].all() and not vis[0, verts[:, 2] < 0].any()
    assert torch.equal(backface_visibility(n_cam, p.v_cam, orthographic=True), n_cam[..., 2] > 0)
    gamma = torch.zeros(1, 9, dtype=D)
    gamma[:, 0] = 0.8
    r = render_points(v, torch.full_like(v, 0.5), faces, R, t, gamma, 500.0, 160)
    assert torch.allclose(r.c, torch.full_like(v, 0.4))
    assert torch.equal(r.visible, vis)  # everything is inside the 160 x 160 image
    assert torch.allclose(r.u, p.u) and inside_image(r.u, 160).all()
    assert not inside_image(torch.tensor([[[-1.0, 3.0], [3.0, 129.0]]]), 128).any()


# ---------------------------------------------------------------------------------- gradients
def test_gradcheck_projections():
    g = torch.Generator().manual_seed(5)
    v = (torch.randn(2, 4, 3, generator=g, dtype=D) * 30 + torch.tensor([0, 0, -500.0], dtype=D))
    v.requires_grad_()
    f = torch.tensor([800.0, 900.0], dtype=D, requires_grad=True)
    pp = torch.tensor([[60.0, 50.0], [64.0, 64.0]], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: perspective_project(a, b, c), (v, f, pp))
    ang = torch.randn(2, 3, generator=g, dtype=D, requires_grad=True)
    t = torch.randn(2, 3, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: rigid_transform(a, rot_xyz(b), c), (v, ang, t))
    t2d = torch.randn(2, 2, generator=g, dtype=D, requires_grad=True)
    s = torch.tensor([1.1, 0.7], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: weak_perspective_project(a, rot_xyz(b), c, d, 128), (v, ang, t2d, s))


def test_gradcheck_shading():
    g = torch.Generator().manual_seed(6)
    albedo = torch.rand(2, 5, 3, generator=g, dtype=D, requires_grad=True)
    n = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g, dtype=D), dim=-1)
    n.requires_grad_()
    gamma = torch.randn(2, 27, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(shade, (albedo, n, gamma))
    mono = torch.randn(2, 9, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(shade, (albedo, n, mono))
    l = torch.randn(2, 4, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(shade_first_order, (albedo, n, l))


def test_gradcheck_vertex_normals():
    verts, faces = icosphere(0)
    v = (verts + 0.05 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(7),
                                    dtype=D))[None].requires_grad_()
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, faces), (v,))


def test_gradcheck_sample_image():
    g = torch.Generator().manual_seed(8)
    image = torch.rand(2, 3, 5, 7, generator=g, dtype=D, requires_grad=True)
    # avoid pixel centres, where bilinear interpolation has kinks
    u = (torch.rand(2, 6, 2, generator=g, dtype=D) * 0.8 + 0.1 + torch.randint(0, 4, (2, 6, 2), generator=g)
         + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(sample_image, (image, u))


# ---------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise():
    v = torch.zeros(1, 3, 3)
    v[..., 2] = -500
    with pytest.raises(ValueError, match=r"\(B, V, 3\)"):
        perspective_project(torch.zeros(3, 3), 500.0, image_size=64)
    with pytest.raises(ValueError, match="NaN"):
        perspective_project(torch.full((1, 2, 3), float("nan")), 500.0, image_size=64)
    with pytest.raises(ValueError, match="focal"):
        perspective_project(v, -1.0, image_size=64)
    with pytest.raises(ValueError, match="focal"):
        perspective_project(v, float("inf"), image_size=64)
    with pytest.raises(ValueError, match="image_size or principal_point"):
        perspective_project(v, 500.0)
    with pytest.raises(ValueError, match="principal_point"):
        perspective_project(v, 500.0, principal_point=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="R has shape"):
        rigid_transform(v, torch.eye(4), torch.zeros(3))
    with pytest.raises(ValueError, match="t has shape"):
        rigid_transform(v, torch.eye(3), torch.zeros(2))
    with pytest.raises(ValueError, match="scale"):
        weak_perspective_project(v, torch.eye(3)[None], torch.zeros(1, 2), 0.0, 64)
    with pytest.raises(ValueError, match="image_size"):
        image_hw((64, 64, 3))
    with pytest.raises(ValueError, match="gamma"):
        shade(torch.ones(1, 3, 3), torch.ones(1, 3, 3), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="albedo"):
        shade(torch.ones(1, 4, 3), torch.ones(1, 3, 3), torch.zeros(1, 9))
    with pytest.raises(ValueError, match="batch size"):
        shade(torch.ones(2, 3, 3), torch.ones(2, 3, 3), torch.zeros(3, 9))
    with pytest.raises(ValueError, match="normals"):
        sh_basis(torch.ones(3, 2))
    with pytest.raises(ValueError, match="faces"):
        vertex_normals(v, torch.tensor([[0, 1, 5]]))
    with pytest.raises(ValueError, match="image has shape"):
        sample_image(torch.zeros(3, 4, 4), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="u has shape"):
        sample_image(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="fov_deg"):
        default_camera(64, fov_deg=200.0)


def test_vertex_normals_numba_twin_matches_autograd_path():
    """Under no_grad the Numba twin runs; it must give the PyTorch path's normals."""
    from facelib.render.shading import vertex_normals

    g = torch.Generator().manual_seed(0)
    verts = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
    faces = torch.randint(0, 40, (60, 3), generator=g)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    with torch.no_grad():
        a = vertex_normals(verts, faces)
    b = vertex_normals(verts.clone().requires_grad_(True), faces)
    assert b.requires_grad
    torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)


def test_shade_numba_twin_matches_autograd_path():
    from facelib.render.shading import shade

    g = torch.Generator().manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(2, 50, 3, generator=g, dtype=torch.float64), dim=-1)
    a = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    for gamma in (torch.randn(2, 27, generator=g, dtype=torch.float64), torch.randn(2, 9, generator=g, dtype=torch.float64)):
        with torch.no_grad():
            x = shade(a, n, gamma)
        y = shade(a.clone().requires_grad_(True), n, gamma)
        assert y.requires_grad
        torch.testing.assert_close(x, y.detach(), rtol=1e-10, atol=1e-12)
