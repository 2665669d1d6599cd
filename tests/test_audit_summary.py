from __future__ import annotations

import io
import json
import math
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from throttle.audit import AuditEntry
from throttle.audit_summary import (
    CHOICE_REASONS,
    FAIRNESS_REASONS,
    LAW_REASONS,
    Reader,
    Summary,
    Tally,
    as_dict,
    audit,
    parse_since,
    read_entries,
    redacted_url,
    segment_label,
    summarize,
    text,
)
from throttle.engine import Reason
from throttle.errors import ConfigurationError, StoreUnavailable

KEY = "throttle:audit"
DAY_MS = 86_400_000
# 2026-11-01 00:00:00 UTC
NOV_1 = 1_793_491_200_000


def entry(
    time_ms: int = NOV_1,
    *,
    person: str = "p1",
    campaign: str | None = "spring-sale",
    segment: str | None = "eu",
    outcome: str = "personalized",
    reason: str = "allowed",
    rule: str | None = None,
    shadow: bool = False,
) -> AuditEntry:
    return AuditEntry(
        time_ms=time_ms,
        person=person,
        campaign=campaign,
        channel="web",
        segment=segment,
        fallback_segment="" if outcome == "segment" else None,
        outcome=outcome,
        reason=reason,
        rule=rule,
        score_milli=120,
        shadow=shadow,
        policy="default@1",
    )


def fallback(segment: str, reason: str = "frequency-cap", rule: str = "daily") -> AuditEntry:
    return entry(segment=segment, outcome="segment", reason=reason, rule=rule)


def decisions(segment: str, total: int, fallbacks: int) -> list[AuditEntry]:
    """`total` decisions the policy made about `segment`, `fallbacks` of them refused."""
    refused = [fallback(segment) for _ in range(fallbacks)]
    return refused + [entry(segment=segment) for _ in range(total - fallbacks)]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    opened = aioredis.Redis.from_url(redis_url)
    await opened.config_resetstat()
    yield opened
    await opened.aclose()


async def append(
    client: aioredis.Redis, stream_id: str, data: AuditEntry | bytes | None, key: str = KEY
) -> None:
    fields: dict[str, bytes | str] = {"p": "p1"}
    if data is not None:
        fields["d"] = data.pack() if isinstance(data, AuditEntry) else data
    await client.xadd(key, fields, id=stream_id)  # type: ignore[arg-type]


async def xrange_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


async def read_all(reader: Reader) -> list[AuditEntry]:
    return [found async for found in reader]


# Reading the stream


async def test_reads_the_period_inclusive_in_batches(client: aioredis.Redis) -> None:
    for ms in (1000, 2000, 3000, 4000):
        await append(client, f"{ms}-0", entry(ms))
    # Two appends in one millisecond: the period's end takes both.
    await append(client, "5000-0", entry(5000, person="a"))
    await append(client, "5000-1", entry(5000, person="b"))
    await append(client, "6000-0", entry(6000))

    reader = read_entries(client, KEY, since_ms=2000, until_ms=5000, batch=2)
    found = await read_all(reader)

    assert [(e.time_ms, e.person) for e in found] == [
        (2000, "p1"),
        (3000, "p1"),
        (4000, "p1"),
        (5000, "a"),
        (5000, "b"),
    ]
    assert reader.unreadable == 0
    # An append carries entries made a little before it (by another host's clock, too), so
    # the appends read reach past the period: seven two at a time, four XRANGE calls, never
    # the whole stream at once.
    assert await xrange_calls(client) == 4


async def test_open_bounds_read_the_whole_stream(client: aioredis.Redis) -> None:
    for ms in (1000, 2000, 3000, 4000):
        await append(client, f"{ms}-0", entry(ms))

    found = await read_all(read_entries(client, KEY, since_ms=None, until_ms=None, batch=2))

    assert [e.time_ms for e in found] == [1000, 2000, 3000, 4000]
    # A full last batch needs one more call to see that nothing follows.
    assert await xrange_calls(client) == 3


