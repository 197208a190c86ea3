"""The DoF policy agent (issue 20, item 4): the loss it minimises, decentralised execution, IGD, and the CLI run.

Learning quality is a benchmark (docs), not an assertion here. These tests check that the agent's policy loss is
the clauses' (written out here without them), that an update trains every part, that agent j's action reads only
agent j's local view, that decentralised sampling is the centralised factorised chain (IGD, exactly: the same
noises give the same samples), and that ``diffrl train dof`` logs, checkpoints, resumes after Ctrl-C to the same
numbers, plots, makes sweep cells and refuses bad input in one line.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from runs_util import HOPPER_3X1, log_rows, plotted, stop_after_checkpoint  # noqa: E402

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.fast import dof as F  # noqa: E402
from diffrl_ref.rl import gate, loop  # noqa: E402
from diffrl_ref.rl.datasets import JointTransitions  # noqa: E402
from diffrl_ref.rl.dof import DoFAgent, DoFConfig  # noqa: E402

TINY = {"hidden": 16, "t_dim": 4, "batch_size": 16, "K": 5}
VIEWS = [np.arange(0, 5), np.arange(3, 8)]  # two agents sharing state entries 3 and 4, as real partitions do
SPLIT = [np.arange(0, 3), np.arange(3, 6)]


def _joint(n: int = 64, seed: int = 0) -> JointTransitions:
    """Synthetic two-agent transitions: state (n, 8), local views of 5 entries, 3 action entries each."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    s, s2 = rng.normal(size=(n, 8)).astype(f32), rng.normal(size=(n, 8)).astype(f32)
    names = ["agent_0", "agent_1"]
    return JointTransitions("x/y-2x3/random-v0", "HalfCheetah-2x3", names, s, s2,
                            {k: s[:, v] for k, v in zip(names, VIEWS, strict=True)},
                            {k: s2[:, v] for k, v in zip(names, VIEWS, strict=True)},
                            rng.uniform(-1, 1, (n, 6)).astype(f32), dict(zip(names, SPLIT, strict=True)),
                            dict(zip(names, VIEWS, strict=True)), rng.normal(size=n).astype(f32),
                            (rng.uniform(size=n) < 0.1).astype(f32), None, None)


def _agent(mode: str = "concat", **kw: float | str) -> DoFAgent:
    torch.manual_seed(0)
    ag = DoFAgent(_joint(), DoFConfig(**{**TINY, "factorisation": mode, **kw}))  # type: ignore[arg-type]
    if mode == "wconcat":  # away from the symmetric start: f uses w / sum w = (0.25, 0.75)
        with torch.no_grad():
            ag.weights.w.copy_(torch.tensor([1.0, 3.0]))
    return ag


