"""Offline agents (issue 19): Diffusion-QL from the production path, trained on a dataset made here.

Learning quality is a benchmark (docs), not an assertion here: these tests check that the loss the agent
minimises is the official code's, and that a documented command sequence makes a dataset, trains,
resumes after kill -9 to the same numbers, and plots.
"""

from __future__ import annotations

import csv
import json
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
pytest.importorskip("minari")
pytest.importorskip("h5py")

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.fast import diffsr as D  # noqa: E402
from diffrl_ref.rl import gate  # noqa: E402
from diffrl_ref.rl.datasets import Transitions  # noqa: E402
from diffrl_ref.rl.diffusion_ql import DiffusionQLAgent, DiffusionQLConfig, family_of  # noqa: E402

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


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in ("train_seconds", "steps_per_s")} for r in csv.DictReader(fh)]


def _train(root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "diffusion-ql", "--dataset", ID, "--dataset-root", str(root), "--steps", str(steps),
            "--out", str(out), "--seed", "1", "--eval-every", "100", "--eval-episodes", "1",
            "--checkpoint-every", "50", "--log-every", "25", "--threads", "1", "--no-progress", *TINY, *extra]


def test_make_train_kill_resume_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented sequence: dataset make, train (checked against the conformance suite first), a run
    killed with SIGKILL and resumed equal to a straight run, then diffrl plot."""
    root = tmp_path / "datasets"
    assert cli.main(["dataset", "make", "--env", "Hopper-v5", "--kind", "random", "--out", str(root),
                     "--size", "2000", "--eval-episodes", "2", "--no-progress"]) == 0
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli.main(_train(root, straight, 300)) == 0
    record = json.loads((straight / "conformance.json").read_text())
    assert record["clause_status"] == {c: "pass" for c in gate.CLAUSES["diffusion-ql"]}
    conf = json.loads((straight / "config.json").read_text())
    assert conf["identity"]["dataset"] == ID and conf["identity"]["env"] == "Hopper-v5"
    proc = subprocess.Popen([sys.executable, "-m", "diffrl_ref", *_train(root, killed, 300, "--skip-conformance")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while True:
            ck = killed / "checkpoint.pt"
            if ck.exists() and torch.load(ck, weights_only=False)["state"]["t"] >= 100:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "done.json").exists()
    assert cli.main(_train(root, killed, 300, "--skip-conformance")) == 0
    for name in ("eval.csv", "train.csv"):
        assert _rows(straight / name) == _rows(killed / name), name
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["agent"]["policy"]
    b = torch.load(killed / "checkpoint.pt", weights_only=False)["agent"]["policy"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert cli.main(["plot", str(straight), "--out", str(tmp_path / "plot"), "--at", "300"]) == 0
    rows = json.loads((tmp_path / "plot" / "results.json").read_text())
    assert rows[0]["algo"] == "diffusion-ql" and rows[0]["at"]["300"]["n"] == 1


@pytest.mark.parametrize("argv,needle", [
    (["train", "diffusion-ql", "--steps", "10", "--out", "X"], "--dataset is required"),
    (["train", "diffusion-ql", "--dataset", "diffrl/nope/random-v0", "--steps", "10", "--out", "X"], "nope"),
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
