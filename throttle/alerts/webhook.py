"""Posting alerts to a webhook, off the decision path.

Alerts wait in a bounded queue and one background task posts them, one at a time, as JSON.
An attempt that fails (no connection, a timeout, a 5xx, 408 or 429) is tried again after
`backoff`, doubling each time, up to `attempts` in all; a 4xx is not tried again. When the
queue is full, a new alert is dropped and logged. Nothing here can slow or fail a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from throttle.errors import ConfigurationError
from throttle.policy import webhook_shown

logger = logging.getLogger(__name__)

QUEUE_SIZE = 64
_RETRIED = frozenset({408, 429})
_MAX_BACKOFF = 60.0


def httpx_module() -> Any:
    """httpx, which posts alerts; a webhook needs the `alerts` extra that brings it."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - the test environment has httpx
        raise ConfigurationError(
            "alerts.webhook needs httpx: pip install 'throttle-asgi[alerts]'"
        ) from None
    return httpx


class WebhookSender:
    """Posts alerts to `url` from a background task; `send` never waits."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        attempts: int,
        backoff: float,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._httpx = httpx_module()
        self._queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def send(self, body: Mapping[str, Any]) -> bool:
        """Queue an alert for posting; False (and a log line) when the queue is full."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.error(
                "throttle: alert %s dropped: %d alerts already wait for %s",
                body.get("alert"),
                self._queue.qsize(),
                webhook_shown(self.url),
                extra={"alert_key": body.get("key"), "webhook": webhook_shown(self.url)},
            )
            return False
        return True

    async def _run(self) -> None:
        async with self._httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            headers={"user-agent": "throttle-alerts"},
        ) as client:
            while True:
                body = await self._queue.get()
                try:
                    await self._post(client, body)
                finally:
                    self._queue.task_done()

    async def _post(self, client: Any, body: Mapping[str, Any]) -> None:
        delay = self.backoff
        why = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = await client.post(self.url, json=body)
            except self._httpx.HTTPError as error:
                why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            else:
                if response.is_success:
                    self.delivered += 1
                    return
                why = f"answered {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRIED:
                    break
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
        self.failed += 1
        logger.error(
            "throttle: alert %s not delivered to %s after %d attempts: %s",
            body.get("alert"),
            webhook_shown(self.url),
            attempt,
            why,
            extra={
                "alert_key": body.get("key"),
                "webhook": webhook_shown(self.url),
                "attempts": attempt,
                "why": why,
            },
        )

    async def aclose(self, grace: float = 2.0) -> None:
        """Give queued alerts `grace` seconds to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
