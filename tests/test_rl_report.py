"""``diffrl plot``: learning curves and results table of run folders, on fake runs with known numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffrl_ref import cli
from diffrl_ref.rl import logs, report

pytest.importorskip("matplotlib")

# Returns per seed at steps 0, 5000, ..., 20000; seed 2 is in progress and has reached 10000 only.
RETURNS = {0: [0.0, 100.0, 250.0, 400.0, 520.0], 1: [1.0, 90.0, 310.0, 380.0, 600.0], 2: [-2.0, 120.0, 200.0]}
SUCCESS = {0: [0.0, 0.2, 0.5], 1: [0.0, 0.4, 0.9]}


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, columns)
        w.writeheader()
        w.writerows(rows)


def fake_run(root: Path, algo: str, env: str, seed: int, values: list[float], *, done: bool,
             steps_per_s: list[float] | None = None, learn: tuple[int, float] = (10_000, 25.0)) -> Path:
    """A run folder as loop.train writes it, evaluated every 5000 steps with ``values`` as the metric."""
    path = root / f"{env}-{algo}-{seed}"
    path.mkdir(parents=True)
    ident = {"format": 1, "algo": algo, "env": env, "seed": seed, "eval_every": 5000, "eval_episodes": 2, "hp": {}}
    (path / "config.json").write_text(json.dumps({"identity": ident, "resolved": {}, "torch": "x"}))
    metaworld = env.endswith("-v3")
    write_csv(path / "eval.csv", logs.EVAL_COLUMNS, [
        {"step": 5000 * i, "return_mean": 10 * v if metaworld else v, "return_std": 1.0, "length_mean": 100,
         "success_rate": v if metaworld else 0.0, "train_seconds": 2.0 * i} for i, v in enumerate(values)])
    # learning starts at step 2000: rows before it have empty loss cells and must not count for throughput
    speeds = steps_per_s or [500.0, 400.0]
    write_csv(path / "train.csv", logs.TRAIN_COLUMNS, [{"step": 1000, "steps_per_s": 9000.0}] + [
        {"step": 1000 * (i + 2), "steps_per_s": s, "critic_loss": 1.0, "actor_loss": 0.5, "alpha": 0.1}
        for i, s in enumerate(speeds)])
    if done:
        steps, seconds = learn
        (path / "done.json").write_text(json.dumps({
            "steps": 5000 * (len(values) - 1), "episodes": 3, "train_seconds": seconds + 1.0, "learn_steps": steps,
            "learn_seconds": seconds, "seconds_per_1k_learning_steps": 1000 * seconds / steps, "last_eval": {}}))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    return [fake_run(root, "diffsr", "Hopper-v5", 0, RETURNS[0], done=True, learn=(18_000, 36.0)),
            fake_run(root, "diffsr", "Hopper-v5", 1, RETURNS[1], done=True, learn=(18_000, 45.0)),
            fake_run(root, "diffsr", "Hopper-v5", 2, RETURNS[2], done=False, steps_per_s=[500.0, 250.0]),
            fake_run(root, "sac", "Hopper-v5", 0, RETURNS[0][::-1], done=True),
            fake_run(root, "sac", "reach-v3", 0, SUCCESS[0], done=True),
            fake_run(root, "sac", "reach-v3", 1, SUCCESS[1], done=False)]


def rows_by_group(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Each group's row (a MetaWorld task's first: its success rate)."""
    return {(r["env"], r["algo"]): r for r in json.loads((out / "results.json").read_text()) if "return_row" not in r}


