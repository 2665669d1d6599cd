"""The pure ASGI adapter: finds marked responses, asks the engine, rewrites what leaves.

Unmarked responses stream through untouched. For a marked one the decision is made on its
`http.response.start`, before any body is sent: personalized content then streams through
as well; segment content replaces it, and the personalized body is discarded unread.
WebSocket messages and server-sent events are decided one by one (`throttle.realtime`).
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from throttle.alerts import AlertMonitor, httpx_module
from throttle.consent import gpc_opt_out, tcf_purposes
from throttle.decision import Decision
from throttle.engine import Engine
from throttle.envelope import REALTIME_SCOPE_KEY
from throttle.errors import ConfigurationError, MarkerError, ThrottleError
from throttle.fallback import (
    FallbackProvider,
    FallbackRequest,
    SegmentContent,
    empty_document,
    policy_content,
)
from throttle.faults import LogLimiter
from throttle.markets import MarketSet, MarketWatcher, check_market, load_markets, market_sources
from throttle.message import parse_marker
from throttle.opsstate import OpsConfig, OpsState
from throttle.policy import RATE_KINDS, Policy, load_given_policy, policy_files
from throttle.realtime import EventStream, SocketSender, is_event_stream
from throttle.reload import PolicyWatcher
from throttle.store import Store, open_store

if TYPE_CHECKING:
    from throttle.client import ThrottleClient
    from throttle.metrics import Metrics

DECISION_SCOPE_KEY = "throttle.decision"
# The market whose policy decided (None: the default policy), for the app and outer middleware.
MARKET_SCOPE_KEY = "throttle.market"
GPC_JSON_PATH = "/.well-known/gpc.json"
# The middleware itself, for routes behind it (the privacy routes) to reach its engine.
MIDDLEWARE_SCOPE_KEY = "throttle"
DECISION_HEADER = "personalization-decision"
_DECISION_HEADER = DECISION_HEADER.encode("ascii")
_MARKER_HEADER = b"personalization"
_MIN_SECRET_BYTES = 16
# Headers that say nothing about the body they came with, so segment content may keep them.
_NEUTRAL_HEADERS = frozenset(
    {
        "cache-control", "vary", "date", "server", "content-language",
        "strict-transport-security", "content-security-policy",
        "content-security-policy-report-only", "x-content-type-options", "x-frame-options",
        "referrer-policy", "permissions-policy", "cross-origin-opener-policy",
        "cross-origin-embedder-policy", "cross-origin-resource-policy",
        "access-control-allow-origin", "access-control-allow-credentials",
        "access-control-expose-headers",
    }
)  # fmt: skip

logger = logging.getLogger(__name__)

Identify = Callable[[Scope], "str | int | None"]
# Longest id `identify` may return: an email address is at most 254 characters, a UUID 36.
MAX_ID_LENGTH = 1024
# An int of at most this many bits has at most MAX_ID_LENGTH digits.
_MAX_ID_BITS = 3401
TimeZone = Callable[[Scope], "str | None"]
ChooseMarket = Callable[[Scope], "str | None"]
TIME_ZONE_HEADER = "time-zone"


def authenticated_user(scope: Scope) -> str | None:
    """The default `identify`: Starlette's authenticated `scope["user"]`, else nobody."""
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        identity = user.identity
    except NotImplementedError:
        identity = user.display_name
    if isinstance(identity, int) and not isinstance(identity, bool):
        return str(identity)
    return identity if isinstance(identity, str) else None


def time_zone_header(scope: Scope) -> str | None:
    """The default `time_zone`: the request's `Time-Zone` header, an IANA name such as
    `Europe/Berlin` (a page sets it from `Intl.DateTimeFormat().resolvedOptions().timeZone`).

    It only moves the person's own calendar days and quiet hours; a name the machine does not
    know counts as the policy's zone.
    """
    return Headers(scope=scope).get(TIME_ZONE_HEADER)


