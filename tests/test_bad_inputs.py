"""A catalogue of bad inputs (issue 20): each gives a one-line error that names the problem, of a type
the caller can catch (ValueError / ModelFileError / OSError, never a KeyError or RuntimeError from
deep inside the library), and leaves no file behind; the CLI prints one line and exits with status 2
(bad input) or 1 (a file it cannot write), without a traceback.

Small model files are written here (the helpers of ``test_loaders``); nothing needs the open model.
"""

import io
import os
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import facelib
from facelib.bench import bench_render
from facelib.eval.export import save_image, save_obj
from facelib.model.facemodel import FaceModel, ModelFileError
from facelib.model.params import ParamLayout, sample_sec5
from facelib.data.photos import load_photos
from facelib.render import render
from test_loaders import bfm_dict, grid_mesh, make_obj_folder, orthogonal_modes, save_mat

HAVE_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def files(tmp_path):
    """A folder with a good BFM ``.mat``, a good ``.npz`` and a good OBJ folder to spoil."""
    mat = save_mat(tmp_path / "bfm.mat", bfm_dict(np.random.default_rng(0), expression=False))
    npz = facelib.load_model(str(mat)).save(tmp_path / "model.npz")
    objs = make_obj_folder(tmp_path / "objs", orthogonal_modes(2, 1.0), orthogonal_modes(1, 1.0))
    return {"root": tmp_path, "mat": mat, "npz": npz, "objs": objs}


def read_only_folder(tmp_path) -> Path:
    """A folder that refuses new files: ``chmod 555`` for a normal user; as root (which ignores the
    mode bits) ``/sys``, where the kernel refuses to create files even for root; else skip."""
    if os.geteuid() != 0:
        d = tmp_path / "read_only"
        d.mkdir()
        d.chmod(0o555)
        return d
    probe = Path("/sys") / ".facelib_write_probe"
    try:
        probe.touch()
    except OSError:
        return Path("/sys")
    probe.unlink()
    pytest.skip("running as root and no folder here refuses root's writes (chmod does not stop root)")


