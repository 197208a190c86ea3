"""MADiff as an offline multi-agent planner (issue 20, item 5), built from the production path.

Learning quality is a benchmark (docs), not an assertion here: these tests check that the loss the agent
minimises is the written MADiff loss, that guidance and decentralised execution are the clauses', and that
the documented command sequence trains, resumes after kill -9 to the same numbers, and plots.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("minari")

from runs_util import HOPPER_3X1, log_rows, plotted, stop_after_checkpoint  # noqa: E402

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.fast import guidance  # noqa: E402
from diffrl_ref.rl import envs, gate, loop  # noqa: E402
from diffrl_ref.rl.datasets import JointTransitions  # noqa: E402
from diffrl_ref.rl.madiff import MADiffAgent, MADiffConfig, episode_bounds  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks: one thread is faster, and much faster on a loaded machine (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {"dim": 8, "heads": 2, "inv_hidden": 16, "batch_size": 8, "K": 20, "eval_steps": 3, "history": 2, "horizon": 4}
EPISODES, T = 3, 30


def _data(seed: int = 0) -> JointTransitions:
    """3 episodes of 30 steps; agent 0 sees state entries 0..2 and acts on 1 entry, agent 1 sees 2..5 (unequal
    local dimensions: padded) and acts on 2; the views overlap in entry 2."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    eps = [rng.normal(size=(T + 1, 6)).astype(f32) for _ in range(EPISODES)]
    state, nxt = np.concatenate([e[:-1] for e in eps]), np.concatenate([e[1:] for e in eps])
    views = {"agent_0": np.arange(0, 3), "agent_1": np.arange(2, 6)}
    split = {"agent_0": np.arange(0, 1), "agent_1": np.arange(1, 3)}
    n = len(state)
    return JointTransitions("diffrl/halfcheetah-2x3/random-v0", "HalfCheetah-2x3", list(views), state, nxt,
                            {k: state[:, v] for k, v in views.items()}, {k: nxt[:, v] for k, v in views.items()},
                            rng.uniform(-1, 1, (n, 3)).astype(f32), split, views, rng.normal(size=n).astype(f32),
                            np.zeros(n, f32), None, None)


def _agent(**hp: object) -> MADiffAgent:
    torch.manual_seed(0)
    cfg = MADiffConfig(**{**TINY, **hp}).for_dataset("diffrl/halfcheetah-2x3/random-v0", set())  # type: ignore[arg-type]
    return MADiffAgent(_data(), cfg)


def test_segments_stay_inside_episodes_and_pad_the_history_with_the_first_step() -> None:
    data = _data()
    assert episode_bounds(data) == [(0, 30), (30, 60), (60, 90)]
    ag = _agent()
    assert ag.scale == 100.0  # the official Poor scale for a random dataset
    assert ag.data.n == EPISODES * (T - 4 + 2)  # windows t = 0 .. T - H + 1 in each episode
    torch.manual_seed(3)
    batch = ag.data.sample(64, ag.scale)
    mean, std = torch.as_tensor(ag.data.mean), torch.as_tensor(ag.data.std)
    raw = batch.x0 * std[None, :, None] + mean[None, :, None]  # (B, N, L, d), back to observations
    states = [np.concatenate([data.state[a:b], data.next_state[b - 1:b]]) for a, b in episode_bounds(data)]
    for i in range(64):
        own = raw[i, 0, :, :3].numpy()  # agent 0's 3 entries: state entries 0..2 of L = 6 consecutive steps
        hits = [(e, t) for e, s in enumerate(states) for t in range(T + 1 - 3)
                if np.allclose(s[t:t + 4, :3], own[2:], atol=1e-5)]
        assert hits, i
        e, t = hits[0]
        past = [states[e][max(t - 2 + m, 0), :3] for m in range(2)]  # the history clamps to step 0
        np.testing.assert_allclose(own[:2], np.stack(past), atol=1e-5)
        np.testing.assert_allclose(raw[i, 1, :, :4].numpy(), np.stack([states[e][max(t + m, 0), 2:6]
                                                                        for m in range(-2, 4)]), atol=1e-5)
        y = float(batch.y[i, 0]) * ag.scale
        r = data.rewards[e * T + t:(e + 1) * T]
        assert y == pytest.approx(float(np.sum(r * 0.99 ** np.arange(len(r)))), rel=1e-4, abs=1e-4)
    # known: one agent's history and current step, and agent 0's padded 4th entry everywhere
    assert bool(batch.known[:, 0, :, 3].all())
    owners = batch.known[:, :, :, 0].all(dim=2)  # (B, N): whose first entry is known at every step: nobody's
    assert not bool(owners.any())
    upto = batch.known[:, :, :3, 0].all(dim=2)  # known through the current step (index C = 2)
    assert bool((upto.sum(1) == 1).all()) and not bool(batch.known[:, :, 3:, 0].any())


