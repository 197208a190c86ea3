"""EDP against Diffusion-QL per gradient step, ours both, on CPU: the speed-up EDP's paper claims.

How to run (repository root, the project's venv active; about 5 minutes on a loaded 2-core machine)::

    python docs/offline/edp_speed.py                 # 3 rounds, 1 torch thread
    python docs/offline/edp_speed.py --threads 2 --out /tmp/edp-speed

EDP's claim (Kang et al., NeurIPS 2023) is a training speed-up over Diffusion-QL at the same number of
diffusion steps K: Diffusion-QL back-propagates the Q term through the whole K-step sampling chain, EDP
through one noising step (a0_hat). What it measures, in one process on the same random data with
Hopper-v5 shapes (``speed.py``'s data, 100,000 rows): gradient steps per second of

- ``diffusion-ql`` at its paper's K = 5 (``DiffusionQLConfig()``),
- ``edp`` at its paper's K = 1000 (``EDPConfig()``, ELBO likelihood, IQL critics),
- ``diffusion-ql`` at K = 1000 (``DiffusionQLConfig(K=1000)``, the paper's same-K comparison; few steps, it
  takes seconds each),

in R rounds that interleave the three (N steps each of the first two, N_1000 of the third, after 3 warm-up
steps each), wall clock and process CPU time; then action selection at batch 1 with 50 candidates
(Diffusion-QL: the K = 5 chain; EDP: 15 DPM-Solver++(2M) steps), median of C calls after warm-up,
interleaved; and one action in each of E evaluation episodes, in lockstep (``act_batch``) and one after the
other. Writes ``edp_speed.json`` and ``edp_speed.rst`` to ``--out`` (default: this script's folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from speed import make_data  # noqa: E402

from diffrl_ref.bench import cpu_model, load_conditions  # noqa: E402
from diffrl_ref.rl.datasets import Transitions  # noqa: E402
from diffrl_ref.rl.diffusion_ql import DiffusionQLAgent, DiffusionQLConfig  # noqa: E402
from diffrl_ref.rl.edp import EDPAgent, EDPConfig  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="N: steps of Diffusion-QL (K=5) and EDP per round")
    p.add_argument("--steps-1000", type=int, default=3, help="steps of Diffusion-QL at K = 1000 per round")
    p.add_argument("--latency-calls", type=int, default=100)
    p.add_argument("--eval-episodes", type=int, default=10, help="E: episodes of an evaluation (the default)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA is synchronised before each clock read)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE))
    return p.parse_args()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, n: int, device: str) -> tuple[float, float]:
    """(steps per wall second, steps per process-CPU second) of n calls."""
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    sync(device)
    return n / (time.perf_counter() - w), n / max(time.process_time() - c, 1e-9)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = make_data(args.rows, args.seed)
    data = Transitions("speed/hopper/random-v0", "Hopper-v5", d["observations"], d["actions"], d["rewards"],
                       d["next_observations"], d["terminals"], 0.0, 1.0)
    load = [os.getloadavg()]
    dev = args.device
    agents = {"Diffusion-QL, K = 5": (DiffusionQLAgent(data, DiffusionQLConfig(), dev), args.steps),
              "EDP, K = 1000": (EDPAgent(data, EDPConfig(), dev), args.steps),
              "Diffusion-QL, K = 1000": (DiffusionQLAgent(data, DiffusionQLConfig(K=1000), dev), args.steps_1000)}
    for agent, _ in agents.values():
        for _ in range(3):
            agent.update()
    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in agents}
    for _ in range(args.rounds):
        for name, (agent, n) in agents.items():
            rounds[name].append(timed(agent.update, n, dev))
    obs = d["observations"][0]
    acting = {"Diffusion-QL, K = 5": agents["Diffusion-QL, K = 5"][0], "EDP, K = 1000": agents["EDP, K = 1000"][0]}
    for agent in acting.values():
        for _ in range(10):
            agent.act(obs, True)
    lat: dict[str, list[float]] = {k: [] for k in acting}
    for _ in range(args.latency_calls):
        for name, agent in acting.items():
            t = time.perf_counter()
            agent.act(obs, True)  # returns a host array: the device has finished
            lat[name].append(1e3 * (time.perf_counter() - t))
    # an evaluation step: one action in each of E episodes, in lockstep (act_batch, as the loop evaluates) and
    # one after the other (act)
    states = d["observations"][:args.eval_episodes]
    rows_e = list(range(len(states)))
    ev: dict[str, dict[str, list[float]]] = {k: {"lockstep": [], "sequential": []} for k in acting}
    for _ in range(args.latency_calls // 10 + 1):
        for name, agent in acting.items():
            t = time.perf_counter()
            agent.act_batch(states, rows_e)
            ev[name]["lockstep"].append(1e3 * (time.perf_counter() - t))
            t = time.perf_counter()
            for s_i in states:
                agent.act(s_i, True)
            ev[name]["sequential"].append(1e3 * (time.perf_counter() - t))
    load.append(os.getloadavg())
    wall = {k: statistics.median(r[0] for r in v) for k, v in rounds.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in rounds.items()}
    record = {
        "command": "python docs/offline/edp_speed.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "python": platform.python_version(), "load_before_after": load, "rounds": args.rounds,
        "steps": {k: n for k, (_, n) in agents.items()}, "steps_per_s_wall": wall, "steps_per_s_cpu": cpu,
        "per_round": rounds, "act_ms_median": {k: statistics.median(v) for k, v in lat.items()},
        "eval_episodes": args.eval_episodes,
        "eval_step_ms_median": {k: {m: statistics.median(v) for m, v in d_.items()} for k, d_ in ev.items()},
        "edp_over_dql_same_k_wall": wall["EDP, K = 1000"] / wall["Diffusion-QL, K = 1000"],
        "edp_over_dql_k5_wall": wall["EDP, K = 1000"] / wall["Diffusion-QL, K = 5"],
    }
    out = Path(args.out)
    (out / "edp_speed.json").write_text(json.dumps(record, indent=1) + "\n")
    rows = [("gradient steps/s, wall clock (median of rounds)", wall),
            ("gradient steps per second of process CPU time", cpu)]
    lines = [":orphan:", "", ".. generated by ``python docs/offline/edp_speed.py``; do not edit "
             "(raw numbers: ``docs/offline/edp_speed.json``)", "", "EDP against Diffusion-QL per gradient step",
             "=" * 42, "",
             f"Measured {record['date']} on {record['cpu']} ({record['cores']} cores), device "
             f"{record['device']}, float32, "
             f"{args.threads} torch thread(s), torch {torch.__version__}. Command: ``{record['command'].strip()}``. "
             f"Load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load[0])} before and "
             f"{', '.join(f'{x:.2f}' for x in load[1])} after ({load_conditions(load[1][0], args.threads)}).", "",
             f".. list-table:: Hopper-v5 shapes, {args.rows:,} random rows, batch 256, "
             f"{args.rounds} interleaved rounds", "   :header-rows: 1", "",
             "   * - Measure"] + [f"     - {k}" for k in agents]
    for title, vals in rows:
        lines += [f"   * - {title}"] + [f"     - {vals[k]:.3g}" for k in agents]
    lines += ["   * - action selection at batch 1 (50 candidates), wall-clock ms, median"] + \
        [f"     - {record['act_ms_median'][k]:.2f}" if k in lat else "     - —" for k in agents]
    es = record["eval_step_ms_median"]
    for mode, what in (("lockstep", "in lockstep (one chain for all, as the loop evaluates)"),
                       ("sequential", "one after the other")):
        lines += [f"   * - one action in each of {args.eval_episodes} evaluation episodes, {what}, wall-clock ms, "
                  "median"] + [f"     - {es[k][mode]:.1f}" if k in es else "     - —" for k in agents]
    lines += ["", f"At the same K = 1000, an EDP step is {record['edp_over_dql_same_k_wall']:.0f} times as fast as a "
              f"Diffusion-QL step here (wall clock); against Diffusion-QL at its own K = 5 the ratio is "
              f"{record['edp_over_dql_k5_wall']:.2f}. EDP's README reports a 25-fold training speed-up (5 days of "
              "training down to 5 hours) for its own code; that is their number, not measured here.", ""]
    (out / "edp_speed.rst").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
