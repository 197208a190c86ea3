"""Makes the datasets of the offline and multi-agent results (issues 19 and 20) from the campaign's SAC runs.

How to run (repository root, the project's venv active), once the 200k-step campaign's SAC runs on HalfCheetah,
Hopper and Walker2d have finished (docs/campaigns/pipeline.sh runs those first)::

    python docs/offline/results/make_datasets.py --runs runs/campaign --out datasets

For each task, the behaviour policies come from one SAC run of the campaign, the seed whose last evaluation return
is the highest of the three (:func:`pick_run`; ``RUNS/ENV/sac/seedS``): its policy snapshots, archived with the
logs, and, for ``medium-replay``, its ``checkpoint.pt`` with the replay buffer, which is not archived; on a machine
without it, the run is rerun to the medium step, which gives the same buffer on CPU, its training episodes checked
against the archived ones (:func:`replay_checkpoint`). ``expert`` is its last snapshot (200k steps), ``medium`` the
run stopped early, its first snapshot whose evaluation return reaches a third of the expert's
(:func:`diffrl_ref.rl.datasets.behaviour_policies`), and ``medium-replay`` the run's buffer up to the medium
snapshot's step. The expert dataset is made first; its ``ref_max_score`` (the expert policy's evaluation) is every
other dataset's ``--expert-return`` of that task, so all of a task's datasets share one normalised scale. The
Multi-Agent MuJoCo datasets use the same policies on the partitions' single-agent tasks. Every dataset is made with
``diffrl dataset make`` at ``--size`` (D4RL's 1M by default), seed 0; a dataset that exists already is kept
(rerunning goes on where it stopped). Writes ``made.json`` to ``--record`` (default: this folder): the run picked
and every seed's last return, the policies picked, their returns and the datasets made; the two picked actors of
each task are copied to ``--record``/policies/TASK/ (the run's archive keeps only every 50k steps' snapshot and the
last, the medium one is usually between); where made.json has a pick whose kept snapshots are there, that pick is
used again (:func:`picked`; ``--repick`` picks anew); a dataset made again from it (a new machine) with the digest
made.json records (``sha256``, :func:`diffrl_ref.rl.datasets.record`) keeps the first make's record, and one with
other bits (another kind of CPU) is listed beside it (:func:`again`). ``--tasks`` makes some tasks only; made.json
keeps the others. From made.json it writes the tables of docs/offline.rst and
docs/marl.rst, ``datasets.rst`` and ``datasets-marl.rst`` (``--tables-only`` rewrites them alone;
tests/test_datasets.py checks that the committed ones are what made.json gives).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from diffrl_ref import cli
from diffrl_ref.rl import datasets, logs, report

#: task -> the kinds made for the results (docs/offline.rst, docs/marl.rst); the expert set comes first
SINGLE = {"HalfCheetah-v5": ("expert", "medium"), "Hopper-v5": ("expert", "medium-replay"),
          "Walker2d-v5": ("expert", "medium")}
#: partition -> its single-agent task and kinds
MULTI = {"HalfCheetah-2x3": ("HalfCheetah-v5", ("expert", "medium", "medium-replay")),
         "Hopper-3x1": ("Hopper-v5", ("expert", "medium", "medium-replay"))}


def make(env: str, kind: str, policy: Path, root: Path, size: int | None, expert_return: float | None) -> str:
    """``diffrl dataset make`` of one dataset, unless it exists; returns its id."""
    ds_id = datasets.dataset_id(env, kind)
    if (root / ds_id).exists():
        print(f"make_datasets: {ds_id} exists; kept", flush=True)
        return ds_id
    argv = ["dataset", "make", "--env", env, "--kind", kind, "--out", str(root), "--seed", "0", "--policy",
            str(policy)]
    if size is not None:
        argv += ["--size", str(size)]
    if expert_return is not None:
        argv += ["--expert-return", repr(expert_return)]
    print("make_datasets: diffrl " + " ".join(argv), flush=True)
    if cli.main(argv) != 0:
        raise SystemExit(f"make_datasets: diffrl {' '.join(argv)} failed")
    return ds_id


def _rows(path: Path, last: int) -> list[dict[str, float]]:
    return [r for r in logs.read_csv(path) if r["step"] <= last]


def replay_checkpoint(run: Path, step: int, scratch: Path) -> Path:
    """A checkpoint whose replay buffer holds the run's first ``step`` transitions: the run's own checkpoint.pt,
    else the run's command rerun (same env, seed, evaluation settings and hyperparameters, one torch thread) to
    the first episode end at or after ``step``. A CPU run is deterministic, so the rerun's buffer equals the
    original's; its training episodes (episodes.csv: step, return, length) up to ``step`` must equal the archived
    run's, or nothing is made."""
    if (run / "checkpoint.pt").is_file():
        return run / "checkpoint.pt"
    ident = json.loads((run / "config.json").read_text())["identity"]
    out = scratch / f"{ident['env']}-sac-seed{ident['seed']}-to-{step}"
    # episodes end by the 1,000-step time limit at the latest, so one ends in (step, step + 1000]; the
    # checkpoint is written at the first episode end at or after --checkpoint-every (diffrl_ref.rl.loop)
    argv = ["train", "sac", "--env", ident["env"], "--seed", str(ident["seed"]), "--steps", str(step + 1000),
            "--eval-every", str(ident["eval_every"]), "--eval-episodes", str(ident["eval_episodes"]),
            "--checkpoint-every", str(step), "--threads", "1", "--out", str(out), "--no-progress",
            *[a for k, v in sorted(ident["hp"].items()) for a in ("--hp", f"{k}={v}")]]
    print(f"make_datasets: {run}/checkpoint.pt absent; rerunning: diffrl {' '.join(argv)}", flush=True)
    if cli.main(argv) != 0:
        raise SystemExit(f"make_datasets: diffrl {' '.join(argv)} failed")
    again, archived = _rows(out / "episodes.csv", step), _rows(run / "episodes.csv", step)
    if again != archived:
        pairs = enumerate(zip(again, archived, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(again), len(archived)))
        raise SystemExit(f"make_datasets: the rerun of {run} differs from it at training episode {first} "
                         f"(up to step {step:,}: {len(again)} episodes rerun, {len(archived)} archived); "
                         "its buffer is not the original's, so no medium-replay dataset is made")
    print(f"make_datasets: the rerun's {len(again)} training episodes up to step {step:,} equal the archived run's",
          flush=True)
    return out / "checkpoint.pt"


