"""Store faults seen from outside (#11): errors about the server are store faults, logged once
per burst; an outage costs one connection attempt per retry_after, not a storm; a healthy
Redis under a burst is not a fault; GPC opt-outs and recent decisions hold across workers."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ManualClock
from tests.helpers import SECRET, engine, marker, policy
from tests.redis_server import RedisServer, free_port
from throttle import Engine, Reason
from throttle.audit import AuditEntry
from throttle.store import RedisStore

CAP = '[[caps]]\nname = "daily"\nper = "user"\nlimit = 1000\nwindow = "1d"\n'
FAST_FAULTS = '[store]\ntimeout = "200ms"\nretry_after = "1s"\n'


def store_warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name.startswith("throttle")]


@pytest.mark.parametrize(
    ("extra", "setup", "reply"),
    [
        # maxmemory with noeviction, as the README recommends: every write answers OOM.
        (("--maxmemory", "1", "--maxmemory-policy", "noeviction"), None, "OOM"),
        # A replica is read-only: what a failover to a replica looks like to a writer.
        ((), "replica", "READONLY"),
    ],
    ids=["oom", "readonly"],
)
async def test_an_error_about_the_server_is_a_store_fault_logged_once_per_burst(
    extra: tuple[str, ...],
    setup: str | None,
    reply: str,
    caplog: pytest.LogCaptureFixture,
    clock: ManualClock,
) -> None:
    server = RedisServer(*extra)
    server.start()
    try:
        if setup == "replica":
            # Replicating from a port nobody listens on: the server stays a read-only replica.
            client = server.client()
            client.replicaof("127.0.0.1", free_port())
            client.close()
        store = RedisStore(server.url)
        throttle = Engine(policy(CAP + FAST_FAULTS), store, secret=SECRET, clock=clock)
        with caplog.at_level(logging.WARNING, logger="throttle"):
            decisions = [await throttle.decide(marker(), person=f"p{n}") for n in range(50)]
        assert {d.reason for d in decisions} == {Reason.STORE_UNAVAILABLE}
        assert throttle.guard.failing
        lines = store_warnings(caplog.records)
        # One line for the burst, naming the reply; the rest counted, not logged.
        assert len(lines) == 1 and reply in lines[0]
        await store.aclose()
    finally:
        server.cleanup()


class CountingListener:
    """A listener on 127.0.0.1 that counts connections and closes each at once: a Redis that
    is down, seen from the client, with every attempt counted."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def down_redis() -> Iterator[CountingListener]:
    listener = CountingListener()
    yield listener
    listener.close()


async def test_an_outage_costs_one_connection_attempt_per_retry_after(
    down_redis: CountingListener, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{down_redis.port}/0")
    throttle = Engine(policy(CAP + FAST_FAULTS), store, secret=SECRET)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="throttle"):
        # Decisions and their side writes (audit entries, recent decisions) for about 2.5 s,
        # bounded in count too.
        for n in range(500):
            decision = await throttle.decide(marker(), person=f"p{n % 20}")
            assert decision.reason is Reason.STORE_UNAVAILABLE
            if time.monotonic() - started > 2.5:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    await store.aclose()
    # retry_after is 1 s: one attempt at the start, then at most one a second (side writes
    # included), whatever the number of decisions.
    assert 1 <= down_redis.accepted <= elapsed / 1.0 + 2
    lines = store_warnings(caplog.records)
    assert len(lines) <= 3, lines
    assert not any(r.exc_info for r in caplog.records)


async def test_a_burst_on_a_healthy_redis_falls_back_nowhere(redis_url: str) -> None:
    # The default timeout (50 ms), 200 decisions at once, while both cores are kept busy.
    store = RedisStore(redis_url)
    throttle = Engine(policy(CAP + '[store]\ntimeout = "50ms"\n'), store, secret=SECRET)
    await throttle.decide(marker(), person="warm-up")
    stop = threading.Event()

    def burn() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            sum(range(10_000))

    burners = [threading.Thread(target=burn, daemon=True) for _ in range(2)]
    for burner in burners:
        burner.start()
    try:
        decisions = await asyncio.gather(
            *(throttle.decide(marker(), person=f"p{n}") for n in range(200))
        )
    finally:
        stop.set()
        for burner in burners:
            burner.join()
    await store.aclose()
    assert [d.reason for d in decisions].count(Reason.STORE_UNAVAILABLE) == 0


