import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "facelib", *args], capture_output=True, text=True)


def test_model_info_json(open_model):
    r = run("model", "info", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"vertices", "triangles", "n_shape", "n_expression", "n_reflectance", "bbox_mm"} <= set(d)
    assert d["vertices"] == open_model.n_vertices and d["n_shape"] == open_model.n_shape
    assert 120 <= d["bbox_mm"]["size"][0] <= 170


def test_model_info_text_and_bad_path(tmp_path):
    r = run("model", "info")
    assert r.returncode == 0 and "vertices" in r.stdout
    r = run("model", "info", "--model", str(tmp_path / "nope.npz"))
    assert r.returncode == 2 and "nope.npz" in r.stderr


def test_model_preview(tmp_path):
    out = tmp_path / "p.png"
    r = run("model", "preview", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000
