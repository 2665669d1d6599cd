"""`throttle check`: validate policy files and say, in a marketer's words, what each one does."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from throttle.alerts.words import describe as describe_alerts
from throttle.errors import PolicyError
from throttle.policy import (
    DEFAULT_SPECIAL,
    Policy,
    format_clock_time,
    format_duration,
    load_policy,
)

_PER = {
    "user": "per person",
    "channel": "per person and channel",
    "campaign": "per person and campaign",
}


def check(paths: Iterable[str], out: TextIO, *, overrides: Sequence[str] = ()) -> int:
    """Validate each file; print a summary of the good ones, every problem of the bad ones.

    With `overrides`, each file is the base they are layered on, and the summary is the
    effective policy, followed by what each override sets.
    Returns the exit status: 0 when every file can be used, 1 otherwise.
    """
    status = 0
    for path in paths:
        try:
            policy = load_policy(path, *overrides)
        except PolicyError as error:
            status = 1
            for problem in error.problems:
                source = problem.source or error.source or path
                where = f"{source}:{problem.line}" if problem.line is not None else source
                key = f" {problem.key}:" if problem.key else ""
                print(f"{where}:{key} {problem.message}", file=out)
            continue
        print(summary(policy), file=out)
        for override in overrides:
            print(f"  {override} sets:", file=out)
            for line in _settings(tomllib.loads(Path(override).read_text(encoding="utf-8"))):
                print(f"    {line}", file=out)
    return status


def _settings(table: dict[str, Any], prefix: str = "") -> list[str]:
    """An override file's settings, one `key = value` a line; caps are named by their name."""
    lines = []
    for key, value in table.items():
        if key == "caps" and not prefix and isinstance(value, list):
            for cap in value:
                # The file has loaded, so every cap is a table with a name.
                name = cap["name"]
                if cap.get("remove") is True:
                    lines.append(f"caps.{name}: removed")
                    continue
                lines += _settings({k: v for k, v in cap.items() if k != "name"}, f"caps.{name}.")
        elif isinstance(value, dict) and value:
            lines += _settings(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key} = {value!r}")
    return lines


def special_changes(policy: Policy) -> list[str]:
    """What a policy's special categories change from throttle's defaults, one line each."""
    changes = []
    for name, written in policy.special.items():
        if name not in DEFAULT_SPECIAL:
            changes.append(f"added {name}: signals {', '.join(written.signals)}")
    for name, default in DEFAULT_SPECIAL.items():
        category = policy.special.get(name)
        if category is None:
            changes.append(f"removed {name} (signals {', '.join(default.signals)})")
            continue
        added = [s for s in category.signals if s not in default.signals]
        removed = [s for s in default.signals if s not in category.signals]
        words = ([f"added {', '.join(added)}"] if added else []) + (
            [f"removed {', '.join(removed)}"] if removed else []
        )
        if words:
            changes.append(f"{name}: signals {'; '.join(words)}")
    return changes


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
            notes = []
            if cap.except_tags:
                notes.append(f"except campaigns tagged {', '.join(cap.except_tags)}")
            if cap.reserve:
                notes.append(f"the last {cap.reserve.slots} kept for {', '.join(cap.reserve.tags)}")
            if cap.shadow:
                notes.append("shadow: reported, not enforced")
            lines.append(
                f"  {label:<12} {cap.name:<{width}}  {cap.limit} {_PER[cap.per]} "
                f"in {cap.period}" + "".join(f"; {note}" for note in notes)
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
    quiet = policy.quiet_hours
    zone = f"person's own time zone (else {policy.time.zone})"
    if quiet is not None:
        lines.append(
            f"  {'quiet hours:':<12} {format_clock_time(quiet.start)} to "
            f"{format_clock_time(quiet.end)} in each {zone}: only transactional messages"
            + (f" in {', '.join(quiet.channels)}" if quiet.channels else "")
        )
    if any(cap.calendar for cap in policy.caps):
        lines.append(
            f"  {'calendar:':<12} days, weeks (from {policy.time.week_starts}) and months "
            f"in each {zone}"
        )
    consent = policy.consent
    blocked = ", ".join(consent.gpc) if consent.gpc else "nothing"
    lines.append(
        f"  {'consent:':<12} Sec-GPC: 1 rules out {blocked}; "
        f"people not signed in get {consent.anonymous} content"
    )
    if consent.gpc_json is not None:
        lines.append(
            f"  {'':<12} /.well-known/gpc.json served (last update {consent.gpc_json.last_update})"
        )
    if policy.special:
        need = "category needs" if len(policy.special) == 1 else "categories need"
        lines.append(
            f"  {'special:':<12} {len(policy.special)} {need} explicit consent: "
            f"{', '.join(policy.special)}"
        )
    else:
        lines.append(f"  {'special:':<12} none: no message needs explicit consent")
    changes = special_changes(policy)
    replaced = ' (the file replaces them: special = "replace")'
    lines.append(
        f"  {'':<12} "
        + (
            "the default categories and signals, unchanged"
            if not changes
            else "changes to the default categories"
            + (replaced if policy.policy.special == "replace" else "")
            + ":"
        )
    )
    lines += [f"  {'':<12}   {change}" for change in changes]
    levels = policy.levels
    lines.append(
        f"  {'levels:':<12} default {levels.default}; thresholds minimal "
        f"{levels.minimal_threshold:g}, standard {policy.creepiness.threshold:g}, full "
        f"{levels.full_threshold:g}"
    )
    band = policy.creepiness.category_band
    if band is not None:
        lines.append(
            f"  {'band:':<12} scores above {band.low:g} up to {band.high:g} get category content"
        )
    audit = policy.audit
    lines.append(
        f"  {'audit:':<12} "
        + (
            f"every decision, at most {audit.max_entries:,} entries and "
            f"{format_duration(audit.max_age)}; {audit.per_person} kept with each person"
            if audit.enabled
            else "off"
        )
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
    for number, line in enumerate(describe_alerts(policy.alerts)):
        lines.append(f"  {'alerts:' if number == 0 else '':<12} {line}")
    return "\n".join(lines)
