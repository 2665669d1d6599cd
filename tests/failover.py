"""A Sentinel failover while decisions flow through a real uvicorn server, measured.

The master is SIGKILLed (or replaced by `SENTINEL FAILOVER`) while clients keep asking for
personalized offers for a few hundred people near a cap; the sentinels promote the replica,
the store finds it, and the killed server is started again as the new master's replica.
`python -m tests.failover [runs] [kill|switch|stall ...]` prints the figures of several runs,
asynchronous and with `replicas = 1`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import signal
import sys
import time
from typing import Any

import httpx
import redis

from tests.apps import storefront
from tests.helpers import SECRET, policy
from tests.redis_sentinel import SERVICE, SentinelSet
from tests.servers import serving
from throttle import Engine
from throttle.store import MemoryStore
from throttle.store.redis import decode_record

CAP = 3
PEOPLE = 200
CLIENTS = 16
# Requests before the kill: about two per person, so most are one short of the cap.
BEFORE_KILL = 2 * PEOPLE
# After the new master answers: enough for everyone to reach the cap again.
AFTER_RECOVERY = 2 * PEOPLE
# Every run is bounded: this many seconds, whatever happens.
TIME_LIMIT = 45.0


def failover_policy(replicas: int) -> str:
    return (
        f'[[caps]]\nname = "three"\nper = "user"\nlimit = {CAP}\nwindow = "1h"\n'
        "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
        f'[store]\ntimeout = "250ms"\nretry_after = "200ms"\nreplicas = {replicas}\n'
    )


@dataclasses.dataclass
class Figures:
    replicas: int
    how: str
    requests: int = 0
    not_2xx: int = 0
    exceptions: int = 0
    # Decisions that fell back to segment content (store unavailable) before the kill (none
    # expected) and after it; from the kill to the last fallback and to the first decision
    # the store answered again.
    fell_back_before_kill: int = 0
    fell_back: int = 0
    fallback_seconds: float = 0.0
    recovered_after_seconds: float = 0.0
    answered_after_recovery: int = 0
    over_cap_people: int = 0
    over_cap_deliveries: int = 0
    # Personalized deliveries acknowledged before the kill that the new master does not count.
    lost_counts: int = 0
    personalized: int = 0

    def line(self) -> str:
        return json.dumps(dataclasses.asdict(self))


async def run_failover(sentinels: SentinelSet, *, replicas: int, how: str = "kill") -> Figures:
    """Decisions through uvicorn while the master is killed (`how="kill"`, SIGKILL), replaced
    (`"switch"`, `SENTINEL FAILOVER`: the old master lives on, a master until the sentinels
    demote it) or stalled (`"stall"`: SIGSTOP until the sentinels name another master, then
    SIGCONT); the figures of the run."""
    figures = Figures(replicas, how)
    app = storefront(policy=policy(failover_policy(replicas)), store=sentinels.url, secret=SECRET)
    personalized: collections.Counter[int] = collections.Counter()
    issued = itertools.count()
    started_requests = 0
    time_to_kill = asyncio.Event()
    started = time.monotonic()
    killed_at: float | None = None
    named_at: float | None = None
    fallbacks: list[float] = []
    answered_after_kill: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() - started < TIME_LIMIT:
            if len(answered_after_kill) >= AFTER_RECOVERY:
                return
            nonlocal started_requests
            started_requests += 1
            if started_requests >= BEFORE_KILL:
                time_to_kill.set()
            person = next(issued) % PEOPLE
            try:
                response = await http.get("/offer", headers={"x-test-user": f"person-{person}"})
            except httpx.HTTPError:
                figures.exceptions += 1
                continue
            figures.requests += 1
            if not 200 <= response.status_code < 300:
                figures.not_2xx += 1
                continue
            decision = response.headers["personalization-decision"]
            now = time.monotonic()
            if decision.startswith("personalized;"):
                personalized[person] += 1
            if "reason=store-unavailable" in decision:
                if killed_at is None:
                    figures.fell_back_before_kill += 1
                else:
                    fallbacks.append(now)
            elif named_at is not None:
                answered_after_kill.append(now)

    async with (
        serving(app, log_level="error") as url,
        # A new connection for each request: a kept-alive one that uvicorn closes as it idles
        # out fails the next request sent on it, a client's race, not the app's.
        httpx.AsyncClient(
            base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http,
    ):
        clients = [asyncio.create_task(client(http)) for _ in range(CLIENTS)]
        await asyncio.wait_for(time_to_kill.wait(), TIME_LIMIT)
        old = sentinels.current_master()
        old_port = old.port
        assert old.process is not None
        if how == "kill":
            old.process.kill()
            old.process.wait()
        elif how == "stall":
            old.process.send_signal(signal.SIGSTOP)
        else:
            sentinel = sentinels.sentinels[0].client()
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
            sentinel.close()
        killed_at = time.monotonic()
        loop = asyncio.get_running_loop()
        new_master = await loop.run_in_executor(None, sentinels.wait_for_new_master, old_port)
        named_at = time.monotonic()
        if how == "kill":
            # A replacement replica: the killed server again, empty, following the new master.
            old.extra = (*old.extra, "--replicaof", "127.0.0.1", str(new_master.port))
            await loop.run_in_executor(None, old.start)
        elif how == "stall":  # it wakes up a master still, until the sentinels demote it
            old.process.send_signal(signal.SIGCONT)
        await asyncio.gather(*clients)

    figures.fell_back = len(fallbacks)
    if fallbacks:
        figures.fallback_seconds = round(fallbacks[-1] - killed_at, 3)
    figures.answered_after_recovery = len(answered_after_kill)
    if answered_after_kill:
        figures.recovered_after_seconds = round(answered_after_kill[0] - killed_at, 3)
    figures.personalized = sum(personalized.values())
    over = [count - CAP for count in personalized.values() if count > CAP]
    figures.over_cap_people = len(over)
    figures.over_cap_deliveries = sum(over)
    figures.lost_counts = lost_counts(new_master.client(), personalized)
    return figures


def lost_counts(client: redis.Redis, personalized: collections.Counter[int]) -> int:
    """Personalized deliveries that the new master's records do not count."""
    pseudonyms = Engine(policy(), MemoryStore(), secret=SECRET)
    lost = 0
    try:
        for person, delivered in personalized.items():
            key = f"throttle:{{{pseudonyms.pseudonym(f'person-{person}')}}}"
            raw: Any = client.get(key)
            counted = sum(len(log) for log in decode_record(raw).get("c", {}).values())
            lost += max(0, delivered - counted)
    finally:
        client.close()
    return lost


async def _main(runs: int, hows: list[str]) -> None:
    for how in hows:
        for replicas in (0, 1):
            for _ in range(runs):
                sentinels = SentinelSet()
                sentinels.start()
                try:
                    figures = await run_failover(sentinels, replicas=replicas, how=how)
                finally:
                    sentinels.cleanup()
                print(figures.line(), flush=True)


if __name__ == "__main__":
    asyncio.run(
        _main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, sys.argv[2:] or ["kill", "switch"])
    )
