"""Load and validate the executable specification (``spec/*.yaml``).

The YAML files are the single source of truth: the docs, ``diffrl spec`` and the conformance
suite all read them through this module. A clause's tolerance rule is an expression evaluated
here, so the number a test uses is the number the docs print.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

CLAUSE_ID = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: Unit roundoff (machine epsilon, spacing of 1.0) per dtype name.
EPS: dict[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}

# Names a tolerance expression may use besides the variables a test passes in.
_TOL_NAMESPACE: dict[str, Any] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": np.log,
    "exp": np.exp,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "max": np.max,
    "sum": np.sum,
    "norm": lambda a: np.linalg.norm(a, axis=-1, keepdims=True),
    "pi": math.pi,
}


class SpecError(ValueError):
    """The spec files themselves are malformed."""


@dataclass(frozen=True)
class Symbol:
    name: str
    latex: str
    shape: str
    dtype: str
    meaning: str


@dataclass(frozen=True)
class Property:
    name: str
    statement: str


@dataclass(frozen=True)
class Source:
    publication: str
    equation: str
    deck: str
    note: str = ""


@dataclass(frozen=True)
class Tolerance:
    expr: str
    derivation: str

    def atol(self, dtype: str, **variables: Any) -> NDArray[np.float64]:
        """Evaluate the rule for ``dtype``; ``eps`` is that dtype's unit roundoff."""
        if dtype not in EPS:
            raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(EPS)}")
        ns = dict(_TOL_NAMESPACE)
        ns.update({k: np.asarray(v, dtype=np.float64) if not isinstance(v, int) else v
                   for k, v in variables.items()})
        ns["eps"] = EPS[dtype]
        try:
            value = eval(self._code, {"__builtins__": {}}, ns)  # noqa: S307 - spec text, not user input
        except NameError as exc:
            raise SpecError(f"tolerance expression {self.expr!r} needs a variable: {exc}") from None
        return np.asarray(value, dtype=np.float64)

    @functools.cached_property
    def _code(self) -> Any:
        return compile(self.expr, "<tolerance>", "eval")


@dataclass(frozen=True)
class Clause:
    id: str
    title: str
    equation: str
    symbols: tuple[Symbol, ...]
    domain: tuple[str, ...]
    source: Source
    properties: tuple[Property, ...]
    tolerance: Tolerance
    family: str
    notes: str = ""
    since: str = "0.1.0"

    @property
    def reference_name(self) -> str:
        """Qualified name of the float64 reference function: ``diffrl_ref.reference.<id>``."""
        return f"diffrl_ref.reference.{self.id}"

    @property
    def docs_page(self) -> str:
        return f"docs/clauses/{self.id}.rst"

    @property
    def anchor(self) -> str:
        return f"clause-{self.id.replace('.', '-').replace('_', '-')}"

    def property(self, name: str) -> Property:
        for p in self.properties:
            if p.name == name:
                return p
        raise KeyError(f"{self.id} has no property {name!r}")


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    intro: str
    clauses: tuple[Clause, ...] = field(default_factory=tuple)


def spec_dir() -> Path:
    """Where the YAML lives: the repository's spec/ in a checkout, the wheel's copy otherwise."""
    here = Path(__file__).resolve().parent.parent / "spec"
    if (here / "VERSION").is_file():
        return here
    return Path(str(importlib.resources.files("diffrl_ref") / "_spec"))


def version() -> str:
    return (spec_dir() / "VERSION").read_text().strip()


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] in (None, "", []):
        raise SpecError(f"{where}: missing required field {key!r}")
    return d[key]


def _clause(raw: Mapping[str, Any], family: str, where: str) -> Clause:
    cid = str(_req(raw, "id", where))
    where = f"{where}: {cid}"
    if not CLAUSE_ID.match(cid):
        raise SpecError(f"{where}: id must match {CLAUSE_ID.pattern}")
    if cid.split(".")[0] != family:
        raise SpecError(f"{where}: id must start with the family name {family!r}")
    src = _req(raw, "source", where)
    tol = _req(raw, "tolerance", where)
    props = tuple(
        Property(str(_req(p, "name", where)), str(_req(p, "statement", where)).strip())
        for p in _req(raw, "properties", where)
    )
    for p in props:
        if not PROPERTY_NAME.match(p.name):
            raise SpecError(f"{where}: property name {p.name!r} must match {PROPERTY_NAME.pattern}")
    if len({p.name for p in props}) != len(props):
        raise SpecError(f"{where}: duplicate property names")
    clause = Clause(
        id=cid,
        title=str(_req(raw, "title", where)),
        equation=str(_req(raw, "equation", where)).strip(),
        symbols=tuple(
            Symbol(
                str(_req(s, "name", where)),
                str(_req(s, "latex", where)),
                str(_req(s, "shape", where)),
                str(s.get("dtype", "float64")),
                str(_req(s, "meaning", where)),
            )
            for s in _req(raw, "symbols", where)
        ),
        domain=tuple(str(d) for d in _req(raw, "domain", where)),
        source=Source(
            publication=str(_req(src, "publication", where)),
            equation=str(_req(src, "equation", where)),
            deck=str(_req(src, "deck", where)),
            note=str(src.get("note", "")).strip(),
        ),
        properties=props,
        tolerance=Tolerance(str(_req(tol, "expr", where)), str(_req(tol, "derivation", where)).strip()),
        family=family,
        notes=str(raw.get("notes", "")).strip(),
        since=str(raw.get("since", "0.1.0")),
    )
    clause.tolerance._code  # noqa: B018 - compile now so a bad expression fails at load
    return clause


@functools.cache
def families() -> tuple[Family, ...]:
    out = []
    for path in sorted(spec_dir().glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        where = path.name
        name = str(_req(raw, "family", where))
        if path.stem != name:
            raise SpecError(f"{where}: family {name!r} must match the file name")
        clauses = tuple(_clause(c, name, where) for c in _req(raw, "clauses", where))
        out.append(Family(name, str(_req(raw, "title", where)), str(raw.get("intro", "")).strip(), clauses))
    return tuple(out)


@functools.cache
def clauses() -> dict[str, Clause]:
    """All clauses by ID, in spec order."""
    out: dict[str, Clause] = {}
    for fam in families():
        for c in fam.clauses:
            if c.id in out:
                raise SpecError(f"duplicate clause id {c.id}")
            out[c.id] = c
    return out


def clause(cid: str) -> Clause:
    try:
        return clauses()[cid]
    except KeyError:
        raise KeyError(f"no clause {cid!r} in spec {version()}") from None
