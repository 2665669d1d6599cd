"""Rates over time: decisions counted in buckets, and the rule that says a rate has risen.

A bucket is `alerts.resolution` long (a minute by default) and numbered by its start:
`floor(t / resolution)`. Each bucket counts what the shared ops state (`throttle.opsstate`)
counts, with the same words, so that the fleet's minutes and one process's buckets mean the
same thing:

- per campaign: decisions, and refusals (the person did not get the personalized content:
  segment or category content stood in; a shadow refusal, delivered all the same, is not one);
- per rule (a cap's name, `creepiness.threshold`, `consent.gpc`, ...): the refusals it made,
  out of every decision of the bucket;
- per segment (the top level of the segment the message was written for, `*` for everyone):
  decisions, and how many of them fell back (refusals, by another name).

`risen` is a pure function of those counts, so the live monitor, `throttle simulate` and the
tests all apply the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from throttle.decision import Decision
from throttle.opsstate import EVERYONE, MINUTE, Minute, OpsState
from throttle.policy import RATE_KINDS, AlertCondition, Alerts, format_duration

# Past this many subjects of one kind in one bucket, the rest are counted together: a
# campaign name is free text, and a process's memory must stay bounded whatever it is sent.
MAX_SUBJECTS = 1000
OTHERS = "(others)"
PERS = ("campaign", "rule", "segment")


@dataclass(slots=True)
class Bucket:
    """What one bucket counted: `decisions` in all, and per (per, subject) its decisions and
    hits (refusals or fallbacks). For `rule`, the decisions are the bucket's own."""

    decisions: int = 0
    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    subjects: dict[str, int] = field(default_factory=dict)

    def count(self, per: str, subject: str, *, decided: int, hit: int) -> None:
        key = (per, subject)
        counted = self.counts.get(key)
        if counted is None:
            if self.subjects.get(per, 0) >= MAX_SUBJECTS:
                key = (per, OTHERS)
                counted = self.counts.get(key)
            if counted is None:
                self.subjects[per] = self.subjects.get(per, 0) + 1
                counted = self.counts[key] = [0, 0]
        counted[0] += decided
        counted[1] += hit

    def add(self, decision: Decision, segment: str) -> None:
        self.decisions += 1
        refused = not decision.delivers_personalized
        campaign = decision.campaign if decision.campaign is not None else "-"
        self.count("campaign", campaign, decided=1, hit=refused)
        if refused and decision.rule:
            self.count("rule", decision.rule, decided=0, hit=1)
        self.count("segment", segment.partition("/")[0] or EVERYONE, decided=1, hit=refused)

    @classmethod
    def of_minute(cls, minute: Minute) -> Bucket:
        """The fleet's minute from the shared ops state, as a bucket."""
        bucket = cls(decisions=minute.decisions)
        for campaign, decided in minute.campaigns.items():
            hit = minute.campaign_fallbacks.get(campaign, 0)
            bucket.count("campaign", campaign, decided=decided, hit=hit)
        for rule, hit in minute.fallback_rules.items():
            bucket.count("rule", rule, decided=0, hit=hit)
        for segment, decided in minute.segments.items():
            hit = minute.segment_fallbacks.get(segment, 0)
            bucket.count("segment", segment, decided=decided, hit=hit)
        return bucket