def _chain_by_hand(net: torch.nn.Module, o: torch.Tensor, x_K: torch.Tensor, z: torch.Tensor,
                   K: int) -> torch.Tensor:
    """DDPM ancestral chain, linear betas 1e-4..0.02, sigma_k^2 = beta_tilde_k, no noise at k = 1."""
    beta = torch.linspace(1e-4, 0.02, K, dtype=torch.float64)
    ab = torch.cumprod(1 - beta, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    x = x_K
    for k in range(K, 0, -1):
        b, a_b = float(beta[k - 1]), float(ab[k - 1])
        e = net(x, torch.full((x.shape[0],), k), o)
        mean = (x - b / math.sqrt(1 - a_b) * e) / math.sqrt(1 - b)
        sigma = math.sqrt((1 - float(ab_prev[k - 1])) / (1 - a_b) * b) if k > 1 else 0.0
        x = mean + sigma * z[k - 1]
    return x


# ---- (a) the policy loss is the written loss ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["concat", "wconcat"])
def test_policy_loss_is_the_written_loss(mode: str) -> None:
    """L = mean_b sum_i p_i^2 ||eps_i - eps_theta_i(sqrt(ab_k) a_i + sqrt(1 - ab_k) eps_i, k, o_i)||^2 / (N d)
    - eta sum_i mean_b Q_i,1(o_i, a_i^0) / mean_b |Q_i,2(o_i, a_i^0)|, p_i = 1 (Concat) or w_i / sum w (WConcat),
    a_i^0 = clip(agent i's own DDPM chain): written here without the clauses, on a fixed batch."""
    ag = _agent(mode, eta=0.7)
    torch.manual_seed(1)
    b = ag.data.sample(16)
    B, N, d, K = 16, 2, 3, ag.cfg.K
    k = torch.randint(1, K + 1, (B,))
    eps, x_K, z = torch.randn(B, N, d), torch.randn(B, N, d), torch.randn(K, B, N, d)
    a = torch.stack(b.actions, 1)
    got = ag.policy_objective(b.obs, a, k, eps, x_K, z, head=0)
    p = [1.0, 1.0] if mode == "concat" else [0.25, 0.75]
    beta = torch.linspace(1e-4, 0.02, K, dtype=torch.float64)
    ab = torch.cumprod(1 - beta, 0).float()[k - 1][:, None]
    bc, ql = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for i in range(N):
            x_k = ab.sqrt() * a[:, i] + (1 - ab).sqrt() * eps[:, i]
            bc = bc + p[i] ** 2 * ((eps[:, i] - ag.policy[i](x_k, k, b.obs[i])) ** 2).sum(-1).mean()
            a0 = _chain_by_hand(ag.policy[i], b.obs[i], x_K[:, i], z[:, :, i], K).clamp(-1, 1)
            q = ag.critic[i](b.obs[i], a0)
            ql = ql - 0.7 * q[0].mean() / q[1].abs().mean()
    bc = bc / (N * d)
    torch.testing.assert_close(got.detach(), bc + ql, rtol=2e-5, atol=1e-5)  # float32: roundings of O(1) terms


# ---- (b) an update trains every part ------------------------------------------------------------------


def test_update_trains_every_part() -> None:
    ag = _agent("wconcat", ema_start=0, ema_every=1)
    parts = {f"policy{i}": ag.policy[i] for i in range(2)} | {f"critic{i}": ag.critic[i] for i in range(2)} | {
        "ema": ag.ema, "target": ag.critic_target, "weights": ag.weights}
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in parts.items()}
    info = ag.update()
    assert set(info) == {"critic_loss", "actor_loss"} and all(torch.isfinite(v) for v in info.values())
    for n, m in parts.items():
        assert any(not torch.equal(x, y) for x, y in zip(before[n], m.parameters(), strict=True)), n
    assert all(p.requires_grad for p in ag.critic.parameters())  # unfrozen after the policy step
    w = ag.w()
    assert w is not None
    w = w.detach()
    assert w is not None and float(w.sum()) == pytest.approx(1.0) and not torch.equal(w, torch.tensor([0.25, 0.75]))
    # Concat has no weights to train: w stays out of the optimizer
    ag = _agent("concat")
    ag.update()
    assert ag.w() is None and torch.equal(ag.weights.w, torch.ones(2))


# ---- (c) decentralised execution ------------------------------------------------------------------------


def _execution_reads_own_view(ag: DoFAgent, s: np.ndarray) -> int:
    """Agent j's action, with the same noise, is unchanged when entries outside its own view change, and
    changes when its own view changes; act_local(j) calls agent j's network only. Returns the agents checked."""
    checked = 0
    for j, (view, split) in enumerate(zip(ag.views, ag.splits, strict=True)):
        others = np.setdiff1d(np.arange(s.shape[0]), view)
        assert others.size > 0
        torch.manual_seed(5)
        base = ag.act(s, deterministic=True)
        far = s.copy()
        far[others] += 3.0
        torch.manual_seed(5)
        moved = ag.act(far, deterministic=True)
        np.testing.assert_array_equal(moved[split], base[split])
        assert not np.array_equal(np.delete(moved, split), np.delete(base, split))  # the others did see it
        own = s.copy()
        own[view] += 3.0
        torch.manual_seed(5)
        assert not np.array_equal(ag.act(own, deterministic=True)[split], base[split])
        calls: list[int] = []
        hooks = [net.register_forward_hook(lambda *_, i=i, c=calls: c.append(i)) for i, net in enumerate(ag.policy)]
        ag.act_local(j, torch.as_tensor(s[view]))
        for h in hooks:
            h.remove()
        assert set(calls) == {j} and len(calls) == ag.cfg.K
        checked += 1
    return checked


def test_execution_is_decentralised() -> None:
    ag = _agent(max_action=100.0)  # no clipping: a clipped entry could hide a dependence
    assert _execution_reads_own_view(ag, np.random.default_rng(3).normal(size=8).astype(np.float32)) == ag.N