def listing(root: Path) -> set:
    """Every file and folder under ``root``, hidden ones included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def expect_error(call, exc, pattern, root: Path):
    """``call()`` raises ``exc`` with a one-line message matching ``pattern`` and leaves ``root`` as it was."""
    before = listing(root)
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert isinstance(info.value, (ValueError, OSError)), type(info.value)
    assert "\n" not in str(info.value), f"the message is not one line: {info.value}"
    assert listing(root) == before, "a partial or temporary file was left behind"
    return info.value


# ----------------------------------------------------------------------------------- model files
def _truncate(p, n):
    p.write_bytes(p.read_bytes()[:n])
    return p


def _npz_without_header(p):
    np.savez(p, mean_shape=np.zeros((3, 3)))
    return p


def _npz_with_bad_header(p):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(b"{not json", np.uint8))
    with zipfile.ZipFile(p, "a") as z, warnings.catch_warnings():  # a second "header.npy" wins on read
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        z.writestr("header.npy", buf.getvalue())
    return p


def _npz_missing_arrays(p):
    with np.load(p) as z:
        keep = {k: z[k] for k in z.files if k != "mean_shape"}
    np.savez(p, **keep)
    return p


def _obj_bad_line(folder):
    f = folder / "identity" / "id_01.obj"
    lines = f.read_text().splitlines()
    lines[3] = "v 1.0 oops 2.0"
    f.write_text("\n".join(lines))
    return folder


def _obj_fewer_vertices(folder):
    verts, _ = grid_mesh()
    from facelib.model.loaders import write_obj

    write_obj(folder / "expression" / "bs_00.obj", verts[:25])
    return folder


MODEL_FILES = {  # case -> (which file, how to spoil it, message)
    "npz truncated": ("npz", lambda p: _truncate(p, 300), r"model\.npz: not a readable \.npz face model \(truncated"),
    "npz zero bytes": ("npz", lambda p: _truncate(p, 0), r"model\.npz: not a readable \.npz face model"),
    "npz not a model": ("npz", _npz_without_header, r"model\.npz: no 'header' entry; not a facelib face model"),
    "npz header not JSON": ("npz", _npz_with_bad_header, r"model\.npz: its 'header' entry is not JSON"),
    "npz missing arrays": ("npz", _npz_missing_arrays, r"model\.npz: missing arrays \['mean_shape'\]"),
    "mat truncated": ("mat", lambda p: _truncate(p, 400), r"bfm\.mat: not a readable MATLAB \.mat file \(truncated"),
    "mat is text": ("mat", lambda p: p.write_text("not a MATLAB file " * 20) and p,
                    r"bfm\.mat: not a readable MATLAB \.mat file"),
    "mat missing key": ("mat", lambda p: save_mat(p, {k: v for k, v in bfm_dict(np.random.default_rng(0),
                                                                               False).items() if k != "shapePC"}),
                        r"bfm\.mat: key 'shapePC' missing"),
    "obj no neutral": ("objs", lambda p: (p / "neutral.obj").unlink() or p, r"objs: neutral\.obj missing"),
    "obj malformed": ("objs", _obj_bad_line, r"id_01\.obj: line 4: malformed vertex 'v 1\.0 oops 2\.0'"),
    "obj vertex count": ("objs", _obj_fewer_vertices, r"bs_00\.obj: 25 vertices but neutral\.obj has 30"),
}


@pytest.mark.parametrize("case", sorted(MODEL_FILES))
def test_spoilt_model_file(files, case):
    which, spoil, pattern = MODEL_FILES[case]
    path = spoil(files[which])
    expect_error(lambda: facelib.load_model(str(path)), ModelFileError, pattern, files["root"])


@pytest.mark.parametrize("model, pattern", [
    ("missing.npz", r"missing\.npz: no such face-model file"),
    ("missing.mat", r"missing\.mat: no such \.mat file"),
    ("missing", r"missing: no such file or folder, and not a built-in model name \(built-in: 'open', 'foreign'\)"),
    ("", r"model must be 'open' or the path of a \.npz, a \.mat or a folder of OBJ files; got ''"),
    ("notes.txt", r"notes\.txt: unknown face-model format '\.txt'"),
])
def test_model_path(files, model, pattern):
    (files["root"] / "notes.txt").write_text("hello")
    path = str(files["root"] / model) if model else model
    expect_error(lambda: facelib.load_model(path), ModelFileError, pattern, files["root"])


# ------------------------------------------------------------------------------------------ render
def _theta(m, kind):
    """A bad theta for model ``m``."""
    size = ParamLayout.from_model(m).size
    good = sample_sec5(m, 2, seed=0)
    return {
        "nan": good.index_fill(1, torch.tensor([4]), float("nan")),
        "inf": good.index_fill(1, torch.tensor([0]), float("inf")),
        "one column too many": torch.zeros(2, size + 1),
        "1-D": torch.zeros(size),
        "(B, 1, m)": torch.zeros(2, 1, size),
        "float64": good.double(),
        "int64": torch.zeros(2, size, dtype=torch.int64),
        "a list": good.tolist(),
        "empty 1-D": torch.zeros(0),
        "no columns": torch.zeros(2, 0),
    }[kind]


@pytest.mark.parametrize("kind, pattern", [
    ("nan", r"theta contains NaN or infinite values"),
    ("inf", r"theta contains NaN or infinite values"),
    ("one column too many", r"theta has shape \(2, 34\); expected \(B, 33\) for this face model"),
    ("1-D", r"theta has shape \(33,\); expected \(B, 33\)"),
    ("(B, 1, m)", r"theta has shape \(2, 1, 33\); expected \(B, 33\)"),
    ("float64", r"theta has dtype torch\.float64; expected the face model's torch\.float32"),
    ("int64", r"theta has dtype torch\.int64; expected the face model's torch\.float32"),
    ("a list", r"theta must be a torch\.Tensor of shape \(B, 33\); got list"),
    ("empty 1-D", r"theta has shape \(0,\); expected \(B, 33\)"),
    ("no columns", r"theta has shape \(2, 0\); expected \(B, 33\)"),
])
@pytest.mark.parametrize("fused", [None, False])
def test_render_theta(files, kind, pattern, fused):
    m = facelib.load_model(str(files["objs"]))  # m = 3 + 2 + 1 + 0 + 27 = 33 parameters
    theta = _theta(m, kind)
    with torch.no_grad():
        expect_error(lambda: render(m, theta, 16, fused=fused), ValueError, pattern, files["root"])


def test_render_empty_batch_on_both_paths(files):
    """Not an error: an empty batch gives empty images on both paths."""
    m = facelib.load_model(str(files["objs"]))
    theta = torch.zeros(0, ParamLayout.from_model(m).size)
    with torch.no_grad():
        a, b = render(m, theta, 8), render(m, theta, 8, fused=False)
    assert a.image.shape == b.image.shape == (0, 3, 8, 8) and a.mask.shape == b.mask.shape == (0, 8, 8)


@pytest.mark.parametrize("size, pattern", [
    (0, r"image_size must be positive; got \(H, W\) = \(0, 0\)"),
    (-5, r"image_size must be positive; got \(H, W\) = \(-5, -5\)"),
    ((64, 0), r"image_size must be positive; got \(H, W\) = \(64, 0\)"),
    (20000, r"image_size \(H, W\) = \(20000, 20000\) exceeds the limit of 8192 pixels per side"),
    ((64, 10 ** 6), r"exceeds the limit of 8192 pixels per side"),
    ("64", r"image_size must be a positive int or \(H, W\), at most 8192 pixels per side; got '64'"),
    (64.5, r"image_size must be a positive int or \(H, W\).*got 64\.5"),
    ((32, 32, 3), r"image_size must be a positive int or \(H, W\)"),
])
def test_render_image_size(files, size, pattern):
    m = facelib.load_model(str(files["objs"]))
    theta = sample_sec5(m, 1, seed=0)
    expect_error(lambda: render(m, theta, size), ValueError, pattern, files["root"])


def test_bench_size_is_checked_before_the_model_loads(files):
    expect_error(lambda: bench_render(size=20000, batch=1, model="no/such/model.npz"), ValueError,
                 r"size must be a positive integer no larger than 8192; got 20000", files["root"])


@pytest.mark.parametrize("seed, pattern", [
    (10 ** 20, r"seed must be an integer in \[-2\*\*63, 2\*\*64\); got 100000000000000000000"),
    (1.5, r"seed must be an integer.*got 1\.5"),
])
def test_sampler_seed(files, seed, pattern):
    m = facelib.load_model(str(files["objs"]))
    expect_error(lambda: sample_sec5(m, 1, seed=seed), ValueError, pattern, files["root"])


# ------------------------------------------------------------------------------------------ export
def test_export_into_a_read_only_folder(tmp_path):
    d = read_only_folder(tmp_path)
    before = sorted(os.listdir(d))
    for call in (lambda: save_image(d / "face.png", torch.zeros(3, 4, 4)),
                 lambda: save_obj(d / "mesh.obj", torch.zeros(3, 3)),
                 lambda: facelib.load_model(str(make_obj_folder(tmp_path / "m", [], []))).save(d / "m.npz")):
        with pytest.raises(OSError, match=rf"cannot write {d}/\S+: its folder {d} cannot be created or "
                                          r"written to \(Permission denied\)") as info:
            call()
        assert "\n" not in str(info.value)
    assert sorted(os.listdir(d)) == before


def test_export_into_a_missing_folder_creates_it(tmp_path):
    """Not an error (documented): the folders are created."""
    out = save_image(tmp_path / "new" / "deeper" / "face.png", torch.zeros(3, 4, 4))
    assert out.exists() and listing(tmp_path) == {"new", "new/deeper", "new/deeper/face.png"}


def test_export_below_a_file_or_onto_a_folder(tmp_path):
    (tmp_path / "afile").write_text("x")
    expect_error(lambda: save_image(tmp_path / "afile" / "face.png", torch.zeros(3, 4, 4)), OSError,
                 r"cannot write .*afile/face\.png: its folder .*afile cannot be created or written to", tmp_path)
    (tmp_path / "taken.png").mkdir()
    expect_error(lambda: save_image(tmp_path / "taken.png", torch.zeros(3, 4, 4)), ValueError,
                 r"output path .*taken\.png is a folder; expected a file path", tmp_path)
    expect_error(lambda: save_obj("", torch.zeros(3, 3)), ValueError,
                 r"output path must be a non-empty file path; got ''", tmp_path)
    expect_error(lambda: save_obj(tmp_path / "m.obj", torch.full((3, 3), float("nan"))), ValueError,
                 r"verts contain 3 vertices with nan or inf coordinates", tmp_path)


# ------------------------------------------------------------------------------------------ photos
def _face_photo(mode="RGB"):
    """A 64 x 64 test picture: a bright disc on a darker background."""
    from PIL import Image

    y, x = np.mgrid[:64, :64]
    disc = ((x - 32) ** 2 + (y - 32) ** 2 < 400).astype(np.float64)
    grey = 0.2 + 0.6 * disc
    if mode == "I;16":
        return Image.fromarray((grey * 65535).astype(np.uint16))
    if mode == "L":
        return Image.fromarray((grey * 255).astype(np.uint8))
    rgb = Image.fromarray((np.repeat(grey[..., None], 3, 2) * 255).astype(np.uint8))
    return rgb.convert(mode)


def _huge_png_header(path, side=30000):
    """A PNG whose header claims ``side x side`` pixels (a decoder would need GBs)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_photos_that_cannot_be_used(tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image at all")
    _huge_png_header(tmp_path / "huge.png")
    e = expect_error(lambda: load_photos(tmp_path, 32, detector=None, progress=False), ValueError,
                     r"no face found in any of the 4 photos in .*: .*unreadable", tmp_path)
    for name in ("corrupt.jpg", "empty.png", "notes.png", "huge.png"):
        assert name in str(e)
    assert "30000 x 30000 pixels" in str(e) or "exceeds limit" in str(e)


def test_photos_without_a_face(tmp_path):
    pytest.importorskip("cv2")
    _face_photo().save(tmp_path / "disc.png")
    expect_error(lambda: load_photos(tmp_path, 32, progress=False), ValueError,
                 r"no face found in any of the 1 photos in .*disc\.png: no face found", tmp_path)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(size=0), r"size must be a positive integer no larger than 8192; got 0"),
    (dict(size=-3), r"size must be a positive integer no larger than 8192; got -3"),
    (dict(size=100000), r"size must be a positive integer no larger than 8192; got 100000"),
    (dict(size=32, limit=0), r"limit must be a positive integer; got 0"),
    (dict(size=32, limit=-1), r"limit must be a positive integer; got -1"),
])
def test_photo_arguments(tmp_path, kwargs, pattern):
    _face_photo().save(tmp_path / "a.png")
    expect_error(lambda: load_photos(tmp_path, detector=None, progress=False, **kwargs), ValueError, pattern,
                 tmp_path)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_photo_formats_load_alike(tmp_path, mode):
    """Not errors: RGBA, 8-bit grey and 16-bit grey load as the same 8-bit RGB crop (16-bit is scaled,
    not clipped to white)."""
    _face_photo(mode).save(tmp_path / "a.png")
    crop = load_photos(tmp_path, 32, detector=None, progress=False)["crop"][0]
    (tmp_path / "a.png").unlink()
    _face_photo("RGB").save(tmp_path / "a.png")
    ref = load_photos(tmp_path, 32, detector=None, progress=False)["crop"][0]
    assert crop.shape == (3, 32, 32)
    torch.testing.assert_close(crop, ref, atol=1.5 / 255, rtol=0)


