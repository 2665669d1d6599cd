"""The replay as one self-contained HTML page: inline SVG charts, no scripts, nothing fetched,
so it can be mailed, attached to a ticket or opened offline."""

from __future__ import annotations

import datetime as dt
from html import escape

from throttle.decision import Reason
from throttle.policy import RATE_KINDS
from throttle.simulate.replay import PERSONALIZED, SCORE_BINS, Replay, Tally
from throttle.simulate.report import (
    REASON_WORDS,
    campaigns_seen,
    label,
    left_out,
    period,
    reasons_seen,
    rules_seen,
    share,
)

_COLOURS = {
    PERSONALIZED: "#2e7d32",
    Reason.FREQUENCY_CAP.value: "#ef6c00",
    Reason.BUDGET.value: "#f9a825",
    Reason.CREEPINESS.value: "#c62828",
    Reason.QUIET_HOURS.value: "#5e35b1",
    Reason.CONSENT.value: "#1565c0",
    Reason.ANONYMOUS.value: "#78909c",
    Reason.SPECIAL_CATEGORY.value: "#ad1457",
    Reason.PREFERENCE.value: "#00838f",
    Reason.CALCULUS.value: "#6d4c41",
    "category": "#7cb342",
}
_OTHER = "#9e9e9e"
_POLICY_COLOURS = ("#37474f", "#00838f")
_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       color: #212121; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem; }
.meta { color: #616161; margin-top: 0; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid #e0e0e0; border-radius: 8px; padding: .8rem 1.1rem; min-width: 14rem; }
.card .big { font-size: 2rem; font-weight: 600; }
.legend span { display: inline-block; margin-right: 1rem; font-size: .9rem; }
.legend i { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem;
            vertical-align: -1px; border-radius: 2px; }
svg text { font: 12px system-ui, sans-serif; fill: #424242; }
table { border-collapse: collapse; margin-top: .6rem; font-size: .9rem; }
td, th { padding: .2rem .8rem; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; }
"""


def page(replay: Replay, trace: str) -> str:
    """The whole report as an HTML document."""
    tallies = replay.tallies
    names = " vs ".join(escape(label(t)) for t in tallies)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>throttle simulate: {names}</title><style>{_STYLE}</style></head><body>",
        f"<h1>What {names} does to {escape(trace)}</h1>",
        f'<p class="meta">{tallies[0].messages:,} messages to {len(tallies[0].people):,} people, '
        f"{escape(period(replay) + left_out(replay))}. "
        "Shadow decisions count as what enforcing would do.</p>",
        _cards(tallies),
        "<h2>What each message got</h2>",
        _outcomes(tallies),
        "<h2>Rules: messages refused</h2>",
        _rules(tallies),
        "<h2>Campaigns</h2>",
        _campaigns(tallies),
        "<h2>Creepiness scores</h2>",
        _scores(tallies),
        _alerts(tallies),
        "</body></html>",
    ]
    return "\n".join(parts)


def _cards(tallies: list[Tally]) -> str:
    cards = []
    for tally in tallies:
        personalized = share(tally.personalized, tally.messages)
        cards.append(
            f'<div class="card"><div>{escape(label(tally))}</div>'
            f'<div class="big">{personalized:.1%}</div><div>personalized '
            f"({tally.personalized:,} of {tally.messages:,})</div></div>"
        )
    if len(tallies) == 2:
        before, after = (share(t.personalized, t.messages) for t in tallies)
        cards.append(
            f'<div class="card"><div>change</div><div class="big">'
            f"{(after - before) * 100:+.1f} pts</div>"
            f"<div>{tallies[1].personalized - tallies[0].personalized:+,} messages "
            "personalized</div></div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _legend(items: list[tuple[str, str]]) -> str:
    spans = "".join(f'<span><i style="background:{c}"></i>{escape(n)}</span>' for n, c in items)
    return f'<p class="legend">{spans}</p>'


def _policy_legend(tallies: list[Tally]) -> str:
    return _legend([(label(t), _POLICY_COLOURS[i]) for i, t in enumerate(tallies)])


def _grouped_bars(rows: list[tuple[str, list[int], list[str]]], tallies: list[Tally]) -> str:
    """Horizontal bars, one per policy for each row; `rows` are (name, values, captions)."""
    bar, gap, left, width = 16, 10, 190, 470
    most = max((v for _, values, _ in rows for v in values), default=0) or 1
    height = len(rows) * (bar * len(tallies) + gap) + gap
    shapes = []
    y = gap
    for name, values, captions in rows:
        shapes.append(
            f'<text x="{left - 8}" y="{y + bar * len(tallies) / 2 + 4}" '
            f'text-anchor="end">{escape(name)}</text>'
        )
        for index, (value, caption) in enumerate(zip(values, captions, strict=True)):
            length = value / most * width
            shapes.append(
                f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar - 3}" '
                f'fill="{_POLICY_COLOURS[index]}"><title>{escape(caption)}</title></rect>'
                f'<text x="{left + length + 5:.1f}" y="{y + bar - 5}">{escape(caption)}</text>'
            )
            y += bar
        y += gap
    svg = f'<svg width="{left + width + 170}" height="{height}" role="img">{"".join(shapes)}</svg>'
    return _policy_legend(tallies) + svg


def _outcomes(tallies: list[Tally]) -> str:
    rows = []
    outcomes = [(PERSONALIZED, "personalized"), ("category", "content about its category")] + [
        (reason.value, f"segment: {REASON_WORDS[reason]}") for reason in reasons_seen(tallies)
    ]
    for key, name in outcomes:
        values = [t.outcomes[key] for t in tallies]
        captions = [
            f"{v:,} ({share(v, t.messages):.1%})" for v, t in zip(values, tallies, strict=True)
        ]
        rows.append((name, values, captions))
    return _grouped_bars(rows, tallies)


def _rules(tallies: list[Tally]) -> str:
    rules = rules_seen(tallies)
    if not rules:
        return "<p>No rule refused a message.</p>"
    rows = []
    for rule in rules:
        values = [t.rules[rule] for t in tallies]
        people = [len(t.people_by_rule.get(rule, ())) for t in tallies]
        captions = [f"{v:,} messages, {p:,} people" for v, p in zip(values, people, strict=True)]
        rows.append((rule, values, captions))
    return _grouped_bars(rows, tallies)


def _campaigns(tallies: list[Tally]) -> str:
    """A 100% bar per campaign and policy: personalized, then each reason for segment content."""
    keys = [PERSONALIZED, "category"] + [reason.value for reason in reasons_seen(tallies)]
    bar, gap, left, width = 18, 12, 190, 520
    campaigns = campaigns_seen(tallies)
    height = len(campaigns) * (bar * len(tallies) + gap) + gap
    shapes = []
    y = gap
    for campaign in campaigns:
        shapes.append(
            f'<text x="{left - 8}" y="{y + bar * len(tallies) / 2 + 4}" '
            f'text-anchor="end">{escape(campaign)}</text>'
        )
        for index, tally in enumerate(tallies):
            counts = tally.campaigns.get(campaign)
            total = sum(counts.values()) if counts else 0
            x = float(left)
            for key in keys:
                part = share(counts[key], total) if counts else 0.0
                if part:
                    shapes.append(
                        f'<rect x="{x:.1f}" y="{y}" width="{part * width:.1f}" '
                        f'height="{bar - 3}" fill="{_COLOURS.get(key, _OTHER)}">'
                        f"<title>{escape(label(tally))}: {escape(key)} {part:.1%}</title></rect>"
                    )
                    x += part * width
            caption = f"{share(counts[PERSONALIZED], total):.0%}" if counts else "-"
            marker = "" if len(tallies) == 1 else f"{index + 1}: "
            shapes.append(
                f'<text x="{left + width + 6}" y="{y + bar - 6}">{marker}{caption}</text>'
            )
            y += bar
        y += gap
    svg = f'<svg width="{left + width + 90}" height="{height}" role="img">{"".join(shapes)}</svg>'
    names = [
        ("personalized", _COLOURS[PERSONALIZED]),
        ("about its category", _COLOURS["category"]),
    ] + [
        (REASON_WORDS[reason], _COLOURS.get(reason.value, _OTHER))
        for reason in reasons_seen(tallies)
    ]
    order = (
        ""
        if len(tallies) == 1
        else "<p>Bar 1 is " + " and bar 2 is ".join(escape(label(t)) for t in tallies) + ".</p>"
    )
    return _legend(names) + order + svg


def _scores(tallies: list[Tally]) -> str:
    """A histogram per policy; the dashed line is each policy's threshold."""
    column, left, top, plot = 52, 40, 10, 200
    per_bin = column / len(tallies)
    shares = [[share(n, sum(t.scores)) for n in t.scores] for t in tallies]
    most = max((s for row in shares for s in row), default=0) or 1
    shapes = []
    for index in range(SCORE_BINS):
        x0 = left + index * column
        for policy, row in enumerate(shares):
            height = row[index] / most * plot
            shapes.append(
                f'<rect x="{x0 + policy * per_bin + 3:.1f}" y="{top + plot - height:.1f}" '
                f'width="{per_bin - 6:.1f}" height="{height:.1f}" '
                f'fill="{_POLICY_COLOURS[policy]}"><title>{row[index]:.1%}</title></rect>'
            )
        shapes.append(
            f'<text x="{x0 + column / 2}" y="{top + plot + 16}" text-anchor="middle">'
            f"{index / SCORE_BINS:.1f}</text>"
        )
    for policy, tally in enumerate(tallies):
        x = left + tally.policy.creepiness.threshold * SCORE_BINS * column
        shapes.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot}" '
            f'stroke="{_POLICY_COLOURS[policy]}" stroke-dasharray="4 3"/>'
        )
    width = left + SCORE_BINS * column + 20
    svg = f'<svg width="{width}" height="{top + plot + 30}" role="img">{"".join(shapes)}</svg>'
    note = "<p>Share of messages by score; the dashed line is the policy's threshold.</p>"
    return _policy_legend(tallies) + note + svg


def _alerts(tallies: list[Tally]) -> str:
    """The alerts each policy would have fired, for policies with rate conditions."""
    parts = []
    for tally in tallies:
        if not any(c.kind in RATE_KINDS for c in tally.policy.alerts.conditions):
            continue
        rows = "".join(
            f"<tr><td>{dt.datetime.fromtimestamp(fired.t, dt.UTC):%Y-%m-%d %H:%M:%S}</td>"
            f"<td>{escape(fired.rise.condition.name)}</td>"
            f"<td>{escape(fired.rise.summary())}</td></tr>"
            for fired in tally.alerts
        )
        parts.append(
            f"<h2>Alerts {escape(label(tally))} would have fired: {len(tally.alerts):,}</h2>"
            + (f"<table><tr><th>UTC</th><th>alert</th><th>what</th></tr>{rows}</table>"
               if rows else "")
        )  # fmt: skip
    return "\n".join(parts)
