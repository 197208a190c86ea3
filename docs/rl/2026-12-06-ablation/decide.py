"""Each ablation group against the default and against SAC at 50k steps: the numbers the defaults are picked by.

Run after ``plot.sh`` (which calls it), from the repository root::

    python docs/rl/2026-12-06-ablation/decide.py

Reads this batch's ``results.json`` (made by ``diffrl plot`` from the archived logs) and writes
``decision.rst`` and ``decision.json`` beside it: for every group whose three seeds reached 50k, the mean and
the difference of means from the default (``Diff-SR (ours)``) and from SAC (the ``sac`` group, run in this
batch on this machine), each with its 95% percentile-bootstrap interval over seeds and a verdict
(:func:`diffrl_ref.rl.stats.mean_difference`, as ``diffrl plot --compare``). Once every group has run it
also applies the rule written in ``header.inc`` before the last groups finished (:func:`pick`): the
candidates, the highest mean, each other candidate against it, and how many of the official code's choices
each makes (counted from the resolved config each run archived in ``config.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from diffrl_ref.rl import stats

HERE = Path(__file__).resolve().parent
STEP = "50000"
DEFAULT, SAC = "Diff-SR (ours)", "SAC (stable-baselines3)"
FS4 = "Diff-SR (ours): feature-steps-4"
#: The official diffsrsac's value of each hyperparameter the difference table in docs/rl.rst lists as
#: measured (haotiansun14/rl-rep at 26af5d2): what rule (3)'s tie-break counts.
OFFICIAL = {"feature_amplitude": "1", "rff_init": "linear", "activation": "elu", "actor_init": "orthogonal",
            "noise_scale": 0.449, "weighting": "beta2", "feature_steps": 4, "critic_head": "elu",
            "alpha_init": 0.1, "target_every": 2}


def decide(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per group with every seed at 50k: its values and its differences from the default and SAC."""
    done = {r["label"]: r["at"][STEP]["values"] for r in rows if STEP in r["at"] and r["at"][STEP]["n"] >= 2}
    out = []
    for label, values in done.items():
        entry: dict[str, Any] = {"label": label, "hp": next(r.get("hp", {}) for r in rows if r["label"] == label),
                                 "values": values, "mean": sum(values) / len(values)}
        for name, ref in (("vs_default", DEFAULT), ("vs_sac", SAC)):
            if ref in done and ref != label:
                entry[name] = stats.mean_difference(values, done[ref])
        out.append(entry)
    return sorted(out, key=lambda e: -e["mean"])


def official_choices(resolved: dict[str, Any]) -> list[str]:
    """The hyperparameters whose value in a run's resolved config is the official code's."""
    return [k for k, v in OFFICIAL.items() if resolved.get(k) == v]


def pick(entries: list[dict[str, Any]], rows: list[dict[str, Any]], folder: Path,
         expected: int) -> dict[str, Any] | None:
    """header.inc's rule, once all ``expected`` groups have their seeds at 50k (None before).

    (1) candidates: groups ahead of the default (interval above 0); (2) a group with feature_steps = 4 only if
    feature-steps-4 alone is ahead; (3) the highest mean, unless a candidate not distinguishable from it
    makes more official choices (then the one with most, by mean among equals); (4) the pick against SAC.
    """
    if len(entries) < expected:
        return None
    runs = {r["label"]: r["runs"] for r in rows}
    resolved = {e["label"]: json.loads((folder / runs[e["label"]][0] / "config.json").read_text())["resolved"]
                for e in entries if e["label"] != SAC}
    fs4_ahead = any(e["label"] == FS4 and e["vs_default"]["verdict"] == "ahead" for e in entries)
    candidates = [e for e in entries if e["label"] not in (DEFAULT, SAC)
                  and e["vs_default"]["verdict"] == "ahead"
                  and (resolved[e["label"]]["feature_steps"] == 1 or fs4_ahead)]
    if not candidates:
        return {"picked": DEFAULT, "why": "no group is ahead of the default", "candidates": []}
    top = max(candidates, key=lambda e: e["mean"])
    table = []
    for e in candidates:
        table.append({"label": e["label"], "mean": e["mean"], "official": official_choices(resolved[e["label"]]),
                      "vs_top": None if e is top else stats.mean_difference(e["values"], top["values"])})
    level = [c for c in table if c["vs_top"] is None or c["vs_top"]["verdict"] == "not distinguishable"]
    chosen = max(level, key=lambda c: (len(c["official"]), c["label"] == top["label"], c["mean"]))
    why = ("the highest mean among the candidates" if chosen["label"] == top["label"] else
           f"not distinguishable from the highest mean ({top['label']}) and more of the official code's choices")
    vs_sac = next(e for e in entries if e["label"] == chosen["label"]).get("vs_sac")
    return {"picked": chosen["label"], "why": why, "candidates": table, "vs_sac": vs_sac,
            "resolved": resolved[chosen["label"]]}


def cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "—"
    return f"{d['difference']:+,.0f} [{d['low']:+,.0f}, {d['high']:+,.0f}] {d['verdict']}"


def rst(entries: list[dict[str, Any]]) -> str:
    lines = [".. generated by ``python docs/rl/2026-12-06-ablation/decide.py`` from ``results.json``; do not edit",
             "", ".. list-table:: Return at 50k: each group against the default and against SAC (this batch, this "
             "machine), difference of means [95% bootstrap interval] and verdict", "   :header-rows: 1", "",
             "   * - Group", "     - Seeds", "     - Mean", "     - − default", "     - − SAC"]
    for e in entries:
        name = "default" if e["label"] == DEFAULT else e["label"].replace("Diff-SR (ours): ", "")
        lines += [f"   * - {name}", f"     - {len(e['values'])}", f"     - {e['mean']:,.0f}",
                  f"     - {cell(e.get('vs_default'))}", f"     - {cell(e.get('vs_sac'))}"]
    lines += ["", f"*Percentile bootstrap over seeds, each group's seeds resampled independently "
                  f"({stats.RESAMPLES:,} resamples, scipy.stats.bootstrap, seed {stats.SEED}); with 3 seeds a "
                  "group has at most 10 distinct resamples, so the intervals are coarse. Groups still running "
                  "are not listed.*", ""]
    return "\n".join(lines)


def rule_rst(decision: dict[str, Any] | None) -> str:
    if decision is None:
        return ("*The rule in the header is applied here once every group has its three seeds at 50k.*\n")
    name = decision["picked"].replace("Diff-SR (ours): ", "")
    lines = ["**The rule applied** (every group has run). Candidates, ahead of the default: "
             + "; ".join(f"{c['label'].replace('Diff-SR (ours): ', '')} (mean {c['mean']:,.0f}, official choices "
                         f"{len(c['official'])}" + ("" if c["vs_top"] is None else f", − highest {cell(c['vs_top'])}")
                         + ")" for c in decision["candidates"]) + "."
             if decision["candidates"] else "**The rule applied.** No group is ahead of the default.",
             "", f"Picked: **{name}**, {decision['why']}."]
    if decision.get("vs_sac"):
        lines[-1] += f" Against SAC: {cell(decision['vs_sac'])}."
    return "\n".join(lines) + "\n"


def main(folder: Path = HERE, out: Path | None = None) -> None:
    """Read ``results.json``, ``grid.yaml`` and the archived runs in ``folder``; write to ``out`` (default: folder)."""
    out = folder if out is None else out
    rows = json.loads((folder / "results.json").read_text())
    entries = decide(rows)
    expected = len(yaml.safe_load((folder / "grid.yaml").read_text())["groups"])
    decision = pick(entries, rows, folder, expected)
    (out / "decision.json").write_text(json.dumps({"groups": entries, "rule": decision}, indent=1) + "\n")
    (out / "decision.rst").write_text(rst(entries) + "\n" + rule_rst(decision))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
