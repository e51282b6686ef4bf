"""MoFA's encoder with the detected landmarks as a second input (issue 16): the input's checks, the
pre-training targets against the decoder, the branch's pre-training, the stage-1 -> stage-2 hand-over
and the TrainedNetwork crop's landmarks."""

import pytest
import torch

from facelib.data.corpus import landmark_features
from facelib.mofa import MoFA, build_mofa, encoder_hz, evaluate, landmark_outputs, make_corpus, pretrain_branch
from facelib.mofa.multilevel import decimate
from facelib.model.params import ParamLayout, sample_sec5

SIZE = 64


@pytest.fixture(scope="module")
def small(open_model):
    model, keep = decimate(open_model, 400)
    corpus = make_corpus(open_model, 4, SIZE, seed=3, keep=keep, chunk=4, progress=False)
    return model, keep, corpus


def net_for(model, C=0, landmarks=68):
    return MoFA(model, SIZE, "alexnet", width=0.125, n_corrective=C, seed=0, landmarks=landmarks)


def test_landmark_input_is_required_checked_and_read(small):
    model, _, c = small
    net = net_for(model).eval()
    img, lm = c["image"][:2], c["landmarks"][:2]
    assert net.config["landmarks"] == 68 and "landmarks" not in net_for(model, landmarks=0).config
    with pytest.raises(ValueError, match="landmarks=..."):
        net.encode(img)
    with pytest.raises(ValueError, match=r"expected \(2, 68, 2\)"):
        net.encode(img, lm[:, :10])
    with pytest.raises(ValueError, match="0 \\(the image alone\\) or 68"):
        net_for(model, landmarks=5)
    with torch.no_grad():  # the branch's features join the code heads' input: other landmarks, another code
        a, b = net.encode(img, lm), net.encode(img, lm.flip(0))
    assert not torch.allclose(a, b)
    # moving and zooming the landmarks together changes nothing: they are read box-normalised
    with torch.no_grad():
        assert torch.allclose(net.encode(img, lm * 1.5 + 3.0), a, atol=1e-5)
    # an image-only network ignores them
    plain = net_for(model, landmarks=0).eval()
    with torch.no_grad():
        assert torch.equal(plain.encode(img, lm), plain.encode(img))


def test_landmark_outputs_decode_to_the_faces_geometry(small, open_model):
    """The pre-training targets, read as a code, give the decoder exactly the faces' rotation, shape and
    expression (brute force: the full model's geometry at the kept vertices)."""
    model, keep, _ = small
    net = net_for(model)
    theta = sample_sec5(open_model, 3, seed=7)
    cols, to_output = landmark_outputs(net, open_model)
    code = net.code_offset.expand(3, -1).clone()
    code[:, cols] = net.code_offset[cols] + net.code_scale[cols] * to_output(theta)
    parts = net.layout.unpack(code)
    p = ParamLayout.from_model(open_model).unpack(theta)
    assert torch.allclose(parts["rotation"], p["rotation"].float(), atol=1e-6)
    v = net.decoder(parts).v_b
    ref = open_model.geometry(p["shape"], p["expression"])[:, keep]
    assert torch.allclose(v.double(), ref.double(), atol=1e-3)


def test_pretrain_branch_trains_the_branch_only_and_is_cached(small, open_model, tmp_path, monkeypatch):
    model, _, c = small
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path))
    net = net_for(model)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pretrain_branch(net, open_model, 40, 32, seed=1, progress=False)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("encoder.landmark_branch.") for k in changed)
    assert list(tmp_path.rglob("branch-*.pt"))  # cached ...
    again = net_for(model)
    pretrain_branch(again, open_model, 40, 32, seed=1, progress=False)  # ... and loaded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(net.landmark_branch.state_dict().values(),
                                                 again.landmark_branch.state_dict().values()))
    cols, _ = landmark_outputs(net, open_model)
    with torch.no_grad():  # the head writes only the geometry entries of the code
        out = net.landmark_branch.head(net.landmark_branch(landmark_features(c["landmarks"])))
    other = torch.ones(out.shape[1], dtype=torch.bool)
    other[cols] = False
    assert out[:, other].abs().max() == 0 and out[:, cols].abs().max() > 0
    with pytest.raises(ValueError, match="no landmark input"):
        pretrain_branch(net_for(model, landmarks=0), open_model, 5, 8, seed=0)


