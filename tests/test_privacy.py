"""People in control, through the mounted privacy routes: their level, why they saw what they
saw, a copy of what is held about them, and erasure. On the memory store and a real Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.apps import storefront
from tests.helpers import SECRET, policy
from tests.redis_server import RedisServer
from tests.test_tcf import core, encode, publisher_tc
from throttle import Engine
from throttle.store import RedisStore, Store
from throttle.store.redis import TOMBSTONE_MS

ANA_ID = "ana.garcia@example.com"
BEN_ID = "ben.okafor@example.com"
ANA = {"x-test-user": ANA_ID}
BEN = {"x-test-user": BEN_ID}

POLICY = policy(
    """
[[caps]]
name = "campaign-hourly"
per = "campaign"
limit = 2
window = "1h"

[creepiness]
threshold = 0.7
repetition = { weight = 0.0, window = "1h" }

[creepiness.signals]
"cart" = 0.05
"location.city" = 0.78
"health" = 0.95

[levels]
given = ["cart"]
minimal_threshold = 0.4
full_threshold = 0.85

[fallback]
k = 1
"""
)


@pytest.fixture
async def shop(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = storefront(policy=POLICY, store=store, secret=SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        yield http


def decision(response: httpx.Response) -> str:
    return response.headers["personalization-decision"]


async def offer(http: httpx.AsyncClient, who: dict[str, str], query: str = "") -> httpx.Response:
    return await http.get(f"/offer?{query}", headers=who)


async def choose(http: httpx.AsyncClient, who: dict[str, str], level: str) -> httpx.Response:
    return await http.put("/privacy/level", headers=who, json={"level": level})


async def test_a_person_starts_at_the_policys_level_and_can_change_it(
    shop: httpx.AsyncClient,
) -> None:
    before = await shop.get("/privacy/level", headers=ANA)
    assert before.status_code == 200
    assert before.headers["cache-control"] == "no-store"
    assert (before.json()["level"], before.json()["chosen"]) == ("standard", False)
    assert set(before.json()["levels"]) == {"off", "minimal", "standard", "full"}
    changed = await choose(shop, ANA, "minimal")
    assert changed.json()["level"] == "minimal"
    after = (await shop.get("/privacy/level", headers=ANA)).json()
    assert (after["level"], after["chosen"]) == ("minimal", True)


async def test_off_is_absolute_whatever_the_message_says(shop: httpx.AsyncClient) -> None:
    await choose(shop, ANA, "off")
    for query in ("", "transactional", "signal=cart", "transactional&signal=cart"):
        response = await offer(shop, ANA, query)
        assert decision(response).startswith('segment;reason=preference;rule="level.off"')
        assert ANA_ID.split(".")[0] not in response.text
    # Someone else is not affected by ana's choice.
    assert decision(await offer(shop, BEN)).startswith("personalized")


async def test_minimal_allows_only_data_the_person_gave(shop: httpx.AsyncClient) -> None:
    await choose(shop, ANA, "minimal")
    assert decision(await offer(shop, ANA, "signal=cart")).startswith("personalized")
    inferred = decision(await offer(shop, ANA, "signal=cart&inferred"))
    assert inferred.startswith('segment;reason=preference;rule="level.minimal"')
    observed = decision(await offer(shop, ANA, "signal=location.city"))
    assert observed.startswith('segment;reason=preference;rule="level.minimal"')


async def test_full_lifts_the_threshold_and_standard_keeps_it(shop: httpx.AsyncClient) -> None:
    # location.city scores 0.78: above the standard 0.7, below full's 0.85.
    assert decision(await offer(shop, BEN, "signal=location.city")).startswith(
        "segment;reason=creepiness"
    )
    await choose(shop, ANA, "full")
    assert decision(await offer(shop, ANA, "signal=location.city")).startswith("personalized")
    # Nothing lifts a gate: health is a special category, reported before any score (0.95).
    assert decision(await offer(shop, ANA, "signal=health")).startswith(
        'segment;reason=special-category;rule="special.health"'
    )


async def test_why_explains_recent_decisions_in_plain_words(shop: httpx.AsyncClient) -> None:
    for _ in range(3):
        await offer(shop, ANA, "signal=cart")
    response = await shop.get("/privacy/why", headers=ANA)
    assert response.status_code == 200
    decisions = response.json()["decisions"]
    assert [d["outcome"] for d in decisions] == ["segment", "personalized", "personalized"]
    newest = decisions[0]
    assert (newest["reason"], newest["rule"]) == ("frequency-cap", "campaign-hourly")
    assert "frequency-cap" not in newest["summary"]
    assert newest["summary"].startswith("You saw general content")
    factor = decisions[1]["factors"][0]
    assert factor["name"] == "signal:cart" and factor["contribution"] == 0.05
    assert "cart" in factor["words"]
    assert ANA_ID not in response.text and "ana" not in response.text.lower()


async def test_access_returns_everything_held_and_never_the_raw_id(
    shop: httpx.AsyncClient,
) -> None:
    await choose(shop, ANA, "full")
    await offer(shop, ANA, "signal=cart")
    await offer(shop, ANA, "signal=location.city")
    response = await shop.get("/privacy/data", headers=ANA)
    assert response.status_code == 200
    held = response.json()
    assert held["level"]["level"] == "full" and held["level"]["chosen_at"]
    assert set(held["deliveries"]) == {"campaign spring-sale"}
    assert len(held["deliveries"]["campaign spring-sale"]) == 2
    assert len(held["recent_decisions"]) == 2
    entries = held["audit_trail"]["entries"]
    assert [e["reason"] for e in entries] == ["allowed", "allowed"]
    assert all("person" not in entry for entry in entries)
    assert ANA_ID not in response.text


async def test_erasure_deletes_everything_and_says_what(
    shop: httpx.AsyncClient, store: Store
) -> None:
    await choose(shop, ANA, "off")
    for _ in range(2):
        await offer(shop, ANA)
    await offer(shop, BEN)
    erased = await shop.delete("/privacy/data", headers=ANA)
    assert erased.status_code == 200
    assert erased.json()["deleted"] == {"state": True, "recent_decisions": 2}
    assert "nothing links its entries to you" in erased.json()["note"]
    assert "back to the default, standard" in erased.json()["note"]
    after = (await shop.get("/privacy/data", headers=ANA)).json()
    assert after["deliveries"] == {} and after["recent_decisions"] == []
    assert after["audit_trail"]["entries"] == [] and after["level"]["chosen"] is False
    # Ben's data is untouched.
    ben = (await shop.get("/privacy/data", headers=BEN)).json()
    assert len(ben["audit_trail"]["entries"]) == 1


ROUTES = [
    ("GET", "/privacy/level"),
    ("PUT", "/privacy/level"),
    ("GET", "/privacy/why"),
    ("GET", "/privacy/data"),
    ("DELETE", "/privacy/data"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_an_identity_every_route_answers_401(
    shop: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await shop.request(method, path, json={"level": "off"})
    assert response.status_code == 401
    assert response.json() == {"error": "sign in to see or change what is held about you"}


async def test_nobody_reaches_another_persons_data_any_way_the_api_allows(
    shop: httpx.AsyncClient, store: Store
) -> None:
    await choose(shop, ANA, "full")
    await offer(shop, ANA, "signal=cart")
    pseudonym = Engine(POLICY, store, secret=SECRET).pseudonym(ANA_ID)
    attempts = [
        ("GET", f"/privacy/data?person={ANA_ID}", {}),
        ("GET", f"/privacy/data?pseudonym={pseudonym}", {}),
        ("GET", f"/privacy/why?user={ANA_ID}", {}),
        ("GET", "/privacy/data", {"x-person": ANA_ID, "x-user-id": ANA_ID}),
    ]
    for method, path, extra in attempts:
        response = await shop.request(method, path, headers={**BEN, **extra})
        assert response.status_code == 200
        assert "signal:cart" not in response.text and pseudonym not in response.text
    for path in (f"/privacy/data/{ANA_ID}", f"/privacy/data/{pseudonym}", f"/privacy/{ANA_ID}"):
        assert (await shop.get(path, headers=BEN)).status_code == 404
        assert (await shop.delete(path, headers=BEN)).status_code in (404, 405)
    smuggled = await shop.put(
        "/privacy/level", headers=BEN, json={"level": "off", "person": ANA_ID}
    )
    assert smuggled.status_code == 400
    # Ben erasing erases Ben; ana's level and data stay hers.
    await shop.request("DELETE", f"/privacy/data?person={ANA_ID}", headers=BEN)
    ana = (await shop.get("/privacy/data", headers=ANA)).json()
    assert ana["level"]["level"] == "full" and len(ana["audit_trail"]["entries"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"off", 400, 'send JSON such as {"level": "off"}'),
        (b"\xff\xfe", 400, 'send JSON such as {"level": "off"}'),
        (b'["off"]', 400, 'send exactly one key, level, such as {"level": "off"}'),
        (b"{}", 400, 'send exactly one key, level, such as {"level": "off"}'),
        (b'{"level": "none"}', 400, "level must be one of off, minimal, standard, full"),
        (b'{"level": 0}', 400, "level must be one of off, minimal, standard, full"),
        (b'{"level": "off", "pad": "' + b"x" * 2000 + b'"}', 413, None),
    ],
)
async def test_a_bad_level_change_is_refused_in_words_and_changes_nothing(
    shop: httpx.AsyncClient, body: bytes, status: int, error: str | None
) -> None:
    response = await shop.put("/privacy/level", headers=ANA, content=body)
    assert response.status_code == status
    if error is not None:
        assert response.json() == {"error": error}
    assert (await shop.get("/privacy/level", headers=ANA)).json()["chosen"] is False


async def test_the_routes_need_the_middleware_in_front() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from throttle import privacy_routes

    bare = Starlette(routes=[Mount("/privacy", routes=privacy_routes())])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bare), base_url="http://shop.test"
    ) as http:
        response = await http.get("/privacy/level", headers=ANA)
    assert response.status_code == 500
    assert "ThrottleMiddleware" in response.json()["error"]


TCF_PERSONALIZE = encode(core(purposes=(1, 3, 4, 5, 6)))
TCF_NO_PERSONALIZATION = encode(core(purposes=(1,)))
TCF_PUBLISHER_SAYS_NO = encode(core(purposes=(1, 5, 6)), publisher_tc(consents=(1,)))


@pytest.mark.parametrize(
    ("cookie", "query", "expected"),
    [
        (None, "", "personalized"),
        (TCF_PERSONALIZE, "", "personalized"),
        (TCF_PERSONALIZE, "advertising", "personalized"),
        (TCF_NO_PERSONALIZATION, "", 'segment;reason=consent;rule="consent.tcf"'),
        (TCF_NO_PERSONALIZATION, "advertising", 'segment;reason=consent;rule="consent.tcf"'),
        (encode(core(purposes=(5, 6))), "advertising", 'segment;reason=consent;rule="consent.tcf"'),
        (TCF_PUBLISHER_SAYS_NO, "", 'segment;reason=consent;rule="consent.tcf"'),
        ("not-a-consent-string!", "", 'segment;reason=consent;rule="consent.tcf"'),
    ],
)
async def test_a_tcf_consent_string_decides_what_may_be_personalized(
    shop: httpx.AsyncClient, cookie: str | None, query: str, expected: str
) -> None:
    headers = {**ANA, "cookie": f"session=1; euconsent-v2={cookie}"} if cookie else ANA
    response = await shop.get(f"/offer?{query}", headers=headers)
    assert decision(response).startswith(expected)


async def test_an_unreadable_consent_string_is_logged_once_per_burst(
    shop: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {**ANA, "cookie": "euconsent-v2=%%%"}
    with caplog.at_level(logging.WARNING, logger="throttle"):
        for _ in range(3):
            await shop.get("/offer", headers=headers)
    assert caplog.text.count("unreadable euconsent-v2 cookie") == 1


async def test_a_policy_may_require_a_consent_string(store: Store) -> None:
    required = policy("[consent.tcf]\nrequired = true\n[fallback]\nk = 1\n")
    app = storefront(policy=required, store=store, secret=SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        without = await http.get("/offer", headers=ANA)
        with_consent = await http.get(
            "/offer", headers={**ANA, "cookie": f"euconsent-v2={TCF_PERSONALIZE}"}
        )
    assert decision(without).startswith('segment;reason=consent;rule="consent.tcf"')
    assert decision(with_consent).startswith("personalized")


# Real Redis only: what the bytes in Redis hold, and what happens when Redis is gone.


def all_bytes(server: RedisServer, *, leaving_out: bytes = b"") -> bytes:
    """Every key name and value in Redis, raw: state, lists, the audit stream (all but the key
    `leaving_out`)."""
    client = server.client()
    try:
        chunks = []
        for key in client.keys("*"):
            if key == leaving_out:
                continue
            chunks.append(key)
            dumped: Any = client.dump(key)
            chunks.append(dumped or b"")
            if client.type(key) == b"stream":
                for entry_id, fields in client.xrange(key):
                    chunks.append(entry_id)
                    chunks.extend(b"%s=%s" % item for item in fields.items())
        return b"\n".join(chunks)
    finally:
        client.close()


def after_erasure(server: RedisServer, pseudonym: str) -> bytes:
    """Everything in Redis (`all_bytes`) but the tombstone the erasure of `pseudonym` left,
    which holds only the erasure's time and goes by itself (tests/test_erasure.py)."""
    tombstone = f"throttle:{{{pseudonym}}}:erased".encode()
    client = server.client()
    try:
        erased_at: Any = client.get(tombstone)
        assert erased_at is not None and erased_at.isdigit()
        assert 0 < client.pttl(tombstone) <= TOMBSTONE_MS
    finally:
        client.close()
    return all_bytes(server, leaving_out=tombstone)


