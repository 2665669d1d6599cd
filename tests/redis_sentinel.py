"""A private Redis Sentinel set for the tests: one master, one replica, three sentinels, each
a redis-server on a free loopback port, their files in temporary directories."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.redis_server import RedisServer, free_port

SERVICE = "throttle"
# Short, so that a failover takes a few seconds of a test's time.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A CA of the test's own and a certificate it signed for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def made_in(cls, directory: Path) -> Certificates:
        ca, cert, key = directory / "ca.pem", directory / "server.pem", directory / "server.key"

        def openssl(*arguments: str) -> None:
            subprocess.run(["openssl", *arguments], check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                "/CN=test CA", "-keyout", str(directory / "ca.key"), "-out", str(ca))  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                "-keyout", str(key), "-out", str(directory / "server.csr"))  # fmt: skip
        (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", str(directory / "server.csr"), "-CA", str(ca),
                "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "1",
                "-extfile", str(directory / "san.cnf"), "-out", str(cert))  # fmt: skip
        return cls(ca, cert, key)

    def server_options(self) -> tuple[str, ...]:
        """TLS only, replication included; clients need not show a certificate."""
        return (
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-replication", "yes",
            "--tls-auth-clients", "no",
        )  # fmt: skip

    def client_options(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


class SentinelProcess:
    """One `redis-server <conf> --sentinel`. Sentinels rewrite their configuration file, so
    it is written into a directory of its own."""

    def __init__(
        self,
        binary: str,
        *,
        password: str | None,
        master_password: str | None,
        tls: Certificates | None,
    ) -> None:
        self.binary = binary
        self.tls = tls
        self.password = password
        self.master_password = master_password
        self.port = free_port()
        self.id = secrets.token_hex(20)
        self.directory = Path(tempfile.mkdtemp(prefix="throttle-sentinel-"))
        self.conf = self.directory / "sentinel.conf"
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, master: int, replica: int, others: list[SentinelProcess]) -> None:
        """Watch `master`; the replica and the other sentinels are named up front, which saves
        the seconds their discovery (hello messages, INFO) would take."""
        known = "".join(
            f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other.port} {other.id}\n"
            for other in others
        )
        tls = self.tls
        listen = f"port {self.port}\n"
        if tls:  # TLS only, to clients, to the servers and to the other sentinels
            options = tls.server_options()
            listen = f"port 0\ntls-port {self.port}\n" + "".join(
                f"{option.removeprefix('--')} {value}\n"
                for option, value in zip(options[::2], options[1::2], strict=True)
            )
        self.conf.write_text(
            listen + "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel myid {self.id}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            f"sentinel known-replica {SERVICE} 127.0.0.1 {replica}\n"
            + known
            + (
                f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
                if self.password
                else ""
            )
            + (
                f"sentinel auth-pass {SERVICE} {self.master_password}\n"
                if self.master_password
                else ""
            )
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self, **options: Any) -> redis.Redis:
        tls = self.tls.client_options() if self.tls else {}
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, **tls, **options
        )

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


class SentinelSet:
    """The master, its replica and three sentinels watching them as service `throttle`;
    `password` for the servers, `sentinel_password` for the sentinels, when given."""

    def __init__(
        self,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: Certificates | None = None,
    ) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        # No wait for more replicas before a first sync (5 s by default), on either: after a
        # failover the replica is the master.
        options: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
        if password:
            options += ("--requirepass", password, "--masterauth", password)
        clients = tls.client_options() if tls else {}
        self.master = RedisServer(*options, client_options=clients)
        self.replica = RedisServer(
            *options, "--replicaof", "127.0.0.1", str(self.master.port), client_options=clients
        )
        self.servers = [self.master, self.replica]
        if tls:  # the port each was given becomes its TLS port; no plain one
            for server in self.servers:
                server.extra = (
                    *server.extra, "--port", "0", "--tls-port", str(server.port),
                    *tls.server_options(),
                )  # fmt: skip
        self.sentinels = [
            SentinelProcess(
                self.master.binary, password=sentinel_password, master_password=password, tls=tls
            )
            for _ in range(3)
        ]
        for sentinel in self.sentinels:
            others = [other for other in self.sentinels if other is not sentinel]
            sentinel.configure(self.master.port, self.replica.port, others)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        user = f":{self.password}@" if self.password else ""
        query = (
            f"?sentinel_password={self.sentinel_password or ''}"
            if self.password != self.sentinel_password
            else ""
        )
        if self.tls:
            query += ("&" if query else "?") + f"ssl_ca_certs={self.tls.ca}"
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{user}{hosts}/{SERVICE}{query}"

    def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            self.master.start()
            self.replica.start()
            self._wait(deadline, "the replica to sync", self._replica_synced)
            for sentinel in self.sentinels:
                sentinel.start()
            self._wait(deadline, "the sentinels to see each other", self._sentinels_ready)
        except BaseException:
            self.cleanup()
            raise

    def master_address(self) -> tuple[str, int] | None:
        """The master the sentinels name, from the first that answers."""
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=1)
            try:
                reply: Any = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if reply:
                return reply[0].decode() if isinstance(reply[0], bytes) else reply[0], int(reply[1])
        return None

    def server_at(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def current_master(self) -> RedisServer:
        address = self.master_address()
        if address is None:
            raise RuntimeError("no sentinel names a master")
        return self.server_at(address[1])

    def wait_for_new_master(self, old_port: int, timeout: float = 30.0) -> RedisServer:
        """Wait (at most `timeout`) until the sentinels name another master, answering as one."""
        deadline = time.monotonic() + timeout

        def promoted() -> bool:
            address = self.master_address()
            if address is None or address[1] == old_port:
                return False
            client = self.server_at(address[1]).client(socket_timeout=1)
            try:
                role: Any = client.execute_command("ROLE")
            except redis.RedisError:
                return False
            finally:
                client.close()
            return bool(role) and role[0] in (b"master", "master")

        self._wait(deadline, "a new master", promoted)
        return self.current_master()

    def flush(self) -> None:
        client = self.current_master().client()
        client.flushall()
        client.close()

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        for server in self.servers:
            server.cleanup()

    def _replica_synced(self) -> bool:
        """The replica acknowledges writes: after a diskless sync the master streams to it only
        once it has sent its first ACK (within a second), and WAIT counts it only then."""
        client = self.master.client(socket_timeout=1)
        try:
            client.set("sentinel-set-ready", 1)
            acknowledged: Any = client.execute_command("WAIT", 1, 100)
            client.delete("sentinel-set-ready")
        finally:
            client.close()
        return bool(acknowledged == 1)

    def _sentinels_ready(self) -> bool:
        """Every sentinel knows the master, the replica and the two other sentinels: only then
        can they agree on a failover."""
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=1)
            try:
                master: Any = client.sentinel_master(SERVICE)
                replicas: Any = client.sentinel_slaves(SERVICE)
                others: Any = client.sentinel_sentinels(SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if master.get("flags") != "master" or len(replicas) != 1 or len(others) != 2:
                return False
        return True

    @staticmethod
    def _wait(deadline: float, what: str, ready: Any) -> None:
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Sentinel set did not get ready: waiting for {what}")
            time.sleep(0.05)
