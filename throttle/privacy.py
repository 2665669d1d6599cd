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

import datetime as dt
import json
import math
import time
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from throttle.audit import AuditEntry
from throttle.consent import gpc_opt_out
from throttle.errors import StoreUnavailable
from throttle.explain import explain
from throttle.middleware import MIDDLEWARE_SCOPE_KEY, ThrottleMiddleware
from throttle.policy import LEVELS

LEVEL_WORDS = {
    "off": "No personalized messages at all: you object to direct marketing and profiling "
    "(GDPR Art. 21). Everything you see is written for a large group of people.",
    "minimal": "Only what you gave us yourself, such as your cart and your purchases, and "
    "only where it is not intrusive; nothing inferred about you, nothing from other companies.",
    "standard": "Personalization within our policy's limits on how often and how "
    "intrusively we use your data.",
    "full": "The most tailored experience our policy allows, including messages that use "
    "more of your data.",
}
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


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def _answer(status: int, body: dict[str, Any], retry_after: float = 0.0) -> Response:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["www-authenticate"] = "Bearer, Basic"
    if retry_after:
        headers["retry-after"] = str(math.ceil(retry_after))
    return JSONResponse(body, status, headers=headers)


def _context(request: Request) -> tuple[ThrottleMiddleware, str]:
    middleware = request.scope.get(MIDDLEWARE_SCOPE_KEY)
    if not isinstance(middleware, ThrottleMiddleware):
        raise _Refusal(500, "the privacy routes need ThrottleMiddleware in front of them")
    person = middleware.person(request.scope)
    if person is None:
        raise _Refusal(401, "sign in to see or change what is held about you")
    return middleware, person


