"""Redis memory per person: one person's key, and the growth of the whole server for many.

A person with typical exposure receives three messages over a day (at 0 h, 4 h and 8 h, from
an injected clock), of three different campaigns: each campaign keeps a log of its own, so
this is the larger of the usual cases. `MEMORY USAGE` gives the key's own bytes (key, value,
and Redis's bookkeeping for them); the growth of `used_memory` over `people` such people
also counts what the key's share of the keyspace and expiry tables costs.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from throttle.engine import Engine
from throttle.message import Marker
from throttle.policy import Policy
from throttle.store import RedisStore

# One person's day: three messages, hours apart, each of its own campaign.
EXPOSURE = (
    (0, "spring-sale"),
    (4, "new-arrivals"),
    (8, "loyalty-points"),
)
_SAMPLED_KEYS = 1000


@dataclass(frozen=True, slots=True)
class Memory:
    messages: int
    one_person_bytes: int
    one_person_value_bytes: int
    one_campaign_bytes: int
    people: int
    used_memory_delta: int
    per_person_bytes: float
    sampled_mean_bytes: float
    outcomes: dict[str, int]


async def measure(
    url: str, policy: Policy, *, people: int, prefix: str, concurrency: int = 256
) -> Memory:
    """Expose one person, one person of one campaign, then `people` people, and weigh them."""
    now = [time.time()]
    start = now[0]
    store = RedisStore(url, prefix=prefix)
    engine = Engine(policy, store, secret=secrets.token_bytes(32), clock=lambda: now[0])
    client: aioredis.Redis = aioredis.Redis.from_url(url)
    outcomes: dict[str, int] = {}

    async def expose(marker: Marker, person: str) -> None:
        decision = await engine.decide(marker, person=person)
        key = f"{decision.outcome}/{decision.reason.value}"
        outcomes[key] = outcomes.get(key, 0) + 1

    async def day(persons: list[str], campaigns: tuple[str, ...]) -> None:
        for (hours, _), campaign in zip(EXPOSURE, campaigns, strict=True):
            now[0] = start + hours * 3600
            await _each(persons, functools.partial(expose, _marker(campaign)), concurrency)

    def key(person: str) -> str:
        return store.person_key(engine.pseudonym(person))

    try:
        campaigns = tuple(campaign for _, campaign in EXPOSURE)
        await day(["typical"], campaigns)
        one = await _usage(client, key("typical"))
        value = int(await client.strlen(key("typical")))
        await day(["one-campaign"], (campaigns[0],) * len(EXPOSURE))
        one_campaign = await _usage(client, key("one-campaign"))

        persons = [f"person-{n}" for n in range(people)]
        before = await _used_memory(client)
        await day(persons, campaigns)
        after = await _used_memory(client)
        step = max(1, people // _SAMPLED_KEYS)
        sampled = [await _usage(client, key(person)) for person in persons[::step]]
    finally:
        await client.aclose()
        await store.aclose()
    return Memory(
        messages=len(EXPOSURE),
        one_person_bytes=one,
        one_person_value_bytes=value,
        one_campaign_bytes=one_campaign,
        people=people,
        used_memory_delta=after - before,
        per_person_bytes=(after - before) / people if people else 0.0,
        sampled_mean_bytes=sum(sampled) / len(sampled) if sampled else 0.0,
        outcomes=outcomes,
    )


def _marker(campaign: str) -> Marker:
    return Marker(
        campaign=campaign, segment="eu/de/berlin", signals=("purchase_history",), explained=True
    )


async def _each(
    persons: list[str], work: Callable[[str], Awaitable[None]], concurrency: int
) -> None:
    """`work(person)` for every person, at most `concurrency` at a time."""
    pending = iter(persons)

    async def worker() -> None:
        for person in pending:
            await work(person)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(persons)))))


async def _usage(client: aioredis.Redis, key: str) -> int:
    used = await client.memory_usage(key, samples=0)
    return int(used or 0)


async def _used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])
