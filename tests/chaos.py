"""Decisions under load while something happens to the cluster: what fell back, for how long,
and who got past a cap. Bounded in count and in time; the figures go to docs/cluster.md."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Tally:
    """What the decisions came to. Times are monotonic seconds."""

    cap: int
    decisions: int = 0
    # Exceptions raised to the caller, or non-2xx answers from a server: must stay 0.
    failures: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)
    fell_back: int = 0
    first_fallback: float | None = None
    last_fallback: float | None = None
    fell_back_people: set[str] = field(default_factory=set)
    personalized: Counter[str] = field(default_factory=Counter)
    # (when, person, reason) of every decision, in the order they came back.
    log: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, person: str, outcome: str, reason: str, at: float) -> None:
        self.decisions += 1
        self.log.append((at, person, reason))
        if outcome == "personalized":
            self.personalized[person] += 1
        if reason == "store-unavailable":
            self.fell_back += 1
            self.fell_back_people.add(person)
            if self.first_fallback is None:
                self.first_fallback = at
            self.last_fallback = at

    def failed(self, kind: str) -> None:
        self.decisions += 1
        self.failures += 1
        self.failure_kinds[kind] += 1

    @property
    def fallback_seconds(self) -> float:
        """From the first decision that fell back to the last."""
        if self.first_fallback is None or self.last_fallback is None:
            return 0.0
        return self.last_fallback - self.first_fallback

    def decided_since(self, moment: float, people: set[str]) -> bool:
        """Whether one of `people` was decided with the store (not falling back) after `moment`."""
        return any(
            at > moment and person in people and reason != "store-unavailable"
            for at, person, reason in reversed(self.log[-2000:])
        )

    def over_cap(self, people: set[str] | None = None) -> tuple[int, int]:
        """(people who got more personalized deliveries than the cap, deliveries past it)."""
        over = {
            person: count - self.cap
            for person, count in self.personalized.items()
            if count > self.cap and (people is None or person in people)
        }
        return len(over), sum(over.values())

    def summary(self, name: str) -> str:
        people, deliveries = self.over_cap()
        return (
            f"{name}: {self.decisions} decisions, {self.failures} failures, "
            f"{self.fell_back} fell back ({len(self.fell_back_people)} people) over "
            f"{self.fallback_seconds:.2f} s, {people} people over the cap of {self.cap} "
            f"by {deliveries} deliveries"
        )


Decide = Callable[[str], Awaitable[tuple[str, str]]]


async def load(
    decide: Decide,
    tally: Tally,
    *,
    people: int,
    workers: int,
    stop: asyncio.Event,
    max_decisions: int,
    max_seconds: float,
    seed: int = 7,
) -> None:
    """Decisions for people drawn at random, by `workers` at once, until `stop` is set, the
    count or the time runs out; then `stop` is set. `decide(person)` returns (outcome,
    reason); what it raises is counted as a failure."""
    chooser = random.Random(seed)
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        while not stop.is_set() and tally.decisions < max_decisions:
            if time.monotonic() > deadline:
                return
            person = f"person-{chooser.randrange(people)}"
            try:
                outcome, reason = await decide(person)
            except Exception as error:  # what the test must see stay at 0
                tally.failed(type(error).__name__)
                continue
            tally.add(person, outcome, reason, time.monotonic())

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        stop.set()  # whoever waits on the load's progress stops waiting
