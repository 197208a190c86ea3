"""Diffusion-QL training speed and action-selection latency: ours against the official code, on CPU.

How to run (repository root, the project's venv active; about 4-5 minutes on a loaded 2-core machine)::

    python docs/offline/speed.py                    # defaults: 5 rounds of 200 steps, 1 torch thread
    python docs/offline/speed.py --threads 2 --rounds 3 --out /tmp/speed

The official code is Zhendong-Wang/Diffusion-Policies-for-Offline-RL at commit d871f5c, unmodified.
``--official DIR`` is a plain copy of it (default /tmp/official-dql); if DIR does not exist it is
exported from the bare git mirror ``--mirror`` (``git archive HEAD | tar -x``), whose HEAD commit is
recorded. Only ``agents.ql_diffusion`` and ``utils.data_sampler`` are imported (main.py imports gym and
d4rl and is not used). ``utils/logger.py`` imports ``tabulate`` (the repository ships its own
``tabulate.py`` at its root, which is found first on sys.path) and ``dateutil``; a stub is put in
``sys.modules`` only for a module that cannot be imported, and ``speed.json`` lists every stub used.

What it measures. Both agents are built in this one process on the same random data with Hopper-v5 shapes
(100,000 rows of 11-dim observations and 3-dim actions in [-1, 1], standard-normal rewards, about 1%
terminals): ours is ``DiffusionQLAgent(Transitions, DiffusionQLConfig())`` (VP schedule, K = 5, grad_norm
9.0, batch 256); the official one is ``Diffusion_QL`` with main.py's hopper-medium row and defaults (lr
3e-4, eta 1.0, max_q_backup False, gn 9.0, T 5, beta_schedule 'vp', discount 0.99, tau 0.005, lr_decay
with lr_maxt 2000) fed by its ``Data_Sampler`` (reward_tune 'no'), batch 256. After 20 warm-up steps each,
R rounds alternate (A, B, A, B, ...): N gradient steps of ours (``agent.update()``, one critic step, one
policy step, EMA and target updates, value checks on as the training loop runs it), then N of the official
code (``agent.train(sampler, iterations=N, batch_size=256)``, the same three parts plus its per-step loss
bookkeeping). Reported: the median gradient steps/s of each, the per-round ratio ours/official (median,
min-max), and the same per second of process CPU time (``time.process_time()``, less inflated than the
wall clock when other processes share the CPU). Then action selection at batch 1, both drawing 50
candidate actions and choosing by softmax of the target Q: after 20 warm-up calls each, 200 calls of
``ours.act(obs, True)`` and of ``official.sample_action(obs)``, alternating call by call, median latency
(wall clock and process CPU time, with quartiles). Last, a torch.profiler pass over P steps of each
(interleaved the same way, not timed for the table) gives the self CPU time per step in the dense layers
and in Mish, and the number of Mish calls per step. All in float32 on the CPU with
``torch.set_num_threads`` (``--threads``, default 1). Writes ``speed.json`` (every number, the command,
the date in UTC, the CPU model, versions, the load average before and after) and ``speed.rst`` (a table
and a note) to ``--out`` (default: this script's folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MIRROR = "/work/.mirror/Zhendong-Wang+Diffusion-Policies-for-Offline-RL/repo"
OFFICIAL_COMMIT = "d871f5c"
OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, each N steps of ours then N of the official")
    p.add_argument("--steps", type=int, default=200, help="N: gradient steps per implementation per round")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up steps (and act calls) of each")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rows", type=int, default=100_000, help="dataset rows")
    p.add_argument("--latency-calls", type=int, default=200, help="timed action selections of each")
    p.add_argument("--profile-steps", type=int, default=20, help="profiled steps of each (0: no profile)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official", default="/tmp/official-dql", help="a copy of the official repository")
    p.add_argument("--mirror", default=MIRROR, help="bare git mirror of the official repository")
    p.add_argument("--out", default=str(HERE), help="folder for speed.json and speed.rst")
    return p.parse_args()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()


def official_source(official: Path, mirror: str) -> str | None:
    """Export the mirror's HEAD into ``official`` if it is missing; the mirror's commit (None: no mirror)."""
    commit = git("-C", mirror, "rev-parse", "HEAD") if Path(mirror).exists() else None
    if not official.exists():
        if commit is None:
            sys.exit(f"no official copy at {official} and no mirror at {mirror}")
        official.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", mirror, "archive", "HEAD"], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(official)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            sys.exit("git archive failed")
    return commit


def stub_missing() -> list[str]:
    """Minimal stand-ins for third-party modules utils/logger.py imports, only where one is missing."""
    stubs = []
    try:
        importlib.import_module("dateutil.tz")
    except ImportError:  # used only in logger timestamps, never during training
        dateutil, tz = types.ModuleType("dateutil"), types.ModuleType("dateutil.tz")
        tz.tzlocal = lambda: datetime.timezone.utc  # type: ignore[attr-defined]
        dateutil.tz = tz  # type: ignore[attr-defined]
        sys.modules.update({"dateutil": dateutil, "dateutil.tz": tz})
        stubs.append("dateutil, dateutil.tz (tz.tzlocal() -> UTC)")
    try:
        importlib.import_module("tabulate")  # the official repository's own tabulate.py comes first
    except ImportError:  # used only by Logger.dump_tabular, never during training
        tab = types.ModuleType("tabulate")
        tab.tabulate = lambda rows, *a, **k: "\n".join(" ".join(map(str, r)) for r in rows)  # type: ignore[attr-defined]
        sys.modules["tabulate"] = tab
        stubs.append("tabulate (tabulate.tabulate joins rows)")
    return stubs


def make_data(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random arrays with Hopper-v5 shapes, float32, D4RL key names."""
    rng = np.random.default_rng(seed)
    return {"observations": rng.standard_normal((rows, OBS_DIM), dtype=np.float32),
            "actions": rng.uniform(-1.0, 1.0, (rows, ACT_DIM)).astype(np.float32),
            "next_observations": rng.standard_normal((rows, OBS_DIM), dtype=np.float32),
            "rewards": rng.standard_normal(rows, dtype=np.float32),
            "terminals": (rng.random(rows) < 0.01).astype(np.float32)}


