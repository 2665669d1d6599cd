"""Log lines as JSON (throttle.logs.JsonFormatter), from a real fault: each line parses, names its
logger and carries its facts as fields, and no line holds a raw id or a pseudonym."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps import storefront
from tests.conftest import ManualClock
from tests.helpers import NO_REPETITION, SECRET, marker, policy
from tests.redis_server import RedisServer
from throttle import Engine, Reason
from throttle.logs import JsonFormatter
from throttle.observe import Observation
from throttle.store import RedisStore

PERSON = "ana.lopez@example.com"


class JsonLines:
    """What throttle's loggers wrote, through the JSON formatter, one object per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def logged() -> Iterator[JsonLines]:
    lines = JsonLines()
    logger = logging.getLogger("throttle")
    logger.addHandler(lines.handler)
    level, logger.level = logger.level, logging.WARNING
    yield lines
    logger.removeHandler(lines.handler)
    logger.setLevel(level)


@pytest.mark.redis_only
async def test_a_store_fault_and_its_recovery_as_json_lines(
    logged: JsonLines, clock: ManualClock
) -> None:
    # maxmemory with noeviction: every write answers OOM, the store is unavailable.
    server = RedisServer("--maxmemory", "1", "--maxmemory-policy", "noeviction")
    server.start()
    engine = Engine(policy(NO_REPETITION), RedisStore(server.url), secret=SECRET, monotonic=clock)
    try:
        for _ in range(3):
            decision = await engine.decide(marker(), person=PERSON)
            assert decision.reason == Reason.STORE_UNAVAILABLE
        client = server.client()
        client.config_set("maxmemory", 0)
        client.close()
        clock.advance(engine.policy.store.retry_after)
        assert (await engine.decide(marker(), person=PERSON)).reason == Reason.ALLOWED
    finally:
        await engine.aclose()
        server.cleanup()

    lines = logged.lines()
    fault, recovery = (line for line in lines if line["logger"] == "throttle.faults")
    assert fault["level"] == "WARNING"
    assert fault["message"].startswith("throttle: store unavailable")
    assert "OOM" in fault["why"]
    assert fault["retry_after"] == 1.0
    assert recovery["message"].startswith("throttle: store answers again")
    assert recovery["fell_back"] >= 3  # the side writes that failed too
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert line["time"].endswith("Z")
    assert PERSON not in logged.text
    assert engine.pseudonym(PERSON) not in logged.text


async def test_middleware_and_reload_lines_carry_their_facts(
    logged: JsonLines, tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nname = "shop"\n')
    app = storefront(policy=str(path), secret=SECRET, reload_interval=0.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        await http.get("/offer", params={"marker": 'campaign="x", channel=1'},
                       headers={"x-test-user": PERSON})  # fmt: skip
        path.write_text('[policy]\nname = "shop"\n[creepiness]\nthreshold = "high"\n')
        await http.get("/offer", headers={"x-test-user": PERSON})
        path.write_text('[policy]\nname = "shop"\n[creepiness]\nthreshold = 0.5\n')
        await http.get("/offer", headers={"x-test-user": PERSON})

    by_logger: dict[str, list[dict[str, Any]]] = {}
    for line in logged.lines():
        by_logger.setdefault(line["logger"], []).append(line)
    (marker_line,) = by_logger["throttle.middleware"]
    assert marker_line["about"] == "marker"
    assert "channel" in marker_line["error"]
    refused, applied = by_logger["throttle.reload"]
    assert refused["level"] == "ERROR" and "threshold" in refused["why"]
    assert refused["version"] != applied["version"]
    assert applied["policy"] == "shop" and applied["previous_version"] == refused["version"]
    assert PERSON not in logged.text


async def test_an_exception_and_fields_json_cannot_hold_are_still_one_line(
    logged: JsonLines,
) -> None:
    engine = Engine(policy(), RedisStore("redis://127.0.0.1:1/0"), secret=SECRET)

    def broken(observation: Observation) -> None:
        raise RuntimeError("an observer's own bug")

    engine.observe(broken)
    engine.invalid_marker(PERSON)
    logging.getLogger("throttle.tests").warning("odd facts", extra={"path": Path("/x"), "n": 1})
    await engine.aclose()
    observer, odd = logged.lines()
    assert observer["about"] == "observer"
    assert "RuntimeError: an observer's own bug" in observer["exception"]
    assert odd["path"] == "/x" and odd["n"] == 1
    assert PERSON not in logged.text
