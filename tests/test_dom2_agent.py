"""DOM2 (issue 20): decentralised diffusion policies with CQL critics, trained on a Multi-Agent MuJoCo dataset.

These tests check that the critic minimises the written continuous CQL loss, that training and execution are
decentralised (agent j's update and action read nothing of another agent), and that the documented command
sequence makes a multi-agent dataset, trains, resumes after kill -9 to the same numbers, and plots.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium_robotics")
pytest.importorskip("minari")

from runs_util import HOPPER_3X1, log_rows, plotted, stop_after_checkpoint  # noqa: E402

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.rl import gate  # noqa: E402
from diffrl_ref.rl.datasets import JointTransitions  # noqa: E402
from diffrl_ref.rl.dom2 import DOM2Agent, DOM2Config, solver_tau  # noqa: E402

ID = "diffrl/halfcheetah-2x3/random-v0"
TINY = ["--hp", "hidden=16", "--hp", "batch_size=16", "--hp", "t_dim=4", "--hp", "eval_samples=4"]


def _joint(n: int = 64, seed: int = 0, shift_agent1: float = 0.0) -> JointTransitions:
    """Two agents: agent_0 sees state entries 0..3 and acts on joint entries 0, 1; agent_1 sees 2..5, acts on 2."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    state, nxt = rng.normal(size=(n, 6)).astype(f32), rng.normal(size=(n, 6)).astype(f32)
    views = {"agent_0": np.arange(0, 4), "agent_1": np.arange(2, 6)}
    obs = {k: state[:, v] for k, v in views.items()}
    obs_next = {k: nxt[:, v] for k, v in views.items()}
    obs["agent_1"] = obs["agent_1"] + f32(shift_agent1)  # what another agent sees must not reach agent_0
    obs_next["agent_1"] = obs_next["agent_1"] + f32(shift_agent1)
    return JointTransitions("x/y-2x1/random-v0", "HalfCheetah-2x3", ["agent_0", "agent_1"], state, nxt, obs, obs_next,
                            rng.uniform(-1, 1, (n, 3)).astype(f32),
                            {"agent_0": np.array([0, 1]), "agent_1": np.array([2])}, views,
                            rng.normal(size=n).astype(f32), (rng.uniform(size=n) < 0.1).astype(f32), 0.0, 1.0)


CFG = DOM2Config(hidden=16, t_dim=4, batch_size=8, ema_start=0, ema_every=1, eval_samples=4, cql_samples=3)


def test_solver_steps_are_a_uniform_subsequence() -> None:
    assert solver_tau(5, 5) == [0, 1, 2, 3, 4, 5]
    assert solver_tau(100, 4) == [0, 25, 50, 75, 100]


def test_critic_loss_is_the_written_cql_loss() -> None:
    """Per head: (Q(o, a) - y)^2 + alpha (log mean_i exp(Q(o, u_i) + da log 2) - Q(o, a)), u_i uniform in [-1, 1]^da,
    y = r + gamma (1 - d) min of the target heads at the EMA policy's DPM-Solver action: written out here."""
    torch.manual_seed(0)
    ag = DOM2Agent(_joint(), CFG)
    b = ag.data.sample(8)
    j, da, n = 0, 2, CFG.cql_samples
    torch.manual_seed(5)
    got = ag.critic_loss(j, b.obs[j], b.actions[j], b.r, b.next_obs[j], b.done)
    torch.manual_seed(5)
    with torch.no_grad():
        x = ag.solver(torch.randn(8, da), ag.emas[j], b.next_obs[j]).clamp(-1, 1)
        y = b.r + CFG.gamma * (1 - b.done) * torch.amin(ag.critic_targets[j](b.next_obs[j], x), dim=0)
        u = torch.rand(8 * n, da) * 2 - 1
        q = ag.critics[j](b.obs[j], b.actions[j])
        q_u = ag.critics[j](b.obs[j].repeat_interleave(n, dim=0), u).reshape(2, 8, n)
        want = sum(((q[i] - y) ** 2 + CFG.cql_alpha * (torch.log(torch.exp(q_u[i] + da * math.log(2)).mean(1)) - q[i])
                    for i in range(2)), torch.zeros(8)).mean()
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-5)


def test_update_is_decentralised_and_trains_every_part() -> None:
    """Same seed, a dataset where only agent_1's observations differ: agent_0's networks after two updates are
    bit-identical (its critic, policy and their targets read nothing of agent_1); agent_1's differ. Every part
    of both agents changes."""
    def run(shift: float) -> DOM2Agent:
        torch.manual_seed(0)
        ag = DOM2Agent(_joint(shift_agent1=shift), CFG)
        for _ in range(2):
            ag.update()
        return ag

    torch.manual_seed(0)
    fresh = DOM2Agent(_joint(), CFG)
    a, b = run(0.0), run(0.5)
    for name in ("policies", "emas", "critics", "critic_targets"):
        ma, mb, m0 = getattr(a, name), getattr(b, name), getattr(fresh, name)
        assert all(torch.equal(p, q) for p, q in zip(ma[0].parameters(), mb[0].parameters(), strict=True)), name
        assert any(not torch.equal(p, q) for p, q in zip(ma[1].parameters(), mb[1].parameters(), strict=True)), name
        for j in range(2):
            assert any(not torch.equal(p, q) for p, q in zip(ma[j].parameters(), m0[j].parameters(), strict=True))
    assert all(p.requires_grad for p in a.critics.parameters())


