"""d3rlpy baselines (issue 19, item 5): baselines/d3rlpy_run.py writes the project's run folders, and the
MuJoCo v5 tasks of its environment (gymnasium 1.0.0) equal the project's (gymnasium 1.4.0).

The script runs in its own environment (baselines/constraints-d3rlpy.txt; ``tox -e d3rlpy`` builds it).
The end-to-end test needs that environment's python: ``$DIFFRL_D3RLPY_PYTHON``, else ``.tox/d3rlpy/bin/python``
of this checkout; without either it is skipped. The other tests run in the project's environment alone.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("minari")

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.rl import logs, loop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "baselines"
ID = "diffrl/hopper/random-v0"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"baselines_{name}", BASELINES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


run_mod = _module("d3rlpy_run")
check_mod = _module("check_envs")


def test_d3rlpy_losses_map_onto_train_columns() -> None:
    """The run-folder format itself is diffrl_ref.rl.logs (imported by the script, not copied)."""
    assert run_mod.CsvLog is logs.CsvLog and run_mod.EVAL_COLUMNS is logs.EVAL_COLUMNS
    assert set(run_mod.LOSS_COLUMNS.values()) <= set(logs.TRAIN_COLUMNS)


def test_identity_is_an_offline_run_identity() -> None:
    args = run_mod.parser().parse_args(["iql", "--dataset", ID, "--dataset-root", "r", "--steps", "10", "--out", "o",
                                        "--seed", "3", "--eval-every", "7", "--eval-episodes", "2",
                                        "--hp", "expectile=0.8"])
    hp = run_mod.parse_hp("iql", args.hp)
    expected = loop.RunConfig(algo="d3rlpy-iql", env="Hopper-v5", seed=3, steps=10, eval_every=7, eval_episodes=2,
                              hp=hp, dataset=ID).identity()
    assert run_mod.identity(args, "Hopper-v5", hp) == expected


def test_hyperparameters_parse_and_resolve() -> None:
    assert run_mod.parse_hp("iql", ["max_weight=50", "batch_size=128.0", "expectile=0.9"]) == \
        {"batch_size": 128, "expectile": 0.9, "max_weight": 50.0}
    assert run_mod.parse_hp("td3bc", ["standardize_observations=false"]) == {"standardize_observations": False}
    for bad in (["nope=1"], ["batch_size=1.5"], ["expectile"], ["expectile=x"], ["alpha=-1"]):
        with pytest.raises(run_mod.RunError):
            run_mod.parse_hp("iql" if bad != ["alpha=-1"] else "td3bc", bad)
    with pytest.raises(run_mod.RunError):
        run_mod.parse_hp("bc", ["policy_type=gaussian"])
    iql = run_mod.resolve_hp("iql", ID, {})
    assert (iql["expectile"], iql["weight_temp"], iql["max_weight"], iql["reward_multiplier"]) == (0.7, 3.0, 100.0,
                                                                                                    1000.0)
    assert run_mod.resolve_hp("td3bc", ID, {})["alpha"] == 2.5
    # d3rlpy's CQL script: conservative_weight 10 for the medium-v0 sets, else 5
    assert run_mod.resolve_hp("cql", "diffrl/hopper/medium-v0", {})["conservative_weight"] == 10.0
    assert run_mod.resolve_hp("cql", "diffrl/hopper/medium-replay-v0", {})["conservative_weight"] == 5.0
    assert run_mod.resolve_hp("cql", "diffrl/hopper/medium-v0", {"conservative_weight": 1.0})["conservative_weight"] \
        == 1.0
    assert all(src for table in run_mod.HP.values() for _, src in table.values())


def _envcheck(version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BASELINES / f"envcheck-gymnasium-{version}.json").read_text())
    return data


def test_committed_env_checks_are_equal_and_compare_sees_a_difference() -> None:
    new, old = _envcheck("1.4.0"), _envcheck("1.0.0")
    assert (new["versions"]["gymnasium"], old["versions"]["gymnasium"]) == ("1.4.0", "1.0.0")
    assert set(new["tasks"]) >= {"HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"}
    lines, same = check_mod.compare(new, old)
    assert same, lines
    tampered = copy.deepcopy(old)
    tampered["tasks"]["Hopper-v5"]["sha256"]["rewards"] = "0" * 64
    del tampered["tasks"]["Ant-v5"]
    lines, same = check_mod.compare(new, tampered)
    assert not same
    assert "Hopper-v5: different (rewards)" in "\n".join(lines) and "Ant-v5: missing in B" in lines


def test_committed_hashes_are_this_environments() -> None:
    """The 1.4.0 file describes the project's environment as installed (regenerate it after a bump)."""
    ours = check_mod.versions()
    if (ours["gymnasium"], ours["mujoco"]) != ("1.4.0", "3.3.0"):
        pytest.skip(f"gymnasium {ours['gymnasium']}, mujoco {ours['mujoco']}: the file is for 1.4.0 and 3.3.0")
    committed = _envcheck("1.4.0")["tasks"]["Hopper-v5"]
    got = check_mod.rollout("Hopper-v5", committed["steps"])
    got["project_evaluation"] = check_mod.project_evaluation("Hopper-v5", 2)
    assert got["sha256"] == committed["sha256"] and got["spaces_sha256"] == committed["spaces_sha256"]
    assert got["project_evaluation"] == committed["project_evaluation"]


