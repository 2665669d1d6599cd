"""The public client for sends outside a request: decide, preflight, reserve/commit/release.

Each behaviour runs on the memory store and on a real redis-server (the `store` fixture).
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import pytest

from tests.conftest import ManualClock
from tests.helpers import SECRET, marker, policy, trail
from tests.redis_server import RedisServer
from throttle import (
    Marker,
    Reason,
    Reservation,
    StoreUnavailable,
    ThrottleClient,
    ThrottleMiddleware,
)
from throttle.errors import ConfigurationError
from throttle.store import MemoryStore, RedisStore, Store

# Two per person an hour; a creepiness budget of 1.0 a day, and "city" costs 0.4 of it.
LIMITS = policy(
    '[[caps]]\nname = "two-an-hour"\nper = "user"\nlimit = 2\nwindow = "1h"\n'
    "[creepiness]\nbudget = { limit = 1.0, window = '24h' }\n"
    "repetition = { weight = 0.0, window = '1h' }\n"
    '[creepiness.signals]\n"city" = 0.4\n'
)
EMAIL = marker("spring-sale", channel="email")
CITY = marker("spring-sale", channel="email", signals=("city",))


def client_on(store: Store, clock: ManualClock, body: Any = LIMITS) -> ThrottleClient:
    return ThrottleClient(policy=body, store=store, secret=SECRET, clock=clock, hold=60)


async def everything(store: Store, client: ThrottleClient, person: str) -> Any:
    """All a store holds that a decision may write: the person's state, their recent
    decisions and the audit trail."""
    pseudonym = client.engine.pseudonym(person)
    return await store.state(pseudonym), await store.recent(pseudonym), await trail(store)


async def test_a_preflight_writes_nothing_and_agrees_with_the_decision_that_follows(
    store: Store, clock: ManualClock
) -> None:
    client = client_on(store, clock)
    for expected in ("personalized", "personalized", "segment"):
        before = await everything(store, client, "ana")
        preflight = await client.preflight("ana", CITY)
        assert await everything(store, client, "ana") == before
        decision = await client.decide("ana", CITY)
        assert (preflight.outcome, preflight.reason, preflight.rule, preflight.score) == (
            decision.outcome,
            decision.reason,
            decision.rule,
            decision.score,
        )
        assert decision.outcome == expected
    assert decision.reason is Reason.FREQUENCY_CAP
    clock.advance(3600)
    # The cap has room again; the budget (0.8 of 1.0 spent) has not: both calls say budget.
    preflight = await client.preflight("ana", CITY)
    assert (preflight.outcome, preflight.reason) == ("segment", Reason.BUDGET)
    assert (await client.decide("ana", CITY)).reason is Reason.BUDGET


async def test_a_preflight_keeps_no_choice_alive_and_counts_nobody_into_an_audience(
    store: Store, clock: ManualClock
) -> None:
    client = client_on(store, clock)
    await client.engine.set_level("ben", "full")
    before = await everything(store, client, "ben")
    audiences = client.engine._audiences_of("eu/de")
    clock.advance(30)
    await client.preflight("ben", marker("spring-sale", segment="eu/de"))
    assert await everything(store, client, "ben") == before
    assert set((await store.segment_sizes(audiences, window_ms=86_400_000)).values()) == {0}
    await client.decide("ben", marker("spring-sale", segment="eu/de"))
    assert set((await store.segment_sizes(audiences, window_ms=86_400_000)).values()) == {1}


async def test_a_reservation_counts_at_once_and_a_release_takes_exactly_it_back(
    store: Store, clock: ManualClock
) -> None:
    client = client_on(store, clock)
    first = await client.reserve("ana", CITY)
    assert first.held and first.allowed
    clock.advance(1)
    after_first = await everything(store, client, "ana")
    second = await client.reserve("ana", CITY)
    assert second.held and second.allowed
    # Both count against the cap and the budget before either is sent.
    third = await client.preflight("ana", EMAIL)
    assert (third.outcome, third.reason) == ("segment", Reason.FREQUENCY_CAP)
    assert await client.release(second) is True
    state, _, _ = await everything(store, client, "ana")
    assert state["c"] == after_first[0]["c"]
    assert state["b"] == after_first[0]["b"]
    assert set(state["v"]) == set(after_first[0]["v"])
    assert await client.release(second) is False  # released once, not twice
    assert (await client.decide("ana", EMAIL)).outcome == "personalized"


async def test_a_release_gives_back_budget_spend_a_merge_folded_into_a_later_entry(
    store: Store, clock: ManualClock
) -> None:
    four_entries = policy(
        "[creepiness]\nbudget = { limit = 1.0, window = '24h', entries = 4 }\n"
        "repetition = { weight = 0.0, window = '1h' }\n"
        '[creepiness.signals]\n"city" = 0.1\n'
    )
    client = client_on(store, clock, four_entries)
    held = await client.reserve("ana", CITY)
    assert held.held
    spend = (await client.engine.state_of("ana") or {})["b"][0][1]
    for _ in range(4):
        clock.advance(1)
        assert (await client.decide("ana", CITY)).outcome == "personalized"
    # Five entries merged into four: the reservation's spend went into the next oldest.
    state = await client.engine.state_of("ana")
    assert state is not None and [score for _, score in state["b"]] == [2 * spend] + [spend] * 3
    assert await client.release(held)
    state = await client.engine.state_of("ana")
    assert state is not None and [score for _, score in state["b"]] == [spend] * 4


async def test_a_committed_reservation_stays_after_its_hold_and_settles_once(
    store: Store, clock: ManualClock
) -> None:
    client = client_on(store, clock)
    reservation = await client.reserve("ana", EMAIL)
    assert await client.commit(reservation) is True
    assert await client.commit(reservation) is False
    assert await client.release(reservation) is False
    clock.advance(120)  # past the hold: a committed reservation is a delivery like any other
    await client.decide("ana", EMAIL)
    assert (await client.decide("ana", EMAIL)).reason is Reason.FREQUENCY_CAP
    state = await client.engine.state_of("ana")
    assert state is not None and "v" not in state


async def test_a_reservation_neither_committed_nor_released_stops_counting_after_its_hold(
    store: Store, clock: ManualClock
) -> None:
    client = client_on(store, clock)
    reservations = [await client.reserve("ana", EMAIL) for _ in range(2)]
    assert all(r.held for r in reservations)
    assert reservations[0].expires_at == clock.now + 60
    assert (await client.preflight("ana", EMAIL)).reason is Reason.FREQUENCY_CAP
    clock.advance(59)
    assert (await client.preflight("ana", EMAIL)).reason is Reason.FREQUENCY_CAP
    clock.advance(1)
    assert (await client.preflight("ana", EMAIL)).outcome == "personalized"
    assert await client.commit(reservations[0]) is False  # too late: it stopped counting
    assert (await client.decide("ana", EMAIL)).outcome == "personalized"
    state = await client.engine.state_of("ana")
    assert state is not None and len(state["c"]["u"]) == 1 and "v" not in state


async def test_reserving_commits_a_send_that_worked_and_releases_one_that_failed(
    store: Store, clock: ManualClock
) -> None:
    client = client_on(store, clock)
    async with client.reserving("ana", campaign="spring-sale", channel="email") as sent:
        assert sent.allowed
    with pytest.raises(ConnectionError):
        async with client.reserving("ana", campaign="spring-sale", channel="email") as failed:
            assert failed.allowed
            raise ConnectionError("the mail server said no")
    state = await client.engine.state_of("ana")
    assert state is not None and len(state["c"]["u"]) == 1 and "v" not in state
    clock.advance(3600)  # the committed one outlives any hold
    assert await client.release(sent) is False


async def test_what_is_never_counted_holds_no_reservation(store: Store, clock: ManualClock) -> None:
    client = client_on(store, clock)
    receipt = await client.reserve("ana", marker("receipt", transactional=True))
    assert receipt.allowed and not receipt.held
    assert await client.commit(receipt) is False
    await client.engine.set_level("ben", "off")
    refused = await client.reserve("ben", EMAIL)
    assert not refused.allowed and not refused.held
    assert refused.decision.reason is Reason.PREFERENCE


async def test_an_unavailable_store_allows_no_preflight_and_no_reservation(
    private_redis: RedisServer, clock: ManualClock
) -> None:
    fails_open = policy(
        '[[caps]]\nname = "two"\nper = "user"\nlimit = 2\nwindow = "1h"\n'
        '[store]\ntimeout = "200ms"\non_error = "personalize"\n'
    )
    store = RedisStore(private_redis.url, connect_timeout=0.2)
    client = client_on(store, clock, fails_open)
    try:
        assert (await client.decide("ana", EMAIL)).outcome == "personalized"
        private_redis.stop()
        # ana was seen lately without restricting choices: decide fails open, as the
        # middleware does under on_error = "personalize"; what would count nothing does not.
        preflight = await client.preflight("ana", EMAIL)
        assert (preflight.outcome, preflight.reason) == ("segment", Reason.STORE_UNAVAILABLE)
        reservation = await client.reserve("ana", EMAIL)
        assert not reservation.allowed and not reservation.held
        assert reservation.decision.reason is Reason.STORE_UNAVAILABLE
        opened = await client.decide("ana", EMAIL)
        assert (opened.outcome, opened.reason) == ("personalized", Reason.STORE_UNAVAILABLE)
        with pytest.raises(StoreUnavailable):
            await client.commit(reservation.token)
        with pytest.raises(StoreUnavailable):
            await client.release(reservation.token)
    finally:
        await client.aclose()


async def test_a_send_that_went_out_is_never_reported_failed_by_its_commit(
    private_redis: RedisServer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(private_redis.url, connect_timeout=0.2)
    client = client_on(store, clock, policy('[store]\ntimeout = "5s"\n'))
    sent: list[bool] = []
    try:
        with caplog.at_level(logging.WARNING, logger="throttle.client"):
            async with client.reserving("ana", EMAIL) as reservation:
                assert reservation.held
                private_redis.stop()  # the store goes away while the email goes out
                sent.append(True)
        assert sent == [True]  # no exception: the caller must not send it again
        assert "could not be committed" in caplog.text and "ana" not in caplog.text
    finally:
        await client.aclose()


async def test_the_web_and_a_client_share_one_cap_through_the_middleware(
    clock: ManualClock,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    middleware = ThrottleMiddleware(
        app, policy=LIMITS, store=MemoryStore(), secret=SECRET, clock=clock
    )
    client = middleware.client
    assert client is middleware.client and client.engine is middleware.engine
    assert ThrottleClient.from_middleware(middleware).engine is middleware.engine
    await middleware.engine.decide(marker(), person="ana")  # what a web offer does
    await client.decide("ana", EMAIL)
    assert (await client.preflight("ana", EMAIL)).reason is Reason.FREQUENCY_CAP
    assert "ThrottleClient(policy=test@" in repr(client)
    middleware.refusal = "throttle cannot start: the policy is broken"
    with pytest.raises(ConfigurationError, match="cannot start"):
        ThrottleClient.from_middleware(middleware)


async def test_a_message_is_a_marker_or_personalization_fields_and_a_person_an_id(
    clock: ManualClock,
) -> None:
    client = client_on(MemoryStore(), clock)
    by_fields = await client.preflight(
        42, campaign="spring-sale", channel="email", signals=["city"], tags=["promo"]
    )
    by_marker = await client.preflight(
        "42", Marker(campaign="spring-sale", channel="email", signals=("city",), tags=("promo",))
    )
    assert by_fields == by_marker
    with pytest.raises(TypeError, match="campaign"):
        await client.decide("ana")
    with pytest.raises(TypeError, match="not both"):
        await client.decide("ana", EMAIL, campaign="other")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="must be a Marker"):
        await client.decide("ana", "spring-sale")  # type: ignore[arg-type]
    for person in ("", "x" * 1025, None, True):
        with pytest.raises(ValueError, match="person must be"):
            await client.decide(person, EMAIL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hold"):
        await client.reserve("ana", EMAIL, hold=0)
    with pytest.raises(ValueError, match="not a reservation"):
        await client.commit("no-dot-here")
    with pytest.raises(ConfigurationError, match="hold"):
        ThrottleClient(policy=LIMITS, hold=float("nan"))
    assert not await client.release(Reservation(by_fields, False, "a.b", 0.0))


async def test_a_client_picks_up_an_edited_policy_file(tmp_path: Any, clock: ManualClock) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nname = "edited"\n[[caps]]\nname = "one"\nper = "user"\nlimit = 1\n'
                    'window = "1h"\n')  # fmt: skip
    client = ThrottleClient(policy=path, clock=clock, reload_interval=0.0)
    await client.decide("ana", EMAIL)
    assert (await client.preflight("ana", EMAIL)).reason is Reason.FREQUENCY_CAP
    path.write_text('[policy]\nname = "edited"\n[[caps]]\nname = "one"\nper = "user"\nlimit = 5\n'
                    'window = "1h"\n# more room\n')  # fmt: skip
    # The file's size changed, so the watcher sees the edit whatever its clock's resolution.
    assert (await client.preflight("ana", EMAIL)).outcome == "personalized"
    assert client.policy.caps[0].limit == 5
    async with ThrottleClient(policy=[path], clock=clock) as layered:
        assert layered.policy.name == "edited"
    with pytest.raises(ConfigurationError, match="at least one"):
        ThrottleClient(policy=[])


async def test_a_client_decides_by_each_markets_policy_and_reloads_each(
    tmp_path: Any, clock: ManualClock
) -> None:
    base = tmp_path / "base.toml"
    base.write_text('[policy]\nname = "shop"\n[[caps]]\nname = "daily"\nper = "user"\n'
                    'limit = 3\nwindow = "1d"\n')  # fmt: skip
    markets = tmp_path / "markets"
    markets.mkdir()
    (markets / "eu.toml").write_text('[policy]\nname = "shop-eu"\n[[caps]]\nname = "daily"\n'
                                     "limit = 1\n")  # fmt: skip
    client = ThrottleClient(policy=base, markets=markets, clock=clock, reload_interval=0.0)
    first = await client.decide("ana", EMAIL, market="eu")
    assert (first.policy, first.outcome) == ("shop-eu", "personalized")
    # One person's caps across markets: the EU's cap of 1 is used up, the base's is not.
    assert (await client.preflight("ana", EMAIL, market="eu")).reason is Reason.FREQUENCY_CAP
    held = await client.reserve("ana", EMAIL)
    assert held.allowed and held.decision.policy == "shop"
    (markets / "eu.toml").write_text('[policy]\nname = "shop-eu"\n[[caps]]\nname = "daily"\n'
                                     "limit = 3\n# more room\n")  # fmt: skip
    assert (await client.preflight("ana", EMAIL, market="eu")).outcome == "personalized"
    await client.aclose()


@pytest.mark.redis_only
async def test_a_preflight_on_redis_renews_no_expiry(
    redis_url: str, redis_server: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(redis_url)
    client = client_on(store, clock)
    try:
        await client.engine.set_level("ana", "full")
        await client.decide("ana", EMAIL)
        redis = redis_server.client()
        keys = [store.person_key(client.engine.pseudonym("ana"))]
        keys.append(store.choices_key(client.engine.pseudonym("ana")))
        for key in keys:
            redis.pexpire(key, 100_000)
        await client.preflight("ana", EMAIL)
        assert all(0 < redis.pttl(key) <= 100_000 for key in keys)
        await client.decide("ana", EMAIL)  # a real decision renews both
        assert all(redis.pttl(key) > 100_000 for key in keys)
        redis.close()
    finally:
        await store.aclose()


@pytest.mark.redis_only
async def test_a_record_with_unreadable_reservations_still_reads(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_url)
    try:
        reservations = {b"good": [1000, 61_000, 0, b"u"], b"bad": b"junk", b"odd": [b"x", 1, 2]}
        record = msgpack.packb([1_800_000_000, False, False, False, False, reservations])
        redis = redis_server.client()
        redis.set(store.person_key("p"), record)
        redis.close()
        state = await store.state("p")
        assert state == {"v": {"good": [1_800_000_001_000, 1_800_000_061_000, 0, ["u"]]}}
    finally:
        await store.aclose()
