"""`type:` -> the module implementing it. Adding a sink is one module plus one line here.

Each registered module exposes `Config` (a pydantic model with `type: Literal[<name>]`) and
`create(name, config)`, in the manner of the Collector's component factories.
"""

from __future__ import annotations

from types import ModuleType

from gateway.sinks import file

SINKS: dict[str, ModuleType] = {
    "file": file,
}
