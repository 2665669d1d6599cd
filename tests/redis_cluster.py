"""A private Redis Cluster for the tests: 3 masters with 1 replica each, on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from tests.redis_server import RedisServer, free_port

# Short, so that a replica takes over from a killed master within a couple of seconds.
NODE_TIMEOUT_MS = 1000


def _cluster_node() -> RedisServer:
    return RedisServer(
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        # The bus port is chosen too: port + 10000 may be taken, or past 65535.
        "--cluster-port", str(free_port()),
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        # The other masters keep serving while one is down and not yet replaced.
        "--cluster-require-full-coverage", "no",
    )  # fmt: skip


class RedisClusterServers:
    """Six redis-servers made one cluster by `redis-cli --cluster create`: start, kill a node,
    start it again (it rejoins as a replica), reshard, stop."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.nodes = [_cluster_node() for _ in range(masters * (1 + replicas))]
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
        for index in range(len(self.nodes)):
            for attempt in range(3):
                try:
                    self.nodes[index].start()
                    break
                except RuntimeError:
                    # Another process took one of its free ports meanwhile: pick others.
                    self.nodes[index].cleanup()
                    if attempt == 2:
                        raise
                    self.nodes[index] = _cluster_node()
        subprocess.run(
            [
                self.cli, "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_until_ok()

    def wait_until_ok(self, timeout: float = 60.0) -> None:
        """Until every running node says `cluster_state:ok` and they agree on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                unsettled = self._unsettled()
            except redis.RedisError as error:
                unsettled = str(error)
            if unsettled is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not settle: {unsettled}")
            time.sleep(0.05)

    def kill(self, node: RedisServer) -> None:
        """SIGKILL: no goodbye to the cluster, no last write to the replica."""
        assert node.process is not None
        node.process.kill()
        node.process.wait(timeout=10)
        node.process = None

    def wait_until_replaced(self, node: RedisServer, timeout: float = 60.0) -> None:
        """Until a replica serves the slots of `node` (killed) and the cluster is ok again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                unsettled = self._unsettled()
                if unsettled is None and node in self.masters():
                    unsettled = "no replica has taken over yet"
            except redis.RedisError as error:
                unsettled = str(error)
            if unsettled is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from 127.0.0.1:{node.port}: {unsettled}")
            time.sleep(0.05)

    def reshard(self, source: RedisServer, target: RedisServer, slots: int) -> None:
        """Move `slots` slots, keys and all, from one master to another (`redis-cli --cluster
        reshard`: MIGRATING/IMPORTING, MIGRATE in batches, SETSLOT NODE)."""
        subprocess.run(
            [
                self.cli, "--cluster", "reshard", f"127.0.0.1:{target.port}",
                "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
                "--cluster-slots", str(slots), "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def begin_migration(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """CLUSTER SETSLOT IMPORTING on the target, MIGRATING on the source: keys not yet moved
        stay served by the source, the others by the target after ASKING."""
        with target.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        with source.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(target))

    def migrate(self, keys: list[str], source: RedisServer, target: RedisServer) -> None:
        with source.client() as client:
            client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, target: RedisServer) -> None:
        """CLUSTER SETSLOT NODE on every master: the slot is the target's."""
        owner = self.node_id(target)
        masters = self.masters()
        for node in [target, *(m for m in masters if m is not target)]:
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", owner)
        deadline = time.monotonic() + 10
        while not all(self._owner_seen(node, slot) == target.port for node in self.running()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster does not agree that {slot} moved")
            time.sleep(0.02)

    @staticmethod
    def _owner_seen(node: RedisServer, slot: int) -> int | None:
        with node.client(socket_timeout=1) as client:
            for entry in client.execute_command("CLUSTER SLOTS"):
                if entry[0] <= slot <= entry[1]:
                    return int(entry[2][1])
        return None

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Move one slot, keys and all, by hand."""
        self.begin_migration(slot, source, target)
        with source.client() as client:
            found = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in found]
        if keys:
            self.migrate(keys, source, target)
        self.finish_migration(slot, target)

    def give_back(self, slot: int, owner: RedisServer) -> None:
        """After a test moved a slot (or failed halfway): the slot is `owner`'s again."""
        self.stabilize(slot)
        current = self._owner_seen(owner, slot)
        if current != owner.port:
            self.move_slot(slot, next(n for n in self.nodes if n.port == current), owner)

    def stabilize(self, slot: int) -> None:
        """End a migration without moving the slot (CLUSTER SETSLOT STABLE everywhere)."""
        for node in self.masters():
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "STABLE")

    @staticmethod
    def node_id(node: RedisServer) -> str:
        with node.client(socket_timeout=1) as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    def _unsettled(self) -> str | None:
        """What is not settled yet, or None."""
        views = set()
        for node in self.running():
            with node.client(socket_timeout=2) as client:
                info = client.cluster("info")
                if info["cluster_state"] != "ok":
                    return f"{node.port}: cluster_state {info['cluster_state']}"
                if int(info["cluster_known_nodes"]) < len(self.nodes):
                    return f"{node.port} knows {info['cluster_known_nodes']} nodes"
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    # A replica that never synced cannot take over.
                    return f"{node.port}: replica link {replication['master_link_status']}"
                views.add(tuple(sorted(self._masters_seen(client))))
        return None if len(views) == 1 else f"the nodes disagree on the masters: {views}"

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

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of `master`, as the master sees it."""
        with master.client(socket_timeout=1) as client:
            info = client.info("replication")
        ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave") and v}
        return next(node for node in self.running() if node.port in ports)

    def node_of(self, key: str) -> RedisServer:
        """The master serving `key`'s slot now."""
        with self.running()[0].client(socket_timeout=1) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for entry in client.execute_command("CLUSTER SLOTS"):
                if entry[0] <= slot <= entry[1]:
                    port = int(entry[2][1])
                    return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node serves {key!r}")

    def slots_of(self, node: RedisServer) -> set[int]:
        """The slots `node` serves now."""
        with self.running()[0].client(socket_timeout=1) as client:
            return {
                slot
                for entry in client.execute_command("CLUSTER SLOTS")
                if int(entry[2][1]) == node.port
                for slot in range(entry[0], entry[1] + 1)
            }

    def flush(self) -> None:
        """Empty every master (each node asked for its own role: no one node's view of the
        others is trusted right after a failover)."""
        for node in self.running():
            with node.client() as client:
                if client.info("replication")["role"] == "master":
                    client.flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
