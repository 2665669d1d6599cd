"""A webhook receiver the tests start on 127.0.0.1: records each JSON POST, answers `status`."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """`with Receiver() as hook:` serves on a free loopback port; `hook.url` to post to."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.posts = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._changed:  # recorded before the sender hears back
                    receiver.posts += 1
                    if receiver.status < 300:
                        receiver.bodies.append(body)
                    receiver._changed.notify_all()
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/throttle?token=s3cret"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, posts: int, timeout: float = 30.0) -> bool:
        """Whether `posts` POSTs arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.posts < posts:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._changed:
            return [body for body in self.bodies if body["kind"] == kind]
