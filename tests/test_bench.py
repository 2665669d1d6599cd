"""`throttle bench` in its smoke mode: it runs, prints every row, and its JSON parses.

These check the shape of what the bench reports, never how fast anything was: CI machines
are noisy, and a benchmark is read by people, not asserted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from starlette.types import ASGIApp, Message

from tests.helpers import patient_copy
from tests.redis_server import RedisServer
from throttle.bench import apps, openloop, report
from throttle.bench.cost import RedisCounters, RedisUse, process_cpu_seconds
from throttle.bench.decisions import EngineRun
from throttle.bench.load import Run
from throttle.bench.memory import Memory, Weighed
from throttle.bench.openloop import OpenRun
from throttle.bench.results import (
    Http,
    Machine,
    OpenLoop,
    Results,
    RunCost,
    open_arm,
    summarize,
    targets,
)
from throttle.cli import main

ARM_LABELS = ("bare", "throttle (Redis)", "slowapi (fixed window)", "limits (moving window)")


def test_smoke_run_prints_every_arm_with_its_ratios_to_bare(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--smoke"]) == 0

    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == "throttle bench (smoke): throttle bench --smoke"
    header = next(line for line in lines if line.startswith("arm "))
    for column in ("req/s", "p50 ms", "p95 ms", "p99 ms", "/bare: req/s", "p99 added"):
        assert column in header
    assert next(line for line in lines if line.startswith("Redis Cluster, 3 masters"))
    rows = {label: next(line for line in lines if line.startswith(label)) for label in ARM_LABELS}
    for label in ARM_LABELS[1:]:
        # req/s, spread, three latencies, four ratios to bare and the p99 difference
        assert rows[label].endswith(" ms")
        assert len(rows[label][len(label) :].split()) == 11
    assert "throttle req/s / slowapi req/s:" in table
    assert "0 unmarked" in table
    cost_header = next(line for line in lines if line.startswith("arm ") and "app CPU us" in line)
    for column in ("added", "Redis CPU us", "app+Redis added", "commands", "script calls"):
        assert column in cost_header
    costs = lines[lines.index(cost_header) + 2 :]
    for label in ARM_LABELS:
        row = next(line for line in costs if line.startswith(label))
        # app CPU, added, Redis CPU, app + Redis added, commands, script calls, reads
        assert len(row[len(label) :].split()) == 7
    assert "  throttle by command, per request: " in table
    open_header = next(line for line in lines if line.startswith("arm ") and "added p99" in line)
    opened = lines[lines.index(open_header) + 2 :]
    assert next(line for line in opened if line.startswith("bare "))
    throttle_row = next(line for line in opened if line.startswith("throttle (Redis)"))
    assert throttle_row.endswith(" ms") and len(throttle_row.split()) == 10
    assert "Redis reads/decision" in table
    assert "engine CPU us" in table
    assert "MEMORY USAGE" in table
    assert "audit trail on / off" in table
    assert "the audit trail adds" in table
    assert "targets (issue #10): not judged in a smoke run" in table
    for name in (
        "CPU per decision, app + Redis",
        "Redis commands per decision",
        "Redis CPU per decision",
        "p99 added at 200 req/s (open loop)",
        "Redis memory per person",
    ):
        assert f"  -      {name}: " in table


def test_smoke_run_on_a_given_redis_prints_json_and_leaves_no_keys(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["bench", "--smoke", "--json", "--generator", "python", "--redis-url", redis_url]
    assert main(command) == 0

    results = json.loads(capsys.readouterr().out)
    assert results["mode"] == "smoke"
    assert results["command"] == "throttle " + " ".join(command)
    assert results["http"]["generator"] == "python"
    arms = {arm["name"]: arm for arm in results["http"]["arms"]}
    assert list(arms) == ["bare", "throttle", "slowapi", "limits"]
    for name, arm in arms.items():
        assert len(arm["runs"]) == 1
        assert arm["runs"][0]["requests"] > 0
        assert arm["errors"] == 0 and arm["non_2xx"] == 0
        assert (arm["vs_bare"] is None) == (name == "bare")
    assert results["http"]["throttle_outcomes"].get("unmarked", 0) == 0
    for name, arm in arms.items():
        (cost,) = arm["costs"]
        assert cost["requests"] == arm["runs"][0]["requests"]
        assert cost["app_cpu_s"] > 0
        assert cost["redis"]["cpu_s"] >= 0
        assert "info" not in cost["redis"]["calls"]
        assert arm["cost"]["app_cpu_us"] > 0
        assert (arm["cost"]["added_cpu_us"] is None) == (name == "bare")
    # Every peer runs one script per request; throttle runs one per decision it sends to Redis.
    for name in ("slowapi", "limits"):
        assert arms[name]["cost"]["script_calls"] == pytest.approx(1.0, abs=0.05)
    assert arms["throttle"]["cost"]["script_calls"] > 0
    assert arms["throttle"]["cost"]["redis_commands"] > arms["throttle"]["cost"]["script_calls"]
    assert arms["bare"]["cost"]["redis_commands"] == 0
    opened = results["open_loop"]
    assert opened["generator"] == "python"
    assert opened["rate"] == 200
    assert [arm["name"] for arm in opened["arms"]] == ["bare", "throttle"]
    for arm in opened["arms"]:
        (paced,) = arm["runs"]
        assert paced["requests"] > 0 and paced["errors"] == 0 and paced["non_2xx"] == 0
        assert 0 < arm["p50_ms"] <= arm["p99_ms"]
    assert opened["arms"][0]["added_p99_ms"] is None
    assert opened["arms"][1]["added_p99_ms"] is not None
    engine = {run["callers"]: run for run in results["engine"]}
    assert set(engine) == {1, 64}
    # Never more than one round trip per decision (a slow machine may skip the store: fewer).
    assert 0 <= engine[1]["reads_per_decision"] <= 1.1
    assert 0 <= engine[64]["reads_per_decision"] <= 1.1
    assert engine[1]["engine_cpu_us"] > 0 and engine[1]["redis_cpu_us"] > 0
    # The cluster arm: one Redis, then three masters, each node's CPU per decision.
    sharded = results["cluster"]
    assert len(sharded["single"]["nodes"]) == 1 and len(sharded["cluster"]["nodes"]) == 3
    for run in (sharded["single"], sharded["cluster"]):
        assert run["decisions"] > 0 and run["per_second"] > 0
        assert all(node["redis_cpu_us"] > 0 for node in run["nodes"])
    with_trail, without = results["memory"]["with_trail"], results["memory"]["without_trail"]
    assert with_trail["audit"] and not without["audit"]
    assert with_trail["one_person_bytes"] > 0 and without["one_person_bytes"] > 0
    assert with_trail["one_person_keys_bytes"] > without["one_person_keys_bytes"]
    assert with_trail["trail_entries"] > 0 and without["trail_entries"] == 0
    assert all(target["met"] is None for target in results["targets"])
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


def test_the_command_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "throttle.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--smoke" in done.stdout


def test_a_missing_policy_file_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--smoke", "--policy", "/nonexistent/policy.toml"]) == 1
    assert "/nonexistent/policy.toml not found" in capsys.readouterr().err


def test_without_redis_server_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("throttle.bench.redis_server.shutil.which", lambda name: None)
    assert main(["bench", "--smoke"]) == 1
    assert "redis-server is not installed" in capsys.readouterr().err


def test_a_duration_of_zero_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--duration", "0"])
    assert exit_.value.code == 2
    assert "must be more than 0" in capsys.readouterr().err


def run(rps: float, p99_ms: float, *, errors: int = 0) -> Run:
    return Run(int(rps * 10), 10.0, p99_ms / 3, p99_ms / 2, p99_ms, errors, 0, rps)


def cost(run: Run, app_us: float, redis_us: float, commands: float) -> RunCost:
    """What `run` cost: `app_us` and `redis_us` of CPU and `commands` Redis commands a request."""
    requests = run.requests
    use = RedisUse(
        cpu_s=redis_us * requests / 1e6,
        main_thread_cpu_s=redis_us * requests / 1e6,
        commands=round(commands * requests),
        reads=requests // 10,
        calls={"evalsha": requests // 10, "get": max(0, round((commands - 0.1) * requests))},
        script_calls=requests // 10,
        script_usec=requests * 30,
    )
    return RunCost(requests, app_us * requests / 1e6, use)


def paced(p50_ms: float, p99_ms: float) -> OpenRun:
    return OpenRun(1000.0, 10_000, 10.0, p50_ms, p99_ms, p99_ms * 2, 0, 0)


def memory(audit: bool, state: int) -> Memory:
    keys = state + (600 if audit else 0)
    entries, stream = (3000, 3000 * 150) if audit else (0, 0)
    return Memory(audit, 3, state, 100, keys, 180, 1000, 300_000, 300.0, state, {}, entries, stream)


def results(
    *,
    throttle_rps: float,
    p99_ms: float,
    bytes_: int,
    app_us: float = 160.0,
    redis_us: float = 10.0,
    commands: float = 1.5,
    mode: str = "full",
) -> Results:
    bare = [run(1000, 10), run(1200, 12)]
    bare_costs = [cost(one, 130.0, 0.5, 0.0) for one in bare]
    throttled = [run(throttle_rps, p99_ms)] * 2
    slowapi = [run(100, 90, errors=3)] * 2
    http = Http(
        generator="wrk",
        generator_version="wrk 4.1.0",
        load="wrk -t2 -c32",
        server="uvicorn",
        duration_s=10,
        rounds=2,
        concurrency=32,
        people=100_000,
        arms=(
            summarize("bare", "bare", bare, bare_costs, (bare, bare_costs)),
            summarize(
                "throttle",
                "throttle (Redis)",
                throttled,
                [cost(one, app_us, redis_us, commands) for one in throttled],
                (bare, bare_costs),
            ),
            summarize(
                "slowapi",
                "slowapi (fixed window)",
                slowapi,
                [cost(one, 400.0, 60.0, 2.5) for one in slowapi],
                (bare, bare_costs),
            ),
        ),
        skipped={"limits": "not installed: coredis"},
        throttle_outcomes={"personalized/allowed": 20_000},
        throttle_vs_slowapi_rps=throttle_rps / 100,
    )
    bare_paced = [paced(1.0, 2.0), paced(1.2, 2.4)]
    open_loop = OpenLoop(
        generator="h2load",
        generator_version="h2load nghttp2/1.52.0",
        load="h2load",
        rate=1000.0,
        connections=10,
        duration_s=10,
        rounds=2,
        arms=(
            open_arm("bare", "bare", bare_paced, bare_paced),
            open_arm("throttle", "throttle (Redis)", [paced(1.5, p99_ms / 5)] * 2, bare_paced),
        ),
    )
    engine = EngineRun(1, 100, 1.0, 300.0, 900.0, 100.0, 100, 1.0, 300, 3.0, 200.0, 100.0, {})
    weighed = Weighed(with_trail=memory(True, bytes_), without_trail=memory(False, bytes_))
    return Results(
        mode=mode,
        command="throttle bench",
        redis="private",
        policy="default",
        machine=Machine(2, "a CPU", "3.11", "Linux", "7.0", (0.0, 0.0, 0.0)),
        http=http,
        open_loop=open_loop,
        engine=(engine,),
        memory=weighed,
        targets=targets(http, open_loop, weighed, judged=mode == "full"),
    )


def test_a_full_run_judges_each_target() -> None:
    missed = {
        t.name: t.met
        for t in results(
            throttle_rps=500, p99_ms=30, bytes_=248, app_us=300, redis_us=60, commands=7.8
        ).targets
    }
    met = {t.name: t.met for t in results(throttle_rps=1000, p99_ms=11, bytes_=184).targets}

    assert missed == {
        "CPU per decision, app + Redis": False,
        "Redis commands per decision": False,
        "Redis CPU per decision": False,
        "throughput with throttle": False,
        "throughput with throttle, stretch": False,
        "p99 added at 1,000 req/s (open loop)": False,
        "Redis memory per person": False,
        "throughput against slowapi": True,
    }
    assert set(met.values()) == {True}


def test_cpu_per_decision_is_throttles_app_cpu_over_bares_plus_redis() -> None:
    found = results(throttle_rps=1000, p99_ms=11, bytes_=184, app_us=160, redis_us=10)
    arms = {arm.name: arm.cost for arm in found.http.arms}

    assert arms["bare"].app_cpu_us == pytest.approx(130)
    assert arms["bare"].added_cpu_us is None
    assert arms["throttle"].app_cpu_us == pytest.approx(160)
    assert arms["throttle"].added_app_cpu_us == pytest.approx(30)
    assert arms["throttle"].added_cpu_us == pytest.approx(40)
    assert arms["throttle"].redis_commands == pytest.approx(1.5)
    assert arms["throttle"].script_calls == pytest.approx(0.1)
    assert arms["throttle"].script_us_per_call == pytest.approx(300)
    assert list(arms["throttle"].by_command) == ["get", "evalsha"]
    target = next(t for t in found.targets if t.name == "CPU per decision, app + Redis")
    assert target.value == "40 us: app +30 us (160 us against bare's 130 us a request), Redis 10 us"


def test_open_loop_latency_added_is_paired_with_bare_of_the_same_round() -> None:
    found = results(throttle_rps=1000, p99_ms=30, bytes_=184)
    bare, throttle = found.open_loop.arms

    assert bare.added_p99_ms is None
    # Rounds: 6.0 - 2.0 and 6.0 - 2.4: the median of the two.
    assert throttle.added_p99_ms == pytest.approx(3.8)
    assert throttle.added_p50_ms == pytest.approx(0.4)


def test_memory_per_person_is_judged_without_the_trail_and_says_what_the_trail_adds() -> None:
    found = results(throttle_rps=1000, p99_ms=11, bytes_=184)
    target = next(t for t in found.targets if t.name == "Redis memory per person")

    assert found.memory.trail_person_keys_bytes == 600
    assert found.memory.trail_per_person_bytes == 600 + 3 * 150
    assert target.met is True
    assert target.value.startswith("184 B")
    assert "the trail adds 1050 B (600 B of recent decisions, 3 x 150 B in the stream)" in (
        target.value
    )


def test_another_open_loop_rate_is_shown_but_not_judged() -> None:
    found = results(throttle_rps=1000, p99_ms=11, bytes_=184)
    slower = targets(
        found.http,
        dataclasses.replace(found.open_loop, rate=500.0),
        found.memory,
        judged=True,
    )

    target = next(t for t in slower if "open loop" in t.name)
    assert target.name == "p99 added at 500 req/s (open loop)"
    assert target.met is None


def test_the_table_names_arms_that_failed_or_were_skipped() -> None:
    table = report.table(results(throttle_rps=500, p99_ms=30, bytes_=248))

    assert "failures: slowapi: 6 errors, 0 non-2xx" in table
    assert "limits: skipped, not installed: coredis" in table
    assert "  MISSED throughput with throttle" in table
    assert "  met    throughput against slowapi" in table


@pytest.fixture
def bench_environment(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    patient = patient_copy(apps.DEFAULT_POLICY, tmp_path)
    monkeypatch.setenv("THROTTLE_BENCH_POLICY", str(patient))
    monkeypatch.setenv("THROTTLE_BENCH_REDIS_URL", redis_url)
    monkeypatch.setenv("THROTTLE_BENCH_PREFIX", "bench-test:")
    monkeypatch.setenv("THROTTLE_SECRET", "bench-test-secret-0123456789")
    yield


@contextlib.asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """The app between its lifespan's startup and shutdown, as a server would run it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


