"""What the audit trail says about a period: how many decisions, why, for whom, and whether
throttling fell harder on one audience than on another.

A brand must be able to show what it did with personal data (GDPR accountability, Art. 5(2));
this turns the trail of pseudonymized decisions (`throttle.audit`) into a report its privacy
team can hand to an auditor: totals, decisions by outcome, reason, rule, campaign and requested
segment, shadow decisions, how many distinct people (by pseudonym only), and a fairness view.

Fairness: the fallback rate per requested segment (segment outcomes out of that segment's
decisions), counting only what the policy decides (frequency caps, the creepiness budget and
threshold, quiet hours, an unavailable store) against what it let through (allowed,
transactional). A person's own choices (consent, preference, not signed in) are left out: a
person refusing personalization is not the brand singling them out. Decisions that could not
be made at all (an unreadable marker, an internal error) are left out too. A segment enters the
comparison once it has `min_decisions` such decisions, so a handful of messages cannot make a
rate look extreme; the report gives the highest rate over the lowest.

The stream is read in batches of `XRANGE`, so memory does not grow with the trail, only with the
number of distinct people, campaigns and segments in it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from throttle.audit import AuditEntry
from throttle.decision import Reason
from throttle.errors import ConfigurationError, StoreUnavailable
from throttle.policy import parse_duration
from throttle.store.cluster import audit_keys, cluster_client, parse_cluster_url
from throttle.store.sentinel import client_for
from throttle.store.url import redacted_url

# What the policy decides: these refusals are the ones that could single a group out.
LIMIT_REASONS = frozenset(r.value for r in Reason if r.kind == "limit")
# What the policy let through; with LIMIT_REASONS, the decisions the fairness view counts.
PERSONALIZED_REASONS = frozenset(r.value for r in Reason if r.kind == "granted")
# A person's own choices, never counted against the brand.
CHOICE_REASONS = frozenset(r.value for r in Reason if r.kind == "choice")
# What the law rules out for every person alike (GDPR Art. 22), never counted either.
LAW_REASONS = frozenset(r.value for r in Reason if r.kind == "law")
FAIRNESS_REASONS = LIMIT_REASONS | PERSONALIZED_REASONS

EVERYONE_LABEL = "(everyone)"
UNKNOWN_LABEL = "(unknown)"

# Each reason's words, from the one vocabulary (throttle/decision.py).
_REASON_WORDS = {r.value: r.label for r in Reason}
# How far the stream IDs read reach past a period (see Reader).
_APPEND_SLACK_MS = 300_000
# The highest sequence number of a stream ID, so that `<ms>-<this>` ends millisecond `ms`.
_MAX_SEQUENCE = 2**64 - 1
_DURATION_SHAPE = re.compile(r"\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*")
_CONNECT_TIMEOUT = 2.0
_READ_TIMEOUT = 30.0


class Reader:
    """The entries of the audit stream `key` in a period, oldest first, fetched `batch` at a time.

    Bounds are inclusive, in ms since the Unix epoch, `None` for open; they select by the
    stream ID (when Redis appended the entry) and then by the entry's own `time_ms`. Entries
    whose data cannot be read are skipped and counted in `unreadable`. The client must return
    bytes (`decode_responses=False`).
    """

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        key: str,
        *,
        since_ms: int | None,
        until_ms: int | None,
        batch: int = 5000,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.unreadable = 0
        self._client = client
        self._key = key
        self._since_ms = since_ms
        self._until_ms = until_ms
        self._batch = batch
        # Stream IDs start at 0-1; a period that starts before the epoch starts there. An
        # append carries entries made a little earlier, by another host's clock: the IDs read
        # reach `_APPEND_SLACK_MS` past the period on both sides, and entries are then picked
        # by their own times.
        start_ms = 0 if since_ms is None else max(since_ms - _APPEND_SLACK_MS, 0)
        self._start = "-" if since_ms is None else f"{start_ms}-0"
        self._end = "+" if until_ms is None else f"{until_ms + _APPEND_SLACK_MS}-{_MAX_SEQUENCE}"
        self._done = until_ms is not None and until_ms < max(since_ms or 0, 0)
        self._pending: deque[AuditEntry] = deque()

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> AuditEntry:
        while not self._pending:
            if self._done:
                raise StopAsyncIteration
            await self._fetch()
        return self._pending.popleft()

    async def _fetch(self) -> None:
        # redis-py types the reply for either decoding; this client returns bytes.
        rows: Any = await self._client.xrange(self._key, self._start, self._end, count=self._batch)
        if len(rows) < self._batch:
            self._done = True
        else:
            self._start = _after(rows[-1][0])
        for _, fields in rows:
            if b"r" in fields:  # a data request by support staff, not a decision
                continue
            # One append carries the entries of many decisions.
            for entry in AuditEntry.unpack_all(fields.get(b"d", b"")):
                if entry is None or not _plausible(entry):
                    self.unreadable += 1
                elif self._within(entry.time_ms):
                    self._pending.append(entry)

    def _within(self, time_ms: int) -> bool:
        if self._since_ms is not None and time_ms < self._since_ms:
            return False
        return self._until_ms is None or time_ms <= self._until_ms


def read_entries(
    client: aioredis.Redis | aioredis.RedisCluster,
    key: str,
    *,
    since_ms: int | None,
    until_ms: int | None,
    batch: int = 5000,
) -> Reader:
    """The audit entries at `key` from `since_ms` to `until_ms` (inclusive; `None` is open).

    ```python
    reader = read_entries(client, "throttle:audit", since_ms=None, until_ms=None)
    async for entry in reader:
        ...
    print(reader.unreadable, "entries could not be read")
    ```
    """
    return Reader(client, key, since_ms=since_ms, until_ms=until_ms, batch=batch)


def _after(stream_id: bytes) -> str:
    # The ID right after this one: XRANGE's exclusive "(" needs Redis 6.2, this works on all.
    ms, _, sequence = stream_id.decode().partition("-")
    if int(sequence) == _MAX_SEQUENCE:
        return f"{int(ms) + 1}-0"
    return f"{ms}-{int(sequence) + 1}"


def _plausible(entry: AuditEntry) -> bool:
    # Bytes that unpack into the wrong types would break the tallies; treat them as unreadable.
    return (
        isinstance(entry.time_ms, int)
        and not isinstance(entry.time_ms, bool)
        and all(isinstance(text, str) for text in (entry.person, entry.outcome, entry.reason))
        and all(
            text is None or isinstance(text, str)
            for text in (entry.campaign, entry.segment, entry.rule)
        )
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """Decisions for one campaign or segment, and how many had each outcome."""

    decisions: int
    personalized: int
    segment: int


@dataclass(frozen=True, slots=True)
class SegmentRate:
    """One requested segment in the fairness view: the decisions the policy made about it
    (`decisions`) and how many of them fell back to segment content (`fallbacks`)."""

    segment: str
    decisions: int
    fallbacks: int

    @property
    def rate(self) -> float:
        return self.fallbacks / self.decisions


@dataclass(frozen=True, slots=True)
class Fairness:
    """The fallback rate per requested segment, highest first, over the segments with at least
    `min_decisions` decisions the policy made (see the module's docstring for which count);
    `left_out` segments had fewer."""

    min_decisions: int
    rates: tuple[SegmentRate, ...]
    left_out: int

    @property
    def highest(self) -> SegmentRate | None:
        return self.rates[0] if self.rates else None

    @property
    def lowest(self) -> SegmentRate | None:
        return self.rates[-1] if self.rates else None

    @property
    def ratio(self) -> float | None:
        """Highest rate over lowest: `None` with fewer than two segments to compare, `math.inf`
        when the lowest is 0 and the highest is not, 1.0 when all are equal (also all 0)."""
        if len(self.rates) < 2:
            return None
        highest, lowest = self.rates[0].rate, self.rates[-1].rate
        if highest == lowest:
            return 1.0
        return highest / lowest if lowest else math.inf


@dataclass(frozen=True, slots=True)
class Summary:
    """What a period of the audit trail holds. Mappings are most common first; campaigns and
    segments that were not given are `"(unknown)"`, the segment for everyone `"(everyone)"`.

    - `decisions`: readable entries in the period; `unreadable`: entries skipped.
    - `people`: distinct signed-in people, by pseudonym; `not_signed_in`: their decisions.
    - `shadow`: decisions delivered personalized although a shadow rule refused them.
    - `first_ms`, `last_ms`: the first and last decision's time, `None` without any.
    """

    decisions: int
    outcomes: Mapping[str, int]
    reasons: Mapping[str, int]
    rules: Mapping[str, int]
    campaigns: Mapping[str, Counts]
    segments: Mapping[str, Counts]
    shadow: int
    people: int
    not_signed_in: int
    first_ms: int | None
    last_ms: int | None
    fairness: Fairness
    unreadable: int = 0


@dataclass(slots=True)
class _Group:
    decisions: int = 0
    personalized: int = 0
    segment: int = 0

    def add(self, outcome: str) -> None:
        self.decisions += 1
        if outcome == "personalized":
            self.personalized += 1
        elif outcome == "segment":
            self.segment += 1

    def frozen(self) -> Counts:
        return Counts(self.decisions, self.personalized, self.segment)


@dataclass(slots=True)
class Tally:
    """A `Summary` built one entry at a time, so a stream of any length fits in memory."""

    decisions: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    campaigns: dict[str, _Group] = field(default_factory=dict)
    segments: dict[str, _Group] = field(default_factory=dict)
    # Per segment: decisions the policy made, and how many fell back.
    policy_decisions: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    shadow: int = 0
    people: set[str] = field(default_factory=set)
    not_signed_in: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, entry: AuditEntry) -> None:
        self.decisions += 1
        self.outcomes[entry.outcome] += 1
        self.reasons[entry.reason] += 1
        if entry.rule is not None:
            self.rules[entry.rule] += 1
        campaign = UNKNOWN_LABEL if entry.campaign is None else entry.campaign
        self.campaigns.setdefault(campaign, _Group()).add(entry.outcome)
        segment = segment_label(entry.segment)
        self.segments.setdefault(segment, _Group()).add(entry.outcome)
        if entry.reason in FAIRNESS_REASONS:
            self.policy_decisions[segment] += 1
            if entry.outcome != "personalized":  # segment or category content
                self.fallbacks[segment] += 1
        if entry.shadow:
            self.shadow += 1
        if entry.person:
            self.people.add(entry.person)
        else:
            self.not_signed_in += 1
        if self.first_ms is None or entry.time_ms < self.first_ms:
            self.first_ms = entry.time_ms
        if self.last_ms is None or entry.time_ms > self.last_ms:
            self.last_ms = entry.time_ms

    def summary(self, *, unreadable: int = 0, min_decisions: int = 30) -> Summary:
        if min_decisions < 1:
            raise ValueError(f"min_decisions must be at least 1, not {min_decisions}")
        rates = [
            SegmentRate(segment, decisions, self.fallbacks[segment])
            for segment, decisions in self.policy_decisions.items()
            if decisions >= min_decisions
        ]
        rates.sort(key=lambda rate: (-rate.rate, rate.segment))
        return Summary(
            decisions=self.decisions,
            outcomes=_ranked(self.outcomes),
            reasons=_ranked(self.reasons),
            rules=_ranked(self.rules),
            campaigns=_ranked_groups(self.campaigns),
            segments=_ranked_groups(self.segments),
            shadow=self.shadow,
            people=len(self.people),
            not_signed_in=self.not_signed_in,
            first_ms=self.first_ms,
            last_ms=self.last_ms,
            fairness=Fairness(min_decisions, tuple(rates), len(self.policy_decisions) - len(rates)),
            unreadable=unreadable,
        )


def summarize(
    entries: Iterable[AuditEntry], *, unreadable: int = 0, min_decisions: int = 30
) -> Summary:
    """The `Summary` of `entries`; `unreadable` is how many could not be read, to report it.

    The fairness view compares segments with at least `min_decisions` decisions the policy made
    (frequency-cap, budget, creepiness, quiet-hours, store-unavailable, and the allowed and
    transactional ones it let through); a person's own choices (consent, preference,
    anonymous) do not count, since a person's choice is not the brand singling them out.
    """
    tally = Tally()
    for entry in entries:
        tally.add(entry)
    return tally.summary(unreadable=unreadable, min_decisions=min_decisions)


def segment_label(segment: str | None) -> str:
    """How a requested segment is shown: `""` is `"(everyone)"`, `None` `"(unknown)"`."""
    if segment is None:
        return UNKNOWN_LABEL
    return segment or EVERYONE_LABEL


def _ranked(counter: Counter[str]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(counter.items(), key=lambda item: (-item[1], item[0]))))


def _ranked_groups(groups: dict[str, _Group]) -> Mapping[str, Counts]:
    ranked = sorted(groups.items(), key=lambda item: (-item[1].decisions, item[0]))
    return MappingProxyType({name: group.frozen() for name, group in ranked})


def text(summary: Summary, *, period: str) -> str:
    """The report as a privacy officer reads it: plain words, aligned columns."""
    total = summary.decisions
    lines = [f"throttle audit: {period}", ""]
    first, last = summary.first_ms, summary.last_ms
    if first is None or last is None:
        return "\n".join([*lines, "no decisions", *_unreadable(summary)]) + "\n"
    lines += [
        f"{_count(total, 'decision')}, the first at {_time(first)}, the last at {_time(last)}",
        f"{_count(summary.people, 'distinct signed-in person', 'distinct signed-in people')}"
        f" (counted by pseudonym only); {_count(summary.not_signed_in, 'decision')} "
        "for people not signed in",
        *_unreadable(summary),
    ]
    lines += ["", "decisions by outcome"]
    lines += _table(
        ("outcome", "decisions", "share"),
        [(name, f"{count:,}", _share(count, total)) for name, count in summary.outcomes.items()],
        "<>>",
    )
    if summary.shadow:
        lines.append(
            f"  shadow: {_count(summary.shadow, 'decision')} ({_share(summary.shadow, total)}) "
            "delivered personalized although a rule in shadow mode refused them"
        )
    else:
        lines.append("  shadow: none (no rule in shadow mode refused anything)")
    lines += ["", "decisions by reason"]
    lines += _table(
        ("reason", "decisions", "share", "meaning"),
        [
            (name, f"{count:,}", _share(count, total), _REASON_WORDS.get(name, ""))
            for name, count in summary.reasons.items()
        ],
        "<>><",
    )
    if summary.rules:
        lines += ["", "decisions by rule (the rule that decided)"]
        lines += _table(
            ("rule", "decisions", "share"),
            [(name, f"{count:,}", _share(count, total)) for name, count in summary.rules.items()],
            "<>>",
        )
    lines += ["", "decisions by campaign"]
    lines += _counts_table("campaign", summary.campaigns)
    lines += ["", "decisions by requested segment (every reason; fairness below counts fewer)"]
    lines += _counts_table("segment", summary.segments)
    lines += ["", *_fairness_lines(summary.fairness)]
    return "\n".join(lines) + "\n"


def _unreadable(summary: Summary) -> list[str]:
    if not summary.unreadable:
        return []
    verb = "is" if summary.unreadable == 1 else "are"
    return [
        f"{_count(summary.unreadable, 'entry', 'entries')} could not be read and {verb} not counted"
    ]


def _fairness_lines(fairness: Fairness) -> list[str]:
    minimum = fairness.min_decisions
    lines = [
        "fairness: fallback rate per segment",
        "  Counts only what the policy decides (frequency caps, the creepiness budget and",
        "  threshold, quiet hours, an unavailable store) against what it let through (allowed,",
        "  transactional). A person's own choices (consent, preference, not signed in) are left",
        "  out: a person's choice is not the brand singling them out. A shadow refusal counts",
        "  as a fallback: this judges what the policy decides.",
    ]
    if fairness.rates:
        lines += _table(
            ("segment", "decisions", "fallbacks", "rate"),
            [
                (rate.segment, f"{rate.decisions:,}", f"{rate.fallbacks:,}", f"{rate.rate:.1%}")
                for rate in fairness.rates
            ],
            "<>>>",
        )
    highest, lowest, ratio = fairness.highest, fairness.lowest, fairness.ratio
    if highest is None or lowest is None:
        lines.append(f"  no segment has {minimum:,} or more such decisions: nothing to compare")
    elif ratio is None:
        lines.append(
            f"  highest/lowest: only one segment has {minimum:,} or more such decisions, "
            "nothing to compare it with"
        )
    elif math.isinf(ratio):
        lines.append(
            f"  highest/lowest: unbounded ({highest.segment} {highest.rate:.1%}, "
            f"{lowest.segment} 0.0%: no fallback at all there)"
        )
    else:
        lines.append(
            f"  highest/lowest = {ratio:.1f} ({highest.segment} {highest.rate:.1%}, "
            f"{lowest.segment} {lowest.rate:.1%})"
        )
    if fairness.left_out:
        lines.append(
            f"  {_count(fairness.left_out, 'segment')} left out: fewer than {minimum:,} such "
            "decisions each"
        )
    return lines


def _counts_table(name: str, groups: Mapping[str, Counts]) -> list[str]:
    return _table(
        (name, "decisions", "personalized", "fell back", "fallback rate"),
        [
            (
                label,
                f"{counts.decisions:,}",
                f"{counts.personalized:,}",
                f"{counts.segment:,}",
                _share(counts.segment, counts.decisions),
            )
            for label, counts in groups.items()
        ],
        "<>>>>",
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    every = [head, *rows]
    widths = [max(len(row[column]) for row in every) for column in range(len(head))]
    return [
        "  "
        + "  ".join(
            cell.ljust(width) if side == "<" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ).rstrip()
        for row in every
    ]


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number:,} {one if number == 1 else many or one + 's'}"


def _share(part: int, whole: int) -> str:
    # Only ever of a group with decisions in it.
    return f"{part / whole:.1%}"


def _time(ms: int) -> str:
    return f"{dt.datetime.fromtimestamp(ms / 1000, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def as_dict(summary: Summary) -> dict[str, Any]:
    """The summary as JSON-ready data; rates in [0, 1]. `fairness.ratio` is `null` when there
    is nothing to compare or when it is unbounded (`fairness.ratio_unbounded`)."""
    fairness = summary.fairness
    ratio = fairness.ratio
    return {
        "decisions": summary.decisions,
        "unreadable": summary.unreadable,
        "people": summary.people,
        "not_signed_in": summary.not_signed_in,
        "shadow": summary.shadow,
        "first_ms": summary.first_ms,
        "last_ms": summary.last_ms,
        "outcomes": dict(summary.outcomes),
        "reasons": dict(summary.reasons),
        "rules": dict(summary.rules),
        "campaigns": {name: _counts_dict(counts) for name, counts in summary.campaigns.items()},
        "segments": {name: _counts_dict(counts) for name, counts in summary.segments.items()},
        "fairness": {
            "counted_reasons": sorted(FAIRNESS_REASONS),
            "min_decisions": fairness.min_decisions,
            "segments": [
                {
                    "segment": rate.segment,
                    "decisions": rate.decisions,
                    "fallbacks": rate.fallbacks,
                    "rate": rate.rate,
                }
                for rate in fairness.rates
            ],
            "left_out": fairness.left_out,
            "ratio": None if ratio is None or math.isinf(ratio) else ratio,
            "ratio_unbounded": ratio is not None and math.isinf(ratio),
        },
    }


def _counts_dict(counts: Counts) -> dict[str, int]:
    return {
        "decisions": counts.decisions,
        "personalized": counts.personalized,
        "segment": counts.segment,
    }


def parse_since(text: str, now: float) -> int:
    """A point in time, in ms since the Unix epoch: a duration (`"7d"`, `"24h"`) means that long
    before `now` (seconds since the epoch); a date or date and time in ISO 8601 (`"2026-11-01"`,
    `"2026-11-01T12:00:00+01:00"`) means that instant, in UTC when it names no offset."""
    try:
        return math.floor((now - parse_duration(text)) * 1000)
    except ValueError as error:
        if _DURATION_SHAPE.fullmatch(text):
            raise  # a duration, but too long or zero: parse_duration says which
        duration_error = error
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration (7d, 24h) or a date (2026-11-01)"
        ) from duration_error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return math.floor(moment.timestamp() * 1000)


async def audit(
    redis_url: str,
    *,
    prefix: str,
    since_ms: int | None,
    until_ms: int | None,
    out: TextIO,
    as_json: bool,
    min_decisions: int = 30,
) -> int:
    """Summarize the audit trail `<prefix>audit` at `redis_url` from `since_ms` to `until_ms`
    (inclusive, ms since the epoch, `None` for open) and print it to `out`, as text or JSON.

    Returns 0, or 1 when the period holds no entry: the text says so in one line (naming the
    key when there is no trail at all, as a wrong prefix would), the JSON is the empty summary.
    Raises `StoreUnavailable` when Redis cannot
    be read (the message names the URL without its password) and `ConfigurationError` for a
    URL that is not a Redis URL.
    """
    key = f"{prefix}audit"
    keys: tuple[str, ...] = (key,)
    where = redacted_url(redis_url)
    client: aioredis.Redis | aioredis.RedisCluster
    try:
        if urlsplit(redis_url).scheme.endswith("+cluster"):
            # A cluster store spreads the trail over shards on every node: read them all.
            keys = audit_keys(prefix)
            key = f"{prefix}audit:{{0..{len(keys) - 1}}}"
            client = cluster_client(
                parse_cluster_url(redis_url),
                connect_timeout=_CONNECT_TIMEOUT,
                read_timeout=_READ_TIMEOUT,
            )
        else:
            client = client_for(
                redis_url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_READ_TIMEOUT
            )
    except ValueError as error:
        raise ConfigurationError(f"{where} is not a Redis URL: {error}") from None
    unreadable = 0
    try:
        tally = Tally()
        for shard in keys:
            reader = read_entries(client, shard, since_ms=since_ms, until_ms=until_ms)
            async for entry in reader:
                tally.add(entry)
            unreadable += reader.unreadable
        exists = tally.decisions > 0 or bool(await client.exists(*keys))
    except (RedisError, OSError) as error:
        raise StoreUnavailable(
            f"cannot read the audit trail {key} from Redis at {where}: {error}"
        ) from error
    finally:
        await client.aclose()
    summary = tally.summary(unreadable=unreadable, min_decisions=min_decisions)
    period = _period(since_ms, until_ms)
    if as_json:
        report = {"key": key, "since_ms": since_ms, "until_ms": until_ms, **as_dict(summary)}
        out.write(json.dumps(report, indent=2) + "\n")
    elif tally.decisions:
        out.write(text(summary, period=period))
    if tally.decisions:
        return 0
    if not as_json:
        if not exists:
            out.write(f"no audit trail at {key} in Redis at {where}: is the prefix right?\n")
        else:
            unread = f" ({unreadable:,} could not be read)" if unreadable else ""
            out.write(f"no audit entries in {key} for {period}{unread}\n")
    return 1


def _period(since_ms: int | None, until_ms: int | None) -> str:
    if since_ms is None:
        return "the whole audit trail" if until_ms is None else f"until {_time(until_ms)}"
    if until_ms is None:
        return f"since {_time(since_ms)}"
    return f"{_time(since_ms)} to {_time(until_ms)}"
