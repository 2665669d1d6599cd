"""Redis behind Sentinel: store URLs, the master found through the sentinels and followed
through failovers, and the stricter mode (`[store] replicas`), on real Sentinel sets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio.sentinel import MasterNotFoundError

from tests.apps import storefront
from tests.failover import run_failover
from tests.helpers import SECRET, marker, policy
from tests.redis_sentinel import SERVICE, Certificates, SentinelSet
from tests.redis_server import free_port
from tests.test_reload import offer, write
from throttle import Engine
from throttle.cli import main
from throttle.decision import Reason
from throttle.errors import ConfigurationError
from throttle.store import RedisStore, open_store
from throttle.store.sentinel import SENTINEL_PORT, MasterFinder, SentinelURL, direct_url

THREE_PER_HOUR = (
    '[[caps]]\nname = "three"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
    "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
    '[store]\ntimeout = "1s"\nretry_after = "100ms"\n'
)


@pytest.fixture
def own_sentinel_set() -> Iterator[SentinelSet]:
    """A Sentinel set of this test's own, for tests that fail its master over."""
    sentinels = SentinelSet()
    sentinels.start()
    yield sentinels
    sentinels.cleanup()


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_master_options() -> None:
    url = SentinelURL.parse(
        "rediss+sentinel://:secret@10.0.0.1:26380,10.0.0.2,[::1]:26381/orders/2"
        "?sentinel_password=other&ssl_cert_reqs=none"
    )
    assert url.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", SENTINEL_PORT), ("::1", 26381))
    assert url.service == "orders"
    master = url.master_options
    assert master["password"] == "secret" and master["db"] == 2
    assert master["ssl_cert_reqs"] == "none" and master["ssl"] is True
    assert "sentinel_password" not in url.master_url
    assert url.sentinel_options["password"] == "other"
    assert url.sentinel_options["ssl_cert_reqs"] == "none"
    # Without a sentinel password of their own, the sentinels get the master's.
    plain = SentinelURL.parse("redis+sentinel://:secret@h:1/orders")
    assert plain.sentinel_options["password"] == "secret"
    assert plain.master_options["db"] == 0
    assert "connection_class" not in plain.master_options  # no TLS


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        ("redis+sentinel://127.0.0.1:26379", "name the master's service"),
        ("redis+sentinel://127.0.0.1:port/orders", "port 'port' of sentinel"),
        ("redis+sentinel://127.0.0.1:26379,/orders", "a sentinel's address is empty"),
        ("redis+sentinel://127.0.0.1:26379/orders/first", "must be a number, not 'first'"),
    ],
)
def test_a_wrong_sentinel_url_stops_start_up(url: str, wrong: str) -> None:
    with pytest.raises(ConfigurationError, match=wrong):
        open_store(url)


async def test_the_store_finds_the_master_past_a_dead_sentinel(sentinel_set: SentinelSet) -> None:
    sentinel_set.flush()
    alive = ",".join(f"127.0.0.1:{s.port}" for s in sentinel_set.sentinels)
    store = open_store(f"redis+sentinel://127.0.0.1:{free_port()},{alive}/{SERVICE}")
    engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
    try:
        decision = await engine.decide(marker(), person="ana")
        assert decision.outcome == "personalized"
        assert await engine.state_of("ana") is not None
    finally:
        await store.aclose()


async def test_no_master_found_is_a_store_fault_naming_every_sentinel(
    sentinel_set: SentinelSet,
) -> None:
    dead = free_port()
    url = SentinelURL.parse(
        f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel_set.sentinels[0].port}/nobody"
    )
    with pytest.raises(MasterNotFoundError) as raised:
        await MasterFinder(url, timeout=1.0)()
    assert f"127.0.0.1:{dead}: ConnectionError" in str(raised.value)
    assert "knows no master 'nobody'" in str(raised.value)
    store = open_store(_url_of(url))
    engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
    try:
        decision = await engine.decide(marker(), person="ana")
    finally:
        await store.aclose()
    assert decision.outcome == "segment"
    assert decision.reason is Reason.STORE_UNAVAILABLE


async def test_a_named_server_that_is_no_master_is_not_used(
    own_sentinel_set: SentinelSet,
) -> None:
    """The sentinels still name a server that has just become a replica: its ROLE says so,
    and no connection is made to it."""
    old = own_sentinel_set.current_master()
    demoted = old.client()
    demoted.replicaof("127.0.0.1", own_sentinel_set.replica.port)
    demoted.close()
    with pytest.raises(MasterNotFoundError, match=r"whose role is slave"):
        await MasterFinder(SentinelURL.parse(own_sentinel_set.url), timeout=1.0)()