def test_photo_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(img).save(tmp_path / "a.jpg", exif=exif, quality=95)
    from facelib.data.photos import _read

    up = _read(tmp_path / "a.jpg")
    assert up.shape == (60, 40, 3) and up[:25].mean() > 200 and up[35:].mean() < 50  # white on top


# ------------------------------------------------------------------------------------------ device
@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA GPU is present")
def test_cuda_without_a_gpu(files):
    expect_error(lambda: facelib.load_model(str(files["objs"]), device="cuda"), ValueError,
                 r"device 'cuda' asked for, but (this torch build has no CUDA|no CUDA GPU is visible)", files["root"])


def test_unknown_device(files):
    expect_error(lambda: facelib.load_model(str(files["objs"]), device="gpu"), ValueError,
                 r"device 'gpu' is not a torch device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'", files["root"])


# --------------------------------------------------------------------------------------------- CLI
def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "facelib", *args], capture_output=True, text=True, cwd=cwd)


CLI_CASES = [  # (arguments, exit status, pattern of the last stderr line); {mat}, {root}: the fixture files
    (["render", "--model", "{mat}", "--seed", str(10 ** 20), "--out", "{root}/f.png"], 2,
     r"^facelib: error: seed must be an integer in \[-2\*\*63, 2\*\*64\); got 100000000000000000000$"),
    (["render", "--model", "", "--out", "{root}/f.png"], 2, r"^facelib: error: model must be 'open' or the path"),
    (["render", "--model", "{root}/nothere.npz", "--out", "{root}/f.png"], 2,
     r"^facelib: error: .*nothere\.npz: no such face-model file$"),
    (["render", "--model", "{mat}", "--size", "20000"], 2,
     r"argument --size: must be at most 8192 pixels per side; got 20000$"),
    (["render", "--model", "{mat}", "--size", "-3"], 2, r"argument --size: must be a positive integer; got -3$"),
    (["render", "--model", "{mat}", "--size", "big"], 2, r"argument --size: must be a positive integer; got 'big'$"),
    (["render", "--model", "{mat}", "--background", "nan"], 2,
     r"argument --background: must be a number in \[0, 1\]; got 'nan'$"),
    (["render", "--model", "{mat}", "--device", "gpu", "--out", "{root}/f.png"], 2,
     r"^facelib: error: device 'gpu' is not a torch device"),
    (["bench", "render", "--model", "{mat}", "--size", "0"], 2, r"argument --size: must be a positive integer; got 0$"),
    (["model", "info", "--model", "{truncated}"], 2,
     r"^facelib: error: .*model\.npz: not a readable \.npz face model \(truncated or corrupt\?\)"),
    (["model", "preview", "--model", "{root}/objs/identity", "--out", "{root}/p.png"], 2,
     r"^facelib: error: .*identity: neutral\.obj missing"),
    (["render", "--model", "{mat}", "--size", "16", "--out", "{afile}/f.png"], 1,
     r"^facelib: error: \[Errno \d+\] cannot write .*afile/f\.png: its folder .*afile cannot be created"),
]