class ThrottleMiddleware:
    """Keeps personalized responses within a policy's caps, creepiness and consent rules.

    ```python
    app.add_middleware(
        ThrottleMiddleware,
        policy="policies/default.toml",
        store="redis://127.0.0.1:6379/0",
        identify=lambda scope: scope["user"].identity,
        secret=os.environ["THROTTLE_SECRET"],
    )
    ```
    - `policy`: a policy file's path, or a base file and overrides in layer order, or a `Policy`.
    - `store`: `"memory://"` (one process, the default) or `"redis://…"`, or a `Store`.
    - `identify(scope) -> str | None`: who the response is for; by default the authenticated
      Starlette user. Never anything the client could forge.
    - `secret`: key of the hash that replaces user ids in the store; defaults to the
      `THROTTLE_SECRET` environment variable. Required with Redis.
    - `fallback`: an async callable giving segment content for a `FallbackRequest`.
    - `time_zone(scope) -> str | None`: the person's IANA time zone, for calendar caps and
      quiet hours; by default the request's `Time-Zone` header, else the policy's zone.
    - `reload_interval`: how often, in seconds, to look for an edited policy file (`None`: never).
      A valid edit takes effect without a restart; an invalid one is logged and ignored.
    - `clock`: seconds since the epoch; tests and simulations pass their own.
    - `freeze_gc`: once the app has started (lifespan), `gc.freeze()` the objects start-up made,
      so full garbage collections skip them and stay short (the p99 tail under load); `False`
      leaves the collector alone.
    - `markets`: policies per market, each layered on `policy`: a directory of override files
      (one market per file, named by its stem) or a mapping of market names to files or
      `Policy` objects (see `throttle.markets`).
    - `market(scope) -> str | None`: which market a request belongs to; `None`, an unknown name
      (logged) or an exception (logged) gets the default `policy`. A `str` names one market
      for every request, checked at start-up.
    - `ops`: `True` or an `OpsConfig` keeps the shared ops state (`self.ops`, an `OpsState`)
      that the dashboard and alerts read: per-minute counts of decisions, reloads, store health.
      A policy with rate alerts keeps it whatever `ops` says (its campaigns named by `ops`).
    - `metrics`: `True` (or a `throttle.metrics.Metrics` saying what to count) measures
      decisions, the store and reloads in Prometheus metrics; serve them with
      `throttle.metrics.metrics_app()`. Needs the `metrics` extra (prometheus-client).

    A policy, store or secret that cannot be used raises `PolicyError` or `ConfigurationError`.
    When a framework builds the middleware itself (Starlette's and FastAPI's
    `build_middleware_stack`, which runs on the first ASGI event: under uvicorn, the lifespan
    startup, where an exception reads as "lifespan unsupported" and every request then fails),
    the error is kept instead and reported as `lifespan.startup.failed`, so the server stops at
    start-up with the message. Without a lifespan (`--lifespan off`), every request is
    answered 503 and the error logged, at most once a minute; nothing is served unchecked.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: str | Path | Sequence[str | Path] | Policy,
        store: str | Store = "memory://",
        identify: Identify | None = None,
        secret: str | bytes | None = None,
        fallback: FallbackProvider | None = None,
        time_zone: TimeZone | None = None,
        reload_interval: float | None = 2.0,
        clock: Callable[[], float] = time.time,
        freeze_gc: bool = True,
        markets: MarketSet | None = None,
        market: str | ChooseMarket | None = None,
        ops: bool | OpsConfig = False,
        metrics: bool | Metrics = False,
    ) -> None:
        self.app = app
        self.ops: OpsState | None = None
        self.freeze_gc = freeze_gc
        # Why this middleware cannot work, when a framework built it and start-up must say so.
        self.refusal: str | None = None
        self._refusal_logged = -math.inf
        self.identify = identify or authenticated_user
        self.market = market
        try:
            _refuse_async(self.identify)
            _refuse_async(market, "market")
            self._configure(policy, store, secret, reload_interval, clock, markets)
            if ops is not False or _counts_rates(self.engine.policy):
                # Rate alerts read the fleet's counts from the ops state, so they keep one.
                self.ops = OpsState(self.engine, ops if isinstance(ops, OpsConfig) else None,
                                    clock=clock)  # fmt: skip
                self.ops.reloaded(None, self.engine.policy)
                self.alerts.read_from(self.ops)
            if metrics:
                watchers = [] if self._watcher is None else [self._watcher]
                if self._market_watcher is not None:
                    watchers += self._market_watcher.watchers
                _instrument(self.engine, watchers, metrics)
        except Exception as error:
            if not _built_by_a_framework():
                raise
            kind = "" if isinstance(error, ThrottleError) else f"{type(error).__name__}: "
            self.refusal = f"throttle cannot start: {kind}{error}"
        self.time_zone = time_zone or time_zone_header
        self.fallback = fallback
        self._logs = LogLimiter(log=logger)
        self._kept: dict[int, tuple[Policy, frozenset[bytes]]] = {}
        self._headers: dict[tuple[object, ...], bytes] = {}
        self._reported: set[tuple[str, str]] = set()
        self._client: ThrottleClient | None = None

    def _configure(
        self,
        policy: str | Path | Sequence[str | Path] | Policy,
        store: str | Store,
        secret: str | bytes | None,
        reload_interval: float | None,
        clock: Callable[[], float],
        markets: MarketSet | None,
    ) -> None:
        loaded = load_given_policy(policy)
        base = policy_files(policy)
        self._watcher = (
            PolicyWatcher(base, loaded, interval=reload_interval)
            if reload_interval is not None and base is not None
            else None
        )
        by_market, self._market_watcher = self._markets(base, markets, reload_interval)
        _alerts_in_base_only(loaded, by_market)
        opened = open_store(store) if isinstance(store, str) else store
        self.engine = Engine(
            loaded, opened, secret=secret_key(secret, opened), clock=clock, markets=by_market
        )
        if loaded.alerts.webhook is not None:
            httpx_module()  # a webhook that could never be posted to stops start-up
        self.alerts = AlertMonitor(self.engine, clock=clock)
        if self._watcher is not None:
            self._watcher.on_refused = self.alerts.reload_rejected
        if self._market_watcher is not None and base is not None:
            self._market_watcher.on_refused = _unless_in(base, self.alerts.reload_rejected)

    def _markets(
        self, base: tuple[Path, ...] | None, markets: MarketSet | None, interval: float | None
    ) -> tuple[dict[str, Policy], MarketWatcher | None]:
        if markets is None:
            if self.market is not None:
                raise ConfigurationError("market: give markets= too, the policies it chooses")
            return {}, None
        if self.market is None:
            raise ConfigurationError("markets: give market= too, to choose one per request")
        sources = market_sources(markets)
        loaded = load_markets(base, sources)
        if not callable(self.market):
            check_market(self.market, list(loaded))
        watcher = (
            MarketWatcher(base, sources, loaded, interval=interval)
            if interval is not None and base is not None
            else None
        )
        return loaded, watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.refusal is not None:
            await self._refuse(scope, receive, send)
            return
        if scope["type"] == "http":
            if scope["path"] == GPC_JSON_PATH:
                support = self.engine.policy.consent.gpc_json
                if support is not None:
                    await _gpc_json(scope, send, support.last_update)
                    return
            if not self.alerts.started:  # without a lifespan, the first request starts it
                self.alerts.start()
            scope[MIDDLEWARE_SCOPE_KEY] = self
            await self.app(scope, receive, _Responder(self, scope, send))
        elif scope["type"] == "websocket":
            if not self.alerts.started:  # or the first socket, on a service of sockets alone
                self.alerts.start()
            scope[MIDDLEWARE_SCOPE_KEY] = self
            scope[REALTIME_SCOPE_KEY] = True
            await self.app(scope, receive, SocketSender(self, scope, send))
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stop the server at start-up; without a lifespan, serve nothing unchecked."""
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": self.refusal})
            return
        now = time.monotonic()
        if now - self._refusal_logged >= 60.0:
            self._refusal_logged = now
            logger.error(
                "%s; answering 503 (the server runs without a lifespan)",
                self.refusal,
                extra={"refusal": self.refusal},
            )
        if scope["type"] == "http":
            body = b"Service Unavailable"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"retry-after", b"60"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                if self.ops is not None:
                    self.ops.start()
                self.alerts.start()
                if self.freeze_gc:
                    # What start-up made lives as long as the process: keeping it out of the
                    # collector's sight makes every full collection, a latency spike, cheaper.
                    gc.freeze()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.alerts.aclose()
                if self.ops is not None:
                    await self.ops.aclose()
                await self.engine.aclose()
            await send(message)

        return send_and_close

    @property
    def client(self) -> ThrottleClient:
        """A `ThrottleClient` on this middleware's engine, for sends outside a response (email,
        push, a job the request queues): the same caps and budget per person."""
        if self._client is None:
            from throttle.client import ThrottleClient  # the client builds on this module

            self._client = ThrottleClient.from_middleware(self)
        return self._client

    def _reload(self) -> None:
        if self._watcher is None:
            return
        try:
            reloaded = self._watcher.poll()
        except Exception:  # never let a policy edit cost a request
            self._logs.warning("reload", "throttle: policy reload failed", exc_info=True)
            return
        if reloaded is not None:
            previous = self.engine.policy
            self.engine.policy = reloaded
            if self.ops is not None:
                self.ops.reloaded(previous, reloaded)
        if self._market_watcher is not None:
            try:
                changed = self._market_watcher.poll()
            except Exception:  # never let a policy edit cost a request
                self._logs.warning("reload", "throttle: policy reload failed", exc_info=True)
                return
            for name, policy in changed.items():
                previous = self.engine.policy_for(name)
                self.engine.set_market(name, policy)
                if self.ops is not None:
                    self.ops.reloaded(previous, policy)

    async def decide(self, scope: Scope, marker_value: bytes) -> Decision:
        if self._watcher is not None or self._market_watcher is not None:
            self._reload()
        person = self.person(scope)
        market = scope[MARKET_SCOPE_KEY] = self.market_of(scope)
        try:
            marker = parse_marker(marker_value)
        except MarkerError as error:
            self._logs.warning(
                "marker",
                "throttle: invalid Personalization header: %s",
                error,
                extra={"error": str(error)},
            )
            return self.engine.invalid_marker(person, market)
        try:
            headers = scope.get("headers", ())
            gpc = gpc_opt_out(headers)
            purposes, unreadable = tcf_purposes(headers)
            if unreadable is not None:
                self._logs.warning(
                    "tcf",
                    "throttle: unreadable euconsent-v2 cookie: %s",
                    unreadable,
                    extra={"error": unreadable},
                )
            zone = self.zone(scope) if self.engine.uses_time_zones else None
            decision = await self.engine.decide(
                marker, person=person, gpc=gpc, zone=zone, purposes=purposes, market=market
            )
        except Exception:
            self._logs.warning("decide", "throttle: deciding failed", exc_info=True)
            return self.engine.internal_error(market)
        if decision.unknown_signals:
            self._report_unknown(decision)
        return decision

    def _report_unknown(self, decision: Decision) -> None:
        for signal in decision.unknown_signals:
            key = (decision.policy_version, signal)
            if key not in self._reported:
                if len(self._reported) >= 1024:
                    self._reported.clear()
                self._reported.add(key)
                logger.warning(
                    "throttle: signal %r has no weight in policy %s; scored at default_signal",
                    signal,
                    decision.policy,
                    extra={
                        "signal": signal,
                        "policy": decision.policy,
                        "version": decision.policy_version,
                    },
                )

    def market_of(self, scope: Scope) -> str | None:
        """The request's market, by the app's `market`; `None` for the default policy."""
        choose = self.market
        if choose is None or isinstance(choose, str):
            return choose
        try:
            chosen: object = choose(scope)
        except Exception:  # the default policy decides; the request goes on
            self._logs.warning("market", "throttle: market() failed", exc_info=True)
            return None
        if chosen is None or isinstance(chosen, str):
            return chosen
        self._logs.warning(
            "market-value",
            "throttle: market() returned a %s, not a str or None; the default policy decides",
            type(chosen).__name__,
            extra={"returned": type(chosen).__name__},
        )
        return None

    def zone(self, scope: Scope) -> str | None:
        """The person's time zone, by the app's `time_zone`; `None` for the policy's."""
        try:
            zone: Any = self.time_zone(scope)
        except Exception:  # the policy's zone stands in; the decision goes on
            self._logs.warning("time_zone", "throttle: time_zone() failed", exc_info=True)
            return None
        return zone if isinstance(zone, str) else None

    def person(self, scope: Scope) -> str | None:
        """Who a request is from, by the app's `identify`; `None` for nobody.

        An id is a non-empty `str` of at most `MAX_ID_LENGTH` characters, or an `int` (not a
        bool) of at most as many digits. Anything else counts as nobody, with a log line: an
        exception, another type, an awaitable (`identify` must be synchronous), an empty or a
        longer id. A long id is never truncated, which could make two people one.
        """
        try:
            returned: object = self.identify(scope)
            if returned is None:
                return None
            person, why = _as_id(returned)
        except Exception:
            self._logs.warning("identify", "throttle: identify() failed", exc_info=True)
            return None
        if person is None:
            self._logs.warning(
                "identify-value",
                "throttle: identify() returned %s; counted as nobody",
                why,
                extra={"why": why},
            )
        return person

    async def segment_content(
        self, scope: Scope, decision: Decision, media_type: str
    ) -> SegmentContent:
        """Content for the decision's segment: the app's provider, the policy's, or an empty one."""
        campaign = decision.campaign or ""
        if self.fallback is not None and decision.campaign is not None:
            request = FallbackRequest(
                campaign=campaign,
                segment=decision.segment or "",
                channel=decision.channel or "web",
                media_type=media_type,
                decision=decision,
                scope=scope,
            )
            try:
                provided = await self.fallback(request)
            except Exception:
                self._logs.warning("fallback", "throttle: fallback provider failed", exc_info=True)
                provided = None
            if provided is not None:
                if _usable(provided):
                    return provided
                self._logs.warning(
                    "fallback-value",
                    "throttle: the fallback provider returned %r, not a SegmentContent with a "
                    "bytes body and an ASCII media type; using the policy's content",
                    type(provided).__name__,
                    extra={"returned": type(provided).__name__},
                )
        policy = self.engine.policy_for(scope.get(MARKET_SCOPE_KEY))
        return policy_content(policy.fallback, campaign) or empty_document(media_type)

    def kept_headers(self, policy: Policy | None = None) -> frozenset[bytes]:
        """Names of the app's headers that segment content keeps under `policy` (by default
        the default policy), lowercased."""
        policy = policy or self.engine.policy
        kept = self._kept.get(id(policy))
        if kept is None or kept[0] is not policy:
            names = _NEUTRAL_HEADERS.union(h.lower() for h in policy.fallback.keep_headers)
            if len(self._kept) >= 64:  # reloads make new policies; the old ones go
                self._kept.clear()
            kept = self._kept[id(policy)] = (
                policy,
                frozenset(name.encode("latin-1") for name in names),
            )
        return kept[1]

    def decision_header(self, decision: Decision) -> bytes:
        """The `Personalization-Decision` value: an RFC 8941 token with parameters."""
        key = (
            decision.outcome, decision.reason, decision.rule, decision.score, decision.segment,
            decision.shadow, decision.policy_version,
        )  # fmt: skip
        value = self._headers.get(key)
        if value is None:
            if len(self._headers) >= 4096:
                self._headers.clear()
            value = self._headers[key] = self._decision_header(decision).encode("ascii")
        return value

    def _decision_header(self, decision: Decision) -> str:
        parts = [f"{decision.outcome};reason={decision.reason.value}"]
        if decision.rule:
            parts.append(f'rule="{decision.rule}"')
        if decision.score is not None:
            parts.append(f"score={decision.score:.3f}")
        if decision.segment is not None:
            parts.append(f'segment="{decision.segment or "*"}"')
        if decision.shadow:
            parts.append("shadow")
        parts.append(f'policy="{decision.policy}@{decision.policy_version}"')
        return ";".join(parts)