def pick_run(runs: Path, task: str, seeds: list[int]) -> tuple[Path, dict[str, float]]:
    """The task's behaviour-policy run: of the campaign's SAC seeds, every one finished, the one whose last
    evaluation return is the highest (ties: the lowest seed), with each seed's. D4RL's expert is "a fully trained
    SAC policy"; at 200k steps one seed of three can stall (seed 0 on Walker2d-v5 was under 720 through 155k
    steps, 2026-12-07), and a stalled run's last policy is no expert. Fixed before seeds 1 and 2 had run."""
    finals: dict[str, float] = {}
    for seed in seeds:
        run = runs / task / "sac" / f"seed{seed}"
        if not (run / "done.json").is_file():
            raise SystemExit(f"make_datasets: {run} has not finished: the behaviour policies of {task} are picked "
                             f"among SAC seeds {', '.join(map(str, seeds))} once all have")
        finals[str(seed)] = logs.read_csv(run / "eval.csv")[-1]["return_mean"]
    best = max(seeds, key=lambda s: (finals[str(s)], -s))
    return runs / task / "sac" / f"seed{best}", finals


def picked(runs: Path, task: str, seeds: list[int], record: Path,
           previous: dict[str, Any]) -> tuple[Path, dict[str, Any], bool]:
    """The task's run and behaviour policies, and whether they are made.json's earlier pick. That pick is kept
    where its two snapshots are (``record``/policies/TASK/): a run restored from its archive on another machine
    has only every 50k steps' snapshot and the last, so picking again there could give another medium policy.
    Otherwise a new pick (:func:`pick_run`, :func:`diffrl_ref.rl.datasets.behaviour_policies`) whose two actors
    are then kept beside made.json (a few hundred kB each), so the medium and expert sets can be remade from
    the repository."""
    old = previous.get("policies", {}).get(task)
    if old and all((record / old.get(f"{k}_kept", "-")).is_file() for k in ("medium", "expert")):
        return runs / old["run"], old, True
    run, finals = pick_run(runs, task, seeds)
    found = datasets.behaviour_policies(run)
    pick = {"run": run.relative_to(runs).as_posix(), "final_returns": finals, **found}
    kept = record / "policies" / task
    kept.mkdir(parents=True, exist_ok=True)
    for stale in set(kept.glob("step*.pt")) - {kept / Path(found[k]).name for k in ("medium", "expert")}:
        stale.unlink()  # a snapshot an earlier pick kept
    for kind in ("medium", "expert"):
        snapshot = Path(found[kind])
        shutil.copyfile(snapshot, kept / snapshot.name)
        # paths in made.json are relative (to --runs, and to made.json's folder), not this machine's
        pick[kind] = snapshot.relative_to(runs).as_posix()
        pick[f"{kind}_kept"] = (kept / snapshot.name).relative_to(record).as_posix()
    return run, pick, False


