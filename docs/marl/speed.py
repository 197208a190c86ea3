"""DOM2, DoF and MADiff per gradient step and per joint action, at their defaults, on CPU (issue 20, item 8).

How to run (repository root, the project's venv active; about 10 minutes on a loaded 2-core machine)::

    python docs/marl/speed.py                  # 3 rounds, 1 torch thread
    python docs/marl/speed.py --threads 2 --out /tmp/marl-speed

What it measures, in one process on the same random data with HalfCheetah-2x3's shapes (the partition's own
local views and action split, read from gymnasium-robotics; 100,000 rows of random states and actions):
gradient steps per second of each agent at its defaults (``DOM2Config()``, ``DoFConfig()``,
``MADiffConfig()``) and of DoF with ``schedule=vp, K=5`` (the results' setting on CPU), in R rounds that
interleave the four (N steps each, N_dof for DoF at its default, whose K = 100 chain makes a step take
seconds), after 2 warm-up steps each, wall clock and process CPU time; then the
latency of one joint action (every agent acting on its own view of one state: what evaluation calls at each
environment step), median of C calls, interleaved; and the cost of one step of an evaluation of E episodes
(MADiff plays them in lockstep with one plan for all, ``envs.evaluate_batched``; the others act once per
episode). Writes ``speed.json`` and ``speed.rst`` to ``--out``
(default: this script's folder).
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

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from diffrl_ref.bench import cpu_model, load_conditions  # noqa: E402
from diffrl_ref.rl import marl  # noqa: E402
from diffrl_ref.rl.datasets import JointTransitions  # noqa: E402
from diffrl_ref.rl.dof import DoFAgent, DoFConfig  # noqa: E402
from diffrl_ref.rl.dom2 import DOM2Agent, DOM2Config  # noqa: E402
from diffrl_ref.rl.madiff import MADiffAgent, MADiffConfig  # noqa: E402

PARTITION = "HalfCheetah-2x3"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="N: gradient steps of DOM2 and MADiff per round")
    p.add_argument("--steps-dof", type=int, default=2, help="gradient steps of DoF per round")
    p.add_argument("--latency-calls", type=int, default=20)
    p.add_argument("--eval-episodes", type=int, default=10, help="E: episodes of an evaluation (the default)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--episode", type=int, default=1000, help="rows per episode of the random data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE))
    return p.parse_args()


def make_data(rows: int, episode: int, seed: int) -> JointTransitions:
    """Random states and actions with the partition's shapes; episodes of ``episode`` rows (next_state of a row
    is the state of the next row inside an episode, as in a dataset made by diffrl dataset make)."""
    env = marl.make(PARTITION)
    single = marl.partition(PARTITION).single
    import gymnasium as gym

    ds, da = gym.make(single).observation_space.shape[0], gym.make(single).action_space.shape[0]
    views, split = marl.view_indices(env, ds), marl.action_indices(env, da)
    rng = np.random.default_rng(seed)
    f32 = np.float32
    n_ep = rows // episode
    obs = rng.normal(size=(n_ep, episode + 1, ds)).astype(f32)
    state, nxt = obs[:, :-1].reshape(-1, ds), obs[:, 1:].reshape(-1, ds)
    return JointTransitions(f"speed/{PARTITION.lower()}/random-v0", PARTITION, list(views), state, nxt,
                            {k: state[:, v] for k, v in views.items()}, {k: nxt[:, v] for k, v in views.items()},
                            rng.uniform(-1, 1, (len(state), da)).astype(f32), split, views,
                            rng.normal(size=len(state)).astype(f32), np.zeros(len(state), f32), 0.0, 1.0)


def timed(fn: Any, n: int) -> tuple[float, float]:
    """(steps per wall second, steps per process-CPU second) of n calls."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - w), n / max(time.process_time() - c, 1e-9)


