"""Data requests by support staff: `throttle person` and the admin routes carry out what the
person's own privacy routes do, record each request in the audit trail first (action,
operator, time, the person's token, never their id), and leave nothing after an erasure."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from tests.apps import ROUTES
from tests.helpers import SECRET, marker, trail
from tests.redis_server import RedisServer
from tests.servers import serving
from tests.test_privacy import after_erasure
from throttle import (
    DataRequest,
    Engine,
    ThrottleMiddleware,
    admin_routes,
    load_policy,
    privacy_routes,
)
from throttle import personal_data as data
from throttle.audit_summary import read_entries
from throttle.cli import main
from throttle.store import ClusterStore, MemoryStore, RedisStore, Store, open_store
from throttle.support import BadRequest, carry_out

POLICY_FILE = Path(__file__).resolve().parent.parent / "policies" / "default.toml"
POLICY = load_policy(POLICY_FILE)
THROTTLE = [str(Path(sys.executable).parent / "throttle")]
ANA_ID = "ana.garcia@example.com"
BEN_ID = "ben.okafor@example.com"


async def requests_in(store: Store) -> list[DataRequest]:
    """The data requests in the store's audit trail, oldest first."""
    if isinstance(store, MemoryStore):
        return [DataRequest.unpack(packed) for packed in store.requests()]
    assert isinstance(store, RedisStore)
    rows: Any = await store._client.xrange(store.audit_key)
    return [DataRequest.unpack(fields[b"r"]) for _, fields in rows if b"r" in fields]


async def seen(engine: Engine, person: str, times: int = 2) -> None:
    for _ in range(times):
        await engine.decide(marker(signals=("cart",)), person=person)


async def test_each_request_is_recorded_under_the_persons_token_and_answers_as_theirs(
    store: Store,
) -> None:
    engine = Engine(POLICY, store, secret=SECRET)
    await seen(engine, ANA_ID)
    exported = await carry_out(engine, "export", ANA_ID, operator="sam")
    assert exported == await data.export(engine, ANA_ID, zone=None)  # what /privacy/data says
    assert len(exported["recent_decisions"]) == 2
    await carry_out(engine, "set-level", ANA_ID, operator="sam", value="off")
    await carry_out(engine, "give-consent", ANA_ID, operator="kim", value="health")
    assert (await carry_out(engine, "level", ANA_ID, operator="kim"))["level"] == "off"
    consents = await carry_out(engine, "consents", ANA_ID, operator="kim")
    assert consents["categories"]["health"]["consented"] is True
    await carry_out(engine, "withdraw-consent", ANA_ID, operator="kim", value="health")

    (token,) = {entry.person for entry in await trail(store)}
    requests = await requests_in(store)
    assert [(r.action, r.value, r.operator) for r in requests] == [
        ("export", None, "sam"),
        ("set-level", "off", "sam"),
        ("give-consent", "health", "kim"),
        ("level", None, "kim"),
        ("consents", None, "kim"),
        ("withdraw-consent", "health", "kim"),
    ]
    assert {r.person for r in requests} == {token}  # the trail's token: no id, no pseudonym
    assert all(r.time_ms > 0 for r in requests)
    # Someone of whom nothing is held has no token: their request names nobody.
    await carry_out(engine, "export", BEN_ID, operator="sam")
    assert (await requests_in(store))[-1].person == ""


async def test_a_request_that_cannot_be_carried_out_records_and_changes_nothing() -> None:
    store = MemoryStore()
    engine = Engine(POLICY, store, secret=SECRET)
    await seen(engine, ANA_ID)
    bad: list[tuple[str, str, str, Any]] = [
        ("export", "", "sam", None),
        ("export", "x" * 1025, "sam", None),
        ("export", ANA_ID, "", None),
        ("export", ANA_ID, "sam\n", None),
        ("export", ANA_ID, "sam", "off"),
        ("set-level", ANA_ID, "sam", "everything"),
        ("set-level", ANA_ID, "sam", None),
        ("give-consent", ANA_ID, "sam", "helth"),
        ("withdraw-consent", ANA_ID, "sam", None),
        ("forget", ANA_ID, "sam", None),
    ]
    for action, person, operator, value in bad:
        with pytest.raises(BadRequest):
            await carry_out(engine, action, person, operator=operator, value=value)
    assert store.requests() == []
    assert (await engine.level_of(ANA_ID)) == ("standard", False)