def test_training_loss_is_the_written_madiff_loss() -> None:
    """update()'s loss equals 1/2 (L_diff + L_inv) written here without the clauses: x_k = sqrt(ab) x0 +
    sqrt(1 - ab) eps (eps = 0 at the known entries), the known entries written into x_k, the condition
    replaced by (0, 0) where dropped; L_diff the mean of (eps - eps_hat)^2, L_inv the mean of (a - f(o, o'))^2
    over every agent's consecutive observations of the segment's future."""
    ag = _agent(cond_drop=0.5)
    torch.manual_seed(1)
    batch = ag.data.sample(8, ag.scale)
    k, eps, b = ag.draws(batch)
    ab = ag.sched.alpha_bar[k].view(-1, 1, 1, 1)
    with torch.no_grad():
        x_k = ab.sqrt() * batch.x0 + (1 - ab).sqrt() * eps
        x_in = torch.where(batch.known, batch.x0, x_k)
        y_in = torch.where(b[:, None] > 0, torch.zeros_like(batch.y), batch.y)
        l_diff = ((eps - ag.model.eps(x_in, k, y_in)) ** 2).mean()
        fut = batch.x0[:, :, 2:]
        a_hat = ag.model.inv(fut[:, :, :-1], fut[:, :, 1:])
        l_inv = ((batch.actions - a_hat) ** 2).mean()
        expected = 0.5 * (l_diff + l_inv)
    assert bool((eps[batch.known] == 0).all()) and 0 < float(b.sum()) < 8  # both dropout cases occur
    got = ag.loss(ag.model, batch, k, eps, b)
    torch.testing.assert_close(got["actor_loss"], expected, rtol=1e-5, atol=1e-6)  # float32, O(1) terms
    torch.testing.assert_close(got["diffusion_loss"], l_diff, rtol=1e-5, atol=1e-6)
    torch.manual_seed(1)  # update() draws the same batch and noise, and reports the loss before its step
    info = ag.update()
    torch.testing.assert_close(info["actor_loss"], expected, rtol=1e-5, atol=1e-6)


def test_update_trains_every_part() -> None:
    ag = _agent()
    parts = {"eps": ag.model.eps, "inv": ag.model.inv, "ema": ag.ema}
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in parts.items()}
    ag.update()
    for n, m in parts.items():
        changed = [not torch.equal(b_, p) for b_, p in zip(before[n], m.parameters(), strict=True)]
        assert all(changed) if n != "ema" else any(changed), n
    assert set(ag.modules()) == {"model", "ema", "opt"} and ag.opt.state


