"""Trained networks as files (issue 21, item 0): what the book trains is saved with its configuration
and the face model's key, and ``facelib.load_network`` returns it for inference without the training
data and without ever training."""

import dataclasses

import pytest
import torch

import facelib
from facelib.data.corpus import SyntheticCorpus, crop_to_box, landmark_box, network_input, to_network
from facelib.inversefacenet import predict, train_row
from facelib.networks import NetworkNotFoundError, available_networks, load_network
from facelib.data.wild import wild_batch

CFG = dict(size=32, iters=10, batch=4, lr=1e-3, alexnet_width=0.05, alexnet_fc=16, resnet_width=0.05,
           resnet_blocks=(1, 1, 1, 1), breed_rounds=2)


@pytest.fixture(scope="module")
def model():
    return facelib.load_model("open")


@pytest.fixture(scope="module")
def frames(model):
    return wild_batch(model, 3, seed=1, size=48)


@pytest.fixture()
def trained(model, frames, tmp_path, monkeypatch):
    """Two Table 1 rows trained (tiny) into an empty cache (and no MoFA checkpoints)."""
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    corpus = SyntheticCorpus(model, 16, seed=1, size=32, cache=False, chunk=16, progress=False)
    x = to_network(network_input(frames["image"], frames["landmarks"], 32)["crop"])
    bred, _ = train_row(model, CFG, "+ breeding (= InverseFaceNet)", corpus, real_x=x, progress=False)
    plain, _ = train_row(model, CFG, "AlexNet", corpus, progress=False)
    return {"bred": bred, "plain": plain, "corpus": corpus, "cache": tmp_path}


