"""Online RL (issue 6): the Diff-SR agent's pieces, smoke runs, exact resume after kill -9, bad input.

Learning quality is a benchmark (docs/rl.rst), not an assertion here; these tests check that the
agent is assembled from the verified production functions correctly and that runs are resumable.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from runs_util import log_rows  # noqa: E402

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.fast import diffsr as F  # noqa: E402
from diffrl_ref.rl import diffsr as agent_mod  # noqa: E402
from diffrl_ref.rl import envs, gate, loop, profile  # noqa: E402
from diffrl_ref.rl.diffsr import DiffSRAgent, DiffSRConfig, TanhGaussianActor, level_schedule  # noqa: E402

RL = Path(agent_mod.__file__).parent
TINY = {"diffsr": ["feature_dim=16", "psi_hidden=16", "nu_hidden=16", "rff_dim=16", "hidden=16", "levels=20",
                   "learning_starts=200", "batch_size=16"],
        "sac": ["hidden=16", "learning_starts=200", "batch_size=16"]}


def test_rl_uses_the_production_path_not_the_reference() -> None:
    """The agents are built from diffrl_ref.fast (validated against the reference), never from the oracle."""
    for path in RL.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not any(part in ("reference", "suite", "adapters") for part in node.module.split(".")), (
                    f"{path.name} imports {node.module}")


def test_level_schedule_alpha_bar_is_one_minus_the_levels() -> None:
    """beta^k = BetaCDF(k / (K + 1)) must come out as 1 - alpha_bar_k for k = 1..K (no off-by-one)."""
    from scipy import stats

    K = 50
    sched = level_schedule(K, 0.3, 0.1)
    levels = stats.beta.cdf(np.arange(1, K + 1) / (K + 1), 0.3, 0.1)
    got = sched.one_minus_alpha_bar64[1:].numpy()
    # 1 - levels, the ratios and the K-factor product each round once per factor in float64: alpha_bar_k is
    # within about 3k eps of exact, hence 1 - alpha_bar_k within 3K eps alpha_bar_k / (1 - alpha_bar_k); 4K eps
    # leaves room for the final subtraction. An off-by-one in k is an O(1) relative error.
    rtol = 4 * K * np.finfo(np.float64).eps * float(np.max((1 - levels) / levels))
    np.testing.assert_allclose(got, levels, rtol=rtol)
    assert np.all(np.diff(got) > 0) and 0 < got[0] and got[-1] < 1


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    """log pi includes the tanh Jacobian: compare with torch's TransformedDistribution at the sampled actions."""
    torch.manual_seed(0)
    actor = TanhGaussianActor(5, 3, 32, -5.0, 2.0).double()
    s = torch.randn(64, 5, dtype=torch.float64)
    torch.manual_seed(1)
    a, log_pi = actor.sample(s)
    mu, log_std = actor(s)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, log_std.exp()), [torch.distributions.TanhTransform()])
    torch.manual_seed(1)
    u = mu + log_std.exp() * torch.randn_like(mu)  # the same draw, before the squashing
    expected = dist.base_dist.log_prob(u).sum(-1) - torch.log1p(-torch.tanh(u) ** 2).sum(-1)
    # The expected value's log1p(-tanh(u)^2) loses eps cosh(u)^2 absolute per coordinate (tanh(u)^2 rounds
    # relative to 1); 8 eps per coordinate covers the Gaussian terms and the sums of both sides.
    eps64 = torch.finfo(torch.float64).eps
    atol = float((eps64 * (torch.cosh(u) ** 2 + 8)).sum(-1).max())
    torch.testing.assert_close(log_pi, expected, rtol=0.0, atol=atol)
    torch.testing.assert_close(a, torch.tanh(u))


