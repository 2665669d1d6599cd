"""Where a score is not enough: special categories, sticky opt-outs, the category band, the
privacy calculus and automated decisions. Through the middleware, on memory and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.apps import storefront
from tests.helpers import SECRET, policy
from tests.redis_server import RedisServer
from throttle import FallbackRequest, SegmentContent
from throttle.store import RedisStore, Store

ANA = {"x-test-user": "ana"}
BEN = {"x-test-user": "ben"}

POLICY = policy(
    """
[creepiness]
threshold = 0.7
repetition = { weight = 0.0, window = "1h" }
category_band = { low = 0.4, high = 0.6 }

[creepiness.signals]
"cart" = 0.05
"browsing_history" = 0.2
"health" = 0.3
"pregnancy" = 0.2
"household.children" = 0.5

[calculus]
signed_in = 0.2
declared = 0.3
minimal = 2.0
standard = 1.0
full = 0.5

[fallback]
k = 1
"""
)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


@pytest.fixture
async def shop(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client(storefront(policy=POLICY, store=store, secret=SECRET)) as http:
        yield http


async def decided(http: httpx.AsyncClient, query: str, who: dict[str, str] = ANA) -> str:
    response = await http.get(f"/offer?{query}", headers=who)
    assert response.status_code == 200
    return response.headers["personalization-decision"]


SPECIAL = 'segment;reason=special-category;rule="special.health"'


async def test_a_special_category_is_refused_until_explicit_consent(
    shop: httpx.AsyncClient,
) -> None:
    assert (await decided(shop, "signal=health")).startswith(SPECIAL)
    given = await shop.put("/privacy/consents/health", headers=ANA)
    assert given.status_code == 200 and given.json()["consented"] is True
    assert given.json()["since"]
    assert (await decided(shop, "signal=health")).startswith("personalized")
    # Consent is per person and per category.
    assert (await decided(shop, "signal=health", BEN)).startswith(SPECIAL)
    assert (await decided(shop, "signal=citizenship")).startswith(
        'segment;reason=special-category;rule="special.citizenship"'
    )


async def test_an_inferred_special_category_counts_as_one(shop: httpx.AsyncClient) -> None:
    inferred = await decided(shop, "signal=pregnancy&inferred")
    assert inferred.startswith(SPECIAL)
    await shop.put("/privacy/consents/health", headers=ANA)
    assert (await decided(shop, "signal=pregnancy&inferred")).startswith("personalized")


async def test_a_withdrawn_consent_refuses_again(shop: httpx.AsyncClient) -> None:
    await shop.put("/privacy/consents/health", headers=ANA)
    assert (await decided(shop, "signal=health")).startswith("personalized")
    withdrawn = await shop.delete("/privacy/consents/health", headers=ANA)
    assert withdrawn.json() == {"category": "health", "consented": False}
    assert (await decided(shop, "signal=health")).startswith(SPECIAL)


async def test_consents_are_listed_with_their_legal_source_exported_and_erased(
    shop: httpx.AsyncClient,
) -> None:
    await shop.put("/privacy/consents/health", headers=ANA)
    listed = (await shop.get("/privacy/consents", headers=ANA)).json()["categories"]
    assert listed["health"]["consented"] is True
    assert "GDPR Art. 9(1)" in listed["health"]["source"]
    assert listed["precise_geolocation"]["consented"] is False
    assert "1798.140" in listed["precise_geolocation"]["source"]
    exported = (await shop.get("/privacy/data", headers=ANA)).json()
    assert set(exported["special_category_consents"]) == {"health"}
    await shop.delete("/privacy/data", headers=ANA)
    assert (await shop.get("/privacy/consents", headers=ANA)).json()["categories"]["health"][
        "consented"
    ] is False
    assert (await decided(shop, "signal=health")).startswith(SPECIAL)


async def test_an_unknown_category_is_404_and_nobody_signed_in_is_401(
    shop: httpx.AsyncClient,
) -> None:
    unknown = await shop.put("/privacy/consents/astrology", headers=ANA)
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "'astrology' is not a special category of this site's policy"
    }
    assert (await shop.put("/privacy/consents/health")).status_code == 401


async def test_people_not_signed_in_never_get_special_categories(store: Store) -> None:
    lenient = policy('[consent]\nanonymous = "personalize"\n[creepiness.signals]\n"health" = 0.1\n')
    async with client(storefront(policy=lenient, store=store, secret=SECRET)) as http:
        assert (await decided(http, "signal=health", {})).startswith(SPECIAL)
        assert (await decided(http, "signal=cart", {})).startswith("personalized")


async def test_a_known_persons_gpc_opt_out_sticks_until_they_lift_it(
    shop: httpx.AsyncClient,
) -> None:
    inferred = "signal=browsing_history&inferred"
    assert (await decided(shop, inferred)).startswith("personalized")
    opted = await shop.get(f"/offer?{inferred}", headers={**ANA, "sec-gpc": "1"})
    assert opted.headers["personalization-decision"].startswith(
        'segment;reason=consent;rule="consent.gpc"'
    )
    level = (await shop.get("/privacy/level", headers=ANA)).json()
    assert level["opt_out"]["message"] == "Opt-out preference signal honored"
    assert level["opt_out"]["since"]
    # Later requests without the header are not an opt-in.
    assert (await decided(shop, inferred)).startswith('segment;reason=consent;rule="consent.gpc"')
    assert (await decided(shop, "signal=browsing_history")).startswith("personalized")
    assert (await decided(shop, inferred, BEN)).startswith("personalized")
    lifted = await shop.delete("/privacy/opt-out", headers=ANA)
    assert lifted.json()["opt_out"]["honored"] is False
    assert (await decided(shop, inferred)).startswith("personalized")


@pytest.mark.parametrize(
    ("values", "opted_out"),
    [(["0", "1"], True), (["1", "1"], True), (["0"], False), (["true", " 1x"], False)],
)
async def test_several_gpc_headers_opt_out_when_any_is_exactly_1(
    shop: httpx.AsyncClient, values: list[str], opted_out: bool
) -> None:
    headers = [("x-test-user", "ana"), *(("sec-gpc", v) for v in values)]
    response = await shop.get("/offer?signal=cart&inferred", headers=headers)
    assert response.headers["personalization-decision"].startswith(
        "segment" if opted_out else "personalized"
    )


async def test_gpc_json_is_served_when_the_policy_says_so() -> None:
    serving = policy('[consent.gpc_json]\nlast_update = "2026-11-01"\n')
    async with client(storefront(policy=serving)) as http:
        response = await http.get("/.well-known/gpc.json")
        head = await http.head("/.well-known/gpc.json")
    assert response.status_code == 200
    assert response.json() == {"gpc": True, "lastUpdate": "2026-11-01"}
    assert response.headers["content-type"] == "application/json"
    assert head.status_code == 200 and head.content == b""
    async with client(storefront(policy=policy())) as http:
        assert (await http.get("/.well-known/gpc.json")).status_code == 404


async def test_a_score_in_the_middle_band_gets_category_content(store: Store) -> None:
    asked: list[FallbackRequest] = []

    async def provider(request: FallbackRequest) -> SegmentContent:
        asked.append(request)
        return SegmentContent.json({"about": request.category or "everything"})

    app = storefront(policy=POLICY, store=store, secret=SECRET, fallback=provider)
    async with client(app) as http:
        # household.children scores 0.5: inside (0.4, 0.6].
        banded = await http.get("/offer?signal=household.children&category=kids-shoes", headers=ANA)
        plain = await http.get("/offer?signal=cart&category=kids-shoes", headers=ANA)
    assert banded.headers["personalization-decision"].startswith(
        'category;reason=creepiness;rule="creepiness.category_band"'
    )
    assert banded.json() == {"about": "kids-shoes"}
    assert (asked[0].outcome, asked[0].category) == ("category", "kids-shoes")
    assert plain.headers["personalization-decision"].startswith("personalized")


async def test_the_privacy_calculus_weighs_relevance_against_creepiness(
    shop: httpx.AsyncClient,
) -> None:
    # browsing_history scores 0.2; a signed-in person has trust 0.2, lambda 1 (standard):
    # relevance x 1.2 must exceed 0.2.
    assert (await decided(shop, "signal=browsing_history&relevance=0.2")).startswith("personalized")
    assert (await decided(shop, "signal=browsing_history&relevance=0.15")).startswith(
        'segment;reason=calculus;rule="calculus"'
    )
    # cart scores 0.05. Standard, level not chosen: relevance x 1.2 > 0.05.
    assert (await decided(shop, "signal=cart&relevance=0.06")).startswith("personalized")
    # A person who chose minimal weighs creepiness twice (lambda 2) and is trusted more for
    # having said so (0.2 + 0.3): relevance x 1.5 > 0.1.
    await shop.put("/privacy/level", headers=BEN, json={"level": "minimal"})
    calculus = 'segment;reason=calculus;rule="calculus"'
    assert (await decided(shop, "signal=cart&relevance=0.06", BEN)).startswith(calculus)
    assert (await decided(shop, "signal=cart&relevance=0.07", BEN)).startswith("personalized")
    # Full: lambda 0.5, so relevance x 1.5 > 0.025, where standard needed x 1.2 > 0.05.
    assert (await decided(shop, "signal=cart&relevance=0.02")).startswith(calculus)
    await shop.put("/privacy/level", headers=ANA, json={"level": "full"})
    assert (await decided(shop, "signal=cart&relevance=0.02")).startswith("personalized")
    # Without a relevance, no calculus.
    assert (await decided(shop, "signal=cart")).startswith("personalized")


@pytest.mark.parametrize("decides", ["price", "credit", "eligibility"])
async def test_prices_credit_and_eligibility_are_never_personalized(
    store: Store, decides: str
) -> None:
    for mode in ("enforce", "shadow"):
        lenient = policy('[consent]\nanonymous = "personalize"\n', mode=mode)
        async with client(storefront(policy=lenient, store=store, secret=SECRET)) as http:
            for who in (ANA, {}):
                response = await http.get(f"/offer?decides={decides}&signal=cart", headers=who)
                assert response.headers["personalization-decision"].startswith(
                    f'segment;reason=automated-decision;rule="decides.{decides}"'
                )
                assert "ana" not in response.text


async def test_without_the_store_special_categories_stay_refused_even_failing_open(
    private_redis: RedisServer,
) -> None:
    open_on_error = policy(
        '[store]\non_error = "personalize"\ntimeout = "200ms"\nretry_after = "1ms"\n'
        '[creepiness.signals]\n"health" = 0.1\n"cart" = 0.1\n[fallback]\nk = 1\n'
    )
    store = RedisStore(private_redis.url)
    async with client(storefront(policy=open_on_error, store=store, secret=SECRET)) as http:
        assert (await decided(http, "signal=cart")).startswith("personalized;reason=allowed")
        private_redis.stop()
        health = await decided(http, "signal=health")
        cart = await decided(http, "signal=cart")
        stranger = await decided(http, "signal=cart", BEN)
    await store.aclose()
    assert health.startswith(SPECIAL)
    # Failing open only for someone seen lately without restricting choices.
    assert cart.startswith("personalized;reason=store-unavailable")
    assert stranger.startswith("segment;reason=store-unavailable")


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
async def test_a_store_failure_never_guesses_away_an_objection_or_an_opt_out(
    private_redis: RedisServer, mode: str
) -> None:
    open_on_error = policy(
        '[store]\non_error = "personalize"\ntimeout = "200ms"\nretry_after = "1ms"\n'
        '[creepiness.signals]\n"cart" = 0.1\n[fallback]\nk = 1\n',
        mode=mode,
    )
    store = RedisStore(private_redis.url)
    async with client(storefront(policy=open_on_error, store=store, secret=SECRET)) as http:
        await http.put("/privacy/level", headers=ANA, json={"level": "off"})
        await http.get("/offer?signal=cart", headers={**BEN, "sec-gpc": "1"})
        for who in (ANA, BEN):  # ana objects; ben's opt-out sticks without the header
            assert (await decided(http, "signal=cart&inferred", who)).startswith("segment")
        private_redis.stop()
        for who in (ANA, BEN):
            response = await http.get("/offer?signal=cart&inferred", headers=who)
            decision = response.headers["personalization-decision"]
            assert decision.startswith("segment;reason=store-unavailable"), decision
            assert ";shadow" not in decision
            assert "ana" not in response.text
    await store.aclose()


async def test_a_choice_lasts_as_long_as_the_person_keeps_coming_even_when_refused(
    store: Store,
) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    clock = ManualClock()
    throttle = engine('[levels]\nkeep = "2d"\n', store, clock)
    await throttle.set_level("ana", "off")
    for _ in range(4):  # a visit every 0.9 days, each refused
        clock.advance(0.9 * 86400)
        decision = await throttle.decide(marker(), person="ana")
        assert decision.rule == "level.off"
    assert await throttle.level_of("ana") == ("off", True)
    if isinstance(store, RedisStore):
        client = store._client
        key = store.choices_key(throttle.pseudonym("ana"))
        await client.pexpire(key, 1000)
        await throttle.decide(marker(), person="ana")
        assert await client.pttl(key) > 86_400_000  # refreshed to keep by the refusal itself


async def test_choices_do_not_keep_counters_alive(redis_url: str) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    store = RedisStore(redis_url)
    throttle = engine(
        '[[caps]]\nname = "h"\nper = "user"\nlimit = 3\nwindow = "1h"\n[audit]\nmax_age = "2d"\n',
        store,
        ManualClock(),
    )
    await throttle.decide(marker(), person="ana")
    await throttle.set_level("ana", "full")
    await throttle.decide(marker(), person="ana")
    pseudonym = throttle.pseudonym("ana")
    client = store._client
    # The trail's age (2 d: recent decisions are kept as long as it keeps them) or the longest
    # window, whichever is longer; not the 365 days of choices.
    assert 86_400_000 < await client.pttl(store.person_key(pseudonym)) <= 2 * 86_400_000
    assert await client.pttl(store.choices_key(pseudonym)) > 300 * 86_400_000
    await store.aclose()


async def test_a_shadow_cap_never_undoes_the_category_band(store: Store) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    throttle = engine(
        '[[caps]]\nname = "watch"\nper = "user"\nlimit = 1\nwindow = "1h"\nshadow = true\n'
        "[creepiness]\ncategory_band = { low = 0.4, high = 0.6 }\n"
        "repetition = { weight = 0.0, window = '1h' }\n"
        '[creepiness.signals]\n"household.children" = 0.5\n',
        store,
        ManualClock(),
    )
    for _ in range(3):
        decision = await throttle.decide(marker(signals=("household.children",)), person="ana")
        assert (decision.outcome, decision.delivers_personalized) == ("category", False)


async def test_a_signal_of_two_categories_needs_consent_to_both(store: Store) -> None:
    overlapping = policy(
        '[creepiness.signals]\n"pregnancy" = 0.1\n'
        '[special.health]\nsource = "GDPR Art. 9(1)"\n'
        'signals = ["health", "medication", "pregnancy"]\n'
        '[special.sex_life]\nsource = "GDPR Art. 9(1)"\nsignals = ["pregnancy"]\n'
    )
    async with client(storefront(policy=overlapping, store=store, secret=SECRET)) as http:
        await http.put("/privacy/consents/sex_life", headers=ANA)
        assert (await decided(http, "signal=pregnancy")).startswith(SPECIAL)
        await http.put("/privacy/consents/health", headers=ANA)
        assert (await decided(http, "signal=pregnancy")).startswith("personalized")


def test_an_override_adding_a_special_category_keeps_the_defaults(tmp_path: Any) -> None:
    from throttle.policy import DEFAULT_SPECIAL, load_policy

    base, extra = tmp_path / "base.toml", tmp_path / "extra.toml"
    base.write_text('[policy]\nname = "base"\n')
    extra.write_text('[special.loyalty_tier]\nsource = "house rule"\nsignals = ["tier"]\n')
    layered = load_policy(base, extra)
    assert set(layered.special) == {*DEFAULT_SPECIAL, "loyalty_tier"}


async def test_gpc_sensitive_covers_every_special_category_signal(store: Store) -> None:
    strict = policy('[consent]\ngpc = ["sensitive"]\n[creepiness.signals]\n"genetic" = 0.1\n')
    async with client(storefront(policy=strict, store=store, secret=SECRET)) as http:
        await http.put("/privacy/consents/genetic", headers=ANA)
        assert (await decided(http, "signal=genetic")).startswith("personalized")
        opted = await http.get("/offer?signal=genetic", headers={**ANA, "sec-gpc": "1"})
    assert opted.headers["personalization-decision"].startswith(
        'segment;reason=consent;rule="consent.gpc"'
    )


async def test_an_empty_consent_string_consents_to_nothing(shop: httpx.AsyncClient) -> None:
    response = await shop.get("/offer?signal=cart", headers={**ANA, "cookie": "euconsent-v2="})
    assert response.headers["personalization-decision"].startswith(
        'segment;reason=consent;rule="consent.tcf"'
    )


async def test_erasure_drops_a_waiting_opt_out_too(redis_url: str) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    store = RedisStore(redis_url)
    throttle = engine("", store, ManualClock())
    await throttle.decide(marker(), person="ana")  # connected
    await throttle.decide(marker(inferred=True), person="ana", gpc=True)  # the note waits
    erased = await throttle.erase("ana")
    await throttle.decide(marker(), person="ben")  # a later write would carry it
    assert erased.state is True
    assert await store.state(throttle.pseudonym("ana")) is None
    await store.aclose()


async def test_the_middle_band_moves_with_the_persons_threshold(store: Store) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    throttle = engine(
        "[creepiness]\nthreshold = 0.7\ncategory_band = { low = 0.6, high = 0.7 }\n"
        "repetition = { weight = 0.0, window = '1h' }\n"
        '[creepiness.signals]\n"a" = 0.65\n"b" = 0.8\n'
        "[levels]\nfull_threshold = 0.85\nminimal_threshold = 0.4\n",
        store,
        ManualClock(),
    )
    await throttle.set_level("ana", "full")  # the band is now (0.75, 0.85]

    async def outcome(signal: str, person: str) -> str:
        return (await throttle.decide(marker(signals=(signal,)), person=person)).outcome

    assert await outcome("a", "ben") == "category"
    assert await outcome("a", "ana") == "personalized"
    assert await outcome("b", "ana") == "category"


async def test_choices_are_renewed_by_visits_refused_before_the_store_is_asked(
    store: Store,
) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    clock = ManualClock()
    throttle = engine('[levels]\nkeep = "2d"\n', store, clock)
    await throttle.set_level("ana", "off")
    monotonic = [0.0]
    throttle._monotonic = lambda: monotonic[0]
    for _ in range(4):  # visits 0.9 days apart, each refused by TCF before the store
        clock.advance(0.9 * 86400)
        monotonic[0] += 0.9 * 86400
        refused = await throttle.decide(marker(), person="ana", purposes=frozenset())
        assert refused.rule == "consent.tcf"
    consented = await throttle.decide(marker(), person="ana", purposes=frozenset({5, 6}))
    assert consented.rule == "level.off"


async def test_failing_open_still_applies_the_persons_threshold_band_and_calculus(
    private_redis: RedisServer,
) -> None:
    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    store = RedisStore(private_redis.url)
    throttle = engine(
        '[store]\non_error = "personalize"\ntimeout = "200ms"\nretry_after = "1ms"\n'
        "[creepiness]\nthreshold = 0.7\ncategory_band = { low = 0.6, high = 0.7 }\n"
        "repetition = { weight = 0.0, window = '1h' }\n"
        '[creepiness.signals]\n"cart" = 0.1\n"a" = 0.65\n"b" = 0.8\n',
        store,
        ManualClock(),
    )
    assert (await throttle.decide(marker(signals=("cart",)), person="ana")).outcome == (
        "personalized"
    )
    private_redis.stop()
    banded = await throttle.decide(marker(signals=("a",)), person="ana")
    creepy = await throttle.decide(marker(signals=("b",)), person="ana")
    weak = await throttle.decide(marker(signals=("cart",), relevance=0.01), person="ana")
    fine = await throttle.decide(marker(signals=("cart",)), person="ana")
    await store.aclose()
    assert banded.outcome == "category"
    assert (creepy.outcome, creepy.reason) == ("segment", "creepiness")
    assert (weak.outcome, weak.reason) == ("segment", "calculus")
    assert (fine.outcome, fine.reason) == ("personalized", "store-unavailable")


async def test_a_decision_in_flight_cannot_undo_a_new_objection(
    private_redis: RedisServer,
) -> None:
    import asyncio

    from tests.conftest import ManualClock
    from tests.helpers import engine, marker

    store = RedisStore(private_redis.url)
    throttle = engine(
        '[store]\non_error = "personalize"\ntimeout = "200ms"\nretry_after = "1ms"\n',
        store,
        ManualClock(),
    )
    await throttle.decide(marker(), person="ana")
    await asyncio.gather(throttle.decide(marker(), person="ana"), throttle.set_level("ana", "off"))
    private_redis.stop()
    after = await throttle.decide(marker(), person="ana")
    await store.aclose()
    assert (after.outcome, after.reason) == ("segment", "store-unavailable")


async def test_a_deeply_nested_body_is_a_400_not_a_500(shop: httpx.AsyncClient) -> None:
    response = await shop.put("/privacy/level", headers=ANA, content=b"[" * 1000)
    assert response.status_code == 400