def again(first: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """made.json's record of a dataset made again from its pick (a new machine). The same data (same sha256): the
    first make's record, kept. Other data: the policies' actions come from torch kernels picked by the CPU's
    instruction set, so another kind of CPU gives other last bits and, over 1M chaotic steps, other episodes. The
    first record stays, the new make is listed under ``made_again`` (its digest, CPU capability and statistics),
    a line says so, and the tables show it; each run's dataset.json names the digest it trained on."""
    if not first.get("sha256"):  # made before records had a digest: the new make's record
        return rec
    if first["sha256"] == rec["sha256"]:
        return first
    import torch

    here = torch.backends.cpu.get_cpu_capability()
    print(f"make_datasets: {rec['dataset']} made again is other data than made.json's (sha256 {rec['sha256'][:12]} "
          f"against {first['sha256'][:12]}, made {first.get('created')}); CPU capability here {here}; listed under "
          f"made_again", flush=True)
    listed = [m for m in first.get("made_again", []) if m["sha256"] != rec["sha256"]]
    keys = ("sha256", "created", "average_return", "std_return", "episodes", "transitions")
    return first | {"made_again": [*listed, {k: rec[k] for k in keys} | {"cpu_capability": here}]}


def _num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def tables(made: dict[str, Any], envs: list[str]) -> str:
    """The datasets of ``envs`` in made.json as rst: how they were made (date, command, versions), the behaviour
    policies picked per task, and per dataset its policy, size, own average return and normalised scale."""
    rows = {i: d for i, d in made["datasets"].items() if d.get("env") in envs}
    if not rows:
        return ("*No dataset made yet* (``docs/campaigns/pipeline.sh`` makes them once the campaign's SAC runs "
                "have finished).\n")
    dates = sorted({(d.get("created") or "")[:10] for d in rows.values()})
    vers = {json.dumps(d.get("versions"), sort_keys=True) for d in rows.values()}
    codes = sorted({d.get("code") or "unknown" for d in rows.values()})
    seeds = sorted({str(d.get("seed")) for d in rows.values()})
    versions = ", ".join(f"{k} {v}" for k, v in json.loads(next(iter(vers))).items()) if len(vers) == 1 and \
        next(iter(vers)) != "null" else "see made.json (not the same for every dataset)"
    out = [".. generated by ``python docs/offline/results/make_datasets.py`` (``--tables-only`` redoes this from "
           "made.json); do not edit", "",
           f"Made {' to '.join(dates)} (UTC) by ``python docs/offline/results/make_datasets.py --runs runs/campaign "
           f"--out datasets``, seed {', '.join(seeds)}, with {versions}; code: {'; '.join(codes)}. Every "
           "dataset's full provenance is in its Minari metadata (``diffrl_provenance``) and in "
           "``docs/offline/results/made.json``.", ""]
    tasks = sorted({made["datasets"][i].get("task") or made["datasets"][i]["env"] for i in rows})
    picks = {task: made["policies"][task] for task in tasks if task in made["policies"]}
    if picks:
        out += [".. list-table:: Behaviour policies: per task, the campaign's SAC seed with the highest last "
                "evaluation return; expert its last snapshot, medium its first snapshot reaching a third of the "
                "expert's return (returns: deterministic evaluation, 10 episodes)",
                "   :header-rows: 1", "",
                "   * - Task", "     - Last return of each seed", "     - Run picked", "     - Expert: step, return",
                "     - Medium: step, return (share of the expert's)"]
        for task, pick in picks.items():
            finals = " / ".join(f"{_num(v)} (seed {s})" for s, v in sorted(pick["final_returns"].items()))
            out += [f"   * - {task}", f"     - {finals}", f"     - ``{pick['run']}``",
                    f"     - {pick['expert_step']:,}: {_num(pick['expert_return'])}",
                    f"     - {pick['medium_step']:,}: {_num(pick['medium_return'])} ({pick['fraction']:.2f})"]
        out.append("")
    out += [".. list-table:: Datasets: normalised = 100 (average - random) / (expert - random), the scale of "
            "every score on this page; averages over the episodes that ended (a last one cut by the size is "
            "left out)",
            "   :header-rows: 1", "",
            "   * - Dataset", "     - Behaviour policy (hash, step)", "     - Transitions", "     - Episodes",
            "     - Average return ± std", "     - Normalised", "     - Random (ref_min_score)",
            "     - Expert (ref_max_score)"]
    for ds_id, d in sorted(rows.items()):
        if d.get("kind") == "medium-replay":  # the data are the buffer, not what the checkpoint's policy does
            pols = "; ".join(f"the first {d['transitions']:,} transitions of the replay buffer in checkpoint "
                             f"``{q['name']}`` (saved at step {q['step']:,})" for q in d["policies"])
        else:
            pols = "; ".join(f"{q['role']} ``{q['name']}`` at {q['step']:,}" for q in d["policies"])
        lo, hi, avg = d["ref_min_score"], d["ref_max_score"], d["average_return"]
        ref = report.Reference(lo, hi, avg, d)  # the results tables' normalised scale
        norm = ref.score(avg) if ref.scaled and avg is not None else None
        out += [f"   * - ``{ds_id}``", f"     - {pols}", f"     - {d['transitions']:,}", f"     - {d['episodes']:,}",
                f"     - {_num(avg)} ± {_num(d['std_return'])} ({d['episodes_averaged']:,} episodes)",
                f"     - {_num(norm)}", f"     - {_num(lo)}", f"     - {_num(hi)}"]
    others = [(i, m) for i, d in sorted(rows.items()) for m in d.get("made_again", [])]
    if others:  # the same pick made again on another kind of CPU: other bits (:func:`again`)
        out += ["", "Made again from the same policies on another kind of CPU, with other last bits and so other "
                "episodes (each run's ``dataset.json`` names the digest it trained on):", ""]
        out += [f"- ``{i}``: {m['created']}, CPU capability {m['cpu_capability']}, sha256 ``{m['sha256'][:12]}``, "
                f"average return {_num(m['average_return'])} ± {_num(m['std_return'])} over {m['episodes']:,} "
                f"episodes" for i, m in others]
    return "\n".join(out) + "\n"


def write_tables(made: dict[str, Any], folder: Path) -> list[Path]:
    """datasets.rst (single-agent tasks, docs/offline.rst) and datasets-marl.rst (partitions, docs/marl.rst)."""
    out = []
    for name, envs in (("datasets.rst", list(SINGLE)), ("datasets-marl.rst", list(MULTI))):
        (folder / name).write_text(tables(made, envs))
        out.append(folder / name)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", help="the campaign's sweep folder (RUNS/ENV/sac/seedS)")
    p.add_argument("--out", help="the Minari root to write to")
    p.add_argument("--size", type=int, help="transitions per policy (default: 1M, D4RL's)")
    p.add_argument("--record", default=str(Path(__file__).parent), help="where made.json goes")
    p.add_argument("--tasks", nargs="*", help="only these tasks and partitions (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="the SAC seeds to pick each task's run from (default: the campaign's 0 1 2)")
    p.add_argument("--scratch", default="runs/replay",
                   help="where a run without checkpoint.pt is rerun for medium-replay (default: runs/replay)")
    p.add_argument("--repick", action="store_true",
                   help="pick the behaviour policies again even where made.json has a pick with its kept snapshots")
    p.add_argument("--tables-only", action="store_true",
                   help="only rewrite datasets.rst and datasets-marl.rst from --record's made.json")
    args = p.parse_args(argv)
    made_json = Path(args.record) / "made.json"
    previous = json.loads(made_json.read_text()) if made_json.is_file() else {"datasets": {}, "policies": {}}
    if args.tables_only:  # no made.json yet: the tables say so
        for q in write_tables(previous, Path(args.record)):
            print(f"make_datasets: wrote {q}")
        return
    if not (args.runs and args.out):
        p.error("--runs and --out are required (but for --tables-only)")
    root = Path(args.out)
    wanted = set(args.tasks) if args.tasks else set(SINGLE) | set(MULTI)
    jobs: list[tuple[str, str, tuple[str, ...]]] = [(e, e, k) for e, k in SINGLE.items()]
    jobs += [(part, task, kinds) for part, (task, kinds) in MULTI.items()]
    used = {task for env, task, _ in jobs if env in wanted}
    # made.json keeps what --tasks leaves out
    record: dict[str, dict[str, Any]] = {
        "datasets": {i: d for i, d in previous["datasets"].items() if d.get("env") not in wanted},
        "policies": {t: q for t, q in previous["policies"].items() if t not in used}}
    for env, task, kinds in jobs:
        if env not in wanted:
            continue
        run, pick, reused = picked(Path(args.runs), task, args.seeds, Path(args.record),
                                   {} if args.repick else previous)
        record["policies"][task] = pick
        print(f"make_datasets: {task}: expert step {pick['expert_step']:,} (return {pick['expert_return']:.1f}), "
              f"medium step {pick['medium_step']:,} (return {pick['medium_return']:.1f}, "
              f"{pick['fraction']:.2f} of the expert's; {pick['rule']})"
              f"{'; the pick of made.json, from its kept snapshots' if reused else ''}", flush=True)
        expert_return = None
        for kind in kinds:
            if kind == "medium-replay":  # the run's buffer up to the medium snapshot: its first rows
                replay = replay_checkpoint(run, pick["medium_step"], Path(args.scratch))
                pick["replay_checkpoint"] = "the run's own" if replay == run / "checkpoint.pt" else "rerun, checked"
                ds_id = make(env, kind, replay, root, pick["medium_step"], expert_return)
            else:
                ds_id = make(env, kind, Path(args.record) / pick[f"{kind}_kept"], root, args.size, expert_return)
            rec = datasets.record(ds_id, root)
            record["datasets"][ds_id] = again(previous["datasets"].get(ds_id) or {}, rec) if reused else rec
            if kind == "expert":
                expert_return = rec["ref_max_score"]
    made_json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"make_datasets: wrote {made_json}")
    for q in write_tables(record, Path(args.record)):
        print(f"make_datasets: wrote {q}")


if __name__ == "__main__":
    main()
    sys.exit(0)
