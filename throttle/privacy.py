"""Routes a signed-in person uses to see and change what throttle holds about them.

```python
from starlette.routing import Mount
from throttle import privacy_routes

app = Starlette(routes=[..., Mount("/privacy", routes=privacy_routes())],
                middleware=[..., Middleware(ThrottleMiddleware, ...)])
```

    GET    /level   their personalization level, and what each level means
    PUT    /level   {"level": "off" | "minimal" | "standard" | "full"}: change it
    GET    /why     their recent decisions, each explained in plain words
    GET    /consents                the special categories, and which they consented to
    PUT    /consents/{category}     give explicit consent to one (GDPR Art. 9(2)(a))
    DELETE /consents/{category}     withdraw it (Art. 7(3))
    DELETE /opt-out                 lift their Global Privacy Control opt-out themselves
    GET    /data    everything held about them, as JSON (GDPR Art. 15)
    DELETE /data    erase everything held about them (GDPR Art. 17)

The person is whoever the middleware's `identify` says the request is from, and nobody else:
no route takes a person, a pseudonym or an id from the request, so no request can reach
another person's data. Without an identity every route answers 401. The routes must sit
behind `ThrottleMiddleware` (they use its engine), and they send `no-store`.

Each route costs what one person's record costs (one key), never the audit trail, and each
person may call them `calls` times per `window` seconds in each process (429 with
`Retry-After` beyond; 60 a minute unless `privacy_routes` is told otherwise), so no signed-in
person can slow everyone else down.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from throttle import personal_data
from throttle.consent import gpc_opt_out
from throttle.errors import StoreUnavailable
from throttle.middleware import MIDDLEWARE_SCOPE_KEY, ThrottleMiddleware
from throttle.policy import LEVELS

_MAX_BODY = 1024
_NO_STORE = {"cache-control": "no-store"}
_PEOPLE_REMEMBERED = 65_536


class _PerPerson:
    """A sliding-window count of each person's calls; bounded in people as in calls."""

    def __init__(self, calls: int, window: float) -> None:
        self.calls = calls
        self.window = window
        self._seen: dict[str, deque[float]] = {}

    def wait(self, person: str, now: float) -> float:
        """0 when the person may call now (and counts the call), else seconds to wait."""
        seen = self._seen.get(person)
        if seen is None:
            if len(self._seen) >= _PEOPLE_REMEMBERED:
                self._seen.clear()
            seen = self._seen[person] = deque(maxlen=self.calls)
        if len(seen) == self.calls and now - seen[0] < self.window:
            return self.window - (now - seen[0])
        seen.append(now)
        return 0.0


def privacy_routes(*, calls: int = 60, window: float = 60.0) -> list[BaseRoute]:
    """The routes, for a `Mount` (e.g. under `/privacy`) behind `ThrottleMiddleware`.

    - `calls`, `window`: each person may call them `calls` times per `window` seconds, in
      each process; beyond that they get 429 with `Retry-After`.
    """
    if calls < 1 or not window > 0:
        raise ValueError("privacy_routes: calls must be at least 1 and window above 0")
    limits = _PerPerson(calls, window)
    return [
        Route(path, _guarded(handler, limits), methods=[method])
        for path, handler, method in (
            ("/level", get_level, "GET"),
            ("/level", set_level, "PUT"),
            ("/why", why, "GET"),
            ("/consents", consents, "GET"),
            ("/consents/{category}", give_consent, "PUT"),
            ("/consents/{category}", withdraw_consent, "DELETE"),
            ("/opt-out", opt_in, "DELETE"),
            ("/data", access, "GET"),
            ("/data", erase, "DELETE"),
        )
    ]


class Refusal(Exception):
    """A request the routes refuse: its status and what to tell the caller."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def answer(status: int, body: dict[str, Any], retry_after: float = 0.0) -> Response:
    """A JSON answer about one person's data: never kept by a cache."""
    headers = dict(_NO_STORE)
    if status == 401:
        headers["www-authenticate"] = "Bearer, Basic"
    if retry_after:
        headers["retry-after"] = str(math.ceil(retry_after))
    return JSONResponse(body, status, headers=headers)


