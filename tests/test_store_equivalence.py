"""The memory store and the Lua script are two implementations of one arithmetic: prove it."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ManualClock
from tests.helpers import SECRET, marker, policy
from throttle import Engine
from throttle.store import MemoryStore, RedisStore
from throttle.store.base import Hold

POLICY = policy(
    """
[[caps]]
name = "channel-hourly"
per = "channel"
limit = 3
window = "1h"

[[caps]]
name = "campaign-2h"
per = "campaign"
limit = 4
window = "2h"

[[caps]]
name = "user-daily"
per = "user"
limit = 8
window = "24h"

[[caps]]
name = "calendar-day"
per = "user"
limit = 6
calendar = "day"
except_tags = ["service"]
reserve = { slots = 1, tags = ["launch"] }

[[caps]]
name = "proposed-weekly"
per = "campaign"
limit = 3
calendar = "week"
shadow = true

[creepiness]
threshold = 0.6
budget = { limit = 1.5, window = "6h", entries = 4 }
repetition = { weight = 0.15, window = "3h" }

[creepiness.signals]
"cart" = 0.05
"city" = 0.25
"health" = 0.35
"""
)

step = st.tuples(
    st.integers(min_value=0, max_value=5400),  # seconds since the previous message
    st.sampled_from(["ana", "ben"]),
    st.sampled_from(["spring", "autumn"]),
    st.sampled_from(["web", "email"]),
    st.sets(st.sampled_from(["cart", "city", "health"]), max_size=2),
    st.booleans(),  # explained
    st.sampled_from([(), ("service",), ("launch",), ("promo", "launch")]),
    st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Kathmandu"]),
    # Something the person does first: choose a level, consent to health data, withdraw it.
    st.sampled_from([None, None, None, "off", "minimal", "full", "consent", "withdraw"]),
    st.booleans(),  # Sec-GPC: 1
    st.sampled_from([None, None, 0.1, 0.9]),  # relevance
    st.booleans(),  # inferred
    st.booleans(),  # transactional
    # How it is sent: decided, a preflight, a reservation (held 30 min), or the person's
    # oldest reservation still open committed or released instead.
    st.sampled_from(["decide", "decide", "decide", "preflight", "reserve", "commit", "release"]),
)
runs = itertools.count()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, min_size=1, max_size=40))
async def test_memory_and_redis_stores_decide_every_sequence_alike(
    redis_url: str,
    steps: list[tuple[Any, ...]],
) -> None:
    redis = RedisStore(redis_url, prefix=f"equivalence-{next(runs)}:")
    memory_clock, redis_clock = ManualClock(), ManualClock()
    on_memory = Engine(POLICY, MemoryStore(), secret=SECRET, clock=memory_clock)
    on_redis = Engine(POLICY, redis, secret=SECRET, clock=redis_clock)
    reservations: dict[str, list[str]] = {}
    try:
        for step in steps:
            seconds, person, campaign, channel, signals, explained, tags, zone = step[:8]
            choice, gpc, relevance, inferred, transactional, sending = step[8:]
            memory_clock.advance(seconds)
            redis_clock.advance(seconds)
            message = marker(
                campaign,
                channel=channel,
                signals=tuple(sorted(signals)),
                explained=explained,
                tags=tags,
                relevance=relevance,
                inferred=inferred,
                transactional=transactional,
            )
            for throttle in (on_memory, on_redis):
                if choice in ("consent", "withdraw"):
                    await throttle.consent(person, "health", given=choice == "consent")
                elif choice is not None:
                    await throttle.set_level(person, choice)
            pseudonym = on_memory.pseudonym(person)
            if sending in ("commit", "release"):
                open_ = reservations.setdefault(person, [])
                held = open_.pop(0) if open_ else "none"
                now_ms = int(memory_clock.now * 1000)
                settled = [
                    await store.settle(pseudonym, held, commit=sending == "commit", now_ms=now_ms)
                    for store in (on_memory.store, redis)
                ]
                assert settled[0] == settled[1]
                assert await redis.state(pseudonym) == await on_memory.store.state(pseudonym)
                continue
            hold = None
            if sending == "reserve":
                hold = Hold(f"r{next(runs)}", 1_800_000)
                reservations.setdefault(person, []).append(hold.id)
            asked = [
                await throttle.ask(
                    message,
                    person=person,
                    zone=zone,
                    gpc=gpc,
                    dry_run=sending == "preflight",
                    hold=hold,
                )
                for throttle in (on_memory, on_redis)
            ]
            (expected, memory_reserved), (got, redis_reserved) = asked
            assert memory_reserved == redis_reserved
            assert (got.outcome, got.reason, got.rule, got.score, got.factors, got.shadow) == (
                expected.outcome,
                expected.reason,
                expected.rule,
                expected.score,
                expected.factors,
                expected.shadow,
            )
            assert await redis.state(pseudonym) == await on_memory.store.state(pseudonym)
    finally:
        await redis.aclose()