@pytest.mark.parametrize("omega", [1.2, 0.0, 1.0])
def test_guidance_is_the_cfg_combination(omega: float) -> None:
    """The planner's prediction is guidance.cfg of the unconditional (y = (0, 0)) and conditional predictions;
    omega = 0 is the unconditional, omega = 1 the conditional prediction."""
    ag = _agent(omega=omega)
    torch.manual_seed(2)
    for _ in range(3):
        ag.update()
    x = torch.randn(3, 2, 6, 4)
    y = torch.tensor([[0.9, 1.0]]).expand(3, 2)
    with torch.no_grad():
        got = ag.guided_eps(ag.model, x, 7, y)
        k = torch.full((6,), 7)  # one call on the 6 rows [x; x] with conditions [y_null; y], as the clause
        u, c = ag.model.eps(torch.cat([x, x]), k, torch.cat([torch.zeros_like(y), y])).split(3)
    assert not torch.allclose(u, c, atol=1e-4)  # the condition matters, so the cases differ
    assert torch.equal(got, guidance.cfg(u.reshape(3, -1), c.reshape(3, -1), omega).reshape(x.shape))
    torch.testing.assert_close(got, u + omega * (c - u), rtol=1e-5, atol=1e-6)  # float32 roundings of O(1) terms
    if omega in (0.0, 1.0):
        assert torch.equal(got, c if omega else u)


def test_acting_calls_the_guided_network_once_per_ddim_step() -> None:
    ag = _agent()
    calls: list[torch.Tensor] = []
    ag.ema.eps.register_forward_hook(lambda m, args, out: calls.append(args[2].clone()))
    ag.reset()
    a = ag.act(_data().state[0], deterministic=True)
    assert a.shape == (3,) and np.all(np.abs(a) <= 1.0)
    assert len(calls) == 2 * TINY["eval_steps"]  # two agents, one call of 2 rows (CFG) per step
    for y in calls:
        torch.testing.assert_close(y, torch.tensor([[0.0, 0.0], [0.9, 1.0]]))


def test_execution_is_decentralised() -> None:
    """Agent j's action (the inverse dynamics' raw output) depends only on its own local views, now and in its
    history: perturbing entries of the state outside agent 0's view leaves it unchanged, with the same noise;
    perturbing agent 0's own entry changes it."""
    ag = _agent()
    for _ in range(5):
        ag.update()
    states = _data().state[:3]
    raw: list[torch.Tensor] = []
    ag.ema.inv.register_forward_hook(lambda m, args, out: raw.append(out.detach().clone()))

    def run(s: np.ndarray) -> list[torch.Tensor]:
        raw.clear()
        ag.reset()
        torch.manual_seed(5)
        for row in s:
            ag.act(row, deterministic=True)
        return raw[0::2]  # agent 0's calls: agents act in order

    base = run(states)
    others = states.copy()
    others[:, 3:] += 1.0  # entries 3..5: agent 1's view only
    for a, b in zip(base, run(others), strict=True):
        assert torch.equal(a, b)
    own = states.copy()
    own[0, 0] += 1.0  # agent 0's own entry at the first step: its history differs later on
    changed = run(own)
    assert all(not torch.equal(a, b) for a, b in zip(base, changed, strict=True))
    assert ag.histories[0] and ag.histories[1]
    ag.reset()
    assert not ag.histories[0] and not ag.histories[1]


def test_batched_acting_is_per_episode_and_equals_acting_alone() -> None:
    """act_batch plans once for several episodes: with the same noise, one episode's actions equal sequential
    acting's (the same first draws for batch 1) and do not depend on what the other episodes see."""
    ag = _agent()
    for _ in range(3):
        ag.update()
    states = _data().state[:4]
    torch.manual_seed(7)
    ag.reset()
    alone = [ag.act(s, deterministic=True) for s in states]
    torch.manual_seed(7)
    ag.reset_batch(1)
    batch1 = [ag.act_batch(s[None], [0])[0] for s in states]
    for a, b in zip(alone, batch1, strict=True):
        np.testing.assert_array_equal(a, b)

    def two(other: np.ndarray) -> list[np.ndarray]:
        torch.manual_seed(8)
        ag.reset_batch(2)
        return [ag.act_batch(np.stack([s, o]), [0, 1])[0] for s, o in zip(states, other, strict=True)]

    base = two(states[::-1].copy())
    for a, b in zip(base, two(states[::-1] + 5.0), strict=True):  # another episode's observations and history
        np.testing.assert_array_equal(a, b)
    ag.reset_batch(3)  # rows that finished drop out: the remaining rows keep their own histories
    ag.act_batch(states[:3], [0, 1, 2])
    ag.act_batch(states[:1], [2])
    assert [len(h[0]) for h in ag.batch_histories] == [1, 1, 2]


