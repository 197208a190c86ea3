"""d3rlpy baselines (issue 19, item 5): baselines/d3rlpy_run.py writes the project's run folders, and the
MuJoCo v5 tasks of its environment (gymnasium 1.0.0) equal the project's (gymnasium 1.4.0).

The script runs in its own environment (baselines/constraints-d3rlpy.txt; ``tox -e d3rlpy`` builds it).
The end-to-end test needs that environment's python: ``$DIFFRL_D3RLPY_PYTHON``, else ``.tox/d3rlpy/bin/python``
of this checkout; without either it is skipped. The other tests run in the project's environment alone.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("minari")

from runs_util import log_rows, plotted  # noqa: E402

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
    for bad in (["nope=1"], ["batch_size=1.5"], ["expectile"], ["expectile=x"], ["alpha=-1"], ["hidden=0"]):
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


# ---- multi-agent datasets: independent learners (issue 20, item 6) ---------------------------------------

MA_ID = "diffrl/halfcheetah-2x3/random-v0"


def _toy(agents: bool = True) -> Any:
    """A 5-row dataset with a 5-entry state, 4 actions and two agents with overlapping views and interleaved
    action entries (so that a split by position or a shared copy would show)."""
    rng = np.random.default_rng(0)
    state = rng.normal(size=(5, 5)).astype(np.float32)
    views = {"agent_0": np.array([0, 1, 2]), "agent_1": np.array([2, 3, 4])}
    split = {"agent_0": np.array([0, 2]), "agent_1": np.array([1, 3])}
    return run_mod.Data("toy", "Toy-2x2", state, rng.uniform(-1, 1, (5, 4)).astype(np.float32),
                        np.arange(5, dtype=np.float32), np.array([0, 0, 1, 0, 0], np.float32),
                        np.array([0, 0, 0, 0, 1], np.float32), 2, None, None, task="Toy-v5",
                        **({"agents": list(views), "local": {k: state[:, v] for k, v in views.items()},
                            "local_view": views, "action_split": split} if agents else {}))


def test_per_agent_datasets_are_each_agents_own_view_and_actions() -> None:
    data = _toy()
    run_mod.check_layout(data)
    parts = run_mod.per_agent(data)
    assert list(parts) == ["agent_0", "agent_1"]
    for k, part in parts.items():
        np.testing.assert_array_equal(part.observations, data.observations[:, data.local_view[k]])
        np.testing.assert_array_equal(part.actions, data.actions[:, data.action_split[k]])
        for shared in ("rewards", "terminals", "timeouts"):
            assert getattr(part, shared) is getattr(data, shared)
        assert (part.env, part.task, part.agents, part.local) == ("Toy-2x2", "Toy-v5", [], {})
    single = _toy(agents=False)
    assert single.task == "Toy-v5" and run_mod.per_agent(single) == {}
    assert run_mod.Data("d", "Hopper-v5", *([np.zeros((1, 1))] * 5), 1, None, None).task == "Hopper-v5"
    bad = _toy()
    bad.local["agent_1"] = bad.local["agent_1"].copy()
    bad.local["agent_1"][3, 0] += 1.0
    with pytest.raises(run_mod.RunError, match="agent_1's observations are not its local_view"):
        run_mod.check_layout(bad)
    bad = _toy()
    bad.action_split["agent_1"] = np.array([1, 2])
    with pytest.raises(run_mod.RunError, match="does not partition the 4 actions"):
        run_mod.check_layout(bad)


def test_joint_action_is_decentralised() -> None:
    """Agent j's entries depend on its local view alone: changing the entries it does not see leaves them as they
    were, changing one it sees changes them (the check can fail)."""
    data, rng = _toy(), np.random.default_rng(1)
    names = data.agents
    weights = [rng.normal(size=(len(data.action_split[k]), len(data.local_view[k]))) for k in names]
    act = run_mod.joint_action([lambda o, w=w: w @ o for w in weights], [data.local_view[k] for k in names],
                               [data.action_split[k] for k in names], 4)
    s = rng.normal(size=5).astype(np.float32)
    a = act(s)
    assert a.dtype == np.float32 and a.shape == (4,)
    for j, k in enumerate(names):
        view, split = data.local_view[k], data.action_split[k]
        np.testing.assert_allclose(a[split], weights[j] @ s[view], rtol=1e-6)
        unseen = np.setdiff1d(np.arange(5), view)
        s2 = s.copy()
        s2[unseen] += 10.0
        np.testing.assert_array_equal(act(s2)[split], a[split])
        s3 = s.copy()
        s3[view[0]] += 10.0
        assert not np.array_equal(act(s3)[split], a[split])


def test_load_data_of_a_multi_agent_dataset_is_load_joints(tmp_path: Path) -> None:
    """The script reads a partition's Minari dataset (Dict observations) to the rows ``datasets.load_joint`` gives
    the project's multi-agent agents, and evaluates in the partition's single-agent task."""
    from diffrl_ref.rl import datasets

    assert cli.main(["dataset", "make", "--env", "HalfCheetah-2x3", "--kind", "random", "--out", str(tmp_path),
                     "--size", "300", "--eval-episodes", "1", "--no-progress"]) == 0
    data = run_mod.load_data(MA_ID, tmp_path)
    joint = datasets.load_joint(MA_ID, tmp_path)
    assert (data.env, data.task, data.agents) == ("HalfCheetah-2x3", "HalfCheetah-v5", joint.agents)
    np.testing.assert_array_equal(data.observations, joint.state)
    np.testing.assert_array_equal(data.terminals, joint.terminals)
    assert data.timeouts[-1] == 1 and data.timeouts.sum() == 1  # the cut last episode
    for k, part in run_mod.per_agent(data).items():
        np.testing.assert_array_equal(data.local_view[k], joint.local_view[k])
        np.testing.assert_array_equal(part.observations, joint.observations[k])
        np.testing.assert_array_equal(part.actions, joint.actions[:, joint.action_split[k]])
        np.testing.assert_array_equal(part.rewards, joint.rewards)


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
        assert log_rows(straight / name) == log_rows(resumed / name), name
    assert [r["step"] for r in log_rows(straight / "eval.csv")] == ["0", "100", "200"]
    assert log_rows(straight / "episodes.csv") == []
    done = json.loads((straight / "done.json").read_text())
    assert done["steps"] == done["learn_steps"] == 200 and done["last_eval"]["return_mean"] > 0
    again = d3(straight, 200)
    assert again.returncode == 0 and "already complete" in again.stdout
    bad = d3(straight, 200, "--hp", "expectile=0.9")  # another run's identity
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("d3rlpy_run: ")
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    # d3rlpy_run writes the same dataset.json as diffrl train, so the dataset's own row is there
    rows = plotted(tmp_path / "plot", ID, root, 200)
    assert list(rows) == ["dataset", "d3rlpy-iql"]
    iql = rows["d3rlpy-iql"]
    assert iql["env"] == ID and iql["at"]["200"]["n"] == 1 and iql["complete"] and iql["steps_per_s"] > 0


#: run in the d3rlpy environment: the policies of run folders rebuilt from their checkpoints (load_policy), checked
#: for decentralisation on random states, and replayed in the task with the project's evaluation
_CHECK = """
import importlib.util, io, json, pickle, sys
import numpy as np, torch
spec = importlib.util.spec_from_file_location("d3rlpy_run", sys.argv[1])
mod = importlib.util.module_from_spec(spec); sys.modules["d3rlpy_run"] = mod; spec.loader.exec_module(mod)
from diffrl_ref.rl import envs
out = {}
for folder in sys.argv[2:]:
    conf = json.loads(open(folder + "/config.json").read())
    agents, seed = conf["resolved"]["agents"], conf["identity"]["seed"]
    policy, rng = mod.load_policy(folder), np.random.default_rng(0)
    unseen_same, seen_differs = True, 0
    for _ in range(5):
        s = rng.normal(size=17).astype(np.float32)
        a = policy(s)
        for k, v in agents.items():
            split, view = np.asarray(v["action_split"]), np.asarray(v["local_view"])
            s2 = s.copy(); s2[np.setdiff1d(np.arange(17), view)] += rng.normal(size=17 - len(view)).astype(np.float32)
            unseen_same &= bool(np.array_equal(policy(s2)[split], a[split]))
            s3 = s.copy(); s3[view] += 1.0
            seen_differs += int(not np.array_equal(policy(s3)[split], a[split]))
    ret = envs.evaluate(policy, envs.make(conf["resolved"]["task"], seed, evaluation=True), seed,
                        conf["identity"]["eval_episodes"])["return_mean"]
    nets = {k: torch.load(io.BytesIO(pickle.loads(open(f"{folder}/model-{k}.d3", "rb").read())["torch"]),
                          weights_only=False) for k in agents}
    out[folder] = {"unseen_same": unseen_same, "seen_differs": seen_differs, "return": ret,
                   "views": {k: len(v["local_view"]) for k, v in agents.items()},
                   "inputs": {k: n["policy" if "policy" in n else "imitator"]["_encoder._layers.0.weight"].shape[1]
                              for k, n in nets.items()},
                   "weights": {k: {m: [t.tolist() for t in sd.values()] for m, sd in n.items()
                                   if "optim" not in m} for k, n in nets.items()}}
