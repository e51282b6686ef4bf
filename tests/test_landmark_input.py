"""The crop's landmarks as a second network input (issue 15): features, detector noise, the networks'
landmark branch, corpora, training, breeding, prediction and saved networks."""

from __future__ import annotations

import numba
import pytest
import torch

import facelib
from facelib.data.corpus import (SyntheticCorpus, landmark_features, landmark_input, landmark_side, network_input,
                                 to_network)
from facelib.data.wild import WILD, detector_noise, wild_batch
import facelib.inversefacenet as ifn
from facelib.inversefacenet import TensorCorpus, make_regressor, make_test_set, predict, train_row
from facelib.nets import AlexNet, LandmarkBranch, ResNet, Standardized, takes_landmarks

CFG = dict(size=32, iters=6, batch=4, lr=3e-3, alexnet_width=0.05, alexnet_fc=16, resnet_width=0.05,
           resnet_blocks=(1, 1, 1, 1), breed_rounds=2, norm="batch", standardize=True, dropout=0.0,
           schedule="cosine", warmup=0.2, landmarks=True, landmark_steps=5, landmark_batch=16)


@pytest.fixture(scope="module")
def model():
    return facelib.load_model("open")


def test_landmark_features_forget_position_and_size():
    g = torch.Generator().manual_seed(0)
    lm = torch.rand(5, 68, 2, generator=g, dtype=torch.float64) * 100
    f = landmark_features(lm)
    assert f.shape == (5, 136) and f.dtype == torch.float32
    moved = lm * 3.5 + torch.tensor([40.0, -7.0], dtype=torch.float64)
    assert torch.allclose(landmark_features(moved), f, atol=1e-6)
    # brute force: centre of the box at 0, longer side 1
    p = f.view(5, 68, 2).double()
    lo, hi = p.min(1).values, p.max(1).values
    assert torch.allclose((lo + hi) / 2, torch.zeros(5, 2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose((hi - lo).max(-1).values, torch.ones(5, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(B, 68, 2\)"):
        landmark_features(torch.zeros(5, 136))


def test_landmark_side_is_the_longer_side_of_the_box():
    lm = torch.rand(5, 68, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * torch.tensor([30.0, 50.0])
    lm[2, :, 0] *= 4  # one face wider than tall
    ref = [max(max(p[0] for p in f) - min(p[0] for p in f), max(p[1] for p in f) - min(p[1] for p in f))
           for f in lm.tolist()]
    side = landmark_side(lm)
    assert side.shape == (5,) and side.dtype == torch.float64
    assert torch.allclose(side, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(landmark_side(lm + 7.0), side)  # a shift changes nothing


def test_crop_and_frame_landmarks_give_the_same_features(model):
    w = wild_batch(model, 3, seed=2, size=64)
    crop_lm = network_input(w["image"], w["landmarks"], 32)["landmarks"]
    assert torch.allclose(landmark_features(crop_lm), landmark_features(w["landmarks"]), atol=1e-5)


def test_detector_noise_is_the_wild_sets(model):
    w = wild_batch(model, 4, seed=11, size=64)
    # wild_batch draws its detector's noise with this function, from seed * 7 + 6
    g = torch.Generator().manual_seed(11 * 7 + 4 + 2)
    assert torch.equal(detector_noise(w["landmarks_gt"], WILD["landmark_noise"], g), w["landmarks"])
    # its size: about landmark_noise of the box side per point (plus the shared half)
    lm = w["landmarks_gt"].double().repeat(50, 1, 1)
    d = detector_noise(lm, 0.01, torch.Generator().manual_seed(0)) - lm
    side = (lm.max(1).values - lm.min(1).values).max(-1).values
    ratio = (d / side[:, None, None]).std() / 0.01
    assert 1.0 < float(ratio) < 1.25  # sqrt(1 + 0.25) = 1.118


def test_landmark_input_is_seeded_by_the_batch():
    lm = torch.rand(4, 68, 2, generator=torch.Generator().manual_seed(1)) * 50
    idx = torch.tensor([3, 9, 1, 7])
    a, b = landmark_input(lm, 0.012, 5, idx), landmark_input(lm, 0.012, 5, idx)
    assert torch.equal(a, b)
    assert not torch.equal(a, landmark_input(lm, 0.012, 5, torch.tensor([3, 9, 1, 8])))
    assert not torch.equal(a, landmark_input(lm, 0.012, 6, idx))
    assert torch.equal(landmark_input(lm, 0.0, 5, idx), landmark_features(lm))


@pytest.mark.parametrize("cls", [AlexNet, ResNet])
def test_networks_with_a_landmark_branch(cls):
    torch.manual_seed(0)
    net = cls(7, size=32, width=0.05, landmarks=68, landmark_width=16).eval()
    plain = cls(7, size=32, width=0.05).eval()
    assert takes_landmarks(net) and not takes_landmarks(plain)
    x, l = torch.zeros(2, 3, 32, 32), torch.zeros(2, 136)
    assert net(x, l).shape == (2, 7)
    # the landmarks change the output; the image path is the plain network's
    l2 = torch.randn(2, 136, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(net(x, l), net(x, l2))
    with pytest.raises(ValueError, match="second input"):
        net(x)
    with pytest.raises(ValueError, match=r"expected \(B, 136\)"):
        net(x, torch.zeros(2, 68, 2))
    with pytest.raises(ValueError, match="2 images but 3 landmark sets"):
        net(x, torch.zeros(3, 136))
    with pytest.raises(ValueError, match="no landmark input"):
        plain(x, l)
    s = Standardized(net, torch.zeros(7), torch.ones(7)).eval()
    assert takes_landmarks(s) and torch.equal(s(x, l2), net(x, l2))
    with pytest.raises(ValueError, match="positive number of points"):
        LandmarkBranch(0)


def test_corpora_give_noisy_landmarks_with_the_batch(model):
    c = SyntheticCorpus(model, 8, seed=1, size=32, cache=False, chunk=8, progress=False)
    idx = torch.tensor([0, 5, 2])
    x, theta = c.batch(idx)
    (x2, l), theta2 = c.batch(idx, landmarks=True)
    assert torch.equal(x, x2) and torch.equal(theta, theta2) and l.shape == (3, 136)
    exact = landmark_features(c.landmarks[idx])
    err = (l - exact).abs().max()
    assert 0 < float(err) < 0.1  # detector noise of about 1.2% of the box side
    (_, l_again), _ = c.batch(idx, landmarks=True)
    assert torch.equal(l, l_again)
    quiet = SyntheticCorpus(model, 8, seed=1, size=32, cache=False, chunk=8, progress=False, landmark_noise=0.0)
    assert torch.equal(quiet.batch(idx, landmarks=True)[0][1], exact)
    with pytest.raises(ValueError, match="landmark_noise must be a number >= 0"):
        SyntheticCorpus(model, 8, seed=1, size=32, cache=False, chunk=8, progress=False, landmark_noise=-1)
    t = TensorCorpus(c.images, c.theta)
    with pytest.raises(ValueError, match="no landmarks"):
        t.batch(idx, landmarks=True)
    with pytest.raises(ValueError, match=r"expected \(8, 68, 2\)"):
        TensorCorpus(c.images, c.theta, torch.zeros(8, 136))


def test_train_breed_predict_and_load_with_landmarks(model, tmp_path, monkeypatch):
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    real = make_test_set(model, "wild", 6, seed=4, size=32)
    assert real["landmarks"].shape == (6, 68, 2)
    real_x = real["x"].float() / 255 - 0.5
    with pytest.raises(ValueError, match="real_landmarks"):
        train_row(model, CFG, "+ breeding (= InverseFaceNet)", corpus, real_x=real_x, progress=False)
    net, info = train_row(model, CFG, "+ breeding (= InverseFaceNet)", corpus, real_x=real_x,
                          real_landmarks=real["landmarks"], progress=False)
    assert takes_landmarks(net) and not info["cached"] and len(info["loss"]) == info["iters"]
    with pytest.raises(ValueError, match="landmarks=\\(n, 68, 2\\)"):
        predict(net, real["x"])
    theta = predict(net, real["x"], landmarks=real["landmarks"])
    assert theta.shape == real["theta"].shape and torch.isfinite(theta).all()
    assert ifn.test_time_ms(net, 32, repeats=2) > 0
    # the same run again is loaded, with the same weights; a net without landmarks is another run
    again, info2 = train_row(model, CFG, "+ breeding (= InverseFaceNet)", corpus, real_x=real_x,
                             real_landmarks=real["landmarks"], progress=False)
    assert info2["cached"] and torch.equal(predict(again, real["x"], landmarks=real["landmarks"]), theta)
    _, info3 = train_row(model, dict(CFG, landmarks=False), "AlexNet", corpus, progress=False)
    assert not info3["cached"]
    # the saved network reads the landmarks of the crop it makes from a frame
    t = facelib.load_network("inversefacenet", model=model)
    assert takes_landmarks(t.net)
    w = wild_batch(model, 2, seed=9, size=48)
    est = t.predict(w["image"], w["landmarks"])
    d = network_input(w["image"], w["landmarks"], 32)
    ref = predict(net, to_network((d["crop"] * 255).round() / 255), landmarks=d["landmarks"])
    assert torch.allclose(est["theta"], ref, atol=1e-5) and "landmarks" not in est


def test_make_regressor_without_the_option_has_no_branch(model):
    cfg = {k: v for k, v in CFG.items() if k != "landmarks"}
    assert not takes_landmarks(make_regressor(model, cfg, "alexnet"))
    assert takes_landmarks(make_regressor(model, CFG, "resnet"))


def test_project_landmarks_is_the_renders(model):
    from facelib.data.corpus import render_crops
    from facelib.model.params import sample_sec5
    from facelib.render import project_landmarks

    theta = sample_sec5(model, 6, seed=3).float()
    out = render_crops(model, theta, 32)
    assert torch.allclose(project_landmarks(model, theta, out["render"].image.shape[-1]), out["landmarks_frame"],
                          atol=1e-3)


def test_pretrain_landmarks_trains_the_branch_only(model):
    from facelib.inversefacenet import GEOMETRY_GROUPS, pretrain_landmarks
    from facelib.model.params import ParamLayout

    net = make_regressor(model, CFG, "alexnet", seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    log = pretrain_landmarks(model, net, 40, batch=32, lr=3e-3, seed=1, progress=False)
    assert len(log["loss"]) == 40 and log["loss"][-1] < log["loss"][0]
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".landmark_branch." in k for k in changed)
    # the head reads out only what landmarks show: its rows for reflectance and light stay 0
    layout = ParamLayout.from_model(model)
    head = net.net.landmark_branch.head.weight
    for name, sl in layout.slices.items():
        assert bool((head[sl] != 0).any()) == (name in GEOMETRY_GROUPS), name
    again = make_regressor(model, CFG, "alexnet", seed=0)
    pretrain_landmarks(model, again, 40, batch=32, lr=3e-3, seed=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(after.values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="no landmark input"):
        pretrain_landmarks(model, make_regressor(model, dict(CFG, landmarks=False), "alexnet"), 5)
    # weights: equal ones are the default; a column weighted 0 is not learned (its head row stays 0)
    k = sum(layout[g].stop - layout[g].start for g in GEOMETRY_GROUPS)
    ones = make_regressor(model, CFG, "alexnet", seed=0)
    pretrain_landmarks(model, ones, 40, batch=32, lr=3e-3, seed=1, progress=False, weights=torch.full((k,), 2.0))
    assert all(torch.equal(a, b) for a, b in zip(after.values(), ones.state_dict().values()))
    w = torch.ones(k)
    w[0] = 0
    zero = make_regressor(model, CFG, "alexnet", seed=0)
    pretrain_landmarks(model, zero, 40, batch=32, lr=3e-3, seed=1, progress=False, weights=w)
    assert not bool((zero.net.landmark_branch.head.weight[layout["rotation"].start] != 0).any())
    for bad in (torch.ones(k - 1), -w, torch.zeros(k)):
        with pytest.raises(ValueError, match="weights"):
            pretrain_landmarks(model, make_regressor(model, CFG, "alexnet", seed=0), 2, weights=bad)


def test_a_frozen_branch_stays_as_pre_trained(model, tmp_path, monkeypatch):
    from facelib.inversefacenet import _branch_of, pretrain_landmarks

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    cfg = dict(CFG, landmark_freeze=True)
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    net, info = train_row(model, cfg, "+ model-space loss, RMS units", corpus, seed=2, progress=False)
    ref = make_regressor(model, cfg, "alexnet", seed=2)
    pretrain_landmarks(model, ref, cfg["landmark_steps"], cfg["landmark_batch"], seed=2, progress=False)
    for a, b in zip(_branch_of(net).state_dict().values(), _branch_of(ref).state_dict().values()):
        assert torch.equal(a, b)
    # the rest of the network trained
    assert not torch.equal(net.net.last.weight, ref.net.last.weight)
    assert any(float(v) != 0 for v in _branch_of(net).head.weight.flatten()[:1000])


def test_rows_of_one_seed_share_the_pre_trained_branch(model, tmp_path, monkeypatch):
    from facelib.inversefacenet import _branch_of

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    fresh = make_regressor(model, CFG, "alexnet", seed=4)
    a, ia = train_row(model, dict(CFG, landmark_freeze=True), "AlexNet", corpus, seed=4, progress=False)
    files = list((tmp_path / "checkpoints").glob("branch-*.pt"))
    assert len(files) == 1
    saved = torch.load(files[0], weights_only=False)
    b, ib = train_row(model, dict(CFG, landmark_freeze=True), "ResNet + model-space loss", corpus, seed=4,
                      progress=False)
    assert len(list((tmp_path / "checkpoints").glob("branch-*.pt"))) == 1  # loaded, not pre-trained again
    for x, y in zip(_branch_of(a).state_dict().values(), _branch_of(b).state_dict().values()):
        assert torch.equal(x, y)  # frozen: both rows keep the one pre-trained branch
    assert not torch.equal(_branch_of(fresh).head.weight, _branch_of(a).head.weight)
    # each row counts the pre-training's seconds as its own training time
    assert ia["train_s"] >= saved["train_s"] and ib["train_s"] >= saved["train_s"]
    files[0].write_bytes(b"damaged")
    train_row(model, dict(CFG, landmark_freeze=True), "AlexNet", corpus, seed=5, progress=False)
    c, _ = train_row(model, dict(CFG, landmark_freeze=True, iters=7), "AlexNet", corpus, seed=4, progress=False)
    for x, y in zip(_branch_of(a).state_dict().values(), _branch_of(c).state_dict().values()):
        assert torch.equal(x, y)  # a damaged file is pre-trained again, to the same weights


def test_runs_without_landmarks_keep_their_cache_keys():
    from facelib.inversefacenet import TRAIN_OPTIONS, _options

    old = dict(norm="batch", standardize=True, dropout=0.0, schedule="cosine", warmup=0.05)
    before = {k: old.get(k) for k in ("norm", "standardize", "dropout", "schedule", "warmup")}  # the key's old form
    assert _options(old) == before
    assert _options(dict(old, landmarks=False, landmark_steps=4000, landmark_batch=256)) == before
    new = _options(dict(old, landmarks=True, landmark_steps=4000, landmark_batch=256))
    assert new == dict(before, landmarks=True, landmark_steps=4000, landmark_batch=256)
    assert set(new) <= set(TRAIN_OPTIONS)


def test_landmark_spread_option_keys_the_branch_and_the_run_and_is_not_the_profile(model, tmp_path, monkeypatch):
    """``cfg["landmark_spread"]``: the row's branch is pre-trained as ``pretrain_landmarks(spread=)`` does (to
    the bit), under a cache key of its own; 1 is the prior's (the key it had before the option); a run with
    another spread is not the book profile's network (:func:`facelib.networks._profile_of`)."""
    from facelib.book import SETTINGS
    from facelib.inversefacenet import _branch_of, _options, pretrain_landmarks
    from facelib.networks import _profile_of

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    cfg = dict(CFG, landmark_freeze=True)  # frozen: the trained row keeps the pre-trained branch to compare
    wide, _ = train_row(model, dict(cfg, landmark_spread=2.0), "AlexNet", corpus, seed=6, progress=False)
    ref = make_regressor(model, cfg, "alexnet", seed=6)
    pretrain_landmarks(model, ref, cfg["landmark_steps"], cfg["landmark_batch"], seed=6, progress=False, spread=2.0)
    for a, b in zip(_branch_of(wide).state_dict().values(), _branch_of(ref).state_dict().values()):
        assert torch.equal(a, b)
    plain, _ = train_row(model, dict(cfg, landmark_spread=1.0), "AlexNet", corpus, seed=6, progress=False)
    assert len(list((tmp_path / "checkpoints").glob("branch-*.pt"))) == 2  # one branch per spread
    assert not torch.equal(_branch_of(plain).head.weight, _branch_of(wide).head.weight)
    assert _options(dict(cfg, landmark_spread=1.0)) == _options(cfg)  # 1: the key the runs had before
    assert _options(dict(cfg, landmark_spread=2.0)) == dict(_options(cfg), landmark_spread=2.0)
    assert _options(dict(cfg, landmarks=False, landmark_spread=2.0)) == _options(dict(cfg, landmarks=False))
    cpu = SETTINGS["inversefacenet"]["cpu"]
    other = 3.0 if float(cpu.get("landmark_spread", 1.0)) != 3.0 else 2.0
    assert _profile_of("inversefacenet", dict(cpu)) == "cpu"
    assert _profile_of("inversefacenet", dict(cpu, landmark_spread=other)) is None
    assert _profile_of("inversefacenet", dict(cpu, landmark_freeze=True)) is None
    plain = {k: v for k, v in cpu.items() if k != "landmark_spread"}
    assert _profile_of("inversefacenet", dict(plain, landmark_spread=1.0)) == _profile_of("inversefacenet", plain)


def test_landmark_variants_markdown_rows_and_references():
    from facelib.inversefacenet import landmark_variants_markdown

    def run(row, variant, seed, w):
        ratios = {f"{m}_ratio": w for m in ("geometric_mm", "geometric_aligned_mm", "now_mm")}
        return {"row": row, "landmarks": variant, "seed": seed, "train_s": 10.0 * (seed + 1),
                "wild": ratios, "synthetic": ratios}

    ref = {name: {k: {m: v for m in ("geometric_mm", "geometric_aligned_mm", "now_mm")} for k in ("wild", "synthetic")}
           for name, v in (("mean face", 4.0), ("true parameters, mean head size", 2.0),
                           ("true expression, mean shape", 3.0))}
    record = {"references": ref, "runs": [run("AlexNet", "off", 0, 0.9), run("AlexNet", "off", 1, 0.8),
                                          run("AlexNet", "pretrained", 0, 0.7)]}
    readout = {"seeds": {"0": {"table1_wild": {"geometric_mm_ratio": 0.71, "geometric_aligned_mm_ratio": 0.6}}}}
    lines = landmark_variants_markdown(record, readout).splitlines()
    assert lines[2] == "| AlexNet | the crop (the paper) | 2 | 0.85 ± 0.05 | 0.85 ± 0.05 | 0.85 ± 0.05 | 0.85 ± 0.05 | 15 |"
    assert lines[3].startswith("| AlexNet | crop + landmarks, branch on the Sec. 5 prior | 1 | 0.70 ± 0.00")
    assert "0.71 ± 0.00 | 0.60 ± 0.00" in lines[4]
    assert lines[5] == "| *true parameters, mean head size* | - | - | 0.50 | 0.50 | 0.50 | 0.50 | - |"
    assert lines[6].startswith("| *true expression, mean shape* | - | - | 0.75")


def test_budget_markdown_rows_settings_and_mean_face():
    from facelib.inversefacenet import budget_markdown

    base = dict(n_train=6144, iters=1800, batch=32, lr=0.003, landmark_steps=4000, landmark_batch=256, n_real=768)
    bred = "+ breeding (= InverseFaceNet)"

    def run(variant, seed, synth, wild, row="AlexNet"):
        return {"variant": variant, "row": row, "seed": seed, "train_s": 100.0 + seed,
                "synthetic": {"over_mean_face": synth}, "wild": {"over_mean_face": wild}}

    record = {"mean_face": {"synthetic": {"geometric_mm": 8.7}, "wild": {"geometric_mm": 4.4}},
              "summary": [{"variant": "before", "row": "AlexNet", "settings": base},
                          {"variant": "more", "row": "AlexNet", "settings": dict(base, n_train=24576)},
                          {"variant": "more", "row": bred, "settings": dict(base, n_train=24576, n_real=4096)},
                          {"variant": "not run", "row": "AlexNet", "settings": base}],
              "runs": [run("before", 0, 0.41, 0.72), run("before", 1, 0.43, 0.70), run("more", 0, 0.40, 0.71),
                       run("more", 0, 0.47, 0.90, bred)]}
    lines = budget_markdown(record, current=dict(base, n_train=24576, seeds=(0, 1))).splitlines()
    assert len(lines) == 6  # header, rule, three (variant, row) pairs that ran, the mean face
    assert lines[2] == ("| before | AlexNet | 2 | 6,144 | 1,800 x 32 | 0.003 | 4,000 x 256 | - | 0.420 ± 0.010 | "
                        "0.710 ± 0.010 | 100 |")
    assert lines[3].startswith("| **more** | AlexNet | 1 | 24,576 |")
    assert lines[4].startswith(f"| more | {bred} | 1 | 24,576 |") and "| 4,096 | 0.470 ± 0.000 |" in lines[4]
    assert lines[5].startswith("| *mean face* |") and "1 (8.70 mm)" in lines[5] and "1 (4.40 mm)" in lines[5]


def test_train_rows_side_by_side_train_each_run_as_alone_with_one_thread(model, tmp_path, monkeypatch):
    """cfg["workers"] = 2 trains the (row, seed) runs two at a time, one thread each: every run (a landmark
    branch pre-trained per seed, a breeding row, a ResNet, learning curves) gets the weights, losses and
    curve points it gets one by one with one thread, the rows come back in order, the one-thread runs
    are cached apart from the runs with the caller's threads, and load_network reads the run saved last."""
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    real = make_test_set(model, "wild", 6, seed=4, size=32)
    tests = {"wild": make_test_set(model, "wild", 6, seed=7, size=32)}
    real_x = real["x"].float() / 255 - 0.5
    cfg = dict(CFG, seeds=(0, 1), n_curve=3, curve_every=3, iters=4)
    names = ["+ breeding (= InverseFaceNet)", "ResNet + model-space loss"]

    def rows(workers, cache):
        monkeypatch.setenv("FACELIB_CACHE", str(tmp_path / cache))
        return ifn.train_rows(model, dict(cfg, workers=workers), names, corpus, tests, real_x=real_x,
                              real_landmarks=real["landmarks"], progress=False)

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(1)
        numba.set_num_threads(1)
        alone = rows(1, "alone")
    finally:
        torch.set_num_threads(threads)
        numba.set_num_threads(numba_threads)
    side = rows(2, "side")
    assert torch.get_num_threads() == threads  # the caller's threads are back
    assert list(side) == names and all(list(side[n]) == [0, 1] for n in names)
    for n in names:
        for s in (0, 1):
            a, b = alone[n][s], side[n][s]
            assert not b["info"]["cached"] and len(b["info"]["curve"]) == len(a["info"]["curve"]) > 1
            assert all(torch.equal(x, y) for x, y in zip(a["net"].state_dict().values(), b["net"].state_dict().values()))
            assert a["info"]["loss"] == b["info"]["loss"]
            assert [{k: v for k, v in p.items() if k != "train_s"} for p in a["info"]["curve"]] == \
                [{k: v for k, v in p.items() if k != "train_s"} for p in b["info"]["curve"]]
            # the same weights, evaluated with the caller's threads (1 one by one here, 2 side by side): the
            # evaluation's sums may group otherwise with two threads, on some CPUs, so the last bits may differ
            assert torch.allclose(a["wild"]["geometric_mm"], b["wild"]["geometric_mm"], rtol=1e-5, atol=0)
    # a second call loads every run; the one-thread runs' keys differ from the caller's-thread runs'
    again = rows(2, "side")
    assert all(again[n][s]["info"]["cached"] for n in names for s in (0, 1))
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path / "side"))
    plain, info = train_row(model, cfg, names[1], corpus, seed=0, progress=False)
    assert not info["cached"]
    # of the two saved runs of the same row and seed, load_network takes the one saved last
    latest = facelib.load_network("inversefacenet", row=names[1], seed=0, model=model).net
    assert all(torch.equal(a, b) for a, b in zip(latest.state_dict().values(), plain.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(latest.state_dict().values(),
                                                     side[names[1]][0]["net"].state_dict().values()))
    with pytest.raises(ValueError, match="workers"):
        ifn.train_rows(model, dict(cfg, workers=0), names, corpus, tests)
    with pytest.raises(ValueError, match="unknown Table 1 row"):
        ifn.train_rows(model, dict(cfg, workers=2), ["VGG"], corpus, tests)


def test_pretrain_landmarks_spread_widens_the_drawn_shapes_only(model):
    """``spread``: the faces the branch learns from are the Sec. 5 draws with their shape coefficients times
    ``spread`` (brute force: the targets it is given against sample_sec5's draws), the rest as drawn."""
    from facelib.inversefacenet import pretrain_landmarks
    from facelib.model.params import ParamLayout, sample_sec5

    layout = ParamLayout.from_model(model)
    seen = []
    cols = torch.arange(layout.size)

    def to_output(theta):
        seen.append(theta.clone())
        return theta[:, cols[:4]]

    pretrain_landmarks(model, make_regressor(model, CFG, "alexnet", seed=0), 2, batch=8, seed=3, progress=False,
                       outputs=(cols[:4], to_output), spread=2.0)
    for step, theta in enumerate(seen):
        drawn = sample_sec5(model, 8, seed=3 * 1_000_003 + step).float()
        want = drawn.clone()
        want[:, layout["shape"]] *= 2.0
        assert torch.allclose(theta, want)
    for bad in (0, -1.0, True, "2"):
        with pytest.raises(ValueError, match="spread"):
            pretrain_landmarks(model, make_regressor(model, CFG, "alexnet", seed=0), 2, spread=bad)
