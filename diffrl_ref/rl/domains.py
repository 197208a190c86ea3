"""Declared domains of the agents' hyperparameters: (test, the domain in words), checked before a run starts."""

from __future__ import annotations

import math
from typing import Any

Domain = tuple[Any, str]

POSITIVE_INT: Domain = (lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT: Domain = (lambda v: v >= 0, "an integer >= 0")
POSITIVE: Domain = (lambda v: 0 < v < math.inf, "a number > 0")
NON_NEGATIVE: Domain = (lambda v: 0 <= v < math.inf, "a number >= 0")
DISCOUNT: Domain = (lambda v: 0 <= v < 1, "a number in [0, 1)")
POLYAK: Domain = (lambda v: 0 < v <= 1, "a number in (0, 1]")


def one_of(*choices: str) -> Domain:
    return (lambda v: v in choices, "one of " + ", ".join(choices))
