"""CoarseNet, the rendering layer and FineNet (facelib.coarse_fine, Richardson et al. 2017 Sec. 3-4):
the rendering layer's gradient (Eq. 7) against finite differences, GMSE (Eq. 4) against the meshes,
Eq. 3, the renders' conventions against facelib.coarse_fine.sfs, network shapes and one step of each training loop."""

import copy
import functools

import numpy as np
import pytest
import torch

from facelib._threads import run_in_threads
from facelib.coarse_fine import sfs
from facelib.coarse_fine import (FineNet, CoarseNet, CoarseSpace, P_EXACT, P_START, align_depth, coarse_input,
                                 coarse_iterate, coarse_loss, coarse_step, depth_errors,
                                 feedback_state, finenet_data, finenet_refine, geometry_errors,
                                 geometry_references, gmse, make_faces, pooled_rms,
                                 render_view, rendering_layer, sample_appearance, sample_r,
                                 texture_maps, train_coarsenet, train_end_to_end, train_finenet, detail_correlation,
                                 finenet_curve_eval)
from facelib.model.detail import detail_displacement
from facelib.render import depth_layer, depth_map

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


def test_depth_layer_culling_flag(space64):
    """The one rendering layer with and without culling: with ``cull_backfaces`` no pixel shows a
    triangle facing away from the camera, without it some do; ``depth_map`` is its
    depth; CoarseNet's layer is the culled one."""
    sp = space64
    r = sample_r(sp, 2, 5).to(D)
    r[:, -5] = 1.0  # yaw at the prior's edge: the far cheek folds behind the nose
    a, p = sp.split(r)
    screen = sp.project(sp.geometry(a), p, 48)
    tri = screen[:, sp.faces]  # (B, T, 3, 3)
    e1, e2 = tri[:, :, 1, :2] - tri[:, :, 0, :2], tri[:, :, 2, :2] - tri[:, :, 0, :2]
    area = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]  # (B, T) signed, screen y down
    seen = {}
    for cull in (False, True):
        z, mask, frags = depth_layer(screen, sp.faces, 48, cull_backfaces=cull)
        assert torch.equal(z, depth_map(screen, sp.faces, 48, cull_backfaces=cull))
        pix = frags.pix_to_face[..., 0]
        signs = area.reshape(-1)[pix[mask]].sign()  # pix_to_face indexes the packed (B * T) faces
        seen[cull] = set(signs.tolist())
    assert len(seen[True]) == 1 and len(seen[False]) == 2
    z1, _, _ = rendering_layer(sp, r, 48)
    assert torch.equal(z1, depth_layer(screen, sp.faces, 48, cull_backfaces=True)[0])


def test_rendering_layer_gradient_reaches_visible_vertices_only(space64):
    """dE/dz_i = sum over the pixels of vertex i's visible triangles of lambda_i (Eq. 7); hidden vertices
    (culled or behind the face) and the x, y coordinates get none."""
    sp = space64
    S = 32
    r = sample_r(sp, 1, 3).to(D)
    a, p = sp.split(r)
    screen = sp.project(sp.geometry(a), p, S).detach().requires_grad_(True)
    z, mask, frags = depth_layer(screen, sp.faces, S, cull_backfaces=True)
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
    # the inference start itself (r_t = 0) for about P_EXACT of the samples
    exact = (r_t == 0).all(1)
    assert abs(exact.float().mean() - P_EXACT) < 0.07
    # of the others, r_rnd = 0 (r_t = beta r_gt, 0 < beta <= 1) for about P_START
    ratio = r_t[~exact] / r_gt[~exact]
    prop = (ratio - ratio[:, :1]).abs().max(1).values < 1e-5
    assert abs(prop.float().mean() - P_START) < 0.1
    assert ((ratio[prop, 0] >= 0) & (ratio[prop, 0] <= 1)).all()
    # p_exact = 0, p_start = 0: Eq. 3 alone, never a proportional state
    r_3 = feedback_state(space, r_gt, 1, p_exact=0.0, p_start=0.0)
    ratio = r_3 / r_gt
    assert not ((ratio - ratio[:, :1]).abs().max(1).values < 1e-5).any()
    with pytest.raises(ValueError, match="shares"):
        feedback_state(space, r_gt, 1, p_exact=1.5)


