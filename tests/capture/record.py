"""Capture harness: a fake provider, an OTLP/HTTP recorder, and the ground truth that links them.

Not run in CI (see tests/capture/README.md). A capture script calls `capture(name, run)`: `run`
gets the fake provider's base URL and the recorder's `/v1/traces` URL, makes its calls through
the library under test and flushes its exporter. Then this writes, under tests/fixtures/:

* `<name>.otlp.bin`: each export request's body as received ((4-byte big-endian length, body)
  records, as the other fixtures);
* `<name>.expected.json`: `calls[]`, one per request the fake provider answered (its log is the
  truth), each with `span` (the innermost LLM span whose time range covers the request) and
  `llm_spans` (every LLM span covering it, then those naming its response id: with two
  instrumentations on one call, or a call split over two spans, there are several, and exactly
  one of them may stand for the call).

An "LLM span" has a model, provider or token attribute, or an OpenInference kind LLM/EMBEDDING.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).parent))
from fake_provider import FakeProvider  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_LLM_HINTS = ("gen_ai.request.model", "gen_ai.response.model", "gen_ai.system", "gen_ai.provider.name",
              "llm.model_name", "embedding.model_name", "gen_ai.usage.input_tokens", "llm.token_count.prompt",
              "llm.model", "llm.provider", "ai.model.id")


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                if self.headers.get("transfer-encoding", "").lower() == "chunked":  # Node's OTLP exporter
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    import gzip
                    body = gzip.decompress(body)
                if self.path.startswith("/v1/traces"):
                    rec.bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _plain(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind and kind not in ("array_value", "kvlist_value") else None


def _spans(bodies: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for body in bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {kv.key: _plain(kv.value) for kv in s.attributes}
                    out.append({
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(), "name": s.name, "scope": ss.scope.name,
                        "scope_version": ss.scope.version, "status_code": s.status.code,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "response_id": attrs.get("gen_ai.response.id"),
                        "llm": any(k in attrs for k in _LLM_HINTS)
                        or attrs.get("openinference.span.kind") in ("LLM", "EMBEDDING"),
                    })
    return out


def _short(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("trace_id", "span_id", "parent_span_id", "name", "scope", "scope_version",
                              "status_code")}


def capture(name: str, run: Callable[[str, str], None], script: str, versions: dict[str, str],
            service: str, notes: str = "") -> dict[str, Any]:
    fake = FakeProvider().start()
    rec = Recorder()
    try:
        run(fake.url, rec.url + "/v1/traces")
        time.sleep(0.5)
    finally:
        fake.stop()
        rec.stop()
    spans = _spans(rec.bodies)
    calls = []
    for entry in fake.log:
        t = entry["t_recv_ns"]
        covering = [s for s in spans if s["llm"] and s["start"] <= t <= s["end"]]
        covering.sort(key=lambda s: s["end"] - s["start"])  # innermost first
        rid = entry.get("response_id")
        # Spans that name the response but do not cover the request (Logfire's stream-end span).
        covering += [s for s in spans if s["llm"] and rid and s["response_id"] == rid and s not in covering]
        calls.append({**entry, "source": "fake_server", "span": _short(covering[0]) if covering else None,
                      "llm_spans": [_short(s) for s in covering]})
    covered = {s["span_id"] for c in calls for s in c["llm_spans"]}
    truth = {
        "scenario": name, "script": script, "service": service, "versions": versions, "generated_at_unix": int(time.time()),
        "counts": {"export_requests": len(rec.bodies), "spans": len(spans),
                   "llm_spans": sum(s["llm"] for s in spans), "fake_server_requests": len(fake.log),
                   "matched": sum(1 for c in calls if c["span"])},
        "calls": calls,
        "unmatched_llm_spans": [_short(s) for s in spans if s["llm"] and s["span_id"] not in covered],
        "notes": notes or ("tokens.input_tokens_incl_cache is the semconv input (cache included); OpenAI "
                           "output_tokens include reasoning."),
    }
    with open(FIXTURES / f"{name}.otlp.bin", "wb") as f:
        for body in rec.bodies:
            f.write(struct.pack(">I", len(body)) + body)
    (FIXTURES / f"{name}.expected.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"{name}: {len(rec.bodies)} export requests, {len(spans)} spans, {len(fake.log)} provider requests, "
          f"{truth['counts']['matched']} matched, {len(truth['unmatched_llm_spans'])} unmatched LLM spans")
    return truth