def parameters(agent: Any) -> int:
    return sum(p.numel() for m in agent.modules().values() if isinstance(m, torch.nn.Module)
               for p in m.parameters() if p.requires_grad)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = make_data(args.rows, args.episode, args.seed)
    load = [os.getloadavg()]
    agents = {"DOM2": (DOM2Agent(data, DOM2Config()), args.steps),
              "DoF": (DoFAgent(data, DoFConfig()), args.steps_dof),
              # the setting of the results on CPU: Diffusion-QL's VP schedule, K = 5 (docs/marl/dof.inc)
              "DoF (schedule=vp, K=5)": (DoFAgent(data, DoFConfig(schedule="vp", K=5)), args.steps),
              "MADiff": (MADiffAgent(data, MADiffConfig()), args.steps)}
    for agent, _ in agents.values():
        for _ in range(2):
            agent.update()
    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in agents}
    for _ in range(args.rounds):
        for name, (agent, n) in agents.items():
            rounds[name].append(timed(agent.update, n))
    s = data.state[0]
    for agent, _ in agents.values():
        for _ in range(2):
            agent.act(s, True)
    lat: dict[str, list[float]] = {k: [] for k in agents}
    for _ in range(args.latency_calls):
        for name, (agent, _) in agents.items():
            t = time.perf_counter()
            agent.act(s, True)
            lat[name].append(1e3 * (time.perf_counter() - t))
    # an evaluation's cost: one environment step of each of E episodes (a planner plays them in lockstep)
    states = data.state[:args.eval_episodes]
    ev: dict[str, list[float]] = {k: [] for k in agents}
    for agent, _ in agents.values():
        if hasattr(agent, "reset_batch"):
            agent.reset_batch(len(states))
    for _ in range(args.latency_calls // 4 + 1):
        for name, (agent, _) in agents.items():
            t = time.perf_counter()
            if hasattr(agent, "act_batch"):
                agent.act_batch(states, list(range(len(states))))
            else:
                for s_i in states:
                    agent.act(s_i, True)
            ev[name].append(1e3 * (time.perf_counter() - t))
    load.append(os.getloadavg())
    wall = {k: statistics.median(r[0] for r in v) for k, v in rounds.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in rounds.items()}
    record = {
        "command": "python docs/marl/speed.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "load_before_after": load, "rounds": args.rounds,
        "steps": {k: n for k, (_, n) in agents.items()}, "steps_per_s_wall": wall, "steps_per_s_cpu": cpu,
        "per_round": rounds, "act_ms_median": {k: statistics.median(v) for k, v in lat.items()},
        "eval_episodes": args.eval_episodes,
        "eval_step_ms_median": {k: statistics.median(v) for k, v in ev.items()},
        "eval_lockstep": [k for k, (a, _) in agents.items() if hasattr(a, "act_batch")],
        "trainable_parameters": {k: parameters(a) for k, (a, _) in agents.items()},
    }
    out = Path(args.out)
    (out / "speed.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [":orphan:", "", ".. generated by ``python docs/marl/speed.py``; do not edit "
             "(raw numbers: ``docs/marl/speed.json``)", "", "DOM2, DoF and MADiff: speed at the defaults",
             "=" * 43, "",
             f"Measured {record['date']} on {record['cpu']} ({record['cores']} cores), CPU, float32, "
             f"{args.threads} torch thread(s), torch {torch.__version__}. Command: ``{record['command'].strip()}``. "
             f"Load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load[0])} before and "
             f"{', '.join(f'{x:.2f}' for x in load[1])} after ({load_conditions(load[1][0], args.threads)}).", "",
             f".. list-table:: {PARTITION} shapes, {args.rows:,} random rows, batch at each agent's default, "
             f"{args.rounds} interleaved rounds", "   :header-rows: 1", "",
             "   * - Measure"] + [f"     - {k}" for k in agents]
    table = [("trainable parameters (all agents, critics included)", {k: f"{v:,}" for k, v in
                                                                      record["trainable_parameters"].items()}),
             ("gradient steps/s, wall clock (median of rounds)", {k: f"{v:.3g}" for k, v in wall.items()}),
             ("gradient steps per second of process CPU time", {k: f"{v:.3g}" for k, v in cpu.items()}),
             ("one joint action (every agent on its own view), wall-clock ms, median",
              {k: f"{v:.1f}" for k, v in record["act_ms_median"].items()}),
             (f"one step of each of {args.eval_episodes} evaluation episodes, ms, median (in lockstep, one plan "
              "for all, where the agent batches: MADiff; else one after the other)",
              {k: f"{v:.1f}" for k, v in record["eval_step_ms_median"].items()})]
    for title, vals in table:
        lines += [f"   * - {title}"] + [f"     - {vals[k]}" for k in agents]
    lines.append("")
    (out / "speed.rst").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
