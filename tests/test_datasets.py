"""Offline datasets (issue 19, part 1): D4RL-recipe datasets made here, in Minari's format.

All tiny: a few hundred transitions, a 400-step SAC run used as the medium and the expert policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")
minari = pytest.importorskip("minari")
pytest.importorskip("h5py")

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.rl import datasets, envs, loop, report  # noqa: E402

SMALL = ["--size", "300", "--eval-episodes", "2", "--no-progress"]


def make(root: Path, env: str, kind: str, *extra: str) -> int:
    return cli.main(["dataset", "make", "--env", env, "--kind", kind, "--out", str(root), *SMALL, *extra])


def load(root: Path, ds_id: str) -> Any:
    with datasets.minari_root(root):
        return minari.load_dataset(ds_id)


def episodes(root: Path, ds_id: str) -> list[Any]:
    return list(load(root, ds_id).iterate_episodes())


def metadata(root: Path, ds_id: str) -> dict[str, Any]:
    return dict(load(root, ds_id).storage.metadata)


def arrays(root: Path, ds_id: str) -> dict[str, np.ndarray]:
    eps = episodes(root, ds_id)
    return {k: np.concatenate([getattr(e, k) for e in eps])
            for k in ("observations", "actions", "rewards", "terminations", "truncations")}


def snapshot(root: Path) -> dict[str, tuple[int, int]] | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sac") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "SNAPSHOT_EVERY", 200)  # policy snapshots at 200 and 400 (50,000 in real runs)
        assert cli.main(["train", "sac", "--env", "InvertedPendulum-v5", "--steps", "400", "--out", str(out),
                         "--hp", "learning_starts=200", "--hp", "batch_size=16", "--hp", "hidden=16",
                         "--checkpoint-every", "200", "--eval-every", "200", "--eval-episodes", "1", "--threads",
                         "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def made_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    assert make(root, "InvertedPendulum-v5", "random") == 0
    return root


def test_dataset_id() -> None:
    assert datasets.dataset_id("HalfCheetah-v5", "medium") == "diffrl/halfcheetah/medium-v0"
    assert datasets.dataset_id("Walker2d-v5", "medium-replay") == "diffrl/walker2d/medium-replay-v0"
    assert datasets.dataset_id("reach-v3", "expert") == "diffrl/reach/expert-v0"


@pytest.mark.parametrize("env", ["InvertedPendulum-v5", "Hopper-v5"])
def test_random_dataset_read_back_with_minari(env: str, tmp_path: Path) -> None:
    """Episodes reset from their seeds; terminations are the env's; the cut last episode is a truncation."""
    assert make(tmp_path, env, "random", "--seed", "3") == 0
    ds_id = datasets.dataset_id(env, "random")
    ds = load(tmp_path, ds_id)
    assert ds.total_steps == 300
    eps = list(ds.iterate_episodes())
    seeds = [m["seed"] for m in ds.storage.get_episode_metadata(range(len(eps)))]
    e = envs.make(env, 0)
    low, high = e.action_space.low, e.action_space.high
    for k, ep in enumerate(eps):
        n = len(ep.rewards)
        assert ep.observations.shape == (n + 1, e.observation_space.shape[0]) and ep.observations.dtype == np.float32
        assert ep.actions.shape == (n, e.action_space.shape[0])
        assert np.all(ep.actions >= low) and np.all(ep.actions <= high)
        assert seeds[k] == envs.episode_seed(3, k)
        np.testing.assert_array_equal(ep.observations[0], envs.reset(e, seeds[k]))
        assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
        if k < len(eps) - 1:
            assert ep.terminations[-1] and not ep.truncations[-1]  # random play falls long before the time limit
    assert eps[-1].truncations[-1] != eps[-1].terminations[-1]  # cut at --size unless it fell right there

    t = datasets.load_transitions(ds_id, tmp_path)
    assert t.env == env and len(t) == 300
    assert t.observations.shape == t.next_observations.shape == (300, e.observation_space.shape[0])
    assert t.actions.shape == (300, e.action_space.shape[0])
    assert t.rewards.shape == t.terminals.shape == (300,)
    assert all(x.dtype == np.float32 for x in (t.observations, t.actions, t.rewards, t.next_observations,
                                               t.terminals))
    assert np.all(np.abs(t.actions) <= 1)  # the agents' scale (InvertedPendulum's box is [-3, 3])
    a = arrays(tmp_path, ds_id)
    np.testing.assert_array_equal(t.terminals, a["terminations"].astype(np.float32))
    ends = np.cumsum([len(ep.rewards) for ep in eps]) - 1
    inner = np.setdiff1d(np.arange(299), ends)
    np.testing.assert_array_equal(t.next_observations[inner], t.observations[inner + 1])
    np.testing.assert_array_equal(t.next_observations[ends], np.stack([ep.observations[-1] for ep in eps]))
    assert t.ref_min_score is not None and t.ref_max_score is None