async def test_paging_moves_past_the_last_sequence_of_a_millisecond(
    client: aioredis.Redis,
) -> None:
    await append(client, "5-18446744073709551615", entry(5))
    await append(client, "6-0", entry(6))

    found = await read_all(read_entries(client, KEY, since_ms=None, until_ms=None, batch=1))

    assert [e.time_ms for e in found] == [5, 6]


async def test_unreadable_entries_are_skipped_and_counted(client: aioredis.Redis) -> None:
    await append(client, "1000-0", entry(1000))
    await append(client, "1001-0", b"\xc1 not msgpack")
    await append(client, "1002-0", None)  # no `d` at all
    await append(client, "1003-0", msgpack.packb(["too", "short"]))
    # Unpacks, but with types no decision has: a text time, a number for a reason.
    await append(
        client, "1004-0", msgpack.packb(["1004", "p", "c", "w", "s", None, "segment", "x", None, 1])
    )
    await append(
        client, "1005-0", msgpack.packb([1005, "p", "c", "w", "s", None, "segment", 7, None, 1])
    )
    await append(
        client, "1006-0", msgpack.packb([True, "p", "c", "w", "s", None, "segment", "x", None, 1])
    )
    await append(
        client, "1007-0", msgpack.packb([1007, "p", 3, "w", "s", None, "segment", "x", None, 1])
    )
    await append(client, "1008-0", entry(1008))

    reader = read_entries(client, KEY, since_ms=None, until_ms=None)
    found = await read_all(reader)

    assert [e.time_ms for e in found] == [1000, 1008]
    assert reader.unreadable == 7


async def test_an_entry_whose_own_time_is_outside_the_period_is_left_out(
    client: aioredis.Redis,
) -> None:
    # Redis appended all three inside the period; two were decided outside it.
    await append(client, "2000-0", entry(1999))
    await append(client, "2500-0", entry(2500))
    await append(client, "3000-0", entry(3001))

    reader = read_entries(client, KEY, since_ms=2000, until_ms=3000)
    found = await read_all(reader)

    assert [e.time_ms for e in found] == [2500]
    assert reader.unreadable == 0


async def test_one_sided_periods(client: aioredis.Redis) -> None:
    for ms in (1000, 2000, 3000):
        await append(client, f"{ms}-0", entry(ms))

    since = await read_all(read_entries(client, KEY, since_ms=2000, until_ms=None))
    until = await read_all(read_entries(client, KEY, since_ms=None, until_ms=2000))

    assert [e.time_ms for e in since] == [2000, 3000]
    assert [e.time_ms for e in until] == [1000, 2000]


async def test_a_period_before_the_epoch_or_ending_before_it_starts(
    client: aioredis.Redis,
) -> None:
    await append(client, "1000-0", entry(1000))

    before_epoch = await read_all(read_entries(client, KEY, since_ms=-5000, until_ms=None))
    backwards = await read_all(read_entries(client, KEY, since_ms=3000, until_ms=1000))
    all_before = await read_all(read_entries(client, KEY, since_ms=None, until_ms=-1))

    assert [e.time_ms for e in before_epoch] == [1000]
    assert backwards == []
    assert all_before == []


async def test_a_missing_stream_reads_as_empty(client: aioredis.Redis) -> None:
    reader = read_entries(client, KEY, since_ms=None, until_ms=None)
    assert await read_all(reader) == []
    assert reader.unreadable == 0


async def test_batch_must_be_positive(client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="batch must be at least 1, not 0"):
        read_entries(client, KEY, since_ms=None, until_ms=None, batch=0)


# Summarizing


