"""What a bench run found, as plain frozen data: the table and `--json` both read it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from throttle.bench.cluster import ClusterArm
from throttle.bench.cost import RedisUse
from throttle.bench.decisions import EngineRun
from throttle.bench.load import Run
from throttle.bench.memory import Weighed
from throttle.bench.openloop import OpenRun

# The targets of issue #10: 2 cores, loopback Redis, wrk -c32, one uvicorn worker, the audit
# trail on, every response marked and personalized.
MAX_CPU_PER_DECISION_US = 50.0
MAX_REDIS_COMMANDS = 2.0
MAX_REDIS_CPU_US = 15.0
MIN_THROUGHPUT_RATIO = 0.8
STRETCH_THROUGHPUT_RATIO = 0.9
OPEN_LOOP_RATE = 1000.0
MAX_P99_ADDED_MS = 1.0
MAX_BYTES_PER_PERSON = 200
MIN_SLOWAPI_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class Ratios:
    """An arm against bare: the median over rounds of each round's ratio (or difference)."""

    rps: float
    p50: float
    p95: float
    p99: float
    p99_added_ms: float


@dataclass(frozen=True, slots=True)
class RunCost:
    """What one run of an arm cost: the server's CPU (None without /proc) and Redis's work."""

    requests: int
    app_cpu_s: float | None
    redis: RedisUse


@dataclass(frozen=True, slots=True)
class Cost:
    """An arm's cost per request (for throttle, per decision): the median over rounds.

    Redis serves one arm at a time, so what it did during a run is that arm's doing; in the
    bare arm it is Redis idling.
    """

    app_cpu_us: float | None
    redis_cpu_us: float
    redis_main_thread_cpu_us: float | None
    # Every command Redis ran, scripts' own included (total_commands_processed).
    redis_commands: float
    # Of those, the commands that run a script (EVALSHA and its kind), sent by clients.
    script_calls: float
    redis_reads: float
    # Server time of one script call, its own commands included.
    script_us_per_call: float
    # INFO commandstats by command, per request, scripts' own commands included.
    by_command: dict[str, float]
    # Against the bare run of the same round: app CPU per request more than bare's, and that
    # plus Redis's CPU per request (issue #10's "CPU per decision, app + Redis").
    added_app_cpu_us: float | None
    added_cpu_us: float | None


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    label: str
    runs: tuple[Run, ...]
    costs: tuple[RunCost, ...]
    cost: Cost
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
    throttle_vs_slowapi_rps: float | None


@dataclass(frozen=True, slots=True)
class OpenArm:
    name: str
    label: str
    runs: tuple[OpenRun, ...]
    p50_ms: float
    p99_ms: float
    # Answered requests per second, median over rounds: below the rate, the server fell behind.
    achieved_rps: float
    errors: int
    non_2xx: int
    # This arm's p50 and p99 less bare's in the same round, median over rounds.
    added_p50_ms: float | None
    added_p99_ms: float | None


@dataclass(frozen=True, slots=True)
class OpenLoop:
    """Requests at a fixed rate (open loop), latency from when each was due."""

    generator: str
    generator_version: str
    load: str
    rate: float
    connections: int
    duration_s: float
    rounds: int
    arms: tuple[OpenArm, ...]


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
    open_loop: OpenLoop
    engine: tuple[EngineRun, ...]
    memory: Weighed
    targets: tuple[Target, ...]
    # The engine alone on one Redis and on a Redis Cluster (None: not run).
    cluster: ClusterArm | None = None


