"""``diffrl sweep GRID.yaml --out DIR``: every cell of a grid as a Ray task, through the resumable training loop.

A grid file::

    steps: 50000              # environment steps of every cell
    seeds: [0, 1, 2]
    envs: [HalfCheetah-v5]
    groups:                   # one line of the results table each
      - {algo: diffsr}
      - {algo: diffsr, name: feature-steps-4, hp: {feature_steps: 4}}
      - {algo: sac}
    eval_every: 5000          # optional, as the flags of ``diffrl train``
    eval_episodes: 10
    checkpoint_every: 10000
    datasets: [diffrl/hopper/medium-v0]   # offline groups (diffusion-ql, edp, ...) run on these instead of envs
    dataset_root: datasets                # their Minari root

A group whose algo is ``d3rlpy-bc``, ``d3rlpy-td3bc``, ``d3rlpy-iql`` or ``d3rlpy-cql`` is a baseline of
d3rlpy on the datasets: its cells run ``baselines/d3rlpy_run.py`` (from this checkout) with the d3rlpy
environment's python (``DIFFRL_D3RLPY_PYTHON``, else the checkout's ``.tox/d3rlpy``), which writes the same
run folders, resumes the same way (it checkpoints at each evaluation, so ``checkpoint_every`` does not apply)
and checks its ``hp`` against its own table when the grid is loaded.

Cells run task by task, in the grid's order of envs (then datasets), and within a task group by group, seed by
seed. The cell (env or dataset, group, seed) runs in ``DIR/ENV/NAME/seedSEED`` (NAME: the group's ``name``, by default
its algorithm), exactly as ``diffrl train ALGO --env ENV --seed SEED --steps STEPS --hp ... --out`` that
folder would. Rerunning the sweep skips finished cells (their ``done.json``) and resumes the others from
their checkpoints; a cell that fails is reported and retried once, before any cell not yet started (it resumes
from its checkpoint), while the others go on. Without
``--address`` a local Ray instance with ``--runs-at-once`` CPUs is started, each run using
``--threads`` torch threads; with it, the cells go to that Ray cluster, whose workers must see ``DIR``.
``--groups``, ``--envs`` and ``--seeds`` run only the matching cells (a campaign's first runs, which another
stage waits for); the others are left as they are.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import envs, loop

GRID_KEYS = {"steps", "seeds", "envs", "datasets", "dataset_root", "groups", "eval_every", "eval_episodes",
             "checkpoint_every"}
GROUP_KEYS = {"algo", "name", "hp"}
#: d3rlpy baselines in a grid: algo -> baselines/d3rlpy_run.py's algorithm
BASELINES = {f"d3rlpy-{a}": a for a in ("bc", "td3bc", "iql", "cql")}
CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ValueError):
    """A grid that cannot run; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class Cell:
    algo: str
    env: str
    seed: int
    steps: int
    group: str
    hp: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 5000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    dataset: str = ""
    dataset_root: str = ""
    # a d3rlpy cell: the runner script and the d3rlpy environment's python, found when the grid is loaded
    runner: str = ""
    python: str = ""

    def folder(self, out: Path) -> Path:
        return out / (self.dataset or self.env) / self.group / f"seed{self.seed}"

    def label(self) -> str:
        return f"{self.dataset or self.env}/{self.group}/seed{self.seed}"

    def run_config(self, skip_conformance: bool = False) -> loop.RunConfig:
        return loop.RunConfig(algo=self.algo, env=self.env, seed=self.seed, steps=self.steps,
                              eval_every=self.eval_every, eval_episodes=self.eval_episodes,
                              checkpoint_every=self.checkpoint_every, hp=dict(self.hp),
                              skip_conformance=skip_conformance, dataset=self.dataset,
                              dataset_root=self.dataset_root)


