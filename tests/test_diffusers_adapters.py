"""The diffusers adapters and the conformance report published for them.

``docs/reports/diffusers-*.json`` are the reports of ``diffrl conform --impl diffusers-*`` and
``docs/diffusers.rst`` shows them. These tests re-run the suite and require the same outcome for
every test that runs, so neither can go stale silently. By default a fast subset of the
conformance tests runs (the statistical and convergence-order tests, and the ones that take
longest to fail, are left out); ``DIFFRL_DIFFUSERS_FULL=1`` runs all of them and compares every
clause's status. ``python tests/test_diffusers_adapters.py`` prints the status tables of
docs/diffusers.rst from the committed reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "docs" / "reports"
DOC = ROOT / "docs" / "diffusers.rst"
ADAPTERS = ("diffusers-ddpm", "diffusers-ddim", "diffusers-dpmsolver")
FULL = bool(os.environ.get("DIFFRL_DIFFUSERS_FULL"))
#: Left out of the fast run: sampling-based and convergence-order tests, and schedule.cosine, where
#: hypothesis draws many examples before it concludes that all are inexpressible.
SLOW = ("exact_law", "convergence", "converges", "distribution", "flow", "cosine")

def _published(name: str) -> dict[str, Any]:
    return dict(json.loads((REPORTS / f"{name}.json").read_text()))


def status_table(report: dict[str, Any]) -> str:
    """The reST table of one report as docs/diffusers.rst shows it.

    One row per clause of the spec families the adapter maps (those with a clause that is not
    ``not-implemented``), then one row for the families it does not map.
    """
    def fam(clause_id: str) -> str:
        return clause_id.split(".")[0]

    mapped = {fam(c["id"]) for c in report["clauses"] if c["status"] not in ("not-implemented", "not-run")}
    impl = report["implementation"]
    lines = [f".. list-table:: {impl['name']} {impl['version']}: status per clause", "   :header-rows: 1",
             "   :widths: 30 30 10 15", "",
             "   * - clause", "     - status", "     - tests", "     - max err / allowed"]
    for c in report["clauses"]:
        if fam(c["id"]) not in mapped:
            continue
        status = c["status"]
        if status == "deviation":
            cats = sorted({d.split("(", 1)[1].split(")", 1)[0] for d in c["deviations"] if "(" in d})
            status += f" ({', '.join(cats)})"
        ratio = "" if c["max_error_ratio"] is None else f"{c['max_error_ratio']:.3g}"
        lines += [f"   * - ``{c['id']}``", f"     - {status}", f"     - {len(c['tests'])}", f"     - {ratio}".rstrip()]
    others = sorted({fam(c["id"]) for c in report["clauses"]} - mapped)
    statuses = sorted({c["status"] for c in report["clauses"] if fam(c["id"]) in others})
    if others:
        lines += [f"   * - other families: {', '.join(others)}", f"     - {', '.join(statuses)}", "     -", "     -"]
    return "\n".join(lines) + "\n"


# ---- without diffusers ---------------------------------------------------------------------------


def _run(*args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH", "")) if p))
    return subprocess.run([sys.executable, "-m", "diffrl_ref", *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir(), timeout=900)


def test_missing_diffusers_is_one_clear_line(tmp_path: Path) -> None:
    """Where diffusers cannot be imported, --impl diffusers-* names the extra to install, in one line."""
    fake = tmp_path / "diffusers"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'diffusers'\")\n")
    r = _run("conform", "--impl", "diffusers-ddim", pythonpath=str(tmp_path))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffrl: error:"), r.stderr
    assert "pip install 'diffrl-ref[diffusers]'" in lines[0]


def test_docs_tables_match_the_published_reports() -> None:
    text = DOC.read_text()
    for name in ADAPTERS:
        assert status_table(_published(name)) in text, f"docs/diffusers.rst: the table of {name} is stale"


# ---- with diffusers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_version() -> str:
    pytest.importorskip("torch")
    return str(pytest.importorskip("diffusers").__version__)


def test_factories(diffusers_version: str) -> None:
    from diffrl_ref.adapters import diffusers as adapters

    for name, factory in zip(ADAPTERS, (adapters.ddpm, adapters.ddim, adapters.dpmsolver), strict=True):
        a = factory()
        assert (a.name, a.version, a.dtype, a.device) == (name, diffusers_version, "float32", "cpu")
        with pytest.raises(ValueError, match="float32"):
            factory(dtype="float64")
        with pytest.raises(ValueError, match="device"):
            factory(device="tpu")


def test_ddim_inference_steps(diffusers_version: str) -> None:
    from diffrl_ref.adapters.diffusers import ddim_inference_steps

    assert ddim_inference_steps(10, 7, 0) == 1  # any step to k_prev = 0 is the final step
    assert 10 // ddim_inference_steps(10, 9, 6) == 3
    assert 10 // ddim_inference_steps(10, 5, 4) == 1
    for k, k_prev in ((9, 5), (5, 5), (3, 4), (2.5, 1)):
        with pytest.raises(NotImplementedError):
            ddim_inference_steps(10, k, k_prev)


def test_schedule_of_levels(diffusers_version: str) -> None:
    """The levels sit at the returned timesteps of the schedule; every beta is at most 1/2."""
    from diffrl_ref.adapters.diffusers import MAX_BETA, schedule_of_levels

    grid = np.array([1e-4, 0.3, 0.31, 0.97])
    betas, timesteps = schedule_of_levels(grid)
    ac = np.cumprod(1 - betas)
    # Each beta = 1 - l_i / l_{i-1} rounds twice in float64 and each factor of the product once more, so a level
    # is within 4 n eps (relative) of the grid after n factors; a beta meant to equal MAX_BETA may exceed it by
    # the rounding of the ratio (a few eps).
    eps64 = np.finfo(np.float64).eps
    assert np.all((betas > 0) & (betas <= MAX_BETA + 4 * eps64))
    np.testing.assert_allclose(ac[[*timesteps, 0]], grid, rtol=4 * betas.size * eps64)
    assert timesteps == sorted(timesteps, reverse=True)


def _outcomes(report: dict[str, Any], families: set[str]) -> dict[str, str]:
    """Test id -> outcome for the clauses of the spec families the adapter has a namespace for."""
    return {t["id"]: t["outcome"] for c in report["clauses"] for t in c["tests"] if c["id"].split(".")[0] in families}


def _conform_args(name: str, out: Path, families: set[str]) -> list[str]:
    """``out`` must not exist yet: an existing path would move pytest's rootdir, hence the node ids
    and with them hypothesis's derandomized examples (docs/diffusers.rst, last section)."""
    args = ["conform", "--impl", name, "--report", str(out), "-p", "no:warnings"]
    if not FULL:
        # Only the adapter's families, and the ci profile's examples without shrinking: a failure
        # is found as before, just not minimised.
        modules = " or ".join(f"test_{f}.py" for f in sorted(families))
        args += ["-k", f"({modules}) and " + " and ".join(f"not {s}" for s in SLOW), "--hypothesis-profile=meta"]
    return args


