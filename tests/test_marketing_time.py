"""Time and rules as marketers count them, on the memory store and a real redis-server alike:
calendar caps in the person's zone, quiet hours, tag exemptions and reserves, shadow caps."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from tests.conftest import ManualClock
from tests.helpers import NO_REPETITION, engine, marker
from throttle import Engine, Reason
from throttle.store import Store

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, *fields: int) -> float:
    return dt.datetime(*fields, tzinfo=zone).timestamp()  # type: ignore[misc]


DAILY_2 = (
    """
[[caps]]
name = "daily"
per = "user"
limit = 2
calendar = "day"
"""
    + NO_REPETITION
)


async def outcomes(
    throttle: Engine, count: int, *, zone: str | None = None, **fields: object
) -> list[str]:
    return [
        (await throttle.decide(marker(**fields), person="ana", zone=zone)).outcome
        for _ in range(count)
    ]


async def test_a_calendar_day_cap_starts_again_at_the_persons_midnight(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(DAILY_2, store, clock)
    clock.now = at(BERLIN, 2026, 11, 24, 23, 0)
    assert await outcomes(throttle, 3, zone="Europe/Berlin") == [
        "personalized", "personalized", "segment",
    ]  # fmt: skip
    clock.now = at(BERLIN, 2026, 11, 24, 23, 59, 59)
    assert await outcomes(throttle, 1, zone="Europe/Berlin") == ["segment"]
    clock.now = at(BERLIN, 2026, 11, 25, 0, 0)  # one hour later: a new day in Berlin
    assert await outcomes(throttle, 3, zone="Europe/Berlin") == [
        "personalized", "personalized", "segment",
    ]  # fmt: skip


async def test_the_same_instant_is_a_new_day_in_one_zone_and_not_in_another(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(DAILY_2, store, clock)
    clock.now = at(NEW_YORK, 2026, 11, 24, 17, 0)  # 23:00 in Berlin
    assert await outcomes(throttle, 2, zone="America/New_York") == ["personalized"] * 2
    clock.advance(2 * 3600)  # 19:00 in New York, 01:00 next day in Berlin
    assert await outcomes(throttle, 1, zone="America/New_York") == ["segment"]
    assert await outcomes(throttle, 1, zone="Europe/Berlin") == ["personalized"]


async def test_an_unknown_zone_counts_in_the_policys_zone(store: Store, clock: ManualClock) -> None:
    throttle = engine(DAILY_2 + '[time]\nzone = "Europe/Berlin"\n', store, clock)
    clock.now = at(BERLIN, 2026, 11, 24, 23, 30)
    assert await outcomes(throttle, 2, zone="Mars/Olympus_Mons") == ["personalized"] * 2
    clock.now = at(BERLIN, 2026, 11, 25, 0, 30)
    assert await outcomes(throttle, 1, zone="../../etc/passwd") == ["personalized"]


async def test_a_calendar_day_spans_a_daylight_saving_change(
    store: Store, clock: ManualClock
) -> None:
    # 2026-10-25 has 25 hours in Berlin; a delivery at 00:30 still counts at 23:30.
    throttle = engine(DAILY_2, store, clock)
    clock.now = at(BERLIN, 2026, 10, 25, 0, 30)
    assert await outcomes(throttle, 2, zone="Europe/Berlin") == ["personalized"] * 2
    clock.now = at(BERLIN, 2026, 10, 25, 23, 30)
    assert await outcomes(throttle, 1, zone="Europe/Berlin") == ["segment"]
    clock.now = at(BERLIN, 2026, 10, 26, 0, 0)
    assert await outcomes(throttle, 1, zone="Europe/Berlin") == ["personalized"]


async def test_calendar_weeks_start_on_the_policys_weekday(
    store: Store, clock: ManualClock
) -> None:
    weekly = '[[caps]]\nname = "weekly"\nper = "user"\nlimit = 1\ncalendar = "week"\n'
    monday = engine(weekly + NO_REPETITION, store, clock)
    clock.now = at(BERLIN, 2026, 11, 21, 12, 0)  # a Saturday
    assert await outcomes(monday, 1, zone="Europe/Berlin") == ["personalized"]
    clock.now = at(BERLIN, 2026, 11, 22, 12, 0)  # Sunday: the same week, counted from Monday
    assert await outcomes(monday, 1, zone="Europe/Berlin") == ["segment"]
    clock.now = at(BERLIN, 2026, 11, 23, 0, 0)  # Monday
    assert await outcomes(monday, 1, zone="Europe/Berlin") == ["personalized"]


async def test_a_sunday_week_starts_on_sunday(store: Store, clock: ManualClock) -> None:
    weekly = '[[caps]]\nname = "weekly"\nper = "user"\nlimit = 1\ncalendar = "week"\n'
    sunday = engine(weekly + NO_REPETITION + '[time]\nweek_starts = "sunday"\n', store, clock)
    clock.now = at(BERLIN, 2026, 11, 21, 12, 0)  # Saturday
    assert await outcomes(sunday, 1, zone="Europe/Berlin") == ["personalized"]
    clock.now = at(BERLIN, 2026, 11, 22, 0, 0)  # Sunday: a new week
    assert await outcomes(sunday, 2, zone="Europe/Berlin") == ["personalized", "segment"]


async def test_a_calendar_month_cap(store: Store, clock: ManualClock) -> None:
    monthly = '[[caps]]\nname = "monthly"\nper = "user"\nlimit = 2\ncalendar = "month"\n'
    throttle = engine(monthly + NO_REPETITION, store, clock)
    clock.now = at(NEW_YORK, 2026, 11, 1, 0, 0)
    assert await outcomes(throttle, 1, zone="America/New_York") == ["personalized"]
    clock.now = at(NEW_YORK, 2026, 11, 30, 23, 59)
    assert await outcomes(throttle, 2, zone="America/New_York") == ["personalized", "segment"]
    clock.now = at(NEW_YORK, 2026, 12, 1, 0, 0)
    assert await outcomes(throttle, 1, zone="America/New_York") == ["personalized"]


QUIET = '[quiet_hours]\nstart = "21:00"\nend = "08:00"\n' + NO_REPETITION


async def test_quiet_hours_give_segment_content_in_the_persons_night(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(QUIET, store, clock)
    clock.now = at(BERLIN, 2026, 11, 24, 21, 0)
    quiet = await throttle.decide(marker(), person="ana", zone="Europe/Berlin")
    assert (quiet.outcome, quiet.reason, quiet.rule) == (
        "segment",
        Reason.QUIET_HOURS,
        "quiet_hours",
    )
    # 15:00 in New York: not their night.
    assert (await throttle.decide(marker(), person="ben", zone="America/New_York")).outcome == (
        "personalized"
    )
    clock.now = at(BERLIN, 2026, 11, 25, 7, 59)
    assert (await throttle.decide(marker(), person="ana", zone="Europe/Berlin")).outcome == (
        "segment"
    )
    clock.now = at(BERLIN, 2026, 11, 25, 8, 0)
    assert (await throttle.decide(marker(), person="ana", zone="Europe/Berlin")).outcome == (
        "personalized"
    )


async def test_transactional_messages_are_personalized_in_quiet_hours(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(QUIET, store, clock)
    clock.now = at(BERLIN, 2026, 11, 24, 23, 0)
    receipt = await throttle.decide(
        marker("order-update", transactional=True), person="ana", zone="Europe/Berlin"
    )
    assert receipt.outcome == "personalized"


async def test_quiet_hours_within_one_day(store: Store, clock: ManualClock) -> None:
    lunch = '[quiet_hours]\nstart = "12:00"\nend = "13:30"\n'
    throttle = engine(lunch, store, clock)
    for hour, minute, outcome in ((11, 59, "personalized"), (12, 0, "segment"),
                                  (13, 29, "segment"), (13, 30, "personalized")):  # fmt: skip
        clock.now = at(BERLIN, 2026, 11, 24, hour, minute)
        decision = await throttle.decide(marker(), person="ana", zone="Europe/Berlin")
        assert decision.outcome == outcome, (hour, minute)


EXCEPT_SERVICE = (
    """
