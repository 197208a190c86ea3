"""The ``diffrl`` command line.

``diffrl spec [--json]``        the clause table with coverage
``diffrl conform [...]``        run the conformance suite against an implementation
``diffrl selftest [...]``       run the suite against planted bugs and report the fraction caught
``diffrl docs``                 regenerate the per-clause docs pages from spec/
``diffrl bench [...]``          time the production path against the reference and diffusers
``diffrl train diffsr|sac ...``  train Diff-SR or SAC online on MuJoCo / MetaWorld (resumable)
``diffrl train diffusion-ql|edp``  train Diffusion-QL or EDP offline on a dataset (resumable)
``diffrl profile diffsr|sac ...``  where an online agent's training time goes (env, act, each update)
``diffrl sweep GRID.yaml --out DIR``  a grid of training runs as Ray tasks (resumable)
``diffrl plot RUN [RUN ...]``   learning curves and the results table of run folders
``diffrl dataset make|list``    offline datasets made with D4RL's recipe, in Minari's format
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .suite.plugin import DEFAULT_IMPL

#: What ``diffrl train`` trains (rl.loop.ALGOS, written here so that parsing imports no torch; a test compares).
TRAIN_ALGOS = ["diffsr", "sac", "diffusion-ql", "edp", "dom2", "dof", "madiff"]


class CliError(Exception):
    """One clear line for the user, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(text: str) -> int:
    """A non-negative integer, also written 2e5 or 200_000."""
    try:
        v = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not (v >= 0 and v.is_integer() and v < 2**62):
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(v)


