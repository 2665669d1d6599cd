"""The engine's behaviour, on the memory store and on a real redis-server alike."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ManualClock
from tests.helpers import NO_REPETITION, SECRET, engine, marker, policy, trail
from throttle import Engine, Reason
from throttle.audit import AuditEntry
from throttle.store import RedisStore, Store

NO_AUDIT = "[audit]\nenabled = false\n"
HOURLY_CAP_OF_3 = (
    """
[[caps]]
name = "hourly"
per = "user"
limit = 3
window = "1h"
"""
    + NO_REPETITION
)


async def outcomes(decide: object, count: int) -> list[str]:
    results = []
    for _ in range(count):
        decision = await decide()  # type: ignore[operator]
        results.append(decision.outcome)
    return results


async def test_cap_allows_exactly_its_limit(store: Store, clock: ManualClock) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    decisions = [await throttle.decide(marker(), person="ana") for _ in range(5)]
    assert [d.outcome for d in decisions] == ["personalized"] * 3 + ["segment"] * 2
    assert decisions[3].reason is Reason.FREQUENCY_CAP
    assert decisions[3].rule == "hourly"


async def test_cap_window_slides_to_the_millisecond(store: Store, clock: ManualClock) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    for step in (0, 600, 1200):  # deliveries at 0, 10 and 20 minutes
        clock.advance(step and 600)
        assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    clock.now += 3600 - 1200 - 0.001  # 1 ms before the first delivery leaves the window
    assert (await throttle.decide(marker(), person="ana")).outcome == "segment"
    clock.advance(0.001)
    assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    assert (await throttle.decide(marker(), person="ana")).outcome == "segment"


async def test_each_person_has_their_own_counters(store: Store, clock: ManualClock) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    for person in ("ana", "ben"):
        assert await outcomes(lambda p=person: throttle.decide(marker(), person=p), 4) == [
            "personalized", "personalized", "personalized", "segment",
        ]  # fmt: skip


async def test_several_caps_apply_at_once_and_the_first_in_policy_order_is_named(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(
        """
[[caps]]
name = "channel-hourly"
per = "channel"
limit = 2
window = "1h"

[[caps]]
name = "campaign-daily"
per = "campaign"
limit = 3
window = "24h"

