"""FineNet's shape-from-shading criterion (facelib.coarse_fine.sfs, Richardson et al. Eq. 8-14): closed forms,
least-squares references and float64 gradchecks."""

import numpy as np
import pytest
import torch

from facelib.coarse_fine.sfs import (LAMBDA_F, LAMBDA_SH, LAMBDA_SM, PAPER, criterion_minimum, depth_normals, e_f,
                                     e_sh, e_sm, high_pass, interior, laplacian, minimise_depth, recover_light_albedo,
                                     sfs_loss, shading_image, smooth_pixels, solve_albedo, solve_lighting)
from facelib.render.shading import sh_basis, sh_first_order_basis

D = torch.float64


def sphere_depth(H=24, W=28, radius_px=40.0, pixel_mm=1.5, offset=500.0):
    """Depth (mm) of a sphere cap seen from +z, and its analytic normals (x right, y up, z to viewer)."""
    rows, cols = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    X = (cols - W / 2) * pixel_mm
    Y = -(rows - H / 2) * pixel_mm
    R = radius_px * pixel_mm
    Z = torch.sqrt(R * R - X * X - Y * Y)
    n = torch.stack([X, Y, Z], -1) / R
    return (offset - Z)[None], n[None]


def test_normals_of_a_plane_are_exact():
    H, W, p = 9, 11, 0.7
    rows, cols = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    a, b = 0.3, -0.8  # mm of depth per column / per row
    depth = (500 + a * cols + b * rows)[None]
    n, valid = depth_normals(depth, p)
    want = torch.tensor([a, -b, p], dtype=D)
    want = want / want.norm()
    assert valid[0, 1:-1, 1:-1].all() and not valid[0, 0].any() and not valid[0, :, -1].any()
    assert torch.allclose(n[valid], want.expand(int(valid.sum()), 3), atol=1e-12)


def test_normals_of_a_sphere_match_the_analytic_ones():
    depth, n_true = sphere_depth()
    n, valid = depth_normals(depth, 1.5)
    err = torch.rad2deg(torch.acos((n * n_true).sum(-1).clamp(-1, 1)))[valid]
    assert err.max() < 1.0  # central differences: O(h^2) on a smooth surface
    # the mask removes pixels whose neighbours are outside it
    mask = torch.zeros_like(depth, dtype=torch.bool)
    mask[:, 5:15, 5:20] = True
    _, v2 = depth_normals(depth, 1.5, mask)
    assert v2.sum() == 8 * 13 and not v2[:, 5].any()


def test_laplacian_of_a_quadratic():
    rows, cols = torch.meshgrid(torch.arange(8, dtype=D), torch.arange(9, dtype=D), indexing="ij")
    z = (0.5 * cols ** 2 - 2.0 * rows ** 2 + 3 * rows * cols)[None]
    L = laplacian(z)[0, 1:-1, 1:-1]
    assert torch.allclose(L, torch.full_like(L, 2 * 0.5 - 2 * 2.0))


