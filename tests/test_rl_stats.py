"""``diffrl plot --compare``: per-task bootstrap intervals (SciPy) and the IQM aggregate (rliable), on known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from diffrl_ref import cli
from diffrl_ref.rl import report, stats

pytest.importorskip("rliable")
pytest.importorskip("matplotlib")

from test_rl_report import fake_run  # noqa: E402


@pytest.fixture(autouse=True)
def fewer_reps(monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 stratified-bootstrap replications instead of 50,000: the same code path, 25 times faster (about 6 s
    per call on 2 cores at full size); every assertion below holds for any number of replications."""
    monkeypatch.setattr(stats, "REPS", 2000)


def test_mean_difference_verdicts_and_interval_bounds() -> None:
    """The percentile interval of a bootstrap lies between the smallest and largest resampled difference:
    min(a) - max(b) and max(a) - min(b); it excludes 0 only when the samples separate."""
    up = stats.mean_difference([10.0, 11.0, 12.0], [0.0, 1.0, 2.0])
    assert up["difference"] == pytest.approx(10.0) and up["verdict"] == "ahead" and up["n"] == [3, 3]
    assert 8.0 <= up["low"] < 10.0 < up["high"] <= 12.0
    assert stats.mean_difference([0.0, 1.0, 2.0], [10.0, 11.0, 12.0])["verdict"] == "behind"
    mixed = stats.mean_difference([0.0, 5.0, 10.0], [1.0, 6.0, 9.0])
    assert mixed["verdict"] == "not distinguishable" and mixed["low"] < 0 < mixed["high"]
    assert stats.mean_difference([1.0, 2.0, 3.0], [0.0, 1.0]) == stats.mean_difference([1.0, 2.0, 3.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="2 or more seeds"):
        stats.mean_difference([1.0], [0.0, 1.0])


def test_normalise_and_iqm() -> None:
    assert list(stats.normalise(np.array([-5.0, 95.0, 195.0]), -5.0, 95.0)) == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="no scale"):
        stats.normalise(np.array([1.0]), 3.0, 3.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    agg = stats.iqm({"a": x, "b": np.full((3, 4), 0.5)})
    # rliable's IQM is the 25%-trimmed mean of all runs and tasks together
    assert agg["a"]["iqm"] == pytest.approx(sps.trim_mean(x.ravel(), 0.25))
    assert agg["a"]["low"] < agg["a"]["iqm"] < agg["a"]["high"]
    assert agg["b"] == {"iqm": pytest.approx(0.5), "low": pytest.approx(0.5), "high": pytest.approx(0.5)}
    # reproducible (rliable draws from NumPy's global generator: seeded inside, the caller's state restored)
    np.random.seed(5)  # noqa: NPY002
    expected = np.random.rand()  # noqa: NPY002
    np.random.seed(5)  # noqa: NPY002
    assert all(stats.iqm({"a": x, "b": x + 1}) == stats.iqm({"a": x, "b": x + 1}) for _ in range(4))
    assert np.random.rand() == expected  # noqa: NPY002


def _pair(root: Path, env: str, a: list[float], b: list[float]) -> list[Path]:
    """diffsr and sac runs on ``env`` whose final (step 10,000) values are ``a`` and ``b``."""
    return ([fake_run(root, "diffsr", env, s, [0.0, 0.0, v], done=True) for s, v in enumerate(a)]
            + [fake_run(root, "sac", env, s, [0.0, 0.0, v], done=True) for s, v in enumerate(b)])


def test_compare_writes_tables_that_regenerate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = (_pair(tmp_path / "runs", "Hopper-v5", [300.0, 320.0, 340.0], [100.0, 110.0, 120.0])
            + _pair(tmp_path / "runs", "Walker2d-v5", [50.0, 400.0, 90.0], [100.0, 150.0, 200.0]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "random_returns.json").write_text(json.dumps({"Hopper-v5": 10.0, "Walker2d-v5": 0.0}))
    argv = ["plot", *map(str, runs), "--out", str(out), "--at", "10000", "--compare", "diffsr", "sac"]
    assert cli.main(argv) == 0
    c = json.loads((out / "comparison.json").read_text())
    hop, walk = c["tasks"]
    assert (hop["env"], hop["verdict"], walk["verdict"]) == ("Hopper-v5", "ahead", "not distinguishable")
    assert hop["difference"] == pytest.approx(210.0) and hop["random"] == 10.0
    # normalised by the random return and SAC's mean: Hopper (x - 10) / 100, Walker2d x / 150
    norm = np.stack([(np.array([300.0, 320, 340]) - 10) / 100, np.array([50.0, 400, 90]) / 150], axis=1)
    assert c["aggregate"]["diffsr"]["iqm"] == pytest.approx(sps.trim_mean(norm.ravel(), 0.25))
    assert c["aggregate_tasks"] == 2
    text = (out / "comparison.rst").read_text()
    assert "Diff-SR (ours) ahead" in text and "not distinguishable" in text and "rliable" in text
    from docutils import core  # the tests env installs it (tox.ini): a table sphinx -W would reject fails here

    core.publish_doctree(text, settings_overrides={"report_level": 2, "halt_level": 2})
    before = text
    assert cli.main(argv) == 0  # the same folder again: the same bytes
    assert (out / "comparison.rst").read_text() == before
    capsys.readouterr()
    assert cli.main(["plot", *map(str, runs), "--out", str(tmp_path / "o2"), "--at", "10000",
                     "--compare", "diffsr", "edp"]) == 2
    assert "no environment where both reached step 10,000" in capsys.readouterr().err


def test_random_returns_are_measured_once_and_kept(tmp_path: Path) -> None:
    cache = tmp_path / "random_returns.json"
    first = stats.random_returns(["Hopper-v5"], cache, episodes=2)
    assert json.loads(cache.read_text()) == first and first["Hopper-v5"] != 0.0
    cache.write_text(json.dumps({"Hopper-v5": 1.5}))
    assert stats.random_returns(["Hopper-v5"], cache) == {"Hopper-v5": 1.5}  # kept, not measured again
    assert report.metric("reach-v3") == "success_rate"
