"""d3rlpy's BC, TD3+BC, IQL and CQL on a diffrl dataset, written as a diffrl run folder (issue 19, item 5).

Run with the python of the d3rlpy environment (d3rlpy 2.8.1 pins gymnasium 1.0.0; the project pins 1.4.0),
not with the project's::

    python baselines/d3rlpy_run.py iql --dataset diffrl/hopper/medium-v0 --dataset-root datasets \\
        --steps 500000 --seed 0 --out runs/offline/hopper-medium/d3rlpy-iql/seed0

What it does, step by step:

* Reads the Minari dataset ``--dataset`` from the root ``--dataset-root`` with ``minari.load_dataset``
  (``MINARI_DATASETS_PATH`` set to the root), and its environment from the metadata (``diffrl_provenance``'s
  ``env``, else Minari's ``env_spec``).
* Builds a ``d3rlpy.dataset.MDPDataset`` episode by episode: observations without each episode's final one,
  actions mapped from the env's box onto [-1, 1] (the scale the project's agents act in and
  ``envs.step`` maps back; the identity for the [-1, 1] boxes of HalfCheetah, Hopper, Walker2d and Ant),
  rewards, ``terminals`` = true terminations, ``timeouts`` = truncations. (d3rlpy's own ``get_minari``
  concatenates Minari's N + 1 observations per episode with its N actions, which shifts observations
  against actions from the second episode on, so it is not used.) d3rlpy drops the last transition of an
  episode that did not terminate (its next observation has no row), as it does with D4RL.
* Trains d3rlpy's algorithm with the hyperparameters of d3rlpy's own D4RL MuJoCo reproduction scripts
  (:data:`HP` names each value's source), one gradient step at a time exactly as ``algo.fitter`` does
  (``dataset.sample_transition_batch(batch_size)``, then ``algo.update(batch)``), with the scalers fitted
  and the networks built the way ``fitter`` builds them.
* Every ``--eval-every`` steps (and at step 0), plays the greedy policy (``algo.predict``) with the project's
  own ``diffrl_ref.rl.envs.evaluate`` on ``envs.make(env, seed, evaluation=True)``: the same episodes from the
  same seeds as ``diffrl train``. The project's ``envs`` module is imported from this checkout (its root is
  put on ``sys.path``); it imports and runs under gymnasium 1.0.0 (gymnasium's MuJoCo envs need
  ``imageio``, which ``gymnasium[mujoco]`` brings).
* Writes the project's run-folder format (``diffrl_ref/rl/loop.py``): ``config.json`` (identity, resolved
  hyperparameters, versions), ``eval.csv``, ``train.csv`` (``steps_per_s``, ``critic_loss`` and
  ``actor_loss``; BC's loss is its actor loss), an empty ``episodes.csv``, ``dataset.json`` (the dataset's
  reference and average returns, ``diffrl_ref.rl.datasets.record``), and ``done.json`` at the end, so
  ``diffrl plot`` (project environment) reports the run under the algorithm ``d3rlpy-ALGO``. Every loss
  d3rlpy returns goes to ``d3rlpy_losses.csv``. No TensorBoard files.
* After each evaluation and at the last step, saves ``checkpoint.pkl`` atomically: the learnable as
  ``algo.save`` writes it (networks, optimizers with their learning-rate schedulers, the config with the
  fitted scalers), d3rlpy's gradient-step counter (which ``algo.save`` does not keep; TD3+BC's delayed
  actor update reads it), the global random generators d3rlpy samples minibatches and noise from
  (``random``, ``numpy.random``, ``torch``), the step and the timers. Rerunning the same command continues
  from it; log rows after its step are dropped and redone. ``model.d3`` beside it is the same learnable
  for ``d3rlpy.load_learnable``.

Multi-agent datasets (issue 20, item 6), made by ``diffrl dataset make --env HalfCheetah-2x3 ...``: their
observations are a dict of the single-agent observation (``state``) and each agent's local view of it, and
the provenance's ``multi_agent`` names the agents, each agent's ``local_view`` (entries of the state) and
``action_split`` (entries of the joint action) and the ``task`` (the partition's single-agent v5 task). On
such a dataset the script trains one independent d3rlpy learner per agent (independent BC, TD3+BC, IQL or
CQL, the usual baselines of offline multi-agent RL):

* Agent j's ``MDPDataset`` (:func:`per_agent`) holds its own local observations o_j, its own action entries
  ``a[:, action_split[j]]``, the team reward and the same terminals and timeouts. All agents use the same
  algorithm and hyperparameters; agent j's learner is built after ``d3rlpy.seed(agent_seed(seed, j))`` and
  draws its minibatches and noise from its own copy of d3rlpy's global generators (swapped in around its
  step), so it trains exactly as a single-agent run on its own dataset with that seed would.
* Evaluation is decentralised, in the task (``envs.make(task, ...)``: dynamics and reward equal the
  partition's bit for bit, ``diffrl_ref.rl.marl.equivalence``), as ``diffrl train`` evaluates its multi-agent
  agents: the joint action is assembled from every agent's ``algo.predict`` on its own local view
  ``state[local_view[j]]`` placed at ``action_split[j]`` (:func:`joint_action`).
* ``train.csv``'s losses are the agents' means; ``d3rlpy_losses.csv`` has every agent's losses as
  ``AGENT/NAME``; ``checkpoint.pkl`` holds every agent's learnable, step counter and generators, and
  ``model-AGENT.d3`` each agent's learnable. The run's ``env`` is the partition (as ``diffrl train``'s) and
  its algorithm ``d3rlpy-ALGO``, as for one agent: the dataset id tells them apart.

:func:`load_policy` rebuilds a run folder's (joint) greedy policy from its checkpoint.

Bad input (unknown ``--hp`` name or value, missing dataset, a folder holding another run) prints one line
and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import importlib.metadata
import json
import math
import os
import pickle
import platform
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the checkout: diffrl_ref.rl.{envs,logs,datasets} come from here
sys.path.insert(0, str(ROOT))
# the run-folder format and the Minari root handling are the project's own (no copies here); these modules
# import nothing that the d3rlpy environment lacks
from diffrl_ref.rl.datasets import RECORD as DATASET_RECORD  # noqa: E402
from diffrl_ref.rl.datasets import minari_root  # noqa: E402
from diffrl_ref.rl.datasets import record as dataset_record  # noqa: E402
from diffrl_ref.rl.logs import EPISODE_COLUMNS, EVAL_COLUMNS, FORMAT, TRAIN_COLUMNS, CsvLog, atomic_write  # noqa: E402

ALGOS = ("bc", "td3bc", "iql", "cql")
CHECKPOINT_FORMAT = 1
# the run-folder format of diffrl_ref/rl/loop.py (tests/test_baselines.py checks these equal loop's)
#: d3rlpy's loss names -> train.csv columns (the others are in d3rlpy_losses.csv only)
LOSS_COLUMNS = {"critic_loss": "critic_loss", "actor_loss": "actor_loss", "loss": "actor_loss"}

_IQL = "d3rlpy reproductions/offline/iql.py (v2 API, commit d324094)"
_TD3BC = "d3rlpy reproductions/offline/td3_plus_bc.py (v2 API, commit 02eee74)"
_CQL = "d3rlpy reproductions/offline/cql.py (v2 API, commit 5209707)"
_TD3BC_PAPER = "the TD3+BC paper (Fujimoto and Gu 2021) and its official code"
_DEFAULT_ENCODER = ("{} default (the script leaves it): every network 2 hidden layers of 256 ReLU units "
                    "(DefaultEncoderFactory); another width w uses VectorEncoderFactory([w, w]) (small tests)")

#: per algorithm: hyperparameter -> (default, source). Each can be changed with --hp NAME=VALUE (the
#: value is converted to the default's type). d3rlpy has no BC script for D4RL MuJoCo: BCConfig's defaults.
#: CQL's conservative_weight default depends on the dataset: see resolve_hp.
HP: dict[str, dict[str, tuple[Any, str]]] = {
    "bc": {
        "batch_size": (100, "BCConfig default (d3rlpy has no BC reproduction script for D4RL MuJoCo)"),
        "learning_rate": (1e-3, "BCConfig default"),
        "policy_type": ("deterministic", "BCConfig default (tanh-squashed deterministic policy, MSE loss)"),
        "hidden": (256, _DEFAULT_ENCODER.format("BCConfig")),
    },
    "td3bc": {
        "actor_learning_rate": (3e-4, _TD3BC),
        "critic_learning_rate": (3e-4, _TD3BC),
        "batch_size": (256, _TD3BC),
        "target_smoothing_sigma": (0.2, _TD3BC),
        "target_smoothing_clip": (0.5, _TD3BC),
        "alpha": (2.5, _TD3BC),
        "update_actor_interval": (2, _TD3BC),
        "standardize_observations": (True, _TD3BC + ": observation_scaler=StandardObservationScaler(), "
                                     "as " + _TD3BC_PAPER),
        "gamma": (0.99, "TD3PlusBCConfig default (the script leaves it)"),
        "tau": (0.005, "TD3PlusBCConfig default (the script leaves it)"),
        "n_critics": (2, "TD3PlusBCConfig default (the script leaves it)"),
        "hidden": (256, _DEFAULT_ENCODER.format("TD3PlusBCConfig")),
    },
    "iql": {
        "actor_learning_rate": (3e-4, _IQL),
        "critic_learning_rate": (3e-4, _IQL),
        "batch_size": (256, _IQL),
        "weight_temp": (3.0, _IQL),
        "max_weight": (100.0, _IQL),
        "expectile": (0.7, _IQL),
        "reward_multiplier": (1000.0, _IQL + ": reward_scaler=ReturnBasedRewardScaler(multiplier=1000.0), "
                              "r' = 1000 r / (max episode return - min episode return) of the dataset"),
        "actor_lr_t_max": (500_000, _IQL + ": actor_optim_factory=AdamFactory(lr_scheduler_factory="
                           "CosineAnnealingLRFactory(T_max=500000)), the script's n_steps; 0 turns the "
                           "cosine decay off"),
        "gamma": (0.99, "IQLConfig default (the script leaves it)"),
        "tau": (0.005, "IQLConfig default (the script leaves it)"),
        "n_critics": (2, "IQLConfig default (the script leaves it)"),
        "hidden": (256, _DEFAULT_ENCODER.format("IQLConfig")),
    },
    "cql": {
        "actor_learning_rate": (1e-4, _CQL),
        "critic_learning_rate": (3e-4, _CQL),
        "temp_learning_rate": (1e-4, _CQL),
        "alpha_learning_rate": (3e-4, _CQL),
        "initial_alpha": (math.e, _CQL + " (initial_alpha=math.e)"),
        "batch_size": (256, _CQL),
        "n_action_samples": (10, _CQL),
        "alpha_threshold": (10.0, _CQL),
        "conservative_weight": (5.0, _CQL + ": 10.0 if 'medium-v0' is in the dataset name, else 5.0"),
        "hidden": (256, _CQL + ": VectorEncoderFactory([256, 256]) for actor and critic"),
        "gamma": (0.99, "CQLConfig default (the script leaves it)"),
        "tau": (0.005, "CQLConfig default (the script leaves it)"),
        "n_critics": (2, "CQLConfig default (the script leaves it)"),
        "initial_temperature": (1.0, "CQLConfig default (the script leaves it)"),
    },
}


class RunError(ValueError):
    """Bad input or a folder that cannot be used: one line on stderr, exit status 2."""


# ---- hyperparameters ----------------------------------------------------------------------------------


def _convert(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            value = float(raw)
            if not value.is_integer():
                raise ValueError(raw)
            return int(value)
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        return raw
    except ValueError:
        raise RunError(f"--hp {name}={raw}: expected a {type(default).__name__}") from None


def parse_hp(algo: str, items: list[str]) -> dict[str, Any]:
    """The --hp overrides, converted, by name (sorted), checked against :data:`HP`."""
    out: dict[str, Any] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        if not eq or not name:
            raise RunError(f"--hp expects NAME=VALUE, got {item!r}")
        if name not in HP[algo]:
            raise RunError(f"unknown {algo} hyperparameter {name!r}: expected one of {', '.join(HP[algo])}")
        out[name] = _convert(name, raw, HP[algo][name][0])
    if algo == "bc" and out.get("policy_type", "deterministic") not in ("deterministic", "stochastic"):
        raise RunError("--hp policy_type must be deterministic or stochastic")
    for name, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise RunError(f"--hp {name}={value}: must not be negative")
    if out.get("hidden", 1) < 1:  # a network needs units in each hidden layer
        raise RunError(f"--hp hidden={out['hidden']}: must be a positive integer")
    return dict(sorted(out.items()))


def resolve_hp(algo: str, dataset_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter's value: the defaults of :data:`HP`, then the overrides."""
    values = {name: default for name, (default, _) in HP[algo].items()}
    if algo == "cql":  # the script: conservative_weight = 10.0 if "medium-v0" in args.dataset else 5.0
        values["conservative_weight"] = 10.0 if "medium-v0" in dataset_id else 5.0
    values.update(overrides)
    return values


