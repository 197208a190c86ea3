"""diffrl-ref: executable specification of diffusion models for reinforcement learning."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"


class _CheckoutLayout(importlib.abc.MetaPathFinder):
    """Give a source checkout the wheel's layout: ``diffrl_ref.conformance`` is ``<checkout>/conformance``.

    The wheel maps the top-level ``conformance/`` folder into the package (pyproject's
    ``package-dir``). ``python3 -m diffrl_ref`` run from the repository root puts the root first
    on ``sys.path``, so this source folder, which has no ``conformance`` subfolder, shadows the
    installed package. ``spec/`` and ``docs/clauses/`` are found in a checkout by path
    (:func:`diffrl_ref.spec.spec_dir`); the test package needs an import name, given here. The
    finder sits last on ``sys.meta_path``, so an installed or editable layout always wins.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != f"{__name__}.conformance":
            return None
        return importlib.util.spec_from_file_location(fullname, self.folder / "__init__.py",
                                                      submodule_search_locations=[str(self.folder)])


def _install_checkout_layout() -> None:
    here = Path(__file__).resolve().parent
    folder = here.parent / "conformance"
    if (here / "conformance").is_dir() or not (folder / "__init__.py").is_file() \
            or not (here.parent / "pyproject.toml").is_file():
        return  # an installed wheel (it has the subpackage), or not a checkout
    if not any(isinstance(f, _CheckoutLayout) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutLayout(folder))


_install_checkout_layout()
