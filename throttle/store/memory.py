"""The embedded store: one process's state in a dict, for demos, development and app tests.

It does the same arithmetic as `lua/deliver.lua`, so a policy behaves the same on both stores;
the behaviour suite runs against each. State expires by the same rule, and is swept as it goes.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from throttle.audit import pack_entry
from throttle.store.base import (
    AuditLimits,
    CapCheck,
    Choice,
    Counter,
    Delivery,
    Erasure,
    Outcome,
    Verdict,
    outcome_key,
)

_SWEEP_EVERY = 1024
# Quiet periods claimed at once, at most; past this, lapsed ones are dropped.
_CLAIMS_KEPT = 4096
_MAX_AUDIENCE = 100_000
_TOKEN_BYTES = 8


@dataclass(slots=True)
class _Record:
    """One person's record, as `lua/record.lua` lays it out in Redis (choices kept apart)."""

    counters: dict[str, list[int]] = field(default_factory=dict)
    budget: list[list[int]] = field(default_factory=list)
    token: str = ""
    recent: list[tuple[int, bytes]] = field(default_factory=list)  # (when, entry), oldest first
    expires_ms: int = 0
    # Reservations not yet settled: id -> (delivery time, expiry, budget spend, counters).
    reservations: dict[str, _Held] = field(default_factory=dict)


class _Held(NamedTuple):
    """A reservation as `lua/record.lua` keeps it: its entries are in the counters and budget."""

    at: int
    expires_ms: int
    spend: int
    counters: tuple[str, ...]