def test_results_json(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    wrote = report.main(runs, out, [5000, 7000, 10_000, 12_000, 20_000])
    assert wrote == [out / "curves.png", out / "results.json", out / "results.rst", out / "runs"]
    assert (out / "curves.png").stat().st_size > 1000
    rows = rows_by_group(out)
    assert list(rows) == [("Hopper-v5", "diffsr"), ("Hopper-v5", "sac"), ("reach-v3", "sac")]
    d = rows[("Hopper-v5", "diffsr")]
    assert d["seeds"] == [0, 1, 2] and d["metric"] == "return" and d["steps_reached"] == 10_000
    assert not d["complete"] and d["in_progress"] == [2] and d["label"] == "Diff-SR (ours)"
    for step, i in ((5000, 1), (7000, 1), (10_000, 2)):  # 7000 is off the grid: the row at 5000
        vals = np.array([RETURNS[s][i] for s in (0, 1, 2)])
        assert d["at"][str(step)] == {"mean": pytest.approx(vals.mean()), "std": pytest.approx(vals.std()), "n": 3,
                                      "values": pytest.approx(list(vals))}
    assert "12000" not in d["at"] and "20000" not in d["at"]  # seed 2 has not reached them
    # throughput: done.json for seeds 0 and 1, the learning rows of train.csv for seed 2
    per_1k = (1000 * 36 / 18_000 + 1000 * 45 / 18_000 + (1000 / 500 + 1000 / 250) / 2) / 3
    assert d["seconds_per_1k_steps"] == pytest.approx(per_1k)
    assert d["steps_per_s"] == pytest.approx(1000 / per_1k)
    s = rows[("Hopper-v5", "sac")]
    assert s["complete"] and s["at"]["20000"] == {"mean": 0.0, "std": 0.0, "n": 1, "values": [0.0]}


def test_metaworld_uses_success_rate(runs: list[Path], tmp_path: Path) -> None:
    report.main(runs, tmp_path / "out", [5000, 10_000, 15_000])
    r = rows_by_group(tmp_path / "out")[("reach-v3", "sac")]
    assert r["metric"] == "success_rate" and r["steps_reached"] == 10_000
    vals = np.array([SUCCESS[0][2], SUCCESS[1][2]])
    assert r["at"]["10000"] == {"mean": pytest.approx(vals.mean()), "std": pytest.approx(vals.std()), "n": 2,
                                "values": pytest.approx(list(vals))}
    assert "15000" not in r["at"]
    # and its return, in the row after it (success alone is flat until a task is solved)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    ret = rows[rows.index(r) + 1]
    assert ret["return_row"] and (ret["env"], ret["algo"], ret["metric"]) == ("reach-v3", "sac", "return")
    assert ret["at"]["10000"]["values"] == pytest.approx(list(10 * vals)) and ret["seeds"] == r["seeds"]


def test_value_needs_a_nearby_row(tmp_path: Path) -> None:
    """A run with a gap in its evaluation grid gives no value inside the gap."""
    path = fake_run(tmp_path, "sac", "Hopper-v5", 0, [0.0, 1.0, 2.0, 3.0, 4.0], done=True)
    rows = logs.read_csv(path / "eval.csv")
    write_csv(path / "eval.csv", logs.EVAL_COLUMNS, [r for r in rows if r["step"] in (0, 5000, 20_000)])
    run = report.load_run(path)
    assert report.value_at(run, 10_000) == 1.0 and report.value_at(run, 11_000) is None
    assert report.value_at(run, 20_000) == 4.0 and report.value_at(run, 25_000) is None


def test_rst_table(runs: list[Path], tmp_path: Path) -> None:
    at = [5000, 10_000, 20_000]
    report.main(runs, tmp_path / "out", at)
    text = (tmp_path / "out" / "results.rst").read_text()
    assert text.startswith(".. list-table::\n   :header-rows: 1\n")
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("   * - "):
            rows.append([line[7:]])
        elif line.startswith("     - "):
            rows[-1].append(line[7:])
    assert len(rows) == 5 and all(len(r) == 5 + len(at) + 1 for r in rows)
    assert rows[0][5:] == ["@ 5k", "@ 10k", "@ 20k", "s / 1k steps"]
    hopper = rows[1]
    vals = np.array([RETURNS[s][1] for s in (0, 1, 2)])
    assert hopper[:5] == ["Hopper-v5", "Diff-SR (ours)", "Return", "3", "10,000"]
    seeds = ", ".join(f"{v:.1f}" for v in vals)
    assert hopper[5] == f"{vals.mean():.1f} ± {vals.std():.1f} ({seeds})" and hopper[7] == "—"
    assert rows[3][2] == "Success rate" and rows[3][5] == "0.30 ± 0.10 (0.20, 0.40)"
    assert rows[4][:3] == ["reach-v3", "SAC (stable-baselines3)", "Return"] and rows[4][5] == "3.0 ± 1.0 (2.0, 4.0)"
    assert "population standard deviation over seeds (ddof = 0)" in text
    # one seed: the value alone, no "± 0.0" that would read as a measured spread
    assert rows[2][3] == "1" and rows[2][5] == f"{RETURNS[0][::-1][1]:.1f}"
    notes = [line for line in text.splitlines() if line.startswith("*Runs still in progress")]
    assert len(notes) == 2 and "Hopper-v5, seed 2 (of 3)" in notes[0] and "reach-v3, seed 1 (of 2)" in notes[1]
    assert "|" not in text


def test_rst_is_valid(runs: list[Path], tmp_path: Path) -> None:
    """docutils parses the table without a warning (what sphinx -W would turn into an error)."""
    from docutils import core  # installed in the tests env (tox.ini): not skipped
    report.main(runs, tmp_path / "out", [5000, 100_000])
    text = (tmp_path / "out" / "results.rst").read_text()
    doc = core.publish_doctree(text, settings_overrides={"report_level": 2, "halt_level": 2})
    assert not [n for n in doc.findall() if n.tagname == "system_message"]


def test_not_a_run_folder(runs: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "empty"
    bad.mkdir()
    with pytest.raises(report.ReportError, match="empty is not a run folder"):
        report.main([runs[0], bad], tmp_path / "out", [5000])
    (runs[1] / "eval.csv").unlink()
    with pytest.raises(report.ReportError, match=f"{runs[1]} is not a run folder"):
        report.main(runs, tmp_path / "out", [5000])


def test_duplicate_seed(runs: list[Path], tmp_path: Path) -> None:
    twin = fake_run(tmp_path / "again", "diffsr", "Hopper-v5", 0, RETURNS[0], done=True)
    with pytest.raises(report.ReportError, match="seed 0"):
        report.main([runs[0], twin], tmp_path / "out", [5000])


def test_cli_plot(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-out"
    assert cli.main(["plot", *map(str, runs), "--out", str(out), "--at", "5000", "10000"]) == 0
    assert "plot: wrote" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"curves.png", "results.json", "results.rst", "runs"}
    assert cli.main(["plot", str(runs[0]), str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is not a run folder" in err


# ---- the archive: the table regenerated from the copied logs ----------------------------------------------


def test_archive_holds_the_logs_only(runs: list[Path], tmp_path: Path) -> None:
    (runs[0] / "episodes.csv").write_text("step,episode,return,length,success\n")
    (runs[0] / "starts.jsonl").write_text('{"kind": "fresh", "step": 0}\n')
    (runs[0] / "checkpoint.pt").write_bytes(b"\0" * 4096)
    (runs[0] / "tb").mkdir()
    out = tmp_path / "out"
    report.main(runs, out, [5000])
    copy = out / "runs" / "Hopper-v5" / "diffsr" / "seed0"
    assert sorted(p.name for p in copy.iterdir()) == sorted(set(report.ARCHIVED) - {"dataset.json"})  # online run
    assert (copy / "eval.csv").read_bytes() == (runs[0] / "eval.csv").read_bytes()
    assert not (out / "runs" / "Hopper-v5" / "diffsr" / "seed2" / "done.json").exists()  # in progress
    assert rows_by_group(out)[("Hopper-v5", "diffsr")]["runs"] == [f"runs/Hopper-v5/diffsr/seed{k}" for k in range(3)]


@pytest.mark.parametrize("same_out", [True, False])
def test_regenerated_from_the_archive(runs: list[Path], tmp_path: Path, same_out: bool) -> None:
    at = [5000, 10_000, 20_000]
    out = tmp_path / "out"
    report.main(runs, out, at)
    before = {name: (out / name).read_text() for name in ("results.json", "results.rst")}
    again = out if same_out else tmp_path / "again"
    report.main(sorted((out / "runs").glob("*/*/seed*")), again, at)
    assert {name: (again / name).read_text() for name in before} == before


def test_archive_refuses_foreign_runs(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.main(runs, out, [5000])
    with pytest.raises(report.ReportError, match="holds runs outside this table"):
        report.main(runs[:2], out, [5000])
    assert (out / "runs" / "reach-v3" / "sac" / "seed1" / "eval.csv").is_file()  # nothing deleted


def parse_steps(rst: str) -> list[int]:
    """The --at steps of a committed table, from its header cells ("@ 20k", "@ 1.5M")."""
    scale = {"k": 1000, "M": 1_000_000}
    cells = [line.split("@ ", 1)[1] for line in rst.splitlines() if "- @ " in line]
    return [round(float(c[:-1]) * scale[c[-1]]) if c[-1] in scale else int(c) for c in cells]


DOCS = Path(__file__).parent.parent / "docs"
BATCHES = sorted(p.parent for area in ("rl", "offline", "marl") for p in (DOCS / area).glob("*/runs"))


def archived_runs(root: Path) -> list[Path]:
    """Every run folder under an archive: ENV/NAME/seedS, where an offline run's ENV is its dataset id (a/b/c)."""
    return sorted(c.parent for c in root.rglob("seed*/config.json"))


@pytest.mark.parametrize("batch", BATCHES, ids=[b.name for b in BATCHES])
def test_committed_results_match_their_logs(batch: Path, tmp_path: Path) -> None:
    """Each results table in docs/rl that ships its logs is exactly what ``diffrl plot`` makes of them."""
    rst = (batch / "results.rst").read_text()
    report.main(archived_runs(batch / "runs"), tmp_path / "out", parse_steps(rst))
    assert (tmp_path / "out" / "results.rst").read_text() == rst
    regenerated = json.loads((tmp_path / "out" / "results.json").read_text())
    assert regenerated == json.loads((batch / "results.json").read_text())
    if (batch / "comparison.json").is_file():  # and its comparison (random returns as measured, not simulated again)
        c = json.loads((batch / "comparison.json").read_text())
        again = tmp_path / "again"
        again.mkdir()
        shutil.copyfile(batch / "random_returns.json", again / "random_returns.json")
        report.main(archived_runs(batch / "runs"), again, parse_steps(rst), versus=(c["a"], c["b"]))
        assert json.loads((again / "comparison.json").read_text()) == c
        assert (again / "comparison.rst").read_text() == (batch / "comparison.rst").read_text()


def test_sweep_variants_are_separate_groups(tmp_path: Path) -> None:
    """Runs in a sweep's ENV/NAME/seedSEED layout: grouped by their overrides, labelled by NAME, archived
    under the same layout (so the archive can be copied back into the sweep folder)."""
    sweep = tmp_path / "sweep" / "Hopper-v5"
    paths = []
    for name, hp in (("default", {}), ("target-every-1", {"target_every": 1})):
        for seed in (0, 1):
            run = fake_run(tmp_path / "flat", "diffsr", "Hopper-v5", seed, RETURNS[seed], done=True)
            conf = json.loads((run / "config.json").read_text())
            conf["identity"]["hp"] = hp
            (run / "config.json").write_text(json.dumps(conf))
            dst = sweep / name / f"seed{seed}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            run.rename(dst)
            paths.append(dst)
    out = tmp_path / "out"
    report.main(paths[::-1], out, [5000])  # the default group first, variants by label, whatever the order given
    rows = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in rows] == ["Diff-SR (ours)", "Diff-SR (ours): target-every-1"]
    assert "hp" not in rows[0] and rows[1]["hp"] == {"target_every": "1"}
    assert rows[1]["runs"] == ["runs/Hopper-v5/target-every-1/seed0", "runs/Hopper-v5/target-every-1/seed1"]
    assert rows[0]["runs"] == ["runs/Hopper-v5/default/seed0", "runs/Hopper-v5/default/seed1"]
    # two groups whose folders share a name would overwrite each other's archive
    clash = tmp_path / "other" / "Hopper-v5" / "target-every-1" / "seed0"
    clash.parent.mkdir(parents=True)
    shutil.copytree(paths[0], clash)
    with pytest.raises(report.ReportError, match="would both be archived"):
        report.main([paths[2], clash], tmp_path / "out2", [5000])


def offline_run(root: Path, algo: str, seed: int, values: list[float], record: dict[str, Any] | None) -> Path:
    """An offline run on dataset diffrl/hopper/medium-v0 with ``record`` as its dataset.json."""
    path = fake_run(root, algo, "Hopper-v5", seed, values, done=True)
    conf = json.loads((path / "config.json").read_text())
    conf["identity"]["dataset"] = "diffrl/hopper/medium-v0"
    (path / "config.json").write_text(json.dumps(conf))
    if record is not None:
        (path / "dataset.json").write_text(json.dumps(record))
    return path


RECORD = {"format": 1, "dataset": "diffrl/hopper/medium-v0", "env": "Hopper-v5", "kind": "medium",
          "transitions": 1000, "episodes": 5, "ref_min_score": -20.0, "ref_max_score": 380.0, "average_return": 140.0,
          "std_return": 3.0, "episodes_averaged": 4, "how": "x", "created": "2026-12-07T00:00:00+00:00",
          "policies": []}


def test_offline_scores_are_normalised_with_the_dataset_row(tmp_path: Path) -> None:
    """D4RL's normalised score 100 (R - random) / (expert - random) from each run's dataset.json, the dataset's
    own average return as the first row of its env, both regenerated identically from the archive."""
    root = tmp_path / "runs"
    runs = [offline_run(root, "diffusion-ql", 0, [0.0, 180.0], RECORD),
            offline_run(root, "diffusion-ql", 1, [0.0, 260.0], RECORD),
            offline_run(root, "edp", 0, [0.0, 80.0], RECORD)]
    out = tmp_path / "out"
    report.main(runs, out, [5000])
    rows = json.loads((out / "results.json").read_text())
    assert [r["algo"] for r in rows] == ["dataset", "diffusion-ql", "edp"]
    assert all(r["metric"] == "normalised_score" for r in rows)
    assert rows[0]["at"]["5000"]["mean"] == pytest.approx(40.0)  # 100 * (140 + 20) / 400
    assert rows[1]["at"]["5000"]["values"] == pytest.approx([50.0, 70.0])
    assert rows[1]["at"]["5000"]["std"] == pytest.approx(10.0)  # population std scales with the factor 1/4
    assert rows[2]["at"]["5000"]["values"] == pytest.approx([25.0])
    assert rows[1]["reference"] == {"random": -20.0, "expert": 380.0}
    rst = (out / "results.rst").read_text()
    assert "Normalised score" in rst and "Dataset (its episodes' average return)" in rst and "60.0 ± 10.0" in rst
    assert (out / "runs" / "diffrl/hopper/medium-v0" / "edp" / "seed0" / "dataset.json").is_file()
    again = tmp_path / "again"
    report.main(archived_runs(out / "runs"), again, [5000])
    assert (again / "results.rst").read_text() == rst

    # without the expert end there is no scale: raw returns, the dataset's average still as a row
    raw = tmp_path / "raw"
    report.main([offline_run(tmp_path / "r2", "edp", 0, [0.0, 80.0], {**RECORD, "ref_max_score": None})], raw, [5000])
    rows = json.loads((raw / "results.json").read_text())
    assert [(r["algo"], r["metric"], r["at"]["5000"]["mean"]) for r in rows] == [
        ("dataset", "return", 140.0), ("edp", "return", 80.0)]


@pytest.mark.parametrize("case", ["other-dataset", "no-record"])
def test_offline_runs_of_two_datasets_are_not_mixed(case: str, tmp_path: Path) -> None:
    """Runs reported under one dataset id must have read the same dataset: a remade dataset (another creation
    time or reference) or a run without dataset.json among runs with one is refused, not put on a wrong scale."""
    a = offline_run(tmp_path / "a", "edp", 0, [0.0, 80.0], RECORD)
    other = {**RECORD, "created": "2026-12-08T00:00:00+00:00", "ref_max_score": 500.0} if case == "other-dataset" \
        else None
    b = offline_run(tmp_path / "b", "edp", 1, [0.0, 90.0], other)
    with pytest.raises(report.ReportError, match="different datasets" if other else "no dataset.json"):
        report.main([a, b], tmp_path / "out", [5000])


def test_resumed_runs_are_named(runs: list[Path], tmp_path: Path) -> None:
    """starts.jsonl's resumes per seed reach results.json and a note under the table; runs without the record
    are counted as unknown, not as never resumed."""
    fresh, resume = '{"kind": "fresh", "step": 0}\n', '{"kind": "resume", "step": 5000}\n'
    (runs[0] / "starts.jsonl").write_text(fresh + resume + resume)
    (runs[1] / "starts.jsonl").write_text(fresh)
    out = tmp_path / "out"
    report.main(runs, out, [5000])
    row = rows_by_group(out)[("Hopper-v5", "diffsr")]
    assert row["resumed"] == {"0": 2} and row["unrecorded_starts"] == [2]
    rst = (out / "results.rst").read_text()
    assert "Diff-SR (ours) on Hopper-v5, seed 0 (2 times)." in rst
    assert "4 of the 6 runs have no ``starts.jsonl``" in rst
    assert (out / "runs" / "Hopper-v5" / "diffsr" / "seed0" / "starts.jsonl").read_text() == fresh + resume + resume


def test_ablation_decision_table_matches_its_results(tmp_path: Path) -> None:
    """docs/rl/2026-12-06-ablation/decision.rst is what decide.py makes of the committed results.json."""
    import importlib.util

    folder = DOCS / "rl" / "2026-12-06-ablation"
    spec = importlib.util.spec_from_file_location("ablation_decide", folder / "decide.py")
    assert spec is not None and spec.loader is not None
    decide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decide)
    decide.main(folder, tmp_path)
    assert (tmp_path / "decision.rst").read_text() == (folder / "decision.rst").read_text()
    entries = json.loads((tmp_path / "decision.json").read_text())["groups"]
    default = next(e for e in entries if e["label"] == decide.DEFAULT)
    for e in entries:
        if "vs_default" in e:  # the table's difference is the difference of the two groups' means
            assert e["vs_default"]["difference"] == pytest.approx(e["mean"] - default["mean"])
            assert e["vs_default"]["low"] <= e["vs_default"]["difference"] <= e["vs_default"]["high"]


def test_ablation_rule_picks_by_mean_breaks_ties_towards_the_official_code(tmp_path: Path) -> None:
    """decide.pick on made-up groups: a feature_steps = 4 group is no candidate unless feature-steps-4 alone is
    ahead; the highest mean wins unless a candidate level with it makes more official choices; nothing is
    picked before every group has run."""
    import importlib.util

    folder = DOCS / "rl" / "2026-12-06-ablation"
    spec = importlib.util.spec_from_file_location("ablation_decide", folder / "decide.py")
    assert spec is not None and spec.loader is not None
    decide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decide)
    base = {"feature_amplitude": "sqrt(2/D)", "rff_init": "gaussian", "activation": "relu", "actor_init": "default",
            "noise_scale": 1.0, "weighting": "beta", "feature_steps": 1, "critic_head": "elu", "alpha_init": 0.1,
            "target_every": 2}
    groups = {decide.DEFAULT: ({}, [100.0, 101.0, 102.0]), decide.SAC: (None, [300.0, 301.0, 302.0]),
              "Diff-SR (ours): high": ({"target_every": 1}, [250.0, 260.0, 270.0]),
              "Diff-SR (ours): level": ({"activation": "elu", "actor_init": "orthogonal"}, [240.0, 255.0, 275.0]),
              "Diff-SR (ours): lower": ({"feature_amplitude": "1", "activation": "elu", "actor_init": "orthogonal"},
                                        [200.0, 201.0, 202.0]),
              "Diff-SR (ours): official": ({"feature_amplitude": "1", "feature_steps": 4}, [900.0, 901.0, 902.0]),
              decide.FS4: ({"feature_steps": 4}, [99.0, 101.0, 103.0])}
    rows: list[dict[str, Any]] = []
    for label, (hp, values) in groups.items():
        run = f"runs/{len(rows)}/seed0"
        if hp is not None:
            (tmp_path / run).mkdir(parents=True)
            (tmp_path / run / "config.json").write_text(json.dumps({"resolved": base | hp}))
        rows.append({"label": label, "runs": [run], "at": {"50000": {"values": values, "n": 3}}})
    entries = decide.decide(rows)
    assert decide.pick(entries, rows, tmp_path, len(entries) + 1) is None  # a group still running
    decision = decide.pick(entries, rows, tmp_path, len(entries))
    labels = [c["label"] for c in decision["candidates"]]
    assert "Diff-SR (ours): official" not in labels  # feature-steps-4 alone is level with the default
    assert decision["picked"] == "Diff-SR (ours): level"  # level with "high", two official choices more
    assert "more of the official code's choices" in decision["why"]
    assert decision["vs_sac"]["verdict"] == "behind"
    rows[-1]["at"]["50000"]["values"] = [150.0, 151.0, 152.0]  # now feature-steps-4 alone is ahead
    decision = decide.pick(decide.decide(rows), rows, tmp_path, len(entries))
    assert decision["picked"] == "Diff-SR (ours): official"
    assert decision["why"] == "the highest mean among the candidates"
