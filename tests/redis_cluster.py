"""A private Redis Cluster for the tests: 3 masters with 1 replica each, on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from tests.redis_server import RedisServer, free_port

# Short, so that a replica takes over from a killed master within a couple of seconds.
NODE_TIMEOUT_MS = 1000


class RedisClusterServers:
    """Six redis-servers made one cluster by `redis-cli --cluster create`: start, kill a node,
    start it again (it rejoins as a replica), reshard, stop."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                # The bus port is chosen too: port + 10000 may be taken, or past 65535.
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # The other masters keep serving while one is down and not yet replaced.
                "--cluster-require-full-coverage",
                "no",
            )
            for _ in range(masters * (1 + replicas))
        ]
        self.replicas = replicas
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError(
                "redis-cli is not installed (Debian/Ubuntu: apt-get install redis-tools)"
            )
        self.cli = cli

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli, "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_until_ok()

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says `cluster_state:ok` and they agree on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._settled():
                    return
            except (redis.ConnectionError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not settle")
            time.sleep(0.05)

    def _settled(self) -> bool:
        views = set()
        for node in self.running():
            with node.client(socket_timeout=1) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
                views.add(tuple(sorted(self._masters_seen(client))))
        return len(views) == 1

    @staticmethod
    def _masters_seen(client: redis.Redis) -> list[int]:
        return sorted({int(entry[2][1]) for entry in client.execute_command("CLUSTER SLOTS")})

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def masters(self) -> list[RedisServer]:
        """The running nodes that serve slots now."""
        with self.running()[0].client(socket_timeout=1) as client:
            ports = self._masters_seen(client)
        return [node for node in self.nodes if node.port in ports]

    def node_of(self, key: str) -> RedisServer:
        """The master serving `key`'s slot now."""
        with self.running()[0].client(socket_timeout=1) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for entry in client.execute_command("CLUSTER SLOTS"):
                if entry[0] <= slot <= entry[1]:
                    port = int(entry[2][1])
                    return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node serves {key!r}")

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as client:
                client.flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
