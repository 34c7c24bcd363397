"""Provider names: the canonical name of any spelling seen in the wild, and inference from model and host.

Canonical names are the OTel GenAI `gen_ai.provider.name` values (openai, anthropic, aws.bedrock,
azure.ai.openai, azure.ai.inference, gcp.vertex_ai, gcp.gemini, gcp.gen_ai, mistral_ai, x_ai, ...);
providers semconv does not list are kept lowercase (openrouter, together_ai, fireworks_ai, ollama,
...). `GENAI_PRICES_PROVIDER` maps them to the provider ids genai-prices knows.

Every function here is pure and cached: the normalizer calls them on each LLM span.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_UNKNOWN = object()

# Every spelling -> canonical name (None: the value says nothing about the provider).
_ALIASES: dict[str, str | None] = {}


def _alias(canonical: str | None, *spellings: str) -> None:
    for s in spellings:
        _ALIASES[s] = canonical
    if canonical is not None:
        _ALIASES.setdefault(canonical, canonical)


_alias("openai", "openai", "openai.chat", "openai.responses", "openai.completion", "openai.embedding",
       "openai.embeddings", "openai.image", "text-completion-openai", "openai_chat", "openai-chat")
_alias("anthropic", "anthropic", "anthropic.messages", "anthropic.chat", "anthropic_messages", "claude")
_alias("aws.bedrock", "aws", "bedrock", "bedrock_converse", "amazon-bedrock", "amazon_bedrock", "bedrock-mantle",
       "aws_bedrock", "aws-bedrock", "amazon.bedrock", "bedrock-converse", "bedrock_runtime")
_alias("azure.ai.openai", "az.ai.openai", "azure", "azure-openai", "azure_openai", "azure.chat", "azure.responses",
       "azure.completion", "azure.embedding", "azure-openai.chat", "azure-openai.responses", "azureopenai",
       "azure_text", "azure.openai")
_alias("azure.ai.inference", "az.ai.inference", "azure_ai", "azure-ai", "azure-ai-inference", "azure.inference",
       "azure_ai_inference", "azureaiinference")
_alias("gcp.vertex_ai", "vertex_ai", "vertexai", "vertex", "google-vertex", "google.vertex", "google-cloud",
       "google_cloud", "vertex_ai_beta", "vertex-ai", "google_vertexai", "google-vertexai", "gcp.vertex")
_alias("gcp.gemini", "gemini", "google.generative-ai", "google-gla", "google_genai", "google-genai",
       "google_ai_studio", "google-ai-studio", "googleai", "google_ai", "generativeai", "google.gemini")
_alias("gcp.gen_ai", "google", "gcp", "google_gen_ai")
_alias("mistral_ai", "mistral", "mistralai", "mistral-ai", "mistral.chat", "codestral")
_alias("x_ai", "xai", "grok", "x-ai", "x.ai")
_alias("cohere", "cohere", "cohere_chat", "cohere-chat", "cohere.chat", "cohere_v2")
_alias("deepseek", "deepseek", "deepseek-ai", "deepseek_ai")
_alias("groq", "groq", "groq.chat")
_alias("perplexity", "perplexity", "perplexityai", "perplexity_ai", "perplexity-ai")
_alias("moonshot_ai", "moonshot", "moonshotai", "moonshot-ai", "kimi")
_alias("ibm.watsonx.ai", "watsonx", "ibm", "watsonx.ai", "watsonx_text", "ibm_watsonx")
_alias("openrouter", "openrouter", "open_router", "open-router")
_alias("together_ai", "together", "togetherai", "together-ai", "together.ai")
_alias("fireworks_ai", "fireworks", "fireworksai", "fireworks-ai")
_alias("ollama", "ollama", "ollama_chat")
_alias("hugging_face", "huggingface", "hugging-face", "hf", "huggingface_hub", "hf_inference")
_alias("replicate", "replicate")
_alias("cerebras", "cerebras")
_alias("databricks", "databricks")
_alias("deepinfra", "deepinfra")
_alias("voyageai", "voyage", "voyage_ai", "voyage-ai")
_alias("nvidia_nim", "nvidia", "nvidia-nim", "nim")
_alias("sambanova", "sambanova")
_alias("cloudflare", "cloudflare", "workers-ai", "workers_ai", "cloudflare-workers-ai")
_alias("minimax", "minimax")
_alias("zai", "z.ai", "zhipu", "zhipuai", "z-ai")
_alias("ai21", "ai21", "ai21_chat")
# Frameworks and placeholders: they do not name who served the call.
_alias(None, "", "langchain", "langgraph", "llamaindex", "llama_index", "unknown", "none", "null", "n/a", "na",
       "custom", "other", "default", "litellm", "openai_compatible", "openai-compatible", "vercel", "ai")

# Suffixes of Vercel AI SDK provider ids (`<provider>.<api>`).
_API_SUFFIXES = frozenset({"chat", "messages", "responses", "completion", "completions", "embedding", "embeddings",
                           "image", "text", "transcription", "speech", "generative-ai", "languagemodel"})
_PLAUSIBLE = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,63}$")

_cache: dict[str, str | None] = {}
_CACHE_MAX = 4096


def canonical_provider(raw: str | None) -> str | None:
    """The canonical provider name for any spelling (case-insensitive); None when it names none."""
    if not raw or not isinstance(raw, str):
        return None
    hit = _cache.get(raw, _UNKNOWN)
    if hit is not _UNKNOWN:
        return hit  # type: ignore[return-value]
    result = _canonical(raw)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[raw] = result
    return result


def _canonical(raw: str) -> str | None:
    s = raw.strip().lower()
    if s in _ALIASES:
        return _ALIASES[s]
    if s.count("/") == 2:  # Dify's plugin ids, <org>/<plugin>/<provider>: the plugin names the API
        return _canonical(s.split("/")[1])  # langgenius/openai/openai, langgenius/gemini/google -> gcp.gemini
    if s.startswith("google.vertex") or s.startswith("vertex."):
        return "gcp.vertex_ai"
    if s.startswith("google.generative") or s.startswith("google.gemini"):
        return "gcp.gemini"
    if "." in s:  # Vercel `<provider>.<api>` ids: openai.chat, mistral.chat, groq.chat, ...
        first, _, rest = s.partition(".")
        known = _ALIASES.get(first, _UNKNOWN)
        if known is not _UNKNOWN:
            return known  # type: ignore[return-value]  # None for "langchain.chat"
        if rest in _API_SUFFIXES and _PLAUSIBLE.match(first):
            return first
    if _PLAUSIBLE.match(s):
        return s
    return None


# genai-prices provider ids (`calc_price(..., provider_id=...)`).
GENAI_PRICES_PROVIDER: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",  # not "azure.ai.openai": genai-prices would substring-match openai
    "azure.ai.inference": "azure",
    "gcp.vertex_ai": "google",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",  # "x_ai" raises LookupError
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "perplexity": "perplexity",
    "moonshot_ai": "moonshotai",
    "openrouter": "openrouter",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "cerebras": "cerebras",
    "databricks": "databricks",
    "voyageai": "voyageai",
    "cloudflare": "cloudflare",
    "minimax": "minimax",
    "zai": "zai",
}

# ---------------------------------------------------------------------------------------------
# Inference from the host and the model name.

_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini",
    "api.mistral.ai": "mistral_ai",
    "codestral.mistral.ai": "mistral_ai",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "openrouter.ai": "openrouter",
    "api.together.xyz": "together_ai",
    "api.together.ai": "together_ai",
    "api.fireworks.ai": "fireworks_ai",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "api.perplexity.ai": "perplexity",
    "api.moonshot.ai": "moonshot_ai",
    "api.moonshot.cn": "moonshot_ai",
    "api.cerebras.ai": "cerebras",
    "api.replicate.com": "replicate",
    "router.huggingface.co": "hugging_face",
    "api-inference.huggingface.co": "hugging_face",
    "api.deepinfra.com": "deepinfra",
    "api.voyageai.com": "voyageai",
    "integrate.api.nvidia.com": "nvidia_nim",
    "api.sambanova.ai": "sambanova",
}
# (suffix, provider), checked in order.
_HOST_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".openai.azure.com", "azure.ai.openai"),
    (".cognitiveservices.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    (".inference.ai.azure.com", "azure.ai.inference"),
    (".models.ai.azure.com", "azure.ai.inference"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    (".openrouter.ai", "openrouter"),
    (".openai.com", "openai"),
    (".anthropic.com", "anthropic"),
)
_OLLAMA_PORT = 11434


def _host_provider(host: str) -> str | None:
    host = host.strip().lower().rstrip(".")
    if not host:
        return None
    hit = _HOSTS.get(host)
    if hit:
        return hit
    for suffix, provider in _HOST_SUFFIXES:
        if host.endswith(suffix):
            return provider
    if host.startswith("bedrock") and host.endswith(".amazonaws.com"):  # bedrock-runtime.<region>.amazonaws.com
        return "aws.bedrock"
    return None


def _split_host_port(address: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` or a URL -> (host, port)."""
    if "://" in address:
        try:
            parts = urlsplit(address)
            return parts.hostname or "", parts.port
        except ValueError:
            return "", None
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return host.strip("[]"), int(port)
    return address.strip("[]"), None


