"""The live side of alerts: watches one engine, and delivers what its policy's `[alerts]` ask.

Each worker runs one monitor, a background task that every `tick` seconds:
- reads the rate counts and applies `rates.risen` to each rate condition: the fleet's, from
  the shared ops state (`throttle.opsstate`) when the middleware keeps one and the policy
  counts per minute; otherwise this process's own, counted here;
- looks at the engine's store guard for a store failing longer than a condition's `after`;
- takes the reloads its policy watcher refused since the last tick;
then claims each alert's quiet period (`quiet.QuietPeriods`) and, if this worker got it,
writes the alert to the log and queues it for the webhook. The decision path only counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from throttle.alerts.quiet import QuietPeriods
from throttle.alerts.rates import Bucket, LocalCounts, SharedCounts, kept_buckets, risen
from throttle.alerts.webhook import WebhookSender
from throttle.engine import Engine
from throttle.faults import LogLimiter
from throttle.observe import Observation
from throttle.opsstate import OpsState
from throttle.policy import (
    RATE_KINDS,
    AlertCondition,
    Alerts,
    Policy,
    format_duration,
    webhook_shown,
)

logger = logging.getLogger(__name__)

# Ticks are never longer than this, so a quiet period or a failing store is noticed in time,
# nor shorter, so that tiny test windows do not spin.
_LONGEST_TICK = 10.0
_SHORTEST_TICK = 0.2
# How many reload refusals wait for the next tick, at most.
_REFUSALS_KEPT = 16
# After another worker claimed an alert, this one does not ask again for this share of the
# quiet period.
_ASK_AGAIN_SHARE = 0.25


class RateSource(Protocol):
    """Where rate counts come from: this process's (`LocalCounts`) or the fleet's."""

    async def read(self, first: int, last: int) -> Mapping[int, Bucket]: ...


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: the condition that fired, what it is about, and its figures.

    `key` (the condition and its subject) is what the quiet period is kept by.
    """

    condition: str
    kind: str
    subject: str
    summary: str
    per: str | None = None
    figures: Mapping[str, float | int | str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.condition}:{self.per or self.kind}:{self.subject}"

    def body(self, policy: Policy, at: float) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {
            "alert": self.condition,
            "kind": self.kind,
            "key": self.key,
            "per": self.per,
            "subject": self.subject,
            "summary": self.summary,
            "figures": dict(self.figures),
            "policy": f"{policy.name}@{policy.version}",
            "at": dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds"),
            "quiet_seconds": policy.alerts.quiet,
        }


def tick_seconds(alerts: Alerts) -> float:
    """How often a monitor looks: half the shortest thing it must notice, within bounds."""
    spans = [alerts.resolution]
    spans += [c.after for c in alerts.conditions if c.kind == "store-failing"]
    return max(_SHORTEST_TICK, min(_LONGEST_TICK, min(spans) / 2))


