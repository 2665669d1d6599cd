"""What metrics cost on the decision path: the engine's decisions a second, and this process's
CPU time per decision, without metrics and with them, in one process and in multiprocess mode.

    .venv/bin/python -m examples.metrics_cost --store memory
    .venv/bin/python -m examples.metrics_cost --store redis://127.0.0.1:6400/0

No HTTP: `Engine.decide` in a loop (as `throttle bench`'s engine-alone run), from `--callers`
concurrent loops over `--people` people with the bench's marker. prometheus-client picks its
mode when imported, so each mode runs in a process of its own; in it, two engines (one
instrumented with `throttle.metrics.instrument`, one not) take turns for `--rounds` short
rounds each, each going first every other round, so that a busy machine's drift touches both
alike. Prints each arm's median decisions a second and CPU microseconds per decision (the
engine, the store's client and the event loop), and what metrics add; with the CPU of each
arm's best round, which a busy machine disturbs least.
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


def compare(
    store_url: str, seconds: float, rounds: int, callers: int, people: int
) -> dict[str, float]:
    """Median decisions/s and CPU µs per decision of both arms, in this process."""
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
                decided = 0
                deadline = time.perf_counter() + seconds

                async def caller(
                    chooser: random.Random, engine: Engine = engine, deadline: float = deadline
                ) -> None:
                    nonlocal decided
                    while time.perf_counter() < deadline and decided < 10_000_000:
                        await engine.decide(marker, person=f"person-{chooser.randrange(people)}")
                        decided += 1

                started, used = time.perf_counter(), time.process_time()
                await asyncio.gather(*(caller(random.Random(n)) for n in range(callers)))
                elapsed, used = time.perf_counter() - started, time.process_time() - used
                rates[arm].append(decided / elapsed)
                cpu[arm].append(used / decided * 1e6)
        for engine in engines.values():
            await engine.aclose()
        return {
            **{f"{arm} rate": statistics.median(values) for arm, values in rates.items()},
            **{f"{arm} cpu": statistics.median(values) for arm, values in cpu.items()},
            **{f"{arm} best cpu": min(values) for arm, values in cpu.items()},
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="memory", help="memory, or a redis:// URL")
    parser.add_argument("--seconds", type=float, default=0.5, help="each round of each arm")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    arguments = (options.store, options.seconds, options.rounds, options.callers, options.people)
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
                 "--store", options.store, "--seconds", str(options.seconds),
                 "--rounds", str(options.rounds), "--callers", str(options.callers),
                 "--people", str(options.people)],
                env=env, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
        medians = json.loads(output)
        without, with_ = medians["without rate"], medians["with rate"]
        print(
            f"{mode:>12}: without metrics {without:>8,.0f} decisions/s, "
            f"{medians['without cpu']:5.1f} µs CPU each; with {with_:>8,.0f} decisions/s "
            f"({with_ / without:.1%}), {medians['with cpu']:5.1f} µs CPU each "
            f"({medians['with cpu'] - medians['without cpu']:+.1f} µs; best round "
            f"{medians['without best cpu']:.1f} and {medians['with best cpu']:.1f} µs, "
            f"{medians['with best cpu'] - medians['without best cpu']:+.1f} µs)"
        )


if __name__ == "__main__":
    main()