async def test_an_erasure_by_staff_leaves_nothing_of_the_person_in_redis(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    engine = Engine(POLICY, store, secret=SECRET)
    await seen(engine, ANA_ID, 3)
    await engine.set_level(ANA_ID, "full")
    await seen(engine, BEN_ID)
    token = await store.token_of(engine.pseudonym(ANA_ID))
    erased = await carry_out(engine, "erase", ANA_ID, operator="sam")
    assert erased["deleted"] == {"state": True, "recent_decisions": 3}
    held = after_erasure(redis_server, engine.pseudonym(ANA_ID))
    assert engine.pseudonym(ANA_ID).encode() not in held
    assert ANA_ID.encode() not in held
    assert engine.pseudonym(BEN_ID).encode() in held  # ben's state stays
    requests = await requests_in(store)
    assert [(r.action, r.operator, r.person) for r in requests] == [("erase", "sam", token)]
    # `throttle audit` reads the trail past the requests in it.
    reader = read_entries(store._client, store.audit_key, since_ms=None, until_ms=None)
    decisions = [entry async for entry in reader]
    assert len(decisions) == 5 and reader.unreadable == 0
    assert token in {entry.person for entry in decisions}
    await store.aclose()


@pytest.fixture(params=["redis", "cluster", "sentinel"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """A shared store's URL: one Redis, a Redis Cluster, a Sentinel set."""
    fixture = {"redis": "redis_url", "cluster": "redis_cluster_url", "sentinel": "sentinel_url"}
    url: str = request.getfixturevalue(fixture[request.param])
    return url


async def test_each_request_keeps_its_entry_max_age_where_the_audit_reader_reads(
    shared_url: str, tmp_path: Path
) -> None:
    # Without decisions in the trail, only the requests themselves keep their stream alive.
    override = tmp_path / "audit.toml"
    override.write_text('[audit]\nenabled = false\nmax_age = "1h"\n')
    store = open_store(shared_url)
    assert isinstance(store, RedisStore)
    engine = Engine(load_policy(POLICY_FILE, override), store, secret=SECRET)
    client, key = store.client, store.audit_key
    # One of the streams `throttle audit` reads (a cluster store's shards).
    assert key in store.audit_keys
    two_hours_ago = int(time.time() * 1000) - 7_200_000
    await client.xadd(key, {"n": 0, "d": b""}, id=f"{two_hours_ago}-0")
    try:
        await carry_out(engine, "export", ANA_ID, operator="sam")
        assert 3_500_000 < await client.pttl(key) <= 3_600_000
        await client.pexpire(key, 1000)  # as if most of the hour had passed since
        await carry_out(engine, "erase", BEN_ID, operator="sam")
        # The stream lives an hour after its last request, and holds nothing older.
        assert 3_500_000 < await client.pttl(key) <= 3_600_000
        assert [r.action for r in await requests_in(store)] == ["export", "erase"]
        assert await client.xrange(key, min=f"{two_hours_ago}-0", max=f"{two_hours_ago}-0") == []
    finally:
        await engine.aclose()


async def requests_at(url: str) -> list[DataRequest]:
    store = RedisStore(url)
    try:
        return await requests_in(store)
    finally:
        await store.aclose()


def run_throttle(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("THROTTLE_SECRET", "USER")}
    environment.update(env)
    return subprocess.run(
        [*THROTTLE, *argv], capture_output=True, text=True, env=environment, timeout=60
    )


def test_throttle_person_carries_out_requests_against_a_real_redis(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    async def seed() -> str:
        store = RedisStore(redis_url)
        engine = Engine(POLICY, store, secret=SECRET)
        await seen(engine, ANA_ID, 3)
        await seen(engine, BEN_ID)
        await store.aclose()
        return engine.pseudonym(ANA_ID)

    pseudonym = asyncio.run(seed())
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    common = ["--id", ANA_ID, "--policy", str(POLICY_FILE), "--store", redis_url]
    env = {"THROTTLE_SECRET": SECRET.decode(), "USER": "sam"}

    exported = run_throttle("person", "export", "--json", *common, **env)
    assert exported.returncode == 0, exported.stderr
    body = json.loads(exported.stdout)
    assert body["pseudonym"] == pseudonym and len(body["recent_decisions"]) == 3
    text = run_throttle("person", "export", *common, "--secret-file", str(secret), USER="sam")
    assert text.returncode == 0, text.stderr
    assert "recent decisions: 3" in text.stdout and "(the policy's default)" in text.stdout
    erased = run_throttle("person", "erase", *common, **env)
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.startswith("erased: their record and choices, with 3 recent decisions")

    held = after_erasure(redis_server, pseudonym)
    assert pseudonym.encode() not in held and ANA_ID.encode() not in held
    assert BEN_ID.encode() not in held  # nobody's id, ever
    requests = asyncio.run(requests_at(redis_url))
    assert [(r.action, r.operator) for r in requests] == [
        ("export", "sam"),
        ("export", "sam"),
        ("erase", "sam"),
    ]

    # A Redis that does not answer: one line, status 1, never a traceback.
    down = run_throttle("person", "export", *common[:4], "--store", "redis://127.0.0.1:1/0", **env)
    assert down.returncode == 1, down.stderr
    assert down.stderr.startswith("throttle person: the store at redis://127.0.0.1:1/0 cannot")
    assert len(down.stderr.splitlines()) == 1 and "Traceback" not in down.stderr


@pytest.mark.parametrize(
    ("argv", "env", "status", "words"),
    [
        (["consents", "--give", "helth"], {}, 1, "'helth' is not a special category"),
        (["level"], {"THROTTLE_SECRET": ""}, 1, "set THROTTLE_SECRET or give --secret-file"),
        (["level"], {"THROTTLE_SECRET": "short"}, 1, "at least 16 bytes"),
        (["level", "--secret-file", "/nonexistent/secret"], {}, 1, "cannot be read"),
        (["level"], {"USER": ""}, 2, "--operator NAME"),
        (["level", "--store", "memory://"], {}, 2, "the Redis the app uses"),
        # A URL refused is shown without its password.
        (["level", "--store", "ftp://:hunter2@127.0.0.1:1/"], {}, 2, "not 'ftp://127.0.0.1:1/'"),
        (["erase", "--set", "off"], {}, 2, "erase takes no --set"),
        (["level", "--store", "redis://127.0.0.1:x/0"], {}, 1, "Port could not be cast"),
        (["level", "--id", ""], {}, 2, "--id must name the person"),
        (["level", "--policy", "/nonexistent.toml"], {}, 1, "cannot be used"),
        (["export", "--give", "health", "--withdraw", "health"], {}, 2, "takes no"),
        (["consents", "--give", "health", "--withdraw", "health"], {}, 2, "not both"),
    ],
)
def test_throttle_person_says_what_cannot_be_used(
    argv: list[str],
    env: dict[str, str],
    status: int,
    words: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = {"THROTTLE_SECRET": SECRET.decode(), "USER": "sam", **env}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    action, *rest = argv
    given = ["person", action, "--id", ANA_ID, "--policy", str(POLICY_FILE)]
    given += ["--store", "redis://127.0.0.1:1/0", *rest]  # refused before it is reached
    assert main(given) == status
    err = capsys.readouterr().err
    assert words in err and err.startswith("throttle person: "), err
    assert "Traceback" not in err and "hunter2" not in err


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_throttle_person_reaches_a_cluster_and_redis_behind_sentinel(
    topology: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = request.getfixturevalue("redis_cluster_url" if topology == "cluster" else "sentinel_url")

    async def seed() -> None:
        store = ClusterStore(url) if topology == "cluster" else RedisStore(url)
        await seen(Engine(POLICY, store, secret=SECRET), ANA_ID, 2)
        await store.aclose()

    asyncio.run(seed())
    monkeypatch.setenv("THROTTLE_SECRET", SECRET.decode())
    common = ["--id", ANA_ID, "--policy", str(POLICY_FILE), "--store", url, "--operator", "sam"]
    assert main(["person", "export", "--json", *common]) == 0
    assert len(json.loads(capsys.readouterr().out)["recent_decisions"]) == 2
    assert main(["person", "erase", *common]) == 0
    assert capsys.readouterr().out.startswith("erased: their record and choices, with 2")
    assert main(["person", "export", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)["recent_decisions"] == []


class StaffOrCustomer(AuthenticationBackend):
    """Test-only sign-in: X-Staff names a member of staff, X-Test-User a customer."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        if staff := conn.headers.get("x-staff"):
            return AuthCredentials(["authenticated", "throttle:admin"]), SimpleUser(staff)
        if customer := conn.headers.get("x-test-user"):
            return AuthCredentials(["authenticated"]), SimpleUser(customer)
        return None


def admin_app(store: str) -> Starlette:
    return Starlette(
        routes=[
            *ROUTES,
            Mount("/privacy", routes=privacy_routes()),
            Mount("/admin/people", routes=admin_routes()),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=StaffOrCustomer()),
            Middleware(
                ThrottleMiddleware, policy=POLICY_FILE, store=store, secret=SECRET, freeze_gc=False
            ),
        ],
    )


@pytest.fixture
async def served(redis_url: str) -> AsyncIterator[str]:
    async with serving(admin_app(redis_url)) as url:
        yield url


async def test_the_admin_routes_through_a_real_server(
    served: str, redis_server: RedisServer, redis_url: str
) -> None:
    ana, sam = {"x-test-user": ANA_ID}, {"x-staff": "sam"}
    async with httpx.AsyncClient(base_url=served) as http:
        for _ in range(2):
            assert (await http.get("/offer?signal=cart", headers=ana)).status_code == 200
        await http.get("/offer", headers={"x-test-user": BEN_ID})
        own = (await http.get("/privacy/data", headers=ana)).json()
        nobody = await http.post("/admin/people/export", json={"id": ANA_ID})
        customer = await http.post("/admin/people/export", json={"id": BEN_ID}, headers=ana)
        exported = await http.post("/admin/people/export", json={"id": ANA_ID}, headers=sam)
        level = await http.post(
            "/admin/people/level", json={"id": ANA_ID, "level": "off"}, headers=sam
        )
        given = await http.post(
            "/admin/people/consents", json={"id": ANA_ID, "give": "health"}, headers=sam
        )
        refused = [
            await http.post("/admin/people/export", content=b"not json", headers=sam),
            await http.post("/admin/people/export", json=[ANA_ID], headers=sam),
            await http.post("/admin/people/export", json={"id": True}, headers=sam),
            await http.post("/admin/people/erase", json={"id": ANA_ID, "x": 1}, headers=sam),
            await http.post(
                "/admin/people/level", json={"id": ANA_ID, "level": "max"}, headers=sam
            ),
            await http.post(
                "/admin/people/consents", json={"id": ANA_ID, "give": "helth"}, headers=sam
            ),
            await http.post("/admin/people/export", content=b"{" * 5000, headers=sam),
        ]
        now_off = (await http.get("/privacy/level", headers=ana)).json()
        erased = await http.post("/admin/people/erase", json={"id": ANA_ID}, headers=sam)
    assert nobody.status_code == 401 and customer.status_code == 403
    assert exported.status_code == 200 and exported.headers["cache-control"] == "no-store"
    answered = exported.json()
    assert (answered["action"], answered["operator"]) == ("export", "sam")
    assert answered["result"] == own  # what the person sees of themselves
    assert level.json()["result"]["level"] == "off" and now_off["level"] == "off"
    assert given.json()["result"]["consented"] is True
    assert [r.status_code for r in refused] == [400, 400, 400, 400, 400, 400, 413]
    assert erased.json()["result"]["deleted"]["state"] is True

    pseudonym = Engine(POLICY, MemoryStore(), secret=SECRET).pseudonym(ANA_ID)
    held = after_erasure(redis_server, pseudonym)
    assert pseudonym.encode() not in held and ANA_ID.encode() not in held
    requests = await requests_at(redis_url)
    assert [(r.action, r.value, r.operator) for r in requests] == [
        ("export", None, "sam"),
        ("set-level", "off", "sam"),
        ("give-consent", "health", "sam"),
        ("erase", None, "sam"),
    ]


async def test_the_admin_routes_answer_503_when_the_store_is_down(
    private_redis: RedisServer,
) -> None:
    app = admin_app(private_redis.url)
    private_redis.stop()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        for path in ("export", "erase", "level", "consents"):
            response = await http.post(
                f"/admin/people/{path}", json={"id": ANA_ID}, headers={"x-staff": "sam"}
            )
            assert response.status_code == 503, path


def test_throttle_person_says_what_it_did_in_words(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THROTTLE_SECRET", SECRET.decode())
    monkeypatch.setenv("USER", "sam")
    common = ["--id", ANA_ID, "--policy", str(POLICY_FILE), "--store", redis_url]

    def said(*argv: str) -> str:
        assert main(["person", *argv, *common]) == 0
        return capsys.readouterr().out

    assert said("level") == "level: standard (the policy's default)\nopt-out: none\n"
    assert said("level", "--set", "minimal") == "level: minimal (set)\n"
    assert said("level").startswith("level: minimal (chosen)\n")
    assert said("consents", "--give", "health").startswith("health: consented since 20")
    listed = said("consents")
    assert "health                              consented since" in listed
    assert "genetic                             not consented" in listed
    assert said("consents", "--withdraw", "health") == "health: not consented\n"
    exported = said("export")
    assert "level:      minimal (chosen 20" in exported and "recent decisions: 0" in exported
    assert said("erase").startswith("erased: their record and choices, with 0 recent")
    assert said("erase") == "nothing was held about this person\n"
    with pytest.raises(ValueError, match="not a data request"):
        DataRequest.unpack(b"\xc1")
