"""facelib.fit: analysis-by-synthesis fitting on synthetic faces rendered by facelib."""

import pytest
import torch

from facelib.fit import (FIT_WEIGHTS, e_landmark, e_photo_dense, e_prior, fit, fit_layout, from_fit_layout,
                         init_illumination, initial_theta, render_fit, to_fit_layout)
from facelib.eval.metrics import now_error
from facelib.model.params import ParamLayout, sample_sec5
from facelib.render import landmarks_2d, render

SIZE = 96


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def synthetic(open_model):
    """Two Sec. 5 faces (seed 3: one near the mean, one 10 mm from it), their images and true landmarks."""
    m = open_model
    theta = sample_sec5(m, 2, seed=3)
    with torch.no_grad():
        r = render(m, theta, SIZE, outputs=("screen",))
    return {"theta": theta, "image": r.image, "landmarks": landmarks_2d(m, r.screen)}


def geometry(m, theta_fit):
    p = fit_layout(m).unpack(theta_fit)
    return m.geometry(p["shape"], p["expression"])


def shared_error(m, verts, gt):
    """The NoW-style error (mm, mean over the face-mask points of the truth) of ``verts`` against ``gt``."""
    face = m.masks["face"]
    return now_error(verts, m.triangles, verts[:, m.landmarks], gt[:, face], gt[:, m.landmarks]).distance.mean(1)


@pytest.fixture(scope="module")
def fitted(open_model, synthetic):
    torch.manual_seed(123)  # the fit must not depend on the global generator
    return fit(open_model, synthetic["image"], synthetic["landmarks"], iters=(150, 30), seed=0, progress=False)


def test_fit_recovers_geometry_better_than_the_mean_face(open_model, synthetic, fitted):
    m = open_model
    gt = geometry(m, to_fit_layout(m, synthetic["theta"]))
    mean = m.mean_shape.expand(2, -1, -1)
    e_mean = shared_error(m, mean, gt)
    e_fit = shared_error(m, geometry(m, fitted.theta), gt)
    # measured (issue 21): mean face 1.67 / 3.54 mm, fit 0.92 / 1.78 mm (150 + 30 iterations, 96 px)
    assert (e_fit < 0.8 * e_mean).all(), (e_fit, e_mean)
    # the pose: within 8.6 degrees of the truth (pitch trades off against shape on the landmarks)
    rot = fitted.theta[:, fitted.layout["rotation"]]
    assert (rot - synthetic["theta"][:, :3]).abs().max() < 0.15


def test_fit_energy_decreases(fitted):
    E, st = fitted.energy, fitted.stage
    assert E.shape == (180, 2) and st.tolist() == [1] * 150 + [2] * 30
    s1, s2 = E[st == 1], E[st == 2]
    assert (s1[-1] < 0.25 * s1[0]).all()  # landmarks + pose, then shape and expression
    assert (s2[-10:].mean(0) < s2[0]).all()  # the whole energy goes down in stage 2
    assert torch.isnan(fitted.terms["photo"][st == 1]).all() and torch.isfinite(fitted.terms["photo"][st == 2]).all()
    assert fitted.seconds > 0


def test_fit_from_the_true_parameters_stays_there(open_model, synthetic):
    """Started at the truth (a perfect network estimate), the fit barely moves the geometry."""
    m = open_model
    res = fit(m, synthetic["image"][:1], synthetic["landmarks"][:1], theta0=synthetic["theta"][:1],
              iters=(0, 8), progress=False)
    gt = geometry(m, to_fit_layout(m, synthetic["theta"][:1]))
    assert shared_error(m, geometry(m, res.theta), gt).max() < 0.3
    assert res.terms["photo"][0, 0] < 0.02 and res.terms["landmark"][0, 0] < 0.05


def test_fit_repeats_with_a_seed(open_model, synthetic):
    args = (open_model, synthetic["image"][:1], synthetic["landmarks"][:1])
    a = fit(*args, iters=(20, 0), seed=5, progress=False)
    b = fit(*args, iters=(20, 0), seed=5, progress=False)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.energy, b.energy)


