"""The middleware as an app sees it: marked responses in, decided responses out."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from http_sfv.item import Item
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.apps import PERSONAL_HEADERS, ScopeSpy, bare, storefront
from tests.helpers import SECRET, policy
from throttle import (
    DECISION_SCOPE_KEY,
    ConfigurationError,
    Decision,
    FallbackRequest,
    Reason,
    SegmentContent,
    ThrottleMiddleware,
    authenticated_user,
    personalization,
)
from throttle.store import MemoryStore, Store

CAP_OF_2 = policy(
    """
[[caps]]
name = "campaign-daily"
per = "campaign"
limit = 2
window = "24h"

[creepiness]
repetition = { weight = 0.0, window = "1h" }

[creepiness.signals]
"health" = 0.9
"cart" = 0.05

[fallback]
k = 1
"""
)


class CountingStore(MemoryStore):
    """The memory store, counting how often the middleware reaches for it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def deliver(self, delivery: Any) -> Any:
        self.calls += 1
        return await super().deliver(delivery)

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        self.calls += 1
        return await super().segment_sizes(segments, window_ms=window_ms)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


def decision_of(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The Personalization-Decision header, read as the RFC 8941 item it must be."""
    item = Item()
    item.parse(response.headers["personalization-decision"].encode())
    return str(item.value), dict(item.params)


@pytest.fixture
async def shop(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client(storefront(policy=CAP_OF_2, store=store, secret=SECRET)) as http:
        yield http


ANA = {"x-test-user": "ana"}


async def test_unmarked_responses_pass_through_byte_for_byte_without_a_store_call() -> None:
    store = CountingStore()
    async with client(bare()) as without, client(storefront(policy=CAP_OF_2, store=store)) as with_:
        expected = await without.get("/plain", headers=ANA)
        got = await with_.get("/plain", headers=ANA)
    assert got.content == expected.content
    assert got.headers.raw == expected.headers.raw
    assert store.calls == 0


async def test_personalized_response_keeps_its_body_and_loses_the_marker(
    shop: httpx.AsyncClient,
) -> None:
    response = await shop.get("/offer", headers=ANA)
    assert response.status_code == 200
    assert response.json()["offer"].startswith("running shoes for ana")
    assert "personalization" not in response.headers
    assert response.headers["x-recommendation-id"] == "ana-8812"
    assert response.headers["cache-control"] == "private"
    outcome, params = decision_of(response)
    assert outcome == "personalized"
    assert params["reason"] == "allowed"
    assert params["policy"].startswith("test@")


async def test_the_apps_own_cache_control_is_kept(shop: httpx.AsyncClient) -> None:
    response = await shop.get("/cached-offer", headers=ANA)
    assert response.headers["cache-control"] == "no-store"


async def test_segment_content_replaces_the_body_and_leaks_no_personal_header(
    shop: httpx.AsyncClient,
) -> None:
    for _ in range(2):
        await shop.get("/offer", headers=ANA)
    response = await shop.get("/offer", headers=ANA)
    outcome, params = decision_of(response)
    assert (outcome, params["reason"], params["rule"]) == (
        "segment", "frequency-cap", "campaign-daily",
    )  # fmt: skip
    assert b"ana" not in response.content
    for name in PERSONAL_HEADERS:
        if name != "etag":
            assert name not in response.headers, name
    assert response.headers["etag"] != PERSONAL_HEADERS["etag"]
    assert response.headers["etag"] == (
        '"' + hashlib.blake2b(response.content, digest_size=12).hexdigest() + '"'
    )
    assert int(response.headers["content-length"]) == len(response.content)
    # The decision header speaks of one person, so no shared cache may keep the response.
    assert response.headers["cache-control"] == "private"


async def test_segment_content_comes_from_the_apps_fallback_provider() -> None:
    asked: list[FallbackRequest] = []

    async def best_sellers(request: FallbackRequest) -> SegmentContent:
        asked.append(request)
        return SegmentContent.json({"best_sellers": ["socks"], "for": request.segment})

    app = storefront(policy=CAP_OF_2, fallback=best_sellers)
    async with client(app) as shop:
        for _ in range(3):
            response = await shop.get("/offer?segment=eu/de/berlin", headers=ANA)
    assert response.json() == {"best_sellers": ["socks"], "for": "eu/de/berlin"}
    assert response.headers["content-type"] == "application/json"
    (request,) = asked
    assert (request.campaign, request.channel, request.media_type) == (
        "spring-sale", "web", "application/json",
    )  # fmt: skip
    assert request.decision.reason == "frequency-cap"


@pytest.mark.parametrize("provider_result", ["raises", "none"])
async def test_policy_content_stands_in_when_the_provider_has_none(provider_result: str) -> None:
    async def provider(request: FallbackRequest) -> SegmentContent | None:
        if provider_result == "raises":
            raise RuntimeError("catalogue down")
        return None

    with_content = policy(
        '[fallback.content."spring-sale"]\nmedia_type = "application/json"\n'
        'body = \'{"offer": "spring sale: 20% off everything"}\'\n'
    )
    async with client(storefront(policy=with_content, fallback=provider)) as shop:
        response = await shop.get("/offer")  # anonymous: segment content
    assert response.json() == {"offer": "spring sale: 20% off everything"}


@pytest.mark.parametrize(
    ("path", "media_type", "empty_body"),
    [
        ("/offer", "application/json", b"{}"),
        ("/page", "text/html; charset=utf-8", b"<!DOCTYPE html>\n<html></html>\n"),
    ],
)
async def test_without_any_content_segment_is_an_empty_document_of_the_same_type(
    path: str, media_type: str, empty_body: bytes
) -> None:
    async with client(storefront(policy=policy())) as shop:
        response = await shop.get(path)
    assert response.content == empty_body
    assert response.headers["content-type"] == media_type


async def test_streaming_responses_are_decided_too(shop: httpx.AsyncClient) -> None:
    personalized = await shop.get("/stream", headers=ANA)
    assert personalized.json() == {"offer": "shoes for ana"}
    anonymous = await shop.get("/stream")
    assert anonymous.content == b"{}"
    assert decision_of(anonymous)[1]["reason"] == "anonymous"


async def test_head_requests_get_segment_headers_and_no_body(shop: httpx.AsyncClient) -> None:
    response = await shop.head("/offer")
    assert response.content == b""
    assert response.headers["content-length"] == "2"
    assert decision_of(response)[0] == "segment"


async def test_bodiless_statuses_stay_bodiless(shop: httpx.AsyncClient) -> None:
    response = await shop.get("/no-content")
    assert response.status_code == 204
    assert response.content == b""
    assert decision_of(response)[0] == "segment"


@pytest.mark.parametrize(
    "marker",
    [
        "",
        "campaign=",
        'signals=("cart")',
        'campaign="x", event-age="soon"',
        'campaign="x", inferred=1',
        'campaign="x", segment="eu//de"',
        'campaign="x",',
        "%%%",
    ],
)
async def test_a_malformed_marker_gets_segment_content(
    shop: httpx.AsyncClient, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="throttle"):
        response = await shop.get("/offer", params={"marker": marker}, headers=ANA)
    assert response.status_code == 200
    assert b"ana" not in response.content
    outcome, params = decision_of(response)
    assert (outcome, params["reason"], params["segment"]) == ("segment", "invalid-marker", "*")
    assert "invalid Personalization header" in caplog.text


async def test_malformed_markers_are_logged_once_per_burst(
    shop: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="throttle"):
        for _ in range(20):
            await shop.get("/offer", params={"marker": "campaign="}, headers=ANA)
    assert caplog.text.count("invalid Personalization header") == 1


@pytest.mark.parametrize(
    ("gpc_headers", "honored"),
    [
        ([("sec-gpc", "1")], True),
        ([("sec-gpc", " 1 ")], True),
        ([("sec-gpc", "0"), ("sec-gpc", "1")], True),
        ([("sec-gpc", "0")], False),
        ([("sec-gpc", "yes")], False),
        ([("sec-gpc", "?1")], False),
        ([("sec-gpc", "")], False),
        ([], False),
    ],
)
async def test_sec_gpc_is_honored_only_when_exactly_1(
    shop: httpx.AsyncClient, gpc_headers: list[tuple[str, str]], honored: bool
) -> None:
    headers = [("x-test-user", "ana"), *gpc_headers]
    response = await shop.get("/offer?inferred=1", headers=headers)
    outcome, params = decision_of(response)
    if honored:
        assert (outcome, params["reason"], params["rule"]) == ("segment", "consent", "consent.gpc")
        assert b"ana" not in response.content
    else:
        assert outcome == "personalized"


async def test_people_who_are_not_signed_in_get_segment_content(shop: httpx.AsyncClient) -> None:
    response = await shop.get("/offer")
    assert decision_of(response)[1]["reason"] == "anonymous"
    assert b"ana" not in response.content


async def test_too_creepy_messages_get_segment_content_with_their_score(
    shop: httpx.AsyncClient,
) -> None:
    # Four signals the policy does not weigh, 0.3 each: 1 - 0.7^4 = 0.76, above 0.7.
    response = await shop.get("/offer?signal=a&signal=b&signal=c&signal=d", headers=ANA)
    outcome, params = decision_of(response)
    assert (outcome, params["reason"], params["rule"]) == (
        "segment", "creepiness", "creepiness.threshold",
    )  # fmt: skip
    assert float(params["score"]) == pytest.approx(0.76)


async def test_a_special_category_is_reported_as_its_gate_before_any_score(
    shop: httpx.AsyncClient,
) -> None:
    # Health data scores 0.9, above the threshold, but the gate is what refused it: the person
    # is told it needs their consent, not that it was too creepy.
    response = await shop.get("/offer?signal=health", headers=ANA)
    outcome, params = decision_of(response)
    assert (outcome, params["reason"], params["rule"]) == (
        "segment", "special-category", "special.health",
    )  # fmt: skip
    assert float(params["score"]) == pytest.approx(0.9)


async def test_shadow_mode_delivers_the_personalized_body_and_says_what_enforce_would_do() -> None:
    shadow = policy(
        '[[caps]]\nname = "once"\nper = "user"\nlimit = 1\nwindow = "1h"\n', mode="shadow"
    )
    async with client(storefront(policy=shadow)) as shop:
        await shop.get("/offer", headers=ANA)
        response = await shop.get("/offer", headers=ANA)
    assert response.json()["offer"].startswith("running shoes for ana")
    outcome, params = decision_of(response)
    assert (outcome, params["reason"], params["shadow"]) == ("segment", "frequency-cap", True)


async def test_the_decision_travels_in_the_scope_for_outer_middleware() -> None:
    spy = ScopeSpy(storefront(policy=CAP_OF_2))
    async with client(spy) as shop:
        await shop.get("/offer", headers=ANA)
    assert spy.last_scope is not None
    decision = spy.last_scope[DECISION_SCOPE_KEY]
    assert isinstance(decision, Decision)
    assert (decision.outcome, decision.campaign) == ("personalized", "spring-sale")


async def test_the_policy_can_turn_the_decision_header_off() -> None:
    quiet = policy("[decisions]\nheader = false\n")
    async with client(storefront(policy=quiet)) as shop:
        response = await shop.get("/offer", headers=ANA)
    assert "personalization-decision" not in response.headers
    assert "personalization" not in response.headers


async def test_a_failing_identify_means_nobody_never_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(scope: Any) -> str:
        raise KeyError("session")

    async with client(storefront(policy=CAP_OF_2, identify=broken)) as shop:
        response = await shop.get("/offer", headers=ANA)
    assert response.status_code == 200
    assert decision_of(response)[1]["reason"] == "anonymous"
    assert "identify() failed" in caplog.text


@pytest.mark.parametrize(("identity", "personalized"), [(42, True), ("", False), (3.5, False)])
async def test_identify_may_return_an_int_id_and_nothing_else_odd(
    identity: object, personalized: bool
) -> None:
    app = storefront(policy=CAP_OF_2, identify=lambda scope: identity)
    async with client(app) as shop:
        response = await shop.get("/offer")
    assert (decision_of(response)[0] == "personalized") is personalized


async def test_a_failing_engine_is_a_segment_response_never_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenStore(MemoryStore):
        async def deliver(self, delivery: Any) -> Any:
            return "not an outcome"

    async with client(storefront(policy=CAP_OF_2, store=BrokenStore())) as shop:
        response = await shop.get("/offer", headers=ANA)
    assert response.status_code == 200
    assert decision_of(response)[1]["reason"] == "internal-error"
    assert b"ana" not in response.content
    assert "deciding failed" in caplog.text


async def test_works_under_fastapi() -> None:
    app = FastAPI()
    app.add_middleware(
        ThrottleMiddleware, policy=CAP_OF_2, identify=lambda scope: "ana", secret=SECRET
    )

    @app.get("/offer")
    async def offer() -> JSONResponse:
        return JSONResponse({"offer": "for ana"}, headers=personalization("spring-sale"))

    async with client(app) as shop:
        bodies = [(await shop.get("/offer")).json() for _ in range(3)]
    assert bodies[:2] == [{"offer": "for ana"}] * 2
    assert bodies[2] == {}


@pytest.mark.parametrize("reason", list(Reason))
@pytest.mark.parametrize("shadow", [False, True])
def test_decision_header_is_a_valid_structured_field_for_every_reason(
    reason: Reason, shadow: bool
) -> None:
    middleware = ThrottleMiddleware(Starlette(), policy=CAP_OF_2)
    outcome = "personalized" if reason in (Reason.ALLOWED, Reason.TRANSACTIONAL) else "segment"
    decision = Decision(
        outcome=outcome,
        reason=reason,
        rule="per-campaign.daily_2" if outcome == "segment" else None,
        score=0.5 if reason is not Reason.INVALID_MARKER else None,
        factors=(),
        campaign="spring-sale",
        channel="web",
        segment="eu/de-north/berlin_1" if outcome == "segment" else None,
        shadow=shadow,
        policy="default",
        policy_version="0123456789ab",
    )
    item = Item()
    item.parse(middleware.decision_header(decision))
    assert item.value == outcome
    assert item.params["reason"] == reason.value
    assert item.params.get("shadow", False) is shadow
    if decision.score is not None:
        assert float(item.params["score"]) == decision.score


async def test_unknown_signals_are_scored_at_the_default_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy_app = ScopeSpy(storefront(policy=CAP_OF_2))
    async with client(spy_app) as http:
        with caplog.at_level(logging.WARNING, logger="throttle"):
            for _ in range(3):
                await http.get("/offer?signal=shoe_size&campaign=other", headers=ANA)
    assert spy_app.last_scope is not None
    decision = spy_app.last_scope[DECISION_SCOPE_KEY]
    assert decision.unknown_signals == ("shoe_size",)
    assert decision.score == pytest.approx(0.3)
    assert caplog.text.count("signal 'shoe_size' has no weight in policy test") == 1


async def test_a_304_on_a_segment_decision_becomes_the_segment_content(
    shop: httpx.AsyncClient,
) -> None:
    # Otherwise the browser would show the personalized copy it already holds.
    response = await shop.get("/not-modified", headers={"if-none-match": '"personal-etag"'})
    assert decision_of(response)[0] == "segment"
    assert response.status_code == 200
    # A 304 names no media type, so the stand-in is an empty body with a validator of its own.
    assert response.content == b""
    assert response.headers["etag"] != '"personal-etag"'


async def test_personalized_content_never_stays_in_a_shared_cache(shop: httpx.AsyncClient) -> None:
    response = await shop.get("/public-offer", headers=ANA)
    assert decision_of(response)[0] == "personalized"
    assert response.headers["cache-control"] == "private, max-age=600"


async def test_segment_content_keeps_the_apps_caching_when_no_decision_is_shown() -> None:
    quiet = policy("[decisions]\nheader = false\n")
    async with client(storefront(policy=quiet)) as shop:
        response = await shop.get("/public-offer")  # anonymous: segment content
    assert response.headers["cache-control"] == "public, max-age=600, s-maxage=600"


async def test_headers_given_as_a_one_shot_iterable_survive(shop: httpx.AsyncClient) -> None:
    unmarked = await shop.get("/generated-headers", headers=ANA)
    assert unmarked.headers["x-app"] == "1"
    marked = await shop.get("/generated-headers?marked=1", headers=ANA)
    assert decision_of(marked)[0] == "personalized"
    assert marked.headers["x-app"] == "1"


@pytest.mark.parametrize(
    "bad_value",
    [b"raw bytes", SegmentContent("not bytes", "text/plain"), SegmentContent(b"x", "text/plé")],  # type: ignore[arg-type]
    ids=["bytes", "str-body", "non-ascii-type"],
)
async def test_a_bad_value_from_the_provider_falls_back_to_the_policys_content(
    bad_value: object, caplog: pytest.LogCaptureFixture
) -> None:
    async def provider(request: FallbackRequest) -> Any:
        return bad_value

    with_content = policy('[fallback.content."*"]\nbody = \'{"offer": "generic"}\'\n')
    async with client(storefront(policy=with_content, fallback=provider)) as shop:
        response = await shop.get("/offer")
    assert response.status_code == 200
    assert response.json() == {"offer": "generic"}
    assert "not a SegmentContent" in caplog.text


async def test_shadow_mode_still_gives_people_not_signed_in_segment_content() -> None:
    shadow = policy(
        '[[caps]]\nname = "one"\nper = "user"\nlimit = 1\nwindow = "1h"\n', mode="shadow"
    )
    async with client(storefront(policy=shadow)) as shop:
        response = await shop.get("/offer")
    outcome, params = decision_of(response)
    assert (outcome, params["reason"]) == ("segment", "anonymous")
    assert "shadow" not in params
    assert b"ana" not in response.content


def test_the_default_identify_accepts_int_ids() -> None:
    class NumberedUser:
        is_authenticated = True
        identity = 42

    assert authenticated_user({"user": NumberedUser()}) == "42"
    assert authenticated_user({}) is None


QUIET_NIGHTS = policy('[quiet_hours]\nstart = "21:00"\nend = "08:00"\n')
# 2026-11-24 22:30 UTC: 23:30 in Berlin, 17:30 in New York.
LATE_IN_BERLIN = 1_795_559_400.0


async def test_the_persons_time_zone_comes_from_the_time_zone_header() -> None:
    app = storefront(policy=QUIET_NIGHTS, clock=lambda: LATE_IN_BERLIN)
    async with client(app) as shop:
        berlin = await shop.get("/offer", headers={**ANA, "time-zone": "Europe/Berlin"})
        new_york = await shop.get("/offer", headers={**ANA, "time-zone": "America/New_York"})
        unknown = await shop.get("/offer", headers={**ANA, "time-zone": "Nowhere/Atlantis"})
    assert decision_of(berlin)[1]["reason"] == "quiet-hours"
    assert decision_of(new_york)[0] == "personalized"
    # An unknown zone counts as the policy's (UTC), where 22:30 is quiet too.
    assert decision_of(unknown)[1]["reason"] == "quiet-hours"


async def test_an_apps_time_zone_resolver_is_used_and_a_failing_one_is_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def from_profile(scope: Any) -> str:
        return "Europe/Berlin"

    def broken(scope: Any) -> str:
        raise LookupError("no profile")

    async with client(
        storefront(policy=QUIET_NIGHTS, clock=lambda: LATE_IN_BERLIN, time_zone=from_profile)
    ) as shop:
        assert decision_of(await shop.get("/offer", headers=ANA))[1]["reason"] == "quiet-hours"
    async with client(
        storefront(policy=QUIET_NIGHTS, clock=lambda: LATE_IN_BERLIN + 9 * 3600, time_zone=broken)
    ) as shop:
        # 07:30 UTC next morning: quiet in the policy's zone (UTC), whatever the resolver meant.
        response = await shop.get("/offer", headers=ANA)
    assert response.status_code == 200
    assert decision_of(response)[1]["reason"] == "quiet-hours"
    assert "time_zone() failed" in caplog.text


async def test_a_shadow_cap_delivers_and_names_itself_in_the_decision_header() -> None:
    watched = policy(
        '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
        '[[caps]]\nname = "hourly-2"\nper = "user"\nlimit = 2\nwindow = "1h"\nshadow = true\n'
        "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
    )
    async with client(storefront(policy=watched)) as shop:
        responses = [await shop.get("/offer", headers=ANA) for _ in range(4)]
    third, fourth = responses[2], responses[3]
    assert third.json()["offer"].startswith("running shoes for ana")
    outcome, params = decision_of(third)
    assert (outcome, params["rule"], params["shadow"]) == ("segment", "hourly-2", True)
    # The third was delivered, so the enforced cap of 3 is full now.
    assert decision_of(fourth)[1]["rule"] == "hourly"
    assert "shadow" not in decision_of(fourth)[1]
    assert "ana" not in fourth.text


class UnencodableId(str):
    """A str subclass whose methods fail: the engine must never call them."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        raise UnicodeError("not today")

    def __hash__(self) -> int:
        raise TypeError("unhashable id")


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no string for you")

    __repr__ = __str__


async def _late_id(scope: Any) -> str:
    return "ana"


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param(10**5000, id="int-of-5001-digits"),
        pytest.param(-(10**1024), id="int-of-1025-digits"),
        pytest.param(True, id="bool"),
        pytest.param(b"ana", id="bytes"),
        pytest.param(Unprintable(), id="str-raises"),
        pytest.param("a" * 1025, id="str-of-1025-characters"),
        pytest.param("", id="empty"),
        pytest.param(3.5, id="float"),
    ],
)
@pytest.mark.parametrize(
    "marker", ['campaign="spring-sale"', "campaign="], ids=["valid", "invalid"]
)
async def test_an_id_of_any_type_or_size_counts_as_nobody_never_a_500(
    identity: object, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = storefront(policy=CAP_OF_2, identify=lambda scope: identity)
    with caplog.at_level(logging.WARNING, logger="throttle"):
        async with client(app) as shop:
            response = await shop.get("/offer", params={"marker": marker})
    assert response.status_code == 200
    assert b"ana" not in response.content
    expected = "anonymous" if marker == 'campaign="spring-sale"' else "invalid-marker"
    assert decision_of(response)[1]["reason"] == expected
    assert "counted as nobody" in caplog.text


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param(UnencodableId("ana"), id="str-subclass"),
        pytest.param("a" * 1024, id="str-of-1024-characters"),
        pytest.param(10**1023, id="int-of-1024-digits"),
    ],
)
async def test_an_id_within_the_limits_is_someone_whatever_its_class(identity: object) -> None:
    # A str subclass is used for its characters; its own methods are never called.
    app = storefront(policy=CAP_OF_2, identify=lambda scope: identity)
    async with client(app) as shop:
        for expected in ("personalized", "personalized", "segment"):  # a cap of 2 counts them
            response = await shop.get("/offer", params={"marker": 'campaign="spring-sale"'})
            assert decision_of(response)[0] == expected


