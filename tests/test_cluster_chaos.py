"""Decisions under load while the cluster loses a master or moves slots: nothing raises, only
the people on the affected node fall back, and nobody else gets past a cap. Each run is bounded
in decisions and in time; the figures printed are the ones docs/cluster.md reports."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from tests.apps import storefront
from tests.chaos import Tally, load
from tests.helpers import NO_REPETITION, SECRET, marker, policy
from tests.redis_cluster import RedisClusterServers
from tests.servers import serving
from throttle import Engine, MemoryStore
from throttle.store import ClusterStore
from throttle.store.cluster import key_slot

CAP = 3
# A killed node's connections break at once, so the timeout only guards against a busy test
# machine; a short retry tries the lost node's slots again well within the cluster's failover.
CAPPED = policy(
    f'[[caps]]\nname = "hourly"\nper = "user"\nlimit = {CAP}\nwindow = "1h"\n'
    '[store]\ntimeout = "2s"\nretry_after = "200ms"\n' + NO_REPETITION
)
# Few enough that many people reach the cap during a run, so getting past it would show.
PEOPLE = 300
WORKERS = 32
# Every run stops by itself: enough decisions, or this long at most (a bound for safety: the
# runs end by counts, even on a slow machine).
MAX_DECISIONS = 60_000
MAX_SECONDS = 120.0


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of this test's own: it kills a master or moves slots."""
    cluster = RedisClusterServers()
    cluster.start()
    yield cluster
    cluster.cleanup()


def slots_of_people(count: int) -> dict[str, int]:
    """Each test person's slot, as the store keys them."""
    pseudonyms = Engine(CAPPED, MemoryStore(), secret=SECRET)
    return {
        f"person-{n}": key_slot(f"throttle:{{{pseudonyms.pseudonym(f'person-{n}')}}}".encode())
        for n in range(count)
    }


async def until(condition: Callable[[], bool], stop: asyncio.Event) -> None:
    """Wait until `condition()` holds, or the load has stopped (it is bounded)."""
    # Polled: the condition reads what many workers change.
    while not condition() and not stop.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.fixture
async def served(private_cluster: RedisClusterServers) -> AsyncIterator[str]:
    """The storefront behind uvicorn, its store the private cluster."""
    store = ClusterStore(private_cluster.url)
    app = storefront(policy=CAPPED, store=store, secret=SECRET)
    async with serving(app) as url:
        yield url
    await store.aclose()


async def test_a_killed_master_fails_over_under_load_behind_uvicorn(
    served: str, private_cluster: RedisClusterServers
) -> None:
    tally = Tally(cap=CAP)
    stop = asyncio.Event()
    slots = slots_of_people(PEOPLE)
    # A new connection for each request: a kept-alive one that uvicorn closes as it idles out
    # fails the next request sent on it (RemoteProtocolError), a client's race, not the app's.
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=served, limits=limits, timeout=30) as http:

        async def decide(person: str) -> tuple[str, str]:
            response = await http.get("/offer", headers={"x-test-user": person})
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            outcome, _, reason = response.headers["personalization-decision"].partition(";")
            return outcome, reason.split(";")[0].removeprefix("reason=")

        victim = private_cluster.masters()[0]
        lost = private_cluster.slots_of(victim)
        on_victim = {person for person, slot in slots.items() if slot in lost}
        marks: dict[str, float] = {}

        async def chaos() -> None:
            await until(lambda: tally.decisions >= 300, stop)
            marks["killed"] = time.monotonic()
            private_cluster.kill(victim)
            await asyncio.to_thread(private_cluster.wait_until_replaced, victim)
            marks["replaced"] = time.monotonic()
            # Then until the store serves the lost node's people from the promoted replica,
            # and some more.
            await until(lambda: tally.decided_since(marks["replaced"], on_victim), stop)
            if tally.decided_since(marks["replaced"], on_victim):
                marks["resumed"] = time.monotonic()
            after = tally.decisions
            await until(lambda: tally.decisions >= after + 300, stop)
            stop.set()

        await asyncio.gather(
            load(
                decide, tally, people=PEOPLE, workers=WORKERS, stop=stop,
                max_decisions=MAX_DECISIONS, max_seconds=MAX_SECONDS,
            ),
            chaos(),
        )  # fmt: skip
    print(
        "\n" + tally.summary("failover behind uvicorn"),
        f"; replica promoted {marks['replaced'] - marks['killed']:.2f} s after the kill,"
        f" decisions resumed {marks.get('resumed', math.nan) - marks['killed']:.2f} s after it"
        f"; over the cap on the lost node's people: {tally.over_cap(on_victim)}",
    )
    assert tally.failures == 0, tally.failure_kinds
    assert tally.fell_back > 0  # the kill was felt ...
    assert tally.fell_back_people <= on_victim  # ... by the lost node's people only
    assert tally.over_cap(set(slots) - on_victim) == (0, 0)
    # Decisions resumed on the promoted replica, and the last ones did not fall back.
    assert "resumed" in marks
    assert all(reason != "store-unavailable" for _, _, reason in tally.log[-100:])