def summarize(
    name: str,
    label: str,
    runs: list[Run],
    costs: list[RunCost],
    bare: tuple[list[Run], list[RunCost]] | None,
) -> Arm:
    """One arm's runs, and each round's ratio to the bare run of the same round."""
    rates = [run.rps for run in runs]
    median_rps = statistics.median(rates)
    compared = bare is not None and name != "bare"
    return Arm(
        name=name,
        label=label,
        runs=tuple(runs),
        costs=tuple(costs),
        cost=_cost(costs, bare[1] if bare is not None and compared else None),
        rps=median_rps,
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p95_ms=statistics.median(run.p95_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        rps_spread=(max(rates) - min(rates)) / median_rps if median_rps else 0.0,
        errors=sum(run.errors for run in runs),
        non_2xx=sum(run.non_2xx for run in runs),
        vs_bare=_ratios(runs, bare[0]) if bare is not None and compared else None,
    )


def _cost(costs: list[RunCost], bare: list[RunCost] | None) -> Cost:
    requests = [cost.requests for cost in costs]
    redis = [cost.redis for cost in costs]

    def per_request(values: Sequence[float]) -> float:
        return statistics.median(_divide(v, n) for v, n in zip(values, requests, strict=True))

    own_app = _app_per_request(costs)
    bare_app = _app_per_request(bare) if bare is not None else None
    added_app = added = None
    if own_app is not None and bare_app is not None:
        own_redis = [_divide(use.cpu_s, n) for use, n in zip(redis, requests, strict=True)]
        added_app = 1e6 * statistics.median(a - b for a, b in zip(own_app, bare_app, strict=True))
        added = 1e6 * statistics.median(
            a - b + r for a, b, r in zip(own_app, bare_app, own_redis, strict=True)
        )
    main_thread = [use.main_thread_cpu_s for use in redis]
    calls: dict[str, int] = {}
    for use in redis:
        for command, count in use.calls.items():
            calls[command] = calls.get(command, 0) + count
    total = sum(requests)
    return Cost(
        app_cpu_us=1e6 * statistics.median(own_app) if own_app is not None else None,
        redis_cpu_us=1e6 * per_request([use.cpu_s for use in redis]),
        redis_main_thread_cpu_us=(
            1e6 * per_request([value for value in main_thread if value is not None])
            if None not in main_thread
            else None
        ),
        redis_commands=per_request([use.commands for use in redis]),
        script_calls=per_request([use.script_calls for use in redis]),
        redis_reads=per_request([use.reads for use in redis]),
        script_us_per_call=_divide(
            sum(use.script_usec for use in redis), sum(use.script_calls for use in redis)
        ),
        by_command={
            command: _divide(count, total)
            for command, count in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))
        },
        added_app_cpu_us=added_app,
        added_cpu_us=added,
    )


def _app_per_request(costs: list[RunCost]) -> list[float] | None:
    """Each run's server CPU seconds per request; None when a run could not be measured."""
    found = [_divide(cost.app_cpu_s, cost.requests) for cost in costs if cost.app_cpu_s is not None]
    return found if len(found) == len(costs) else None


