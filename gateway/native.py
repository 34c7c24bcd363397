"""The compiled parts of otelgate, where they were built.

`setup.py` builds them when `pip install` finds a C compiler; so far one: trace affinity's byte
split (`gateway/service/_affinity_split.c`). Each has a pure-Python counterpart that gives the
same result (the tests hold them to it), so a missing build costs CPU, never correctness.
`OTELGATE_PURE_PYTHON=1` turns them off (to compare, or to rule them out).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def compiled(module: str) -> ModuleType | None:
    """The compiled module `module` (a dotted name), or None if it was not built or is turned off."""
    if os.environ.get("OTELGATE_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
