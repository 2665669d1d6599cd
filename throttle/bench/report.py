"""A bench run as one plain-text table, or as JSON (`--json`): the same numbers either way."""

from __future__ import annotations

import dataclasses
import json

from throttle.bench.cluster import report_lines as cluster_lines
from throttle.bench.results import Results


def as_json(results: Results) -> str:
    return json.dumps(dataclasses.asdict(results), indent=2)


# Every figure in a row has a space of its own before it, so that columns never run together
# when a loaded machine makes a figure wider than its column.
def table(results: Results) -> str:
    machine, http = results.machine, results.http
    lines = [
        f"throttle bench ({results.mode}): {results.command}",
        f"machine: {machine.cpus} CPUs, {machine.cpu_model}; Python {machine.python}; "
        f"Redis {machine.redis_version} ({results.redis}); load average at start "
        + " ".join(f"{value:.2f}" for value in machine.load_average),
        f"policy: {results.policy}",
        "",
        f"HTTP: GET /offer, every response marked personalized; {http.server}",
        f"load: {http.load} ({http.generator_version}); {http.rounds} round(s) x "
        f"{http.duration_s:g} s per arm, arms alternating; {http.people:,} people at random",
        "",
    ]
    header = (
        f"{'arm':<23}{'req/s':>7}{'spread':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"  {'/bare: req/s':>12}{'p50':>6}{'p95':>6}{'p99':>6}{'p99 added':>11}"
    )
    lines += [header, "-" * len(header)]
    for arm in http.arms:
        ratios = arm.vs_bare
        compared = (
            f" {ratios.rps:>11.2f} {ratios.p50:>5.2f} {ratios.p95:>5.2f} {ratios.p99:>5.2f}"
            f" {ratios.p99_added_ms:>+7.2f} ms"
            if ratios is not None
            else f"{'':>12}{'':>6}{'':>6}{'':>6}{'':>11}"
        )
        lines.append(
            f"{arm.label:<23} {arm.rps:>6,.0f} {arm.rps_spread:>5.0%}  {arm.p50_ms:>7.2f}"
            f" {arm.p95_ms:>7.2f} {arm.p99_ms:>7.2f}  {compared}".rstrip()
        )
    failed = [f"{arm.name}: {arm.errors} errors, {arm.non_2xx} non-2xx" for arm in http.arms
              if arm.errors or arm.non_2xx]  # fmt: skip
    if failed:
        lines.append("failures: " + "; ".join(failed))
    for name, why in http.skipped.items():
        lines.append(f"{name}: skipped, {why}")
    if http.throttle_vs_slowapi_rps is not None:
        lines.append(f"throttle req/s / slowapi req/s: {http.throttle_vs_slowapi_rps:.2f}")
    total = sum(http.throttle_outcomes.values())
    if total:
        shares = ", ".join(
            f"{key} {count / total:.1%}"
            for key, count in sorted(http.throttle_outcomes.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"throttle decisions: {total:,} responses: {shares}")
    lines += ["", *_costs(results)]
    lines += ["", *_open_loop(results)]
    lines += [
        "",
        "engine alone: Engine.decide on RedisStore, no HTTP; Redis counts its own reads",
        f"{'callers':>8}{'decisions/s':>13}{'p50 us':>9}{'p99 us':>9}"
        f"{'Redis reads/decision':>22}{'commands/decision':>19}"
        f"{'engine CPU us':>15}{'Redis CPU us':>14}",
    ]
    for found in results.engine:
        lines.append(
            f" {found.callers:>7} {found.per_second:>12,.0f} {found.p50_us:>8.0f}"
            f" {found.p99_us:>8.0f} {found.reads_per_decision:>21.3f}"
            f" {found.commands_per_decision:>18.2f} {found.engine_cpu_us:>14.0f}"
            f" {found.redis_cpu_us:>13.1f}"
        )
    if results.cluster is not None:
        lines += ["", *cluster_lines(results.cluster)]
    lines += ["", *_memory(results)]
    lines += [
        "",
        "targets (issue #10)" + (": not judged in a smoke run" if results.mode == "smoke" else ""),
    ]
    for target in results.targets:
        verdict = {True: "met", False: "MISSED", None: "-"}[target.met]
        lines.append(f"  {verdict:<7}{target.name}: {target.goal}; measured {target.value}")
    return "\n".join(lines)


def _costs(results: Results) -> list[str]:
    http = results.http
    lines = [
        "CPU and Redis per request (throttle: per decision), median over rounds; app: the uvicorn "
        "process (/proc), Redis: INFO, the measuring's own cost left out",
    ]
    header = (
        f"{'arm':<23}{'app CPU us':>11}{'added':>8}{'Redis CPU us':>13}{'app+Redis added':>16}"
        f"{'commands':>10}{'script calls':>13}{'reads':>7}"
    )
    lines += [header, "-" * len(header)]
    for arm in http.arms:
        cost = arm.cost
        lines.append(
            f"{arm.label:<23} {_us(cost.app_cpu_us):>10} {_us(cost.added_app_cpu_us, '+'):>7}"
            f" {cost.redis_cpu_us:>12.1f} {_us(cost.added_cpu_us):>15}"
            f" {cost.redis_commands:>9.2f} {cost.script_calls:>12.3f} {cost.redis_reads:>6.3f}"
        )
    lines.append(
        "commands: every command Redis ran (total_commands_processed, scripts' own included); "
        "script calls: EVALSHA and its kind, sent by clients"
    )
    for arm in http.arms:
        if arm.name == "bare" or not arm.cost.by_command:
            continue
        shown = ", ".join(f"{name} {count:.2f}" for name, count in arm.cost.by_command.items())
        script = (
            f"; a script call takes {arm.cost.script_us_per_call:.1f} us of Redis time"
            if arm.cost.script_calls
            else ""
        )
        lines.append(f"  {arm.name} by command, per request: {shown}{script}")
    return lines


def _us(value: float | None, sign: str = "") -> str:
    return "n/a" if value is None else f"{value:{sign}.0f}"


def _open_loop(results: Results) -> list[str]:
    found = results.open_loop
    lines = [
        f"open loop: {found.load} ({found.generator_version}); {found.rounds} round(s) x "
        f"{found.duration_s:g} s per arm; latency from when each request was due",
    ]
    header = (
        f"{'arm':<23}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'added p50':>11}{'added p99':>11}"
    )
    lines += [header, "-" * len(header)]
    for arm in found.arms:
        added = (
            f" {arm.added_p50_ms:>+7.2f} ms {arm.added_p99_ms:>+7.2f} ms"
            if arm.added_p50_ms is not None and arm.added_p99_ms is not None
            else ""
        )
        worst = max((run.max_ms for run in arm.runs), default=0.0)
        lines.append(
            f"{arm.label:<23} {arm.achieved_rps:>6,.0f} {arm.p50_ms:>7.2f} {arm.p99_ms:>7.2f}"
            f" {worst:>7.1f}{added}".rstrip()
        )
        if arm.errors or arm.non_2xx:
            lines.append(f"  {arm.name}: {arm.errors} errors, {arm.non_2xx} non-2xx")
        if arm.achieved_rps < 0.95 * found.rate:
            lines.append(f"  {arm.name} fell behind the rate: its latency includes a queue")
    return lines


def _memory(results: Results) -> list[str]:
    on, off = results.memory.with_trail, results.memory.without_trail
    return [
        f"Redis memory per person: {on.messages} messages over a day (0 h, 4 h, 8 h), "
        "audit trail on / off",
        f"  one person, {on.messages} campaigns: state key MEMORY USAGE {on.one_person_bytes} B / "
        f"{off.one_person_bytes} B (value {off.one_person_value_bytes} B); all the person's "
        f"keys {on.one_person_keys_bytes} B / {off.one_person_keys_bytes} B",
        f"  one person, 1 campaign:  state key MEMORY USAGE {on.one_campaign_bytes} B / "
        f"{off.one_campaign_bytes} B",
        f"  {on.people:,} people, {on.messages} campaigns each: used_memory growth per person "
        f"{on.per_person_bytes:.0f} B / {off.per_person_bytes:.0f} B; state key MEMORY USAGE "
        f"mean of a sample {on.sampled_mean_bytes:.0f} B / {off.sampled_mean_bytes:.0f} B",
        f"  the audit trail adds {results.memory.trail_per_person_bytes:.0f} B per person: "
        f"{results.memory.trail_person_keys_bytes} B of recent decisions in the person's keys, "
        f"{on.messages} x {on.trail_entry_bytes:.0f} B in the stream ({on.trail_entries:,} "
        f"decisions kept, {on.trail_bytes:,} B, bounded by audit.max_entries)",
    ]