def open_arm(name: str, label: str, runs: list[OpenRun], bare: list[OpenRun] | None) -> OpenArm:
    """One arm's open-loop runs, and each round's latency less bare's in the same round."""
    pairs = list(zip(runs, bare, strict=True)) if bare is not None and name != "bare" else None
    return OpenArm(
        name=name,
        label=label,
        runs=tuple(runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        achieved_rps=statistics.median(run.achieved for run in runs),
        errors=sum(run.errors for run in runs),
        non_2xx=sum(run.non_2xx for run in runs),
        added_p50_ms=statistics.median(a.p50_ms - b.p50_ms for a, b in pairs) if pairs else None,
        added_p99_ms=statistics.median(a.p99_ms - b.p99_ms for a, b in pairs) if pairs else None,
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


def targets(
    http: Http, open_loop: OpenLoop, memory: Weighed, *, judged: bool
) -> tuple[Target, ...]:
    """Issue #10's targets against what this run measured; a smoke run judges none."""
    arms = {arm.name: arm for arm in http.arms}
    throttle = arms.get("throttle")
    unmarked = http.throttle_outcomes.get("unmarked", 0)
    decided = sum(http.throttle_outcomes.values()) - unmarked

    def judge(ok: bool | None) -> bool | None:
        return ok if judged else None

    found: list[Target] = []
    if throttle is not None:
        cost = throttle.cost
        bare = arms["bare"].cost.app_cpu_us if "bare" in arms else None
        if cost.added_cpu_us is not None and cost.added_app_cpu_us is not None:
            found.append(
                Target(
                    "CPU per decision, app + Redis",
                    f"<= {MAX_CPU_PER_DECISION_US:g} us",
                    f"{cost.added_cpu_us:.0f} us: app +{cost.added_app_cpu_us:.0f} us "
                    f"({cost.app_cpu_us or 0:.0f} us against bare's {bare or 0:.0f} us "
                    f"a request), Redis {cost.redis_cpu_us:.0f} us",
                    judge(cost.added_cpu_us <= MAX_CPU_PER_DECISION_US),
                )
            )
        else:
            found.append(
                Target(
                    "CPU per decision, app + Redis",
                    f"<= {MAX_CPU_PER_DECISION_US:g} us",
                    "not measured (no /proc, or no bare arm)",
                    None,
                )
            )
        found.append(
            Target(
                "Redis commands per decision",
                f"<= {MAX_REDIS_COMMANDS:g}, audit included",
                f"{cost.redis_commands:.2f} run by Redis (scripts' own included), of which "
                f"{cost.script_calls:.3f} script calls",
                judge(cost.redis_commands <= MAX_REDIS_COMMANDS),
            )
        )
        found.append(
            Target(
                "Redis CPU per decision",
                f"<= {MAX_REDIS_CPU_US:g} us, audit included",
                f"{cost.redis_cpu_us:.1f} us",
                judge(cost.redis_cpu_us <= MAX_REDIS_CPU_US),
            )
        )
    if throttle is not None and (ratios := throttle.vs_bare) is not None:
        every = unmarked == 0 and decided > 0
        for goal, name in (
            (MIN_THROUGHPUT_RATIO, "throughput with throttle"),
            (STRETCH_THROUGHPUT_RATIO, "throughput with throttle, stretch"),
        ):
            found.append(
                Target(
                    name,
                    f">= {goal} x bare, every response marked",
                    f"{ratios.rps:.2f} x bare; {decided:,} decided, {unmarked} unmarked",
                    judge(ratios.rps >= goal and every),
                )
            )
    opened = {arm.name: arm for arm in open_loop.arms}
    if (paced := opened.get("throttle")) is not None and paced.added_p99_ms is not None:
        found.append(
            Target(
                f"p99 added at {open_loop.rate:,.0f} req/s (open loop)",
                f"<= {MAX_P99_ADDED_MS:g} ms"
                + (f", at {OPEN_LOOP_RATE:,.0f} req/s" if open_loop.rate != OPEN_LOOP_RATE else ""),
                f"{paced.added_p99_ms:+.2f} ms (p99 {paced.p99_ms:.2f} ms); "
                f"p50 {paced.added_p50_ms or 0:+.2f} ms",
                # The target is set at its rate: another rate's figure is shown, not judged.
                judge(paced.added_p99_ms <= MAX_P99_ADDED_MS)
                if open_loop.rate == OPEN_LOOP_RATE
                else None,
            )
        )
    alone, trail = memory.without_trail, memory.with_trail
    found.append(
        Target(
            "Redis memory per person",
            f"<= {MAX_BYTES_PER_PERSON} B, typical exposure, audit trail excluded",
            f"{alone.one_person_keys_bytes} B ({alone.messages} messages, {alone.messages} "
            f"campaigns, MEMORY USAGE of the person's keys); {alone.per_person_bytes:.0f} B "
            f"of server growth; the trail adds {memory.trail_per_person_bytes:.0f} B "
            f"({memory.trail_person_keys_bytes} B of recent decisions, {trail.messages} x "
            f"{trail.trail_entry_bytes:.0f} B in the stream)",
            judge(alone.one_person_keys_bytes <= MAX_BYTES_PER_PERSON),
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
    return tuple(found)
