"""Offline datasets made here the way D4RL made its MuJoCo sets, stored as Minari datasets.

``diffrl dataset make --env ENV --kind KIND --out ROOT`` writes the Minari dataset
``diffrl/<env>/<kind>-v0`` (``<env>``: the id in lower case without its ``-vN`` suffix, e.g.
``diffrl/halfcheetah/medium-v0`` for HalfCheetah-v5) into the Minari root ROOT (Minari's data format
``hdf5``). Training code reads it with ``minari.load_dataset(id)`` with ``MINARI_DATASETS_PATH=ROOT``, or
with :func:`load_transitions`, which does exactly that and flattens the episodes.

Kinds (D4RL's recipe for its Gym-MuJoCo sets, Fu et al. 2020, arXiv 2004.07219):

``random``
    uniform actions in the action space.
``medium``
    a SAC policy, the checkpoint of a ``diffrl train sac`` run (``--policy RUN_OR_CHECKPOINT``), acting
    stochastically (actions sampled from the policy, as D4RL did). D4RL stopped the policy at about one
    third of the expert's return; which checkpoint that is is the user's choice, and its evaluation return
    is recorded.
``medium-replay``
    the replay buffer stored in that medium checkpoint (every transition of the run up to the
    checkpoint's step; a buffer that has wrapped is refused), cut into episodes in order: an episode
    ends where the env terminated or where the next row does not continue it (a time limit), and each
    episode's first observation must be the run's reset from ``episode_seed(run seed, k)``, else the
    buffer does not match the run and nothing is written. ``--size`` defaults to the whole buffer.
``expert``
    a fully trained SAC policy (``--policy``), stochastic actions.
``medium-expert``
    two ``--policy`` arguments, the medium checkpoint first, then the expert's: the episodes of
    ``medium`` followed by those of ``expert``, each made with the same ``--size`` and ``--seed``, so
    there are 2 x ``--size`` transitions (2M by default, as in D4RL), and the two halves are array-equal
    to the ``medium`` and ``expert`` datasets made with the same arguments (so both halves start their
    episodes from the same seeds).

Collection. Episode k is reset with :func:`diffrl_ref.rl.envs.reset` from ``envs.episode_seed(seed, k)``
(stored as the episode's ``seed`` in Minari) and ends at a termination or the env's time limit (1000
steps for MuJoCo v5); the last episode is cut at ``--size`` transitions and marked truncated (unless
it terminated right there). Uniform
actions come from a NumPy generator seeded from ``--seed``; a policy's samples from torch's generator,
seeded with ``--seed`` before each policy's episodes, so the same arguments give the same arrays.
A policy is rebuilt as :class:`diffrl_ref.rl.sac.SB3SAC` from the checkpoint's ``agent`` state and acts
through stable-baselines3 (``deterministic=False``). Policies are named by the SHA-256 of their
checkpoint file (the first 12 hex digits in names).

What is stored. Observations float32, as the policy saw them (the dataset's observation space is the
env's box in float32); actions in the env's action space, exactly what the env received (the
project's agents act in [-1, 1]^da and :func:`envs.step` maps that affinely onto the box); rewards
float32; ``terminations`` true only for true terminations, ``truncations`` for time limits and the
cut last episode. :func:`load_transitions` returns the actions in the agents' [-1, 1] scale again.

Metadata. Minari's own fields: ``algorithm_name``, ``description``, ``code_permalink`` (diffrl-ref's
version and, from a git checkout, its commit), ``requirements`` (pip-style pins of the packages that
make the env: gymnasium and mujoco, metaworld for its tasks), ``env_spec``, ``ref_min_score``,
``ref_max_score``, ``num_episodes_average_score``. Everything else is the JSON object under the key
``diffrl_provenance`` (Minari 0.5.4 keeps any extra key of ``metadata.json``: ``MinariStorage.update_metadata``
merges it in, and ``list_local_datasets`` and ``dataset.storage.metadata`` return it): kind, env id and
time limit, seed, size, package versions (gymnasium, mujoco, torch, stable-baselines3, numpy, minari,
h5py, diffrl-ref), every policy (role, checkpoint path as given, SHA-256, the run's identity and step,
its deterministic evaluation), the reference returns and how they were measured, and the equivalent
command.

Reference returns, "measured here" on the env with the evaluation protocol of the training loop
(:func:`envs.evaluate`: ``--eval-episodes`` episodes, 10 by default, from the evaluation seeds of
``--seed``): ``ref_min_score`` is the mean return of the uniform random policy; ``ref_max_score`` is the
expert policy's deterministic evaluation return for ``expert`` and ``medium-expert``. For the other
kinds it is ``--expert-return R`` if given (for example the ``ref_max_score`` of the env's expert
dataset), else unset, and ``diffrl dataset list`` says so. Nothing is cached; nothing is written
outside the root. (Minari reads its root from the environment variable ``MINARI_DATASETS_PATH``, which
:func:`minari_root` sets around each call: not for threads that use Minari at the same time.)

Bad input (unknown env or kind, missing or extra ``--policy``, a checkpoint that is not a SAC checkpoint
or was trained on another env, an existing dataset id, ``--size`` < 1, ...) raises :class:`DatasetError`
before anything is written. The dataset is built in a hidden folder of the root (``.make-PID-*``, which
Minari's listing skips) and renamed onto its id at the end, so an interrupted make leaves nothing under
the final id; a make killed before it could remove that folder leaves it, and the next make in the root
removes it once its process is gone (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import envs, logs, marl

KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: the --policy arguments each kind takes, in order
ROLES: dict[str, tuple[str, ...]] = {"random": (), "medium": ("medium",), "medium-replay": ("medium",),
                                     "expert": ("expert",), "medium-expert": ("medium", "expert")}
DEFAULT_SIZE = 1_000_000
EVAL_EPISODES = 10
NAMESPACE = "diffrl"
PROVENANCE = "diffrl_provenance"
NAMESPACE_FILE = "namespace_metadata.json"  # Minari's
FORMAT = 1
_PACKAGES = ("gymnasium", "mujoco", "torch", "stable-baselines3", "numpy", "minari", "h5py", "diffrl-ref")


class DatasetError(ValueError):
    """Bad input for a dataset (nothing was written); the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class Transitions:
    """A dataset's transitions, episodes concatenated in order (float32 arrays, N rows).

    ``actions`` are in the agents' scale [-1, 1]^da (the dataset stores the env's scale);
    ``terminals`` is 1 only where the env terminated, not at time limits or cuts.
    ``ref_max_score`` is None when the dataset has none (no expert policy, no --expert-return).
    """

    dataset_id: str
    env: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    ref_min_score: float | None
    ref_max_score: float | None

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass
class Policy:
    """A SAC checkpoint of ``diffrl train sac``, checked against the env."""

    role: str
    path: Path
    sha256: str
    identity: dict[str, Any]
    state: dict[str, Any]
    agent: dict[str, Any]

    @property
    def name(self) -> str:
        return self.sha256[:12]


