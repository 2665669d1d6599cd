"""`throttle bench` in its smoke mode: it runs, prints every row, and its JSON parses.

These check the shape of what the bench reports, never how fast anything was: CI machines
are noisy, and a benchmark is read by people, not asserted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import redis
from starlette.types import ASGIApp, Message

from throttle.bench import apps, report
from throttle.bench.decisions import EngineRun
from throttle.bench.load import Run
from throttle.bench.memory import Memory
from throttle.bench.results import Http, Machine, Results, summarize, targets
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
    rows = {label: next(line for line in lines if line.startswith(label)) for label in ARM_LABELS}
    for label in ARM_LABELS[1:]:
        # req/s, spread, three latencies, four ratios to bare and the p99 difference
        assert rows[label].endswith(" ms")
        assert len(rows[label][len(label) :].split()) == 11
    assert "throttle req/s / slowapi req/s:" in table
    assert "0 unmarked" in table
    assert "Redis reads/decision" in table
    assert "MEMORY USAGE" in table
    assert "targets (issue #5): not judged in a smoke run" in table


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
    engine = {run["callers"]: run for run in results["engine"]}
    assert set(engine) == {1, 64}
    # Never more than one round trip per decision (a slow machine may skip the store: fewer).
    assert 0 <= engine[1]["reads_per_decision"] <= 1.1
    assert 0 <= engine[64]["reads_per_decision"] <= 1.1
    assert results["memory"]["one_person_bytes"] > 0
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


def results(*, throttle_rps: float, p99_ms: float, bytes_: int, mode: str = "full") -> Results:
    bare = [run(1000, 10), run(1200, 12)]
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
            summarize("bare", "bare", bare, bare),
            summarize("throttle", "throttle (Redis)", [run(throttle_rps, p99_ms)] * 2, bare),
            summarize("slowapi", "slowapi (fixed window)", [run(100, 90, errors=3)] * 2, bare),
        ),
        skipped={"limits": "not installed: coredis"},
        throttle_outcomes={"personalized/allowed": 20_000},
        throttle_redis=None,
        throttle_vs_slowapi_rps=throttle_rps / 100,
    )
    engine = EngineRun(1, 100, 1.0, 300.0, 900.0, 100.0, 100, 1.0, 300, 3.0, {})
    memory = Memory(3, bytes_, 100, 180, 1000, 300_000, 300.0, bytes_, {})
    return Results(
        mode=mode,
        command="throttle bench",
        redis="private",
        policy="default",
        machine=Machine(2, "a CPU", "3.11", "Linux", "7.0", (0.0, 0.0, 0.0)),
        http=http,
        engine=(engine,),
        memory=memory,
        targets=targets(http, memory, judged=mode == "full"),
    )


def test_a_full_run_judges_each_target() -> None:
    missed = {t.name: t.met for t in results(throttle_rps=500, p99_ms=30, bytes_=248).targets}
    met = {t.name: t.met for t in results(throttle_rps=1000, p99_ms=11, bytes_=184).targets}

    assert missed == {
        "throughput with throttle": False,
        "p99 latency added": False,
        "throughput against slowapi": True,
        "Redis memory per person": False,
    }
    assert set(met.values()) == {True}


def test_the_table_names_arms_that_failed_or_were_skipped() -> None:
    table = report.table(results(throttle_rps=500, p99_ms=30, bytes_=248))

    assert "failures: slowapi: 6 errors, 0 non-2xx" in table
    assert "limits: skipped, not installed: coredis" in table
    assert "  MISSED throughput with throttle" in table
    assert "  met    throughput against slowapi" in table


@pytest.fixture
def bench_environment(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
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


def test_nobody_without_an_x_user_header() -> None:
    assert apps.header_user({"headers": [(b"x-user", b"ana")]}) == "ana"
    assert apps.header_user({"headers": []}) is None
