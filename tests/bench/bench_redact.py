#!/usr/bin/env python
"""Cost of redaction per span: the processor chain with `pipeline.redact` off and on.

Run from the repository root (see tests/bench/README.md):

    .venv/bin/python tests/bench/bench_redact.py [--rounds N] [--content-kb K]

In one process, on one core, with requests parsed before any clock starts (redaction edits
them in place, so each timed pass gets fresh copies):

1. `fixtures as captured`: the 62 spans of the six captured LLM fixtures (about 1.2 kB of
   strings per span). A third of them name the fake provider by IP address (`127.0.0.1` in
   `server.address`, `url.full`), so the gate sends them down the value-by-value path.
2. `fixtures, host names`: the same with `api.openai.com` instead of that address: the common
   case of spans that hold nothing to redact.
3. `long content`: the host-name spans with every content attribute (`gen_ai.input.messages`,
   `input.value`, ...) grown to about `--content-kb` kB of prose, one e-mail address in every
   tenth value: RAG-sized prompts, with something to find.

For each: spans/s through normalize + price + llm_metrics alone, then with redact last in the
chain (content keep, hash, truncate, drop), and the redactor's own microseconds per span. The
best of 5 passes is printed (CPU time of this process), so other load on the machine matters less.

Then `bench_gateway.py`'s request pool (100 spans per request; `--llm-share` 0, 0.5, 1; its plain
spans carry IPv4 addresses in `client.address` and `network.peer.address`): the redactor alone,
decided from the received bytes (`raw`, what the pipeline passes) and span by span (no `raw`,
what a route's copy gets and what every request got before), alternating in one process.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from gateway.batch import Batch, RequestContext, count_spans  # noqa: E402
from gateway.config import parse  # noqa: E402
from gateway.pipeline import build_processors  # noqa: E402
from gateway.processors import Processor  # noqa: E402
from gateway.processors.redact import Config, Redactor  # noqa: E402
from gateway.redaction.keys import is_content  # noqa: E402
from gateway.telemetry import Metrics  # noqa: E402
from tests.bench.bench_gateway import build_pool  # noqa: E402
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records  # noqa: E402

_WORDS = ("the quick brown fox jumps over the lazy dog while we summarize OpenTelemetry traces of "
          "2024 in 12 words please and explain what a gateway does with spans logs and metrics").split()


def _grow(body: bytes, kb: int, rng: random.Random) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                for kv in span.attributes:
                    if is_content(kv.key) and kv.value.WhichOneof("value") == "string_value":
                        prose = " ".join(rng.choice(_WORDS) for _ in range(kb * 180))
                        if rng.random() < 0.1:
                            prose += " contact alice.smith@example.com"
                        text = kv.value.string_value
                        kv.value.string_value = (json.dumps([{"role": "user", "content": prose}])
                                                 if text[:1] in "[{" else prose)
    return request.SerializeToString()


def _with_host_names(bodies: list[bytes]) -> list[bytes]:
    """The requests with `api.openai.com` wherever an attribute said `127.0.0.1`."""
    out = []
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for kv in span.attributes:
                        if "127.0.0.1" in kv.value.string_value:
                            kv.value.string_value = kv.value.string_value.replace("127.0.0.1", "api.openai.com")
        out.append(request.SerializeToString())
    return out


def _settings(redact: str | None) -> str:
    text = "sinks: {a: {type: file}}\n"
    if redact is not None:
        text += ("pipeline: {redact: {enabled: true, content: %s, truncate_bytes: 256, "
                 "hash_secret: bench-secret-0123456789}}" % redact)
    return text


def _time(bodies: list[bytes], chain: list[Processor], rounds: int, last_only: bool) -> float:
    """Best CPU seconds per span over 5 passes; `last_only` times only the last processor."""
    spans = sum(count_spans(ExportTraceServiceRequest.FromString(b)) for b in bodies) * rounds
    best = float("inf")
    for _ in range(5):
        batches = [Batch(ExportTraceServiceRequest.FromString(b), 0, RequestContext("bench"), raw=b)
                   for _ in range(rounds) for b in bodies]
        if last_only:
            for i, batch in enumerate(batches):
                for process in chain[:-1]:
                    batch = process(batch)
                batch.llm_calls = None
                batches[i] = batch
            timed: list[Processor] = chain[-1:]
        else:
            timed = chain
        start = time.process_time()
        for batch in batches:
            for process in timed:
                batch = process(batch)
        best = min(best, time.process_time() - start)
    return best / spans


def _time_paths(pool: list[bytes], mode: str) -> tuple[float, float]:
    """Best CPU microseconds per span of the redactor from the bytes and span by span, alternating."""
    spans = sum(count_spans(ExportTraceServiceRequest.FromString(b)) for b in pool)
    best = {True: float("inf"), False: float("inf")}
    for _ in range(5):
        for from_bytes in (True, False):
            redactor = Redactor(Config(enabled=True, content=mode, hash_secret="bench-secret-0123456789"), Metrics())
            requests = [ExportTraceServiceRequest.FromString(b) for b in pool]
            start = time.process_time()
            for request, body in zip(requests, pool):
                redactor.redact_traces_request(request, body if from_bytes else None)
            best[from_bytes] = min(best[from_bytes], time.process_time() - start)
    return best[True] / spans * 1e6, best[False] / spans * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="copies of the fixture requests per pass")
    parser.add_argument("--content-kb", type=int, default=4, help="size of each content value in the long case")
    args = parser.parse_args()

    fixtures = [b for name in TRACE_FIXTURES for b in read_records(FIXTURES / f"{name}.otlp.bin")]
    rng = random.Random(7)
    hosts = _with_host_names(fixtures)
    cases: dict[str, list[bytes]] = {
        "fixtures as captured": fixtures,
        "fixtures, host names": hosts,
        f"long content ({args.content_kb} kB)": [_grow(b, args.content_kb, rng) for b in hosts],
    }
    for label, bodies in cases.items():
        per_span = sum(len(b) for b in bodies) / sum(count_spans(ExportTraceServiceRequest.FromString(b)) for b in bodies)
        print(f"{label}: {per_span / 1024:.1f} KiB of protobuf per span")
        rounds = args.rounds if label.startswith("fixtures") else max(1, args.rounds // 4)
        base = _time(bodies, build_processors(parse(_settings(None), environ={}), Metrics()), rounds, False)
        print(f"  {'redact off':<15} {1 / base:>9,.0f} spans/s   (normalize, price, llm_metrics)")
        for mode in ("keep", "hash", "truncate", "drop"):
            chain: Callable[[], list[Processor]] = lambda: build_processors(parse(_settings(mode), environ={}), Metrics())
            whole = _time(bodies, chain(), rounds, False)
            alone = _time(bodies, chain(), rounds, True)
            print(f"  {'redact ' + mode:<15} {1 / whole:>9,.0f} spans/s   redactor alone {alone * 1e6:6.1f} us/span "
                  f"({1 / alone:,.0f} spans/s)")
    print("bench_gateway.py's pool, 50 requests of 100 spans: the redactor alone, us per span")
    for share in (0.0, 0.5, 1.0):
        pool = build_pool(50, 100, 1, share)
        for mode in ("keep", "hash"):
            from_bytes, by_span = _time_paths(pool, mode)
            print(f"  llm-share {share:<3} content {mode:<5} from the bytes {from_bytes:6.2f}   span by span {by_span:6.2f}"
                  f"   ({by_span / from_bytes:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
