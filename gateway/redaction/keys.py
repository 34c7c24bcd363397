"""Which attribute keys hold LLM content, and which are never touched.

Content keys come from CONVENTIONS.md "Where content lives", one dialect per line. The indexed
families (`gen_ai.prompt.0.content`, `llm.input_messages.3.message.content`, ...) are content
under their prefix, except the structural leaves that say how the content is laid out (`role`,
`finish_reason`, ...): dropping or hashing those would only make a trace harder to read.
"""

from __future__ import annotations

from collections.abc import Iterable

CONTENT_KEYS = frozenset({
    # OTel GenAI (current; older span events carry `gen_ai.prompt` / `gen_ai.completion`)
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "gen_ai.prompt", "gen_ai.completion",
    # OpenInference
    "input.value", "output.value",
    # OpenLLMetry / Traceloop
    "traceloop.entity.input", "traceloop.entity.output",
    # Langfuse
    "langfuse.observation.input", "langfuse.observation.output", "langfuse.trace.input", "langfuse.trace.output",
    # Vercel AI SDK (`ai.prompt*` is a prefix below; `ai.response.*` also holds ids and models)
    "ai.prompt", "ai.response.text", "ai.response.toolCalls", "ai.response.object", "ai.response.reasoning",
    "ai.response.reasoningDetails", "ai.response.files", "ai.toolCall.args", "ai.toolCall.result",
    "ai.value", "ai.values", "ai.embedding", "ai.embeddings",
    # MLflow
    "mlflow.spanInputs", "mlflow.spanOutputs",
    # pydantic-ai (not in CONVENTIONS.md; seen in its spans): the agent's messages and answer
    "pydantic_ai.all_messages", "final_result",
})

CONTENT_PREFIXES = (
    "gen_ai.prompt.", "gen_ai.completion.",  # OpenLLMetry indexed messages
    "llm.input_messages.", "llm.output_messages.",  # OpenInference
    "llm.prompts.", "llm.choices.",  # OpenLLMetry, older
    "ai.prompt.",  # Vercel: ai.prompt.messages, ai.prompt.tools, ...
    "embedding.embeddings.",  # OpenInference embedding texts and vectors
)

# The last segment of an indexed key that describes layout, not content.
STRUCTURAL_LEAVES = frozenset({"role", "finish_reason", "type", "id", "tool_call_id", "name", "mime_type"})

# Never touched by default: what the gateway's own processors and every backend group by
# (identity of the service, providers, models, operations, token counts, costs, ids of
# responses). None of them carries user content; several look like matches to a detector
# (a version `1.2.3.4` is an IPv4 address, a long id may pass the Luhn check).
DEFAULT_ALLOW_KEYS = (
    "service.name", "service.namespace", "service.version", "service.instance.id",
    "telemetry.sdk.*", "telemetry.distro.*", "deployment.environment", "deployment.environment.name",
    "gen_ai.provider.name", "gen_ai.system", "gen_ai.operation.name", "gen_ai.request.model",
    "gen_ai.response.model", "gen_ai.response.id", "gen_ai.response.finish_reasons", "gen_ai.usage.*",
    "gen_ai.aggregated_usage.*",
    "llm.model_name", "llm.provider", "llm.system", "llm.request.type", "llm.token_count.*", "llm.usage.*",
    "llm.cost.*", "openinference.span.kind",
    "ai.model.id", "ai.model.provider", "ai.usage.*", "ai.operationId", "ai.response.id", "ai.response.model",
    "langfuse.observation.type", "langfuse.observation.model.name", "langfuse.observation.usage_details",
    "langfuse.observation.cost_details",
    "mlflow.spanType", "mlflow.llm.model", "mlflow.llm.provider", "mlflow.chat.tokenUsage",
    "otelgate.*",
    "server.address", "server.port",  # the provider's endpoint (an IP there is no one's personal data)
)

ALLOW, SCAN, CONTENT = 0, 1, 2
_MAX_CACHED = 4096  # distinct keys remembered; indexed keys are many but bounded in practice


def is_content(key: str) -> bool:
    if key in CONTENT_KEYS:
        return True
    if key.startswith(CONTENT_PREFIXES):
        return key.rpartition(".")[2] not in STRUCTURAL_LEAVES
    return False


class KeyRoles:
    """What to do with an attribute, by key: ALLOW (never touched), CONTENT, or SCAN (patterns).

    `allow` entries are exact keys or prefixes ending with `*`. An allowed key wins over a
    content key. Answers are cached per key: a span's keys repeat across every span."""

    def __init__(self, allow: Iterable[str], content_is_special: bool) -> None:
        allow = list(allow)
        self._exact = frozenset(a for a in allow if not a.endswith("*"))
        self._prefixes = tuple(a[:-1] for a in allow if a.endswith("*"))
        self._content = content_is_special
        self.known: dict[str, int] = {}  # the answers so far; read directly on the hot path

    def __call__(self, key: str) -> int:
        role = self.known.get(key)
        if role is None:
            role = self._decide(key)
            if len(self.known) >= _MAX_CACHED:
                self.known.clear()
            self.known[key] = role
        return role

    def _decide(self, key: str) -> int:
        if key in self._exact or key.startswith(self._prefixes):
            return ALLOW
        if self._content and is_content(key):
            return CONTENT
        return SCAN