def make_algo(algo: str, hp: dict[str, Any]) -> Any:
    """The d3rlpy learnable (not built yet) for the resolved hyperparameters, on the CPU."""
    import d3rlpy

    def encoders(*fields: str) -> dict[str, Any]:
        """d3rlpy's default encoder unless the width is changed (the config stays d3rlpy's own then)."""
        if algo == "cql" or hp["hidden"] == HP[algo]["hidden"][0]:
            return {}
        return {f: d3rlpy.models.encoders.VectorEncoderFactory([hp["hidden"], hp["hidden"]]) for f in fields}

    if algo == "bc":
        config: Any = d3rlpy.algos.BCConfig(batch_size=hp["batch_size"], learning_rate=hp["learning_rate"],
                                            policy_type=hp["policy_type"], **encoders("encoder_factory"))
    elif algo == "td3bc":
        scaler = d3rlpy.preprocessing.StandardObservationScaler() if hp["standardize_observations"] else None
        config = d3rlpy.algos.TD3PlusBCConfig(
            actor_learning_rate=hp["actor_learning_rate"], critic_learning_rate=hp["critic_learning_rate"],
            batch_size=hp["batch_size"], gamma=hp["gamma"], tau=hp["tau"], n_critics=hp["n_critics"],
            target_smoothing_sigma=hp["target_smoothing_sigma"], target_smoothing_clip=hp["target_smoothing_clip"],
            alpha=hp["alpha"], update_actor_interval=hp["update_actor_interval"], observation_scaler=scaler,
            **encoders("actor_encoder_factory", "critic_encoder_factory"))
    elif algo == "iql":
        schedule = (d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=hp["actor_lr_t_max"])
                    if hp["actor_lr_t_max"] > 0 else None)
        config = d3rlpy.algos.IQLConfig(
            actor_learning_rate=hp["actor_learning_rate"], critic_learning_rate=hp["critic_learning_rate"],
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=schedule),
            batch_size=hp["batch_size"], gamma=hp["gamma"], tau=hp["tau"], n_critics=hp["n_critics"],
            weight_temp=hp["weight_temp"], max_weight=hp["max_weight"], expectile=hp["expectile"],
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=hp["reward_multiplier"]),
            **encoders("actor_encoder_factory", "critic_encoder_factory", "value_encoder_factory"))
    elif algo == "cql":
        encoder = d3rlpy.models.encoders.VectorEncoderFactory([hp["hidden"], hp["hidden"]])
        config = d3rlpy.algos.CQLConfig(
            actor_learning_rate=hp["actor_learning_rate"], critic_learning_rate=hp["critic_learning_rate"],
            temp_learning_rate=hp["temp_learning_rate"], alpha_learning_rate=hp["alpha_learning_rate"],
            initial_alpha=hp["initial_alpha"], initial_temperature=hp["initial_temperature"],
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, batch_size=hp["batch_size"],
            gamma=hp["gamma"], tau=hp["tau"], n_critics=hp["n_critics"], n_action_samples=hp["n_action_samples"],
            alpha_threshold=hp["alpha_threshold"], conservative_weight=hp["conservative_weight"])
    else:
        raise RunError(f"unknown algorithm {algo!r}: expected one of {', '.join(ALGOS)}")
    return config.create(device="cpu:0")


