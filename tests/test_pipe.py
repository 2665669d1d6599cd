"""The decision connection speaks to Redis as the URL says: password, database, unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ManualClock
from tests.helpers import engine, marker
from tests.redis_server import RedisServer
from throttle import Reason
from throttle.store import RedisStore

HOURLY = '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 1\nwindow = "1h"\n'


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        "--requirepass", "s3cret-pass", "--unixsocket", str(tmp_path / "redis.sock")
    )
    server.start()
    yield server
    server.cleanup()


async def decide_twice(url: str, clock: ManualClock) -> list[str]:
    store = RedisStore(url)
    throttle = engine(HOURLY, store, clock)
    try:
        return [(await throttle.decide(marker(), person="ana")).outcome for _ in range(2)]
    finally:
        await store.aclose()


async def test_password_and_database_from_the_url(
    guarded_redis: RedisServer, clock: ManualClock
) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{guarded_redis.port}/5"
    assert await decide_twice(url, clock) == ["personalized", "segment"]
    client = guarded_redis.client(db=5)
    assert len(client.keys("throttle:{*}")) == 1
    client.close()


async def test_username_and_password_from_the_url(
    guarded_redis: RedisServer, clock: ManualClock
) -> None:
    url = f"redis://default:s3cret-pass@127.0.0.1:{guarded_redis.port}/0"
    assert await decide_twice(url, clock) == ["personalized", "segment"]


async def test_a_unix_socket(
    guarded_redis: RedisServer, clock: ManualClock, tmp_path: Path
) -> None:
    url = f"unix://:s3cret-pass@{tmp_path / 'redis.sock'}?db=2"
    assert await decide_twice(url, clock) == ["personalized", "segment"]


async def test_a_wrong_password_is_a_store_failure_not_a_crash(
    guarded_redis: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(f"redis://:wrong@127.0.0.1:{guarded_redis.port}/0")
    throttle = engine(HOURLY, store, clock)
    decision = await throttle.decide(marker(), person="ana")
    assert (decision.outcome, decision.reason) == ("segment", Reason.STORE_UNAVAILABLE)
    await store.aclose()
