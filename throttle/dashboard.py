"""The live ops dashboard: routes an app mounts behind its own authentication.

```python
from starlette.routing import Mount
from throttle import dashboard_routes

app = Starlette(routes=[..., Mount("/ops", routes=dashboard_routes())],
                middleware=[..., Middleware(ThrottleMiddleware, ..., ops=True)])
```

    GET /            the page: one self-contained HTML document (inline CSS and JS, SVG charts)
    GET /data.json   what the page shows, as JSON
    GET /events      the same, as server-sent events every `interval` seconds

The routes read the shared ops state (`throttle.opsstate`), so every worker serves the same
figures. They must sit behind `ThrottleMiddleware` built with `ops=True` (they use its
`OpsState`), and behind the app's own authentication: they show no person, but they show the
business. Nothing here takes input from the request beyond the path.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from throttle.middleware import MIDDLEWARE_SCOPE_KEY, ThrottleMiddleware
from throttle.opsstate import MINUTE, Minute, OpsState, summed

_HOUR_MINUTES = 60
_DAY_MINUTES = 1440
_DAY_STEP_MINUTES = 15
_TOP = 10
_RELOADS_SHOWN = 10
# A stream ends after this long and the browser opens another (EventSource reconnects by
# itself): no connection outlives a server's graceful shutdown by more than this.
_STREAM_SECONDS = 30.0
# One read of the state serves every viewer of this worker for this long.
_FRESH_SECONDS = 1.0
# The whole day is read again this often; in between only the last hour, which is what changes.
_DAY_REREAD_SECONDS = 60.0
_NO_STORE = {"cache-control": "no-store"}
_PAGE = files("throttle").joinpath("dashboard.html").read_text(encoding="utf-8")


def dashboard_routes(*, interval: float = 2.0) -> list[BaseRoute]:
    """The dashboard's routes, for a `Mount` (e.g. under `/ops`) behind `ThrottleMiddleware`.

    - `interval`: seconds between updates the page receives (server-sent events, or polling
      where a proxy holds events back).
    """
    if not interval > 0:
        raise ValueError("dashboard_routes: interval must be above 0")
    cache: weakref.WeakKeyDictionary[OpsState, tuple[float, dict[str, Any]]] = (
        weakref.WeakKeyDictionary()
    )
    days: weakref.WeakKeyDictionary[OpsState, _Day] = weakref.WeakKeyDictionary()

    async def view(ops: OpsState) -> dict[str, Any]:
        now = time.monotonic()
        known = cache.get(ops)
        if known is not None and now - known[0] < _FRESH_SECONDS:
            return known[1]
        day = days.get(ops)
        if day is None:
            day = days[ops] = _Day()
        seen = await summary(ops, await day.minutes(ops))
        cache[ops] = (now, seen)
        return seen

    async def page(request: Request) -> Response:
        if (refusal := _refusal(request)) is not None:
            return refusal
        nonce = secrets.token_urlsafe(16)
        body = _PAGE.replace("{{nonce}}", nonce).replace("{{interval}}", str(interval * 1000))
        return Response(body, media_type="text/html; charset=utf-8", headers=_page_headers(nonce))

    async def data(request: Request) -> Response:
        if (refusal := _refusal(request)) is not None:
            return refusal
        try:
            seen = await view(_ops(request))
        except Exception as error:  # the state's Redis is down: say so, the page shows it
            return JSONResponse({"error": _unreadable(error)}, 503, headers=_NO_STORE)
        return JSONResponse(seen, headers=_NO_STORE)

    async def events(request: Request) -> Response:
        if (refusal := _refusal(request)) is not None:
            return refusal
        headers = {**_NO_STORE, "x-accel-buffering": "no"}
        if request.method == "HEAD":  # nothing to stream for 30 s to a client that reads none
            return Response(media_type="text/event-stream", headers=headers)
        ops = _ops(request)

        async def stream() -> AsyncIterator[bytes]:
            ends = time.monotonic() + _STREAM_SECONDS
            yield b"retry: %d\n\n" % int(interval * 1000)
            while True:
                try:
                    seen = await view(ops)
                except Exception as error:
                    seen = {"error": _unreadable(error)}
                yield b"data: " + json.dumps(seen, separators=(",", ":")).encode() + b"\n\n"
                if time.monotonic() + interval > ends:
                    return
                await asyncio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return [
        Route("/", page, methods=["GET"]),
        Route("/data.json", data, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
    ]


def _page_headers(nonce: str) -> dict[str, str]:
    return {
        **_NO_STORE,
        # Only this page's own script and style run; it talks to its own routes only.
        "content-security-policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
        ),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }


def _refusal(request: Request) -> Response | None:
    middleware = request.scope.get(MIDDLEWARE_SCOPE_KEY)
    if not isinstance(middleware, ThrottleMiddleware) or middleware.ops is None:
        return JSONResponse(
            {
                "error": "the dashboard needs ThrottleMiddleware(..., ops=True) in front of "
                "its routes"
            },
            500,
            headers=_NO_STORE,
        )
    return None


def _ops(request: Request) -> OpsState:
    middleware: ThrottleMiddleware = request.scope[MIDDLEWARE_SCOPE_KEY]
    assert middleware.ops is not None  # checked by _refusal
    return middleware.ops


def _unreadable(error: Exception) -> str:
    return f"the ops state cannot be read right now ({type(error).__name__})"


class _Day:
    """The last day's minutes, read whole once a minute and by its last hour in between: a
    minute older than an hour no longer changes (its workers wrote it long ago)."""

    def __init__(self) -> None:
        self._minutes: list[Minute] = []
        self._read_at = -_DAY_REREAD_SECONDS

    async def minutes(self, ops: OpsState) -> list[Minute]:
        now = ops.now()
        since = now - (_DAY_MINUTES - 1) * MINUTE
        if time.monotonic() - self._read_at >= _DAY_REREAD_SECONDS or not self._minutes:
            self._minutes = await ops.minutes(since, now)
            self._read_at = time.monotonic()
            return self._minutes
        recent = await ops.minutes(now - (_HOUR_MINUTES - 1) * MINUTE, now)
        first = math.floor(since / MINUTE) * MINUTE
        older = [m for m in self._minutes if first <= m.start < recent[0].start]
        self._minutes = older + recent
        return self._minutes


async def summary(ops: OpsState, minutes: list[Minute]) -> dict[str, Any]:
    """What the page shows, from the last day's `minutes`: the last hour by minute, the day by
    quarter hour, the top refusing rules and campaigns, fallbacks by segment, store health,
    reloads, shadow mode."""
    now = ops.now()
    reloads = await ops.reloads()
    workers = await ops.workers()
    hour = minutes[-_HOUR_MINUTES:]
    step = _DAY_STEP_MINUTES
    # Quarter hours aligned on the clock; the first may hold fewer minutes.
    offset = (minutes[0].start // MINUTE) % step
    quarters = [
        summed(minutes[max(0, i) : i + step], minutes[max(0, i)].start)
        for i in range(-offset, len(minutes), step)
    ]
    policy = ops.engine.policy
    return {
        "now": now,
        "worker": ops.worker,
        "shared": ops.shared,
        "policy": {"name": policy.name, "version": policy.version, "mode": policy.policy.mode},
        "shadow_caps": [cap.name for cap in policy.caps if cap.shadow],
        "hour": {"step": MINUTE, **_series(hour), "totals": _totals(summed(hour))},
        "day": {"step": step * MINUTE, **_series(quarters), "totals": _totals(summed(minutes))},
        "reloads": [
            {"at": r.at, "policy": r.policy, "version": r.version, "previous": r.previous}
            for r in reloads[:_RELOADS_SHOWN]
        ],
        "workers": [
            {
                "worker": w.worker,
                "store_failing": w.store_failing,
                "fell_back": w.fell_back,
                "policy": f"{w.policy}@{w.version}",
                "mode": w.mode,
                "seen_ago": max(0.0, round(now - w.seen, 1)),
            }
            for w in workers
        ],
    }


def _series(minutes: list[Minute]) -> dict[str, Any]:
    return {
        "starts": [m.start for m in minutes],
        "personalized": [m.outcomes.get("personalized", 0) for m in minutes],
        "category": [m.fallback_outcomes.get("category", 0) for m in minutes],
        "segment": [m.fallback_outcomes.get("segment", 0) for m in minutes],
        "shadowed": [m.shadowed for m in minutes],
        "store_unavailable": [m.fallback_reasons.get("store-unavailable", 0) for m in minutes],
    }


def _totals(total: Minute) -> dict[str, Any]:
    return {
        "decisions": total.decisions,
        "fallbacks": total.fallbacks,
        "shadowed": total.shadowed,
        "outcomes": total.outcomes,
        "store_unavailable": total.fallback_reasons.get("store-unavailable", 0),
        "reasons": _top(total.fallback_reasons),
        "rules": _top(total.fallback_rules),
        "shadow_rules": _top(total.shadow_rules),
        "campaigns": _rates(total.campaign_fallbacks, total.campaigns),
        "segments": _rates(total.segment_fallbacks, total.segments),
    }


def _top(counts: dict[str, int]) -> list[list[Any]]:
    return [[name, count] for name, count in sorted(counts.items(), key=_by_count)[:_TOP]]


def _rates(fallbacks: dict[str, int], decisions: dict[str, int]) -> list[list[Any]]:
    """[name, fallbacks, decisions], most fallbacks first (for segments: every one)."""
    rows = sorted(((n, fallbacks.get(n, 0), d) for n, d in decisions.items()), key=_by_fallbacks)
    return [list(row) for row in rows]


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def _by_fallbacks(row: tuple[str, int, int]) -> tuple[int, int, str]:
    return -row[1], -row[2], row[0]
