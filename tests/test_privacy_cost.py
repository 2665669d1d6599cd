"""What the privacy routes cost (#11.9): one person's data, never the whole trail; a person who
loops on them is rate-limited, and the rest of the traffic does not notice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.apps import storefront
from tests.helpers import SECRET, policy
from tests.redis_server import RedisServer
from throttle.store import RedisStore

POLICY = policy('[[caps]]\nname = "daily"\nper = "user"\nlimit = 1000\nwindow = "1d"\n')
SCANNING = ("xrange", "xrevrange", "xread", "xdel", "scan", "keys", "lrange")


def person(n: int) -> dict[str, str]:
    return {"x-test-user": f"person-{n}@example.com"}


@pytest.fixture
async def shop(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, RedisStore]]:
    store = RedisStore(redis_url)
    app = storefront(policy=POLICY, store=store, secret=SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        yield http, store
    await store.aclose()


def calls(server: RedisServer) -> dict[str, int]:
    client = server.client()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def test_a_persons_routes_read_their_record_never_the_trail(
    shop: tuple[httpx.AsyncClient, RedisStore], redis_server: RedisServer
) -> None:
    http, _ = shop
    # A trail of a few thousand decisions of other people, and a few of ana's.
    for n in range(3000):
        await http.get("/offer", headers=person(n % 300))
    for _ in range(3):
        await http.get("/offer", headers=person(-1))
    before = calls(redis_server)
    for method in ("GET", "DELETE"):
        for path in ("/privacy/why", "/privacy/data"):
            assert (await http.request(method, path, headers=person(-1))).status_code in (200, 405)
    after = calls(redis_server)
    ran = {name: after[name] - before.get(name, 0) for name in after}
    assert not {name for name in SCANNING if ran.get(name)}, ran
    # A handful of commands, however long the trail is.
    assert sum(ran.values()) - ran.get("info", 0) - ran.get("commandstats", 0) < 20, ran


async def test_a_person_looping_on_the_routes_is_told_to_wait(
    shop: tuple[httpx.AsyncClient, RedisStore],
) -> None:
    http, _ = shop
    answers = [(await http.get("/privacy/level", headers=person(1))).status_code for _ in range(70)]
    assert answers[:60] == [200] * 60
    assert set(answers[60:]) == {429}
    limited = await http.get("/privacy/data", headers=person(1))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # Someone else is not affected.
    assert (await http.get("/privacy/level", headers=person(2))).status_code == 200


async def test_four_people_looping_on_the_routes_do_not_move_everyone_elses_decisions(
    shop: tuple[httpx.AsyncClient, RedisStore],
) -> None:
    http, _ = shop
    for n in range(4):  # each of the four with a trail of their own
        for _ in range(5):
            await http.get("/offer", headers=person(1000 + n))
    stop = asyncio.Event()

    async def loop_on_routes(n: int) -> int:
        done = 0
        while not stop.is_set() and done < 400:  # bounded in count
            for path in ("/privacy/data", "/privacy/why"):
                await http.get(path, headers=person(1000 + n))
                done += 1
        return done

    looping = [asyncio.create_task(loop_on_routes(n)) for n in range(4)]
    decisions = []
    for n in range(400):
        response = await http.get("/offer", headers=person(n))
        decisions.append(response.headers["personalization-decision"])
    stop.set()
    await asyncio.gather(*looping)
    fell_back = sum("store-unavailable" in d for d in decisions)
    assert fell_back / len(decisions) < 0.01