@pytest.mark.usefixtures("bench_environment")
@pytest.mark.parametrize("factory", [apps.bare, apps.throttled, apps.slowapi_app, apps.limits_app])
async def test_every_arm_serves_the_same_offer_and_never_rejects(
    factory: Callable[[], ASGIApp],
) -> None:
    async with served(factory()) as client:
        responses = [await client.get("/offer", headers={"X-User": f"p{n}"}) for n in range(5)]
    assert [response.status_code for response in responses] == [200] * 5
    assert all(response.json() == responses[0].json() for response in responses)


@pytest.mark.usefixtures("bench_environment")
async def test_the_throttle_arm_counts_its_decisions() -> None:
    async with served(apps.throttled()) as client:
        for person in ("ana", "ben", "ana"):
            await client.get("/offer", headers={"X-User": person})
        await client.get("/missing")
        counts = (await client.get(apps.TALLY_PATH)).json()
        assert (await client.get(apps.TALLY_PATH)).json() == {}
    assert counts == {"personalized/allowed": 3, "unmarked": 1}


def test_the_person_comes_from_the_x_user_header_or_else_the_query_string() -> None:
    assert apps.header_user({"headers": [(b"x-user", b"ana")]}) == "ana"
    assert apps.header_user({"headers": [(b"x-user", b"ana")], "query_string": b"user=ben"}) == (
        "ana"
    )
    assert apps.header_user({"headers": [], "query_string": b"a=1&user=ben"}) == "ben"
    assert apps.header_user({"headers": [], "query_string": b"user="}) is None
    assert apps.header_user({"headers": [], "query_string": b""}) is None
    assert apps.header_user({"headers": []}) is None


