"""A bench run as one plain-text table, or as JSON (`--json`): the same numbers either way."""

from __future__ import annotations

import dataclasses
import json

from throttle.bench.results import Results


def as_json(results: Results) -> str:
    return json.dumps(dataclasses.asdict(results), indent=2)


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
            f"{ratios.rps:>12.2f}{ratios.p50:>6.2f}{ratios.p95:>6.2f}{ratios.p99:>6.2f}"
            f"{ratios.p99_added_ms:>+8.2f} ms"
            if ratios is not None
            else f"{'':>12}{'':>6}{'':>6}{'':>6}{'':>11}"
        )
        lines.append(
            f"{arm.label:<23}{arm.rps:>7,.0f}{arm.rps_spread:>6.0%} {arm.p50_ms:>8.2f}"
            f"{arm.p95_ms:>8.2f}{arm.p99_ms:>8.2f}  {compared}".rstrip()
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
    if (load := http.throttle_redis) is not None:
        lines.append(
            f"throttle on Redis under this load: {load.reads_per_decision:.3f} reads and "
            f"{load.commands_per_decision:.2f} commands per decision; deliver.lua "
            f"{load.evalsha_us:.1f} us per run"
        )

    lines += [
        "",
        "engine alone: Engine.decide on RedisStore, no HTTP; Redis counts its own reads",
        f"{'callers':>8}{'decisions/s':>13}{'p50 us':>9}{'p99 us':>9}"
        f"{'Redis reads/decision':>22}{'commands/decision':>19}",
    ]
    for found in results.engine:
        lines.append(
            f"{found.callers:>8}{found.per_second:>13,.0f}{found.p50_us:>9.0f}{found.p99_us:>9.0f}"
            f"{found.reads_per_decision:>22.3f}{found.commands_per_decision:>19.2f}"
        )
    weighed = results.memory
    lines += [
        "",
        f"Redis memory per person: {weighed.messages} messages over a day (0 h, 4 h, 8 h)",
        f"  one person, {weighed.messages} campaigns: MEMORY USAGE {weighed.one_person_bytes} B "
        f"(value {weighed.one_person_value_bytes} B)",
        f"  one person, 1 campaign:  MEMORY USAGE {weighed.one_campaign_bytes} B",
        f"  {weighed.people:,} people, {weighed.messages} campaigns each: used_memory "
        f"+{weighed.used_memory_delta:,} B = {weighed.per_person_bytes:.0f} B per person; "
        f"MEMORY USAGE mean of a sample {weighed.sampled_mean_bytes:.0f} B",
        "",
        "targets (issue #5)" + (": not judged in a smoke run" if results.mode == "smoke" else ""),
    ]
    for target in results.targets:
        verdict = {True: "met", False: "MISSED", None: "-"}[target.met]
        lines.append(f"  {verdict:<7}{target.name}: {target.goal}; measured {target.value}")
    return "\n".join(lines)