def _agent(seed: int = 0) -> DiffSRAgent:
    torch.manual_seed(seed)
    cfg = DiffSRConfig(feature_dim=16, psi_hidden=16, nu_hidden=16, rff_dim=16, hidden=16, levels=20, batch_size=32)
    ag = DiffSRAgent(4, 2, cfg)
    rng = np.random.default_rng(seed)
    for _ in range(200):
        ag.observe(rng.normal(size=4), rng.uniform(-1, 1, 2), float(rng.normal()), rng.normal(size=4), False)
    return ag


def _params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _changed(before: list[torch.Tensor], m: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, m.parameters(), strict=True))


def test_each_update_trains_its_own_networks_only() -> None:
    """The critic step trains the RFF critic (the official code's optimizer lost it) and leaves psi alone;
    the actor step trains the actor only; the representation step trains psi and nu."""
    ag = _agent()
    s, a, r, s_next, done = ag.buffer.sample(32, ag.device)
    before = {name: _params(m) for name, m in (("psi", ag.psi), ("nu", ag.nu), ("critic", ag.critic),
                                              ("actor", ag.actor))}
    ag.critic_step(s, a, r, s_next, done)
    assert _changed(before["critic"], ag.critic)
    assert not _changed(before["psi"], ag.psi) and not _changed(before["actor"], ag.actor)
    before["critic"] = _params(ag.critic)
    ag.actor_step(s)
    assert _changed(before["actor"], ag.actor)
    assert not _changed(before["critic"], ag.critic) and not _changed(before["psi"], ag.psi)
    assert all(p.requires_grad for p in [*ag.psi.parameters(), *ag.critic.parameters()])  # unfrozen again
    ag.representation_step(s, a, s_next)
    assert _changed(before["psi"], ag.psi) and _changed(before["nu"], ag.nu)


def test_representation_loss_is_the_clause_objective() -> None:
    """weighting='none' is Algorithm 1 exactly (fast.diffsr.train_step_energy with the same k and eps);
    weighting='beta' is the beta-weighted mean of the same per-row clause objective."""
    ag = _agent()
    s, a, _, s_next, _ = ag.buffer.sample(32, ag.device)
    torch.manual_seed(5)
    weighted = ag.representation_loss(s, a, s_next)
    torch.manual_seed(5)
    k = torch.randint(1, ag.sched.K + 1, (32,))
    eps = torch.randn_like(s_next)
    s_tilde = torch.sqrt(1 - ag.sched.one_minus_alpha_bar[k])[:, None] * s_next \
        + torch.sqrt(ag.sched.one_minus_alpha_bar[k])[:, None] * eps
    beta = ag.sched.one_minus_alpha_bar[k]
    rows = F.score_objective_energy(ag.psi(s, a), ag.nu, s_tilde, s_next, beta)
    torch.testing.assert_close(weighted, torch.mean(beta * rows))
    ag.cfg.weighting = "none"
    torch.manual_seed(5)
    plain = ag.representation_loss(s, a, s_next)
    torch.testing.assert_close(plain, F.train_step_energy(ag.psi, ag.nu, s, a, s_next, eps, ag.sched, k))
    torch.testing.assert_close(plain, rows.mean())


def test_official_noise_and_weighting_options() -> None:
    """noise_scale sigma perturbs with sigma eps; weighting='beta2' weights the clause objective by beta^2."""
    ag = _agent()
    ag.cfg.noise_scale, ag.cfg.weighting = 0.449, "beta2"
    s, a, _, s_next, _ = ag.buffer.sample(32, ag.device)
    torch.manual_seed(5)
    got = ag.representation_loss(s, a, s_next)
    torch.manual_seed(5)
    k = torch.randint(1, ag.sched.K + 1, (32,))
    eps = 0.449 * torch.randn_like(s_next)
    beta = ag.sched.one_minus_alpha_bar[k]
    s_tilde = torch.sqrt(1 - beta)[:, None] * s_next + torch.sqrt(beta)[:, None] * eps
    rows = F.score_objective_energy(ag.psi(s, a), ag.nu, s_tilde, s_next, beta)
    torch.testing.assert_close(got, torch.mean(beta**2 * rows))


