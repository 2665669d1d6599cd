"""The decision connection speaks to Redis as the URL says: password, database, unix socket."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ManualClock
from tests.helpers import engine, marker
from tests.redis_server import RedisServer, free_port
from throttle import Reason
from throttle.store import RedisStore

HOURLY = '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 1\nwindow = "1h"\n'


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        "--requirepass", "s3cret-pass", "--unixsocket", str(tmp_path / "redis.sock")
    )
    server.start()
    yield server
    server.cleanup()


async def decide_twice(url: str, clock: ManualClock) -> list[str]:
    store = RedisStore(url)
    throttle = engine(HOURLY, store, clock)
    try:
        return [(await throttle.decide(marker(), person="ana")).outcome for _ in range(2)]
    finally:
        await store.aclose()


async def test_password_and_database_from_the_url(
    guarded_redis: RedisServer, clock: ManualClock
) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{guarded_redis.port}/5"
    assert await decide_twice(url, clock) == ["personalized", "segment"]
    client = guarded_redis.client(db=5)
    assert len(client.keys("throttle:{*}")) == 1
    client.close()


async def test_username_and_password_from_the_url(
    guarded_redis: RedisServer, clock: ManualClock
) -> None:
    url = f"redis://default:s3cret-pass@127.0.0.1:{guarded_redis.port}/0"
    assert await decide_twice(url, clock) == ["personalized", "segment"]


async def test_a_unix_socket(
    guarded_redis: RedisServer, clock: ManualClock, tmp_path: Path
) -> None:
    url = f"unix://:s3cret-pass@{tmp_path / 'redis.sock'}?db=2"
    assert await decide_twice(url, clock) == ["personalized", "segment"]


async def test_a_wrong_password_is_a_store_failure_not_a_crash(
    guarded_redis: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(f"redis://:wrong@127.0.0.1:{guarded_redis.port}/0")
    throttle = engine(HOURLY, store, clock)
    decision = await throttle.decide(marker(), person="ana")
    assert (decision.outcome, decision.reason) == ("segment", Reason.STORE_UNAVAILABLE)
    await store.aclose()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server that speaks only TLS, with a certificate for 127.0.0.1 from its own CA."""
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"

    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
            "-keyout", str(tmp_path / "ca.key"), "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(tmp_path / "server.csr"))  # fmt: skip
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(tmp_path / "server.csr"), "-CA", str(ca),
            "-CAkey", str(tmp_path / "ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", str(tmp_path / "san.cnf"), "-out", str(cert))  # fmt: skip
    port = free_port()
    server = RedisServer(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        client_options={"ssl": True, "ssl_ca_certs": str(ca)},
    )  # fmt: skip
    server.port = port
    server.start()
    yield server, ca
    server.cleanup()


async def test_tls_with_the_ca_named_in_the_url(
    tls_redis: tuple[RedisServer, Path], clock: ManualClock
) -> None:
    server, ca = tls_redis
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}"
    assert await decide_twice(url, clock) == ["personalized", "segment"]


async def test_tls_refuses_a_server_it_cannot_verify(
    tls_redis: tuple[RedisServer, Path], clock: ManualClock
) -> None:
    server, _ = tls_redis
    store = RedisStore(f"rediss://127.0.0.1:{server.port}/0")  # the system CAs do not know it
    throttle = engine(HOURLY, store, clock)
    decision = await throttle.decide(marker(), person="ana")
    assert (decision.outcome, decision.reason) == ("segment", Reason.STORE_UNAVAILABLE)
    await store.aclose()
