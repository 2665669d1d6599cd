"""Store faults: a short pause after a failure, and one log line per burst of them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from throttle.errors import StoreUnavailable

logger = logging.getLogger(__name__)
# A store that answers late this many times in a row is paused; one late answer is not a fault.
TIMEOUTS_TO_TRIP = 3

T = TypeVar("T")


class StoreGuard:
    """Runs store calls; after a failure, fails fast for `retry_after` seconds.

    A dead Redis must cost the app's requests nothing, and must not fill its logs: the first
    failure of a burst is logged, the rest are counted, and the recovery is logged with the count.
    A store that cannot be reached or answers with an error about itself is paused at once; one
    that answers late is paused only after `TIMEOUTS_TO_TRIP` late answers in a row, so a burst
    on a busy machine does not pause it for everyone. The engine asks `available()` before a
    decision and reports `succeeded()` or `failed()` (the store times decisions itself, as it
    batches them); other calls go through `run`.
    """

    def __init__(self, *, retry_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self._clock = clock
        self._paused_until = 0.0
        self._failures = 0
        # When (by `clock`) the current burst of failures began; None while the store answers.
        self.failing_since: float | None = None
        self._late = 0
        # The last late answer counted: decisions that shared one late batch share its error,
        # and count as one late answer.
        self._last_late: BaseException | None = None
        # For metrics: told of every failure heard of, and of every change of `failing`.
        self.on_failure: Callable[[BaseException], None] | None = None
        self.on_state: Callable[[bool], None] | None = None

    @property
    def failing(self) -> bool:
        return self._failures > 0

    @property
    def fell_back(self) -> int:
        """Decisions made without the store in the current burst of failures (0 when fine)."""
        return self._failures

    def available(self) -> bool:
        """Whether to try the store now; a call skipped during a pause counts as a failure."""
        if self._failures and self._clock() < self._paused_until:
            self._failures += 1
            return False
        return True

    def succeeded(self) -> None:
        self._late = 0
        if self._failures:
            logger.warning(
                "throttle: store answers again; %d decisions fell back meanwhile",
                self._failures,
                extra={"fell_back": self._failures},
            )
            self._failures = 0
            self.failing_since = None
            if self.on_state is not None:
                self.on_state(False)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, TimeoutError):
            if error is self._last_late:
                return
            self._last_late = error
            if self.on_failure is not None:
                self.on_failure(error)
            self._late += 1
            if self._late < TIMEOUTS_TO_TRIP and not self._failures:
                return  # late once: this decision falls back, the store stays in use
            self._failed(str(error) or "no answer in time")
        else:
            if self.on_failure is not None:
                self.on_failure(error)
            self._failed(_describe(error))

    async def run(
        self,
        call: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for calls without their own
        **kwargs: Any,
    ) -> T:
        if not self.available():
            raise StoreUnavailable("store paused after a failure")
        try:
            if timeout is None:
                result = await call(*args, **kwargs)
            else:
                async with asyncio.timeout(timeout):
                    result = await call(*args, **kwargs)
        except TimeoutError as error:
            self.failed(error)
            raise StoreUnavailable("store timed out") from None
        except Exception as error:  # refused connections, Redis error replies, broken answers
            self.failed(error)
            raise StoreUnavailable(str(error)) from error
        self.succeeded()
        return result

    def _failed(self, why: str) -> None:
        if not self._failures:
            self.failing_since = self._clock()
            logger.warning(
                "throttle: store unavailable (%s); deciding by the policy's on_error rule "
                "and retrying every %.1f s",
                why,
                self.retry_after,
                extra={"why": why, "retry_after": self.retry_after},
            )
            if self.on_state is not None:
                self.on_state(True)
        self._failures += 1
        self._late = 0
        self._paused_until = self._clock() + self.retry_after


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class LogLimiter:
    """Logs a message once per `interval` for each key, so bad input cannot flood the logs."""

    def __init__(
        self,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        log: logging.Logger | None = None,
    ) -> None:
        self._log = log or logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}

    def warning(
        self,
        key: str,
        message: str,
        *args: object,
        exc_info: bool = False,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Log `message` unless `key` was logged within `interval`; `extra`'s facts go along
        with `about`, the key, for a JSON formatter."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return
        if len(self._last) >= 1024:
            self._last.clear()
        self._last[key] = now
        facts = {"about": key} if extra is None else {"about": key, **extra}
        self._log.warning(message, *args, exc_info=exc_info, extra=facts)
