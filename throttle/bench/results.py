"""What a bench run found, as plain frozen data: the table and `--json` both read it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from throttle.bench.decisions import EngineRun
from throttle.bench.load import Run
from throttle.bench.memory import Memory

# The targets of issue #5: a 2-core machine, a trivial JSON endpoint, concurrency 32.
MIN_THROUGHPUT_RATIO = 0.8
MAX_P99_ADDED_MS = 1.0
MIN_SLOWAPI_RATIO = 2.0
MAX_BYTES_PER_PERSON = 200


@dataclass(frozen=True, slots=True)
class Ratios:
    """An arm against bare: the median over rounds of each round's ratio (or difference)."""

    rps: float
    p50: float
    p95: float
    p99: float
    p99_added_ms: float


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    label: str
    runs: tuple[Run, ...]
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    # (fastest - slowest) / median throughput over the rounds: how noisy this arm was.
    rps_spread: float
    errors: int
    non_2xx: int
    vs_bare: Ratios | None


@dataclass(frozen=True, slots=True)
class RedisLoad:
    """What Redis itself counted while the throttle arm ran: its side of each decision."""

    decisions: int
    reads_per_decision: float
    commands_per_decision: float
    # Server time of one run of deliver.lua (INFO commandstats, cmdstat_evalsha).
    evalsha_us: float


@dataclass(frozen=True, slots=True)
class Http:
    generator: str
    generator_version: str
    load: str
    server: str
    duration_s: float
    rounds: int
    concurrency: int
    people: int
    arms: tuple[Arm, ...]
    skipped: dict[str, str]
    throttle_outcomes: dict[str, int]
    throttle_redis: RedisLoad | None
    throttle_vs_slowapi_rps: float | None


@dataclass(frozen=True, slots=True)
class Machine:
    cpus: int
    cpu_model: str
    python: str
    platform: str
    redis_version: str
    load_average: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    value: str
    # None: not judged (a smoke run, or the arm did not run).
    met: bool | None


@dataclass(frozen=True, slots=True)
class Results:
    mode: str
    command: str
    redis: str
    policy: str
    machine: Machine
    http: Http
    engine: tuple[EngineRun, ...]
    memory: Memory
    targets: tuple[Target, ...]


def summarize(name: str, label: str, runs: list[Run], bare: list[Run] | None) -> Arm:
    """One arm's runs, and each round's ratio to the bare run of the same round."""
    rates = [run.rps for run in runs]
    median_rps = statistics.median(rates)
    return Arm(
        name=name,
        label=label,
        runs=tuple(runs),
        rps=median_rps,
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p95_ms=statistics.median(run.p95_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        rps_spread=(max(rates) - min(rates)) / median_rps if median_rps else 0.0,
        errors=sum(run.errors for run in runs),
        non_2xx=sum(run.non_2xx for run in runs),
        vs_bare=_ratios(runs, bare) if bare is not None and name != "bare" else None,
    )


def paired_ratio(runs: list[Run], others: list[Run]) -> float:
    """The median over rounds of `runs[i].rps / others[i].rps`."""
    return statistics.median(_divide(a.rps, b.rps) for a, b in zip(runs, others, strict=True))


def _ratios(runs: list[Run], bare: list[Run]) -> Ratios:
    pairs = list(zip(runs, bare, strict=True))
    return Ratios(
        rps=statistics.median(_divide(a.rps, b.rps) for a, b in pairs),
        p50=statistics.median(_divide(a.p50_ms, b.p50_ms) for a, b in pairs),
        p95=statistics.median(_divide(a.p95_ms, b.p95_ms) for a, b in pairs),
        p99=statistics.median(_divide(a.p99_ms, b.p99_ms) for a, b in pairs),
        p99_added_ms=statistics.median(a.p99_ms - b.p99_ms for a, b in pairs),
    )


def _divide(a: float, b: float) -> float:
    return a / b if b else 0.0


def targets(http: Http, memory: Memory, *, judged: bool) -> tuple[Target, ...]:
    """Issue #5's targets against what this run measured; a smoke run judges none."""
    arms = {arm.name: arm for arm in http.arms}
    throttle = arms.get("throttle")
    ratios = throttle.vs_bare if throttle else None
    unmarked = http.throttle_outcomes.get("unmarked", 0)
    decided = sum(http.throttle_outcomes.values()) - unmarked

    def judge(ok: bool | None) -> bool | None:
        return ok if judged else None

    found: list[Target] = []
    if ratios is not None:
        found.append(
            Target(
                "throughput with throttle",
                f">= {MIN_THROUGHPUT_RATIO} x bare, every response marked",
                f"{ratios.rps:.2f} x bare; {decided:,} decided, {unmarked} unmarked",
                judge(ratios.rps >= MIN_THROUGHPUT_RATIO and unmarked == 0 and decided > 0),
            )
        )
        found.append(
            Target(
                "p99 latency added",
                f"<= {MAX_P99_ADDED_MS:g} ms",
                f"{ratios.p99_added_ms:+.2f} ms",
                judge(ratios.p99_added_ms <= MAX_P99_ADDED_MS),
            )
        )
    if http.throttle_vs_slowapi_rps is not None:
        found.append(
            Target(
                "throughput against slowapi",
                f">= {MIN_SLOWAPI_RATIO:g} x slowapi",
                f"{http.throttle_vs_slowapi_rps:.2f} x slowapi",
                judge(http.throttle_vs_slowapi_rps >= MIN_SLOWAPI_RATIO),
            )
        )
    found.append(
        Target(
            "Redis memory per person",
            f"<= {MAX_BYTES_PER_PERSON} B, typical exposure (MEMORY USAGE)",
            f"{memory.one_person_bytes} B ({memory.messages} messages, {memory.messages} "
            f"campaigns); {memory.one_campaign_bytes} B (1 campaign); "
            f"{memory.per_person_bytes:.0f} B of server growth per person",
            judge(memory.one_person_bytes <= MAX_BYTES_PER_PERSON),
        )
    )
    return tuple(found)
