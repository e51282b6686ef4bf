"""MoFA / multi-level autoencoder: the network's decoder, learning-rate groups, stage-1 -> stage-2
hand-over, resumable training, evaluation and the encoder benchmark (tiny sizes)."""

import pytest
import torch

from facelib.eval.metrics import similarity_align
from facelib.mofa import (STAGE2_LR, MoFA, build_mofa, encoder_hz, evaluate, fit_codes, init_translation,
                          learning_curve, loss_terms, make_corpus, mean_errors, mean_face_error, render_level,
                          shift_scale, train)
from facelib.mofa.multilevel import decimate
from facelib.render.points import render_points
from facelib.render import face_camera, render
from facelib.model.params import ParamLayout, rot_xyz, sample_sec5
from facelib.mofa.selfsup import STAGE1, STAGE2

SIZE = 64


@pytest.fixture(scope="module")
def small(open_model):
    model, keep = decimate(open_model, 400)
    corpus = make_corpus(open_model, 6, SIZE, seed=0, keep=keep, chunk=6, progress=False)
    return model, keep, corpus


def net_for(model, C=0, seed=0, kind="linear"):
    torch.manual_seed(123)  # must not matter: MoFA seeds its own initialisation
    return MoFA(model, SIZE, "alexnet", width=0.125, n_corrective=C, corrective=kind, seed=seed)


def test_corpus_fields(small, open_model):
    model, keep, c = small
    assert c["image"].shape == (6, 3, SIZE, SIZE) and 0 <= c["image"].min() and c["image"].max() <= 1
    assert c["landmarks"].shape == (6, 68, 2) and c["verts_model"].shape == (6, 400, 3)