[[caps]]
name = "user-daily"
per = "user"
limit = 4
window = "24h"
"""
        + NO_REPETITION,
        store,
        clock,
    )
    email, web = marker(channel="email"), marker(channel="web")
    assert (await throttle.decide(email, person="ana")).outcome == "personalized"
    assert (await throttle.decide(email, person="ana")).outcome == "personalized"
    refused = await throttle.decide(email, person="ana")
    assert (refused.outcome, refused.rule) == ("segment", "channel-hourly")
    # The web channel has its own hourly count, but the campaign's daily cap is shared.
    assert (await throttle.decide(web, person="ana")).outcome == "personalized"
    refused = await throttle.decide(web, person="ana")
    assert (refused.outcome, refused.rule) == ("segment", "campaign-daily")
    # Another campaign is counted apart, until the user-wide cap of 4 is reached.
    other = marker("autumn", channel="push")
    assert (await throttle.decide(other, person="ana")).outcome == "personalized"
    refused = await throttle.decide(other, person="ana")
    assert (refused.outcome, refused.rule) == ("segment", "user-daily")


async def test_refused_messages_do_not_use_up_the_cap(store: Store, clock: ManualClock) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    for _ in range(10):
        await throttle.decide(marker(), person="ana")
    clock.advance(3600)
    assert await outcomes(lambda: throttle.decide(marker(), person="ana"), 4) == [
        "personalized", "personalized", "personalized", "segment",
    ]  # fmt: skip


async def test_cap_is_exact_under_concurrency(store: Store, clock: ManualClock) -> None:
    throttle = engine(
        '[[caps]]\nname = "five"\nper = "user"\nlimit = 5\nwindow = "1h"\n'
        '[store]\ntimeout = "5s"\n' + NO_REPETITION,
        store,
        clock,
    )
    decisions = await asyncio.gather(*(throttle.decide(marker(), person="ana") for _ in range(200)))
    personalized = [d for d in decisions if d.outcome == "personalized"]
    assert len(personalized) == 5
    assert {d.reason for d in decisions if d.outcome == "segment"} == {Reason.FREQUENCY_CAP}


async def test_creepiness_above_threshold_gets_segment_without_using_the_cap(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(
        HOURLY_CAP_OF_3 + '[creepiness.signals]\n"household.children" = 0.85\n"cart" = 0.05\n',
        store,
        clock,
    )
    creepy = await throttle.decide(marker(signals=("household.children",)), person="ana")
    assert (creepy.outcome, creepy.reason, creepy.rule) == (
        "segment", Reason.CREEPINESS, "creepiness.threshold",
    )  # fmt: skip
    assert creepy.score == pytest.approx(0.85)
    fine = [await throttle.decide(marker(signals=("cart",)), person="ana") for _ in range(3)]
    assert [d.outcome for d in fine] == ["personalized"] * 3


async def test_budget_limits_the_sum_of_delivered_scores(store: Store, clock: ManualClock) -> None:
    throttle = engine(
        NO_REPETITION
        + 'budget = { limit = 1.0, window = "24h" }\n[creepiness.signals]\n"city" = 0.3\n',
        store,
        clock,
    )
    city = marker(signals=("city",))
    decisions = [await throttle.decide(city, person="ana") for _ in range(4)]
    assert [d.outcome for d in decisions] == ["personalized"] * 3 + ["segment"]
    assert (decisions[3].reason, decisions[3].rule) == (Reason.BUDGET, "creepiness.budget")
    # Messages that use no personal data cost nothing and still pass.
    assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    clock.advance(24 * 3600)
    assert (await throttle.decide(city, person="ana")).outcome == "personalized"


async def test_budget_stays_exact_when_old_entries_are_merged(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(
        NO_REPETITION
        + 'budget = { limit = 1.0, window = "1h", entries = 4 }\n[creepiness.signals]\n"x" = 0.1\n',
        store,
        clock,
    )
    delivered = 0
    for _ in range(20):
        clock.advance(60)
        decision = await throttle.decide(marker(signals=("x",)), person="ana")
        delivered += decision.outcome == "personalized"
    # Ten messages of 0.1 fill a budget of 1.0; merging never lets an eleventh through.
    assert delivered == 10


async def test_repetition_raises_the_score_of_each_repeat(store: Store, clock: ManualClock) -> None:
    throttle = engine(
        '[creepiness]\nthreshold = 0.5\nrepetition = { weight = 0.2, window = "1h" }\n'
        '[creepiness.signals]\n"cart" = 0.1\n',
        store,
        clock,
    )
    cart = marker(signals=("cart",))
    decisions = [await throttle.decide(cart, person="ana") for _ in range(4)]
    assert [d.score for d in decisions] == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert [d.outcome for d in decisions] == ["personalized"] * 3 + ["segment"]
    assert decisions[3].reason is Reason.CREEPINESS
    factors = dict((f.name, f.contribution) for f in decisions[2].factors)
    assert factors == pytest.approx({"signal:cart": 0.1, "repetition": 0.4})
    # Another campaign starts from its own count.
    assert (await throttle.decide(marker("other", signals=("cart",)), person="ana")).score == 0.1


async def test_transactional_messages_are_exempt_from_caps(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    for _ in range(3):
        await throttle.decide(marker(), person="ana")
    receipt = await throttle.decide(marker("receipt", transactional=True), person="ana")
    assert (receipt.outcome, receipt.reason) == ("personalized", Reason.TRANSACTIONAL)


async def test_transactional_messages_are_not_exempt_from_consent(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    receipt = marker("receipt", transactional=True, inferred=True, signals=("cart",))
    decision = await throttle.decide(receipt, person="ana", gpc=True)
    assert (decision.outcome, decision.reason, decision.rule) == (
        "segment", Reason.CONSENT, "consent.gpc",
    )  # fmt: skip


async def test_gpc_blocks_what_the_policy_says(store: Store, clock: ManualClock) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    plain = await throttle.decide(marker(signals=("cart",)), person="ana", gpc=True)
    assert plain.outcome == "personalized"
    for flagged in (marker(inferred=True), marker(third_party=True)):
        decision = await throttle.decide(flagged, person="ana", gpc=True)
        assert decision.reason is Reason.CONSENT
    everything = engine('[consent]\ngpc = ["all"]\n', store, clock)
    assert (await everything.decide(marker(), person="ana", gpc=True)).reason is Reason.CONSENT


async def test_gpc_can_block_sensitive_signals(store: Store, clock: ManualClock) -> None:
    throttle = engine(
        '[consent]\ngpc = ["sensitive"]\nsensitive_at = 0.5\n'
        '[creepiness.signals]\n"financial" = 0.6\n"cart" = 0.1\n',
        store,
        clock,
    )
    assert (await throttle.decide(marker(signals=("cart",)), person="a", gpc=True)).outcome == (
        "personalized"
    )
    sensitive = await throttle.decide(marker(signals=("financial",)), person="a", gpc=True)
    assert sensitive.reason is Reason.CONSENT


async def test_anonymous_people_get_segment_content_unless_the_policy_allows(
    store: Store, clock: ManualClock
) -> None:
    strict = engine(HOURLY_CAP_OF_3, store, clock)
    decision = await strict.decide(marker(), person=None)
    assert (decision.outcome, decision.reason) == ("segment", Reason.ANONYMOUS)
    lenient = engine(
        '[consent]\nanonymous = "personalize"\n[creepiness.signals]\n"household.children" = 0.9\n',
        store,
        clock,
    )
    assert (await lenient.decide(marker(), person=None)).outcome == "personalized"
    creepy = await lenient.decide(marker(signals=("household.children",)), person=None)
    assert creepy.reason is Reason.CREEPINESS


async def test_shadow_mode_reports_but_delivers_and_never_overrides_consent(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock, mode="shadow")
    decisions = [await throttle.decide(marker(), person="ana") for _ in range(5)]
    assert [d.outcome for d in decisions] == ["personalized"] * 3 + ["segment"] * 2
    assert all(d.shadow and d.delivers_personalized for d in decisions)
    # Shadow decisions count as enforce would: the 4th and 5th did not use the cap.
    clock.advance(3600)
    assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    refused = await throttle.decide(marker(inferred=True), person="ana", gpc=True)
    assert refused.reason is Reason.CONSENT
    assert not refused.shadow and not refused.delivers_personalized


async def test_segment_content_is_k_anonymous(store: Store, clock: ManualClock) -> None:
    monotonic = ManualClock(0.0)
    throttle = Engine(
        policy(
            '[[caps]]\nname = "one"\nper = "user"\nlimit = 1\nwindow = "1h"\n[fallback]\nk = 3\n'
            + NO_REPETITION
        ),
        store,
        secret=SECRET,
        clock=clock,
        monotonic=monotonic,
    )
    berlin, munich = marker(segment="eu/de/berlin"), marker(segment="eu/de/munich")
    for person in ("a", "b"):
        await throttle.decide(berlin, person=person)
    await throttle.decide(munich, person="c")
    monotonic.advance(31)  # audience sizes are asked again after 30 s
    # Two people in Berlin, three in eu/de (Berlin and Munich): eu/de stands in for Berlin.
    refused = await throttle.decide(berlin, person="a")
    assert (refused.outcome, refused.segment) == ("segment", "eu/de")
    await throttle.decide(berlin, person="d")
    monotonic.advance(31)
    refused = await throttle.decide(berlin, person="a")
    assert refused.segment == "eu/de/berlin"
    # A segment nobody has been counted in falls back to everyone.
    alone = await throttle.decide(marker(segment="us/tx"), person="a")
    assert alone.segment == ""


async def test_counters_expire_after_the_longest_window(store: Store, clock: ManualClock) -> None:
    throttle = engine(HOURLY_CAP_OF_3 + NO_AUDIT, store, clock)
    await throttle.decide(marker(), person="ana")
    person = throttle.pseudonym("ana")
    assert await store.state(person) is not None
    if isinstance(store, RedisStore):
        # Redis expires keys by its own clock: the key's TTL is the longest window.
        ttl = await store._client.pttl(store.person_key(person))
        assert 3_599_000 < ttl <= 3_600_000
    else:
        clock.advance(3600)
        await throttle.decide(marker(), person="ben")  # the memory store learns time from decisions
        assert await store.state(person) is None


async def test_a_record_with_recent_decisions_lives_as_long_as_the_trail(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(HOURLY_CAP_OF_3 + '[audit]\nmax_age = "2h"\n', store, clock)
    await throttle.decide(marker(), person="ana")
    person = throttle.pseudonym("ana")
    if isinstance(store, RedisStore):
        ttl = await store._client.pttl(store.person_key(person))
        assert 7_199_000 < ttl <= 7_200_000
    else:
        clock.advance(3600)
        await throttle.decide(marker(), person="ben")
        assert len(await store.recent(person)) == 1
        clock.advance(3600)
        await throttle.decide(marker(), person="ben")
        assert await store.recent(person) == []


async def test_erase_deletes_a_persons_record_and_unlinks_their_trail(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    for _ in range(3):
        await throttle.decide(marker(), person="ana")
    person = throttle.pseudonym("ana")
    state = await store.state(person)
    assert state is not None and len(state["c"]["u"]) == 3
    tokens = {entry.person for entry in await trail(store)}
    assert len(tokens) == 1 and "" not in tokens  # one random token, not the pseudonym
    (token,) = tokens
    assert token != person
    erased = await store.erase(person)
    assert erased == (True, 3)
    assert await store.state(person) is None
    assert await store.recent(person) == []
    assert await store.erase(person) == (False, 0)
    if isinstance(store, RedisStore):
        # Nothing left in Redis ties the trail's token to the person: it lived in their record.
        client = store._client
        for key in await client.keys("*"):
            if key.decode() not in store.audit_keys:
                raw = await client.dump(key)
                assert token.encode() not in raw and person.encode() not in raw
    assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    # The person comes back as someone new to the trail.
    assert {entry.person for entry in await trail(store)} - tokens


@pytest.mark.parametrize(
    "person",
    ["x" * 1_000_000, "ünïcødé 👤", "\ud800 lone surrogate", "{braces}", "a\x00b", " "],
    ids=["huge", "unicode", "surrogate", "braces", "nul", "space"],
)
async def test_odd_user_ids_are_just_hashed(store: Store, clock: ManualClock, person: str) -> None:
    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    decisions = [await throttle.decide(marker(), person=person) for _ in range(4)]
    assert [d.outcome for d in decisions] == ["personalized"] * 3 + ["segment"]
    assert len(throttle.pseudonym(person)) == 32


async def test_a_policy_that_counts_nothing_keeps_nothing(store: Store, clock: ManualClock) -> None:
    throttle = engine(NO_REPETITION, store, clock)
    assert (await throttle.decide(marker(), person="ana")).outcome == "personalized"
    assert await store.state(throttle.pseudonym("ana")) is None


async def test_a_new_secret_counts_audiences_afresh(store: Store, clock: ManualClock) -> None:
    # Pseudonyms change with the secret; counting them together would count everyone twice.
    body = '[[caps]]\nname = "one"\nper = "user"\nlimit = 1\nwindow = "1h"\n[fallback]\nk = 2\n'
    before = Engine(policy(body + NO_REPETITION), store, secret=SECRET, clock=clock)
    after = Engine(policy(body + NO_REPETITION), store, secret=b"another-secret-0123", clock=clock)
    for engine_ in (before, after):
        await engine_.decide(marker(segment="eu"), person="ana")
        refused = await engine_.decide(marker(segment="eu"), person="ana")
        assert refused.segment == ""  # one person counted per secret: fewer than k = 2


async def test_every_decision_is_in_the_audit_trail_unless_turned_off(
    store: Store, clock: ManualClock
) -> None:
    audited = engine(HOURLY_CAP_OF_3, store, clock)
    for _ in range(4):
        await audited.decide(marker(signals=("cart",)), person="ana")
    await audited.decide(marker(), person=None)
    entries = await trail(store)
    assert [entry.outcome for entry in entries] == ["personalized"] * 3 + ["segment"] * 2
    assert len({entry.person for entry in entries[:4]}) == 1
    assert entries[4].person == ""  # the guest, under no token
    recent = [AuditEntry.unpack(e) for e in await store.recent(audited.pseudonym("ana"))]
    assert [(e.outcome, e.reason, e.rule) for e in recent] == [
        (entry.outcome, entry.reason, entry.rule) for entry in reversed(entries[:4])
    ]
    silent = Engine(policy(HOURLY_CAP_OF_3), store, secret=SECRET, clock=clock, audit=False)
    off = engine(HOURLY_CAP_OF_3 + NO_AUDIT, store, clock)
    for quiet in (silent, off):
        await quiet.decide(marker(), person="ben")
    assert len(await trail(store)) == 5
    assert await store.recent(audited.pseudonym("ben")) == []


def test_an_audit_entry_packed_from_a_shared_tail_reads_back_whole() -> None:
    from throttle.audit import AuditEntry, pack_entry, pack_tail

    entry = AuditEntry(
        1_800_000_000_000, "ab" * 16, "spring-sale", "web", "eu/de", "eu", "segment",
        "frequency-cap", "hourly", 150, (("signal:cart", 50), ("explained", -15)), ("cart",),
        shadow=True, policy="test@abc",
    )  # fmt: skip
    packed = pack_entry(entry.time_ms, entry.person, pack_tail(entry.tail()))
    assert packed == entry.pack()
    assert AuditEntry.unpack(packed) == entry


async def test_recent_decisions_are_kept_no_longer_than_the_trail(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(HOURLY_CAP_OF_3 + '[audit]\nmax_age = "1d"\n', store, clock)
    for _ in range(6):  # a decision every 20 hours
        await throttle.decide(marker(), person="ana")
        clock.advance(20 * 3600)
    await throttle.decide(marker(), person="ana")
    recent = [AuditEntry.unpack(e) for e in await store.recent(throttle.pseudonym("ana"))]
    now_ms = int(clock.now * 1000)
    assert all(now_ms - e.time_ms < 86_400_000 for e in recent), recent
    assert len(recent) == 2
    # The trail turned off: what it kept goes with the next write.
    off = engine(HOURLY_CAP_OF_3 + NO_AUDIT, store, clock)
    clock.advance(3600)
    await off.decide(marker(), person="ana")
    assert await store.recent(throttle.pseudonym("ana")) == []


async def test_observers_see_every_decision_without_ids(store: Store, clock: ManualClock) -> None:
    from throttle.observe import Observation

    throttle = engine(HOURLY_CAP_OF_3, store, clock)
    seen: list[Observation] = []
    throttle.observe(seen.append)
    throttle.observe(lambda observation: print(1 / 0))  # a failing observer reaches nobody
    message = marker(segment="eu/de", signals=("purchase_history",))
    first = await throttle.decide(message, person="user-1")
    anonymous = await throttle.decide(message, person=None)
    unreadable = throttle.invalid_marker("user-1")
    assert [o.decision for o in seen] == [first, anonymous, unreadable]
    assert [o.segment for o in seen] == ["eu/de", "eu/de", ""]
    assert [o.signed_in for o in seen] == [True, False, True]
    assert all(o.seconds >= 0 for o in seen)
    assert "user-1" not in repr(seen) and throttle.pseudonym("user-1") not in repr(seen)
