"""Offline agents (issue 19): Diffusion-QL from the production path, trained on a dataset made here.

Learning quality is a benchmark (docs), not an assertion here: these tests check that the loss the agent
minimises is the official code's, and that a documented command sequence makes a dataset, trains,
resumes after kill -9 to the same numbers, and plots.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("gymnasium")
pytest.importorskip("minari")
pytest.importorskip("h5py")

from runs_util import log_rows, plotted, stop_after_checkpoint  # noqa: E402

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.fast import diffsr as D  # noqa: E402
from diffrl_ref.rl import gate, loop  # noqa: E402
from diffrl_ref.rl.datasets import Transitions  # noqa: E402
from diffrl_ref.rl.diffusion_ql import DiffusionQLAgent, DiffusionQLConfig, family_of  # noqa: E402
from diffrl_ref.rl.edp import EDPAgent, EDPConfig, SharedCall, trajectory_scale  # noqa: E402

TINY = ["--hp", "hidden=16", "--hp", "batch_size=16", "--hp", "t_dim=4"]
ID = "diffrl/hopper/random-v0"


def _data(n: int = 64, ds: int = 3, da: int = 2, seed: int = 0) -> Transitions:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return Transitions("x/y/random-v0", "Hopper-v5", rng.normal(size=(n, ds)).astype(f32),
                       rng.uniform(-1, 1, (n, da)).astype(f32), rng.normal(size=n).astype(f32),
                       rng.normal(size=(n, ds)).astype(f32), (rng.uniform(size=n) < 0.1).astype(f32), 0.0, 1.0)


def test_family_of_dataset_ids() -> None:
    assert family_of("diffrl/halfcheetah/medium-v0") == "halfcheetah-medium"
    assert family_of("diffrl/hopper/medium-replay-v0") == "hopper-medium-replay"
    assert family_of("diffrl/hopper/random-v0") is None
    cfg = DiffusionQLConfig().for_dataset("diffrl/walker2d/medium-v0", overridden=set())
    assert cfg.grad_norm == 1.0  # the official table's gn for walker2d-medium
    assert DiffusionQLConfig(grad_norm=3.0).for_dataset("diffrl/walker2d/medium-v0", {"grad_norm"}).grad_norm == 3.0


def test_policy_loss_is_the_official_loss() -> None:
    """rows.mean() / da equals the official actor loss: mean over batch and action dimensions of
    (eps - eps_hat)^2 plus eta * (-Q(s, a^0).mean() / |Q'(s, a^0)|.mean()), written here without the clauses."""
    torch.manual_seed(0)
    ag = DiffusionQLAgent(_data(), DiffusionQLConfig(hidden=16, t_dim=4, eta=0.7))
    s, a = torch.as_tensor(_data().observations[:16]), torch.as_tensor(_data().actions[:16])
    k = torch.randint(1, 6, (16,))
    eps, a_K, noises = torch.randn(16, 2), torch.randn(16, 2), torch.randn(5, 16, 2)

    def q_fn(s_: torch.Tensor, a_: torch.Tensor) -> torch.Tensor:
        q: torch.Tensor = ag.critic(s_, a_)[0]
        return q

    def q_norm_fn(s_: torch.Tensor, a_: torch.Tensor) -> torch.Tensor:
        q: torch.Tensor = ag.critic(s_, a_)[1]
        return q

    got = ag.loss(a, s, ag.policy, k, eps, a_K, noises, q_fn, q_norm_fn).mean() / 2
    ab = ag.sched.alpha_bar[k][:, None]
    a_k = ab.sqrt() * a + (1 - ab).sqrt() * eps
    bc = ((ag.policy(a_k, k, s) - eps) ** 2).mean()
    a0 = ag.sampler(s, ag.policy, a_K, noises)
    q = ag.critic(s, a0)
    expected = bc + 0.7 * (-q[0].mean() / q[1].abs().mean())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # float32: a few roundings of O(1) terms


def test_update_trains_critic_and_policy_and_the_td_target_is_the_clause() -> None:
    torch.manual_seed(0)
    ag = DiffusionQLAgent(_data(), DiffusionQLConfig(hidden=16, t_dim=4, batch_size=16, ema_start=0, ema_every=1))
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in
              (("policy", ag.policy), ("critic", ag.critic), ("ema", ag.ema), ("target", ag.critic_target))}
    ag.update()
    for n, m in (("policy", ag.policy), ("critic", ag.critic), ("ema", ag.ema), ("target", ag.critic_target)):
        assert any(not torch.equal(b, p) for b, p in zip(before[n], m.parameters(), strict=True)), n
    assert all(p.requires_grad for p in ag.critic.parameters())  # unfrozen after the policy step
    # y = r + gamma (1 - d) min_i Q_target_i(s', a'): the clipped double-Q target of the clause
    r, d, qn = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([[3.0, 5.0], [4.0, 1.0]])
    torch.testing.assert_close(D.td_target(r, d, qn, 0.9), torch.tensor([1.0 + 0.9 * 3.0, 2.0]))