def test_every_figure_of_the_summary() -> None:
    entries = [
        entry(NOV_1 + 5000, person="alice", campaign="spring-sale", segment="eu"),
        entry(NOV_1 + 1000, person="alice", campaign="spring-sale", segment="eu"),
        entry(NOV_1 + 9000, person="bob", campaign="spring-sale", segment=""),
        entry(
            NOV_1 + 3000,
            person="bob",
            campaign="winter",
            segment="eu",
            outcome="segment",
            reason="frequency-cap",
            rule="daily",
        ),
        entry(
            NOV_1 + 4000,
            person="carol",
            campaign="winter",
            segment="eu/de",
            outcome="segment",
            reason="frequency-cap",
            rule="daily",
            shadow=True,
        ),
        entry(
            NOV_1 + 2000,
            person="",
            campaign=None,
            segment=None,
            outcome="segment",
            reason="invalid-marker",
            rule="marker",
        ),
        entry(
            NOV_1 + 6000,
            person="",
            campaign="winter",
            segment="",
            outcome="segment",
            reason="anonymous",
            rule="consent.anonymous",
        ),
    ]

    summary = summarize(entries, unreadable=2)

    assert summary.decisions == 7
    assert summary.unreadable == 2
    assert dict(summary.outcomes) == {"segment": 4, "personalized": 3}
    assert list(summary.outcomes) == ["segment", "personalized"]  # most common first
    assert dict(summary.reasons) == {
        "allowed": 3,
        "frequency-cap": 2,
        "anonymous": 1,
        "invalid-marker": 1,
    }
    assert list(summary.reasons)[:2] == ["allowed", "frequency-cap"]
    # Personalized decisions have no rule; they are not counted under one.
    assert dict(summary.rules) == {"daily": 2, "consent.anonymous": 1, "marker": 1}
    assert {
        name: (c.decisions, c.personalized, c.segment) for name, c in summary.campaigns.items()
    } == {
        "spring-sale": (3, 3, 0),
        "winter": (3, 0, 3),
        "(unknown)": (1, 0, 1),
    }
    assert {
        name: (c.decisions, c.personalized, c.segment) for name, c in summary.segments.items()
    } == {
        "eu": (3, 2, 1),
        "(everyone)": (2, 1, 1),
        "eu/de": (1, 0, 1),
        "(unknown)": (1, 0, 1),
    }
    assert list(summary.segments) == ["eu", "(everyone)", "(unknown)", "eu/de"]
    assert summary.shadow == 1
    assert summary.people == 3  # alice, bob, carol; not-signed-in people are not people counted
    assert summary.not_signed_in == 2
    assert summary.first_ms == NOV_1 + 1000
    assert summary.last_ms == NOV_1 + 9000


def test_an_empty_summary() -> None:
    summary = summarize([])

    assert summary.decisions == 0
    assert summary.people == 0
    assert summary.first_ms is None and summary.last_ms is None
    assert summary.fairness.rates == ()
    assert summary.fairness.ratio is None
    assert summary.fairness.highest is None and summary.fairness.lowest is None


def test_an_outcome_neither_personalized_nor_segment_counts_only_as_a_decision() -> None:
    summary = summarize([entry(outcome="future-outcome")])
    counts = summary.campaigns["spring-sale"]
    assert (counts.decisions, counts.personalized, counts.segment) == (1, 0, 0)


def test_the_tally_adds_entries_one_at_a_time() -> None:
    tally = Tally()
    tally.add(entry(person="a"))
    tally.add(entry(person="b"))
    assert tally.summary().people == 2
    assert tally.summary() == summarize([entry(person="a"), entry(person="b")])


def test_segment_labels() -> None:
    assert segment_label("") == "(everyone)"
    assert segment_label(None) == "(unknown)"
    assert segment_label("eu/de") == "eu/de"


# Fairness


def test_fallback_rate_per_segment_and_the_ratio_between_extremes() -> None:
    entries = decisions("eu", 40, 12) + decisions("us", 50, 10) + decisions("apac", 30, 6)

    fairness = summarize(entries).fairness

    assert [(r.segment, r.decisions, r.fallbacks) for r in fairness.rates] == [
        ("eu", 40, 12),
        ("apac", 30, 6),
        ("us", 50, 10),
    ]
    assert fairness.rates[0].rate == pytest.approx(0.30)
    assert fairness.highest is not None and fairness.highest.segment == "eu"
    assert fairness.lowest is not None and fairness.lowest.segment == "us"
    assert fairness.ratio == pytest.approx(1.5)
    assert fairness.left_out == 0
    assert fairness.min_decisions == 30