def test_initialisation_is_seeded_and_code_starts_at_offsets(small):
    model, _, c = small
    a, b = net_for(model, 4), net_for(model, 4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    code = a.eval().encode(c["image"][:2])
    parts = a.layout.unpack(code)
    assert torch.allclose(parts["illumination"][:, :3], torch.full((2, 3), 0.8), atol=0.1)  # ambient start
    assert parts["rotation"].abs().max() < 0.1


def test_decoder_is_the_sec5_image_formation(small):
    model, _, c = small
    net = net_for(model, 3).eval()
    with torch.no_grad():
        code = net.encode(c["image"][:2])
        d = net.decode(code)
        p = net.layout.unpack(code)
        v = model.geometry(p["shape"], p["expression"])
        R = face_camera(SIZE).R @ rot_xyz(p["rotation"])
        t = face_camera(SIZE).t + p["translation"]
        ref = render_points(v, model.reflectance(p["reflectance"]), model.triangles, R, t, p["illumination"],
                            face_camera(SIZE).focal, SIZE)
    assert torch.allclose(d.base.u, ref.u, atol=1e-3) and torch.allclose(d.base.c, ref.c, atol=1e-5)
    assert torch.allclose(d.levels.v_f - d.levels.v_b, d.levels.F_g, atol=1e-4)
    assert d.final is not d.base


def test_param_groups_and_stage2_handover(small):
    model, _, c = small
    s1 = net_for(model, 0)
    s2 = net_for(model, 5, seed=1)
    s2.load_stage1(s1.state_dict())
    s2.start_stage2()
    with torch.no_grad():
        c1, c2 = s1.eval().encode(c["image"][:2]), s2.eval().encode(c["image"][:2])
    n = s1.layout.size
    assert torch.allclose(c1, c2[:, :n])  # the base code is the stage-1 network's
    lay = s2.layout
    assert torch.allclose(c2[:, lay["illumination_final"]], c2[:, lay["illumination"]])  # gamma_f starts = gamma_b
    groups = s2.param_groups(2, 0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({k: 0.01 * v for k, v in STAGE2_LR.items()})
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(s2.parameters()))  # every parameter exactly once
    assert id(s2.decoder.F_g.layers[0].weight) in {id(p) for p in groups[1]["params"]}
    assert id(s2.decoder.F_r.layers[0].weight) in {id(p) for p in groups[2]["params"]}
    with pytest.raises(ValueError, match="stage"):
        s2.param_groups(3, 0.01)


def test_loss_terms_per_stage_and_ablation(small):
    model, _, c = small
    net = net_for(model, 4)
    out = net(c["image"][:2])
    t1 = loss_terms(net, out, c["image"][:2], c["landmarks"][:2], STAGE1, 1)
    assert set(t1) == {"photo", "sparse", "std"}
    t2 = loss_terms(net, out, c["image"][:2], c["landmarks"][:2], STAGE2, 2)
    assert set(t2) == {"photo", "sparse", "std", "smo", "ref", "glo", "sta"}
    assert (t2["photo"] > t1["photo"]).all()  # Eq. 9 adds the final level in stage 2
    abl = loss_terms(net, out, c["image"][:2], c["landmarks"][:2], STAGE2.replace(smo=0, sta=0), 2)
    assert set(abl) == {"photo", "sparse", "std", "ref", "glo"}
    for v in t2.values():
        assert v.shape == (2,) and torch.isfinite(v).all()


def test_training_resumes_exactly(small, tmp_path):
    model, _, c = small
    a = net_for(model, 0)
    train(a, c, 4, 1, lr=1e-3, batch=2, seed=3, progress=False)
    b = net_for(model, 0)
    ck = tmp_path / "s1.pt"
    train(b, c, 2, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, checkpoint_every=1, progress=False)
    b2 = net_for(model, 0)  # a fresh process would start here
    hist = train(b2, c, 4, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, checkpoint_every=1, progress=False)
    assert len(hist) == 4
    for (k, p), q in zip(a.state_dict().items(), b2.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), k
    # a finished checkpoint loads without training
    b3 = net_for(model, 0)
    train(b3, c, 4, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(b2.state_dict().values(), b3.state_dict().values()))


def test_learning_curve_points_and_resume(small, tmp_path):
    model, _, c = small
    calls = []

    def probe(net):
        assert not net.training  # evaluated in eval mode, training resumes in train mode
        calls.append(1)
        return {"n": len(calls)}

    net = net_for(model, 0)
    ck = tmp_path / "c.pt"
    h = train(net, c, 4, 1, lr=1e-3, batch=2, seed=1, checkpoint=ck, checkpoint_every=1, progress=False,
              eval_fn=probe, eval_every=2)
    assert [i for i, r in enumerate(h) if "eval" in r] == [1, 3] and "eval_start" in h[0]
    assert [(p["step"], p["n"]) for p in learning_curve(h)] == [(0, 1), (2, 2), (4, 3)]
    assert all(h[i]["train_s"] <= h[i + 1]["train_s"] for i in range(3))
    # the curve does not change the training: same weights as without it
    ref = net_for(model, 0)
    train(ref, c, 4, 1, lr=1e-3, batch=2, seed=1, progress=False)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(net.state_dict().values(), ref.state_dict().values()))
    # extending a finished run keeps its curve and its clock
    h2 = train(net_for(model, 0), c, 6, 1, lr=1e-3, batch=2, seed=1, checkpoint=ck, progress=False,
               eval_fn=probe, eval_every=2)
    assert [i for i, r in enumerate(h2) if "eval" in r] == [1, 3, 5] and h2[4]["train_s"] >= h[3]["train_s"]


def test_mean_face_error_is_the_zero_code(small):
    model, _, c = small
    net = net_for(model, 0)
    e = mean_face_error(net, c, batch=4)
    face = net.decoder.face_mask
    zero = net.decoder.base_geometry(torch.zeros(6, model.n_shape), torch.zeros(6, model.n_expression))[:, face]
    gt = c["verts_model"][:, face]
    ref = (similarity_align(zero, gt)[0] - gt).norm(dim=-1).mean(1)  # brute force: Eq. 3 at alpha = 0
    assert e.shape == (6,) and torch.allclose(e, ref, atol=1e-4)
    with pytest.raises(ValueError, match="codes"):
        evaluate(net, c, codes=torch.zeros(2, net.layout.size))


def test_fit_codes_lowers_the_loss_it_fits(small):
    model, _, c = small
    net = net_for(model, 0)
    init_translation(net, c["landmarks"])
    img, lm = c["image"][:3], c["landmarks"][:3]

    def loss(z):
        out = net.decode(z, final=False)
        return float(loss_terms(net, out, img, lm, STAGE1, 1)["sparse"].mean())

    z = fit_codes(net, img, lm, STAGE1, steps=40, lr=0.02)
    assert z.shape == (3, net.layout.size) and not z.requires_grad
    assert loss(z) < 0.5 * loss(net.code_offset.expand(3, -1))
    ev = evaluate(net, {k: v[:3] for k, v in c.items()}, codes=z)
    assert torch.isfinite(ev["base"]["geometric_mm"]).all()


