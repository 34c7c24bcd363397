"""`type: langfuse`: send traces to Langfuse's OpenTelemetry endpoint, as generations it can price.

Langfuse ingests OTLP only over HTTP: `POST <endpoint>/api/public/otel/v1/traces`, protobuf,
gzip, `Authorization: Basic base64(public_key:secret_key)`. Before sending, `encode.prepare`
writes what Langfuse's ingestion reads (observation type, model, usage and cost details,
user/session/environment) on a copy of the batch, and `encode.split` cuts it into exports under
`max_request_bytes` without separating a trace from its root. 401/403 mean the keys are wrong:
not retried, and the server's message shows on /health. Other answers follow the OTLP sink's
rules (429/502/503/504 and connection errors retried, honouring Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
from collections.abc import Sequence
from typing import Literal

import aiohttp
from pydantic import Field, field_validator

from gateway import __version__
from gateway.batch import Batch
from gateway.configtypes import ByteSize, Duration
from gateway.errors import PermanentError, RetryableError
from gateway.logs import get_logger
from gateway.otlp.signals import TRACES, Signal
from gateway.sinks.base import Rejected, SinkConfig, is_retry_of
from gateway.sinks.langfuse.encode import prepare, split
from gateway.sinks.otlp import classify_http

PATH = "/api/public/otel/v1/traces"
_ENVIRONMENT = r"^(?!langfuse)[a-z0-9-_]{1,40}$"
_log = get_logger("sink.langfuse")


class Config(SinkConfig):
    type: Literal["langfuse"]
    endpoint: str = Field(pattern=r"^https?://", description="e.g. https://cloud.langfuse.com or a self-hosted URL")
    public_key: str = Field(min_length=1)
    secret_key: str = Field(min_length=1, repr=False)
    environment: str | None = Field(None, description="Langfuse's rule: [a-z0-9-_], at most 40, not starting with langfuse")
    release: str | None = None
    timeout: Duration = 10.0
    max_request_bytes: ByteSize = Field(
        4 * 1024 * 1024, gt=0, description="Stay well under Langfuse Cloud's 5 MB per request (before gzip).")

    @field_validator("endpoint")
    @classmethod
    def _no_trailing_path(cls, value: str) -> str:
        return value.rstrip("/").removesuffix(PATH)

    @field_validator("environment")
    @classmethod
    def _langfuse_environment(cls, value: str | None) -> str | None:
        if value is not None and not re.match(_ENVIRONMENT, value):
            raise ValueError("Langfuse accepts only [a-z0-9-_], at most 40 characters, not starting with 'langfuse'")
        return value


class LangfuseSink:
    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self.url = config.endpoint + PATH
        token = base64.b64encode(f"{config.public_key}:{config.secret_key}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/x-protobuf",
                         "Content-Encoding": "gzip", "User-Agent": f"otelgate/{__version__}"}
        self._session: aiohttp.ClientSession | None = None
        # Exports of a send already accepted, so a retry after a partial failure resends only the rest.
        self._pending: list[Batch] | None = None
        self._done: set[int] = set()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
            _log.info("langfuse sink configured", sink=self.name, url=self.url, public_key=self.config.public_key)

    async def shutdown(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, batches: Sequence[Batch]) -> Rejected | None:
        if not is_retry_of(self._pending, batches):
            self._pending, self._done = list(batches), set()
        # Copying and rewriting thousands of spans takes milliseconds: off the event loop.
        pieces = await asyncio.to_thread(self._encode, [b.request for b in batches])
        for i, body in enumerate(pieces):
            if i not in self._done:
                await self._post(body)  # a RetryableError leaves _done for the driver's retry
                self._done.add(i)
        self._pending, self._done = None, set()
        return None

    def _encode(self, requests: list) -> list[bytes]:
        request = prepare(requests, environment=self.config.environment, release=self.config.release)
        return [gzip.compress(piece, 6) for piece in split(request, self.config.max_request_bytes)]

    async def _post(self, body: bytes) -> None:
        assert self._session is not None, "send() before start()"
        try:
            async with self._session.post(self.url, data=body, headers=self._headers, allow_redirects=False) as r:
                payload = await r.read()
                if 200 <= r.status < 300:
                    return
                error = classify_http(r.status, payload, r.headers.get("Content-Type", ""), r.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise RetryableError(f"Langfuse export to {self.url} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if r.status in (401, 403):
            raise PermanentError(f"{error} (check public_key/secret_key of sink {self.name})")
        raise error


SIGNALS = ("traces",)  # Langfuse ingests traces only over OTLP


def create(name: str, config: Config, signal: Signal = TRACES) -> LangfuseSink:
    if signal is not TRACES:  # config validation routes only traces here
        raise ValueError(f"sink {name}: Langfuse takes traces only, not {signal.name}")
    return LangfuseSink(name, config)
