"""Learning curves and the results table of ``diffrl train`` run folders (``diffrl plot``).

Runs are grouped by (environment, algorithm, hyperparameter overrides), an offline run's "environment"
being its dataset id; the seeds of a group are its members.
A group with overrides (a ``diffrl sweep`` variant) is labelled by the name of its first run's parent folder
(the sweep's group name, ``ENV/NAME/seedSEED``); ``results.json`` lists its overrides under ``hp``. The metric is the
evaluation return for MuJoCo environments and the evaluation success rate for MetaWorld tasks. These are
written to the output folder:

``curves.png``
    One panel per environment (two for a MetaWorld task: success rate and return): for each algorithm,
    the mean over seeds at the evaluation steps that every seed has reached, shaded by plus or minus one
    standard deviation over seeds.
``results.json``
    One row per group (two for a MetaWorld task: its success rate, then its return, marked ``return_row``):
    ``env``, ``algo``, ``label``, ``seeds``, ``runs`` (the archived copies, relative to the output folder),
    ``steps_reached`` (the smallest last evaluation step over seeds), ``metric`` (``return`` or ``success_rate``),
    ``at``
    (for each requested step that every seed reached: ``mean``, ``std`` and ``n`` over seeds of the
    evaluation at that step), ``seconds_per_1k_steps`` and ``steps_per_s`` (wall time of the learning
    phase, mean over seeds, evaluation excluded; null when no seed has learned yet) and ``complete``
    (every seed has finished, that is has ``done.json``) with ``in_progress`` (the seeds that have not),
    ``resumed`` (seed -> how many times it was resumed from a checkpoint, from its ``starts.jsonl``) and
    ``unrecorded_starts`` (the seeds whose folder predates ``starts.jsonl``).
``results.rst``
    The same as a reStructuredText list table, followed by a note per group with resumed runs, one on runs
    without a start record, and a note per group whose runs are in progress.
``runs/ENV/NAME/seedSEED/``
    NAME is the run folder's parent when the folder is named ``seedSEED`` (the layout of ``diffrl sweep``,
    so an archive copied back into a sweep folder lets the sweep skip its finished cells), else the
    algorithm (with the overrides for a variant). The logs of each run (``config.json``, ``eval.csv``,
    ``train.csv``, ``episodes.csv``, ``done.json``, ``starts.jsonl``: when, where and on what CPU each start
    and resume ran; no checkpoint, no TensorBoard files): about 6 kB a run,
    which let the table and the plot be regenerated, and checked, from a repository alone, since the run
    folders themselves are large and short-lived. Running the command on these copies with the same
    ``--out`` rewrites the same files.

Offline runs (their ``env`` is the dataset id) carry ``dataset.json`` (:func:`diffrl_ref.rl.datasets.record`,
written by ``diffrl train`` and by ``baselines/d3rlpy_run.py`` when the run starts): the dataset's reference
returns and its episodes' own average return. Where both reference returns are set, the metric is D4RL's
normalised score, 100 (return - random) / (expert - random) (``metric`` ``normalised_score``, ``reference``
in the row), in the table, the JSON and the curves; every env with a dataset gets a first row ``algo``
``dataset`` with the dataset's own average return on the same scale, the same at every step (a dotted line
in its panel). All runs reported under one dataset id must have read the same dataset.

Standard deviations are numpy's default (population, ``ddof=0``): 0 for a single seed in the JSON, never
NaN; the table prints a single seed's value without a spread.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import envs, logs, loop

LABELS = {"diffsr": "Diff-SR (ours)", "sac": "SAC (stable-baselines3)", "diffusion-ql": "Diffusion-QL (ours)",
          "edp": "EDP (ours)", "d3rlpy-bc": "BC (d3rlpy)", "d3rlpy-td3bc": "TD3+BC (d3rlpy)",
          "d3rlpy-iql": "IQL (d3rlpy)", "d3rlpy-cql": "CQL (d3rlpy)"}
COLORS = {"diffsr": "C0", "sac": "C1", "diffusion-ql": "C2", "edp": "C7", "d3rlpy-bc": "C3", "d3rlpy-td3bc": "C4",
          "d3rlpy-iql": "C5", "d3rlpy-cql": "C6"}
ALGO_ORDER = {name: i for i, name in enumerate(loop.ALGOS)}
DASH = "—"
ARCHIVED = ("config.json", "eval.csv", "train.csv", "episodes.csv", "done.json", "starts.jsonl", "dataset.json")
DATASET_LABEL = "Dataset (its episodes' average return)"


class ReportError(ValueError):
    """Run folders that cannot be reported; the CLI prints it as one line."""


@dataclass(frozen=True)
class Run:
    path: Path
    env: str
    algo: str
    seed: int
    eval_every: int
    evals: list[dict[str, float]]  # eval.csv rows, by step
    seconds_per_1k: float | None  # learning-phase wall seconds per 1000 steps; None before learning
    done: bool
    hp: tuple[tuple[str, str], ...] = ()  # the run's --hp overrides, sorted
    data: dict[str, Any] | None = None  # an offline run's dataset.json (datasets.record)
    resumes: int | None = None  # starts.jsonl's resumes; None for a run from before that record existed

    @property
    def variant(self) -> str:
        """'name=value, ...' of the overrides; '' for the defaults."""
        return ", ".join(f"{k}={v}" for k, v in self.hp)

    @property
    def last_step(self) -> int:
        return int(self.evals[-1]["step"])


Group = tuple[str, str, str]  # (env, algo, variant)


# ---- reading run folders -------------------------------------------------------------------------


def metric(env: str) -> str:
    return "success_rate" if envs.is_metaworld(env) else "return"


def column(env: str) -> str:
    """The eval.csv column holding the group's metric."""
    return "success_rate" if envs.is_metaworld(env) else "return_mean"


