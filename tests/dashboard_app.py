"""An app with the ops dashboard mounted behind its own sign-in, for `uvicorn --workers 2`.

Configured by the environment: DASHBOARD_POLICY (a policy file's path), DASHBOARD_STORE (a
store URL) and THROTTLE_SECRET.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.apps import HeaderUser, offer
from throttle import OpsConfig, ThrottleMiddleware, dashboard_routes

OPS_TEAM = frozenset({"ops"})


class OpsOnly:
    """The app's own rule for the dashboard: only the ops team's accounts may see it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if user is None or not user.is_authenticated or user.display_name not in OPS_TEAM:
            response = JSONResponse({"error": "ops team only"}, 403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


app = Starlette(
    routes=[
        Route("/offer", offer),
        Mount("/ops", app=OpsOnly(Starlette(routes=dashboard_routes(interval=0.5)))),
    ],
    middleware=[
        Middleware(AuthenticationMiddleware, backend=HeaderUser()),
        Middleware(
            ThrottleMiddleware,
            policy=os.environ["DASHBOARD_POLICY"],
            store=os.environ["DASHBOARD_STORE"],
            reload_interval=0,  # every decision looks: the test edits the file and expects it used
            ops=OpsConfig(flush_interval=0.25),
        ),
    ],
)
