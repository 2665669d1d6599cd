"""Policies per market: several layered policies loaded at once, one chosen per request by the
app's `market` function, each named in its decisions, each hot-reloaded; a person's caps are
theirs across markets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Mount
from starlette.types import Scope

from tests.apps import ROUTES, HeaderUser
from tests.helpers import SECRET, marker
from tests.servers import serving
from tests.test_startup import Server
from tests.test_support import StaffOrCustomer
from throttle import (
    ConfigurationError,
    Engine,
    PolicyError,
    ThrottleMiddleware,
    admin_routes,
    load_policy,
    privacy_routes,
)
from throttle.cli import main
from throttle.store import Store

BASE = """\
[policy]
name = "shop"

[[caps]]
name = "daily"
per = "user"
limit = 3
window = "1d"

[creepiness]
repetition = { weight = 0.0, window = "1h" }

[store]
timeout = "5s"
"""
EU = """\
[policy]
name = "shop-eu"

[[caps]]
name = "daily"
limit = 2

[fallback.content."*"]
body = '{"for": "everyone in the eu"}'

[levels]
default = "minimal"
"""
US = """\
[policy]
name = "shop-us"

[[caps]]
name = "daily"
limit = 4
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "base.toml").write_text(BASE)
    markets = tmp_path / "markets"
    markets.mkdir()
    (markets / "eu.toml").write_text(EU)
    (markets / "us.toml").write_text(US)
    return tmp_path


def policies(files: Path) -> tuple[Any, dict[str, Any]]:
    base = files / "base.toml"
    markets = {name: load_policy(base, files / "markets" / f"{name}.toml") for name in ("eu", "us")}
    return load_policy(base), markets


async def test_each_market_decides_under_its_own_policy_and_version(
    store: Store, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, markets = policies(files)
    engine = Engine(base, store, secret=SECRET, markets=markets)
    assert engine.markets == ("eu", "us")
    decided = {
        market: await engine.decide(marker(), person=f"p-{market}", market=market)
        for market in ("eu", "us", None)
    }
    assert {m: (d.policy, d.policy_version) for m, d in decided.items()} == {
        "eu": ("shop-eu", markets["eu"].version),
        "us": ("shop-us", markets["us"].version),
        None: ("shop", base.version),
    }
    assert len({base.version, markets["eu"].version, markets["us"].version}) == 3
    with caplog.at_level(logging.WARNING, logger="throttle.engine"):
        unknown = await engine.decide(marker(), person="p-x", market="mars")
        await engine.decide(marker(), person="p-x", market="mars")
    assert unknown.policy == "shop" and unknown.outcome == "personalized"
    warned = [r.getMessage() for r in caplog.records if "mars" in r.getMessage()]
    assert warned == ["throttle: no policy for market 'mars'; the default policy shop decides"]
    assert engine.policy_for("eu") is markets["eu"] and engine.policy_for("mars") is base


async def test_a_persons_caps_follow_them_from_market_to_market(store: Store, files: Path) -> None:
    base, markets = policies(files)
    engine = Engine(base, store, secret=SECRET, markets=markets)

    async def outcome(market: str) -> str:
        decision = await engine.decide(marker(), person="ana", market=market)
        return f"{decision.outcome}/{decision.policy}"

    # Two in the US (limit 4); the EU's limit of 2 counts them: refused on arrival.
    assert [await outcome("us"), await outcome("us")] == ["personalized/shop-us"] * 2
    assert await outcome("eu") == "segment/shop-eu"
    # Back in the US, the refused one counted nothing: two more, then the US cap.
    assert [await outcome("us") for _ in range(3)] == [
        "personalized/shop-us",
        "personalized/shop-us",
        "segment/shop-us",
    ]
    state = await engine.state_of("ana")
    assert state is not None and len(state["c"]["u"]) == 4  # one record, one counter


def test_markets_that_cannot_be_used_stop_start_up(files: Path) -> None:
    base, dir_ = files / "base.toml", files / "markets"

    def build(**options: Any) -> ThrottleMiddleware:
        return ThrottleMiddleware(Starlette(), policy=base, secret=SECRET, **options)

    async def chooser(scope: Scope) -> str:
        return "eu"

    refused: list[tuple[dict[str, Any], str]] = [
        (
            {"markets": dir_, "market": "mars"},
            "market 'mars' has no policy; the markets are eu, us",
        ),
        ({"markets": dir_}, "give market= too"),
        ({"market": "eu"}, "give markets= too"),
        ({"markets": dir_, "market": chooser}, "market must be a plain function"),
        ({"markets": files / "nowhere", "market": "eu"}, "does not exist"),
        ({"markets": files / "empty", "market": "eu"}, "holds no *.toml"),
        ({"markets": {"": base}, "market": "eu"}, "cannot name a market"),
        ({"markets": {"eu": []}, "market": "eu"}, "names no policy file"),
    ]
    (files / "empty").mkdir()
    for options, words in refused:
        with pytest.raises(ConfigurationError, match=words.replace("*", r"\*")):
            build(**options)
    (dir_ / "us.toml").write_text(US + "\n[[caps]]\nname = 'hourly'\nper = 'user'\n")
    with pytest.raises(PolicyError, match=r"us\.toml"):
        build(markets=dir_, market="eu")
    with pytest.raises(ConfigurationError, match="give policy= as files too"):
        ThrottleMiddleware(
            Starlette(), policy=load_policy(base), secret=SECRET, markets=dir_, market="eu"
        )
    static = build(markets={"eu": dir_ / "eu.toml"}, market="eu")
    assert static.engine.policy_for(static.market_of({})).name == "shop-eu"


EU_COUNTRIES = {"de", "fr"}


def country_market(scope: Scope) -> str | None:
    """The market from the (test's) country header; an unknown country is its own name."""
    for name, value in scope["headers"]:
        if name == b"x-country":
            country = value.decode()
            if country == "boom":
                raise RuntimeError("no country service")
            return "eu" if country in EU_COUNTRIES else country
    return None


@pytest.fixture
async def served(redis_url: str, files: Path) -> AsyncIterator[str]:
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderUser()),
            Middleware(
                ThrottleMiddleware,
                policy=files / "base.toml",
                markets=files / "markets",
                market=country_market,
                store=redis_url,
                secret=SECRET,
                reload_interval=0.05,
                freeze_gc=False,
            ),
        ],
    )
    async with serving(app) as url:
        yield url