def middleware_of(request: Request) -> ThrottleMiddleware:
    """The `ThrottleMiddleware` in front of the routes (500 when there is none)."""
    middleware = request.scope.get(MIDDLEWARE_SCOPE_KEY)
    if not isinstance(middleware, ThrottleMiddleware):
        raise Refusal(500, "the privacy routes need ThrottleMiddleware in front of them")
    return middleware


async def small_json(request: Request, example: str) -> Any:
    """The request's body as JSON, read no further than it takes to refuse a large one."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise Refusal(413, f"send a small JSON object such as {example}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal(400, f"send JSON such as {example}") from None


def _context(request: Request) -> tuple[ThrottleMiddleware, str]:
    middleware = middleware_of(request)
    person = middleware.person(request.scope)
    if person is None:
        raise Refusal(401, "sign in to see or change what is held about you")
    return middleware, person


def _guarded(handler: Any, limits: _PerPerson) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            middleware, person = _context(request)
            wait = limits.wait(middleware.engine.pseudonym(person), time.monotonic())
            if wait:
                return answer(429, {"error": "too many requests; try again later"}, wait)
            status, body = await handler(request, middleware, person)
        except Refusal as refusal:
            return answer(refusal.status, {"error": refusal.message})
        except (StoreUnavailable, OSError, TimeoutError):
            return answer(503, {"error": "your data cannot be reached right now; try again"})
        return answer(status, body)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _gpc_now(request: Request) -> bool:
    return gpc_opt_out(request.scope.get("headers", ()))


def _market(request: Request, middleware: ThrottleMiddleware) -> str | None:
    """The request's market, whose policy gives the default level and the categories."""
    return middleware.market_of(request.scope)


async def get_level(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Their level, whether they chose it, what each level means, and their GPC opt-out."""
    return 200, await personal_data.level(
        middleware.engine, person, gpc_now=_gpc_now(request), market=_market(request, middleware)
    )


async def set_level(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Change their level: a JSON object with one key, `level`."""
    sent = await small_json(request, '{"level": "off"}')
    if not isinstance(sent, dict) or set(sent) != {"level"}:
        raise Refusal(400, 'send exactly one key, level, such as {"level": "off"}')
    try:
        return 200, await personal_data.set_level(middleware.engine, person, sent["level"])
    except personal_data.UnknownLevel:
        raise Refusal(400, f"level must be one of {', '.join(LEVELS)}") from None


async def consents(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Each special category, its legal source, and whether they gave explicit consent."""
    market = _market(request, middleware)
    return 200, await personal_data.consents(middleware.engine, person, market=market)


async def give_consent(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Give explicit consent to one special category; recorded with its time."""
    market = _market(request, middleware)
    category = _category(request, middleware, market)
    return 200, await personal_data.give_consent(middleware.engine, person, category, market=market)


async def withdraw_consent(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Withdraw consent to one special category: as easy as giving it (Art. 7(3))."""
    market = _market(request, middleware)
    category = _category(request, middleware, market)
    return 200, await personal_data.withdraw_consent(
        middleware.engine, person, category, market=market
    )


async def opt_in(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Lift their sticky GPC opt-out. A request that still sends Sec-GPC: 1 opts out again."""
    gpc_now = _gpc_now(request)
    return 200, await personal_data.lift_opt_out(middleware.engine, person, gpc_now=gpc_now)


async def why(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Their recent decisions, newest first, each in plain words."""
    zone = middleware.zone(request.scope)
    return 200, await personal_data.why(middleware.engine, person, zone=zone)


async def access(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Everything held about them (GDPR Art. 15)."""
    zone = middleware.zone(request.scope)
    return 200, await personal_data.export(
        middleware.engine,
        person,
        zone=zone,
        gpc_now=_gpc_now(request),
        market=_market(request, middleware),
    )


async def erase(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Erase everything held about them (GDPR Art. 17)."""
    market = _market(request, middleware)
    return 200, await personal_data.erase(middleware.engine, person, market=market)


def _category(request: Request, middleware: ThrottleMiddleware, market: str | None) -> str:
    category = str(request.path_params["category"])
    try:
        return personal_data.check_category(middleware.engine, category, market)
    except personal_data.UnknownCategory as unknown:
        raise Refusal(404, str(unknown)) from None
