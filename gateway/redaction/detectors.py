"""Detectors of personal data and secrets in free text, run as one RE2 pattern.

Every detector is one named group of a single alternation, compiled with RE2 (google-re2): a
text is scanned once, in time linear in its length, whatever the number of detectors and
whatever a user regex looks like. Python's `re` was measured at about 1.8 MB/s on prose with
the same alternation (every alternative is tried at every position), RE2 at about 670 MB/s;
and `re` lets a user regex backtrack exponentially on hostile data, RE2 cannot.

RE2 has no lookbehind: a detector that must start at a token boundary consumes the character
before it (or the start of the text) outside its group. A JSON escape (`\\n`, `\\t`, ...) counts
as a boundary too, so values that look like JSON but do not parse are still scanned correctly
as raw text (`"...\\nAKIA..."`). Classes are ASCII (`\\w` is `[0-9A-Za-z_]` in RE2); e-mail
addresses also take non-ASCII letters.

Some kinds are validated after the match, to keep false positives rare: card numbers by Luhn,
IBANs by their mod-97 checksum, IPv6 by `ipaddress` (and at least three groups, so `a::b`
scope operators and `1::2` slices stay), international phone numbers by their digit count.
Matches are replaced by `[REDACTED:<kind>]`. A marker already in the text is matched first and
kept, so redacting twice changes nothing, whatever user regexes match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import re2

MARKER_KIND = "marker"  # the alternative that skips markers already in the text


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _after(excluded: str) -> str:
    """A token boundary, consumed: the start of the text, a character not in `excluded`, or a JSON escape."""
    return rf"(?:^|[^{excluded}]|\\[nrtbf])"


def _before(excluded: str) -> str:
    return rf"(?:$|[^{excluded}])"


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_NOT_DECIMAL = r"(?:$|[^\w.]|\.(?:$|[^0-9]))"  # not followed by a word character or `.<digit>`
_NON_ASCII = r"\x{80}-\x{10FFFF}"

# Built-in detectors, in the order they are tried at one position (more specific first).
BUILTIN: dict[str, str] = {
    # `Bearer <token>` (any case): the token is replaced, the scheme kept.
    "bearer_token": _after(r"\w") + r"(?i:bearer)[ \t]+(?P<bearer_token>[A-Za-z0-9._~+/-]{16,}=*)",
    # header.payload.signature, header and payload being base64url JSON objects (`{"` is `eyJ`).
    "jwt": _after(r"\w-") + r"(?P<jwt>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)",
    # OpenAI `sk-...` (`sk-proj-...`), Anthropic `sk-ant-...`, AWS access key ids, GitHub tokens.
    "api_key": _after(r"\w-") + (
        r"(?P<api_key>sk-(?:ant-)?[A-Za-z0-9_-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|github_pat_[A-Za-z0-9_]{22,})") + _before(r"\w-"),
    # No boundary needed before: the leftmost match starts where the run of local-part characters does.
    "email": (rf"(?P<email>[A-Za-z0-9._%+{_NON_ASCII}-]+@[A-Za-z0-9{_NON_ASCII}-]+(?:\.[A-Za-z0-9{_NON_ASCII}-]+)*"
              rf"\.[A-Za-z{_NON_ASCII}]{{2,63}})") + _before(r"\w-"),
    # Country code, check digits, 11-30 alphanumerics, grouped by 4 or not; checked by mod 97.
    "iban": _after(r"\w") + r"(?P<iban>[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?)" + _before(r"\w"),
    # 13-19 digits, spaces or dashes allowed between them, first digit 2-6 (the card networks'
    # ranges: excludes epoch timestamps in s/ms/us/ns, which start with 1); never the digits of
    # a decimal fraction (`0.4111...`). Checked by Luhn.
    "credit_card": _after(r"\w.") + r"(?P<credit_card>[2-6][0-9](?:[ -]?[0-9]){11,17})" + _NOT_DECIMAL,
    "ipv6": _after(r"\w:.") + r"(?P<ipv6>[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]{0,35})" + _before(r"\w:."),
    "ipv4": _after(r"\w.") + rf"(?P<ipv4>(?:{_OCTET}\.){{3}}{_OCTET})" + _NOT_DECIMAL,
    # International (`+` and 8-15 digits, as E.164) or North-American formatted (`(555) 123-4567`,
    # `555-123-4567`, `555.123.4567`, `555 123 4567`). Bare digit runs are not taken for phone
    # numbers: they are far more often ids, counts and timestamps.
    "phone": _after(r"\w+") + (
        r"(?P<phone>\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{1,4}){1,5}"
        r"|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}"
        r"|[0-9]{3} [0-9]{3} [0-9]{4}|[0-9]{3}-[0-9]{3}-[0-9]{4}|[0-9]{3}\.[0-9]{3}\.[0-9]{4})"
    ) + r"(?:$|[^\w.-]|[.-](?:$|[^0-9]))",
}
DETECTORS: tuple[str, ...] = tuple(BUILTIN)
RESERVED_KINDS = frozenset(BUILTIN) | {MARKER_KIND}
_MARKER_PATTERN = rf"(?P<{MARKER_KIND}>\[REDACTED:[a-z0-9_]+\])"


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print to stderr; errors are raised as exceptions instead
    options.max_mem = 32 << 20  # the DFA cache; the default 8 MiB falls back to the slower NFA on long texts
    return options


def check_regex(regex: str) -> str | None:
    """Why `regex` cannot be a user detector (RE2 syntax error, or it may match empty), or None."""
    try:
        compiled = re2.compile(regex, _options())
    except re2.error as exc:
        return f"not a valid RE2 regex ({exc}); RE2 has no lookaround or backreferences"
    if compiled.fullmatch("") is not None:
        return "matches the empty string"
    if compiled.groupindex:
        return "has a named group; use (?:...)"
    return None


# -- checks after the match: each returns how many bytes of the match are a real hit (0: none)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _whole_or_but_last_group(text: str, ok: Callable[[str], bool]) -> int:
    """All of `text` if it passes `ok`, else all but its last group: a card number followed by a
    CVV (`4111 1111 1111 1111 123`) or an IBAN followed by a word (`... 3000 EUR`) is still found.
    Only one cut is tried: each try is another chance for a digit run to pass by accident."""
    if ok(text):
        return len(text)
    cut = max(text.rfind(" "), text.rfind("-"))
    return cut if cut > 0 and ok(text[:cut]) else 0


def _card(text: str) -> int:
    return _whole_or_but_last_group(text, _card_ok)


def _iban(text: str) -> int:
    return _whole_or_but_last_group(text, _iban_ok)


def _ipv6(text: str) -> int:
    if sum(1 for group in text.split(":") if group) < 3:
        return 0
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return 0
    return len(text)


def _phone(text: str) -> int:
    if text[0] != "+":
        return len(text)  # the North-American shapes are exact
    digits = sum(ch.isdigit() for ch in text)
    return len(text) if 8 <= digits <= 15 else 0


# Supersets of each detector's hits without any boundary condition: what one of them finds in
# a text, it finds in any bytes that contain that text, such as a whole serialized span or
# request (where a string is preceded by its length and followed by the next field's tag, bytes
# which may be letters or digits). The gate scans serialized spans with them, so the common
# span, holding nothing, costs one C call and no Python per attribute.
GATE: dict[str, str] = {
    "bearer_token": r"(?i:bearer)[ \t]+[A-Za-z0-9._~+/\\-]{16}",  # `\/`: a slash escaped in JSON
    "jwt": r"eyJ[A-Za-z0-9_-]{8,}\.eyJ",
    "api_key": r"sk-[A-Za-z0-9_-]{20}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22}",
    "email": r"[^\x00-\x20]@[^\x00-\x20]",  # whatever the address's letters, escaped or not
    "iban": r"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}",
    "credit_card": r"[2-6][0-9](?:[ -]?[0-9]){11}",
    "ipv6": r"::|(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]",  # a valid address has `::` or 8 groups
    "ipv4": r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",
    "phone": (r"\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}[ .-]?[0-9]"
              r"|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}|[0-9]{3}[ .-][0-9]{3}[ .-][0-9]{4}"),
}
# What makes a user regex unfit for the gate: an assertion about its neighbours (crudely: `[^`
# counts too, which only costs speed).
_ASSERTIONS = ("^", "$", "\\b", "\\B", "\\A", "\\z")


def gate_patterns(detectors: Sequence[str], custom: Sequence[tuple[str, str]]) -> list[str] | None:
    """The gate's alternatives for these detectors, or None when a user regex has an assertion
    (then every value is scanned on its own)."""
    if any(token in regex for _, regex in custom for token in _ASSERTIONS):
        return None
    return [GATE[name] for name in DETECTORS if name in detectors] + [regex for _, regex in custom]


_CHECKS: dict[str, Callable[[str], int]] = {"credit_card": _card, "iban": _iban, "ipv6": _ipv6, "phone": _phone}
# A number that fails its card or IBAN check is not looked into again (its digit groups would
# get more chances to pass Luhn by accident); other failed candidates are scanned again from
# their next character (`+4111...` is no phone number, but holds a card number).
_SKIP_WHOLE = frozenset({"credit_card", "iban"})
_ESCAPED = frozenset(b"nrtbf")
_MAX_PASSES = 4  # a replacement can join text into a new match; a few passes reach the fixed point
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED


class _Alternation:
    """One compiled alternation of some kinds, and which capture group is which kind."""

    def __init__(self, kinds: Sequence[str], patterns: dict[str, str]) -> None:
        compiled = compile_re2("|".join(patterns[kind] for kind in kinds))
        self.match = compiled.Match
        numbers = {name.decode(): number for name, number in compiled.NamedCapturingGroups()}
        self.groups = [(numbers[kind], kind) for kind in kinds]  # kinds have the only named groups


class Scanner:
    """Replaces the matches of the enabled detectors (built-in and user regexes) in texts.

    `count(kind)` is called once per replacement; the scanner never keeps or logs what it found.
    When a candidate fails its check, the other kinds are tried at the same place (RE2 returns
    only the first alternative that matches there: `+4915123456789` is first a card number
    candidate, which fails Luhn, and then a phone number).
    """

    def __init__(self, detectors: Sequence[str], custom: Sequence[tuple[str, str]], count: Callable[[str], None]) -> None:
        self._kinds = [MARKER_KIND] + [name for name in DETECTORS if name in detectors] + [name for name, _ in custom]
        self._patterns = {MARKER_KIND: _MARKER_PATTERN, **{name: BUILTIN[name] for name in DETECTORS}}
        self._patterns.update((name, f"(?P<{name}>{regex})") for name, regex in custom)
        self._by_excluded: dict[frozenset[str], _Alternation] = {}
        self._all = self._without(frozenset())
        self._markers = {kind: marker(kind).encode() for kind in self._kinds}
        self._count = count
        # No built-in match is shorter than 6 characters (`a@b.co`); a user regex may be.
        self.min_length = 1 if custom else 6

    def _without(self, excluded: frozenset[str]) -> _Alternation:
        alternation = self._by_excluded.get(excluded)
        if alternation is None:  # at most one per subset of the checked kinds
            kinds = [k for k in self._kinds if k not in excluded]
            alternation = self._by_excluded[excluded] = _Alternation(kinds, self._patterns)
        return alternation

    def finds(self, text: str) -> bool:
        """Whether `text` holds a candidate of any kind (before checks; markers included)."""
        if len(text) < self.min_length:
            return False
        data = text.encode()
        return self._all.match(_UNANCHORED, data, 0, len(data))[0][0] >= 0

    def redact(self, text: str) -> str:
        """`text` with every match replaced; the same object when nothing matched."""
        if len(text) < self.min_length:
            return text
        data = text.encode()
        changed = False  # the common case: one C call in `_pass`, which finds nothing
        for _ in range(_MAX_PASSES):
            result = self._pass(data)
            if result is None:
                break
            data, changed = result, True
        return data.decode() if changed else text

    def _pass(self, data: bytes) -> bytes | None:
        """One scan of `data`: the text with its matches replaced, or None if there were none."""
        end_of_data = len(data)
        out: list[bytes] = []
        done = pos = 0  # data[:done] is in `out`; the next search starts at `pos`
        # After a failed check: the kinds already tried here, where another kind must start
        # (before `window_end`), and where to go on when none does.
        excluded: frozenset[str] = frozenset()
        window_end = resume = 0
        while pos <= end_of_data:
            alternation = self._all if not excluded else self._without(excluded)
            spans = alternation.match(_UNANCHORED, data, pos, end_of_data)
            whole_start = spans[0][0]
            index, kind = next(((i, k) for i, k in alternation.groups if spans[i][0] >= 0), (0, ""))
            start, end = spans[index]
            if excluded and (whole_start < 0 or start >= window_end):
                excluded, pos = frozenset(), resume  # nothing else here: go on after the failed one
                continue
            if whole_start < 0:
                break
            if kind == MARKER_KIND:
                pos = end
                continue
            if kind == "email" and start > 0 and data[start - 1] == 92 and data[start] in _ESCAPED:
                start += 1  # `\nbob@...` in raw JSON: the `n` belongs to the escape
            check = _CHECKS.get(kind)
            hit = check(data[start:end].decode()) if check is not None else end - start
            if hit <= 0:  # failed its check (or an empty user match): try the other kinds here
                if not excluded:  # another kind must start where this one does (or before)
                    window_end = start + 1
                    resume = end if kind in _SKIP_WHOLE and end > whole_start else _next_char(data, whole_start)
                excluded |= {kind}
                pos = whole_start
                continue
            out.append(data[done:start])
            out.append(self._markers[kind])
            self._count(kind)
            done = pos = start + hit
            excluded = frozenset()
        if not out:
            return None
        out.append(data[done:])
        return b"".join(out)


def compile_re2(pattern: str) -> Any:
    """The low-level RE2 object (`.Match(anchor, bytes, start, end)`): the `re2` module's Python
    wrapper costs more than the match itself on short values."""
    compiled = re2._re2.RE2(pattern.encode(), _options())
    if not compiled.ok():
        raise ValueError(compiled.error().decode(errors="replace"))
    return compiled


def _next_char(data: bytes, i: int) -> int:
    """The offset of the UTF-8 character after the one at `i`."""
    i += 1
    while i < len(data) and data[i] & 0xC0 == 0x80:
        i += 1
    return i