def dataset_id(env: str, kind: str) -> str:
    """``diffrl/<env lower case, no -vN>/<kind>-v0``."""
    name = re.sub(r"[^-_\w]", "-", re.sub(r"-v\d+$", "", env).lower())
    return f"{NAMESPACE}/{name}/{kind}-v0"


@contextlib.contextmanager
def minari_root(root: Path) -> Iterator[None]:
    """Minari reads its root from ``MINARI_DATASETS_PATH`` at every call: set it for the block only."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    # absolute: Minari 0.5.4 joins a relative root into its own paths twice (a relative --out failed to write)
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).absolute())
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def default_root() -> Path:
    """Minari's own default: ``MINARI_DATASETS_PATH``, else ~/.minari/datasets."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def resolve_root(root: str | Path | None) -> Path:
    """``root`` if given, else :func:`default_root`."""
    return Path(root) if root else default_root()


# ---- policies ---------------------------------------------------------------------------------


def read_policy(arg: str, role: str, env: str) -> Policy:
    """A run folder (its checkpoint.pt, else its last policy snapshot), a checkpoint file, or a policy snapshot
    (policies/stepT.pt: the actor alone, archived with the runs) of a SAC run on ``env``."""
    path = Path(arg)
    if path.is_dir():
        # a run that ended mid-episode before its first checkpoint has its final actor as a snapshot only
        from .loop import snapshots  # loop imports the agents, which import this module

        snaps = snapshots(path)
        path = path / "checkpoint.pt" if (path / "checkpoint.pt").is_file() or not snaps else snaps[-1][1]
    if not path.is_file():
        raise DatasetError(f"--policy {arg}: no such checkpoint file or run folder with checkpoint.pt or policies/")
    try:
        data = path.read_bytes()
        ck = torch.load(path, map_location="cpu", weights_only=False)
        identity, state, agent = ck["identity"], ck["state"], ck["agent"]
        if not (isinstance(identity, dict) and isinstance(state, dict) and isinstance(agent, dict)):
            raise TypeError("identity, state or agent is not a dict")
    except Exception as exc:
        raise DatasetError(f"--policy {arg}: not a diffrl train checkpoint ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if identity.get("algo") != "sac":
        raise DatasetError(f"--policy {arg}: a {identity.get('algo')!r} checkpoint, not SAC (diffrl train sac)")
    if identity.get("env") != env:
        raise DatasetError(f"--policy {arg}: trained on {identity.get('env')!r}, not on --env {env}")
    if not ({"policy", "buffer", "config"} <= set(agent) or {"actor", "config"} <= set(agent)):
        raise DatasetError(f"--policy {arg}: the checkpoint holds no SAC agent state")
    return Policy(role, path, hashlib.sha256(data).hexdigest(), identity, state, agent)


def behaviour_policies(run: Path, fraction: float = 1 / 3) -> dict[str, Any]:
    """D4RL's two behaviour policies from one SAC run's snapshots (``policies/stepT.pt``): ``expert``, its last
    snapshot, and ``medium``, the run stopped early: the first snapshot whose evaluation return reaches
    ``fraction`` of the expert's (D4RL trains SAC and stops it when the policy reaches about a third of the
    expert's return; its medium-replay buffer ends there too). The first one, not the one nearest the target:
    SAC's returns dip and recover, and a later dip that happens to lie near a third is a collapsed policy, not
    one stopped on its way up. If no earlier snapshot reaches it, the nearest one below is taken and ``rule``
    says so. Each snapshot's evaluation is the one the run made at its step. Returns their paths, steps and
    returns, the medium's share of the expert's, the rule applied and every candidate's return."""
    from .loop import snapshots  # loop imports the agents, which import this module

    evals: list[tuple[Path, int, float]] = []
    for step, q in snapshots(Path(run)):
        ev = torch.load(q, map_location="cpu", weights_only=False).get("eval") or {}
        if "return_mean" in ev:
            evals.append((q, step, float(ev["return_mean"])))
    if len(evals) < 2:
        raise DatasetError(f"{run}: medium and expert need at least two evaluated policy snapshots, found "
                           f"{len(evals)} (the policies/stepT.pt that diffrl train sac writes)")
    expert = evals[-1]
    target = fraction * expert[2]
    reached = [e for e in evals[:-1] if e[2] >= target]
    if reached:
        medium, rule = reached[0], f"first snapshot reaching {fraction:.3g} of the expert's return"
    else:
        medium = min(evals[:-1], key=lambda e: (target - e[2], e[1]))
        rule = f"no earlier snapshot reaches {fraction:.3g} of the expert's return: the nearest below"
    return {"expert": str(expert[0]), "expert_step": expert[1], "expert_return": expert[2],
            "medium": str(medium[0]), "medium_step": medium[1], "medium_return": medium[2],
            "fraction": medium[2] / expert[2] if expert[2] else None, "rule": rule,
            "candidates": {str(e[1]): e[2] for e in evals}}


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """stable-baselines3 seeds the global generators when it builds a model; keep the caller's."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 - restored below
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


def build_actor(policy: Policy, env: Any, seed: int) -> Any:
    """:class:`SB3SAC` with the checkpoint's state (its replay buffer sized to what the checkpoint holds)."""
    from .sac import SB3SAC, SACConfig

    cfg = dict(policy.agent["config"])
    snapshot = "buffer" not in policy.agent
    cfg["buffer_size"] = 1 if snapshot else max(1, len(policy.agent["buffer"]["rewards"]))
    with _global_rng_kept():
        try:
            agent = SB3SAC(env, SACConfig(**cfg), seed, device="cpu")
            if snapshot:
                agent.load_actor_state(policy.agent)
            else:
                agent.load_state_dict(policy.agent)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DatasetError(f"--policy {policy.path}: cannot rebuild its SAC policy on {policy.identity['env']} "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return agent


def evaluate(act: Callable[[np.ndarray], np.ndarray], env: str, seed: int, episodes: int) -> dict[str, float]:
    """The training loop's evaluation: ``episodes`` episodes from the evaluation seeds of ``seed``."""
    res = envs.evaluate(act, envs.make(env, seed, evaluation=True), seed, episodes)
    return {**res, "episodes": episodes, "seed": seed}


def policy_actor(agent: Any, deterministic: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The SB3 policy's action in [-1, 1]^da: its mean (evaluation) or a sample (collection)."""
    return lambda obs: agent.act(obs, deterministic)


def random_actor(seed: int, da: int, stream: int) -> Callable[[np.ndarray], np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    return lambda obs: rng.uniform(-1.0, 1.0, da).astype(np.float32)


# ---- collection -------------------------------------------------------------------------------


def env_action(env: Any, a: np.ndarray) -> np.ndarray:
    """The action the env receives from :func:`envs.step` for an agent's action in [-1, 1]^da (same expression)."""
    low, high = env.action_space.low, env.action_space.high
    out: np.ndarray = np.asarray(low + 0.5 * (a + 1.0) * (high - low), dtype=env.action_space.dtype)
    return out


def collect(env: Any, act: Callable[[np.ndarray], np.ndarray], size: int, seed: int, bar: Any) -> list[Any]:
    """``size`` transitions in episodes reset from ``episode_seed(seed, k)``; Minari episode buffers."""
    from minari.data_collector import EpisodeBuffer

    episodes, t, k = [], 0, 0
    while t < size:
        ep_seed = envs.episode_seed(seed, k)
        obs = envs.reset(env, ep_seed)
        O, A, R, TE, TR = [obs], [], [], [], []
        while True:
            a = act(obs)
            obs, r, term, trunc, _ = envs.step(env, a)
            t += 1
            bar.update(1)
            O.append(obs)
            A.append(env_action(env, a))
            R.append(r)
            TE.append(term)
            TR.append(trunc or (t == size and not term))
            if term or trunc or t == size:
                break
        episodes.append(EpisodeBuffer(seed=ep_seed, observations=np.stack(O), actions=np.stack(A),
                                      rewards=np.asarray(R, dtype=np.float32), terminations=np.asarray(TE),
                                      truncations=np.asarray(TR)))
        k += 1
    return episodes


def check_replay(policy: Policy, size: int | None) -> int:
    """The number of buffer rows a medium-replay dataset takes (the whole buffer unless ``size``)."""
    if "buffer" not in policy.agent:
        raise DatasetError(f"--policy {policy.path}: a policy snapshot has no replay buffer; medium-replay needs "
                           "the run's checkpoint.pt")
    n, t = len(policy.agent["buffer"]["rewards"]), int(policy.state["t"])
    if n != t:
        raise DatasetError(f"--policy {policy.path}: its replay buffer holds {n} of the run's {t} transitions "
                           "(buffer_size < steps); medium-replay needs all of them")
    if size is not None and size > n:
        raise DatasetError(f"--size {size}: the replay buffer of {policy.path} holds only {n} transitions")
    return n if size is None else size


def replay_episodes(policy: Policy, env: Any, size: int | None) -> tuple[list[Any], int]:
    """The checkpoint's replay buffer as Minari episodes, in order; checked against the run's episode seeds."""
    from minari.data_collector import EpisodeBuffer

    buf = policy.agent["buffer"]
    n = check_replay(policy, size)
    obs = np.asarray(buf["observations"][:n], dtype=np.float32).reshape(n, -1)
    nxt = np.asarray(buf["next_observations"][:n], dtype=np.float32).reshape(n, -1)
    acts = np.asarray(buf["actions"][:n], dtype=np.float32).reshape(n, -1)
    rews = np.asarray(buf["rewards"][:n], dtype=np.float32).reshape(n)
    dones = np.asarray(buf["dones"][:n]).reshape(n).astype(bool)  # SB3SAC.observe stores `terminated` as done
    # an episode ends where the env terminated or where the next row does not continue it (a reset)
    ends = dones.copy()
    ends[:-1] |= np.any(nxt[:-1] != obs[1:], axis=1)
    ends[-1] = True
    run_seed = int(policy.identity["seed"])
    episodes, start = [], 0
    for k, stop in enumerate(int(i) + 1 for i in np.flatnonzero(ends)):
        ep_seed = envs.episode_seed(run_seed, k)
        if not np.array_equal(envs.reset(env, ep_seed), obs[start]):
            raise DatasetError(f"--policy {policy.path}: replay episode {k} does not start where the run's "
                               f"episode {k} was reset (seed {run_seed}); the buffer does not match the run")
        term = dones[start:stop]
        episodes.append(EpisodeBuffer(
            seed=ep_seed, observations=np.concatenate([obs[start:stop], nxt[stop - 1:stop]]),
            actions=np.stack([env_action(env, a) for a in acts[start:stop]]), rewards=rews[start:stop],
            terminations=term, truncations=np.append(np.zeros(stop - start - 1, bool), not term[-1])))
        start = stop
    return episodes, n


# ---- multi-agent -------------------------------------------------------------------------------


def joint_episodes(name: str, episodes: list[Any], space: Any) -> tuple[list[Any], Any, dict[str, Any]]:
    """Single-agent episodes of a partition's task as joint ones: each observation row becomes a dict of the
    single-agent observation (``state``) and every agent's local view of it; actions stay the joint action.
    Returns the episodes, their observation space and the layout recorded in the provenance."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    env = marl.make(name)
    ds, da = space.shape[0], episodes[0].actions.shape[1]
    views, acts = marl.view_indices(env, ds), marl.action_indices(env, da)
    low, high = space.low, space.high
    obs_space = gym.spaces.Dict({"state": space, **{
        k: gym.spaces.Box(low=low[i], high=high[i], shape=(len(i),), dtype=np.float32) for k, i in views.items()}})
    out = []
    for e in episodes:
        obs = np.asarray(e.observations, dtype=np.float32)
        out.append(EpisodeBuffer(seed=e.seed, observations={"state": obs, **{k: obs[:, i] for k, i in views.items()}},
                                 actions=e.actions, rewards=e.rewards, terminations=e.terminations,
                                 truncations=e.truncations))
    layout = {"partition": name, "task": marl.PARTITIONS[name].single, "agents": list(views),
              "local_view": {k: i.tolist() for k, i in views.items()},
              "action_split": {k: i.tolist() for k, i in acts.items()},
              "how": "observations['state'] is the single-agent observation, observations[agent] its local view "
                     "(entries local_view[agent] of it); actions are joint, agent k acts on entries action_split[k]"}
    return out, obs_space, layout


@dataclass(frozen=True)
class JointTransitions:
    """A multi-agent dataset's transitions: the single-agent state, each agent's local observation, joint actions
    in [-1, 1]^da with each agent's entries, team rewards (float32 arrays, N rows, episodes in order)."""

    dataset_id: str
    env: str  # the partition, e.g. HalfCheetah-2x3
    agents: list[str]
    state: np.ndarray
    next_state: np.ndarray
    observations: dict[str, np.ndarray]
    next_observations: dict[str, np.ndarray]
    actions: np.ndarray
    action_split: dict[str, np.ndarray]
    local_view: dict[str, np.ndarray]  # agent -> entries of the state that make its local observation
    rewards: np.ndarray
    terminals: np.ndarray
    ref_min_score: float | None
    ref_max_score: float | None

    def __len__(self) -> int:
        return len(self.rewards)


def load_joint(dataset_id: str, root: Path | str) -> JointTransitions:
    """A multi-agent dataset made by ``diffrl dataset make --env PARTITION``, read with ``minari.load_dataset``."""
    with _opened(dataset_id, root) as ds:
        meta = ds.storage.metadata
        layout = (meta.get(PROVENANCE) or {}).get("multi_agent")
        if not layout:
            raise DatasetError(f"dataset {dataset_id} is single-agent: read it with load_transitions")
        agents = list(layout["agents"])
        obs: dict[str, list[np.ndarray]] = {k: [] for k in ["state", *agents]}
        nxt: dict[str, list[np.ndarray]] = {k: [] for k in ["state", *agents]}
        acts, rews, terms = [], [], []
        for ep in ds.iterate_episodes():
            for k in obs:
                o = np.asarray(ep.observations[k], dtype=np.float32)
                obs[k].append(o[:-1])
                nxt[k].append(o[1:])
            acts.append(np.asarray(ep.actions, dtype=np.float32))
            rews.append(np.asarray(ep.rewards, dtype=np.float32))
            terms.append(np.asarray(ep.terminations, dtype=np.float32))
        actions = _agents_scale(np.concatenate(acts), ds.action_space)
    cat = {k: np.concatenate(v) for k, v in obs.items()}
    cat_next = {k: np.concatenate(v) for k, v in nxt.items()}
    ref_min, ref_max = meta.get("ref_min_score"), meta.get("ref_max_score")
    return JointTransitions(dataset_id, str(layout["partition"]), agents, cat.pop("state"), cat_next.pop("state"),
                            cat, cat_next, actions, {k: np.asarray(v, np.int64) for k, v in
                                                     layout["action_split"].items()},
                            {k: np.asarray(v, np.int64) for k, v in layout["local_view"].items()},
                            np.concatenate(rews), np.concatenate(terms),
                            float(ref_min) if ref_min is not None else None,
                            float(ref_max) if ref_max is not None else None)


# ---- metadata ---------------------------------------------------------------------------------


def versions(env: str, multi_agent: bool = False) -> dict[str, str]:
    from .. import __version__

    out = {}
    for p in _PACKAGES + (("metaworld",) if envs.is_metaworld(env) else ()) + \
            (("gymnasium-robotics", "pettingzoo") if multi_agent else ()):
        try:
            out[p] = __version__ if p == "diffrl-ref" else importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    out["torch"] = torch.__version__
    return out


def code_permalink() -> str:
    """diffrl-ref's version, and the commit (``-dirty`` with local changes) when run from a git checkout: of the
    code this process imported (:data:`CODE`), not of whatever the checkout holds when a dataset is written."""
    from .. import __version__

    text = f"diffrl-ref {__version__}, diffrl_ref/rl/datasets.py"
    here = Path(__file__).resolve().parents[2]
    if (here / ".git").exists():
        try:
            def git(*a: str) -> str:
                return subprocess.run(["git", "-C", str(here), *a], capture_output=True, text=True, timeout=10,
                                      check=True).stdout.strip()

            dirty = git("status", "--porcelain", "--untracked-files=no")
            text += f", git commit {git('rev-parse', 'HEAD')}{'-dirty' if dirty else ''}"
        except (OSError, subprocess.SubprocessError):
            pass
    return text


#: the code of this process, taken at import: a long make (hours for several datasets) records the commit it runs,
#: even if the checkout moves on meanwhile
CODE = code_permalink()


def _policy_record(p: Policy, evaluation: dict[str, float]) -> dict[str, Any]:
    return {"role": p.role, "checkpoint": str(p.path), "sha256": p.sha256, "name": p.name,
            "run": {k: p.identity.get(k) for k in ("algo", "env", "seed", "hp")}, "step": int(p.state["t"]),
            "evaluation": evaluation}


# ---- make -------------------------------------------------------------------------------------


@dataclass
class Made:
    dataset_id: str
    path: Path
    transitions: int
    episodes: int
    ref_min_score: float
    ref_max_score: float | None


def make(env: str, kind: str, root: Path, size: int | None = None, seed: int = 0,
         policies: Sequence[str] = (), expert_return: float | None = None, eval_episodes: int = EVAL_EPISODES,
         progress: bool = True) -> Made:
    """Make dataset ``kind`` of ``env`` in the Minari root ``root`` (see the module docstring)."""
    # ---- every check before anything is written
    # A Multi-Agent MuJoCo partition is collected on its single-agent task, which it equals bit for bit
    # (tests/test_marl.py); each row then also gets every agent's local view of the observation.
    part = marl.PARTITIONS.get(env)
    task = part.single if part else env
    try:
        envs.check_name(task)
    except envs.EnvError as exc:
        raise DatasetError(str(exc)) from None
    if kind not in KINDS:
        raise DatasetError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    roles = ROLES[kind]
    if len(policies) != len(roles):
        want = " and ".join(f"the {r} policy" for r in roles) or "none"
        raise DatasetError(f"--kind {kind} takes {len(roles)} --policy argument(s) ({want}), got {len(policies)}")
    if size is not None and size < 1:
        raise DatasetError(f"--size must be >= 1, got {size}")
    if seed < 0:
        raise DatasetError(f"--seed must be >= 0, got {seed}")
    if eval_episodes < 1:
        raise DatasetError(f"--eval-episodes must be >= 1, got {eval_episodes}")
    if expert_return is not None and "expert" in roles:
        raise DatasetError(f"--expert-return: --kind {kind} measures the expert policy's return itself")
    if expert_return is not None and not np.isfinite(expert_return):
        raise DatasetError(f"--expert-return must be a finite number, got {expert_return}")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--out {root} exists and is not a folder")
    ds_id = dataset_id(env, kind)
    if (root / ds_id).exists():
        raise DatasetError(f"dataset {ds_id} already exists in {root}; delete it or use another root")
    try:
        import minari
    except ImportError as exc:
        raise DatasetError(f"diffrl dataset needs minari and h5py ({exc.name} missing): "
                           "pip install 'diffrl-ref[rl]'") from None
    try:
        import h5py  # noqa: F401 - Minari's hdf5 format
    except ImportError:
        raise DatasetError("diffrl dataset needs h5py for Minari's hdf5 format: pip install 'diffrl-ref[rl]'") from None
    loaded = [read_policy(arg, role, task) for arg, role in zip(policies, roles, strict=True)]
    if kind == "medium-replay":
        check_replay(loaded[0], size)
    try:
        collect_env = envs.make(task, seed)
    except envs.EnvError as exc:
        raise DatasetError(str(exc)) from None
    per_policy = DEFAULT_SIZE if size is None and kind != "medium-replay" else size

    from tqdm import tqdm

    # ---- reference returns and policy evaluations
    da = collect_env.action_space.shape[0]
    random_eval = evaluate(random_actor(seed, da, 2), task, seed, eval_episodes)
    actors, records = {}, []
    for p in loaded:
        actor = build_actor(p, collect_env, seed)
        actors[p.role] = actor
        records.append(_policy_record(p, evaluate(policy_actor(actor, True), task, seed, eval_episodes)))
    ref_min = float(random_eval["return_mean"])
    ref_max = expert_return if "expert" not in roles else next(
        float(r["evaluation"]["return_mean"]) for r in records if r["role"] == "expert")

    # ---- the transitions
    if kind == "medium-replay":
        episodes, n = replay_episodes(loaded[0], collect_env, size)
        per_policy = n
    else:
        assert per_policy is not None
        total = per_policy * max(1, len(roles))
        bar = tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True, desc=f"{kind} {env}",
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        try:
            if kind == "random":
                episodes = collect(collect_env, random_actor(seed, da, 1), per_policy, seed, bar)
            else:
                episodes = []
                for role in roles:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        actor = actors[role]
                        episodes += collect(collect_env, policy_actor(actor, False), per_policy, seed, bar)
        finally:
            bar.close()
    transitions = sum(len(e.rewards) for e in episodes)

    # ---- metadata
    sources = {"random": "uniform random actions",
               "medium-replay": f"the replay buffer of SAC run checkpoint {loaded[0].name if loaded else ''} "
                                f"(step {loaded[0].state['t'] if loaded else ''}), in order"}
    algorithm = sources.get(kind) or "SAC (stable-baselines3, diffrl train sac), stochastic actions, policy " + \
        " then ".join(f"{p.name} ({p.role})" for p in loaded)
    evals = "; ".join(f"{r['role']} policy {r['name']} evaluation return {r['evaluation']['return_mean']:.1f} "
                      f"over {eval_episodes} deterministic episodes" for r in records)
    max_note = ("the expert policy's evaluation return" if "expert" in roles
                else "given with --expert-return" if expert_return is not None else "unset (no expert policy)")
    description = (f"D4RL-recipe '{kind}' dataset of {env} made by diffrl-ref: {transitions} transitions in "
                   f"{len(episodes)} episodes from {algorithm}, seed {seed}" + (f"; {evals}" if evals else "")
                   + f". ref_min_score: uniform random policy over {eval_episodes} episodes; ref_max_score: "
                   f"{max_note}. Observations float32 as the policy saw them, actions in the env's action space, "
                   "terminations only for true terminations (time limits and the cut last episode are "
                   "truncations). Provenance under 'diffrl_provenance'.")
    command = ["diffrl", "dataset", "make", "--env", env, "--kind", kind, "--out", str(root), "--seed", str(seed),
               "--eval-episodes", str(eval_episodes)] + (["--size", str(size)] if size is not None else []) + \
        (["--policy", *policies] if policies else []) + \
        (["--expert-return", repr(expert_return)] if expert_return is not None else [])
    vers = versions(task, multi_agent=part is not None)
    requirements = [f"{p}=={vers[p]}" for p in ("gymnasium", "mujoco", "metaworld") if p in vers
                    and vers[p] != "not installed"]
    provenance = {
        "format": FORMAT, "kind": kind, "env": env, **({"task": task} if part else {}),
        "max_episode_steps": getattr(collect_env.spec, "max_episode_steps", None),
        "seed": seed, "size": transitions, "episodes": len(episodes),
        "size_per_policy": per_policy if kind == "medium-expert" else None,
        "versions": vers, "policies": records,
        "reference": {"ref_min_score": {"value": ref_min, "how": "uniform random policy", **random_eval},
                      "ref_max_score": {"value": ref_max, "how": max_note}},
        "stored": {"observations": "float32, as the policy saw them", "actions": "the env's action space",
                   "episode_seed": "diffrl_ref.rl.envs.episode_seed(seed, k) for collected episodes, "
                                   "(run seed, k) for medium-replay"},
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    space = collect_env.observation_space
    import gymnasium as gym

    obs_space: Any = gym.spaces.Box(low=space.low.astype(np.float32), high=space.high.astype(np.float32),
                                    shape=space.shape, dtype=np.float32)
    if part:
        episodes, obs_space, layout = joint_episodes(env, episodes, obs_space)
        provenance["multi_agent"] = layout

    # ---- write in a hidden folder of the root, rename onto the id at the end
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".make-{os.getpid()}-", dir=root))
    try:
        with minari_root(tmp), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about the author fields, which are not set
            ds = minari.create_dataset_from_buffers(
                ds_id, episodes, env=None if part else collect_env, algorithm_name=algorithm,
                code_permalink=CODE,
                observation_space=obs_space, action_space=collect_env.action_space, description=description,
                data_format="hdf5", requirements=requirements)
            ds.storage.update_metadata({"ref_min_score": ref_min, "num_episodes_average_score": eval_episodes,
                                        **({"ref_max_score": ref_max} if ref_max is not None else {}),
                                        PROVENANCE: provenance})
        final = root / ds_id
        parts, added = ds_id.split("/")[:-1], []
        try:
            for i in range(1, len(parts) + 1):  # Minari's namespace folders and files, where the root lacks them
                ns = root.joinpath(*parts[:i])
                if not ns.exists():
                    ns.mkdir()
                    added.append(ns)
                if (tmp / ns.relative_to(root) / NAMESPACE_FILE).exists() and not (ns / NAMESPACE_FILE).exists():
                    shutil.copyfile(tmp / ns.relative_to(root) / NAMESPACE_FILE, ns / NAMESPACE_FILE)
                    added.append(ns / NAMESPACE_FILE)
            try:
                os.rename(tmp / ds_id, final)
            except OSError:
                raise DatasetError(f"dataset {ds_id} appeared in {root} while this one was made; nothing "
                                   "overwritten") from None
        except BaseException:
            for q in reversed(added):  # leave the root as it was
                with contextlib.suppress(OSError):
                    q.rmdir() if q.is_dir() else q.unlink()
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Made(ds_id, final, transitions, len(episodes), ref_min, ref_max)


def remove_stale_temps(root: Path) -> list[Path]:
    """Removes the hidden folders (``.make-PID-*``) of makes killed before their cleanup could run (SIGKILL, a
    session's end): those whose process no longer exists on this machine. A live PID's folder, possibly a make
    running now, is left alone, and so is a name without a PID. Returns the folders removed."""
    removed = []
    for d in root.glob(".make-*"):
        m = re.fullmatch(r"\.make-(\d+)-.*", d.name)
        if not (m and d.is_dir()):
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except (PermissionError, OverflowError):  # alive under another user; not a PID
            pass
    return removed


# ---- reading ----------------------------------------------------------------------------------


def _check_root(root: Path | str) -> None:
    """Minari creates a missing root on any call; reading from one that does not exist is an error instead."""
    if not Path(root).is_dir():
        raise DatasetError(f"Minari root {root}: no such folder")


@contextlib.contextmanager
def _opened(dataset_id: str, root: Path | str) -> Iterator[Any]:
    """The Minari dataset ``dataset_id`` of the root ``root``, read within the block."""
    import minari

    _check_root(root)
    with minari_root(Path(root)):
        try:
            ds = minari.load_dataset(dataset_id)
        except (FileNotFoundError, ValueError) as exc:
            raise DatasetError(f"no dataset {dataset_id} in {root} ({str(exc).splitlines()[0]})") from None
        yield ds


def _agents_scale(actions: np.ndarray, space: Any) -> np.ndarray:
    """Actions of the env's action space in the agents' [-1, 1]."""
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    if np.all(low == -1) and np.all(high == 1):
        return actions
    out: np.ndarray = np.clip(2.0 * (actions - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)
    return out


def load_transitions(dataset_id: str, root: Path | str) -> Transitions:
    """The dataset's transitions, read with ``minari.load_dataset`` from the root ``root``."""
    with _opened(dataset_id, root) as ds:
        meta = ds.storage.metadata
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("o", "a", "r", "n", "t")}
        if (meta.get(PROVENANCE) or {}).get("multi_agent"):
            raise DatasetError(f"dataset {dataset_id} is multi-agent: read it with load_joint")
        for ep in ds.iterate_episodes():
            o = np.asarray(ep.observations, dtype=np.float32)
            parts["o"].append(o[:-1])
            parts["n"].append(o[1:])
            parts["a"].append(np.asarray(ep.actions, dtype=np.float32))
            parts["r"].append(np.asarray(ep.rewards, dtype=np.float32))
            parts["t"].append(np.asarray(ep.terminations, dtype=np.float32))
        actions = _agents_scale(np.concatenate(parts["a"]), ds.action_space)
    prov = meta.get(PROVENANCE) or {}
    env = prov.get("env") or json.loads(meta.get("env_spec") or "{}").get("id", "")
    ref_max = meta.get("ref_max_score")
    return Transitions(dataset_id, str(env), np.concatenate(parts["o"]), actions, np.concatenate(parts["r"]),
                       np.concatenate(parts["n"]), np.concatenate(parts["t"]),
                       float(meta["ref_min_score"]) if meta.get("ref_min_score") is not None else None,
                       float(ref_max) if ref_max is not None else None)


#: the file of a run folder recording the dataset it trained on (written by the loop and by the d3rlpy runner)
RECORD = "dataset.json"


def record(dataset_id: str, root: Path | str) -> dict[str, Any]:
    """What a results table needs from a dataset, for a run folder's ``dataset.json``: its reference returns
    (the normalised score's random and expert ends) and its own average return (the behaviour data's row),
    so that a table regenerated from archived logs needs no dataset.

    The average is over the episodes that ended by a termination or the environment's time limit: the last
    episode cut by ``--size`` (and, in medium-replay, an episode the run's buffer ends in) is left out, as
    its return is a partial sum. ``sha256`` digests every episode's observations, actions, rewards,
    terminations and truncations in order (dtype, shape and bytes): the same data made on another machine
    give the same digest."""
    with _opened(dataset_id, root) as ds:
        meta = ds.storage.metadata
        prov: dict[str, Any] = meta.get(PROVENANCE) or {}
        limit = prov.get("max_episode_steps")
        returns, lengths, ended = [], [], []
        digest = hashlib.sha256()
        for ep in ds.iterate_episodes():
            for part in (ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations):
                logs.hash_into(digest, part)
            returns.append(float(np.sum(np.asarray(ep.rewards, dtype=np.float64))))
            lengths.append(len(ep.rewards))
            ended.append(bool(np.asarray(ep.terminations)[-1]) or (limit is not None and len(ep.rewards) >= limit))
    full = np.array([r for r, e in zip(returns, ended, strict=True) if e])

    def score(key: str) -> float | None:
        return float(meta[key]) if meta.get(key) is not None else None

    return {"format": 1, "dataset": dataset_id, "env": prov.get("env"), "kind": prov.get("kind"),
            "transitions": int(sum(lengths)), "episodes": len(returns),
            "ref_min_score": score("ref_min_score"), "ref_max_score": score("ref_max_score"),
            "average_return": float(full.mean()) if len(full) else None,
            "std_return": float(full.std()) if len(full) else None, "episodes_averaged": int(len(full)),
            "how": "mean (population std) of the undiscounted returns of the episodes that ended by termination "
                   "or the time limit",
            "sha256": digest.hexdigest(), "created": prov.get("created"), "seed": prov.get("seed"),
            "versions": prov.get("versions"),
            "code": meta.get("code_permalink"),
            "policies": [{"role": p.get("role"), "name": p.get("name"), "step": p.get("step"),
                          "evaluation_return": (p.get("evaluation") or {}).get("return_mean")}
                         for p in prov.get("policies", [])]}


def env_of(dataset_id: str, root: Path | str) -> str:
    """The environment id a dataset was made on (its provenance, else Minari's env_spec)."""
    import minari

    _check_root(root)
    with minari_root(Path(root)):
        try:
            meta = minari.load_dataset(dataset_id).storage.metadata
        except (FileNotFoundError, ValueError) as exc:
            raise DatasetError(f"no dataset {dataset_id} in {root} ({str(exc).splitlines()[0]})") from None
    env = (meta.get(PROVENANCE) or {}).get("env") or json.loads(meta.get("env_spec") or "{}").get("id")
    if not env:
        raise DatasetError(f"dataset {dataset_id} in {root} names no environment")
    return str(env)


def list_datasets(root: Path) -> list[dict[str, Any]]:
    """One row per Minari dataset in ``root`` (also datasets not made here: their kind is '-')."""
    _check_root(root)
    import minari

    with minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = minari.list_local_datasets()
    rows = []
    for ds_id, meta in found.items():
        prov: dict[str, Any] = meta.get(PROVENANCE) or {}
        try:
            env = prov.get("env") or json.loads(str(meta.get("env_spec") or "{}")).get("id", "-")
        except ValueError:
            env = "-"
        rows.append({"id": ds_id, "kind": prov.get("kind", "-"), "transitions": meta.get("total_steps"),
                     "episodes": meta.get("total_episodes"), "env": env, "seed": prov.get("seed"),
                     "policies": [p.get("name") for p in prov.get("policies", [])],
                     "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score")})
    return rows


def format_table(rows: list[dict[str, Any]], root: Path) -> str:
    if not rows:
        return f"no Minari datasets in {root}"

    def num(v: Any) -> str:
        return "unset" if v is None else f"{float(v):.1f}"

    head = ["dataset", "kind", "transitions", "episodes", "env", "seed", "ref_min", "ref_max", "policies"]
    body = [[r["id"], r["kind"], str(r["transitions"]), str(r["episodes"]), str(r["env"]),
             "-" if r["seed"] is None else str(r["seed"]), num(r["ref_min_score"]), num(r["ref_max_score"]),
             ",".join(r["policies"]) or "-"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    if any(r["ref_max_score"] is None for r in rows):
        lines.append("ref_max unset: no expert policy and no --expert-return; normalised scores need it "
                     "(pass --expert-return R, e.g. the expert dataset's ref_max)")
    return "\n".join(lines)