def checkouts() -> list[Path]:
    """Where ``baselines/`` and ``.tox/d3rlpy`` are looked for: this package's checkout (an editable install),
    then the working directory (a sweep is run from the repository root; a wheel install has no checkout)."""
    return [CHECKOUT, Path.cwd()]


def runner() -> Path:
    """The checkout's ``baselines/d3rlpy_run.py``."""
    for root in checkouts():
        if (root / "baselines" / "d3rlpy_run.py").is_file():
            return (root / "baselines" / "d3rlpy_run.py").resolve()
    raise SweepError("grid has d3rlpy groups, but baselines/d3rlpy_run.py is not found: run the sweep from the "
                     "repository root")


def d3rlpy_python() -> str:
    """The d3rlpy environment's python: ``DIFFRL_D3RLPY_PYTHON``, else the checkout's ``.tox/d3rlpy``."""
    given = os.environ.get("DIFFRL_D3RLPY_PYTHON")
    if given:
        return given
    for root in checkouts():
        if (root / ".tox" / "d3rlpy" / "bin" / "python").exists():
            return str((root / ".tox" / "d3rlpy" / "bin" / "python").absolute())
    raise SweepError("grid has d3rlpy groups: set DIFFRL_D3RLPY_PYTHON to the d3rlpy environment's python, or "
                     "build .tox/d3rlpy with `tox -e d3rlpy` (baselines/README.md)")


def _baseline_hp(algo: str, hp: dict[str, Any]) -> dict[str, Any]:
    """A d3rlpy group's overrides checked and converted by the runner's own table (it imports no d3rlpy)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_d3rlpy_run", runner())
    assert spec is not None and spec.loader is not None
    mod = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = mod  # its dataclasses look their module up there
        spec.loader.exec_module(mod)
    try:
        typed: dict[str, Any] = mod.parse_hp(BASELINES[algo], [f"{k}={v}" for k, v in hp.items()])
    except mod.RunError as exc:
        raise SweepError(f"grid: {algo}: {exc}") from None
    return typed


def _positive_int(grid: dict[str, Any], key: str, default: int | None = None) -> int:
    v = grid.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SweepError(f"grid: {key} must be an integer >= 1, got {v!r}")
    return v


def load_grid(path: Path) -> list[Cell]:
    """The grid's cells, every value checked (hyperparameters against their domains) before anything runs."""
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"cannot read grid {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(grid, dict):
        raise SweepError(f"grid {path} must be a mapping with keys {', '.join(sorted(GRID_KEYS))}")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise SweepError(f"grid: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"expected {', '.join(sorted(GRID_KEYS))}")
    steps = _positive_int(grid, "steps")
    every: dict[str, Any] = {k: _positive_int(grid, k, d) for k, d in
             (("eval_every", 5000), ("eval_episodes", 10), ("checkpoint_every", 10_000))}
    seeds, env_ids, groups = grid.get("seeds"), grid.get("envs", []), grid.get("groups")
    data_ids = grid.get("datasets", [])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                      for s in seeds) and len(set(seeds)) == len(seeds)):
        raise SweepError(f"grid: seeds must be a list of distinct integers >= 0, got {seeds!r}")
    if not (isinstance(env_ids, list) and all(isinstance(e, str) for e in env_ids)):
        raise SweepError(f"grid: envs must be a list of environment names, got {env_ids!r}")
    if not (isinstance(data_ids, list) and all(isinstance(d, str) for d in data_ids)):
        raise SweepError(f"grid: datasets must be a list of dataset ids, got {data_ids!r}")
    data_env: dict[str, str] = {}
    root = ""
    if data_ids:
        from . import datasets

        try:
            root = str(datasets.resolve_root(grid.get("dataset_root")))
            data_env = {d: datasets.env_of(d, root) for d in data_ids}
        except datasets.DatasetError as exc:
            raise SweepError(f"grid: {exc}") from None
    for env in env_ids:
        try:
            envs.check_name(env)
        except envs.EnvError as exc:
            raise SweepError(f"grid: {exc}") from None
    if not (isinstance(groups, list) and groups):
        raise SweepError("grid: groups must be a list of {algo, name, hp} entries")
    cells: list[Cell] = []
    names: set[str] = set()
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or "algo" not in g or set(g) - GROUP_KEYS:
            raise SweepError(f"grid: group {i + 1} must have algo and optionally name and hp, got {g!r}")
        hp = g.get("hp") or {}
        if not isinstance(hp, dict):
            raise SweepError(f"grid: group {i + 1}: hp must be a mapping, got {hp!r}")
        baseline = g["algo"] in BASELINES
        python, script = "", ""
        if baseline:
            python, script = d3rlpy_python(), str(runner())
            typed = _baseline_hp(str(g["algo"]), hp)
        else:
            try:
                resolved = loop.agent_config(str(g["algo"]), {str(k): str(v) for k, v in hp.items()})
            except loop.RunError as exc:
                raise SweepError(f"grid: group {i + 1}: {exc}") from None
            typed = {str(k): getattr(resolved, str(k)) for k in sorted(hp)}
        name = str(g.get("name", g["algo"]))
        if not NAME.match(name) or name in names:
            raise SweepError(f"grid: group {i + 1}: name {name!r} must be unique, letters, digits, '.', '_' or '-'")
        names.add(name)
        if g["algo"] in loop.OFFLINE or baseline:  # offline groups run on every dataset, online ones on every env
            if not data_ids:
                raise SweepError(f"grid: group {i + 1} ({g['algo']}) trains offline: the grid needs datasets")
            cells += [Cell(str(g["algo"]), data_env[d], seed, steps, name, typed, **every, dataset=d,
                           dataset_root=root, runner=script, python=python) for d in data_ids for seed in seeds]
        else:
            if not env_ids:
                raise SweepError(f"grid: group {i + 1} ({g['algo']}) trains online: the grid needs envs")
            cells += [Cell(str(g["algo"]), env, seed, steps, name, typed, **every) for env in env_ids
                      for seed in seeds]
    # task by task (every group and seed of the first env or dataset, then the next), so that a campaign cut
    # short holds whole comparisons on its first tasks rather than one group on every task
    task = {name: i for i, name in enumerate([*env_ids, *data_ids])}
    return sorted(cells, key=lambda c: task[c.dataset or c.env])