def test_geometry_errors_against_the_meshes(space):
    a = sample_r(space, 6, 0)[:, :space.n_geometry]
    a_hat = sample_r(space, 6, 1)[:, :space.n_geometry]
    e = geometry_errors(space, a_hat, a)
    fv = space.face_vertices
    brute = (space.geometry(a_hat)[:, fv] - space.geometry(a)[:, fv]).square().sum(-1).mean(1).sqrt()
    assert torch.allclose(e["rmse_mm"], brute, rtol=1e-4)
    assert (e["aligned_mm"] <= e["rmse_mm"] + 1e-4).all()
    assert geometry_errors(space, a, a)["rmse_mm"].abs().max() < 1e-3
    # the first identity component is mostly a uniform scale: alignment removes most of its error
    size = torch.zeros_like(a)
    size[:, 0] = 2.0
    e0 = geometry_errors(space, size, torch.zeros_like(a))
    assert (e0["aligned_mm"] < 0.3 * e0["rmse_mm"]).all()
    pooled = pooled_rms(e)
    assert pooled.keys() == e.keys() and abs(pooled["rmse_mm"] - float(brute.square().mean().sqrt())) < 1e-3
    refs = geometry_references(space, a)
    assert torch.allclose(refs["mean face"]["rmse_mm"], geometry_errors(space, torch.zeros_like(a), a)["rmse_mm"])
    assert (refs["true coefficients, mean head size"]["rmse_mm"] <= refs["mean face"]["rmse_mm"] + 1e-4).all()


def test_coarse_input_masks(space):
    r_gt, view, _, _ = make_faces(space, 2, 0, 32)
    fb = render_view(space, torch.zeros_like(r_gt), 32)
    exact, grown, none = (coarse_input(view.image, fb, d) for d in (0.0, 3 / 32, None))
    m = fb.mask[:, None]
    assert torch.equal(exact[:, :1], (view.image - 0.5) * m)
    assert torch.equal(none[:, :1], view.image - 0.5)
    inside = grown[:, :1] != 0
    assert (inside | ~m).all() and inside.sum() > (exact[:, :1] != 0).sum()
    assert torch.equal(exact[:, 1:], none[:, 1:])  # the feedback channels do not depend on the mask
    with pytest.raises(ValueError, match="mask_dilate"):
        coarse_input(view.image, fb, -1.0)


def test_render_view_head_draws_the_whole_mesh_around_the_same_face(space):
    """``head=True`` draws the forehead, scalp and sides around the face region (as a photo shows
    them); the face region's pixels, the mask, depth and feedback channels are those of ``head=False``."""
    r = sample_r(space, 2, 3)
    app = sample_appearance(space, 2, 3)
    face, head = (render_view(space, r, 48, app, background=0.0, head=h) for h in (False, True))
    assert torch.equal(face.mask, head.mask) and torch.equal(face.depth, head.depth)
    assert torch.equal(face.pncc, head.pncc) and torch.equal(face.normal_map, head.normal_map)
    m = face.mask[:, None]
    same = (face.image[m] - head.image[m]).abs() < 1e-6  # all but where a triangle outside the region
    assert same.float().mean() > 0.995                      # is nearer (a z-buffer tie at its edge)
    # outside the face region the head version shows skin where the face-only one shows the background
    extra = (head.image[~m] != face.image[~m]).sum()
    assert extra > 0.1 * m.sum() and (face.image[~m] == 0).all()


@pytest.mark.parametrize("head, distance", [(True, 600.0), (False, 600.0), (True, None), (False, None)])
def test_an_image_only_render_draws_the_same_image(space, head, distance):
    """``maps=False`` (CoarseNet's training pictures, ``make_faces(..., maps=False)``) skips the PNCC, the
    normal map and, where the image has a raster of its own, the face region's: the image is the same to the
    bit, the maps it did not draw are None."""
    r = sample_r(space, 3, 4)
    app = sample_appearance(space, 3, 5)
    full, lean = (render_view(space, r, 40, app, background=0.2, head=head, distance=distance, maps=m)
                  for m in (True, False))
    assert torch.equal(full.image, lean.image) and torch.equal(full.pixel_mm, lean.pixel_mm)
    assert lean.pncc is None and lean.normal_map is None
    own_raster = head or distance is not None
    assert (lean.mask is None and lean.depth is None and lean.fragments is None) if own_raster else \
        (torch.equal(lean.mask, full.mask) and torch.equal(lean.depth, full.depth))
    r_a, v_a, _, _ = make_faces(space, 2, 9, 40)
    r_b, v_b, _, _ = make_faces(space, 2, 9, 40, maps=False)
    assert torch.equal(r_a, r_b) and torch.equal(v_a.image, v_b.image)
    with pytest.raises(ValueError, match="appearance"):
        render_view(space, r, 40, maps=False)