def test_critic_is_the_clause_and_its_options() -> None:
    """The agent's critic is fast.diffsr.critic on its parameters; the options set what they name."""
    ag = _agent()
    psi = torch.randn(8, 16)
    c = ag.critic
    expected = F.critic(psi, c.omegas, c.phases, 1.0, c.hidden_w, c.hidden_b, c.out_w, c.out_b)
    assert torch.equal(c(psi), expected)  # the default amplitude A = 1 (the ablation's pick, the official one)
    assert c.hidden_w is not None and c.hidden_w.shape == (2, 16, 16)
    assert c.omegas.shape == (2, 16, 16) and c.out_w.shape == (2, 16)
    torch.manual_seed(0)
    off = DiffSRAgent(4, 2, DiffSRConfig(feature_dim=16, psi_hidden=16, nu_hidden=16, rff_dim=16, hidden=16,
                                         levels=20, rff_init="linear", feature_amplitude="1", activation="elu",
                                         actor_init="orthogonal"))
    assert off.critic.amplitude == 1.0
    torch.manual_seed(0)
    lin = DiffSRAgent(4, 2, DiffSRConfig(feature_dim=16, psi_hidden=16, nu_hidden=16, rff_dim=16, hidden=16,
                                         levels=20, critic_head="linear", feature_amplitude="sqrt(2/D)")).critic
    assert lin.hidden_w is None and lin.out_w.shape == (2, 16)  # the deck's Q = w^T z + d
    z = math.sqrt(2 / 16) * torch.cos(torch.einsum("ndm,bm->nbd", lin.omegas, psi) + lin.phases[:, None, :])
    torch.testing.assert_close(lin(psi), torch.einsum("nbd,nd->nb", z, lin.out_w) + lin.out_b[:, None])
    bound = 1 / math.sqrt(16)  # nn.Linear(m, D)'s default initialisation of the official critic's first layer
    assert float(off.critic.omegas.abs().max()) <= bound
    assert float((off.critic.phases + math.pi / 2).abs().max()) <= bound  # sin(x + b) = cos(x + b - pi/2)
    assert any(isinstance(m, torch.nn.ELU) for m in off.psi.modules())
    assert any(isinstance(m, torch.nn.ELU) for m in off.actor.modules())
    linears = [m for m in off.actor.net if isinstance(m, torch.nn.Linear)]
    w = linears[1].weight.detach()  # the square hidden layer: orthogonal
    torch.testing.assert_close(w @ w.T, torch.eye(16), rtol=0.0, atol=16 * torch.finfo(torch.float32).eps)
    assert all(float(m.bias.abs().max()) == 0.0 for m in linears)
    relu = DiffSRAgent(4, 2, DiffSRConfig(feature_dim=16, psi_hidden=16, nu_hidden=16, rff_dim=16, hidden=16,
                                          levels=20, activation="relu", actor_init="default"))
    for net in (relu.psi, relu.actor):
        kinds = {type(m) for m in net.modules()}
        assert torch.nn.ReLU in kinds and torch.nn.ELU not in kinds


def test_critic_target_follows_polyak_every_target_every_updates() -> None:
    ag = _agent()
    ag.cfg.target_every = 2
    target0 = _params(ag.critic_target)
    ag.update()
    assert not _changed(target0, ag.critic_target)
    online = _params(ag.critic)
    ag.update()
    online_after = _params(ag.critic)
    # target <- target + tau (online - target), with the online weights after the second update
    for t0, p, t1 in zip(target0, online_after, ag.critic_target.parameters(), strict=True):
        torch.testing.assert_close(t1, t0 + ag.cfg.tau * (p - t0))
    assert any(not torch.equal(a, b) for a, b in zip(online, online_after, strict=True))


# ---- runs through the CLI -----------------------------------------------------------------------


