"""A private redis-server for one bench run: a free loopback port, nothing kept on disk."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from throttle.errors import ConfigurationError

INSTALL_HINT = (
    "redis-server is not installed; `throttle bench` starts a private one unless you pass "
    "--redis-url. Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install "
    "redis) or point --redis-url at a Redis you own."
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """Started on entry, stopped (and its directory removed) on exit."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigurationError(INSTALL_HINT)
        self._binary = binary
        self.port = free_port()
        self._directory = Path(tempfile.mkdtemp(prefix="throttle-bench-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> PrivateRedis:
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._directory),
                "--logfile", str(self._directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        log = self._directory / "redis.log"
                        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                        self.__exit__()
                        raise ConfigurationError(
                            f"redis-server did not start on 127.0.0.1:{self.port}: {tail}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        shutil.rmtree(self._directory, ignore_errors=True)
