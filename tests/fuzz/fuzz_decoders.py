"""Coverage-guided fuzzing (atheris, libFuzzer) of what a receiver does with a body, in-process.

One input is one request: its first byte picks the payload format (bit 0: protobuf or OTLP/JSON)
and the Content-Encoding (bits 1-2: none, gzip, deflate, zstd); the rest is the body. Each input
goes through the receivers' path without the network: bounded decompression, decoding, removal
of spans with invalid ids, then normalize, price and llm_metrics (the default pipeline), then
both encodings a sink writes. The refusals the receivers turn into 400/413 (TooLarge,
CorruptBody, DecodeError, OtlpJsonError) are expected; any other exception, or an internal error
the normalizer caught and logged, is a crash that libFuzzer reports with the input that caused it.

Run from the repository root (atheris ships Linux wheels for CPython 3.11):

    .venv/bin/pip install -e '.[test,fuzz]'
    .venv/bin/python -m tests.fuzz.fuzz_decoders tests/fuzz/corpus -max_total_time=600

A corpus directory that is missing or empty is first filled with seeds made from the fixtures
(each request as protobuf and as OTLP/JSON, raw and compressed). libFuzzer options pass through
(`-runs=N`, `-jobs=2`, `-max_len=...`); a crash leaves `crash-<sha1>` in the current directory,
replayed with `python -m tests.fuzz.fuzz_decoders crash-<sha1>`.
"""

from __future__ import annotations

import gzip
import logging
import sys
import zlib
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["gateway"]):
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from gateway.batch import Batch, RequestContext
    from gateway.config import parse
    from gateway.otlp import compression
    from gateway.otlp.json_codec import OtlpJsonError, decode_traces, encode_traces
    from gateway.otlp.validate import remove_invalid_spans
    from gateway.pipeline import build_processors
    from gateway.processors.normalize import Normalizer
    from gateway.telemetry import Metrics

import zstandard

from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records

LIMIT = 1024 * 1024  # decompressed bytes, as receivers.http.max_body_bytes
ENCODINGS = ("identity", "gzip", "deflate", "zstd")
COMPRESS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}

logging.getLogger("otelgate").setLevel(logging.ERROR)  # "price unknown" warnings are expected here
CHAIN = build_processors(parse("sinks: {a: {type: file}}", environ={}), Metrics())
NORMALIZER = CHAIN[0]
assert isinstance(NORMALIZER, Normalizer)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    as_json = bool(data[0] & 1)
    encoding = ENCODINGS[(data[0] >> 1) & 3]
    try:
        plain = compression.decompress(data[1:], encoding, LIMIT)
    except (compression.TooLarge, compression.CorruptBody):
        return  # 413 / 400
    try:
        request = decode_traces(plain) if as_json else ExportTraceServiceRequest.FromString(plain)
    except (OtlpJsonError, DecodeError):
        return  # 400
    kept, _, _ = remove_invalid_spans(request)
    batch = Batch(request, kept, RequestContext("fuzz"))
    for process in CHAIN:
        batch = process(batch)
    if NORMALIZER.errors:
        raise AssertionError("the normalizer caught an internal error (traceback above)")
    ExportTraceServiceRequest.FromString(batch.request.SerializeToString())
    encode_traces([batch.request])


def write_seeds(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for name in TRACE_FIXTURES:
        for body in read_records(FIXTURES / f"{name}.otlp.bin"):
            forms = (body, encode_traces([ExportTraceServiceRequest.FromString(body)]))
            for as_json, form in enumerate(forms):
                for code, encoding in enumerate(ENCODINGS):
                    (corpus / f"seed-{n:04d}").write_bytes(bytes([code << 1 | as_json]) + COMPRESS[encoding](form))
                    n += 1


def main() -> None:
    for arg in sys.argv[1:]:
        path = Path(arg)
        if not arg.startswith("-") and (not path.exists() or (path.is_dir() and not any(path.iterdir()))):
            write_seeds(path)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