# ---- (d) IGD: decentralised sampling is the centralised chain ------------------------------------------------


def _igd_gap(ag: DoFAgent, obs: list[torch.Tensor], x_K: torch.Tensor, z: torch.Tensor) -> float:
    """max |f^{-1}(centralised chain from f(x_K) with noises f(z)) - (agent j's execution sample)_j|.

    The centralised chain is dof.igd on the agent's own networks and weights: the factorised model that
    Algorithm 1 trains. The execution samples come from ``sample_local`` (what ``act_local`` runs), agent by
    agent. x_K, z are standard normal; f(x_K), f(z) then have exactly the law the centralised chain starts
    from and adds (N(0, I) for Concat, N(0, w_i^2 I) in block i for WConcat: the dof.igd note), so equal
    samples from the same noises mean equal laws.
    """
    with torch.no_grad():
        w = ag.w()
        mode = ag.cfg.factorisation
        fns = ag.eps_fns(ag.policy, obs)
        K, B, N, d = z.shape
        z_tot = F.noise_factorisation(z.reshape(K * B, N, d), mode, w).reshape(K, B, N * d)
        x_tot = F.igd(F.noise_factorisation(x_K, mode, w), fns, ag.sched, z_tot, mode, w, ag.cfg.variance)
        central = x_tot.reshape(B, N, d) / (1.0 if w is None else w[:, None])
        local = torch.stack([ag.sample_local(j, obs[j], x_K[:, j], z[:, :, j]) for j in range(N)], 1)
        return float((central - local).abs().max())


#: dof.igd's rule 16 (K + 4) eps scale gain, float32 eps = 1.2e-7, K = 5, scale (|x| + |eps_hat| + |z|) about 5,
#: gain about 1 (barely trained networks): 1e-4. Measured: 0 for Concat (the same float operations), 3e-6 for WConcat.
IGD_TOL = 1e-4
#: A schedule that moves the chain (alpha_bar_K = 0.15): the law depends on the networks, so a bug shows.
MIXING = {"beta_start": 0.1, "beta_end": 0.5}


