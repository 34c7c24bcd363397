"""Route conditions: `match:` in the config, compiled once into plain predicates.

A condition names a field and tests its value:

    match:
      resource.service.name: support-bot          # a scalar means `equals`
      span.gen_ai.request.model: {regex: "^gpt-4"}
      span.gen_ai.usage.cost: {gt: 0.10}           # after normalization and pricing
      scope.name: {in: [openinference.instrumentation.openai]}
      name: {exists: true}                         # the span's name
      status: error                                # unset | ok | error
      tenant: team-a
      any:                                         # alternatives: one of them must hold
        - {resource.deployment.environment: prod}
        - {tenant: {in: [team-b, team-c]}}

Every condition of a mapping must hold. Operators: equals, in, regex (a search, as OTTL's
IsMatch; anchor it with ^...$ for a whole match), exists, gt, gte, lt, lte (numbers only).
A missing attribute fails every operator except `exists: false`.

Conditions are evaluated at the coarsest level they need: tenant per request, resource
attributes per resource, scope per scope, the rest per span. Attributes are read once per
resource or span, and only the keys some route names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

REQUEST, RESOURCE, SCOPE, SPAN = 0, 1, 2, 3  # evaluation levels, coarse to fine
OPERATORS = ("equals", "in", "regex", "exists", "gt", "gte", "lt", "lte")
_STATUS = {0: "unset", 1: "ok", 2: "error"}
_ABSENT = object()
_COMPLEX = object()  # arrays, maps and bytes: only `exists` applies

Test = Callable[[Any], bool]


class MatchError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(slots=True)
class Subject:
    """What one evaluation sees. Attribute maps hold only the keys some route names."""

    tenant: str | None = None
    resource: Mapping[str, Any] | None = None
    scope_name: str = ""
    scope_version: str = ""
    span: Span | None = None
    span_attributes: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    field: str  # tenant | resource | scope.name | scope.version | span | name | status
    key: str  # attribute key for resource/span fields, else ""
    test: Test

    @property
    def level(self) -> int:
        return {"tenant": REQUEST, "resource": RESOURCE, "scope.name": SCOPE, "scope.version": SCOPE}.get(self.field, SPAN)

    def holds(self, s: Subject) -> bool:
        field = self.field
        if field == "span":
            value = s.span_attributes.get(self.key, _ABSENT) if s.span_attributes is not None else _ABSENT
        elif field == "resource":
            value = s.resource.get(self.key, _ABSENT) if s.resource is not None else _ABSENT
        elif field == "name":
            value = s.span.name if s.span is not None else _ABSENT
        elif field == "status":
            value = _STATUS.get(s.span.status.code, "unset") if s.span is not None else _ABSENT
        elif field == "tenant":
            value = _ABSENT if s.tenant is None else s.tenant
        elif field == "scope.name":
            value = s.scope_name
        else:
            value = s.scope_version
        return self.test(value)


@dataclass(frozen=True, slots=True)
class Match:
    """All `conditions` hold, and for each group in `alternatives` at least one match holds."""

    conditions: tuple[Condition, ...]
    alternatives: tuple[tuple["Match", ...], ...] = ()

    def holds(self, s: Subject) -> bool:
        for c in self.conditions:
            if not c.holds(s):
                return False
        for group in self.alternatives:
            if not any(m.holds(s) for m in group):
                return False
        return True

    def all_conditions(self) -> list[Condition]:
        out = list(self.conditions)
        for group in self.alternatives:
            for m in group:
                out.extend(m.all_conditions())
        return out

    @property
    def level(self) -> int:
        return max((c.level for c in self.all_conditions()), default=REQUEST)

    def keys(self, field: str) -> set[str]:
        return {c.key for c in self.all_conditions() if c.field == field}


def compile_match(raw: Any, path: str) -> Match:
    """Compile a `match:` mapping, or raise `MatchError` listing every problem with its key path."""
    errors: list[str] = []
    match = _compile(raw, path, errors)
    if errors:
        raise MatchError(errors)
    return match


def _compile(raw: Any, path: str, errors: list[str]) -> Match:
    if not isinstance(raw, dict) or not raw:
        errors.append(f"{path}: expected a mapping of conditions, e.g. {{resource.service.name: my-app}}")
        return Match(())
    conditions: list[Condition] = []
    alternatives: list[tuple[Match, ...]] = []
    for name, spec in raw.items():
        where = f"{path}.{name}"
        if name == "any":
            if not isinstance(spec, list) or not spec:
                errors.append(f"{where}: expected a non-empty list of condition mappings")
                continue
            alternatives.append(tuple(_compile(item, f"{where}[{i}]", errors) for i, item in enumerate(spec)))
            continue
        field, key = _field(str(name))
        if field is None:
            errors.append(f"{where}: unknown field; use resource.<attribute>, span.<attribute>, scope.name, "
                          "scope.version, name, status, tenant or any")
            continue
        test = _test(spec, where, errors, status=field == "status")
        if test is not None:
            conditions.append(Condition(field, key, test))
    return Match(tuple(conditions), tuple(alternatives))


def _field(name: str) -> tuple[str | None, str]:
    for prefix, field in (("resource.", "resource"), ("span.", "span"), ("attributes.", "span")):
        if name.startswith(prefix) and len(name) > len(prefix):
            return field, name[len(prefix):]
    if name in ("scope.name", "scope.version", "name", "status", "tenant"):
        return name, ""
    return None, ""


def _test(spec: Any, where: str, errors: list[str], status: bool) -> Test | None:
    if isinstance(spec, list):
        spec = {"in": spec}
    elif not isinstance(spec, dict):
        spec = {"equals": spec}
    if not spec:
        errors.append(f"{where}: expected an operator ({', '.join(OPERATORS)})")
        return None
    tests: list[Test] = []
    for op, arg in spec.items():
        at = f"{where}.{op}"
        if op not in OPERATORS:
            errors.append(f"{at}: unknown operator; expected one of {', '.join(OPERATORS)}")
            continue
        if status and op in ("equals", "in"):
            values = arg if op == "in" and isinstance(arg, list) else [arg]
            bad = [v for v in values if v not in _STATUS.values()]
            if bad:
                errors.append(f"{at}: status is one of unset, ok, error; got {bad[0]!r}")
                continue
        test = _operator(op, arg, at, errors)
        if test is not None:
            tests.append(test)
    if len(tests) != len(spec):
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda value: all(t(value) for t in tests)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if _is_number(expected):
        return _is_number(value) and value == expected
    return isinstance(value, str) and value == expected


def _operator(op: str, arg: Any, at: str, errors: list[str]) -> Test | None:
    scalar = (str, int, float, bool)
    if op == "equals":
        if not isinstance(arg, scalar):
            errors.append(f"{at}: expected a string, number or boolean")
            return None
        return lambda value: _same(value, arg)
    if op == "in":
        if not isinstance(arg, list) or not arg or not all(isinstance(v, scalar) for v in arg):
            errors.append(f"{at}: expected a non-empty list of strings, numbers or booleans")
            return None
        strings = frozenset(v for v in arg if isinstance(v, str))
        others = tuple(v for v in arg if not isinstance(v, str))
        return lambda value: (value in strings) if isinstance(value, str) else any(_same(value, v) for v in others)
    if op == "regex":
        if not isinstance(arg, str):
            errors.append(f"{at}: expected a regular expression string")
            return None
        try:
            search = re.compile(arg).search
        except re.error as exc:
            errors.append(f"{at}: invalid regular expression: {exc}")
            return None
        return lambda value: isinstance(value, str) and search(value) is not None
    if op == "exists":
        if not isinstance(arg, bool):
            errors.append(f"{at}: expected true or false")
            return None
        return lambda value: (value is not _ABSENT) == arg
    if not _is_number(arg):  # gt gte lt lte
        errors.append(f"{at}: expected a number")
        return None
    bound = float(arg)
    compare = {"gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__}[op]
    return lambda value: _is_number(value) and compare(float(value), bound)


def attribute_values(attributes: "list[KeyValue] | Any", wanted: frozenset[str]) -> dict[str, Any]:
    """The values of the `wanted` keys among `attributes`, as Python scalars (one pass)."""
    out: dict[str, Any] = {}
    for kv in attributes:
        if kv.key in wanted:
            out[kv.key] = scalar(kv.value)
    return out


def scalar(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    return _COMPLEX if kind is not None else _ABSENT