def _args(algo: str, env: str, out: Path, steps: int, *extra: str, every: int = 150, gate: bool = False) -> list[str]:
    """``diffrl train`` arguments for a tiny run; the conformance check before training (about 10 s) only
    where ``gate`` is set: the tests of the check itself and the HalfCheetah smoke run."""
    hp = [x for h in TINY[algo] for x in ("--hp", h)]
    return ["train", algo, "--env", env, "--steps", str(steps), "--seed", "3", "--out", str(out),
            "--eval-every", str(every), "--eval-episodes", "2", "--checkpoint-every", str(every),
            "--log-every", "50", "--threads", "1", "--no-progress", *hp, *extra,
            *([] if gate else ["--skip-conformance"])]


def _same_run(a: Path, b: Path) -> None:
    for name in ("eval.csv", "episodes.csv", "train.csv"):
        ra, rb = log_rows(a / name), log_rows(b / name)
        assert ra == rb, f"{name} differs"
        steps = [int(r["step"]) for r in rb]
        assert steps == sorted(set(steps)), f"{name}: a step is repeated or out of order"


@pytest.mark.parametrize("algo,env,steps", [("diffsr", "HalfCheetah-v5", 1000), ("sac", "HalfCheetah-v5", 1000),
                                            ("diffsr", "reach-v3", 500), ("sac", "reach-v3", 500)])
