"""The online training loop shared by Diff-SR and SAC: logs, evaluation, atomic checkpoints, exact resume.

A run folder holds ``config.json`` (what was asked), ``checkpoint.pt`` (everything needed to go on:
networks, optimizers, replay buffer, every random generator, counters and timers), ``eval.csv``
(periodic deterministic evaluation), ``train.csv`` (losses and throughput every ``log_every`` steps),
``episodes.csv`` (one row per training episode) and ``tb/`` (the same scalars for TensorBoard).

Checkpoints are written at the first episode end at or after each multiple of ``checkpoint_every``
(an episode boundary has no environment state to save, because every episode is reset from its own
seed: :func:`diffrl_ref.rl.envs.reset`). Resuming drops every log row after the checkpoint's step and
redoes those steps, so after a kill -9 no step is lost or repeated in the logs, and on CPU the
resumed run's numbers equal the uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import torch

from ..bench import cpu_model
from . import diffsr, diffusion_ql, dof, dom2, edp, envs, gate, madiff, sac
from .diffsr import DiffSRAgent, DiffSRConfig
from .diffusion_ql import DiffusionQLAgent, DiffusionQLConfig
from .dof import DoFAgent, DoFConfig
from .dom2 import DOM2Agent, DOM2Config
from .edp import EDPAgent, EDPConfig
from .logs import EPISODE_COLUMNS, EVAL_COLUMNS, FORMAT, TRAIN_COLUMNS, CsvLog, atomic_write
from .madiff import MADiffAgent, MADiffConfig
from .sac import SB3SAC, SACConfig

#: Offline learners: the agent class of each (built from the dataset, the config and the device).
OFFLINE_AGENTS: dict[str, Any] = {"diffusion-ql": DiffusionQLAgent, "edp": EDPAgent, "dom2": DOM2Agent, "dof": DoFAgent,
                                  "madiff": MADiffAgent}
#: Offline multi-agent learners: they read multi-agent datasets (datasets.load_joint) and are evaluated in the
#: partition's single-agent task, each agent acting on its own local view (rl.joint.DecentralisedAgent).
MULTI_AGENT: tuple[str, ...] = ("dom2", "dof", "madiff")
OFFLINE = tuple(OFFLINE_AGENTS)  # learn from a dataset (--dataset); a step is a gradient step
ALGOS = ("diffsr", "sac", *OFFLINE)
CONFIGS: dict[str, type[Any]] = {"diffsr": DiffSRConfig, "sac": SACConfig, "diffusion-ql": DiffusionQLConfig,
                                 "edp": EDPConfig, "dom2": DOM2Config, "dof": DoFConfig, "madiff": MADiffConfig}
DOMAINS: dict[str, dict[str, tuple[Any, str]]] = {"diffsr": diffsr.DOMAINS, "sac": sac.DOMAINS,
                                                  "diffusion-ql": diffusion_ql.DOMAINS, "edp": edp.DOMAINS,
                                                  "dom2": dom2.DOMAINS, "dof": dof.DOMAINS, "madiff": madiff.DOMAINS}


#: Agents with ``actor_state`` (SAC) keep their actor every SNAPSHOT_EVERY steps and at the end, in
#: policies/stepT.pt: the behaviour policies of the offline datasets (docs/offline.rst). Every 10k, so that a
#: medium policy can be picked near a third of the expert's return (at 50k, SAC is often past half of it); the
#: archive of a run's logs keeps those of every SNAPSHOT_ARCHIVE_EVERY steps and the last (diffrl plot), and the
#: datasets' script keeps the two it picks (docs/offline/results/make_datasets.py).
SNAPSHOT_EVERY = 10_000
SNAPSHOT_ARCHIVE_EVERY = 50_000


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """A run's actor snapshots, policies/stepT.pt, as (T, path) in step order; other files there are ignored."""
    found = ((re.fullmatch(r"step(\d+)\.pt", q.name), q) for q in (Path(run) / "policies").glob("step*.pt"))
    return sorted((int(m.group(1)), q) for m, q in found if m)


class RunError(ValueError):
    """A run that cannot start or resume; the CLI prints it as one line."""


