"""WebSocket messages and server-sent events decided one by one, against `uvicorn --workers 2`
with real clients (websockets, httpx), on the memory store and on real redis-servers."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.helpers import SECRET
from tests.realtime_app import EVERYONE, PERSONAL
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CAP_3 = """
[policy]
name = "realtime"
[[caps]]
name = "three"
per = "user"
limit = 3
window = "1h"
[creepiness]
repetition = { weight = 0.0, window = "1h" }
[store]
timeout = "5s"
retry_after = "30s"
"""


class Served:
    """`uvicorn tests.realtime_app:app --workers 2` on a free loopback port."""

    def __init__(self, directory: Path, store: str, *, workers: int = 2) -> None:
        policy = directory / "policy.toml"
        policy.write_text(CAP_3)
        self.go = directory / "go"
        env = {
            **os.environ,
            "THROTTLE_TEST_POLICY": str(policy),
            "THROTTLE_TEST_STORE": store,
            "THROTTLE_SECRET": SECRET.decode(),
            "THROTTLE_TEST_GO": str(self.go),
            "PYTHONPATH": str(ROOT),
        }
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.realtime_app:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.http}/events?count=0", timeout=5)
                break
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"uvicorn did not start:\n{self.stop()}")
                time.sleep(0.05)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def socket(self, person: str | None) -> ClientConnection:
        headers = {"x-test-user": person} if person else {}
        return connect(
            f"ws://127.0.0.1:{self.port}/live", additional_headers=headers, open_timeout=10
        )

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        return output


@pytest.fixture(scope="module")
def redis_for_realtime() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module", params=["memory", "redis"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    store = "memory://"
    if request.param == "redis":
        store = request.getfixturevalue("redis_for_realtime").url
    server = Served(tmp_path_factory.mktemp(f"realtime-{request.param}"), store)
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


def person() -> str:
    return f"ana-{uuid.uuid4().hex[:8]}"


def ask(socket: ClientConnection, command: dict[str, Any]) -> list[Any]:
    """Send a command, return every message up to and including its ack (a plain message is
    answered by its echo alone)."""
    socket.send(json.dumps(command))
    received = []
    while True:
        message = socket.recv(timeout=20)
        received.append(message)
        if command["do"].startswith("plain"):
            return received
        if isinstance(message, str) and message.startswith('{"ack"'):
            return received


def marked(socket: ClientConnection, n: int, **options: Any) -> tuple[Any, dict[str, Any]]:
    *sent, ack = ask(socket, {"do": "marked", "n": n, **options})
    assert len(sent) <= 1
    return (json.loads(sent[0]) if sent else None), json.loads(ack)


def parse_events(raw: str) -> list[dict[str, Any]]:
    """Server-sent events as an EventSource reads them, with each event's unknown fields."""
    parsed = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                fields["data"] = value if "data" not in fields else fields["data"] + "\n" + value
            else:
                fields[name] = value
        if fields:
            parsed.append(fields)
    return parsed


def test_caps_apply_per_message_across_a_socket_and_unmarked_messages_pass(served: Served) -> None:
    plain = '{"personalization": "campaign=\\"x\\"", "chat": "héllo"}'
    with served.socket(person()) as socket:
        got = []
        for n in range(5):
            got.append(marked(socket, n))
            assert ask(socket, {"do": "plain", "text": plain, "n": n})[0] == plain
        raw = bytes(range(256))
        echoed = ask(socket, {"do": "plain-bytes", "bytes": base64.b64encode(raw).decode()})
        assert echoed[0] == raw
    assert [body for body, _ in got] == [
        {"offer": f"{PERSONAL}-0"}, {"offer": f"{PERSONAL}-1"}, {"offer": f"{PERSONAL}-2"},
        {"offer": EVERYONE}, {"offer": EVERYONE},
    ]  # fmt: skip
    assert [ack["reason"] for _, ack in got] == ["allowed"] * 3 + ["frequency-cap"] * 2


def test_a_refused_message_without_a_segment_version_is_dropped(served: Served) -> None:
    with served.socket(person()) as socket:
        for n in range(3):
            marked(socket, n)
        body, ack = marked(socket, 3, segment=False)
    # The policy has no fallback content and the app no provider: an empty JSON object.
    assert body == {}
    assert ack["reason"] == "frequency-cap"


def test_each_event_of_a_stream_is_decided_and_the_app_sees_each_decision(
    served: Served,
) -> None:
    with httpx.stream(
        "GET", f"{served.http}/events?count=5", headers={"x-test-user": person()}, timeout=30
    ) as response:
        raw = response.read().decode()
    events = parse_events(raw)
    offers = [e for e in events if e.get("event") == "offer"]
    assert [json.loads(e["data"])["offer"] for e in offers] == [
        f"{PERSONAL}-0", f"{PERSONAL}-1", f"{PERSONAL}-2", EVERYONE, EVERYONE,
    ]  # fmt: skip
    assert [json.loads(e["data"])["decision"].split(";")[1] for e in offers] == (
        ["reason=allowed"] * 3 + ["reason=frequency-cap"] * 2
    )
    assert [e["personalization-decision"].split(";")[0] for e in offers] == (
        ["personalized"] * 3 + ["segment"] * 2
    )
    assert [e["id"] for e in offers] == ["0", "1", "2", "3", "4"]
    assert all("personalization" not in e and "segment" not in e for e in offers)
    decided = [e["data"] for e in events if e.get("event") == "decided"]
    assert decided == ["allowed"] * 3 + ["frequency-cap"] * 2
    # Unmarked events leave as the app wrote them.
    for n in range(5):
        assert f"event: tick\ndata: {n}\n\n" in raw


