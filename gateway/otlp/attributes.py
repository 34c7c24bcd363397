"""A span attribute that a processor adds, as a message edit or as bytes appended to the span.

Adding a `KeyValue` to a parsed upb span costs about 1.4 us (a new sub-message, its key, its
value, each a call into upb), and the span must then be encoded again for the sinks. On the wire
an added attribute is only more bytes at the end of the span: field 9, the `KeyValue`'s length,
its key, its value. `Batch.add_attribute` keeps those bytes while the span's received bytes are
still valid (gateway/batch.py), so a priced LLM span goes out as its received bytes plus about
200 bytes, with no upb write and no re-encoding; the message gets the attribute only if something
reads it later (`Batch.request`), through `add_to_message`, which gives the same message.

`encoded` is upb's canonical encoding of the same `KeyValue` (fields in number order, minimal
varints, a oneof written even when it holds its default), so a span with the bytes appended
encodes exactly as the span with the attribute added (tests/test_batch_appends.py holds them to it).
"""

from __future__ import annotations

import struct
from typing import Any

from gateway.otlp.wire import encode_varint

Value = str | bool | int | float  # the scalar kinds processors write

_SPAN_ATTRIBUTES = b"\x4a"  # Span.attributes: field 9, length-delimited
_KEY = b"\x0a"  # KeyValue.key: field 1
_VALUE = b"\x12"  # KeyValue.value: field 2
_STRING, _BOOL, _INT, _DOUBLE = b"\x0a", b"\x10", b"\x18", b"\x21"  # AnyValue fields 1 to 4
_TRUE, _FALSE = _BOOL + b"\x01", _BOOL + b"\x00"
_pack_double = struct.Struct("<d").pack
_SCALARS = frozenset((str, bool, int, float))

_key_fields: dict[str, bytes] = {}  # key -> its encoded KeyValue.key field (keys are few: processors' own)
_constants: dict[tuple[str, Any], bytes] = {}  # (key, short string) -> whole encoding: sources, providers, models
_MAX_KEYS = 1024
_MAX_CONSTANTS = 4096
_CONSTANT_LENGTH = 64


def encoded(key: str, value: Value) -> bytes:
    """The bytes that append `key=value` to an encoded span (tag, length, KeyValue)."""
    if value.__class__ is str and len(value) <= _CONSTANT_LENGTH:  # type: ignore[arg-type]
        memo = _constants.get((key, value))
        if memo is not None:
            return memo
        out = _encode(key, value)
        if len(_constants) < _MAX_CONSTANTS:
            _constants[(key, value)] = out
        return out
    return _encode(key, value)


def _encode(key: str, value: Value) -> bytes:
    key_field = _key_fields.get(key)
    if key_field is None:
        raw_key = key.encode()
        key_field = _KEY + encode_varint(len(raw_key)) + raw_key if raw_key else b""  # proto3: "" is not written
        if len(_key_fields) < _MAX_KEYS:
            _key_fields[key] = key_field
    kind = value.__class__
    if kind is str:
        text = value.encode()  # type: ignore[union-attr]
        any_value = _STRING + encode_varint(len(text)) + text
    elif kind is bool:
        any_value = _TRUE if value else _FALSE
    elif kind is int:
        any_value = _INT + encode_varint(value & 0xFFFFFFFFFFFFFFFF)  # type: ignore[operator]
    elif kind is float:
        any_value = _DOUBLE + _pack_double(value)
    else:
        return _encode(key, _plain(key, value))
    body = key_field + _VALUE + encode_varint(len(any_value)) + any_value
    return _SPAN_ATTRIBUTES + encode_varint(len(body)) + body


def add_to_message(span: Any, key: str, value: Value) -> None:
    """Add `key=value` to a parsed span (the attribute must not be on it already)."""
    kind = value.__class__
    if kind not in _SCALARS:
        value = _plain(key, value)
        kind = value.__class__
    v = span.attributes.add(key=key).value
    if kind is str:
        v.string_value = value
    elif kind is bool:
        v.bool_value = value
    elif kind is int:
        v.int_value = value
    else:
        v.double_value = value


def _plain(key: str, value: Any) -> Value:
    """A subclass of a scalar kind (an IntEnum, a str subclass) as the plain kind it is."""
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"attribute {key!r}: a {type(value).__name__} is not a scalar attribute value")


__all__ = ["Value", "add_to_message", "encoded"]
