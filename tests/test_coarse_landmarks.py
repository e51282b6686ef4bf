"""CoarseNet's landmark input (issue 17): the landmarks of the pictures against brute force, the
feedback's landmarks, the network's second input, the branch's pre-training on landmarks alone and its
cache, the training loops with the input, and the saved network's crop landmarks."""

import copy

import pytest
import torch

from facelib.coarse_fine import (DISTANCE_MM, CoarseNet, CoarseSpace, branch_iterate, coarse_input, coarse_inputs, coarse_iterate, coarse_loss,
                                 coarse_step, detected_landmarks, feedback_state, finenet_data, image_landmarks, own_states,
                                 landmark_feedback, make_faces, pretrain_branch, pretrained_branch, render_view,
                                 sample_r, train_coarsenets, train_end_to_end)
from facelib.coarse_fine import FineNet
from facelib.data.corpus import landmark_features
from facelib.model.detail import detail_displacement


@pytest.fixture(scope="module")
def space(open_model):
    return CoarseSpace.from_model(open_model, n_shape=6, n_expression=3)


def test_image_landmarks_are_the_meshes_landmarks_as_the_picture_draws_them(space):
    r = sample_r(space, 3, 0)
    alpha, pose = space.split(r)
    m = space.model
    for distance in (DISTANCE_MM, None):  # brute force: the whole mesh, projected, then its 68 points
        full = space.project(space.geometry(alpha), pose, 48, distance)[:, m.landmarks, :2]
        assert torch.allclose(image_landmarks(space, r, 48, distance), full, atol=1e-4)
    # the detector moves them by a seeded noise of about the wild set's size
    d0, d1 = detected_landmarks(space, r, 48, 7), detected_landmarks(space, r, 48, 7)
    exact = image_landmarks(space, r, 48)
    assert torch.equal(d0, d1) and not torch.equal(d0, exact)
    side = (exact.max(1).values - exact.min(1).values).max(-1).values
    assert ((d0 - exact).norm(dim=-1).mean(1) / side).max() < 0.05
    assert torch.equal(detected_landmarks(space, r, 48, 7, noise=0.0), exact)


def test_landmark_feedback_reads_the_detected_landmarks_and_the_estimates_offset(space):
    r_gt = sample_r(space, 2, 1)
    lm = image_landmarks(space, r_gt, 48)
    f = landmark_feedback(space, lm, r_gt, 48)
    assert f.shape == (2, 272) and f.dtype == torch.float32
    assert torch.allclose(f[:, :136], landmark_features(lm), atol=1e-6)  # the crop's own normalisation
    assert f[:, 136:].abs().max() < 1e-5  # the estimate is the truth: its landmarks lie on the detected ones
    # a shifted estimate: every feedback point moves by the shift over the box side
    r_t = r_gt.clone()
    r_t[:, space.n_geometry + 3] += 0.5  # t_x, 0.05 of the image
    off = landmark_feedback(space, lm, r_t, 48)[:, 136:].reshape(2, 68, 2)
    side = (lm.max(1).values - lm.min(1).values).max(-1).values
    assert torch.allclose(off[..., 0], (0.05 * 48 / side)[:, None].expand(-1, 68), atol=1e-4)
    assert off[..., 1].abs().max() < 1e-4
    with pytest.raises(ValueError, match="68, 2"):
        landmark_feedback(space, lm[:, :60], r_gt, 48)