def _positive(text: str) -> int:
    v = _count(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _coverage() -> list[dict[str, Any]]:
    import importlib

    from . import spec
    from .docgen import page_path
    from .suite.selftest import load_conformance

    registry = load_conformance()
    rows = []
    for c in spec.clauses().values():
        mod_name, _, fn_name = c.reference_name.rpartition(".")
        try:
            ref: str | None = c.reference_name if callable(
                getattr(importlib.import_module(mod_name), fn_name, None)) else None
        except ModuleNotFoundError:
            ref = None
        page = page_path(c.id)
        rows.append({
            "id": c.id,
            "title": c.title,
            "family": c.family,
            "source": f"{c.source.publication}; {c.source.equation}",
            "deck": c.source.deck,
            "reference": ref,
            "tests": sorted(r.test_id for r in registry.values() if r.clause_id == c.id),
            "properties": [p.name for p in c.properties],
            "docs": f"docs/clauses/{c.id}.rst" if page is not None and page.is_file() else None,
            "tolerance": c.tolerance.expr,
            "since": c.since,
        })
    return rows


def cmd_spec(args: argparse.Namespace) -> int:
    rows = _coverage()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from . import spec

    w = max(len(r["id"]) for r in rows)
    print(f"diffrl-ref spec {spec.version()}: {len(rows)} clauses")
    print(f"{'clause'.ljust(w)}  ref  tests  props  docs  title")
    for r in rows:
        print(f"{r['id'].ljust(w)}  {'yes' if r['reference'] else 'NO ':3}  {len(r['tests']):5}  "
              f"{len(r['properties']):5}  {'yes' if r['docs'] else 'NO ':4}  {r['title']}")
    missing = [r["id"] for r in rows if not (r["reference"] and r["tests"] and r["docs"])]
    tail = f"; incomplete: {', '.join(missing)}" if missing else ""
    print(f"complete: {len(rows) - len(missing)}/{len(rows)}{tail}")
    return 0


def conformance_dir() -> Path:
    """The installed conformance test directory (also the checkout's conformance/ in editable mode)."""
    import importlib

    return Path(next(iter(importlib.import_module("diffrl_ref.conformance").__path__)))


def cmd_conform(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import os

    from .suite.adapter import BUILTINS, resolve

    if args.list:
        for name, (_, desc) in BUILTINS.items():
            print(f"{name}\t{desc}")
        return 0
    from .suite.report import load_deviations

    try:
        impl = resolve(args.impl, dtype=args.dtype, device=args.device)
        load_deviations(impl, args.deviations)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    if args.report:
        parent = Path(args.report).resolve().parent
        if not parent.is_dir():
            raise CliError(f"--report {args.report}: directory {parent} does not exist")
    os.environ["DIFFRL_PROFILE"] = args.profile
    import pytest

    cdir = conformance_dir()
    # Pinning rootdir and the ini file fixes the node ids, which hypothesis mixes into its
    # derandomized seeds: the same command draws the same examples wherever it runs from.
    pyargs = [str(cdir), "--rootdir", str(cdir), "-c", str(cdir / "pytest.ini"), "-q", "--tb=short",
              "--impl", args.impl, f"--hypothesis-profile={args.profile}"]
    if args.dtype:
        pyargs += ["--impl-dtype", args.dtype]
    if args.device:
        pyargs += ["--impl-device", args.device]
    if args.deviations:
        pyargs += ["--deviations", args.deviations]
    if args.report:
        pyargs += ["--diffrl-report", args.report]
    if args.k:
        pyargs += ["-k", args.k]
    if args.workers:
        pyargs += ["-n", str(args.workers)]
    if args.allow_incomplete:
        pyargs += ["--allow-incomplete"]
    if args.seed is not None:
        pyargs += [f"--hypothesis-seed={args.seed}"]
    return int(pytest.main(pyargs + list(extra)))


def cmd_selftest(args: argparse.Namespace) -> int:
    import time

    from .suite import selftest

    if args.workers < 1:
        raise CliError(f"-n must be >= 1, got {args.workers}")
    targets = selftest.TARGETS if args.target == "all" else (args.target,)
    t0 = time.perf_counter()
    prefix = args.family + "." if args.family else ""
    from .suite.mutants import all_mutants

    if not any(m.clause.startswith(prefix) and m.target in targets for m in all_mutants()):
        raise CliError(f"--family {args.family!r}: no planted bug in that family (families: "
                       f"{', '.join(sorted({m.clause.split('.')[0] for m in all_mutants()}))})")
    verdicts, traces = selftest.run_all(prefix, workers=args.workers, prune=not args.no_prune, targets=targets)
    for t, tr in traces.items():
        for test, why in tr.not_passed.items():
            print(f"UNMODIFIED {t} does not pass {test}: {why}")
    w = max((len(v.mutant.name) for v in verdicts), default=10)
    for v in verdicts:
        mark = {"caught": "caught", "partly": "PARTLY", "elsewhere": "ELSEWHERE", "crash-only": "CRASH",
                "missed": "MISSED"}[v.status]
        print(f"{mark:9} {v.mutant.target:9} {v.mutant.clause:28} {v.mutant.name.ljust(w)}  {v.mutant.description}")
        failed = v.failed_clauses()
        print("          fails: " + ("; ".join(f"{c} [{', '.join(ps)}]" for c, ps in failed.items()) or "nothing"))
        for p in v.missed:
            print(f"          not caught by property {p}")
        for f in v.crashes:
            print(f"          crash naming no clause in {f.test}: {f.message[:200]}")
    s = selftest.summary(verdicts, traces)
    gaps = [g for g in selftest.coverage_gaps() if g.startswith(args.family or "")]
    bs = s["by_status"]
    print(f"planted bugs: {s['mutants']} ({', '.join(f'{k} {v}' for k, v in s['by_target'].items())}), each run "
          f"against the whole suite in {time.perf_counter() - t0:.0f} s")
    print(f"caught on their own clause: {s['caught']}/{s['mutants']} ({100 * s['fraction']:.1f}%); partly "
          f"{bs['partly']}, only on other clauses {bs['elsewhere']}, only by crashes naming no clause "
          f"{bs['crash-only']}, missed {bs['missed']}")
    print(f"also failing tests of other clauses: {s['also_failing_other_clauses']}; with a crash naming no clause: "
          f"{s['with_crashes_naming_no_clause']}")
    if gaps:
        print(f"properties no planted bug exercises: {', '.join(gaps)}")
    if args.json:
        Path(args.json).write_text(json.dumps({**s, "uncovered_properties": gaps}, indent=2))
    clean = any(tr.not_passed for tr in traces.values())
    return 0 if s["fraction"] == 1.0 and not gaps and not clean else 1


def cmd_docs(args: argparse.Namespace) -> int:
    from .docgen import write_pages

    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: parent directory does not exist")
    changed = write_pages(out)
    print(f"{len(changed)} page(s) written to {out}" + (f": {', '.join(changed)}" if changed else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(prog="diffrl", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"diffrl-ref {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("spec", help="list the spec's clauses with their coverage")
    s.add_argument("--json", action="store_true", help="one JSON object per clause")

    c = sub.add_parser("conform", help="run the conformance suite (extra arguments go to pytest)")
    c.add_argument("--impl", default=DEFAULT_IMPL,
                   help=f"built-in name (see --list) or package.module:object (default: {DEFAULT_IMPL})")
    c.add_argument("--list", action="store_true", help="list the built-in implementations and exit")
    c.add_argument("--dtype", choices=["float64", "float32", "bfloat16"], help="dtype, for adapters that take one")
    c.add_argument("--device", choices=["cpu", "cuda"], help="device, for adapters that take one")
    c.add_argument("--profile", choices=["ci", "thorough"], default="ci", help="hypothesis profile (default: ci)")
    c.add_argument("--report", metavar="PATH", help="write the per-clause report as JSON")
    c.add_argument("--deviations", metavar="PATH", help="known-deviations file (default: the built-in one)")
    c.add_argument("-k", metavar="EXPR", help="only tests matching this pytest -k expression")
    c.add_argument("-n", dest="workers", metavar="N", help="parallel workers (needs pytest-xdist)")
    c.add_argument("--allow-incomplete", action="store_true",
                   help="exit 0 even if some properties were not checked (they are still reported as not-checked)")
    c.add_argument("--seed", type=_count, metavar="S",
                   help="hypothesis seed (--profile thorough draws fresh examples each run; this fixes them)")

    t = sub.add_parser("selftest", help="plant bugs, run the whole suite against each, report where each is caught")
    t.add_argument("--family", default="", help="only the bugs of this spec family")
    t.add_argument("--target", choices=["all", "reference", "fast"], default="all",
                   help="bugs planted in the reference, the production path (float32), or both (default)")
    t.add_argument("-n", dest="workers", type=_positive, default=1, metavar="N", help="worker processes (default 1)")
    t.add_argument("--no-prune", action="store_true",
                   help="re-run every test for every bug, also those that call no patched clause")
    t.add_argument("--json", metavar="PATH", help="write the per-bug results as JSON")

    d = sub.add_parser("docs", help="regenerate docs/clauses/*.rst from spec/")
    d.add_argument("--out", default="docs/clauses", help="output directory (default: docs/clauses)")

    b = sub.add_parser("bench", help="time the production samplers and training step (writes JSON, table, plot)")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 256, 4096], help="batch sizes (default: 1 256 4096)")
    b.add_argument("--steps", type=int, nargs="+", default=[5, 15, 50, 100],
                   help="sampling steps (default: 5 15 50 100)")
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--train-batch", type=int, default=256, help="batch of the training step (default: 256)")
    b.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per configuration (default: 1)")
    b.add_argument("--min-reps", type=int, default=5, help="repetitions per loop at least (default: 5)")
    b.add_argument("--out", default="bench-out", help="output directory for bench.json/.rst/.png")
    b.add_argument("--no-plot", action="store_true", help="skip the plot")

    r = sub.add_parser("train", help="train Diff-SR or SAC online; Diffusion-QL, EDP, DOM2, DoF or MADiff offline "
                                     "(logs, resumable)")
    r.add_argument("algo", choices=TRAIN_ALGOS,
                   help="diffsr (Algorithm 2) or sac (stable-baselines3), online; diffusion-ql or edp, offline "
                        "(--dataset); dom2, dof or madiff, offline multi-agent (--dataset of a partition)")
    r.add_argument("--env", help="online: Gymnasium id (HalfCheetah-v5, ...) or MetaWorld v3 task (reach-v3); "
                                 "offline: taken from the dataset")
    r.add_argument("--dataset", help="offline algorithms: Minari dataset id (diffrl dataset list)")
    r.add_argument("--dataset-root", help="Minari root holding --dataset (default: $MINARI_DATASETS_PATH or "
                                          "Minari's default)")
    r.add_argument("--steps", type=_positive, required=True,
                   help="online: environment steps; offline: gradient steps; in total (resume: to this many)")
    r.add_argument("--seed", type=_count, default=0, help="seed of the run (default: 0)")
    r.add_argument("--out", required=True, help="run folder; the same command again resumes from its checkpoint")
    r.add_argument("--eval-every", type=_positive, default=5000, help="steps between evaluations (default: 5000)")
    r.add_argument("--eval-episodes", type=_positive, default=10, help="episodes per evaluation (default: 10)")
    r.add_argument("--checkpoint-every", type=_positive, default=10_000,
                   help="checkpoint every N steps (online: at the first episode end after them; default: 10000)")
    r.add_argument("--log-every", type=_positive, default=1000, help="steps between train.csv rows (default: 1000)")
    r.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyperparameter (docs/rl.rst lists them), repeatable")
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    r.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--skip-conformance", action="store_true",
                   help="train without first checking the agent's clauses on this device (recorded in config.json)")

    w = sub.add_parser("sweep", help="run a grid of training runs as Ray tasks (resumable; rerun to go on)")
    w.add_argument("grid", help="grid file (YAML: steps, seeds, envs, groups of algo/name/hp)")
    w.add_argument("--out", required=True, help="sweep folder: one run folder per cell, ENV/GROUP/seedSEED")
    w.add_argument("--runs-at-once", type=_positive, help="local Ray: runs at a time (default: CPU cores / threads)")
    w.add_argument("--address", help="join this Ray cluster instead of starting a local instance")
    w.add_argument("--threads", type=_positive, default=1, help="torch CPU threads per run (default: 1)")
    w.add_argument("--skip-conformance", action="store_true",
                   help="train without first checking the agents' clauses (recorded in each config.json)")
    w.add_argument("--groups", nargs="+", metavar="NAME", help="only the cells of these groups")
    w.add_argument("--envs", nargs="+", metavar="ENV", help="only the cells of these environments or datasets")
    w.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="only the cells of these seeds")

    ds = sub.add_parser("dataset", help="offline datasets made here with D4RL's recipe, in Minari's format")
    dsub = ds.add_subparsers(dest="action", required=True)
    dm = dsub.add_parser("make", help="make diffrl/<env>/<kind>-v0 in a Minari root (diffrl_ref/rl/datasets.py)")
    dm.add_argument("--env", required=True, help="Gymnasium id (HalfCheetah-v5, ...), MetaWorld v3 task, or "
                                                 "Multi-Agent MuJoCo partition (HalfCheetah-2x3, Hopper-3x1, Ant-2x4)")
    dm.add_argument("--kind", required=True, help="random, medium, medium-replay, expert or medium-expert")
    dm.add_argument("--out", required=True, metavar="ROOT", help="the Minari root (MINARI_DATASETS_PATH) to write to")
    dm.add_argument("--size", type=_count, metavar="N",
                    help="transitions (per policy for medium-expert; default 1000000, the whole buffer for "
                         "medium-replay)")
    dm.add_argument("--seed", type=_count, default=0, metavar="S",
                    help="seed of the episodes and the actions (default: 0)")
    dm.add_argument("--policy", action="extend", nargs="+", default=[], metavar="RUN_OR_CHECKPOINT",
                    help="diffrl train sac run folder or checkpoint.pt: medium, expert, or medium then expert")
    dm.add_argument("--expert-return", type=float, metavar="R",
                    help="ref_max_score for kinds without an expert policy (default: unset)")
    dm.add_argument("--eval-episodes", type=_count, default=10, metavar="N",
                    help="episodes of the random reference return and of each policy's evaluation (default: 10)")
    dm.add_argument("--no-progress", action="store_true", help="no progress bar")
    dl = dsub.add_parser("list", help="the datasets of a Minari root with kind, size, env and reference scores")
    dl.add_argument("--root", help="Minari root (default: MINARI_DATASETS_PATH, else ~/.minari/datasets)")

    pr = sub.add_parser("profile", help="where an online agent's training time goes (env, act, each update)")
    pr.add_argument("algo", choices=["diffsr", "sac"])
    pr.add_argument("--env", required=True, help="Gymnasium MuJoCo v5 id or MetaWorld v3 task")
    pr.add_argument("--steps", type=_positive, default=2000, help="learning steps timed (default: 2000)")
    pr.add_argument("--learning-starts", type=_positive, default=1000,
                    help="random steps first, not timed (default: 1000)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="agent hyperparameter")
    pr.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    pr.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    pr.add_argument("--json", help="also write the result to this file")

    g = sub.add_parser("plot", help="learning curves and results table from run folders")
    g.add_argument("runs", nargs="+", help="run folders (grouped by environment and algorithm)")
    g.add_argument("--out", default="rl-out",
                   help="output folder for curves.png, results.json, results.rst and runs/ (the runs' logs)")
    g.add_argument("--at", type=_positive, nargs="+", default=[50_000, 100_000, 200_000],
                   help="steps of the results table (default: 50000 100000 200000)")
    g.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="also compare algorithm A with B at the last --at step: per-task bootstrap intervals, "
                        "IQM normalised by the random policy and B (comparison.rst/json)")
    return p


def _train_source(args: argparse.Namespace) -> tuple[str, str, str]:
    """(env, dataset id, dataset root): an online run names its env, an offline run its dataset."""
    from .rl import loop

    if args.algo not in loop.OFFLINE:
        if args.env is None:
            raise CliError(f"{args.algo} trains online: --env is required")
        if args.dataset:
            raise CliError(f"{args.algo} trains online: --dataset is for the offline algorithms "
                           f"({', '.join(loop.OFFLINE)})")
        return args.env, "", ""
    if not args.dataset:
        raise CliError(f"{args.algo} trains offline: --dataset is required (diffrl dataset list)")
    from .rl import datasets

    root = datasets.resolve_root(args.dataset_root)
    env = datasets.env_of(args.dataset, root)
    if args.env is not None and args.env != env:
        raise CliError(f"--env {args.env} differs from the dataset's environment {env}")
    return env, args.dataset, str(root)


def _hp_pairs(items: list[str]) -> dict[str, str]:
    hp: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise CliError(f"--hp expects NAME=VALUE, got {item!r}")
        hp[name] = value
    return hp


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from .rl import envs, loop, profile

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        res = profile.run(args.algo, args.env, args.steps, args.learning_starts, args.seed, _hp_pairs(args.hp),
                          args.device)
    except (loop.RunError, envs.EnvError) as exc:
        raise CliError(str(exc)) from None
    print(f"profile: {args.algo} on {args.env}, {args.steps} learning steps, {res['steps_per_s']:.2f} steps/s "
          f"({res['threads']} threads, {args.device})")
    for phase, share in res["shares"].items():
        print(f"  {phase:<40} {100 * share:5.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .rl import datasets, envs, gate, loop

    hp = _hp_pairs(args.hp)
    try:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            raise CliError("--device cuda: torch sees no CUDA device")
        if args.threads:
            torch.set_num_threads(args.threads)
        resolved = loop.agent_config(args.algo, hp)
        env, dataset, root = _train_source(args)
        cfg = loop.RunConfig(algo=args.algo, env=env, seed=args.seed, steps=args.steps,
                             eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                             checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                             hp={k: getattr(resolved, k) for k in sorted(hp)}, device=args.device,
                             skip_conformance=args.skip_conformance, dataset=dataset, dataset_root=root)
        summary = loop.train(cfg, Path(args.out), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"train: interrupted; the same command resumes {args.out} from its last checkpoint", file=sys.stderr)
        return 130
    except (loop.RunError, envs.EnvError, gate.GateError, datasets.DatasetError) as exc:
        raise CliError(str(exc)) from None
    except ImportError as exc:
        raise CliError(f"diffrl train needs the rl extra ({exc.name} missing): pip install 'diffrl-ref[rl]'") from None
    state = "already complete" if summary.get("already_done") else "done"
    ev = summary.get("last_eval") or {}
    print(f"train: {state}: {summary['steps']} steps in {args.out}"
          + (f", last evaluation return {ev['return_mean']:.1f}, success {ev['success_rate']:.2f}" if ev else ""))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        from .rl import sweep
    except ImportError as exc:
        raise CliError(f"diffrl sweep needs the rl extra ({exc.name} missing): "
                       "pip install 'diffrl-ref[rl,sweep]'") from None
    grid = Path(args.grid)
    try:
        return sweep.main(grid, Path(args.out), args.runs_at_once, args.address, args.threads,
                          skip_conformance=args.skip_conformance, groups=args.groups, envs_=args.envs,
                          seeds=args.seeds)
    except sweep.SweepError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"sweep: interrupted; the same command resumes {args.out}", file=sys.stderr)
        return 130


def cmd_dataset(args: argparse.Namespace) -> int:
    need = "diffrl dataset needs the rl extra ({} missing): pip install 'diffrl-ref[rl]'"
    try:
        from .rl import datasets
    except ImportError as exc:
        raise CliError(need.format(exc.name)) from None
    try:
        if args.action == "list":
            root = datasets.resolve_root(args.root)
            print(datasets.format_table(datasets.list_datasets(root), root))
            return 0
        made = datasets.make(args.env, args.kind, Path(args.out), args.size, args.seed, args.policy,
                             args.expert_return, args.eval_episodes, progress=not args.no_progress)
    except datasets.DatasetError as exc:
        raise CliError(str(exc)) from None
    except ImportError as exc:
        raise CliError(need.format(exc.name)) from None
    except KeyboardInterrupt:
        print("dataset: interrupted; nothing was written under the dataset's id", file=sys.stderr)
        return 130
    ref_max = "unset" if made.ref_max_score is None else f"{made.ref_max_score:.1f}"
    print(f"dataset: wrote {made.dataset_id} ({made.transitions} transitions, {made.episodes} episodes) to {made.path}"
          f"; ref_min_score {made.ref_min_score:.1f}, ref_max_score {ref_max}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .rl import report

    try:
        wrote = report.main([Path(r) for r in args.runs], Path(args.out), args.at,
                            tuple(args.compare) if args.compare else None)
    except report.ReportError as exc:
        raise CliError(str(exc)) from None
    print("plot: wrote " + ", ".join(map(str, wrote)))
    return 0


def cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    for name in ("batch", "steps"):
        bad = [v for v in getattr(args, name) if v < 1]
        if bad:
            raise CliError(f"--{name} must be positive integers, got {bad}")
    if max(args.steps) > 1000:
        raise CliError(f"--steps must be <= 1000 (the schedule has K = 1000), got {max(args.steps)}")
    for name in ("train_batch", "min_reps", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.min_time < 0:
        raise CliError(f"--min-time must be >= 0, got {args.min_time}")
    try:
        import torch
    except ImportError:
        raise CliError("diffrl bench needs torch (pip install diffrl-ref with its dependencies)") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: torch sees no CUDA device")
    from . import bench

    command = "diffrl " + " ".join(argv)
    out = Path(args.out)
    bench.main(args.batch, args.steps, args.device, args.threads, args.train_batch, out, args.min_time,
               args.min_reps, command, args.no_plot)
    wrote = [out / "bench.json", out / "bench.rst"] + ([] if args.no_plot else [out / "bench.png"])
    print("bench: wrote " + ", ".join(map(str, wrote)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "conform":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "spec":
            return cmd_spec(args)
        if args.command == "conform":
            return cmd_conform(args, extra)
        if args.command == "selftest":
            return cmd_selftest(args)
        if args.command == "bench":
            return cmd_bench(args, list(argv if argv is not None else sys.argv[1:]))
        if args.command == "train":
            return cmd_train(args)
        if args.command == "plot":
            return cmd_plot(args)
        if args.command == "profile":
            return cmd_profile(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "dataset":
            return cmd_dataset(args)
        return cmd_docs(args)
    except CliError as exc:
        print(f"diffrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