class AlertMonitor:
    """Watches `engine` for the conditions of its policy's `[alerts]` table.

    ```python
    monitor = AlertMonitor(engine)
    monitor.start()            # in the running event loop: the background task
    ...
    await monitor.aclose()     # queued alerts get a moment to go out
    ```
    `reload_rejected` is what a `PolicyWatcher` calls when it refuses an edit.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        lock_dir: Path | None = None,
        ops: OpsState | None = None,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._monotonic = monotonic
        alerts = engine.policy.alerts
        self.counts = LocalCounts(alerts.resolution, kept_buckets(alerts))
        self.shared = SharedCounts(ops) if ops is not None else None
        self.source: RateSource = self.counts
        self._counting = False
        self._observing = False
        prefix = getattr(engine.store, "prefix", "")
        self.quiet = QuietPeriods(
            engine.store,
            namespace=f"{engine.policy.source}\0{prefix}",
            lock_dir=lock_dir,
            clock=clock,
        )
        self._shape: tuple[float, int] | None = None
        self._follow(alerts)
        self._refusals: list[tuple[str, str, str]] = []
        self._asked_until: dict[str, float] = {}
        self._sender: WebhookSender | None = None
        self._sender_for: tuple[object, ...] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._logs = LogLimiter(log=logger)
        self.fired: list[Alert] = []

    @property
    def started(self) -> bool:
        return self._task is not None

    def _observe(self, observation: Observation) -> None:
        if self._counting:
            self.counts.add(observation.decision, observation.segment, self._clock())

    def reload_rejected(self, source: str, kept_version: str, why: str) -> None:
        """A hot reload of `source` was refused; the policy `kept_version` stays in force."""
        if len(self._refusals) < _REFUSALS_KEPT:
            self._refusals.append((source, kept_version, why))
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Start the background task in the running event loop (once)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._wake))

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a monitor's fault must never stop the app, nor its alerts
                self._logs.warning("tick", "throttle: evaluating alerts failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), tick_seconds(self.engine.policy.alerts))
            wake.clear()

    async def tick(self) -> list[Alert]:
        """Evaluate every condition once and deliver what fired; returns what this worker
        delivered (the others are another worker's, or in their quiet period)."""
        policy = self.engine.policy
        alerts = policy.alerts
        self._follow(alerts)
        refusals, self._refusals = self._refusals, []
        found: list[Alert] = []
        now = self._clock()
        current = int(now // alerts.resolution)
        buckets = await self._buckets(alerts, current)
        for condition in alerts.conditions:
            if condition.kind in RATE_KINDS:
                found += self._rates(alerts, condition, buckets, current)
            elif condition.kind == "store-failing":
                found += self._store_failing(condition)
            else:
                found += [_reload_alert(condition, *refusal) for refusal in refusals]
        delivered = []
        for alert in found:
            if await self._claim(alert, alerts.quiet):
                self._deliver(alert, policy, now)
                delivered.append(alert)
        return delivered

    def read_from(self, ops: OpsState) -> None:
        """Read rates from the fleet's shared ops state (when the policy counts per minute)."""
        self.shared = SharedCounts(ops)
        self._shape = None
        self._follow(self.engine.policy.alerts)

    def _follow(self, alerts: Alerts) -> None:
        """A reload may change the bucket length or how many buckets the conditions read, and
        with them where the counts come from."""
        shape = (alerts.resolution, kept_buckets(alerts))
        if shape == self._shape:
            return
        self._shape = shape
        self.counts.reshape(*shape)
        shared = self.shared is not None and alerts.resolution == self.shared.resolution
        self.source = self.shared if shared and self.shared is not None else self.counts
        # This process counts only for itself, and only while a condition reads the counts;
        # until one does, decisions do not even call it.
        self._counting = shape[1] > 1 and self.source is self.counts
        if self._counting and not self._observing:
            self.engine.observe(self._observe)
            self._observing = True

    async def _buckets(self, alerts: Alerts, current: int) -> Mapping[int, Bucket]:
        """Every bucket the rate conditions read, up to `current`; none when the source cannot
        be read (the shared state lives in the store, which may be what is failing)."""
        span = self._shape[1] if self._shape is not None else 1
        if span <= 1:
            return {}
        try:
            async with asyncio.timeout(max(1.0, self.engine.policy.store.timeout)):
                return await self.source.read(current - span + 2, current)
        except Exception as error:
            self._logs.warning(
                "read",
                "throttle: alert rates cannot be read now (%s); rate conditions wait",
                f"{type(error).__name__}: {error}",
            )
            return {}

    def _rates(
        self,
        alerts: Alerts,
        condition: AlertCondition,
        buckets: Mapping[int, Bucket],
        current: int,
    ) -> list[Alert]:
        return [
            Alert(
                condition.name,
                condition.kind,
                rise.subject,
                rise.summary(),
                per=rise.per,
                figures=rise.figures(),
            )
            for rise in risen(alerts, condition, buckets, current)
        ]

    def _store_failing(self, condition: AlertCondition) -> list[Alert]:
        since = self.engine.guard.failing_since
        if since is None:
            return []
        seconds = self._monotonic() - since
        if seconds < condition.after:
            return []
        on_error = self.engine.policy.store.on_error
        return [
            Alert(
                condition.name,
                condition.kind,
                "store",
                f"the store has failed for {seconds:.0f} s without answering once (longer than "
                f"{format_duration(condition.after)}); decisions fall back by store.on_error "
                f"({on_error})",
                figures={"failing_seconds": round(seconds, 1), "after_seconds": condition.after},
            )
        ]

    async def _claim(self, alert: Alert, quiet: float) -> bool:
        now = self._monotonic()
        if now < self._asked_until.get(alert.key, -1.0):
            return False
        claimed = await self.quiet.claim(alert.key, quiet)
        if not claimed:
            logger.info(
                "throttle alert %s (%s): in its quiet period, delivered before or by another "
                "worker",
                alert.condition,
                alert.subject,
                extra={"alert": alert.condition, "alert_key": alert.key},
            )
        if len(self._asked_until) >= 4096:
            self._asked_until.clear()
        self._asked_until[alert.key] = now + (quiet if claimed else quiet * _ASK_AGAIN_SHARE)
        return claimed

    def _deliver(self, alert: Alert, policy: Policy, now: float) -> None:
        self.fired.append(alert)
        del self.fired[:-100]
        alerts = policy.alerts
        logger.warning(
            "throttle alert %s: %s",
            alert.condition,
            alert.summary,
            extra={
                "alert": alert.condition,
                "alert_kind": alert.kind,
                "alert_key": alert.key,
                "per": alert.per,
                "subject": alert.subject,
                "figures": dict(alert.figures),
                "policy_version": policy.version,
                "webhook": webhook_shown(alerts.webhook) if alerts.webhook else None,
            },
        )
        sender = self._sender_of(alerts)
        if sender is not None:
            sender.send(alert.body(policy, now))

    def _sender_of(self, alerts: Alerts) -> WebhookSender | None:
        wanted = (alerts.webhook, alerts.timeout, alerts.attempts, alerts.backoff)
        if wanted != self._sender_for:
            if self._sender is not None:
                # The old sender finishes what it holds on its own.
                closing = asyncio.get_running_loop().create_task(self._sender.aclose())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            self._sender = (
                WebhookSender(
                    alerts.webhook,
                    timeout=alerts.timeout,
                    attempts=alerts.attempts,
                    backoff=alerts.backoff,
                )
                if alerts.webhook is not None
                else None
            )
            self._sender_for = wanted
        return self._sender

    async def aclose(self, grace: float = 2.0) -> None:
        """Stop watching; alerts already queued get `grace` seconds to go out."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sender is not None:
            await self._sender.aclose(grace)


def _reload_alert(condition: AlertCondition, source: str, kept: str, why: str) -> Alert:
    # A refusal reads "policy X cannot be used:" and then one problem a line.
    lines = why.strip().splitlines()
    problem = lines[1].strip() if len(lines) > 1 else why.strip()
    return Alert(
        condition.name,
        condition.kind,
        source,
        f"a hot reload refused the edited policy {source}; policy @{kept} stays in force: "
        f"{problem}",
        figures={"kept_version": kept, "problems": why.strip()},
    )
