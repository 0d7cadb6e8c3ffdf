"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 in a thread, recording every call.

Each path answers from its own script of status codes (the last one repeats), so one receiver serves several tenants
with different behaviours: ``receiver.script("/a", [500, 500, 200])``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Call:
    path: str
    headers: dict
    body: bytes
    answered: int
    at: float = field(default_factory=time.time)  # wall clock: compared with timestamps the database recorded

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self):
        self.calls: list[Call] = []
        self._scripts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    script = receiver._scripts.get(self.path, [200])
                    status = script.pop(0) if len(script) > 1 else script[0]
                    receiver.calls.append(Call(self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def script(self, path: str, statuses: list[int]) -> str:
        with self._lock:
            self._scripts[path] = list(statuses)
        return self.url(path)

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Call]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.calls_to(path)
            if len(calls) >= count:
                return calls
            time.sleep(0.05)
        raise AssertionError(f"{path} got {len(self.calls_to(path))} calls, wanted {count}, within {timeout} s")
