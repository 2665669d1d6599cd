"""The dashboard's routes in process: the page, its figures as JSON and as server-sent events,
and what they say when they are mounted wrong or the state cannot be read."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Mount, Route

from tests.apps import HeaderUser, offer
from tests.conftest import ManualClock
from tests.helpers import SECRET, marker, policy
from tests.redis_server import RedisServer
from tests.servers import serving
from throttle import Engine, MemoryStore, OpsConfig, OpsState, ThrottleMiddleware, dashboard_routes
from throttle.dashboard import _Day

SHOP = policy(
    '[[caps]]\nname = "two"\nper = "user"\nlimit = 2\nwindow = "1h"\n'
    "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
    '[fallback.content."spring-sale"]\nbody = "{}"\n',
    name="shop",
)


def shop(
    store: str = "memory://", *, ops: bool | OpsConfig = True, interval: float = 2.0
) -> Starlette:
    return Starlette(
        routes=[Route("/offer", offer), Mount("/ops", routes=dashboard_routes(interval=interval))],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderUser()),
            Middleware(ThrottleMiddleware, policy=SHOP, store=store, secret=SECRET, ops=ops),
        ],
    )


@asynccontextmanager
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app in process; the middleware's ops state and store closed after."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
        yield http
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, ThrottleMiddleware):
        layer = getattr(layer, "app", None)
    if layer is not None and layer.refusal is None:
        if layer.ops is not None:
            await layer.ops.aclose()
        await layer.engine.aclose()


async def test_the_page_is_one_self_contained_document() -> None:
    async with client(shop()) as http:
        page = await http.get("/ops/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce is not None
    assert f'<script nonce="{nonce[1]}">' in page.text
    assert f'<style nonce="{nonce[1]}">' in page.text
    # Nothing is loaded from anywhere else: no CDN, works offline.
    assert re.findall(r'(?:src|href)="(?!data:)[^"]*"', page.text) == []
    assert "{{" not in page.text
    async with client(shop()) as http:
        head = await http.head("/ops/events")
    assert head.status_code == 200 and head.content == b""


async def test_the_figures_are_what_was_decided() -> None:
    app = shop()
    async with client(app) as http:
        for person in ("ana", "ben"):
            for _ in range(3):
                await http.get(
                    "/offer", params={"segment": "eu/de"}, headers={"x-test-user": person}
                )
        await http.get("/offer", params={"segment": "us", "campaign": "autumn"})
        seen = (await http.get("/ops/data.json")).json()
    hour, day = seen["hour"], seen["day"]
    assert hour["totals"]["decisions"] == 7 == day["totals"]["decisions"]
    assert hour["totals"]["outcomes"] == {"personalized": 4, "segment": 3}
    assert hour["totals"]["fallbacks"] == 3
    assert hour["totals"]["rules"] == [["two", 2], ["consent.anonymous", 1]]
    assert hour["totals"]["campaigns"] == [["spring-sale", 2, 6], ["other", 1, 1]]
    assert hour["totals"]["segments"] == [["eu", 2, 6], ["us", 1, 1]]
    assert len(hour["starts"]) == 60 and hour["step"] == 60
    assert sum(hour["personalized"]) == 4 and sum(hour["segment"]) == 3
    assert day["step"] == 900 and len(day["starts"]) in (96, 97)
    assert sum(day["personalized"]) == 4 and sum(day["segment"]) == 3
    assert seen["policy"]["name"] == "shop" and seen["shared"] is False
    (worker,) = seen["workers"]
    assert not worker["store_failing"]
    assert [r["previous"] for r in seen["reloads"]] == [""]


async def test_routes_mounted_without_the_ops_state_say_what_they_need() -> None:
    bare = Starlette(routes=[Mount("/ops", routes=dashboard_routes())])
    for app in (shop(ops=False), bare):
        async with client(app) as http:
            for path in ("/ops/", "/ops/data.json", "/ops/events"):
                answer = await http.get(path)
                assert answer.status_code == 500
                assert "ops=True" in answer.json()["error"]
    with pytest.raises(ValueError, match="interval"):
        dashboard_routes(interval=0)


async def test_an_unreachable_state_is_reported_not_a_traceback(
    private_redis: RedisServer,
) -> None:
    app = shop(private_redis.url)
    async with client(app) as http:
        await http.get("/offer", headers={"x-test-user": "ana"})
        private_redis.stop()
        page = await http.get("/ops/")
        data = await http.get("/ops/data.json")
    assert page.status_code == 200
    assert data.status_code == 503
    assert data.json() == {"error": "the ops state cannot be read right now (ConnectionError)"}


@pytest.fixture
async def served() -> AsyncIterator[str]:
    app = shop(interval=0.05)
    async with serving(app) as url:
        yield url


async def test_events_bring_new_decisions(served: str) -> None:
    async with (
        httpx.AsyncClient(base_url=served, timeout=10) as http,
        http.stream("GET", "/ops/events") as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.aiter_lines()
        assert await anext(lines) == "retry: 50"
        first = await _event(lines)
        assert first["hour"]["totals"]["decisions"] == 0
        await http.get("/offer", headers={"x-test-user": "ana"})
        for _ in range(1000):  # bounded: the stream sends one event each 0.05 s
            seen = await _event(lines)
            if seen["hour"]["totals"]["decisions"] == 1:
                break
        assert seen["hour"]["totals"]["outcomes"] == {"personalized": 1}


async def _event(lines: AsyncIterator[str]) -> dict[str, object]:
    while not (line := await anext(lines)).startswith("data: "):
        pass
    seen: dict[str, object] = json.loads(line.removeprefix("data: "))
    return seen


async def test_the_day_read_by_its_last_hour_is_the_day_read_whole(clock: ManualClock) -> None:
    engine = Engine(SHOP, MemoryStore(), secret=SECRET, clock=clock)
    ops = OpsState(engine, clock=clock)
    day = _Day()
    try:
        await engine.decide(marker(), person="ana")
        assert sum(m.decisions for m in await day.minutes(ops)) == 1  # read whole
        for _ in range(3):
            clock.advance(50 * 60)  # each time, what was the last hour is older than an hour
            await engine.decide(marker(), person="ana")
            spliced = await day.minutes(ops)  # the last hour only, within a minute of the first
            whole = await ops.minutes(clock() - 1439 * 60, clock())
            assert spliced == whole and len(whole) == 1440
        assert sum(m.decisions for m in spliced) == 4
    finally:
        await ops.aclose()