@pytest.mark.parametrize("args, status, pattern", CLI_CASES, ids=[" ".join(c[0][:3]) + f" #{i}"
                                                                 for i, c in enumerate(CLI_CASES)])
def test_cli_bad_input(files, args, status, pattern):
    (files["root"] / "afile").write_text("x")
    _truncate(files["npz"], 200)
    subst = dict(mat=files["mat"], root=files["root"], truncated=files["npz"], afile=files["root"] / "afile")
    before = listing(files["root"])
    r = cli(*[a.format(**subst) for a in args])
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert re.search(pattern, r.stderr.strip().splitlines()[-1]), r.stderr
    assert listing(files["root"]) == before


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA GPU is present")
def test_cli_cuda_without_a_gpu(files):
    r = cli("render", "--model", str(files["mat"]), "--device", "cuda", "--out", str(files["root"] / "f.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.search(r"^facelib: error: device 'cuda' asked for, but", r.stderr.strip()), r.stderr
    assert not (files["root"] / "f.png").exists()


def test_cli_render_into_a_read_only_folder(files):
    d = read_only_folder(files["root"])
    r = cli("render", "--model", str(files["mat"]), "--size", "16", "--out", str(d / "face.png"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(rf"^facelib: error: \[Errno 13\] cannot write {d}/face\.png", r.stderr.strip()), r.stderr
    assert not (d / "face.png").exists()