# the first folder's agents each equal a solo run of d3rlpy on its own dataset from its own seed (fitter's steps)
import d3rlpy
from pathlib import Path
from d3rlpy.algos.utility import build_scalers_with_transition_picker
folder = sys.argv[2]
conf = json.loads(open(folder + "/config.json").read())
ident, steps = conf["identity"], json.loads(open(folder + "/done.json").read())["steps"]
hp = mod.resolve_hp(ident["algo"][len("d3rlpy-"):], ident["dataset"], ident["hp"])
torch.set_num_threads(1)
solo = {}
for j, (k, part) in enumerate(mod.per_agent(mod.load_data(ident["dataset"], Path(conf["dataset_root"]))).items()):
    ds = mod.mdp_dataset(part)
    d3rlpy.seed(mod.agent_seed(ident["seed"], j))
    algo = mod.make_algo(ident["algo"][len("d3rlpy-"):], hp)
    build_scalers_with_transition_picker(algo, ds)
    algo.build_with_dataset(ds)
    for _ in range(steps):
        algo.update(ds.sample_transition_batch(hp["batch_size"]))
    buf = io.BytesIO(); algo.impl.save_model(buf)
    solo[k] = {m: [t.tolist() for t in sd.values()] for m, sd in torch.load(io.BytesIO(buf.getvalue()),
                                                                             weights_only=False).items()
               if "optim" not in m}