def _read(path: Path) -> list[dict[str, float]]:
    try:
        return logs.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None


def _throughput(path: Path, done: dict[str, Any] | None) -> float | None:
    """Seconds per 1000 learning steps: exact from done.json, else from the train.csv rows with losses."""
    if done and done.get("learn_steps"):
        return 1000.0 * float(done["learn_seconds"]) / float(done["learn_steps"])
    train = path / "train.csv"
    rows = [r for r in _read(train) if "critic_loss" in r and r.get("steps_per_s", 0.0) > 0] if train.exists() else []
    return float(np.mean([1000.0 / r["steps_per_s"] for r in rows])) if rows else None


def load_run(path: Path) -> Run:
    conf, ev = path / "config.json", path / "eval.csv"
    if not (path.is_dir() and conf.is_file() and ev.is_file()):
        raise ReportError(f"{path} is not a run folder (no config.json/eval.csv)")
    try:
        ident = json.loads(conf.read_text())["identity"]
        env, algo, seed, every = str(ident["env"]), str(ident["algo"]), int(ident["seed"]), int(ident["eval_every"])
        env = str(ident.get("dataset") or env)  # an offline run is reported under its dataset
        hp = tuple(sorted((str(k), str(v)) for k, v in dict(ident.get("hp") or {}).items()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"cannot read {conf}: {type(exc).__name__} {exc}") from None
    # a run being written may end in a torn row: keep only rows with the step and the metric
    evals = sorted((r for r in _read(ev) if "step" in r and column(env) in r), key=lambda r: r["step"])
    if not evals:
        raise ReportError(f"{ev} has no evaluation yet")
    done_path = path / "done.json"
    try:
        done = json.loads(done_path.read_text()) if done_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {done_path}: {exc}") from None
    rec_path = path / "dataset.json"
    try:
        data = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {rec_path}: {exc}") from None
    starts_path = path / "starts.jsonl"
    try:
        resumes = sum(json.loads(line).get("kind") == "resume" for line in starts_path.read_text().splitlines()
                      if line.strip()) if starts_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {starts_path}: {exc}") from None
    return Run(path, env, algo, seed, every, evals, _throughput(path, done), done is not None, hp, data, resumes)


def group(runs: list[Run]) -> dict[Group, list[Run]]:
    """Runs by (env, algo, variant); envs sorted, algorithms in loop.ALGOS order, the defaults first and then
    the variants by label, seeds ascending: the same table whatever order the folders are given in."""
    out: dict[Group, list[Run]] = {}
    for run in runs:
        key = (run.env, run.algo, run.variant)
        members = out.setdefault(key, [])
        twin = next((m for m in members if m.seed == run.seed), None)
        if twin is not None:
            what = run.algo + (f" ({run.variant})" if run.variant else "")
            raise ReportError(f"{twin.path} and {run.path} are both {what} on {run.env} with seed {run.seed}")
        members.append(run)
    keys = sorted(out, key=lambda k: (k[0], ALGO_ORDER.get(k[1], len(ALGO_ORDER)), k[1], k[2] != "",
                                      label(out[k][0]), k[2]))
    return {k: sorted(out[k], key=lambda r: r.seed) for k in keys}


# ---- numbers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """An offline env's (dataset's) scale: scores are 100 (R - random) / (expert - random), D4RL's normalised
    score, when both reference returns are set and differ; ``average`` is the dataset's own average return."""

    random: float | None
    expert: float | None
    average: float | None
    record: dict[str, Any]

    @property
    def scaled(self) -> bool:
        return self.random is not None and self.expert is not None and self.expert != self.random

    def affine(self) -> tuple[float, float]:
        """(offset, factor) with score = factor * (return - offset); (0, 1) when the env is not scaled."""
        if not self.scaled:
            return 0.0, 1.0
        assert self.random is not None and self.expert is not None
        return self.random, 100.0 / (self.expert - self.random)

    def score(self, ret: float) -> float:
        offset, factor = self.affine()
        return factor * (ret - offset)


def references(groups: dict[Group, list[Run]]) -> dict[str, Reference]:
    """Each offline env's :class:`Reference`, from its runs' dataset.json; every run of an env must have read
    the same dataset (the same reference returns, average and creation time), else a table would mix two."""
    out: dict[str, Reference] = {}
    seen: dict[str, Run] = {}
    keys = ("ref_min_score", "ref_max_score", "average_return", "created", "transitions")
    for members in groups.values():
        for run in members:
            if run.data is None:
                continue
            first = seen.setdefault(run.env, run)
            assert first.data is not None
            if any(first.data.get(k) != run.data.get(k) for k in keys):
                raise ReportError(f"{first.path} and {run.path} trained on different datasets named {run.env} "
                                  "(their dataset.json differ): report them separately")
            d = run.data
            out[run.env] = Reference(d.get("ref_min_score"), d.get("ref_max_score"), d.get("average_return"), d)
    for members in groups.values():
        missing = [r for r in members if r.data is None and r.env in out]
        if missing:
            raise ReportError(f"{missing[0].path} has no dataset.json while other runs on {missing[0].env} do: "
                              "its scores cannot be put on the same scale")
    return out


def value_at(run: Run, step: int, col: str | None = None) -> float | None:
    """The evaluation at ``step`` (eval.csv column ``col``, default the metric's), or at the last row at most
    eval_every before it; None if not reached."""
    if run.last_step < step:
        return None
    before = [r for r in run.evals if r["step"] <= step]
    if not before or step - before[-1]["step"] > run.eval_every:  # a gap in the grid: no honest value
        return None
    return before[-1][col or column(run.env)]


def curve(runs: list[Run], col: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps every seed evaluated at, with the mean and std over seeds there of ``col`` (default: the metric)."""
    common = sorted(set.intersection(*({r["step"] for r in run.evals} for run in runs)))
    col = col or column(runs[0].env)
    values = np.array([[next(r[col] for r in run.evals if r["step"] == s) for s in common] for run in runs])
    return np.array(common), values.mean(axis=0), values.std(axis=0)


def archived(run: Run) -> Path:
    """Where ``run``'s logs are copied, relative to the output folder."""
    if run.path.name == f"seed{run.seed}":  # the ENV/NAME/seedSEED layout of diffrl sweep and the docs: kept
        return Path("runs") / run.env / run.path.parent.name / f"seed{run.seed}"
    if not run.hp:
        return Path("runs") / run.env / run.algo / f"seed{run.seed}"
    slug = "+".join(re.sub(r"[^A-Za-z0-9._=-]", "_", f"{k}={v}") for k, v in run.hp)
    return Path("runs") / run.env / f"{run.algo}-{slug}" / f"seed{run.seed}"


def label(run: Run) -> str:
    """The algorithm, and for a variant the name of its archive folder (the sweep layout's NAME, else
    ALGO-overrides), so that a table regenerated from its archive reads the same."""
    if not run.hp:
        return LABELS.get(run.algo, run.algo)
    return f"{LABELS.get(run.algo, run.algo)}: {archived(run).parent.name}"


def summarize(key: Group, runs: list[Run], at: list[int], ref: Reference | None = None,
              returns: bool = False) -> dict[str, Any]:
    """The group's row; ``returns``: its evaluation return instead of its metric (a MetaWorld task's second row)."""
    env, algo, variant = key
    table: dict[str, dict[str, Any]] = {}
    for step in at:
        values = [value_at(run, step, "return_mean" if returns else None) for run in runs]
        if all(v is not None for v in values):
            arr = np.array([ref.score(v) if ref else v for v in values if v is not None], dtype=float)
            # population std (numpy's ddof = 0), as every published table; each seed's value beside it
            table[str(step)] = {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(values),
                                "values": [float(v) for v in arr]}
    speeds = [r.seconds_per_1k for r in runs if r.seconds_per_1k is not None]
    per_1k = float(np.mean(speeds)) if speeds else None
    extra = {"hp": dict(runs[0].hp)} if variant else {}
    return {"env": env, "algo": algo, **extra, "label": label(runs[0]), "seeds": [r.seed for r in runs],
            "runs": [archived(r).as_posix() for r in runs], "steps_reached": min(r.last_step for r in runs),
            "metric": "return" if returns else "normalised_score" if ref and ref.scaled else metric(env), "at": table,
            "seconds_per_1k_steps": per_1k,
            "steps_per_s": 1000.0 / per_1k if per_1k else None, "complete": all(r.done for r in runs),
            "in_progress": [r.seed for r in runs if not r.done],
            "resumed": {str(r.seed): r.resumes for r in runs if r.resumes},
            "unrecorded_starts": [r.seed for r in runs if r.resumes is None],
            **({"reference": {"random": ref.random, "expert": ref.expert}} if ref else {}),
            **({"return_row": True} if returns else {})}


def dataset_row(env: str, ref: Reference, at: list[int]) -> dict[str, Any]:
    """The behaviour data's own row: its episodes' average return (normalised where the env is), the same at
    every step (the data does not change)."""
    value = None if ref.average is None else ref.score(ref.average)
    point = {"mean": value, "std": 0.0, "n": 1, "values": [value]}
    return {"env": env, "algo": "dataset", "label": DATASET_LABEL, "seeds": [], "runs": [], "steps_reached": None,
            "metric": "normalised_score" if ref.scaled else metric(env),
            "at": {str(s): point for s in at} if value is not None else {}, "seconds_per_1k_steps": None,
            "steps_per_s": None, "complete": True, "in_progress": [], "resumed": {}, "unrecorded_starts": [],
            "reference": {"random": ref.random, "expert": ref.expert},
            "dataset": {k: ref.record.get(k) for k in ("kind", "transitions", "episodes", "episodes_averaged",
                                                        "average_return", "std_return", "policies", "how")}}


# ---- reStructuredText --------------------------------------------------------------------------------


def step_label(step: int) -> str:
    """50000 -> 50k, 1500000 -> 1.5M, 999 -> 999."""
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if step >= size:
            return f"{step / size:.4g}{unit}"
    return str(step)


def _escape(text: str) -> str:
    """Backslash the characters reStructuredText would read as markup (substitutions, emphasis, roles)."""
    return "".join("\\" + c if c in "\\*`|_" else c for c in text)


def _cell(row: dict[str, Any], step: int) -> str:
    point = row["at"].get(str(step))
    if point is None:
        return DASH
    digits = 2 if row["metric"] == "success_rate" else 1
    if point["n"] == 1:  # one seed has no spread: "± 0.0" would read as a measured zero
        return f"{point['mean']:.{digits}f}"
    seeds = ", ".join(f"{v:.{digits}f}" for v in point["values"])
    return f"{point['mean']:.{digits}f} ± {point['std']:.{digits}f} ({seeds})"


def rst_table(rows: list[dict[str, Any]], at: list[int]) -> str:
    header = ["Environment", "Algorithm", "Metric", "Seeds", "Steps reached"]
    header += [f"@ {step_label(s)}" for s in at] + ["s / 1k steps"]
    names = {"success_rate": "Success rate", "normalised_score": "Normalised score", "return": "Return"}
    body = [[_escape(r["env"]), _escape(r["label"]), names[r["metric"]],
             str(len(r["seeds"])) if r["seeds"] else DASH,
             DASH if r["steps_reached"] is None else f"{r['steps_reached']:,}"] + [_cell(r, s) for s in at]
            + [DASH if r["seconds_per_1k_steps"] is None else f"{r['seconds_per_1k_steps']:.2f}"] for r in rows]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for cells in [header, *body]:
        lines += ["   * - " + cells[0]] + ["     - " + c for c in cells[1:]]
    lines += ["", "*Mean ± population standard deviation over seeds (ddof = 0), then each seed's value in "
                  "parentheses, seeds ascending.*"]
    if any(r["metric"] == "normalised_score" for r in rows):
        lines += ["", "*Normalised score: 100 × (return − random) / (expert − random), D4RL's, with the dataset's "
                      "reference returns measured here (its ``ref_min_score``: the uniform random policy; "
                      "``ref_max_score``: the expert policy's evaluation).*"]
    if any(r["algo"] == "dataset" for r in rows):
        lines += ["", f"*{DATASET_LABEL}: the mean undiscounted return of the dataset's episodes that ended by "
                      "termination or time limit, on the same scale; the same at every step.*"]
    groups = [r for r in rows if not r.get("return_row")]  # the notes name each group once
    for r in groups:
        if r["resumed"]:
            seeds = ", ".join(f"seed {k} ({n} time{'s' if n > 1 else ''})" for k, n in r["resumed"].items())
            lines += ["", f"*Resumed from a checkpoint (``starts.jsonl``): {_escape(r['label'])} on "
                          f"{_escape(r['env'])}, {seeds}.*"]
    unrecorded = sum(len(r["unrecorded_starts"]) for r in groups)
    if unrecorded:
        total = sum(len(r["seeds"]) for r in groups)
        lines += ["", f"*{unrecorded} of the {total} runs have no ``starts.jsonl`` (they ran before it was "
                      "recorded): whether they were resumed is not known.*"]
    for r in groups:
        if not r["complete"]:
            busy = r["in_progress"]
            seeds = ("seed " if len(busy) == 1 else "seeds ") + ", ".join(map(str, busy))
            lines += ["", f"*Runs still in progress: {_escape(r['label'])} on {_escape(r['env'])}, {seeds} "
                          f"(of {len(r['seeds'])}); every seed has reached step {r['steps_reached']:,}.*"]
    return "\n".join(lines) + "\n"


# ---- plot ----------------------------------------------------------------------------------------------


def plot(groups: dict[Group, list[Run]], path: Path, refs: dict[str, Reference] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # MetaWorld tasks get a second panel with the return: success alone is flat until a task is solved
    names = sorted({key[0] for key in groups})
    single: list[tuple[str, str] | None] = [(env, column(env)) for env in names if not envs.is_metaworld(env)]
    pairs: list[tuple[str, str] | None] = [(env, col) for env in names if envs.is_metaworld(env)
                                           for col in (column(env), "return_mean")]
    # a MetaWorld task's pair on one row of two columns (after the other panels, padded to a whole row)
    ncols = 2 if pairs else min(3, len(single))
    panels = single + [None] * (len(single) % 2 if pairs else 0) + pairs
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels + [None] * (nrows * ncols - len(panels)), strict=True):
        if panel is None:
            ax.set_visible(False)
            continue
        env, col = panel
        lines = [(k, runs) for k, runs in groups.items() if k[0] == env]
        variants = any(k[2] for k, _ in lines)
        ref = (refs or {}).get(env)
        for i, ((_, algo, _), runs) in enumerate(lines):
            steps, mean, std = curve(runs, col)
            if ref is not None:  # an affine map: the band is scaled with it
                offset, factor = ref.affine()
                mean, std = factor * (mean - offset), abs(factor) * std
            n = len(runs)
            color = f"C{i % 10}" if variants else COLORS.get(algo)
            style = "--" if variants and i >= 10 else "-"
            ax.plot(steps, mean, style, color=color, marker="o" if len(steps) == 1 else None,
                    label=f"{label(runs[0])} ({n} seed{'s' if n != 1 else ''})")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        if ref is not None and ref.average is not None:
            ax.axhline(ref.score(ref.average), color="k", linestyle=":", linewidth=1, label=DATASET_LABEL)
        offline = any(algo in loop.OFFLINE or algo.startswith("d3rlpy-") for (_, algo, _), _ in lines)
        ax.set(title=env, xlabel="gradient steps" if offline else "environment steps",
               ylabel="success rate" if col == "success_rate" else
               "normalised score" if ref is not None and ref.scaled else "evaluation return")
        if col == "success_rate":  # the full scale: a flat zero must not look like noise around zero
            ax.set_ylim(-0.05, 1.05)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: step_label(int(x)) if x >= 0 else f"{x:g}"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- archive ---------------------------------------------------------------------------------------------


def archive(runs: list[Run], out: Path) -> None:
    """Copy each run's logs to ``out/runs``; refuse if that folder holds runs outside this table."""
    paths = [archived(r) for r in runs]
    clash = next((p for p in paths if paths.count(p) > 1), None)
    if clash is not None:
        raise ReportError(f"two runs of different groups would both be archived as {clash}: rename a folder")
    wanted = {(out / p).resolve() for p in paths}
    root = out / "runs"
    stale = sorted(str(c.parent) for c in root.glob("*/*/seed*/config.json") if c.parent.resolve() not in wanted)
    if stale:
        listed = ", ".join(stale)
        raise ReportError(f"{root} holds runs outside this table ({listed}): remove them or use another --out")
    for run in runs:
        dst = out / archived(run)
        if dst.resolve() == run.path.resolve():  # regenerating from the archive itself
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for name in ARCHIVED:
            src = run.path / name
            if src.is_file():
                shutil.copyfile(src, dst / name)
            else:  # e.g. done.json of a run that has since been extended
                (dst / name).unlink(missing_ok=True)
        snaps = loop.snapshots(run.path)
        if snaps:  # SAC's actor snapshots (the offline datasets' behaviour policies): every 50k and the last
            keep = [q for step, q in snaps[:-1] if step % loop.SNAPSHOT_ARCHIVE_EVERY == 0]
            keep.append(snaps[-1][1])
            (dst / "policies").mkdir(exist_ok=True)
            for old in (dst / "policies").glob("step*.pt"):  # an in-progress run's earlier "last" one
                if old.name not in {q.name for q in keep}:
                    old.unlink()
            for src in keep:
                shutil.copyfile(src, dst / "policies" / src.name)


# ---- two algorithms compared ------------------------------------------------------------------------------


def compare(groups: dict[Group, list[Run]], a: str, b: str, step: int, out: Path) -> dict[str, Any]:
    """``a`` against ``b`` (their default groups) at ``step`` on every env both reached it: per-task difference
    of means with a bootstrap interval, and the IQM of scores normalised by the random policy and b's mean."""
    from . import stats

    per_env: dict[str, dict[str, list[float]]] = {}
    for (env, algo, variant), members in groups.items():
        if variant or algo not in (a, b):
            continue
        values = [value_at(run, step) for run in members]
        if all(v is not None for v in values):
            per_env.setdefault(env, {})[algo] = [float(v) for v in values if v is not None]
    envs_both = sorted(e for e, d in per_env.items() if a in d and b in d)
    if not envs_both:
        raise ReportError(f"--compare {a} {b}: no environment where both reached step {step:,} with every seed")
    random = stats.random_returns(envs_both, out / "random_returns.json")
    tasks: list[dict[str, Any]] = []
    norm: dict[str, list[np.ndarray]] = {a: [], b: []}
    for env in envs_both:
        xa, xb = per_env[env][a], per_env[env][b]
        ref = float(np.mean(xb))
        row: dict[str, Any] = {"env": env, "metric": metric(env), a: xa, b: xb, "random": random[env],
                               **stats.mean_difference(xa, xb)}
        tasks.append(row)
        if ref != random[env]:
            norm[a].append(stats.normalise(np.array(xa), random[env], ref))
            norm[b].append(stats.normalise(np.array(xb), random[env], ref))
    counts = {len(v) for k in norm for v in norm[k]}
    aggregate: dict[str, Any] | None = None
    if norm[a] and len(counts) == 1:  # rliable's matrix needs the same number of runs on every task
        aggregate = stats.iqm({k: np.stack(v, axis=1) for k, v in norm.items()})
    return {"a": a, "b": b, "step": step, "confidence": stats.CONFIDENCE, "resamples": stats.RESAMPLES,
            "reps": stats.REPS, "tasks": tasks, "aggregate": aggregate,
            "aggregate_tasks": len(norm[a]) if aggregate else 0}


def comparison_rst(c: dict[str, Any]) -> str:
    a, b = LABELS.get(c["a"], c["a"]), LABELS.get(c["b"], c["b"])
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - Environment", "     - Seeds", f"     - {_escape(a)} − {_escape(b)} @ {step_label(c['step'])}",
             "     - 95% interval", "     - Verdict"]
    for t in c["tasks"]:
        digits = 2 if t["metric"] == "success_rate" else 1
        lines += [f"   * - {_escape(t['env'])}", f"     - {t['n'][0]} and {t['n'][1]}",
                  f"     - {t['difference']:.{digits}f}", f"     - [{t['low']:.{digits}f}, {t['high']:.{digits}f}]",
                  f"     - {_escape(a)} {t['verdict']}" if t["verdict"] != "not distinguishable"
                  else "     - not distinguishable"]
    lines += ["", f"*Difference of the mean final scores over seeds; {c['confidence']:.0%} percentile-bootstrap "
                  f"interval over seeds ({c['resamples']:,} resamples, scipy.stats.bootstrap); a verdict only "
                  "where the interval excludes 0.*"]
    agg = c["aggregate"]
    if agg:
        lines += ["", f"*Aggregate over {c['aggregate_tasks']} task(s), scores normalised per task as (score − "
                      f"random) / ({_escape(b)} mean − random): IQM "
                  + "; ".join(f"{_escape(LABELS.get(k, k))} {v['iqm']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
                              for k, v in agg.items())
                  + f" ({c['confidence']:.0%} stratified-bootstrap intervals, {c['reps']:,} reps, rliable).*"]
    else:
        lines += ["", "*No aggregate: the tasks do not all have the same number of seeds, or none has a scale "
                      "(the reference's mean equals the random policy's).*"]
    return "\n".join(lines) + "\n"


# ---- entry point --------------------------------------------------------------------------------------


def main(runs: list[Path], out: Path, at: list[int], versus: tuple[str, str] | None = None) -> list[Path]:
    """Write curves.png, results.json, results.rst and runs/ for ``runs`` into ``out`` (and comparison.json,
    comparison.rst, random_returns.json for ``versus`` = (a, b) at the last ``at`` step); return the paths."""
    groups = group([load_run(p) for p in runs])
    at = sorted(set(at))
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    archive([run for members in groups.values() for run in members], out)
    refs = references(groups)
    rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        if key[0] in refs and not any(r["env"] == key[0] for r in rows):
            rows.append(dataset_row(key[0], refs[key[0]], at))  # first in its env's rows
        rows.append(summarize(key, members, at, refs.get(key[0])))
        if envs.is_metaworld(key[0]):  # success alone is flat until a task is solved: the return beside it
            rows.append(summarize(key, members, at, returns=True))
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "results.rst").write_text(rst_table(rows, at))
    wrote = [out / "results.json", out / "results.rst", out / "runs"]
    if versus is not None:
        c = compare(groups, versus[0], versus[1], at[-1], out)
        (out / "comparison.json").write_text(json.dumps(c, indent=1) + "\n")
        (out / "comparison.rst").write_text(comparison_rst(c))
        wrote += [out / "comparison.json", out / "comparison.rst", out / "random_returns.json"]
    try:
        plot(groups, out / "curves.png", refs)
    except ImportError:  # the tables need no matplotlib; say what is missing and keep them
        print("plot: matplotlib not installed: no curves.png (pip install 'diffrl-ref[rl]')", file=sys.stderr)
        return wrote
    return [out / "curves.png", *wrote]