def test_batched_evaluation_equals_sequential_for_a_deterministic_policy() -> None:
    """envs.evaluate_batched: the same episodes (seeds) and the same sums as envs.evaluate, bit for bit."""
    env_id = "Hopper-v5"
    w = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32) * 0.3

    def policy(obs: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.tanh(obs @ w)
        return out

    seq = envs.evaluate(policy, envs.make(env_id, 4, evaluation=True), 4, 3)
    calls: list[list[int]] = []

    def batched(obs: np.ndarray, rows: list[int]) -> np.ndarray:
        calls.append(list(rows))
        # row by row: a (rows, 11) @ (11, 3) product takes another NumPy kernel than one row's, whose last bits
        # differ on some CPUs (seen 2026-12-07 on an AVX2 machine); this test is about the protocol, not matmul
        return np.stack([policy(o) for o in obs])

    got = envs.evaluate_batched(batched, [envs.make(env_id, 4, evaluation=True) for _ in range(3)], 4)
    assert got == seq
    assert calls[0] == [0, 1, 2]
    assert all(set(b) <= set(a) for a, b in zip(calls, calls[1:], strict=False))  # finished episodes leave
    assert sum(len(c) for c in calls) == round(3 * seq["length_mean"])  # every step of every episode, once


def test_evaluate_starts_every_episode_with_new_episode() -> None:
    class Env:
        class Box:
            low, high, shape = np.array([-1.0]), np.array([1.0]), (1,)

        action_space, unwrapped = Box(), type("U", (), {})()

        def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
            self.t = 0
            return np.zeros(1, np.float32), {}

        def step(self, a: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
            self.t += 1
            return np.zeros(1, np.float32), 0.0, False, self.t == 3, {}

    log: list[str] = []

    def policy(obs: np.ndarray) -> np.ndarray:
        log.append("act")
        return np.zeros(1)

    envs.evaluate(policy, Env(), 0, 2, new_episode=lambda: log.append("new"))
    assert log == ["new", "act", "act", "act"] * 2


# ---- end to end ---------------------------------------------------------------------------------------------

ID = "diffrl/halfcheetah-2x3/random-v0"
HP = [x for k, v in {**TINY, "eval_steps": 1}.items() for x in ("--hp", f"{k}={v}")]


def _train(root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "madiff", "--dataset", HOPPER_3X1, "--dataset-root", str(root), "--steps", str(steps),
            "--out", str(out), "--seed", "1", "--eval-every", "200", "--eval-episodes", "1",
            "--checkpoint-every", "50", "--log-every", "25", "--threads", "1", "--no-progress", *HP, *extra]


@pytest.fixture(scope="module")
def marl_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small random HalfCheetah-2x3 and Hopper-3x1 datasets, made once for the module."""
    root = tmp_path_factory.mktemp("datasets")
    for env in ("HalfCheetah-2x3", "Hopper-3x1"):
        assert cli.main(["dataset", "make", "--env", env, "--kind", "random", "--out", str(root),
                         "--size", "1500", "--eval-episodes", "1", "--no-progress"]) == 0
    return root


def test_make_train_kill_resume_plot(marl_datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented sequence on a partition's dataset (Hopper-3x1, three agents): train (clauses checked
    first), a run stopped with Ctrl-C (exit 130, one line saying how to resume) and resumed equal to a straight
    run (logs and weights), then diffrl plot."""
    root = marl_datasets
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli.main(_train(root, straight, 200)) == 0
    record = json.loads((straight / "conformance.json").read_text())
    assert record["clause_status"] == {c: "pass" for c in gate.CLAUSES["madiff"]}
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"]["env"] == "Hopper-3x1" and conf["resolved"]["returns_scale"] == 100.0
    evals = log_rows(straight / "eval.csv")
    assert [r["step"] for r in evals] == ["0", "200"] and all(1 <= float(r["length_mean"]) <= 1000 for r in evals)
    argv = _train(root, killed, 200, "--skip-conformance")
    code, lines = stop_after_checkpoint(argv, killed, 100, signal.SIGINT)  # Ctrl-C: stops between two steps
    assert code == 130 and len(lines) == 2 and "resumes" in lines[1], lines  # after --skip-conformance's
    assert not (killed / "done.json").exists()
    assert cli.main(argv) == 0
    for name in ("eval.csv", "train.csv"):
        assert log_rows(straight / name) == log_rows(killed / name), name
    assert len(log_rows(straight / "train.csv")) == 8 and log_rows(straight / "train.csv")[-1]["actor_loss"]
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]
    b = torch.load(killed / "checkpoint.pt", weights_only=False)["agent"]
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    rows = plotted(tmp_path / "plot", HOPPER_3X1, marl_datasets, 200)
    assert list(rows) == ["dataset", "madiff"] and rows["madiff"]["at"]["200"]["n"] == 1


def test_sweep_grid_makes_madiff_cells(marl_datasets: Path, tmp_path: Path) -> None:
    from diffrl_ref.rl import sweep

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"steps: 100\nseeds: [0, 1]\ndatasets: [{ID}]\ndataset_root: {marl_datasets}\n"
                    "groups: [{algo: madiff}, {algo: madiff, name: madiff-ddpm, hp: {eval_sampler: ddpm}}]\n")
    cells = sweep.load_grid(grid)
    assert [(c.group, c.algo, c.env, c.seed) for c in cells] == [
        ("madiff", "madiff", "HalfCheetah-2x3", 0), ("madiff", "madiff", "HalfCheetah-2x3", 1),
        ("madiff-ddpm", "madiff", "HalfCheetah-2x3", 0), ("madiff-ddpm", "madiff", "HalfCheetah-2x3", 1)]
    assert cells[2].run_config().hp == {"eval_sampler": "ddpm"}
    assert cells[0].folder(tmp_path) == tmp_path / ID / "madiff" / "seed0"