@pytest.mark.parametrize("sched", ["linear", "vp"])
@pytest.mark.parametrize("mode", ["concat", "wconcat"])
def test_decentralised_samples_have_the_centralised_law(mode: str, sched: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact IGD check (same noises -> same samples) on trained-a-little networks, on both schedules (Diffusion-QL's
    VP schedule at K = 5 ends at alpha_bar_K = 0.007, so it mixes too); planted bugs are rejected."""
    kw = MIXING if sched == "linear" else {"schedule": "vp"}
    ag = _agent(mode, max_action=1000.0, **kw)  # the clip (the same elementwise map on both sides) is inactive
    for _ in range(3):
        ag.update()
    g = torch.Generator().manual_seed(11)
    B, N, d, K = 64, 2, 3, ag.cfg.K
    obs = [o[:B] for o in ag.data.obs]
    x_K, z = torch.randn(B, N, d, generator=g), torch.randn(K, B, N, d, generator=g)
    assert _igd_gap(ag, obs, x_K, z) <= IGD_TOL
    # planted: agents that share noise (agent 1 reuses agent 0's z) are not independent: IGD fails
    shared = ag.sample_local

    def correlated(j: int, o: torch.Tensor, x: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
        return shared(j, o, x_K[:, 0] if j == 1 else x, z[:, :, 0] if j == 1 else zz)

    monkeypatch.setattr(ag, "sample_local", correlated)
    assert _igd_gap(ag, obs, x_K, z) > 100 * IGD_TOL
    monkeypatch.undo()
    if mode == "wconcat":
        # planted: the deck's Algorithm 1 line 5 read literally, x_i^k = x_tot^k[(i-1)d : id] without dividing
        # by w_i: the centralised model then sees w_i x_i, which no agent sees at execution
        monkeypatch.setattr(F, "split", lambda x_tot, w, n: x_tot.reshape(x_tot.shape[0], n, -1))
        assert _igd_gap(ag, obs, x_K, z) > 100 * IGD_TOL


def test_the_vp_schedule_is_diffusion_qls() -> None:
    """``--hp schedule=vp`` builds schedule.vp(K) (the float64 reference's betas, to float32 rounding), ignores
    beta_start and beta_end, and the linear default is the official linear schedule."""
    from diffrl_ref.reference import schedule as ref

    vp = _agent("concat", schedule="vp", beta_start=0.5, beta_end=0.1)  # the ends are unused: no error
    np.testing.assert_allclose(vp.sched.betas64.numpy(), ref.vp(5), rtol=0, atol=1e-15)
    lin = _agent("concat")
    np.testing.assert_allclose(lin.sched.betas64.numpy(), ref.linear(5), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="beta_start"):
        _agent("concat", beta_start=0.5, beta_end=0.1)


def test_weight_normalisation_does_not_break_igd() -> None:
    """Why the planted WConcat bug is the slice and not the normalisation: IGD holds for any nonzero weights
    (f^{-1} undoes f), so w / sum w versus raw w changes only the agents' loss weights w_i^2, not the law."""
    ag = _agent("wconcat", max_action=1000.0, **MIXING)
    g = torch.Generator().manual_seed(12)
    obs = [o[:32] for o in ag.data.obs]
    x_K, z = torch.randn(32, 2, 3, generator=g), torch.randn(5, 32, 2, 3, generator=g)
    ag.w = lambda: torch.tensor([1.0, 3.0])  # type: ignore[method-assign]  # unnormalised
    assert _igd_gap(ag, obs, x_K, z) <= IGD_TOL


# ---- (e) end to end through the CLI -------------------------------------------------------------------------

ID = "diffrl/halfcheetah-2x3/random-v0"
HP = [x for k, v in TINY.items() for x in ("--hp", f"{k}={v}")]


@pytest.fixture(scope="module")
def marl_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small random HalfCheetah-2x3 (two agents, 3 joints each) and Hopper-3x1 datasets, made once for the module."""
    pytest.importorskip("minari")
    root = tmp_path_factory.mktemp("datasets")
    for env in ("HalfCheetah-2x3", "Hopper-3x1"):
        assert cli.main(["dataset", "make", "--env", env, "--kind", "random", "--out", str(root),
                         "--size", "1500", "--eval-episodes", "1", "--no-progress"]) == 0
    return root


def _train(root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "dof", "--dataset", HOPPER_3X1, "--dataset-root", str(root), "--steps", str(steps),
            "--out", str(out), "--seed", "1", "--eval-every", "200", "--eval-episodes", "1",
            "--checkpoint-every", "50", "--log-every", "25", "--threads", "1", "--no-progress", *HP, *extra]


def test_train_ctrl_c_resume_plot(marl_datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """diffrl train dof (its clauses checked first), a run stopped by Ctrl-C and resumed equal to a straight
    run, then diffrl plot; the real partition's local views are read by the right agents only."""
    root = marl_datasets
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert cli.main(_train(root, straight, 200)) == 0
    record = json.loads((straight / "conformance.json").read_text())
    assert record["clause_status"] == {c: "pass" for c in gate.CLAUSES["dof"]}
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"]["dataset"] == HOPPER_3X1 and conf["identity"]["env"] == "Hopper-3x1"
    assert conf["resolved"]["factorisation"] == "concat" and conf["resolved"]["K"] == 5
    train_rows = log_rows(straight / "train.csv")
    assert [r["step"] for r in train_rows] == [str(25 * i) for i in range(1, 9)]
    assert all(math.isfinite(float(r["critic_loss"])) and math.isfinite(float(r["actor_loss"])) for r in train_rows)
    evals = log_rows(straight / "eval.csv")
    assert [r["step"] for r in evals] == ["0", "200"] and 1 <= float(evals[0]["length_mean"]) <= 1000
    argv = _train(root, stopped, 200, "--skip-conformance")
    code, lines = stop_after_checkpoint(argv, stopped, 100, signal.SIGINT, timeout=300)
    assert code == 130
    # the --skip-conformance note, then one line for Ctrl-C
    assert lines[:-1] == ["train: --skip-conformance: dof's clauses are not checked on cpu"], lines
    assert "interrupted" in lines[-1] and "resumes" in lines[-1] and str(stopped) in lines[-1], lines
    assert not (stopped / "done.json").exists()
    assert cli.main(argv) == 0
    for name in ("eval.csv", "train.csv"):
        assert log_rows(straight / name) == log_rows(stopped / name), name
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]
    b = torch.load(stopped / "checkpoint.pt", weights_only=False)["agent"]
    for part in ("policy", "ema", "critic", "critic_target"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "200"]) == 0
    rows = plotted(tmp_path / "plot", HOPPER_3X1, marl_datasets, 200)
    assert list(rows) == ["dataset", "dof"] and rows["dof"]["at"]["200"]["n"] == 1
    # the partition's own views (overlapping in the torso entries) on the agent built from the dataset
    from diffrl_ref.rl import datasets

    data = datasets.load_joint(ID, root)
    torch.manual_seed(0)
    ag = DoFAgent(data, DoFConfig(**TINY, max_action=100.0))  # type: ignore[arg-type]
    assert _execution_reads_own_view(ag, data.state[7]) == ag.N