def _scene(B=2, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth, n = sphere_depth()
    depth, n = depth.expand(B, -1, -1).clone(), n.expand(B, -1, -1, -1).clone()
    H, W = depth.shape[1:]
    mu = 0.4 + 0.2 * torch.rand(B, H, W, generator=g, dtype=D)
    A = 0.05 * torch.randn(B, K, H, W, generator=g, dtype=D)
    alpha = torch.randn(B, K, generator=g, dtype=D)
    l = torch.tensor([[0.8, 0.2, 0.3, 0.6], [1.0, -0.3, 0.1, 0.5]], dtype=D)[:B]
    rho = mu + (A * alpha[:, :, None, None]).sum(1)
    mask = torch.isfinite(depth) & (torch.rand(B, H, W, generator=g, dtype=D) > 0.1)
    return dict(depth=depth, n=n, mu=mu, A=A, alpha=alpha, l=l, rho=rho, mask=mask)


def test_lighting_least_squares_recovers_the_light_and_matches_numpy():
    s = _scene()
    I = s["rho"] * shading_image(s["l"], s["n"])
    assert torch.allclose(solve_lighting(I, s["rho"], s["n"], s["mask"]), s["l"], atol=1e-8)
    # with noise it is the least-squares solution over the masked pixels (numpy reference)
    I_noisy = I + 0.05 * torch.randn(I.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    l = solve_lighting(I_noisy, s["mu"], s["n"], s["mask"])
    for b in range(2):
        m = s["mask"][b]
        A = (s["mu"][b][m][:, None] * sh_first_order_basis(s["n"][b][m])).numpy()
        ref = np.linalg.lstsq(A, I_noisy[b][m].numpy(), rcond=None)[0]
        assert np.allclose(l[b].numpy(), ref, atol=1e-8)


def test_albedo_least_squares_recovers_the_coefficients():
    s = _scene()
    I = s["rho"] * shading_image(s["l"], s["n"])
    alpha, rho = solve_albedo(I, s["mu"], s["A"], s["l"], s["n"], s["mask"])
    assert torch.allclose(alpha, s["alpha"], atol=1e-7)
    assert torch.allclose(rho, s["rho"], atol=1e-8)
    # numpy reference on a noisy image
    I_noisy = I + 0.05 * torch.randn(I.shape, generator=torch.Generator().manual_seed(2), dtype=D)
    alpha, _ = solve_albedo(I_noisy, s["mu"], s["A"], s["l"], s["n"], s["mask"])
    sh = shading_image(s["l"], s["n"])
    for b in range(2):
        m = s["mask"][b]
        A = (s["A"][b][:, m] * sh[b][m]).T.numpy()
        rhs = (I_noisy[b][m] - s["mu"][b][m] * sh[b][m]).numpy()
        assert np.allclose(alpha[b].numpy(), np.linalg.lstsq(A, rhs, rcond=None)[0], atol=1e-7)


def test_gradchecks_of_the_three_terms():
    g = torch.Generator().manual_seed(3)
    B, H, W = 2, 6, 7
    z = (500 + 3 * torch.randn(B, H, W, generator=g, dtype=D)).requires_grad_(True)
    z0 = 500 + 3 * torch.randn(B, H, W, generator=g, dtype=D)
    I = torch.rand(B, H, W, generator=g, dtype=D)
    rho = 0.5 + 0.1 * torch.rand(B, H, W, generator=g, dtype=D)
    l = torch.tensor([[0.7, 0.2, -0.3, 0.5], [0.9, 0.0, 0.2, 0.6]], dtype=D)
    mask = torch.ones(B, H, W, dtype=torch.bool)
    mask[0, 0, :3] = False
    p = torch.tensor([1.2, 0.8], dtype=D)
    assert torch.autograd.gradcheck(lambda z: e_sh(z, I, rho, l, p, mask), (z,))
    assert torch.autograd.gradcheck(lambda z: e_f(z, z0, mask), (z,))
    assert torch.autograd.gradcheck(lambda z: e_sm(z, mask), (z,))  # |.| is smooth away from 0


def test_sfs_loss_is_zero_shading_error_on_the_true_surface():
    """An image made by Eq. 8 from a depth map with the mean albedo (the assumption of Eq. 11): l* and
    alpha_T* (= 0) are recovered from that depth, E_sh vanishes there and grows for a perturbed depth."""
    s = _scene(K=3)
    s["alpha"].zero_()
    p = 1.5
    n, valid = depth_normals(s["depth"], p)
    img = 0.8 * s["mu"] * shading_image(s["l"], n)  # in [0, 1]; the loss works in grey levels
    mask = torch.ones_like(valid)
    out = sfs_loss(s["depth"], s["depth"], img, s["mu"], s["A"], mask, p, **PAPER)
    assert torch.allclose(out["l"], 0.8 * 255 * s["l"], atol=1e-6)
    assert torch.allclose(out["alpha_T"], s["alpha"], atol=1e-6)
    assert out["E_sh"].max() < 1e-9  # grey levels^2 and out["E_f"].abs().max() == 0
    assert torch.allclose(out["loss"], LAMBDA_SH * out["E_sh"] + LAMBDA_F * out["E_f"] + LAMBDA_SM * out["E_sm"])
    bump = s["depth"] + 0.5 * torch.sin(torch.arange(s["depth"].shape[2], dtype=D))
    worse = sfs_loss(bump, s["depth"], img, s["mu"], s["A"], mask, p, **PAPER)
    assert (worse["E_sh"] > 1.0).all() and (worse["E_f"] > 0).all()
    # the library's criterion (second-order light, alternations, smooth pixels) explains the image too
    lib = sfs_loss(s["depth"], s["depth"], img, s["mu"], s["A"], mask, p)
    assert lib["l"].shape == (2, 9) and lib["E_sh"].max() < 1e-6  # grey levels^2; the solve's 1e-9 ridge
    assert (sfs_loss(bump, s["depth"], img, s["mu"], s["A"], mask, p)["E_sh"] > 1.0).all()
    # l* and alpha_T* come from z0 and carry no gradient
    z0 = s["depth"].clone().requires_grad_(True)
    o = sfs_loss(bump, z0, img, s["mu"], s["A"], mask, p)
    assert not o["l"].requires_grad and not o["rho"].requires_grad


def test_smooth_pixels_drop_creases_and_keep_smooth_surfaces():
    """A V-shaped fold (a crease of the coarse depth) is cut out with its neighbours; a sphere keeps its
    whole interior; None keeps the interior of the mask."""
    depth, _ = sphere_depth()
    mask = torch.ones_like(depth, dtype=torch.bool)
    assert torch.equal(smooth_pixels(depth, 1.5, mask, 0.5), interior(mask))
    assert torch.equal(smooth_pixels(depth, 1.5, mask, None), interior(mask))
    H, W = 10, 12
    cols = torch.arange(W, dtype=D).expand(H, W)
    fold = (500 + 3.0 * (cols - 6).abs())[None]  # 3 mm per pixel on each side of column 6
    keep = smooth_pixels(fold, 1.0, torch.ones_like(fold, dtype=torch.bool), 0.5)
    assert not keep[0, :, 6].any()  # |Laplacian| = 6 mm at the fold
    assert keep[0, 1:-1, 1:6].all() and keep[0, 1:-1, 7:-1].all()  # planes on both sides
    with pytest.raises(ValueError, match="max_laplacian_px"):
        smooth_pixels(fold, 1.0, keep, -1.0)


def test_second_order_lighting_least_squares():
    """order=2: 9 SH coefficients recovered exactly from a noise-free image, and the least-squares
    solution (numpy) on a noisy one."""
    s = _scene()
    g = torch.Generator().manual_seed(5)  # normals over the front hemisphere (a sphere cap's are too
    n = torch.randn(s["n"].shape, generator=g, dtype=D)  # narrow to tell Y_00 from Y_20)
    n[..., 2] = n[..., 2].abs()
    s["n"] = n / n.norm(dim=-1, keepdim=True)
    l9 = torch.tensor([[0.9, 0.1, 0.4, -0.2, 0.05, -0.1, 0.08, 0.02, -0.06],
                       [0.7, -0.2, 0.3, 0.1, 0.0, 0.1, -0.05, 0.04, 0.03]], dtype=D)
    I = s["rho"] * shading_image(l9, s["n"])
    assert torch.allclose(I, s["rho"] * (sh_basis(s["n"]) * l9[:, None, None]).sum(-1))
    assert torch.allclose(solve_lighting(I, s["rho"], s["n"], s["mask"], order=2), l9, atol=1e-8)
    I_noisy = I + 0.05 * torch.randn(I.shape, generator=torch.Generator().manual_seed(4), dtype=D)
    l = solve_lighting(I_noisy, s["rho"], s["n"], s["mask"], order=2)
    for b in range(2):
        m = s["mask"][b]
        A = (s["rho"][b][m][:, None] * sh_basis(s["n"][b][m])).numpy()
        assert np.allclose(l[b].numpy(), np.linalg.lstsq(A, I_noisy[b][m].numpy(), rcond=None)[0], atol=1e-8)
    with pytest.raises(ValueError, match="order"):
        solve_lighting(I, s["rho"], s["n"], s["mask"], order=3)
    with pytest.raises(ValueError, match=r"\(B, 4\) or \(B, 9\)"):
        shading_image(torch.zeros(2, 5, dtype=D), s["n"])


def test_alternating_light_and_albedo_lowers_the_shading_error():
    """Eq. 11 solves the light with the mean albedo; each further light/albedo pair is a block step of
    the same least-squares problem, so the residual never grows, and on a noise-free image whose
    albedo is not the mean it ends far below the single solve."""
    s = _scene(K=3)
    I = s["rho"] * shading_image(s["l"], s["n"])  # the albedo of alpha != 0
    res = []
    for k in range(5):
        l, alpha, rho = recover_light_albedo(I, s["mu"], s["A"], s["n"], s["mask"], order=1, alternations=k)
        res.append(float(((rho * shading_image(l, s["n"]) - I) ** 2)[s["mask"]].mean()))
    assert all(b <= a + 1e-15 for a, b in zip(res, res[1:]))
    assert res[-1] < 0.1 * res[0]
    with pytest.raises(ValueError, match="alternations"):
        recover_light_albedo(I, s["mu"], s["A"], s["n"], s["mask"], alternations=-1)


def test_minimise_depth_finds_the_minimum_of_a_quadratic():
    t = torch.randn(2, 5, 6, dtype=D, generator=torch.Generator().manual_seed(0))
    z = minimise_depth(lambda z: dict(loss=((z - t) ** 2).mean((1, 2)) + 0.1 * (z ** 2).mean((1, 2))),
                       torch.zeros_like(t), steps=50)
    assert not z.requires_grad
    assert torch.allclose(z, t / 1.1, atol=1e-8)  # the closed form of (z - t)^2 + 0.1 z^2


def test_criterion_minimum_finds_a_bump_the_image_shows():
    """An image drawn by the criterion's own model (Eq. 8, mean albedo) of a sphere with a bump; started
    from the sphere without it, the per-pixel minimum of Eq. 14 adds depth that follows the bump (in part:
    shape from shading is ill-posed even here, r = 0.56) and has a lower loss than the start."""
    s = _scene(K=3)
    s["alpha"].zero_()
    p = 1.5
    H, W = s["depth"].shape[1:]
    rows, cols = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    bump = -1.5 * torch.exp(-((rows - H / 2) ** 2 + (cols - W / 2 - 3) ** 2) / (2 * 2.5 ** 2))  # towards the viewer
    truth = s["depth"] + bump
    img = 0.8 * s["mu"] * shading_image(s["l"], depth_normals(truth, p)[0])
    mask = torch.ones_like(truth, dtype=torch.bool)
    lam = (1.0, 0.5, 0.1)
    z = criterion_minimum(s["depth"], img, s["mu"], s["A"], mask, p, lam, steps=200)
    inner = interior(interior(mask))
    added = (z - s["depth"])[inner]
    r = torch.corrcoef(torch.stack([added, bump.expand_as(z)[inner]]))[0, 1]
    assert r > 0.5, r
    start = sfs_loss(s["depth"], s["depth"], img, s["mu"], s["A"], mask, p, *lam)["loss"]
    end = sfs_loss(z, s["depth"], img, s["mu"], s["A"], mask, p, *lam)["loss"]
    assert (end < 0.5 * start).all()


def test_high_pass_against_a_brute_force_normalised_convolution():
    """x less the Gaussian-weighted mean of x over the valid pixels within 3 sigma, pixel by pixel."""
    g = torch.Generator().manual_seed(5)
    B, H, W, sigma = 2, 9, 11, 1.5
    x = torch.randn(B, H, W, generator=g, dtype=D)
    valid = torch.rand(B, H, W, generator=g) > 0.3
    half = int(3 * sigma + 0.5)
    ref = torch.empty_like(x)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                num = den = 0.0
                for di in range(-half, half + 1):
                    for dj in range(-half, half + 1):
                        ii, jj = i + di, j + dj
                        if 0 <= ii < H and 0 <= jj < W and valid[b, ii, jj]:
                            w = np.exp(-0.5 * (di * di + dj * dj) / sigma ** 2)
                            num, den = num + w * float(x[b, ii, jj]), den + w
                ref[b, i, j] = x[b, i, j] - (num / den if den > 0 else 0.0)
    assert torch.allclose(high_pass(x, valid, sigma), ref, atol=1e-12)
    # a constant over the valid pixels leaves nothing there
    assert high_pass(torch.full_like(x, 7.0), valid, sigma)[valid].abs().max() < 1e-12


def test_high_pass_e_sh_ignores_smooth_residuals():
    """E_sh with highpass_px: a residual that is constant over the face costs nothing, a fine one costs about
    as much as without; highpass_px=None is Eq. 8; the gradient is exact."""
    s = _scene(K=3)
    p = 1.5
    n, valid = depth_normals(s["depth"], p)
    rho = s["mu"]
    img = rho * shading_image(s["l"], n)
    mask = torch.ones_like(valid)
    assert e_sh(s["depth"], img + 0.3, rho, s["l"], p, mask).min() > 0.08  # 0.3^2 without the high-pass
    assert e_sh(s["depth"], img + 0.3, rho, s["l"], p, mask, highpass_px=2.0).max() < 1e-20
    fine = 0.3 * (-1.0) ** torch.arange(img.shape[-1], dtype=D)  # alternating columns
    a = e_sh(s["depth"], img + fine, rho, s["l"], p, mask)
    b = e_sh(s["depth"], img + fine, rho, s["l"], p, mask, highpass_px=2.0)
    assert torch.allclose(b, a, rtol=0.1)
    out = sfs_loss(s["depth"], s["depth"], img + 0.3, s["mu"], s["A"], mask, p, highpass_px=2.0)
    assert torch.equal(out["E_sh"], e_sh(s["depth"], (img + 0.3) * 255, out["rho"], out["l"], p, out["sh_mask"], 2.0))
    z = (s["depth"][:, :6, :7] + 0.3 * torch.randn(2, 6, 7, dtype=D)).requires_grad_(True)
    sub = (img[:, :6, :7], rho[:, :6, :7], s["l"], p, mask[:, :6, :7])
    assert torch.autograd.gradcheck(lambda z: e_sh(z, *sub, highpass_px=1.0), (z,))


def test_errors():
    z = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="sigma_px"):
        high_pass(z, z.bool(), 0.0)
    with pytest.raises(ValueError, match="steps"):
        minimise_depth(lambda z: dict(loss=z.sum((1, 2))), z, steps=0)
    with pytest.raises(ValueError, match="depth"):
        depth_normals(torch.zeros(4, 4), 1.0)
    with pytest.raises(ValueError, match="pixel_mm"):
        depth_normals(z, -1.0)
    with pytest.raises(ValueError, match="A_T"):
        solve_albedo(z, z, torch.zeros(1, 3, 4), torch.zeros(1, 4), torch.zeros(1, 4, 4, 3), z.bool())