def test_time_limits_are_truncations_not_terminals(tmp_path: Path) -> None:
    """Reacher-v5 never terminates and stops at 50 steps: every end is a truncation (the last, the cut), no terminal."""
    assert make(tmp_path, "Reacher-v5", "random", "--size", "120") == 0
    ds_id = datasets.dataset_id("Reacher-v5", "random")
    eps = episodes(tmp_path, ds_id)
    assert [len(e.rewards) for e in eps] == [50, 50, 20]
    assert all(e.truncations[-1] and not e.terminations.any() for e in eps)
    assert datasets.load_transitions(ds_id, tmp_path).terminals.sum() == 0
    # the dataset's own average return leaves out the episode cut at --size (20 steps: a partial sum)
    rec = datasets.record(ds_id, tmp_path)
    full = [float(np.sum(e.rewards, dtype=np.float64)) for e in eps[:2]]
    assert rec["episodes"] == 3 and rec["episodes_averaged"] == 2 and rec["transitions"] == 120
    assert rec["average_return"] == pytest.approx(np.mean(full), rel=1e-12)
    assert rec["std_return"] == pytest.approx(np.std(full), rel=1e-12, abs=1e-12)
    assert rec["ref_min_score"] == metadata(tmp_path, ds_id)["ref_min_score"] and rec["ref_max_score"] is None
    assert rec["kind"] == "random" and rec["env"] == "Reacher-v5"


def test_same_arguments_same_data(made_root: Path, tmp_path: Path) -> None:
    assert make(tmp_path, "InvertedPendulum-v5", "random") == 0
    ds_id = datasets.dataset_id("InvertedPendulum-v5", "random")
    a, b = arrays(made_root, ds_id), arrays(tmp_path, ds_id)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert make(tmp_path / "other", "InvertedPendulum-v5", "random", "--seed", "1") == 0
    assert not np.array_equal(arrays(tmp_path / "other", ds_id)["actions"], a["actions"])


def test_policy_datasets(sac_run: Path, tmp_path: Path) -> None:
    """medium and expert from the SAC run: reproducible, provenance in Minari's metadata; medium-expert is both."""
    env, ck = "InvertedPendulum-v5", sac_run / "checkpoint.pt"
    sha = hashlib.sha256(ck.read_bytes()).hexdigest()
    made = {}
    for kind, pol in (("medium", [str(sac_run)]), ("expert", [str(ck)]), ("medium-expert", [str(sac_run)] * 2)):
        assert make(tmp_path / "a", env, kind, "--policy", *pol, "--seed", "5") == 0
        made[kind] = arrays(tmp_path / "a", datasets.dataset_id(env, kind))
    assert make(tmp_path / "b", env, "medium", "--policy", str(ck), "--seed", "5") == 0  # again: the same data
    again = arrays(tmp_path / "b", datasets.dataset_id(env, "medium"))
    for k in again:
        np.testing.assert_array_equal(again[k], made["medium"][k])
        np.testing.assert_array_equal(made["medium-expert"][k], np.concatenate([made["medium"][k], made["expert"][k]]))

    e = envs.make(env, 0)  # stochastic actions: not the policy's mean action
    actor = datasets.build_actor(datasets.read_policy(str(ck), "medium", env), e, 0)
    obs0 = made["medium"]["observations"][0]
    assert not np.allclose(made["medium"]["actions"][0], datasets.env_action(e, actor.act(obs0, True)))

    md = metadata(tmp_path / "a", datasets.dataset_id(env, "medium"))
    prov = md[datasets.PROVENANCE]
    assert prov["kind"] == "medium" and prov["env"] == env and prov["seed"] == 5 and prov["size"] == 300
    assert {"gymnasium", "mujoco", "torch", "diffrl-ref"} <= set(prov["versions"])
    (p,) = prov["policies"]
    assert p["sha256"] == sha and p["name"] == sha[:12] and p["run"]["algo"] == "sac"
    assert p["evaluation"]["episodes"] == 2 and np.isfinite(p["evaluation"]["return_mean"])
    assert sha[:12] in md["algorithm_name"] and sha[:12] in md["description"]
    assert md["code_permalink"].startswith("diffrl-ref ")
    assert "gymnasium==" + prov["versions"]["gymnasium"] in md["requirements"]
    assert md["ref_min_score"] == prov["reference"]["ref_min_score"]["value"]
    assert "ref_max_score" not in md and prov["reference"]["ref_max_score"]["value"] is None
    for kind in ("expert", "medium-expert"):
        md = metadata(tmp_path / "a", datasets.dataset_id(env, kind))
        expert = [q for q in md[datasets.PROVENANCE]["policies"] if q["role"] == "expert"]
        assert md["ref_max_score"] == expert[0]["evaluation"]["return_mean"]
        assert md["num_episodes_average_score"] == 2
    assert metadata(tmp_path / "a", datasets.dataset_id(env, "medium-expert"))[datasets.PROVENANCE][
        "size"] == 600

    assert cli.main(["dataset", "make", "--env", env, "--kind", "random", "--out", str(tmp_path / "c"), *SMALL,
                     "--expert-return", "1000"]) == 0
    t = datasets.load_transitions(datasets.dataset_id(env, "random"), tmp_path / "c")
    assert t.ref_max_score == 1000.0