def test_load_network_returns_the_trained_weights_and_never_trains(model, frames, trained):
    rows = available_networks(model)
    assert sorted(r["row"] for r in rows) == ["+ breeding (= InverseFaceNet)", "AlexNet"]
    assert all(r["profile"] is None and r["iters"] == 10 for r in rows)  # a custom budget, not a book profile
    t = facelib.load_network("inversefacenet", model=model)
    assert t.meta["row"] == "+ breeding (= InverseFaceNet)" and t.size == 32 and not t.net.training
    for a, b in zip(trained["bred"].state_dict().values(), t.net.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    # the estimate is the trained network's output on the Sec. 6.1 crop (8-bit, like the corpus)
    est = t.estimate(frames["image"], frames["landmarks"])
    crop = network_input(frames["image"], frames["landmarks"], 32)["crop"]
    assert torch.equal(est["theta"], predict(trained["bred"], to_network((crop * 255).round() / 255)))
    assert est["verts"].shape == (3, model.n_vertices, 3) and est["rendering"].shape == (3, 3, 32, 32)
    assert est["landmarks"].shape == (3, 68, 2) and torch.isfinite(est["landmarks"]).all()
    # the frames as 8-bit values, or as NumPy arrays: the same estimate; values in other units are refused
    img8 = (frames["image"] * 255).round().to(torch.uint8)
    as_float = t.estimate(img8.float() / 255, frames["landmarks"])["theta"]
    assert torch.equal(t.estimate(img8, frames["landmarks"])["theta"], as_float)
    assert torch.equal(t.estimate(frames["image"].numpy(), frames["landmarks"].double().numpy())["theta"], est["theta"])
    with pytest.raises(ValueError, match=r"image values lie in \[0, 255\]"):
        t.estimate(img8.float(), frames["landmarks"])
    with pytest.raises(ValueError, match="landmarks span 0.5"):  # normalised to [0, 1] instead of pixels
        t.estimate(frames["image"], frames["landmarks"] / 48)
    with pytest.raises(ValueError, match="no frames"):
        t.estimate(frames["image"][:0], frames["landmarks"][:0])
    with pytest.raises(ValueError, match="landmarks contain NaN"):
        t.estimate(frames["image"], frames["landmarks"] * float("nan"))
    a = load_network("inversefacenet", row="AlexNet", model=model)
    for p, q in zip(trained["plain"].state_dict().values(), a.net.state_dict().values()):
        assert torch.equal(p.cpu(), q)
    # loading wrote nothing and trained nothing: the same files as before
    before = sorted(p.name for p in (trained["cache"] / "networks" / "inversefacenet").iterdir())
    load_network("inversefacenet", model=model)
    assert sorted(p.name for p in (trained["cache"] / "networks" / "inversefacenet").iterdir()) == before


def test_load_network_refuses_other_models_profiles_and_bad_names(model, trained):
    other = dataclasses.replace(model, mean_shape=model.mean_shape + 1.0)  # another face model's contents
    with pytest.raises(NetworkNotFoundError, match="make book"):
        load_network("inversefacenet", model=other)
    with pytest.raises(NetworkNotFoundError, match="profile 'cpu'"):
        load_network("inversefacenet", model=model, profile="cpu")  # only a custom budget is on disk
    with pytest.raises(NetworkNotFoundError, match="seed 1"):
        load_network("inversefacenet", model=model, seed=1)
    with pytest.raises(ValueError, match="unknown network"):
        load_network("vgg", model=model)
    with pytest.raises(ValueError, match="unknown Table 1 row"):
        load_network("inversefacenet", row="VGG", model=model)
    with pytest.raises(ValueError, match="profile"):
        load_network("inversefacenet", model=model, profile="huge")
    with pytest.raises(ValueError, match="seed"):
        load_network("inversefacenet", model=model, seed=-1)


def test_a_truncated_network_file_is_not_loaded(model, trained):
    for p in (trained["cache"] / "networks" / "inversefacenet").iterdir():
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(NetworkNotFoundError):
        load_network("inversefacenet", model=model)


def test_empty_cache_says_how_to_train(model, tmp_path, monkeypatch):
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    assert available_networks(model) == []
    for name, chapter in (("inversefacenet", "chapters 3 and 4"), ("mofa", "chapter 5"), ("mofa-final", "chapter 6")):
        with pytest.raises(NetworkNotFoundError, match=chapter):
            load_network(name, model=model)


def test_mofa_checkpoint_loads_and_an_unfinished_one_is_refused(model, tmp_path, monkeypatch):
    from facelib.book import settings
    from facelib.mofa import make_corpus, stage1_network

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))  # MoFA checkpoints: tmp_path / "mofa"
    cfg = dict(settings("05_mofa", "ci"), steps1=3, threads=None)  # 3 of the ci profile's 50 steps: unfinished
    net, keep, _ = stage1_network(model, cfg, make_corpus(model, 4, cfg["size"], seed=0, progress=False,
                                                           keep=None), 0, "cpu", "ci", progress=False)
    with pytest.raises(NetworkNotFoundError, match="step 3 of 50"):
        load_network("mofa", model=model)
    # the same checkpoint, counted as finished (as chapter 5's 50 steps would leave it)
    ck = tmp_path / "mofa" / "ci_stage1_s0.pt"
    state = torch.load(ck, weights_only=False)
    state["step"] = 50
    torch.save(state, ck)
    t = load_network("mofa", model=model)
    assert t.method == "mofa" and t.meta["profile"] == "ci" and t.size == cfg["size"]
    for a, b in zip(net.state_dict().values(), t.net.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    frames = wild_batch(model, 2, seed=4, size=96)
    est = t.estimate(frames["image"], frames["landmarks"])
    assert est["verts"].shape == (2, net.decoder.n_vertices, 3) and est["mask"].shape == (2, t.size, t.size)
    # MoFA's crop: the landmark box plus 35% on each side, the landmarks placed as in its training frames,
    # the outside of the frame filled with its edge pixels
    box = landmark_box(frames["landmarks"].float(), 0.35)
    box[:, 1] -= 0.098 * box[:, 2]
    assert torch.allclose(est["crop"], crop_to_box(frames["image"].float(), box, t.size, padding="border").clamp(0, 1))
    from facelib.data.corpus import _box_points  # the crop's landmarks: the encoder's second input

    assert torch.equal(est["theta"], net.encode(est["crop"], _box_points(frames["landmarks"].float(), box, t.size)))


def test_mofa_final_level_written_by_stage_2_is_the_one_load_network_reads(model, tmp_path, monkeypatch):
    """Chapter 6's final level (``stage2_network(..., name="final")``, one checkpoint per seed) is found
    by ``load_network("mofa-final", seed=)``; another seed's is not returned, an ablation's never."""
    from facelib.book import settings
    from facelib.mofa import make_corpus, stage1_network, stage2_network

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    cfg = dict(settings("05_mofa", "ci"), **settings("06_correctives", "ci"), threads=None)
    corpus = make_corpus(model, 4, cfg["size"], seed=0, progress=False, keep=None)
    base, _, _ = stage1_network(model, dict(cfg, steps1=2), corpus, 1, "cpu", "ci", progress=False)
    stage2_network(model, base, cfg, corpus, 1, "ci", 4, name="abl_C___4", progress=False)
    with pytest.raises(NetworkNotFoundError, match="chapter 6"):
        load_network("mofa-final", model=model, seed=1)
    final, _ = stage2_network(model, base, cfg, corpus, 1, "ci", 4, name="final", progress=False)
    assert (tmp_path / "mofa" / "ci_final_s1.pt").exists()
    t = load_network("mofa-final", model=model, seed=1)
    assert t.meta["seed"] == 1 and t.meta["step"] == cfg["steps2"] and t.net.n_corrective == 4
    for a, b in zip(final.state_dict().values(), t.net.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    with pytest.raises(NetworkNotFoundError, match="seed 0"):
        load_network("mofa-final", model=model, seed=0)
    assert [(r["name"], r["seed"]) for r in available_networks(model) if r["name"] == "mofa-final"] == [("mofa-final", 1)]


def test_paste_crop_inverts_crop_to_box():
    from facelib.reconstruct import paste_crop

    H, W = 60, 80
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    photo = torch.stack([xx / W, yy / H, (xx + yy) / (W + H)])[None]  # smooth: bilinear is exact on ramps
    box = torch.tensor([[41.0, 27.5, 30.0]])
    crop = crop_to_box(photo, box, 40)
    back = paste_crop(crop, box, (H, W))
    inside = ((xx - 41.0).abs() < 13) & ((yy - 27.5).abs() < 13)
    assert (back[0, :, inside] - photo[0, :, inside]).abs().max() < 1e-5
    assert back[0, :, ~(((xx - 41.0).abs() < 16) & ((yy - 27.5).abs() < 16))].abs().max() == 0


def test_coarsenet_and_finenet_saved_by_their_chapter_load_and_estimate(model, frames, tmp_path, monkeypatch):
    from facelib.coarse_fine import CoarseNet, CoarseSpace, FineNet, coarse_iterate
    from facelib.networks import save_network

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    space = CoarseSpace.from_model(model, 6, 3)
    torch.manual_seed(0)
    coarse, fine = CoarseNet(space.n_params, width=4, blocks=(1, 1, 1, 1)), FineNet(width=4, head=8)
    cfg = dict(n_shape=6, n_expression=3, width=4, blocks=[1, 1, 1, 1], size=32, iterations=2,
               mask_dilate=coarse.mask_dilate)
    save_network("coarsenet", coarse, cfg, model, "ci", seed=0)
    save_network("finenet", fine, dict(width=4, head=8, size=48), model, "ci")
    with pytest.raises(ValueError, match="save_network saves"):
        save_network("mofa", fine, {}, model, "ci")
    c = load_network("coarsenet", model=model)
    f = load_network("finenet", model=model)
    assert c.meta["profile"] == "ci" and c.size == 32 and f.size == 48
    for a, b in zip(coarse.state_dict().values(), c.net.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fine.state_dict().values(), f.net.state_dict().values()):
        assert torch.equal(a, b)
    # CoarseNet's crop puts the detected landmarks where the mean face's lie at its start r_0 = 0
    est = c.estimate(frames["image"], frames["landmarks"])
    lm0 = space.project(model.mean_shape[model.landmarks][None], torch.zeros(1, 6), 32)[..., :2]
    u = (frames["landmarks"] - est["box"][:, None, :2]) / est["box"][:, None, 2:3] * 32 + 16
    assert torch.allclose(landmark_box(u, 0.0), landmark_box(lm0, 0.0).expand(3, -1), atol=1e-3)
    r = coarse_iterate(space, coarse, est["crop"], 2, 32)[-1]
    assert torch.allclose(est["theta"], r) and est["verts"].shape == (3, model.n_vertices, 3)
    assert est["rendering"].shape == (3, 3, 32, 32) and est["landmarks"].shape == (3, 68, 2)
    with pytest.raises(ValueError, match="FineNet refines"):
        f.estimate(frames["image"], frames["landmarks"])
    names = sorted(r["name"] for r in available_networks(model))
    assert "coarsenet" in names and "finenet" in names
    # a CoarseNet with the landmark input (the book's) reads the crop's landmarks, mapped into crop pixels
    lmnet = CoarseNet(space.n_params, width=4, blocks=(1, 1, 1, 1), landmarks=68, landmark_width=16)
    with torch.no_grad():
        lmnet.landmark_branch.head.weight.normal_(0, 0.05)  # a branch that moves the estimate
    save_network("coarsenet", lmnet, dict(cfg, landmarks=68, landmark_width=16), model, "ci", seed=0)
    c = load_network("coarsenet", model=model)
    assert c.net.n_landmarks == 68
    est = c.estimate(frames["image"], frames["landmarks"])
    lm_crop = (frames["landmarks"] - est["box"][:, None, :2]) / est["box"][:, None, 2:3] * 32 + 16
    assert torch.allclose(c.crop(frames["image"], frames["landmarks"])["landmarks"], lm_crop, atol=1e-3)
    r = coarse_iterate(space, lmnet.eval(), est["crop"], 2, 32, landmarks=lm_crop)[-1]
    assert torch.allclose(est["theta"], r, atol=1e-4)
    # the estimate's own landmarks come back in frame pixels (not the crop's)
    u = space.project(space.geometry(space.split(r)[0])[:, model.landmarks], space.split(r)[1], 32)[..., :2]
    assert torch.allclose(est["landmarks"], (u - 16) / 32 * est["box"][:, None, 2:3] + est["box"][:, None, :2], atol=1e-2)
    assert not torch.allclose(r, coarse_iterate(space, lmnet, est["crop"], 2, 32, landmarks=lm_crop.flip(1))[-1])


def test_networks_command_lists_every_kind(model, trained, capsys, monkeypatch):
    from facelib.cli import main
    from facelib.coarse_fine import FineNet
    from facelib.networks import save_network

    save_network("finenet", FineNet(width=4, head=8), dict(width=4, head=8, size=48), model, "ci")
    monkeypatch.setattr(facelib, "load_model", lambda name="open", device=None: model)
    assert main(["networks"]) == 0
    out = capsys.readouterr().out
    assert "inversefacenet [AlexNet] seed 0, profile custom, 10 iterations" in out
    assert "finenet seed 0, profile ci:" in out


def test_publish_saves_again_a_run_whose_settings_became_a_profile(model, tmp_path, monkeypatch):
    """A Table 1 run saved under a custom budget (a benchmark's variant) is the profile's network once the
    profile holds its settings (e.g. a new training option adopted): publishing it again relabels the file;
    publishing it with the same profile leaves the file as it is."""
    from facelib.book import SETTINGS
    from facelib.networks import _read, publish_inversefacenet

    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    custom = dict(SETTINGS["inversefacenet"]["cpu"], landmark_spread=7.0)
    net, info = torch.nn.Linear(2, 2), {"iters": 1, "train_s": 1.0}
    path = publish_inversefacenet(model, custom, "AlexNet", 0, "alexnet", net, info, "k")
    assert _read(path)["profile"] is None
    monkeypatch.setitem(SETTINGS["inversefacenet"], "cpu", custom)  # the profile adopts the variant
    assert publish_inversefacenet(model, custom, "AlexNet", 0, "alexnet", net, info, "k") == path
    assert _read(path)["profile"] == "cpu"
    stamp = path.stat().st_mtime_ns
    publish_inversefacenet(model, custom, "AlexNet", 0, "alexnet", net, info, "k")
    assert path.stat().st_mtime_ns == stamp  # the same profile: kept
