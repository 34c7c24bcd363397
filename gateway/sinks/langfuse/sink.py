"""`type: langfuse`: send traces to Langfuse's OpenTelemetry endpoint, as generations it can price.

Langfuse ingests OTLP only over HTTP: `POST <endpoint>/api/public/otel/v1/traces`, protobuf,
gzip, `Authorization: Basic base64(public_key:secret_key)`. Before sending, `encode.prepare`
writes what Langfuse's ingestion reads (observation type, model, usage and cost details,
user/session/environment) on a copy of the batch, and `encode.split` cuts it into exports under
`max_request_bytes` without separating a trace from its root. 401/403 mean the keys are wrong:
not retried, and the server's message shows on /health. Other answers follow the OTLP sink's
rules (429/502/503/504 and connection errors retried, honouring Retry-After).

With `forward_credentials: true`, data that came in on otelgate's Langfuse-compatible path is
sent with the key pair its sender authenticated with (so each team's Langfuse SDK keeps writing
to its own project), and other data with the sink's own keys; data with neither is refused by
the sink (counted as `rejected`). A send holding several key pairs becomes one export per pair.

Routed logs: `gen_ai.evaluation.result` records go to Langfuse's scores API (`scores.py`).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
from collections.abc import Sequence
from typing import Literal

import aiohttp
from pydantic import Field, field_validator, model_validator

from gateway import __version__
from gateway.batch import Batch
from gateway.configtypes import ByteSize, Duration
from gateway.errors import PermanentError, RetryableError
from gateway.logs import get_logger
from gateway.otlp.signals import TRACES, Signal
from gateway.sinks.base import Rejected, SinkConfig, is_retry_of
from gateway.sinks.langfuse.client import LangfuseClient
from gateway.sinks.langfuse.encode import prepare, split
from gateway.sinks.langfuse.scores import LangfuseScoresSink
from gateway.sinks.otlp import classify_http

PATH = "/api/public/otel/v1/traces"
_ENVIRONMENT = r"^(?!langfuse)[a-z0-9-_]{1,40}$"
_log = get_logger("sink.langfuse")


class Config(SinkConfig):
    type: Literal["langfuse"]
    endpoint: str = Field(pattern=r"^https?://", description="e.g. https://cloud.langfuse.com or a self-hosted URL")
    public_key: str | None = Field(None, min_length=1, description="Required unless forward_credentials.")
    secret_key: str | None = Field(None, min_length=1, repr=False)
    forward_credentials: bool = Field(
        False, description="Send data that came in on the Langfuse path with its sender's key pair.")
    environment: str | None = Field(None, description="Langfuse's rule: [a-z0-9-_], at most 40, not starting with langfuse")
    release: str | None = None
    timeout: Duration = 10.0
    max_request_bytes: ByteSize = Field(
        4 * 1024 * 1024, gt=0, description="Stay well under Langfuse Cloud's 5 MB per request (before gzip).")

    @model_validator(mode="after")
    def _keys(self) -> "Config":
        if (self.public_key is None) != (self.secret_key is None):
            raise ValueError("give both public_key and secret_key")
        if self.public_key is None and not self.forward_credentials:
            raise ValueError("public_key and secret_key are required (unless forward_credentials: true)")
        return self

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


class LangfuseSink(LangfuseClient):
    def __init__(self, name: str, config: Config) -> None:
        super().__init__(name, config, PATH)
        self._headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip",
                         "User-Agent": f"otelgate/{__version__}"}
        self._done: set[int] = set()  # exports of a send already accepted

    async def start(self) -> None:
        if self._session is None:
            _log.info("langfuse sink configured", sink=self.name, url=self.url, public_key=self.config.public_key)
        await super().start()

    async def send(self, batches: Sequence[Batch]) -> Rejected | None:
        if not is_retry_of(self._pending, batches):
            self._pending, self._done = list(batches), set()
        by_pair: dict[tuple[str, str] | None, list[Batch]] = {}
        for batch in batches:
            by_pair.setdefault(self._credentials(batch), []).append(batch)
        homeless = by_pair.pop(None, [])
        # Copying and rewriting thousands of spans takes milliseconds: off the event loop.
        pieces = await asyncio.to_thread(self._encode, by_pair)
        for i, (pair, body) in enumerate(pieces):
            if i not in self._done:
                await self._post(body, pair)  # a RetryableError leaves _done for the driver's retry
                self._done.add(i)
        self._pending, self._done = None, set()
        if homeless:
            return Rejected(sum(b.items for b in homeless), "no Langfuse key pair: the data did not come in on the "
                            "Langfuse path and the sink has no public_key/secret_key")
        return None

    def _encode(self, by_pair: dict[tuple[str, str], list[Batch]]) -> list[tuple[tuple[str, str], bytes]]:
        out = []
        for pair, group in by_pair.items():
            request = prepare([b.request for b in group], environment=self.config.environment, release=self.config.release)
            out.extend((pair, gzip.compress(piece, 6)) for piece in split(request, self.config.max_request_bytes))
        return out

    async def _post(self, body: bytes, pair: tuple[str, str]) -> None:
        assert self._session is not None, "send() before start()"
        token = base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
        headers = {**self._headers, "Authorization": f"Basic {token}"}
        try:
            async with self._session.post(self.url, data=body, headers=headers, allow_redirects=False) as r:
                payload = await r.read()
                if 200 <= r.status < 300:
                    return
                error = classify_http(r.status, payload, r.headers.get("Content-Type", ""), r.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise RetryableError(f"Langfuse export to {self.url} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if r.status in (401, 403):
            whose = f"public key {pair[0]}" if pair != self._own else f"public_key/secret_key of sink {self.name}"
            raise PermanentError(f"{error} (check {whose})")
        raise error


SIGNALS = ("traces", "logs")  # traces over OTLP; logs: evaluation results as scores (scores.py)


def create(name: str, config: Config, signal: Signal = TRACES) -> "LangfuseSink | LangfuseScoresSink":
    if signal.name == "logs":
        return LangfuseScoresSink(name, config)
    if signal is not TRACES:  # config validation routes only traces and logs here
        raise ValueError(f"sink {name}: Langfuse takes traces and scores (logs), not {signal.name}")
    return LangfuseSink(name, config)
