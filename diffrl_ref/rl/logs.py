"""Run-folder files shared by every writer of run folders (``diffrl train`` and ``baselines/d3rlpy_run.py``).

Imports nothing heavy (no torch, no agent), so the d3rlpy environment, which lacks stable-baselines3, can use it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
EVAL_COLUMNS = ["step", "return_mean", "return_std", "length_mean", "success_rate", "train_seconds"]
TRAIN_COLUMNS = ["step", "steps_per_s", "critic_loss", "actor_loss", "alpha", "rep_loss"]
EPISODE_COLUMNS = ["step", "episode", "return", "length", "success"]


def hash_into(digest: Any, part: Any) -> None:
    """Feed an array (or a dict of arrays, by sorted key) to a hashlib ``digest``: dtype, shape and bytes, so that
    the same data give the same digest on any machine (a dataset's record, a carried replay buffer)."""
    if isinstance(part, dict):
        for key in sorted(part):
            digest.update(str(key).encode())
            hash_into(digest, part[key])
        return
    a = np.ascontiguousarray(part)
    digest.update(f"{a.dtype.str}{a.shape}".encode())
    digest.update(a.tobytes())


def atomic_write(path: Path, write: Any) -> None:
    """write(tmp_path), fsync, then rename over ``path``: a reader sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CsvLog:
    """Append-only CSV, flushed per row; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None) -> None:
        self.path, self.columns = path, columns
        rows: list[dict[str, str]] = []
        if keep_until is not None and path.exists():
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    try:  # a kill -9 can leave a torn last line
                        if int(row["step"]) <= keep_until and None not in row.values():
                            rows.append(row)
                    except (TypeError, ValueError):
                        continue

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, columns)
                w.writeheader()
                w.writerows(rows)

        atomic_write(path, write)
        self.fh = open(path, "a", newline="")  # noqa: SIM115 - closed by close()
        self.writer = csv.DictWriter(self.fh, columns, extrasaction="ignore")

    def add(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