class MemoryStore:
    """Per-person state in this process's memory. Atomic because a decision never awaits."""

    # Its state never leaves the process, so its pseudonyms may use a key made at start-up.
    shared = False

    def __init__(self) -> None:
        self._people: dict[str, _Record] = {}
        # Each person's own choices, kept apart from their record as in Redis: (expiry,
        # choices) with `l` their level and `u` when they chose it, `g` when they first sent
        # a GPC opt-out, `s` the special categories they consented to, with when.
        self._choices: dict[str, tuple[int, dict[str, Any]]] = {}
        self._audiences: dict[str, dict[str, int]] = {}
        # The audit trail, oldest first: (time ms, packed entry).
        self._trail: deque[tuple[int, bytes]] = deque()
        # Data requests made by support staff, as the trail keeps them, oldest first.
        self._requests: deque[bytes] = deque()
        self._now_ms = 0
        self._until_sweep = _SWEEP_EVERY
        # Claimed names (alerts' quiet periods) and when, by the monotonic clock, they lapse.
        self._claims: dict[str, float] = {}

    def __len__(self) -> int:
        """How many people's records are held (expired ones may linger until the next sweep)."""
        return len(self._people)

    def trail(self) -> list[bytes]:
        """The audit trail's entries, oldest first."""
        return [entry for _, entry in self._trail]

    def requests(self) -> list[bytes]:
        """The data requests support staff made, packed, oldest first."""
        return list(self._requests)

    def _record(self, person: str, now_ms: int) -> _Record | None:
        held = self._people.get(person)
        return held if held is not None and held.expires_ms > now_ms else None

    def _choices_of(self, person: str, now_ms: int) -> dict[str, Any] | None:
        held = self._choices.get(person)
        return held[1] if held is not None and held[0] > now_ms else None

    async def deliver(self, delivery: Delivery) -> Outcome:
        self._now_ms = max(self._now_ms, delivery.now_ms)
        self._count_in(delivery)
        window_ms = delivery.limits.audience_window_ms
        sizes = {s: self._audience_size(s, window_ms) for s in delivery.count_segments}
        now, person = delivery.now_ms, delivery.person
        choices = self._choices_of(person, now)
        if delivery.gpc_now and not (choices and "g" in choices):
            # Kept from its first time, before the answer leaves.
            choices = {**(choices or {}), "g": now}
        if choices is not None and not delivery.dry_run:
            # A choice is kept for its time after the person's last decision, whatever it decides.
            self._choices[person] = (now + delivery.limits.keep_choice_ms, choices)
        outcome = _Decision(delivery, self._record(person, now), choices).run()
        record = outcome.record
        if delivery.dry_run:
            record = self._record(person, now)
        elif record is None:
            self._people.pop(delivery.person, None)
        else:
            self._people[delivery.person] = record
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep()
        return Outcome(
            outcome.verdict,
            outcome.cap_index,
            outcome.score,
            outcome.repetitions,
            sizes,
            outcome.restricted,
            outcome.level,
            record.token if record is not None else "",
            outcome.reserved,
        )

    def _count_in(self, delivery: Delivery) -> None:
        person, seen = delivery.person, self._now_ms
        for segment in delivery.audiences:
            audience = self._audiences.setdefault(segment, {})
            # Kept in the order people were last seen, so pruning stops at the first recent one.
            if audience.pop(person, None) is None and len(audience) >= _MAX_AUDIENCE:
                self._prune_audience(audience, delivery.limits.audience_window_ms)
                if len(audience) >= _MAX_AUDIENCE:
                    continue
            audience[person] = seen

    def _audience_size(self, segment: str, window_ms: int) -> int:
        audience = self._audiences.get(segment)
        if not audience:
            return 0
        self._prune_audience(audience, window_ms)
        return len(audience)

    def _prune_audience(self, audience: dict[str, int], window_ms: int) -> None:
        oldest = self._now_ms - window_ms
        gone = []
        for person, seen in audience.items():
            if seen > oldest:
                break
            gone.append(person)
        for person in gone:
            del audience[person]

    def _sweep(self) -> None:
        # As many decisions between sweeps as people held: a sweep costs O(1) per decision.
        self._until_sweep = max(_SWEEP_EVERY, len(self._people) + len(self._choices))
        now = self._now_ms
        for key in [k for k, record in self._people.items() if record.expires_ms <= now]:
            del self._people[key]
        for key in [k for k, (expiry, _) in self._choices.items() if expiry <= now]:
            del self._choices[key]

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        return {s: self._audience_size(s, window_ms) for s in segments}

    async def state(self, person: str) -> dict[str, Any] | None:
        record = self._record(person, self._now_ms)
        choices = self._choices_of(person, self._now_ms)
        state: dict[str, Any] = {}
        if record is not None and record.counters:
            state["c"] = {name: list(log) for name, log in record.counters.items()}
        if record is not None and record.budget:
            state["b"] = [list(entry) for entry in record.budget]
        if choices:
            state["p"] = {
                key: dict(value) if isinstance(value, dict) else value
                for key, value in choices.items()
            }
        if record is not None and record.reservations:
            state["v"] = {
                held_id: [held.at, held.expires_ms, held.spend, list(held.counters)]
                for held_id, held in record.reservations.items()
            }
        return state or None

    async def settle(self, person: str, reservation: str, *, commit: bool, now_ms: int) -> bool:
        self._now_ms = max(self._now_ms, now_ms)
        record = self._record(person, now_ms)
        if record is None or not record.reservations:
            return False
        counters = dict(record.counters)
        budget = [list(entry) for entry in record.budget]
        reservations = dict(record.reservations)
        changed = _expire_reservations(reservations, counters, budget, now_ms)
        held = reservations.pop(reservation, None)
        if held is not None:
            if not commit:
                _unreserve(held, counters, budget)
            changed = True
        if changed:
            # The record keeps its expiry, and goes when nothing is left in it (settle.lua).
            record.counters, record.budget, record.reservations = counters, budget, reservations
            if not (counters or budget or record.recent or reservations):
                del self._people[person]
        return held is not None

    async def choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        choices = dict(self._choices_of(person, now_ms) or {})
        consented = dict(choices.get("s") or {})
        if choice.kind == "level":
            choices["l"], choices["u"] = choice.value, now_ms
        elif choice.kind == "consent":
            consented[str(choice.value)] = now_ms
        elif choice.kind == "withdraw":
            consented.pop(str(choice.value), None)
        elif choice.kind == "opt-out":
            choices.setdefault("g", now_ms)
        elif choice.kind == "opt-in":
            choices.pop("g", None)
        else:
            raise ValueError(f"unknown choice {choice.kind!r}")
        if consented:
            choices["s"] = consented
        else:
            choices.pop("s", None)
        if choices:
            self._choices[person] = (now_ms + keep_ms, choices)
        else:
            self._choices.pop(person, None)

    def remember(
        self,
        person: str,
        time_ms: int,
        tail: bytes | None,
        audit: AuditLimits | None,
        *,
        keep_ms: int,
    ) -> None:
        self._now_ms = max(self._now_ms, time_ms)
        choices = self._choices_of(person, time_ms)
        if choices is not None:
            self._choices[person] = (time_ms + keep_ms, choices)
        record = self._record(person, time_ms)
        if tail is None or audit is None:
            return
        if audit.per_person <= 0:
            self.record(time_ms, record.token if record else "", tail, audit)
            return
        record = record or _Record()
        record.token = record.token or secrets.token_hex(_TOKEN_BYTES)
        record.recent = _remembered(
            record.recent,
            (time_ms, pack_entry(time_ms, "", tail)),
            audit.per_person,
            time_ms - audit.keep_ms,
        )
        record.expires_ms = max(record.expires_ms, time_ms + audit.keep_ms)
        self._people[person] = record
        self.record(time_ms, record.token, tail, audit)

    def record(self, time_ms: int, token: str, tail: bytes, audit: AuditLimits) -> None:
        trail = self._trail
        trail.append((time_ms, pack_entry(time_ms, token, tail)))
        oldest = self._now_ms - audit.max_age_ms
        while trail and (len(trail) > audit.max_entries or trail[0][0] <= oldest):
            trail.popleft()

    async def recent(self, person: str) -> list[bytes]:
        record = self._record(person, self._now_ms)
        return [entry for _, entry in reversed(record.recent)] if record is not None else []

    async def erase(self, person: str) -> Erasure:
        # One process writes its decisions at once: none made before this can come after it,
        # so nothing like RedisStore's tombstone is needed here.
        record = self._people.pop(person, None)
        choices = self._choices.pop(person, None)
        held = record is not None and record.expires_ms > self._now_ms
        return Erasure(
            state=held or (choices is not None and choices[0] > self._now_ms),
            decisions=len(record.recent) if record is not None and held else 0,
        )

    async def token_of(self, person: str) -> str:
        record = self._record(person, self._now_ms)
        return record.token if record is not None else ""

    async def append_request(self, entry: bytes, audit: AuditLimits) -> None:
        self._requests.append(entry)
        while len(self._requests) > audit.max_entries:
            self._requests.popleft()

    async def claim(self, name: str, ttl_ms: int) -> bool:
        """Whether this call is the first to claim `name` for `ttl_ms` in this process: what
        Redis's SET NX PX does for every process (alerts' quiet periods)."""
        now = time.monotonic()
        lapses = self._claims.get(name)
        if lapses is not None and now < lapses:
            return False
        if len(self._claims) >= _CLAIMS_KEPT:
            self._claims = {k: v for k, v in self._claims.items() if v > now}
        self._claims[name] = now + ttl_ms / 1000
        return True

    async def aclose(self) -> None:
        self._people.clear()
        self._choices.clear()
        self._audiences.clear()
        self._trail.clear()
        self._requests.clear()