# Model name prefixes (lowercase), checked in order.
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"), ("chatgpt-", "openai"),
    ("text-embedding-3", "openai"), ("text-embedding-ada", "openai"), ("davinci", "openai"),
    ("babbage", "openai"), ("ft:gpt", "openai"), ("tts-1", "openai"), ("whisper", "openai"), ("dall-e", "openai"),
    ("omni-moderation", "openai"), ("text-moderation", "openai"), ("codex-", "openai"),
    ("computer-use-preview", "openai"),
    ("claude", "anthropic"),
    ("gemini", "gcp.gemini"), ("text-embedding-00", "gcp.gen_ai"), ("text-multilingual-embedding", "gcp.gen_ai"),
    ("mistral", "mistral_ai"), ("mixtral", "mistral_ai"), ("codestral", "mistral_ai"), ("ministral", "mistral_ai"),
    ("pixtral", "mistral_ai"), ("magistral", "mistral_ai"), ("devstral", "mistral_ai"), ("open-mistral", "mistral_ai"),
    ("open-mixtral", "mistral_ai"), ("voxtral", "mistral_ai"),
    ("command", "cohere"), ("embed-english", "cohere"), ("embed-multilingual", "cohere"), ("embed-v4", "cohere"),
    ("rerank-", "cohere"), ("c4ai-aya", "cohere"),
    ("grok", "x_ai"),
    ("deepseek", "deepseek"),
    ("sonar", "perplexity"),
    ("kimi", "moonshot_ai"), ("moonshot", "moonshot_ai"),
    ("voyage-", "voyageai"),
)
# Bedrock model ids: optional cross-region prefix, vendor, dot: `us.anthropic.claude-...`, `amazon.nova-pro-v1:0`.
_BEDROCK_ID = re.compile(
    r"^(?:(?:us|eu|apac|global|us-gov|jp|au|ca|ap)\.)?"
    r"(?:anthropic|amazon|meta|cohere|mistral|ai21|deepseek|writer|qwen|openai|stability|twelvelabs|luma)\.[a-z0-9]")
