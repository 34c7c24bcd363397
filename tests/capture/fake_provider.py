"""A deterministic fake of the OpenAI and Anthropic HTTP APIs on 127.0.0.1, for capture scripts.

Not run in CI. Every number it returns is a pure function of the request (the formulas of
tests/fixtures/README.md, "How the ground truth was produced"), and every request it answers is
logged (one JSON object per line) with the usage it returned: that log is the ground truth of a
capture. Endpoints: `POST /v1/chat/completions` (plain, SSE with `stream_options.include_usage`,
a tool call when the request offers tools and asks for one), `POST /v1/embeddings`,
`POST /v1/responses` (plain and SSE), `POST /v1/messages` (Anthropic, plain and SSE).

Errors: a request whose last user message contains `FAIL429` or `FAIL500` (OpenAI) / `FAIL529`
(Anthropic) gets that status with the provider's error body. Clients must use `max_retries=0`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RETURNED = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4.1": "gpt-4.1-2025-04-14",
            "o3-mini": "o3-mini-2025-01-31", "o4-mini": "o4-mini-2025-04-16"}
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(p.get("text", p.get("content", ""))) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def prompt_tokens(messages: list[dict[str, Any]], system: str | None = None) -> int:
    chars = sum(len(_text(m.get("content"))) for m in messages) + len(system or "")
    return 4 * len(messages) + (1 if system else 0) + math.ceil(chars / 4)


def reply_for(model: str, p: int) -> str:
    return f"Deterministic reply from {model} for a {p}-token prompt. The quick brown fox jumps over the lazy dog."


def reasoning_for(model: str, p: int) -> int:
    return 64 + 8 * (p % 8) if model.startswith(REASONING_PREFIXES) else 0


class FakeProvider:
    """Start with `.start()`; `.url` is the base URL; `.log` the answered requests."""

    def __init__(self, log_path: str | None = None) -> None:
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._log_path = log_path
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                t_recv = time.time_ns()
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                fake._handle(self, body, t_recv)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeProvider":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- dispatch ---------------------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["seq"] = len(self.log) + 1
            self.log.append(entry)
            if self._log_path:
                with open(self._log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")

    def _handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any], t_recv: int) -> None:
        path = h.path.split("?")[0]
        entry: dict[str, Any] = {"path": path, "t_recv_ns": t_recv, "model_requested": body.get("model"),
                                 "stream": bool(body.get("stream")), "traceparent_header": h.headers.get("traceparent")}
        if path.endswith("/chat/completions"):
            self._chat(h, body, entry)
        elif path.endswith("/embeddings"):
            self._embeddings(h, body, entry)
        elif path.endswith("/responses"):
            self._responses(h, body, entry)
        elif path.endswith("/messages"):
            self._messages(h, body, entry)
        elif ":generateContent" in path or ":streamGenerateContent" in path:
            entry["model_requested"] = path.rsplit("/", 1)[-1].split(":")[0]
            entry["stream"] = ":streamGenerateContent" in path
            self._gemini(h, body, entry)
        else:
            _send(h, 404, {"error": {"message": "no such path", "type": "invalid_request_error"}})

    def _fail(self, h: BaseHTTPRequestHandler, entry: dict[str, Any], text: str, anthropic: bool) -> bool:
        for status in (429, 500, 529):
            if f"FAIL{status}" in text:
                if anthropic:
                    kind = "rate_limit_error" if status == 429 else "overloaded_error"
                    err: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": f"fake {status}"}}
                else:
                    err = {"error": {"message": f"fake {status}", "type": "tokens" if status == 429 else "server_error",
                                     "param": None, "code": "rate_limit_exceeded" if status == 429 else None}}
                entry.update(http_status=status, model_returned=None, raw_usage=None, tokens={})
                self._record(entry)
                _send(h, status, err)
                return True
        return False

    def _chat(self, h: BaseHTTPRequestHandler, body: dict[str, Any], entry: dict[str, Any]) -> None:
        entry["api"], entry["provider"] = "openai.chat.completions", "openai"
        messages = body.get("messages", [])
        if self._fail(h, entry, _text(messages[-1].get("content")) if messages else "", False):
            return
        model = body["model"]
        returned = RETURNED.get(model, model)
        p = prompt_tokens(messages)
        reply = reply_for(returned, p)
        visible = math.ceil(len(reply) / 4)
        reasoning = reasoning_for(model, p)
        cached = p // 4
        usage = {"prompt_tokens": p, "completion_tokens": visible + reasoning, "total_tokens": p + visible + reasoning,
                 "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        tool = None
        if body.get("tools") and "TOOL" in _text(messages[-1].get("content")):
            fn = body["tools"][0]["function"]["name"]
            tool = {"id": "call_" + uuid.uuid4().hex[:16], "type": "function",
                    "function": {"name": fn, "arguments": json.dumps({"city": "Paris"})}}
        finish = "tool_calls" if tool else "stop"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        entry.update(http_status=200, model_returned=returned, response_id=rid, finish_reason=finish,
                     include_usage=include_usage if entry["stream"] else False,
                     usage_reported_to_client=include_usage or not entry["stream"], raw_usage=usage,
                     tokens=_tokens(p, usage["completion_tokens"], cached, 0, reasoning), tool_call=bool(tool))
        self._record(entry)
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else reply}
        if tool:
            message["tool_calls"] = [tool]
        created = int(time.time())
        if not entry["stream"]:
            _send(h, 200, {"id": rid, "object": "chat.completion", "created": created, "model": returned,
                           "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                           "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake"})
            return
        chunks = []
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": returned,
                "system_fingerprint": "fp_fake"}
        if tool:
            chunks.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                                       "tool_calls": [{"index": 0, **tool}]},
                                                "finish_reason": None}]})
        else:
            chunks.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]})
            for word in reply.split(" "):
                chunks.append({**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        _sse(h, [(None, c) for c in chunks], done=True)

    def _embeddings(self, h: BaseHTTPRequestHandler, body: dict[str, Any], entry: dict[str, Any]) -> None:
        entry["api"], entry["provider"] = "openai.embeddings", "openai"
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        n = sum(max(1, math.ceil(len(x) / 4)) if isinstance(x, str) else max(1, len(x)) for x in inputs)
        usage = {"prompt_tokens": n, "total_tokens": n}
        entry.update(http_status=200, model_returned=body["model"], raw_usage=usage, usage_reported_to_client=True,
                     tokens=_tokens(n, 0, None, None, None))
        self._record(entry)
        _send(h, 200, {"object": "list", "model": body["model"], "usage": usage,
                       "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                for i in range(len(inputs))]})

    def _responses(self, h: BaseHTTPRequestHandler, body: dict[str, Any], entry: dict[str, Any]) -> None:
        entry["api"], entry["provider"] = "openai.responses", "openai"
        inp = body.get("input")
        messages = [{"role": "user", "content": inp}] if isinstance(inp, str) else list(inp or [])
        if self._fail(h, entry, _text(messages[-1].get("content")) if messages else "", False):
            return
        model = body["model"]
        returned = RETURNED.get(model, model)
        p = prompt_tokens(messages, body.get("instructions"))
        reply = reply_for(returned, p)
        visible = math.ceil(len(reply) / 4)
        reasoning = reasoning_for(model, p)
        cached = p // 4
        usage = {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": visible + reasoning, "output_tokens_details": {"reasoning_tokens": reasoning},
                 "total_tokens": p + visible + reasoning}
        rid = "resp_" + uuid.uuid4().hex[:24]
        entry.update(http_status=200, model_returned=returned, response_id=rid, finish_reason="completed",
                     usage_reported_to_client=True, raw_usage=usage,
                     tokens=_tokens(p, usage["output_tokens"], cached, 0, reasoning))
        self._record(entry)
        msg_id = "msg_" + uuid.uuid4().hex[:24]
        item = {"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": reply, "annotations": []}]}
        resp = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": returned, "output": [item], "usage": usage, "parallel_tool_calls": True, "tools": [],
                "tool_choice": "auto", "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}},
                "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
                "metadata": {}, "service_tier": "default", "reasoning": {"effort": None, "summary": None}}
        if not entry["stream"]:
            _send(h, 200, resp)
            return
        start = {**resp, "status": "in_progress", "output": [], "usage": None}
        events = [("response.created", {"type": "response.created", "sequence_number": 0, "response": start}),
                  ("response.output_item.added", {"type": "response.output_item.added", "sequence_number": 1,
                   "output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
                  ("response.content_part.added", {"type": "response.content_part.added", "sequence_number": 2,
                   "item_id": msg_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
                  ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 2,
                   "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": reply, "logprobs": []}),
                  ("response.output_item.done", {"type": "response.output_item.done", "sequence_number": 3,
                   "output_index": 0, "item": item}),
                  ("response.completed", {"type": "response.completed", "sequence_number": 4, "response": resp})]
        _sse(h, events, done=False)

    def _gemini(self, h: BaseHTTPRequestHandler, body: dict[str, Any], entry: dict[str, Any]) -> None:
        """Gemini API generateContent: promptTokenCount includes cachedContentTokenCount; thoughts
        (2.5 models) are outside candidatesTokenCount and inside totalTokenCount."""
        entry["api"], entry["provider"] = "gemini.generate_content", "gcp.gemini"
        messages, system = _gemini_text(body)
        if any(f"FAIL{code}" in (messages[-1]["content"] if messages else "") for code in (429, 500)):
            status = 429 if "FAIL429" in messages[-1]["content"] else 500
            entry.update(http_status=status, model_returned=None, raw_usage=None, tokens={})
            self._record(entry)
            _send(h, status, {"error": {"code": status, "message": f"fake {status}",
                                        "status": "RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL"}})
            return
        model = entry["model_requested"]
        returned = model + "-001" if model == "gemini-2.0-flash" else model
        p = prompt_tokens(messages, system)
        reply = reply_for(returned, p)
        visible = math.ceil(len(reply) / 4)
        thoughts = 64 + 8 * (p % 8) if model.startswith("gemini-2.5") else 0
        cached = p // 4
        usage: dict[str, Any] = {"promptTokenCount": p, "candidatesTokenCount": visible,
                                 "totalTokenCount": p + visible + thoughts, "cachedContentTokenCount": cached}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        rid = uuid.uuid4().hex[:20]
        entry.update(http_status=200, model_returned=returned, response_id=rid, finish_reason="STOP",
                     usage_reported_to_client=True, raw_usage=usage,
                     tokens=_tokens(p, visible + thoughts, cached, 0, thoughts))
        self._record(entry)
        cand = {"content": {"role": "model", "parts": [{"text": reply}]}, "finishReason": "STOP", "index": 0}
        resp = {"candidates": [cand], "usageMetadata": usage, "modelVersion": returned, "responseId": rid}
        if not entry["stream"]:
            _send(h, 200, resp)
            return
        words = reply.split(" ")
        half = " ".join(words[: len(words) // 2]) + " "
        first = {"candidates": [{"content": {"role": "model", "parts": [{"text": half}]}, "index": 0}],
                 "usageMetadata": {"promptTokenCount": p, "totalTokenCount": p}, "modelVersion": returned,
                 "responseId": rid}
        last = {"candidates": [{**cand, "content": {"role": "model", "parts": [{"text": reply[len(half):]}]}}],
                "usageMetadata": usage, "modelVersion": returned, "responseId": rid}
        _sse(h, [(None, first), (None, last)], done=False)

    def _messages(self, h: BaseHTTPRequestHandler, body: dict[str, Any], entry: dict[str, Any]) -> None:
        entry["api"], entry["provider"] = "anthropic.messages", "anthropic"
        messages = body.get("messages", [])
        if self._fail(h, entry, _text(messages[-1].get("content")) if messages else "", True):
            return
        model = body["model"]
        system = body.get("system")
        p = prompt_tokens(messages, _text(system) if system else None)
        reply = reply_for(model, p)
        visible = math.ceil(len(reply) / 4)
        read, write = p // 4, p // 8
        usage = {"input_tokens": p - read - write, "cache_read_input_tokens": read,
                 "cache_creation_input_tokens": write, "output_tokens": visible}
        mid = "msg_" + uuid.uuid4().hex[:24]
        entry.update(http_status=200, model_returned=model, response_id=mid, finish_reason="end_turn",
                     usage_reported_to_client=True, raw_usage=usage,
                     tokens=_tokens(p, visible, read, write, 0, provider_input=p - read - write))
        self._record(entry)
        msg = {"id": mid, "type": "message", "role": "assistant", "model": model,
               "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": usage}
        if not entry["stream"]:
            _send(h, 200, msg)
            return
        start_usage = {**usage, "output_tokens": 1}
        events = [("message_start", {"type": "message_start", "message": {**msg, "content": [], "stop_reason": None,
                                                                           "usage": start_usage}}),
                  ("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}),
                  ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": reply}}),
                  ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                  ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                     "usage": {"output_tokens": visible}}),
                  ("message_stop", {"type": "message_stop"})]
        _sse(h, events, done=False)


def _gemini_text(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    messages = [{"content": "".join(part.get("text", "") for part in c.get("parts", []))} for c in body.get("contents", [])]
    system = body.get("systemInstruction") or body.get("system_instruction")
    text = "".join(part.get("text", "") for part in system.get("parts", [])) if isinstance(system, dict) else None
    return messages, text


def _tokens(p: int, out: int, cached: int | None, write: int | None, reasoning: int | None,
            provider_input: int | None = None) -> dict[str, Any]:
    return {"input_tokens": p if provider_input is None else provider_input, "input_tokens_incl_cache": p,
            "output_tokens": out, "cached_tokens": cached, "cache_creation_tokens": write,
            "reasoning_tokens": reasoning, "total_tokens": p + out}


def _send(h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    h.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
    h.end_headers()
    h.wfile.write(data)


def _sse(h: BaseHTTPRequestHandler, events: list[tuple[str | None, Any]], done: bool) -> None:
    parts = []
    for name, data in events:
        parts.append((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n")
    if done:
        parts.append("data: [DONE]\n\n")
    payload = "".join(parts).encode()
    h.send_response(200)
    h.send_header("content-type", "text/event-stream")
    h.send_header("content-length", str(len(payload)))
    h.end_headers()
    h.wfile.write(payload)
