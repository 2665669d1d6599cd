from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.redis_cluster import RedisClusterServers
from tests.redis_sentinel import SentinelSet
from tests.redis_server import RedisServer
from throttle.store import ClusterStore, MemoryStore, RedisStore, Store


class ManualClock:
    """Wall-clock time the test sets, so windows pass without sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 masters with 1 replica each, started once for the session."""
    cluster = RedisClusterServers()
    cluster.start()
    yield cluster
    cluster.cleanup()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def sentinel_set() -> Iterator[SentinelSet]:
    """One master, one replica and three sentinels, shared by the tests that do not fail it
    over."""
    sentinels = SentinelSet()
    sentinels.start()
    yield sentinels
    sentinels.cleanup()


@pytest.fixture
def sentinel_url(sentinel_set: SentinelSet) -> str:
    sentinel_set.flush()
    return sentinel_set.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop, restart or break it."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each behaviour test runs on the embedded store, on a real redis-server, on a real Redis
    Cluster and on a real Sentinel set (the master found through the sentinels)."""
    if request.param == "memory":
        opened: Store = MemoryStore()
    elif request.param == "redis":
        opened = RedisStore(request.getfixturevalue("redis_url"))
    elif request.param == "cluster":
        opened = ClusterStore(request.getfixturevalue("redis_cluster_url"))
    else:
        opened = RedisStore(request.getfixturevalue("sentinel_url"))
    yield opened
    await opened.aclose()