def test_a_persons_own_choices_do_not_count_toward_fairness() -> None:
    choices = [
        fallback("eu", reason="consent", rule="consent.gpc"),
        fallback("eu", reason="preference", rule="consent.preference"),
        fallback("eu", reason="anonymous", rule="consent.anonymous"),
        # Nor a decision that could not be made at all.
        fallback("eu", reason="invalid-marker", rule="marker"),
        fallback("eu", reason="internal-error", rule="internal"),
    ] * 20
    entries = decisions("eu", 40, 12) + decisions("us", 50, 10) + choices

    fairness = summarize(entries).fairness

    assert [(r.segment, r.decisions, r.fallbacks) for r in fairness.rates] == [
        ("eu", 40, 12),
        ("us", 50, 10),
    ]
    assert fairness.ratio == pytest.approx(1.5)


def test_every_limit_the_policy_decides_counts_as_a_fallback() -> None:
    limits = [
        fallback("eu", reason=reason)
        for reason in ("frequency-cap", "budget", "creepiness", "quiet-hours", "store-unavailable")
    ]
    # A store fault that personalizes anyway is a decision about the segment, not a fallback.
    allowed = [
        entry(segment="eu", reason="transactional"),
        entry(segment="eu", reason="store-unavailable"),
    ]

    fairness = summarize(limits + allowed, min_decisions=1).fairness

    assert [(r.segment, r.decisions, r.fallbacks) for r in fairness.rates] == [("eu", 7, 5)]


def test_every_reason_is_either_counted_a_choice_or_not_a_decision() -> None:
    not_decided = {"invalid-marker", "internal-error"}
    for reason in Reason:
        assert reason.value in FAIRNESS_REASONS | CHOICE_REASONS | LAW_REASONS | not_decided, reason
    assert not FAIRNESS_REASONS & CHOICE_REASONS


def test_a_lowest_rate_of_zero_makes_the_ratio_unbounded() -> None:
    summary = summarize(decisions("eu", 40, 8) + decisions("us", 40, 0))

    assert summary.fairness.ratio == math.inf
    assert as_dict(summary)["fairness"]["ratio"] is None
    assert as_dict(summary)["fairness"]["ratio_unbounded"] is True
    assert (
        "  highest/lowest: unbounded (eu 20.0%, us 0.0%: no fallback at all there)"
        in text(summary, period="November").splitlines()
    )


def test_equal_rates_have_a_ratio_of_one_also_when_both_are_zero() -> None:
    assert summarize(decisions("eu", 40, 0) + decisions("us", 30, 0)).fairness.ratio == 1.0
    assert summarize(decisions("eu", 40, 4) + decisions("us", 30, 3)).fairness.ratio == 1.0


def test_a_single_segment_has_nothing_to_compare() -> None:
    summary = summarize(decisions("eu", 40, 4) + decisions("us", 29, 3))

    assert [r.segment for r in summary.fairness.rates] == ["eu"]
    assert summary.fairness.ratio is None
    assert summary.fairness.left_out == 1
    report = text(summary, period="November").splitlines()
    assert (
        "  highest/lowest: only one segment has 30 or more such decisions, "
        "nothing to compare it with"
    ) in report
    assert "  1 segment left out: fewer than 30 such decisions each" in report
    assert as_dict(summary)["fairness"]["ratio"] is None
    assert as_dict(summary)["fairness"]["ratio_unbounded"] is False


def test_segments_below_min_decisions_are_left_out() -> None:
    entries = decisions("eu", 30, 3) + decisions("us", 29, 29) + decisions("apac", 5, 5)

    fairness = summarize(entries).fairness
    looser = summarize(entries, min_decisions=5).fairness

    assert [r.segment for r in fairness.rates] == ["eu"]  # exactly 30 is enough
    assert fairness.left_out == 2
    assert [r.segment for r in looser.rates] == ["apac", "us", "eu"]
    assert looser.left_out == 0
    assert looser.ratio == pytest.approx(10.0)


def test_no_segment_with_enough_decisions() -> None:
    summary = summarize(decisions("eu", 10, 1))

    assert summary.fairness.rates == ()
    assert summary.fairness.left_out == 1
    assert (
        "  no segment has 30 or more such decisions: nothing to compare"
        in text(summary, period="November").splitlines()
    )


def test_min_decisions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_decisions must be at least 1, not 0"):
        summarize([], min_decisions=0)


# The report