def test_stage2_network_keeps_the_stage1_code_with_landmarks(small):
    model, _, c = small
    s1 = net_for(model)
    with torch.no_grad():  # a trained branch head (the zero start would hide a wrong copy)
        s1.landmark_branch.head.weight.normal_(0, 0.01)
        s1.landmark_branch.head.bias.normal_(0, 0.01)
    s2 = net_for(model, C=5)
    s2.load_stage1(s1.state_dict())
    img, lm = c["image"][:2], c["landmarks"][:2]
    with torch.no_grad():
        c1, c2 = s1.eval().encode(img, lm), s2.eval().encode(img, lm)
    n = s1.layout.size
    assert torch.allclose(c1, c2[:, :n], atol=1e-6)
    assert s2.landmark_branch.head.weight[n:].abs().max() == 0  # the correctives' read-out starts at 0
    rebuilt, _ = build_mofa(model, s2.config)
    assert rebuilt.n_landmarks == 68


def test_evaluate_and_speed_feed_the_landmarks(small):
    _, _, c = small
    net = net_for(small[0])
    ev = evaluate(net, c)
    assert ev["base"]["geometric_mm"].shape == (4,)
    assert encoder_hz(net, 2, SIZE, repeats=1, warmup=0) > 0


def test_trained_mofa_crop_carries_its_landmarks_in_crop_pixels():
    """The crop's landmarks are the frame's, mapped into the crop's pixels (brute force: a bright pixel
    at a landmark lands at that landmark's crop position)."""
    from facelib.networks import TrainedNetwork

    t = TrainedNetwork(method="mofa", name="mofa", net=None, model=None, size=32)
    g = torch.Generator().manual_seed(0)
    lm = torch.rand(1, 68, 2, generator=g) * 40 + 40
    image = torch.zeros(1, 3, 128, 128)
    x, y = int(lm[0, 30, 0]), int(lm[0, 30, 1])
    lm[0, 30] = torch.tensor([x + 0.5, y + 0.5])  # the centre of the bright square below
    image[0, :, y - 3:y + 4, x - 3:x + 4] = 1.0
    c = t.crop(image, lm)
    assert c["landmarks"].shape == (1, 68, 2)
    bright = (c["crop"][0, 0] > 0.5).nonzero().float().mean(0).flip(0) + 0.5  # (x, y) in crop pixels
    assert torch.allclose(bright, c["landmarks"][0, 30], atol=0.5)


def test_landmark_geometry_takes_shape_and_expression_from_the_branch_alone(small):
    """With ``landmark_geometry`` the shape and expression codes are the branch's read-out (brute force:
    the head on the features, whatever the image), the image path gets no gradient for them, and the
    branch is not trained by the self-supervised loss."""
    model, _, c = small
    net = MoFA(model, SIZE, "alexnet", width=0.125, seed=0, landmarks=68, landmark_geometry=True).eval()
    with torch.no_grad():
        net.landmark_branch.head.weight.normal_(0, 0.01)
    img, lm = c["image"][:2], c["landmarks"][:2]
    code = net.encode(img, lm)
    b = net.landmark_branch
    with torch.no_grad():
        r = net.code_offset + net.code_scale * b.head(b(landmark_features(lm)))
    geo = torch.cat([torch.arange(net.layout.size)[net.layout[k]] for k in ("shape", "expression")])
    assert torch.allclose(code[:, geo], r[:, geo], atol=1e-6)
    assert torch.allclose(net.encode(torch.rand_like(img), lm)[:, geo], r[:, geo], atol=1e-6)  # not the image's
    assert not torch.allclose(net.encode(torch.rand_like(img), lm)[:, net.layout["reflectance"]],
                              code[:, net.layout["reflectance"]])
    assert not any(p.requires_grad for p in b.parameters())
    code.square().sum().backward()
    w = net.encoder.last.heads["base"].weight.grad
    assert w[geo].abs().max() == 0 and w[net.layout["reflectance"]].abs().max() > 0
    with pytest.raises(ValueError, match="needs the landmark input"):
        MoFA(model, SIZE, "alexnet", width=0.125, landmark_geometry=True)


def test_landmark_variants_markdown_has_a_read_out_row_per_prior():
    """Chapter 5's table: one stage-1 row per variant present, then the read-out before stage 1 of each
    branch prior (the Sec. 5 prior's and the wider one), then the mean face."""
    from facelib.mofa import landmark_variants_markdown

    part = lambda g: {"geometric_mm_ratio": g, "now_mm_ratio": g, "photometric_rgb": 0.15, "landmark_px": 1.2}
    run = lambda v, s, g0, g1: {"variant": v, "seed": s, "stage1": part(g1), "before_stage1": part(g0), "train_s": 10.0}
    record = {"runs": [run("geometry from the landmarks", 0, 0.69, 0.69),
                       run("geometry from the landmarks, prior x2", 0, 0.62, 0.63)]}
    lines = landmark_variants_markdown(record).splitlines()
    assert len(lines) == 2 + 2 + 2 + 1
    assert "landmarks, branch on the prior |" in lines[4] and "0.69 ± 0.00" in lines[4]
    assert "landmarks, branch on a prior twice as wide |" in lines[5] and "0.62 ± 0.00" in lines[5]
    assert lines[6].startswith("| *mean face")