def test_shift_scale_moves_image_and_landmarks_together():
    img = torch.zeros(2, 3, 32, 32)
    img[:, :, 10, 20] = 1.0  # the pixel whose centre is (20.5, 10.5)
    lm = torch.tensor([[[20.5, 10.5]], [[20.5, 10.5]]])
    out, lm2 = shift_scale(img, lm, torch.tensor([[3.0, -2.0], [0.0, 0.0]]), torch.tensor([1.0, 2.0]))
    assert torch.allclose(lm2, torch.tensor([[[23.5, 8.5]], [[25.0, 5.0]]]))
    assert divmod(int(out[0, 0].argmax()), 32) == (8, 23) and out[0, 0].max() > 0.99  # integer shift: exact
    yx = (out[1, 0] > 0.2).nonzero().float().mean(0) + 0.5  # zoomed blob: centred on the moved landmark
    assert torch.allclose(yx.flip(0), lm2[1, 0], atol=0.01)
    same, lm3 = shift_scale(img, lm, torch.zeros(2, 2), torch.ones(2))
    assert torch.allclose(same, img, atol=1e-6) and torch.equal(lm3, lm)
    with pytest.raises(ValueError, match="square"):
        shift_scale(img, lm, torch.zeros(3, 2), torch.ones(2))