def report_summary() -> Summary:
    entries = (
        decisions("eu", 40, 12)
        + decisions("us", 50, 10)
        + [fallback("", reason="consent", rule="consent.gpc")]
        + [
            entry(
                person="",
                segment="",
                shadow=True,
                outcome="segment",
                reason="budget",
                rule="creepiness.budget",
            )
        ]
    )
    return summarize(entries, unreadable=3)


def test_the_text_report_in_plain_words() -> None:
    report = text(report_summary(), period="2026-11-01 00:00:00 UTC to 2026-11-08 00:00:00 UTC")
    lines = report.splitlines()

    assert lines[0] == "throttle audit: 2026-11-01 00:00:00 UTC to 2026-11-08 00:00:00 UTC"
    assert lines[2] == (
        "92 decisions, the first at 2026-11-01 00:00:00 UTC, the last at 2026-11-01 00:00:00 UTC"
    )
    assert lines[3] == (
        "1 distinct signed-in person (counted by pseudonym only); "
        "1 decision for people not signed in"
    )
    assert lines[4] == "3 entries could not be read and are not counted"
    for heading in (
        "decisions by outcome",
        "decisions by reason",
        "decisions by rule (the rule that decided)",
        "decisions by campaign",
        "decisions by requested segment (every reason; fairness below counts fewer)",
        "fairness: fallback rate per segment",
    ):
        assert heading in lines
    assert "  personalized         68  73.9%" in lines
    assert "  segment              24  26.1%" in lines
    assert (
        "  shadow: 1 decision (1.1%) delivered personalized although a rule in shadow mode "
        "refused them"
    ) in lines
    assert "  frequency-cap         22  23.9%  a frequency cap" in lines
    assert "  consent                1   1.1%  no consent (the person's choice)" in lines
    assert "  daily                     22  23.9%" in lines
    assert "  campaign     decisions  personalized  fell back  fallback rate" in lines
    assert "  spring-sale         92            68         24          26.1%" in lines
    assert "  (everyone)          2             0          2         100.0%" in lines
    assert "  segment  decisions  fallbacks   rate" in lines
    assert "  eu              40         12  30.0%" in lines
    assert "  us              50         10  20.0%" in lines
    assert "  highest/lowest = 1.5 (eu 30.0%, us 20.0%)" in lines
    assert (
        "  transactional). A person's own choices (consent, preference, not signed in) are left"
        in lines
    )
    assert report.endswith("\n")


def test_the_text_reports_columns_are_aligned() -> None:
    lines = text(report_summary(), period="November").splitlines()
    start = lines.index("decisions by reason") + 1
    table = lines[start : lines.index("", start)]
    head = table[0]
    # The count column ends where its heading ends, on every row.
    end = head.index("decisions") + len("decisions")
    for row in table[1:]:
        assert row[end - 1].isdigit() and row[end] == " ", row


def test_a_report_without_decisions() -> None:
    assert text(summarize([]), period="November") == "throttle audit: November\n\nno decisions\n"
    assert text(summarize([], unreadable=2), period="November").splitlines()[3] == (
        "2 entries could not be read and are not counted"
    )


def test_a_report_without_shadow_decisions_rules_or_unreadable_entries() -> None:
    lines = text(summarize([entry()]), period="November").splitlines()

    assert lines[2].startswith("1 decision, ")
    assert "  shadow: none (no rule in shadow mode refused anything)" in lines
    assert not any("could not be read" in line for line in lines)
    assert "decisions by rule (the rule that decided)" not in lines


def test_the_summary_as_json_ready_data() -> None:
    data = as_dict(report_summary())

    assert json.loads(json.dumps(data)) == data
    assert data["decisions"] == 92
    assert data["unreadable"] == 3
    assert data["people"] == 1
    assert data["not_signed_in"] == 1
    assert data["shadow"] == 1
    assert data["first_ms"] == NOV_1 and data["last_ms"] == NOV_1
    assert data["outcomes"] == {"personalized": 68, "segment": 24}
    assert data["reasons"] == {"allowed": 68, "frequency-cap": 22, "budget": 1, "consent": 1}
    assert data["rules"] == {"daily": 22, "consent.gpc": 1, "creepiness.budget": 1}
    assert data["campaigns"] == {
        "spring-sale": {"decisions": 92, "personalized": 68, "segment": 24}
    }
    assert data["segments"]["(everyone)"] == {"decisions": 2, "personalized": 0, "segment": 2}
    assert data["fairness"] == {
        "counted_reasons": [
            "allowed",
            "budget",
            "calculus",
            "creepiness",
            "frequency-cap",
            "quiet-hours",
            "store-unavailable",
            "transactional",
        ],
        "min_decisions": 30,
        "segments": [
            {"segment": "eu", "decisions": 40, "fallbacks": 12, "rate": 0.3},
            {"segment": "us", "decisions": 50, "fallbacks": 10, "rate": 0.2},
        ],
        "left_out": 1,
        "ratio": pytest.approx(1.5),
        "ratio_unbounded": False,
    }


