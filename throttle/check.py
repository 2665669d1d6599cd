"""`throttle check`: validate policy files and say, in a marketer's words, what each one does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from throttle.errors import PolicyError
from throttle.policy import Policy, format_duration, load_policy

_PER = {
    "user": "per person",
    "channel": "per person and channel",
    "campaign": "per person and campaign",
}


def check(paths: Iterable[str], out: TextIO) -> int:
    """Validate each file; print a summary of the good ones, every problem of the bad ones.

    Returns the exit status: 0 when every file can be used, 1 otherwise.
    """
    status = 0
    for path in paths:
        try:
            policy = load_policy(path)
        except PolicyError as error:
            status = 1
            for problem in error.problems:
                where = f"{path}:{problem.line}" if problem.line is not None else path
                key = f" {problem.key}:" if problem.key else ""
                print(f"{where}:{key} {problem.message}", file=out)
            continue
        print(summary(policy), file=out)
    return status


def summary(policy: Policy) -> str:
    """A short description of a valid policy."""
    mode = (
        "shadow (decides and reports, delivers everything)"
        if policy.policy.mode == "shadow"
        else "enforce"
    )
    lines = [f"{policy.source}: ok, policy {policy.name!r} @{policy.version}, {mode}"]
    if policy.caps:
        width = max(len(cap.name) for cap in policy.caps)
        for number, cap in enumerate(policy.caps):
            label = "caps:" if number == 0 else ""
            lines.append(
                f"  {label:<12} {cap.name:<{width}}  {cap.limit} {_PER[cap.per]} "
                f"in any {format_duration(cap.window)}"
            )
    else:
        lines.append(f"  {'caps:':<12} none")
    creepiness = policy.creepiness
    budget = (
        f"budget {creepiness.budget.limit:g} per {format_duration(creepiness.budget.window)}"
        if creepiness.budget
        else "no budget"
    )
    lines.append(
        f"  {'creepiness:':<12} threshold {creepiness.threshold:g}; {budget}; "
        f"{len(creepiness.signals)} signals weighted, others {creepiness.default_signal:g}"
    )
    consent = policy.consent
    blocked = ", ".join(consent.gpc) if consent.gpc else "nothing"
    lines.append(
        f"  {'consent:':<12} Sec-GPC: 1 rules out {blocked}; "
        f"people not signed in get {consent.anonymous} content"
    )
    fallback = policy.fallback
    content = ", ".join(sorted(fallback.content)) or "none (empty documents)"
    lines.append(
        f"  {'fallback:':<12} a segment stands in once {fallback.k} people are in it; "
        f"content for: {content}"
    )
    store = policy.store
    lines.append(
        f"  {'store:':<12} timeout {format_duration(store.timeout)}; "
        f"when unavailable: {store.on_error}"
    )
    return "\n".join(lines)
