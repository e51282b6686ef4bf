"""The package layout of issue 19: every module imports on its own (no import cycles), the fast path
is imported only where it is chosen, and every subpackage says its room in its first docstring line."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "facelib"
FAST = "facelib.render.fast"
# the modules outside facelib/render/fast/ that may import it: the one place that chooses the fast path,
# and the two that report the kernels' status (the benchmark record and the reproducibility record)
MAY_IMPORT_FAST = {"facelib/render/__init__.py", "facelib/bench.py", "facelib/repro.py"}
REFERENCE = ("camera", "shading", "raster", "points", "formation")  # facelib/render/<name>.py


def _modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), p))
    return out


def _imported(name: str, path: Path) -> set[str]:
    """Absolute names of what ``path`` (module ``name``) imports, anywhere in the file; ``from X import y``
    gives both ``X`` and ``X.y`` (y may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first (facelib's modules dropped from sys.modules before each): an import
    cycle shows as an ImportError for some order."""
    names = [n for n, _ in _modules() if n != "facelib.__main__"]
    code = f"""
import importlib, json, sys, traceback
errors = {{}}
for name in {names!r}:
    for m in [m for m in sys.modules if m == "facelib" or m.startswith("facelib.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        errors[name] = traceback.format_exc(limit=-3)
print(json.dumps(errors))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    errors = json.loads(r.stdout.strip().splitlines()[-1])
    assert not errors, "\n".join(f"{k}:\n{v}" for k, v in errors.items())


def test_only_the_dispatch_imports_the_fast_path():
    """Imports run one way: facelib.render.fast imports the reference renderer, never the reverse."""
    offenders = []
    for name, path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if name == FAST or name.startswith(FAST + ".") or rel in MAY_IMPORT_FAST:
            continue
        bad = sorted(m for m in _imported(name, path) if m == FAST or m.startswith(FAST + "."))
        if bad:
            offenders.append(f"{rel}: {bad}")
    assert not offenders, "modules that import the fast path:\n" + "\n".join(offenders)
    for ref in REFERENCE:  # the reference modules, by name (also when the allowed list grows)
        path = PKG / "render" / f"{ref}.py"
        assert path.is_file(), path
        assert not any(m.startswith(FAST) for m in _imported(f"facelib.render.{ref}", path)), path


def test_the_allowed_list_is_not_stale():
    for rel in MAY_IMPORT_FAST:
        path = ROOT / rel
        name = ".".join(Path(rel).with_suffix("").parts).removesuffix(".__init__")
        assert any(m.startswith(FAST) for m in _imported(name, path)), f"{rel} no longer imports the fast path"


def test_every_subpackage_says_its_room():
    inits = sorted(PKG.rglob("__init__.py"))
    assert len(inits) >= 10, inits  # facelib, model, render, render/fast, data, eval, book and the papers
    for p in inits:
        doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))
        assert doc and doc.splitlines()[0].strip(), f"{p.relative_to(ROOT)} has no module docstring"
