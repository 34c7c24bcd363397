"""otelgate: an OTLP gateway for the traces of LLM applications."""

__version__ = "0.1.0"