def is_done(cell: Cell, out: Path) -> bool:
    done = cell.folder(out) / "done.json"
    try:
        return bool(json.loads(done.read_text()).get("steps") == cell.steps)
    except (OSError, ValueError):
        return False


def run_cell(cell: dict[str, Any], out: str, threads: int, skip_conformance: bool = False) -> dict[str, Any]:
    """One cell in this process (a Ray worker): the same code as ``diffrl train``; errors come back as text."""
    import torch

    torch.set_num_threads(threads)
    c = Cell(**cell)
    folder = c.folder(Path(out))
    if c.algo in BASELINES:
        return _run_baseline(c, folder, threads)
    try:
        summary = loop.train(c.run_config(skip_conformance), folder, progress=False)
        return {"ok": True, "summary": summary}
    except Exception as exc:  # noqa: BLE001 - reported per cell; the sweep goes on
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def _run_baseline(c: Cell, folder: Path, threads: int) -> dict[str, Any]:
    """A d3rlpy cell: the runner in the d3rlpy environment, its last stderr line as the error."""
    import subprocess

    argv = [c.python, c.runner, BASELINES[c.algo], "--dataset", c.dataset, "--dataset-root",
            c.dataset_root, "--steps", str(c.steps), "--seed", str(c.seed), "--out", str(folder), "--eval-every",
            str(c.eval_every), "--eval-episodes", str(c.eval_episodes), "--threads", str(threads), "--no-progress",
            *[x for k, v in c.hp.items() for x in ("--hp", f"{k}={v}")]]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else f"d3rlpy_run exited {res.returncode}"}
    return {"ok": True, "summary": json.loads((folder / "done.json").read_text())}