class Agent(Protocol):
    name: str

    def act(self, s: np.ndarray, deterministic: bool) -> np.ndarray: ...
    def observe(self, s: np.ndarray, a: np.ndarray, r: float, s_next: np.ndarray, terminated: bool) -> None: ...
    def update(self) -> Mapping[str, torch.Tensor | float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, st: dict[str, Any]) -> None: ...


@dataclass
class RunConfig:
    algo: str
    env: str
    seed: int
    steps: int
    eval_every: int = 5000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    log_every: int = 1000
    hp: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    skip_conformance: bool = False
    dataset: str = ""  # offline algorithms: the Minari dataset id (its environment is ``env``)
    dataset_root: str = ""  # the Minari root holding it (not part of the identity: a root may move)

    def identity(self) -> dict[str, Any]:
        """What must match for a folder to be resumed (steps may grow; device and logging may change)."""
        ident = {"format": FORMAT, "algo": self.algo, "env": self.env, "seed": self.seed,
                 "eval_every": self.eval_every, "eval_episodes": self.eval_episodes, "hp": self.hp}
        if self.dataset:  # only offline runs carry it, so online folders keep their identity
            ident["dataset"] = self.dataset
        return ident


def agent_config(algo: str, overrides: dict[str, str]) -> Any:
    """The algorithm's config with ``name=value`` overrides, each converted to the field's type."""
    if algo not in CONFIGS:
        raise RunError(f"unknown algorithm {algo!r}: expected one of {', '.join(ALGOS)}")
    cls = CONFIGS[algo]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, raw in overrides.items():
        if name not in fields:
            raise RunError(f"unknown {algo} hyperparameter {name!r}: expected one of {', '.join(fields)}")
        kind: Any = type(fields[name].default)
        test, domain = DOMAINS[algo][name]
        try:
            value = kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
            ok = bool(test(value))
        except (ValueError, OverflowError):
            ok = False
        if not ok:
            raise RunError(f"{algo} hyperparameter {name} must be {domain}, got {raw!r}")
        values[name] = value
    cfg = cls(**values)
    try:
        cfg.check()
    except ValueError as exc:
        raise RunError(f"{algo} hyperparameters: {exc}") from None
    return cfg


def make_agent(algo: str, cfg: Any, env: Any, seed: int, device: str, data: Any = None) -> Agent:
    if algo in OFFLINE:  # built from the dataset; the seed sets the initial weights
        torch.manual_seed(seed)
        agent: Agent = OFFLINE_AGENTS[algo](data, cfg, device)
        return agent
    if algo == "sac":
        return SB3SAC(env, cfg, seed, device)
    torch.manual_seed(seed)
    return DiffSRAgent(env.observation_space.shape[0], env.action_space.shape[0], cfg, device)


def eval_task(env: str) -> str:
    """The env an agent is evaluated in: a Multi-Agent MuJoCo partition's single-agent v5 task (equal dynamics
    and reward, marl.equivalence; the agents still act on their local views), any other env itself."""
    from .marl import PARTITIONS

    return PARTITIONS[env].single if env in PARTITIONS else env


# ---- the loop ---------------------------------------------------------------------------------


@dataclass
class State:
    t: int = 0
    episode: int = 0
    next_checkpoint: int = 0
    train_seconds: float = 0.0
    learn_seconds: float = 0.0
    learn_steps: int = 0


