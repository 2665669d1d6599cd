"""What a run cost: the server's CPU from /proc, Redis's CPU and commands from `INFO`.

Both are read before and after each measured run and the difference divided by the requests
answered. The server's CPU is `utime + stime` of the uvicorn process and of its live
descendants (workers), plus what its reaped children used (`cutime + cstime`). Redis's CPU is
`used_cpu_sys + used_cpu_user` (every thread) and the `_main_thread` pair where the server
reports it; its commands are `total_commands_processed`, which counts the commands that
scripts run as well as those that clients send, and `INFO commandstats` splits them by command
(also counting both). What reading the counters costs is measured once and subtracted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

# Commands that run a script: a client sends one, and the script's own commands follow it.
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
# The measuring's own command, left out of the per-command figures.
_MEASURING = "info"
CALIBRATION_READINGS = 5


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by `pid` and its descendants; None where /proc cannot say."""
    ticks = _ticks(pid)
    if ticks is None:
        return None
    for child in _descendants(pid):
        ticks += _ticks(child) or 0  # a worker that has just exited counts in cutime later
    return ticks / os.sysconf("SC_CLK_TCK")


def _ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces): state is field 3, utime field 14.
    fields = text.rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return utime + stime + cutime + cstime


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for thread in threads:
        try:
            children = (thread / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.append(int(child))
            found.extend(_descendants(int(child)))
    return found


@dataclass(frozen=True, slots=True)
class RedisReading:
    """Redis's counters at one moment."""

    cpu_s: float
    main_thread_cpu_s: float | None
    commands: int
    reads: int
    calls: dict[str, int]
    usec: dict[str, int]

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> RedisReading:
        """From the parsed reply of `INFO all` (redis-py's `info("all")`)."""
        main = ("used_cpu_sys_main_thread", "used_cpu_user_main_thread")
        stats = {
            key.removeprefix("cmdstat_"): value
            for key, value in info.items()
            if key.startswith("cmdstat_") and isinstance(value, Mapping)
        }
        return cls(
            cpu_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            main_thread_cpu_s=(
                sum(float(info[key]) for key in main) if all(k in info for k in main) else None
            ),
            commands=int(info["total_commands_processed"]),
            reads=int(info["total_reads_processed"]),
            calls={name: int(value["calls"]) for name, value in stats.items()},
            usec={name: int(value["usec"]) for name, value in stats.items()},
        )


@dataclass(frozen=True, slots=True)
class RedisUse:
    """What Redis did between two readings, less what reading it costs."""

    cpu_s: float
    main_thread_cpu_s: float | None
    # Every command Redis ran: those clients sent and those their scripts ran.
    commands: int
    # Reads of client sockets: about one per round trip.
    reads: int
    # By command, from INFO commandstats (scripts' own commands included, INFO left out).
    calls: dict[str, int]
    # Commands that run a script (EVALSHA and its kind): clients sent exactly these many.
    script_calls: int
    # Server time inside those scripts, their own commands included.
    script_usec: int


@dataclass(frozen=True, slots=True)
class Overhead:
    """What one reading of the counters adds to them: subtracted from every difference."""

    cpu_s: float = 0.0
    commands: int = 0
    reads: int = 0

    @classmethod
    def between(cls, readings: list[RedisReading]) -> Overhead:
        """From consecutive readings with nothing else happening on the server."""
        first, last = readings[0], readings[-1]
        steps = max(1, len(readings) - 1)
        return cls(
            cpu_s=max(0.0, (last.cpu_s - first.cpu_s) / steps),
            commands=round((last.commands - first.commands) / steps),
            reads=round((last.reads - first.reads) / steps),
        )


def used(before: RedisReading, after: RedisReading, overhead: Overhead) -> RedisUse:
    """What Redis did between two readings, less the second reading's own cost."""
    calls = {
        name: count - before.calls.get(name, 0)
        for name, count in after.calls.items()
        if name != _MEASURING and count > before.calls.get(name, 0)
    }
    scripts = [name for name in calls if name in SCRIPT_COMMANDS]
    main_thread = (
        max(0.0, after.main_thread_cpu_s - before.main_thread_cpu_s - overhead.cpu_s)
        if after.main_thread_cpu_s is not None and before.main_thread_cpu_s is not None
        else None
    )
    return RedisUse(
        cpu_s=max(0.0, after.cpu_s - before.cpu_s - overhead.cpu_s),
        main_thread_cpu_s=main_thread,
        commands=max(0, after.commands - before.commands - overhead.commands),
        reads=max(0, after.reads - before.reads - overhead.reads),
        calls=calls,
        script_calls=sum(calls[name] for name in scripts),
        script_usec=sum(after.usec[name] - before.usec.get(name, 0) for name in scripts),
    )


class RedisCounters:
    """Reads `INFO all` over a connection of its own."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._overhead = Overhead()

    def read(self) -> RedisReading:
        return RedisReading.from_info(self._client.info("all"))

    def calibrate(self) -> None:
        self._overhead = Overhead.between([self.read() for _ in range(CALIBRATION_READINGS)])

    def use(self, before: RedisReading, after: RedisReading) -> RedisUse:
        return used(before, after, self._overhead)

    def close(self) -> None:
        self._client.close()
