"""Multi-Agent MuJoCo (issue 20): the partitioned tasks have the single-agent v5 task's dynamics and reward."""

from __future__ import annotations

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
