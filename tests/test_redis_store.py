"""What only a real redis-server can show: key layout, round trips, faults, several workers."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import msgpack
import pytest

from tests.apps import storefront
from tests.conftest import ManualClock
from tests.helpers import NO_REPETITION, SECRET, engine, marker, policy
from tests.redis_server import RedisServer
from tests.workers import decide_concurrently
from throttle import Engine, Reason
from throttle.store import RedisStore

CAPS = (
    '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
    '[[caps]]\nname = "email"\nper = "channel"\nlimit = 2\nwindow = "1h"\n'
    '[creepiness]\nbudget = { limit = 2.0, window = "24h" }\n'
    '[creepiness.signals]\n"cart" = 0.1\n'
)


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url)
    yield store
    await store.aclose()


async def test_a_persons_state_is_one_hash_tagged_msgpack_key(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    throttle = engine(CAPS + "[audit]\nenabled = false\n", redis_store, clock)
    for channel in ("web", "email"):
        await throttle.decide(marker(signals=("cart",), channel=channel), person="ana")
    client = redis_server.client()
    person_keys = [k for k in client.keys("*") if b"audience" not in k]
    assert len(person_keys) == 1
    assert re.fullmatch(rb"throttle:\{[0-9a-f]{32}\}", person_keys[0])
    stored = msgpack.unpackb(client.get(person_keys[0]), raw=False)
    now_ms = int(clock.now * 1000)
    # An array, shortened where its last fields are empty: the base (whole seconds, the
    # record's first write), the counters as ms after it, the budget flat: time, score, ...
    base, counters, budget = stored
    assert base * 1000 == now_ms - now_ms % 1000
    assert counters["u"] == [now_ms % 1000] * 2
    assert budget == [now_ms % 1000, 100, now_ms % 1000, 200]
    state = await redis_store.state(person_keys[0].decode()[len("throttle:{") : -1])
    assert state is not None
    assert state["c"]["u"] == [now_ms, now_ms]
    assert state["c"]["c:web"] == [now_ms] and state["c"]["c:email"] == [now_ms]
    assert state["b"] == [[now_ms, 100], [now_ms, 200]]  # the second repeats the campaign
    assert 0 < client.pttl(person_keys[0]) <= 24 * 3600 * 1000
    client.close()


async def test_raw_user_ids_never_reach_redis(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    raw_id = "ana.garcia@example.com"
    throttle = engine(CAPS, redis_store, clock)
    for _ in range(5):
        await throttle.decide(marker(signals=("cart",), segment="eu/de"), person=raw_id)
    client = redis_server.client()
    keys = client.keys("*")
    assert keys
    for key in keys:
        dumped = client.dump(key) or b""
        for needle in (raw_id.encode(), b"ana.garcia", b"example.com"):
            assert needle not in key
            assert needle not in dumped
    client.close()


class CommandCounter:
    """Counts, from Redis's own command statistics, the commands it ran (scripts' own calls
    included): deterministic, whatever the machine's load."""

    SENT = (
        "evalsha", "eval", "xadd", "xtrim", "pfadd", "pfcount", "pexpire", "get", "mget", "set",
    )  # fmt: skip

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.start = self._calls()

    def _calls(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in self.SENT}

    def since(self) -> dict[str, int]:
        now = self._calls()
        self.client.close()
        return {
            name: now[name] - self.start[name] for name in self.SENT if now[name] > self.start[name]
        }