# Periods


NOW = NOV_1 / 1000 + 86_400.25


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("7d", NOV_1 + DAY_MS + 250 - 7 * DAY_MS),
        ("24h", NOV_1 + 250),
        ("90m", NOV_1 + DAY_MS + 250 - 90 * 60_000),
        (" 1d ", NOV_1 + 250),
        ("2026-11-01", NOV_1),
        ("2026-11-01T12:00:00+01:00", NOV_1 + 11 * 3_600_000),
        ("2026-11-01T12:00:00Z", NOV_1 + 12 * 3_600_000),
        ("2026-11-01T12:00", NOV_1 + 12 * 3_600_000),  # no offset: UTC
    ],
)
def test_parse_since(given: str, expected: int) -> None:
    assert parse_since(given, NOW) == expected


@pytest.mark.parametrize("given", ["last week", "7 days ago", "", "2026-13-01", "d7"])
def test_parse_since_says_what_it_accepts(given: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_since(given, NOW)
    assert str(raised.value) == f"{given!r} is not a duration (7d, 24h) or a date (2026-11-01)"


def test_parse_since_keeps_the_reason_a_duration_cannot_be_used() -> None:
    with pytest.raises(ValueError, match="must be longer than 0 and at most 366d"):
        parse_since("400d", NOW)
    with pytest.raises(ValueError, match="must be longer than 0 and at most 366d"):
        parse_since("0h", NOW)


# The command


async def test_audit_prints_the_report_of_the_period(
    client: aioredis.Redis, redis_url: str
) -> None:
    key = "brand:audit"
    await append(client, f"{NOV_1 - 1}-0", entry(NOV_1 - 1, person="before"), key=key)
    for offset, person in enumerate(["alice", "bob", "alice"]):
        await append(client, f"{NOV_1 + offset}-0", entry(NOV_1 + offset, person=person), key=key)
    await append(client, f"{NOV_1 + 3}-0", b"broken", key=key)
    await append(
        client, f"{NOV_1 + DAY_MS + 1}-0", entry(NOV_1 + DAY_MS + 1, person="after"), key=key
    )
    out = io.StringIO()

    status = await audit(
        redis_url, prefix="brand:", since_ms=NOV_1, until_ms=NOV_1 + DAY_MS, out=out, as_json=False
    )

    lines = out.getvalue().splitlines()
    assert status == 0
    assert lines[0] == "throttle audit: 2026-11-01 00:00:00 UTC to 2026-11-02 00:00:00 UTC"
    assert lines[2].startswith("3 decisions, the first at 2026-11-01 00:00:00 UTC")
    assert lines[3].startswith("2 distinct signed-in people")
    assert lines[4] == "1 entry could not be read and is not counted"


async def test_audit_as_json(client: aioredis.Redis, redis_url: str) -> None:
    await append(client, f"{NOV_1}-0", entry(NOV_1))
    out = io.StringIO()

    status = await audit(
        redis_url, prefix="throttle:", since_ms=NOV_1, until_ms=None, out=out, as_json=True
    )

    data = json.loads(out.getvalue())
    assert status == 0
    assert data["key"] == KEY
    assert data["since_ms"] == NOV_1 and data["until_ms"] is None
    assert data["decisions"] == 1
    assert data["outcomes"] == {"personalized": 1}


@pytest.mark.parametrize(
    ("since_ms", "until_ms", "period"),
    [
        (NOV_1 + 3 * DAY_MS, None, "since 2026-11-04 00:00:00 UTC"),
        (None, NOV_1 - 2 * DAY_MS, "until 2026-10-30 00:00:00 UTC"),
        (NOV_1, NOV_1 + DAY_MS, "2026-11-01 00:00:00 UTC to 2026-11-02 00:00:00 UTC"),
    ],
)
async def test_audit_says_when_the_period_holds_no_entry(
    client: aioredis.Redis, redis_url: str, since_ms: int | None, until_ms: int | None, period: str
) -> None:
    await append(client, f"{NOV_1 - DAY_MS}-0", entry(NOV_1 - DAY_MS))
    await append(client, f"{NOV_1 + 2 * DAY_MS}-0", entry(NOV_1 + 2 * DAY_MS))
    out = io.StringIO()

    status = await audit(
        redis_url,
        prefix="throttle:",
        since_ms=since_ms,
        until_ms=until_ms,
        out=out,
        as_json=False,
    )

    assert status == 1
    assert out.getvalue() == f"no audit entries in throttle:audit for {period}\n"


async def test_audit_counts_unreadable_entries_when_nothing_else_is_there(
    client: aioredis.Redis, redis_url: str
) -> None:
    await append(client, "1000-0", b"broken")
    out = io.StringIO()

    status = await audit(
        redis_url, prefix="throttle:", since_ms=None, until_ms=None, out=out, as_json=False
    )

    assert status == 1
    assert out.getvalue() == (
        "no audit entries in throttle:audit for the whole audit trail (1 could not be read)\n"
    )


async def test_audit_says_when_there_is_no_trail_at_all(redis_url: str) -> None:
    out = io.StringIO()

    status = await audit(
        redis_url, prefix="other:", since_ms=None, until_ms=None, out=out, as_json=False
    )

    assert status == 1
    assert out.getvalue() == (
        f"no audit trail at other:audit in Redis at {redis_url}: is the prefix right?\n"
    )


async def test_audit_as_json_without_entries_is_still_json(redis_url: str) -> None:
    out = io.StringIO()

    status = await audit(
        redis_url, prefix="throttle:", since_ms=None, until_ms=None, out=out, as_json=True
    )

    assert status == 1
    data = json.loads(out.getvalue())
    assert data["decisions"] == 0
    assert data["first_ms"] is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://auditor:s3cret-pw@127.0.0.1:1/0",
        "redis://:s3cret-pw@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=s3cret-pw",
    ],
)
async def test_unreachable_redis_is_store_unavailable_without_the_password(url: str) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        await audit(
            url, prefix="throttle:", since_ms=None, until_ms=None, out=io.StringIO(), as_json=False
        )

    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert message.startswith("cannot read the audit trail throttle:audit from Redis at redis://")
    assert "127.0.0.1:1" in message
    # The cause, so the reader knows what to fix.
    assert "onnect" in message