async def test_unanswering_sentinels_leave_the_master_in_place() -> None:
    url = SentinelURL.parse(f"redis+sentinel://127.0.0.1:{free_port()}/{SERVICE}")
    finder = MasterFinder(url, timeout=0.5)
    assert not await finder.moved()  # nothing found yet
    finder.found = ("127.0.0.1", 6379)
    assert not await finder.moved()
    with pytest.raises(ValueError, match="starts with redis"):
        SentinelURL.parse("redis://127.0.0.1:6379/0")


def _url_of(url: SentinelURL) -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in url.sentinels)
    return f"redis+sentinel://{hosts}/{url.service}"


@pytest.mark.parametrize(
    ("password", "sentinel_password"),
    [
        ("master-secret", "master-secret"),
        ("master-secret", "sentinel-secret"),
        ("master-secret", None),
    ],
    ids=["one-password", "own-sentinel-password", "open-sentinels"],
)
async def test_passwords_reach_the_master_and_the_sentinels(
    password: str, sentinel_password: str | None
) -> None:
    sentinels = SentinelSet(password=password, sentinel_password=sentinel_password)
    sentinels.start()
    store = open_store(sentinels.url)
    engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
    try:
        assert (await engine.decide(marker(), person="ana")).outcome == "personalized"
        assert await engine.state_of("ana") is not None  # the redis-py client too
    finally:
        await store.aclose()
        sentinels.cleanup()


def test_bench_measures_the_master_the_sentinels_name(sentinel_set: SentinelSet) -> None:
    master = sentinel_set.current_master()
    assert direct_url(sentinel_set.url) == f"redis://127.0.0.1:{master.port}/0"
    assert direct_url("redis://127.0.0.1:1/2") == "redis://127.0.0.1:1/2"


async def test_an_edited_policy_takes_effect_on_sentinel_without_a_restart(
    sentinel_url: str, tmp_path: Path
) -> None:
    """Hot reload on Sentinel: a raised cap and the stricter mode, switched on live; the
    counts carry over."""
    path = tmp_path / "ops.toml"
    cap = '[policy]\nname = "ops"\n[[caps]]\nname = "c"\nper = "user"\nlimit = {}\nwindow = "1h"\n'
    # A first connection through Sentinel takes two more: more than the default 50 ms, loaded.
    cap += '[store]\ntimeout = "1s"\n'
    write(path, cap.format(1))
    store = open_store(sentinel_url)
    app = storefront(policy=str(path), store=store, secret=SECRET, reload_interval=0)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
            first = [await offer(http) for _ in range(2)]
            write(path, cap.format(3) + "replicas = 1\n")
            after = [await offer(http) for _ in range(3)]
    finally:
        await store.aclose()
    outcomes = [r.headers["personalization-decision"].split(";")[0] for r in first + after]
    assert outcomes == ["personalized", "segment", "personalized", "personalized", "segment"], [
        r.headers["personalization-decision"] for r in first + after
    ]


async def test_tls_to_the_sentinels_and_the_master(tmp_path: Path) -> None:
    """`rediss+sentinel://`: every server speaks only TLS, with a certificate from a CA the URL
    names."""
    sentinels = SentinelSet(tls=Certificates.made_in(tmp_path), password="secret")
    sentinels.start()
    assert sentinels.url.startswith("rediss+sentinel://:secret@")
    store = open_store(sentinels.url)
    engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
    try:
        assert (await engine.decide(marker(), person="ana")).outcome == "personalized"
        assert await engine.state_of("ana") is not None
    finally:
        await store.aclose()
        sentinels.cleanup()


async def test_a_demoted_master_is_left_for_the_new_one(own_sentinel_set: SentinelSet) -> None:
    """`SENTINEL FAILOVER`: the old master lives on as a replica and answers READONLY; the
    decision path moves to the new master, counts intact, and the privacy routes read it."""
    store = RedisStore(own_sentinel_set.url)
    engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
    try:
        for _ in range(2):
            assert (await engine.decide(marker(), person="ana")).outcome == "personalized"
        old = own_sentinel_set.current_master()
        # A planned failover: SENTINEL FAILOVER does not wait for the replica to catch up,
        # so the operator (here, the test) waits until it holds every write.
        master = old.client()
        assert master.execute_command("WAIT", 1, 5000) == 1
        master.close()
        sentinel = own_sentinel_set.sentinels[0].client()
        sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        sentinel.close()
        new = await asyncio.get_running_loop().run_in_executor(
            None, own_sentinel_set.wait_for_new_master, old.port
        )
        assert new is not old
        # The old master still believes it is one: the sentinels demote it (REPLICAOF) once
        # they have seen it claim so for 8 s. The test does now what they would do then.
        demoted = old.client()
        demoted.replicaof("127.0.0.1", new.port)
        demoted.close()
        # Decisions fall back while the store is away, then the new master answers: at most
        # a bounded number of tries, a short pause (retry_after) apart.
        outcomes = []
        for _ in range(100):
            decision = await engine.decide(marker(), person="ana")
            outcomes.append(decision.reason)
            if decision.reason is not Reason.STORE_UNAVAILABLE:
                break
            await asyncio.sleep(0.05)
        assert outcomes[-1] is Reason.ALLOWED  # the third of three: the count survived
        assert (await engine.decide(marker(), person="ana")).reason is Reason.FREQUENCY_CAP
        # The off-hot-path client (privacy routes) reads the new master too.
        state = await engine.state_of("ana")
        assert state is not None and sum(len(log) for log in state["c"].values()) == 3
        assert (await engine.erase("ana")).state
        assert await engine.state_of("ana") is None
    finally:
        await store.aclose()


