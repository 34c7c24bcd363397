"""Bounded decompression of request bodies: the output limit holds whatever the input claims.

A 20 KiB gzip bomb can inflate to gigabytes; every decoder here stops at `limit + 1` bytes of
output, so memory stays flat and the caller answers 413.
"""

from __future__ import annotations

import io
import zlib

import zstandard

SUPPORTED = ("identity", "gzip", "x-gzip", "deflate", "zstd")


class TooLarge(Exception):
    pass


class CorruptBody(Exception):
    pass


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo `Content-Encoding` (one of SUPPORTED); raise TooLarge past `limit` bytes, CorruptBody if broken."""
    if encoding == "identity" or not body:
        # An empty body is empty under any encoding (zero gzip members, zero zstd frames), as
        # zstd and Python's gzip module read it: an empty request, not a corrupt one.
        return body
    if encoding in ("gzip", "x-gzip"):
        return _zlib_members(body, 16 + zlib.MAX_WBITS, limit)
    if encoding == "deflate":
        # RFC 9110 "deflate" is the zlib format; some clients send raw deflate: accept both.
        try:
            return _zlib_members(body, zlib.MAX_WBITS, limit)
        except CorruptBody:
            return _zlib_members(body, -zlib.MAX_WBITS, limit)
    if encoding == "zstd":
        return _zstd(body, limit)
    raise ValueError(f"unsupported encoding {encoding!r}")


def _zlib_members(data: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise CorruptBody(f"invalid compressed body: {exc}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise TooLarge()
        if not d.eof:
            raise CorruptBody("compressed body is truncated")
        data = d.unused_data
        # gzip allows several members back to back; raw/zlib streams end after one.
        if not data or wbits <= zlib.MAX_WBITS:
            return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    try:
        out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise CorruptBody(f"invalid zstd body: {exc}") from None
    if len(out) > limit:
        raise TooLarge()
    return out