def test_smoke_run_writes_logs_and_checkpoint(algo: str, env: str, steps: int, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A few hundred learning steps on a real MuJoCo and a MetaWorld task (one full episode each, one evaluation
    episode: HalfCheetah's never end early); the HalfCheetah runs check their agent's clauses first, as a user's
    run does."""
    gated = env == "HalfCheetah-v5"
    args = _args(algo, env, tmp_path, steps, "--eval-episodes", "1", every=steps // 2, gate=gated)
    assert cli.main(args) == 0
    assert f"done: {steps} steps" in capsys.readouterr().out
    for name in ("config.json", "checkpoint.pt", "eval.csv", "train.csv", "episodes.csv", "done.json"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    ev = log_rows(tmp_path / "eval.csv")
    assert [int(r["step"]) for r in ev] == [0, steps // 2, steps]
    assert all(math.isfinite(float(r["return_mean"])) for r in ev)
    tr = log_rows(tmp_path / "train.csv")
    assert math.isfinite(float(tr[-1]["critic_loss"]))  # learning started at 200
    assert json.loads((tmp_path / "config.json").read_text())["skip_conformance"] is not gated
    if gated:
        record = json.loads((tmp_path / "conformance.json").read_text())
        assert record["passed"] and record["device"] == "cpu" and record["dtype"] == "float32"
        assert record["clause_status"] == {c: "pass" for c in gate.CLAUSES[algo]}
    assert cli.main(args) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("algo", ["diffsr", "sac"])
@pytest.mark.parametrize("env", [e for e in envs.MUJOCO if e != "HalfCheetah-v5"])
def test_every_listed_mujoco_env_trains(algo: str, env: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Each listed MuJoCo task (Humanoid's 348-dim state included) runs 100 learning steps to a finite
    evaluation; HalfCheetah is the full smoke test above."""
    assert cli.main(_args(algo, env, tmp_path, 300, "--eval-episodes", "1", every=300)) == 0
    assert "done: 300 steps" in capsys.readouterr().out
    assert [int(r["step"]) for r in log_rows(tmp_path / "eval.csv")] == [0, 300]
    assert math.isfinite(float(log_rows(tmp_path / "train.csv")[-1]["critic_loss"]))


def _wait_for_checkpoint(out: Path, step: int, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "checkpoint.pt").exists():
            ck = torch.load(out / "checkpoint.pt", weights_only=False)
            if ck["state"]["t"] >= step:
                return
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    raise AssertionError("no checkpoint in time")


@pytest.mark.parametrize("algo", ["diffsr", "sac"])
def test_kill_9_and_resume_reproduce_the_uninterrupted_run(algo: str, tmp_path: Path) -> None:
    """Same seed on CPU: straight run == killed-then-resumed run == a run extended from fewer steps."""
    env, steps = "InvertedPendulum-v5", 900
    straight, killed, extended = tmp_path / "straight", tmp_path / "killed", tmp_path / "extended"
    assert cli.main(_args(algo, env, straight, steps)) == 0
    proc = subprocess.Popen([sys.executable, "-m", "diffrl_ref", *_args(algo, env, killed, steps)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(killed, 300, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "done.json").exists()
    assert cli.main(_args(algo, env, killed, steps)) == 0
    _same_run(straight, killed)
    starts = [json.loads(line) for line in (killed / "starts.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in starts] == ["fresh", "resume"] and starts[0]["step"] == 0 and starts[1]["step"] >= 300
    assert starts[1]["cpu"] and starts[1]["host"]
    assert cli.main(_args(algo, env, extended, 400)) == 0
    assert cli.main(_args(algo, env, extended, steps)) == 0
    _same_run(straight, extended)
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]
    b = torch.load(killed / "checkpoint.pt", weights_only=False)["agent"]
    key = "actor" if algo == "diffsr" else "policy"
    for name, tensor in a[key].items():
        assert torch.equal(tensor, b[key][name]), name
    if algo == "sac":  # the final policy snapshot (a dataset's behaviour policy) is the same too
        sa, sb = (torch.load(d / "policies" / f"step{steps}.pt", weights_only=False)["agent"]["actor"]
                  for d in (straight, killed))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- bad input: one line, exit status 2 ------------------------------------------------------------


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err


@pytest.mark.parametrize("argv_tail,needle", [
    (["--env", "NoSuchEnv-v9"], "unknown environment 'NoSuchEnv-v9'"),
    (["--env", "reach-v9"], "unknown environment"),
    (["--env", "fly-v3"], "unknown MetaWorld task 'fly-v3'"),
    (["--env", "Hopper-v5", "--steps", "-5"], "--steps"),
    (["--env", "Hopper-v5", "--steps", "ten"], "--steps"),
    (["--env", "Hopper-v5", "--seed", "1.5"], "--seed"),
    (["--env", "Hopper-v5", "--hp", "no_such=1"], "unknown diffsr hyperparameter 'no_such'"),
    (["--env", "Hopper-v5", "--hp", "batch_size=big"], "batch_size must be an integer"),
    (["--env", "Hopper-v5", "--hp", "tau"], "--hp expects NAME=VALUE"),
])
def test_bad_arguments_give_one_line(argv_tail: list[str], needle: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "diffsr", "--steps", "100", "--out", str(tmp_path / "run"), *argv_tail]
    _one_line_error(argv, capsys, needle)


def test_unreadable_checkpoint_and_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert cli.main(_args("sac", "InvertedPendulum-v5", out, 250)) == 0
    capsys.readouterr()
    _one_line_error(_args("sac", "Hopper-v5", out, 250), capsys, "holds another run")
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (out / "done.json").unlink()
    _one_line_error(_args("sac", "InvertedPendulum-v5", out, 300), capsys, "cannot read checkpoint")
    # nothing was overwritten by the failed attempt
    assert (out / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_first_ctrl_c_is_deferred_to_a_step_boundary_second_is_immediate() -> None:
    """The loop's SIGINT handler only records the first interrupt; the second raises; the old handler returns."""
    from diffrl_ref.rl.loop import DeferredInterrupt

    before = signal.getsignal(signal.SIGINT)
    with DeferredInterrupt() as interrupt:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs at the next bytecode boundary
        except KeyboardInterrupt:
            pytest.fail("the first SIGINT raised where the loop could be inside library code")
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # interrupted well before this ends
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_says_how_to_resume(tmp_path: Path) -> None:
    """SIGINT: exit status 130, one line naming the folder, and the checkpoint left for the resume."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffrl_ref", *_args("sac", "InvertedPendulum-v5", out, 100_000)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoint(out, 150, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "resumes" in lines[0] and str(out) in lines[0], lines
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["t"] >= 150


# ---- hyperparameter domains ------------------------------------------------------------------------


def _out_of_domain(algo: str) -> list[tuple[str, str]]:
    """For every hyperparameter of ``algo``, values just outside its declared domain."""
    cls = loop.CONFIGS[algo]
    bad: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        default = f.default
        if isinstance(default, str):
            bad.append((f.name, "foo"))
        elif isinstance(default, int):
            bad += [(f.name, "-1"), (f.name, "2.5")] + ([(f.name, "0")] if loop.DOMAINS[algo][f.name][0](0) is False
                                                       else [])
        else:
            bad += [(f.name, "nan"), (f.name, "inf")]
    return bad


@pytest.mark.parametrize("algo,name,value", [(a, n, v) for a in loop.ALGOS for n, v in _out_of_domain(a)]
                         + [("diffsr", "gamma", "1"), ("diffsr", "gamma", "2"), ("diffsr", "tau", "0"),
                            ("diffsr", "log_std_min", "3"), ("sac", "gamma", "1"), ("sac", "tau", "1.5")])
def test_every_hyperparameter_is_checked_against_its_domain(algo: str, name: str, value: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """One line naming the parameter (or the pair) and its domain, exit status 2, nothing created."""
    out = tmp_path / "run"
    argv = ["train", algo, "--env", "Hopper-v5", "--steps", "100", "--out", str(out), "--hp", f"{name}={value}"]
    needle = "log_std_min" if name == "log_std_min" and value == "3" else f"{algo} hyperparameter {name} must be"
    _one_line_error(argv, capsys, needle)
    assert not out.exists()


def test_the_cli_lists_every_algorithm() -> None:
    """cli.TRAIN_ALGOS is written out so that parsing imports no torch: it must name loop.ALGOS, in order."""
    assert cli.TRAIN_ALGOS == list(loop.ALGOS)


def test_every_hyperparameter_has_a_domain_and_a_source() -> None:
    for algo in loop.ALGOS:
        fields = {f.name for f in dataclasses.fields(loop.CONFIGS[algo])}
        assert set(loop.DOMAINS[algo]) == fields
        for name in fields:  # each default lies in its own domain
            assert loop.DOMAINS[algo][name][0](getattr(loop.CONFIGS[algo](), name)), name


# ---- conformance before training -----------------------------------------------------------------------


def test_training_refuses_a_production_path_that_fails_a_clause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A planted production-path bug in a clause the agent calls: exit 2, one line naming the clause,
    conformance.json says why, no config or checkpoint."""
    (tmp_path / "broken_impl.py").write_text(
        "from diffrl_ref.suite.mutants import all_mutants\n"
        "from diffrl_ref.suite.selftest import base_adapter\n"
        "m = next(m for m in all_mutants() if m.name == 'fast_diffsr_critic_loss_mean')\n"
        "IMPL = base_adapter('fast').with_overrides('broken', m.patch)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(gate, "IMPL", "broken_impl:IMPL")
    out = tmp_path / "run"
    _one_line_error(_args("diffsr", "InvertedPendulum-v5", out, 300, gate=True), capsys, "clause diffsr.critic_loss")
    record = json.loads((out / "conformance.json").read_text())
    assert not record["passed"] and record["clause_status"]["diffsr.critic_loss"] == "fail"
    assert record["clause_status"]["diffsr.td_target"] == "pass"
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


def test_a_run_is_not_resumed_under_changed_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defaults that change between a run's start and its resume (as the ablation changed Diff-SR's) would load
    its state into an agent with other settings and go on silently: the resume is refused with one line, exit 2,
    and the folder is left as it was. Simulated by editing the resolved settings the run recorded."""
    out = tmp_path / "run"
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 300)) == 0
    conf = json.loads((out / "config.json").read_text())
    conf["resolved"]["target_every"] = 7
    (out / "config.json").write_text(json.dumps(conf, indent=1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 450)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was started with target_every=7, the defaults now give" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 300)) == 0  # finished at its steps: nothing trains


def test_a_resumed_run_is_checked_again_only_on_another_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the check runs, not what it finds (the smoke run and the refusal test run it for real): a stand-in
    records a pass as the check does."""
    out = tmp_path / "run"
    calls: list[str] = []

    def counting(algo: str, device: str, out: Path, impl: str | None = None) -> dict[str, object]:
        calls.append(device)
        record: dict[str, object] = {"algo": algo, "device": device, "dtype": gate.DTYPE, "passed": True}
        gate._write(out, record)
        return record

    monkeypatch.setattr(gate, "check", counting)
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 300, gate=True)) == 0
    assert calls == ["cpu"]
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 450, gate=True)) == 0  # extended: no new check
    assert calls == ["cpu"]
    assert not gate.needed(out, "cpu")
    assert gate.needed(out, "cuda")  # a device change re-checks (no CUDA here to run it)
    record = json.loads((out / "conformance.json").read_text())
    record["dtype"] = "bfloat16"
    (out / "conformance.json").write_text(json.dumps(record))
    assert gate.needed(out, "cpu")


def test_skip_conformance_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "check", lambda algo, device, out, impl=None: {"passed": True})  # what is recorded
    out = tmp_path / "run"
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 250, gate=True)) == 0
    assert json.loads((out / "config.json").read_text())["skip_conformance"] is False
    assert cli.main(_args("diffsr", "InvertedPendulum-v5", out, 400)) == 0  # resumed with --skip-conformance
    assert json.loads((out / "config.json").read_text())["skip_conformance"] is True