async def test_a_replaced_master_that_has_not_noticed_is_left_too(
    own_sentinel_set: SentinelSet,
) -> None:
    """After `SENTINEL FAILOVER` the old master answers as one until the sentinels demote it
    (8 s later): the decision path leaves it as soon as the sentinels name another."""
    store = RedisStore(own_sentinel_set.url)
    engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
    try:
        for _ in range(2):
            assert (await engine.decide(marker(), person="ana")).outcome == "personalized"
        assert await engine.state_of("ana") is not None  # redis-py's pool: a connection to it
        old = own_sentinel_set.current_master()
        master = old.client()
        assert master.execute_command("WAIT", 1, 5000) == 1
        master.close()
        sentinel = own_sentinel_set.sentinels[0].client()
        sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        sentinel.close()
        new = await asyncio.get_running_loop().run_in_executor(
            None, own_sentinel_set.wait_for_new_master, old.port
        )
        # Ben's decisions show where the decision path writes: bounded tries, 50 ms apart.
        ben = store.person_key(engine.pseudonym("ben"))
        on_new = new.client()
        try:
            for _ in range(100):
                await engine.decide(marker(), person="ben")
                if on_new.exists(ben):
                    break
                await asyncio.sleep(0.05)
            assert on_new.exists(ben), "the decision path stayed on the replaced master"
        finally:
            on_new.close()
        assert (await engine.decide(marker(), person="ana")).reason is Reason.ALLOWED
        assert (await engine.decide(marker(), person="ana")).reason is Reason.FREQUENCY_CAP
        # The privacy routes' client left the old master too: it reads the third delivery,
        # which only the new master holds.
        state = await engine.state_of("ana")
        assert state is not None and sum(len(log) for log in state["c"].values()) == 3
    finally:
        await store.aclose()


async def test_a_killed_master_under_load_through_uvicorn(
    own_sentinel_set: SentinelSet,
) -> None:
    """SIGKILL of the master while 16 clients ask uvicorn for offers: no error reaches a
    client, decisions fall back until the new master answers, then they are answered again."""
    figures = await run_failover(own_sentinel_set, replicas=0)
    print("failover, asynchronous replication:", figures.line())
    assert figures.not_2xx == 0 and figures.exceptions == 0
    assert figures.fell_back_before_kill == 0
    assert figures.fell_back > 0  # the kill was felt: the test measured a failover
    assert figures.answered_after_recovery > 0


async def test_with_replicas_a_failover_loses_no_counted_delivery(
    own_sentinel_set: SentinelSet,
) -> None:
    """`replicas = 1`: a delivery is personalized only once a replica holds its count, so
    the promoted replica counts every one and no one gets past the cap. A planned failover
    (`SENTINEL FAILOVER`) under load is the hard case: the old master takes writes until the
    sentinels name the new one, and without the wait those are lost (docs/production.md)."""
    figures = await run_failover(own_sentinel_set, replicas=1, how="switch")
    print("planned failover, replicas = 1:", figures.line())
    assert figures.not_2xx == 0 and figures.exceptions == 0
    assert figures.lost_counts == 0
    assert figures.over_cap_deliveries == 0
    assert figures.answered_after_recovery > 0


async def test_too_few_replicas_fall_back_to_segment_content(
    redis_url: str, sentinel_url: str
) -> None:
    """A Redis without replicas cannot hold a decision on one: segment content, not a count
    a failover could lose. With a replica, the same policy personalizes."""
    strict = policy(THREE_PER_HOUR + "replicas = 1\n")
    for url, expected in ((redis_url, Reason.STORE_UNAVAILABLE), (sentinel_url, Reason.ALLOWED)):
        store = open_store(url)
        engine = Engine(strict, store, secret=SECRET)
        try:
            decision = await engine.decide(marker(), person="ana")
        finally:
            await store.aclose()
        assert decision.reason is expected, url


def test_audit_reads_the_trail_through_the_sentinels(
    sentinel_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def decide() -> None:
        store = open_store(sentinel_url)
        engine = Engine(policy(THREE_PER_HOUR), store, secret=SECRET)
        for _ in range(4):
            await engine.decide(marker(), person="ana")
        await store.aclose()  # writes the last entries

    asyncio.run(decide())
    arguments = ["audit", "--redis-url", sentinel_url, "--since", "1h", "--min-decisions", "1"]
    assert main([*arguments, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"decisions": 4' in out
