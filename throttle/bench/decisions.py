"""The engine alone: decisions per second on Redis, and Redis round trips per decision.

No HTTP: `Engine.decide` in a loop, from 1 caller and from many at once. Round trips are
counted where they cannot be flattered, on the server: the growth of Redis's
`total_reads_processed` (one per read of a client's socket) over the run, less what the
counting itself costs, divided by the decisions made. CPU per decision is this process's
(`time.process_time`: the engine, the store's client, the event loop) and Redis's (`INFO cpu`).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from throttle.bench.apps import MARKER_VALUE
from throttle.bench.cost import CALIBRATION_READINGS, Overhead, RedisReading, RedisUse, used
from throttle.bench.load import percentile
from throttle.engine import Engine
from throttle.message import parse_marker
from throttle.policy import Policy
from throttle.store import RedisStore
from throttle.store.sentinel import client_for

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
    # CPU per decision: this process's (the engine and the client, `time.process_time`), Redis's.
    engine_cpu_us: float
    redis_cpu_us: float
    outcomes: dict[str, int]


class ServerCounters:
    """Redis's own counters (`INFO all`), read over one connection of its own."""

    def __init__(self, url: str) -> None:
        self._client: aioredis.Redis = client_for(url)
        self._overhead = Overhead()

    async def calibrate(self) -> None:
        """What readings with nothing between them add: subtracted from every difference."""
        self._overhead = Overhead.between([await self.read() for _ in range(CALIBRATION_READINGS)])

    async def read(self) -> RedisReading:
        return RedisReading.from_info(await self._client.info("all"))

    def use(self, before: RedisReading, after: RedisReading) -> RedisUse:
        return used(before, after, self._overhead)

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
        cpu_before = time.process_time()
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
        cpu = time.process_time() - cpu_before
        use = counters.use(before, await counters.read())
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
        reads=use.reads,
        reads_per_decision=use.reads / decisions if decisions else 0.0,
        commands=use.commands,
        commands_per_decision=use.commands / decisions if decisions else 0.0,
        engine_cpu_us=cpu / decisions * 1e6 if decisions else 0.0,
        redis_cpu_us=use.cpu_s / decisions * 1e6 if decisions else 0.0,
        outcomes=outcomes,
    )