[[caps]]
name = "daily"
per = "user"
limit = 2
window = "24h"
except_tags = ["service"]

[[caps]]
name = "hourly-all"
per = "user"
limit = 3
window = "1h"
"""
    + NO_REPETITION
)


async def test_campaigns_with_an_exempt_tag_are_neither_capped_nor_counted(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(EXCEPT_SERVICE, store, clock)
    service = await outcomes(throttle, 2, campaign="order-update", tags=("service",))
    assert service == ["personalized"] * 2
    # The two service messages did not count against "daily"; they did against "hourly-all".
    promo = [await throttle.decide(marker(tags=("promo",)), person="ana") for _ in range(2)]
    assert [d.outcome for d in promo] == ["personalized", "segment"]
    assert promo[1].rule == "hourly-all"
    clock.advance(3601)
    later = [await throttle.decide(marker(tags=("promo",)), person="ana") for _ in range(2)]
    assert [d.outcome for d in later] == ["personalized", "segment"]
    assert later[1].rule == "daily"


RESERVED = (
    """
[[caps]]
name = "daily"
per = "user"
limit = 3
window = "24h"
reserve = { slots = 1, tags = ["launch"] }
"""
    + NO_REPETITION
)


async def test_a_reserve_keeps_the_last_slots_for_favoured_campaigns(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(RESERVED, store, clock)
    assert await outcomes(throttle, 3, tags=("promo",)) == [
        "personalized", "personalized", "segment",
    ]  # fmt: skip
    assert await outcomes(throttle, 2, campaign="new-arrivals", tags=("launch",)) == [
        "personalized", "segment",
    ]  # fmt: skip


SHADOW_CAP = (
    """
[[caps]]
name = "hourly-proposed"
per = "user"
limit = 2
window = "1h"
shadow = true

