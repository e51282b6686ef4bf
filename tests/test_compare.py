"""facelib.eval.compare: methods scored alike on the same frames (the fitting chapter's measures)."""

import pytest
import torch

from facelib.eval import compare
from facelib.model.params import ParamLayout
from facelib.data.wild import wild_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def frames(open_model):
    return wild_batch(open_model, 2, seed=12, size=64)


def test_now_mm_is_zero_for_the_truth_and_orders_the_references(open_model, frames):
    m = open_model
    gt = frames["verts_model"]
    assert compare.now_mm(m, gt, m.triangles, m.landmarks, gt).max() < 1e-6
    ref = compare.reference_points(m, frames)
    assert (ref["true parameters (floor)"] < ref["mean face"]).all()
    # the floor is the wild faces' detail: the true shape and expression without it
    p = ParamLayout.from_model(m).unpack(frames["theta"])
    true = m.geometry(p["shape"], p["expression"])
    assert torch.allclose(ref["true parameters (floor)"], compare.now_mm(m, true, m.triangles, m.landmarks, gt))


def test_frame_photometric_counts_only_the_covered_face(frames):
    img, lm = frames["image"], frames["landmarks"]
    full = torch.ones(img.shape[0], *img.shape[-2:], dtype=torch.bool)
    assert compare.frame_photometric(img, img, full, lm).max() == 0
    other = img.clone()
    other[:, :, :, :] = 0
    e = compare.frame_photometric(img, other, full, lm)
    assert (e > 0).all()
    assert torch.isnan(compare.frame_photometric(img, other, ~full, lm)).all()  # nothing covered: no number


def test_fit_curve_scores_every_trace_point(open_model, frames):
    res = compare.fit_frames(open_model, frames, iters=(6, 2), trace_every=3, progress=False)
    curve = compare.fit_curve(open_model, frames, res, start_seconds=0.5)
    assert [p["iteration"] for p in curve] == [i for i, _, _ in res.trace]
    assert all(p["seconds_per_face"] >= 0.5 for p in curve)
    assert all(p["now_mm"].shape == (2,) and torch.isfinite(p["now_mm"]).all() for p in curve)
    assert torch.isfinite(curve[-1]["photometric_8bit"]).all()
