"""``diffrl sweep`` (issue 17): a grid of runs as Ray tasks, killed and resumed to the same logs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("ray")

from runs_util import log_rows, stop_after_checkpoint  # noqa: E402

from diffrl_ref import cli  # noqa: E402
from diffrl_ref.rl import carry as carry_py  # noqa: E402
from diffrl_ref.rl import sweep  # noqa: E402

TINY = ("{feature_dim: 16, psi_hidden: 16, nu_hidden: 16, rff_dim: 16, hidden: 16, levels: 20, "
        "learning_starts: 200, batch_size: 16")
GRID = f"""
steps: 1500
seeds: [0, 1]
envs: [InvertedPendulum-v5]
eval_every: 300
eval_episodes: 2
checkpoint_every: 150
groups:
  - {{algo: diffsr, name: small, hp: {TINY}}}}}
  - {{algo: diffsr, name: small-target-every-1, hp: {TINY}, target_every: 1}}}}
"""
LOGS = ("eval.csv", "train.csv", "episodes.csv")


def _sweep(grid: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "diffrl_ref", "sweep", str(grid), "--out", str(out), "--runs-at-once", "2",
            "--skip-conformance"]


def test_grid_cells_and_their_folders(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    cells = sweep.load_grid(grid)
    assert [(c.group, c.seed) for c in cells] == [("small", 0), ("small", 1), ("small-target-every-1", 0),
                                                  ("small-target-every-1", 1)]
    assert cells[2].hp["target_every"] == 1 and isinstance(cells[0].hp["feature_dim"], int)
    assert cells[3].folder(tmp_path) == tmp_path / "InvertedPendulum-v5" / "small-target-every-1" / "seed1"


def test_selected_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--groups/--envs/--seeds keep the matching cells, in grid order; a value the grid lacks exits 2, one line,
    before anything is created (the campaign's SAC runs on three tasks come first: pipeline.sh)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    cells = sweep.load_grid(grid)
    assert sweep.select(cells) == cells
    assert [(c.group, c.seed) for c in sweep.select(cells, seeds=[1])] == [("small", 1), ("small-target-every-1", 1)]
    assert [(c.group, c.seed) for c in sweep.select(cells, ["small-target-every-1"], ["InvertedPendulum-v5"],
                                                    [0])] == [("small-target-every-1", 0)]
    for flag, value, needle in (("--groups", "sac", "no group sac"), ("--envs", "Hopper-v5", "no env or dataset"),
                                ("--seeds", "7", "no seed 7")):
        assert cli.main(["sweep", str(grid), "--out", str(tmp_path / "out"), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "out").exists()
    campaign = sweep.load_grid(Path(__file__).resolve().parent.parent / "docs" / "rl" / "campaign-200k" / "grid.yaml")
    first = sweep.select(campaign, ["sac"], ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
    assert [(c.algo, c.env, c.seed) for c in first] == [("sac", e, s) for e in ("HalfCheetah-v5", "Hopper-v5",
                                                                               "Walker2d-v5") for s in (0, 1, 2)]
    # the rest run task by task: a campaign cut short has whole comparisons on its first tasks
    assert [(c.env, c.algo, c.seed) for c in campaign[:8]] == [
        *[("HalfCheetah-v5", a, s) for a in ("sac", "diffsr") for s in (0, 1, 2)], ("Hopper-v5", "sac", 0),
        ("Hopper-v5", "sac", 1)]


@pytest.mark.parametrize("text,needle", [
    ("steps: 0\nseeds: [0]\nenvs: [Hopper-v5]\ngroups: [{algo: sac}]", "steps must be an integer >= 1"),
    ("steps: 10\nseeds: [0, 0]\nenvs: [Hopper-v5]\ngroups: [{algo: sac}]", "seeds must be a list of distinct"),
    ("steps: 10\nseeds: [0]\nenvs: [Nope-v1]\ngroups: [{algo: sac}]", "unknown environment"),
    ("steps: 10\nseeds: [0]\nenvs: [Hopper-v5]\ngroups: [{algo: ppo}]", "unknown algorithm"),
    ("steps: 10\nseeds: [0]\nenvs: [Hopper-v5]\ngroups: [{algo: diffsr, hp: {gamma: 2}}]", "gamma must be"),
    ("steps: 10\nseeds: [0]\nenvs: [Hopper-v5]\ngroups: [{algo: sac}, {algo: sac}]", "must be unique"),
    ("steps: 10\nseeds: [0]\nenvs: [Hopper-v5]\ngroups: [{algo: sac}]\nspeed: 3", "unknown key"),
    ("[1, 2", "cannot read grid"),
])
def test_bad_grid_gives_one_line(text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    assert cli.main(["sweep", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_killed_sweep_resumes_to_the_uninterrupted_logs(tmp_path: Path) -> None:
    """The 2 x 2 grid's seed 0 (both groups at once; --seeds, the campaign's way, keeps the run short for CI): a
    straight sweep; a sweep killed (SIGKILL to its whole process group) mid-way and rerun; identical logs in
    every cell (that a finished grid's rerun finds nothing to do is checked in test_baselines.py's sweep test)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.replace("steps: 1500", "steps: 600"))
    cells = sweep.select(sweep.load_grid(grid), seeds=[0])
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def seed0(out: Path) -> list[str]:
        return [*_sweep(grid, out), "--seeds", "0"]

    subprocess.run(seed0(straight), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(seed0(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not any((c.folder(killed) / "checkpoint.pt").exists() for c in cells):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the sweep ended"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    unfinished = [c for c in cells if not sweep.is_done(c, killed)]
    assert unfinished, "every cell finished before the kill: lengthen the runs"
    time.sleep(2)  # let Ray's own processes notice their driver is gone
    res = subprocess.run(seed0(killed), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(cells) - len(unfinished)} already done" in res.stdout
    for c in cells:
        for name in LOGS:
            assert log_rows(c.folder(straight) / name) == log_rows(c.folder(killed) / name), f"{c.label()} {name}"


def test_offline_groups_run_on_the_grid_datasets(tmp_path: Path) -> None:
    pytest.importorskip("minari")
    root = tmp_path / "datasets"
    assert cli.main(["dataset", "make", "--env", "Hopper-v5", "--kind", "random", "--out", str(root), "--size", "200",
                     "--eval-episodes", "1", "--no-progress"]) == 0
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"steps: 100\nseeds: [0, 1]\nenvs: [Hopper-v5]\ndatasets: [diffrl/hopper/random-v0]\n"
                    f"dataset_root: {root}\ngroups: [{{algo: diffusion-ql}}, {{algo: sac}}]\n")
    cells = sweep.load_grid(grid)
    offline = [c for c in cells if c.algo == "diffusion-ql"]
    assert [(c.dataset, c.env, c.seed) for c in offline] == [("diffrl/hopper/random-v0", "Hopper-v5", 0),
                                                             ("diffrl/hopper/random-v0", "Hopper-v5", 1)]
    assert offline[0].folder(tmp_path) == tmp_path / "diffrl/hopper/random-v0" / "diffusion-ql" / "seed0"
    assert offline[0].run_config().identity()["dataset"] == "diffrl/hopper/random-v0"
    assert [c.env for c in cells if c.algo == "sac"] == ["Hopper-v5", "Hopper-v5"]
    grid.write_text("steps: 100\nseeds: [0]\nenvs: [Hopper-v5]\ngroups: [{algo: diffusion-ql}]\n")
    with pytest.raises(sweep.SweepError, match="needs datasets"):
        sweep.load_grid(grid)


GRIDS = sorted((Path(__file__).resolve().parent.parent / "docs").rglob("grid.yaml"))


@pytest.mark.parametrize("path", GRIDS, ids=[str(p.parent.relative_to(p.parents[2])) for p in GRIDS])
def test_committed_grids_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every grid in docs/ is valid (keys, seeds, names, every hp in its domain), including those whose datasets
    are not made yet: the dataset lookup is stubbed, nothing else."""
    from diffrl_ref.rl import datasets

    monkeypatch.setattr(datasets, "env_of", lambda ds_id, root: "Hopper-v5")
    if "d3rlpy-" in path.read_text() and not (os.environ.get("DIFFRL_D3RLPY_PYTHON") or
                                              any((r / ".tox" / "d3rlpy").exists() for r in sweep.checkouts())):
        monkeypatch.setenv("DIFFRL_D3RLPY_PYTHON", sys.executable)  # only its presence is checked at load
    cells = sweep.load_grid(path)
    assert cells and len({c.label() for c in cells}) == len(cells)


def test_carry_moves_an_unfinished_run_to_a_new_machine(tmp_path: Path) -> None:
    """docs/campaigns/carry.sh: ``save`` packs the run in flight (not the finished one, nor one over the cap);
    ``restore`` on a new machine (the archived logs copied back, as pipeline.sh does) unpacks it, skips an old
    pack of a run the archive has finished, and the run resumes from its checkpoint to the logs of a run never
    interrupted."""
    carry = Path(__file__).resolve().parent.parent / "docs" / "campaigns" / "carry.sh"
    old, batch, new = tmp_path / "old", tmp_path / "batch", tmp_path / "new"
    hp = [x for kv in TINY.strip("{").split(", ") for x in ("--hp", kv.replace(": ", "="))]
    rel = Path("InvertedPendulum-v5") / "small"

    def argv(out: Path, seed: int, steps: int = 900) -> list[str]:
        return ["train", "diffsr", "--env", "InvertedPendulum-v5", "--steps", str(steps), "--seed", str(seed),
                "--out", str(out), "--eval-every", "300", "--eval-episodes", "2", "--checkpoint-every", "150",
                "--log-every", "50", "--threads", "1", "--no-progress", "--skip-conformance", *hp]

    def run(*args: str, cap: str = "8") -> str:
        done = subprocess.run(["bash", str(carry), *args], capture_output=True, text=True, check=True,
                              env={**os.environ, "CARRY_CAP_MB": cap, "PYTHON": sys.executable})
        return done.stdout

    assert cli.main(argv(old / rel / "seed0", 0, 300)) == 0  # finished
    stop_after_checkpoint(argv(old / rel / "seed1", 1), old / rel / "seed1", 450, timeout=300)  # in flight
    assert cli.main(argv(tmp_path / "straight", 1)) == 0
    assert "not kept" in run("save", str(old), str(batch), cap="0") and not (batch / "inflight").exists()
    assert "seed1 packed" in run("save", str(old), str(batch))
    packs = sorted(p.relative_to(batch / "inflight") for p in (batch / "inflight").rglob("*.tar.xz"))
    assert packs == [rel / "seed1.tar.xz"]
    # the archive (logs, no checkpoints) and a pack of seed0 left from an earlier stop, before seed0 finished
    shutil.copytree(old, batch / "runs", ignore=shutil.ignore_patterns("checkpoint.pt", "tb", ".lock"))
    shutil.copy(batch / "inflight" / packs[0], batch / "inflight" / rel / "seed0.tar.xz")
    shutil.copytree(batch / "runs", new)
    # the pack holds the replay buffer's actions alone and a digest of the whole buffer
    with tarfile.open(batch / "inflight" / packs[0]) as tar:
        member = tar.extractfile(f"{rel}/seed1/checkpoint.pt")
        assert member is not None
        packed = torch.load(io.BytesIO(member.read()), weights_only=False)["agent"]["buffer"]
    full = torch.load(old / rel / "seed1" / "checkpoint.pt", weights_only=False)["agent"]["buffer"]
    assert set(packed) == {"n", "pos", "a", "compact"} and packed["n"] == full["n"] >= 450
    assert packed["compact"]["sha256"] == carry_py.digest(full)
    # a buffer that replays to other data (here: one action changed) is not resumed: the run starts over
    shutil.copytree(old / rel / "seed1", tmp_path / "bad")
    assert carry_py.compact(old / rel / "seed1" / "checkpoint.pt", tmp_path / "bad" / "checkpoint.pt")
    bad = torch.load(tmp_path / "bad" / "checkpoint.pt", weights_only=False)
    bad["agent"]["buffer"]["a"][7, 0] *= 0.5
    torch.save(bad, tmp_path / "bad" / "checkpoint.pt")
    with pytest.raises(ValueError, match="another replay buffer"):
        carry_py.expand(tmp_path / "bad")
    bad["agent"]["buffer"]["a"][7, 0] /= 0.5  # the same actions, another digest
    bad["agent"]["buffer"]["compact"]["sha256"] = "0" * 64
    torch.save(bad, tmp_path / "bad" / "checkpoint.pt")
    with pytest.raises(ValueError, match="another replay buffer than the one packed .another simulator"):
        carry_py.expand(tmp_path / "bad")
    said = run("restore", str(new), str(batch))
    assert "seed0 finished in the archive" in said and "seed1 unpacked" in said, said
    assert (new / rel / "seed0" / "done.json").exists() and not (new / rel / "seed0" / "checkpoint.pt").exists()
    restored = torch.load(new / rel / "seed1" / "checkpoint.pt", weights_only=False)["agent"]["buffer"]
    assert all(np.array_equal(restored[k], full[k]) for k in carry_py.FIELDS)  # replayed, bit for bit
    assert cli.main(argv(new / rel / "seed1", 1)) == 0
    starts = [json.loads(line)["kind"] for line in (new / rel / "seed1" / "starts.jsonl").read_text().splitlines()]
    assert starts == ["fresh", "resume"]
    for name in LOGS:
        assert log_rows(new / rel / "seed1" / name) == log_rows(tmp_path / "straight" / name), name
