"""The diffrl command line: spec listing, conformance runs, reports, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would: from a directory outside the checkout, so the installed
    package (not the source tree) is what runs."""
    import os
    import tempfile

    env = dict(os.environ, PYTHONPATH=str(FIXTURES) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "diffrl_ref", *args], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=600)


def test_spec_json() -> None:
    r = run("spec", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {"schedule.alpha_bar", "schedule.vp"} <= {row["id"] for row in rows}
    for row in rows:
        assert row["reference"] == f"diffrl_ref.reference.{row['id']}"
        assert row["tests"] and all(row["id"] in t for t in row["tests"])
        assert row["docs"] == f"docs/clauses/{row['id']}.rst"


def test_spec_table() -> None:
    r = run("spec")
    assert r.returncode == 0 and "schedule.alpha_bar" in r.stdout and "complete:" in r.stdout


def test_conform_list() -> None:
    r = run("conform", "--list")
    assert r.returncode == 0
    names = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert names[:2] == ["fast", "reference"], names


@pytest.mark.parametrize("impl", ["nosuchname", "nosuchmodule:obj", "user_adapter:missing"])
def test_conform_bad_impl_is_one_clear_line(impl: str) -> None:
    r = run("conform", "--impl", impl)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffrl: error:") and impl in lines[0], r.stderr


@pytest.mark.parametrize("impl", [None, "reference"])
def test_conform_report(tmp_path: Path, impl: str | None) -> None:
    """The default implementation is the production path (float32 on cpu); the reference checks itself."""
    out = tmp_path / "r.json"
    r = run("conform", *(["--impl", impl] if impl else []), "-k", "schedule", "--report", str(out))
    assert r.returncode == 0, r.stdout[-3000:]
    name = impl or "fast"
    assert f"implementation: {name}" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["implementation"]["name"] == name
    assert rep["implementation"]["dtype"] == ("float64" if impl else "float32")
    statuses = {c["id"]: c["status"] for c in rep["clauses"]}
    assert statuses["schedule.alpha_bar"] == "pass"
    assert rep["run"]["date"] and rep["suite"]["hypothesis_profile"] == "ci"


def test_conform_user_adapter_partial(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run("conform", "--impl", "user_adapter:adapter", "-k", "schedule or ddpm", "--report", str(out))
    rep = json.loads(out.read_text())
    statuses = {c["id"]: c["status"] for c in rep["clauses"]}
    assert rep["implementation"]["dtype"] == "float32"
    assert statuses["schedule.alpha_bar"] == "pass", r.stdout[-3000:]
    assert statuses["schedule.linear"] == "pass", r.stdout[-3000:]
    # cosine: only some offsets s are supported; examples with other s are discarded, not failed.
    assert statuses["schedule.cosine"] == "pass", r.stdout[-3000:]
    # vp raises NotImplementedError for every argument: not-implemented, not a failure.
    assert statuses["schedule.vp"] == "not-implemented", r.stdout[-3000:]
    assert statuses["ddpm.marginal"] == "not-implemented"
    assert r.returncode == 0


def test_conform_failure_report_names_clause_and_reproduction(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run("conform", "--impl", "user_adapter:broken", "-k", "alpha_bar", "--report", str(out))
    assert r.returncode == 1
    rep = json.loads(out.read_text())
    c = next(c for c in rep["clauses"] if c["id"] == "schedule.alpha_bar")
    assert c["status"] == "fail"
    f = c["failures"][0]
    assert "schedule.alpha_bar" in f["message"]
    assert f["reproduce"].startswith("diffrl conform --impl user_adapter:broken -k ")
    assert f["falsifying_example"] and "b=array([" in f["falsifying_example"]
    assert c["max_error_ratio"] is not None and c["max_error_ratio"] > 1
    assert "FAIL schedule.alpha_bar" in r.stdout


def test_conform_deviations_and_stale_warning(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run("conform", "--impl", "user_adapter:broken", "-k", "alpha_bar_ratio or vp_continuous",
            "--deviations", str(FIXTURES / "broken_deviations.yaml"), "--report", str(out))
    rep = json.loads(out.read_text())
    c = next(c for c in rep["clauses"] if c["id"] == "schedule.alpha_bar")
    assert c["status"] == "deviation", r.stdout[-2000:]
    assert any("schedule.vp:continuous_limit" in w for w in rep["warnings"])
    assert r.returncode == 0


def test_selftest_family(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    r = run("selftest", "--family", "schedule", "--target", "reference", "--json", str(out))
    assert r.returncode == 0, r.stdout
    assert "caught on their own clause: " in r.stdout and "(100.0%)" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["mutants"] == len(rep["bugs"]) > 0 and rep["by_target"]["fast"] == 0
    for bug in rep["bugs"]:
        assert bug["status"] == "caught" and bug["clause"] in bug["failed_clauses"], bug


def test_module_entry_point_from_the_repository_root() -> None:
    """The README's main command, ``python3 -m diffrl_ref conform``, run from the root of a checkout.

    There ``python3 -m`` puts the root first on sys.path, so the source folder diffrl_ref/ shadows
    the installed package; the wheel-only subpackage diffrl_ref.conformance must still be found.
    """
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "diffrl_ref", "conform", "-k", "alpha_bar_boundary"],
                       capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ModuleNotFoundError" not in r.stderr
    import re

    assert re.search(r"^  boundary\s+pass", r.stdout, flags=re.M), r.stdout[-3000:]


def test_not_checked_property_makes_the_clause_incomplete(tmp_path: Path) -> None:
    """A skipped check is not a pass: the property is not-checked, the clause incomplete, the exit status 1."""
    out = tmp_path / "r.json"
    r = run("conform", "--impl", "user_adapter:unchecked", "-k", "alpha_bar", "--report", str(out))
    assert r.returncode == 1, r.stdout[-3000:]
    rep = json.loads(out.read_text())
    c = next(c for c in rep["clauses"] if c["id"] == "schedule.alpha_bar")
    assert c["status"] == "incomplete" and rep["summary"]["incomplete"] == 1
    props = {p["name"]: p for p in c["properties"]}
    assert props["boundary"]["status"] == "not-checked"
    assert "could not check this" in props["boundary"]["reason"]
    assert "INCOMPLETE: 1 clause(s)" in r.stdout
    r = run("conform", "--impl", "user_adapter:unchecked", "-k", "alpha_bar", "--allow-incomplete")
    assert r.returncode == 0, r.stdout[-3000:]


def test_per_property_statuses_in_the_report(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run("conform", "--impl", "user_adapter:broken", "-k", "alpha_bar", "--report", str(out))
    rep = json.loads(out.read_text())
    c = next(c for c in rep["clauses"] if c["id"] == "schedule.alpha_bar")
    props = {p["name"]: p for p in c["properties"]}
    assert set(props) == {"boundary", "ratio", "monotone", "rejects_out_of_domain", "matches_reference"}
    assert props["ratio"]["status"] == "fail" and props["ratio"]["worst_error_ratio"] > 1
    assert props["ratio"]["reason"].startswith("schedule.alpha_bar")
    assert rep["property_summary"]["fail"] >= 1 and "statistical_checks" in rep
    assert r.returncode == 1


def test_a_deviation_hides_only_the_failure_it_describes(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run("conform", "--impl", "user_adapter:broken", "-k", "alpha_bar_ratio",
            "--deviations", str(FIXTURES / "other_failure_deviations.yaml"), "--report", str(out))
    assert r.returncode == 1, r.stdout[-3000:]
    rep = json.loads(out.read_text())
    c = next(c for c in rep["clauses"] if c["id"] == "schedule.alpha_bar")
    assert c["status"] == "fail"
    assert "this is another failure" in c["failures"][0]["detail"][-1]


def test_a_deviation_must_name_its_property_and_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deviations:\n  - {clause: schedule.alpha_bar, property: ratio, category: bug, reason: r}\n")
    r = run("conform", "--impl", "user_adapter:broken", "--deviations", str(bad))
    assert r.returncode == 2 and "give the expected failure" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad.write_text("deviations:\n  - {clause: schedule.alpha_bar, category: bug, reason: r, expect: x}\n")
    r = run("conform", "--impl", "user_adapter:broken", "--deviations", str(bad))
    assert r.returncode == 2 and "missing 'property'" in r.stderr


def test_docs_bad_out() -> None:
    r = run("docs", "--out", "/nonexistent/dir/clauses")
    assert r.returncode == 2 and r.stderr.startswith("diffrl: error:")


def test_plain_pytest_with_environment_variable() -> None:
    """The suite runs under plain pytest, the implementation chosen by DIFFRL_IMPL."""
    import os
    import tempfile

    env = dict(os.environ, DIFFRL_IMPL="user_adapter:adapter",
               PYTHONPATH=str(FIXTURES) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "diffrl_ref.conformance", "-q",
                        "-k", "alpha_bar_boundary or vp_continuous"],
                       capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "user-float32-schedules 0.0.1  dtype=float32" in r.stdout
    import re

    # Filtered with -k: the clause is partial (its other properties not run), the selected one passed.
    assert re.search(r"schedule\.alpha_bar\s+partial", r.stdout), r.stdout[-2000:]
    assert re.search(r"^  boundary\s+pass", r.stdout, flags=re.M), r.stdout[-2000:]


def test_bench_small_run_writes_json_table_and_plot(tmp_path: Path) -> None:
    """A tiny ``diffrl bench``: every loop measured, ratios and fractions in the table, a plot."""
    out = tmp_path / "b"
    r = run("bench", "--batch", "1", "--steps", "2", "--min-time", "0", "--min-reps", "2", "--threads", "1",
            "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "bench.json").read_text())
    assert res["command"].startswith("diffrl bench --batch 1") and res["machine"]["cores"] >= 1
    loops = {row["loop"] for row in res["sampling"]}
    assert {"network-ddim", "fast-ddim", "fast-dpmpp2m", "reference-ddim"} <= loops
    for row in res["sampling"]:
        assert row["ms"] > 0 and row["reps"] >= 2
        if not row["loop"].startswith("network"):
            assert row["outside_network"] < 1 and row["peak_bytes"] is not None and row["peak_bytes"] >= 0
    assert {row["loop"] for row in res["training"]} >= {"network", "fast-bc-loss"}
    table = (out / "bench.rst").read_text()
    assert "Measured" in table and res["command"] in table
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").stat().st_size > 1000


@pytest.mark.parametrize("args, msg", [(["--batch", "0"], "--batch must be positive"),
                                       (["--steps", "2000"], "--steps must be <= 1000"),
                                       (["--threads", "0"], "--threads must be >= 1")])
def test_bench_bad_input_is_one_clear_line(args: list[str], msg: str) -> None:
    r = run("bench", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffrl: error:") and msg in lines[0], r.stderr


def test_deviation_scoped_to_a_dtype_applies_only_to_that_dtype(tmp_path: Path) -> None:
    """fast.yaml's bfloat16 entries must neither hide float32 failures nor be reported stale there."""
    from types import SimpleNamespace

    import yaml

    from diffrl_ref.suite.report import deviations_dir, load_deviations

    entries = yaml.safe_load((deviations_dir() / "fast.yaml").read_text())["deviations"]
    assert entries and all(e.get("dtype") == "bfloat16" for e in entries)
    for dtype, n in (("float32", 0), ("float64", 0), ("bfloat16", len(entries))):
        devs = load_deviations(SimpleNamespace(name="fast", dtype=dtype, device="cpu"), None)
        assert len(devs) == n, (dtype, len(devs))
    bad = tmp_path / "bad.yaml"
    bad.write_text("deviations:\n  - {clause: ddpm.noise, property: distribution, category: bug, reason: r, "
                   "expect: x, dtype: float8}\n")
    with pytest.raises(ValueError, match="dtype must be among"):
        load_deviations(SimpleNamespace(name="x", dtype="float32", device="cpu"), str(bad))