[[caps]]
name = "daily"
per = "user"
limit = 4
window = "24h"
"""
    + NO_REPETITION
)


async def test_a_shadow_cap_reports_its_refusal_and_delivers(
    store: Store, clock: ManualClock
) -> None:
    throttle = engine(SHADOW_CAP, store, clock)
    decisions = [await throttle.decide(marker(), person="ana") for _ in range(3)]
    assert [d.outcome for d in decisions] == ["personalized", "personalized", "segment"]
    third = decisions[2]
    assert (third.reason, third.rule, third.shadow) == (
        Reason.FREQUENCY_CAP,
        "hourly-proposed",
        True,
    )
    assert third.delivers_personalized


async def test_a_shadow_refusal_is_delivered_and_counted_by_the_enforced_caps(
    store: Store, clock: ManualClock
) -> None:
    # Watching a cap never loosens the others: what it lets through anyway counts for them.
    throttle = engine(SHADOW_CAP, store, clock)
    decisions = [await throttle.decide(marker(), person="ana") for _ in range(6)]
    assert [(d.rule, d.shadow, d.delivers_personalized) for d in decisions] == [
        (None, False, True),
        (None, False, True),
        ("hourly-proposed", True, True),
        ("hourly-proposed", True, True),
        ("daily", False, False),  # 4 delivered: the enforced cap is full
        ("daily", False, False),
    ]


async def test_a_shadow_cap_counts_only_what_it_would_have_let_through(
    store: Store, clock: ManualClock
) -> None:
    watched = engine(SHADOW_CAP.replace("limit = 4", "limit = 100"), store, clock)

    async def shadow_at(minutes: float) -> bool:
        clock.now = 1_800_000_000.0 + minutes * 60
        return (await watched.decide(marker(), person="ana")).shadow

    assert [await shadow_at(m) for m in (0, 1, 2, 59)] == [False, False, True, True]
    # An hour after the first two, its log is empty: the refused ones at 2 and 59 minutes
    # were never counted in it, as if the cap had been enforced.
    assert [await shadow_at(m) for m in (61.5, 61.6, 61.7)] == [False, False, True]


async def test_an_enforced_cap_wins_over_a_shadow_cap_listed_before_it(
    store: Store, clock: ManualClock
) -> None:
    both_full = SHADOW_CAP.replace("limit = 4", "limit = 2")
    throttle = engine(both_full, store, clock)
    for _ in range(2):
        await throttle.decide(marker(), person="ana")
    third = await throttle.decide(marker(), person="ana")
    assert (third.rule, third.shadow, third.delivers_personalized) == ("daily", False, False)


async def test_the_budget_is_enforced_before_a_shadow_cap(store: Store, clock: ManualClock) -> None:
    budget = SHADOW_CAP.replace(
        "[creepiness]", "[creepiness]\nbudget = { limit = 0.5, window = '24h' }"
    )
    throttle = engine(budget, store, clock)
    results = [
        await throttle.decide(marker(signals=("location.city",)), person="ana") for _ in range(3)
    ]
    # 0.3 each (the default weight): the second passes the budget of 0.5.
    assert [(d.reason, d.shadow) for d in results] == [
        (Reason.ALLOWED, False), (Reason.BUDGET, False), (Reason.BUDGET, False),
    ]  # fmt: skip


async def test_quiet_hours_may_cover_only_some_channels(store: Store, clock: ManualClock) -> None:
    pushes = QUIET.replace('end = "08:00"', 'end = "08:00"\nchannels = ["push", "email"]')
    throttle = engine(pushes, store, clock)
    clock.now = at(BERLIN, 2026, 11, 24, 23, 0)
    push = await throttle.decide(marker(channel="push"), person="ana", zone="Europe/Berlin")
    page = await throttle.decide(marker(channel="web"), person="ana", zone="Europe/Berlin")
    assert (push.reason, page.reason) == (Reason.QUIET_HOURS, Reason.ALLOWED)


async def test_in_shadow_mode_quiet_hours_never_hide_a_persons_own_no(
    store: Store, clock: ManualClock
) -> None:
    # Shadow mode delivers what a limit refuses; quiet hours are a limit, a person's level, a
    # special category without consent and a GPC opt-out are not: those come first.
    throttle = engine(QUIET, store, clock, mode="shadow")
    clock.now = at(BERLIN, 2026, 11, 24, 23, 0)
    await throttle.set_level("ana", "off")
    cases = [
        (marker(), "ana", False, Reason.PREFERENCE),
        (marker(signals=("health",)), "ben", False, Reason.SPECIAL_CATEGORY),
        (marker(signals=("cart",), inferred=True), "cleo", True, Reason.CONSENT),
    ]
    for message, who, gpc, reason in cases:
        decision = await throttle.decide(message, person=who, gpc=gpc, zone="Europe/Berlin")
        assert (decision.reason, decision.delivers_personalized) == (reason, False), who
    # Someone with no objection: quiet hours, reported, and delivered in shadow mode.
    watched = await throttle.decide(marker(), person="dev", zone="Europe/Berlin")
    assert (watched.reason, watched.shadow) == (Reason.QUIET_HOURS, True)