_O_SERIES = re.compile(r"^o[134](?:$|-)")

_infer_cache: dict[tuple[str | None, str | None, str | None, int | None], str | None] = {}


def infer_provider(model: str | None, server_address: str | None, url: str | None,
                   server_port: int | None = None) -> str | None:
    """The provider from the host the call went to (first) or the model name; None if neither says."""
    key = (model, server_address, url, server_port)
    hit = _infer_cache.get(key, _UNKNOWN)
    if hit is not _UNKNOWN:
        return hit  # type: ignore[return-value]
    result = _infer(model, server_address, url, server_port)
    if len(_infer_cache) >= _CACHE_MAX:
        _infer_cache.clear()
    _infer_cache[key] = result
    return result


def _infer(model: str | None, server_address: str | None, url: str | None, server_port: int | None) -> str | None:
    ports: list[int | None] = [server_port]
    for address in (server_address, url):
        if address and isinstance(address, str) and len(address) <= 2048:
            host, port = _split_host_port(address.strip())
            ports.append(port)
            found = _host_provider(host)
            if found:
                return found
    if _OLLAMA_PORT in ports:
        return "ollama"
    if model and isinstance(model, str):
        return _model_provider(model.strip().lower())
    return None


def _model_provider(m: str) -> str | None:
    if not m or len(m) > 512:
        return None
    if m.startswith("arn:aws:bedrock") or m.startswith("arn:aws-us-gov:bedrock"):
        return "aws.bedrock"
    if "/" in m:
        first, _, rest = m.partition("/")
        if "publishers/" in m or first == "projects":
            return "gcp.vertex_ai"  # a Vertex resource path
        if first == "accounts" and rest.startswith("fireworks/"):
            return "fireworks_ai"
        if first != "models":
            known = _ALIASES.get(first, _UNKNOWN)
            if known is not _UNKNOWN and known is not None:
                return known  # type: ignore[return-value]
        m = m.rsplit("/", 1)[1]
    if _BEDROCK_ID.match(m):
        return "aws.bedrock"
    if m.startswith("claude") and "@" in m:
        return "gcp.vertex_ai"  # Vertex names Anthropic models `claude-sonnet-4@20250514`
    if _O_SERIES.match(m):
        return "openai"
    for prefix, provider in _MODEL_PREFIXES:
        if m.startswith(prefix):
            return provider
    return None


# Prefixes of routed model names that genai-prices does not match (`openai/gpt-4o`, `models/gemini-...`).
_STRIPPABLE = frozenset(k for k, v in _ALIASES.items() if v is not None and "." not in k) | {
    "models", "hosted_vllm", "vllm", "lm_studio", "text-completion-codestral", "sagemaker", "sagemaker_chat",
    "friendliai", "anyscale", "nlp_cloud", "aleph_alpha", "palm", "github", "github_copilot", "litellm_proxy",
    "azure_ai", "vertex_ai", "vertex_ai_beta", "bedrock_converse", "gemini", "openrouter",
}


def strip_provider_prefix(model: str) -> str:
    """`openai/gpt-4o` -> `gpt-4o`, `models/gemini-2.0-flash` -> `gemini-2.0-flash`.

    Bedrock ids (`anthropic.claude-...`, `us.anthropic....`) and Vertex names (`claude-...@2025...`)
    are left alone: genai-prices matches them as they are.
    """
    for _ in range(4):
        first, sep, rest = model.partition("/")
        if not sep or not rest or first.lower() not in _STRIPPABLE:
            break
        model = rest
    return model
