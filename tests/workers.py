"""Code run in separate worker processes, as several app workers sharing one Redis would."""

from __future__ import annotations

import asyncio

from tests.helpers import SECRET, marker, policy
from throttle import Engine
from throttle.store import RedisStore

FIVE_PER_HOUR = (
    '[[caps]]\nname = "five"\nper = "user"\nlimit = 5\nwindow = "1h"\n'
    '[store]\ntimeout = "10s"\n'
    "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
)


def decide_concurrently(url: str, requests: int) -> int:
    """Send `requests` concurrent decisions for one person; return how many were personalized."""

    async def run() -> int:
        store = RedisStore(url)
        engine = Engine(policy(FIVE_PER_HOUR), store, secret=SECRET)
        try:
            decisions = await asyncio.gather(
                *(engine.decide(marker(), person="shared-person") for _ in range(requests))
            )
        finally:
            await store.aclose()
        return sum(d.outcome == "personalized" for d in decisions)

    return asyncio.run(run())
