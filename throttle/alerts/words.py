"""Alerts in words, for `throttle check`: when each fires, and where it goes."""

from __future__ import annotations

from throttle.opsstate import MINUTE
from throttle.policy import AlertCondition, Alerts, format_duration, webhook_shown

_WHOSE = {
    "campaign": "a campaign's refusal rate",
    "rule": "a rule's refusal rate (its refusals out of every decision)",
    "segment": "a segment's fallback rate (by its top level: eu for eu/de/berlin)",
}


def condition_words(condition: AlertCondition, alerts: Alerts) -> str:
    """When one condition fires, in a sentence."""
    if condition.kind == "store-failing":
        return f"when the store has failed for {format_duration(condition.after)} in a row"
    if condition.kind == "reload-rejected":
        return "when a hot reload refuses an edited policy file (the policy in force stays)"
    window = format_duration(alerts.buckets(condition.window) * alerts.resolution)
    baseline = format_duration(alerts.buckets(condition.baseline) * alerts.resolution)
    return (
        f"when {_WHOSE[condition.counted_per]} over the last {window} is at least "
        f"{condition.factor:g} times its rate over the {baseline} before, and at least "
        f"{condition.min_rate:.0%}, with at least {condition.min_decisions:,} decisions in each"
    )


def describe(alerts: Alerts) -> list[str]:
    """What `throttle check` says of a policy's alerts: where they go, then each condition."""
    if not alerts.conditions:
        return ["none"]
    where = (
        f"posted as JSON to {webhook_shown(alerts.webhook)} ({alerts.attempts} attempts, "
        f"{format_duration(alerts.timeout)} each, {format_duration(alerts.backoff)} apart "
        "and doubling) and written to the log"
        if alerts.webhook is not None
        else "written to the log (no webhook)"
    )
    counted = (
        "rates are every worker's, counted per minute"
        if alerts.resolution == MINUTE
        else f"rates are each worker's own, counted per {format_duration(alerts.resolution)}"
    )
    lines = [
        f"{where}; each alert at most once per {format_duration(alerts.quiet)} across all "
        f"workers; {counted}"
    ]
    width = max(len(condition.name) for condition in alerts.conditions)
    lines += [
        f"{condition.name:<{width}}  {condition_words(condition, alerts)}"
        for condition in alerts.conditions
    ]
    return lines
