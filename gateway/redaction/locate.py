"""Where a gate's candidates sit in a serialized export request: which spans, and inside a span
which attributes. This lets the redactor scan a whole request once (RE2, C speed) and touch in
Python only the strings that may hold a match, instead of every span and attribute.

The gates' patterns are supersets of the detectors without boundary conditions (see
`gateway.redaction.detectors.GATE`): a string holding a match holds a gate match inside its own
bytes. So a string that no gate match starts in needs nothing. The scans below rely only on
that: after a match that starts in a span, the scan goes on after that span (the span is looked
at in detail); after one that starts anywhere else (framing, ids, timestamps), one byte further.
Every string with a candidate of its own is therefore found, whatever its neighbours look like.

Anything unusual (a wire type this reader does not walk, a truncated field, a candidate in a
span's name, status, events or links, an attribute that is not one key and one value) makes
these functions answer None for it, and the caller redacts that part message by message: the
slower path, never a skipped one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Container, Sequence

from gateway.otlp.wire import read_varint

# A compiled RE2 object's `.Match(anchor, data, start, end)` bound with its anchor: the first
# match's start in data[start:end], or -1.
Find = Callable[[bytes, int, int], int]

_ATTRIBUTE_TAG = 9 << 3 | 2  # Span.attributes, length-delimited
# Span.name, attributes, events, links, status: what the redactor reads (the rest is ids, trace
# state, numbers); all but attributes are read as messages.
_READ = frozenset({5, 9, 11, 13, 15})
_KEY, _VALUE = 1, 2  # KeyValue.key, KeyValue.value
_STRING_VALUE = 0x0A  # AnyValue.string_value, wire type 2: the tag byte
# One attribute with a candidate: its index among the span's attributes, and where its KeyValue's
# encoding starts and ends.
Target = tuple[int, int, int]


def candidate_spans(raw: bytes, ranges: Sequence[tuple[int, int, int, int, int]], find: Find,
                    starts: Sequence[int]) -> tuple[list[int], bool]:
    """The positions in `ranges` (from `wire.span_ranges(raw)`, `starts` their start offsets) of
    the spans a candidate of `find` starts in, in order, and whether one starts outside every span
    (in a resource, a scope, or framing: the caller then looks at resources and scopes)."""
    spans: list[int] = []
    outside = False
    pos, end = 0, len(raw)
    while True:
        start = find(raw, pos, end)
        if start < 0:
            return spans, outside
        i = bisect_right(starts, start) - 1
        if i >= 0 and start < ranges[i][4]:
            spans.append(i)
            pos = ranges[i][4]
        else:
            outside = True
            pos = start + 1


def candidate_attributes(raw: bytes, ranges: Sequence[tuple[int, int, int, int, int]], find: Find,
                         starts: Sequence[int], skip: Container[int] = ()) -> tuple[dict[int, list[Target] | None], bool]:
    """For each span (its position in `ranges`) a candidate of `find` starts in: the attributes it
    starts in (`span_targets`), or None when the span must be read as a message; and whether a
    candidate starts outside every span. The spans in `skip` (read as messages anyway) are not
    walked: one with a candidate only gets None. One scan: as many RE2 calls as candidates, plus one."""
    spans: dict[int, list[Target] | None] = {}
    outside = False
    end = len(raw)
    found = find(raw, 0, end)
    while found >= 0:
        i = bisect_right(starts, found) - 1
        if i >= 0 and found < ranges[i][4]:
            if i in skip:  # a candidate here: the caller's message walk needs the scanner too
                spans[i] = None
                found = find(raw, ranges[i][4], end)
                continue
            spans[i], found = span_targets(raw, ranges[i][3], ranges[i][4], find, found)
        else:
            outside = True
            found = find(raw, found + 1, end)
    return spans, outside


def span_targets(raw: bytes, start: int, end: int, find: Find, found: int) -> tuple[list[Target] | None, int]:
    """The attributes of the span encoded in raw[start:end] that a candidate starts in, in order,
    from the candidate at `found` on; None when a candidate starts in a part the redactor must read
    as a message (name, status, events, links) or the encoding is unusual. And the first candidate
    after the span (-1: none), so a scan of the whole request goes on without searching again."""
    targets: list[Target] = []
    walk, attribute = start, -1  # walk: the start of the next field not read yet
    tag = content = 0  # the last field read: its tag (0: one not read here) and where its content starts
    whole = len(raw)
    try:
        while 0 <= found < end:
            while walk <= found:  # read fields until the one holding `found` (one-byte tags and lengths inline)
                tag = raw[walk]
                wire_type = tag & 7
                if wire_type == 2 and tag < 0x80:
                    length = raw[walk + 1]
                    if length < 0x80:
                        content = walk + 2
                    else:
                        length, content = read_varint(raw, walk + 1)
                    walk = content + length
                    if tag == _ATTRIBUTE_TAG:
                        attribute += 1
                    continue
                if wire_type == 1 and tag < 0x80:  # the timestamps
                    walk += 9
                elif wire_type == 0 and tag < 0x80 and raw[walk + 1] < 0x80:  # kind, small counts
                    walk += 2
                else:  # a longer number, or a field this reader does not read
                    walk = _skip_field(raw, walk)
                tag = 0
                content = walk
            if walk > end:
                return None, find(raw, end, whole)
            if found < content or tag >> 3 not in _READ:
                found = find(raw, found + 1, whole)  # framing, a number, ids, trace state: nothing read
                continue
            if tag != _ATTRIBUTE_TAG:
                return None, find(raw, end, whole)
            targets.append((attribute, content, walk))
            found = find(raw, walk, whole)
    except IndexError:
        return None, find(raw, end, whole)
    return targets, found


def key_value(entry: bytes) -> tuple[int, int, int, int] | None:
    """Where the key and the string value are in `entry`, a KeyValue's encoding: (key start, key end,
    value start, value end); None unless it is exactly one key and one AnyValue holding exactly one
    `string_value` (the caller then reads that attribute as a message)."""
    key = value = None
    pos, end = 0, len(entry)
    try:
        while pos < end:
            tag, length = entry[pos], entry[pos + 1]
            if tag & 7 != 2 or tag >= 0x80:
                return None
            pos += 2
            if length >= 0x80:
                length, pos = read_varint(entry, pos - 1)
            field, content, pos = tag >> 3, pos, pos + length
            if field == _KEY and key is None:
                key = content, pos
            elif field == _VALUE and value is None:
                value = content, pos
            else:
                return None  # repeated or unknown fields: the parsed message decides
        if pos != end or key is None or value is None:
            return None
        v_start, v_end = value
        if v_end - v_start < 2 or entry[v_start] != _STRING_VALUE:
            return None
        length, content = entry[v_start + 1], v_start + 2
        if length >= 0x80:
            length, content = read_varint(entry, v_start + 1)
    except IndexError:
        return None
    if content + length != v_end:
        return None  # more than the string in the AnyValue
    return key[0], key[1], content, v_end


def _skip_field(buf: bytes, pos: int) -> int:
    """The end of the field whose tag starts at `pos`."""
    tag, pos = read_varint(buf, pos)
    wire_type = tag & 7
    if wire_type == 0:
        while buf[pos] & 0x80:
            pos += 1
        return pos + 1
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = read_varint(buf, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise IndexError("a group: not read here")  # the caller's answer for unusual encodings