# ---- the dataset ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    dataset_id: str
    env: str
    observations: np.ndarray
    actions: np.ndarray  # [-1, 1]^da
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episodes: int
    ref_min_score: float | None
    ref_max_score: float | None
    task: str = ""  # the env evaluated in: a partition's single-agent task, else env itself
    agents: list[str] = dataclasses.field(default_factory=list)  # multi-agent datasets only
    local: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # agent -> o_j rows
    local_view: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # agent -> entries of the state
    action_split: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # agent -> entries of the action

    def __post_init__(self) -> None:
        self.task = self.task or self.env


def check_layout(data: Data) -> None:
    """A multi-agent dataset must be what decentralised evaluation assumes: o_j = state[local_view[j]] on every
    row, and the agents' action entries partition the joint action."""
    da = data.actions.shape[1]
    for k in data.agents:
        if not np.array_equal(data.local[k], data.observations[:, data.local_view[k]]):
            raise RunError(f"dataset {data.dataset_id}: {k}'s observations are not its local_view of the state")
    entries = np.sort(np.concatenate([data.action_split[k] for k in data.agents]))
    if not np.array_equal(entries, np.arange(da)):
        raise RunError(f"dataset {data.dataset_id}: the agents' action_split does not partition the {da} actions")


def per_agent(data: Data) -> dict[str, Data]:
    """Independent learners' datasets: agent j's own local observations o_j and action entries
    a[:, action_split[j]], the team reward, the same terminals and timeouts (one row per step, as ``data``)."""
    return {k: dataclasses.replace(data, observations=data.local[k], actions=data.actions[:, data.action_split[k]],
                                   agents=[], local={}, local_view={}, action_split={})
            for k in data.agents}