def _train(algo: str, root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", algo, "--dataset", ID, "--dataset-root", str(root), "--steps", str(steps),
            "--out", str(out), "--seed", "1", "--eval-every", "100", "--eval-episodes", "1",
            "--checkpoint-every", "50", "--log-every", "25", "--threads", "1", "--no-progress", *TINY, *extra]


@pytest.fixture(scope="module")
def hopper_random(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented first command: a small random Hopper dataset, made once for the module."""
    root = tmp_path_factory.mktemp("datasets")
    assert cli.main(["dataset", "make", "--env", "Hopper-v5", "--kind", "random", "--out", str(root),
                     "--size", "2000", "--eval-episodes", "2", "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("algo", ["diffusion-ql", "edp"])
def test_make_train_kill_resume_plot(algo: str, hopper_random: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The documented sequence: dataset make, train (checked against the conformance suite first), a run
    killed with SIGKILL and resumed equal to a straight run, then diffrl plot."""
    root = hopper_random
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli.main(_train(algo, root, straight, 200)) == 0
    record = json.loads((straight / "conformance.json").read_text())
    assert record["clause_status"] == {c: "pass" for c in gate.CLAUSES[algo]}
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"]["dataset"] == ID and conf["identity"]["env"] == "Hopper-v5"
    argv = _train(algo, root, killed, 200, "--skip-conformance")
    stop_after_checkpoint(argv, killed, 100, timeout=300)
    assert not (killed / "done.json").exists()
    assert cli.main(argv) == 0
    for name in ("eval.csv", "train.csv"):
        assert log_rows(straight / name) == log_rows(killed / name), name
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]["policy"]
    b = torch.load(killed / "checkpoint.pt", weights_only=False)["agent"]["policy"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    assert json.loads((straight / "dataset.json").read_text())["dataset"] == ID
    rows = plotted(tmp_path / "plot", ID, root, 200)
    assert list(rows) == ["dataset", algo] and rows[algo]["at"]["200"]["n"] == 1


@pytest.mark.parametrize("argv,needle", [
    (["train", "diffusion-ql", "--steps", "10", "--out", "X"], "--dataset is required"),
    (["train", "diffusion-ql", "--dataset", "diffrl/nope/random-v0", "--steps", "10", "--out", "X"], "nope"),
    (["train", "edp", "--steps", "10", "--out", "X"], "--dataset is required"),
    (["train", "sac", "--dataset", ID, "--steps", "10", "--out", "X"], "trains online"),
    (["train", "sac", "--steps", "10", "--out", "X"], "--env is required"),
])
def test_offline_bad_input_one_line(argv: list[str], needle: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "root").mkdir()
    argv = [str(tmp_path / "run") if x == "X" else x for x in argv] + ["--dataset-root", str(tmp_path / "root")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


# ---- EDP -------------------------------------------------------------------------------------------

EDP_TINY = {"hidden": 16, "t_dim": 4, "batch_size": 16}


@pytest.mark.parametrize("likelihood", ["elbo", "gaussian"])
def test_edp_policy_loss_is_the_written_loss(likelihood: str) -> None:
    """The policy loss of one update equals L_d + L_g written here without the clauses: L_d the mean over
    batch and action dimensions of (eps - eps_hat)^2, L_g = -mean(f log pi) with f = min(exp(3 (Q - V)), 100)
    and log pi = -beta_k / (2 alpha_k (1 - ab_k)) ||eps - eps_hat||^2 (elbo) or log N(a; a0_hat, I) (gaussian)."""
    torch.manual_seed(0)
    ag = EDPAgent(_data(), EDPConfig(**EDP_TINY, likelihood=likelihood, reward_norm="none"))  # type: ignore[arg-type]
    torch.manual_seed(1)
    s, a, r, s2, d = ag.data.sample(16)
    torch.manual_seed(1)
    with torch.no_grad():
        q_t = torch.amin(ag.critic_target(s, a), 0)
    # replay update()'s draws: the batch, then k and eps after the value step
    policy = copy.deepcopy(ag.policy)
    value = copy.deepcopy(ag.value)
    v_opt = torch.optim.Adam(value.parameters(), lr=ag.cfg.lr)
    ev = ((q_t - value(s)) ** 2 * torch.where(q_t - value(s) > 0, 0.7, 0.3)).mean()
    v_opt.zero_grad()
    ev.backward()
    nn.utils.clip_grad_norm_(value.parameters(), ag.cfg.grad_norm)
    v_opt.step()
    info = ag.update()
    torch.manual_seed(1)
    ag.data.sample(16)
    k = torch.randint(1, ag.cfg.K + 1, (16,))
    eps = torch.randn(16, 2)
    with torch.no_grad():
        f = torch.clamp(torch.exp(3.0 * (q_t - value(s))), max=100.0)
        beta = ag.sched.beta[k]
        ab = ag.sched.alpha_bar[k]
        a_k = ab.sqrt()[:, None] * a + (1 - ab).sqrt()[:, None] * eps
        e_hat = policy(a_k, k, s)
        l_d = ((e_hat - eps) ** 2).mean()
        if likelihood == "elbo":
            w = beta / (2 * (1 - beta) * (1 - ab))
            log_pi = -w * ((eps - e_hat) ** 2).sum(-1)
        else:
            a0 = (a_k - (1 - ab).sqrt()[:, None] * e_hat) / ab.sqrt()[:, None]
            log_pi = -0.5 * ((a - a0) ** 2).sum(-1) - np.log(2 * np.pi)  # da = 2
        expected = l_d - (f * log_pi).mean()
    torch.testing.assert_close(info["actor_loss"], expected, rtol=1e-5, atol=1e-6)  # float32, O(1) terms


def test_edp_update_calls_the_network_once_and_trains_every_part() -> None:
    torch.manual_seed(0)
    ag = EDPAgent(_data(), EDPConfig(**EDP_TINY))  # type: ignore[arg-type]
    calls = []
    ag.policy.register_forward_hook(lambda *_: calls.append(1))
    parts = {"policy": ag.policy, "critic": ag.critic, "target": ag.critic_target, "value": ag.value}
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in parts.items()}
    ag.update()
    assert len(calls) == 1  # L_d and L_g share one network call (SharedCall)
    for n, m in parts.items():
        assert any(not torch.equal(b, p) for b, p in zip(before[n], m.parameters(), strict=True)), n
    # SharedCall reuses an output only for the same input values
    net = torch.nn.Linear(1, 1)
    shared = SharedCall(lambda x, k, s: net(x))
    x, k, s = torch.ones(3, 1), torch.ones(3, dtype=torch.long), torch.zeros(3, 1)
    assert shared(x, k, s) is shared(x.clone(), k.clone(), s)
    assert shared(x + 1, k, s) is not shared(x, k, s)


def test_edp_acts_with_15_solver_steps_inside_the_box() -> None:
    torch.manual_seed(0)
    ag = EDPAgent(_data(), EDPConfig(**EDP_TINY))  # type: ignore[arg-type]
    calls = []
    ag.policy.register_forward_hook(lambda *_: calls.append(1))
    a = ag.act(np.zeros(3, dtype=np.float32), deterministic=True)
    assert a.shape == (2,) and np.all(np.abs(a) <= 1.0)
    assert len(calls) == 15  # DPM-Solver++(2M): one network call per step, the official dpm_steps


def test_edp_reward_scale_is_the_official_trajectory_normalisation() -> None:
    """Two trajectories cut where s' is not the next row's s, one ended by a terminal: returns 3 and -1."""
    f32 = np.float32
    obs = np.arange(6, dtype=f32)[:, None]
    nxt = obs + 1
    nxt[2] = 99.0  # a cut (time limit) after row 2
    data = Transitions("x/y/random-v0", "Hopper-v5", obs, np.zeros((6, 1), f32), np.array([1, 1, 1, -1, 0, 0], f32),
                       nxt, np.array([0, 0, 0, 0, 0, 1], f32), 0.0, 1.0)
    assert trajectory_scale(data) == pytest.approx(1000.0 / 4.0)
    ag = EDPAgent(data, EDPConfig(**EDP_TINY, dpm_steps=5))  # type: ignore[arg-type]
    assert ag.reward_scale == pytest.approx(250.0)
    assert torch.equal(ag.data.r, torch.tensor([250.0, 250, 250, -250, 0, 0]))
    assert float(ag.data.a.abs().max()) <= 0.999


def test_edp_hyperparameter_relations_are_checked() -> None:
    with pytest.raises(loop.RunError, match=r"dpm_steps \(20\) must be <= K \(10\)"):
        loop.agent_config("edp", {"dpm_steps": "20", "K": "10"})
    with pytest.raises(loop.RunError, match="likelihood must be one of elbo, gaussian"):
        loop.agent_config("edp", {"likelihood": "mle"})


@pytest.mark.parametrize("algo", ["diffusion-ql", "edp"])
def test_batched_action_selection_is_per_state(algo: str) -> None:
    """act_batch (evaluation in lockstep): each state's action is one of its own candidates, picked by softmax of
    its own Q; with the same noise a state's action does not depend on the other states of the batch; a
    planted bug that picks across states (softmax over the whole batch) is caught."""
    from diffrl_ref.rl import diffusion_ql as dql

    ag: Any = (DiffusionQLAgent(_data(), DiffusionQLConfig(hidden=16, t_dim=4, eval_samples=8)) if algo ==
               "diffusion-ql" else EDPAgent(_data(), EDPConfig(**{**EDP_TINY, "eval_samples": 8})))  # type: ignore[arg-type]
    states = _data(seed=1).observations[:3]

    def first(batch: np.ndarray) -> np.ndarray:
        torch.manual_seed(4)
        out: np.ndarray = ag.act_batch(batch, list(range(len(batch))))
        return out

    base = first(states)
    assert base.shape == (3, 2) and np.all(np.abs(base) <= 1.0)
    other = states.copy()
    other[1:] += 3.0
    np.testing.assert_array_equal(first(other)[0], base[0])
    # the pick is among the state's own candidates: with Q made huge for one candidate of each state, that one
    cands: list[torch.Tensor] = []
    real = ag.sample

    def spy(*args: Any) -> torch.Tensor:
        out: torch.Tensor = real(*args)
        cands.append(out)
        return out

    ag.sample = spy
    crit = ag.critic_target if algo == "diffusion-ql" else ag.critic
    pick = torch.tensor([5, 0, 7])

    def rigged(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        q = torch.zeros(2, len(x))
        q[:, torch.arange(3) * 8 + pick] = 1e4
        return q

    if algo == "diffusion-ql":
        ag.critic_target = rigged
    else:
        ag.critic = rigged
    got = ag.act_batch(states, [0, 1, 2])
    np.testing.assert_array_equal(got, cands[-1].reshape(3, 8, 2)[torch.arange(3), pick].numpy())
    # planted: one softmax over all 24 candidates would hand every state the same (the first rigged) action
    one = dql.select_by_q_rows
    flat = lambda a, q, n: one(a, q, 1).repeat(n, 0)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dql, "select_by_q_rows", flat)  # act_by_q, which both agents call, reads it from there
        bad = ag.act_batch(states, [0, 1, 2])
    assert not np.array_equal(bad, got)
    if algo == "diffusion-ql":
        ag.critic_target = crit
    else:
        ag.critic = crit
