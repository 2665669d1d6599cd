"""Configuration errors stop `uvicorn app:app` at start-up, as users run it: real processes,
uvicorn's defaults (lifespan "auto"), one worker and several, Starlette and FastAPI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = ROOT / "policies" / "default.toml"

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from throttle import ThrottleMiddleware

async def plain(request):
    return PlainTextResponse("hello")

app = Starlette(routes=[Route("/", plain)])
app.add_middleware(ThrottleMiddleware, policy={policy!r}, store={store!r})
"""

FASTAPI_APP = """
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from throttle import ThrottleMiddleware

app = FastAPI()

@app.get("/", response_class=PlainTextResponse)
async def plain():
    return "hello"

app.add_middleware(ThrottleMiddleware, policy={policy!r}, store={store!r})
"""

FRAMEWORKS = {"starlette": STARLETTE_APP, "fastapi": FASTAPI_APP}
SECRET = "a-secret-long-enough-0123456789"


def write_app(directory: Path, framework: str, *, policy: Path, store: str) -> None:
    source = FRAMEWORKS[framework].format(policy=str(policy), store=store)
    (directory / "app.py").write_text(source)


class Server:
    """`uvicorn app:app` on a free loopback port, with its defaults unless told otherwise."""

    def __init__(self, directory: Path, *options: str, secret: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "THROTTLE_SECRET"}
        if secret is not None:
            env["THROTTLE_SECRET"] = secret
        env["PYTHONPATH"] = os.pathsep.join([str(directory), str(ROOT)])
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", port,
             *options],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip

    def finished(self) -> tuple[int, str]:
        """The exit status and log of a server expected to stop by itself (60 s at most)."""
        try:
            output, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
            pytest.fail(f"uvicorn kept running with a bad configuration:\n{output}")
        return self.process.returncode, output

    def first_answer(self) -> httpx.Response | None:
        """The first response to GET /, once the server listens (60 s at most)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                return httpx.get(self.url + "/", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
        return None

    def stop(self) -> str:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        return output


@pytest.fixture
def bad_policy(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text('[policy]\nname = "shop"\n[creepiness]\nthreshold = "0.7"\n')
    return path


BAD = {
    # what is wrong: (policy, store, secret, words the log must hold)
    "policy": ("bad", "memory://", None, "creepiness.threshold: is '0.7', text"),
    "secret": ("default", "redis://127.0.0.1:1/0", None, "THROTTLE_SECRET"),
    "store-url": ("default", "redis//127.0.0.1:6379/0", SECRET, "redis//127.0.0.1:6379/0"),
}


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("wrong", sorted(BAD))
def test_a_configuration_error_stops_uvicorn_at_startup(
    tmp_path: Path, bad_policy: Path, framework: str, wrong: str
) -> None:
    policy, store, secret, words = BAD[wrong]
    write_app(tmp_path, framework, policy=bad_policy if policy == "bad" else DEFAULT_POLICY,
              store=store)  # fmt: skip
    status, log = Server(tmp_path, secret=secret).finished()
    assert status != 0, log
    assert "throttle cannot start:" in log
    assert words in log
    assert "Application startup failed. Exiting." in log
    assert "Application startup complete" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_configuration_error_stops_every_worker_and_the_parent(
    tmp_path: Path, bad_policy: Path, framework: str
) -> None:
    write_app(tmp_path, framework, policy=bad_policy, store="memory://")
    # uvicorn's parent stops once a worker fails to start, but exits 0 all the same (uvicorn
    # 0.54's choice): what is checked is that it stopped by itself, and why.
    _, log = Server(tmp_path, "--workers", "2").finished()
    assert "failed to start, stopping the parent process" in log, log
    assert "throttle cannot start:" in log
    assert "Application startup complete" not in log
    assert "Traceback" not in log


def test_without_a_lifespan_a_bad_configuration_answers_503_never_500(
    tmp_path: Path, bad_policy: Path
) -> None:
    write_app(tmp_path, "starlette", policy=bad_policy, store="memory://")
    server = Server(tmp_path, "--lifespan", "off")
    try:
        first = server.first_answer()
        responses = [first, *(httpx.get(server.url + "/", timeout=10) for _ in range(2))]
    finally:
        log = server.stop()
    assert [r.status_code if r else None for r in responses] == [503, 503, 503], log
    assert first is not None and first.text == "Service Unavailable"
    assert first.headers["retry-after"] == "60"
    assert log.count("throttle cannot start:") == 1  # logged once, not per request
    assert "Traceback" not in log


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_good_configuration_starts_and_serves(tmp_path: Path, framework: str) -> None:
    write_app(tmp_path, framework, policy=DEFAULT_POLICY, store="memory://")
    server = Server(tmp_path)
    try:
        answered = server.first_answer()
    finally:
        log = server.stop()
    assert answered is not None, log
    assert (answered.status_code, answered.text) == (200, "hello")