class _Decided(NamedTuple):
    verdict: Verdict
    cap_index: int
    score: int
    repetitions: int
    restricted: bool
    level: int
    record: _Record | None
    reserved: bool


class _Decision:
    """One delivery against one person's record: the arithmetic of `lua/deliver.lua`, step by
    step in the same order, so that both stores leave the same record behind."""

    def __init__(
        self, delivery: Delivery, held: _Record | None, choices: dict[str, Any] | None
    ) -> None:
        self.delivery = delivery
        self.now = delivery.now_ms
        self.limits = delivery.limits
        self.template = delivery.recent
        self.held = held
        self.logs = dict(held.counters) if held else {}
        self.budget = [list(entry) for entry in held.budget] if held else []
        self.choices = choices
        self.token = held.token if held else ""
        self.recent = list(held.recent) if held else []
        self.reservations = dict(held.reservations) if held else {}
        self.dirty = _expire_reservations(self.reservations, self.logs, self.budget, self.now)
        self.reserved = False
        self.level = (self.choices or {}).get("l", self.limits.default_level)
        self.restricted = self.choices is not None and (self.level < 2 or "g" in self.choices)
        if self.template is not None and self.limits.recent_per_person > 0 and not self.token:
            self.token = secrets.token_hex(_TOKEN_BYTES)
            self.dirty = True

    def run(self) -> _Decided:
        delivery, limits, level, choices = self.delivery, self.limits, self.level, self.choices
        content = delivery.score_milli
        if level == 0 or (level == 1 and not delivery.minimal_ok):
            return self.finish(Verdict.PREFERENCE, level, content, 0, f"p{level}", False)
        if delivery.gpc_forbids and choices and "g" in choices:
            return self.finish(Verdict.GPC, -1, content, 0, "o", False)
        consented = (choices or {}).get("s") or {}
        for index, category in enumerate(delivery.special):
            if category not in consented:
                return self.finish(Verdict.SPECIAL, index, content, 0, f"x{index}", False)
        if delivery.quiet:
            return self.finish(Verdict.QUIET_HOURS, -1, content, 0, "q", False)
        threshold = (
            limits.minimal_threshold_milli
            if level == 1
            else limits.full_threshold_milli
            if level == 3
            else limits.threshold_milli
        )
        if delivery.transactional:
            # The person's level and threshold apply; caps and budget do not.
            if content > threshold:
                return self.finish(Verdict.CREEPINESS, -1, content, 0, "s", False)
            return self.finish(Verdict.DELIVERED, -1, content, 0, "t", False)
        now, logs = self.now, self.logs
        for counter in limits.counters:
            logs[counter.name] = _pruned(
                logs.get(counter.name, []), now, counter.window_ms, counter.keep
            )
        repetitions = 0
        weight = 0
        if limits.repetition is not None:
            rep = limits.repetition
            repetitions = min(
                _younger_than(logs.get(rep.counter, []), now, rep.window_ms), rep.saturation
            )
            weight = rep.weight_milli
        score = min(1000, content + weight * repetitions)
        if score > threshold:
            return self.finish(Verdict.CREEPINESS, -1, score, repetitions, "s", False)
        if delivery.relevance_milli >= 0:
            trust = limits.trust_signed_in_milli + (
                limits.trust_declared_milli if choices and "l" in choices else 0
            )
            if delivery.relevance_milli * (1000 + trust) <= limits.lambda_milli[level - 1] * score:
                return self.finish(Verdict.CALCULUS, -1, score, repetitions, "k", False)
        refused = _refused_by(limits.counters, logs, delivery, shadow=False)
        if refused >= 0:
            return self.finish(
                Verdict.FREQUENCY_CAP, refused, score, repetitions, f"c{refused}", False
            )
        spend = 0
        if limits.budget is not None:
            budget = limits.budget
            oldest = now - budget.window_ms
            kept = [entry for entry in self.budget if entry[0] > oldest]
            if sum(entry[1] for entry in kept) + score > budget.limit_milli:
                return self.finish(Verdict.BUDGET, -1, score, repetitions, "b", False)
            self.budget = kept
            if score > 0:
                spend = score
                kept.append([now, score])
                if len(kept) > budget.entries:
                    kept.sort(key=lambda entry: (entry[0], entry[1]))
                    first, second = kept[0], kept[1]
                    kept[:2] = [[second[0], first[1] + second[1]]]
        else:
            self.budget = []
        shadow_refused = (
            _refused_by(limits.counters, logs, delivery, shadow=True) if limits.shadow_caps else -1
        )
        verdict = Verdict.FREQUENCY_CAP if shadow_refused >= 0 else Verdict.DELIVERED
        key = "a"
        template = self.template
        if template is not None:
            key = outcome_key(
                verdict,
                shadow_refused,
                level,
                score,
                False,
                limits.band,
                frozenset((shadow_refused,)),
            )
        if limits.ttl_ms <= 0:
            self.logs, self.budget = {}, []
            return self.finish(verdict, shadow_refused, score, repetitions, key, True)
        touched = {counter.name: counter.shadow for counter in limits.counters}
        for name, log in list(logs.items()):
            shadow = touched.get(name)
            if shadow is None:
                logs[name] = _pruned(log, now, limits.ttl_ms, len(log))
            elif not shadow or shadow_refused < 0:
                logs[name] = [*log, now]
        if delivery.hold is not None:
            counted = tuple(
                counter.name
                for counter in limits.counters
                if not counter.shadow or shadow_refused < 0
            )
            self.reservations[delivery.hold.id] = _Held(
                now, now + delivery.hold.hold_ms, spend, counted
            )
            self.reserved = True
        return self.finish(verdict, shadow_refused, score, repetitions, key, True)

    def finish(
        self, verdict: Verdict, index: int, score: int, repetitions: int, key: str, changed: bool
    ) -> _Decided:
        template, now, per_person = self.template, self.now, self.limits.recent_per_person
        if template is not None and per_person > 0:
            entry = (now, template.entry(now, key, score))
            self.recent = _remembered(
                self.recent, entry, per_person, now - self.limits.recent_keep_ms
            )
            changed = True
        else:
            self.recent = []  # the trail is off now: what it kept goes with the next write
        record = self.held
        if changed or self.dirty:
            record = _Record(
                {name: log for name, log in self.logs.items() if log},
                self.budget,
                self.token,
                self.recent,
                reservations=self.reservations,
            )
            lifetime = self.lifetime(record)
            record.expires_ms = now + lifetime
            if lifetime <= 0:
                record = None
        reserved = self.reserved and not self.delivery.dry_run
        return _Decided(
            verdict, index, score, repetitions, self.restricted, self.level, record, reserved
        )

    def lifetime(self, record: _Record) -> int:
        """How long the record must live: the longer of what it holds (as deliver.lua)."""
        keep = self.limits.ttl_ms if record.counters or record.budget else 0
        if record.recent:
            keep = max(keep, self.limits.recent_keep_ms)
        for held in record.reservations.values():
            keep = max(keep, held.expires_ms - self.now)
        return keep


