"""Prometheus metrics of decisions, the store, the fault guard and the policy; `/metrics`.

```python
from starlette.routing import Route
from throttle.metrics import metrics_app

app = Starlette(routes=[..., Route("/metrics", metrics_app())])
app.add_middleware(ThrottleMiddleware, policy="policies/default.toml", metrics=True)
```

Labels come from closed sets only: outcomes and reasons are enums; rules are the policy's cap
names, its special categories and throttle's own rule names; campaigns are those the policy
names (`fallback.content`) and those given to `Metrics(campaigns=...)`; channels are `web`,
`email`, `push`, `sms`, `app`, the policy's quiet-hours channels and those given. Anything
else counts as `other`, so no id, pseudonym or free-form name a response carries can become a
label, and a label set stays bounded whatever the app sends.

Under several worker processes (`uvicorn --workers N`, gunicorn), set `PROMETHEUS_MULTIPROC_DIR`
to an empty directory before the server starts: prometheus-client then keeps each process's
values in files there, and `/metrics`, whichever worker answers, adds them up. See
docs/metrics.md for why this mode, and how each gauge is combined across processes.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import logging
import multiprocessing
import os
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

try:
    import prometheus_client
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
except ImportError as error:  # pragma: no cover - the metrics extra is not installed
    raise ImportError(
        "throttle.metrics needs prometheus-client: pip install 'throttle-asgi[metrics]'"
    ) from error
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from throttle.decision import Reason
from throttle.engine import Engine
from throttle.errors import ConfigurationError, StoreUnavailable
from throttle.faults import LogLimiter
from throttle.message import DECISIONS, cached_markers
from throttle.observe import Observation
from throttle.policy import Policy
from throttle.reload import PolicyWatcher

__all__ = [
    "LiveProcessesCollector",
    "Metrics",
    "MetricsEndpoint",
    "fault_kind",
    "flush",
    "instrument",
    "metrics_app",
]

logger = logging.getLogger(__name__)

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
NONE = "none"
DEFAULT_CHANNELS = ("web", "email", "push", "sms", "app")
# Past these many names, the rest count as "other": a label's values stay few.
MAX_CAMPAIGNS = 100
MAX_CHANNELS = 20
MAX_RULES = 200
_MAX_LABEL_LENGTH = 100
# throttle's own rule names; caps and special categories add the policy's.
RULES = (
    "creepiness.threshold", "creepiness.budget", "creepiness.category_band", "consent.gpc",
    "consent.tcf", "consent.anonymous", "level.off", "level.minimal", "quiet_hours", "calculus",
    "store.on_error", "marker", *(f"decides.{decides}" for decides in DECISIONS),
)  # fmt: skip
FAULT_KINDS = ("timeout", "connection", "server", "unavailable", "other")
RELOAD_RESULTS = ("applied", "refused")
# Decisions take from tens of microseconds (no store) to the store's timeout.
SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# What the decision path counted is written into the metrics (and cache sizes read) this long
# after the first decision since the last time: a scrape sees it at most this late.
FLUSH_SECONDS = 1.0


class _Instruments:
    """The metrics themselves, once per registry (prometheus-client refuses a name twice)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "throttle_decisions",
            "Decisions made, by outcome, reason, rule, campaign and channel (bounded sets).",
            ["outcome", "reason", "rule", "campaign", "channel", "shadow"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "throttle_decision_seconds",
            "Time to decide one message, the store's round trip included.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.store_round_trip = Histogram(
            "throttle_store_round_trip_seconds",
            "Time from a batch of decisions leaving for Redis to its replies.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.store_batch = Histogram(
            "throttle_store_batch_decisions",
            "Decisions carried by one write to Redis.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "throttle_store_errors",
            "Store failures the fault guard heard of, by kind.",
            ["kind"],
            registry=registry,
        )
        # Each process's guard is its own: summed, this is how many processes are failing.
        self.guard_failing = Gauge(
            "throttle_store_guard_failing",
            "Processes whose store guard is in a burst of failures (decisions skip the store).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Not an Info metric: those do not work in multiprocess mode. 1 for the version a
        # live process runs (any of them), 0 for one it ran before.
        self.policy = Gauge(
            "throttle_policy_info",
            "The policy in force: 1 for the name and version a live process decides with.",
            ["policy", "version"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "throttle_policy_reloads",
            "Edited policy files looked at, by result.",
            ["result"],
            registry=registry,
        )
        # The largest of any live process: what comes near its bound.
        self.cache_entries = Gauge(
            "throttle_cache_entries",
            "Entries in a per-process memory (a memory at its bound starts again).",
            ["cache"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.cache_max_entries = Gauge(
            "throttle_cache_max_entries",
            "The bound of a per-process memory.",
            ["cache"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.marker_cache_bytes = Gauge(
            "throttle_marker_cache_bytes",
            "Bytes held by parsed markers cached in a process.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.marker_cache_max_bytes = Gauge(
            "throttle_marker_cache_max_bytes",
            "The budget of the parsed-marker cache.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        for kind in FAULT_KINDS:  # present at 0, so a rate or an alert has a series to read
            self.store_errors.labels(kind)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)


_instruments: dict[CollectorRegistry, _Instruments] = {}


def _instruments_in(registry: CollectorRegistry) -> _Instruments:
    known = _instruments.get(registry)
    if known is None:
        _check_multiprocess()
        known = _instruments[registry] = _Instruments(registry)
    return known


class Metrics:
    """What to measure of an engine's decisions and where to register it.

    ```python
    app.add_middleware(
        ThrottleMiddleware,
        policy="policies/default.toml",
        metrics=Metrics(campaigns=["spring-sale", "winter-sale"], channels=["kiosk"]),
    )
    ```
    - `campaigns`: campaigns counted under their own name, besides those the policy names
      (`fallback.content`); every other campaign counts as `other`. At most 100 in all.
    - `channels`: likewise, besides `web`, `email`, `push`, `sms`, `app` and the policy's
      quiet-hours channels. At most 20 in all.
    - `registry`: prometheus-client's registry to register in (default: its global one, which
      `metrics_app()` serves). In multiprocess mode the values go to the shared directory
      whatever the registry.
    - `spans`: put each decision's attributes on the current OpenTelemetry span; `None` (the
      default): when `opentelemetry-api` is installed.

    `ThrottleMiddleware(metrics=True)` uses `Metrics()`.
    """

    def __init__(
        self,
        *,
        campaigns: Iterable[str] = (),
        channels: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
        spans: bool | None = None,
    ) -> None:
        self.campaigns = tuple(_names("campaigns", campaigns))
        self.channels = tuple(_names("channels", channels))
        self.registry = REGISTRY if registry is None else registry
        self.spans = spans

    def __repr__(self) -> str:
        return (
            f"Metrics(campaigns={self.campaigns!r}, channels={self.channels!r}, "
            f"spans={self.spans!r})"
        )

    def instrument(self, engine: Engine, *, watchers: Iterable[PolicyWatcher] = ()) -> None:
        """Measure `engine`'s decisions, its store and guard, and the reloads of `watchers`
        (the policy files' and each market's; once per engine and registry: a second call
        changes nothing)."""
        from throttle import tracing

        if self.spans and not tracing.available():
            raise ConfigurationError(
                "spans=True needs opentelemetry-api: pip install 'throttle-asgi[tracing]'"
            )
        measured = _measured.setdefault(engine, set())
        if self.registry in measured:
            return
        measured.add(self.registry)
        tools = _instruments_in(self.registry)
        logs = LogLimiter(log=logger)
        recorder = _Recorder(engine, tools, self, logs)
        engine.observe(recorder.decided)
        guard = engine.guard
        guard.on_failure = _safely(
            logs, lambda error: tools.store_errors.labels(fault_kind(error)).inc()
        )
        guard.on_state = _safely(logs, lambda failing: tools.guard_failing.set(int(failing)))
        tools.guard_failing.set(int(guard.failing))
        if hasattr(engine.store, "on_batch"):  # a store that batches decisions (Redis)
            setattr(engine.store, "on_batch", _safely(logs, recorder.batch))  # noqa: B010
        for watcher in watchers:
            watcher.on_result = _safely(logs, lambda result: tools.reloads.labels(result).inc())
        if self.spans is not False and tracing.available():
            engine.observe(tracing.annotate)


# The registries each engine is measured in.
_measured: weakref.WeakKeyDictionary[Engine, set[CollectorRegistry]] = weakref.WeakKeyDictionary()


def instrument(
    engine: Engine,
    *,
    watchers: Iterable[PolicyWatcher] = (),
    campaigns: Iterable[str] = (),
    channels: Iterable[str] = (),
    registry: CollectorRegistry | None = None,
    spans: bool | None = None,
) -> Metrics:
    """Measure an engine used without the middleware: `Metrics(...).instrument(engine)`."""
    metrics = Metrics(campaigns=campaigns, channels=channels, registry=registry, spans=spans)
    metrics.instrument(engine, watchers=watchers)
    return metrics


def fault_kind(error: BaseException) -> str:
    """A store failure's kind, a label: `timeout`, `connection`, `server` (an error reply
    about the server: OOM, READONLY, ...), `unavailable` (the store refused to try: closed,
    or waiting out `retry_after`) or `other`."""
    cause = error.__cause__ if isinstance(error, StoreUnavailable) else None
    seen = cause if cause is not None else error
    if isinstance(seen, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(seen, ResponseError) or (
        isinstance(seen, StoreUnavailable) and str(seen).startswith("Redis: ")
    ):
        return "server"
    if isinstance(seen, OSError | RedisConnectionError):
        return "connection"
    if isinstance(seen, StoreUnavailable):
        return "unavailable"
    return OTHER


class _Vocabulary:
    """The label values of the policies in force (the default's and each market's): each name
    they (or the Metrics) give, the rest `other`."""

    def __init__(self, policies: Sequence[Policy], metrics: Metrics) -> None:
        named = [c for policy in policies for c in policy.fallback.content if c != "*"]
        self.campaigns = _closed_set([*metrics.campaigns, *named], MAX_CAMPAIGNS)
        quiet = [
            channel
            for policy in policies
            if policy.quiet_hours is not None
            for channel in policy.quiet_hours.channels
        ]
        self.channels = _closed_set([*DEFAULT_CHANNELS, *metrics.channels, *quiet], MAX_CHANNELS)
        specials = [f"special.{category}" for policy in policies for category in policy.special]
        caps = [cap.name for policy in policies for cap in policy.caps]
        self.rules = _closed_set([*RULES, *specials, *caps], MAX_RULES)
        dropped = [
            kind
            for kind, given, kept in (
                ("campaigns", named, self.campaigns),
                ("rules", caps, self.rules),
            )
            if any(name not in kept for name in given)
        ]
        if dropped:
            names = sorted({policy.name for policy in policies})
            logger.warning(
                "throttle: metrics count some %s of policy %s as 'other' (too many, or names "
                "too long)",
                " and ".join(dropped),
                ", ".join(names),
                extra={"labels": dropped, "policies": names},
            )

    def labels(
        self,
        outcome: str,
        reason: Reason,
        rule: str | None,
        campaign: str | None,
        channel: str | None,
        shadow: bool,
    ) -> tuple[str, ...]:
        return (
            outcome,
            reason.value,
            _label(self.rules, rule),
            _label(self.campaigns, campaign),
            _label(self.channels, channel),
            "true" if shadow else "false",
        )


_DecisionKey = tuple[str, Reason, str | None, str | None, str | None, bool]


class _Recorder:
    """Counts an engine's decisions and its store's batches as plain numbers on the decision
    path, and writes them into the metrics at most every `FLUSH_SECONDS` (and at each scrape
    of this process, and at exit): a metric's own update takes microseconds (a lock, and in
    multiprocess mode a write to a shared file), an addition here a fraction of one."""

    def __init__(self, engine: Engine, tools: _Instruments, metrics: Metrics, logs: LogLimiter):
        self._engine = engine
        self._tools = tools
        self._metrics = metrics
        self._logs = logs
        self._policies = engine.policies
        self._vocabulary = _Vocabulary(self._policies, metrics)
        for policy in self._policies:
            tools.policy.labels(policy.name, policy.version).set(1)
        # Decisions by their label sources (outcome, reason, rule, campaign, channel, shadow).
        self._decisions: dict[_DecisionKey, int] = {}
        self._seconds = _Observations(tools.decision_seconds)
        self._batches = _Observations(tools.store_batch)
        self._round_trips = _Observations(tools.store_round_trip)
        self._flush_scheduled = False
        _recorders.add(self)
        self._write_caches()

    def decided(self, observation: Observation) -> None:
        decision = observation.decision
        key: _DecisionKey = (
            decision.outcome, decision.reason, decision.rule, decision.campaign,
            decision.channel, decision.shadow,
        )  # fmt: skip
        decisions = self._decisions
        decisions[key] = decisions.get(key, 0) + 1
        self._seconds.add(observation.seconds)
        if not self._flush_scheduled:
            self._schedule_flush()

    def batch(self, decisions: int, seconds: float) -> None:
        self._batches.add(decisions)
        self._round_trips.add(seconds)
        if not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a decision outside an event loop: written at once
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write what was counted since the last time into the metrics."""
        self._flush_scheduled = False
        try:
            policies = self._engine.policies
            if policies is not self._policies:
                self._policies_changed(policies)
            decisions, self._decisions = self._decisions, {}
            counter, vocabulary = self._tools.decisions, self._vocabulary
            labelled: dict[tuple[str, ...], int] = {}
            for key, count in decisions.items():
                labels = vocabulary.labels(*key)
                labelled[labels] = labelled.get(labels, 0) + count
            for labels, count in labelled.items():
                counter.labels(*labels).inc(count)
            self._seconds.flush()
            self._batches.flush()
            self._round_trips.flush()
            self._write_caches()
        except Exception:  # a metric must never cost a decision
            self._logs.warning("flush", "throttle: writing metrics failed", exc_info=True)

    def _policies_changed(self, policies: tuple[Policy, ...]) -> None:
        info = self._tools.policy
        now = {(policy.name, policy.version) for policy in policies}
        for policy in self._policies:
            if (policy.name, policy.version) not in now:
                info.labels(policy.name, policy.version).set(0)
        for name, version in now:
            info.labels(name, version).set(1)
        self._policies = policies
        self._vocabulary = _Vocabulary(policies, self._metrics)

    def _write_caches(self) -> None:
        tools = self._tools
        for name, (entries, bound) in self._engine.cache_sizes().items():
            tools.cache_entries.labels(name).set(entries)
            tools.cache_max_entries.labels(name).set(bound)
        markers, held, budget = cached_markers()
        tools.cache_entries.labels("markers").set(markers)
        tools.marker_cache_bytes.set(held)
        tools.marker_cache_max_bytes.set(budget)


# Every recorder alive, so that a scrape and the process's exit write what they counted.
_recorders: weakref.WeakSet[_Recorder] = weakref.WeakSet()


def flush() -> None:
    """Write what this process's engines counted since their last flush into the metrics
    (they do so by themselves within `FLUSH_SECONDS`, before a scrape and at exit)."""
    for recorder in list(_recorders):
        recorder.flush()


atexit.register(flush)


class _Observations:
    """Observations of a histogram, counted by bucket until they are written into it."""

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        # The histogram's bounds, +Inf last: bisect finds the first bound >= a value, as
        # `Histogram.observe` does.
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def add(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        # What `observe` does for one value, for many at once: each bucket's count and the sum.
        histogram = self._histogram
        for bucket, count in zip(histogram._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        histogram._sum.inc(total)


def _safely(logs: LogLimiter, call: Callable[..., None]) -> Callable[..., None]:
    """`call`, whose failure is logged (once a minute) instead of reaching the store's path."""

    def safely(*args: Any) -> None:
        try:
            call(*args)
        except Exception:
            logs.warning("metric", "throttle: updating a metric failed", exc_info=True)

    return safely


def _label(known: dict[str, str], value: str | None) -> str:
    return NONE if value is None else known.get(value, OTHER)


def _closed_set(names: Iterable[str], limit: int) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name in names:
        if len(kept) >= limit:
            break
        if _usable(name):
            kept.setdefault(name, name)
    return kept


def _usable(name: str) -> bool:
    return 0 < len(name) <= _MAX_LABEL_LENGTH and name.isprintable() and name not in (OTHER, NONE)


def _names(what: str, names: Iterable[str]) -> list[str]:
    given = [names] if isinstance(names, str) else list(names)
    for name in given:
        if not isinstance(name, str) or not _usable(name):
            raise ConfigurationError(
                f"Metrics({what}=...): {name!r} cannot be a label; give names of 1 to "
                f"{_MAX_LABEL_LENGTH} printable characters, other than {OTHER!r} and {NONE!r}"
            )
    return given


# /metrics


def metrics_app(registry: CollectorRegistry | None = None) -> MetricsEndpoint:
    """The ASGI app that serves the metrics, for `Route("/metrics", metrics_app())`.

    In multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` set) it adds up every process's values
    from the shared directory, whichever worker answers; otherwise it serves `registry`
    (prometheus-client's global one by default). Text format, or OpenMetrics when the
    scraper asks for it. A directory that is missing, or set too late, stops start-up.
    """
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    if directory:
        _check_multiprocess()
        served = CollectorRegistry()
        LiveProcessesCollector(served, directory)
        return MetricsEndpoint(served)
    return MetricsEndpoint(REGISTRY if registry is None else registry)


class MetricsEndpoint:
    """Serves a registry's metrics to GET and HEAD; collecting runs in a thread, since in
    multiprocess mode it reads every process's file."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(
                send, 405, b"Method Not Allowed", b"text/plain", [(b"allow", b"GET, HEAD")]
            )
            return
        flush()  # this process's latest; the other processes' are at most FLUSH_SECONDS old
        encoder, content_type = choose_encoder(Headers(scope=scope).get("accept", ""))
        body = await run_in_threadpool(encoder, self.registry)
        await _answer(send, 200, b"" if scope["method"] == "HEAD" else body, content_type.encode(),
                      [(b"cache-control", b"no-store")], length=len(body))  # fmt: skip


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    length: int | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % (len(body) if length is None else length)),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LiveProcessesCollector(MultiProcessCollector):
    """prometheus-client's multiprocess collector, which first forgets the live-mode gauges of
    processes that are gone: uvicorn has no hook for a dead worker (gunicorn's `child_exit`
    is where prometheus-client's docs call `mark_process_dead`), so it is done at scrape
    time. Counters and histograms of dead processes are kept, so totals never go back."""

    def __init__(self, registry: CollectorRegistry | None, path: str) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]
        self.path = path

    def collect(self) -> Any:
        for file in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            pid = file[: -len(".db")].rpartition("_")[2]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), self.path)  # type: ignore[no-untyped-call]
        return super().collect()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


_warned = False


def _check_multiprocess() -> None:
    """Multiprocess mode set up so that it works, or start-up stops saying why; several
    worker processes without it, a warning (each would count on its own)."""
    global _warned
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    multiprocess = getattr(prometheus_client.values.ValueClass, "_multiprocess", False)
    if directory:
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise ConfigurationError(
                f"{MULTIPROCESS_DIRECTORY}={directory!r} is not a writable directory: create "
                "it (empty) before the server starts"
            )
        if not multiprocess:
            raise ConfigurationError(
                f"{MULTIPROCESS_DIRECTORY} was set after prometheus_client was imported: set "
                "it in the server's environment, before it starts"
            )
    elif multiprocessing.parent_process() is not None and not _warned:
        _warned = True
        logger.warning(
            "throttle: metrics in a worker process without %s: each worker counts on its "
            "own and /metrics shows one of them; set it to an empty directory before the "
            "server starts",
            MULTIPROCESS_DIRECTORY,
            extra={"variable": MULTIPROCESS_DIRECTORY},
        )
