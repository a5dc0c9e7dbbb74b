"""A throw-away HTTP server on 127.0.0.1 for tests (tool endpoints of the agent loop)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonToolHandler(BaseHTTPRequestHandler):
    """A JSON POST endpoint: records every (path, body) in `seen` (one list per subclass),
    answers `redirects` paths with a 302 to example.com, and every other path with
    `reply(path, body)` -> (status, JSON payload)."""

    seen: list = []
    redirects: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.seen = []

    def reply(self, path: str, body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body))
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", "http://example.com" + self.path)
            self.end_headers()
            return
        status, payload = self.reply(self.path, body)
        out = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free loopback port in a thread; yields the base URL (a fixture
    body: `yield from serving(Handler)`)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
