"""benchmarks/compare_runs.py: two runs of chapters 2-4 side by side (rows, ratios, verdicts, times)."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def book():
    return json.loads((ROOT / "results" / "inversefacenet.json").read_text())


def test_a_run_against_itself_agrees_everywhere(book):
    out = _module().compare(book, book)
    assert out["verdicts_compared"] > 0 and out["verdicts_same"] == out["verdicts_compared"]
    assert out["verdicts_reversed"] == 0 and out["verdicts_differing"] == []
    assert [r["name"] for r in out["rows"]["rows"]] == [r["name"] for r in book["rows"]]
    assert all(r[m]["run"] == r[m]["book"] for rs in out["rows"].values() for r in rs for m in r if m != "name")
    assert out["numbers"]["compared"] > 400 and out["numbers"]["identical"] == out["numbers"]["compared"]


def test_numbers_the_same_to_the_bit_count_one_change_and_not_the_timings(book):
    run = copy.deepcopy(book)
    seeds = run["seeds"]["wild"] if "wild" in run["seeds"] else run["seeds"]
    first = seeds[next(iter(seeds))][0]
    first["train_s"] += 5.0  # a timing: not a measured number
    first["geometric_mm"]["mean"] = float(first["geometric_mm"]["mean"]) + 1e-12  # one number, in its last bits
    n = _module().compare(run, book)["numbers"]
    assert n["identical"] == n["compared"] - 1 and len(n["first_differing"]) == 1
    assert n["first_differing"][0].endswith("/geometric_mm/mean") and "train_s" not in n["first_differing"][0]


def test_a_flipped_verdict_is_reported_as_reversed(book):
    """Turn one paired test of the run from 'better for every seed' into 'worse for every seed'."""
    run = copy.deepcopy(book)
    key, name, measure = next((k, n, m) for k, comps in run["paired_tests"].items() for n, ms in comps.items()
                              for m, c in ms.items() if c["better_seeds"] == c["seeds"])
    run["paired_tests"][key][name][measure]["better_seeds"] = 0
    out = _module().compare(run, book)
    assert out["verdicts_reversed"] == 1 and out["verdicts_same"] == out["verdicts_compared"] - 1
    (v,) = out["verdicts_differing"]
    assert (v["set"], v["comparison"], v["measure"], v["reversed"]) == (key, name, measure, True)


def test_bad_input_is_refused(book, tmp_path):
    mod = _module()
    with pytest.raises(ValueError, match="profiles differ"):
        mod.compare(dict(book, profile="ci"), book)
    with pytest.raises(ValueError, match="not a results"):
        mod.compare({"rows": []}, book)
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit):
        mod.main([str(bad), "--out", str(out)])
    assert not out.exists()  # nothing half-written


def test_chapter_seconds_from_a_build_log():
    log = ("[1/3] notebooks/02_sampling.ipynb -> out (profile cpu) ...\n[1/3] notebooks/02_sampling.ipynb done in 49.4 s\n"
           "noise\n[3/3] notebooks/04_breeding.ipynb done in 999.0 s\n")
    assert _module().chapter_seconds(log) == {"02_sampling": 49.4, "04_breeding": 999.0}
