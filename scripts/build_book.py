"""Book pipeline: execute the chapter notebooks with papermill, then build the HTML with Jupyter Book.

    python scripts/build_book.py execute [--profile cpu] [--out book] [NOTEBOOK ...]
    python scripts/build_book.py html                 # jupyter-book build . -> book/_build/html
    python scripts/build_book.py all [--profile cpu]  # both: what `make book` runs
    python scripts/build_book.py tidy [NOTEBOOK ...]  # re-apply the post-processing to book/*.ipynb

``execute`` runs every ``notebooks/NN_name.ipynb`` (or the ones named) top to bottom on a fresh
kernel with ``-p profile <profile>``, in the notebook's own folder (as JupyterLab would), and writes
the executed copy to ``<out>/NN_name.ipynb`` only when every cell succeeded. At the first failing cell
it stops with ``make book: notebooks/NN_name.ipynb failed at cell N ...``, keeps the partly executed
notebook in ``out/failed/`` and exits with status 1. Timing metadata that papermill records is
stripped, the plotly.js bundle that Plotly's ``notebook`` renderer inlines is removed (the HTML book
loads plotly.js once from ``_static``) and the random ids of figures, widgets and the injected cell are
made stable, so re-running an unchanged chapter changes as little as possible of the committed file.
``tidy`` applies that post-processing to executed notebooks without running them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
HTML = BOOK / "_build" / "html"
KERNEL = "python3"


def chapter_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The chapter sources ``NN_name.ipynb`` in ``folder``, in chapter order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


_PLOTLY_MATHJAX = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"></script>')
# The plotly.js bundle that Plotly's "notebook" renderer inlines with the first figure of a notebook
# (4.8 MB): the HTML book loads plotly.js once from its _static folder instead (book/_ext/book_html.py).
_PLOTLY_JS = re.compile(r"<script[^>]*>\s*/\*\*?\s*\*?\s*plotly\.js v\d[\s\S]*?</script>")
_SCRIPT = re.compile(r"<script[^>]*>[\s\S]*?</script>")


def _strip_plotly_js(outputs: list) -> list:
    """The outputs without the inlined plotly.js bundle and without Plotly's MathJax-from-CDN tags;
    an output left with nothing but scripts (the bundle's config preamble) is dropped."""
    kept = []
    for output in outputs:
        html = output.get("data", {}).get("text/html")
        if isinstance(html, list):
            html = "".join(html)
        if isinstance(html, str) and (_PLOTLY_JS.search(html) or _PLOTLY_MATHJAX.search(html)):
            # Plotly's HTML loads MathJax from a CDN once per figure; the book's pages have their own
            # MathJax, and a second MathJax on the page would fight it.
            html = _PLOTLY_MATHJAX.sub("", _PLOTLY_JS.sub("", html))
            if not _SCRIPT.sub("", html).strip() and len(output["data"]) == 1:
                continue
            output["data"]["text/html"] = html
        kept.append(output)
    return kept


def _clean_metadata(nb) -> None:
    """Drop papermill's wall-clock fields (start/end times, durations), the saved widget state and
    Plotly's inlined plotly.js and MathJax-from-CDN tags from an executed notebook."""
    # The saved ipywidgets state (megabytes: the live panel's FigureWidget mesh) would only make the
    # static book load require.js and the widget manager from a CDN to draw sliders with no kernel
    # behind them; the book's static sliders are Plotly's own. The widget outputs stay.
    nb.metadata.pop("widgets", None)
    pm = nb.metadata.get("papermill", {})
    for key in ("start_time", "end_time", "duration", "exception", "input_path", "output_path"):
        pm.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if "outputs" in cell:
            cell["outputs"] = _strip_plotly_js(cell["outputs"])
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")  # the book shows the parameters cell once, not papermill's copy
        cell_pm = cell.metadata.get("papermill")
        if cell_pm is not None:
            for key in ("start_time", "end_time", "duration", "exception", "status"):
                cell_pm.pop(key, None)
            if not cell_pm:
                cell.metadata.pop("papermill")


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_IPY_MODEL = re.compile(r"IPY_MODEL_([0-9a-f]{32})")


def _stable_ids(nb, name: str):
    """Replace the random ids of an executed notebook by ids that depend only on its structure.

    Plotly names every figure's ``<div>`` with a fresh UUID, ipywidgets every model with a fresh
    32-hex id, papermill its injected cell with a fresh cell id; all three change on every run. They
    are renamed in order of first appearance (widget models: those the outputs show, then the models
    they refer to), so re-running an unchanged chapter rewrites only what it measured.
    """
    import nbformat

    cells_text = json.dumps([c.get("outputs", []) for c in nb.cells], sort_keys=True)
    mapping: dict[str, str] = {}
    texts = [cells_text]
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    order = list(dict.fromkeys(re.findall(r'"model_id": "([0-9a-f]{32})"', cells_text)))
    if not state:
        for k, old in enumerate(order):
            mapping[old] = uuid.uuid5(uuid.NAMESPACE_URL, f"facelib-book/{name}/widget/{k}").hex
    else:
        order = [m for m in order if m in state]
        seen = set(order)
        i = 0
        while i < len(order):
            for ref in _IPY_MODEL.findall(json.dumps(state[order[i]], sort_keys=True)):
                if ref in state and ref not in seen:
                    seen.add(ref)
                    order.append(ref)
            i += 1
        rest = sorted((m for m in state if m not in seen),
                      key=lambda m: json.dumps(state[m], sort_keys=True))
        for k, old in enumerate(order + rest):
            mapping[old] = uuid.uuid5(uuid.NAMESPACE_URL, f"facelib-book/{name}/widget/{k}").hex
        texts += [json.dumps(state[m], sort_keys=True) for m in order + rest]
    uuids = dict.fromkeys(u for text in texts for u in _UUID.findall(text))
    for k, old in enumerate(uuids):
        mapping[old] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"facelib-book/{name}/uuid/{k}"))

    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"
    if not mapping:
        return nb
    text = nbformat.writes(nb)
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))
    return nbformat.reads(pattern.sub(lambda m: mapping[m.group(0)], text), as_version=4)


