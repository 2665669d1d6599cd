"""Shared ops state: per-minute counts of decisions, policy reloads and each worker's health.

Observers run on the decision path, so a decision only bumps counters in this process; a
background task writes them out once a `flush_interval` (one MULTI/EXEC of HINCRBYs per
worker per second, never a command per decision). With a Redis store the counts go to Redis,
where every worker and host reads the same figures; with the memory store they stay here.

Labels come from closed sets: outcomes and reasons are the enums' own; rules are the policy's
(at most `_MAX_RULES` a process); campaigns are those the policy or `OpsConfig.campaigns` names,
others count as `other`; segments are the message segment's top level (`eu` for
`eu/de/berlin`, `*` for everyone), at most `OpsConfig.segments` of them, others `other`. No id
or pseudonym is ever written.

Redis layout (all keys in one cluster slot, hash tag `{ops}`):

    <prefix>{ops}:m:<minute>   hash, one per minute (epoch seconds): field -> count, kept 26 h
    <prefix>{ops}:reloads      sorted set of reloads ("name@version<previous"), by time
    <prefix>{ops}:workers      hash: worker -> JSON of its health, written every flush
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from throttle.faults import LogLimiter
from throttle.observe import Observation

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from throttle.engine import Engine
    from throttle.policy import Policy

logger = logging.getLogger(__name__)

OTHER = "other"
EVERYONE = "*"
MINUTE = 60
# A day of minutes and some room: the dashboard's day view and the alerts' baselines.
KEEP_SECONDS = 26 * 3600
_MAX_RULES = 64
_MAX_RELOADS = 50
# A worker that has not written its health for this long is shown as gone.
WORKER_STALE_SECONDS = 30.0
_LABELS_CACHED = 4096
# Unwritten minutes kept while the shared store cannot be reached; older ones are dropped.
_PENDING_MINUTES = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsConfig:
    """What the ops state keeps.

    - `campaigns`: campaigns shown by name besides those the policy names (its
      `[fallback.content]` tables); any other counts as `other`.
    - `segments`: at most this many distinct top-level segments per process; others `other`.
    - `flush_interval`: seconds between writes of this process's counts.
    """

    campaigns: tuple[str, ...] = ()
    segments: int = 32
    flush_interval: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.campaigns, str):
            raise ValueError("OpsConfig: campaigns is a list of names, not one string")
        object.__setattr__(self, "campaigns", tuple(self.campaigns))
        if self.segments < 1 or not self.flush_interval > 0:
            raise ValueError("OpsConfig: segments must be at least 1 and flush_interval above 0")


@dataclass(frozen=True, slots=True)
class Minute:
    """The decisions of one minute, summed over every worker.

    - `start`: the minute's first second (epoch seconds, a multiple of 60).
    - `decisions`: how many were made; `outcomes` and `reasons` split them.
    - `fallbacks`: how many did not deliver personalized content (segment or category
      content stood in); `fallback_outcomes`, `fallback_reasons`, `fallback_rules`,
      `campaign_fallbacks` and `segment_fallbacks` split them; `campaigns` and `segments`
      split every decision.
    - `shadowed`: delivered only because the policy or the rule is in shadow mode (they would
      have been refused); `shadow_rules` by rule.
    - `policies`: decisions by `name@version` of the policy that made them.
    """

    start: int
    decisions: int = 0
    fallbacks: int = 0
    shadowed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    fallback_outcomes: dict[str, int] = field(default_factory=dict)
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    fallback_rules: dict[str, int] = field(default_factory=dict)
    campaigns: dict[str, int] = field(default_factory=dict)
    campaign_fallbacks: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    segment_fallbacks: dict[str, int] = field(default_factory=dict)
    shadow_rules: dict[str, int] = field(default_factory=dict)
    policies: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, start: int, counts: Mapping[str, int]) -> Minute:
        """A minute from its stored fields (see `_FIELDS`)."""
        minute = cls(start)
        scalars: dict[str, int] = {}
        for name, count in counts.items():
            kind, _, label = name.partition(":")
            if not label:
                scalars[kind] = scalars.get(kind, 0) + count
                continue
            attribute = _MAPS.get(kind)
            if attribute is not None:
                mapping: dict[str, int] = getattr(minute, attribute)
                mapping[label] = mapping.get(label, 0) + count
        return cls(
            start,
            scalars.get("n", 0),
            scalars.get("f", 0),
            scalars.get("h", 0),
            **{attribute: getattr(minute, attribute) for attribute in _MAPS.values()},
        )


# Field names of a minute's hash: `n`, `f`, `h` are totals; `kind:label` split them.
_MAPS = {
    "o": "outcomes",
    "r": "reasons",
    "fo": "fallback_outcomes",
    "fr": "fallback_reasons",
    "fu": "fallback_rules",
    "c": "campaigns",
    "fc": "campaign_fallbacks",
    "s": "segments",
    "fs": "segment_fallbacks",
    "hu": "shadow_rules",
    "v": "policies",
}


def summed(minutes: Iterable[Minute], start: int = 0) -> Minute:
    """Every count of `minutes` added up, as one `Minute` starting at `start`."""
    total: Counter[str] = Counter()
    for minute in minutes:
        total["n"] += minute.decisions
        total["f"] += minute.fallbacks
        total["h"] += minute.shadowed
        for kind, attribute in _MAPS.items():
            for label, count in getattr(minute, attribute).items():
                total[f"{kind}:{label}"] += count
    return Minute.from_counts(start, total)


@dataclass(frozen=True, slots=True)
class Reload:
    """A policy reload seen by any worker: when (epoch seconds), to what, from what."""

    at: float
    policy: str
    version: str
    previous: str


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """One worker's last word: its store guard's state and the policy it decides with.

    - `worker`: `host/pid`; `seen`: when it last wrote (epoch seconds).
    - `store_failing`: its StoreGuard is in a burst of store failures (deciding by the
      policy's `on_error` rule); `fell_back`: decisions it made without the store in that burst.
    """

    worker: str
    seen: float
    store_failing: bool
    fell_back: int
    policy: str
    version: str
    mode: str


class OpsState:
    """This process's share of the ops state, and the reader of everyone's.

    ```python
    ops = OpsState(engine)            # engine.observe(ops.observe) is done here
    ops.start()                       # in the running event loop (or on the first decision)
    minutes = await ops.minutes(time.time() - 3600, time.time())
    await ops.aclose()                # writes what is left
    ```
    The middleware builds one with `ThrottleMiddleware(..., ops=True)`: `middleware.ops`.
    """

    def __init__(
        self,
        engine: Engine,
        config: OpsConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.config = config or OpsConfig()
        self._clock = clock
        client, prefix = _shared_redis(engine.store)
        self._redis: aioredis.Redis | None = client
        base = f"{prefix}{{ops}}:"
        self._minute_prefix = f"{base}m:"
        self._reloads_key = f"{base}reloads"
        self._workers_key = f"{base}workers"
        self.worker = f"{socket.gethostname()}/{os.getpid()}"
        self._logs = LogLimiter(log=logger)
        # Minute -> a decision's fields -> how many decisions had them: the decision path
        # counts once per decision; a flush spreads the counts over the fields.
        self._pending: dict[int, dict[tuple[str, ...], int]] = {}
        # Minute -> field -> count: what a failed write left, and (in process) everything kept.
        self._unwritten: dict[int, Counter[str]] = {}
        self._kept: dict[int, Counter[str]] = {}
        self._local_reloads: list[Reload] = []
        self._pending_reloads: list[Reload] = []
        self._labels: dict[tuple[object, ...], tuple[str, ...]] = {}
        self._rules: set[str] = set()
        self._segments: set[str] = set()
        self._named_campaigns: frozenset[str] = frozenset()
        self._named_for: tuple[Policy, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        engine.observe(self.observe)

    def now(self) -> float:
        """The time by this state's clock (epoch seconds), for reading the latest minutes."""
        return self._clock()

    @property
    def shared(self) -> bool:
        """Whether the state is in Redis (every worker's), or in this process only."""
        return self._redis is not None

    # Writing: the decision path's side.

    def observe(self, observation: Observation) -> None:
        """Count one decision (an engine observer: a few dict increments, no I/O)."""
        if self._task is None and not self._closed:
            self.start()
        decision = observation.decision
        key = (
            decision.outcome, decision.reason, decision.rule, decision.campaign,
            decision.shadow, observation.segment, decision.policy, decision.policy_version,
        )  # fmt: skip
        fields = self._labels.get(key)
        if fields is None:
            fields = self._fields(observation)
            if len(self._labels) >= _LABELS_CACHED:
                self._labels.clear()
            self._labels[key] = fields
        minute = math.floor(self._clock() / MINUTE) * MINUTE
        groups = self._pending.get(minute)
        if groups is None:
            groups = self._pending[minute] = {}
        groups[fields] = groups.get(fields, 0) + 1

    def _fields(self, observation: Observation) -> tuple[str, ...]:
        decision = observation.decision
        campaign = self._campaign(decision.campaign)
        segment = self._segment(observation.segment)
        names = [
            "n",
            f"o:{decision.outcome}",
            f"r:{decision.reason.value}",
            f"c:{campaign}",
            f"s:{segment}",
            f"v:{decision.policy}@{decision.policy_version}",
        ]
        rule = self._rule(decision.rule)
        if not decision.delivers_personalized:
            names += [
                "f",
                f"fo:{decision.outcome}",
                f"fr:{decision.reason.value}",
                f"fc:{campaign}",
                f"fs:{segment}",
            ]
            if rule:
                names.append(f"fu:{rule}")
        elif decision.shadow and decision.outcome != "personalized":
            names.append("h")
            if rule:
                names.append(f"hu:{rule}")
        return tuple(names)

    def _campaign(self, campaign: str | None) -> str:
        policies = self.engine.policies
        if policies is not self._named_for:
            # The campaigns every policy in force names: the default one's and each market's.
            self._named_for = policies
            named = set(self.config.campaigns)
            for policy in policies:
                named.update(name for name in policy.fallback.content if name != "*")
            self._named_campaigns = frozenset(named)
        if campaign is None:
            return "-"
        return campaign if campaign in self._named_campaigns else OTHER

    def _rule(self, rule: str | None) -> str:
        if not rule:
            return ""
        if rule in self._rules:
            return rule
        if len(self._rules) >= _MAX_RULES:
            return OTHER
        self._rules.add(rule)
        return rule

    def _segment(self, segment: str) -> str:
        top = segment.partition("/")[0] or EVERYONE
        if top in self._segments:
            return top
        if len(self._segments) >= self.config.segments:
            return OTHER
        self._segments.add(top)
        return top

    def reloaded(self, previous: Policy | None, current: Policy) -> None:
        """Record a reload (or, with `previous` None, the policy a worker started with)."""
        self._labels.clear()
        reload = Reload(
            self._clock(),
            current.name,
            current.version,
            previous.version if previous is not None else "",
        )
        if self._redis is None:
            self._local_reloads.append(reload)
            del self._local_reloads[:-_MAX_RELOADS]
        else:
            self._pending_reloads.append(reload)
            del self._pending_reloads[:-_MAX_RELOADS]

    def start(self) -> None:
        """Start writing counts every `flush_interval`; needs a running event loop."""
        if self._task is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the first decision starts it
        self._task = loop.create_task(self._flushing(), name="throttle-ops-flush")

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write this process's counts, reloads and health now (the background task's work)."""
        pending = self._counts()
        reloads, self._pending_reloads = self._pending_reloads, []
        if self._redis is None:
            for minute, counts in pending.items():
                self._kept.setdefault(minute, Counter()).update(counts)
            oldest = self._clock() - KEEP_SECONDS
            for minute in [m for m in self._kept if m < oldest]:
                del self._kept[minute]
            return
        try:
            await asyncio.wait_for(self._write(pending, reloads), self._timeout())
        except Exception as error:  # Redis down or slow: keep the counts for the next flush
            self._logs.warning(
                "flush",
                "throttle: writing the ops state failed: %s",
                _describe(error),
                extra={"error": _describe(error)},
            )
            self._restore(pending, reloads)

    def _counts(self) -> dict[int, Counter[str]]:
        """What is unwritten, by minute and field; counting starts again."""
        grouped, self._pending = self._pending, {}
        counts, self._unwritten = self._unwritten, {}
        for minute, groups in grouped.items():
            fields_counted = counts.setdefault(minute, Counter())
            for fields, decisions in groups.items():
                for name in fields:
                    fields_counted[name] += decisions
        return counts

    def _timeout(self) -> float:
        return max(self.engine.policy.store.timeout, 1.0)

    async def _write(self, pending: dict[int, Counter[str]], reloads: list[Reload]) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            for minute, counts in pending.items():
                key = f"{self._minute_prefix}{minute}"
                for name, count in counts.items():
                    pipe.hincrby(key, name, count)
                pipe.expire(key, KEEP_SECONDS)
            for reload in reloads:
                member = f"{reload.policy}@{reload.version}<{reload.previous}"
                pipe.zadd(self._reloads_key, {member: reload.at}, nx=True)
            if reloads:
                pipe.zremrangebyrank(self._reloads_key, 0, -_MAX_RELOADS - 1)
                pipe.expire(self._reloads_key, KEEP_SECONDS)
            pipe.hset(self._workers_key, self.worker, json.dumps(self._health()))
            pipe.expire(self._workers_key, KEEP_SECONDS)
            await pipe.execute()

    def _restore(self, pending: dict[int, Counter[str]], reloads: list[Reload]) -> None:
        for minute, counts in pending.items():
            self._unwritten.setdefault(minute, Counter()).update(counts)
        for minute in sorted(self._unwritten)[:-_PENDING_MINUTES]:
            del self._unwritten[minute]
        self._pending_reloads[:0] = reloads
        del self._pending_reloads[:-_MAX_RELOADS]

    def _health(self) -> dict[str, Any]:
        guard = self.engine.guard
        policy = self.engine.policy
        return {
            "seen": self._clock(),
            "failing": guard.failing,
            "fell_back": guard.fell_back,
            "policy": policy.name,
            "version": policy.version,
            "mode": policy.policy.mode,
        }

    async def aclose(self) -> None:
        """Stop the background task and write what is left (before the store closes)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._redis.hdel(self._workers_key, self.worker), self._timeout()
                )

    # Reading: what the dashboard and the alerts see.

    async def minutes(self, since: float, until: float) -> list[Minute]:
        """Every minute from the one holding `since` to the one holding `until` (epoch
        seconds), oldest first, summed over every worker; a minute without decisions is all
        zeros. This process's counts are written first; other workers' last `flush_interval`
        may not be in them yet."""
        first = math.floor(since / MINUTE) * MINUTE
        last = math.floor(until / MINUTE) * MINUTE
        starts = range(first, last + 1, MINUTE)
        await self.flush()
        if self._redis is None:
            return [Minute.from_counts(start, self._kept.get(start, {})) for start in starts]
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(f"{self._minute_prefix}{start}")
            replies = await pipe.execute()
        return [
            Minute.from_counts(start, {_text(k): int(v) for k, v in reply.items()})
            for start, reply in zip(starts, replies, strict=True)
        ]

    async def reloads(self) -> list[Reload]:
        """The recent policy reloads of every worker, newest first (at most 50)."""
        if self._redis is None:
            return sorted(self._local_reloads, key=lambda r: r.at, reverse=True)
        rows: Any = await self._redis.zrange(
            self._reloads_key, 0, _MAX_RELOADS - 1, desc=True, withscores=True
        )
        reloads = []
        for member, at in rows:
            named, _, previous = _text(member).rpartition("<")
            policy, _, version = named.rpartition("@")
            reloads.append(Reload(float(at), policy, version, previous))
        return reloads

    async def workers(self) -> list[WorkerHealth]:
        """Every worker that wrote its health in the last `WORKER_STALE_SECONDS`, by name."""
        if self._redis is None:
            health = {self.worker: self._health()}
        else:
            raw = await self._redis.hgetall(self._workers_key)
            health = {}
            for name, value in raw.items():
                with contextlib.suppress(ValueError, TypeError):
                    health[_text(name)] = json.loads(value)
        now = self._clock()
        found = []
        for name, fields in sorted(health.items()):
            try:
                seen = float(fields["seen"])
                if now - seen > WORKER_STALE_SECONDS:
                    continue
                found.append(
                    WorkerHealth(
                        name,
                        seen,
                        bool(fields["failing"]),
                        int(fields["fell_back"]),
                        str(fields["policy"]),
                        str(fields["version"]),
                        str(fields["mode"]),
                    )
                )
            except (KeyError, ValueError, TypeError):
                continue  # written by another version of throttle: not shown
        return found


def _shared_redis(store: object) -> tuple[aioredis.Redis | None, str]:
    """The redis-py client of a shared store, and its key prefix; `None` for in-process."""
    if not getattr(store, "shared", False):
        return None, ""
    client = getattr(store, "client", None)
    prefix = getattr(store, "prefix", "throttle:")
    if client is None:
        logger.warning(
            "throttle: the store %s has no Redis client for the ops state; each process "
            "keeps its own",
            type(store).__name__,
            extra={"store": type(store).__name__},
        )
        return None, ""
    return client, str(prefix)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
