"""What both sides of `type: langfuse` share: one HTTP session, and whose key pair a batch goes with."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.batch import Batch


class LangfuseClient:
    """The traces side (OTel endpoint) and the logs side (scores API) are two sinks of one config."""

    def __init__(self, name: str, config: Any, path: str) -> None:
        self.name = name
        self.config = config
        self.url = config.endpoint + path
        self._own = (config.public_key, config.secret_key) if config.public_key and config.secret_key else None
        self._session: aiohttp.ClientSession | None = None
        # Batches of a send in progress, so a retry after a partial failure resends only the rest.
        self._pending: list[Batch] | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))

    async def shutdown(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _credentials(self, batch: Batch) -> tuple[str, str] | None:
        """The sender's pair with `forward_credentials` (when it came with one), else the sink's own."""
        if self.config.forward_credentials and batch.context.credentials is not None:
            return batch.context.credentials
        return self._own
