"""CoarseNet, the rendering layer and FineNet (facelib.coarse_fine, Richardson et al. 2017 Sec. 3-4):
the rendering layer's gradient (Eq. 7) against finite differences, GMSE (Eq. 4) against the meshes,
Eq. 3, the renders' conventions against facelib.sfs, network shapes and one step of each training loop."""

import copy

import pytest
import torch

from facelib import sfs
from facelib.coarse_fine import (FineNet, CoarseNet, CoarseSpace, P_START, align_depth, coarse_input,
                                 coarse_iterate, coarse_loss, coarse_step, depth_errors, depth_from_screen,
                                 feedback_state, finenet_data, finenet_refine, gmse, make_faces,
                                 render_view, rendering_layer, sample_appearance, sample_r,
                                 texture_maps, train_coarsenet, train_end_to_end, train_finenet)
from facelib.detail import detail_displacement

D = torch.float64


@pytest.fixture(scope="module")
def space(open_model):
    return CoarseSpace.from_model(open_model, n_shape=6, n_expression=3)


@pytest.fixture(scope="module")
def space64(open_model):
    return CoarseSpace.from_model(open_model.to(dtype=D), n_shape=4, n_expression=2)


def test_gmse_is_the_mean_squared_vertex_error(space):
    g = torch.Generator().manual_seed(0)
    a_hat, a = torch.randn(3, space.n_geometry, generator=g), torch.randn(3, space.n_geometry, generator=g)
    f = space.face_vertices
    brute = ((space.geometry(a_hat) - space.geometry(a))[:, f] ** 2).sum(-1).mean(1)
    assert torch.allclose(gmse(a_hat, a, space.gram), brute, rtol=1e-4)
    # the identity and expression bases are not orthogonal to each other: the Gram matrix has cross terms
    cross = space.gram[:space.n_shape, space.n_shape:]
    assert cross.abs().max() > 1e-3 * space.gram.diagonal().min()