@pytest.mark.parametrize("hp,needle", [
    (["dim_mults=1,x"], "madiff hyperparameter dim_mults must be comma-separated integers"),
    (["horizon=1"], "madiff hyperparameter horizon must be an integer >= 2"),
    (["eval_sampler=dpm"], "madiff hyperparameter eval_sampler must be one of ddim, ddpm"),
    (["heads=3"], "heads (3) must divide the bottleneck width"),
    (["K=5"], "eval_steps (10) must be <= K (5)"),
])
def test_bad_hyperparameters_exit_2_with_one_line(hp: list[str], needle: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "root").mkdir()
    argv = ["train", "madiff", "--dataset", ID, "--dataset-root", str(tmp_path / "root"), "--steps", "10",
            "--out", str(tmp_path / "run"), *(x for h in hp for x in ("--hp", h))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_a_horizon_longer_than_every_episode_exits_2_with_one_line(marl_datasets: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = _train(marl_datasets, tmp_path / "run", 10, "--skip-conformance", "--hp", "horizon=5000")
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the --skip-conformance notice, then the error
    assert len(lines) == 2 and "no episode has the horizon's 5000 observations" in lines[1], lines


def test_config_defaults_are_the_documented_ones() -> None:
    cfg = MADiffConfig()
    assert (cfg.horizon, cfg.K, cfg.omega, cfg.cond_drop, cfg.target_return) == (10, 200, 1.2, 0.25, 0.9)
    assert (cfg.lr, cfg.batch_size, cfg.ema_decay, cfg.kernel, cfg.inv_hidden) == (2e-4, 32, 0.995, 5, 256)
    assert replace(cfg).for_dataset("diffrl/halfcheetah-2x3/expert-v0", set()).returns_scale == 1000.0
    assert cfg.for_dataset("diffrl/halfcheetah-2x3/medium-v0", set()).returns_scale == 300.0
    assert cfg.for_dataset("diffrl/halfcheetah-2x3/medium-v0", {"returns_scale"}).returns_scale == 0.0
    assert loop.OFFLINE_AGENTS["madiff"] is MADiffAgent and "madiff" in loop.MULTI_AGENT