async def _gpc_json(scope: Scope, send: Send, last_update: str) -> None:
    """The GPC specification's site resource: this site honours the signal."""
    body = json.dumps({"gpc": True, "lastUpdate": last_update}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"public, max-age=86400"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class _Responder:
    """One response's passage through the middleware."""

    __slots__ = ("discarding", "middleware", "passing", "scope", "send")

    def __init__(self, middleware: ThrottleMiddleware, scope: Scope, send: Send) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send = send
        self.passing = False
        self.discarding = False

    async def __call__(self, message: Message) -> None:
        if self.passing:
            await self.send(message)
        elif self.discarding:
            return
        elif message["type"] != "http.response.start":
            await self.send(message)
        else:
            await self._start(message)

    async def _start(self, message: Message) -> None:
        # Headers may be any iterable of pairs; read them once.
        raw: list[tuple[bytes, bytes]] = list(message.get("headers") or ())
        markers = [value for name, value in raw if name.lower() == _MARKER_HEADER]
        if not markers:
            self.passing = True
            if is_event_stream(raw):  # each marked event is decided on its own
                self.send = EventStream(self.middleware, self.scope, self.send)
                raw = _without_length(raw)
            await self.send({**message, "headers": raw})
            return
        middleware = self.middleware
        decision = await middleware.decide(self.scope, b", ".join(markers))
        self.scope[DECISION_SCOPE_KEY] = decision
        policy = middleware.engine.policy_for(self.scope.get(MARKET_SCOPE_KEY))
        show = policy.decisions.header
        if decision.delivers_personalized:
            headers = []
            cache_control: bytes | None = None
            for name, value in raw:
                lowered = name.lower()
                if lowered == _MARKER_HEADER:
                    continue
                if lowered == b"cache-control":
                    cache_control = _joined(cache_control, value)
                    continue
                headers.append((name, value))
            # One person's content must never sit in a shared cache, whatever the app said.
            headers.append((b"cache-control", _private(cache_control)))
            if show:
                headers.append((_DECISION_HEADER, middleware.decision_header(decision)))
            self.passing = True
            if is_event_stream(raw):
                self.send = EventStream(middleware, self.scope, self.send)
                headers = _without_length(headers)
            await self.send({**message, "headers": headers})
            return

        self.discarding = True
        media_type = "application/octet-stream"
        kept = middleware.kept_headers(policy)
        headers = []
        cache_control = None
        for name, value in raw:
            lowered = name.lower()
            if lowered == b"content-type":
                media_type = value.decode("latin-1")
            elif lowered == b"cache-control":
                cache_control = _joined(cache_control, value)
            elif lowered in kept:
                headers.append((name, value))
        content = await middleware.segment_content(self.scope, decision, media_type)
        status = message["status"]
        # A 304 would let the browser show the personalized copy it holds, and a 206 would
        # promise a range of the personalized body: the segment content goes out whole.
        if status in (304, 206):
            status = 200
        body = content.body
        if status in (204, 205):
            # Neither may carry content (RFC 9110, 15.3.5-6); a 205 says so with a zero length.
            body = b""
            if status == 205:
                headers.append((b"content-length", b"0"))
        else:
            headers += (
                (b"content-type", content.media_type.encode("latin-1")),
                (b"content-length", b"%d" % len(body)),
                (b"etag", content.etag.encode("latin-1")),
            )
        if show:
            # The decision header speaks of one person (their reason, their score), so the
            # response it rides on is theirs alone too.
            headers.append((b"cache-control", _private(cache_control)))
            headers.append((_DECISION_HEADER, middleware.decision_header(decision)))
        elif cache_control is not None:
            headers.append((b"cache-control", cache_control))
        if self.scope.get("method") == "HEAD":
            body = b""
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def _without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An event stream's headers without Content-Length: deciding its events one by one
    changes their length, so the body is sent with the length it ends up with."""
    return [(name, value) for name, value in headers if name.lower() != b"content-length"]


def _joined(earlier: bytes | None, value: bytes) -> bytes:
    """Repeated Cache-Control headers read as one list (RFC 9110, section 5.3)."""
    return value if earlier is None else earlier + b", " + value


def _private(cache_control: bytes | None) -> bytes:
    """The app's Cache-Control with whatever lets a shared cache keep it replaced by `private`."""
    if cache_control is None:
        return b"private"
    directives = [d.strip() for d in cache_control.split(b",") if d.strip()]
    names = [d.split(b"=", 1)[0].strip().lower() for d in directives]
    if b"no-store" in names or b"private" in names:
        return cache_control
    shared = {b"public", b"s-maxage", b"proxy-revalidate"}
    kept = [d for d, name in zip(directives, names, strict=True) if name not in shared]
    return b", ".join([b"private", *kept])


def _usable(content: object) -> bool:
    return (
        isinstance(content, SegmentContent)
        and isinstance(content.body, bytes)
        and isinstance(content.media_type, str)
        and content.media_type.isascii()
        and content.media_type.isprintable()
    )


def _as_id(returned: object) -> tuple[str | None, str]:
    """What `identify` returned as a plain `str`, or `None` and why it is no id."""
    if isinstance(returned, str):
        # A str subclass may override what the engine calls (encode, __hash__): use the str.
        person = str.__str__(returned)
    elif isinstance(returned, int) and not isinstance(returned, bool):
        # Bounded before converting: str() of a huge int is slow, past 4,300 digits an error.
        if int.bit_length(returned) > _MAX_ID_BITS:
            return None, f"an int of more than {MAX_ID_LENGTH} digits"
        person = int.__repr__(returned)
    elif inspect.isawaitable(returned):
        _discard(returned)
        return None, "an awaitable: identify must be a plain function returning the id"
    else:
        return None, f"a {type(returned).__name__}, not a str or an int"
    if not person:
        return None, "an empty id"
    if len(person) > MAX_ID_LENGTH:
        return None, f"an id of {len(person)} characters, more than {MAX_ID_LENGTH}"
    return person, ""


def _alerts_in_base_only(base: Policy, markets: Mapping[str, Policy]) -> None:
    """Alerts watch the whole site, so only the base policy has them: a market's own would be
    a webhook nobody hears, and start-up says so rather than ignore it."""
    for name, policy in markets.items():
        if policy.alerts != base.alerts:
            raise ConfigurationError(
                f"markets: {name!r} has an [alerts] table of its own; alerts watch every "
                "market at once and are read from the base policy: move them there"
            )


def _unless_in(
    base: tuple[Path, ...], listener: Callable[[str, str, str], None]
) -> Callable[[str, str, str], None]:
    """A market watcher's listener that leaves refused edits of the base files to the base's
    own watcher, so that one bad edit raises one alert, not one per market."""
    names = tuple(f"{path}{after}" for path in base for after in (":", " is unreadable"))

    def refused(source: str, kept_version: str, why: str) -> None:
        if not any(line.strip().startswith(names) for line in why.splitlines()):
            listener(source, kept_version, why)

    return refused


def _refuse_async(function: Identify | ChooseMarket | str | None, name: str = "identify") -> None:
    """`identify` and `market` are called on every marked response's path (`identify` by the
    privacy routes too), which cannot await them: a coroutine function is a configuration
    error, not everyone anonymous."""
    call = getattr(function, "__call__", None)  # noqa: B004 - an object's async __call__ too
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call):
        if name == "market":
            raise ConfigurationError(
                "market must be a plain function returning the market's name (or None), not "
                "an async one: read what it needs from the scope (headers, scope['user'])"
            )
        raise ConfigurationError(
            "identify must be a plain function returning the id (str, int or None), not an "
            "async one: read what it needs from the scope (e.g. scope['user'], set by an "
            "authentication middleware that runs before throttle)"
        )


