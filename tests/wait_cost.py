"""What the stricter mode costs: the engine alone on a master and one replica (a private
Sentinel set), `replicas = 0` and `replicas = 1` interleaved, medians of several runs.

`python -m tests.wait_cost [rounds]` prints decisions per second, latency and CPU per decision
(the engine's process, the master, the replica) for 1 and 64 concurrent callers.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from typing import Any

from tests.redis_sentinel import SentinelSet
from tests.redis_server import RedisServer
from throttle.bench import decisions
from throttle.bench.apps import DEFAULT_POLICY
from throttle.policy import Policy

SECONDS_PER_RUN = 2.0
PEOPLE = 10_000


def cpu_seconds(server: RedisServer) -> float:
    client = server.client()
    try:
        info: Any = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main(rounds: int) -> None:
    base = DEFAULT_POLICY.read_text()
    sentinels = SentinelSet()
    sentinels.start()
    rows: dict[tuple[int, int], list[tuple[float, ...]]] = {}
    try:
        for round_ in range(rounds):
            for replicas in (0, 1):
                policy = Policy.from_toml(base.replace("replicas = 0", f"replicas = {replicas}"))
                for callers in (1, 64):
                    before = cpu_seconds(sentinels.replica)
                    run = asyncio.run(
                        decisions.measure(
                            sentinels.url,
                            policy,
                            callers=callers,
                            duration=SECONDS_PER_RUN,
                            people=PEOPLE,
                            prefix=f"cost{round_}-{replicas}-{callers}:",
                        )
                    )
                    replica_us = (cpu_seconds(sentinels.replica) - before) / run.decisions * 1e6
                    fell_back = sum(n for key, n in run.outcomes.items() if "store" in key)
                    rows.setdefault((replicas, callers), []).append(
                        (
                            run.per_second, run.p50_us, run.p99_us, run.engine_cpu_us,
                            run.redis_cpu_us, replica_us, fell_back / run.decisions,
                        )
                    )  # fmt: skip
    finally:
        sentinels.cleanup()
    print(
        "replicas callers | decisions/s | p50 µs | p99 µs | CPU µs per decision: engine, "
        "master, replica | fell back"
    )
    for (replicas, callers), values in sorted(rows.items()):
        median = [statistics.median(v[i] for v in values) for i in range(7)]
        print(
            f"{replicas} {callers:3d} | {median[0]:8.0f} | {median[1]:6.0f} | {median[2]:7.0f} "
            f"| {median[3]:6.1f} {median[4]:6.1f} {median[5]:6.1f} | {median[6] * 100:.2f} %"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