def test_coarsenet_reads_the_landmarks_as_a_second_input(space):
    torch.manual_seed(0)
    net = CoarseNet(space.n_params, width=4, landmarks=68).eval()
    plain = CoarseNet(space.n_params, width=4).eval()
    r_gt, view, _, _ = make_faces(space, 2, 0, 32)
    lm = detected_landmarks(space, r_gt, 32, 1)
    r0 = torch.zeros_like(r_gt)
    x = coarse_input(view.image, render_view(space, r0, 32))
    with torch.no_grad():
        step = coarse_step(space, net, view.image, r0, landmarks=lm)
        assert torch.allclose(step, net(x, landmark_feedback(space, lm, r0, 32)))
        # an image-only CoarseNet ignores landmarks; one with the input needs them
        assert torch.equal(coarse_step(space, plain, view.image, r0, landmarks=lm), coarse_step(space, plain, view.image, r0))
    with pytest.raises(ValueError, match="landmarks="):
        coarse_step(space, net, view.image, r0)
    with pytest.raises(ValueError, match="second input"):
        net(x)
    with pytest.raises(ValueError, match="no landmark input"):
        plain(x, torch.zeros(2, 272))
    with pytest.raises(ValueError, match="landmarks must be"):
        CoarseNet(space.n_params, landmarks=5)
    # the untrained branch's read-out is 0: before pre-training the landmarks add nothing
    assert net.landmark_branch.head.weight.abs().max() == 0


def test_pretraining_the_branch_on_landmarks_alone(space, tmp_path, monkeypatch):
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = CoarseNet(space.n_params, width=4, landmarks=68)
    for p in net.landmark_branch.parameters():  # a frozen branch is pre-trained all the same, and stays frozen
        p.requires_grad_(False)
    image_path = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("landmark_branch")}
    # held-out landmark states: the branch's correction must beat no correction (the start r_t)
    r_gt = sample_r(space, 256, 99)
    r_t = feedback_state(space, r_gt, 98)
    lf = landmark_feedback(space, detected_landmarks(space, r_gt, 32, 97), r_t, 32)
    before = float(coarse_loss(space, r_t, r_gt)[1].mean())
    log = pretrain_branch(space, net, 400, 64, 32, seed=0, progress=False)
    b = net.landmark_branch
    with torch.no_grad():
        after = float(coarse_loss(space, r_t + b.head(b(lf)), r_gt)[1].mean())
    assert after < 0.5 * before, (before, after)
    assert sum(log["loss"][-10:]) < sum(log["loss"][:10]) and log["train_s"] > 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in image_path.items())
    assert not any(p.requires_grad for p in b.parameters())
    # through the cache: a second network of the same seed loads the same branch without training
    other = CoarseNet(space.n_params, width=4, landmarks=68)
    s1 = pretrained_branch(space, other, 20, 16, 32, seed=3, progress=False)
    again = CoarseNet(space.n_params, width=8, landmarks=68)  # another image path, the same branch
    s2 = pretrained_branch(space, again, 20, 16, 32, seed=3, progress=False)
    assert s1 == s2 and len(list(tmp_path.rglob("branch-*.pt"))) == 1
    assert all(torch.equal(a, c) for a, c in zip(other.landmark_branch.state_dict().values(),
                                                 again.landmark_branch.state_dict().values()))
    with pytest.raises(ValueError, match="no landmark input"):
        pretrain_branch(space, CoarseNet(space.n_params, width=4), 1, 4, 32, progress=False)