async def test_a_decision_is_one_command(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    throttle = engine(CAPS, redis_store, clock)
    await throttle.decide(marker(segment="eu/de/berlin"), person="warm-up")  # connect, load script
    sent = CommandCounter(redis_server)
    for person in ("ana", "ben", "cleo"):
        await throttle.decide(marker(segment="eu/de/berlin"), person=person)
    await redis_store._write_pending_now()
    calls = sent.since()
    # One script call per decision, which reads the person's record and choices at once and
    # writes the record once, recent decisions included; the audit trail takes at most one
    # append per decision (the warm-up's included; fewer when they share a write).
    assert calls.pop("evalsha") == 3
    assert (calls.pop("mget"), calls.pop("set")) == (3, 3)  # the template was kept at warm-up
    assert 1 <= calls.pop("xadd") <= 4
    assert set(calls) <= {"pfadd", "pexpire", "pfcount", "xtrim"}


async def test_concurrent_decisions_share_round_trips(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    throttle = engine(CAPS, redis_store, clock)
    await throttle.decide(marker(), person="warm-up")
    reads = _reads(redis_server)
    people = [f"person-{n}" for n in range(50)]
    decisions = await asyncio.gather(
        *(throttle.decide(marker(segment="eu/de"), person=p) for p in people)
    )
    assert {d.outcome for d in decisions} == {"personalized"}
    # Coalescing happens: fewer reads than decisions. How many depends on scheduling, so the
    # figure itself belongs in the bench, not here.
    assert _reads(redis_server) - reads - 1 < len(people)


def _reads(server: RedisServer) -> int:
    client = server.client()
    try:
        return int(client.info("stats")["total_reads_processed"])
    finally:
        client.close()


async def test_the_script_is_reloaded_after_redis_forgets_it(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    three = '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n' + NO_REPETITION
    throttle = engine(three, redis_store, clock)
    assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    client = redis_server.client()
    client.script_flush()
    client.close()
    outcomes = [(await throttle.decide(marker(), person="ana")).outcome for _ in range(3)]
    assert outcomes == ["personalized", "personalized", "segment"]


async def test_several_worker_processes_share_one_exact_cap(redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=context) as pool:
        loop = asyncio.get_running_loop()
        counts = await asyncio.gather(
            *(loop.run_in_executor(pool, decide_concurrently, redis_url, 50) for _ in range(4))
        )
    assert sum(counts) == 5


def fault_tolerant_policy(on_error: str = "segment", timeout: str = "5s") -> Any:
    # A stopped Redis refuses at once: only a test of the timeout itself needs a short one,
    # which a busy machine could otherwise reach on a healthy Redis.
    return policy(
        '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
        + NO_REPETITION
        + f'[store]\ntimeout = "{timeout}"\nretry_after = "1ms"\non_error = "{on_error}"\n'
    )


async def decide_over_http(app: Any, count: int = 1) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
        return [await http.get("/offer", headers={"x-test-user": "ana"}) for _ in range(count)]


def reason_of(response: httpx.Response) -> str:
    match = re.search(r"reason=([a-z-]+)", response.headers["personalization-decision"])
    assert match is not None
    return match[1]


async def test_redis_down_serves_segment_content_logs_once_and_recovers(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(private_redis.url)
    app = storefront(policy=fault_tolerant_policy(), store=store, secret=SECRET)
    assert reason_of((await decide_over_http(app))[0]) == "allowed"
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="throttle"):
        down = await decide_over_http(app, 20)
    assert {r.status_code for r in down} == {200}
    assert {reason_of(r) for r in down} == {"store-unavailable"}
    assert all(b"ana" not in r.content for r in down)
    assert caplog.text.count("store unavailable") == 1
    private_redis.start()  # same port, empty: Redis restarted without its data or scripts
    with caplog.at_level(logging.WARNING, logger="throttle"):
        back = await decide_over_http(app, 4)
    assert [reason_of(r) for r in back] == ["allowed", "allowed", "allowed", "frequency-cap"]
    assert "store answers again" in caplog.text
    await store.aclose()


async def test_redis_down_can_fail_open_when_the_policy_says_so(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    app = storefront(policy=fault_tolerant_policy("personalize"), store=store, secret=SECRET)
    await decide_over_http(app)  # seen, with no choice that restricts her
    private_redis.stop()
    (response,) = await decide_over_http(app)
    assert response.headers["personalization-decision"].startswith(
        "personalized;reason=store-unavailable"
    )
    assert b"ana" in response.content
    await store.aclose()


async def test_a_slow_redis_times_out_within_the_policy_timeout(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    app = storefront(policy=fault_tolerant_policy(timeout="50ms"), store=store, secret=SECRET)
    await decide_over_http(app)  # connected
    admin = private_redis.client()
    # Writes (the decision script) paused far longer than any run, the admin connection left
    # free to unpause: an answer at all means the timeout gave it, not Redis.
    admin.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")
    try:
        (response,) = await decide_over_http(app)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    assert reason_of(response) == "store-unavailable"
    assert reason_of((await decide_over_http(app))[0]) == "allowed"
    await store.aclose()


async def test_redis_answering_errors_serves_segment_content(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    # Error replies come at once: a generous timeout keeps a busy machine out of the test.
    patient = policy(
        '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
        + NO_REPETITION
        + '[store]\ntimeout = "5s"\nretry_after = "1ms"\n'
    )
    app = storefront(policy=patient, store=store, secret=SECRET)
    admin = private_redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        (response,) = await decide_over_http(app)
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert response.status_code == 200
    assert reason_of(response) == "store-unavailable"
    assert reason_of((await decide_over_http(app))[0]) == "allowed"
    await store.aclose()


async def test_a_broken_audience_count_neither_hangs_nor_fails_the_decision(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    throttle = engine(CAPS + '[store]\ntimeout = "200ms"\n', redis_store, clock)
    (_, eu) = throttle._audiences_of("eu/de")
    client = redis_server.client()
    client.set(redis_store.audience_key(eu), "not a HyperLogLog")  # PFADD/PFCOUNT answer errors
    client.close()
    # A guard against a hang, not a measure of speed.
    decision = await asyncio.wait_for(throttle.decide(marker(segment="eu/de"), person="ana"), 60)
    assert decision.outcome == "personalized"


async def test_one_persons_broken_key_does_not_pause_the_store_for_others(
    redis_store: RedisStore, redis_server: RedisServer, clock: ManualClock
) -> None:
    throttle = Engine(fault_tolerant_policy(), redis_store, secret=SECRET, clock=clock)
    client = redis_server.client()
    # A record cut short (a map of two with half an entry): the script fails for ana alone.
    client.set(redis_store.person_key(throttle.pseudonym("ana")), b"\x82\xa1t")
    client.close()
    broken = await throttle.decide(marker(), person="ana")
    assert (broken.outcome, broken.reason) == ("segment", Reason.STORE_UNAVAILABLE)
    others = [await throttle.decide(marker(), person=p) for p in ("ben", "cleo")]
    assert [d.reason for d in others] == [Reason.ALLOWED, Reason.ALLOWED]


async def test_a_closed_store_answers_at_once_and_keeps_nothing_open(
    redis_server: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(redis_server.url)
    throttle = engine(CAPS, store, clock)
    await throttle.decide(marker(), person="ana")
    pending = asyncio.ensure_future(throttle.decide(marker(), person="ben"))
    await store.aclose()
    assert (await pending).reason is Reason.STORE_UNAVAILABLE
    assert (await throttle.decide(marker(), person="cleo")).reason is Reason.STORE_UNAVAILABLE
    client = redis_server.client()
    names = [c.get("name", "") for c in client.client_list()]
    client.close()
    assert len(names) == 1  # only this check's own connection


async def test_a_batch_that_found_no_connection_keeps_the_one_another_batch_opened(
    redis_store: RedisStore, clock: ManualClock
) -> None:
    """Batches flushed while the connection opens each wait to connect; one whose turn comes
    after another opened it must not take the fresh connection for a stalled one and drop it
    (its decisions, and every decision waiting on it, would fall back)."""
    throttle = engine(NO_REPETITION, redis_store, clock)
    await throttle.decide(marker(), person="ana")
    opened = redis_store._pipe._protocol
    await redis_store._reconnect()  # what the later batch does when its turn comes
    assert redis_store._pipe._protocol is opened and redis_store._pipe.ready
    assert (await throttle.decide(marker(), person="ben")).reason == Reason.ALLOWED
    assert not throttle.guard.failing
