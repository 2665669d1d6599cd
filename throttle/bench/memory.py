"""Redis memory per person: one person's key, and the growth of the whole server for many.

A person with typical exposure receives three messages over a day (at 0 h, 4 h and 8 h, from
an injected clock), of three different campaigns: each campaign keeps a log of its own, so
this is the larger of the usual cases. `MEMORY USAGE` gives the key's own bytes (key, value,
and Redis's bookkeeping for them); the growth of `used_memory` over `people` such people
also counts what the key's share of the keyspace and expiry tables costs.

Each is weighed twice, with the audit trail as the policy has it and with it turned off: what
the trail adds is the person's recent decisions (in their record) and their entries in the
audit stream (`MEMORY USAGE` of the stream over the decisions it holds, times the day's
messages; each append to the stream carries many decisions, and says how many).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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
    """One pass: with the audit trail as the policy has it (`audit`), or turned off."""

    audit: bool
    messages: int
    # The person's state key (MEMORY USAGE): their counters and logs.
    one_person_bytes: int
    one_person_value_bytes: int
    # Every key in the person's slot: state, choices and, with the trail, recent decisions.
    one_person_keys_bytes: int
    one_campaign_bytes: int
    people: int
    used_memory_delta: int
    per_person_bytes: float
    sampled_mean_bytes: float
    outcomes: dict[str, int]
    # The audit stream after the pass: decisions kept (bounded by `audit.max_entries`), bytes.
    trail_entries: int
    trail_bytes: int

    @property
    def trail_entry_bytes(self) -> float:
        return self.trail_bytes / self.trail_entries if self.trail_entries else 0.0


@dataclass(frozen=True, slots=True)
class Weighed:
    """Both passes, and what the trail adds per person."""

    with_trail: Memory
    without_trail: Memory

    @property
    def trail_person_keys_bytes(self) -> int:
        """What the trail adds to the person's own keys (their recent decisions)."""
        return self.with_trail.one_person_keys_bytes - self.without_trail.one_person_keys_bytes

    @property
    def trail_per_person_bytes(self) -> float:
        """The person's recent decisions plus their day's entries in the stream."""
        return (
            self.trail_person_keys_bytes
            + self.with_trail.messages * self.with_trail.trail_entry_bytes
        )


async def measure(
    url: str,
    policy: Policy,
    *,
    people: int,
    prefix: str,
    audit: bool = True,
    concurrency: int = 256,
) -> Memory:
    """Expose one person, one person of one campaign, then `people` people, and weigh them."""
    now = [time.time()]
    start = now[0]
    store = RedisStore(url, prefix=prefix)
    engine = Engine(
        policy, store, secret=secrets.token_bytes(32), clock=lambda: now[0], audit=audit
    )
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
        await day(["one-campaign"], (campaigns[0],) * len(EXPOSURE))
        persons = [f"person-{n}" for n in range(people)]
        before = await _used_memory(client)
        await day(persons, campaigns)
        after = await _used_memory(client)
        # Weighed after the many: the trail's entries of the first two have been written by then.
        one = await _usage(client, key("typical"))
        value = int(await client.strlen(key("typical")))
        slot = await _slot_usage(client, key("typical"))
        one_campaign = await _usage(client, key("one-campaign"))
        step = max(1, people // _SAMPLED_KEYS)
        sampled = [await _usage(client, key(person)) for person in persons[::step]]
        trail_entries = await _decisions_in(client, store.audit_key)
        trail_bytes = await _usage(client, store.audit_key)
    finally:
        await client.aclose()
        await store.aclose()
    return Memory(
        audit=audit,
        messages=len(EXPOSURE),
        one_person_bytes=one,
        one_person_value_bytes=value,
        one_person_keys_bytes=slot,
        one_campaign_bytes=one_campaign,
        people=people,
        used_memory_delta=after - before,
        per_person_bytes=(after - before) / people if people else 0.0,
        sampled_mean_bytes=sum(sampled) / len(sampled) if sampled else 0.0,
        outcomes=outcomes,
        trail_entries=trail_entries,
        trail_bytes=trail_bytes,
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


async def _usage(client: aioredis.Redis, key: str | bytes) -> int:
    used = await client.memory_usage(key, samples=0)
    return int(used or 0)


async def _slot_usage(client: aioredis.Redis, person_key: str) -> int:
    """MEMORY USAGE of every key whose name starts with the person's key (their slot's keys)."""
    total = 0
    async for key in client.scan_iter(match=person_key + "*", count=1000):
        total += await _usage(client, key)
    return total


async def _used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def _decisions_in(client: Any, key: str) -> int:
    """How many decisions the audit stream holds: the sum of its appends' counts."""
    total, start = 0, "-"
    while True:
        rows: Any = await client.xrange(key, start, "+", count=1000)
        total += sum(int(fields.get(b"n", b"1")) for _, fields in rows)
        if len(rows) < 1000:
            return total
        last = rows[-1][0].decode()
        ms, _, sequence = last.partition("-")
        start = f"{ms}-{int(sequence) + 1}"
