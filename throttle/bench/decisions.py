"""The engine alone: decisions per second on Redis, and Redis round trips per decision.

No HTTP: `Engine.decide` in a loop, from 1 caller and from many at once. Round trips are
counted where they cannot be flattered, on the server: the growth of Redis's
`total_reads_processed` (one per read of a client's socket) over the run, less what the
counting itself costs, divided by the decisions made.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from throttle.bench.apps import MARKER_VALUE
from throttle.bench.load import percentile
from throttle.engine import Engine
from throttle.message import parse_marker
from throttle.policy import Policy
from throttle.store import RedisStore

_MAX_DECISIONS = 2_000_000


@dataclass(frozen=True, slots=True)
class EngineRun:
    callers: int
    decisions: int
    seconds: float
    p50_us: float
    p99_us: float
    per_second: float
    reads: int
    reads_per_decision: float
    commands: int
    commands_per_decision: float
    outcomes: dict[str, int]


class ServerCounters:
    """Redis's own count of socket reads and commands, read over one connection of its own."""

    def __init__(self, url: str) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(url)
        self._overhead = (0, 0)

    async def calibrate(self) -> None:
        """What two readings with nothing between them add: subtracted from every delta."""
        first = await self.read()
        second = await self.read()
        self._overhead = (second[0] - first[0], second[1] - first[1])

    async def read(self) -> tuple[int, int]:
        stats = await self._client.info("stats")
        return int(stats["total_reads_processed"]), int(stats["total_commands_processed"])

    def delta(self, before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
        return (
            after[0] - before[0] - self._overhead[0],
            after[1] - before[1] - self._overhead[1],
        )

    async def aclose(self) -> None:
        await self._client.aclose()


async def measure(
    url: str, policy: Policy, *, callers: int, duration: float, people: int, prefix: str
) -> EngineRun:
    """`callers` concurrent loops of `Engine.decide` for `duration` seconds."""
    store = RedisStore(url, prefix=prefix)
    engine = Engine(policy, store, secret=secrets.token_bytes(32))
    marker = parse_marker(MARKER_VALUE)
    counters = ServerCounters(url)
    try:
        for n in range(8):  # loads the script and opens the connection, outside the count
            await engine.decide(marker, person=f"warm-up-{n}")
        await counters.calibrate()
        latencies: list[float] = []
        outcomes: dict[str, int] = {}
        budget = _MAX_DECISIONS // callers
        before = await counters.read()
        started = time.perf_counter()
        deadline = started + duration

        async def caller(chooser: random.Random) -> None:
            clock = time.perf_counter
            for _ in range(budget):
                if clock() >= deadline:
                    return
                person = f"person-{chooser.randrange(people)}"
                asked = clock()
                decision = await engine.decide(marker, person=person)
                latencies.append(clock() - asked)
                key = f"{decision.outcome}/{decision.reason.value}"
                outcomes[key] = outcomes.get(key, 0) + 1

        await asyncio.gather(*(caller(random.Random(n)) for n in range(callers)))
        seconds = time.perf_counter() - started
        reads, commands = counters.delta(before, await counters.read())
    finally:
        await counters.aclose()
        await store.aclose()
    latencies.sort()
    decisions = len(latencies)
    return EngineRun(
        callers=callers,
        decisions=decisions,
        seconds=seconds,
        p50_us=percentile(latencies, 50) * 1e6,
        p99_us=percentile(latencies, 99) * 1e6,
        per_second=decisions / seconds,
        reads=reads,
        reads_per_decision=reads / decisions if decisions else 0.0,
        commands=commands,
        commands_per_decision=commands / decisions if decisions else 0.0,
        outcomes=outcomes,
    )