def test_policy_snapshots_are_behaviour_policies(sac_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """SAC keeps its actor every SNAPSHOT_EVERY steps and at the end (policies/stepT.pt, archived with the logs);
    a snapshot of the checkpoint's actor makes the same medium dataset as the full checkpoint; medium-replay
    needs the checkpoint. (checkpoint.pt is written at episode ends, snapshots at their step, mid-episode.)"""
    env = "InvertedPendulum-v5"
    assert sorted(p.name for p in (sac_run / "policies").glob("*.pt")) == ["step200.pt", "step400.pt"]
    final = sac_run / "policies" / "step400.pt"
    snap = torch.load(final, weights_only=False)
    first = torch.load(sac_run / "policies" / "step200.pt", weights_only=False)
    assert set(snap["agent"]) == {"actor", "config"} and snap["state"] == {"t": 400}
    assert snap["identity"]["algo"] == "sac" and np.isfinite(snap["eval"]["return_mean"])
    assert not torch.equal(snap["agent"]["actor"]["mu.weight"], first["agent"]["actor"]["mu.weight"])  # it learnt
    ck = torch.load(sac_run / "checkpoint.pt", weights_only=False)
    assert final.stat().st_size * 5 < (sac_run / "checkpoint.pt").stat().st_size  # the actor alone
    same = {**snap, "state": {"t": ck["state"]["t"]}, "agent": {
        "actor": {k.removeprefix("actor."): v for k, v in ck["agent"]["policy"].items() if k.startswith("actor.")},
        "config": ck["agent"]["config"]}}
    torch.save(same, tmp_path / "same.pt")
    assert make(tmp_path / "a", env, "medium", "--policy", str(sac_run), "--seed", "5") == 0
    assert make(tmp_path / "b", env, "medium", "--policy", str(tmp_path / "same.pt"), "--seed", "5") == 0
    a = arrays(tmp_path / "a", datasets.dataset_id(env, "medium"))
    b = arrays(tmp_path / "b", datasets.dataset_id(env, "medium"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    capsys.readouterr()
    assert make(tmp_path / "c", env, "medium-replay", "--policy", str(final)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a policy snapshot has no replay buffer" in err
    report.archive([report.load_run(sac_run)], tmp_path / "arch")
    kept = tmp_path / "arch" / report.archived(report.load_run(sac_run)) / "policies"
    assert sorted(p.name for p in kept.iterdir()) == ["step400.pt"]  # the last; none at a multiple of 50k
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "SNAPSHOT_ARCHIVE_EVERY", 200)
        report.archive([report.load_run(sac_run)], tmp_path / "arch")
    assert sorted(p.name for p in kept.iterdir()) == ["step200.pt", "step400.pt"]
    with pytest.MonkeyPatch.context() as mp:  # as if the run were still at step 200: its last one then
        mp.setattr(loop, "SNAPSHOT_ARCHIVE_EVERY", 300)
        (sac_run / "policies" / "step400.pt").rename(tmp_path / "step400.pt")
        try:
            report.archive([report.load_run(sac_run)], tmp_path / "arch")
        finally:
            (tmp_path / "step400.pt").rename(sac_run / "policies" / "step400.pt")
    assert sorted(p.name for p in kept.iterdir()) == ["step200.pt"]  # the stale "last" one is gone


def test_a_run_folder_without_checkpoint_gives_its_last_snapshot(sac_run: Path, tmp_path: Path) -> None:
    """A run that ended mid-episode before its first checkpoint: the folder stands for its final actor."""
    env, folder = "InvertedPendulum-v5", tmp_path / "run"
    shutil.copytree(sac_run, folder, ignore=shutil.ignore_patterns("checkpoint.pt"))
    assert datasets.read_policy(str(folder), "medium", env).path == folder / "policies" / "step400.pt"
    assert make(tmp_path / "a", env, "medium", "--policy", str(folder), "--seed", "5") == 0
    assert make(tmp_path / "b", env, "medium", "--policy", str(folder / "policies" / "step400.pt"), "--seed", "5") == 0
    a, b = (arrays(tmp_path / x, datasets.dataset_id(env, "medium")) for x in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_relative_root_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """--out datasets (relative): Minari 0.5.4 doubles a relative root into its paths unless it is made absolute."""
    monkeypatch.chdir(tmp_path)
    assert make(Path("rel"), "InvertedPendulum-v5", "random") == 0
    assert len(datasets.load_transitions(datasets.dataset_id("InvertedPendulum-v5", "random"), "rel")) == 300
    capsys.readouterr()
    assert cli.main(["dataset", "list", "--root", "rel"]) == 0
    assert "random" in capsys.readouterr().out


def test_medium_replay_is_the_runs_buffer(sac_run: Path, tmp_path: Path) -> None:
    env = "InvertedPendulum-v5"
    assert cli.main(["dataset", "make", "--env", env, "--kind", "medium-replay", "--out", str(tmp_path),
                     "--policy", str(sac_run), "--eval-episodes", "1", "--no-progress"]) == 0
    ck = torch.load(sac_run / "checkpoint.pt", map_location="cpu", weights_only=False)
    buf, t = ck["agent"]["buffer"], ck["state"]["t"]
    ds_id = datasets.dataset_id(env, "medium-replay")
    data = datasets.load_transitions(ds_id, tmp_path)
    assert len(data) == t == len(buf["rewards"]) and t > 200  # with steps of the learning policy
    np.testing.assert_array_equal(data.observations, buf["observations"].reshape(t, -1))
    np.testing.assert_array_equal(data.next_observations, buf["next_observations"].reshape(t, -1))
    np.testing.assert_array_equal(data.rewards, buf["rewards"].reshape(t))
    np.testing.assert_array_equal(data.terminals, buf["dones"].reshape(t))
    np.testing.assert_allclose(data.actions, buf["actions"].reshape(t, -1), rtol=0, atol=1e-6)
    e = envs.make(env, 0)  # stored: what the env received
    np.testing.assert_array_equal(arrays(tmp_path, ds_id)["actions"],
                                  datasets.env_action(e, buf["actions"].reshape(t, -1)))
    eps = episodes(tmp_path, ds_id)
    assert len(eps) == ck["state"]["episode"]
    assert sum(bool(x.terminations[-1]) for x in eps) == int(buf["dones"].sum())


def test_list(made_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dataset", "list", "--root", str(made_root)]) == 0
    out = capsys.readouterr().out
    assert "diffrl/invertedpendulum/random-v0" in out and "InvertedPendulum-v5" in out and "unset" in out
    assert datasets.env_of("diffrl/invertedpendulum/random-v0", made_root) == "InvertedPendulum-v5"


def test_interrupted_make_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", boom)  # the last step: the data is written in the hidden folder
    assert make(tmp_path, "InvertedPendulum-v5", "random") == 130
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_killed_makes_temp_folder_is_removed_by_the_next_make(tmp_path: Path) -> None:
    """SIGKILL leaves .make-PID-*; the next make removes it once PID is gone, and leaves a live make's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID names no process now (reuse within this test is not a concern on Linux's PID counter)
    stale = tmp_path / f".make-{dead.pid}-abc123"
    live = tmp_path / f".make-{os.getpid()}-def456"
    other = tmp_path / ".make-xyz"  # the name of makes before this rule: no PID, left alone
    for d in (stale, live, other):
        (d / "diffrl").mkdir(parents=True)
    assert make(tmp_path, "InvertedPendulum-v5", "random") == 0
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert (tmp_path / "diffrl/invertedpendulum/random-v0").is_dir()


def test_the_code_recorded_is_the_code_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A make records the commit its process imported (datasets.CODE), not the checkout's HEAD when it writes:
    a long make outlives commits."""
    monkeypatch.setattr(datasets, "code_permalink", lambda: "diffrl-ref, git commit moved-on")
    assert make(tmp_path, "InvertedPendulum-v5", "random") == 0
    md = metadata(tmp_path, "diffrl/invertedpendulum/random-v0")
    assert md["code_permalink"] == datasets.CODE and "moved-on" not in md["code_permalink"]


def _checkpoint_as(src: Path, dst: Path, **identity: Any) -> Path:
    ck = torch.load(src / "checkpoint.pt", map_location="cpu", weights_only=False)
    ck["identity"].update(identity)
    torch.save(ck, dst)
    return dst


BAD = {
    "unknown env": (["--env", "NoSuchEnv-v5", "--kind", "random"], "unknown environment"),
    "unknown kind": (["--env", "InvertedPendulum-v5", "--kind", "bogus"], "unknown kind"),
    "missing policy": (["--env", "InvertedPendulum-v5", "--kind", "medium"], "takes 1 --policy"),
    "extra policy": (["--env", "InvertedPendulum-v5", "--kind", "random", "--policy", "{run}"], "takes 0 --policy"),
    "one of two": (["--env", "InvertedPendulum-v5", "--kind", "medium-expert", "--policy", "{run}"], "takes 2"),
    "other env": (["--env", "Hopper-v5", "--kind", "medium", "--policy", "{run}"], "trained on"),
    "not sac": (["--env", "InvertedPendulum-v5", "--kind", "expert", "--policy", "{diffsr}"], "not SAC"),
    "not a checkpoint": (["--env", "InvertedPendulum-v5", "--kind", "expert", "--policy", "{junk}"],
                         "not a diffrl train checkpoint"),
    "no such policy": (["--env", "InvertedPendulum-v5", "--kind", "expert", "--policy", "{missing}"], "no such"),
    "existing id": (["--env", "InvertedPendulum-v5", "--kind", "random"], "already exists"),
    "size 0": (["--env", "InvertedPendulum-v5", "--kind", "random", "--size", "0"], "--size must be >= 1"),
    "expert return with expert": (["--env", "InvertedPendulum-v5", "--kind", "expert", "--policy", "{run}",
                                   "--expert-return", "5"], "--expert-return"),
    "replay too large": (["--env", "InvertedPendulum-v5", "--kind", "medium-replay", "--policy", "{run}",
                          "--size", "100000"], "holds only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_and_writes_nothing(case: str, sac_run: Path, made_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv, message = BAD[case]
    files = {"run": str(sac_run), "diffsr": str(_checkpoint_as(sac_run, tmp_path / "d.pt", algo="diffsr")),
             "junk": str(tmp_path / "junk.pt"), "missing": str(tmp_path / "nope")}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    argv = [a.format(**files) for a in argv]
    for root in (made_root, tmp_path / "fresh"):
        if case == "existing id" and root != made_root:
            continue
        before = snapshot(root)
        rc = cli.main(["dataset", "make", *argv, "--out", str(root), "--eval-episodes", "1", "--no-progress",
                       *(["--size", "300"] if "--size" not in argv else [])])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.startswith("diffrl: error: ") and err.count("\n") == 1 and message in err, err
        assert snapshot(root) == before


def test_minari_env_var_is_restored(made_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    datasets.load_transitions("diffrl/invertedpendulum/random-v0", made_root)
    assert "MINARI_DATASETS_PATH" not in os.environ
    with pytest.raises(datasets.DatasetError, match="no dataset"):
        datasets.load_transitions("diffrl/invertedpendulum/expert-v0", made_root)
    with pytest.raises(datasets.DatasetError, match="no such folder"):
        datasets.load_transitions("diffrl/invertedpendulum/random-v0", made_root / "nope")
    assert not (made_root / "nope").exists()
    assert json.loads((made_root / "diffrl/invertedpendulum/random-v0/data/metadata.json").read_text())[
        "dataset_id"] == "diffrl/invertedpendulum/random-v0"


def test_behaviour_policies_pick_the_first_snapshot_reaching_a_third(tmp_path: Path) -> None:
    """expert = the last evaluated snapshot; medium = the first earlier one whose return reaches a third of it
    (the run stopped early), not a later dip nearer the target."""
    (tmp_path / "policies").mkdir()
    for step, ret in ((50_000, 900.0), (100_000, 2600.0), (150_000, 1900.0), (200_000, 6000.0)):
        torch.save({"eval": {"return_mean": ret}}, tmp_path / "policies" / f"step{step}.pt")
    torch.save({"eval": None}, tmp_path / "policies" / "step210000.pt")  # the end of a run off the eval grid
    # step order is numeric (step50000 sorts after step200000 as text), and a stray file there is no snapshot
    (tmp_path / "policies" / "step90000 copy.pt").write_bytes(b"not a snapshot")
    assert [step for step, _ in loop.snapshots(tmp_path)] == [50_000, 100_000, 150_000, 200_000, 210_000]
    got = datasets.behaviour_policies(tmp_path)
    assert (got["expert_step"], got["expert_return"]) == (200_000, 6000.0)
    # 2600 >= 2000 first; 1900 at 150k is nearer 2000 but comes after a higher return (a dip)
    assert (got["medium_step"], got["medium_return"]) == (100_000, 2600.0)
    assert got["fraction"] == pytest.approx(2600 / 6000) and got["medium"].endswith("step100000.pt")
    assert got["rule"].startswith("first snapshot reaching")
    assert datasets.behaviour_policies(tmp_path, fraction=0.1)["medium_step"] == 50_000
    # nothing before the expert reaches 0.5: the highest one below, and the rule says so
    low = datasets.behaviour_policies(tmp_path, fraction=0.5)
    assert low["medium_step"] == 100_000 and low["rule"].startswith("no earlier snapshot reaches")
    for q in list((tmp_path / "policies").glob("step*.pt"))[1:]:
        q.unlink()
    with pytest.raises(datasets.DatasetError, match="at least two evaluated policy snapshots"):
        datasets.behaviour_policies(tmp_path)


def _results_script() -> Any:
    """docs/offline/results/make_datasets.py as a module."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "docs" / "offline" / "results" / "make_datasets.py"
    spec = importlib.util.spec_from_file_location("make_datasets", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_results_datasets_script(tmp_path: Path) -> None:
    """docs/offline/results/make_datasets.py on a tiny SAC run in the campaign's layout: expert from the last
    snapshot, medium-replay from the buffer up to the medium snapshot, one normalised scale; a rerun keeps them."""
    script = _results_script()
    run = tmp_path / "campaign" / "Hopper-v5" / "sac" / "seed0"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "SNAPSHOT_EVERY", 200)
        assert cli.main(["train", "sac", "--env", "Hopper-v5", "--steps", "400", "--out", str(run), "--hp",
                         "learning_starts=100", "--hp", "batch_size=16", "--hp", "hidden=16", "--checkpoint-every",
                         "200", "--eval-every", "200", "--eval-episodes", "1", "--threads", "1",
                         "--no-progress"]) == 0
    argv = ["--runs", str(tmp_path / "campaign"), "--out", str(tmp_path / "ds"), "--size", "300", "--record",
            str(tmp_path), "--tasks", "Hopper-v5", "--seeds", "0"]
    script.main(argv)
    made = json.loads((tmp_path / "made.json").read_text())
    expert, replay = made["datasets"]["diffrl/hopper/expert-v0"], made["datasets"]["diffrl/hopper/medium-replay-v0"]
    pick = made["policies"]["Hopper-v5"]
    assert (pick["expert_step"], pick["medium_step"]) == (400, 200) and pick["run"] == "Hopper-v5/sac/seed0"
    assert expert["transitions"] == 300 and replay["transitions"] == 200  # the buffer's first 200 rows
    assert replay["ref_max_score"] == expert["ref_max_score"] and replay["ref_min_score"] == expert["ref_min_score"]
    assert expert["policies"][0]["step"] == 400
    assert "the first 200 transitions of the replay buffer in checkpoint" in (tmp_path / "datasets.rst").read_text()
    for kind, step in (("medium", 200), ("expert", 400)):  # the picked actors kept beside made.json
        assert pick[f"{kind}_kept"] == f"policies/Hopper-v5/step{step}.pt"
        assert (tmp_path / pick[f"{kind}_kept"]).read_bytes() == (run / "policies" / f"step{step}.pt").read_bytes()
    # the docs' tables: how the data were made, the pick, and each dataset's own average on the normalised scale
    table = (tmp_path / "datasets.rst").read_text()
    assert "``diffrl/hopper/expert-v0``" in table and "``diffrl/hopper/medium-replay-v0``" in table
    assert "``Hopper-v5/sac/seed0``" in table and f"{expert['transitions']:,}" in table
    assert f"gymnasium {expert['versions']['gymnasium']}" in table
    norm = 100 * (expert["average_return"] - expert["ref_min_score"]) / (expert["ref_max_score"] -
                                                                      expert["ref_min_score"])
    assert f"{norm:,.1f}" in table
    assert "No dataset made yet" in (tmp_path / "datasets-marl.rst").read_text()  # no partition in --tasks
    (tmp_path / "datasets.rst").unlink()
    script.main(["--record", str(tmp_path), "--tables-only"])
    assert (tmp_path / "datasets.rst").read_text() == table
    before = (tmp_path / "ds" / "diffrl/hopper/expert-v0").stat().st_mtime_ns
    stale = tmp_path / "policies" / "Hopper-v5" / "step300.pt"  # kept by an earlier pick
    stale.write_bytes(b"")
    # another task's entries (here: Hopper's renamed) stay in made.json when --tasks leaves that task out
    other = json.loads((tmp_path / "made.json").read_text())
    walker = other["datasets"]["diffrl/hopper/expert-v0"] | {"env": "Walker2d-v5"}
    other["datasets"]["diffrl/walker2d/medium-v0"] = walker
    other["policies"]["Walker2d-v5"] = other["policies"]["Hopper-v5"]
    (tmp_path / "made.json").write_text(json.dumps(other))
    script.main(argv)  # everything exists: kept, not remade; made.json's pick used again, from its kept snapshots
    kept_too = json.loads((tmp_path / "made.json").read_text())
    assert kept_too["datasets"]["diffrl/walker2d/medium-v0"] == other["datasets"]["diffrl/walker2d/medium-v0"]
    assert kept_too["policies"]["Walker2d-v5"] == other["policies"]["Walker2d-v5"]
    assert (tmp_path / "ds" / "diffrl/hopper/expert-v0").stat().st_mtime_ns == before
    # paths in made.json are relative, never this machine's (the committed one once held absolute ones)
    assert json.loads((tmp_path / "made.json").read_text())["policies"]["Hopper-v5"]["expert"] == \
        "Hopper-v5/sac/seed0/policies/step400.pt"
    script.main([*argv, "--repick"])  # a new pick from the run: what it does not keep goes
    assert json.loads((tmp_path / "made.json").read_text())["policies"]["Hopper-v5"]["expert"] == \
        "Hopper-v5/sac/seed0/policies/step400.pt"
    assert str(tmp_path) not in (tmp_path / "made.json").read_text()
    assert sorted(q.name for q in (tmp_path / "policies" / "Hopper-v5").iterdir()) == ["step200.pt", "step400.pt"]

    # a machine without the run's checkpoint.pt and the snapshots between 50k steps (neither is archived): the
    # kept snapshots of made.json's pick make the expert set, the run is rerun to the medium step, checked
    # against its archived training episodes, and gives the same medium-replay data
    (run / "checkpoint.pt").unlink()
    shutil.rmtree(run / "policies")  # here: none at all, so a new pick could not be made
    records = json.loads((tmp_path / "made.json").read_text())["datasets"]
    assert all(len(r["sha256"]) == 64 for r in records.values())
    again = [*argv[:2], "--out", str(tmp_path / "ds2"), *argv[4:], "--scratch", str(tmp_path / "replay")]
    script.main(again)
    assert json.loads((tmp_path / "made.json").read_text())["policies"]["Hopper-v5"]["replay_checkpoint"] == \
        "rerun, checked"
    assert json.loads((tmp_path / "made.json").read_text())["policies"]["Hopper-v5"]["expert"] == \
        "Hopper-v5/sac/seed0/policies/step400.pt"
    # made.json keeps the first make's records: the data made again have their digest
    assert json.loads((tmp_path / "made.json").read_text())["datasets"] == records
    # a dataset made again with other bits than made.json's (here: made.json's digest changed, as if another kind
    # of CPU had made it first) is listed beside the first record, which stays, and the tables say so
    tampered = json.loads((tmp_path / "made.json").read_text())
    tampered["datasets"]["diffrl/hopper/expert-v0"]["sha256"] = "0" * 64
    (tmp_path / "made.json").write_text(json.dumps(tampered))
    script.main([*again[:3], str(tmp_path / "ds3"), *again[4:]])
    listed = json.loads((tmp_path / "made.json").read_text())["datasets"]["diffrl/hopper/expert-v0"]
    assert listed["sha256"] == "0" * 64 and [m["sha256"] for m in listed["made_again"]] == \
        [records["diffrl/hopper/expert-v0"]["sha256"]]
    assert listed["made_again"][0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "Made again from the same policies on another kind of CPU" in (tmp_path / "datasets.rst").read_text()
    assert "made_again" not in json.loads((tmp_path / "made.json").read_text())["datasets"][
        "diffrl/hopper/medium-replay-v0"]  # its digest matched
    (tmp_path / "made.json").write_text(json.dumps(tampered | {"datasets": records}))
    for ds_id in ("diffrl/hopper/medium-replay-v0", "diffrl/hopper/expert-v0"):
        first, second = (datasets.load_transitions(ds_id, tmp_path / d) for d in ("ds", "ds2"))
        for name in ("observations", "actions", "rewards", "next_observations", "terminals"):
            np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    # a rerun that is not the original (here: one archived episode return changed) makes nothing
    rows = (run / "episodes.csv").read_text().splitlines()
    cells = rows[1].split(",")  # step, episode, return, length, success
    rows[1] = ",".join([*cells[:2], str(float(cells[2]) + 1.0), *cells[3:]])
    (run / "episodes.csv").write_text("\n".join(rows) + "\n")
    shutil.rmtree(tmp_path / "ds2" / "diffrl/hopper/medium-replay-v0")
    shutil.rmtree(tmp_path / "replay")
    with pytest.raises(SystemExit, match="differs from it at training episode 0"):
        script.main(again)
    assert not (tmp_path / "ds2" / "diffrl/hopper/medium-replay-v0").exists()


def test_committed_dataset_tables_are_made_json() -> None:
    """docs/offline/results/datasets*.rst are what make_datasets.py's tables give from the committed made.json
    (or the placeholder before any dataset is made)."""
    script = _results_script()
    folder = Path(script.__file__).parent
    made = json.loads((folder / "made.json").read_text()) if (folder / "made.json").is_file() else \
        {"datasets": {}, "policies": {}}
    for name, names in (("datasets.rst", list(script.SINGLE)), ("datasets-marl.rst", list(script.MULTI))):
        assert (folder / name).read_text() == script.tables(made, names), name


def test_results_datasets_pick_the_best_finished_seed(tmp_path: Path) -> None:
    """make_datasets.py's pick_run: of the SAC seeds, all finished, the highest last evaluation (ties: the lowest
    seed); an unfinished seed stops it with one line before anything is made."""
    script = _results_script()
    for seed, last in ((0, 712.1), (1, 3105.0), (2, 3105.0)):
        run = tmp_path / "Walker2d-v5" / "sac" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "eval.csv").write_text(f"step,return_mean\n195000,4000.0\n200000,{last}\n")
        (run / "done.json").write_text("{}")
    run, finals = script.pick_run(tmp_path, "Walker2d-v5", [0, 1, 2])
    assert run == tmp_path / "Walker2d-v5" / "sac" / "seed1" and finals == {"0": 712.1, "1": 3105.0, "2": 3105.0}
    assert script.pick_run(tmp_path, "Walker2d-v5", [0])[0].name == "seed0"
    (tmp_path / "Walker2d-v5" / "sac" / "seed2" / "done.json").unlink()
    with pytest.raises(SystemExit, match="seed2 has not finished"):
        script.pick_run(tmp_path, "Walker2d-v5", [0, 1, 2])