def select(cells: list[Cell], groups: list[str] | None = None, envs_: list[str] | None = None,
           seeds: list[int] | None = None) -> list[Cell]:
    """The cells of the named groups, environments (or datasets) and seeds; None keeps every value. A value
    the grid does not have is an error, so that a typo does not run nothing in silence."""
    for what, wanted, have in (("group", groups, {c.group for c in cells}),
                               ("env or dataset", envs_, {c.dataset or c.env for c in cells}),
                               ("seed", seeds, {c.seed for c in cells})):
        missing = [str(w) for w in wanted or [] if w not in have]
        if missing:
            raise SweepError(f"grid has no {what} {', '.join(missing)} (it has {', '.join(sorted(map(str, have)))})")
    return [c for c in cells if (groups is None or c.group in groups)
            and (envs_ is None or (c.dataset or c.env) in envs_) and (seeds is None or c.seed in seeds)]


def main(grid_path: Path, out: Path, runs_at_once: int | None, address: str | None, threads: int,
         retries: int = 1, skip_conformance: bool = False, groups: list[str] | None = None,
         envs_: list[str] | None = None, seeds: list[int] | None = None) -> int:
    """Run the grid (or the cells ``select`` keeps); returns the exit status (0 all cells done, 1 some failed
    after their retries)."""
    try:
        import ray
    except ImportError:
        raise SweepError("diffrl sweep needs Ray: pip install 'diffrl-ref[sweep]'") from None
    every = load_grid(grid_path)
    cells = select(every, groups, envs_, seeds)
    if len(cells) < len(every):
        print(f"sweep: {len(cells)} of the grid's {len(every)} cells selected", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.yaml").write_text(grid_path.read_text())
    todo = [c for c in cells if not is_done(c, out)]
    print(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", flush=True)
    if not todo:
        return 0
    cpus = runs_at_once or max(1, (os.cpu_count() or 1) // threads)
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cpus * threads, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=threads, max_retries=0)(run_cell)
    # Only as many cells are handed to Ray as can run; the rest wait here in the grid's order, so that a cell
    # that failed (a worker killed) goes back to the front and resumes from its checkpoint at once, not after
    # every cell of the grid (Ray runs what it was handed in the order handed).
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    slots = max(1, int(resources.get("CPU", threads)) // threads)
    waiting = collections.deque(todo)
    attempts: dict[str, int] = {}
    pending: dict[Any, Cell] = {}

    def submit() -> None:
        while waiting and len(pending) < slots:
            c = waiting.popleft()
            attempts[c.label()] = attempts.get(c.label(), 0) + 1
            pending[remote.remote(asdict(c), str(out.resolve()), threads, skip_conformance)] = c

    submit()
    failed: list[str] = []
    start = time.time()
    finished = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            c = pending.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                res = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            elapsed = f"{(time.time() - start) / 60:.1f} min"
            if res["ok"]:
                finished += 1
                ev = res["summary"].get("last_eval") or {}
                ret = f", return {ev['return_mean']:.1f}" if "return_mean" in ev else ""
                print(f"sweep: [{finished}/{len(todo)}] done {c.label()}{ret} ({elapsed})", flush=True)
            elif attempts[c.label()] <= retries:
                print(f"sweep: failed {c.label()}: {res['error']}; retrying ({elapsed})", flush=True)
                waiting.appendleft(c)
            else:
                failed.append(c.label())
                print(f"sweep: failed {c.label()}: {res['error']}; giving up ({elapsed})", flush=True)
            submit()
    finally:
        ray.shutdown()
    if failed:
        print(f"sweep: {len(failed)} cell(s) failed: {', '.join(failed)}; rerun the command to retry them",
              file=sys.stderr)
        return 1
    print(f"sweep: all {len(cells)} cells done in {out}", flush=True)
    return 0