def _expire_reservations(
    reservations: dict[str, _Held],
    counters: dict[str, list[int]],
    budget: list[list[int]],
    now_ms: int,
) -> bool:
    """Release the reservations whose hold ran out by `now_ms` (in place); whether any did."""
    expired = [held_id for held_id, held in reservations.items() if held.expires_ms <= now_ms]
    for held_id in expired:
        _unreserve(reservations.pop(held_id), counters, budget)
    return bool(expired)


def _unreserve(held: _Held, counters: dict[str, list[int]], budget: list[list[int]]) -> None:
    """Take one reservation's entries back out (as record.lua's `unreserve`): its time from each
    counter it was counted in, its spend from the oldest budget entry at or after its time that
    holds as much (a merge of the oldest entries may have folded it into a later one)."""
    for name in held.counters:
        log = counters.get(name)
        if log is not None and held.at in log:
            log = list(log)
            log.remove(held.at)
            if log:
                counters[name] = log
            else:
                del counters[name]
    if held.spend > 0:
        found = None
        for index, (at, spent) in enumerate(budget):
            if at >= held.at and spent >= held.spend and (found is None or at < budget[found][0]):
                found = index
        if found is not None:
            budget[found] = [budget[found][0], budget[found][1] - held.spend]
            if budget[found][1] == 0:
                del budget[found]


