"""The embedded store: one process's state in a dict, for demos, development and app tests.

It does the same arithmetic as `lua/deliver.lua`, so a policy behaves the same on both stores;
the behaviour suite runs against each. State expires by the same rule, and is swept as it goes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from throttle.store.base import (
    AuditLimits,
    CapCheck,
    Choice,
    Counter,
    Delivery,
    Erasure,
    Outcome,
    Verdict,
)

_SWEEP_EVERY = 1024
_MAX_AUDIENCE = 100_000


@dataclass(slots=True)
class _Person:
    counters: dict[str, list[int]] = field(default_factory=dict)
    budget: list[list[int]] = field(default_factory=list)
    expires_ms: int = 0


class MemoryStore:
    """Per-person state in this process's memory. Atomic because a decision never awaits."""

    # Its state never leaves the process, so its pseudonyms may use a key made at start-up.
    shared = False

    def __init__(self) -> None:
        self._people: dict[str, _Person] = {}
        self._audiences: dict[str, dict[str, int]] = {}
        # The audit trail, oldest first: (time ms, pseudonym, packed entry).
        self._trail: deque[tuple[int, str, bytes]] = deque()
        self._recent: dict[str, tuple[int, deque[bytes]]] = {}  # pseudonym -> (expiry, entries)
        # Each person's own choices, kept apart from counters as in Redis: (expiry, choices)
        # with `l` their level and `u` when they chose it, `g` when they first sent a GPC
        # opt-out, `s` the special categories they consented to, with when.
        self._choices: dict[str, tuple[int, dict[str, Any]]] = {}
        self._now_ms = 0
        self._until_sweep = _SWEEP_EVERY

    def __len__(self) -> int:
        """How many people's state is held (expired state may linger until the next sweep)."""
        return len(self._people)

    async def deliver(self, delivery: Delivery) -> Outcome:
        self._now_ms = max(self._now_ms, delivery.now_ms)
        self._count_in(delivery)
        window_ms = delivery.limits.audience_window_ms
        sizes = {s: self._audience_size(s, window_ms) for s in delivery.count_segments}
        choices = self._choices_of(delivery.person, delivery.now_ms)
        if choices is not None:
            # A choice is kept for as long after the person's last decision, whatever it decides.
            self._choices[delivery.person] = (
                delivery.now_ms + delivery.limits.keep_choice_ms,
                choices,
            )
        verdict, cap_index, score, repetitions = self._decide(delivery, choices)
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep()
        default = delivery.limits.default_level
        level = choices.get("l", default) if choices else default
        restricted = choices is not None and (level < 2 or "g" in choices)
        return Outcome(verdict, cap_index, score, repetitions, sizes, restricted, level)

    def _choices_of(self, person: str, now_ms: int) -> dict[str, Any] | None:
        held = self._choices.get(person)
        return held[1] if held is not None and held[0] > now_ms else None

    def _decide(
        self, delivery: Delivery, choices: dict[str, Any] | None
    ) -> tuple[Verdict, int, int, int]:
        now, limits = delivery.now_ms, delivery.limits
        person = self._people.get(delivery.person)
        if person is not None and person.expires_ms <= now:
            person = None
        level = choices.get("l", limits.default_level) if choices else limits.default_level
        if level == 0 or (level == 1 and not delivery.minimal_ok):
            return Verdict.PREFERENCE, level, delivery.score_milli, 0
        if delivery.gpc_forbids and choices and "g" in choices:
            return Verdict.GPC, -1, delivery.score_milli, 0
        consented = (choices or {}).get("s") or {}
        for index, category in enumerate(delivery.special):
            if category not in consented:
                return Verdict.SPECIAL, index, delivery.score_milli, 0
        threshold = (
            limits.minimal_threshold_milli
            if level == 1
            else limits.full_threshold_milli
            if level == 3
            else limits.threshold_milli
        )
        if delivery.transactional:
            # The person's level and threshold apply; caps and budget do not.
            verdict = Verdict.CREEPINESS if delivery.score_milli > threshold else Verdict.DELIVERED
            return verdict, -1, delivery.score_milli, 0
        logs = dict(person.counters) if person else {}
        for counter in limits.counters:
            logs[counter.name] = _pruned(
                logs.get(counter.name, []), now, counter.window_ms, counter.keep
            )

        repetitions = 0
        if limits.repetition is not None:
            rep = limits.repetition
            repetitions = min(
                _younger_than(logs.get(rep.counter, []), now, rep.window_ms), rep.saturation
            )
            weight = rep.weight_milli
        else:
            weight = 0
        score = min(1000, delivery.score_milli + weight * repetitions)
        if score > threshold:
            return Verdict.CREEPINESS, -1, score, repetitions
        if delivery.relevance_milli >= 0:
            trust = limits.trust_signed_in_milli + (
                limits.trust_declared_milli if choices and "l" in choices else 0
            )
            weighed = limits.lambda_milli[level - 1] * score
            if delivery.relevance_milli * (1000 + trust) <= weighed:
                return Verdict.CALCULUS, -1, score, repetitions

        refused_by = _refused_by(limits.counters, logs, delivery, shadow=False)
        if refused_by >= 0:
            return Verdict.FREQUENCY_CAP, refused_by, score, repetitions

        budget_log: list[list[int]] = []
        if limits.budget is not None:
            budget = limits.budget
            oldest = now - budget.window_ms
            budget_log = [entry for entry in (person.budget if person else []) if entry[0] > oldest]
            if sum(entry[1] for entry in budget_log) + score > budget.limit_milli:
                return Verdict.BUDGET, -1, score, repetitions
            if score > 0:
                budget_log.append([now, score])
                if len(budget_log) > budget.entries:
                    budget_log.sort(key=lambda entry: (entry[0], entry[1]))
                    first, second = budget_log[0], budget_log[1]
                    budget_log[:2] = [[second[0], first[1] + second[1]]]

        shadow_refusal = (
            _refused_by(limits.counters, logs, delivery, shadow=True) if limits.shadow_caps else -1
        )
        verdict = Verdict.FREQUENCY_CAP if shadow_refusal >= 0 else Verdict.DELIVERED
        if limits.ttl_ms <= 0:
            return verdict, shadow_refusal, score, repetitions
        for counter in limits.counters:
            if not (counter.shadow and shadow_refusal >= 0):
                logs[counter.name].append(now)
        kept = {name: _pruned(log, now, limits.ttl_ms, len(log)) for name, log in logs.items()}
        kept = {name: log for name, log in kept.items() if log}
        if kept or budget_log:
            self._people[delivery.person] = _Person(kept, budget_log, now + limits.ttl_ms)
        return verdict, shadow_refusal, score, repetitions

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
        self._until_sweep = max(
            _SWEEP_EVERY, len(self._people) + len(self._choices) + len(self._recent)
        )
        now = self._now_ms
        for key in [k for k, person in self._people.items() if person.expires_ms <= now]:
            del self._people[key]
        for key in [k for k, (expiry, _) in self._recent.items() if expiry <= now]:
            del self._recent[key]
        for key in [k for k, (expiry, _) in self._choices.items() if expiry <= now]:
            del self._choices[key]

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        return {s: self._audience_size(s, window_ms) for s in segments}

    async def state(self, person: str) -> dict[str, Any] | None:
        held = self._people.get(person)
        choices = self._choices_of(person, self._now_ms)
        state: dict[str, Any] = {}
        if held is not None and held.expires_ms > self._now_ms:
            if held.counters:
                state["c"] = {name: list(log) for name, log in held.counters.items()}
            if held.budget:
                state["b"] = [list(entry) for entry in held.budget]
        if choices:
            state["p"] = {
                key: dict(value) if isinstance(value, dict) else value
                for key, value in choices.items()
            }
        return state or None

    async def choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        self._choose(person, choice, now_ms=now_ms, keep_ms=keep_ms)

    def _choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        if choice.kind == "touch":
            held = self._choices_of(person, now_ms)
            if held is not None:
                self._choices[person] = (now_ms + keep_ms, held)
            return
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

    def note(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        # Nothing here waits, so the choice is recorded at once.
        self._choose(person, choice, now_ms=now_ms, keep_ms=keep_ms)

    def record(self, person: str, entry: bytes, limits: AuditLimits) -> None:
        now = self._now_ms
        trail = self._trail
        trail.append((now, person, entry))
        oldest = now - limits.max_age_ms
        while trail and (len(trail) > limits.max_entries or trail[0][0] <= oldest):
            trail.popleft()
        if person and limits.per_person:
            known = self._recent.get(person)
            recent = known[1] if known else deque(maxlen=limits.per_person)
            recent.appendleft(entry)
            self._recent[person] = (now + limits.keep_ms, recent)

    async def recent(self, person: str) -> list[bytes]:
        known = self._recent.get(person)
        if known is None or known[0] <= self._now_ms:
            return []
        return list(known[1])

    async def audit_entries(self, person: str) -> list[bytes]:
        return [entry for _, who, entry in self._trail if who == person]

    async def erase(self, person: str) -> Erasure:
        held = self._people.pop(person, None)
        choices = self._choices.pop(person, None)
        known = self._recent.pop(person, None)
        before = len(self._trail)
        self._trail = deque(item for item in self._trail if item[1] != person)
        return Erasure(
            state=(held is not None and held.expires_ms > self._now_ms)
            or (choices is not None and choices[0] > self._now_ms),
            decisions=len(known[1]) if known and known[0] > self._now_ms else 0,
            audit_entries=before - len(self._trail),
        )

    async def aclose(self) -> None:
        self._people.clear()
        self._audiences.clear()
        self._trail.clear()
        self._recent.clear()
        self._choices.clear()


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