async def test_one_late_answer_does_not_pause_the_store(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    throttle = Engine(policy(CAP + '[store]\ntimeout = "100ms"\n'), store, secret=SECRET)
    await throttle.decide(marker(), person="warm-up")
    client = private_redis.client()
    client.execute_command("CLIENT", "PAUSE", "400", "ALL")  # one slow moment
    client.close()
    late = await throttle.decide(marker(), person="ana")
    await asyncio.sleep(0.5)
    after = await throttle.decide(marker(), person="ben")
    await store.aclose()
    assert late.reason is Reason.STORE_UNAVAILABLE
    assert after.reason is Reason.ALLOWED  # not paused for retry_after by one late answer
    assert not throttle.guard.failing


async def test_a_gpc_opt_out_holds_at_once_on_every_worker_also_after_a_lift(
    redis_url: str, clock: ManualClock
) -> None:
    # Two workers: two engines, each with its own connection, on one Redis.
    inferred = marker(signals=("cart",), inferred=True)
    first, second = RedisStore(redis_url), RedisStore(redis_url)
    one, two = (engine(CAP, store, clock) for store in (first, second))
    assert (await one.decide(inferred, person="ana", gpc=True)).reason is Reason.CONSENT
    # Stored before that answer left: the other worker honours it without the header.
    assert (await two.decide(inferred, person="ana")).reason is Reason.CONSENT
    await two.opt_in("ana")
    assert (await one.decide(inferred, person="ana")).reason is Reason.ALLOWED
    # She sends the signal again on the worker that lifted it: honoured at once, everywhere.
    assert (await two.decide(inferred, person="ana", gpc=True)).reason is Reason.CONSENT
    assert (await one.decide(inferred, person="ana")).reason is Reason.CONSENT
    for store in (first, second):
        await store.aclose()


async def test_recent_decisions_are_newest_first_across_workers_within_a_second(
    redis_url: str, clock: ManualClock
) -> None:
    first, second = RedisStore(redis_url), RedisStore(redis_url)
    workers = [engine(CAP, store, clock) for store in (first, second)]
    campaigns = [f"campaign-{n}" for n in range(6)]
    for n, campaign in enumerate(campaigns):
        clock.advance(0.001)  # a millisecond apart, alternating workers
        await workers[n % 2].decide(marker(campaign), person="ana")
    recent = [AuditEntry.unpack(e) for e in await second.recent(workers[0].pseudonym("ana"))]
    assert [e.campaign for e in recent] == campaigns[::-1]
    assert [e.time_ms for e in recent] == sorted((e.time_ms for e in recent), reverse=True)
    for store in (first, second):
        await store.aclose()


async def test_the_audit_trail_expires_when_decisions_stop(
    redis_url: str, redis_server: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(redis_url)
    throttle = engine(CAP + '[audit]\nmax_age = "2d"\n', store, clock)
    await throttle.decide(marker(), person="ana")
    await throttle.decide(marker(), person=None)
    await store.aclose()
    client = redis_server.client()
    ttls = {key: client.pttl(key) for key in client.keys("*")}
    client.close()
    # Every key throttle wrote goes by itself: the trail, records, audiences, pieces.
    assert ttls and all(ttl > 0 for ttl in ttls.values()), ttls
    assert 0 < ttls[b"throttle:audit"] <= 2 * 86_400_000


async def test_one_late_batch_of_many_decisions_pauses_nobody(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    throttle = Engine(
        policy(CAP + '[store]\ntimeout = "100ms"\nretry_after = "5s"\n'), store, secret=SECRET
    )
    await throttle.decide(marker(), person="warm-up")
    client = private_redis.client()
    client.execute_command("CLIENT", "PAUSE", "400", "ALL")
    client.close()
    late = await asyncio.gather(*(throttle.decide(marker(), person=f"p{n}") for n in range(5)))
    await asyncio.sleep(0.5)
    after = await throttle.decide(marker(), person="ben")
    await store.aclose()
    assert {d.reason for d in late} == {Reason.STORE_UNAVAILABLE}
    assert after.reason is Reason.ALLOWED  # one late batch is one late answer, not five


async def test_recent_decisions_come_back_after_redis_lost_its_data(
    redis_url: str, redis_server: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(redis_url)
    throttle = engine(CAP, store, clock)
    await throttle.decide(marker(), person="ana")
    client = redis_server.client()
    client.flushall()  # a restart without persistence, or an operator's FLUSHALL
    client.close()
    for _ in range(3):
        await throttle.decide(marker(), person="ana")
    # The piece the three share was lost with the rest; the store that knows it mends it.
    assert len(await store.recent(throttle.pseudonym("ana"))) == 3
    await store._write_pending_now()
    fingerprint = throttle._snapshot.plan(marker()).recent.fingerprint  # type: ignore[union-attr]
    assert await store._client.exists(store.piece_key(fingerprint)) == 1
    await store.aclose()


async def test_a_corrupt_record_is_a_503_never_a_500(
    redis_url: str, redis_server: RedisServer
) -> None:
    import httpx

    from tests.apps import storefront

    store = RedisStore(redis_url)
    app = storefront(policy=policy(CAP), store=store, secret=SECRET)
    pseudonym = Engine(policy(CAP), store, secret=SECRET).pseudonym("ana")
    client = redis_server.client()
    client.set(store.person_key(pseudonym), b"\xc1 not msgpack")
    client.close()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        for path in ("/privacy/data", "/privacy/why"):
            response = await http.get(path, headers={"x-test-user": "ana"})
            assert response.status_code == 503, path
    await store.aclose()
