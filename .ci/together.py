"""Run commands at the same time and fail if any fails: tox's `tests` env pairs mypy with the docs build (each keeps
one core busy; CI's machine has two). Each command's output is printed whole when it ends, with its time.

    python .ci/together.py "mypy" "sphinx-build -W -q -b html docs out"
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time


def main(commands: list[str]) -> int:
    start = time.monotonic()
    procs = [subprocess.Popen(shlex.split(c), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    worst = 0
    for cmd, proc in zip(commands, procs, strict=True):
        out, _ = proc.communicate()
        print(f"together> {cmd}: exit {proc.returncode} after {time.monotonic() - start:.1f} s", flush=True)
        sys.stdout.write(out)
        worst = worst or proc.returncode
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
