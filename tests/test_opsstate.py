"""The shared ops state: per-minute counts every worker sees, reloads, store health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.apps import storefront
from tests.conftest import ManualClock
from tests.helpers import SECRET, marker, policy
from tests.redis_server import RedisServer
from throttle import Engine
from throttle.opsstate import OpsConfig, OpsState, summed
from throttle.store import MemoryStore, RedisStore, Store

TWO_PER_HOUR = (
    '[[caps]]\nname = "two"\nper = "user"\nlimit = 2\nwindow = "1h"\n'
    "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
    '[fallback.content."spring-sale"]\nbody = "{}"\n'
)


@pytest.fixture
async def ops(store: Store, clock: ManualClock) -> AsyncIterator[OpsState]:
    engine = Engine(policy(TWO_PER_HOUR), store, secret=SECRET, clock=clock)
    state = OpsState(engine, clock=clock)
    yield state
    await state.aclose()


async def test_minutes_count_decisions_by_outcome_rule_campaign_and_segment(
    ops: OpsState, clock: ManualClock
) -> None:
    engine = ops.engine
    for _ in range(3):  # 2 personalized, then the cap "two" refuses
        await engine.decide(marker(segment="eu/de/berlin"), person="user-4711")
    # A campaign the policy does not name counts as "other"; nobody signed in gets a segment.
    await engine.decide(marker("reco-user-4711", segment="us/ny"), person="user-9")
    await engine.decide(marker(segment="eu/fr"), person=None)
    clock.advance(61)
    await engine.decide(marker(), person="user-9")  # a decision in the next minute
    await ops.flush()

    first, second = await ops.minutes(clock() - 61, clock())
    assert first.start % 60 == 0 and second.start == first.start + 60
    assert first.decisions == 5 and second.decisions == 1
    assert first.outcomes == {"personalized": 3, "segment": 2}
    assert first.fallbacks == 2
    assert first.fallback_rules == {"two": 1, "consent.anonymous": 1}
    assert first.fallback_reasons == {"frequency-cap": 1, "anonymous": 1}
    assert first.campaigns == {"spring-sale": 4, "other": 1}
    assert first.campaign_fallbacks == {"spring-sale": 2}
    assert first.segments == {"eu": 4, "us": 1}
    assert first.segment_fallbacks == {"eu": 2}
    assert first.policies == {f"test@{engine.policy.version}": 5}
    fields = repr(first) + repr(second)
    assert "4711" not in fields and "user-9" not in fields
    assert engine.pseudonym("user-4711") not in fields


async def test_shadow_caps_are_counted_as_what_they_would_have_refused(
    store: Store, clock: ManualClock
) -> None:
    trial = '[[caps]]\nname = "trial"\nper = "campaign"\nlimit = 1\nwindow = "1h"\nshadow = true\n'
    engine = Engine(policy(trial + TWO_PER_HOUR), store, secret=SECRET, clock=clock)
    ops = OpsState(engine, clock=clock)
    try:
        for person in ("ana", "ben", "cleo"):  # the trial cap would allow one per person
            for _ in range(2):
                await engine.decide(marker(), person=person)
        (minute,) = await ops.minutes(clock(), clock())
    finally:
        await ops.aclose()
    assert minute.outcomes == {"personalized": 3, "segment": 3}
    assert minute.fallbacks == 0  # every one of them was delivered
    assert minute.shadowed == 3
    assert minute.shadow_rules == {"trial": 3}


async def test_empty_minutes_are_zeros_and_sums_add_up(ops: OpsState, clock: ManualClock) -> None:
    await ops.engine.decide(marker(), person="ana")
    clock.advance(180)
    await ops.engine.decide(marker(), person="ana")
    minutes = await ops.minutes(clock() - 180, clock())
    assert [m.decisions for m in minutes] == [1, 0, 0, 1]
    total = summed(minutes)
    assert total.decisions == 2 and total.outcomes == {"personalized": 2}


async def test_labels_are_bounded(store: Store, clock: ManualClock) -> None:
    engine = Engine(policy(TWO_PER_HOUR), store, secret=SECRET, clock=clock)
    ops = OpsState(engine, OpsConfig(segments=2, campaigns=("summer",)), clock=clock)
    try:
        for index, segment in enumerate(("eu/de", "us", "apac/jp", "latam/br", "")):
            await engine.decide(marker("summer", segment=segment), person=f"p{index}")
        await engine.decide(marker("winter"), person="p9")
        (minute,) = await ops.minutes(clock(), clock())
    finally:
        await ops.aclose()
    assert minute.segments == {"eu": 1, "us": 1, "other": 4}
    assert minute.campaigns == {"summer": 5, "other": 1}


async def test_two_workers_on_one_redis_see_the_same_figures(
    redis_server: RedisServer, redis_url: str, clock: ManualClock
) -> None:
    states = []
    for _ in range(2):
        engine = Engine(policy(TWO_PER_HOUR), RedisStore(redis_url), secret=SECRET, clock=clock)
        states.append(OpsState(engine, clock=clock))
    first, second = states
    first.worker, second.worker = "host/1", "host/2"
    try:
        for _ in range(3):
            await first.engine.decide(marker(), person="ana")
        for _ in range(2):
            await second.engine.decide(marker(), person="ana")  # the cap is shared, too
        first.reloaded(None, first.engine.policy)
        second.reloaded(None, second.engine.policy)
        await first.flush()
        await second.flush()
        seen = [await state.minutes(clock(), clock()) for state in states]
        reloads = [await state.reloads() for state in states]
        workers = [await state.workers() for state in states]
        pseudonym = first.engine.pseudonym("ana").encode()
        admin = redis_server.client()
        keys = admin.keys("*{ops}*")
        stored = repr(
            [admin.hgetall(k) if admin.type(k) == b"hash" else admin.zrange(k, 0, -1) for k in keys]
        ).encode()
        admin.close()
    finally:
        for state in states:
            await state.aclose()
            await state.engine.aclose()
    assert len(keys) == 3  # this minute, the reloads, the workers: nothing per person
    assert b"ana" not in stored and pseudonym not in stored
    assert seen[0] == seen[1]
    (minute,) = seen[0]
    assert minute.decisions == 5
    assert minute.outcomes == {"personalized": 2, "segment": 3}
    assert minute.fallback_rules == {"two": 3}
    assert reloads[0] == reloads[1] and len(reloads[0]) == 1  # one policy, one entry
    assert [w.worker for w in workers[0]] == ["host/1", "host/2"] == [w.worker for w in workers[1]]
    assert not any(w.store_failing for w in workers[0])


async def test_counts_wait_for_redis_when_it_is_down(
    private_redis: RedisServer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(policy(TWO_PER_HOUR), RedisStore(private_redis.url), secret=SECRET, clock=clock)
    ops = OpsState(engine, clock=clock)
    try:
        await engine.decide(marker(), person="ana")
        private_redis.stop()
        await engine.decide(marker(), person="ana")  # the store fails: it falls back
        with caplog.at_level(logging.WARNING, logger="throttle.opsstate"):
            await ops.flush()
        assert "writing the ops state failed" in caplog.text
        health = ops._health()
        assert health["failing"] and health["fell_back"] == 1
        private_redis.start()
        await ops.flush()
        (minute,) = await ops.minutes(clock(), clock())
    finally:
        await ops.aclose()
        await engine.aclose()
    assert minute.decisions == 2
    assert minute.reasons == {"allowed": 1, "store-unavailable": 1}


async def test_the_middleware_keeps_ops_state_and_records_reloads(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nname = "shop"\n' + TWO_PER_HOUR, encoding="utf-8")
    app = storefront(policy=str(path), reload_interval=0, ops=True, secret=SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as http:
        await http.get("/offer", headers={"x-test-user": "ana"})
        path.write_text('[policy]\nname = "shop"\n' + TWO_PER_HOUR + "\n# v2\n", encoding="utf-8")
        await http.get("/offer", headers={"x-test-user": "ana"})
    middleware = app.middleware_stack
    while not hasattr(middleware, "ops"):
        middleware = middleware.app  # type: ignore[union-attr]
    ops = middleware.ops
    assert isinstance(ops, OpsState)
    try:
        reloads = await ops.reloads()
        (minute,) = await ops.minutes(ops._clock(), ops._clock())
        (worker,) = await ops.workers()
    finally:
        await ops.aclose()
    assert [r.previous for r in reloads] == [reloads[1].version, ""]
    assert reloads[0].policy == "shop" and reloads[0].version != reloads[1].version
    assert minute.decisions == 2 and len(minute.policies) == 2
    assert worker.policy == "shop" and worker.version == reloads[0].version


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="list of names"):
        OpsConfig(campaigns="spring-sale")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segments"):
        OpsConfig(segments=0)


async def test_a_flush_costs_redis_a_command_per_counter_not_per_decision(
    redis_server: RedisServer, redis_url: str, clock: ManualClock
) -> None:
    engine = Engine(policy(TWO_PER_HOUR), RedisStore(redis_url), secret=SECRET, clock=clock)
    ops = OpsState(engine, clock=clock)
    admin = redis_server.client()
    try:
        for index in range(300):
            await engine.decide(marker(segment="eu/de"), person=f"person-{index % 50}")
        admin.config_resetstat()
        await ops.flush()
        stats: dict[str, dict[str, int]] = admin.info("commandstats")  # type: ignore[assignment]
        (minute,) = await ops.minutes(clock(), clock())
    finally:
        admin.close()
        await ops.aclose()
        await engine.aclose()
    assert minute.decisions == 300
    counters = len(minute.outcomes) + len(minute.reasons) + len(minute.campaigns) + 20
    assert stats["cmdstat_hincrby"]["calls"] <= counters
    assert stats["cmdstat_exec"]["calls"] == 1  # one transaction for everything


async def test_campaigns_a_markets_policy_names_are_counted_by_name(clock: ManualClock) -> None:
    eu = policy(TWO_PER_HOUR + '[fallback.content."eu-only"]\nbody = "{}"\n')
    engine = Engine(
        policy(TWO_PER_HOUR), MemoryStore(), secret=SECRET, clock=clock, markets={"eu": eu}
    )
    state = OpsState(engine, clock=clock)
    await engine.decide(marker("eu-only"), person="ana", market="eu")
    await engine.decide(marker("nobody-names-it"), person="ana", market="eu")
    await state.flush()
    (minute,) = await state.minutes(clock(), clock())
    assert minute.campaigns == {"eu-only": 1, "other": 1}
    await state.aclose()