def record_start(out: Path, kind: str, step: int, device: str) -> None:
    """Append one line to ``starts.jsonl``: every fresh start and resume, when, where and on what. The CPU's name
    does not tell its instruction set, which picks torch's kernels (and so the last bits of a run): torch's CPU
    capability (``AVX2``, ``AVX512``, ...) is recorded beside it; a run resumed on another one goes on from the
    same state but no longer computes bit for bit what the first machine would have."""
    import datetime
    import platform

    line = {"utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "kind": kind, "step": step,
            "host": platform.node(), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": device, "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    with open(out / "starts.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise ValueError("not a diffrl-ref checkpoint of this format")
        return ck
    except Exception as exc:
        raise RunError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                       f"; delete it to start the run over") from None


def prepare(cfg: RunConfig, out: Path) -> dict[str, Any] | None:
    """Check the folder against ``cfg``; return the checkpoint to resume from, or None for a fresh start."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    conf = out / "config.json"
    ckpt_path = out / "checkpoint.pt"
    if conf.exists():
        try:
            old = json.loads(conf.read_text())
        except ValueError:
            raise RunError(f"cannot read {conf}; delete the folder to start over") from None
        if old.get("identity") != cfg.identity():
            raise RunError(f"{out} holds another run ({old.get('identity')}); use another --out")
    if not ckpt_path.exists():
        return None
    ck = load_checkpoint(ckpt_path)
    if ck["identity"] != cfg.identity():
        raise RunError(f"checkpoint {ckpt_path} belongs to another run; use another --out")
    return ck


def finished(out: Path, steps: int) -> bool:
    """Whether the run in ``out`` has finished at exactly ``steps`` (its done.json says so)."""
    done = out / "done.json"
    return done.exists() and json.loads(done.read_text()).get("steps") == steps


def same_settings(out: Path, agent_cfg: Any, steps: int) -> None:
    """Refuse to resume a run whose hyperparameters would now resolve differently (the defaults changed since it
    started): its state would load into an agent built with other settings (an activation, a target period)
    and go on silently. A finished run asked for its own steps is left alone (nothing trains)."""
    if finished(out, steps):
        return
    old = json.loads((out / "config.json").read_text()).get("resolved") if (out / "config.json").exists() else None
    if old is None:  # folders written before config.json recorded the resolved settings
        return
    now = json.loads(json.dumps(dataclasses.asdict(agent_cfg)))
    changed = [k for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k)]
    if changed:
        k = changed[0]
        raise RunError(f"{out} was started with {k}={old.get(k)!r}, the defaults now give {now.get(k)!r}"
                       + (f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else "")
                       + "; finish it with the diffrl-ref version it started with, or use another --out")


class DeferredInterrupt:
    """Inside the block, Ctrl-C (SIGINT) only sets ``requested``, which the loop reads between steps.

    A KeyboardInterrupt raised inside library code can leave a lock held: seen once in CI, a run sent
    SIGINT that had not exited 60 s later (TensorBoard's writer queue takes locks on every scalar). A
    second Ctrl-C interrupts at once. Outside the main thread signals cannot be caught; nothing changes.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: RunConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ``cfg`` in ``out`` until ``cfg.steps`` environment steps; returns the summary."""
    envs.check_name(eval_task(cfg.env))
    if cfg.algo in OFFLINE:
        from .marl import PARTITIONS

        multi = cfg.env in PARTITIONS
        if multi != (cfg.algo in MULTI_AGENT):
            kind, need = ("multi-agent", "single-agent") if multi else ("single-agent", "multi-agent")
            algos = [a for a in OFFLINE if (a in MULTI_AGENT) == multi]
            raise RunError(f"dataset {cfg.dataset} is {kind} ({cfg.env}); {cfg.algo} trains on {need} datasets, "
                           f"{kind} ones train {', '.join(algos)}")
    agent_cfg = agent_config(cfg.algo, {k: str(v) for k, v in cfg.hp.items()})
    if cfg.algo in OFFLINE:
        agent_cfg = agent_cfg.for_dataset(cfg.dataset, set(cfg.hp))
    ck = prepare(cfg, out)
    if ck is not None:
        same_settings(out, agent_cfg, cfg.steps)
    lock = open(out / ".lock", "a")  # noqa: SIM115 - held until this function returns
    try:  # two processes writing one folder (a sweep rerun while an old worker lives) would corrupt it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RunError(f"{out} is in use by another process") from None
    try:
        if cfg.skip_conformance:
            if gate.CLAUSES[cfg.algo]:
                print(f"train: --skip-conformance: {cfg.algo}'s clauses are not checked on {cfg.device}",
                      file=sys.stderr)
        elif ck is None or gate.needed(out, cfg.device):
            gate.check(cfg.algo, cfg.device, out)
        return _train(cfg, out, progress, agent_cfg, ck)
    finally:
        lock.close()


def _train(cfg: RunConfig, out: Path, progress: bool, agent_cfg: Any, ck: dict[str, Any] | None) -> dict[str, Any]:
    from tqdm import tqdm

    if ck is not None and ck["state"]["t"] > cfg.steps:
        raise RunError(f"{out} is checkpointed at step {ck['state']['t']}, beyond --steps {cfg.steps}")
    done_path = out / "done.json"
    if finished(out, cfg.steps):
        summary: dict[str, Any] = json.loads(done_path.read_text())
        summary["already_done"] = True
        return summary

    offline = cfg.algo in OFFLINE
    data = None
    if offline:
        from . import datasets

        load = datasets.load_joint if cfg.algo in MULTI_AGENT else datasets.load_transitions
        data = load(cfg.dataset, Path(cfg.dataset_root))
    env = None if offline else envs.make(cfg.env, cfg.seed)
    eval_env = envs.make(eval_task(cfg.env), cfg.seed, evaluation=True)
    agent = make_agent(cfg.algo, agent_cfg, env, cfg.seed, cfg.device, data)
    da = eval_env.action_space.shape[0]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 7])))
    st = State(next_checkpoint=cfg.checkpoint_every)
    if ck is None:
        np.random.seed(cfg.seed)  # noqa: NPY002 - stable-baselines3 samples its buffer from the global state
        torch.manual_seed(cfg.seed)
        shutil.rmtree(out / "tb", ignore_errors=True)  # a fresh start leaves no stale TensorBoard events
        atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(
            {"identity": cfg.identity(), "resolved": dataclasses.asdict(agent_cfg),
             "torch": torch.__version__, "skip_conformance": cfg.skip_conformance}, indent=1)))
        if offline:  # its reference returns and own average: the results table normalises from the logs alone
            from . import datasets

            rec = datasets.record(cfg.dataset, Path(cfg.dataset_root))
            atomic_write(out / datasets.RECORD, lambda p: p.write_text(json.dumps(rec, indent=1)))
        done_path.unlink(missing_ok=True)
    else:
        if cfg.skip_conformance:  # recorded for every start that skipped the check
            conf = json.loads((out / "config.json").read_text())
            if not conf.get("skip_conformance"):
                conf["skip_conformance"] = True
                atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(conf, indent=1)))
        agent.load_state_dict(ck["agent"])
        st = State(**ck["state"])
        rng.bit_generator.state = ck["rng"]["loop"]
        np.random.set_state(ck["rng"]["numpy"])  # noqa: NPY002 - see np.random.seed above
        torch.set_rng_state(ck["rng"]["torch"])
        done_path.unlink(missing_ok=True)
    record_start(out, "fresh" if ck is None else "resume", st.t, cfg.device)
    with DeferredInterrupt() as interrupt:
        keep = None if ck is None else st.t
        eval_log = CsvLog(out / "eval.csv", EVAL_COLUMNS, keep)
        train_log = CsvLog(out / "train.csv", TRAIN_COLUMNS, keep)
        ep_log = CsvLog(out / "episodes.csv", EPISODE_COLUMNS, keep)
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"), purge_step=None if ck is None else st.t + 1)
        learning_starts = int(getattr(agent_cfg, "learning_starts", 0))

        def policy(obs: np.ndarray) -> np.ndarray:
            return agent.act(obs, deterministic=True)

        eval_envs: list[Any] = []

        def evaluate() -> dict[str, float]:
            if hasattr(agent, "act_batch"):  # the episodes in lockstep, one batch of network calls per step
                if not eval_envs:
                    eval_envs.extend([eval_env] + [envs.make(eval_task(cfg.env), cfg.seed, evaluation=True)
                                                   for _ in range(cfg.eval_episodes - 1)])
                res = envs.evaluate_batched(agent.act_batch, eval_envs, cfg.seed, getattr(agent, "reset_batch", None))
            else:
                res = envs.evaluate(policy, eval_env, cfg.seed, cfg.eval_episodes,
                                    new_episode=getattr(agent, "reset", None))
            eval_log.add({"step": st.t, **res, "train_seconds": st.train_seconds})
            for k, v in res.items():
                tb.add_scalar(f"eval/{k}", v, st.t)
            return res

        def snapshot() -> None:
            """policies/stepT.pt: the actor alone with the run's identity and the evaluation at T, if any."""
            at_t = last if st.t % cfg.eval_every == 0 else None  # the evaluation just made at T
            payload = {"format": FORMAT, "identity": cfg.identity(), "state": {"t": st.t},
                       "agent": agent.actor_state(), "eval": at_t}  # type: ignore[attr-defined]
            (out / "policies").mkdir(exist_ok=True)
            atomic_write(out / "policies" / f"step{st.t}.pt", lambda p: torch.save(payload, p))

        snapshots = hasattr(agent, "actor_state")

        def checkpoint() -> None:
            payload = {"format": FORMAT, "identity": cfg.identity(), "state": dataclasses.asdict(st),
                       "agent": agent.state_dict(),
                       "rng": {"loop": rng.bit_generator.state, "numpy": np.random.get_state(),  # noqa: NPY002
                               "torch": torch.get_rng_state()}}
            tb.flush()
            atomic_write(out / "checkpoint.pt", lambda p: torch.save(payload, p))

        bar = tqdm(total=cfg.steps, initial=st.t, unit="step", disable=not progress, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0,
                   desc=f"{cfg.algo} {cfg.env} seed {cfg.seed}")
        obs: np.ndarray | None = None
        ret, length, success = 0.0, 0, False
        info: Mapping[str, torch.Tensor | float] = {}
        window_t, window_start = st.t, time.perf_counter()

        def env_step() -> tuple[bool, bool]:
            """One environment step, then an update once learning: (learned, the episode ended)."""
            nonlocal obs, ret, length, success, info
            if obs is None:
                obs = envs.reset(env, envs.episode_seed(cfg.seed, st.episode))
                ret, length, success = 0.0, 0, False
            learning = st.t >= learning_starts
            a = agent.act(obs, deterministic=False) if learning else rng.uniform(-1.0, 1.0, da).astype(np.float32)
            obs_next, r, term, trunc, env_info = envs.step(env, a)
            agent.observe(obs, a, r, obs_next, term)
            if learning:
                info = agent.update()
            ret, length = ret + r, length + 1
            success = success or bool(env_info.get("success", 0.0))
            obs = obs_next
            return learning, bool(term or trunc)

        try:
            last = evaluate() if st.t == 0 else {}
            while st.t < cfg.steps:
                if interrupt.requested:  # here, between steps, no library holds a lock or a half-written file
                    raise KeyboardInterrupt
                tick = time.perf_counter()
                if offline:  # a step is one gradient step on the dataset; any step may be checkpointed
                    info = agent.update()
                    learning, boundary = True, True
                else:
                    learning, boundary = env_step()
                st.t += 1
                elapsed = time.perf_counter() - tick
                st.train_seconds += elapsed
                if learning:
                    st.learn_seconds += elapsed
                    st.learn_steps += 1
                bar.update(1)
                if st.t % cfg.log_every == 0:
                    now = time.perf_counter()
                    sps = (st.t - window_t) / max(now - window_start, 1e-9)
                    window_t, window_start = st.t, now
                    losses = {k: float(v) for k, v in info.items()}  # the only host sync of the losses
                    train_log.add({"step": st.t, "steps_per_s": sps, **losses})
                    tb.add_scalar("train/steps_per_s", sps, st.t)
                    for k, x in losses.items():
                        tb.add_scalar(f"train/{k}", x, st.t)
                if st.t % cfg.eval_every == 0:
                    last = evaluate()
                    bar.set_postfix(ret=f"{last['return_mean']:.1f}", succ=f"{last['success_rate']:.2f}")
                    window_start = time.perf_counter()  # evaluation is not training throughput
                if snapshots and (st.t % SNAPSHOT_EVERY == 0 or st.t == cfg.steps):
                    snapshot()  # rewritten identically if a resumed run passes T again (CPU runs are exact)
                if boundary:
                    if not offline:
                        ep_log.add({"step": st.t, "episode": st.episode, "return": ret, "length": length,
                                    "success": int(success)})
                        tb.add_scalar("train/episode_return", ret, st.t)
                        st.episode += 1
                        obs = None
                    if st.t >= st.next_checkpoint or st.t == cfg.steps:
                        while st.next_checkpoint <= st.t:
                            st.next_checkpoint += cfg.checkpoint_every
                        checkpoint()
        finally:
            bar.close()
            tb.close()
            for log in (eval_log, train_log, ep_log):
                log.close()
    summary = {"steps": st.t, "episodes": st.episode, "train_seconds": st.train_seconds,
               "learn_steps": st.learn_steps, "learn_seconds": st.learn_seconds,
               "seconds_per_1k_learning_steps": 1000 * st.learn_seconds / max(st.learn_steps, 1),
               "last_eval": last}
    atomic_write(done_path, lambda p: p.write_text(json.dumps(summary, indent=1)))
    return summary