def test_layout_and_render_fit_match_the_renderer(open_model, synthetic):
    m = open_model
    th = to_fit_layout(m, synthetic["theta"])
    assert th.shape == (2, ParamLayout.from_model(m).size + 3) and (th[:, 3:6] == 0).all()
    assert torch.equal(to_fit_layout(m, th), th)
    assert torch.equal(from_fit_layout(m, th), synthetic["theta"])  # back to Eq. 1, the translation left out
    moved = th.clone()
    moved[:, 3:6] = 5.0
    assert torch.equal(from_fit_layout(m, moved), synthetic["theta"])
    with torch.no_grad():
        a = render_fit(m, th, SIZE).image
        b = render(m, synthetic["theta"], SIZE).image
        assert torch.equal(a, b)
        # a translation along x moves the face right by focal * dx / depth pixels
        th2 = th.clone()
        th2[:, 3] = 10.0
        sa = render_fit(m, th, SIZE, outputs=("screen",)).screen
        sb = render_fit(m, th2, SIZE, outputs=("screen",)).screen
    shift = (sb[..., 0] - sa[..., 0])[:, m.landmarks[30]]  # nose tip
    from facelib.render import face_camera
    expect = face_camera(SIZE).focal * 10.0 / sa[:, m.landmarks[30], 2]
    assert torch.allclose(shift, expect, rtol=0.02)


def test_initial_theta_centres_the_mean_face_on_the_landmarks(open_model, synthetic):
    m = open_model
    th = initial_theta(m, synthetic["landmarks"], SIZE)
    with torch.no_grad():
        s = render_fit(m, th, SIZE, outputs=("screen",)).screen
    u = landmarks_2d(m, s)
    assert (u.mean(1) - synthetic["landmarks"].mean(1)).norm(dim=-1).max() < 1.0  # px
    spread = u.std(1).norm(dim=-1) / synthetic["landmarks"].std(1).norm(dim=-1)
    assert ((spread - 1).abs() < 0.02).all()


def test_init_illumination_recovers_the_shading(open_model, synthetic):
    """With the true face and a wrong light, the closed-form light reproduces the image (the SH
    coefficients themselves are poorly determined by a face's half sphere of normals)."""
    m = open_model
    th = to_fit_layout(m, synthetic["theta"])
    lay = fit_layout(m)
    start = th.clone()
    start[:, lay["illumination"]] = 0.0
    start[:, lay["illumination"].start:lay["illumination"].start + 3] = 0.5
    got = init_illumination(m, start, synthetic["image"], SIZE)
    assert torch.equal(got[:, :lay["illumination"].start], start[:, :lay["illumination"].start])

    def photo(t):
        with torch.no_grad():
            r = render_fit(m, t, SIZE)
        return e_photo_dense(r.image, synthetic["image"], r.input_mask)

    before, after = photo(start), photo(got)
    assert (after < 0.01).all() and (before > 0.1).all(), (before, after)


# ------------------------------------------------------------------------------ the energy terms
def test_energy_terms_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    # E_photo: a known colour error over a mask, and its gradient
    target = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    image = target.clone()
    image[0, :, 0, 0] = torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64)  # distance 0.5
    w = torch.zeros(1, 4, 4, dtype=torch.bool)
    w[0, 0, 0] = w[0, 1, 1] = True
    assert e_photo_dense(image, target, w).item() == pytest.approx(0.25, abs=1e-4)  # eps inside the sqrt
    assert e_photo_dense(image, target, torch.zeros_like(w)).item() == 0.0
    x = torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64)
    m = torch.rand(2, 5, 5, generator=g) > 0.3
    assert torch.autograd.gradcheck(lambda a: e_photo_dense(a, y, m), (x,))
    # E_prior: Eq. 11 with its weights, and its gradient
    s, e, r = (torch.randn(2, n, generator=g, dtype=torch.float64, requires_grad=True) for n in (4, 3, 5))
    want = s.square().sum(1) + FIT_WEIGHTS.expression * e.square().sum(1) + FIT_WEIGHTS.rstd * r.square().sum(1)
    assert torch.allclose(e_prior(s, e, r), want)
    assert torch.autograd.gradcheck(e_prior, (s, e, r))