out["solo"] = solo
print(json.dumps(out))
"""


def test_d3rlpy_independent_learners_on_a_multi_agent_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) \
        -> None:
    """diffrl dataset make --env HalfCheetah-2x3 -> d3rlpy_run.py iql and bc, one learner per agent (tiny networks):
    the IQL run extended from its checkpoint equals a straight one, every agent acts on its own local view alone,
    the checkpointed joint policy replays the last evaluation in HalfCheetah-v5, and diffrl plot reports both."""
    python = _d3rlpy_python()
    root = tmp_path / "datasets"
    assert cli.main(["dataset", "make", "--env", "HalfCheetah-2x3", "--kind", "random", "--out", str(root),
                     "--size", "1500", "--eval-episodes", "1", "--no-progress"]) == 0

    def d3(algo: str, out: Path, steps: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, str(BASELINES / "d3rlpy_run.py"), algo, "--dataset", MA_ID, "--dataset-root",
                               str(root), "--steps", str(steps), "--seed", "2", "--out", str(out), "--eval-every",
                               "100", "--eval-episodes", "1", "--log-every", "50", "--threads", "1",
                               "--no-progress", "--hp", "hidden=16", "--hp", "batch_size=32"],
                              capture_output=True, text=True, timeout=600)

    straight, resumed, bc = tmp_path / "iql", tmp_path / "iql-resumed", tmp_path / "bc"
    for algo, out, steps in (("iql", straight, 200), ("iql", resumed, 100), ("iql", resumed, 200), ("bc", bc, 200)):
        res = d3(algo, out, steps)
        assert res.returncode == 0, res.stderr[-2000:]
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"] == {"format": 1, "algo": "d3rlpy-iql", "env": "HalfCheetah-2x3", "seed": 2,
                                "eval_every": 100, "eval_episodes": 1, "hp": {"batch_size": 32, "hidden": 16},
                                "dataset": MA_ID}
    agents = conf["resolved"]["agents"]
    assert list(agents) == ["agent_0", "agent_1"] and conf["resolved"]["task"] == "HalfCheetah-v5"
    assert agents["agent_0"]["seed"] != agents["agent_1"]["seed"]
    assert sorted(agents["agent_0"]["action_split"] + agents["agent_1"]["action_split"]) == list(range(6))
    for name in ("eval.csv", "train.csv", "d3rlpy_losses.csv"):
        assert log_rows(straight / name) == log_rows(resumed / name), name
    losses = log_rows(straight / "d3rlpy_losses.csv")
    assert {"agent_0/critic_loss", "agent_1/critic_loss", "agent_1/v_loss"} <= set(losses[0])
    train = log_rows(straight / "train.csv")
    assert float(train[0]["critic_loss"]) == pytest.approx(
        (float(losses[0]["agent_0/critic_loss"]) + float(losses[0]["agent_1/critic_loss"])) / 2, rel=1e-5)
    assert log_rows(bc / "train.csv")[0]["actor_loss"] != ""

    res = subprocess.run([python, "-c", _CHECK, str(BASELINES / "d3rlpy_run.py"), str(straight), str(resumed),
                          str(bc)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    checks = json.loads(res.stdout.strip().splitlines()[-1])
    for folder in (straight, bc):
        got = checks[str(folder)]
        assert all(n < 17 for n in got["views"].values())  # some of the state is hidden from each agent
        assert got["inputs"] == got["views"]  # each agent's policy network takes its own view's entries
        assert got["unseen_same"] and got["seen_differs"] >= 8  # of 10 (5 states, 2 agents)
        last = log_rows(folder / "eval.csv")[-1]
        # eval.csv keeps 6 significant digits
        assert last["step"] == "200" and got["return"] == pytest.approx(float(last["return_mean"]), rel=1e-5)
    # the same networks (model files' bytes differ: d3rlpy re-serialises a reloaded config, 0 as 0.0)
    assert checks[str(straight)]["weights"] == checks[str(resumed)]["weights"]
    # independent learners: each agent trained exactly as d3rlpy alone on its dataset from its own seed would
    assert checks["solo"] == checks[str(straight)]["weights"]
    assert checks[str(straight)]["weights"]["agent_0"] != checks[str(straight)]["weights"]["agent_1"]

    capsys.readouterr()
    assert cli.main(["plot", str(straight), str(bc), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    rows = plotted(tmp_path / "plot", MA_ID, root, 200)
    assert list(rows) == ["dataset", "d3rlpy-bc", "d3rlpy-iql"]
    assert all(r["env"] == MA_ID and r["at"]["200"]["n"] == 1 and r["complete"] and r["steps_per_s"] > 0
               for k, r in rows.items() if k != "dataset")


def test_sweep_runs_d3rlpy_cells_as_the_runner_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid group ``d3rlpy-bc`` runs baselines/d3rlpy_run.py in the d3rlpy environment: its cell folder holds
    the same logs as the runner's own command; bad overrides and a missing environment are grid errors."""
    pytest.importorskip("ray")
    from diffrl_ref.rl import sweep

    python = _d3rlpy_python()
    root = tmp_path / "datasets"
    assert cli.main(["dataset", "make", "--env", "Hopper-v5", "--kind", "random", "--out", str(root),
                     "--size", "600", "--eval-episodes", "1", "--no-progress"]) == 0
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"steps: 100\nseeds: [3]\ndatasets: [{ID}]\ndataset_root: {root}\neval_every: 50\n"
                    "eval_episodes: 1\ngroups: [{algo: d3rlpy-bc, hp: {hidden: 16, batch_size: 32}}]\n")
    out = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "diffrl_ref", "sweep", str(grid), "--out", str(out), "--runs-at-once",
                          "1"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "DIFFRL_D3RLPY_PYTHON": python})
    assert res.returncode == 0, res.stderr[-2000:]
    cell = out / ID / "d3rlpy-bc" / "seed3"
    direct = tmp_path / "direct"
    res = subprocess.run([python, str(BASELINES / "d3rlpy_run.py"), "bc", "--dataset", ID, "--dataset-root", str(root),
                          "--steps", "100", "--seed", "3", "--out", str(direct), "--eval-every", "50",
                          "--eval-episodes", "1", "--threads", "1", "--no-progress", "--hp", "batch_size=32",
                          "--hp", "hidden=16"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((cell / "config.json").read_text())["identity"] == \
        json.loads((direct / "config.json").read_text())["identity"]
    for name in ("eval.csv", "train.csv"):
        assert log_rows(cell / name) == log_rows(direct / name), name
    assert (cell / "dataset.json").read_text() == (direct / "dataset.json").read_text()
    again = subprocess.run([sys.executable, "-m", "diffrl_ref", "sweep", str(grid), "--out", str(out)],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "DIFFRL_D3RLPY_PYTHON": python})
    assert again.returncode == 0 and "1 already done, 0 to run" in again.stdout

    grid.write_text(f"steps: 100\nseeds: [0]\ndatasets: [{ID}]\ndataset_root: {root}\n"
                    "groups: [{algo: d3rlpy-iql, hp: {nope: 1}}]\n")
    with pytest.raises(sweep.SweepError, match="unknown iql hyperparameter 'nope'"):
        sweep.load_grid(grid)
    monkeypatch.delenv("DIFFRL_D3RLPY_PYTHON", raising=False)
    monkeypatch.setattr(sweep, "checkouts", lambda: [tmp_path])  # no .tox/d3rlpy there
    with pytest.raises(sweep.SweepError, match="DIFFRL_D3RLPY_PYTHON"):
        sweep.load_grid(grid)
