"""Which alerts a trace would have fired: the policy's rate conditions on the trace's clock.

The same counts and the same rule as the live monitor (`throttle.alerts.rates`), evaluated at
the end of each bucket, with each alert's quiet period kept in trace time. The store never
fails in a replay and nothing is reloaded, so only rate conditions can fire here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from throttle.alerts.rates import LocalCounts, Rise, kept_buckets, risen
from throttle.observe import Observation
from throttle.policy import RATE_KINDS, Policy


@dataclass(frozen=True, slots=True)
class FiredAlert:
    """An alert the replay would have delivered at trace time `t`."""

    t: float
    rise: Rise

    @property
    def key(self) -> str:
        return f"{self.rise.condition.name}:{self.rise.per}:{self.rise.subject}"


class AlertReplay:
    """An engine observer that counts decisions and evaluates a policy's rate conditions."""

    def __init__(self, policy: Policy, clock: Callable[[], float]) -> None:
        self.alerts = policy.alerts
        self.conditions = [c for c in self.alerts.conditions if c.kind in RATE_KINDS]
        self.counts = LocalCounts(self.alerts.resolution, kept_buckets(self.alerts))
        self._clock = clock
        self._evaluated = -1  # the last bucket evaluated
        self._longest = max((self.alerts.buckets(c.window) for c in self.conditions), default=1)
        self._quiet_until: dict[str, float] = {}
        self.fired: list[FiredAlert] = []

    @property
    def active(self) -> bool:
        return bool(self.conditions)

    def __call__(self, observation: Observation) -> None:
        now = self._clock()
        number = int(now // self.alerts.resolution)
        if self._evaluated < 0:
            self._evaluated = number - 1
        self._close_until(number)
        self.counts.add(observation.decision, observation.segment, now)

    def finish(self) -> None:
        """Evaluate the last bucket of the trace."""
        if self._evaluated >= 0:
            self._close_until(self._evaluated + 2)

    def _close_until(self, number: int) -> None:
        """Evaluate each bucket that ended before bucket `number`: after a gap, only those
        whose window still reaches a bucket with decisions."""
        last = number - 1
        first = max(self._evaluated + 1, last - self._longest + 1)
        for closed in range(first, last + 1):
            self._evaluate(closed)
        self._evaluated = max(self._evaluated, last)

    def _evaluate(self, closed: int) -> None:
        at = (closed + 1) * self.alerts.resolution
        for condition in self.conditions:
            for rise in risen(self.alerts, condition, self.counts.buckets, closed):
                fired = FiredAlert(at, rise)
                if at < self._quiet_until.get(fired.key, -1.0):
                    continue
                self._quiet_until[fired.key] = at + self.alerts.quiet
                self.fired.append(fired)
