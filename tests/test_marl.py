"""Multi-Agent MuJoCo (issue 20): the partitioned tasks have the single-agent v5 task's dynamics and reward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from diffrl_ref.rl import marl  # noqa: E402


@pytest.mark.parametrize("name", list(marl.PARTITIONS))
@pytest.mark.parametrize("seed", [0, 7])
def test_partition_equals_the_single_agent_task(name: str, seed: int) -> None:
    """Same seed, same joint actions: the state, every agent's reward and the termination are bit-identical to
    the single-agent v5 env's at every step (up to 300 steps or the episode's end), and each agent's observation
    is its local view of that state."""
    res = marl.equivalence(name, seed, 300)
    assert res["steps"] >= 10
    assert res["mismatches"] == {"state": 0, "reward": 0, "termination": 0, "local_view": 0}


def test_partitions_split_the_joints() -> None:
    """Each partition's local actions concatenate back to the whole action; every joint belongs to one agent."""
    for name, p in marl.PARTITIONS.items():
        env = marl.make(name)
        env.reset(seed=0)
        n_agents, per_agent = (int(x) for x in p.conf.split("x"))
        assert len(env.possible_agents) == n_agents
        a = np.arange(n_agents * per_agent, dtype=np.float32) / 10
        loc = marl.local_actions(env, a)
        assert [len(v) for v in loc.values()] == [per_agent] * n_agents
        np.testing.assert_array_equal(marl.global_action(env, loc), a)


def test_a_planted_difference_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a partitioned env whose reward is scaled by (1 + 1e-12) is reported at every step."""
    make = marl.make

    def scaled(name: str) -> object:
        env = make(name)
        step = env.step

        def wrong(actions: dict[str, np.ndarray]) -> tuple[object, ...]:
            obs, rew, term, trunc, info = step(actions)
            return obs, {k: v * (1 + 1e-12) for k, v in rew.items()}, term, trunc, info

        env.step = wrong
        return env

    monkeypatch.setattr(marl, "make", scaled)
    res = marl.equivalence("HalfCheetah-2x3", 0, 20)
    assert res["mismatches"]["reward"] == 20 and res["mismatches"]["state"] == 0


def test_unknown_partition_is_one_clear_error() -> None:
    with pytest.raises(marl.MarlError, match="unknown Multi-Agent MuJoCo partition 'Walker-9x9'"):
        marl.make("Walker-9x9")


# ---- datasets ----------------------------------------------------------------------------------------------


def test_joint_dataset_is_the_task_dataset_with_local_views(tmp_path: Path) -> None:
    """A partition's dataset holds the same transitions as its single-agent task's (same command, same seed),
    with every agent's local observation equal to the env's own local view of each row."""
    from diffrl_ref import cli
    from diffrl_ref.rl import datasets

    pytest.importorskip("minari")
    for env in ("HalfCheetah-2x3", "HalfCheetah-v5"):
        assert cli.main(["dataset", "make", "--env", env, "--kind", "random", "--out", str(tmp_path), "--size",
                         "300", "--eval-episodes", "1", "--no-progress"]) == 0
    joint = datasets.load_joint("diffrl/halfcheetah-2x3/random-v0", tmp_path)
    single = datasets.load_transitions("diffrl/halfcheetah/random-v0", tmp_path)
    assert joint.env == "HalfCheetah-2x3" and joint.agents == ["agent_0", "agent_1"] and len(joint) == 300
    np.testing.assert_array_equal(joint.state, single.observations)
    np.testing.assert_array_equal(joint.next_state, single.next_observations)
    np.testing.assert_array_equal(joint.actions, single.actions)
    np.testing.assert_array_equal(joint.rewards, single.rewards)
    assert joint.ref_min_score == single.ref_min_score
    env = marl.make("HalfCheetah-2x3")
    for row in (0, 17, 299):
        view = marl.local_observations(env, joint.state[row].astype(np.float64))
        for agent in joint.agents:
            np.testing.assert_array_equal(joint.observations[agent][row], view[agent].astype(np.float32))
    split = marl.local_actions(env, joint.actions[5])
    for agent in joint.agents:
        np.testing.assert_array_equal(joint.actions[5][joint.action_split[agent]], split[agent])
    with pytest.raises(datasets.DatasetError, match="multi-agent: read it with load_joint"):
        datasets.load_transitions("diffrl/halfcheetah-2x3/random-v0", tmp_path)
    with pytest.raises(datasets.DatasetError, match="single-agent: read it with load_transitions"):
        datasets.load_joint("diffrl/halfcheetah/random-v0", tmp_path)


def test_joint_dataset_from_a_single_agent_sac_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """medium on Hopper-3x1 from a SAC run on Hopper-v5 (its task); a run on another task is refused in one line."""
    from diffrl_ref import cli
    from diffrl_ref.rl import datasets

    pytest.importorskip("minari")
    run = tmp_path / "sac"
    assert cli.main(["train", "sac", "--env", "Hopper-v5", "--steps", "300", "--out", str(run), "--hp",
                     "learning_starts=200", "--hp", "batch_size=16", "--hp", "hidden=16", "--eval-every", "300",
                     "--eval-episodes", "1", "--threads", "1", "--no-progress", "--skip-conformance"]) == 0
    argv = ["dataset", "make", "--env", "Hopper-3x1", "--kind", "medium", "--policy", str(run), "--out",
            str(tmp_path / "d"), "--size", "200", "--eval-episodes", "1", "--no-progress"]
    assert cli.main(argv) == 0
    joint = datasets.load_joint("diffrl/hopper-3x1/medium-v0", tmp_path / "d")
    assert len(joint) == 200 and sorted(joint.observations) == ["agent_0", "agent_1", "agent_2"]
    meta = datasets.list_datasets(tmp_path / "d")
    assert meta[0]["env"] == "Hopper-3x1"
    capsys.readouterr()
    argv[argv.index("Hopper-3x1")] = "HalfCheetah-2x3"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not on --env HalfCheetah-v5" in err
