"""A strict stand-in for Langfuse's OTLP endpoint, for tests (Langfuse itself cannot run here).

It answers like `web/src/pages/api/public/otel/v1/traces/index.ts` of langfuse/langfuse, wrapped
in `createAuthedProjectAPIRoute` / `withMiddlewares`:

* only `POST /api/public/otel/v1/traces`: any other path is 404, another method on it 405;
* `Authorization: Basic base64(public_key:secret_key)` of a configured key pair, else 401 with a
  JSON `{"message": ...}` (the route wrapper's shape);
* `Content-Type` containing `application/x-protobuf` or `application/json` (Langfuse matches by
  substring, so `; charset=...` passes), else **400** `{"error": "Invalid content type"}`: Langfuse
  answers 400 here, not 415;
* `Content-Encoding: gzip` undone (400 `Failed to decompress request body` when it is not gzip);
  any other encoding is left as is by Langfuse, so the body then fails to parse: 400;
* a body over `max_body_bytes` (default 5 MB, Langfuse Cloud's documented "5MB per request",
  langfuse.com/faq/all/api-limits; self-hosted has no limit of its own) is 413, checked on the
  bytes received, like the load balancer in front of Langfuse;
* a body that does not parse is 400 (`Failed to parse OTel Protobuf Trace` / `... JSON Trace`);
* an export where ANY span has a missing or wrong-length trace id (16 bytes) or span id (8
  bytes) is rejected whole with 400 (`validateOtelSpanIds`, "The entire export was rejected and
  no spans were ingested");
* an `x-langfuse-ingestion-version` header above 4 or not a number is 400;
* accepted exports are answered 200 with a JSON body (Langfuse answers JSON, not an OTLP
  protobuf response).

and `POST /api/public/scores` (web/src/pages/api/public/scores/index.ts, `PostScoresBody`):
the same Basic auth; a JSON body (400 `{"message": "Invalid request data", ...}` otherwise) with
`name` (string), `value` (number, or string for `CATEGORICAL`), one of `traceId` / `sessionId` /
`datasetRunId`, `dataType` one of NUMERIC, CATEGORICAL, BOOLEAN (a NUMERIC or BOOLEAN value must
be a number, BOOLEAN 0 or 1, CATEGORICAL a string), optional string `id`, `observationId`,
`comment`, `configId`, `environment` and object `metadata`; answered 200 `{"id": ...}`. Langfuse
upserts scores by id: `scores` keeps the last body per id (`score_posts` counts every post).

Scripted failures: `fail_next(n, status=429, retry_after=1)` answers the next `n` authenticated
requests with that status (429 carries `Retry-After`, as Langfuse's rate limiter sends it).
Auth is checked first, then the script, then the body: Langfuse authenticates before rate
limiting and reads the body last.

`received` lists every accepted export (`Received`: decoded request, headers, raw body size);
`rejected` lists `(status, message)` of every refused request.

Async tests: `async with LangfuseServer() as lf: ... lf.url`. Sync tests:
`with LangfuseServer().run_in_thread() as lf: ...` (a private event loop in a daemon thread).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.otlp.json_codec import decode_traces

PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
_SCORE_KEYS = {"id", "name", "value", "traceId", "sessionId", "datasetRunId", "observationId", "comment", "dataType",
               "configId", "environment", "metadata", "queueId"}
DEFAULT_PUBLIC_KEY = "pk-lf-test-0001"
DEFAULT_SECRET_KEY = "sk-lf-test-0001"
CLOUD_MAX_BODY_BYTES = 5 * 1024 * 1024


@dataclass(slots=True)
class Received:
    request: ExportTraceServiceRequest
    headers: dict[str, str]  # lower-case names
    body_bytes: int  # as received (compressed when it was)
    content_type: str

    def spans(self) -> list[Any]:
        return [s for rs in self.request.resource_spans for ss in rs.scope_spans for s in ss.spans]


@dataclass(slots=True)
class _Script:
    remaining: int = 0
    status: int = 429
    retry_after: int | None = 1


@dataclass
class LangfuseServer:
    keys: dict[str, str] = field(default_factory=lambda: {DEFAULT_PUBLIC_KEY: DEFAULT_SECRET_KEY})
    max_body_bytes: int | None = CLOUD_MAX_BODY_BYTES
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.received: list[Received] = []
        self.rejected: list[tuple[int, str]] = []
        self.scores: dict[str, dict[str, Any]] = {}
        self.score_posts = 0
        self._script = _Script()
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()  # the thread mode reads `received` from another thread

    # -- control -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The full traces endpoint."""
        return self.base_url + PATH

    def auth_header(self, public_key: str | None = None, secret_key: str | None = None) -> str:
        pk = public_key or next(iter(self.keys))
        sk = secret_key if secret_key is not None else self.keys.get(pk, "")
        return "Basic " + base64.b64encode(f"{pk}:{sk}".encode()).decode()

    def fail_next(self, n: int, status: int = 429, retry_after: int | None = 1) -> None:
        """Answer the next `n` authenticated requests with `status` (429 with Retry-After, 503, ...)."""
        with self._lock:
            self._script = _Script(n, status, retry_after)

    def spans(self) -> list[Any]:
        with self._lock:
            return [s for r in self.received for s in r.spans()]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> LangfuseServer:
        app = web.Application(client_max_size=max(self.max_body_bytes or 0, 1024 ** 3))
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress off: the wire bytes are checked (size, gzip) as Langfuse does, not aiohttp's view
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LangfuseServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextmanager
    def run_in_thread(self) -> Iterator[LangfuseServer]:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="langfuse-test-server", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Langfuse test server did not start")
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    # -- the endpoint --------------------------------------------------------------------------

    def _reject(self, status: int, body: dict[str, str], headers: dict[str, str] | None = None) -> web.Response:
        with self._lock:
            self.rejected.append((status, body.get("message") or body.get("error") or ""))
        return web.json_response(body, status=status, headers=headers)

    def _authenticate(self, header: str | None) -> str | None:
        """None when the Basic credentials are a configured key pair, else the 401 message."""
        if not header:
            return "No authorization header"
        scheme, _, token = header.partition(" ")
        if scheme != "Basic" or not token:
            return "Invalid authorization header: Basic auth with public_key:secret_key required"
        try:
            public_key, sep, secret_key = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "Invalid authorization header"
        if not sep or self.keys.get(public_key) != secret_key:
            return "Invalid credentials"
        return None

    def _check_score(self, body: Any) -> str | None:
        """None when `body` is a valid PostScoresBody, else what is wrong."""
        if not isinstance(body, dict):
            return "Expected object"
        unknown = set(body) - _SCORE_KEYS
        if unknown:  # not an error in Langfuse (zod strips them), but nothing we send should carry them
            return f"unexpected keys {sorted(unknown)}"
        if not isinstance(body.get("name"), str) or not body["name"]:
            return "name: Required"
        if not any(isinstance(body.get(k), str) and body[k] for k in ("traceId", "sessionId", "datasetRunId")):
            return "one of traceId, sessionId, datasetRunId is required"
        for key in ("id", "traceId", "sessionId", "observationId", "comment", "configId", "environment"):
            if key in body and not isinstance(body[key], str):
                return f"{key}: Expected string"
        if "metadata" in body and not isinstance(body["metadata"], dict):
            return "metadata: Expected object"
        value, data_type = body.get("value"), body.get("dataType")
        if data_type not in (None, "NUMERIC", "CATEGORICAL", "BOOLEAN"):
            return f"dataType: Invalid enum value {data_type!r}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if data_type in ("NUMERIC", "BOOLEAN") and not number:
            return "value: Expected number"
        if data_type == "BOOLEAN" and value not in (0, 1):
            return "value: a BOOLEAN score is 0 or 1"
        if data_type == "CATEGORICAL" and not isinstance(value, str):
            return "value: Expected string"
        if data_type is None and not (number or isinstance(value, str)):
            return "value: Expected number or string"
        return None

    async def _score(self, request: web.Request) -> web.Response:
        if "application/json" not in request.headers.get("Content-Type", ""):
            return self._reject(400, {"message": "Invalid request data", "error": "Content-Type must be application/json"})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._reject(400, {"message": "Invalid request data", "error": "body is not JSON"})
        problem = self._check_score(body)
        if problem is not None:
            return self._reject(400, {"message": "Invalid request data", "error": problem})
        score_id = body.get("id") or f"generated-{len(self.scores)}"
        with self._lock:
            self.scores[score_id] = body
            self.score_posts += 1
        return web.json_response({"id": score_id})

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path not in (PATH, SCORES_PATH):
            return self._reject(404, {"message": "Not found"})
        if request.method != "POST":
            return self._reject(405, {"message": f"Method {request.method} not allowed"})
        problem = self._authenticate(request.headers.get("Authorization"))
        if problem is not None:
            return self._reject(401, {"message": problem})
        with self._lock:
            script = self._script
            if script.remaining > 0:
                script.remaining -= 1
                status, retry_after = script.status, script.retry_after
            else:
                status = 0
        if status:
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            message = "Rate limit exceeded" if status == 429 else "Service Unavailable"
            return self._reject(status, {"message": message}, headers)
        if request.path == SCORES_PATH:
            return await self._score(request)

        if self.max_body_bytes is not None and (request.content_length or 0) > self.max_body_bytes:
            return self._reject(413, {"message": "Request Entity Too Large"})
        body = await request.read()
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return self._reject(413, {"message": "Request Entity Too Large"})
        received_bytes = len(body)

        if "gzip" in request.headers.get("Content-Encoding", ""):
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return self._reject(400, {"error": "Failed to decompress request body"})

        content_type = request.headers.get("Content-Type", "").lower()
        if "application/json" not in content_type and "application/x-protobuf" not in content_type:
            return self._reject(400, {"error": "Invalid content type"})
        try:
            if "application/x-protobuf" in content_type:
                export = ExportTraceServiceRequest.FromString(body)
            else:
                export = decode_traces(body)
        except (DecodeError, ValueError, RuntimeError):
            kind = "Protobuf" if "application/x-protobuf" in content_type else "JSON"
            return self._reject(400, {"error": f"Failed to parse OTel {kind} Trace"})

        invalid = total = 0
        for rs in export.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    total += 1
                    if len(span.trace_id) != 16 or len(span.span_id) != 8:
                        invalid += 1
        if invalid:
            return self._reject(400, {"error": f"Invalid OTLP trace export: {invalid} of {total} span(s) cannot be "
                                               "processed. The entire export was rejected and no spans were ingested."})

        version = request.headers.get("x-langfuse-ingestion-version") or request.headers.get(
            "x_langfuse_ingestion_version")
        if version is not None and (not version.strip().lstrip("-").isdigit() or int(version) > 4):
            return self._reject(400, {"error": f'Unsupported x-langfuse-ingestion-version: "{version}". '
                                               'Maximum supported: "4".'})

        with self._lock:
            self.received.append(Received(export, {k.lower(): v for k, v in request.headers.items()},
                                          received_bytes, content_type))
        return web.json_response({})
