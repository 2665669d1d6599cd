"""The app the metrics tests serve with `uvicorn tests.metrics_server:app --workers N`: the test
storefront with metrics on and /metrics mounted; each response names the worker that made it.
The store's URL comes from `THROTTLE_TEST_STORE`, the secret from `THROTTLE_SECRET`."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.apps import ROUTES, HeaderUser
from tests.helpers import NO_REPETITION, policy
from throttle import ThrottleMiddleware
from throttle.metrics import metrics_app

THREE_AN_HOUR = policy(
    '[[caps]]\nname = "three-an-hour"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
    + NO_REPETITION
    + '[fallback.content."spring-sale"]\nbody = "{}"\n'
)
WORKER_HEADER = b"x-worker-pid"


class WorkerPid:
    """Says which worker process answered, so a test knows every worker took part."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (WORKER_HEADER, self.pid)]}
            await send(message)

        await self.app(scope, receive, send_with_pid if scope["type"] == "http" else send)


app = Starlette(
    routes=[*ROUTES, Route("/metrics", metrics_app())],
    middleware=[
        Middleware(WorkerPid),
        Middleware(AuthenticationMiddleware, backend=HeaderUser()),
        Middleware(
            ThrottleMiddleware,
            policy=THREE_AN_HOUR,
            store=os.environ["THROTTLE_TEST_STORE"],
            metrics=True,
        ),
    ],
)