def test_execution_is_decentralised() -> None:
    """Agent j's action depends only on its own local view: changing state entries outside view_0 leaves agent_0's
    entries of the joint action unchanged (same seed); the joint action lies in the action box."""
    torch.manual_seed(0)
    ag = DOM2Agent(_joint(), CFG)
    seen: list[tuple[int, torch.Tensor]] = []
    act_local = ag.act_local

    def recorded(j: int, obs: torch.Tensor) -> torch.Tensor:
        seen.append((j, obs.clone()))
        return act_local(j, obs)

    ag.act_local = recorded  # type: ignore[method-assign]
    s = np.random.default_rng(1).normal(size=6).astype(np.float32)
    torch.manual_seed(3)
    a = ag.act(s, deterministic=True)
    s2 = s.copy()
    s2[4:] += 1.0  # outside agent_0's view (entries 0..3), inside agent_1's
    torch.manual_seed(3)
    b = ag.act(s2, deterministic=True)
    np.testing.assert_array_equal(a[:2], b[:2])
    (j0, o0), (j1, o1), (k0, p0), (k1, p1) = seen
    assert (j0, j1, k0, k1) == (0, 1, 0, 1)
    torch.testing.assert_close(o0, torch.as_tensor(s[:4])) and torch.testing.assert_close(p0, o0)
    torch.testing.assert_close(o1, torch.as_tensor(s[2:])) and torch.testing.assert_close(p1, torch.as_tensor(s2[2:]))
    assert a.shape == (3,) and np.all(np.abs(a) <= 1.0)


# ---- end to end ------------------------------------------------------------------------------------


# fewer diffusion and solver steps and CQL samples: the update's cost, not what the test checks
FEW = ["--hp", "K=2", "--hp", "solver_steps=2", "--hp", "cql_samples=2"]


def _train(root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "dom2", "--dataset", HOPPER_3X1, "--dataset-root", str(root), "--steps", str(steps),
            "--out", str(out), "--seed", "1", "--eval-every", "100", "--eval-episodes", "1", "--checkpoint-every", "50",
            "--log-every", "25", "--threads", "1", "--no-progress", *TINY, *FEW, *extra]


@pytest.fixture(scope="module")
def marl_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented first command: small random HalfCheetah-2x3 and Hopper-3x1 datasets (and a single-agent one)."""
    root = tmp_path_factory.mktemp("datasets")
    for env in ("HalfCheetah-2x3", "Hopper-3x1", "Hopper-v5"):
        assert cli.main(["dataset", "make", "--env", env, "--kind", "random", "--out", str(root), "--size", "1000",
                         "--eval-episodes", "1", "--no-progress"]) == 0
    return root


def test_make_train_kill_resume_plot(marl_datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """dataset make, train (the clauses checked first), a run killed with SIGKILL and resumed equal to a straight
    run, then diffrl plot; evaluation runs in Hopper-v5 (the partition's task) with three decentralised agents."""
    root = marl_datasets
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli.main(_train(root, straight, 200)) == 0
    record = json.loads((straight / "conformance.json").read_text())
    assert record["clause_status"] == {c: "pass" for c in gate.CLAUSES["dom2"]}
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"]["dataset"] == HOPPER_3X1 and conf["identity"]["env"] == "Hopper-3x1"
    argv = _train(root, killed, 200, "--skip-conformance")
    stop_after_checkpoint(argv, killed, 100, timeout=300)
    assert not (killed / "done.json").exists()
    assert cli.main(argv) == 0
    for name in ("eval.csv", "train.csv"):
        assert log_rows(straight / name) == log_rows(killed / name), name
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]["policies"]
    b = torch.load(killed / "checkpoint.pt", weights_only=False)["agent"]["policies"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ev = list(csv.DictReader(open(straight / "eval.csv")))
    assert [int(r["step"]) for r in ev] == [0, 100, 200] and 1 <= float(ev[-1]["length_mean"]) <= 1000
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    rows = plotted(tmp_path / "plot", HOPPER_3X1, marl_datasets, 200)
    assert list(rows) == ["dataset", "dom2"] and rows["dom2"]["at"]["200"]["n"] == 1


@pytest.mark.parametrize("algo,dataset,needle", [
    ("dom2", "diffrl/hopper/random-v0", "is single-agent (Hopper-v5); dom2 trains on multi-agent datasets"),
    ("diffusion-ql", ID, "is multi-agent (HalfCheetah-2x3); diffusion-ql trains on single-agent datasets, "
                         "multi-agent ones train dom2, dof, madiff"),
])
def test_wrong_kind_of_dataset_is_one_line(algo: str, dataset: str, needle: str, marl_datasets: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", algo, "--dataset", dataset, "--dataset-root", str(marl_datasets), "--steps", "10", "--out",
            str(tmp_path / "run"), "--no-progress", *TINY]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()