def test_an_h2load_log_counts_latency_from_when_each_request_was_due(tmp_path: Path) -> None:
    # 100 a second: due at 0, 10, 20 and 30 ms. The second took 25 ms, so the third could only
    # start at 35 ms (15 ms late) and the fourth at 40 ms (10 ms late).
    log = tmp_path / "log.tsv"
    log.write_text(
        "1000000000\t200\t1000\n"
        "1000010000\t200\t25000\n"
        "1000035000\t503\t1000\n"
        "1000040000\t200\t1000\n"
    )

    latencies, non_2xx = openloop._latencies(log, rate=100.0)

    assert [round(seconds * 1e6) for seconds in latencies] == [1000, 25000, 16000, 11000]
    assert non_2xx == 1


def test_a_request_sent_early_counts_its_own_time(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("1000000000\t200\t1000\n1000009000\t200\t2000\n")

    latencies, _ = openloop._latencies(log, rate=100.0)

    assert [round(seconds * 1e6) for seconds in latencies] == [1000, 2000]


def test_h2load_failures_are_read_from_its_summary() -> None:
    summary = (
        "finished in 2.00s, 50.00 req/s, 15.28KB/s\n"
        "requests: 100 total, 101 started, 97 done, 95 succeeded, 2 failed, 1 errored, "
        "3 timeout\n"
    )
    assert openloop._failures(summary) == 6
    assert openloop._failures("connect: Connection refused") is None


def test_h2load_without_a_server_is_an_error_not_a_result() -> None:
    found = openloop.H2load.find()
    if found is None:
        pytest.skip("h2load is not installed (apt-get install nghttp2-client)")
    with contextlib.closing(socket.socket()) as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = found.run(
        f"http://127.0.0.1:{port}/offer",
        rate=20.0,
        connections=2,
        duration=0.2,
        warmup=0.0,
        people=10,
        seed=1,
    )
    assert result.requests == 0
    assert result.errors == 2


def test_process_cpu_counts_a_process_and_its_children() -> None:
    busy = "import sys\nn = 0\nfor i in range(3_000_000): n += i\nprint(n, flush=True)\n"
    busy += "sys.stdin.read()\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline()  # the child has worked
        own = process_cpu_seconds(os.getpid())
        both = process_cpu_seconds(parent.pid)
        assert own is not None and own > 0
        # The loop alone took more than a clock tick in the child, which the parent's count holds.
        assert both is not None and both >= 0.01
    finally:
        parent.communicate("", timeout=30)
    assert process_cpu_seconds(parent.pid) is None


def test_redis_counters_count_what_clients_sent_and_what_scripts_ran(
    private_redis: RedisServer,
) -> None:
    counters = RedisCounters(private_redis.url)
    client = private_redis.client()
    try:
        client.ping()  # its connection is open (and HELLO said) before the count
        counters.calibrate()
        before = counters.read()
        client.eval("redis.call('SET', KEYS[1], 1); return redis.call('GET', KEYS[1])", 1, "k")
        client.incr("n")
        use = counters.use(before, counters.read())
    finally:
        client.close()
        counters.close()

    assert use.calls == {"eval": 1, "set": 1, "get": 1, "incrby": 1}
    assert use.commands == 4
    assert use.script_calls == 1
    assert use.reads == 2
    assert use.script_usec >= 0 and use.cpu_s >= 0
    assert use.main_thread_cpu_s is not None
