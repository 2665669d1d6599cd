"""What a replay found, for people: a text report, and the same figures as plain data.

One column per policy; with two, a third says what changed from the first to the second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from throttle.decision import Reason
from throttle.policy import RATE_KINDS, format_duration
from throttle.simulate.replay import PERSONALIZED, SCORE_BINS, Replay, Tally

# Reasons in the order a marketer reads them: what the policy limits, then what people chose.
REASONS = (
    Reason.FREQUENCY_CAP, Reason.BUDGET, Reason.CREEPINESS, Reason.CALCULUS,
    Reason.QUIET_HOURS, Reason.SPECIAL_CATEGORY, Reason.AUTOMATED_DECISION, Reason.CONSENT,
    Reason.PREFERENCE, Reason.ANONYMOUS, Reason.STORE_UNAVAILABLE, Reason.INVALID_MARKER,
    Reason.INTERNAL_ERROR,
)  # fmt: skip
# Content about the message's category (the middle band) is neither personalized nor segment.
CATEGORY = "category"
# Each reason's words, from the one vocabulary (throttle/decision.py).
REASON_WORDS = {reason: reason.label for reason in REASONS}


def label(tally: Tally) -> str:
    markets = f" + markets {', '.join(tally.markets)}" if tally.markets else ""
    return f"{tally.policy.name} @{tally.policy.version}{markets}"


def reasons_seen(tallies: Iterable[Tally]) -> list[Reason]:
    seen = {outcome for tally in tallies for outcome in tally.outcomes}
    return [reason for reason in REASONS if reason.value in seen]


def rules_seen(tallies: list[Tally]) -> list[str]:
    """Every rule that refused anything, caps in policy order first."""
    rules: dict[str, None] = {}
    for tally in tallies:
        rules.update((cap.name, None) for cap in tally.policy.caps if tally.rules[cap.name])
    for tally in tallies:
        rules.update((rule, None) for rule, _ in tally.rules.most_common())
    return list(rules)


def campaigns_seen(tallies: list[Tally]) -> list[str]:
    return sorted({name for tally in tallies for name in tally.campaigns})


def share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def period(replay: Replay) -> str:
    if replay.first_t is None or replay.last_t is None:
        return "no messages"
    first = dt.datetime.fromtimestamp(replay.first_t, dt.UTC)
    last = dt.datetime.fromtimestamp(replay.last_t, dt.UTC)
    return f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"


def left_out(replay: Replay) -> str:
    """What a report says when trace lines could not be used; nothing when all could."""
    if not replay.skipped_lines:
        return ""
    return f"; {replay.skipped_lines:,} lines of the trace could not be used and are left out"


def text(replay: Replay, trace: str) -> str:
    """The report as a terminal shows it."""
    tallies = replay.tallies
    first = tallies[0]
    rate = first.messages / replay.seconds if replay.seconds else 0.0
    lines = [
        f"{trace}: {first.messages:,} messages to {len(first.people):,} people, {period(replay)}"
        + left_out(replay),
        f"replayed in {replay.seconds:.1f} s ({rate:,.0f} messages a second"
        + (f", each decided by {len(tallies)} policies)" if len(tallies) > 1 else ")"),
        "",
    ]
    columns = [label(tally) for tally in tallies]
    compare = len(tallies) == 2
    if compare:
        columns.append("change")
    table: list[list[str]] = [["", *columns]]

    def row(name: str, counts: list[int], wholes: list[int]) -> list[str]:
        cells = [
            f"{count:,} {share(count, whole):6.1%}"
            for count, whole in zip(counts, wholes, strict=True)
        ]
        if compare:
            cells.append(_change(counts, wholes))
        return [name, *cells]

    messages = [tally.messages for tally in tallies]
    table.append(row("personalized", [t.personalized for t in tallies], messages))
    if any(t.outcomes[CATEGORY] for t in tallies):
        counts = [t.outcomes[CATEGORY] for t in tallies]
        table.append(row("content about its category", counts, messages))
    table.append(["segment content, because of:", *[""] * len(columns)])
    for reason in reasons_seen(tallies):
        counts = [t.outcomes[reason.value] for t in tallies]
        table.append(row(f"  {REASON_WORDS[reason]}", counts, messages))
    if any(t.shadow for t in tallies):
        table.append(row("shadow: delivered anyway", [t.shadow for t in tallies], messages))
    lines += _aligned(table)

    if any(t.markets for t in tallies):
        lines += [
            "",
            "decided by each market's policy (the base: no market, or one without a policy)",
        ]
        table = [["", *columns]]
        for name in sorted({name for t in tallies for name in t.policies}):
            counts = [t.policies[name] for t in tallies]
            cells = [
                f"{count:,} {share(count, whole):6.1%}"
                for count, whole in zip(counts, messages, strict=True)
            ]
            table.append([f"  {name}", *cells, *([""] if compare else [])])
        lines += _aligned(table)

    rules = rules_seen(tallies)
    if rules:
        lines += ["", "rules: messages refused, and people refused at least once"]
        table = [["", *columns]]
        for rule in rules:
            cells = [
                f"{t.rules[rule]:,} msgs, {len(t.people_by_rule.get(rule, ())):,} people"
                for t in tallies
            ]
            if compare:
                cells.append(_signed(tallies[1].rules[rule] - tallies[0].rules[rule]) + " msgs")
            table.append([f"  {rule}", *cells])
        lines += _aligned(table)

    lines += ["", "campaigns: personalized of messages"]
    table = [["", *columns]]
    for campaign in campaigns_seen(tallies):
        counters = [t.campaigns.get(campaign) for t in tallies]
        counts = [c[PERSONALIZED] if c else 0 for c in counters]
        wholes = [sum(c.values()) if c else 0 for c in counters]
        table.append(row(f"  {campaign}", counts, wholes))
    lines += _aligned(table)

    lines += ["", "creepiness scores of all messages"]
    table = [["", *[label(tally) for tally in tallies]]]
    wholes = [sum(t.scores) for t in tallies]
    tallest = max(share(n, w) for t, w in zip(tallies, wholes, strict=True) for n in t.scores)
    for index in range(SCORE_BINS):
        low, high = index / SCORE_BINS, (index + 1) / SCORE_BINS
        counts = [t.scores[index] for t in tallies]
        cells = [
            f"{_bar(share(share(c, w), tallest))} {share(c, w):6.1%}"
            for c, w in zip(counts, wholes, strict=True)
        ]
        table.append([f"  {low:.1f}-{high:.1f}", *cells])
    lines += _aligned(table)
    lines += _alerts(tallies)
    return "\n".join(lines)


def _alerts(tallies: list[Tally]) -> list[str]:
    """The alerts each policy would have fired, for the policies that have rate conditions."""
    lines: list[str] = []
    for tally in tallies:
        if not any(c.kind in RATE_KINDS for c in tally.policy.alerts.conditions):
            continue
        quiet = format_duration(tally.policy.alerts.quiet)
        count = len(tally.alerts)
        lines += [
            "",
            f"alerts {label(tally)} would have fired: {count:,}"
            + (f" (each at most once per {quiet})" if count else ""),
        ]
        for fired in tally.alerts:
            when = dt.datetime.fromtimestamp(fired.t, dt.UTC)
            lines.append(
                f"  {when:%Y-%m-%d %H:%M:%S}  {fired.rise.condition.name}  {fired.rise.summary()}"
            )
    return lines


def as_dict(replay: Replay, trace: str) -> dict[str, Any]:
    """The report's figures as JSON-ready data."""
    return {
        "trace": trace,
        "first_t": replay.first_t,
        "last_t": replay.last_t,
        "seconds": replay.seconds,
        "skipped_lines": replay.skipped_lines,
        "policies": [
            {
                "name": tally.policy.name,
                "version": tally.policy.version,
                "source": tally.policy.source,
                "messages": tally.messages,
                "people": len(tally.people),
                "outcomes": dict(tally.outcomes),
                "shadow": tally.shadow,
                "rules": {
                    rule: {"messages": count, "people": len(tally.people_by_rule.get(rule, ()))}
                    for rule, count in tally.rules.items()
                },
                "campaigns": {name: dict(counts) for name, counts in tally.campaigns.items()},
                "markets": {
                    name: f"{policy.name}@{policy.version}"
                    for name, policy in tally.markets.items()
                },
                "decided_by": dict(tally.policies),
                "scores": list(tally.scores),
                "alerts": [
                    {
                        "t": fired.t,
                        "alert": fired.rise.condition.name,
                        "kind": fired.rise.condition.kind,
                        "per": fired.rise.per,
                        "subject": fired.rise.subject,
                        "summary": fired.rise.summary(),
                        "figures": fired.rise.figures(),
                    }
                    for fired in tally.alerts
                ],
            }
            for tally in replay.tallies
        ],
    }


def _change(counts: list[int], wholes: list[int]) -> str:
    points = (share(counts[1], wholes[1]) - share(counts[0], wholes[0])) * 100
    return f"{_signed(counts[1] - counts[0])} ({points:+.1f} pts)"


def _signed(number: int) -> str:
    return f"{number:+,}" if number else "0"


def _bar(fraction: float, width: int = 20) -> str:
    return ("█" * round(fraction * width)).ljust(width)


def _aligned(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
