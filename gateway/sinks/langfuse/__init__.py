"""Langfuse sink: OTLP/HTTP to `<host>/api/public/otel/v1/traces`, spans mapped to Langfuse's `langfuse.*` attributes."""
