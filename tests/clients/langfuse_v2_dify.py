"""Dify's Langfuse integration, replayed with the real Langfuse Python SDK v2 (`langfuse<3`).

A replica built from langgenius/dify `api/core/ops/langfuse_trace/langfuse_trace.py`
(`LangFuseDataTrace`): `api_check()` is `auth_check()`, `get_project_key()` reads
`client.projects.get().data[0].id`, `message_trace` sends a trace and an `llm` generation with
`usage={input, output, total, unit: TOKENS, totalCost}`, `workflow_trace` a trace, a `workflow`
span (chatflow: the trace is named `message`) and per node a span or, for LLM nodes, a
generation with usage and no cost. Then a user's thumbs-up as a score (Dify's annotation
feedback) and a span opened now and ended in a later flush (the SDK's `span()` / `.end()`).

Run in a subprocess with PYTHONPATH pointing at an install of `langfuse<3` (tests/conftest.py:
`langfuse_v2`); it prints one JSON object: the ids it used and the project id it read.
Usage: python langfuse_v2_dify.py <host> <public_key> <secret_key>
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import datetime, timedelta, timezone

from langfuse import Langfuse  # the v2 SDK
from langfuse.version import __version__


def main(host: str, public_key: str, secret_key: str) -> None:
    assert __version__.startswith("2."), __version__
    client = Langfuse(public_key=public_key, secret_key=secret_key, host=host, flush_interval=0.1)
    try:
        client.auth_check()  # Dify's api_check()
    except Exception as exc:  # Dify answers the settings form with this error
        print(f"auth_check failed: {exc}", file=sys.stderr, flush=True)
        os._exit(3)
    project = client.client.projects.get().data[0].id  # Dify's get_project_key()
    t0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    meta = {"app_id": "app-0001", "tenant_id": "tenant-0001", "user_id": "end-user-7",
            "conversation_id": "conv-0001", "message_id": None}

    # message_trace (a chat app): the trace and its one generation, priced by Dify (total_price).
    message_id = str(uuid.UUID(int=0x1111_0000_0000_4000_8000_0000_0000_0001))
    client.trace(id=message_id, user_id="end-user-7", name="message",
                 input={"message": "hi", "message_tokens": 120, "answer_tokens": 30, "total_tokens": 150},
                 output="hello", metadata=meta, session_id="conv-0001", tags=["message", "chat"])
    client.generation(name="llm", trace_id=message_id, start_time=t0, end_time=t0 + timedelta(seconds=1),
                      model="gpt-4o-mini", input="hi", output="hello", metadata=meta, level="DEFAULT",
                      status_message="", usage={"input": 120, "output": 30, "total": 150, "unit": "TOKENS",
                                                "totalCost": 0.000036})

    # workflow_trace (a workflow app): trace, LLM node generations (no cost: otelgate prices), a code node.
    run_id = str(uuid.UUID(int=0x2222_0000_0000_4000_8000_0000_0000_0002))
    client.trace(id=run_id, user_id="end-user-7", name="workflow", input={"q": "x"}, output={"a": "y"},
                 metadata=meta, session_id=None, tags=["workflow"], version="draft")
    node_a = str(uuid.UUID(int=0x2222_0000_0000_4000_8000_0000_0000_00a1))
    client.generation(id=node_a, name="LLM", trace_id=run_id, model="gpt-4o", start_time=t0,
                      end_time=t0 + timedelta(seconds=2), input=[{"role": "user", "text": "x"}], output={"text": "y"},
                      metadata={**meta, "model_provider": "langgenius/openai/openai", "model_name": "gpt-4o"},
                      level="DEFAULT", usage={"input": 1000, "output": 200, "total": 1200, "unit": "TOKENS"})
    client.span(id=str(uuid.UUID(int=0x2222_0000_0000_4000_8000_0000_0000_00a2)), name="Code", trace_id=run_id,
                start_time=t0 + timedelta(seconds=2), end_time=t0 + timedelta(seconds=3), input={}, output={},
                metadata=meta, level="DEFAULT")

    # workflow_trace of a chatflow (message_id set): trace named message, a workflow span, nodes under it.
    chat_msg = str(uuid.UUID(int=0x3333_0000_0000_4000_8000_0000_0000_0003))
    chat_run = str(uuid.UUID(int=0x3333_0000_0000_4000_8000_0000_0000_0033))
    client.trace(id=chat_msg, user_id="end-user-7", name="message", input={"query": "q"}, output={"answer": "a"},
                 metadata=meta, session_id="conv-0001", tags=["message", "workflow"])
    client.span(id=chat_run, name="workflow", trace_id=chat_msg, start_time=t0, end_time=t0 + timedelta(seconds=5),
                input={"query": "q"}, output={"answer": "a"}, metadata=meta, level="DEFAULT", status_message="")
    node_c = str(uuid.UUID(int=0x3333_0000_0000_4000_8000_0000_0000_00c1))
    client.generation(id=node_c, name="LLM", trace_id=chat_msg, parent_observation_id=chat_run,
                      model="claude-3-5-sonnet-20241022", start_time=t0, end_time=t0 + timedelta(seconds=4),
                      input=[], output={"text": "a"}, level="DEFAULT",
                      metadata={**meta, "model_provider": "langgenius/anthropic/anthropic"},
                      usage={"input": 2000, "output": 100, "total": 2100, "unit": "TOKENS"})
    failed = str(uuid.UUID(int=0x3333_0000_0000_4000_8000_0000_0000_00c2))
    client.generation(id=failed, name="LLM 2", trace_id=chat_msg, parent_observation_id=chat_run, model="gpt-4o",
                      start_time=t0, end_time=t0 + timedelta(seconds=1), level="ERROR", status_message="rate limited",
                      usage={"input": 0, "output": 0, "total": 0, "unit": "TOKENS"})

    # Feedback: the user's thumbs-up on the chat message, and a categorical annotation.
    client.score(id="score-like-0001", trace_id=message_id, name="user-feedback", value=1, data_type="NUMERIC",
                 comment="very helpful, mail me at jane@example.com")
    client.score(id="score-label-0002", trace_id=chat_msg, observation_id=node_c, name="rating", value="dislike",
                 data_type="CATEGORICAL")
    client.flush()

    # The SDK's open/close pattern across two flushes: span() now, end() in a later request.
    later = client.span(id="open-span-0001", trace_id=message_id, name="retrieval", start_time=t0)
    client.flush()
    later.end(end_time=t0 + timedelta(seconds=3), output={"documents": 3})
    client.flush()
    print(json.dumps({"project": project, "message": message_id, "workflow": run_id, "chatflow": chat_msg,
                      "node_a": node_a, "node_c": node_c, "failed": failed, "chat_run": chat_run}), flush=True)
    os._exit(0)  # everything is flushed; skip the SDK's exit-time thread joins (seconds each)


if __name__ == "__main__":
    main(*sys.argv[1:4])
