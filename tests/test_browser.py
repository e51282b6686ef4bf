"""The built book in a real browser: headless Chromium opens the index and every chapter page from a
localhost server, checks that each Plotly figure rendered and that the console shows no errors, and
saves a screenshot of each page to ``out/browser/``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them), ``selenium`` (the
``test`` extra) and the built HTML in ``book/_build/html`` (``make test`` and ``make book`` build it).
The browser resolves no host but localhost, so the check is the same with or without a network: a
page must not need the internet to show its figures. Failed loads of external resources (the MathJax
CDN) are reported as a warning, not an error; any other console error fails the test.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "out" / "browser"
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,2000",
    # WebGL (Plotly's 3D scenes) through the software rasterizer, since there is no GPU.
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    # No host but the local server resolves: the test is the same offline and online.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)

pytestmark = pytest.mark.browser


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        msg = (f"built book missing ({HTML.relative_to(ROOT)}/index.html): run `make book`, or "
               "`.venv/bin/python scripts/build_book.py html` to build it from the committed chapters")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def driver():
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    chromedriver = _find("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("chromium not installed: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed: pip install -e '.[test]'")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    profile_dir = tempfile.mkdtemp(prefix="facelib-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile_dir}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    drv.set_page_load_timeout(120)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)


# Every figure Plotly's HTML output creates is a div.plotly-graph-div; Plotly.newPlot adds
# .js-plotly-plot and draws an SVG (.main-svg) and, for 3D scenes, WebGL canvases.
FIGURES_JS = """
return Array.from(document.querySelectorAll('div.plotly-graph-div')).map((el, i) => {
  const box = (e) => { if (!e) return null; const r = e.getBoundingClientRect();
                       return [Math.round(r.width), Math.round(r.height)]; };
  const svgs = Array.from(el.querySelectorAll('svg.main-svg')).map(box);
  const canvases = Array.from(el.querySelectorAll('canvas')).map(box);
  return {index: i, id: el.id, plotted: el.classList.contains('js-plotly-plot'),
          traces: (el.data || []).length, types: (el.data || []).map(t => t.type || 'scatter'),
          size: box(el), svgs: svgs, canvases: canvases,
          gl: !!(el._fullLayout && el._fullLayout._has && el._fullLayout._has('gl3d')),
          nowebgl: /WebGL is not supported/i.test(el.innerText || '')};
});
"""


def _wait(driver, condition, timeout=60.0, step=0.25):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail((320, 320))
    return len(img.getcolors(maxcolors=1 << 24) or ())


def _console(driver, base: str) -> tuple[list[str], list[str]]:
    """(errors, unreachable external resources) among the SEVERE console entries."""
    errors, external = [], []
    for entry in driver.get_log("browser"):
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        url = msg.split(" ", 1)[0]
        if url == base + "favicon.ico":  # the browser asks for it by itself; the book has none
            continue
        if (re.match(r"https?://", url) and not url.startswith(base)
                and ("Failed to load resource" in msg or "net::ERR_" in msg)):
            external.append(msg)
        else:
            errors.append(msg)
    return errors, external


def _check_page(driver, base: str, path: str, shot: str, min_figures: int = 0) -> list[dict]:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(base + path)
    _wait(driver, lambda: driver.execute_script("return document.readyState") == "complete")
    divs = driver.execute_script("return document.querySelectorAll('div.plotly-graph-div').length")
    # Plotly draws asynchronously (3D scenes in particular): wait until every figure is plotted.
    if divs:
        _wait(driver, lambda: all(f["plotted"] and f["svgs"] for f in driver.execute_script(FIGURES_JS)))
    figures = driver.execute_script(FIGURES_JS)
    time.sleep(1.0)  # let WebGL draw its first frame before the screenshots
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{shot}.png"))

    problems = []
    assert len(figures) >= min_figures, (
        f"{path}: {len(figures)} Plotly figure(s), expected at least {min_figures}")
    from selenium.webdriver.common.by import By

    for fig in figures:
        name = f"{path} figure {fig['index'] + 1} ({', '.join(sorted(set(fig['types']))) or 'no traces'})"
        if not fig["plotted"]:
            problems.append(f"{name}: not plotted (Plotly.newPlot never ran: is plotly.js on the page?)")
            continue
        if not fig["size"] or min(fig["size"]) <= 0:
            problems.append(f"{name}: empty size {fig['size']}")
        if not any(s and min(s) > 0 for s in fig["svgs"]):
            problems.append(f"{name}: no .main-svg with a non-empty size ({fig['svgs']})")
        if fig["gl"] and not any(c and min(c) > 0 for c in fig["canvases"]):
            problems.append(f"{name}: a WebGL scene without a non-empty canvas ({fig['canvases']})")
        if fig["nowebgl"]:
            problems.append(f"{name}: Plotly says WebGL is not supported")
        if fig["traces"] == 0:
            problems.append(f"{name}: no traces")
        if not problems:
            el = driver.find_element(By.ID, fig["id"])
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
            time.sleep(0.3)
            colours = _distinct_colours(el.screenshot_as_png)
            if colours < 8:
                problems.append(f"{name}: looks blank ({colours} distinct colours in its screenshot)")
    driver.execute_script("window.scrollTo(0, 0);")

    errors, external = _console(driver, base)
    if external:
        warnings.warn(f"{path}: {len(external)} external resource(s) not loaded (offline by design): "
                      + "; ".join(sorted({m.split(' ', 1)[0] for m in external})))
    problems += [f"{path}: console error: {m}" for m in errors]
    assert not problems, f"{len(problems)} problem(s) (screenshot: out/browser/{shot}.png):\n" + "\n".join(problems)
    assert divs == len(figures)
    return figures


def test_index_renders(server, driver):
    """The book's index redirects to the introduction, which renders without console errors."""
    _check_page(driver, server, "index.html", "index")
    title = driver.title
    assert "Inverse Face Rendering" in title, f"unexpected page title {title!r} at {driver.current_url}"
    assert driver.current_url.endswith("book/intro.html"), driver.current_url
    # the bibliography works: the citations on the introduction link to entries
    cites = driver.execute_script("return document.querySelectorAll('a[href*=\"bibliography\"]').length")
    assert cites >= 4, f"expected the introduction's citations to link to the bibliography, found {cites}"


@pytest.mark.parametrize("chapter", CHAPTERS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no chapter notebooks in notebooks/"))])
def test_chapter_figures_render(server, driver, chapter):
    """Every Plotly figure of the chapter is plotted, non-empty and not blank; no console errors."""
    page = HTML / "book" / f"{chapter}.html"
    if not page.exists():
        msg = f"{page.relative_to(ROOT)} missing: the chapter is not in the built book (make book)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    figures = _check_page(driver, server, f"book/{chapter}.html", chapter,
                          min_figures=1 if chapter.startswith("01_") else 0)
    print(f"{chapter}: {len(figures)} Plotly figure(s) rendered")
