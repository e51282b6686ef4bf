"""The book's sources: parameters cells, the table of contents, and every chapter executed with
papermill in the ``ci`` profile (marker ``notebooks``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks/NN_name.ipynb found"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    src = cells[0].source
    for name in ("profile", "device", "seed"):
        assert f"{name} =" in src, f"the parameters cell must set {name}"
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_toc_lists_every_chapter_and_the_book_has_them():
    toc = (ROOT / "_toc.yml").read_text()
    for path in CHAPTERS:
        assert f"book/{path.stem}" in toc, f"{path.stem} missing from _toc.yml"
        executed = ROOT / "book" / path.name
        assert executed.exists(), f"book/{path.name} missing: run `make book` and commit it"
        nb = nbformat.read(executed, as_version=4)
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.notebooks
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_in_the_ci_profile(path, tmp_path):
    out = tmp_path / path.name
    env = dict(os.environ, FACELIB_RESULTS=str(tmp_path / "results"))
    proc = subprocess.run([sys.executable, "-m", "papermill", str(path), str(out), "-p", "profile", "ci",
                           "--cwd", str(path.parent), "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results" / f"{path.stem}.json").read_text())
    assert res["profile"] == "ci" and res["chapter"] == path.stem