def test_the_photo_camera_is_a_perspective_with_eq2s_scale_at_the_origin(space):
    """``project(..., distance=d)``: a point in the plane of the model origin lands where Eq. 2 puts it, a
    point ``z`` mm nearer the camera is magnified by ``d / (d - z)`` about the principal point (the image
    centre plus the pose's translation), and a far camera tends to Eq. 2."""
    g = torch.Generator().manual_seed(4)
    pose = torch.zeros(1, 6)
    pose[0, 3:] = torch.tensor([0.3, -0.2, 0.5])
    v = torch.randn(1, 50, 3, generator=g) * 60
    weak = space.project(v, pose, 64)
    persp = space.project(v, pose, 64, distance=600.0)
    R, t2d, s = space.camera(pose, 64)
    centre = torch.tensor([32.0, 32.0]) + t2d
    k = 600.0 / (600.0 - v[..., 2:])  # no rotation: camera z is model z
    assert torch.allclose(persp[..., :2] - centre, (weak[..., :2] - centre) * k, atol=1e-3)
    flat = v.clone()
    flat[..., 2] = 0
    assert torch.allclose(space.project(flat, pose, 64, 600.0)[..., :2], space.project(flat, pose, 64)[..., :2], atol=1e-4)
    assert torch.allclose(space.project(v, pose, 64, 1e7)[..., :2], weak[..., :2], atol=1e-3)
    with pytest.raises(ValueError, match="distance"):
        space.project(v, pose, 64, distance=0.0)


def test_crop_padding_border_repeats_the_edge():
    from facelib.data.corpus import crop_to_box

    img = torch.rand(1, 1, 16, 16)
    box = torch.tensor([[4.0, 8.0, 16.0]])  # half of it left of the frame
    zeros, edge = (crop_to_box(img, box, 16, padding=p) for p in ("zeros", "border"))
    assert (zeros[..., :3] == 0).all() and torch.allclose(edge[..., :3], img[..., :, :1].expand(-1, -1, -1, 3), atol=1e-6)
    assert torch.allclose(zeros[..., 9:], edge[..., 9:])