# ---- diffrl profile ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["diffsr", "sac"])
def test_profile_shares_cover_the_learning_phase(algo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The phases are disjoint and cover every timed step: shares in [0, 1] summing to 1; the updates and the
    environment take time; the agent's own functions were called (wrapped, not replaced)."""
    out = tmp_path / "p.json"
    assert cli.main(["profile", algo, "--env", "InvertedPendulum-v5", "--steps", "60", "--learning-starts", "40",
                     "--hp", "batch_size=16", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    shares = res["shares"]
    assert list(shares) == list(profile.PHASES[algo])
    assert all(0.0 <= v <= 1.0 for v in shares.values()) and sum(shares.values()) == pytest.approx(1.0)
    updates = [p for p in shares if p not in ("env", "act", "observe", "other")]
    assert all(shares[p] > 0 for p in [*updates, "env", "act"])
    assert res["steps"] == 60 and res["steps_per_s"] > 0
    printed = capsys.readouterr().out
    assert f"profile: {algo} on InvertedPendulum-v5" in printed and "%" in printed
    assert cli.main(["profile", algo, "--env", "NoSuchEnv-v0", "--steps", "5"]) == 2


def test_campaign_throughput_script(tmp_path: Path) -> None:
    """docs/rl/campaign-200k/throughput.py: one cell per task and agent, steps/s the median over rounds, the
    shares of each phase summing to 1, and a table with a row per cell that says when the machine was busy."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "docs" / "rl" / "campaign-200k" / "throughput.py"
    spec = importlib.util.spec_from_file_location("campaign_throughput", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--tasks", "Hopper-v5", "--rounds", "2", "--steps", "5", "--learning-starts", "300", "--out",
                 str(tmp_path)])
    rec = json.loads((tmp_path / "throughput.json").read_text())
    for algo in ("sac", "diffsr"):
        rounds = [r["steps_per_s"] for r in rec["runs"]["Hopper-v5"][algo]]
        assert len(rounds) == 2 and rec["cells"]["Hopper-v5"][algo]["steps_per_s"] == pytest.approx(np.median(rounds))
        assert sum(rec["cells"]["Hopper-v5"][algo]["shares"].values()) == pytest.approx(1.0)
    rst = (tmp_path / "throughput.rst").read_text()
    assert rst.count("   * - Hopper-v5") == 2 and "relative to SAC" in rst
    busy = rec["load_before_after"][1][0] - 1 > 0.5  # this process counts for its one thread
    assert ("other work shared the cores" if busy else "a quiet machine: nothing else ran") in rst