def _source_cell_number(nb, failing_index: int) -> int:
    """1-based number of the failing cell in the *source* notebook (papermill inserts one cell)."""
    injected = [i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", [])]
    return failing_index + 1 - (1 if injected and injected[0] < failing_index else 0)


class NotebookFailed(RuntimeError):
    """A chapter failed; ``str()`` is the one-line message for the user."""


def execute_notebook(src: Path, dst: Path, profile: str, *, parameters: dict | None = None,
                     failed_dir: Path | None = None, log_output: bool = False) -> float:
    """Execute ``src`` with papermill (``profile`` plus ``parameters``) into ``dst``; returns seconds.

    Raises :class:`NotebookFailed` naming the notebook and the failing cell. ``dst`` is written only on
    success; the partly executed notebook goes to ``failed_dir`` (default ``out/failed``).
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    src, dst = Path(src), Path(dst)
    failed_dir = Path(failed_dir) if failed_dir else ROOT / "out" / "failed"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.partial.ipynb")
    params = {"profile": profile, **(parameters or {})}
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=KERNEL,
                            cwd=str(src.parent), progress_bar=False, log_output=log_output,
                            request_save_on_cell_execute=False)
    except PapermillExecutionError as err:
        failed_dir.mkdir(parents=True, exist_ok=True)
        kept = failed_dir / dst.name
        number = err.cell_index + 1
        if tmp.exists():
            nb = nbformat.read(tmp, as_version=4)
            number = _source_cell_number(nb, err.cell_index)
            shutil.move(tmp, kept)
        first_line = next((ln for ln in (err.source or "").splitlines() if ln.strip()), "")
        raise NotebookFailed(
            f"{_rel(src)} failed at cell {number} (In [{err.exec_count}]: {first_line.strip()[:80]}): "
            f"{err.ename}: {err.evalue}\n    the partly executed notebook, with the traceback, is in "
            f"{_rel(kept)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _postprocess(tmp, dst.stem)
    os.replace(tmp, dst)
    return time.perf_counter() - t0


def _postprocess(path: Path, name: str) -> None:
    """Clean an executed notebook in place (:func:`_clean_metadata`, :func:`_stable_ids`)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    _clean_metadata(nb)
    nbformat.write(_stable_ids(nb, name), path)


def tidy(notebooks: list[Path]) -> None:
    """Apply ``execute``'s post-processing to already executed notebooks in place, without running
    them (after a change to the post-processing); one line each with the size before and after."""
    for path in notebooks:
        before = path.stat().st_size
        _postprocess(path, path.stem)
        print(f"{_rel(path)}: {before / 1e6:.1f} MB -> {path.stat().st_size / 1e6:.1f} MB", flush=True)


def execute_all(notebooks: list[Path], out: Path, profile: str) -> None:
    """Execute the chapters in order, one progress line each; stops at the first failure."""
    if not notebooks:
        print(f"make book: no chapter notebooks (NN_name.ipynb) in {_rel(NOTEBOOKS)}/", flush=True)
        return
    total = time.perf_counter()
    for i, src in enumerate(notebooks, 1):
        dst = Path(out) / src.name
        print(f"[{i}/{len(notebooks)}] {_rel(src)} -> {_rel(dst)} (profile {profile}) ...", flush=True)
        seconds = execute_notebook(src, dst, profile)
        print(f"[{i}/{len(notebooks)}] {_rel(src)} done in {seconds:.1f} s", flush=True)
    print(f"executed {len(notebooks)} notebook(s) in {time.perf_counter() - total:.1f} s", flush=True)


def jupyter_book() -> list[str]:
    """The ``jupyter-book`` command of this environment."""
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if not found:
        raise SystemExit("jupyter-book is not installed: pip install -e '.[book]' (or run `make setup`)")
    return [found]


def build_html(strict: bool = False) -> float:
    """``jupyter-book build .`` with the output in ``book/_build/html`` (execution is off in _config.yml)."""
    cmd = jupyter_book() + ["build", str(ROOT), "--path-output", str(BOOK), "--builder", "html"]
    if strict:
        cmd += ["--warningiserror", "--keep-going"]
    print("building the HTML:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"make book: jupyter-book build failed (exit {proc.returncode}); see the output above")
    seconds = time.perf_counter() - t0
    print(f"HTML built in {seconds:.1f} s: {_rel(HTML / 'index.html')}", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("execute", "all"):
        p = sub.add_parser(name)
        p.add_argument("--profile", default="cpu", choices=("ci", "cpu", "gpu"))
        p.add_argument("--out", type=Path, default=BOOK, help="folder for the executed notebooks")
        p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_name.ipynb")
    p = sub.add_parser("tidy", help="post-process executed notebooks in place (no execution)")
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every book/NN_name.ipynb")
    html = sub.add_parser("html")
    for p in (html, sub.choices["all"]):
        p.add_argument("--strict", action="store_true", help="turn Sphinx warnings into errors")
    args = parser.parse_args(argv)

    try:
        if args.command in ("execute", "all"):
            execute_all([Path(p) for p in args.notebooks] or chapter_notebooks(), args.out, args.profile)
        if args.command == "tidy":
            tidy([Path(p) for p in args.notebooks] or chapter_notebooks(BOOK))
        if args.command in ("html", "all"):
            build_html(strict=args.strict)
    except NotebookFailed as err:
        print(f"make book: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("make book: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