def test_sweep_grid_makes_dof_cells(marl_datasets: Path, tmp_path: Path) -> None:
    from diffrl_ref.rl import sweep

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"steps: 100\nseeds: [0, 1]\ndatasets: [{ID}]\ndataset_root: {marl_datasets}\n"
                    "groups: [{algo: dof}, {algo: dof, name: dof-wconcat, hp: {factorisation: wconcat}}]\n")
    cells = sweep.load_grid(grid)
    assert [(c.group, c.algo, c.env, c.seed) for c in cells] == [
        ("dof", "dof", "HalfCheetah-2x3", 0), ("dof", "dof", "HalfCheetah-2x3", 1),
        ("dof-wconcat", "dof", "HalfCheetah-2x3", 0), ("dof-wconcat", "dof", "HalfCheetah-2x3", 1)]
    assert cells[2].run_config().hp == {"factorisation": "wconcat"}
    assert cells[0].folder(tmp_path) == tmp_path / ID / "dof" / "seed0"


# ---- (f) bad input: exit 2, one line -------------------------------------------------------------------------


@pytest.mark.parametrize("hp,needle", [
    ("factorisation=atten", "dof hyperparameter factorisation must be one of concat, wconcat"),
    ("K=1", "dof hyperparameter K must be an integer >= 2"),
    ("eta=-1", "dof hyperparameter eta must be a number >= 0"),
    ("beta_end=1", "dof hyperparameter beta_end must be a number in (0, 1)"),
    ("beta_start=0.05", "beta_start (0.05) must be <= beta_end (0.02)"),
    ("variance=sigma", "dof hyperparameter variance must be one of beta_tilde, beta"),
    ("width=3", "unknown dof hyperparameter 'width'"),
])
def test_bad_hyperparameters_exit_2_in_one_line(hp: str, needle: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = cli.main(["train", "dof", "--dataset", ID, "--dataset-root", str(tmp_path), "--steps", "10",
                     "--out", str(out), "--hp", hp])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_dof_refuses_a_single_agent_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("minari")
    assert cli.main(["dataset", "make", "--env", "Hopper-v5", "--kind", "random", "--out", str(tmp_path),
                     "--size", "100", "--eval-episodes", "1", "--no-progress"]) == 0
    capsys.readouterr()
    code = cli.main(["train", "dof", "--dataset", "diffrl/hopper/random-v0", "--dataset-root", str(tmp_path),
                     "--steps", "10", "--out", str(tmp_path / "run"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()  # refused before the check and before any file
    assert code == 2 and len(lines) == 1 and "is single-agent (Hopper-v5); dof trains on multi-agent" in lines[0]
    assert not (tmp_path / "run").exists()


def test_unequal_agent_action_sizes_are_refused() -> None:
    data = _joint()
    split = {"agent_0": np.arange(0, 2), "agent_1": np.arange(2, 6)}
    bad = JointTransitions(**{**data.__dict__, "action_split": split})
    with pytest.raises(ValueError, match="the same number of entries"):
        DoFAgent(bad, DoFConfig(**TINY))  # type: ignore[arg-type]


def test_dof_is_registered_as_an_offline_multi_agent_learner() -> None:
    assert loop.OFFLINE_AGENTS["dof"] is DoFAgent and "dof" in loop.MULTI_AGENT and "dof" in cli.TRAIN_ALGOS
    assert gate.CLAUSES["dof"] and all(c.split(".")[0] in ("schedule", "ddpm", "dof", "diffsr")
                                       for c in gate.CLAUSES["dof"])