def quantiles(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "q25": float(np.percentile(xs, 25)), "q75": float(np.percentile(xs, 75))}


def profile(ours: Any, official: Any, sampler: Any, steps: int, batch: int) -> dict[str, Any]:
    """Self CPU time per op over ``steps`` steps of each: the time in the dense layers and in Mish per step.

    Mish is ATen's kernel in the official code (aten::mish, aten::mish_backward: self time) and
    fast.nets.Mish in ours (the autograd function's events _OneExpMish and _OneExpMishBackward: their total
    time, which includes the elementwise ops they run)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dense = ("aten::mm", "aten::addmm")
    mish_self, mish_total = ("aten::mish", "aten::mish_backward"), ("_OneExpMish", "_OneExpMishBackward")
    out: dict[str, Any] = {}
    for name, run in (("ours", lambda: [ours.update() for _ in range(steps)]),
                      ("official", lambda: official.train(sampler, iterations=steps, batch_size=batch))):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        ev = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in ev.values())
        mish_us = (sum(ev[k].self_cpu_time_total for k in mish_self if k in ev)
                   + sum(ev[k].cpu_time_total for k in mish_total if k in ev))
        out[name] = {
            "steps": steps,
            "self_cpu_ms_per_step": total / 1000 / steps,
            "dense_ms_per_step": sum(ev[k].self_cpu_time_total for k in dense if k in ev) / 1000 / steps,
            "mish_ms_per_step": mish_us / 1000 / steps,
            "calls_per_step": {k: ev[k].count / steps for k in (*dense, *mish_self, *mish_total) if k in ev},
            "isfinite_calls_per_step": ev["aten::isfinite"].count / steps if "aten::isfinite" in ev else 0,
        }
    return out


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    official_dir = Path(args.official).resolve()
    # the code measured: this checkout's commit and whether diffrl_ref/ differs from it, taken before importing
    ours_commit = git("-C", str(ROOT), "rev-parse", "HEAD")
    ours_clean = git("-C", str(ROOT), "status", "--porcelain", "--", "diffrl_ref") == ""
    commit = official_source(official_dir, args.mirror)

    sys.path.insert(0, str(ROOT))
    from diffrl_ref.bench import cpu_model
    from diffrl_ref.rl.datasets import Transitions
    from diffrl_ref.rl.diffusion_ql import DiffusionQLAgent, DiffusionQLConfig

    sys.path.insert(0, str(official_dir))
    stubs = stub_missing()
    from agents.ql_diffusion import Diffusion_QL  # the official agent, unmodified
    from utils.data_sampler import Data_Sampler  # the official sampler, unmodified

    tabulate_from = getattr(sys.modules.get("tabulate"), "__file__", None)
    # sample_action calls F.softmax(q) without dim (deprecated, same result for a 1-D q)
    warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax")

    data = make_data(args.rows, args.seed)
    transitions = Transitions(dataset_id="random/hopper-shapes-v0", env="Hopper-v5",
                              observations=data["observations"], actions=data["actions"],
                              rewards=data["rewards"], next_observations=data["next_observations"],
                              terminals=data["terminals"], ref_min_score=None, ref_max_score=None)
    cfg = DiffusionQLConfig(batch_size=args.batch)
    torch.manual_seed(args.seed)
    ours = DiffusionQLAgent(transitions, cfg)
    # main.py's hopper-medium-v2 row and argument defaults (max_action = action_space.high[0] = 1.0)
    official_kwargs = {"state_dim": OBS_DIM, "action_dim": ACT_DIM, "max_action": 1.0, "device": "cpu",
                       "discount": 0.99, "tau": 0.005, "max_q_backup": False, "beta_schedule": "vp",
                       "n_timesteps": 5, "eta": 1.0, "lr": 3e-4, "lr_decay": True, "lr_maxt": 2000,
                       "grad_norm": 9.0}
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002  (the official code draws its critic choice from it)
    official = Diffusion_QL(**official_kwargs)
    sampler = Data_Sampler(data, "cpu", "no")
    n_params = {"ours_policy": sum(p.numel() for p in ours.policy.parameters()),
                "official_policy": sum(p.numel() for p in official.actor.parameters()),
                "ours_critic": sum(p.numel() for p in ours.critic.parameters()),
                "official_critic": sum(p.numel() for p in official.critic.parameters())}
    assert n_params["ours_policy"] == n_params["official_policy"], n_params
    assert n_params["ours_critic"] == n_params["official_critic"], n_params

    # ---- gradient steps ----
    for _ in range(args.warmup):
        ours.update()
    official.train(sampler, iterations=args.warmup, batch_size=args.batch)
    sps: dict[str, list[float]] = {"ours": [], "official": []}
    cps: dict[str, list[float]] = {"ours": [], "official": []}  # steps per second of process CPU time
    load_rounds = []
    for r in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            ours.update()
        t1, c1 = time.perf_counter(), time.process_time()
        official.train(sampler, iterations=args.steps, batch_size=args.batch)
        t2, c2 = time.perf_counter(), time.process_time()
        sps["ours"].append(args.steps / (t1 - t0))
        sps["official"].append(args.steps / (t2 - t1))
        cps["ours"].append(args.steps / (c1 - c0))
        cps["official"].append(args.steps / (c2 - c1))
        load_rounds.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds}: ours {sps['ours'][-1]:.2f} steps/s, "
              f"official {sps['official'][-1]:.2f} steps/s, load {load_rounds[-1]:.2f}", flush=True)
    ratios = [o / f for o, f in zip(sps["ours"], sps["official"], strict=True)]
    cpu_ratios = [o / f for o, f in zip(cps["ours"], cps["official"], strict=True)]

    # ---- action selection at batch 1 ----
    obs = data["observations"][0].copy()
    a_ours, a_off = ours.act(obs, True), official.sample_action(obs)
    assert a_ours.shape == a_off.shape == (ACT_DIM,), (a_ours.shape, a_off.shape)
    for _ in range(args.warmup):
        ours.act(obs, True)
        official.sample_action(obs)
    lat: dict[str, list[float]] = {"ours": [], "official": []}
    lat_cpu: dict[str, list[float]] = {"ours": [], "official": []}
    for _ in range(args.latency_calls):
        t0, c0 = time.perf_counter(), time.process_time()
        ours.act(obs, True)
        t1, c1 = time.perf_counter(), time.process_time()
        official.sample_action(obs)
        t2, c2 = time.perf_counter(), time.process_time()
        lat["ours"].append(1000 * (t1 - t0))
        lat["official"].append(1000 * (t2 - t1))
        lat_cpu["ours"].append(1000 * (c1 - c0))
        lat_cpu["official"].append(1000 * (c2 - c1))
    print(f"act at batch 1: ours {statistics.median(lat['ours']):.2f} ms, "
          f"official {statistics.median(lat['official']):.2f} ms (medians)", flush=True)

    prof = profile(ours, official, sampler, args.profile_steps, args.batch) if args.profile_steps > 0 else None
    load_after = os.getloadavg()
    finished = datetime.datetime.now(datetime.timezone.utc)

    steps = {k: quantiles(v) for k, v in sps.items()}
    ratio = quantiles(ratios)
    cpu_steps = {k: quantiles(v) for k, v in cps.items()}
    latency = {k: quantiles(v) for k, v in lat.items()}
    latency_cpu = {k: quantiles(v) for k, v in lat_cpu.items()}
    lat_ratio = latency["official"]["median"] / latency["ours"]["median"]
    result: dict[str, Any] = {
        "what": "Diffusion-QL gradient steps/s and batch-1 action-selection latency, ours vs the official code",
        "command": " ".join(["python", *(sys.argv if sys.argv[0] else ["docs/offline/speed.py"])]),
        "date_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
        "finished_utc": finished.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "ours_commit": ours_commit,
        "ours_diffrl_ref_unmodified": ours_clean,
        "official_repo": "Zhendong-Wang/Diffusion-Policies-for-Offline-RL",
        "official_commit": commit,
        "official_dir": str(official_dir),
        "official_tabulate_from": tabulate_from,
        "stubs": stubs,
        "same_process": True,
        "interleaved": "rounds alternate N steps of ours then N of the official; act calls alternate one by one",
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "load_average_1min_after_each_round": load_rounds,
        "settings": {"rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
                     "batch_size": args.batch, "rows": args.rows, "obs_dim": OBS_DIM, "act_dim": ACT_DIM,
                     "terminal_fraction": float(data["terminals"].mean()), "latency_calls": args.latency_calls,
                     "seed": args.seed, "device": "cpu", "dtype": "float32",
                     "ours_config": dataclasses.asdict(cfg),
                     "official_kwargs": official_kwargs, "candidate_actions": cfg.eval_samples},
        "parameters": n_params,
        "steps_per_s": {**steps, "per_round": sps},
        "ratio_ours_over_official": {**ratio, "per_round": ratios,
                                     "of_medians": steps["ours"]["median"] / steps["official"]["median"]},
        "act_latency_ms": {**latency, "per_call": lat},
        "act_speed_ratio_official_ms_over_ours_ms": lat_ratio,
        "cpu_time": "time.process_time() of this process, which a CPU shared with other processes inflates less "
                    "than the wall clock",
        "steps_per_cpu_s": {**cpu_steps, "per_round": cps},
        "cpu_ratio_ours_over_official": {**quantiles(cpu_ratios), "per_round": cpu_ratios},
        "act_cpu_ms": {**latency_cpu, "per_call": lat_cpu},
        "act_cpu_speed_ratio_official_ms_over_ours_ms": latency_cpu["official"]["median"]
        / latency_cpu["ours"]["median"],
        "profile": prof,
        "target": "ours at least 1.5 times the official code's gradient steps/s (issue 19, item 7)",
        "target_met": ratio["median"] >= 1.5,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "speed.rst").write_text(render(result))
    print(f"ratio ours/official {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}); "
          f"by CPU time {result['cpu_ratio_ours_over_official']['median']:.2f}; "
          f"target 1.5x {'met' if result['target_met'] else 'not met'}; wrote {out}/speed.json, speed.rst")


def conditions(res: dict[str, Any]) -> str:
    """Quiet or loaded, from the 1-minute load average after each round (this process counts for its threads)."""
    peak = max(res["load_average_1min_after_each_round"])
    others = peak - res["torch_threads"]
    if others > 0.5:
        return (f"Measured under load: other processes ran on this {res['cpu_count']}-core machine (1-minute load "
                f"average up to {peak:.2f} during the rounds, this process counting for about "
                f"{res['torch_threads']}), so the absolute numbers are low and vary from round to round; "
                "the per-call wall times are then bimodal (the process has a core to itself or shares one), "
                "which can move a median between the two modes: compare the quartiles and the CPU-time row.")
    return (f"Measured on a quiet machine: nothing else ran on this {res['cpu_count']}-core machine (1-minute "
            f"load average at most {peak:.2f} during the rounds, this process included).")


def render(res: dict[str, Any]) -> str:
    s, st = res["settings"], res["steps_per_s"]
    rt, la = res["ratio_ours_over_official"], res["act_latency_ms"]
    lb, la_ = res["load_average_before"], res["load_average_after"]
    commit = (res["official_commit"] or OFFICIAL_COMMIT)[:7]
    prof = res["profile"]
    prof_text = ""
    if prof:
        po, pf = prof["ours"], prof["official"]
        def mish_calls(p: dict[str, Any]) -> str:
            c = p["calls_per_step"]
            fwd = c.get("aten::mish", 0) + c.get("_OneExpMish", 0)
            bwd = c.get("aten::mish_backward", 0) + c.get("_OneExpMishBackward", 0)
            return f"{fwd:.0f} forward and {bwd:.0f} backward"

        prof_text = (
            f" A torch.profiler pass over {po['steps']} steps of each: ours {po['self_cpu_ms_per_step']:.1f} ms of "
            f"self CPU time per step, of which {po['dense_ms_per_step']:.1f} ms in the dense layers (mm, addmm) and "
            f"{po['mish_ms_per_step']:.1f} ms in Mish (fast.nets.Mish, {mish_calls(po)} calls); the official code "
            f"{pf['self_cpu_ms_per_step']:.1f} ms, of which {pf['dense_ms_per_step']:.1f} ms dense and "
            f"{pf['mish_ms_per_step']:.1f} ms in ATen's Mish ({mish_calls(pf)} calls). The two evaluate the same "
            "dense layers; ours evaluates Mish from one exponential with a hand-written derivative "
            "(tests/test_fast.py checks it against mish in float64 to a few ulps), ATen from exp, log1p and tanh. "
            f"Ours also runs {po['isfinite_calls_per_step']:.0f} isfinite value checks per step (the training "
            "loop runs with checks on)."
        )
    stub_text = ("No module had to be stubbed: the official utils/logger.py finds the tabulate.py the "
                 "repository ships and the installed python-dateutil" if not res["stubs"]
                 else "Stubbed (missing here, used only by the official logger): " + "; ".join(res["stubs"]))

    def rng(q: dict[str, float], fmt: str) -> str:
        return f"{q['median']:{fmt}} ({q['min']:{fmt}}-{q['max']:{fmt}})"

    def iqr(q: dict[str, float]) -> str:
        return f"{q['median']:.2f} ({q['q25']:.2f}-{q['q75']:.2f})"

    cs, cr, lc = res["steps_per_cpu_s"]["ours"], res["cpu_ratio_ours_over_official"], res["act_cpu_ms"]

    met = "met" if res["target_met"] else "not met"
    text = f""":orphan:

.. generated by ``python docs/offline/speed.py``; do not edit (raw numbers: ``docs/offline/speed.json``)

Diffusion-QL speed: ours against the official code
==================================================

Measured {res['date_utc']} UTC on {res['cpu_model']} ({res['cpu_count']} cores), CPU, float32,
{res['torch_threads']} torch thread(s), torch {res['torch']}, Python {res['python']}; official code
Zhendong-Wang/Diffusion-Policies-for-Offline-RL at {commit}. Command: ``{res['command']}``.
Load average (1, 5, 15 min) {lb[0]:.2f}, {lb[1]:.2f}, {lb[2]:.2f} before and {la_[0]:.2f}, {la_[1]:.2f},
{la_[2]:.2f} after.

.. list-table:: Hopper-v5 shapes (11-dim states, 3-dim actions), {s['rows']:,} random rows, batch {s['batch_size']}
   :header-rows: 1
   :widths: 46 18 18 18

   * - Measure
     - ours
     - official
     - speed ratio ours : official (> 1: ours faster)
   * - gradient steps/s (wall clock), median of {s['rounds']} rounds of {s['steps_per_round']} steps (min-max);
       ratio: median of the per-round ratios (min-max)
     - {rng(st['ours'], '.2f')}
     - {rng(st['official'], '.2f')}
     - {rng(rt, '.2f')}
   * - gradient steps per second of process CPU time, same rounds (min-max)
     - {rng(cs, '.2f')}
     - {rng(res['steps_per_cpu_s']['official'], '.2f')}
     - {rng(cr, '.2f')}
   * - action selection at batch 1 ({s['candidate_actions']} candidates), wall-clock ms, median of
       {s['latency_calls']} calls (quartiles); ratio of the medians
     - {iqr(la['ours'])}
     - {iqr(la['official'])}
     - {res['act_speed_ratio_official_ms_over_ours_ms']:.2f}
   * - the same calls, process CPU ms, median (quartiles); ratio of the medians
     - {iqr(lc['ours'])}
     - {iqr(lc['official'])}
     - {res['act_cpu_speed_ratio_official_ms_over_ours_ms']:.2f}