def test_an_async_identify_stops_start_up() -> None:
    class AsyncIdentify:
        async def __call__(self, scope: Any) -> str:
            return "ana"

    for identify in (_late_id, functools.partial(_late_id), AsyncIdentify()):
        with pytest.raises(ConfigurationError, match="identify must be a plain function"):
            ThrottleMiddleware(bare(), policy=CAP_OF_2, identify=identify)


async def test_an_identify_returning_an_awaitable_counts_as_nobody_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not detectable at start-up; the coroutine is closed, so nothing warns it was never awaited.
    app = storefront(policy=CAP_OF_2, identify=lambda scope: _late_id(scope))
    with caplog.at_level(logging.WARNING, logger="throttle"):
        async with client(app) as shop:
            response = await shop.get("/offer")
    assert decision_of(response)[1]["reason"] == "anonymous"
    assert "returned an awaitable: identify must be a plain function" in caplog.text


def bodiless(status: int) -> ASGIApp:
    """An app answering `status` with a marked response and, as it must, no body."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"personalization", b'campaign="spring-sale"'),
            (b"etag", b'"personal-etag"'),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return app


@pytest.mark.parametrize("status", [204, 205, 304])
@pytest.mark.parametrize("who", ["ana", None])
async def test_204_205_and_304_carry_no_body_whatever_the_decision(
    status: int, who: str | None
) -> None:
    content = SegmentContent(b'{"for": "everyone"}', "application/json")

    async def provider(request: FallbackRequest) -> SegmentContent:
        return content

    app = ThrottleMiddleware(
        bodiless(status),
        policy=CAP_OF_2,
        identify=lambda scope: who,
        fallback=provider,
        reload_interval=None,
    )
    async with client(app) as shop:
        response = await shop.get("/")
    outcome = decision_of(response)[0]
    assert outcome == ("personalized" if who else "segment")
    if status == 304 and outcome == "segment":
        # A browser would show the personalized copy it holds: the segment content goes out.
        assert (response.status_code, response.content) == (200, content.body)
        return
    assert response.status_code == status
    assert response.content == b""
    assert "content-type" not in response.headers
    if outcome == "segment":
        # A 205 says its content is empty; a 204 never carries a length.
        assert response.headers.get("content-length") == ("0" if status == 205 else None)
