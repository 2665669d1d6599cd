"""The real-time test app, as users run it: `uvicorn tests.realtime_app:app --workers 2`.

Configured by the environment: THROTTLE_TEST_POLICY (a policy file), THROTTLE_TEST_STORE (a
store URL), THROTTLE_SECRET, and THROTTLE_TEST_GO (a file whose existence lets a paused event
stream go on). The WebSocket at /live does what the client asks, one JSON command at a time.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from throttle import ThrottledWebSocket, ThrottleMiddleware, personalization, personalized_event

PERSONAL = "personal-for-the-signed-in-person"
EVERYONE = "best sellers for everyone"


def personal(n: int) -> dict[str, str]:
    return {"offer": f"{PERSONAL}-{n}"}


def asgi_value(value: Any) -> Any:
    """A value from JSON, with `{"bytes": base64}` standing for bytes."""
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return base64.b64decode(value["bytes"])
    if isinstance(value, dict):
        return {key: asgi_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [asgi_value(item) for item in value]
    return value


def outcome(decision: Any) -> dict[str, Any]:
    if decision is None:
        return {"outcome": None, "reason": None}
    return {"outcome": decision.outcome, "reason": decision.reason.value}


async def live(websocket: WebSocket) -> None:
    await websocket.accept()
    throttled = ThrottledWebSocket(websocket)
    try:
        while True:
            command = await websocket.receive_json()
            n = command.get("n", 0)
            if command["do"] == "marked":
                decision = await throttled.send_json(
                    personal(n),
                    segment={"offer": EVERYONE} if command.get("segment", True) else None,
                    marker=personalization(command.get("campaign", "live"), segment="eu/de"),
                )
                await websocket.send_json({"ack": n, **outcome(decision)})
            elif command["do"] == "plain":
                await websocket.send_text(command["text"])
            elif command["do"] == "plain-bytes":
                await websocket.send_bytes(base64.b64decode(command["bytes"]))
            elif command["do"] == "envelope":
                message = {"type": "websocket.send", **asgi_value(command["message"])}
                await websocket.send(message)
                await websocket.send_json({"ack": n, **outcome(message.get("throttle.decision"))})
    except WebSocketDisconnect:
        pass


async def events(request: Request) -> Response:
    """`count` marked events, each after an unmarked tick and followed by what the app saw of
    its decision; after `pause` events, waits for the THROTTLE_TEST_GO file."""
    count = int(request.query_params.get("count", "5"))
    pause = int(request.query_params.get("pause", "-1"))
    go = Path(os.environ.get("THROTTLE_TEST_GO", "/nonexistent"))

    async def stream() -> AsyncIterator[bytes]:
        for n in range(count):
            if n == pause:
                for _ in range(3000):  # at most 60 s
                    if os.path.exists(go):  # noqa: ASYNC240 - one stat, in a test app
                        break
                    await asyncio.sleep(0.02)
            yield f"event: tick\ndata: {n}\n\n".encode()
            yield personalized_event(
                personal(n),
                segment={"offer": EVERYONE},
                marker=personalization("live", segment="eu/de"),
                event="offer",
                id=str(n),
                decision_field="decision",
            )
            seen = outcome(request.scope.get("throttle.decision"))
            yield f"event: decided\ndata: {seen['reason']}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


PAGE = """<!DOCTYPE html>
<html><body><pre id="offers"></pre><script>
document.cookie = "test_user=" + new URLSearchParams(location.search).get("as");
const offers = document.getElementById("offers");
const source = new EventSource("/events?count=5");
let decided = 0;
source.addEventListener("offer", (event) => {
  const data = JSON.parse(event.data);
  const reason = data.decision.split(";")[1];
  offers.textContent += [data.offer, reason, event.lastEventId].join("|") + "\\n";
});
source.addEventListener("decided", () => { if (++decided === 5) source.close(); });
</script></body></html>
"""


async def page(request: Request) -> Response:
    """A page whose EventSource shows what a browser's script reads of each event."""
    return HTMLResponse(PAGE)


class TestUser(AuthenticationBackend):
    """Test-only sign-in: the X-Test-User header (or, from a browser, the test_user cookie)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-test-user") or conn.cookies.get("test_user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def build() -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/live", live), Route("/events", events), Route("/", page)],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=TestUser()),
            Middleware(
                ThrottleMiddleware,
                policy=os.environ["THROTTLE_TEST_POLICY"],
                store=os.environ.get("THROTTLE_TEST_STORE", "memory://"),
                reload_interval=None,
            ),
        ],
    )


app = build() if "THROTTLE_TEST_POLICY" in os.environ else None