def test_checkpoint_of_another_start_is_not_resumed(small, tmp_path):
    model, _, c = small
    ck = tmp_path / "s2.pt"
    a = net_for(model, 4)
    train(a, c, 2, 2, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    b = net_for(model, 4)
    with torch.no_grad():
        b.encoder.last.heads["base"].bias += 0.01  # e.g. a stage-2 net loaded from a retrained stage 1
    start = {k: v.clone() for k, v in b.state_dict().items()}
    hist = train(b, c, 2, 2, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    assert len(hist) == 2 and not torch.equal(b.encoder.last.heads["base"].bias, a.encoder.last.heads["base"].bias)
    assert not torch.equal(b.encoder.last.heads["base"].bias, start["encoder.last.heads.base.bias"])  # trained anew


def test_stage2_step_moves_correctives(small):
    model, _, c = small
    net = net_for(model, 4)
    before = net.decoder.F_g.layers[0].weight.clone()
    hist = train(net, c, 2, 2, lr=1e-3, batch=2, progress=False)
    assert set(hist[0]) >= {"photo", "sparse", "std", "smo", "ref", "glo", "sta", "total"}
    assert not torch.equal(before, net.decoder.F_g.layers[0].weight)


def test_init_translation_matches_landmark_scale(small):
    model, _, c = small
    net = net_for(model, 0)
    init_translation(net, c["landmarks"])
    code = net.code_offset[None]
    u = net.decode(code, final=False).base.u[0, net.decoder.landmarks]
    lm = c["landmarks"]
    assert torch.allclose(u.mean(0), lm.mean(1).mean(0), atol=1.0)
    assert abs(float(u.std(0).norm() / lm.std(1).norm(dim=-1).mean()) - 1) < 0.05


def test_render_level_matches_rasterizer(open_model):
    m = open_model
    th = sample_sec5(m, 1, seed=2)
    lay = ParamLayout.from_model(m)
    p = lay.unpack(th)
    cam = face_camera(SIZE)
    R = cam.R @ rot_xyz(p["rotation"])
    pr = render_points(m.geometry(p["shape"], p["expression"]), m.reflectance(p["reflectance"]), m.triangles, R,
                       cam.t, p["illumination"], cam.focal, SIZE)
    img, mask = render_level(pr, m.triangles, cam.focal, SIZE)
    ref = render(m, th, SIZE)
    inter = (mask & ref.mask).sum() / (mask | ref.mask).sum()
    assert inter > 0.97
    both = mask & ref.mask
    assert (img - ref.image).abs().amax(1)[both].median() < 1e-4


def test_evaluate_and_build(small, open_model):
    model, keep, c = small
    net = net_for(model, 3)
    ev = evaluate(net, c, batch=4)
    for lvl in ("base", "final"):
        for k in ("photometric_rgb", "geometric_mm"):
            assert ev[lvl][k].shape == (6,) and torch.isfinite(ev[lvl][k]).all()
    assert (ev["base"]["photometric_rgb"] < 1.8).all()
    net2, keep2 = build_mofa(open_model, net.config)
    assert torch.equal(keep2, keep)
    net2.load_state_dict(net.state_dict())


def test_mean_errors_are_the_means_of_evaluate(small):
    model, _, c = small
    ev = evaluate(net_for(model, 3), c, batch=4)
    for level in ("base", "final"):
        m = mean_errors(ev, level)
        assert m["geometric_mm"] == pytest.approx(float(ev[level]["geometric_mm"].mean()))
        assert m["photometric_rgb"] == pytest.approx(float(ev[level]["photometric_rgb"].mean()))
        assert m["landmark_px"] == pytest.approx(float(ev["landmark_px"].mean()))


def test_encoder_hz_counts_images_per_second_of_the_timed_passes(small):
    """encoder_hz on a module whose forward pass takes a known time: warm-up passes are run but not
    timed, and the rate is batch x repeats over the timed passes only; a MoFA goes through encode."""
    import time as _time

    class Slow(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Slow.calls += 1
            _time.sleep(0.02)
            return x.mean((1, 2, 3))

    hz = encoder_hz(Slow(), batch=4, size=8, repeats=3, warmup=2)
    assert Slow.calls == 5
    assert 100 < hz <= 4 / 0.02  # 4 images per 20 ms pass at most; sleep overshoot and overhead lower it
    model, _, _ = small
    assert encoder_hz(net_for(model, 0), batch=2, size=SIZE, repeats=2, warmup=1) > 0  # MoFA.encode


def test_panels_and_mark_points(small):
    from facelib.mofa import mark_points, panels

    model, _, c = small
    net = net_for(model, 3)
    p = panels(net, c["image"][:2])
    for k in ("input", "overlay", "geometry", "reflectance", "illumination"):
        assert p[k].shape == (2, 3, SIZE, SIZE) and p[k].min() >= 0 and p[k].max() <= 1
    pts = torch.tensor([[[3.5, 5.5]], [[10.2, 1.7]]])
    m = mark_points(torch.zeros(2, 3, 8, 16), pts, color=(1.0, 0.0, 0.5))
    assert torch.equal(m[0, :, 5, 3], torch.tensor([1.0, 0.0, 0.5])) and m[1, 0, 1, 10] == 1
    assert m.sum() == 2 * 1.5


def test_photo_corpus_with_a_stand_in_detector(tmp_path):
    import numpy as np
    from PIL import Image

    from facelib.mofa import photo_corpus

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    lm = torch.stack([torch.linspace(30, 70, 68), torch.linspace(40, 90, 68)], -1)

    def detect(rgb):  # a fixed face in the first photo, none in the second
        return lm.clone() if rgb[0, 0, 0] == np.asarray(Image.open(tmp_path / "p0.png"))[0, 0, 0] else None

    c = photo_corpus(tmp_path, 32, margin=0.25, detect=detect, progress=False)
    assert c["image"].shape == (1, 3, 32, 32) and c["files"][0].endswith("p0.png")
    out = c["landmarks"][0]  # the landmark box is centred in the crop, with the margin around it
    assert out.min() > 2 and out.max() < 30
    assert abs(float((out[:, 0].min() + out[:, 0].max()) / 2) - 16) < 1.5
    with pytest.raises(ValueError, match="no face"):
        photo_corpus(tmp_path, 32, detect=lambda rgb: None, progress=False)


def test_optional_dlib_detector_finds_landmarks():
    pytest.importorskip("dlib")
    import numpy as np

    from facelib.mofa import landmark_detector

    try:
        detect = landmark_detector()
    except ImportError as e:
        pytest.skip(str(e))
    assert detect(np.zeros((64, 64, 3), np.uint8)) is None  # no face in a black image


def test_now_style_error_of_the_decoder_mesh(small):
    """The shared NoW-style measure on the decimated template: 0 for the true mesh, unchanged by a
    similarity transform of the reconstruction, the mean face's for an untrained encoder's near-mean
    shapes; evaluate(now=True) adds it per level without changing the other measures."""
    from facelib.mofa import mean_face_now, now_error_mm
    from facelib.model.params import rot_xyz

    model, _, c = small
    net = net_for(model, 2)
    gt = c["verts_model"]
    assert now_error_mm(net, gt, gt).abs().max() < 1e-4
    R = rot_xyz(torch.tensor([[0.1, -0.2, 0.05]])).expand(gt.shape[0], -1, -1)
    moved = 1.1 * gt @ R.transpose(1, 2) + torch.tensor([3.0, -2.0, 40.0])
    assert now_error_mm(net, moved, gt).abs().max() < 1e-3
    mean = mean_face_now(net, c)
    assert mean.shape == (6,) and (mean > 0.1).all()
    ev, ev_now = evaluate(net, c, batch=4), evaluate(net, c, batch=4, now=True)
    assert "now_mm" not in ev["base"] and ev_now["base"]["now_mm"].shape == (6,)
    assert ev_now["final"]["now_mm"].shape == (6,)
    assert torch.equal(ev["base"]["geometric_mm"], ev_now["base"]["geometric_mm"])


def test_stage_networks_side_by_side_train_each_run_as_one_by_one(open_model, tmp_path, monkeypatch):
    """cfg["workers"] = 2 trains chapter 5's seeds (stage 1, landmark branches pre-trained in the runs) and
    chapter 6's stage-2 runs two at a time, one thread each: every network, history and learning-curve point
    is the one of one by one (with the profile's one thread), the checkpoints load as one by one's, the
    caller's thread counts and PyTorch's global generator are as before, and bad settings are refused."""
    import numba

    from facelib._threads import cpu_threads
    from facelib.bench import same_weights as same
    from facelib.book import settings
    from facelib.mofa import curve_eval, stage1_networks, stage2_networks

    cfg = {**settings("05_mofa", "ci"), **settings("06_correctives", "ci"), "steps1": 4, "steps2": 3,
           "landmark_steps": 4, "landmark_batch": 8}
    corpus = make_corpus(open_model, 6, cfg["size"], seed=0, keep=decimate(open_model, cfg["n_vertices"])[1], chunk=6,
                         progress=False)
    probe = curve_eval({k: v[:2] for k, v in corpus.items()})

    def run(workers, cache):
        monkeypatch.setenv("FACELIB_CACHE", str(tmp_path / cache))
        c = dict(cfg, workers=workers)
        s1 = stage1_networks(open_model, c, corpus, [0, 1], "cpu", "ci", progress=False, eval_fn=probe, eval_every=2)
        runs = {(s, C): dict(stage1=s1[s][0], seed=s, n_corrective=C, name=f"abl_C{C}") for s in (0, 1) for C in (0, 4)}
        return s1, stage2_networks(open_model, c, corpus, "ci", runs, progress=False, eval_fn=probe, eval_every=2)

    def records(hist):  # the losses and held-out points, not the seconds
        return [{k: v for k, v in r.items() if k != "train_s"} for r in hist]

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    with cpu_threads(1):
        alone = run(1, "alone")
    rng = torch.get_rng_state()
    side = run(2, "side")
    assert (torch.get_num_threads(), numba.get_num_threads()) == (threads, numba_threads)
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(side[0]) == [0, 1] and list(side[1]) == [(0, 0), (0, 4), (1, 0), (1, 4)]
    for s in (0, 1):
        (a, _, ha), (b, _, hb) = alone[0][s], side[0][s]
        assert same(a, b) and records(ha) == records(hb) and len(hb) == 4 and "eval" in hb[-1]
        assert a.pretrain_s > 0 and b.pretrain_s > 0  # each side-by-side run pre-trained its own branch
    for key in alone[1]:
        (a, ha), (b, hb) = alone[1][key], side[1][key]
        assert same(a, b) and records(ha) == records(hb) and len(hb) == 3 and b.n_corrective == key[1]
    assert not same(side[0][0][0], side[0][1][0])  # the seeds differ
    # the side-by-side checkpoints are the finished runs: loaded, not trained again
    again = run(2, "side")
    assert all(same(again[1][k][0], side[1][k][0]) and again[1][k][1] == side[1][k][1] for k in side[1])
    with pytest.raises(ValueError, match="workers"):
        stage1_networks(open_model, dict(cfg, workers=0), corpus, [0, 1], "cpu", "ci")
    with pytest.raises(ValueError, match="threads"):
        stage1_networks(open_model, dict(cfg, workers=2, threads=None), corpus, [0, 1], "cpu", "ci")
    with pytest.raises(ValueError, match="dropout"):  # AlexNet's dropout masks come from the global generator
        stage1_networks(open_model, dict(cfg, workers=2, encoder="alexnet", encoder_kwargs={}), corpus, [0, 1], "cpu", "ci")
    with pytest.raises(ValueError, match="unknown or missing keys"):
        stage2_networks(open_model, cfg, corpus, "ci", {"x": dict(stage1=side[0][0][0], seed=0, C=4)})
