"""Decisions in plain words: what the "why am I seeing this" page tells a person.

A person has the right to know, in clear and plain language, how their data was used
(GDPR Art. 12-15), and an ad that says why it is shown is judged less intrusive when the reason
is acceptable (Kim, Barasz & John 2019, "Why Am I Seeing This Ad?", Journal of Consumer
Research 45(5)). So each audit entry becomes one sentence a person can read (what they saw and
why) and one sentence per creepiness factor (what it was about the message that counted, and
how much). Codes (reason, rule, factor names) stay in fields of their own, for support staff
and auditors; the sentences never contain them. The person's pseudonym is left out: it means
nothing to them and is not theirs to pass on.

```python
entry = AuditEntry.unpack(data)
page = explain(entry, zone="Europe/Berlin")
page["summary"]  # "You saw general content instead of a message personalized for you, ..."
```
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from throttle.audit import AuditEntry

_PERSONALIZED = "You saw this message personalized for you"
_SEGMENT = "You saw general content instead of a message personalized for you"

# Why a message was not personalized, as the end of "..., because ...".
_REFUSALS = {
    "frequency-cap": (
        "you had already received as many personalized messages as we allow in this period"
    ),
    "creepiness": "it would have used your data in a way we consider too intrusive",
    "budget": "you had received enough personalized messages recently",
    "quiet-hours": "it arrived during your quiet hours",
    "special-category": (
        "it would have used sensitive information about you, such as your health, which we "
        "only use with your explicit consent"
    ),
    "automated-decision": (
        "it set a price, a credit or an eligibility, which we never tailor to a profile of you"
    ),
    "calculus": "what it offered you did not outweigh how much of your data it used",
    "anonymous": "you were not signed in",
    "store-unavailable": "we could not check our limits at that moment and chose to be safe",
    "invalid-marker": "something went wrong on our side",
    "internal-error": "something went wrong on our side",
}
_CONSENT = {
    "consent.gpc": (
        "your browser asked us not to sell or share your data (Global Privacy Control)"
    ),
    "consent.tcf": "you did not consent to personalized content in the cookie banner",
}
_PREFERENCES = {
    "level.off": "you turned personalization off",
    "level.minimal": (
        "you chose minimal personalization, and this message used data you did not give us yourself"
    ),
}

_SIGNALS = {
    "cart": "what is in your cart",
    "purchase_history": "your purchase history",
    "browsing_history": "what you looked at on our site",
    "location.country": "your country",
    "location.city": "your city",
    "location.precise": "where you are right now",
    "demographics.age": "your age",
    "demographics.gender": "your gender",
    "household.children": "whether you have children",
    "financial": "information about your finances",
    "health": "information about your health",
    "sexual_orientation": "your sexual orientation",
    "religion": "your religion",
    "political_views": "your political views",
}

_FACTORS = {
    "inferred": "Some of this was inferred about you rather than given by you.",
    "third-party": "Some of this came from another company.",
    "explained": "It tells you why you see it, which makes it less intrusive.",
    "repetition": "You had seen this campaign before.",
    "ceiling": "The score cannot go above 1.",
}
_OTHER_FACTOR = "Something else about this message counted in how intrusive we judged it."

_UNITS = ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second"))


def signal_words(name: str) -> str:
    """A data category in a person's words: `"location.precise"` -> `"where you are right now"`.

    A category we have no words for is given by its name, with `_` and `.` read as spaces.
    """
    known = _SIGNALS.get(name)
    if known is not None:
        return known
    return " ".join(name.replace("_", " ").replace(".", " ").split())


def reason_words(reason: str, rule: str | None, outcome: str) -> str:
    """One sentence saying what the person saw and why, with no codes in it.

    - `reason`, `rule`: as in the decision (`"frequency-cap"`, `"per-campaign-daily"`).
    - `outcome`: `"personalized"` or `"segment"`; it decides how the sentence starts.

    ```python
    reason_words("quiet-hours", "quiet_hours", "segment")
    # "You saw general content instead of a message personalized for you, because it
    #  arrived during your quiet hours."
    ```
    """
    if outcome == "personalized":
        if reason == "allowed":
            return f"{_PERSONALIZED}: it stayed within every limit we set."
        if reason == "transactional":
            return (
                f"{_PERSONALIZED}, because it is a message you asked for, such as a receipt, "
                "so our limits on how many personalized messages you get do not apply to it."
            )
        if reason == "store-unavailable":
            return (
                f"{_PERSONALIZED}, although we could not check our limits at that moment, "
                "so it may have gone past them."
            )
        refusal = _refusal(reason, rule)
        return f"{_PERSONALIZED}, although {refusal}." if refusal else f"{_PERSONALIZED}."
    if outcome == "segment":
        refusal = _refusal(reason, rule)
        return f"{_SEGMENT}, because {refusal}." if refusal else f"{_SEGMENT}."
    if outcome == "category":
        return (
            "You saw content about a kind of product you showed interest in, rather than one "
            "picked for you exactly, because the exact message would have used your data "
            "more than we think right."
        )
    return "We have no record of whether this message was personalized for you."


def _refusal(reason: str, rule: str | None) -> str | None:
    if reason == "consent":
        return _CONSENT.get(rule or "", "you have not agreed to this use of your data")
    if reason == "preference":
        return _PREFERENCES.get(rule or "", "your personalization settings did not allow it")
    return _REFUSALS.get(reason)


def explain(entry: AuditEntry, *, zone: str | None = None) -> dict[str, Any]:
    """An audit entry as JSON-ready data for the person it concerns.

    - `zone`: the person's IANA time zone for `time`; UTC when `None` or not known here.

    Returns `time` (ISO 8601, in `zone`, which is named), the codes as recorded (`campaign`,
    `channel`, `outcome`, `reason`, `rule`), `score` in [0, 1] or `None`, `summary` (one
    sentence), `factors` (each with its `name`, `contribution` and `words`), and `shadow`
    with `shadow_words` saying what a rule still on trial would have done. The person's
    pseudonym is not included.
    """
    tz, zone_name = _zone(zone)
    when = dt.datetime.fromtimestamp(entry.time_ms / 1000, tz)
    if entry.shadow:
        # A rule on trial refused it, yet the person got the personalized content.
        summary = f"{_PERSONALIZED}."
        refusal = _refusal(entry.reason, entry.rule)
        shadow_words: str | None = (
            "A rule we are trying out would have shown you general content"
            + (f", because {refusal}" if refusal else "")
            + ", but it is not in force yet."
        )
    else:
        summary = reason_words(entry.reason, entry.rule, entry.outcome)
        shadow_words = None
    return {
        "time": when.isoformat(timespec="seconds"),
        "zone": zone_name,
        "campaign": entry.campaign,
        "channel": entry.channel,
        "outcome": entry.outcome,
        "reason": entry.reason,
        "rule": entry.rule,
        "score": None if entry.score_milli is None else entry.score_milli / 1000,
        "summary": summary,
        "factors": [
            {"name": name, "contribution": milli / 1000, "words": _factor_words(name, entry)}
            for name, milli in entry.factors
        ],
        "shadow": entry.shadow,
        "shadow_words": shadow_words,
    }


def _zone(name: str | None) -> tuple[dt.tzinfo, str]:
    if name is None:
        return dt.UTC, "UTC"
    try:
        return zoneinfo.ZoneInfo(name), name
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return dt.UTC, "UTC"


def _factor_words(name: str, entry: AuditEntry) -> str:
    if name.startswith("signal:"):
        # The engine scores each signal as a factor of its own.
        return f"It uses {signal_words(name.removeprefix('signal:'))}."
    if name == "sensitivity":
        if not entry.signals:
            return "It uses some of your data."
        return f"It uses {_join([signal_words(s) for s in dict.fromkeys(entry.signals)])}."
    if name == "recency":
        return _recency_words(entry.event_age)
    return _FACTORS.get(name, _OTHER_FACTOR)


def _recency_words(age: int | None) -> str:
    if age is None:
        return "It followed something you had done shortly before."
    for seconds, unit in _UNITS:
        if age >= seconds:
            count = age // seconds
            plural = "" if count == 1 else "s"
            return f"It followed something you did {count} {unit}{plural} earlier."
    return "It followed something you had just done."


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}"
