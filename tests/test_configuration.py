"""Mounting the middleware: what it needs, and the clear errors when it does not get it."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from tests.apps import storefront
from tests.helpers import policy
from throttle import ConfigurationError, Engine, PolicyError, ThrottleMiddleware, open_store
from throttle.store import MemoryStore, RedisStore


def mount(**options: object) -> ThrottleMiddleware:
    return ThrottleMiddleware(Starlette(), **options)  # type: ignore[arg-type]


async def test_a_shared_store_without_a_secret_fails_at_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("THROTTLE_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="THROTTLE_SECRET"):
        mount(policy=policy(), store="redis://127.0.0.1:1/0")


async def test_the_secret_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROTTLE_SECRET", "from-the-environment-0123")
    middleware = mount(policy=policy(), store="redis://127.0.0.1:1/0")
    other = mount(policy=policy(), store="redis://127.0.0.1:1/0", secret="another-secret-45678")
    assert middleware.engine.pseudonym("ana") != other.engine.pseudonym("ana")
    monkeypatch.setenv("THROTTLE_SECRET", "from-the-environment-0123")
    again = mount(policy=policy(), store="redis://127.0.0.1:1/0")
    assert again.engine.pseudonym("ana") == middleware.engine.pseudonym("ana")
    for opened in (middleware, other, again):
        await opened.engine.store.aclose()


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        mount(policy=policy(), secret="short")


def test_the_memory_store_needs_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THROTTLE_SECRET", raising=False)
    middleware = mount(policy=policy())
    assert isinstance(middleware.engine.store, MemoryStore)


async def test_stores_are_chosen_by_uri_scheme() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    for uri in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0", "unix:///tmp/r.sock"):
        store = open_store(uri)
        assert isinstance(store, RedisStore)
        await store.aclose()
    with pytest.raises(ConfigurationError, match=r"unknown scheme 'mongodb'.*memory://"):
        open_store("mongodb://localhost")


def test_a_bad_policy_file_fails_at_startup_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[policy]\nname = "x"\n[[caps]]\nname = "c"\nper = "day"\nlimit = 3\n')
    with pytest.raises(PolicyError) as raised:
        mount(policy=str(path))
    message = str(raised.value)
    assert str(path) in message
    assert "line 5: caps.\"c\".per: is 'day'; should be 'user', 'channel' or 'campaign'" in message


def test_a_missing_policy_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        mount(policy=tmp_path / "nowhere.toml")


def test_the_shipped_default_policy_mounts() -> None:
    middleware = mount(policy="policies/default.toml")
    assert middleware.engine.policy.name == "default"


@pytest.mark.parametrize("secret", [b"s" * 16, b"k" * 64, b"long-" * 40], ids=len)
@pytest.mark.parametrize("person", ["ana", "", "ünï", "x" * 10_000])
def test_pseudonyms_are_hmac_sha256_of_the_id(secret: bytes, person: str) -> None:
    engine = Engine(policy(), MemoryStore(), secret=secret)
    expected = hmac.new(secret, person.encode(), hashlib.sha256).hexdigest()[:32]
    assert engine.pseudonym(person) == expected


def test_a_malformed_store_uri_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("store 'redis://127.0.0.1:notaport/0'")):
        open_store("redis://127.0.0.1:notaport/0")


async def lifespan_startup(app: Starlette) -> list[Message]:
    """What the app answers to uvicorn's `lifespan.startup` (then `lifespan.shutdown`)."""
    sent: list[Message] = []
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Message:
        return events.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"policy": []}, "give at least one policy file"),
        ({"policy": "policies/nowhere.toml"}, "cannot be read"),
        ({"policy": "policies/default.toml", "store": "redis//127.0.0.1/0"}, "redis//"),
    ],
    ids=["no-policy", "missing-file", "bad-store-url"],
)
async def test_built_by_the_framework_an_error_fails_the_lifespan_startup(
    options: dict[str, object], words: str
) -> None:
    app = storefront(**options)
    [failed] = await lifespan_startup(app)
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("throttle cannot start: ")
    assert words in failed["message"]
    # Without a lifespan, requests are refused with a 503, never a 500, never served unchecked.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
        for path in ("/plain", "/offer"):
            response = await http.get(path, headers={"x-test-user": "ana"})
            assert (response.status_code, response.text) == (503, "Service Unavailable")


async def test_a_good_configuration_completes_the_lifespan_startup() -> None:
    sent = await lifespan_startup(storefront(policy="policies/default.toml"))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_start_up_freezes_what_it_made_out_of_the_collectors_sight() -> None:
    import gc

    from throttle import ThrottleMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})

    async def lifespan(freeze: bool) -> int:
        gc.unfreeze()
        sent: list[Any] = []

        async def receive() -> dict[str, str]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            sent.append(message)

        middleware = ThrottleMiddleware(app, policy=policy(), freeze_gc=freeze)
        await middleware({"type": "lifespan"}, receive, send)
        assert sent == [{"type": "lifespan.startup.complete"}]
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        return frozen

    assert await lifespan(True) > 0
    assert await lifespan(False) == 0
