"""InverseFaceNet library: networks, pre-processing, corpus, wild generator, losses, training, breeding,
evaluation (Kim et al. 2018 Secs. 5-8)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import facelib
import facelib.inversefacenet as ifn
from facelib.data.corpus import (SyntheticCorpus, crop_to_box, landmark_box, landmark_mask, network_input,
                            polygon_mask, render_crops, to_network)
from facelib.inversefacenet import (TensorCorpus, breed, coefficient_displacement, euclidean_loss,
                                    evaluate, evaluate_theta, make_test_set, model_space_loss,
                                    model_space_weights, paired_test, predict, summarize, train)
from facelib.nets import AlexNet, ResNet, make_encoder
from facelib.model.params import ParamLayout, breed_children, sample_sec5
from facelib.data.wild import directional_sh, sample_wild, wild_batch


@pytest.fixture(scope="module")
def model():
    return facelib.load_model("open")


# ---------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("kind", ["alexnet", "resnet"])
def test_encoder_shapes_and_last_layer_init(kind):
    torch.manual_seed(0)
    net = make_encoder(kind, 350, 64, width=0.125)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 350)
    assert net(torch.zeros(1, 3, 96, 80)).shape == (1, 350)  # any size >= 32
    assert torch.all(net.last.bias == 0)
    assert abs(net.last.weight.std().item() - 0.01) < 0.001  # Sec. 6.1: N(0, 0.01)
    with pytest.raises(ValueError, match="expected"):
        net(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32"):
        net(torch.zeros(2, 3, 16, 16))


def test_resnet_spatial_keeps_where_features_are():
    torch.manual_seed(0)
    net = ResNet(5, 64, width=0.125, blocks=(1, 1, 1, 1), spatial=2).eval()
    assert net.last.in_features == 4 * 64  # 4 cells of the last stage's 64 channels (512 x 0.125)
    x = torch.rand(1, 3, 64, 64)
    h = net.features(x).flatten(1)
    assert h.shape == (1, 4 * 64) and torch.allclose(net(x), net.last(h))
    # the cells are the quadrants: their mean is the global average pool of spatial=1
    g = ResNet(5, 64, width=0.125, blocks=(1, 1, 1, 1), spatial=1).eval()
    g.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("last")}, strict=False)
    assert torch.allclose(g.features(x).flatten(1), h.view(1, 64, 4).mean(-1), atol=1e-6)
    with pytest.raises(ValueError, match="spatial"):
        ResNet(5, 64, spatial=0)


def test_make_encoder_rejects_unknown():
    with pytest.raises(ValueError, match="unknown encoder"):
        make_encoder("vgg", 10, 64)
    assert isinstance(make_encoder("alexnet", 3, 64, 0.1), AlexNet)
    assert isinstance(make_encoder("resnet", 3, 64, 0.1), ResNet)


# ---------------------------------------------------------------------------------- pre-processing
def _point_in_polygon(x, y, poly):
    """Brute-force even-odd test for one point (float64)."""
    inside = False
    n = len(poly)
    for i in range(n):
        (ax, ay), (bx, by) = poly[i], poly[(i + 1) % n]
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
    return inside


def test_polygon_mask_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    H, W = 17, 23
    for _ in range(3):
        ang = torch.sort(torch.rand(9, generator=g) * 2 * np.pi).values
        rad = 3 + 5 * torch.rand(9, generator=g)
        poly = torch.stack([11 + rad * torch.cos(ang), 8 + rad * torch.sin(ang)], -1).double()
        got = polygon_mask(poly[None], H, W)[0]
        ref = torch.tensor([[_point_in_polygon(x + 0.5, y + 0.5, poly.tolist()) for x in range(W)]
                            for y in range(H)])
        assert torch.equal(got, ref)


def test_network_input_crop_box_and_landmarks(model):
    theta = sample_sec5(model, 4, seed=3)
    out = render_crops(model, theta, 48)
    assert out["crop"].shape == (4, 3, 48, 48) and out["mask"].shape == (4, 48, 48)
    lm = out["landmarks"]
    # the landmark box is square, centred and fills 1 / (1 + 2 margin) of the crop
    lo, hi = lm.min(1).values, lm.max(1).values
    side = (hi - lo).max(-1).values
    assert torch.allclose(side, torch.full_like(side, 48 / 1.16), atol=1e-3)
    assert torch.allclose((lo + hi) / 2, torch.full_like(lo, 24.0), atol=1e-3)
    # outside the mask the crop is exactly 0; the mask covers a good part of the crop
    assert torch.all(out["crop"].permute(1, 0, 2, 3)[:, ~out["mask"]] == 0)
    assert 0.25 < out["mask"].float().mean() < 0.9
    # the mouth interior is removed: the inner-lip polygon is outside the mask
    inner = landmark_mask(lm, 48, 48)
    assert torch.equal(out["mask"] & ~inner, torch.zeros_like(out["mask"]))


def test_crop_to_box_identity():
    img = torch.rand(1, 3, 10, 10)
    box = torch.tensor([[5.0, 5.0, 10.0]])
    assert torch.allclose(crop_to_box(img, box, 10), img, atol=1e-6)
    assert torch.allclose(landmark_box(torch.tensor([[[0.0, 0.0], [4.0, 2.0]]]).expand(1, 2, 2), 0.0),
                          torch.tensor([[2.0, 1.0, 4.0]]))


def test_network_input_bad_input():
    with pytest.raises(ValueError, match="RGB"):
        network_input(torch.zeros(1, 4, 8, 8), torch.zeros(1, 68, 2), 16)
    with pytest.raises(ValueError, match="landmarks"):
        network_input(torch.zeros(1, 3, 8, 8), torch.zeros(1, 5, 2), 16)
    assert to_network(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).max() == 0.5


# ------------------------------------------------------------------------------------------ corpus
def test_synthetic_corpus_is_seeded_and_cached(model, tmp_path):
    a = SyntheticCorpus(model, 40, seed=5, size=32, cache=tmp_path, chunk=16, progress=False)
    assert len(list(tmp_path.rglob("*.npz"))) == 3 and not list(tmp_path.rglob("*tmp*"))
    b = SyntheticCorpus(model, 40, seed=5, size=32, cache=tmp_path, chunk=16, progress=False)  # from disk
    c = SyntheticCorpus(model, 40, seed=5, size=32, cache=False, chunk=16, progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    assert torch.equal(a.theta, sample_sec5(model, 16, seed=5 * 1_000_003)[:16].float()) or \
        torch.allclose(a.theta[:16], sample_sec5(model, 16, seed=5 * 1_000_003).float())
    d = SyntheticCorpus(model, 16, seed=6, size=32, cache=False, chunk=16, progress=False)
    assert not torch.equal(a.images[:16], d.images)
    x, th = a[0]
    assert x.shape == (3, 32, 32) and -0.5 <= x.min() and x.max() <= 0.5 and th.shape == (a.theta.shape[1],)
    with pytest.raises(ValueError, match="positive integer"):
        SyntheticCorpus(model, 0, seed=1, size=32, cache=False)


def test_damaged_shard_is_rerendered(model, tmp_path):
    a = SyntheticCorpus(model, 8, seed=2, size=32, cache=tmp_path, chunk=8, progress=False)
    shard = next(tmp_path.rglob("*.npz"))
    shard.write_bytes(b"not a zip")
    b = SyntheticCorpus(model, 8, seed=2, size=32, cache=tmp_path, chunk=8, progress=False)
    assert torch.equal(a.images, b.images)


# -------------------------------------------------------------------------------------------- wild
def test_wild_distribution_differs_from_sec5(model):
    layout = ParamLayout.from_model(model)
    w = layout.unpack(sample_wild(model, 2000, seed=1))
    s = layout.unpack(sample_sec5(model, 2000, seed=1))
    yaw_w, yaw_s = torch.rad2deg(w["rotation"][:, 1]), torch.rad2deg(s["rotation"][:, 1])
    assert yaw_w.std() < 16 and yaw_s.std() > 20  # near-frontal vs U(-40, 40)
    assert yaw_w.abs().max() <= 40.0 + 1e-4
    # sparse expressions: most coefficients are exactly 0 (Sec. 5: none are)
    e = w["expression"].clone()
    e[:, model.mouth_component] = 1
    assert (e == 0).float().mean() > 0.8 and (s["expression"] == 0).float().mean() == 0
    # coloured light (Sec. 5 is monochrome: R = G = B)
    ill_w, ill_s = w["illumination"].reshape(-1, 9, 3), s["illumination"].reshape(-1, 9, 3)
    assert (ill_w[..., 0] - ill_w[..., 2]).abs().mean() > 0.01
    assert torch.equal(ill_s[..., 0], ill_s[..., 2])
    # skin tones cluster on reflectance component 1
    hist = torch.histc(w["reflectance"][:, 0], bins=30, min=-3, max=3)  # bins of 0.2
    peak, valley = hist[7:9].max(), hist[11:13].min()  # the cluster at -1.4, the gap around -0.65
    assert valley < 0.75 * peak


def test_directional_sh_matches_clamped_cosine():
    d = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    gamma = directional_sh(d, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64),
                           torch.ones(1, 3, dtype=torch.float64)).reshape(1, 9, 3)
    from facelib.render.shading import shade
    t = torch.linspace(0, np.pi, 7, dtype=torch.float64)
    n = torch.stack([torch.sin(t), torch.zeros_like(t), torch.cos(t)], -1)[None]
    c = shade(torch.ones(1, 7, 3, dtype=torch.float64), n, gamma)[0, :, 0]
    # closed form of the band-limited (l <= 2) irradiance of a unit directional light (Ramamoorthi and
    # Hanrahan): E = 1/4 + 1/2 cos t + 5/16 P2(cos t); the clamped cosine max(0, cos t) it approximates
    ref = 0.25 + 0.5 * torch.cos(t) + 0.3125 * (3 * torch.cos(t) ** 2 - 1) / 2
    assert torch.allclose(c, ref, atol=1e-10)
    assert (c - torch.cos(t).clamp_min(0)).abs().max() < 0.1


def test_wild_batch_is_seeded_and_has_ground_truth(model):
    a = wild_batch(model, 2, seed=4, size=64)
    b = wild_batch(model, 2, seed=4, size=64)
    for k in ("image", "landmarks", "theta", "verts_model"):
        assert torch.equal(a[k], b[k])
    assert a["image"].shape == (2, 3, 64, 64) and a["landmarks"].shape == (2, 68, 2)
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    # background is cluttered, not constant; out-of-model detail moves the mesh off the model's surface
    assert a["image"][:, :, ~a["mask"][0]].std() > 0.05
    p = ParamLayout.from_model(model).unpack(a["theta"])
    base = model.geometry(p["shape"], p["expression"])
    d = (a["verts_model"] - base).norm(dim=-1)
    assert 0.05 < d.max() < 5.0
    assert (a["landmarks"] - a["landmarks_gt"]).abs().max() > 0
    c = wild_batch(model, 2, seed=5, size=64)
    assert not torch.equal(a["image"], c["image"])


# ------------------------------------------------------------------------------------------ losses
def test_model_space_loss_is_eq_6_to_8(model):
    layout = ParamLayout.from_model(model)
    sigma = model_space_weights(model)
    assert sigma.shape == (layout.size,)
    assert torch.allclose(sigma[layout["rotation"]], torch.full((3,), 400.0))
    assert torch.allclose(sigma[layout["shape"]], 50 * model.sigma_s.float())
    assert torch.allclose(sigma[layout["expression"]], 50 * model.sigma_e.float())
    assert torch.allclose(sigma[layout["reflectance"]], 100 * model.sigma_r.float())
    assert torch.allclose(sigma[layout["illumination"]], torch.full((27,), 20.0))
    g = torch.Generator().manual_seed(0)
    p, th = torch.randn(3, layout.size, generator=g, dtype=torch.float64), torch.randn(3, layout.size, generator=g,
                                                                                        dtype=torch.float64)
    S = torch.diag(sigma.double())
    A = S.T @ S  # Eq. 7
    ref = torch.stack([(p[i] - th[i]) @ A @ (p[i] - th[i]) for i in range(3)]).mean()
    assert torch.allclose(model_space_loss(p, th, sigma.double()), ref, rtol=1e-10)
    assert torch.allclose(euclidean_loss(p, th), ((p - th) ** 2).sum(1).mean())
    small = sigma.double()[:6] / sigma.double()[:6].max()
    assert torch.autograd.gradcheck(lambda a: model_space_loss(a, th[:, :6], small),
                                    (p[:, :6].clone().requires_grad_(),))
    with pytest.raises(ValueError, match="do not match"):
        model_space_loss(p[:, :5], th, sigma)


def test_coefficient_displacement_decreases_with_pca_order(model):
    d = coefficient_displacement(model)
    assert d["shape"].shape == (model.n_shape,)
    assert d["shape"][0] > d["shape"][-1] * 10  # the first components move the mesh most (Sec. 6.2)
    basis = model.shape_basis[0].double()
    ref = (model.sigma_s[0].double() * basis).norm(dim=-1).square().mean().sqrt()
    assert torch.allclose(d["shape"][0].double(), ref, rtol=1e-4)


# ------------------------------------------------------------------------------- training, breeding
class _Linear(torch.nn.Module):
    """A tiny regressor for the loop tests: mean colour per channel -> parameters."""

    def __init__(self, m):
        super().__init__()
        self.fc = torch.nn.Linear(3, m)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


def test_train_lowers_loss_is_seeded_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    theta = to_network(imgs).mean((2, 3)) @ torch.randn(3, 5, generator=g)  # learnable target
    corpus = TensorCorpus(imgs, theta)
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        net = _Linear(5)
        log = train(net, corpus, euclidean_loss, 200, batch=16, lr=0.02, seed=1, progress=False)
        nets.append(net)
    assert np.mean(log["loss"][-20:]) < 0.1 * np.mean(log["loss"][:5])
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    torch.manual_seed(0)
    n1 = _Linear(5)
    l1 = train(n1, corpus, euclidean_loss, 30, batch=16, seed=2, progress=False, cache_key={"t": 1})
    torch.manual_seed(1)
    n2 = _Linear(5)
    l2 = train(n2, corpus, euclidean_loss, 30, batch=16, seed=2, progress=False, cache_key={"t": 1})
    assert not l1["cached"] and l2["cached"] and l1["loss"] == l2["loss"]
    assert torch.equal(n1.fc.weight, n2.fc.weight)


def test_breed_runs_algorithm_1(model):
    torch.manual_seed(0)
    layout = ParamLayout.from_model(model)
    net = make_encoder("alexnet", layout.size, 32, width=0.05, fc=16)
    real = wild_batch(model, 3, seed=1, size=48)
    x = to_network(network_input(real["image"], real["landmarks"], 32)["crop"])
    net0 = copy.deepcopy(net)
    hist = breed(net, model, x, rounds=2, iters=2, loss_fn=euclidean_loss, size=32, batch=4, progress=False)
    assert len(hist["theta_r"]) == 3 and hist["theta_r"][0].shape == (3, layout.size)
    assert [c.shape[0] for c in hist["children"]] == [6, 6]  # two children per parent
    assert len(hist["loss"]) == 4 and hist["train_s"] > 0
    # step 1: the estimates on R of the network as it enters the round; the last one is the final network's
    assert torch.allclose(hist["theta_r"][0], predict(net0, x))
    assert torch.allclose(hist["theta_r"][-1], predict(net, x))
    # step 2: the children are Sec. 7's perturbations of exactly those estimates, seeded per round
    for k in range(2):
        want = breed_children(hist["theta_r"][k], model, seed=0 * 1000 + k, children=2)
        assert torch.equal(hist["children"][k], want.cpu())
    # step 4: each round trains the network, so the next round breeds from other estimates
    assert not torch.allclose(hist["theta_r"][1], hist["theta_r"][0])
    assert not torch.allclose(hist["theta_r"][2], hist["theta_r"][1])


def test_breed_keep_puts_sec5_faces_beside_the_children(model, monkeypatch):
    """``breed(keep=)`` (not in the paper): each round trains on the children and ``keep / (1 - keep)`` times as
    many faces of the Sec. 5 corpus, drawn without replacement from a seeded stream; the children are those of
    ``keep=0``; bad ``keep`` values and a missing corpus are refused before any training."""
    layout = ParamLayout.from_model(model)
    real = wild_batch(model, 3, seed=1, size=48)
    x = to_network(network_input(real["image"], real["landmarks"], 32)["crop"])
    sec5 = SyntheticCorpus(model, 20, seed=3, size=32, progress=False)
    seen = []
    real_train = ifn.train
    monkeypatch.setattr(ifn, "train", lambda net, corpus, *a, **kw: seen.append(corpus) or real_train(net, corpus, *a, **kw))
    torch.manual_seed(0)
    net = make_encoder("alexnet", layout.size, 32, width=0.05, fc=16)
    net_plain = copy.deepcopy(net)
    hist = breed(net, model, x, rounds=2, iters=1, loss_fn=euclidean_loss, size=32, batch=4, progress=False,
                 keep=0.5, keep_corpus=sec5)
    assert [len(c) for c in seen] == [12, 12]  # 6 children + 6 Sec. 5 faces per round
    for k, c in enumerate(seen):
        assert torch.equal(c.theta[:6], hist["children"][k].float())
        kept = c.theta[6:]
        rows = [int(torch.nonzero((sec5.theta.float() == t).all(1))[0]) for t in kept]
        assert len(set(rows)) == 6  # distinct faces of the corpus, images and landmarks with them
        assert torch.equal(c.images[6:], sec5.images[rows]) and torch.equal(c.landmarks[6:], sec5.landmarks[rows].float())
    plain = breed(net_plain, model, x, rounds=1, iters=1, loss_fn=euclidean_loss, size=32, batch=4, progress=False)
    assert torch.equal(plain["children"][0], hist["children"][0])  # the same parents, the same children
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="keep must lie"):
            breed(net, model, x, rounds=1, iters=1, loss_fn=euclidean_loss, size=32, keep=bad, keep_corpus=sec5)
    with pytest.raises(ValueError, match="keep_corpus"):
        breed(net, model, x, rounds=1, iters=1, loss_fn=euclidean_loss, size=32, keep=0.5)


def test_evaluate_oracle_and_paired_test(model):
    test = make_test_set(model, "synthetic", 6, seed=2, size=40)
    e = evaluate_theta(model, test["theta"], test)
    assert torch.all(e["geometric_mm"] < 1e-4) and torch.all(e["iou_pct"] == 100)
    assert torch.all(e["photometric_8bit"] < 0.6)  # uint8 rounding of the stored crops only
    worse = test["theta"].clone()
    worse[:, ParamLayout.from_model(model)["shape"]] += 1.0
    e2 = evaluate_theta(model, worse, test)
    assert torch.all(e2["geometric_mm"] > 1.0)
    net = make_encoder("alexnet", test["theta"].shape[1], 40, width=0.05, fc=16)
    e3 = evaluate(model, net, test)
    assert e3["theta"].shape == test["theta"].shape and e3["test_ms"] > 0
    s = summarize(torch.tensor([1.0, 3.0, float("nan")]))
    assert s["mean"] == 2.0 and abs(s["std"] - np.sqrt(2)) < 1e-9
    a = torch.arange(20.0)
    r = paired_test(a, a + 1 + 0.01 * torch.arange(20.0))
    assert r["mean_diff"] > 1 and r["p_value"] < 1e-3 and r["n"] == 20
    assert paired_test(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="kind"):
        make_test_set(model, "celeba", 2, seed=0, size=32)
    assert "now_mm" not in e  # only where the set asks for it


def test_now_style_error_on_the_first_n_now_faces(model):
    """A test set with ``n_now`` gets the NoW-style error of chapters 5-8 on its first faces: 0 for the
    truth, the value of facelib.eval.compare.now_mm for an estimate, nan after them; it is a column of Table 1."""
    from facelib.eval.compare import now_mm
    from facelib.inversefacenet import mean_face_theta, rows_json, table1_markdown

    test = make_test_set(model, "synthetic", 5, seed=3, size=32, n_now=2)
    e = evaluate_theta(model, test["theta"], test)
    assert e["now_mm"].shape == (5,) and torch.all(e["now_mm"][:2] < 1e-6) and torch.isnan(e["now_mm"][2:]).all()
    mf = mean_face_theta(model, test["theta"])
    e_mf = evaluate_theta(model, mf, test)
    ref = now_mm(model, model.geometry(torch.zeros(2, 1)), model.triangles, model.landmarks, test["verts"][:2])
    assert torch.allclose(e_mf["now_mm"][:2].double(), ref, atol=1e-5) and torch.all(ref > 0.3)
    refs = {"mean face": {"synthetic": e_mf}, "true parameters (floor)": {"synthetic": e}}
    assert "NoW [mm]" in table1_markdown({}, refs, [], "synthetic")
    assert abs(rows_json({}, refs, [], "synthetic")["mean_face"]["now_mm"]["mean"] - float(ref.mean())) < 1e-5
    for bad in (-1, 6, 1.5, True):
        with pytest.raises(ValueError, match="n_now"):
            make_test_set(model, "synthetic", 5, seed=3, size=32, n_now=bad)


def test_evaluation_cache_reads_the_same_numbers_and_only_for_the_same_evaluation(model, tmp_path, monkeypatch):
    """``evaluate_theta(cache=True)`` stores the result under a digest of the estimates and the test set and
    reads it for the same call (chapter 4 evaluating chapter 3's rows again); other estimates, another test
    set or a damaged file are measured, never read."""
    from facelib.inversefacenet import mean_face_theta

    def same(x, y):  # bit for bit, nan where nan (now_mm after the first n_now faces)
        return x.keys() == y.keys() and all(torch.equal(x[k].nan_to_num(-7.0), y[k].nan_to_num(-7.0)) for k in x)

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    test = make_test_set(model, "synthetic", 4, seed=5, size=32, n_now=2)
    est = mean_face_theta(model, test["theta"])
    plain = evaluate_theta(model, est, test)
    first = evaluate_theta(model, est, test, cache=True)
    files = list((tmp_path / "checkpoints" / "evaluations").glob("*.pt"))
    assert len(files) == 1
    assert same(first, plain)
    calls = []
    monkeypatch.setattr(ifn, "now_errors", lambda *a, **k: calls.append(1) or torch.zeros(4))
    again = evaluate_theta(model, est, test, cache=True)  # read: nothing is measured
    assert not calls and same(again, plain)
    other = est.clone()
    other[0, 0] += 1e-3  # one number of one estimate changes the key
    evaluate_theta(model, other, test, cache=True)
    assert calls == [1]
    test2 = dict(test, verts=test["verts"].clone())
    test2["verts"][1, 5, 2] += 0.5  # so does any tensor of the test set
    evaluate_theta(model, est, test2, cache=True)
    assert calls == [1, 1] and len(list(files[0].parent.glob("*.pt"))) == 3
    files[0].write_bytes(b"damaged")
    monkeypatch.undo()
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    healed = evaluate_theta(model, est, test, cache=True)  # measured again and rewritten
    assert same(healed, plain)
    assert same(torch.load(files[0], weights_only=True), plain)
    # error_sources (chapters 3-4's table of where the error comes from) is kept the same way
    es = ifn.error_sources(model, est, test)
    assert ifn.error_sources(model, est, test, cache=True) == es
    assert len(list(files[0].parent.glob("*.pt"))) == 4
    assert ifn.error_sources(model, est, test, cache=True) == es  # read


def test_test_set_cache_reads_the_same_faces_and_only_for_the_same_set(model, tmp_path, monkeypatch):
    """``make_test_set(cache=True)`` (chapters 2-4 draw the same wild faces) keeps the set under a digest of
    its arguments and reads it for the same call, whatever ``n_now`` (a label) says; another seed, size or
    thread count draws anew; a damaged file is drawn again."""
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    plain = make_test_set(model, "wild", 3, seed=4, size=32)
    first = make_test_set(model, "wild", 3, seed=4, size=32, cache=True)
    files = list((tmp_path / "checkpoints" / "test_sets").glob("*.pt"))
    assert len(files) == 1 and first.keys() == plain.keys()
    for k, v in plain.items():
        assert torch.equal(first[k], v) if isinstance(v, torch.Tensor) else first[k] == v, k
    import facelib.data.wild as wild

    calls = []
    real_batch = wild.wild_batch
    monkeypatch.setattr(wild, "wild_batch", lambda *a, **kw: calls.append(1) or real_batch(*a, **kw))
    again = make_test_set(model, "wild", 3, seed=4, size=32, n_now=2, cache=True)  # read: nothing drawn
    assert not calls and again["n_now"] == 2 and torch.equal(again["verts"], plain["verts"])
    assert torch.equal(again["x"], plain["x"]) and torch.equal(again["landmarks"], plain["landmarks"])
    make_test_set(model, "wild", 3, seed=5, size=32, cache=True)
    make_test_set(model, "wild", 3, seed=4, size=40, cache=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)  # another thread count: other bits may follow
    try:
        make_test_set(model, "wild", 3, seed=4, size=32, cache=True)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 3 and len(list(files[0].parent.glob("*.pt"))) == 4
    files[0].write_bytes(b"damaged")
    healed = make_test_set(model, "wild", 3, seed=4, size=32, cache=True)  # drawn again and rewritten
    assert len(calls) == 4 and torch.equal(healed["x"], plain["x"])
    assert torch.equal(torch.load(files[0], weights_only=True)["verts"], plain["verts"])
    with pytest.raises(ValueError, match="unknown test set kind"):  # nothing is kept for a bad kind
        make_test_set(model, "celeba", 2, seed=0, size=32, cache=True)
    assert len(list(files[0].parent.glob("*.pt"))) == 4


def test_chapter_test_sets_are_the_chapters_draws(model, tmp_path, monkeypatch):
    """``chapter_test_sets`` and ``corpus_real`` (chapters 2-4 and the benchmarks that load their runs) are
    ``make_test_set`` at the chapter's seed + ``TEST_SEEDS[kind]`` with the profile's sizes, in the order of
    ``kinds``, ``n_now`` the profile's unless given; a kind other than the two is refused before anything is
    drawn."""
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    cfg = dict(n_test=3, size=32, n_now=1, n_real=2)
    sets = ifn.chapter_test_sets(model, cfg, seed=7, kinds=("wild", "synthetic"))
    assert list(sets) == ["wild", "synthetic"]
    for kind, t in sets.items():
        ref = make_test_set(model, kind, 3, seed=7 + ifn.TEST_SEEDS[kind], size=32)
        assert t["n_now"] == 1 and t["seed"] == 7 + ifn.TEST_SEEDS[kind] and t["kind"] == kind
        for k in ("x", "theta", "verts", "landmarks", "mask"):
            assert torch.equal(t[k], ref[k]), (kind, k)
    assert ifn.chapter_test_sets(model, cfg, seed=7, kinds=("wild",), n_now=0)["wild"]["n_now"] == 0
    assert ifn.chapter_test_sets(model, dict(n_test=3, size=32), seed=7, kinds=("wild",))["wild"]["n_now"] == 0
    real = ifn.corpus_real(model, cfg, seed=7)
    ref = make_test_set(model, "wild", 2, seed=7 + ifn.TEST_SEEDS["real"], size=32)
    assert torch.equal(real["x"], ref["x"]) and torch.equal(real["landmarks"], ref["landmarks"])
    assert len(set(ifn.TEST_SEEDS.values())) == 3  # three disjoint draws
    kept = len(list((tmp_path / "checkpoints" / "test_sets").glob("*.pt")))
    with pytest.raises(ValueError, match="kinds must be"):
        ifn.chapter_test_sets(model, cfg, seed=7, kinds=("wild", "celeba"))
    assert len(list((tmp_path / "checkpoints" / "test_sets").glob("*.pt"))) == kept == 3


# ------------------------------------------------------------------------------------------ photos
def _write_photos(folder, model):
    """Two rendered faces on a grey background as JPEG and PNG, one broken file, one text file."""
    from PIL import Image

    w = wild_batch(model, 2, seed=9, size=160, jpeg=False)
    for i, ext in enumerate(("jpg", "png")):
        arr = (w["image"][i].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(arr).save(folder / f"face{i}.{ext}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("not a photo")


def test_load_photos_central_square(model, tmp_path):
    from facelib.data.photos import load_photos

    _write_photos(tmp_path, model)
    out = load_photos(tmp_path, 48, detector=None, progress=False)
    assert out["crop"].shape == (2, 3, 48, 48) and len(out["files"]) == 2
    assert [p.endswith("broken.jpg") for p, _ in out["skipped"]] == [True]
    assert torch.all(out["crop"][:, :, ~out["mask"][0]] == 0) and out["crop"].max() > 0.2
    with pytest.raises(ValueError, match="not a directory"):
        load_photos(tmp_path / "face0.jpg", 48)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no photos"):
        load_photos(empty, 48, detector=None)
    with pytest.raises(ValueError, match="unknown detector"):
        load_photos(tmp_path, 48, detector="dlib")


def test_load_photos_haar(model, tmp_path):
    pytest.importorskip("cv2")
    from facelib.data.photos import haar_face_boxes, load_photos

    _write_photos(tmp_path, model)
    blank = tmp_path / "blank"
    blank.mkdir()
    from PIL import Image
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank / "grey.png")
    assert haar_face_boxes(np.full((64, 64, 3), 128, np.uint8)) == []
    with pytest.raises(ValueError, match="no face found"):
        load_photos(blank, 48, progress=False)
    out = load_photos(tmp_path, 48, progress=False)  # rendered faces may or may not trigger the cascade
    assert out["crop"].shape[0] == len(out["files"]) and out["crop"].shape[0] + len(out["skipped"]) == 3


def test_train_row_table1_rows_and_cache(model, tmp_path, monkeypatch):
    from facelib.inversefacenet import TABLE1_ROWS, train_row

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    cfg = dict(size=32, iters=10, batch=4, lr=1e-3, alexnet_width=0.05, alexnet_fc=16, resnet_width=0.05,
               resnet_blocks=(1, 1, 1, 1), breed_rounds=2)
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    real = wild_batch(model, 3, seed=1, size=48)
    x = to_network(network_input(real["image"], real["landmarks"], 32)["crop"])
    net, info = train_row(model, cfg, "+ breeding (= InverseFaceNet)", corpus, real_x=x, progress=False)
    assert info["pretrain_iters"] == 2 and info["per_round"] == 4 and info["iters"] == 10
    assert len(info["history"]["children"]) == 2 and not info["cached"]
    net2, info2 = train_row(model, cfg, "+ breeding (= InverseFaceNet)", corpus, real_x=x, progress=False)
    assert info2["cached"] and info2["train_s"] == info["train_s"]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    _, info3 = train_row(model, cfg, "ResNet + model-space loss", corpus, progress=False)
    assert info3["iters"] == 20  # the ResNet row trains twice as long, as in Table 1
    assert set(TABLE1_ROWS) == {"AlexNet", "+ model-space loss", "+ model-space loss, RMS units",
                                "+ breeding (= InverseFaceNet)", "ResNet + model-space loss"}
    with pytest.raises(ValueError, match="unknown Table 1 row"):
        train_row(model, cfg, "VGG", corpus)
    with pytest.raises(ValueError, match="real_x"):
        train_row(model, cfg, "+ breeding (= InverseFaceNet)", corpus)


# ------------------------------------------------------------------------------ issue 15: training that learns
def test_lr_at_warmup_and_cosine():
    from facelib.inversefacenet import lr_at

    assert lr_at(0, 100, 1.0, "constant") == 1.0 and lr_at(99, 100, 1.0, "constant") == 1.0
    assert lr_at(0, 100, 1.0, "cosine", warmup=0.1) == pytest.approx(0.1)  # linear warm-up
    assert lr_at(9, 100, 1.0, "cosine", warmup=0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, "cosine", warmup=0.1) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, "cosine", warmup=0.1) == pytest.approx(1 / 50)
    vals = [lr_at(i, 100, 1.0, "cosine", 0.1) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone decay after the warm-up
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 10, 1.0, "step")
    with pytest.raises(ValueError, match="warmup"):
        lr_at(0, 10, 1.0, "cosine", warmup=1.5)


def test_sec5_moments_match_samples(model):
    from facelib.model.params import sec5_moments

    mean, std = sec5_moments(model)
    th = sample_sec5(model, 20000, seed=4).double()
    assert torch.allclose(th.mean(0), mean.double(), atol=0.05 * float(std.max()))
    assert torch.allclose(th.std(0), std.double(), rtol=0.05)


def test_standardized_outputs_start_at_the_prior_mean(model):
    from facelib.nets import Standardized
    from facelib.model.params import sec5_moments

    mean, std = sec5_moments(model)
    torch.manual_seed(0)
    inner = make_encoder("alexnet", mean.numel(), 32, width=0.05, fc=16, norm="batch", dropout=0.0)
    net = Standardized(inner, mean, std).eval()
    x = torch.rand(2, 3, 32, 32) - 0.5
    assert torch.allclose(net(x), mean + std * inner(x))
    # Sec. 6.1's N(0, 0.01) last layer: the first predictions are within a few per cent of a sigma of the mean
    assert ((net(x) - mean) / std).abs().max() < 0.5
    with pytest.raises(ValueError, match="positive"):
        Standardized(inner, mean, -std)
    with pytest.raises(ValueError, match="norm"):
        make_encoder("alexnet", 3, 32, width=0.05, norm="group")


def test_model_space_weights_rms_units(model):
    layout = ParamLayout.from_model(model)
    lit = model_space_weights(model)
    rms = model_space_weights(model, units="rms")
    disp = coefficient_displacement(model)
    assert torch.allclose(rms[layout["shape"]], 50.0 * disp["shape"], rtol=1e-5)
    assert torch.allclose(rms[layout["reflectance"]], 100.0 * disp["reflectance"], rtol=1e-5)
    assert torch.equal(rms[layout["rotation"]], lit[layout["rotation"]])  # no sigma: the same omega_R
    # the literal weights carry the basis normalisation (sqrt of the vertex count), the RMS ones do not
    ratio = lit[layout["shape"]] / rms[layout["shape"]]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3) and ratio[0] > 10
    with pytest.raises(ValueError, match="units"):
        model_space_weights(model, units="inch")


def test_fresh_corpus_is_seeded_and_never_repeats(model):
    from facelib.data.corpus import FreshCorpus

    aug = dict(landmark_noise=0.012, blur_px=(0.0, 1.0), noise_std=(0.0, 0.02), jpeg_quality=(40, 90))
    c = FreshCorpus(model, seed=3, size=32, augment=aug)
    idx = list(c.indices(4, 2, seed=0))
    x0, t0 = c.batch(idx[0])
    x0b, t0b = c.batch(idx[0])
    x1, t1 = c.batch(idx[1])
    assert x0.shape == (4, 3, 32, 32) and t0.shape == (4, ParamLayout.from_model(model).size)
    assert torch.equal(x0, x0b) and torch.equal(t0, t0b)  # same faces, same augmentation
    assert not torch.equal(t0, t1)
    assert float(x0.min()) >= -0.5 and float(x0.max()) <= 0.5


def test_train_records_a_learning_curve(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (32, 3, 8, 8), generator=g, dtype=torch.uint8)
    corpus = TensorCorpus(imgs, torch.randn(32, 5, generator=g))
    torch.manual_seed(0)
    calls = []
    log = train(_Linear(5), corpus, euclidean_loss, 10, batch=8, seed=0, progress=False, schedule="cosine",
                warmup=0.2, eval_fn=lambda net: calls.append(1) or {"err": float(len(calls))}, eval_every=4)
    assert [r["iter"] for r in log["curve"]] == [0, 4, 8, 10]
    assert all(a["train_s"] <= b["train_s"] for a, b in zip(log["curve"], log["curve"][1:]))


def test_aligned_geometry_reference_rows_and_verdicts(model):
    from facelib.inversefacenet import compare_rows, reference_rows, table1_markdown, verdict

    test = make_test_set(model, "synthetic", 4, seed=5, size=40)
    refs = reference_rows(model, {"synthetic": test})
    mf, fl = refs["mean face"]["synthetic"], refs["true parameters (floor)"]["synthetic"]
    assert torch.all(fl["geometric_mm"] < 1e-3) and torch.all(fl["geometric_aligned_mm"] < 1e-3)
    assert torch.all(mf["geometric_aligned_mm"] <= mf["geometric_mm"] + 1e-4)  # alignment only removes error
    # two fake rows, b better than a on every image for both seeds
    mk = lambda off: {"synthetic": {k: v + off for k, v in mf.items()} | {"test_ms": 1.0}, "info": {"iters": 5,
                                                                                           "train_s": 1.0}}
    results = {"a": {0: mk(1.0), 1: mk(1.1)}, "b": {0: mk(0.5), 1: mk(0.4)}}
    c = compare_rows(results, "a", "b", "synthetic")
    assert c["geometric_mm"]["better_seeds"] == 2 and c["iou_pct"]["better_seeds"] == 0  # IoU: higher is better
    assert "better for every seed" in verdict(c, "a", "b", "synthetic")
    md = table1_markdown(results, refs, ["a", "b"], "synthetic")
    assert md.count("\n") == 7 and "*mean face*" in md and "*true parameters, mean head size*" in md
    assert "*true expression, mean shape*" in md


def test_rerun_verdicts_side_by_side():
    from facelib.inversefacenet import rerun_verdicts, verdict_word

    entry = lambda k, n=3: {"seeds": n, "better_seeds": k, "per_seed": [], "significant_better": 0, "significant_worse": 0}
    run = {"wild": {"b vs a": {"geometric_mm": entry(3), "photometric_8bit": entry(1)}}}
    other = {"wild": {"b vs a": {"geometric_mm": entry(3), "photometric_8bit": entry(3), "iou_pct": entry(0)}},
             "synthetic": {"b vs a": {"geometric_mm": entry(0)}}}
    rows = rerun_verdicts(run, other)
    assert [(r["measure"], r["same"]) for r in rows] == [("geometric_mm", True), ("photometric_8bit", False)]
    assert rows[1]["verdict"] == "better for 1 of 3 seeds only (no verdict)" == verdict_word(entry(1))
    assert rows[1]["verdict_other"] == "better for every seed" and verdict_word(entry(0)) == "worse for every seed"
    assert rerun_verdicts(run, {}) == []  # nothing in common
    two = {"wild": {"b vs a": {"photometric_8bit": entry(2)}}}
    assert rerun_verdicts(run, two)[0]["same"]  # 1 of 3 and 2 of 3: no verdict in either run


def test_size_share_finds_the_head_size_component(model):
    from facelib.inversefacenet import size_share

    assert size_share(model, 0) > 0.9  # the open model's first shape component is head size
    assert size_share(model, 1) < 0.5


def test_truncation_floor_against_brute_force(model):
    from facelib.inversefacenet import geometric_errors, reference_rows, truncated_truth, truncation_floor
    from facelib.eval.metrics import similarity_align

    test = make_test_set(model, "synthetic", 3, seed=7, size=40)
    L = ParamLayout.from_model(model)
    face = model.masks["face"]
    # brute force: the mesh of the truth with shape components 1 and k+1.. zeroed, one face at a time
    for k in (1, 3, model.n_shape):
        th = truncated_truth(model, test["theta"], k)
        got = geometric_errors(model, th, test["verts"])
        for i in range(3):
            a = test["theta"][i, L["shape"]].clone()
            a[0] = 0
            a[k:] = 0
            v = model.mean_shape + torch.einsum("k,kvc->vc", a * model.sigma_s, model.shape_basis) \
                + torch.einsum("k,kvc->vc", test["theta"][i, L["expression"]] * model.sigma_e, model.expression_basis)
            d = (v - test["verts"][i])[face]
            assert abs(float(d.square().sum(-1).mean().sqrt()) - float(got["geometric_mm"][i])) < 1e-3
            al = similarity_align(v[None, face].double(), test["verts"][i:i + 1, face].double())[0].float()
            ref = (al[0] - test["verts"][i, face]).square().sum(-1).mean().sqrt()
            assert abs(float(ref) - float(got["geometric_aligned_mm"][i])) < 1e-3
        # everything but shape is left true
        keep = torch.ones(L.size, dtype=torch.bool)
        keep[L["shape"]] = False
        assert torch.equal(th[:, keep], test["theta"][:, keep])
    fl = truncation_floor(model, test, ks=(1, 2, model.n_shape))
    assert fl["k"] == [1, 2, model.n_shape]
    refs = reference_rows(model, {"s": test})
    assert abs(fl["geometric_mm"][-1] - float(refs["true parameters, mean head size"]["s"]["geometric_mm"].mean())) < 1e-4
    assert abs(fl["mean_face"]["geometric_mm"] - float(refs["mean face"]["s"]["geometric_mm"].mean())) < 1e-4
    # error sources: the truth has no error of its own; swapping in the mean face's shape or expression
    from facelib.inversefacenet import error_sources, mean_face_theta
    src = error_sources(model, test["theta"], test)
    assert src["estimate"] < 1e-3 and src["estimated shape, true expression"] < 1e-3
    assert abs(src["true shape, estimated expression"] - fl["geometric_mm"][-1]) < 1e-4
    mf = mean_face_theta(model, test["theta"])
    src = error_sources(model, mf, test)
    assert abs(src["estimate"] - fl["mean_face"]["geometric_mm"]) < 1e-4
    assert abs(src["estimated shape, true expression"] - fl["geometric_mm"][0]) < 1e-4  # k = 1: expression only
    with pytest.raises(ValueError, match="k must be"):
        truncated_truth(model, test["theta"], 0)
    with pytest.raises(ValueError, match="k must be"):
        truncated_truth(model, test["theta"], model.n_shape + 1)


def test_coefficient_r2_against_numpy():
    from facelib.inversefacenet import coefficient_r2

    g = torch.Generator().manual_seed(0)
    truth = torch.randn(50, 4, generator=g)
    est = torch.stack([truth[:, 0], torch.zeros(50), truth[:, 2] + 0.5 * torch.randn(50, generator=g),
                       torch.full((50,), float(truth[:, 3].mean()))], 1)
    r2 = coefficient_r2(est, truth)
    t, e = truth.double().numpy(), est.double().numpy()
    ref = 1 - ((e - t) ** 2).mean(0) / t.var(0, ddof=1)
    assert np.allclose(r2.numpy(), ref, atol=1e-5)
    assert abs(float(r2[0]) - 1) < 1e-6 and float(r2[1]) < 0.1 and abs(float(r2[3])) < 0.05
    with pytest.raises(ValueError, match="same"):
        coefficient_r2(est, truth[:, :3])


def test_alexnet_first_stride():
    torch.manual_seed(0)
    for stride, cells in ((4, 15), (2, 32), (1, 64)):
        net = AlexNet(20, 64, width=0.125, stride=stride, norm="batch")
        assert net.features[0](torch.zeros(1, 3, 64, 64)).shape[-1] == cells  # the first map's side
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 20)
    with pytest.raises(ValueError, match="stride"):
        AlexNet(20, 64, stride=0)


def test_train_row_with_the_issue_15_options_is_bit_reproducible(model, tmp_path, monkeypatch):
    from facelib.inversefacenet import curve_eval, train_row

    cfg = dict(size=32, iters=6, batch=4, lr=3e-3, alexnet_width=0.05, alexnet_fc=16, resnet_width=0.05,
               resnet_blocks=(1, 1, 1, 1), breed_rounds=2, norm="batch", standardize=True, dropout=0.0,
               schedule="cosine", warmup=0.2, curve_every=3)
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    test = make_test_set(model, "synthetic", 4, seed=3, size=32)
    nets, infos = [], []
    for k in range(2):  # two empty caches: both runs train from scratch
        monkeypatch.setenv("FACELIB_CACHE", str(tmp_path / str(k)))
        net, info = train_row(model, cfg, "+ model-space loss, RMS units", corpus, seed=5, progress=False,
                              eval_fn=curve_eval(model, {"synthetic": test}, 2), curve_key="t")
        assert not info["cached"]
        nets.append(net), infos.append(info)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    assert infos[0]["loss"] == infos[1]["loss"]
    assert [r["iter"] for r in infos[0]["curve"]] == [0, 3, 6]
    assert [r["synthetic_geometric_mm"] for r in infos[0]["curve"]] == [r["synthetic_geometric_mm"]
                                                                        for r in infos[1]["curve"]]


def test_truncation_standing_words():
    """Chapter 3's sentence: where a ratio falls on the truncation curve {k: ratio}."""
    from facelib.inversefacenet import truncation_standing

    at = {1: 0.9, 2: 0.8, 3: 0.7, 10: 0.4}
    assert truncation_standing(0.95, at) == "worse than knowing the expression exactly and no shape"
    assert truncation_standing(0.85, at).startswith("better than knowing the expression exactly")
    assert truncation_standing(0.75, at) == "between knowing shape component 2 and the next point of the curve"
    assert truncation_standing(0.5, at) == "between knowing shape components 2-3 and the next point of the curve"


# ------------------------------------------------------------------ what the landmarks alone can tell
def _landmark_case(model, n=3, noise=0.5, seed=4):
    """``n`` Sec. 5 faces, their landmarks in another similarity frame with noise, a start and a prior."""
    from facelib.inversefacenet import expression_moments
    from facelib.render.formation import project_landmarks

    L = ParamLayout.from_model(model)
    theta = sample_sec5(model, n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    lm = 1.7 * project_landmarks(model, theta, image_size=64) + torch.tensor([5.0, -3.0])
    lm = lm + 1.7 * noise * torch.randn(lm.shape, generator=g)
    prior = expression_moments(model, sample_sec5(model, 2000, seed=seed + 1))
    start = theta.clone()
    start[:, L["shape"]] = 0
    start[:, L["expression"]] = prior[0].float()
    start[:, L["rotation"]] += 0.05
    return theta, lm, 1.7 * noise, prior, start


def _landmark_energy(model, theta, lm, sigma, prior):
    """The MAP energy of :func:`landmark_map` at ``theta`` with the best scale and translation (closed
    form, they enter linearly), per face ``(n,)`` float64."""
    from facelib.render.formation import project_landmarks

    L = ParamLayout.from_model(model)
    p = project_landmarks(model, theta, image_size=64).double()  # (n, 68, 2)
    pc, lc = p - p.mean(1, keepdim=True), lm.double() - lm.double().mean(1, keepdim=True)
    s = (pc * lc).sum((1, 2)) / pc.square().sum((1, 2))
    data = (s[:, None, None] * pc - lc).square().sum((1, 2)) / sigma ** 2
    e = theta[:, L["expression"]].double() - prior[0]
    prior_e = torch.einsum("ni,ij,nj->n", e, torch.linalg.inv(prior[1]), e)
    return data + theta[:, L["shape"]].double().square().sum(1) + prior_e


def test_landmark_map_against_brute_force(model):
    """Gauss-Newton reaches a minimum of the energy (scale and translation eliminated in closed form):
    no higher than L-BFGS on the same energy, with a vanishing gradient."""
    from facelib.inversefacenet import LANDMARK_UNKNOWNS, landmark_map

    theta, lm, sigma, prior, start = _landmark_case(model)
    L = ParamLayout.from_model(model)
    idx = torch.cat([torch.arange(L[g].start, L[g].stop) for g in LANDMARK_UNKNOWNS])
    est = landmark_map(model, lm, start, sigma, prior)
    x = start[:, idx].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=2000, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        th = start.clone()
        th[:, idx] = x
        e = _landmark_energy(model, th, lm, sigma, prior).sum()
        e.backward()
        return e

    opt.step(closure)
    ref = start.clone()
    ref[:, idx] = x.detach()
    e_gn = _landmark_energy(model, est, lm, sigma, prior)
    e_bf = _landmark_energy(model, ref, lm, sigma, prior)
    e_start = _landmark_energy(model, start, lm, sigma, prior)
    assert bool((e_gn < 0.5 * e_start).all())
    assert bool((e_gn <= e_bf * (1 + 1e-4) + 1e-3).all()), (e_gn, e_bf)

    def grad(th):  # the energy's gradient in the unknowns, (n, k)
        x = th[:, idx].clone().requires_grad_(True)
        t = th.clone()
        t[:, idx] = x
        _landmark_energy(model, t, lm, sigma, prior).sum().backward()
        return x.grad

    # a stationary point: the gradient is gone (float32 projection) where L-BFGS still has some left
    g_gn, g_start = grad(est).norm(dim=1), grad(start).norm(dim=1)
    assert bool((g_gn < 1e-3 * g_start).all()), (g_gn, g_start)
    # reflectance and light are those of theta0
    rest = torch.ones(L.size, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(est[:, rest], start[:, rest])


def test_landmark_map_frame_and_known_groups(model):
    """The estimate does not depend on the landmarks' similarity frame (noise scaled with it); groups not
    in ``unknown`` keep theta0's values; the true shape is found from exact landmarks when only the shape
    is unknown and its prior is weak next to the data."""
    from facelib.inversefacenet import landmark_map

    theta, lm, sigma, prior, start = _landmark_case(model)
    L = ParamLayout.from_model(model)
    a = landmark_map(model, lm, start, sigma, prior)
    b = landmark_map(model, 0.5 * lm + torch.tensor([-20.0, 7.0]), start, 0.5 * sigma, prior)
    assert torch.allclose(a, b, atol=1e-3)
    known = theta.clone()
    known[:, L["shape"]] = 0
    c = landmark_map(model, lm, known, sigma, prior, unknown=("shape",))
    keep = torch.ones(L.size, dtype=torch.bool)
    keep[L["shape"]] = False
    assert torch.equal(c[:, keep], known[:, keep])
    # more noise -> the estimate shrinks toward the prior mean (0)
    d = landmark_map(model, lm, known, 20 * sigma, prior, unknown=("shape",))
    assert float(d[:, L["shape"]].norm()) < float(c[:, L["shape"]].norm())


def test_landmark_map_rejects_bad_input(model):
    from facelib.inversefacenet import expression_moments, landmark_map

    theta, lm, sigma, prior, start = _landmark_case(model, n=2)
    with pytest.raises(ValueError, match="unknown"):
        landmark_map(model, lm, start, sigma, prior, unknown=("shape", "light"))
    with pytest.raises(ValueError, match="unknown"):
        landmark_map(model, lm, start, sigma, prior, unknown=())
    with pytest.raises(ValueError, match="sigma_px"):
        landmark_map(model, lm, start, 0.0, prior)
    with pytest.raises(ValueError, match="sigma_px"):
        landmark_map(model, lm, start, [1.0, 2.0, 3.0], prior)
    with pytest.raises(ValueError, match="landmarks"):
        landmark_map(model, lm[:, :60], start, sigma, prior)
    with pytest.raises(ValueError, match="theta0"):
        landmark_map(model, lm, start[:, :10], sigma, prior)
    with pytest.raises(ValueError, match="expression_prior"):
        landmark_map(model, lm, start, sigma, (prior[0][:3], prior[1]))
    with pytest.raises(ValueError, match="iters"):
        landmark_map(model, lm, start, sigma, prior, iters=0)
    with pytest.raises(ValueError, match="2 samples"):
        expression_moments(model, theta[:1])


def test_landmark_limit_rows(model):
    """The rows of chapter 4's landmark limit on a small wild set: one per prior with the pose estimated,
    then the true pose, then the true pose and expression; each scored like Table 1."""
    from facelib.data.wild import sample_wild
    from facelib.inversefacenet import geometric_errors, landmark_limit

    test = make_test_set(model, "wild", 4, seed=3, size=40)
    L = ParamLayout.from_model(model)
    lim = landmark_limit(model, test, {"A": sample_sec5(model, 500, seed=1), "B": sample_wild(model, 500, seed=2)},
                         iters=4)
    assert list(lim) == ["landmarks, A, pose and expression estimated", "landmarks, B, pose and expression estimated",
                         "landmarks, B, true pose", "landmarks, true pose and expression"]
    last = lim["landmarks, true pose and expression"]["theta"]
    keep = torch.ones(L.size, dtype=torch.bool)
    keep[L["shape"]] = False
    assert torch.equal(last[:, keep], test["theta"][:, keep])
    assert torch.equal(lim["landmarks, B, true pose"]["theta"][:, L["rotation"]], test["theta"][:, L["rotation"]])
    for row in lim.values():
        e = geometric_errors(model, row["theta"], test["verts"])
        assert abs(row["geometric_mm"]["mean"] - float(e["geometric_mm"].double().mean())) < 1e-6
        assert row["geometric_aligned_mm"]["mean"] <= row["geometric_mm"]["mean"]
    with pytest.raises(ValueError, match="prior"):
        landmark_limit(model, test, {})


def test_landmark_limit_markdown():
    """Chapter 4's table: networks averaged over seeds, landmark rows, references; ratios to the mean face."""
    from facelib.inversefacenet import landmark_limit_markdown

    t = lambda *v: torch.tensor(v)  # noqa: E731
    refs = {"mean face": {"wild": {"geometric_mm": t(4.0, 4.0), "geometric_aligned_mm": t(2.0, 2.0)}},
            "true parameters, mean head size": {"wild": {"geometric_mm": t(2.0, 2.0), "geometric_aligned_mm": t(0.5, 0.5)}}}
    results = {"net": {0: {"wild": {"geometric_mm": t(3.0, 3.0), "geometric_aligned_mm": t(1.0, 1.0)}},
                       1: {"wild": {"geometric_mm": t(2.0, 2.0), "geometric_aligned_mm": t(1.0, 2.0)}}}}
    limit = {"landmarks, X": {"geometric_mm": {"mean": 3.2, "std": 1.0}, "geometric_aligned_mm": {"mean": 1.2, "std": 0.1}}}
    md = landmark_limit_markdown(limit, results, refs, ["net"]).splitlines()
    assert md[2] == "| *mean face* | 4.00 (1.00) | 2.00 (1.00) |"
    assert md[3] == "| net | 2.50 (0.62) | 1.25 (0.62) |"
    assert md[4] == "| landmarks, X | 3.20 (0.80) | 1.20 (0.60) |"
    assert md[5] == "| *true parameters, mean head size* | 2.00 (0.50) | 0.50 (0.25) |"


def test_wild_test_frames_are_the_test_sets_faces(model, monkeypatch):
    monkeypatch.setattr(ifn, "TEST_CHUNK", 3)  # two chunks of the set, each with its own seed
    test = ifn.make_test_set(model, "wild", 5, seed=4, size=32)
    chunks = list(ifn.wild_test_frames(model, 5, 4, test["render_size"]))
    assert [c["theta"].shape[0] for c in chunks] == [3, 2]
    assert torch.equal(torch.cat([c["theta"] for c in chunks]).float().cpu(), test["theta"])
    assert torch.equal(torch.cat([c["verts_model"] for c in chunks]).float().cpu(), test["verts"])
    # the same faces in a frame twice the size: the detector's noise is relative to the landmark box
    big = list(ifn.wild_test_frames(model, 5, 4, 2 * test["render_size"]))
    assert big[0]["image"].shape[-1] == 2 * test["render_size"]
    for c, b in zip(chunks, big):
        assert torch.equal(b["theta"], c["theta"])
        assert torch.allclose(b["landmarks"], 2 * c["landmarks"], atol=1e-3)


def test_fit_limit_scores_the_fit_against_the_mean_face(model):
    from facelib.fit import FIT_WEIGHTS

    test = ifn.make_test_set(model, "wild", 4, seed=2, size=32)
    mean = ifn.geometric_errors(model, ifn.mean_face_theta(model, test["theta"]), test["verts"])
    # no iteration: the fit's start is the mean face placed on the landmarks, so it scores the mean face
    r0 = ifn.fit_limit(model, test, 48, iters=(0, 0), progress=False)
    assert r0["theta"].shape == test["theta"].shape
    for m in ("geometric_mm", "geometric_aligned_mm"):
        assert r0[m]["mean"] == pytest.approx(float(mean[m].mean()), rel=1e-5)
    # the landmarks alone move it toward the faces (in batches of 3 and 1)
    r1 = ifn.fit_limit(model, test, 48, iters=(60, 0), weights=FIT_WEIGHTS.replace(photo=0.0), batch=3, progress=False)
    assert r1["geometric_aligned_mm"]["mean"] < 0.9 * r0["geometric_aligned_mm"]["mean"]
    assert r1["seconds_per_face"] > 0
    # a start of its own (e.g. landmark_map's), per face in the set's order across batches
    truth = ifn.geometric_errors(model, test["theta"], test["verts"])
    r2 = ifn.fit_limit(model, test, 48, iters=(0, 0), batch=3, progress=False, theta0=test["theta"])
    sl = ParamLayout.from_model(model)
    for name in ("shape", "expression", "rotation"):
        assert torch.allclose(r2["theta"][:, sl[name]], test["theta"][:, sl[name]])
    assert r2["geometric_mm"]["mean"] == pytest.approx(float(truth["geometric_mm"].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="theta0"):
        ifn.fit_limit(model, test, 48, theta0=test["theta"][:2])
    with pytest.raises(ValueError, match="wild test set"):
        ifn.fit_limit(model, ifn.make_test_set(model, "synthetic", 2, seed=2, size=32), 48)
    with pytest.raises(ValueError, match="frame_size"):
        ifn.fit_limit(model, test, 16)
    with pytest.raises(ValueError, match="batch"):
        ifn.fit_limit(model, test, 48, batch=0)


def test_fit_limit_rows_only_for_the_same_faces():
    test = {"kind": "wild", "theta": torch.zeros(8, 3), "seed": 10_000, "size": 64, "render_size": 96}
    rows = {"fit, landmarks + pixels, 96-px frame": {"geometric_mm": {"mean": 3.0, "std": 0.5}}}
    record = {"test_set": {"kind": "wild", "faces": 8, "seed": 10_000, "size": 64, "render_size": 96}, "rows": rows}
    assert ifn.fit_limit_rows(record, test) == rows
    assert ifn.fit_limit_rows(None, test) == {}
    for key, other in (("faces", 4), ("seed", 10_001), ("size", 48), ("render_size", 72), ("kind", "synthetic")):
        assert ifn.fit_limit_rows(dict(record, test_set=dict(record["test_set"], **{key: other})), test) == {}
