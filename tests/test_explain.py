"""The "why am I seeing this" words: plain sentences for a person, codes kept apart."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from throttle.audit import AuditEntry
from throttle.explain import explain, reason_words, signal_words

PSEUDONYM = "b3f1c9e07a5d42e8"
# 2024-05-01 12:00:00 UTC
NOON_MS = 1_714_564_800_000
# A code reads like words joined by `-`, `_` or `.`: "frequency-cap", "consent.gpc".
CODE = re.compile(r"[A-Za-z][-_.][A-Za-z]")


def entry(**changes: Any) -> AuditEntry:
    base = AuditEntry(
        time_ms=NOON_MS,
        person=PSEUDONYM,
        campaign="spring-sale",
        channel="web",
        segment="eu/de/berlin",
        fallback_segment=None,
        outcome="personalized",
        reason="allowed",
        rule=None,
        score_milli=150,
        factors=(("signal:purchase_history", 150),),
        signals=("purchase_history",),
        policy="default@20b2e23befee",
    )
    return dataclasses.replace(base, **changes)


def words(result: dict[str, Any]) -> list[str]:
    """Every sentence meant for the person."""
    sentences = [result["summary"], *(factor["words"] for factor in result["factors"])]
    return sentences + ([result["shadow_words"]] if result["shadow_words"] else [])


DECISIONS = [
    ("personalized", "allowed", None, "stayed within every limit"),
    ("personalized", "transactional", None, "a message you asked for, such as a receipt"),
    ("segment", "frequency-cap", "per-campaign-daily", "as many personalized messages as we allow"),
    ("segment", "creepiness", "creepiness.threshold", "too intrusive"),
    ("segment", "budget", "creepiness.budget", "enough personalized messages recently"),
    ("segment", "quiet-hours", "quiet_hours", "during your quiet hours"),
    ("segment", "consent", "consent.gpc", "Global Privacy Control"),
    ("segment", "consent", "consent.tcf", "in the cookie banner"),
    ("segment", "consent", "consent.other", "have not agreed to this use of your data"),
    ("segment", "consent", None, "have not agreed to this use of your data"),
    ("segment", "preference", "level.off", "you turned personalization off"),
    ("segment", "preference", "level.minimal", "data you did not give us yourself"),
    ("segment", "preference", "level.custom", "your personalization settings did not allow it"),
    ("segment", "preference", None, "your personalization settings did not allow it"),
    ("segment", "anonymous", "consent.anonymous", "you were not signed in"),
    ("segment", "store-unavailable", None, "could not check our limits"),
    ("personalized", "store-unavailable", None, "so it may have gone past them"),
    ("segment", "invalid-marker", None, "something went wrong on our side"),
    ("segment", "internal-error", None, "something went wrong on our side"),
    ("segment", "something-new", "some.rule", "general content instead"),
    ("personalized", "something-new", "some.rule", "personalized for you."),
    ("personalized", "frequency-cap", "per-user-daily", "although you had already received"),
]


@pytest.mark.parametrize(("outcome", "reason", "rule", "expected"), DECISIONS)
def test_every_reason_reads_as_one_sentence_without_codes(
    outcome: str, reason: str, rule: str | None, expected: str
) -> None:
    result = explain(entry(outcome=outcome, reason=reason, rule=rule))
    summary = result["summary"]
    assert summary == reason_words(reason, rule, outcome)
    assert expected in summary
    assert summary.startswith("You saw ") and summary.endswith(".")
    assert summary.count(".") == 1
    assert not CODE.search(summary), summary
    assert PSEUDONYM not in summary
    assert (result["outcome"], result["reason"], result["rule"]) == (outcome, reason, rule)


@pytest.mark.parametrize(
    ("outcome", "start"),
    [
        ("personalized", "You saw this message personalized for you"),
        ("segment", "You saw general content instead of a message personalized for you"),
    ],
)
def test_the_outcome_decides_how_the_sentence_starts(outcome: str, start: str) -> None:
    assert reason_words("store-unavailable", None, outcome).startswith(start)


def test_an_unknown_outcome_is_admitted_rather_than_guessed() -> None:
    assert reason_words("allowed", None, "maybe") == (
        "We have no record of whether this message was personalized for you."
    )


def test_a_segment_outcome_with_no_refusal_says_only_what_was_seen() -> None:
    assert reason_words("allowed", None, "segment") == (
        "You saw general content instead of a message personalized for you."
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("purchase_history", "your purchase history"),
        ("location.precise", "where you are right now"),
        ("location.city", "your city"),
        ("health", "information about your health"),
        ("loyalty.tier_level", "loyalty tier level"),
        ("weather", "weather"),
    ],
)
def test_signals_are_named_in_words(name: str, expected: str) -> None:
    assert signal_words(name) == expected


def test_every_signal_of_the_default_policy_has_words_of_its_own() -> None:
    defaults = [
        "cart", "purchase_history", "browsing_history", "location.country", "location.city",
        "location.precise", "demographics.age", "demographics.gender", "household.children",
        "financial", "health", "sexual_orientation", "religion", "political_views",
    ]  # fmt: skip
    for name in defaults:
        phrase = signal_words(name)
        assert "you" in phrase, (name, phrase)
        assert not CODE.search(phrase)


def factor_words(name: str, **changes: Any) -> str:
    result = explain(entry(factors=((name, 100),), **changes))
    [factor] = result["factors"]
    assert factor["name"] == name and factor["contribution"] == 0.1
    words: str = factor["words"]
    return words


def test_each_signal_factor_names_its_signal() -> None:
    assert factor_words("signal:location.precise") == "It uses where you are right now."
    assert factor_words("signal:loyalty.tier") == "It uses loyalty tier."


def test_sensitivity_names_every_signal_once() -> None:
    assert factor_words("sensitivity", signals=("health",)) == (
        "It uses information about your health."
    )
    assert factor_words(
        "sensitivity", signals=("purchase_history", "location.city", "purchase_history")
    ) == ("It uses your purchase history and your city.")
    assert factor_words("sensitivity", signals=("cart", "location.city", "shoe_size")) == (
        "It uses what is in your cart, your city and shoe size."
    )
    assert factor_words("sensitivity", signals=()) == "It uses some of your data."


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("inferred", "Some of this was inferred about you rather than given by you."),
        ("third-party", "Some of this came from another company."),
        ("explained", "It tells you why you see it, which makes it less intrusive."),
        ("repetition", "You had seen this campaign before."),
        ("ceiling", "The score cannot go above 1."),
        ("novelty", "Something else about this message counted in how intrusive we judged it."),
    ],
)
def test_each_factor_has_words(name: str, expected: str) -> None:
    assert factor_words(name) == expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (None, "It followed something you had done shortly before."),
        (0, "It followed something you had just done."),
        (1, "It followed something you did 1 second earlier."),
        (45, "It followed something you did 45 seconds earlier."),
        (90, "It followed something you did 1 minute earlier."),
        (300, "It followed something you did 5 minutes earlier."),
        (3_600, "It followed something you did 1 hour earlier."),
        (7_200, "It followed something you did 2 hours earlier."),
        (86_400, "It followed something you did 1 day earlier."),
        (3 * 86_400, "It followed something you did 3 days earlier."),
    ],
)
def test_recency_says_how_long_ago_in_words(age: int | None, expected: str) -> None:
    assert factor_words("recency", event_age=age) == expected


def test_factors_keep_their_order_and_contributions() -> None:
    result = explain(
        entry(
            factors=(("signal:health", 850), ("inferred", 425), ("explained", -381)),
            signals=("health",),
            inferred=True,
            explained=True,
        )
    )
    assert [(f["name"], f["contribution"]) for f in result["factors"]] == [
        ("signal:health", 0.85),
        ("inferred", 0.425),
        ("explained", -0.381),
    ]


def test_time_is_in_utc_without_a_zone() -> None:
    result = explain(entry())
    assert (result["time"], result["zone"]) == ("2024-05-01T12:00:00+00:00", "UTC")


def test_time_is_in_the_persons_zone() -> None:
    result = explain(entry(), zone="Europe/Berlin")
    assert (result["time"], result["zone"]) == ("2024-05-01T14:00:00+02:00", "Europe/Berlin")
    result = explain(entry(time_ms=NOON_MS + 180 * 86_400_000), zone="America/New_York")
    assert result["time"] == "2024-10-28T08:00:00-04:00"


@pytest.mark.parametrize("zone", ["Nowhere/Atlantis", "Europe", "", "../etc/passwd", "/etc/x"])
def test_an_unknown_zone_falls_back_to_utc(zone: str) -> None:
    result = explain(entry(), zone=zone)
    assert (result["time"], result["zone"]) == ("2024-05-01T12:00:00+00:00", "UTC")


def test_a_rule_on_trial_is_said_to_be_one() -> None:
    result = explain(
        entry(outcome="segment", reason="frequency-cap", rule="per-channel-hourly-3", shadow=True)
    )
    assert result["shadow"] is True
    assert result["summary"] == "You saw this message personalized for you."
    assert result["shadow_words"] == (
        "A rule we are trying out would have shown you general content, because you had "
        "already received as many personalized messages as we allow in this period, but it "
        "is not in force yet."
    )
    assert not CODE.search(result["shadow_words"])


def test_a_rule_on_trial_without_a_known_reason_still_says_what_it_would_do() -> None:
    result = explain(entry(outcome="segment", reason="something-new", shadow=True))
    assert result["shadow_words"] == (
        "A rule we are trying out would have shown you general content, but it is not in force yet."
    )


def test_without_a_rule_on_trial_there_are_no_shadow_words() -> None:
    result = explain(entry())
    assert (result["shadow"], result["shadow_words"]) == (False, None)


def test_the_codes_are_kept_in_fields_of_their_own() -> None:
    result = explain(entry(outcome="segment", reason="creepiness", rule="creepiness.threshold"))
    assert {k: result[k] for k in ("campaign", "channel", "reason", "rule", "score")} == {
        "campaign": "spring-sale",
        "channel": "web",
        "reason": "creepiness",
        "rule": "creepiness.threshold",
        "score": 0.15,
    }
    assert explain(entry(score_milli=None, campaign=None, channel=None))["score"] is None


FULL = entry(
    outcome="segment",
    reason="frequency-cap",
    rule="per-campaign-daily",
    fallback_segment="eu/de",
    factors=(
        ("signal:location.precise", 600),
        ("signal:mystery_data", 120),
        ("sensitivity", 720),
        ("inferred", 360),
        ("third-party", 432),
        ("recency", 125),
        ("explained", -300),
        ("repetition", 100),
        ("ceiling", -37),
        ("novelty", 10),
    ),
    signals=("location.precise", "mystery_data"),
    inferred=True,
    third_party=True,
    explained=True,
    event_age=900,
    shadow=True,
)


@pytest.mark.parametrize("zone", [None, "Europe/Berlin", "Nowhere/Atlantis"])
def test_the_result_is_json_and_never_names_the_pseudonym(zone: str | None) -> None:
    result = explain(FULL, zone=zone)
    text = json.dumps(result)
    assert json.loads(text) == result
    assert PSEUDONYM not in text
    assert "person" not in result


def test_no_sentence_carries_a_code() -> None:
    for sentence in words(explain(FULL)):
        assert sentence and not CODE.search(sentence), sentence
        assert sentence[0].isupper() and sentence.endswith("."), sentence


@pytest.mark.parametrize(
    ("reason", "rule", "words"),
    [
        ("special-category", "special.health", "only use with your explicit consent"),
        ("automated-decision", "decides.price", "never tailor to a profile of you"),
        ("calculus", "calculus", "did not outweigh how much of your data it used"),
    ],
)
def test_the_gates_are_explained_without_codes(reason: str, rule: str, words: str) -> None:
    sentence = reason_words(reason, rule, "segment")
    assert words in sentence and reason not in sentence and rule not in sentence


def test_category_content_is_explained() -> None:
    sentence = reason_words("creepiness", "creepiness.category_band", "category")
    assert sentence.startswith("You saw content about a kind of product")
    assert "creepiness" not in sentence