async def test_a_key_that_is_not_a_stream_is_store_unavailable(
    client: aioredis.Redis, redis_url: str
) -> None:
    await client.set(KEY, b"not a stream")

    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await audit(
            redis_url,
            prefix="throttle:",
            since_ms=None,
            until_ms=None,
            out=io.StringIO(),
            as_json=False,
        )


async def test_a_url_that_is_not_a_redis_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        await audit(
            "http://auditor:s3cret-pw@127.0.0.1:1/",
            prefix="throttle:",
            since_ms=None,
            until_ms=None,
            out=io.StringIO(),
            as_json=False,
        )
    assert str(raised.value).startswith("http://auditor@127.0.0.1:1/ is not a Redis URL: ")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://auditor:pw@host:6379/0", "redis://auditor@host:6379/0"),
        ("redis://:pw@host:6379/0", "redis://host:6379/0"),
        (
            "rediss://host:6380/1?password=pw&ssl_cert_reqs=none",
            "rediss://host:6380/1?ssl_cert_reqs=none",
        ),
        ("unix:///run/redis.sock?db=2&PASSWORD=pw", "unix:///run/redis.sock?db=2"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (
            "redis+sentinel://:pw@h1:26379,h2:26379/shop?sentinel_password=spw&db=1",
            "redis+sentinel://h1:26379,h2:26379/shop?db=1",
        ),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
