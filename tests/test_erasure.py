"""Erasure on a store shared by several workers: a decision made before an erasure, written
afterwards by whichever worker made it, never brings the person back; the tombstone that sees
to it holds only the erasure's time and goes by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import SECRET, trail
from throttle import Engine, Marker, Reason, load_policy
from throttle.store import RedisStore, open_store
from throttle.store.redis import TOMBSTONE_MS

POLICY = load_policy(Path(__file__).resolve().parent.parent / "policies" / "default.toml")
# A price set by profiling is refused before the store is asked (GDPR Art. 22): the decision
# is written into the person's recent decisions on the side, a little later.
PRICE = Marker(campaign="sale", decides="price")


@pytest.fixture(params=["redis", "cluster", "sentinel"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """A shared store's URL: one Redis, a Redis Cluster, a Sentinel set."""
    fixture = {"redis": "redis_url", "cluster": "redis_cluster_url", "sentinel": "sentinel_url"}
    url: str = request.getfixturevalue(fixture[request.param])
    return url


@pytest.fixture
async def workers(shared_url: str) -> AsyncIterator[tuple[Engine, Engine]]:
    """Two workers on one shared store, each with its own connections and side writes."""
    engines = tuple(Engine(POLICY, open_store(shared_url), secret=SECRET) for _ in range(2))
    yield engines  # type: ignore[misc]
    for engine in engines:
        await engine.aclose()


def redis_of(engine: Engine) -> RedisStore:
    assert isinstance(engine.store, RedisStore)
    return engine.store


async def test_an_erasure_is_not_undone_by_another_workers_waiting_write(
    shared_url: str,
) -> None:
    erasing = Engine(POLICY, open_store(shared_url), secret=SECRET)
    # The other worker's decision is made a second before the erasure, and its write, waiting
    # there, reaches Redis after it (as a 50 ms linger, an outage or a retry make it do).
    deciding = Engine(POLICY, open_store(shared_url), secret=SECRET, clock=lambda: time.time() - 1)
    pseudonym = deciding.pseudonym("ana")
    store = redis_of(deciding)
    try:
        await erasing.decide(Marker(campaign="sale"), person="ana")
        assert (await erasing.erase("ana")).state
        refused = await deciding.decide(PRICE, person="ana")
        assert refused.reason is Reason.AUTOMATED_DECISION  # made without the store
        # A read by the deciding worker writes what waits there first, as its next write would.
        assert await store.token_of(pseudonym) == ""
        assert not await store.client.exists(store.person_key(pseudonym))
        assert await store.recent(pseudonym) == []
        # The decision is in the trail, naming nobody.
        entries = await trail(store)
        assert [entry.person for entry in entries if entry.reason == "automated-decision"] == [""]
    finally:
        await erasing.aclose()
        await deciding.aclose()


async def test_a_decision_made_after_an_erasure_is_kept_as_someone_new(shared_url: str) -> None:
    erasing = Engine(POLICY, open_store(shared_url), secret=SECRET)
    # A worker whose decisions are a second later than the erasure (it comes first here).
    later = Engine(POLICY, open_store(shared_url), secret=SECRET, clock=lambda: time.time() + 1)
    try:
        await erasing.decide(PRICE, person="ana")
        before = await erasing.store.token_of(erasing.pseudonym("ana"))
        assert before != ""
        await erasing.erase("ana")
        await later.decide(PRICE, person="ana")
        after = await later.store.token_of(later.pseudonym("ana"))
        assert after not in ("", before)
        assert len(await later.store.recent(later.pseudonym("ana"))) == 1
    finally:
        await erasing.aclose()
        await later.aclose()


async def test_an_erasure_leaves_only_a_tombstone_holding_its_time(
    workers: tuple[Engine, Engine],
) -> None:
    engine = workers[0]
    store = redis_of(engine)
    pseudonym = engine.pseudonym("ana")
    await engine.decide(Marker(campaign="sale"), person="ana")
    await engine.set_level("ana", "full")
    before = time.time() * 1000
    assert (await engine.erase("ana")).state
    after = time.time() * 1000
    client = store.client
    left = [key async for key in client.scan_iter(match=f"*{pseudonym}*")]
    assert left == [store.tombstone_key(pseudonym).encode()]
    erased_at = await client.get(left[0])
    assert erased_at.isdigit() and before - 1 <= int(erased_at) <= after + 1
    assert 0 < await client.pttl(left[0]) <= TOMBSTONE_MS
    # A tombstone is not held data: a second erasure finds nothing, and renews it.
    assert await engine.erase("ana") == (False, 0)
    assert await client.exists(left[0])


async def test_a_tombstone_expires_by_itself(workers: tuple[Engine, Engine]) -> None:
    engine = workers[0]
    store = redis_of(engine)
    store.tombstone_ms = 100
    await engine.decide(Marker(campaign="sale"), person="ana")
    await engine.erase("ana")
    tombstone = store.tombstone_key(engine.pseudonym("ana"))
    assert 0 < await store.client.pttl(tombstone) <= 100
    await asyncio.sleep(0.2)
    assert not await store.client.exists(tombstone)


async def test_a_decision_that_waited_longer_than_a_tombstone_lives_links_to_nobody(
    workers: tuple[Engine, Engine],
) -> None:
    # Side writes wait at most half a tombstone's life (an outage can last longer): past that
    # an erasure may no longer be known, so the decision goes to the trail alone.
    engine = workers[0]
    store = redis_of(engine)
    store.tombstone_ms = 10
    await engine.decide(PRICE, person="ana")
    await asyncio.sleep(0.02)
    pseudonym = engine.pseudonym("ana")
    assert await store.token_of(pseudonym) == ""
    assert not await store.client.exists(store.person_key(pseudonym))
    assert [entry.person for entry in await trail(store)] == [""]