@pytest.mark.parametrize("served", ["redis"], indirect=True)
def test_a_cap_holds_across_sockets_served_by_several_workers(served: Served) -> None:
    someone = person()

    def one_socket(start: int) -> list[str]:
        with served.socket(someone) as socket:
            return [marked(socket, start + n)[1]["outcome"] for n in range(3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = [o for chunk in pool.map(one_socket, range(0, 12, 3)) for o in chunk]
    assert outcomes.count("personalized") == 3
    assert outcomes.count("segment") == 9


def test_the_store_failing_mid_stream_gives_segment_versions_and_keeps_the_socket(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    server = Served(tmp_path, private_redis.url)
    try:
        with (
            server.socket(person()) as socket,
            httpx.stream(
                "GET",
                f"{server.http}/events?count=4&pause=2",
                headers={"x-test-user": person()},
                timeout=30,
            ) as response,
        ):
            lines = response.iter_lines()
            before = [marked(socket, n) for n in range(2)]
            seen: list[str] = []
            while len([line for line in seen if line.startswith("event: decided")]) < 2:
                seen.append(next(lines))
            private_redis.stop()
            after = [marked(socket, n) for n in range(2, 4)]
            assert ask(socket, {"do": "plain", "text": "still here"})[0] == "still here"
            server.go.touch()
            rest = "\n".join([*seen, *lines])
    finally:
        log = server.stop()
    assert [ack["reason"] for _, ack in before] == ["allowed", "allowed"]
    assert [body for body, _ in after] == [{"offer": EVERYONE}] * 2
    assert [ack["reason"] for _, ack in after] == ["store-unavailable"] * 2
    offers = [e for e in parse_events(rest) if e.get("event") == "offer"]
    assert [json.loads(e["data"])["offer"] for e in offers] == [
        f"{PERSONAL}-0", f"{PERSONAL}-1", EVERYONE, EVERYONE,
    ]  # fmt: skip
    assert "reason=store-unavailable" in offers[3]["personalization-decision"]
    assert "Traceback" not in log, log


# What an app might put in a marked message by mistake, or pass on from elsewhere.
junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
    max_size=2), st.binary(max_size=40).map(lambda b: {"bytes": base64.b64encode(b).decode()}),
)  # fmt: skip
markers = st.one_of(
    junk,
    st.sampled_from(['campaign="live"', 'campaign="live", segment="eu/de"', "campaign=", "=",
                     'campaign="live", signals=("health")', 'campaign="x"\r\nset-cookie: a=b']),
    st.builds(lambda c: {"Personalization": c}, st.text(max_size=30)),
)  # fmt: skip
SECRET_TEXT = '{"offer": "SECRET-for-ana-size-38"}'
SECRET_BYTES = {"bytes": base64.b64encode(b"SECRET-for-ana-size-38").decode()}
envelopes = st.fixed_dictionaries(
    {"personalization": markers},
    optional={
        "text": st.one_of(st.just(SECRET_TEXT), junk),
        "bytes": st.one_of(st.just(SECRET_BYTES), junk),
        "segment_text": st.one_of(st.just('{"offer": "everyone"}'), junk),
        "segment_bytes": junk,
        "media_type": st.one_of(st.just("application/json"), junk),
        "decision_field": st.one_of(st.just("decision"), junk),
    },
)


@pytest.mark.parametrize("served", ["memory"], indirect=True)
@pytest.mark.parametrize("signed_in", [False, True])
def test_hostile_envelopes_never_break_the_socket_nor_leak(served: Served, signed_in: bool) -> None:
    # Nobody signed in, or someone whose cap is spent: no marked message may go personalized.
    with served.socket(person() if signed_in else None) as socket:
        if signed_in:
            for n in range(3):
                marked(socket, n)
        count = iter(range(10**6))

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(envelopes)
        def hostile(envelope: dict[str, Any]) -> None:
            n = next(count)
            *sent, ack = ask(socket, {"do": "envelope", "n": n, "message": envelope})
            assert len(sent) <= 1
            for message in sent:
                assert "SECRET" not in (message if isinstance(message, str) else message.decode(
                    "latin-1"))  # fmt: skip
            assert json.loads(ack)["outcome"] in ("segment", None)
            assert ask(socket, {"do": "plain", "text": f"alive {n}"})[0] == f"alive {n}"

        hostile()
        assert next(count) >= 50  # the examples did run


@pytest.mark.parametrize("served", ["memory"], indirect=True)
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_a_browsers_event_source_reads_each_events_version_and_decision(
    served: Served, tmp_path: Path
) -> None:
    page = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path}", "--virtual-time-budget=20000",
         "--dump-dom", f"{served.http}/?as={person()}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    shown = page.split('<pre id="offers">')[1].split("</pre>")[0].splitlines()
    assert shown == [
        f"{PERSONAL}-0|reason=allowed|0",
        f"{PERSONAL}-1|reason=allowed|1",
        f"{PERSONAL}-2|reason=allowed|2",
        f"{EVERYONE}|reason=frequency-cap|3",
        f"{EVERYONE}|reason=frequency-cap|4",
    ]
