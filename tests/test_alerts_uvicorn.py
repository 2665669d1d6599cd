"""Alerts as users run them: `uvicorn --workers 2` on a private redis-server, a webhook
receiver on 127.0.0.1, and three things going wrong in turn: a campaign suddenly refused well
above its baseline, a bad edit of the policy file, the Redis stopped. Each posts exactly one
alert, whichever worker saw it first; the other worker's claim finds the quiet period."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_server import RedisServer, free_port
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
# The app's clock runs 20 times as fast: a minute of counts passes in 3 s.
SPEED = 20.0
POLICY = """
[policy]
name = "shop"

[[caps]]
name = "once-a-day"
per = "campaign"
limit = 1
window = "1d"

[creepiness]
repetition = {{ weight = 0.0, window = "1h" }}

[fallback.content.sale]
body = "{{}}"

[store]
timeout = "2s"
retry_after = "200ms"

[alerts]
webhook = "{url}"
quiet = "1h"
resolution = "1m"
attempts = 3
backoff = "100ms"

[[alerts.conditions]]
name = "campaign-refusals"
kind = "refusal-rate"
per = "campaign"
window = "2m"
baseline = "30m"
factor = 3.0
min_decisions = 20
min_rate = 0.5

[[alerts.conditions]]
name = "store-down"
kind = "store-failing"
after = "1s"

[[alerts.conditions]]
name = "bad-reload"
kind = "reload-rejected"
"""


class Server:
    """`uvicorn tests.alerts_app:app --workers 2`, its log read line by line as it comes."""

    def __init__(self, tmp_path: Path, policy: Path, redis_url: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.epoch = time.time()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ALERTS_POLICY": str(policy),
            "ALERTS_REDIS": redis_url,
            "ALERTS_EPOCH": repr(self.epoch),
            "ALERTS_SPEED": str(SPEED),
            # The workers' lock files, used while Redis is down, stay this test's own.
            "TMPDIR": str(tmp_path),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.alerts_app:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # A new connection for every request, so that both workers get some.
        self.http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def logged(self, words: str) -> list[str]:
        with self._changed:
            return [line for line in self.lines if words in line]

    def minute(self) -> int:
        """The minute the app's clock is in (the bucket its counts go to)."""
        return int((self.epoch + (time.time() - self.epoch) * SPEED) // 60)

    def offer(self, person: str) -> str:
        """One marked request on a fresh connection; returns the pid of the worker."""
        response = self.http.get(
            f"{self.url}/offer", params={"campaign": "sale"}, headers={"x-test-user": person}
        )
        assert response.status_code == 200
        return response.headers["x-worker"]

    def stop(self) -> str:
        self.http.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        with self._changed:
            return "".join(self.lines)


@pytest.fixture
def served(tmp_path: Path, private_redis: RedisServer) -> Iterator[tuple[Server, Receiver, Path]]:
    policy = tmp_path / "shop.toml"
    with Receiver() as hook:
        policy.write_text(POLICY.format(url=hook.url))
        server = Server(tmp_path, policy, private_redis.url)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{server.url}/plain", timeout=5)
                    break
                except httpx.TransportError:
                    assert server.process.poll() is None, "".join(server.lines)
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.1)
            yield server, hook, policy
        finally:
            log = server.stop()
        assert "Traceback" not in log, log


def until(done: object, action: object, *, seconds: float = 40.0) -> None:
    """Call `action()` until `done()` is true; fail after `seconds` (a generous bound)."""
    deadline = time.monotonic() + seconds
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "waited too long"
        action()  # type: ignore[operator]


def test_each_alert_reaches_the_webhook_once_from_two_workers(
    served: tuple[Server, Receiver, Path], private_redis: RedisServer
) -> None:
    server, hook, policy = served

    # An ordinary stretch: every person a first offer, all personalized, from both workers.
    workers = {server.offer(f"p{number}") for number in range(40)}
    # Which worker accepts is the kernel's choice: more first offers until both have served.
    people = iter(range(40, 1000))
    until(lambda: len(workers) == 2, lambda: workers.add(server.offer(f"p{next(people)}")))
    # The spike starts in a minute of its own (of the app's fast clock: 3 s at most to wait),
    # so that the baseline is all before the spike's window.
    baseline = server.minute()
    until(lambda: server.minute() > baseline, lambda: time.sleep(0.05))

    # Then the campaign is suddenly refused: one person, again and again (once a day).
    until(lambda: hook.of_kind("refusal-rate"), lambda: server.offer("p0"))
    # The other worker saw the same fleet-wide spike and found the quiet period.
    suppressed = "throttle alert campaign-refusals (sale): in its quiet period"
    until(lambda: server.logged(suppressed), lambda: server.offer("p0"))
    [body] = hook.of_kind("refusal-rate")
    assert (body["alert"], body["key"], body["per"], body["subject"]) == (
        "campaign-refusals", "campaign-refusals:campaign:sale", "campaign", "sale",
    )  # fmt: skip
    figures = body["figures"]
    assert figures["rate"] >= 0.5 and figures["decisions"] >= 20
    assert figures["baseline_rate"] < figures["rate"] / 3 and figures["baseline_decisions"] >= 20
    assert body["summary"].startswith("campaign 'sale': refusal rate ")
    assert body["policy"].startswith("shop@") and body["quiet_seconds"] == 3600.0
    delivered = server.logged("throttle alert campaign-refusals: campaign 'sale'")
    assert len(delivered) == 1

    # A bad edit while hot reload watches: both workers refuse it, one alert leaves.
    policy.write_text(policy.read_text() + '\n[levels]\ndefault = "loud"\n')
    refused: set[str] = set()
    until(
        lambda: hook.of_kind("reload-rejected") and len(refused) == 2,
        lambda: refused.add(server.offer("p0")),
    )
    # Each worker looks at the file on its own requests, at most every 0.2 s.
    until(
        lambda: (
            len(server.logged("the edited file is not used")) == 2
            and server.logged("throttle alert bad-reload (")
        ),
        lambda: server.offer("p0"),
    )
    [body] = hook.of_kind("reload-rejected")
    assert body["subject"] == str(policy)
    assert "levels.default: is 'loud'" in body["summary"]

    # The Redis stops: decisions fall back, and after 1 s one alert says so.
    private_redis.stop()
    failing: set[str] = set()
    until(
        lambda: hook.of_kind("store-failing") and len(failing) == 2,
        lambda: failing.add(server.offer("p1")),
    )
    until(lambda: server.logged("throttle alert store-down (store)"), lambda: server.offer("p1"))
    [body] = hook.of_kind("store-failing")
    assert body["summary"].startswith("the store has failed for ")
    assert body["figures"]["after_seconds"] == 1.0
    assert len(hook.bodies) == 3
