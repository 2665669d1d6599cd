"""Open-loop load: requests at a fixed rate, whatever the server's pace, and their latency.

At saturation (wrk) p99 mostly measures the queue in front of the server; at a fixed moderate
rate it measures what a request costs in time. Each request is one of `people` people at random,
named in the query string (`/offer?user=person-N`, read by the bench apps like `X-User`), since
h2load sends the same headers with every request.

Latency is counted from when a request was due, not from when it was sent: a request that had to
wait for its connection (the one before it was slow) counts that wait, so a stall shows in p99
instead of thinning the samples (coordinated omission).

- `H2load`: one h2load process per connection (`h2load --h1 -c1 --rps R/C -D S`, nghttp2-client),
  each with a file of its own people (one h2load walks every connection through the same list, so
  ten connections would ask for the same person at once). Its per-request log gives when each
  request started and how long it took; the k-th request of a connection was due k / (R/C)
  seconds after its first, which was sent on time.
- `PacedClient`: the fallback, asyncio in the bench process: a fixed schedule of R a second,
  each request taken by the first of C connections to be free. Its timer is only as precise as
  the event loop's (about a millisecond), which adds up to that to every latency of every arm.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from throttle.bench.apps import USER_QUERY
from throttle.bench.load import exchange, percentile, split_url

_MAX_REQUESTS = 1_000_000
_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class OpenRun:
    """One run at a fixed rate."""

    rate: float
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: int

    @property
    def achieved(self) -> float:
        """Answered requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def person_path(path: str, person: int) -> str:
    return f"{path}?{USER_QUERY}=person-{person}"


def _summarize(
    rate: float, seconds: float, latencies: list[float], errors: int, non_2xx: int
) -> OpenRun:
    latencies.sort()
    return OpenRun(
        rate=rate,
        requests=len(latencies),
        seconds=seconds,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] if latencies else 0.0) * 1000,
        errors=errors,
        non_2xx=non_2xx,
    )


class H2load:
    """One `h2load --h1 -c1 --rps` process per connection, their logs read together."""

    name = "h2load"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    @classmethod
    def find(cls) -> H2load | None:
        binary = shutil.which("h2load")
        return cls(binary) if binary else None

    @property
    def version(self) -> str:
        shown = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return shown.stdout.strip() or "h2load"

    def describe(self, rate: float, connections: int) -> str:
        return (
            f"h2load --h1 --rps, {connections} processes of one connection each, "
            f"{rate:,.0f} req/s in all"
        )

    def run(
        self,
        url: str,
        *,
        rate: float,
        connections: int,
        duration: float,
        warmup: float,
        people: int,
        seed: int,
    ) -> OpenRun:
        each = rate / connections
        # Enough people for every request of the run; h2load starts the list again after.
        lines = min(_MAX_REQUESTS, math.ceil(each * (duration + warmup)) + 16)
        with tempfile.TemporaryDirectory(prefix="throttle-bench-h2load-") as directory:
            folder = Path(directory)
            processes: list[tuple[subprocess.Popen[str], Path]] = []
            try:
                for number in range(connections):
                    chooser = random.Random(seed * 7919 + number)
                    paths = folder / f"paths-{number}.txt"
                    paths.write_text(
                        "".join(
                            f"{url}?{USER_QUERY}=person-{chooser.randrange(1, people + 1)}\n"
                            for _ in range(lines)
                        )
                    )
                    log = folder / f"log-{number}.tsv"
                    command = [
                        self.binary, "--h1", "-c1", "-t1",
                        "--rps", f"{each:g}",
                        "-D", _h2load_duration(duration),
                        "-i", str(paths),
                        "--log-file", str(log),
                    ]  # fmt: skip
                    if warmup > 0:
                        command += ["--warm-up-time", _h2load_duration(warmup)]
                    processes.append(
                        (
                            subprocess.Popen(
                                command,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                text=True,
                            ),
                            log,
                        )
                    )
                latencies: list[float] = []
                errors = non_2xx = 0
                for process, log in processes:
                    output, _ = process.communicate(timeout=duration + warmup + 60)
                    failed = _failures(output)
                    if failed is None:
                        raise RuntimeError(f"h2load printed no result: {output[-500:]}")
                    found, statuses = _latencies(log, each)
                    # A connection that got no answer at all (refused, reset) is an error too.
                    errors += failed + (not found)
                    latencies += found
                    non_2xx += statuses
            finally:
                for process, _ in processes:
                    if process.poll() is None:
                        process.kill()
                        process.wait(timeout=10)
        return _summarize(rate, duration, latencies, errors, non_2xx)


def _h2load_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


_REQUESTS_LINE = re.compile(
    r"^requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored, "
    r"(\d+) timeout",
    re.MULTILINE,
)


def _failures(output: str) -> int | None:
    """Failed, errored and timed-out requests from h2load's summary; None without one."""
    found = _REQUESTS_LINE.search(output)
    return sum(int(value) for value in found.groups()) if found else None


def _latencies(log: Path, rate: float) -> tuple[list[float], int]:
    """Seconds from each request's due time to its answer, and how many were not 2xx."""
    rows: list[tuple[int, int, int]] = []
    if log.exists():
        for line in log.read_text().splitlines():
            fields = line.split("\t")
            rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    rows.sort()
    latencies: list[float] = []
    non_2xx = 0
    if rows:
        first = rows[0][0]
        interval = 1e6 / rate
        for index, (started, status, took) in enumerate(rows):
            due = first + index * interval
            latencies.append(max(took, started + took - due) / 1e6)
            non_2xx += not 200 <= status < 300
    return latencies, non_2xx


class PacedClient:
    """The fallback: a fixed schedule in this process, latency from each request's due time."""

    name = "python"
    version = "a paced Python asyncio client in the bench process"

    def describe(self, rate: float, connections: int) -> str:
        return f"paced asyncio client, {connections} connections, {rate:,.0f} req/s"

    def run(
        self,
        url: str,
        *,
        rate: float,
        connections: int,
        duration: float,
        warmup: float,
        people: int,
        seed: int,
    ) -> OpenRun:
        if warmup > 0:
            asyncio.run(self._run(url, rate, connections, warmup, people, seed + 1_000_003))
        latencies, failures = asyncio.run(self._run(url, rate, connections, duration, people, seed))
        return _summarize(rate, duration, latencies, failures[0], failures[1])

    async def _run(
        self, url: str, rate: float, connections: int, duration: float, people: int, seed: int
    ) -> tuple[list[float], list[int]]:
        host, port, path = split_url(url)
        chooser = random.Random(seed)
        count = min(_MAX_REQUESTS, math.ceil(rate * duration))
        due_times = iter(range(count))
        latencies: list[float] = []
        failures = [0, 0]  # errors, non-2xx
        start = time.perf_counter() + 0.05  # every connection open before the first is due

        async def connection() -> None:
            clock = time.perf_counter
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                failures[0] += 1
                return
            try:
                for index in due_times:
                    due = start + index / rate
                    if (wait := due - clock()) > 0:
                        await asyncio.sleep(wait)
                    target = person_path(path, chooser.randrange(1, people + 1))
                    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                    succeeded = await exchange(
                        reader, writer, request.encode("ascii"), timeout=_TIMEOUT_SECONDS
                    )
                    latencies.append(clock() - due)
                    if not succeeded:
                        failures[1] += 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                failures[0] += 1
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        await asyncio.gather(*(connection() for _ in range(connections)))
        return latencies, failures