def test_e_landmark_value_sliding_and_gradient():
    g = torch.Generator().manual_seed(1)
    B, V = 2, 12
    v_cam = torch.randn(B, V, 3, generator=g, dtype=torch.float64) * 10 + torch.tensor([0, 0, -500.0],
                                                                                          dtype=torch.float64)
    focal, pp = 500.0, torch.tensor([48.0, 48.0], dtype=torch.float64)
    u = torch.stack([pp[0] + focal * v_cam[..., 0] / -v_cam[..., 2],
                     pp[1] - focal * v_cam[..., 1] / -v_cam[..., 2]], -1).requires_grad_(True)
    ids = torch.tensor([0, 1, 2, 3])
    sliding = torch.tensor([True, False, False, False])
    cand = torch.tensor([[0, 7, 8, -1]])  # the sliding point may move to vertex 7 or 8
    f = u.detach()[:, [8, 1, 2, 3]] + 0.0  # the detection lies exactly on candidate 8's ray
    f[:, 1:] += 1.0  # the fixed points are off by (1, 1) px
    e = e_landmark(f, u, v_cam, ids, sliding, cand, focal, pp, image_height=96)
    want = (3 * 2 * (100 / 96) ** 2) / 4  # three points off by sqrt(2) px, in % of 96 px, mean over 4
    assert torch.allclose(e, torch.full((B,), want, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a: e_landmark(f, a, v_cam, ids, sliding, cand, focal, pp, 96), (u,))
    conf = torch.tensor([[1.0, 0.0, 0.0, 0.5]], dtype=torch.float64).expand(B, 4)  # Eq. 10's c_f
    e = e_landmark(f, u, v_cam, ids, sliding, cand, focal, pp, 96, conf)
    assert torch.allclose(e, torch.full((B,), want / 6, dtype=torch.float64))


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors(open_model, synthetic):
    m, img, lm = open_model, synthetic["image"], synthetic["landmarks"]
    with pytest.raises(ValueError, match=r"image has shape \(3, 96, 96\); expected \(B, 3, H, W\)"):
        fit(m, img[0], lm, progress=False)
    with pytest.raises(ValueError, match=r"landmarks have shape \(2, 5, 2\); expected \(2, 68, 2\)"):
        fit(m, img, lm[:, :5], progress=False)
    bad = lm.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="landmarks contain NaN"):
        fit(m, img, bad, progress=False)
    with pytest.raises(ValueError, match="iters must be"):
        fit(m, img, lm, iters=(10,), progress=False)
    with pytest.raises(ValueError, match="iters must be"):
        fit(m, img, lm, iters=(10, -1), progress=False)
    with pytest.raises(ValueError, match=r"theta0 has 7 entries per face; expected \d+ \(Eq. 1 layout"):
        fit(m, img, lm, theta0=torch.zeros(2, 7), progress=False)
    with pytest.raises(ValueError, match="theta0 has 1 faces but landmarks 2"):
        fit(m, img, lm, theta0=synthetic["theta"][:1], iters=(0, 0), progress=False)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 5, 5\)"):
        fit(m, img, lm, mask=torch.ones(2, 5, 5, dtype=torch.bool), progress=False)
    with pytest.raises(ValueError, match=r"confidence has shape \(17,\); expected \(68,\)"):
        fit(m, img, lm, confidence=torch.ones(17), progress=False)
    with pytest.raises(ValueError, match="finite non-negative"):
        fit(m, img, lm, confidence=-torch.ones(68), progress=False)
    with pytest.raises(ValueError, match="must be a FaceModel"):
        fit("open", img, lm, progress=False)
    with pytest.raises(ValueError, match="unknown fit weights"):
        FIT_WEIGHTS.replace(photometric=1.0)


def test_trace_records_the_fit_as_it_goes(open_model, synthetic):
    """``trace_every``: the parameters a fit stopped at that iteration would return, with the time so far."""
    args = (open_model, synthetic["image"][:1], synthetic["landmarks"][:1])
    res = fit(*args, iters=(10, 3), seed=2, progress=False, trace_every=4)
    its = [i for i, _, _ in res.trace]
    assert its == [0, 4, 5, 8, 10, 12, 13]  # every 4th iteration and each stage's end (5, 10, 13)
    secs = [s for _, s, _ in res.trace]
    assert secs == sorted(secs) and secs[-1] <= res.seconds
    assert torch.equal(res.trace[-1][2], res.theta)  # the end of the last stage is the result
    plain = fit(*args, iters=(10, 3), seed=2, progress=False)
    assert torch.equal(plain.theta, res.theta) and plain.trace == []  # tracing changes nothing
    with pytest.raises(ValueError, match="trace_every"):
        fit(*args, iters=(1, 0), progress=False, trace_every=-1)


def test_an_eq1_start_is_placed_on_the_landmarks(open_model, synthetic):
    """A network's estimate (Eq. 1 layout, no translation) is moved onto the landmarks like the mean
    face; a start in the fit's own layout is taken as it is."""
    m = open_model
    lm = synthetic["landmarks"][:1]
    th = initial_theta(m, lm, SIZE, theta0=synthetic["theta"][:1])
    lay = fit_layout(m)
    assert th[0, lay["translation"]].abs().max() < 0.5  # the truth's own landmarks: it stays (mm)
    shifted = initial_theta(m, lm + torch.tensor([6.0, 0.0]), SIZE, theta0=synthetic["theta"][:1])
    with torch.no_grad():
        r = render_fit(m, shifted, SIZE, outputs=("screen",))
    centre = landmarks_2d(m, r.screen).mean(1) - lm.mean(1)
    assert abs(float(centre[0, 0]) - 6.0) < 0.3 and abs(float(centre[0, 1])) < 0.3
    own = to_fit_layout(m, synthetic["theta"][:1])
    own[:, lay["translation"]] = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(initial_theta(m, lm, SIZE, theta0=own), own)
