"""A local HTTP server that records every POST (path, headers, JSON body), for notification tests.
`fail` makes it answer 500 to the next N requests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


class WebhookServer:
    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], Any]] = []
        self.fail = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if owner.fail > 0:
                    owner.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                owner.received.append((self.path, dict(self.headers), orjson.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[Any]:
        return [body for p, _, body in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
