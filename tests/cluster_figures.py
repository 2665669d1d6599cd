"""The figures of docs/cluster.md: failovers and a resharding under load, at engine level, on
private clusters. `python -m tests.cluster_figures [--runs N]` (about 15 s a run)."""

from __future__ import annotations

import argparse
import asyncio
import math
import time

from tests.chaos import Tally, load
from tests.helpers import SECRET, marker
from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer
from tests.test_cluster_chaos import CAP, CAPPED, slots_of_people, until
from throttle import Engine
from throttle.store import ClusterStore

PEOPLE = 2000
WORKERS = 64


async def failover(cluster: RedisClusterServers) -> str:
    store = ClusterStore(cluster.url)
    engine = Engine(CAPPED, store, secret=SECRET)
    tally, stop = Tally(cap=CAP), asyncio.Event()
    slots = slots_of_people(PEOPLE)
    victim = cluster.masters()[0]
    lost = cluster.slots_of(victim)
    on_victim = {person for person, slot in slots.items() if slot in lost}
    marks: dict[str, float] = {}
    behind: list[int] = []

    async def decide(person: str) -> tuple[str, str]:
        decision = await engine.decide(marker(), person=person)
        return decision.outcome, decision.reason.value

    async def chaos() -> None:
        await until(lambda: tally.decisions >= 3000, stop)
        replica = next(
            node for node in cluster.running()
            if node not in cluster.masters() and _master_port(node) == victim.port
        )  # fmt: skip
        with victim.client() as master, replica.client() as copy:
            # How far the replica was behind, just before: the bytes it had not yet applied.
            written = master.info("replication")["master_repl_offset"]
            applied = copy.info("replication")["slave_repl_offset"]
            behind.append(max(0, written - applied))
        marks["killed"] = time.monotonic()
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_until_replaced, victim)
        marks["replaced"] = time.monotonic()
        await until(lambda: tally.decided_since(marks["replaced"], on_victim), stop)
        marks["resumed"] = time.monotonic() if not stop.is_set() else math.nan
        after = tally.decisions
        await until(lambda: tally.decisions >= after + 2000, stop)
        stop.set()

    started = time.monotonic()
    await asyncio.gather(
        load(decide, tally, people=PEOPLE, workers=WORKERS, stop=stop,
             max_decisions=200_000, max_seconds=60),
        chaos(),
    )  # fmt: skip
    await store.aclose()
    took = time.monotonic() - started
    over = tally.over_cap(on_victim)
    return (
        f"| {tally.decisions} | {tally.decisions / took:.0f}/s | {tally.failures} | "
        f"{tally.fell_back} ({len(tally.fell_back_people)} of {len(on_victim)} people) | "
        f"{tally.fallback_seconds:.2f} s | {marks['resumed'] - marks['killed']:.2f} s | "
        f"{behind[0]} B | {over[0]} people, {over[1]} deliveries | "
        f"{tally.over_cap(set(slots) - on_victim)[1]} |"
    )


def _master_port(node: RedisServer) -> int:
    with node.client() as client:
        return int(client.info("replication").get("master_port", 0))


async def reshard(cluster: RedisClusterServers, slots_moved: int) -> str:
    store = ClusterStore(cluster.url)
    engine = Engine(CAPPED, store, secret=SECRET)
    tally, stop = Tally(cap=CAP), asyncio.Event()
    source, target = cluster.masters()[:2]
    took: list[float] = []

    async def decide(person: str) -> tuple[str, str]:
        decision = await engine.decide(marker(), person=person)
        return decision.outcome, decision.reason.value

    async def chaos() -> None:
        await until(lambda: tally.decisions >= 3000, stop)
        started = time.monotonic()
        await asyncio.to_thread(cluster.reshard, source, target, slots_moved)
        took.append(time.monotonic() - started)
        after = tally.decisions
        await until(lambda: tally.decisions >= after + 2000, stop)
        stop.set()

    await asyncio.gather(
        load(decide, tally, people=PEOPLE, workers=WORKERS, stop=stop,
             max_decisions=400_000, max_seconds=120),
        chaos(),
    )  # fmt: skip
    redirections = dict(store._cluster.redirections)
    await store.aclose()
    return (
        f"| {slots_moved} slots in {took[0]:.1f} s | {tally.decisions} | {tally.failures} | "
        f"{tally.fell_back} | {tally.over_cap()[1]} | {redirections} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    print(
        "| decisions | rate | failures | fell back | for | resumed after kill | replica behind "
        "| over the cap (lost node's people) | over the cap (others) |"
    )
    for _ in range(runs):
        cluster = RedisClusterServers()
        cluster.start()
        try:
            print(asyncio.run(failover(cluster)), flush=True)
        finally:
            cluster.cleanup()
    print("\n| resharded | decisions | failures | fell back | over the cap | redirections |")
    cluster = RedisClusterServers()
    cluster.start()
    try:
        print(asyncio.run(reshard(cluster, 2000)), flush=True)
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    main()
