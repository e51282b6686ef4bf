"""Sphinx extension of the book: what the HTML that Jupyter Book 1.x writes needs to read right in
any browser, offline (the book is opened from disk or served where no CDN is reachable).

- **MathJax from the book's own ``_static``**: the npm package ``mathjax`` (:data:`MATHJAX_VERSION`,
  its integrity pinned) is fetched once with ``npm pack`` into the facelib cache and its one-file SVG
  build ``tex-svg-full.js`` (every TeX extension, glyphs inside, no font files to load) is copied to
  ``_static/mathjax/``; ``mathjax_path`` points there. Equation numbers and ``{eq}`` references are
  Sphinx's own (``math_numfig``), so they work as before.
- **plotly.js once**: the executed chapters carry no plotly.js (``scripts/build_book.py`` strips the
  bundle Plotly's ``notebook`` renderer inlines); the installed plotly package's ``plotly.min.js`` is
  copied to ``_static`` and every page loads it before its figures' scripts run.
- **Readable code and tables** (``static/book.css``): code cells wrap long lines in the column;
  table columns whose cells are numbers are right-aligned (:func:`_align_numbers`), a ``± sd`` kept
  with its number.
- **The face explorer** (chapter 1): on a page with a ``div.facelib-explorer``
  (:func:`facelib.book.explorer.explorer_html`), the model's asset (:func:`facelib.book.explorer.write_asset`,
  written into ``_static`` at the end of every build) and ``static/face_explorer.js`` are added to
  that page.
- **A light build**: the chapters' source copies (``_sources``, ``html_copy_source: false`` in
  ``_config.yml``) are not published, so the download menu keeps only "print to PDF"; the themes'
  source maps and translation catalogues in ``_static`` (no reader's browser loads them) are removed.
- Inline ``<script>`` bodies registered twice (sphinx-thebe's ``const THEBE_JS_URL = ...`` and
  sphinx-togglebutton's selector: the extensions add them on an event *and* the builder re-reads the
  registry, once with the file name ``None`` and once with ``""``, so Sphinx 7.4 keeps both) are
  written once, since a repeated ``const`` is a SyntaxError in the browser console.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError

STATIC = Path(__file__).resolve().parent / "static"

# The last MathJax 3 release; its ``dist.integrity`` on the npm registry.
MATHJAX_VERSION = "3.2.2"
MATHJAX_INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
MATHJAX_FILE = "tex-svg-full.js"


# ------------------------------------------------------------------------------------ MathJax
def _integrity(path: Path) -> str:
    """npm's ``sha512-<base64>`` integrity string of a file."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _npm_pack(spec: str, folder: Path) -> Path:
    """``npm pack SPEC`` into ``folder``; returns the tarball."""
    npm = shutil.which("npm")
    if not npm:
        raise ExtensionError(f"the book serves MathJax itself and fetches it once with npm ({spec}); npm is "
                             "not installed: install Node.js and npm (apt-get install npm), then build again")
    proc = subprocess.run([npm, "pack", spec, "--pack-destination", str(folder), "--silent"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExtensionError(f"npm pack {spec} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return folder / proc.stdout.strip().splitlines()[-1]


def vendor_mathjax(root: Path | None = None) -> Path:
    """A folder holding ``mathjax/tex-svg-full.js`` of MathJax :data:`MATHJAX_VERSION`, for
    ``html_static_path``; fetched from the npm registry on first use and checked against its pinned
    integrity, then reused from ``root`` (default: the facelib cache, ``$FACELIB_CACHE``)."""
    from facelib.model.open_model import cache_dir

    folder = (root or cache_dir()) / f"mathjax-{MATHJAX_VERSION}"
    target = folder / "mathjax" / MATHJAX_FILE
    if target.exists():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        tarball = _npm_pack(f"mathjax@{MATHJAX_VERSION}", Path(tmp))
        if _integrity(tarball) != MATHJAX_INTEGRITY:
            raise ExtensionError(f"{tarball.name} does not match its pinned integrity {MATHJAX_INTEGRITY}")
        with tarfile.open(tarball) as tar:
            member = tar.extractfile(f"package/es5/{MATHJAX_FILE}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_bytes(member.read())
            os.replace(partial, target)
    return folder


# ------------------------------------------------------------------------------------ plotly.js
def plotly_js() -> Path:
    """The installed plotly package's ``plotly.min.js`` (the version its figures were written for)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise ExtensionError(f"{path} missing: reinstall plotly (pip install -e '.[book]')")
    return path


# ------------------------------------------------------------------------------------ tables
_NUMBER = re.compile(r"^[-+−]?(\d[\d,]*\.?\d*|\.\d+)([eE][-+]?\d+)?(\s|%|$|[×x/±(])")
_PLACEHOLDERS = {"", "-", "–", "—", "n/a"}


def _is_numeric_column(cells: list[str]) -> bool:
    """Every cell is a number (possibly with a unit, ``± sd``, ``x`` or a note after it) or a
    placeholder such as ``-``, and at least one is a number."""
    values = [c for c in cells if c not in _PLACEHOLDERS]
    return bool(values) and all(_NUMBER.match(c) for c in values)


def _keep_spread_together(entry) -> None:
    """``36.94 ± 4.31`` may break before the ``±``, not after it (a no-break space follows it)."""
    for text in list(entry.findall(nodes.Text)):
        if " ± " in text:
            text.parent.replace(text, nodes.Text(str(text).replace(" ± ", " ±\u00a0")))


def _align_numbers(app, doctree, docname):
    """Right-align table columns that hold numbers (header included), as myst does for ``---:``."""
    for tgroup in doctree.findall(nodes.tgroup):
        rows = [list(row.findall(nodes.entry)) for row in tgroup.findall(nodes.row)]
        body = [list(row.findall(nodes.entry)) for tbody in tgroup.findall(nodes.tbody)
                for row in tbody.findall(nodes.row)]
        for j in range(max((len(r) for r in rows), default=0)):
            if _is_numeric_column([r[j].astext().strip() for r in body if j < len(r)]):
                for r in rows:
                    if j < len(r) and "text-right" not in r[j]["classes"]:
                        r[j]["classes"].append("text-right")
                    if j < len(r):
                        _keep_spread_together(r[j])


# ------------------------------------------------------------------------------------ scripts
def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (js.filename or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique


def _drop_source_downloads(app, pagename, templatename, context, doctree):
    """Without ``_sources``, the download menu offers only the browser's print to PDF."""
    if app.config.html_copy_source:
        return
    for group in context.get("header_buttons", []):
        if group.get("label") == "download-buttons":
            group["buttons"] = [b for b in group["buttons"] if b.get("label") == "download-pdf-button"]


# Files the themes put in _static that no reader's browser loads: source maps (a developer's tools
# read them) and gettext catalogues (read when Sphinx builds, for other languages).
_UNREAD = ("*.map", "*.po", "*.mo")


def _drop_unread_files(app, exception):
    """Remove :data:`_UNREAD` files from ``_static`` (megabytes of the book's size), then empty folders."""
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    for pattern in _UNREAD:
        for path in static.rglob(pattern):
            path.unlink()
    for folder in sorted((d for d in static.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


# ------------------------------------------------------------------------------------ face explorer
_EXPLORER = re.compile(r'<div class="facelib-explorer" data-model="([\w.-]+)"')


def _explorer_scripts(app, pagename, templatename, context, doctree):
    """On a page with the face explorer: its model's asset and its code."""
    from facelib.book.explorer import asset_name

    names = list(dict.fromkeys(_EXPLORER.findall(context.get("body", ""))))
    for name in names:
        app.builder.add_js_file(asset_name(name), defer="defer")
    if names:
        app.builder.add_js_file("face_explorer.js", defer="defer")


def _explorer_assets(app, exception):
    """Write the asset of every model an explorer in the built pages shows (``facelib.load_model``),
    on every build, so that it follows the model and :mod:`facelib.book.explorer`."""
    if exception is not None or app.builder.format != "html":
        return
    import facelib
    from facelib.book.explorer import asset_name, write_asset
    from sphinx.util import logging

    out = Path(app.outdir)
    names = {n for page in out.rglob("*.html") for n in _EXPLORER.findall(page.read_text(errors="ignore"))}
    for name in sorted(names):
        path = out / "_static" / asset_name(name)
        header = write_asset(facelib.load_model(name), path, model_name=name)
        logging.getLogger(__name__).info(f"face explorer: {path.name}, {header['bytes'] / 1e6:.2f} MB of "
                                         f"data ({path.stat().st_size / 1e6:.2f} MB as base64)")


def _assets_changed(app, env, added, changed, removed):
    """Every page is out of date when this extension or its static files changed (Sphinx copies static
    files only when it writes pages, and rewrites a page only when its source changed)."""
    files = [Path(__file__).resolve(), *sorted(p for p in STATIC.rglob("*") if p.is_file())]
    stamp = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    if getattr(env, "facelib_static_stamp", None) == stamp:
        return []
    env.facelib_static_stamp = stamp
    return list(env.found_docs)


def _static_assets(app, config):
    """MathJax, plotly.js and the book's own CSS and JavaScript into ``_static``; MathJax from there."""
    config.html_static_path = list(config.html_static_path) + [
        str(vendor_mathjax()), str(plotly_js()), str(STATIC)]
    config.mathjax_path = f"mathjax/{MATHJAX_FILE}"


def setup(app):
    app.connect("config-inited", _static_assets)
    # Plotly must not reconfigure the book's MathJax; plotly.js runs before any figure's script.
    app.add_js_file(None, body="window.PlotlyConfig = {MathJaxConfig: 'local'};", priority=300)
    app.add_js_file("plotly.min.js", priority=301)
    app.add_css_file("book.css")
    app.connect("env-get-outdated", _assets_changed)
    app.connect("doctree-resolved", _align_numbers)
    app.connect("html-page-context", _explorer_scripts)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("html-page-context", _drop_source_downloads, priority=900)
    app.connect("build-finished", _drop_unread_files)
    app.connect("build-finished", _explorer_assets)
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True}