def test_published_reports_are_current(diffusers_version: str, tmp_path: Path) -> None:
    """``diffrl conform --impl NAME`` (built-in deviations applied) reproduces each committed report.

    The three runs are started together (much of their time is importing torch) and checked
    one by one; one test rather than three, so that pytest-xdist cannot start them twice. Only
    the spec families an adapter maps are compared: a clause added to another family is
    not-implemented for diffusers and does not make the published report stale.
    """
    for name in ADAPTERS:
        version = _published(name)["implementation"]["version"]
        if version != diffusers_version:
            pytest.skip(f"docs/reports/{name}.json is for diffusers {version}, installed: {diffusers_version}")
    from diffrl_ref.adapters import diffusers as adapters

    families = {name: set(factory().families) for name, factory in
                zip(ADAPTERS, (adapters.ddpm, adapters.ddim, adapters.dpmsolver), strict=True)}
    runs = {}
    for name in ADAPTERS:
        out = tmp_path / f"{name}.json"
        runs[name] = (subprocess.Popen([sys.executable, "-m", "diffrl_ref", *_conform_args(name, out, families[name])],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       cwd=tempfile.gettempdir()), out)
    problems = []
    try:
        for name, (proc, out) in runs.items():
            stdout, _ = proc.communicate(timeout=900)
            if not out.is_file():
                problems.append(f"{name}: no report written\n{stdout[-3000:]}")
                continue
            pub, got = _published(name), json.loads(out.read_text())
            ran, want = _outcomes(got, families[name]), _outcomes(pub, families[name])
            changed = {t: (want.get(t), o) for t, o in ran.items() if want.get(t) != o}
            if not ran or changed or got["warnings"]:
                problems.append(f"{name}: outcomes differ from docs/reports/{name}.json (published, now): "
                                f"{changed}; warnings {got['warnings']}")
            statuses = [{c["id"]: c["status"] for c in r["clauses"] if c["id"].split(".")[0] in families[name]}
                        for r in (got, pub)]
            if FULL and statuses[0] != statuses[1]:
                problems.append(f"{name}: clause statuses differ from docs/reports/{name}.json")
            if proc.returncode != (1 if "fail" in ran.values() else 0):
                problems.append(f"{name}: exit status {proc.returncode}\n{stdout[-3000:]}")
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert not problems, "\n".join(problems)

if __name__ == "__main__":
    for adapter in ADAPTERS:
        print(f"{adapter}\n")
        print(status_table(_published(adapter)))
