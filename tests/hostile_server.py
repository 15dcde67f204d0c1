"""HTTP servers on 127.0.0.1 that misbehave on purpose, for tests and benchmarks of the fetch path.

``/trickle/<name>``: answers 200 with a large Content-Length, then sends one byte
every ``interval_s`` (the slow-body attack: httpx's read timeout restarts at every
byte). ``/stall/<name>``: accepts and never answers. Every other path serves files
from ``directory``. Every slow response stops by itself after ``max_hold_s``, so no
test can hang on it.
"""

from __future__ import annotations

import http.server
import time
from contextlib import AbstractContextManager
from typing import Any

from ray_mm.cli.demo import serve_directory


class _Handler(http.server.SimpleHTTPRequestHandler):
    interval_s = 0.25
    max_hold_s = 30.0

    def do_GET(self) -> None:  # noqa: N802 - name of the base class's hook
        if self.path.startswith("/trickle/"):
            self._trickle()
        elif self.path.startswith("/stall/"):
            time.sleep(self.max_hold_s)
        else:
            super().do_GET()

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        end = time.monotonic() + self.max_hold_s
        try:
            while time.monotonic() < end:
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(self.interval_s)
        except OSError:
            pass  # the client gave up: what a deadline should make it do

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


def hostile_server(directory: str, interval_s: float = 0.25, max_hold_s: float = 30.0) -> AbstractContextManager[str]:
    """Serve on 127.0.0.1 (ephemeral port); the context yields the base URL."""
    handler = type("Handler", (_Handler,), {"interval_s": interval_s, "max_hold_s": max_hold_s})
    return serve_directory(directory, handler)