async def test_markets_through_a_real_server(
    served: str, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eu = load_policy(files / "base.toml", files / "markets" / "eu.toml")

    async def get(http: httpx.AsyncClient, person: str, country: str | None) -> httpx.Response:
        headers = {"x-test-user": person, **({"x-country": country} if country else {})}
        return await http.get("/offer", headers=headers)

    def policy_of(response: httpx.Response) -> str:
        return response.headers["personalization-decision"].split('policy="')[1].rstrip('"')

    async with httpx.AsyncClient(base_url=served) as http:
        with caplog.at_level(logging.WARNING):
            by_country = {c: await get(http, f"p-{c}", c) for c in ("de", "us", "zz", "boom", None)}
        assert {c: policy_of(r).split("@")[0] for c, r in by_country.items()} == {
            "de": "shop-eu",
            "us": "shop-us",
            "zz": "shop",  # a market nobody configured: the default, and a warning
            "boom": "shop",  # the app's function failed: the default, and a warning
            None: "shop",
        }
        assert policy_of(by_country["de"]) == f"shop-eu@{eu.version}"
        unreadable = await http.get(
            "/offer?marker=((", headers={"x-test-user": "cleo", "x-country": "fr"}
        )
        assert unreadable.headers["personalization-decision"].startswith(
            "segment;reason=invalid-marker"
        )
        assert policy_of(unreadable).startswith("shop-eu@")
        assert unreadable.json() == {"for": "everyone in the eu"}
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "no policy for market 'zz'" in logged and "market() failed" in logged

        # One person, two markets, one cap: two in the US, and the EU's 2 is full.
        assert [(await get(http, "ana", "us")).status_code for _ in range(2)] == [200, 200]
        refused = await get(http, "ana", "fr")
        assert refused.headers["personalization-decision"].startswith(
            'segment;reason=frequency-cap;rule="daily"'
        )
        assert refused.json() == {"for": "everyone in the eu"}  # the EU policy's content

        # An edit to the EU's file is picked up by the running server, without a restart.
        (files / "markets" / "eu.toml").write_text(EU.replace("limit = 2", "limit = 5"))
        edited = load_policy(files / "base.toml", files / "markets" / "eu.toml")
        for _ in range(200):  # at most 200 requests, each waiting at most 0.05 s
            response = await get(http, "ben", "de")
            if policy_of(response) == f"shop-eu@{edited.version}":
                break
            await asyncio.sleep(0.05)
        assert policy_of(response) == f"shop-eu@{edited.version}"
        assert (
            (await get(http, "ana", "fr"))
            .headers["personalization-decision"]
            .startswith("personalized")
        )  # 2 of the EU's new 5


def test_throttle_check_checks_every_market(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, dir_ = str(files / "base.toml"), str(files / "markets")
    assert main(["check", base, "--markets", dir_]) == 0
    out = capsys.readouterr().out
    assert "policy 'shop'" in out and "\nmarket eu:\n" in out and "\nmarket us:\n" in out
    assert "policy 'shop-eu'" in out and "caps.daily.limit = 2" in out
    (files / "markets" / "us.toml").write_text(US.replace("limit = 4", "limit = 'four'"))
    assert main(["check", base, "--markets", dir_]) == 1
    assert f"{dir_}/us.toml:6: caps.\"daily\".limit: is 'four'" in capsys.readouterr().out
    assert main(["check", base, "--markets", str(files / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_throttle_simulate_replays_each_line_under_its_market(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = files / "trace.jsonl"
    lines = [
        {"t": 1_800_000_000 + i, "person": "ana", "campaign": "c", "market": market}
        for i, market in enumerate(["us", "us", "eu", "us", "us", "us"])
    ]
    lines.append({"t": 1_800_000_010, "person": "ben", "campaign": "c"})
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    base, dir_ = str(files / "base.toml"), str(files / "markets")
    assert main(["simulate", base, str(trace), "--markets", dir_, "--json"]) == 0
    (tally,) = json.loads(capsys.readouterr().out)["policies"]
    eu, us = policies(files)[1].values()
    assert tally["decided_by"] == {
        f"shop-eu @{eu.version}": 1,
        f"shop-us @{us.version}": 5,
        f"shop @{load_policy(base).version}": 1,
    }
    assert tally["outcomes"] == {"personalized": 5, "frequency-cap": 2}
    assert main(["simulate", base, str(trace), "--markets", dir_]) == 0
    out = capsys.readouterr().out
    assert "shop @" in out and "+ markets eu, us" in out and "decided by each market" in out


async def test_privacy_and_admin_routes_speak_of_the_persons_market(files: Path) -> None:
    app = Starlette(
        routes=[
            Mount("/privacy", routes=privacy_routes()),
            Mount("/admin", routes=admin_routes()),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=StaffOrCustomer()),
            Middleware(
                ThrottleMiddleware,
                policy=files / "base.toml",
                markets=files / "markets",
                market=country_market,
            ),
        ],
    )
    ana = {"x-test-user": "ana"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        in_eu = await http.get("/privacy/level", headers={**ana, "x-country": "de"})
        in_us = await http.get("/privacy/level", headers={**ana, "x-country": "us"})
        staff = {"x-staff": "sam"}
        for_eu = await http.post("/admin/level", json={"id": "ana", "market": "eu"}, headers=staff)
        default = await http.post("/admin/level", json={"id": "ana"}, headers=staff)
        unknown = await http.post(
            "/admin/level", json={"id": "ana", "market": "mars"}, headers=staff
        )
    assert (in_eu.json()["level"], in_us.json()["level"]) == ("minimal", "standard")
    assert for_eu.json()["result"]["level"] == "minimal"
    assert default.json()["result"]["level"] == "standard"
    assert unknown.status_code == 400 and "no market 'mars'" in unknown.json()["error"]


MARKET_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from throttle import ThrottleMiddleware, personalization

async def offer(request):
    return JSONResponse({{"offer": "for you"}}, headers=personalization("spring-sale"))

def market(scope):
    country = dict(scope["headers"]).get(b"x-country", b"").decode()
    return "eu" if country in ("de", "fr") else "us" if country else None

app = Starlette(routes=[Route("/", offer)])
app.add_middleware(ThrottleMiddleware, policy={base!r}, markets={markets!r}, market={market})
"""


def test_uvicorn_workers_decide_by_market_and_stop_on_an_unknown_static_one(
    files: Path,
) -> None:
    base, markets = str(files / "base.toml"), str(files / "markets")
    (files / "app.py").write_text(MARKET_APP.format(base=base, markets=markets, market="'mars'"))
    status, log = Server(files).finished()
    assert status != 0 and "throttle cannot start: market 'mars' has no policy" in log, log
    assert "Traceback" not in log

    (files / "app.py").write_text(MARKET_APP.format(base=base, markets=markets, market="market"))
    server = Server(files, "--workers", "2")
    try:
        assert server.first_answer() is not None
        with httpx.Client(base_url=server.url, timeout=10) as http:
            answers = {
                country: http.get("/", headers={"x-country": country}).headers[
                    "personalization-decision"
                ]
                for _ in range(4)  # over both workers, most likely; each must agree
                for country in ("de", "us", "")
            }
    finally:
        log = server.stop()
    assert {c: a.split('policy="')[1].split("@")[0] for c, a in answers.items()} == {
        "de": "shop-eu",
        "us": "shop-us",
        "": "shop",
    }, log


def test_a_market_with_alerts_of_its_own_stops_start_up(files: Path) -> None:
    (files / "markets" / "eu.toml").write_text(
        EU + '[alerts]\n[[alerts.conditions]]\nname = "down"\nkind = "store-failing"\n'
    )
    with pytest.raises(ConfigurationError, match="'eu' has an \\[alerts\\] table of its own"):
        ThrottleMiddleware(
            None, policy=files / "base.toml", markets=files / "markets", market="eu", secret=SECRET
        )
