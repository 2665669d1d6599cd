"""What metrics cost on the decision path: the engine's decisions a second, and this process's
CPU time per decision, without metrics and with them, in one process and in multiprocess mode.

    .venv/bin/python -m examples.metrics_cost --store memory
    .venv/bin/python -m examples.metrics_cost --store redis://127.0.0.1:6400/0

No HTTP: `Engine.decide` in a loop (as `throttle bench`'s engine-alone run), from `--callers`
concurrent loops over `--people` people with the bench's marker. prometheus-client picks its
mode when imported, so each mode runs in a process of its own; in it, two engines (one
instrumented with `throttle.metrics.instrument`, one not) take turns for `--rounds` short
rounds of 10 decisions per caller, each going first every other round, so that a busy
machine's drift touches both alike. Prints each arm's median decisions a second and CPU
microseconds per decision (the engine, the store's client and the event loop), and the median
of the rounds' differences in CPU: what metrics add to a decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("one process", "multiprocess")
DECISIONS_PER_CALLER = 10


def compare(store_url: str, rounds: int, callers: int, people: int) -> dict[str, float]:
    """Medians of both arms, in this process: decisions a second, CPU µs per decision, and the
    CPU that metrics add per decision, round by round."""
    from throttle.bench.apps import DEFAULT_POLICY, MARKER_VALUE
    from throttle.engine import Engine
    from throttle.message import parse_marker
    from throttle.metrics import instrument
    from throttle.policy import load_policy
    from throttle.store import MemoryStore, RedisStore, Store

    def open_store() -> Store:
        if store_url == "memory":
            return MemoryStore()
        return RedisStore(store_url, prefix=f"metrics-cost-{secrets.token_hex(4)}:")

    async def run() -> dict[str, float]:
        policy = load_policy(DEFAULT_POLICY)
        engines = {
            arm: Engine(policy, open_store(), secret=secrets.token_bytes(32))
            for arm in ("without", "with")
        }
        instrument(engines["with"])
        marker = parse_marker(MARKER_VALUE)
        rates: dict[str, list[float]] = {arm: [] for arm in engines}
        cpu: dict[str, list[float]] = {arm: [] for arm in engines}
        for engine in engines.values():
            for n in range(200):
                await engine.decide(marker, person=f"warm-up-{n}")
        for round_ in range(rounds):
            # Each arm goes first every other round: neither gets the machine's better half.
            order = list(engines.items()) if round_ % 2 == 0 else list(engines.items())[::-1]
            for arm, engine in order:

                async def caller(chooser: random.Random, engine: Engine = engine) -> None:
                    for _ in range(DECISIONS_PER_CALLER):
                        await engine.decide(marker, person=f"person-{chooser.randrange(people)}")

                started, used = time.perf_counter(), time.process_time()
                await asyncio.gather(*(caller(random.Random(n)) for n in range(callers)))
                elapsed, used = time.perf_counter() - started, time.process_time() - used
                decided = callers * DECISIONS_PER_CALLER
                rates[arm].append(decided / elapsed)
                cpu[arm].append(used / decided * 1e6)
        for engine in engines.values():
            await engine.aclose()
        added = [
            with_ - without for with_, without in zip(cpu["with"], cpu["without"], strict=True)
        ]
        return {
            **{f"{arm} rate": statistics.median(values) for arm, values in rates.items()},
            **{f"{arm} cpu": statistics.median(values) for arm, values in cpu.items()},
            "added cpu": statistics.median(added),
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="memory", help="memory, or a redis:// URL")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    arguments = (options.store, options.rounds, options.callers, options.people)
    if options.compare:
        print(json.dumps(compare(*arguments)))
        return
    for mode in MODES:
        with tempfile.TemporaryDirectory(prefix="throttle-metrics-") as directory:
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            output = subprocess.run(
                [sys.executable, "-m", "examples.metrics_cost", "--compare",
                 "--store", options.store, "--rounds", str(options.rounds),
                 "--callers", str(options.callers), "--people", str(options.people)],
                env=env, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
        medians = json.loads(output)
        without, with_ = medians["without rate"], medians["with rate"]
        print(
            f"{mode:>12}: without metrics {without:>8,.0f} decisions/s, "
            f"{medians['without cpu']:5.1f} µs CPU each; with {with_:>8,.0f} decisions/s "
            f"({with_ / without:.1%}), {medians['with cpu']:5.1f} µs CPU each; metrics add "
            f"{medians['added cpu']:+.1f} µs CPU a decision (median of the rounds' differences)"
        )


if __name__ == "__main__":
    main()
