"""Load generators: wrk when it is installed, else a bounded asyncio client in this process.

Both keep `connections` keep-alive connections busy for `duration` seconds, each request
`GET /offer` as one of `people` people drawn at random (the `X-User` header), and report
throughput and latency percentiles. wrk is the one to trust: the Python client spends a core
of its own, which on a small machine it takes from the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PERCENTILES = (50.0, 95.0, 99.0)
# The done() callback prints one line that starts with this, then the JSON.
_MARK = "throttle-bench:"
# Read by wrk: a random person per request; percentiles that wrk's --latency does not print.
_WRK_SCRIPT = """\
-- throttle bench: GET /offer as one of `people` people, chosen at random per request.
-- args: people, seed. done() prints the percentiles (microseconds) as one JSON line.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

local people
function init(args)
  people = tonumber(args[1])
  math.randomseed(tonumber(args[2]) + id * 7919)
end

function request()
  return wrk.format("GET", "/offer", { ["X-User"] = "person-" .. math.random(people) })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'throttle-bench:{"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,' ..
    '"errors":%d,"non_2xx":%d}\\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True, slots=True)
class Run:
    """One timed run of one arm."""

    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    rps: float


class Wrk:
    """wrk -t<threads> -c<connections> -d<duration>, with the script above."""

    name = "wrk"

    def __init__(self, binary: str, *, threads: int) -> None:
        self.binary = binary
        self.threads = threads
        self._directory = tempfile.TemporaryDirectory(prefix="throttle-bench-wrk-")
        self._script = Path(self._directory.name) / "offer.lua"
        self._script.write_text(_WRK_SCRIPT)

    @classmethod
    def find(cls, *, threads: int) -> Wrk | None:
        binary = shutil.which("wrk")
        return cls(binary, threads=threads) if binary else None

    @property
    def version(self) -> str:
        # `wrk -v` prints its version and exits with status 1.
        shown = subprocess.run(
            [self.binary, "-v"], capture_output=True, text=True, timeout=10, check=False
        )
        first = (shown.stdout or shown.stderr).strip().splitlines()
        return first[0].split(" Copyright")[0] if first else "wrk"

    def describe(self, connections: int) -> str:
        return f"wrk -t{min(self.threads, connections)} -c{connections}"

    def run(self, url: str, *, connections: int, duration: float, people: int, seed: int) -> Run:
        threads = min(self.threads, connections)
        seconds = max(1, round(duration))
        command = [
            self.binary,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout", "5s",
            "-s", str(self._script),
            url,
            "--", str(people), str(seed),
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        for line in done.stdout.splitlines():
            if line.startswith(_MARK):
                found = json.loads(line[len(_MARK) :])
                elapsed = found["duration_us"] / 1e6
                return Run(
                    requests=found["requests"],
                    seconds=elapsed,
                    p50_ms=found["p50_us"] / 1000,
                    p95_ms=found["p95_us"] / 1000,
                    p99_ms=found["p99_us"] / 1000,
                    errors=found["errors"],
                    non_2xx=found["non_2xx"],
                    rps=found["requests"] / elapsed if elapsed > 0 else 0.0,
                )
        raise RuntimeError(f"wrk printed no result (status {done.returncode}): {done.stderr}")

    def close(self) -> None:
        self._directory.cleanup()


class PythonClient:
    """The fallback: asyncio connections in this process, bounded in time and in count."""

    name = "python"
    version = "a Python asyncio client in the bench process"
    max_requests = 2_000_000

    def describe(self, connections: int) -> str:
        return f"asyncio client, {connections} connections"

    def run(self, url: str, *, connections: int, duration: float, people: int, seed: int) -> Run:
        return asyncio.run(self._run(url, connections, duration, people, seed))

    async def _run(
        self, url: str, connections: int, duration: float, people: int, seed: int
    ) -> Run:
        host, port, path = split_url(url)
        latencies: list[float] = []
        failures = [0, 0]  # errors, non-2xx
        started = time.perf_counter()
        deadline = started + duration
        budget = self.max_requests // connections
        await asyncio.gather(
            *(
                self._connection(
                    host, port, path, people, random.Random(seed + n), deadline, budget,
                    latencies, failures,
                )
                for n in range(connections)
            )
        )  # fmt: skip
        seconds = time.perf_counter() - started
        latencies.sort()
        p50, p95, p99 = (percentile(latencies, p) * 1000 for p in PERCENTILES)
        rps = len(latencies) / seconds
        return Run(len(latencies), seconds, p50, p95, p99, failures[0], failures[1], rps)

    async def _connection(
        self,
        host: str,
        port: int,
        path: str,
        people: int,
        chooser: random.Random,
        deadline: float,
        budget: int,
        latencies: list[float],
        failures: list[int],
    ) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            failures[0] += 1
            return
        clock = time.perf_counter
        try:
            for _ in range(budget):
                if clock() >= deadline:
                    break
                person = chooser.randrange(1, people + 1)
                request = (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-User: person-{person}\r\n\r\n"
                ).encode("ascii")
                sent = clock()
                succeeded = await exchange(reader, writer, request, timeout=5)
                latencies.append(clock() - sent)
                if not succeeded:
                    failures[1] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            failures[0] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: bytes,
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for reading the head, not for the whole call
) -> bool:
    """Send one request on a kept-alive connection and read its whole response; True for 2xx."""
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=timeout)
    await reader.readexactly(content_length(head))
    return head.startswith(b"HTTP/1.1 2")


def split_url(url: str) -> tuple[str, int, str]:
    rest = url.removeprefix("http://")
    address, _, path = rest.partition("/")
    host, _, port = address.partition(":")
    return host, int(port or 80), "/" + path


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("a response without Content-Length")


def percentile(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile of sorted samples; 0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]
