"""``facelib reconstruct``: a real photo in, a mesh, an albedo, an overlay and the parameters out."""

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facelib.cli import main

pytest.importorskip("dlib", reason="the landmark detector is in the photos extra: pip install -e '.[photos]'")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sample_photo(tmp_path):
    """skimage's astronaut when scikit-image is installed, else matplotlib's Grace Hopper (a real
    photo that ships with matplotlib, a dependency of facelib)."""
    try:
        from skimage import data
    except ImportError:
        import matplotlib.cbook as cbook

        return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def reconstruction(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reconstruct")
    photo = sample_photo(tmp)
    out = tmp / "out"
    rc = main(["reconstruct", str(photo), "--out", str(out), "--size", "96", "--iters", "120,15", "--quiet"])
    return {"rc": rc, "out": out, "photo": photo}


def test_reconstruct_writes_every_file(reconstruction, open_model):
    assert reconstruction["rc"] == 0
    out = reconstruction["out"]
    assert sorted(p.name for p in out.iterdir()) == ["albedo.png", "mesh.obj", "mesh.ply", "overlay.png",
                                                       "params.json"]
    m = open_model
    # the OBJ parses: one coloured vertex line per vertex, one face line per triangle, 1-based indices
    v, f = [], []
    for line in (out / "mesh.obj").read_text().splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:]])
        elif line.startswith("f "):
            f.append([int(x) for x in line.split()[1:]])
    v, f = np.array(v), np.array(f)
    assert v.shape == (m.n_vertices, 6) and f.shape == (m.n_triangles, 3)
    assert f.min() == 1 and f.max() == m.n_vertices
    assert np.isfinite(v).all() and (v[:, 3:] >= 0).all() and (v[:, 3:] <= 1).all()
    assert 120 < np.ptp(v[:, 0]) < 200  # mm: a head-sized face
    # the PLY: a binary header with coloured vertices, then the data
    ply = (out / "mesh.ply").read_bytes()
    head = ply[:ply.index(b"end_header\n")].decode()
    assert f"element vertex {m.n_vertices}" in head and "property uchar red" in head
    assert len(ply) == len(head) + len("end_header\n") + m.n_vertices * 15 + m.n_triangles * 13
    x0 = struct.unpack_from("<f", ply, len(head) + len("end_header\n"))[0]
    assert x0 == pytest.approx(v[0, 0], abs=1e-3)
    # the overlay: the photo, the reconstruction over it, the reconstruction alone, each the photo's size
    W, H = Image.open(reconstruction["photo"]).size
    over = np.asarray(Image.open(out / "overlay.png"))
    assert over.shape == (H, 3 * W, 3)
    photo = np.asarray(Image.open(reconstruction["photo"]).convert("RGB"))
    assert np.abs(over[:, :W].astype(int) - photo).max() <= 1  # left panel: the photo itself
    changed = np.abs(over[:, W:2 * W].astype(int) - photo).sum(-1) > 0
    assert 0.02 < changed.mean() < 0.6  # the face is drawn over part of it (astronaut: ~5%, Grace Hopper: ~10%)
    assert Image.open(out / "albedo.png").size == (W, H)


def test_reconstruct_params_and_landmarks(reconstruction, open_model):
    p = json.loads((reconstruction["out"] / "params.json").read_text())
    m = open_model
    assert p["method"] == "fit" and p["model"] == "open" and p["faces_found"] >= 1
    # dlib finds two faces in the astronaut photo: the largest is reconstructed, and the note says so
    assert (p["faces_found"] > 1) == any("reconstructing the largest" in n for n in p["notes"])
    assert [n for n, _ in p["layout"]] == ["rotation", "translation", "shape", "expression", "reflectance",
                                           "illumination"]
    assert len(p["theta"]["shape"]) == m.n_shape and len(p["theta"]["illumination"]) == 27
    assert np.array(p["landmarks_detected_px"]).shape == (68, 2)
    # the mesh's projected landmarks lie near the detected ones (measured: 2-4 px in a 96 px crop of a
    # ~265 px face box, i.e. ~1 crop pixel; the jaw points slide along the contour, so the inner 51)
    assert p["landmark_error_px"]["inner_51"] < 8.0
    assert p["fit"]["seconds"] > 0