def _discard(awaitable: object) -> None:
    """Close a coroutine nobody will await, so it does not warn when collected."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def _built_by_a_framework() -> bool:
    """Whether the caller of `ThrottleMiddleware(...)` is a framework building its middleware
    stack on the first ASGI event (Starlette and FastAPI name it `build_middleware_stack`)."""
    caller = sys._getframe(2)  # 0: this function, 1: __init__, 2: whoever called the class
    return caller.f_code.co_name == "build_middleware_stack"


def _counts_rates(policy: Policy) -> bool:
    """Whether the policy has alerts on rates, which need the fleet's counts."""
    return any(condition.kind in RATE_KINDS for condition in policy.alerts.conditions)


def _instrument(engine: Engine, watchers: list[PolicyWatcher], metrics: bool | Metrics) -> None:
    try:
        from throttle.metrics import Metrics
    except ImportError as error:
        raise ConfigurationError(
            "metrics=True needs prometheus-client: pip install 'throttle-asgi[metrics]'"
        ) from error
    (metrics if isinstance(metrics, Metrics) else Metrics()).instrument(engine, watchers=watchers)


def secret_key(secret: str | bytes | None, store: Store) -> bytes:
    """The key pseudonyms are made with: `secret`, else $THROTTLE_SECRET; random for a store
    no other process reads; `ConfigurationError` when missing for a shared one, or short."""
    if secret is None:
        secret = os.environ.get("THROTTLE_SECRET") or None
    if secret is None:
        if getattr(store, "shared", True):
            raise ConfigurationError(
                "a shared store needs a secret to pseudonymize user ids: pass secret=... or set "
                "THROTTLE_SECRET (e.g. to the output of: python -c 'import secrets; "
                "print(secrets.token_hex(32))')"
            )
        # The memory store lives and dies with this process, and so may its key.
        return secrets.token_bytes(32)
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < _MIN_SECRET_BYTES:
        raise ConfigurationError(f"the secret must be at least {_MIN_SECRET_BYTES} bytes long")
    return key