# ---- end to end, with the d3rlpy environment's python ---------------------------------------------------


def _d3rlpy_python() -> str:
    given = os.environ.get("DIFFRL_D3RLPY_PYTHON")
    if given:
        return given
    tox = ROOT / ".tox" / "d3rlpy" / "bin" / "python"
    if tox.exists():
        return str(tox)
    pytest.skip("no d3rlpy environment: set DIFFRL_D3RLPY_PYTHON to its python, or build .tox/d3rlpy with "
                "`tox -e d3rlpy` (baselines/constraints-d3rlpy.txt)")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in ("train_seconds", "steps_per_s")} for r in csv.DictReader(fh)]


def test_d3rlpy_iql_run_resumes_and_is_plotted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """diffrl dataset make (gymnasium 1.4.0) -> d3rlpy_run.py iql (d3rlpy's python, gymnasium 1.0.0), a run
    extended from its checkpoint equal to a straight one -> diffrl plot."""
    python = _d3rlpy_python()
    root = tmp_path / "datasets"
    assert cli.main(["dataset", "make", "--env", "Hopper-v5", "--kind", "random", "--out", str(root),
                     "--size", "2000", "--eval-episodes", "2", "--no-progress"]) == 0

    def d3(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, str(BASELINES / "d3rlpy_run.py"), "iql", "--dataset", ID, "--dataset-root",
                               str(root), "--steps", str(steps), "--seed", "1", "--out", str(out), "--eval-every",
                               "100", "--eval-episodes", "1", "--log-every", "50", "--threads", "1",
                               "--no-progress", *extra], capture_output=True, text=True, timeout=600)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    res = d3(straight, 200)
    assert res.returncode == 0, res.stderr[-2000:]
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"] == {"format": 1, "algo": "d3rlpy-iql", "env": "Hopper-v5", "seed": 1, "eval_every": 100,
                                "eval_episodes": 1, "hp": {}, "dataset": ID}
    assert (conf["versions"]["d3rlpy"], conf["versions"]["gymnasium"]) == ("2.8.1", "1.0.0")
    assert conf["resolved"]["expectile"] == 0.7
    assert d3(resumed, 100).returncode == 0  # stops at 100 with a checkpoint; the same command to 200 goes on
    assert d3(resumed, 200).returncode == 0
    for name in ("eval.csv", "train.csv", "d3rlpy_losses.csv"):
        assert _rows(straight / name) == _rows(resumed / name), name
    assert [r["step"] for r in _rows(straight / "eval.csv")] == ["0", "100", "200"]
    assert _rows(straight / "episodes.csv") == []
    done = json.loads((straight / "done.json").read_text())
    assert done["steps"] == done["learn_steps"] == 200 and done["last_eval"]["return_mean"] > 0
    again = d3(straight, 200)
    assert again.returncode == 0 and "already complete" in again.stdout
    bad = d3(straight, 200, "--hp", "expectile=0.9")  # another run's identity
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("d3rlpy_run: ")
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    rows = json.loads((tmp_path / "plot" / "results.json").read_text())
    assert rows[0]["algo"] == "d3rlpy-iql" and rows[0]["env"] == ID and rows[0]["at"]["200"]["n"] == 1
    assert rows[0]["complete"] and rows[0]["steps_per_s"] > 0
