"""Conformance before training: the clauses an agent calls are checked on the run's device and dtype first.

``diffrl train`` runs ``diffrl conform`` (the ``ci`` profile, about 10 s on 2 CPU cores) on the production
functions of :data:`CLAUSES` for the agent, in a child process so the training process's random state is
untouched, and writes the report to ``RUN/conformance.json``. A failing clause stops the run before it
starts. A resumed run is checked again only if the device or dtype changed (or it was never checked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The clauses whose production functions each agent evaluates while training (docs/rl.rst maps them
#: to the steps of Algorithm 2); SAC is stable-baselines3's and evaluates none of them.
CLAUSES: dict[str, tuple[str, ...]] = {
    "diffsr": ("ddpm.noise", "diffsr.score_objective", "diffsr.train_step", "diffsr.critic", "diffsr.td_target",
               "diffsr.critic_loss", "diffsr.policy_objective"),
    "sac": (),
    "diffusion-ql": ("schedule.vp", "ddpm.noise", "diffusion_ql.bc_loss", "diffusion_ql.sample_action",
                     "diffusion_ql.q_loss", "diffusion_ql.loss", "diffsr.td_target", "diffsr.critic_loss"),
    "edp": ("schedule.linear", "ddpm.noise", "diffusion_ql.bc_loss", "edp.weighted_elbo", "edp.policy_objective",
            "edp.action_approx", "edp.weights", "edp.expectile_loss", "edp.iql_q_target", "diffsr.critic_loss",
            "dpm_solver.pp_2m"),
    "dom2": ("schedule.vp", "ddpm.noise", "diffusion_ql.bc_loss", "diffusion_ql.sample_action", "diffusion_ql.q_loss",
             "diffusion_ql.loss", "dom2.policy_loss", "dom2.cql_sampled", "dom2.sample", "diffsr.td_target"),
    "dof": ("schedule.linear", "schedule.vp", "ddpm.noise", "ddpm.simple_loss", "ddpm.reverse_step",
            "dof.noise_factorisation", "dof.data_factorisation", "dof.train_step", "dof.policy_loss",
            "dof.decentralised_sample", "diffsr.td_target", "diffsr.critic_loss"),
    "madiff": ("schedule.cosine", "ddpm.noise", "ddpm.simple_loss", "decision_diffuser.dropout_loss",
               "decision_diffuser.inverse_dynamics_loss", "diffuser.inpaint", "madiff.guided_eps", "guidance.cfg",
               "ddim.step", "diffuser.sample", "madiff.decentralised_action"),
}
DTYPE = "float32"  # the agents train in float32
IMPL = "fast"  # what is checked: the production path (the tests swap in one with a planted bug)
REPORT = "conformance.json"


class GateError(ValueError):
    """The production path failed a clause the agent uses; the CLI prints it as one line and exits 2."""


def needed(out: Path, device: str) -> bool:
    """Whether the run in ``out`` must be (re)checked: never checked, or checked on another device or dtype."""
    try:
        old = json.loads((out / REPORT).read_text())
    except (OSError, ValueError):
        return True
    return bool(old.get("device") != device or old.get("dtype") != DTYPE)


def check(algo: str, device: str, out: Path, impl: str | None = None) -> dict[str, Any]:
    """Run the agent's clauses through the conformance suite; write ``out/conformance.json``; raise on a failure.

    ``impl`` is what ``diffrl conform --impl`` takes: the production path by default (another adapter object,
    e.g. one with a planted bug, in the tests).
    """
    impl = impl or IMPL
    clauses = CLAUSES[algo]
    record: dict[str, Any] = {"algo": algo, "device": device, "dtype": DTYPE, "impl": impl, "clauses": list(clauses)}
    if not clauses:
        record.update(note=f"{algo} evaluates no production function of the spec: nothing to check",
                      clause_status={}, passed=True)
        _write(out, record)
        return record
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "diffrl_ref", "conform", "--impl", impl,
               *(["--dtype", DTYPE, "--device", device] if impl == "fast" else []),
               "-k", " or ".join(clauses), "--report", str(report), "--allow-incomplete"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if not report.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            raise GateError(f"conformance check before training did not run (exit {proc.returncode}): "
                            f"{tail[-1] if tail else 'no output'}")
        full = json.loads(report.read_text())
    rows = {c["id"]: c for c in full["clauses"] if c["id"] in clauses}
    record["command"] = "diffrl " + " ".join(cmd[3:-3])
    record["clause_status"] = {cid: rows[cid]["status"] if cid in rows else "missing" for cid in clauses}
    record["properties"] = {cid: {p["name"]: p["status"] for p in rows[cid]["properties"]} for cid in rows}
    record["failures"] = {cid: rows[cid]["failures"] for cid in rows if rows[cid]["failures"]}
    record["summary"] = full.get("property_summary")
    record["passed"] = all(s in ("pass", "deviation") for s in record["clause_status"].values())
    _write(out, record)
    bad = [cid for cid, s in record["clause_status"].items() if s not in ("pass", "deviation")]
    if bad:
        cid = bad[0]
        raise GateError(f"the production path fails clause {cid} ({record['clause_status'][cid]}) on {device} "
                        f"in {DTYPE}; see {out / REPORT} (--skip-conformance trains anyway)")
    return record


def _write(out: Path, record: dict[str, Any]) -> None:
    tmp = out / (REPORT + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out / REPORT)