def joint_action(predict: list[Callable[[np.ndarray], np.ndarray]], local_view: list[np.ndarray],
                 action_split: list[np.ndarray], action_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """Decentralised execution: agent j's action a_j = predict[j](s[local_view[j]]) from its local view of the
    single-agent observation s alone, placed at its entries action_split[j] of the joint action."""

    def act(s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=np.float32)
        a = np.zeros(action_dim, dtype=np.float32)
        for f, view, split in zip(predict, local_view, action_split, strict=True):
            a[split] = f(s[view])
        return a

    return act


def load_data(dataset_id: str, root: Path) -> Data:
    """The dataset's episodes as MDPDataset arrays (one row per step, each episode's last row ends it)."""
    import minari

    if not root.is_dir():
        raise RunError(f"--dataset-root {root}: no such folder")
    with minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = minari.load_dataset(dataset_id)
        except (FileNotFoundError, ValueError) as exc:
            raise RunError(f"no dataset {dataset_id} in {root} ({str(exc).splitlines()[0]})") from None
        meta = ds.storage.metadata
        layout = (meta.get("diffrl_provenance") or {}).get("multi_agent") or {}
        agents = [str(k) for k in layout.get("agents", [])]
        obs, act, rew, term, tout = [], [], [], [], []
        local: dict[str, list[np.ndarray]] = {k: [] for k in agents}
        for ep in ds.iterate_episodes():
            n = len(ep.actions)
            if agents:  # a dict of the single-agent observation and each agent's local view of it
                for k in agents:
                    local[k].append(np.asarray(ep.observations[k], dtype=np.float32)[:n])
                obs.append(np.asarray(ep.observations["state"], dtype=np.float32)[:n])
            else:
                obs.append(np.asarray(ep.observations, dtype=np.float32)[:n])
            act.append(np.asarray(ep.actions, dtype=np.float32))
            rew.append(np.asarray(ep.rewards, dtype=np.float32))
            te = np.asarray(ep.terminations, dtype=bool)
            tr = np.asarray(ep.truncations, dtype=bool) & ~te
            tr[-1] = not te[-1]  # every episode ends with a termination or a timeout
            term.append(te)
            tout.append(tr)
        space = ds.action_space
    prov = meta.get("diffrl_provenance") or {}
    env = prov.get("env") or json.loads(meta.get("env_spec") or "{}").get("id")
    if not env:
        raise RunError(f"dataset {dataset_id} in {root} names no environment")
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    actions = np.concatenate(act)
    if not (np.all(low == -1) and np.all(high == 1)):  # the same map as diffrl_ref.rl.datasets.load_transitions
        actions = np.clip(2.0 * (actions - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)

    def score(key: str) -> float | None:
        return float(meta[key]) if meta.get(key) is not None else None

    data = Data(dataset_id, str(env), np.concatenate(obs), actions, np.concatenate(rew),
                np.concatenate(term).astype(np.float32), np.concatenate(tout).astype(np.float32), len(obs),
                score("ref_min_score"), score("ref_max_score"), task=str(layout.get("task") or env))
    if agents:
        data.agents = agents
        data.local = {k: np.concatenate(v) for k, v in local.items()}
        data.local_view = {k: np.asarray(layout["local_view"][k], np.int64) for k in agents}
        data.action_split = {k: np.asarray(layout["action_split"][k], np.int64) for k in agents}
        check_layout(data)
    return data


def mdp_dataset(data: Data) -> Any:
    import d3rlpy

    return d3rlpy.dataset.MDPDataset(observations=data.observations, actions=data.actions, rewards=data.rewards,
                                     terminals=data.terminals, timeouts=data.timeouts,
                                     action_space=d3rlpy.ActionSpace.CONTINUOUS)


# ---- files -------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in ("d3rlpy", "torch", "gymnasium", "mujoco", "minari", "h5py", "numpy"):
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


# ---- training -------------------------------------------------------------------------------------------


def identity(args: argparse.Namespace, env: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What must match for a folder to be resumed (as loop.RunConfig.identity for an offline run)."""
    return {"format": FORMAT, "algo": f"d3rlpy-{args.algo}", "env": env, "seed": args.seed,
            "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "hp": overrides,
            "dataset": args.dataset}


def rng_state() -> dict[str, Any]:
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002 - d3rlpy samples from it
            "torch": torch.get_rng_state()}


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])  # noqa: NPY002
    torch.set_rng_state(st["torch"])


def learnable_bytes(algo: Any) -> bytes:
    """What ``algo.save`` writes (d3rlpy's pickle of the torch state and the serialized config)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.d3"
        algo.save(str(path))
        return path.read_bytes()


def load_learnable(blob: bytes) -> Any:
    import d3rlpy

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.d3"
        path.write_bytes(blob)
        return d3rlpy.load_learnable(str(path), device="cpu:0")


def agent_seed(seed: int, j: int) -> int:
    """Agent j's seed (its own stream, independent of the others' for every run seed)."""
    return int(np.random.SeedSequence([seed, j]).generate_state(1)[0])


def predictor(algo: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The greedy action of one observation (``algo.predict`` of a batch of one)."""

    def f(obs: np.ndarray) -> np.ndarray:
        a: np.ndarray = algo.predict(np.asarray(obs, dtype=np.float32)[None])[0]
        return a

    return f


def load_policy(out: Path | str) -> Callable[[np.ndarray], np.ndarray]:
    """A run folder's greedy policy as of its checkpoint, on the single-agent observation of its task: for a
    multi-agent run, every agent acting on its own local view (:func:`joint_action`)."""
    out = Path(out)
    ck = pickle.loads((out / "checkpoint.pkl").read_bytes())
    if "learnables" not in ck:
        return predictor(load_learnable(ck["learnable"]))
    agents = json.loads((out / "config.json").read_text())["resolved"]["agents"]
    views = [np.asarray(v["local_view"], np.int64) for v in agents.values()]
    splits = [np.asarray(v["action_split"], np.int64) for v in agents.values()]
    return joint_action([predictor(load_learnable(b)) for b in ck["learnables"]], views, splits,
                        sum(len(x) for x in splits))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffrl_ref.rl import envs

    overrides = parse_hp(args.algo, args.hp)
    data = load_data(args.dataset, Path(args.dataset_root))
    try:
        envs.check_name(data.task)
    except envs.EnvError as exc:
        raise RunError(str(exc)) from None
    ident = identity(args, data.env, overrides)
    hp = resolve_hp(args.algo, args.dataset, overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    conf_path, ck_path, done_path = out / "config.json", out / "checkpoint.pkl", out / "done.json"
    if conf_path.exists():
        try:
            old = json.loads(conf_path.read_text())
        except ValueError:
            raise RunError(f"cannot read {conf_path}; delete the folder to start over") from None
        if old.get("identity") != ident:
            raise RunError(f"{out} holds another run ({old.get('identity')}); use another --out")
    lock = open(out / ".lock", "a")  # noqa: SIM115 - held until the run returns
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RunError(f"{out} is in use by another process") from None
    try:
        return _run(args, envs, data, ident, hp, out, conf_path, ck_path, done_path)
    finally:
        lock.close()


def _run(args: argparse.Namespace, envs: Any, data: Data, ident: dict[str, Any], hp: dict[str, Any], out: Path,
         conf_path: Path, ck_path: Path, done_path: Path) -> dict[str, Any]:
    import d3rlpy
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from tqdm import tqdm

    ck = None
    if ck_path.exists():
        try:
            ck = pickle.loads(ck_path.read_bytes())
            if ck.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a checkpoint of this format")
        except Exception as exc:
            raise RunError(f"cannot read {ck_path}: {exc}; delete it to start the run over") from None
        if ck["identity"] != ident:
            raise RunError(f"checkpoint {ck_path} belongs to another run; use another --out")
        if ck["step"] > args.steps:
            raise RunError(f"{out} is checkpointed at step {ck['step']}, beyond --steps {args.steps}")
    if done_path.exists() and json.loads(done_path.read_text()).get("steps") == args.steps:
        summary: dict[str, Any] = json.loads(done_path.read_text())
        summary["already_done"] = True
        return summary

    # one learner on a single-agent dataset; one independent learner per agent on a multi-agent one, each with
    # its own copy of the global generators d3rlpy draws from (streams), swapped in around its own work
    multi = bool(data.agents)
    parts = per_agent(data) if multi else {"": data}
    names = list(parts)
    dsets = [mdp_dataset(d) for d in parts.values()]
    try:
        eval_env = envs.make(data.task, args.seed, evaluation=True)
    except envs.EnvError as exc:
        raise RunError(str(exc)) from None
    if ck is None:
        algos, streams = [], []
        for j, dset in enumerate(dsets):
            d3rlpy.seed(agent_seed(args.seed, j) if multi else args.seed)
            algo = make_algo(args.algo, hp)
            build_scalers_with_transition_picker(algo, dset)  # as algo.fitter does, in its order
            algo.build_with_dataset(dset)
            algos.append(algo)
            streams.append(rng_state())
        # with the scalers' statistics of the data
        configs = [json.loads(a.config.serialize()) for a in algos]
        st: dict[str, Any] = {"step": 0, "train_seconds": 0.0, "learn_seconds": 0.0, "learn_steps": 0, "last_eval": {}}
        resolved = {**hp, "d3rlpy_config": dict(zip(names, configs, strict=True)) if multi else configs[0],
                    "data": {"transitions": int(dsets[0].transition_count), "rows": len(data.rewards),
                             "episodes": data.episodes,
                             "actions": "mapped from the env's box onto [-1, 1]; envs.step maps them back",
                             "dropped": "the last step of each episode that did not terminate (d3rlpy "
                                        "has no next observation for it)"},
                    "sources": {name: src for name, (_, src) in HP[args.algo].items()}}
        if multi:
            resolved["task"] = data.task
            resolved["agents"] = {
                k: {"seed": agent_seed(args.seed, j), "local_view": data.local_view[k].tolist(),
                    "action_split": data.action_split[k].tolist()} for j, k in enumerate(names)}
            resolved["data"]["per_agent"] = ("independent learners: agent j's observations are its local view "
                                             "o_j, its actions a[:, action_split[j]]; team reward, terminals "
                                             "and timeouts shared")
        atomic_write(conf_path, lambda p: p.write_text(json.dumps(
            {"identity": ident, "resolved": resolved, "versions": versions(), "dataset_root": str(args.dataset_root),
             "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}, indent=1)))
        rec = dataset_record(args.dataset, Path(args.dataset_root))  # as diffrl train writes it
        atomic_write(out / DATASET_RECORD, lambda p: p.write_text(json.dumps(rec, indent=1)))
        done_path.unlink(missing_ok=True)
        for stale in ("d3rlpy_losses.csv",):
            (out / stale).unlink(missing_ok=True)
    else:
        blobs, steps, streams = ((ck["learnables"], ck["grad_steps"], ck["rngs"]) if multi else
                                 ([ck["learnable"]], [ck["grad_step"]], [ck["rng"]]))
        algos = [load_learnable(b) for b in blobs]
        for algo, g in zip(algos, steps, strict=True):
            algo.set_grad_step(g)
        if not multi:
            set_rng_state(streams[0])
        st = dict(ck["state"])
        done_path.unlink(missing_ok=True)

    keep = None if ck is None else st["step"]
    eval_log = CsvLog(out / "eval.csv", EVAL_COLUMNS, keep)
    train_log = CsvLog(out / "train.csv", TRAIN_COLUMNS, keep)
    ep_log = CsvLog(out / "episodes.csv", EPISODE_COLUMNS, keep)  # offline: header only
    loss_path = out / "d3rlpy_losses.csv"
    loss_names = sorted(ck["loss_names"]) if ck is not None else []
    loss_log = CsvLog(loss_path, ["step", *loss_names], keep) if loss_names else None

    if multi:
        policy = joint_action([predictor(a) for a in algos], [data.local_view[k] for k in names],
                              [data.action_split[k] for k in names], data.actions.shape[1])
    else:
        policy = predictor(algos[0])

    def evaluate() -> dict[str, float]:
        res: dict[str, float] = envs.evaluate(policy, eval_env, args.seed, args.eval_episodes)
        eval_log.add({"step": st["step"], **res, "train_seconds": st["train_seconds"]})
        st["last_eval"] = res
        return res

    def checkpoint() -> None:
        blobs = [learnable_bytes(a) for a in algos]
        learners: dict[str, Any] = (
            {"learnables": blobs, "grad_steps": [int(a.grad_step) for a in algos], "rngs": list(streams)} if multi
            else {"learnable": blobs[0], "grad_step": int(algos[0].grad_step), "rng": rng_state()})
        payload = {"format": CHECKPOINT_FORMAT, "identity": ident, "step": st["step"], "state": dict(st),
                   **learners, "loss_names": loss_names}
        atomic_write(ck_path, lambda p: p.write_bytes(pickle.dumps(payload)))
        for k, blob in zip(names, blobs, strict=True):
            atomic_write(out / (f"model-{k}.d3" if multi else "model.d3"), lambda p, b=blob: p.write_bytes(b))

    def update() -> dict[str, float]:
        """One gradient step of every learner (algo.fitter's step: a minibatch, then algo.update)."""
        if not multi:
            return dict(algos[0].update(dsets[0].sample_transition_batch(algos[0].config.batch_size)))
        every: dict[str, float] = {}
        for j, (k, algo, dset) in enumerate(zip(names, algos, dsets, strict=True)):
            set_rng_state(streams[j])
            got = algo.update(dset.sample_transition_batch(algo.config.batch_size))
            streams[j] = rng_state()
            every.update({f"{k}/{name}": float(v) for name, v in got.items()})
        return every

    def train_columns(losses: dict[str, float]) -> dict[str, float]:
        """train.csv's loss columns: d3rlpy's losses of the learner, or their mean over the agents."""
        row: dict[str, float] = {}
        for name, col in LOSS_COLUMNS.items():
            vals = [float(v) for k, v in losses.items() if k.rpartition("/")[2] == name]
            if vals:
                row[col] = float(np.mean(vals))
        return row

    bar = tqdm(total=args.steps, initial=st["step"], unit="step", disable=args.no_progress, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0,
               desc=f"d3rlpy-{args.algo} {args.dataset} seed {args.seed}")
    losses: dict[str, float] = {}
    window_t, window_start = st["step"], time.perf_counter()
    try:
        if st["step"] == 0:
            evaluate()
        while st["step"] < args.steps:
            tick = time.perf_counter()
            losses.update(update())
            st["step"] += 1
            elapsed = time.perf_counter() - tick
            st["train_seconds"] += elapsed
            st["learn_seconds"] += elapsed
            st["learn_steps"] += 1
            bar.update(1)
            if st["step"] % args.log_every == 0:
                now = time.perf_counter()
                sps = (st["step"] - window_t) / max(now - window_start, 1e-9)
                window_t, window_start = st["step"], now
                row: dict[str, Any] = {"step": st["step"], "steps_per_s": sps, **train_columns(losses)}
                train_log.add(row)
                if loss_log is None:  # the names d3rlpy returns, known from the first row on
                    loss_names = sorted(losses)
                    loss_log = CsvLog(loss_path, ["step", *loss_names], keep)
                loss_log.add({"step": st["step"], **{k: float(v) for k, v in losses.items()}})
            if st["step"] % args.eval_every == 0:
                res = evaluate()
                bar.set_postfix(ret=f"{res['return_mean']:.1f}")
                window_start = time.perf_counter()  # evaluation is not training throughput
                checkpoint()
            elif st["step"] == args.steps:
                checkpoint()
    finally:
        bar.close()
        for log in (eval_log, train_log, ep_log, loss_log):
            if log is not None:
                log.close()
    summary = {"steps": st["step"], "episodes": 0, "train_seconds": st["train_seconds"],
               "learn_steps": st["learn_steps"], "learn_seconds": st["learn_seconds"],
               "seconds_per_1k_learning_steps": 1000 * st["learn_seconds"] / max(st["learn_steps"], 1),
               "last_eval": st["last_eval"]}
    atomic_write(done_path, lambda p: p.write_text(json.dumps(summary, indent=1)))
    return summary


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d3rlpy_run.py", description="d3rlpy's offline baselines on a diffrl "
                                "dataset, written as a diffrl run folder (run with the d3rlpy environment's python)")
    p.add_argument("algo", choices=ALGOS, help="bc, td3bc (TD3+BC), iql or cql")
    p.add_argument("--dataset", required=True, help="Minari dataset id (diffrl dataset list)")
    p.add_argument("--dataset-root", default=os.environ.get("MINARI_DATASETS_PATH"),
                   help="Minari root holding --dataset (default: $MINARI_DATASETS_PATH)")
    p.add_argument("--steps", type=_positive, required=True, help="gradient steps in total (resume: to this many)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the run (default: 0)")
    p.add_argument("--out", required=True, help="run folder; the same command again resumes from its checkpoint")
    p.add_argument("--eval-every", type=_positive, default=5000, help="steps between evaluations (default: 5000)")
    p.add_argument("--eval-episodes", type=_positive, default=10, help="episodes per evaluation (default: 10)")
    p.add_argument("--log-every", type=_positive, default=1000, help="steps between train.csv rows (default: 1000)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyperparameter (HP in this file lists them), repeatable")
    p.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import logging

    try:
        import d3rlpy  # noqa: F401 - configures structlog on import; its info and debug lines are not ours
        import minari  # noqa: F401
        import structlog
    except ImportError as exc:
        print(f"d3rlpy_run: {exc.name} is not installed: run this with the d3rlpy environment's python "
              "(baselines/README.md)", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if not args.dataset_root:
        print("d3rlpy_run: --dataset-root is required (or set MINARI_DATASETS_PATH)", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            summary = run(args)
    except RunError as exc:
        print(f"d3rlpy_run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"d3rlpy_run: interrupted; the same command resumes {args.out} from its last checkpoint",
              file=sys.stderr)
        return 130
    ev = summary.get("last_eval") or {}
    state = "already complete" if summary.get("already_done") else "done"
    print(f"d3rlpy_run: {state}: {summary['steps']} steps in {args.out}"
          + (f", last evaluation return {ev['return_mean']:.1f}" if ev else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