def _guarded(handler: Any, limits: _PerPerson) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            middleware, person = _context(request)
            wait = limits.wait(middleware.engine.pseudonym(person), time.monotonic())
            if wait:
                return _answer(429, {"error": "too many requests; try again later"}, wait)
            status, body = await handler(request, middleware, person)
        except _Refusal as refusal:
            return _answer(refusal.status, {"error": refusal.message})
        except (StoreUnavailable, OSError, TimeoutError):
            return _answer(503, {"error": "your data cannot be reached right now; try again"})
        return _answer(status, body)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def get_level(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Their level, whether they chose it, what each level means, and their GPC opt-out."""
    engine = middleware.engine
    choices = await engine.choices_of(person)
    level, chosen = engine.level_in(choices)
    return 200, {
        "level": level,
        "chosen": chosen,
        "levels": LEVEL_WORDS,
        "opt_out": _opt_out(choices, request),
    }


async def set_level(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Change their level: a JSON object with one key, `level`."""
    body = b""
    async for chunk in request.stream():  # read no more of a large body than it takes to refuse
        body += chunk
        if len(body) > _MAX_BODY:
            raise _Refusal(413, 'send a small JSON object such as {"level": "off"}')
    try:
        sent = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Refusal(400, 'send JSON such as {"level": "off"}') from None
    if not isinstance(sent, dict) or set(sent) != {"level"}:
        raise _Refusal(400, 'send exactly one key, level, such as {"level": "off"}')
    level = sent["level"]
    if level not in LEVELS:
        raise _Refusal(400, f"level must be one of {', '.join(LEVELS)}")
    await middleware.engine.set_level(person, level)
    return 200, {"level": level, "chosen": True, "meaning": LEVEL_WORDS[level]}


async def consents(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Each special category, its legal source, and whether they gave explicit consent."""
    given = (await middleware.engine.choices_of(person)).get("s") or {}
    return 200, {"categories": _categories(middleware, given)}


async def give_consent(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Give explicit consent to one special category; recorded with its time."""
    category = _category(request, middleware)
    await middleware.engine.consent(person, category, given=True)
    given = (await middleware.engine.choices_of(person)).get("s") or {}
    since = given.get(category)  # gone again if erased or withdrawn meanwhile
    return 200, {
        "category": category,
        "consented": since is not None,
        "since": _time(since) if since is not None else None,
    }


async def withdraw_consent(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Withdraw consent to one special category: as easy as giving it (Art. 7(3))."""
    category = _category(request, middleware)
    await middleware.engine.consent(person, category, given=False)
    return 200, {"category": category, "consented": False}


async def opt_in(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Lift their sticky GPC opt-out. A request that still sends Sec-GPC: 1 opts out again."""
    await middleware.engine.opt_in(person)
    return 200, {"opt_out": _opt_out({}, request)}


async def why(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Their recent decisions, newest first, each in plain words."""
    engine = middleware.engine
    zone = middleware.zone(request.scope)
    entries = await engine.recent(person)
    return 200, {"decisions": [explain(entry, zone=zone) for entry in _readable(entries)]}


async def access(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Everything held about them (GDPR Art. 15)."""
    engine = middleware.engine
    pseudonym = engine.pseudonym(person)
    state = await engine.state_of(person) or {}
    recent = _readable(await engine.recent(person))
    choices = state.get("p") or {}
    level, chosen = engine.level_in(choices)
    given = choices.get("s") or {}
    zone = middleware.zone(request.scope)
    return 200, {
        "about": "Everything throttle holds about you. You are known to it only by a keyed "
        "hash of your account id (your pseudonym), never by the id itself.",
        "pseudonym": pseudonym,
        "level": {
            "level": level,
            "chosen": chosen,
            "chosen_at": _time(choices["u"]) if "u" in choices else None,
        },
        "opt_out": _opt_out(choices, request),
        "special_category_consents": {name: _time(since) for name, since in sorted(given.items())},
        "deliveries": {
            _counter_words(name): [_time(t) for t in log]
            for name, log in (state.get("c") or {}).items()
        },
        "creepiness_budget": [
            {"since": _time(t), "score": score / 1000} for t, score in state.get("b") or []
        ],
        "recent_decisions": [explain(entry, zone=zone) for entry in recent],
        "audit_trail": {
            "about": "Each decision is also kept in our audit trail, which shows what we did "
            "with personal data. There you are named only by a random token kept with your "
            "data; erasing your data deletes the token, after which nothing links those "
            "entries to you. Your entries, newest first:",
            "entries": [
                {k: v for k, v in entry.as_dict().items() if k != "person"} for entry in recent
            ],
        },
    }


async def erase(
    request: Request, middleware: ThrottleMiddleware, person: str
) -> tuple[int, dict[str, Any]]:
    """Erase everything held about them (GDPR Art. 17)."""
    engine = middleware.engine
    erased = await engine.erase(person)
    default = engine.policy.levels.default
    return 200, {
        "deleted": {
            "state": erased.state,
            "recent_decisions": erased.decisions,
        },
        "note": "Your counters, your choice of level, your consents, your opt-out and your "
        "recent decisions are deleted, and so is the token that named you in our audit "
        "trail: nothing links its entries to you any more. Your level is back to the "
        f"default, {default}; choose it again if you wish.",
    }


def _opt_out(choices: dict[str, Any], request: Request) -> dict[str, Any]:
    """Their Global Privacy Control opt-out: kept from the first request that sent it."""
    sent_now = gpc_opt_out(request.scope.get("headers", ()))
    since = choices.get("g")
    if since is None and not sent_now:
        return {"honored": False, "message": "No opt-out preference signal received"}
    return {
        "honored": True,
        "since": _time(since) if since is not None else None,
        "message": "Opt-out preference signal honored",
    }


def _categories(middleware: ThrottleMiddleware, given: dict[str, int]) -> dict[str, Any]:
    return {
        name: {
            "source": category.source,
            "signals": list(category.signals),
            "consented": name in given,
            "since": _time(given[name]) if name in given else None,
        }
        for name, category in middleware.engine.policy.special.items()
    }


def _category(request: Request, middleware: ThrottleMiddleware) -> str:
    category = request.path_params["category"]
    if category not in middleware.engine.policy.special:
        raise _Refusal(404, f"{category!r} is not a special category of this site's policy")
    return str(category)


def _readable(entries: list[bytes]) -> list[AuditEntry]:
    readable = []
    for packed in entries:
        try:
            readable.append(AuditEntry.unpack(packed))
        except ValueError:
            continue  # an entry that cannot be read is skipped, not shown broken
    return readable


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def _counter_words(name: str) -> str:
    """`c:email` -> "email channel"; `k:spring-sale` -> "campaign spring-sale"; `u` -> "all"."""
    shadow = name.startswith("s:")
    base, _, exempt = name.removeprefix("s:").partition("!")
    kind, _, value = base.partition(":")
    words = {"u": "all messages", "c": f"{value} channel", "k": f"campaign {value}"}.get(kind, base)
    if exempt:
        words += f" (except {exempt.replace(',', ', ')})"
    return words + (" (a rule on trial)" if shadow else "")