def test_renders_agree_with_the_sfs_conventions(open_model):
    """The normal map of a render, the normals of its depth map by finite differences (facelib.coarse_fine.sfs) and
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
    assert rms < 2.0  # grey levels: the SH conventions of facelib.render.shading and Eq. 9 match
    assert (l[:, 3] > 0).all()  # light from the front (+z, towards the viewer)


def test_the_true_detail_lowers_the_shading_error_of_the_librarys_criterion(open_model):
    """benchmarks/sfs_criterion.py in small: on detailed faces, with the true coarse depth as z0, the
    library's criterion (smooth pixels, second-order light, alternations) puts most of E_sh at the start
    down to the detail, so the true detailed depth scores far lower; as the paper writes it, the true
    depth is hardly better than the coarse one (creases and the first-order light dominate)."""
    sp = CoarseSpace.from_model(open_model, 30, 10)
    S = 96
    pool = detail_displacement(open_model, 4, seed=1000, amplitude_mm=2.0)
    r_gt, view, _, _ = make_faces(sp, 2, 123, S, detail_pool=pool, distance=None)  # E_sh's projection
    z0, mask0, frags = rendering_layer(sp, r_gt, S)
    mu, A = texture_maps(sp, frags)
    mask = sfs.interior(mask0)
    truth = torch.where(view.mask, align_depth(view.depth, z0, view.mask & mask), z0)
    ratio = {}
    for name, kw in (("library", {}), ("paper", sfs.PAPER)):
        e = [float(sfs.sfs_loss(z, z0, view.image[:, 0], mu, A, mask, sp.pixel_mm(r_gt, S), **kw)["E_sh"].mean())
             for z in (z0, truth)]
        ratio[name] = e[1] / e[0]
    assert ratio["library"] < 0.5 and ratio["paper"] > 0.7, ratio


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
        # damped passes (test time): half of each correction, from the damped estimate's own feedback
        ds = coarse_iterate(space, net, img, 2, step=0.5)
        assert torch.allclose(ds[1], 0.5 * rs[1])
        xd = coarse_input(img, render_view(space, ds[1], 32))
        assert torch.allclose(ds[2], ds[1] + 0.5 * net(xd))
    assert all(torch.equal(a, b) for a, b in zip(rs, coarse_iterate(space, net, img, 3, step=1.0)))
    with pytest.raises(ValueError, match="step"):
        coarse_iterate(space, net, img, 1, step=0.0)


def test_detail_correlation_against_numpy():
    g = torch.Generator().manual_seed(0)
    gt = 500 + torch.randn(2, 6, 7, generator=g, dtype=torch.float64)
    fit = gt - 0.3 * torch.randn(2, 6, 7, generator=g, dtype=torch.float64) + 4.0  # off by a constant too
    z0 = gt + torch.randn(2, 6, 7, generator=g, dtype=torch.float64)
    fine = z0 + 0.5 * (gt - fit) + 0.1 * torch.randn(2, 6, 7, generator=g, dtype=torch.float64)
    m = torch.rand(2, 6, 7, generator=g) > 0.2
    true = np.concatenate([(gt[b] - fit[b] - (gt[b] - fit[b])[m[b]].mean())[m[b]].numpy() for b in range(2)])
    added = (fine - z0)[m].numpy()
    assert detail_correlation(fine, z0, gt, fit, m) == pytest.approx(np.corrcoef(added, true)[0, 1], abs=1e-12)
    assert detail_correlation(z0 + gt - align_depth(fit, gt, m), z0, gt, fit + 2.0, m) == pytest.approx(1.0)
    assert detail_correlation(z0 + 3.0, z0, gt, fit, m) == 0.0  # nothing added: no correlation, not NaN


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
    calls = []

    def eval_fn(n):
        calls.append(n.training)
        return {"x": 1.0}
    hist = train_coarsenet(space, net, 3, 4, 32, seed=0, progress=False, eval_fn=eval_fn, eval_every=2)
    assert len(hist["loss"]) == 3 and hist["pose_weight"] > 0
    assert [p["step"] for p in hist["curve"]] == [0, 2, 3] and not any(calls)  # evaluated in eval mode
    assert hist["curve"][0]["train_s"] == 0 and hist["curve"][-1]["train_s"] > 0 and net.training is False
    pool = detail_displacement(open_model, 2, 0, 2.0)
    data = finenet_data(space, net, 4, 4, 32, 2, 0, pool, sizes=(32, 64))
    assert data[("image", 64)].shape == (4, 1, 64, 64) and data["r_iters"].shape == (4, 3, space.n_params)
    assert (data[("depth_gt", 64)][data[("mask_gt", 64)]] > 0).all()
    fine = FineNet(width=4, head=8)
    h = train_finenet(fine, data, 32, 2, 4, progress=False)
    assert len(h["E_sh"]) == 2 and all(v == v for v in h["loss"])
    # with a held-out probe: a curve before training (FineNet's last layer starts at zero: CoarseNet's depth),
    # every eval_every steps and at the end; the training itself is the same
    probe = finenet_curve_eval(space, data, 32)
    torch.manual_seed(1)
    fa = FineNet(width=4, head=8)
    fb = copy.deepcopy(fa)
    ha = train_finenet(fa, data, 32, 3, 4, progress=False, eval_fn=probe, eval_every=2)
    hb = train_finenet(fb, data, 32, 3, 4, progress=False)
    assert ha["loss"] == hb["loss"] and "curve" not in hb
    assert [p["step"] for p in ha["curve"]] == [0, 2, 3] and ha["curve"][0]["train_s"] == 0
    coarse_only = depth_errors({"c": data[("z0", 32)]}, data[("depth_gt", 32)], data[("mask_gt", 32)],
                               {"coarse": data[("mask", 32)]})[0]
    assert ha["curve"][0]["depth_mean_mm"] == pytest.approx(coarse_only["depth_mean_mm"], rel=1e-6)
    assert ha["curve"][-1] == dict(ha["curve"][-1], **probe(fa))  # the last point is the trained network
    assert ha["curve"][0]["detail_r"] == 0.0 and -1.0 <= ha["curve"][-1]["detail_r"] <= 1.0
    assert finenet_refine(fine, data, 64).shape == (4, 64, 64)
    # chapter 7 trains its FineNets two at a time, one thread each: every one exactly as alone, to the bit
    # (weights, losses, curves; train_s aside), with other criteria and lengths side by side
    jobs = [dict(steps=3, seed=5, eval_fn=probe, eval_every=2), dict(steps=2, seed=6, lambdas=(0.0, 5e-3, 1.0)),
            dict(steps=3, seed=7, criterion=sfs.PAPER)]
    runs = {}
    for workers in (1, 2):
        torch.manual_seed(2)
        fines = [FineNet(width=4, head=8) for _ in jobs]
        hists = run_in_threads([functools.partial(train_finenet, f, data, 32, batch=4, progress=False, **kw)
                                for f, kw in zip(fines, jobs)], workers)
        runs[workers] = fines, hists
    for f1, h1, f2, h2 in zip(*runs[1], *runs[2]):
        assert all(torch.equal(a, b) for a, b in zip(f1.state_dict().values(), f2.state_dict().values()))
        assert h1["loss"] == h2["loss"] and h1["E_sh"] == h2["E_sh"] and h1["train_s"] > 0
        assert [dict(c, train_s=0) for c in h1.get("curve", [])] == [dict(c, train_s=0) for c in h2.get("curve", [])]
    assert runs[1][1][0]["curve"] and runs[1][1][0]["loss"] != runs[1][1][2]["loss"]  # the jobs differ
    before = copy.deepcopy(net.state_dict())
    he = train_end_to_end(space, net, fine, 1, 2, 32, 2, pool, progress=False, coarse_lr=1e-3)
    assert he["fidelity"][0] == 0  # the first step starts at the original CoarseNet
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any("fc" in k for k in changed)
