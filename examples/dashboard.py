"""The ops dashboard with a simulated day behind it, to look at without running a shop.

    .venv/bin/python -m examples.dashboard                  # then open http://127.0.0.1:8000/ops/
    .venv/bin/python -m examples.dashboard --screenshot docs/dashboard.png

It decides a day of made-up traffic first (a daily curve, six regions, guests, sensitive
signals, a shadow cap on trial, two policy edits, a five-minute store outage at 03:00 UTC),
through the same engine and ops state a shop would run, on the memory store and a clock moved
back a day; then it keeps deciding a few messages a second in real time, so the page stays
live. The page is open to anyone on loopback here; an app puts it behind its own sign-in.
`--screenshot` opens the page in Debian's chromium (/usr/bin/chromium) and saves it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import socket
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from throttle import (
    Marker,
    MemoryStore,
    OpsConfig,
    Policy,
    ThrottleMiddleware,
    dashboard_routes,
)
from throttle.store.base import Delivery, Outcome

POLICY = """
[policy]
name = "storefront"

[[caps]]
name = "per-campaign-daily"
per = "campaign"
limit = 3
window = "24h"

[[caps]]
name = "per-user-daily"
per = "user"
limit = 8
window = "24h"

[[caps]]
name = "per-user-hourly-trial"
per = "user"
limit = 1
window = "1h"
shadow = true

[creepiness]
threshold = 0.7

[fallback]
k = 5

[fallback.content."*"]
body = '{"personalized": false}'
[fallback.content."spring-sale"]
body = '{"sale": "spring"}'
[fallback.content."new-arrivals"]
body = '{"new": true}'
[fallback.content."back-in-stock"]
body = '{"restock": true}'
"""
CAMPAIGNS = (("spring-sale", 5), ("new-arrivals", 3), ("back-in-stock", 2), ("partner-offer", 1))
SEGMENTS = (
    ("eu/de/berlin", 5), ("eu/fr/lyon", 3), ("us/tx/austin", 4), ("apac/jp/tokyo", 2),
    ("latam/br/recife", 1), ("", 2),
)  # fmt: skip
SIGNALS = (
    ((), 6), (("purchase_history",), 6), (("location.city",), 2),
    (("purchase_history", "location.precise"), 1), (("health",), 1),
)  # fmt: skip
PEOPLE = 6000
OUTAGE_HOUR = 3  # UTC


class DemoClock:
    """Wall-clock time moved back by `behind` seconds: the simulated day, then now."""

    def __init__(self) -> None:
        self.behind = 0.0

    def __call__(self) -> float:
        return time.time() - self.behind


class OutageStore(MemoryStore):
    """The memory store, unreachable while `down` (the simulated outage)."""

    down = False

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self.down:
            raise ConnectionError("simulated outage")
        return await super().deliver(delivery)


def pick(rng: random.Random, weighted: tuple[tuple[object, int], ...]) -> object:
    return rng.choices([value for value, _ in weighted], [w for _, w in weighted])[0]


def markers(rng: random.Random, count: int) -> list[Marker]:
    """The messages of the shop: made once, as a parsed header is shared by its requests."""
    made = []
    for _ in range(count):
        signals = pick(rng, SIGNALS)
        assert isinstance(signals, tuple)
        made.append(
            Marker(
                campaign=str(pick(rng, CAMPAIGNS)),
                segment=str(pick(rng, SEGMENTS)),
                signals=signals,
                inferred=rng.random() < 0.1,
                explained=rng.random() < 0.6,
            )
        )
    return made


MARKERS = markers(random.Random(7), 400)


async def decide_one(middleware: ThrottleMiddleware, rng: random.Random) -> None:
    marker = rng.choice(MARKERS)
    signed_in = marker.segment and rng.random() > 0.12
    person = f"person-{rng.randrange(PEOPLE)}" if signed_in else None
    await middleware.engine.decide(marker, person=person, gpc=rng.random() < 0.04)


def policy_version(edit: int) -> Policy:
    return Policy.from_toml(POLICY + f"\n# edit {edit}\n" * bool(edit), source="storefront.toml")


async def simulate_day(middleware: ThrottleMiddleware, clock: DemoClock, store: OutageStore) -> int:
    """A day of decisions, minute by minute, on a clock moved back a day; returns how many."""
    rng = random.Random(13)
    ops = middleware.ops
    assert ops is not None
    edits = {9 * 60 + 40: 1, 16 * 60 + 5: 2}  # minutes into the day when the policy is edited
    decided = 0
    start = math.floor((time.time() - 86_400) / 60) * 60 + 60
    for minute in range(1440):
        clock.behind = time.time() - (start + minute * 60)
        hour = ((start // 60 + minute) % 1440) / 60
        was_down, store.down = store.down, OUTAGE_HOUR * 60 <= hour * 60 < OUTAGE_HOUR * 60 + 5
        if was_down and not store.down:
            # The guard waits its retry_after in real time before it asks the store again.
            await asyncio.sleep(middleware.engine.guard.retry_after)
        if minute in edits:
            previous = middleware.engine.policy
            middleware.engine.policy = policy_version(edits[minute])
            ops.reloaded(previous, middleware.engine.policy)
        # Busiest in the European evening, quietest before dawn.
        rate = 10 + 16 * (1 + math.sin((hour - 13) / 24 * 2 * math.pi))
        for _ in range(rng.randint(int(rate * 0.8), int(rate * 1.2))):
            clock.behind = time.time() - (start + minute * 60 + rng.random() * 59)
            await decide_one(middleware, rng)
            decided += 1
    store.down = False
    clock.behind = 0.0
    return decided


async def keep_deciding(middleware: ThrottleMiddleware) -> None:
    rng = random.Random()
    while True:
        await decide_one(middleware, rng)
        await asyncio.sleep(rng.expovariate(3.0))


def build() -> tuple[ThrottleMiddleware, DemoClock, OutageStore]:
    clock = DemoClock()
    clock.behind = 86_400.0  # the policy was loaded when the simulated day began
    store = OutageStore()
    middleware = ThrottleMiddleware(
        Starlette(routes=[Mount("/ops", routes=dashboard_routes(interval=1.0))]),
        policy=policy_version(0),
        store=store,
        secret="examples/dashboard.py demo secret",
        clock=clock,
        ops=OpsConfig(flush_interval=1.0),
        freeze_gc=False,
    )
    return middleware, clock, store


async def screenshot(url: str, path: str) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium")
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(url)
        await expect(page.get_by_test_id("status")).to_contain_text("live", timeout=30_000)
        await page.screenshot(path=path, full_page=True)
        await browser.close()


async def main(port: int, shot: str | None) -> int:
    middleware, clock, store = build()
    started = time.monotonic()
    decided = await simulate_day(middleware, clock, store)
    print(f"simulated a day: {decided} decisions in {time.monotonic() - started:.1f} s")
    listener = socket.create_server(("127.0.0.1", port))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(middleware, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    live = asyncio.create_task(keep_deciding(middleware))
    url = f"http://127.0.0.1:{port}/ops/"
    try:
        if shot is None:
            print(f"the dashboard: {url} (Ctrl-C stops)")
            await serving
        else:
            for _ in range(600):  # at most 30 s
                if server.started:
                    break
                await asyncio.sleep(0.05)
            await screenshot(url, shot)
            print(f"saved {shot}")
    finally:
        live.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(serving, live, return_exceptions=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--screenshot", metavar="PATH", help="save the page as a PNG and stop")
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(
            asyncio.run(main(0 if arguments.screenshot else arguments.port, arguments.screenshot))
        )