def test_reconstruct_bad_photos_leave_nothing(tmp_path, capsys, monkeypatch):
    import facelib.mofa
    import facelib.networks

    monkeypatch.setattr(facelib.networks, "networks_dir", lambda: tmp_path / "networks")  # no trained networks
    monkeypatch.setattr(facelib.mofa, "checkpoint_dir", lambda: tmp_path / "no_checkpoints")
    out = tmp_path / "out"
    cases = []
    (tmp_path / "text.jpg").write_text("not a photo")
    cases.append(("text.jpg", 2, "not an image file"))
    import matplotlib.cbook as cbook
    data = open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    cases.append(("cut.jpg", 2, "unreadable image"))
    Image.fromarray(np.full((200, 240, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    cases.append(("grey.png", 2, "no face found in the 240 x 200 image"))
    cases.append(("missing.png", 1, "No such file"))
    for name, rc, msg in cases:
        assert main(["reconstruct", str(tmp_path / name), "--out", str(out), "--quiet"]) == rc, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("facelib: error:") and msg in err[0], (name, err)
        assert not out.exists()
    for method, chapter in (("mofa", "chapter 5"), ("inversefacenet", "chapters 3 and 4"), ("coarse", "chapter 7")):
        assert main(["reconstruct", str(tmp_path / "grey.png"), "--method", method, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no trained" in err[0] and chapter in err[0] and "make book" in err[0], err
    with pytest.raises(SystemExit):
        main(["reconstruct", str(tmp_path / "grey.png"), "--iters", "10"])
    assert not out.exists()


def test_read_photo_converts_and_says_so(tmp_path):
    from facelib.data.photos import read_photo

    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 30), 9, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((40, 30), 65535 // 2, np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.zeros((30, 2100, 3), np.uint8)).save(tmp_path / "wide.png")
    x, notes = read_photo(tmp_path / "grey.png")
    assert x.shape == (40, 30, 3) and (x == 200).all() and notes == ["greyscale image (mode L) converted to RGB"]
    x, notes = read_photo(tmp_path / "rgba.png")
    assert (x == rgb).all() and notes == ["image with an alpha channel (mode RGBA): alpha dropped"]
    x, notes = read_photo(tmp_path / "deep.png")
    assert (x == 127).all() and notes == ["16-bit greyscale image converted to 8-bit RGB"]  # 32767 / 257
    x, notes = read_photo(tmp_path / "wide.png")
    assert x.shape == (29, 2048, 3) and notes == ["2100 x 30 image downscaled to 2048 x 29"]
    with pytest.raises(ValueError, match="is a folder"):
        read_photo(tmp_path)


def test_detect_landmarks_takes_the_largest_face():
    import matplotlib.cbook as cbook

    from facelib.data.photos import NoFaceError, detect_landmarks, landmark_crop

    face = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    small = np.asarray(Image.fromarray(face).resize((256, 300)))
    two = np.zeros((600, 512 + 256, 3), np.uint8)
    two[:, :512], two[:300, 512:] = face, small
    one = detect_landmarks(face)
    both = detect_landmarks(two)
    assert one.n_faces == 1 and both.n_faces == 2
    assert torch.allclose(both.points, one.points, atol=2.0)  # the large face, where it is alone
    assert one.points.shape == (68, 2) and one.points.dtype == torch.float32
    with pytest.raises(NoFaceError, match="no face found"):
        detect_landmarks(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8"):
        detect_landmarks(np.zeros((100, 100), np.uint8))
    c = landmark_crop(face, one.points, 64)
    assert c["image"].shape == (1, 3, 64, 64) and c["mask"].all()
    assert 0.2 < c["face_mask"].float().mean() < 0.6  # inside the jaw-and-brow outline
    lm = c["landmarks"][0]
    assert (lm > 0).all() and (lm < 64).all()  # inside the crop, with a margin
    assert (lm.max(0).values - lm.min(0).values).max() == pytest.approx(64 / 1.5, rel=1e-4)


def test_reconstruct_with_the_saved_networks(open_model, tmp_path, monkeypatch):
    """``--method inversefacenet`` and ``--method mofa`` run the networks the book saved (here tiny ones
    trained into an empty cache): the same files as the fit, the mesh of each network's decoder."""
    from facelib.book import settings
    from facelib.data.corpus import SyntheticCorpus
    from facelib.inversefacenet import train_row
    from facelib.mofa import make_corpus, stage1_network
    from facelib.data.photos import sample_photo
    from facelib.reconstruct import face_panels, reconstruct_photo, write_reconstruction

    m = open_model
    monkeypatch.setenv("FACELIB_CACHE", str(tmp_path / "cache"))
    cfg = dict(size=32, iters=4, batch=4, lr=1e-3, alexnet_width=0.05, alexnet_fc=16, resnet_width=0.05,
               resnet_blocks=(1, 1, 1, 1), breed_rounds=2)
    corpus = SyntheticCorpus(m, 8, seed=1, size=32, cache=False, chunk=8, progress=False)
    x = torch.zeros(2, 3, 32, 32)
    train_row(m, cfg, "+ breeding (= InverseFaceNet)", corpus, real_x=x, progress=False)
    mcfg = dict(settings("05_mofa", "ci"), steps1=50, threads=None)
    net, _, _ = stage1_network(m, mcfg, make_corpus(m, 4, mcfg["size"], seed=0, progress=False), 0, "cpu", "ci",
                               progress=False)
    photo = sample_photo("grace_hopper")
    W, H = Image.open(photo).size
    for method, n_verts in (("inversefacenet", m.n_vertices), ("mofa", net.decoder.n_vertices)):
        rec = reconstruct_photo(photo, method=method, model=m, progress=False)
        panels = face_panels(rec, size=64)
        assert panels.shape == (3, 3, 64, 64) and (panels[1] != panels[0]).any()  # the face drawn over the photo
        paths = write_reconstruction(rec, tmp_path / method)
        assert sorted(p.name for p in paths) == ["albedo.png", "mesh.obj", "mesh.ply", "overlay.png", "params.json"]
        v = [line for line in (tmp_path / method / "mesh.obj").read_text().splitlines() if line.startswith("v ")]
        assert len(v) == n_verts
        assert np.asarray(Image.open(tmp_path / method / "overlay.png")).shape == (H, 3 * W, 3)
        p = json.loads((tmp_path / method / "params.json").read_text())
        assert p["method"] == method and p["network_meta"]["profile"] in (None, "ci") and p["seconds"] > 0
        assert np.isfinite(p["landmark_error_px"]["inner_51"]) and np.array(p["landmarks_fit_px"]).shape == (68, 2)
        over = np.asarray(Image.open(tmp_path / method / "overlay.png"))
        photo_rgb = np.asarray(Image.open(photo).convert("RGB"))
        changed = np.abs(over[:, W:2 * W].astype(int) - photo_rgb).sum(-1) > 0
        assert 0.02 < changed.mean() < 0.6, (method, changed.mean())  # the face is drawn over part of it
