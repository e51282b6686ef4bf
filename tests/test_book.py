"""The book's pipeline: every chapter notebook has its papermill parameters, is in the table of
contents, has its executed copy in book/, and runs top to bottom in the ``ci`` profile, writing
``results/<chapter>.json``.

The execution tests are marked ``notebooks`` (deselect them for a quick unit run:
``pytest -m "not notebooks"``). nbval re-runs the committed chapters separately (``make test``).
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
NO_CHAPTERS = pytest.mark.skip(reason="no chapter notebooks (NN_name.ipynb) in notebooks/ yet")


def chapters(fn):
    """Parametrize ``fn`` over the chapter notebooks (one skipped case when there are none)."""
    if NOTEBOOKS:
        return pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)(fn)
    return pytest.mark.parametrize("notebook", [pytest.param(None, marks=NO_CHAPTERS)])(fn)


def _build_book():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toc_files() -> list[str]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(Path(f).with_suffix("")) for f in files]


@chapters
def test_parameters_cell(notebook):
    """One cell tagged ``parameters`` assigns profile (a known profile), device and seed."""
    import nbformat

    from facelib.book import PROFILES

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: {len(cells)} cells tagged 'parameters'; expected one"
    values = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = ast.literal_eval(node.value)
    missing = {"profile", "device", "seed"} - set(values)
    assert not missing, f"{notebook.name}: the parameters cell does not assign {sorted(missing)}"
    assert values["profile"] in PROFILES, f"{notebook.name}: profile {values['profile']!r} not in {PROFILES}"
    assert values["device"] == "auto", f"{notebook.name}: device should default to 'auto'"
    assert isinstance(values["seed"], int)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{notebook.name}: kernelspec should be python3 (papermill and nbval start that kernel)")


def test_toc_lists_every_notebook_and_every_page_exists():
    files = _toc_files()
    missing = [p.stem for p in NOTEBOOKS if f"book/{p.stem}" not in files]
    assert not missing, f"_toc.yml does not list {['book/' + m for m in missing]}"
    for name in files:
        stem = ROOT / name
        assert stem.with_suffix(".md").exists() or stem.with_suffix(".ipynb").exists(), (
            f"_toc.yml names {name} but neither {name}.md nor {name}.ipynb exists"
            + (" (run `make book` to execute the chapter into book/)" if name.startswith("book/0") else ""))


@chapters
def test_executed_chapter_is_current(notebook):
    """book/NN_name.ipynb, the committed executed copy, has the source's cells, ran without errors."""
    import nbformat

    executed = ROOT / "book" / notebook.name
    assert executed.exists(), f"{executed.relative_to(ROOT)} missing: run `make book` and commit it"
    src = nbformat.read(notebook, as_version=4)
    out = nbformat.read(executed, as_version=4)
    out_cells = [c for c in out.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    assert [c.source for c in out_cells] == [c.source for c in src.cells], (
        f"{executed.relative_to(ROOT)} is out of date with {notebook.relative_to(ROOT)}: run `make book`")
    errors = [o for c in out.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{executed.relative_to(ROOT)} has error outputs"
    assert out.metadata.get("papermill", {}).get("parameters", {}).get("profile") == "cpu", (
        f"{executed.relative_to(ROOT)} was not executed in the cpu profile (make book)")


@chapters
def test_executed_chapter_carries_no_plotly_js(notebook):
    """The committed executed copy has no inlined plotly.js (the HTML book loads it from _static)."""
    text = (ROOT / "book" / notebook.name).read_text()
    assert "* plotly.js v" not in text, (
        f"book/{notebook.name} inlines plotly.js: `python scripts/build_book.py tidy book/{notebook.name}`")


def test_postprocessing_strips_plotly_js_only():
    """The pipeline drops Plotly's inlined bundle (and the output it leaves empty), keeps each figure."""
    build = _build_book()
    bundle = {"output_type": "display_data", "metadata": {}, "data": {"text/html": (
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        "<script>/**\n* plotly.js v4.1.1\n* Copyright 2012-2026, Plotly, Inc.\n*/\nwindow.Plotly = 1;</script>")}}
    figure = {"output_type": "display_data", "metadata": {}, "data": {"text/html": (
        '<div id="f" class="plotly-graph-div"></div><script>Plotly.newPlot("f", [], {})</script>'
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.5/MathJax.js"></script>')}}
    kept = build._strip_plotly_js([bundle, figure])
    assert len(kept) == 1 and kept[0]["data"]["text/html"] == (
        '<div id="f" class="plotly-graph-div"></div><script>Plotly.newPlot("f", [], {})</script>')
    assert build._strip_plotly_js(kept) == kept  # idempotent: `tidy` may run twice


def _book_html():
    spec = importlib.util.spec_from_file_location("book_html", ROOT / "book" / "_ext" / "book_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numeric_columns_are_recognised():
    numeric = _book_html()._is_numeric_column
    assert numeric(["3", "1,800", "-0.5", "3.1e-05", "36.94 ± 4.31", "92.1 %", "-", "–"])
    assert numeric(["152.0 x 199.9 x 128.4", "0.2 (paper)", "21.0 / 26.6"])
    assert not numeric(["AlexNet", "3"]) and not numeric(["-", ""]) and not numeric(["mean face", "0"])


@pytest.mark.notebooks
@chapters
def test_notebook_runs_in_ci_profile(notebook, tmp_path, monkeypatch):
    """papermill -p profile ci: every cell runs; results/<chapter>.json says profile 'ci'."""
    monkeypatch.setenv("FACELIB_RESULTS", str(tmp_path / "results"))
    build = _build_book()
    try:
        build.execute_notebook(notebook, tmp_path / notebook.name, "ci", failed_dir=tmp_path / "failed")
    except build.NotebookFailed as err:
        pytest.fail(str(err), pytrace=False)
    results = tmp_path / "results" / f"{notebook.stem}.json"
    assert results.exists(), f"{notebook.name} did not write results/{notebook.stem}.json (save_results)"
    data = json.loads(results.read_text())
    assert data["profile"] == "ci" and data["chapter"] == notebook.stem


def test_failing_cell_is_named(tmp_path):
    """A notebook that raises stops the pipeline with the notebook, the cell and the error."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "cpu"\ndevice = "auto"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# broken"), params, nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("raise ValueError('image has 4 channels')")]
    src = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, src)
    build = _build_book()
    with pytest.raises(build.NotebookFailed) as info:
        build.execute_notebook(src, tmp_path / "book" / src.name, "ci", failed_dir=tmp_path / "failed")
    msg = str(info.value)
    assert "99_broken.ipynb failed at cell 4" in msg and "ValueError: image has 4 channels" in msg, msg
    assert not (tmp_path / "book" / src.name).exists()  # the published copy is left alone
    assert (tmp_path / "failed" / src.name).exists()


def test_benchmark_results_reads_this_checkout_from_any_folder(tmp_path, monkeypatch):
    from facelib.book import benchmark_results

    monkeypatch.chdir(tmp_path)  # a chapter runs from notebooks/, book/ or out/ci/: the path must not care
    root = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    assert benchmark_results("open_model_shape_scale.json") == json.loads(
        (root / "open_model_shape_scale.json").read_text())
    assert benchmark_results("cf_sweep/base.json")["variant"] == "base"
    assert benchmark_results("no_such_benchmark.json") is None


def test_benchmark_records_are_every_run_file_of_a_pattern_in_path_order(tmp_path, monkeypatch):
    from facelib.book import benchmark_records

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    paths = sorted(root.glob("coarse_landmarks/landmarks-own-branch_s*.json"))
    assert len(paths) >= 2  # the saved runs chapter 8 reads
    assert benchmark_records("coarse_landmarks/landmarks-own-branch_s*.json") == [json.loads(p.read_text()) for p in paths]
    assert [r["seed"] for r in benchmark_records("coarse_landmarks/landmarks-own-branch_s*.json")] == sorted(
        json.loads(p.read_text())["seed"] for p in paths)
    assert benchmark_records("no_such_benchmark_*.json") == []


def test_mean_std_and_markdown_table():
    """The results files' {mean, std} entries (sample std, rounded) and the chapters' Markdown tables."""
    import numpy as np
    import torch

    from facelib.book import markdown_table, mean_std

    x = torch.tensor([1.0, 2.0, 4.0])
    assert mean_std(x) == {"mean": round(7 / 3, 4), "std": round(float(np.std([1, 2, 4], ddof=1)), 4)}
    assert mean_std([0.123456, 0.123456], digits=2) == {"mean": 0.12, "std": 0.0}
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"


@chapters
def test_notebooks_define_no_functions(notebook):
    """A chapter imports and explains; every function it uses lives in facelib (STYLE.md, issue 19).
    A ``def`` or ``class`` in a code cell is a private copy of library code in the making."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.append(f"cell {i}: {node.name}")
    assert not found, f"{notebook.name} defines {found}: move them into facelib (e.g. facelib.book) and import them"


def test_chapter_helpers():
    """facelib.book's helpers for the chapters' setup, tables and sentences."""
    import numpy as np
    import torch

    from facelib.book import cell, change_words, chapter, mean_of, mean_std, pm, seed_spread

    cfg, dev = chapter("06_correctives", "ci", seed=3, device="cpu", base="05_mofa")
    assert cfg["C"] == 16 and cfg["size"] == 64 and dev.type == "cpu" and torch.get_num_threads() == cfg["threads"]
    with pytest.raises(ValueError, match="profile"):
        chapter("05_mofa", "laptop")
    m, s, v = seed_spread([torch.tensor(1.0), 2, 4.0])
    assert v == [1.0, 2.0, 4.0] and m == 7 / 3 and s == float(np.std([1, 2, 4]))
    assert pm([1, 2, 4]) == f"{7 / 3:.2f} ± {np.std([1, 2, 4]):.2f}"
    assert cell(None) == "–" and cell(None, missing="-") == "-" and cell(1.23456, ".3f") == "1.235"
    assert cell((1.0, 0.5, [1]), ".1f") == "1.0 ± 0.5" == cell({"mean": 1.0, "std": 0.5}, ".1f")
    assert mean_of([1, 2]) == 1.5 and mean_std([3.0], None) == {"mean": 3.0, "std": 0.0}
    assert change_words(2.0, 1.0) == "lowered the error from 2.00 to 1.00 mm"
    assert change_words(1.0, 1.005, tol=0.01) == "left the error at 1.00 mm (to 1.00)"
    assert change_words(0.2, 0.3, "the landmark error", "px", ".1f", percent=True) == \
        "raised the landmark error from 0.2 to 0.3 px (+50%)"