def _remembered(
    recent: list[tuple[int, bytes]], entry: tuple[int, bytes], keep: int, oldest: int
) -> list[tuple[int, bytes]]:
    """The recent decisions with `entry` appended: the newest `keep` of them, none older than
    `oldest` (as record.lua keeps them)."""
    kept = [*recent, entry][-keep:]
    first = 0
    while first < len(kept) - 1 and kept[first][0] <= oldest:
        first += 1
    return kept[first:]


def _refused_by(
    counters: tuple[Counter, ...], logs: dict[str, list[int]], delivery: Delivery, *, shadow: bool
) -> int:
    """The first cap (in policy order) among enforced or shadow ones that is full, or -1."""
    now, first = delivery.now_ms, -1
    for counter in counters:
        if counter.shadow is not shadow:
            continue
        log = logs[counter.name]
        for cap in counter.caps:
            if 0 <= first < cap.index:
                continue
            if _younger_than(log, now, _window(cap, delivery)) >= cap.limit:
                first = cap.index
    return first


def _window(cap: CapCheck, delivery: Delivery) -> int:
    if cap.period:
        # Entries at or after the period's start count: younger than (now - start + 1) ms.
        return delivery.now_ms - delivery.period_starts[cap.period - 1] + 1
    return cap.window_ms


def _younger_than(log: list[int], now: int, window_ms: int) -> int:
    oldest = now - window_ms
    return sum(1 for t in log if t > oldest)


def _pruned(log: list[int], now: int, window_ms: int, keep: int) -> list[int]:
    oldest = now - window_ms
    kept = [t for t in log if t > oldest]
    if len(kept) > keep:
        kept = sorted(kept)[len(kept) - keep :]
    return kept
