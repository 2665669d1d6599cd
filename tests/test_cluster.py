"""The store on a real Redis Cluster: URLs, slots, where each key lives, redirections."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.apps import storefront
from tests.conftest import ManualClock
from tests.helpers import NO_REPETITION, SECRET, engine, marker, policy, trail
from tests.redis_cluster import RedisClusterServers
from tests.test_reload import CAP, offer, write
from throttle import ConfigurationError, Engine
from throttle.cli import main
from throttle.store import ClusterStore, open_store
from throttle.store.base import Choice
from throttle.store.cluster import (
    AUDIT_SHARDS,
    audit_keys,
    key_slot,
    parse_cluster_url,
    split_commands,
)
from throttle.store.pipe import command

CAP_OF_3 = '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n' + NO_REPETITION


def test_a_cluster_url_names_its_seeds_credentials_and_tls() -> None:
    address = parse_cluster_url("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/")
    assert address.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (address.username, address.password, address.tls) == (None, "s@cret", False)
    assert address.node_url("::1", 7002) == "redis://:s%40cret@[::1]:7002"
    tls = parse_cluster_url("rediss+cluster://ops:pw@h:7000?ssl_cert_reqs=none")
    assert (tls.username, tls.password, tls.tls) == ("ops", "pw", True)
    assert tls.node_url("h", 7001) == "rediss://ops:pw@h:7001?ssl_cert_reqs=none"


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://h:70000",
        "redis+cluster://h:7000,,h:7001",
        "redis+cluster://h:7000/3",
        "redis+cluster://h:port",
    ],
)
def test_a_bad_cluster_url_stops_start_up(url: str) -> None:
    with pytest.raises(ConfigurationError, match="store"):
        open_store(url)


def test_key_slots_are_the_clusters_own(redis_cluster: RedisClusterServers) -> None:
    keys = [b"throttle:{abc}", b"throttle:{abc}:choices", b"{}x", b"a{}b{c}", b"x{y", b"", b"\xff"]
    keys += [f"person-{n}".encode() for n in range(50)]
    with redis_cluster.nodes[0].client() as client:
        for key in keys:
            assert key_slot(key) == client.execute_command("CLUSTER KEYSLOT", key), key


def test_a_batch_is_split_into_its_commands_with_their_keys() -> None:
    batch = [
        command(b"EVALSHA", b"f" * 40, b"2", b"t:{p}", b"t:{p}:choices", b"\r\n$3\r\n"),
        command(b"EVAL", b"return 1", b"0", b"arg"),
        command(b"PFADD", b"t:audience:{eu}", b"p1", b"p2"),
        command(b"SCRIPT", b"LOAD", b"return 1"),
    ]
    assert split_commands(b"".join(batch)) == [
        (batch[0], b"t:{p}"),
        (batch[1], None),
        (batch[2], b"t:audience:{eu}"),
        (batch[3], None),
    ]


async def test_what_a_decision_touches_for_a_person_shares_their_slot(
    redis_cluster_url: str, redis_cluster: RedisClusterServers
) -> None:
    store = ClusterStore(redis_cluster_url)
    try:
        person = "0123456789abcdef0123456789abcdef"
        assert key_slot(store.person_key(person).encode()) == key_slot(
            store.choices_key(person).encode()
        )
        # A segment's PFADD, PEXPIRE and PFCOUNT go to one node.
        assert store.audience_key("eu/de").endswith("{eu/de}")
        # The trail's shards live on every master.
        await store._pipe.connect()
        owners = {store._cluster.owner(key.encode()) for key in audit_keys(store.prefix)}
        assert len(store.audit_keys) == AUDIT_SHARDS
        assert owners == {f"127.0.0.1:{n.port}" for n in redis_cluster.masters()}
    finally:
        await store.aclose()


def test_the_trail_spreads_over_the_masters_and_audit_reads_every_shard(
    redis_cluster_url: str, redis_cluster: RedisClusterServers, capsys: pytest.CaptureFixture[str]
) -> None:
    async def decide() -> int:
        store = ClusterStore(redis_cluster_url)
        throttle = Engine(policy(CAP_OF_3), store, secret=SECRET)
        for n in range(60):  # one at a time: each write carries the entries before it
            await throttle.decide(marker(), person=f"p{n % 20}")
        entries = len(await trail(store))
        await store.aclose()
        return entries

    assert asyncio.run(decide()) == 60
    holding = set()
    for key in audit_keys("throttle:"):
        node = redis_cluster.node_of(key)
        with node.client() as client:
            if client.exists(key):
                holding.add(node.port)
    assert len(holding) == 3  # no single node takes every append
    capsys.readouterr()
    argv = ["audit", "--redis-url", redis_cluster_url, "--since", "1h", "--json"]
    assert main([*argv, "--min-decisions", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decisions"] == 60
    assert (report["outcomes"], report["people"]) == ({"personalized": 60}, 20)


async def test_a_moved_slot_is_followed_and_caps_stay_exact(
    redis_cluster_url: str, redis_cluster: RedisClusterServers, clock: ManualClock
) -> None:
    store = ClusterStore(redis_cluster_url)
    throttle = engine(CAP_OF_3, store, clock)
    key = store.person_key(throttle.pseudonym("ana"))
    slot = key_slot(key.encode())
    source = redis_cluster.node_of(key)
    target = next(m for m in redis_cluster.masters() if m is not source)
    try:
        assert [(await throttle.decide(marker(), person="ana")).outcome for _ in range(2)] == [
            "personalized"
        ] * 2
        redis_cluster.move_slot(slot, source, target)  # the store still knows the old map
        outcomes = [(await throttle.decide(marker(), person="ana")).outcome for _ in range(2)]
        assert outcomes == ["personalized", "segment"]
        assert store._cluster.redirections["MOVED"] >= 1
        assert store._cluster.owner(key.encode()) == f"127.0.0.1:{target.port}"
    finally:
        await store.aclose()
        redis_cluster.give_back(slot, source)


async def test_keys_in_migration_are_followed_with_asking(
    redis_cluster_url: str, redis_cluster: RedisClusterServers, clock: ManualClock
) -> None:
    store = ClusterStore(redis_cluster_url)
    throttle = engine(CAP_OF_3, store, clock)
    person = throttle.pseudonym("ben")
    key = store.person_key(person)
    slot = key_slot(key.encode())
    source = redis_cluster.node_of(key)
    target = next(m for m in redis_cluster.masters() if m is not source)
    try:
        await store.choose(person, Choice("level", 3), now_ms=int(clock.now * 1000), keep_ms=10**9)
        assert (await throttle.decide(marker(), person="ben")).outcome == "personalized"
        redis_cluster.begin_migration(slot, source, target)
        redis_cluster.migrate([key, store.choices_key(person)], source, target)
        # The source no longer has the keys: ASK, then ASKING and the script on the target.
        outcomes = [(await throttle.decide(marker(), person="ben")).outcome for _ in range(3)]
        assert outcomes == ["personalized", "personalized", "segment"]
        assert store._cluster.redirections["ASK"] >= 1
        assert (await store.state(person) or {}).get("p", {}).get("l") == 3
    finally:
        await store.aclose()
        redis_cluster.give_back(slot, source)


async def test_a_slot_split_for_too_long_falls_back_for_its_people_only(
    redis_cluster_url: str, redis_cluster: RedisClusterServers, clock: ManualClock
) -> None:
    store = ClusterStore(redis_cluster_url)
    throttle = engine(CAP_OF_3, store, clock)
    key = store.person_key(throttle.pseudonym("cleo"))
    slot = key_slot(key.encode())
    source = redis_cluster.node_of(key)
    target = next(m for m in redis_cluster.masters() if m is not source)
    other = next(
        f"dan{n}"
        for n in range(1000)
        if redis_cluster.node_of(store.person_key(throttle.pseudonym(f"dan{n}"))) is not source
    )
    try:
        assert (await throttle.decide(marker(), person="cleo")).outcome == "personalized"
        # Her record stays on the source, her choices key is nowhere: TRYAGAIN, again and again.
        redis_cluster.begin_migration(slot, source, target)
        refused = await throttle.decide(marker(), person="cleo")
        assert (refused.outcome, refused.reason) == ("segment", "store-unavailable")
        assert store._cluster.redirections["TRYAGAIN"] >= 1
        # One person's slot is not the store: everyone else is decided as before.
        assert (await throttle.decide(marker(), person=other)).outcome == "personalized"
        assert not throttle.guard.failing
    finally:
        await store.aclose()
        redis_cluster.give_back(slot, source)


async def test_an_edited_policy_reloads_live_on_a_cluster(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    policy_file = tmp_path / "ops.toml"
    write(policy_file, CAP.format(limit=1))
    store = ClusterStore(redis_cluster_url)
    app = storefront(policy=str(policy_file), reload_interval=0, store=store, secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
            decided = [(await offer(http)).headers["personalization-decision"] for _ in range(2)]
            write(policy_file, CAP.format(limit=3))
            after = [(await offer(http)).headers["personalization-decision"] for _ in range(3)]
    finally:
        await store.aclose()  # no lifespan under ASGITransport: the test closes it
    assert [d.split(";")[0] for d in decided] == ["personalized", "segment"]
    # The counters in the cluster carry over: two more fit under the new cap of 3.
    assert [d.split(";")[0] for d in after] == ["personalized", "personalized", "segment"]


async def test_a_silent_master_fails_its_people_alone(
    redis_cluster_url: str, redis_cluster: RedisClusterServers, clock: ManualClock
) -> None:
    # Long enough for the other master to answer on a busy machine, short enough to stay well
    # within the cluster's node timeout (1 s), so the stopped master is not failed over.
    body = CAP_OF_3 + '[store]\ntimeout = "300ms"\n'
    store = ClusterStore(redis_cluster_url)
    throttle = engine(body, store, clock)
    silent = redis_cluster.node_of(store.person_key(throttle.pseudonym("eva")))
    other = next(
        f"fay{n}"
        for n in range(1000)
        if redis_cluster.node_of(store.person_key(throttle.pseudonym(f"fay{n}"))) is not silent
    )
    assert silent.process is not None
    try:
        for person in ("eva", other):  # connections open, scripts loaded
            assert (await throttle.decide(marker(), person=person)).outcome == "personalized"
        silent.process.send_signal(signal.SIGSTOP)  # alive, connected, and saying nothing
        try:
            stalled, served = await asyncio.gather(
                throttle.decide(marker(), person="eva"), throttle.decide(marker(), person=other)
            )
        finally:
            silent.process.send_signal(signal.SIGCONT)
            # On a busy machine the pause may have outlasted the node timeout: the tests after
            # this one need a settled cluster, whoever its masters are now.
            await asyncio.to_thread(redis_cluster.wait_until_ok)
        assert (stalled.outcome, stalled.reason) == ("segment", "store-unavailable")
        assert served.outcome == "personalized"
        assert not throttle.guard.failing
    finally:
        await store.aclose()


async def test_the_stricter_mode_waits_for_a_replica_of_every_master(
    redis_cluster_url: str, clock: ManualClock
) -> None:
    """`[store] replicas`: each master the batch's decisions went to gets its own WAIT, and its
    count decides for them: each master has one replica here, so one is met and two never are."""
    store = ClusterStore(redis_cluster_url)
    try:
        held = engine(CAP_OF_3 + '[store]\ntimeout = "5s"\nreplicas = 1\n', store, clock)
        people = [f"p{n}" for n in range(12)]  # spread over the three masters
        decided = await asyncio.gather(*(held.decide(marker(), person=p) for p in people))
        assert {d.reason.value for d in decided} == {"allowed"}
        unmet = engine(CAP_OF_3 + '[store]\ntimeout = "200ms"\nreplicas = 2\n', store, clock)
        refused = await unmet.decide(marker(), person="ana")
        assert (refused.outcome, refused.reason.value) == ("segment", "store-unavailable")
    finally:
        await store.aclose()
