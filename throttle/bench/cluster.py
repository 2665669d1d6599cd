"""The cluster arm: the engine alone on one Redis, then on a Redis Cluster of three masters.

Both on this machine, private servers on free loopback ports (no replicas: the arm weighs the
decision path, and a replica would only add its own copy of each write). For each: decisions
per second from `callers` concurrent loops of `Engine.decide`, and each node's CPU per decision
(`INFO cpu`, the measuring's own cost left out). On one machine the masters share its cores
with each other and with the client, so the figures show what sharding costs per decision, not
what three machines would gain.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from throttle.bench.apps import MARKER_VALUE
from throttle.bench.decisions import ServerCounters
from throttle.bench.redis_server import PrivateRedis, free_port
from throttle.engine import Engine
from throttle.errors import ConfigurationError
from throttle.message import parse_marker
from throttle.policy import Policy
from throttle.store import ClusterStore, RedisStore, Store

MASTERS = 3
_MAX_DECISIONS = 2_000_000
_SETTLE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class NodeShare:
    """One Redis's part of a run: its port and its CPU per decision (of all decisions)."""

    port: int
    redis_cpu_us: float


@dataclass(frozen=True, slots=True)
class StoreRun:
    """The engine alone on one store: `nodes` one Redis, or each master of a cluster."""

    store: str
    callers: int
    decisions: int
    seconds: float
    per_second: float
    fell_back: int
    nodes: tuple[NodeShare, ...]

    @property
    def redis_cpu_us(self) -> float:
        """Redis CPU per decision, every node's together."""
        return sum(node.redis_cpu_us for node in self.nodes)


@dataclass(frozen=True, slots=True)
class ClusterArm:
    single: StoreRun
    cluster: StoreRun


class PrivateCluster:
    """Three cluster-enabled redis-servers made one cluster; stopped and removed on exit."""

    def __init__(self, masters: int = MASTERS) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise ConfigurationError(
                "the cluster arm needs redis-server and redis-cli (Debian/Ubuntu: apt-get "
                "install redis-server redis-tools)"
            )
        self._server, self._cli = server, cli
        self.ports = [free_port() for _ in range(masters)]
        self._directory = Path(tempfile.mkdtemp(prefix="throttle-bench-cluster-"))
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node_urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def __enter__(self) -> PrivateCluster:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        for port in self.ports:
            directory = self._directory / str(port)
            directory.mkdir()
            arguments = [
                self._server, "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),
                "--save", "", "--appendonly", "no", "--dir", str(directory),
                "--logfile", str(directory / "redis.log"),
            ]  # fmt: skip
            self._processes.append(
                subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + _SETTLE_SECONDS
        for port in self.ports:
            self._wait(port, deadline, lambda client: bool(client.ping()))
        subprocess.run(
            [
                self._cli, "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=_SETTLE_SECONDS,
        )  # fmt: skip
        for port in self.ports:
            self._wait(port, deadline, _cluster_ok)

    def _wait(self, port: int, deadline: float, ready: object) -> None:
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                    if ready(client):  # type: ignore[operator]
                        return
            except (redis.ConnectionError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the bench's Redis Cluster did not start (port {port})")
            time.sleep(0.05)

    def __exit__(self, *exc_info: object) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._processes.clear()
        shutil.rmtree(self._directory, ignore_errors=True)


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.cluster("info")
    return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) >= MASTERS)


def measure(
    policy: Policy,
    *,
    callers: int,
    duration: float,
    people: int,
    on_loop: Callable[[Coroutine[Any, Any, StoreRun]], StoreRun] = asyncio.run,
) -> ClusterArm:
    """The engine alone, `callers` at once for `duration` seconds: on one private Redis, then
    on a private cluster of three masters; each run by `on_loop`."""
    with PrivateRedis() as single:
        single_run = on_loop(
            _measure(
                "one Redis", RedisStore(single.url), [single.url], policy, callers, duration, people
            )
        )
    with PrivateCluster() as cluster:
        cluster_run = on_loop(
            _measure(
                f"Redis Cluster, {MASTERS} masters",
                ClusterStore(cluster.url),
                cluster.node_urls(),
                policy,
                callers,
                duration,
                people,
            )
        )
    return ClusterArm(single=single_run, cluster=cluster_run)


async def _measure(
    name: str,
    store: Store,
    node_urls: list[str],
    policy: Policy,
    callers: int,
    duration: float,
    people: int,
) -> StoreRun:
    engine = Engine(policy, store, secret=secrets.token_bytes(32))
    marker = parse_marker(MARKER_VALUE)
    counters = [ServerCounters(url) for url in node_urls]
    decided = fell_back = 0
    try:
        for n in range(8 * len(node_urls)):  # connections and scripts, outside the count
            await engine.decide(marker, person=f"warm-up-{n}")
        for counter in counters:
            await counter.calibrate()
        before = [await counter.read() for counter in counters]
        budget = _MAX_DECISIONS // callers
        started = time.perf_counter()
        deadline = started + duration

        async def caller(chooser: random.Random) -> None:
            nonlocal decided, fell_back
            for _ in range(budget):
                if time.perf_counter() >= deadline:
                    return
                decision = await engine.decide(marker, person=f"person-{chooser.randrange(people)}")
                decided += 1
                fell_back += decision.reason.value == "store-unavailable"

        await asyncio.gather(*(caller(random.Random(n)) for n in range(callers)))
        seconds = time.perf_counter() - started
        uses = [
            counter.use(start, await counter.read())
            for counter, start in zip(counters, before, strict=True)
        ]
    finally:
        for counter in counters:
            await counter.aclose()
        await store.aclose()
    return StoreRun(
        store=name,
        callers=callers,
        decisions=decided,
        seconds=seconds,
        per_second=decided / seconds,
        fell_back=fell_back,
        nodes=tuple(
            NodeShare(int(url.rsplit(":", 1)[1].split("/")[0]), use.cpu_s / decided * 1e6)
            for url, use in zip(node_urls, uses, strict=True)
        )
        if decided
        else (),
    )


def report_lines(arm: ClusterArm) -> list[str]:
    """The arm as the text report shows it."""
    lines = [
        "cluster arm: Engine.decide, no HTTP, one Redis against a Redis Cluster of "
        f"{MASTERS} masters, all on this machine; Redis CPU per decision, per node",
        f"{'store':<26}{'callers':>8}{'decisions/s':>13}{'fell back':>11}"
        f"{'Redis CPU us':>14}  per node",
    ]
    for run in (arm.single, arm.cluster):
        nodes = "  ".join(f"{node.redis_cpu_us:.1f}" for node in run.nodes)
        lines.append(
            f"{run.store:<26}{run.callers:>8}{run.per_second:>13,.0f}{run.fell_back:>11}"
            f"{run.redis_cpu_us:>14.1f}  {nodes}"
        )
    return lines
