"""The protobuf wire format, where reading or writing it by hand beats a whole (de)serialization.

Span sizes read from the framing of an export request, without encoding anything:

A span's `ByteSize()` encodes the span (in C, but it is a whole serialization: about 2 us for a
2 KB LLM span, as much as the rest of the receive path). The received bytes already say how long
each span is: walking the length prefixes of three message levels (request -> ResourceSpans ->
ScopeSpans -> Span) costs about 0.3 us per span. Limits use these sizes to skip every span that
cannot hold an oversized value.

And length prefixes for requests assembled from already encoded parts (the trace buffer's kept
traces, the Langfuse sink's exports): `encode_varint`.

And the byte-level editor (`splice`): a request whose processors edited a few spans is written as
the received bytes with only those spans re-encoded, and the length prefixes of the ScopeSpans and
ResourceSpans around them fixed up, instead of a whole `SerializeToString()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_LEN = 2  # wire type of strings, bytes and messages
_RESOURCE_SPANS = 1  # ExportTraceServiceRequest.resource_spans
_SCOPE_SPANS = 2  # ResourceSpans.scope_spans
_SPANS = 2  # ScopeSpans.spans


class _Unusual(Exception):
    """A wire type this walker does not skip (groups): the caller measures another way."""


def span_sizes(raw: bytes) -> list[int] | None:
    """The encoded size of each span in `raw` (an ExportTraceServiceRequest upb has already parsed),
    in the order the parsed request holds them; None if the framing holds something unusual."""
    sizes = []
    try:
        for field, start, end in _fields(raw, 0, len(raw)):
            if field == _RESOURCE_SPANS:
                for field2, start2, end2 in _fields(raw, start, end):
                    if field2 == _SCOPE_SPANS:
                        sizes.extend(end3 - start3 for field3, start3, end3 in _fields(raw, start2, end2) if field3 == _SPANS)
    except (_Unusual, IndexError):
        return None
    return sizes


def span_ranges(raw: bytes) -> list[tuple[int, int, int, int, int]] | None:
    """Where each span of `raw` (an ExportTraceServiceRequest) sits: (resource index, scope index,
    span index, start, end) with raw[start:end] the span's encoding (without its tag and length),
    in the order the parsed request holds them; None if the framing holds something unusual.

    This is the map from bytes to messages that lets a processor decide from the bytes which
    spans concern it (a key is plain bytes on the wire) and touch only those in Python."""
    out = []
    try:
        ri = 0
        for field, start, end in _fields(raw, 0, len(raw)):
            if field == _RESOURCE_SPANS:
                si = 0
                for field2, start2, end2 in _fields(raw, start, end):
                    if field2 == _SCOPE_SPANS:
                        ki = 0
                        for field3, start3, end3 in _fields(raw, start2, end2):
                            if field3 == _SPANS:
                                out.append((ri, si, ki, start3, end3))
                                ki += 1
                        si += 1
                ri += 1
    except (_Unusual, IndexError):
        return None
    return out


def splice(raw: bytes, spans: dict[tuple[int, int, int], bytes]) -> bytes | None:
    """`raw` (an ExportTraceServiceRequest) with the encoding of each span `spans` names by
    (resource index, scope index, span index), as `span_ranges` counts them, replaced by the given
    bytes; the enclosing ScopeSpans and ResourceSpans length prefixes are re-encoded (minimal
    varints), every other byte is copied. None if the framing holds something unusual or an index
    is not in `raw`: the caller serializes the whole request then.

    If `raw` is upb's canonical encoding of a request and each replacement is upb's encoding of
    that span, the result is the canonical encoding of the edited request, byte for byte (a
    message's encoding is its fields in order, each submessage prefixed with its length)."""
    nested: dict[int, dict[int, dict[int, bytes]]] = {}
    for (ri, si, ki), body in spans.items():
        nested.setdefault(ri, {}).setdefault(si, {})[ki] = body
    try:
        out, found = _rebuild(raw, 0, len(raw), _RESOURCE_SPANS, nested, 2)
    except (_Unusual, IndexError):
        return None
    return out if found == len(spans) else None


def _rebuild(buf: bytes, pos: int, end: int, number: int, edits: dict[int, Any], depth: int) -> tuple[bytes, int]:
    """buf[pos:end] with the `number` fields named (by their index among those fields) in `edits`
    replaced: at depth 0 by the bytes `edits` holds, above by their own rebuilt contents. Returns
    the bytes and how many depth-0 replacements were made."""
    pieces: list[bytes] = []
    copied = pos  # buf[copied:here] not yet in pieces
    index = found = 0
    while pos < end:
        tag_start = pos
        tag = buf[pos]
        tag, pos = (tag, pos + 1) if tag < 0x80 else read_varint(buf, pos)
        wire_type = tag & 7
        if wire_type == _LEN:
            tag_end = pos
            length, pos = read_varint(buf, pos)
            start, pos = pos, pos + length
            if pos > end:
                raise _Unusual()
            if tag >> 3 == number:
                edit = edits.get(index)
                if edit is not None:
                    if depth:
                        body, n = _rebuild(buf, start, pos, _SPANS if depth == 1 else _SCOPE_SPANS, edit, depth - 1)
                    else:
                        body, n = edit, 1
                    found += n
                    pieces.append(buf[copied:tag_end])
                    pieces.append(encode_varint(len(body)))
                    pieces.append(body)
                    copied = pos
                index += 1
        elif wire_type == 0:
            _, pos = read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise _Unusual()
    if pos != end:
        raise _Unusual()
    if not pieces:
        return buf[copied:end], found
    pieces.append(buf[copied:end])
    return b"".join(pieces), found


def encode_varint(n: int) -> bytes:
    """`n` (>= 0) as a base-128 varint, least significant group first."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at `buf[pos]` and the position after it (IndexError if `buf` ends inside it)."""
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in buf[pos:end]; others skipped."""
    while pos < end:
        tag = buf[pos]  # one byte for the fields read here; read_varint for longer ones
        tag, pos = (tag, pos + 1) if tag < 0x80 else read_varint(buf, pos)
        wire_type = tag & 7
        if wire_type == _LEN:
            length, pos = read_varint(buf, pos)
            yield tag >> 3, pos, pos + length
            pos += length
        elif wire_type == 0:
            _, pos = read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise _Unusual()