async def test_resharding_under_load_is_followed_without_falling_back(
    private_cluster: RedisClusterServers,
) -> None:
    store = ClusterStore(private_cluster.url)
    engine = Engine(CAPPED, store, secret=SECRET)
    tally = Tally(cap=CAP)
    stop = asyncio.Event()

    async def decide(person: str) -> tuple[str, str]:
        decision = await engine.decide(marker(), person=person)
        return decision.outcome, decision.reason.value

    source, target = private_cluster.masters()[:2]

    async def chaos() -> None:
        await until(lambda: tally.decisions >= 500, stop)
        started = time.monotonic()
        await asyncio.to_thread(private_cluster.reshard, source, target, 300)
        print(f"\nresharded 300 slots in {time.monotonic() - started:.2f} s", end="")
        after = tally.decisions
        await until(lambda: tally.decisions >= after + 500, stop)
        stop.set()

    try:
        await asyncio.gather(
            load(
                decide, tally, people=PEOPLE, workers=WORKERS, stop=stop,
                max_decisions=MAX_DECISIONS, max_seconds=MAX_SECONDS,
            ),
            chaos(),
        )  # fmt: skip
        redirections = dict(store._cluster.redirections)
    finally:
        await store.aclose()
    print("; " + tally.summary("resharding"), f"; redirections {redirections}")
    assert tally.failures == 0, tally.failure_kinds
    assert redirections.get("MOVED", 0) + redirections.get("ASK", 0) > 0  # it was felt
    assert tally.over_cap() == (0, 0)
    # A person whose keys are mid-migration waits (TRYAGAIN) rather than falling back, unless
    # the migration outlasts the retries: then that person alone falls back.
    assert tally.fell_back <= redirections.get("TRYAGAIN", 0)


async def test_a_master_without_its_replica_fails_only_its_people_in_the_stricter_mode(
    private_cluster: RedisClusterServers,
) -> None:
    """`[store] replicas = 1`: each master's WAIT decides for the decisions written to it, so
    a master that lost its replica refuses its own people's decisions, batch after batch, while
    the people on the other masters are personalized in those same batches; once the replica
    is back, so are the master's people."""
    stricter = policy(
        NO_REPETITION + '[store]\ntimeout = "2s"\nreplicas = 1\nretry_after = "200ms"\n'
    )
    store = ClusterStore(private_cluster.url)
    engine = Engine(stricter, store, secret=SECRET)
    batches: list[int] = []
    store.on_batch = lambda size, seconds: batches.append(size)
    masters = private_cluster.masters()
    slots = slots_of_people(200)
    by_master = [
        [person for person, slot in slots.items() if slot in private_cluster.slots_of(master)][:3]
        for master in masters
    ]
    bereft, others = set(by_master[0]), {p for people in by_master[1:] for p in people}

    async def decide_all() -> dict[str, tuple[str, str]]:
        people = sorted(bereft | others)
        decided = await asyncio.gather(*(engine.decide(marker(), person=p) for p in people))
        return {p: (d.outcome, d.reason.value) for p, d in zip(people, decided, strict=True)}

    try:
        assert set((await decide_all()).values()) == {("personalized", "allowed")}
        replica = private_cluster.replica_of(masters[0])
        private_cluster.kill(replica)
        for _ in range(2):  # batch after batch: no pause for everyone
            batches.clear()
            decided = await decide_all()
            assert batches == [len(bereft | others)]  # all of them in one batch
            assert {decided[p] for p in others} == {("personalized", "allowed")}
            assert {decided[p] for p in bereft} == {("segment", "store-unavailable")}
        assert not engine.guard.failing
        await asyncio.to_thread(replica.start)  # it rejoins, syncs, and acknowledges again
        for _ in range(1000):  # bounded: the master is asked again every retry_after
            decided = await decide_all()
            assert {decided[p] for p in others} == {("personalized", "allowed")}
            if {decided[p] for p in bereft} == {("personalized", "allowed")}:
                break
            await asyncio.sleep(0.05)
        assert {decided[p] for p in bereft} == {("personalized", "allowed")}
    finally:
        await store.aclose()