def test_branch_on_a_wider_prior_draws_wider_faces_and_has_a_cache_file_of_its_own(space, tmp_path, monkeypatch):
    """spread: the first step's faces are sample_r's with the identity coefficients times spread (brute force: the same
    generator's draw); spread 1 is the default to the bit and keeps the old cache key; another spread has its own."""
    import facelib.coarse_fine as cf

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    seen = []
    real = cf.detected_landmarks
    monkeypatch.setattr(cf, "detected_landmarks", lambda sp, r, *a, **k: (seen.append(r.clone()), real(sp, r, *a, **k))[1])
    nets = {}
    for spread in (None, 1.0, 2.0):
        torch.manual_seed(0)
        nets[spread] = CoarseNet(space.n_params, width=4, landmarks=68)
        pretrain_branch(space, nets[spread], 2, 8, 32, seed=4, progress=False, **({} if spread is None else {"spread": spread}))
    want = sample_r(space, 8, torch.Generator().manual_seed(4))
    assert torch.equal(seen[0], want) and torch.equal(seen[2], want)
    wide = want.clone()
    wide[:, :space.n_shape] *= 2
    assert torch.equal(seen[4], wide)
    assert all(torch.equal(a, b) for a, b in zip(nets[None].state_dict().values(), nets[1.0].state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(nets[None].state_dict().values(), nets[2.0].state_dict().values()))
    for spread in (0, -1.0, True, "2"):
        with pytest.raises(ValueError, match="spread"):
            pretrain_branch(space, nets[None], 1, 4, 32, progress=False, spread=spread)
    # the cache: spread 1 is the key without it, spread 2 another file, loaded again without training
    for spread in (1.0, 1.0, 2.0, 2.0):
        torch.manual_seed(0)
        pretrained_branch(space, CoarseNet(space.n_params, width=4, landmarks=68), 2, 8, 32, seed=4, progress=False,
                          spread=spread)
    assert len(list(tmp_path.rglob("branch-*.pt"))) == 2
    n = len(seen)
    pretrained_branch(space, CoarseNet(space.n_params, width=4, landmarks=68), 2, 8, 32, seed=4, progress=False)
    assert len(seen) == n and len(list(tmp_path.rglob("branch-*.pt"))) == 2  # spread 1's file, not trained again


def test_training_loops_feed_the_landmarks(open_model, space):
    torch.manual_seed(0)
    nets = {"image": (CoarseNet(space.n_params, width=4), "gmse"),
            "landmarks": (CoarseNet(space.n_params, width=4, landmarks=68), "gmse")}
    ref = copy.deepcopy(nets["image"][0])
    hist = train_coarsenets(space, nets, 2, 4, 32, seed=0, progress=False)
    assert all(len(h["loss"]) == 2 for h in hist.values())
    # the image-only net sees the same faces with or without a landmark net beside it
    train_coarsenets(space, {"image": (ref, "gmse")}, 2, 4, 32, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), nets["image"][0].state_dict().values()))
    net = nets["landmarks"][0]
    pool = detail_displacement(open_model, 2, 0, 2.0)
    data = finenet_data(space, net, 4, 4, 32, 2, 0, pool)
    assert data["landmarks"].shape == (4, 68, 2)
    rs = coarse_iterate(space, net, data["coarse_image"], 2, 32, landmarks=data["landmarks"])
    assert torch.allclose(rs[-1], data["r_coarse"], atol=1e-5)
    before = copy.deepcopy(net.state_dict())
    train_end_to_end(space, net, FineNet(width=4, head=8), 1, 2, 32, 2, pool, progress=False, coarse_lr=1e-3)
    assert any("landmark_branch" in k and not torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_own_states_are_the_networks_own_passes(space):
    torch.manual_seed(0)
    net = CoarseNet(space.n_params, width=4, landmarks=68).train()
    with torch.no_grad():
        net.landmark_branch.head.weight.normal_(0, 0.01)  # a branch that moves the estimate
    r_gt, view, _, _ = make_faces(space, 4, 0, 32)
    lm = detected_landmarks(space, r_gt, 32, 1)
    r_t = feedback_state(space, r_gt, 2)
    index, passes = torch.tensor([0, 2, 3]), torch.tensor([2, 1, 3])
    out = own_states(space, net, view.image, r_t, index, passes, 32, lm)
    assert net.training  # its mode is restored
    rs = coarse_iterate(space, net, view.image, 3, 32, landmarks=lm)  # brute force: all faces, all passes
    net.train()
    assert torch.equal(out[1], r_t[1])
    for i, k in zip(index.tolist(), passes.tolist()):
        assert torch.allclose(out[i], rs[k][i], atol=1e-5)
    assert torch.equal(own_states(space, net, view.image, r_t, index[:0], passes[:0], 32, lm), r_t)
    # training with them runs, for the image-only net and the landmark net side by side
    nets = {"image": (CoarseNet(space.n_params, width=4), "gmse"), "landmarks": (net, "gmse")}
    hist = train_coarsenets(space, nets, 2, 4, 32, seed=0, progress=False, p_own=0.5)
    assert all(len(h["loss"]) == 2 and all(v == v for v in h["loss"]) for h in hist.values())
    log = pretrain_branch(space, net, 3, 8, 32, seed=0, progress=False, p_own=0.5)
    assert len(log["loss"]) == 3


def test_branch_iterate_and_coarse_inputs_against_the_explicit_passes(space):
    """The branch alone from r_0 = 0, pass by pass; and coarse_step's inputs, for a network with and without
    the landmark input."""
    torch.manual_seed(0)
    net = CoarseNet(space.n_params, width=4, landmarks=68).eval()
    r_gt = sample_r(space, 3, 1)
    lm = detected_landmarks(space, r_gt, 32, 2)
    b = net.landmark_branch.eval()
    rs = branch_iterate(space, b, lm, 3, 32)
    assert len(rs) == 4 and torch.equal(rs[0], torch.zeros(3, space.n_params))
    with torch.no_grad():
        for t in range(3):
            assert torch.allclose(rs[t + 1], rs[t] + b.head(b(landmark_feedback(space, lm, rs[t], 32))))
    image = make_faces(space, 3, 1, 32)[1].image
    r_t = feedback_state(space, r_gt, 3)
    x, lf = coarse_inputs(space, net, image, r_t, 32, lm)
    assert torch.equal(x, coarse_input(image, render_view(space, r_t, 32), net.mask_dilate))
    assert torch.equal(lf, landmark_feedback(space, lm, r_t, 32))
    with torch.no_grad():
        assert torch.equal(coarse_step(space, net, image, r_t, 32, lm), r_t + net(x, lf))
    plain = CoarseNet(space.n_params, width=4).eval()
    assert len(coarse_inputs(space, plain, image, r_t, 32, lm)) == 1
    with pytest.raises(ValueError, match="landmarks"):
        coarse_inputs(space, net, image, r_t, 32)


def test_coarsenets_trained_side_by_side_are_the_nets_trained_one_by_one(space):
    """``train_coarsenets(workers=2)`` (chapter 7: two threads, one core each) trains every net exactly as
    ``workers=1`` does, to the bit: the same weights, batch-norm statistics, losses and learning curves
    (``train_s`` aside), for nets with and without the landmark input, the GMSE and the MSE, with their own
    feedback states; a bad ``workers`` is refused."""
    def make():
        torch.manual_seed(3)
        return {"a": (CoarseNet(space.n_params, width=4, landmarks=68), "gmse"),
                "b": (CoarseNet(space.n_params, width=4), "mse"),
                "c": (CoarseNet(space.n_params, width=4, landmarks=68), "gmse")}

    probe = lambda net: {"w": float(net.fc.weight.sum())}  # noqa: E731 - a held-out number per curve point
    runs = {}
    for workers in (1, 2, 5):
        nets = make()
        hist = train_coarsenets(space, nets, 3, 4, 32, seed=1, progress=False, p_own=0.5, eval_fn=probe,
                                eval_every=2, workers=workers)
        assert list(hist) == list(nets)
        runs[workers] = (nets, hist)
    nets1, hist1 = runs[1]
    for workers in (2, 5):
        nets2, hist2 = runs[workers]
        for k in nets1:
            s1, s2 = nets1[k][0].state_dict(), nets2[k][0].state_dict()
            assert all(torch.equal(s1[p], s2[p]) for p in s1), (workers, k)
            for key in ("loss", "geometry", "pose", "pose_weight"):
                assert hist1[k][key] == hist2[k][key], (workers, k, key)
            assert [dict(c, train_s=0) for c in hist1[k]["curve"]] == [dict(c, train_s=0) for c in hist2[k]["curve"]]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            train_coarsenets(space, make(), 1, 4, 32, workers=bad, progress=False)