class SharedCounts:
    """The fleet's counts: the shared ops state's minutes, every worker's decisions summed.

    Its buckets are minutes, so it serves a policy whose `alerts.resolution` is 1m.
    """

    resolution = float(MINUTE)

    def __init__(self, ops: OpsState) -> None:
        self.ops = ops

    async def read(self, first: int, last: int) -> Mapping[int, Bucket]:
        minutes = await self.ops.minutes(first * MINUTE, last * MINUTE)
        return {minute.start // MINUTE: Bucket.of_minute(minute) for minute in minutes}


class LocalCounts:
    """Buckets of this process's decisions: an observer of the engine.

    `keep` buckets are kept (the longest window and baseline of the policy's conditions, and
    the bucket being filled); older ones are dropped as time moves on.
    """

    def __init__(self, resolution: float, keep: int) -> None:
        self.resolution = resolution
        self.keep = keep
        self.buckets: dict[int, Bucket] = {}
        self._current = -1
        self._bucket = Bucket()

    def add(self, decision: Decision, segment: str, now: float) -> None:
        number = int(now // self.resolution)
        if number != self._current:
            bucket = self.buckets.get(number)
            if bucket is None:
                bucket = self.buckets[number] = Bucket()
                self._drop_before(number - self.keep)
            self._current, self._bucket = number, bucket
        self._bucket.add(decision, segment)

    def _drop_before(self, first: int) -> None:
        for number in [n for n in self.buckets if n < first]:
            del self.buckets[number]

    def reshape(self, resolution: float, keep: int) -> None:
        """A reloaded policy's bucket length: counts of another length cannot be compared."""
        if resolution != self.resolution:
            self.buckets.clear()
            self._current = -1
        self.resolution, self.keep = resolution, keep

    async def read(self, first: int, last: int) -> Mapping[int, Bucket]:
        """The buckets numbered `first` to `last`, inclusive (a source of counts)."""
        return {n: b for n, b in self.buckets.items() if first <= n <= last}


@dataclass(frozen=True, slots=True)
class Rise:
    """A rate that rose: what the condition saw over its window and over its baseline."""

    condition: AlertCondition
    per: str
    subject: str
    decisions: int
    hits: int
    baseline_decisions: int
    baseline_hits: int
    window: float
    baseline: float

    @property
    def rate(self) -> float:
        return self.hits / self.decisions

    @property
    def baseline_rate(self) -> float:
        return self.baseline_hits / self.baseline_decisions

    def summary(self) -> str:
        what = "fallback rate" if self.condition.kind == "fallback-rate" else "refusal rate"
        whose = {
            "campaign": f"campaign {self.subject!r}",
            "rule": f"rule {self.subject!r}",
            "segment": f"segment {self.subject!r}",
        }[self.per]
        against = (
            f"{self.rate / self.baseline_rate:.1f} times its baseline of"
            if self.baseline_hits
            else "against"
        )
        return (
            f"{whose}: {what} {self.rate:.0%} over the last {format_duration(self.window)} "
            f"({self.hits:,} of {self.decisions:,} decisions), {against} "
            f"{self.baseline_rate:.0%} over the {format_duration(self.baseline)} before "
            f"({self.baseline_hits:,} of {self.baseline_decisions:,})"
        )

    def figures(self) -> dict[str, float | int]:
        return {
            "rate": round(self.rate, 4),
            "decisions": self.decisions,
            "refused" if self.condition.kind == "refusal-rate" else "fell_back": self.hits,
            "baseline_rate": round(self.baseline_rate, 4),
            "baseline_decisions": self.baseline_decisions,
            "window_seconds": self.window,
            "baseline_seconds": self.baseline,
            "factor": self.condition.factor,
            "min_rate": self.condition.min_rate,
            "min_decisions": self.condition.min_decisions,
        }


def window_buckets(alerts: Alerts, condition: AlertCondition) -> tuple[int, int]:
    """How many buckets a condition's window and its baseline span."""
    return alerts.buckets(condition.window), alerts.buckets(condition.baseline)


def kept_buckets(alerts: Alerts) -> int:
    """How many buckets the policy's conditions read, the bucket being filled included."""
    spans = [
        sum(window_buckets(alerts, condition))
        for condition in alerts.conditions
        if condition.kind in RATE_KINDS
    ]
    return max(spans, default=0) + 1


def risen(
    alerts: Alerts, condition: AlertCondition, buckets: Mapping[int, Bucket], current: int
) -> list[Rise]:
    """Every subject whose rate rose, by the condition's rule, as of bucket `current`.

    The window is the `w` buckets up to and including `current` (the one being filled, so a
    spike is seen within the bucket it starts in); the baseline, the `b` buckets before them.
    A subject fires when, with at least `min_decisions` decisions in the window and in the
    baseline each, its rate over the window is at least `factor` times its rate over the
    baseline, and at least `min_rate`: a quiet subject cannot fire on noise, nor one whose
    baseline was zero on a single refusal.
    """
    w, b = window_buckets(alerts, condition)
    per = condition.counted_per
    recent, _ = _summed(buckets, range(current - w + 1, current + 1), per)
    before, before_total = _summed(buckets, range(current - w - b + 1, current - w + 1), per)
    # A rule that refused nothing before had every decision of the baseline as its own.
    unseen = (before_total if per == "rule" else 0, 0)
    rises = []
    for subject, (decisions, hits) in sorted(recent.items()):
        base_decisions, base_hits = before.get(subject, unseen)
        if (
            decisions < condition.min_decisions
            or base_decisions < condition.min_decisions
            or hits < condition.min_rate * decisions
            or hits * base_decisions < condition.factor * base_hits * decisions
        ):
            continue
        rises.append(
            Rise(
                condition,
                per,
                subject,
                decisions,
                hits,
                base_decisions,
                base_hits,
                w * alerts.resolution,
                b * alerts.resolution,
            )
        )
    return rises


def _summed(
    buckets: Mapping[int, Bucket], numbers: Iterable[int], per: str
) -> tuple[dict[str, tuple[int, int]], int]:
    """(decisions, hits) per subject over some buckets (a rule's decisions are every decision),
    and the decisions in all."""
    sums: dict[str, list[int]] = {}
    total = 0
    for number in numbers:
        bucket = buckets.get(number)
        if bucket is None:
            continue
        total += bucket.decisions
        for (kind, subject), (decided, hit) in bucket.counts.items():
            if kind == per:
                summed = sums.setdefault(subject, [0, 0])
                summed[0] += decided
                summed[1] += hit
    if per == "rule":
        return {subject: (total, hits) for subject, (_, hits) in sums.items()}, total
    return {subject: (decided, hits) for subject, (decided, hits) in sums.items()}, total