The issue's target, ours at least 1.5 times as many gradient steps per second as the official code, is
**{met}** (median per-round ratio {rt['median']:.2f} by the wall clock, {cr['median']:.2f} by CPU time).

Note. {conditions(res)} Both implementations run in the same process, on the same random data, after
{s['warmup']} warm-up steps each, and the rounds alternate ({s['steps_per_round']} steps of ours, then
{s['steps_per_round']} of the official code, and so on), as do the action-selection calls, one by one; the
ratio is taken within each round. The process CPU time (``time.process_time()``) counts only the time this
process ran, so it is less inflated by other processes than the wall clock (cache sharing still affects it).
The official code runs unmodified (only agents/ql_diffusion.py and utils/data_sampler.py are imported;
main.py needs gym and d4rl). {stub_text}. Per gradient step the two evaluate the same networks the same
number of times (five EMA-policy calls for the target action, the target and online critics, one
noise-prediction call, five policy calls for a^0 and the critics at a^0), but the official ``train``
builds autograd graphs for the target computation (the EMA sampling chain and the target critics run
without ``torch.no_grad()``; the target is detached afterwards), back-propagates the policy loss into the
maximised critic's parameters as well (gradients the next critic step zeroes), computes four ``.item()`` values per
step for its loss lists, looks the schedule's coefficients up with ``gather`` at every chain step, and
steps its cosine learning-rate schedule once per ``train`` call (here once per round, in main.py once
per 1,000-step epoch); ours runs the target under ``torch.no_grad()``, freezes the critics for the
policy step, uses precomputed scalar coefficients and runs the clauses' input checks.{prof_text}
"""
    return "\n\n".join(block if block.lstrip().startswith(("..", ":", "=")) or "\n   " in block or "\n=" in block
                         else textwrap.fill(" ".join(block.split()), width=110, break_on_hyphens=False)
                         for block in text.split("\n\n"))


if __name__ == "__main__":
    main()
