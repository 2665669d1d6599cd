"""The app tests/test_alerts_uvicorn.py serves with `uvicorn tests.alerts_app:app --workers 2`.

Its environment names the policy file and the Redis. Its clock runs `ALERTS_SPEED` times as
fast as the wall clock from `ALERTS_EPOCH` on, so that minutes of alert windows pass in
seconds; the store's own timeouts and the quiet periods keep real time.
"""

from __future__ import annotations

import logging
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.apps import storefront

EPOCH = float(os.environ["ALERTS_EPOCH"])
SPEED = float(os.environ["ALERTS_SPEED"])

logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(name)s %(message)s")


def fast_clock() -> float:
    return EPOCH + (time.time() - EPOCH) * SPEED


class WorkerHeader:
    """Says which worker answered, so the test knows both got traffic."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-worker", self.pid)]}
            await send(message)

        await self.app(scope, receive, send_with_pid if scope["type"] == "http" else send)


app = WorkerHeader(
    storefront(
        policy=os.environ["ALERTS_POLICY"],
        store=os.environ["ALERTS_REDIS"],
        secret="alerts-test-secret-0123456789",
        reload_interval=0.2,
        clock=fast_clock,
    )
)
