"""The apps `throttle bench` serves: one trivial JSON endpoint, bare and behind each limiter.

Every variant serves the same handler, `GET /offer`, a small JSON body marked as personalized,
so the arms differ only in what sits in front of it:

- `bare`: the handler alone (its `Personalization` header simply goes out);
- `throttle`: `ThrottleMiddleware` on Redis with the default policy;
- `slowapi`: slowapi's `Limiter` with Redis storage and its pure ASGI middleware;
- `limits`: a small pure ASGI middleware on `limits`' async Redis storage.

The peers are given a limit no traffic reaches, so only their cost shows. uvicorn builds each
app in its own process (`--factory`), so the configuration comes from the environment:
`THROTTLE_BENCH_REDIS_URL`, `THROTTLE_BENCH_PREFIX`, `THROTTLE_BENCH_POLICY` and
`THROTTLE_SECRET`.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from throttle.message import PERSONALIZATION_HEADER, personalization
from throttle.middleware import DECISION_SCOPE_KEY, ThrottleMiddleware
from throttle.store import RedisStore

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.toml"
TALLY_PATH = "/bench/tally"
# A rate no bench run comes near: the peers must never reject, or they would look cheaper.
NEVER_REACHED = "1000000000/day"

_OFFER = {"offer": "10% off new trail shoes", "why": "because you bought trail running shoes"}
# Built once, as an app would keep a campaign's marker: the handler's own cost stays small,
# which makes the middleware's share of each request as large as it can honestly be.
_MARKED = personalization(
    "spring-sale", segment="eu/de/berlin", signals=["purchase_history"], explained=True
)
MARKER_VALUE = _MARKED[PERSONALIZATION_HEADER].encode("ascii")
# The person of an open-loop request: `/offer?user=person-N` (see `throttle.bench.openloop`).
USER_QUERY = "user"
_USER_QUERY_BYTES = USER_QUERY.encode("ascii")


async def offer(request: Request) -> JSONResponse:
    return JSONResponse(_OFFER, headers=_MARKED)


def header_user(scope: Scope) -> str | None:
    """The person a request is for: its `X-User` header, else `?user=` in its query string
    (the open-loop runs, whose generator sends the same headers with every request).

    Fine for a benchmark, never for an app: a client can forge either, so a real app
    identifies the signed-in user (throttle's default, Starlette's `scope["user"]`).
    """
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-user":
            return value.decode("latin-1")
    query: bytes = scope.get("query_string", b"")
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == _USER_QUERY_BYTES and value:
            return value.decode("latin-1")
    return None


def bare() -> Starlette:
    return Starlette(routes=[Route("/offer", offer)])


def throttled() -> ASGIApp:
    app = Starlette(
        routes=[Route("/offer", offer)],
        middleware=[
            Middleware(
                ThrottleMiddleware,
                policy=os.environ.get("THROTTLE_BENCH_POLICY") or DEFAULT_POLICY,
                store=_store(),
                identify=header_user,
                secret=os.environ["THROTTLE_SECRET"],
            )
        ],
    )
    return DecisionTally(app)


def slowapi_app() -> Starlette:
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware

    def key(request: Request) -> str:
        return request.headers.get("x-user", "anonymous")

    app = Starlette(
        routes=[Route("/offer", offer)],
        # Its pure ASGI middleware: cheaper than SlowAPIMiddleware (a BaseHTTPMiddleware). Over
        # the limit it would answer with slowapi's own 429 handler.
        middleware=[Middleware(SlowAPIASGIMiddleware)],
    )
    app.state.limiter = Limiter(
        key_func=key,
        default_limits=[NEVER_REACHED],
        storage_uri=_redis_url(),
        storage_options={"key_prefix": f"{_prefix()}slowapi"},
    )
    return app


def limits_app() -> Starlette:
    return Starlette(
        routes=[Route("/offer", offer)],
        middleware=[
            Middleware(
                LimitsMiddleware,
                storage_uri=_redis_url(),
                key_prefix=f"{_prefix()}limits",
                limit=NEVER_REACHED,
            )
        ],
    )


class LimitsMiddleware:
    """Rate limiting with `limits` as its docs describe it: one async `hit` per request.

    A moving window, like throttle's sliding windows, on `limits`' async Redis storage (coredis),
    keyed by person; a request over the limit would get 429.
    """

    def __init__(self, app: ASGIApp, *, storage_uri: str, key_prefix: str, limit: str) -> None:
        from limits import parse
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self.app = app
        self.storage = RedisStorage(f"async+{storage_uri}", key_prefix=key_prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.item = parse(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not await self.limiter.hit(self.item, header_user(scope) or "anonymous"):
            response = PlainTextResponse("Too Many Requests", status_code=429)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                # limits' storage has no close(); the pool of its coredis client has.
                client = getattr(self.storage.bridge, "storage", None)
                if client is not None:
                    client.connection_pool.disconnect()
            await send(message)

        return send_and_close


class DecisionTally:
    """Counts the throttle arm's decisions by outcome and reason; `GET /bench/tally` reads them.

    Only the throttle arm carries it, so its small cost counts against throttle.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counts: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == TALLY_PATH:
            counts, self.counts = dict(self.counts), collections.Counter()
            await JSONResponse(counts)(scope, receive, send)
            return
        await self.app(scope, receive, send)
        decision = scope.get(DECISION_SCOPE_KEY)
        self.counts[
            f"{decision.outcome}/{decision.reason.value}" if decision is not None else "unmarked"
        ] += 1


def _redis_url() -> str:
    return os.environ["THROTTLE_BENCH_REDIS_URL"]


def _prefix() -> str:
    return os.environ.get("THROTTLE_BENCH_PREFIX", "throttle-bench:")


def _store() -> RedisStore:
    # The store URL as given (Sentinel's too); the peers get the master's own URL.
    store_url = os.environ.get("THROTTLE_BENCH_STORE_URL") or _redis_url()
    return RedisStore(store_url, prefix=f"{_prefix()}throttle:")
