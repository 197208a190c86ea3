"""Helpers the end-to-end training tests share: a run's log rows, and a run stopped after a checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TIMING = ("train_seconds", "steps_per_s")


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
