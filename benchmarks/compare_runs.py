"""Does another run of chapters 2-4 reach the book's numbers and verdicts? (issue 15, item 6)

A reader's ``make book`` trains every network again, on their CPU and thread count, so its weights differ
from the book's in the last bits after the first step and drift apart from there.  This compares the
``results/inversefacenet.json`` of such a run with the book's: each Table 1 row (mean over the training
seeds; geometric, aligned and photometric error) on both test sets, its ratio to the mean face, and every
paired verdict (``ifn.rerun_verdicts``: better for every seed, worse for every seed, or none), flagging a
verdict that *reverses* (better for every seed in one run, worse for every seed in the other), and how many
of the measured numbers (:data:`MEASURED`: rows, per-seed rows, mean face, floor, paired tests, error
sources; timings left out) are the same to the bit: a change that should not change a number (a faster
search, a cache) is checked by a run against one from before it on the same machine.  With ``--log``, the
per-chapter times that ``scripts/build_book.py execute`` printed for the run.

A run from an empty cache into folders of its own (the book's files untouched), then the comparison:

    FACELIB_CACHE=$(mktemp -d) FACELIB_RESULTS=RUN .venv/bin/python scripts/build_book.py execute --profile cpu \\
        --out RUN/book notebooks/02_sampling.ipynb notebooks/03_model_space_loss.ipynb notebooks/04_breeding.ipynb | tee RUN/log
    .venv/bin/python benchmarks/compare_runs.py RUN/inversefacenet.json [--log RUN/log] [--book results/inversefacenet.json] [--out F]

Prints the comparison and writes it as JSON (default ``benchmarks/results/inversefacenet_rerun_compare.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import facelib.inversefacenet as ifn  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402

MEASURES = ("geometric_mm", "geometric_aligned_mm", "photometric_8bit")
EVERY = ("better for every seed", "worse for every seed")
MEASURED = ("rows", "rows_synthetic", "seeds", "mean_face", "floor", "paired_tests", "error_sources")
TIMINGS = ("train_s", "test_ms")  # wall-clock figures, different in every run


def _numbers(x, path=""):
    """``{path: number}`` of every int or float inside ``x`` (nested dicts and lists), timings left out."""
    if isinstance(x, dict):
        return {k: v for key, val in x.items() if key not in TIMINGS for k, v in _numbers(val, f"{path}/{key}").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _numbers(val, f"{path}[{i}]").items()}
    return {path: x} if isinstance(x, (int, float)) and not isinstance(x, bool) else {}


def identical_numbers(run: dict, book: dict) -> dict:
    """How many of the :data:`MEASURED` numbers both files hold are the same to the bit (nan equals nan)."""
    a, b = _numbers({k: run.get(k) for k in MEASURED}), _numbers({k: book.get(k) for k in MEASURED})
    both = sorted(a.keys() & b.keys())
    diff = [k for k in both if not (a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]))]
    return {"compared": len(both), "identical": len(both) - len(diff), "first_differing": diff[:10]}


def chapter_seconds(log: str) -> dict:
    """``{notebook: seconds}`` from the ``[i/n] notebooks/NAME.ipynb done in X s`` lines of a build log."""
    return {m[1]: float(m[2]) for m in re.finditer(r"\[\d+/\d+\] notebooks/(\S+?)\.ipynb done in ([0-9.]+) s", log)}


def compare(run: dict, book: dict) -> dict:
    """Rows, ratios to the mean face and verdicts of two ``results/inversefacenet.json`` side by side."""
    for name, r in (("run", run), ("book", book)):
        if "rows" not in r or "paired_tests" not in r:
            raise ValueError(f"the {name} file is not a results/inversefacenet.json (no rows or paired_tests)")
    if run.get("profile") != book.get("profile"):
        raise ValueError(f"profiles differ: run {run.get('profile')!r}, book {book.get('profile')!r}")
    rows = {}
    for key in ("rows", "rows_synthetic"):
        other = {r["name"]: r for r in book.get(key, [])}
        rows[key] = [{"name": r["name"], **{m: {"run": r[m]["mean"], "book": other[r["name"]][m]["mean"]}
                                           for m in MEASURES}}
                     for r in run.get(key, []) if r["name"] in other]
    ratios = {s: {n: {"run": v, "book": book["ratio_to_mean_face"][s]["geometric_mm"][n]}
                  for n, v in run["ratio_to_mean_face"][s]["geometric_mm"].items()
                  if n in book["ratio_to_mean_face"][s]["geometric_mm"]}
              for s in run.get("ratio_to_mean_face", {}) if s in book.get("ratio_to_mean_face", {})}
    verdicts = ifn.rerun_verdicts(run["paired_tests"], book["paired_tests"])
    for v in verdicts:
        v["reversed"] = {v["verdict"], v["verdict_other"]} == set(EVERY)
    return {"cpu": {"run": run.get("environment", {}).get("cpu"), "book": book.get("environment", {}).get("cpu")},
            "threads": {"run": run.get("environment", {}).get("torch_threads"),
                        "book": book.get("environment", {}).get("torch_threads")},
            "profile": run.get("profile"), "rows": rows, "ratio_to_mean_face_geometric": ratios,
            "verdicts_compared": len(verdicts), "verdicts_same": sum(v["same"] for v in verdicts),
            "verdicts_reversed": sum(v["reversed"] for v in verdicts),
            "verdicts_differing": [v for v in verdicts if not v["same"]],
            "numbers": identical_numbers(run, book)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="results/inversefacenet.json of the other run")
    ap.add_argument("--book", default=str(ROOT / "results" / "inversefacenet.json"))
    ap.add_argument("--log", help="the run's scripts/build_book.py execute output (per-chapter seconds)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inversefacenet_rerun_compare.json"))
    args = ap.parse_args(argv)
    try:
        run, book = (json.loads(Path(p).read_text()) for p in (args.run, args.book))
        out = compare(run, book)
    except (OSError, ValueError, KeyError) as e:
        ap.error(str(e))
    if args.log:
        secs = chapter_seconds(Path(args.log).read_text())
        out["chapter_seconds"] = secs
        out["minutes"] = round(sum(secs.values()) / 60, 2)
    out["command"] = "python benchmarks/compare_runs.py RUN/inversefacenet.json --log RUN/log"
    print(f"run: {out['cpu']['run']} ({out['threads']['run']} threads), book: {out['cpu']['book']} "
          f"({out['threads']['book']} threads), profile {out['profile']}")
    if "minutes" in out:
        print(f"run time: {out['minutes']:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in out['chapter_seconds'].items())})")
    for key, rs in out["rows"].items():
        print(key + ":")
        for r in rs:
            print(f"  {r['name']:32s} " + "  ".join(f"{m} {r[m]['run']:.3f} / {r[m]['book']:.3f}" for m in MEASURES))
    for s, rs in out["ratio_to_mean_face_geometric"].items():
        print(f"x mean face ({s}): " + ", ".join(f"{n} {v['run']:.3f} / {v['book']:.3f}" for n, v in rs.items()))
    print(f"verdicts: {out['verdicts_same']} of {out['verdicts_compared']} the same, {out['verdicts_reversed']} reversed")
    print(f"numbers the same to the bit: {out['numbers']['identical']} of {out['numbers']['compared']}")
    for v in out["verdicts_differing"]:
        print(f"  {v['set']}: {v['comparison']}, {v['measure']}: run {v['verdict']!r}, book {v['verdict_other']!r}")
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
