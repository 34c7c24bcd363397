"""Errors classified where they happen, so the code that reacts never parses messages.

Receivers map `Refused` to the OTLP protocol's retryable answers; the sink driver maps
`PermanentError` and `RetryableError` to drop-or-retry.
"""

from __future__ import annotations


class Refused(Exception):
    """The pipeline cannot take this request now; the client should retry later."""

    reason = "backpressure"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Refused):
    """Refused because a rate limit was reached (HTTP 429 rather than 503)."""

    reason = "rate_limited"


class PermanentError(Exception):
    """A sink failure that will not succeed on retry: the data is dropped and counted."""


class RetryableError(Exception):
    """A sink failure that may succeed later; `retry_after` is the server's hint, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
