"""`throttle bench`: the arms under uvicorn in alternation, then the engine alone, then memory.

Every arm is its own uvicorn process on a free loopback port (one worker, uvloop and
httptools when installed, no access log), all on one Redis. Rounds run the arms one after
another, in an order that rotates each round, so that drift of the machine (another job,
a warming cache) touches every arm alike; each arm is compared with the bare run of the
same round. Every loop is bounded in time and count, and every process started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import redis

import throttle
from throttle.bench import cluster, decisions, memory
from throttle.bench.apps import DEFAULT_POLICY, TALLY_PATH
from throttle.bench.cost import RedisCounters, process_cpu_seconds
from throttle.bench.load import PythonClient, Run, Wrk
from throttle.bench.openloop import H2load, OpenRun, PacedClient
from throttle.bench.redis_server import PrivateRedis, free_port
from throttle.bench.results import (
    OPEN_LOOP_RATE,
    Http,
    Machine,
    OpenLoop,
    Results,
    RunCost,
    open_arm,
    paired_ratio,
    summarize,
    targets,
)
from throttle.errors import ConfigurationError
from throttle.policy import load_policy
from throttle.store.sentinel import direct_url

T = TypeVar("T")

_READY_SECONDS = 20.0
# Longer than anything a server keeps waiting for a write of its own (the store's audit linger).
_SETTLE_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class ArmSpec:
    name: str
    label: str
    factory: str
    requires: tuple[str, ...] = ()
    # Also measured at a fixed rate (the open-loop runs).
    open_loop: bool = False


ARMS = (
    ArmSpec("bare", "bare", "throttle.bench.apps:bare", open_loop=True),
    ArmSpec("throttle", "throttle (Redis)", "throttle.bench.apps:throttled", open_loop=True),
    ArmSpec("slowapi", "slowapi (fixed window)", "throttle.bench.apps:slowapi_app", ("slowapi",)),
    ArmSpec(
        "limits",
        "limits (moving window)",
        "throttle.bench.apps:limits_app",
        ("limits", "coredis"),
    ),
)


@dataclass(frozen=True, slots=True)
class Options:
    """How much to measure. The defaults are the full run; `SMOKE` is the tiny one."""

    smoke: bool = False
    duration: float = 10.0
    rounds: int = 5
    concurrency: int = 32
    threads: int = 2
    people: int = 100_000
    warmup: float = 2.0
    engine_duration: float = 5.0
    engine_callers: tuple[int, ...] = (1, 64)
    memory_people: int = 100_000
    rate: float = OPEN_LOOP_RATE
    open_connections: int = 10
    redis_url: str | None = None
    generator: Literal["auto", "wrk", "python"] = "auto"
    policy: Path = DEFAULT_POLICY
    command: str = "throttle bench"


SMOKE = Options(
    smoke=True,
    duration=1.0,
    rounds=1,
    concurrency=4,
    people=1000,
    warmup=0.0,
    engine_duration=0.5,
    memory_people=1000,
    rate=200.0,
    open_connections=4,
)


def run(options: Options, progress: TextIO) -> Results:
    """Measure everything `options` asks for; say what is happening on `progress`."""
    if not options.policy.is_file():
        raise ConfigurationError(
            f"policy {options.policy} not found: `throttle bench` runs from a checkout of "
            "throttle, or pass --policy"
        )
    policy = load_policy(options.policy)
    generator = _generator(options)
    paced = _open_generator(options)
    # Every key of the run starts with `run_keys`; each prefix is as long as the default
    # "throttle:", so that measured keys weigh what real ones do.
    run_keys = f"t{secrets.token_hex(3)}"
    prefix = f"{run_keys}b:"
    with contextlib.ExitStack() as stack:
        if isinstance(generator, Wrk):
            stack.callback(generator.close)
        if options.redis_url is None:
            private = stack.enter_context(PrivateRedis())
            url = store_url = private.url
            where = f"private redis-server on 127.0.0.1:{private.port}"
        else:
            store_url = options.redis_url
            # With Sentinel, throttle finds the master through it; the rest measures the master.
            url = direct_url(store_url)
            where = "given by --redis-url; the run's keys are deleted afterwards"
            stack.callback(_delete_keys, url, run_keys)
        machine = _machine(url)
        _say(progress, f"bench: Redis: {where}; load: {generator.describe(options.concurrency)}")
        _say(
            progress,
            f"bench: open loop: {paced.describe(options.rate, options.open_connections)}",
        )
        if isinstance(generator, PythonClient) and options.generator == "auto":
            _say(
                progress,
                "bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk), so a Python "
                "client drives the load: it shares the CPU with the servers it measures",
            )
        if isinstance(paced, PacedClient) and options.generator == "auto":
            _say(
                progress,
                "bench: h2load is not installed (Debian/Ubuntu: apt-get install nghttp2-client), "
                "so a paced Python client drives the open-loop runs",
            )
        http_results, open_loop = _http(
            options, generator, paced, url, prefix, progress, store_url=store_url
        )
        engine = tuple(
            _on_loop(
                decisions.measure(
                    store_url,
                    policy,
                    callers=callers,
                    duration=options.engine_duration,
                    people=options.people,
                    prefix=f"{prefix}e{callers}:",
                )
            )
            for callers in options.engine_callers
        )
        for found in engine:
            _say(
                progress,
                f"bench: engine alone, {found.callers} callers: "
                f"{found.per_second:,.0f} decisions/s",
            )
        passes: dict[bool, memory.Memory] = {}
        for audit in (True, False):
            if options.redis_url is None:
                # Our own server: weigh people on an empty keyspace, as a new deployment would.
                with redis.Redis.from_url(url) as client:
                    client.flushall()
            _say(
                progress,
                f"bench: memory: {options.memory_people:,} people, 3 messages each, audit trail "
                + ("on" if audit else "off"),
            )
            passes[audit] = _on_loop(
                memory.measure(
                    url,
                    policy,
                    people=options.memory_people,
                    prefix=f"{run_keys}{'a' if audit else 'n'}:",
                    audit=audit,
                )
            )
        weighed = memory.Weighed(with_trail=passes[True], without_trail=passes[False])
        callers = max(options.engine_callers)
        _say(progress, f"bench: cluster arm: one Redis, then 3 masters, {callers} callers")
        sharded = cluster.measure(
            policy,
            callers=callers,
            duration=options.engine_duration,
            people=options.people,
            on_loop=_on_loop,
        )
    return Results(
        mode="smoke" if options.smoke else "full",
        command=options.command,
        redis=where,
        policy=f"{policy.name}@{policy.version} ({options.policy.name})",
        machine=machine,
        http=http_results,
        open_loop=open_loop,
        engine=engine,
        memory=weighed,
        targets=targets(http_results, open_loop, weighed, judged=not options.smoke),
        cluster=sharded,
    )


def _http(
    options: Options,
    generator: Wrk | PythonClient,
    paced: H2load | PacedClient,
    url: str,
    prefix: str,
    progress: TextIO,
    *,
    store_url: str,
) -> tuple[Http, OpenLoop]:
    skipped = {
        arm.name: f"not installed: {', '.join(missing)} (pip install 'throttle-asgi[bench]')"
        for arm in ARMS
        if (missing := [m for m in arm.requires if importlib.util.find_spec(m) is None])
    }
    arms = [arm for arm in ARMS if arm.name not in skipped]
    environment = {
        **os.environ,
        "THROTTLE_BENCH_REDIS_URL": url,
        "THROTTLE_BENCH_STORE_URL": store_url,
        "THROTTLE_BENCH_PREFIX": prefix,
        "THROTTLE_BENCH_POLICY": str(options.policy),
        "THROTTLE_SECRET": secrets.token_hex(32),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(throttle.__file__).parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    runs: dict[str, list[Run]] = {arm.name: [] for arm in arms}
    costs: dict[str, list[RunCost]] = {arm.name: [] for arm in arms}
    opened = [arm for arm in arms if arm.open_loop]
    open_runs: dict[str, list[OpenRun]] = {arm.name: [] for arm in opened}
    outcomes: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="throttle-bench-")))
        counters = RedisCounters(url)
        stack.callback(counters.close)
        servers = {arm.name: stack.enter_context(_Server(arm, environment, logs)) for arm in arms}
        deadline = time.monotonic() + _READY_SECONDS
        for server in servers.values():
            server.wait_ready(deadline)
        _say(progress, f"bench: {len(servers)} servers up: {', '.join(servers)}")
        if options.warmup > 0:
            for arm in arms:
                generator.run(
                    servers[arm.name].url("/offer"),
                    connections=options.concurrency,
                    duration=options.warmup,
                    people=options.people,
                    seed=0,
                )
        if "throttle" in servers:
            servers["throttle"].get_json(TALLY_PATH)  # start counting from here
        counters.calibrate()
        for number in range(options.rounds):
            turn = number % len(arms)
            for arm in arms[turn:] + arms[:turn]:
                server = servers[arm.name]
                cpu_before, redis_before = server.cpu_seconds(), counters.read()
                found = generator.run(
                    server.url("/offer"),
                    connections=options.concurrency,
                    duration=options.duration,
                    people=options.people,
                    seed=number + 1,
                )
                time.sleep(_SETTLE_SECONDS)  # what the arm left waiting (audit entries) is written
                redis_use = counters.use(redis_before, counters.read())
                cpu_after = server.cpu_seconds()
                runs[arm.name].append(found)
                costs[arm.name].append(
                    RunCost(
                        requests=found.requests,
                        app_cpu_s=(
                            cpu_after - cpu_before
                            if cpu_before is not None and cpu_after is not None
                            else None
                        ),
                        redis=redis_use,
                    )
                )
                if arm.name == "throttle":
                    for key, count in server.get_json(TALLY_PATH).items():
                        outcomes[key] = outcomes.get(key, 0) + int(count)
                _say(
                    progress,
                    f"bench: round {number + 1}/{options.rounds} {arm.name:<9}"
                    f"{found.rps:>9,.0f} req/s  p99 {found.p99_ms:6.2f} ms",
                )
        for number in range(options.rounds):
            turn = number % len(opened)
            for arm in opened[turn:] + opened[:turn]:
                paced_run = paced.run(
                    servers[arm.name].url("/offer"),
                    rate=options.rate,
                    connections=options.open_connections,
                    duration=options.duration,
                    warmup=min(1.0, options.warmup),
                    people=options.people,
                    seed=1000 + number,
                )
                open_runs[arm.name].append(paced_run)
                _say(
                    progress,
                    f"bench: open loop {number + 1}/{options.rounds} {arm.name:<9}"
                    f"{paced_run.achieved:>7,.0f} req/s  p50 {paced_run.p50_ms:6.2f} ms  "
                    f"p99 {paced_run.p99_ms:6.2f} ms",
                )
    bare = (runs["bare"], costs["bare"]) if "bare" in runs else None
    http = Http(
        generator=generator.name,
        generator_version=generator.version,
        load=generator.describe(options.concurrency),
        server=_server_description(),
        duration_s=options.duration,
        rounds=options.rounds,
        concurrency=options.concurrency,
        people=options.people,
        arms=tuple(
            summarize(arm.name, arm.label, runs[arm.name], costs[arm.name], bare) for arm in arms
        ),
        skipped=skipped,
        throttle_outcomes=outcomes,
        throttle_vs_slowapi_rps=(
            paired_ratio(runs["throttle"], runs["slowapi"])
            if "throttle" in runs and "slowapi" in runs
            else None
        ),
    )
    open_loop = OpenLoop(
        generator=paced.name,
        generator_version=paced.version,
        load=paced.describe(options.rate, options.open_connections),
        rate=options.rate,
        connections=options.open_connections,
        duration_s=options.duration,
        rounds=options.rounds,
        arms=tuple(
            open_arm(arm.name, arm.label, open_runs[arm.name], open_runs.get("bare"))
            for arm in opened
        ),
    )
    return http, open_loop


class _Server:
    """One arm's uvicorn process on a free loopback port."""

    def __init__(self, arm: ArmSpec, environment: dict[str, str], logs: Path) -> None:
        self.arm = arm
        self.port = free_port()
        self._environment = environment
        self._log = logs / f"{arm.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_seconds(self) -> float | None:
        """CPU the server has used so far (its workers too); None where /proc cannot say."""
        assert self._process is not None
        return process_cpu_seconds(self._process.pid)

    def __enter__(self) -> _Server:
        loop, protocol = _server_options()
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "--factory", self.arm.factory,
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1", "--loop", loop, "--http", protocol,
                    "--no-access-log", "--log-level", "warning", "--lifespan", "on",
                ],
                env=self._environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def wait_ready(self, deadline: float) -> None:
        """Until `GET /offer` answers 200; fails with the server's own words if it cannot."""
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the {self.arm.name} server exited: {self._log_tail()}")
            try:
                status, _ = self._get("/offer")
                if status == 200:
                    return
                raise RuntimeError(f"the {self.arm.name} server answered {status}")
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {self.arm.name} server did not start: {self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def get_json(self, path: str) -> dict[str, Any]:
        status, body = self._get(path)
        if status != 200:
            raise RuntimeError(f"GET {path} from the {self.arm.name} server answered {status}")
        found: dict[str, Any] = json.loads(body)
        return found

    def _get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path, headers={"X-User": "bench-probe"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _log_tail(self) -> str:
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return text[-2000:].strip() or "(nothing logged)"

    def __exit__(self, *exc_info: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


def _generator(options: Options) -> Wrk | PythonClient:
    if options.generator == "python":
        return PythonClient()
    found = Wrk.find(threads=options.threads)
    if found is not None:
        return found
    if options.generator == "wrk":
        raise ConfigurationError(
            "wrk is not installed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
        )
    return PythonClient()


def _open_generator(options: Options) -> H2load | PacedClient:
    if options.generator == "python":
        return PacedClient()
    return H2load.find() or PacedClient()


def _server_options() -> tuple[str, str]:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    protocol = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, protocol


def _server_description() -> str:
    import uvicorn

    loop, protocol = _server_options()
    return f"uvicorn {uvicorn.__version__}, 1 worker, {loop}, {protocol}, no access log"


def _on_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed, as the servers do."""
    factory: Callable[[], Any] | None = None
    if importlib.util.find_spec("uvloop"):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(work)


def _machine(url: str) -> Machine:
    with redis.Redis.from_url(url) as client:
        version = str(client.info("server")["redis_version"])
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=_cpu_model(),
        python=platform.python_version(),
        platform=platform.platform(),
        redis_version=version,
        load_average=os.getloadavg(),
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _delete_keys(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)


def _say(progress: TextIO, line: str) -> None:
    print(line, file=progress, flush=True)
