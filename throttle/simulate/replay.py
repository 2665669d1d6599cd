"""Replaying a trace through policies: the real engine, the memory store, a simulated clock.

Each policy gets an engine of its own over a store of its own, and every message is decided
by each in turn at the trace's time, so `--against` compares like with like.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from throttle.decision import Decision
from throttle.engine import Engine
from throttle.policy import Policy
from throttle.simulate.alerts import AlertReplay, FiredAlert
from throttle.simulate.trace import TraceMessage
from throttle.store.memory import MemoryStore

SCORE_BINS = 10
PERSONALIZED = "personalized"


class SimulatedClock:
    """The trace's time: both the wall clock and the monotonic one of the engine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Tally:
    """What one policy did to a trace. Shadow decisions count as what enforcing would do."""

    policy: Policy
    # The markets whose policies decided beside `policy` (the base), by name.
    markets: Mapping[str, Policy] = field(default_factory=dict)
    messages: int = 0
    # "personalized", or the reason segment content was (or, in shadow, would be) sent.
    outcomes: Counter[str] = field(default_factory=Counter)
    # Segment decisions whose personalized content was delivered all the same (shadow mode).
    shadow: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    people_by_rule: dict[str, set[str]] = field(default_factory=dict)
    campaigns: dict[str, Counter[str]] = field(default_factory=dict)
    scores: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    people: set[str] = field(default_factory=set)
    # The alerts the policy's rate conditions would have delivered, in trace order.
    alerts: list[FiredAlert] = field(default_factory=list)
    # Messages by the policy that decided them ("name @version"), when markets decide too.
    policies: Counter[str] = field(default_factory=Counter)

    def add(self, message: TraceMessage, decision: Decision) -> None:
        self.messages += 1
        if self.markets:
            self.policies[f"{decision.policy} @{decision.policy_version}"] += 1
        # "personalized", "category" (the middle band), or why segment content stood in.
        outcome = decision.outcome if decision.outcome != "segment" else decision.reason.value
        self.outcomes[outcome] += 1
        campaign = self.campaigns.get(message.marker.campaign)
        if campaign is None:
            campaign = self.campaigns[message.marker.campaign] = Counter()
        campaign[outcome] += 1
        if decision.shadow and outcome != PERSONALIZED:
            self.shadow += 1
        person = message.person
        if person is not None:
            self.people.add(person)
        rule = decision.rule
        if rule is not None:
            self.rules[rule] += 1
            if person is not None:
                hit = self.people_by_rule.get(rule)
                if hit is None:
                    hit = self.people_by_rule[rule] = set()
                hit.add(person)
        if decision.score is not None:
            self.scores[min(int(decision.score * SCORE_BINS), SCORE_BINS - 1)] += 1

    @property
    def personalized(self) -> int:
        return self.outcomes[PERSONALIZED]


@dataclass
class Replay:
    """The tallies of every policy over one trace, and what it took."""

    tallies: list[Tally]
    first_t: float | None = None
    last_t: float | None = None
    seconds: float = 0.0
    # Trace lines that could not be used, left out of every tally.
    skipped_lines: int = 0


async def replay(
    policies: Sequence[Policy],
    messages: Iterable[TraceMessage],
    markets: Sequence[Mapping[str, Policy]] = (),
) -> Replay:
    """Decide every message under each policy; the engines never touch a network.

    `markets`, one mapping per policy: each message's `market` chooses among them, and a
    message of no market, or of a market not listed, is decided by the policy itself.
    """
    markets = list(markets) or [{} for _ in policies]
    clock = SimulatedClock()
    # Pseudonyms never leave this process: a fresh key is as good as any.
    secret = secrets.token_bytes(32)
    # The report is the replay's record: an audit trail of it would only cost time.
    engines = [
        Engine(
            policy,
            MemoryStore(),
            secret=secret,
            clock=clock,
            monotonic=clock,
            audit=False,
            markets=by_market,
        )
        for policy, by_market in zip(policies, markets, strict=True)
    ]
    tallies = [
        Tally(policy, by_market) for policy, by_market in zip(policies, markets, strict=True)
    ]
    watchers = [AlertReplay(policy, clock) for policy in policies]
    for engine, watcher in zip(engines, watchers, strict=True):
        if watcher.active:
            engine.observe(watcher)
    pairs = list(zip(engines, tallies, strict=True))
    result = Replay(tallies)
    started = time.perf_counter()
    # A replay allocates millions of small objects and frees them by reference counting;
    # the cycle collector would only walk the growing state over and over.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for message in messages:
            clock.now = message.t
            if result.first_t is None:
                result.first_t = message.t
            for engine, tally in pairs:
                decision = await engine.decide(
                    message.marker,
                    person=message.person,
                    gpc=message.gpc,
                    zone=message.zone,
                    market=message.market,
                )
                tally.add(message, decision)
    finally:
        if collecting:
            gc.enable()
    for watcher, tally in zip(watchers, tallies, strict=True):
        watcher.finish()
        tally.alerts = watcher.fired
    result.last_t = clock.now if result.first_t is not None else None
    result.seconds = time.perf_counter() - started
    for engine in engines:
        await engine.store.aclose()
    return result
