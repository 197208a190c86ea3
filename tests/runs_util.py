"""Helpers the end-to-end training tests share: a run's log rows, a run stopped after a checkpoint, and the
rows ``diffrl plot`` made of an offline run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

TIMING = ("train_seconds", "steps_per_s")

#: The multi-agent end-to-end runs (DOM2, DoF, MADiff) train on a small random Hopper-3x1 dataset (three agents,
#: each with state entries hidden from it): its evaluation episodes end when the untrained agents fall, where
#: HalfCheetah's last 1,000 steps each, which was most of those tests' time.
HOPPER_3X1 = "diffrl/hopper-3x1/random-v0"


def log_rows(path: Path, drop: tuple[str, ...] = TIMING) -> list[dict[str, str]]:
    """A CSV log's rows without the timing columns (which differ between a straight and a resumed run)."""
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def stop_after_checkpoint(argv: list[str], folder: Path, step: int, sig: int = signal.SIGKILL,
                          timeout: float = 600.0) -> tuple[int, list[str]]:
    """Run ``diffrl ARGV`` in a child process, send ``sig`` once ``folder/checkpoint.pt`` holds step >= ``step``;
    returns the exit status and the lines of its standard error."""
    proc = subprocess.Popen([sys.executable, "-m", "diffrl_ref", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while True:
            ck = folder / "checkpoint.pt"
            if ck.exists() and torch.load(ck, weights_only=False)["state"]["t"] >= step:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
            time.sleep(0.05)
    finally:
        if sig == signal.SIGKILL:
            os.kill(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode().strip().splitlines()


def plotted(out: Path, dataset_id: str, root: Path, step: int) -> dict[str, dict[str, Any]]:
    """``diffrl plot``'s rows in ``out`` by algorithm, after checking the offline dataset's own row: its average
    return (normalised where the dataset has both reference returns) equals the dataset's, read here."""
    from diffrl_ref.rl import datasets

    rows = {r["algo"]: r for r in json.loads((out / "results.json").read_text())}
    rec = datasets.record(dataset_id, root)
    lo, hi, avg = rec["ref_min_score"], rec["ref_max_score"], rec["average_return"]
    want = avg if hi is None else 100.0 * (avg - lo) / (hi - lo)
    got = rows["dataset"]["at"][str(step)]["mean"]
    assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (got, want)
    return rows
