"""Redaction of personal data and secrets in telemetry: what to look for (`detectors`) and where
content lives (`keys`). The processor that applies them to OTLP data is `gateway.processors.redact`.
"""