def test_rendering_layer_gradient_matches_finite_differences(space64):
    """Eq. 7: with the visibility and barycentrics of r fixed, the depth is linear in the vertex depths;
    autograd's gradient of sum_p w_p z(p) equals central differences of that function."""
    sp = space64
    S = 40
    r = sample_r(sp, 2, 1).to(D)
    w = torch.rand(2, S, S, generator=torch.Generator().manual_seed(2), dtype=D)
    rr = r.clone().requires_grad_(True)
    z, mask, frags = rendering_layer(sp, rr, S)
    (z * w).sum().backward()

    F_ = sp.faces.shape[0]
    tri = sp.faces[(frags.pix_to_face[..., 0] % F_).clamp_min(0)]  # (2, S, S, 3) vertex ids per pixel
    bary = frags.bary_coords[..., 0, :].detach()

    def fixed_depth(r_):  # the same pixels, triangles and barycentrics, vertex depths of r_
        a, p = sp.split(r_)
        zv = sp.project(sp.geometry(a), p, S)[..., 2]
        zz = (bary * zv[torch.arange(2)[:, None, None, None], tri]).sum(-1)  # Eq. 6
        return (torch.where(mask, zz, torch.zeros_like(zz)) * w).sum()

    h = 1e-5
    fd = torch.zeros_like(r)
    for b in range(2):
        for k in range(sp.n_params):
            e = torch.zeros_like(r)
            e[b, k] = h
            fd[b, k] = (fixed_depth(r + e) - fixed_depth(r - e)) / (2 * h)
    assert mask.any(-1).any(-1).all()
    assert torch.allclose(rr.grad, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


def test_rendering_layer_gradient_reaches_visible_vertices_only(space64):
    """dE/dz_i = sum over the pixels of vertex i's visible triangles of lambda_i (Eq. 7); hidden vertices
    (culled or behind the face) and the x, y coordinates get none."""
    sp = space64
    S = 32
    r = sample_r(sp, 1, 3).to(D)
    a, p = sp.split(r)
    screen = sp.project(sp.geometry(a), p, S).detach().requires_grad_(True)
    z, mask, frags = depth_from_screen(screen, sp.faces, S)
    z.sum().backward()
    g = screen.grad[0]
    assert (g[:, :2] == 0).all()
    expect = torch.zeros(screen.shape[1], dtype=D)
    pix = frags.pix_to_face[0, ..., 0]
    tri = sp.faces[pix[mask[0]]]
    bary = frags.bary_coords[0, ..., 0, :][mask[0]]
    expect.index_add_(0, tri.reshape(-1), bary.reshape(-1))
    assert torch.allclose(g[:, 2], expect, atol=1e-10)
    visible = torch.zeros(screen.shape[1], dtype=torch.bool)
    visible[tri.reshape(-1)] = True
    assert (g[~visible, 2] == 0).all() and (~visible).sum() > 1000  # back of the head, eyes, mouth


def test_feedback_state_is_eq3(space):
    r_gt = sample_r(space, 400, 0)
    r_t = feedback_state(space, r_gt, 1)
    assert torch.equal(r_t, feedback_state(space, r_gt, 1))
    # the inference start state (r_rnd = 0) for about P_START of the samples: r_t = beta r_gt
    ratio = r_t / r_gt
    prop = (ratio - ratio[:, :1]).abs().max(1).values < 1e-5
    assert abs(prop.float().mean() - P_START) < 0.07
    assert ((ratio[prop, 0] >= 0) & (ratio[prop, 0] <= 1)).all()


def test_renders_agree_with_the_sfs_conventions(open_model):
    """The normal map of a render, the normals of its depth map by finite differences (facelib.sfs) and
    the first-order lighting fit on a face lit by first-order light agree."""
    sp = CoarseSpace.from_model(open_model, 4, 2)
    S = 96
    r = sample_r(sp, 2, 5)
    app = sample_appearance(sp, 2, 5)
    app["theta_r"].zero_()
    app["gamma"][:, 4:] = 0  # bands 0 and 1 only: Eq. 9's first-order model with the mean albedo
    v = render_view(sp, r, S, app)
    n, valid = sfs.depth_normals(v.depth, v.pixel_mm, v.mask)
    nm = v.normal_map.permute(0, 2, 3, 1)
    cos = (n * nm).sum(-1)[valid]
    assert cos.median() > 0.995 and (cos > 0.95).float().mean() > 0.95
    d, mask, frags = rendering_layer(sp, r, S)
    assert torch.equal(mask, v.mask) and torch.allclose(d, v.depth)
    mu, A = texture_maps(sp, frags)
    grey = open_model.mean_albedo.mean(-1)
    assert A.shape == (2, 10, S, S) and (mu[~mask] == 0).all() and (A.permute(0, 2, 3, 1)[~mask] == 0).all()
    assert (mu[mask] >= grey.min() - 1e-6).all() and (mu[mask] <= grey.max() + 1e-6).all()
    I = v.image[:, 0] * 255
    l = sfs.solve_lighting(I, mu, nm, valid)
    fit = mu * sfs.shading_image(l, nm)
    rms = ((fit - I)[valid] ** 2).mean().sqrt()
    assert rms < 2.0  # grey levels: the SH conventions of facelib.shading and Eq. 9 match
    assert (l[:, 3] > 0).all()  # light from the front (+z, towards the viewer)


def test_networks(space):
    net = CoarseNet(space.n_params, width=8)
    r = sample_r(space, 2, 0)
    app = sample_appearance(space, 2, 0)
    x = coarse_input(render_view(space, r, 48, app).image, render_view(space, r * 0, 48))
    assert x.shape == (2, 7, 48, 48) and net.eval()(x).shape == (2, space.n_params)
    with pytest.raises(ValueError, match="7"):
        net(x[:, :3])
    assert FineNet(width=64).hypercolumn_channels == 450  # the paper's 200 x 200 x 450 volume
    fine = FineNet(width=4, head=8)
    for S in (32, 64):  # fully convolutional
        img, z0 = torch.rand(2, 1, S, S), 500 + torch.randn(2, S, S)
        mask = torch.ones(2, S, S, dtype=torch.bool)
        assert torch.equal(fine.refine(img, z0, mask), z0)  # untrained: the coarse depth
        assert fine(torch.zeros(1, 2, S, S)).shape == (1, 1, S, S)
    with pytest.raises(ValueError, match="multiples of 4"):
        fine(torch.zeros(1, 2, 30, 30))
    with pytest.raises(ValueError, match="geometry coefficients"):
        space.split(torch.zeros(1, 3))


def test_coarse_loss_and_iterate(space):
    r_gt = sample_r(space, 3, 0)
    loss, geo, pose = coarse_loss(space, r_gt, r_gt)
    assert loss == 0
    loss, geo, pose = coarse_loss(space, torch.zeros_like(r_gt), r_gt, "mse", pose_weight=2.0)
    assert torch.allclose(geo, (r_gt[:, :space.n_geometry] ** 2).mean(1))
    assert torch.allclose(loss, (geo + 2 * pose).mean())
    net = CoarseNet(space.n_params, width=8).eval()
    img = make_faces(space, 2, 0, 32)[1].image
    rs = coarse_iterate(space, net, img, 3)
    assert len(rs) == 4 and (rs[0] == 0).all() and not torch.equal(rs[1], rs[2])
    with torch.no_grad():  # each pass adds CoarseNet's correction to the current estimate
        x = coarse_input(img, render_view(space, rs[1], 32))
        assert torch.allclose(coarse_step(space, net, img, rs[1]), rs[1] + net(x))
        assert torch.allclose(rs[2], rs[1] + net(x))


def test_depth_errors_align_a_constant_offset():
    g = torch.Generator().manual_seed(0)
    gt = 500 + torch.randn(2, 8, 8, generator=g)
    m = torch.rand(2, 8, 8, generator=g) > 0.3
    rows = depth_errors({"shifted": gt + 7.0, "noisy": gt + 1.0 * torch.sign(torch.randn(2, 8, 8, generator=g))},
                        gt, m, {"a": torch.ones_like(m)})
    assert rows[0]["depth_mean_mm"] < 1e-5 and rows[0]["pixels"] == int(m.sum())
    assert 0.5 < rows[1]["depth_mean_mm"] <= 1.0 + 1e-6
    assert torch.allclose(align_depth(gt + 3, gt, m), gt, atol=1e-5)


def test_training_loops_run_and_end_to_end_reaches_coarsenet(open_model, space):
    torch.manual_seed(0)
    net = CoarseNet(space.n_params, width=8)
    hist = train_coarsenet(space, net, 2, 4, 32, seed=0, progress=False)
    assert len(hist["loss"]) == 2 and hist["pose_weight"] > 0
    pool = detail_displacement(open_model, 2, 0, 2.0)
    data = finenet_data(space, net, 4, 4, 32, 2, 0, pool, sizes=(32, 64))
    assert data[("image", 64)].shape == (4, 1, 64, 64) and data["r_iters"].shape == (4, 3, space.n_params)
    assert (data[("depth_gt", 64)][data[("mask_gt", 64)]] > 0).all()
    fine = FineNet(width=4, head=8)
    h = train_finenet(fine, data, 32, 2, 4, progress=False)
    assert len(h["E_sh"]) == 2 and all(v == v for v in h["loss"])
    assert finenet_refine(fine, data, 64).shape == (4, 64, 64)
    before = copy.deepcopy(net.state_dict())
    he = train_end_to_end(space, net, fine, 1, 2, 32, 2, pool, progress=False, coarse_lr=1e-3)
    assert he["fidelity"][0] == 0  # the first step starts at the original CoarseNet
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any("fc" in k for k in changed)