@pytest.fixture
async def redis_shop(redis_server: RedisServer, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    store = RedisStore(redis_url)
    app = storefront(policy=POLICY, store=store, secret=SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        yield http
    await store.aclose()


async def test_redis_never_holds_a_raw_id_in_state_explanations_or_audit(
    redis_shop: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    await choose(redis_shop, ANA, "minimal")
    for query in ("signal=cart", "signal=cart&inferred", "transactional", "marker=;;"):
        await offer(redis_shop, ANA, query)
    await redis_shop.get("/privacy/why", headers=ANA)
    await redis_shop.get("/privacy/data", headers=ANA)
    held = all_bytes(redis_server)
    # The trail exists, and so do ana's recent decisions, in her record.
    assert b"throttle:audit" in held and b"level.minimal" in held
    for needle in (ANA_ID.encode(), b"ana.garcia", ANA_ID.encode("utf-16-le")):
        assert needle not in held


async def test_after_erasure_redis_holds_nothing_of_the_person(
    redis_shop: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    pseudonym = Engine(POLICY, RedisStore(redis_server.url), secret=SECRET).pseudonym(ANA_ID)
    await choose(redis_shop, ANA, "full")
    for _ in range(3):
        await offer(redis_shop, ANA, "signal=cart")
    await offer(redis_shop, BEN, "signal=cart")
    await redis_shop.get("/privacy/level", headers=ANA)  # lets the last audit entries out
    assert pseudonym.encode() in all_bytes(redis_server)
    erased = await redis_shop.delete("/privacy/data", headers=ANA)
    assert erased.json()["deleted"]["state"] is True
    held = after_erasure(redis_server, pseudonym)
    assert pseudonym.encode() not in held
    assert ANA_ID.encode() not in held
    assert b"spring-sale" in held  # ben's entries and state stay


async def test_the_privacy_routes_answer_503_when_the_store_is_down(
    private_redis: RedisServer,
) -> None:
    store = RedisStore(private_redis.url)
    app = storefront(policy=POLICY, store=store, secret=SECRET)
    private_redis.stop()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        for method, path in ROUTES:
            response = await http.request(method, path, headers=ANA, json={"level": "off"})
            assert response.status_code == 503, (method, path)
            assert response.json() == {"error": "your data cannot be reached right now; try again"}
    await store.aclose()
