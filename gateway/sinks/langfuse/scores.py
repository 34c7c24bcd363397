"""The logs side of `type: langfuse`: evaluation results become Langfuse scores.

Langfuse takes no OTLP logs, and its v4 rejects trace and observation events on the legacy
ingestion API by default, but scores keep their own API: each `gen_ai.evaluation.result` log
record (`pipeline.feedback`'s, from OTel SDKs or from the Langfuse ingestion intake) is posted
to `POST <endpoint>/api/public/scores` as JSON with the sink's Basic auth (or, with
`forward_credentials`, its sender's). Other log records are not Langfuse's: counted as
rejected (`not an evaluation result`), never sent.

The score joins what the traces side sent: `traceId` is the record's trace id in hex (the id
Langfuse's OTel ingestion gives the trace), `observationId` its span id in hex, unless the
score was about the whole trace (a Langfuse trace-level score that came in on the ingestion
API, whose span id points at the trace's root span). The id is the score's own
(`langfuse.score.id`) or a hash of the record, so a retry upserts rather than duplicates
(Langfuse upserts scores by id). A numeric value is sent as `value` (`NUMERIC`, or `BOOLEAN`
when the record says so), a label alone as a `CATEGORICAL` string; the comment is the record's
body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from gateway.batch import Batch
from gateway.errors import PermanentError, RetryableError
from gateway.processors.feedback import EVENT, LABEL, NAME, VALUE, _is_evaluation
from gateway.sinks.base import Rejected, is_retry_of
from gateway.sinks.langfuse.client import LangfuseClient
from gateway.sinks.otlp import classify_http

PATH = "/api/public/scores"
_DATA_TYPES = ("NUMERIC", "CATEGORICAL", "BOOLEAN")


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value if math.isfinite(v.double_value) else None
    if kind == "bool_value":
        return v.bool_value
    return None


def score_of(record: Any) -> dict[str, Any] | None:
    """The scores API body for one evaluation record, or None if it names no evaluation."""
    attrs = {kv.key: _value(kv.value) for kv in record.attributes}
    name = attrs.get(NAME)
    if not isinstance(name, str) or not name:
        return None
    value, label = attrs.get(VALUE), attrs.get(LABEL)
    data_type = attrs.get("langfuse.score.data_type")
    if isinstance(value, bool):
        value = float(value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    body: dict[str, Any] = {"name": name}
    if isinstance(value, (int, float)):
        body["value"] = value
        body["dataType"] = data_type if data_type in ("NUMERIC", "BOOLEAN") else "NUMERIC"
    elif isinstance(label, str) and label:
        body["value"] = label
        body["dataType"] = "CATEGORICAL"
    else:
        return None
    if len(record.trace_id) == 16:
        body["traceId"] = record.trace_id.hex()
        from_ingestion = "otelgate.langfuse.trace_id" in attrs
        if len(record.span_id) == 8 and (not from_ingestion or "otelgate.langfuse.observation_id" in attrs):
            body["observationId"] = record.span_id.hex()
    if isinstance(attrs.get("session.id"), str):
        body["sessionId"] = attrs["session.id"]
    if "traceId" not in body and "sessionId" not in body:
        return None  # Langfuse needs something to attach the score to
    sid = attrs.get("langfuse.score.id")
    if not isinstance(sid, str) or not sid:
        # The record's own bytes: a retry gives the same id (upserted), any other record another.
        sid = hashlib.sha256(b"otelgate.score:" + record.SerializeToString(deterministic=True)).hexdigest()[:32]
    body["id"] = sid
    if record.body.WhichOneof("value") == "string_value" and record.body.string_value:
        body["comment"] = record.body.string_value
    for key, field in (("langfuse.score.config_id", "configId"), ("langfuse.environment", "environment")):
        if isinstance(attrs.get(key), str):
            body[field] = attrs[key]
    metadata = {k.removeprefix("langfuse.score.metadata."): v for k, v in attrs.items()
                if k.startswith("langfuse.score.metadata.")}
    if metadata:
        body["metadata"] = metadata
    return body


class LangfuseScoresSink(LangfuseClient):
    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config, PATH)
        self._done: set[str] = set()  # score ids of a send already accepted (a retry resends the rest)

    async def send(self, batches: Sequence[Batch]) -> Rejected | None:
        if not is_retry_of(self._pending, batches):
            self._pending, self._done = list(batches), set()
        not_scores = homeless = 0
        for batch in batches:
            pair = self._credentials(batch)
            for rl in batch.request.resource_logs:
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        score = score_of(record) if _is_evaluation(record) else None
                        if score is None:
                            not_scores += 1
                        elif pair is None:
                            homeless += 1
                        elif score["id"] not in self._done:
                            await self._post(score, pair)
                            self._done.add(score["id"])
        self._pending, self._done = None, set()
        if not_scores or homeless:
            why = []
            if not_scores:
                why.append(f"{not_scores} log record(s) not an evaluation result ({EVENT}): Langfuse takes only scores")
            if homeless:
                why.append(f"{homeless} score(s) without a Langfuse key pair")
            return Rejected(not_scores + homeless, "; ".join(why))
        return None

    async def _post(self, score: dict[str, Any], pair: tuple[str, str]) -> None:
        assert self._session is not None, "send() before start()"
        token = base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        try:
            async with self._session.post(self.url, data=orjson.dumps(score), headers=headers,
                                          allow_redirects=False) as r:
                payload = await r.read()
                if 200 <= r.status < 300:
                    return
                error = classify_http(r.status, payload, r.headers.get("Content-Type", ""), r.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise RetryableError(f"Langfuse score to {self.url} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if r.status in (401, 403):
            raise PermanentError(f"{error} (check the Langfuse key pair of sink {self.name})")
        raise error
