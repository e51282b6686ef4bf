"""Caches and checkpoints: writes safe under concurrent writers, truncated files rebuilt, and a MoFA
checkpoint that holds more steps than asked for never overwritten."""

import multiprocessing
import os

import pytest
import torch

import facelib.model.open_model
from facelib.model.facemodel import FaceModel
from facelib.mofa import make_corpus, train
from facelib.mofa.data import _save
from test_mofa import net_for, small  # noqa: F401 (small is a fixture)
from test_multilevel import grid_model

WRITES = 15  # saves per process: with one shared temporary name, 2 of 2 trials failed on the first


# ------------------------------------------------------------------------------ concurrent writers
# The children are forked: they only write (NumPy, zipfile, pickle), no torch kernels, which could wait
# forever on an OpenMP pool the parent started before the fork.
def _save_model(path, barrier, model):
    barrier.wait()
    for _ in range(WRITES):
        model.save(path)


def _save_checkpoint(path, barrier, model):
    obj = {"net": {"w": torch.arange(1000.0)}, "step": 3}
    barrier.wait()
    for _ in range(WRITES):
        _save(path, obj)


def _build_open_model(path, barrier, model):
    """``open_model()`` into an empty cache, with a tiny stand-in for the (10 s) builder."""
    os.environ["FACELIB_CACHE"] = str(path.parent)
    facelib.model.open_model.build_open_model = lambda progress=True: model
    barrier.wait()
    facelib.model.open_model.open_model(progress=False)


@pytest.mark.parametrize("writer", [_save_model, _save_checkpoint, _build_open_model])
def test_two_processes_write_the_same_file_at_once(tmp_path, writer):
    """Both writers succeed, the file loads, and no temporary file is left."""
    model = grid_model(dtype=torch.float32)
    path = tmp_path / "cache" / ("m.npz" if writer is not _save_checkpoint else "ck.pt")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=writer, args=(path, barrier, model)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    files = sorted(f.name for f in (tmp_path / "cache").iterdir())
    if writer is _save_checkpoint:
        assert files == ["ck.pt"]
        assert torch.load(path, weights_only=True)["step"] == 3
    else:
        assert len(files) == 1 and files[0].endswith(".npz")
        back = FaceModel.load(tmp_path / "cache" / files[0])
        torch.testing.assert_close(back.shape_basis, model.shape_basis, rtol=0, atol=0)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot be pickled")


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(RuntimeError, match="cannot be pickled"):
        _save(path, {"f": _Unpicklable()})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- truncated caches and steps
def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_checkpoint_with_more_steps_is_neither_retrained_nor_overwritten(small, tmp_path):  # noqa: F811
    model, _, c = small
    ck = tmp_path / "s1.pt"
    a = net_for(model)
    train(a, c, 3, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    before = ck.read_bytes()
    with pytest.raises(ValueError, match=r"s1\.pt holds 3 steps of this run, more than the steps=2 asked for"):
        train(net_for(model), c, 2, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    assert ck.read_bytes() == before
    b = net_for(model)
    assert len(train(b, c, 3, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)) == 3
    assert _same_weights(a, b)  # the 3-step checkpoint loads without training


@pytest.mark.parametrize("cut", [0, 100, 0.5])
def test_truncated_checkpoint_is_trained_anew(small, tmp_path, cut):  # noqa: F811
    model, _, c = small
    ck = tmp_path / "s1.pt"
    ref = net_for(model)
    train(ref, c, 2, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    data = ck.read_bytes()
    ck.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    b = net_for(model)
    with pytest.warns(UserWarning, match=r"s1\.pt: unreadable checkpoint \(truncated or corrupt\?\)"):
        hist = train(b, c, 2, 1, lr=1e-3, batch=2, seed=3, checkpoint=ck, progress=False)
    assert len(hist) == 2
    for p, q in zip(ref.state_dict().values(), b.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6)  # the same run as the first
    assert torch.load(ck, weights_only=False)["step"] == 2  # and a good checkpoint again


@pytest.mark.parametrize("cut", [0, 50, 0.5])
def test_truncated_corpus_cache_is_rendered_again(open_model, tmp_path, cut):
    cache = tmp_path / "corpus.pt"
    a = make_corpus(open_model, 2, 32, seed=5, chunk=2, progress=False, cache=cache)
    data = cache.read_bytes()
    cache.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.warns(UserWarning, match=r"corpus\.pt: unreadable corpus cache"):
        b = make_corpus(open_model, 2, 32, seed=5, chunk=2, progress=False, cache=cache)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(cache, weights_only=True)["_key"][:4] == [2, 32, 5, None]  # replaced by a good file


def test_corpus_cache_of_another_face_model_is_not_reused(open_model, tmp_path):
    import copy

    cache = tmp_path / "corpus.pt"
    a = make_corpus(open_model, 2, 32, seed=5, chunk=2, progress=False, cache=cache)
    moved = copy.copy(open_model)
    moved.mean_shape = open_model.mean_shape + torch.tensor([0.0, 0.0, 3.0])  # another model, same sizes
    b = make_corpus(moved, 2, 32, seed=5, chunk=2, progress=False, cache=cache)
    shift = (b["verts_model"] - a["verts_model"]).mean((0, 1))
    assert torch.allclose(shift, torch.tensor([0.0, 0.0, 3.0]), atol=1e-3)  # drawn again from the new model
    from facelib.mofa.data import _corpus_key

    key = torch.load(cache, weights_only=True)["_key"]
    assert key == _corpus_key(moved, 2, 32, 5, None) != _corpus_key(open_model, 2, 32, 5, None)
