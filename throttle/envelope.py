"""What an app sends on a real-time channel: a marked WebSocket message, a marked event.

A marked message carries its marker and both of its versions, and the middleware sends only
the one the decision allows, as it does with a marked HTTP response.

**WebSocket**: a `websocket.send` ASGI message with extra keys (never seen by the client):

    {"type": "websocket.send",
     "text": personalized,                  # or "bytes": the personalized version
     "personalization": marker,             # the Personalization header's value (str or bytes)
     "segment_text": segment,               # or "segment_bytes"; absent: fallback content
     "media_type": "application/json",      # optional: what the fallback provider is asked for
     "decision_field": "decision"}          # optional: put the decision in a JSON object

Messages without a `"personalization"` key pass untouched. The middleware writes the
decision into the app's message dict under `"throttle.decision"`, so the sender reads it after
`await send(message)`; `ThrottledWebSocket` does so.

**Server-sent events**: an event in a `text/event-stream` response with extra fields (which
the middleware removes, and an `EventSource` would ignore):

    personalization: campaign="live", segment="eu/de"
    data: {"offer": "shoes for ana"}
    segment: {"offer": "best sellers"}
    decision-field: decision
    event: offer

Refused, the event goes out with its `segment` lines as its `data`. `personalized_event`
builds one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from throttle.faults import LogLimiter

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from throttle.decision import Decision

# Keys of a marked `websocket.send` message.
MARKER_KEY = "personalization"
SEGMENT_TEXT_KEY = "segment_text"
SEGMENT_BYTES_KEY = "segment_bytes"
MEDIA_TYPE_KEY = "media_type"
DECISION_FIELD_KEY = "decision_field"
# Where the middleware writes the decision in the app's message (the scope uses the same name).
MESSAGE_DECISION_KEY = "throttle.decision"
# Set in a WebSocket's scope by the middleware: marked messages sent on it will be decided.
REALTIME_SCOPE_KEY = "throttle.realtime"

# Fields of a marked server-sent event.
MARKER_FIELD = b"personalization"
SEGMENT_FIELD = b"segment"
DECISION_FIELD_FIELD = b"decision-field"
# What the middleware adds to a decided event when the policy sends decisions.
DECISION_EVENT_FIELD = b"personalization-decision"

_logs = LogLimiter(log=logging.getLogger(__name__))


def marker_value(marker: object) -> bytes | None:
    """A marker as the header's bytes: from `personalization(...)`'s headers, a str or bytes."""
    if isinstance(marker, Mapping):
        values = [v for k, v in marker.items() if isinstance(k, str) and k.lower() == MARKER_KEY]
        marker = values[0] if len(values) == 1 else None
    if isinstance(marker, str):
        try:
            return marker.encode("ascii")
        except UnicodeEncodeError:
            return None
    if isinstance(marker, bytes | bytearray):
        return bytes(marker)
    return None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False)


def personalized_event(
    personalized: object,
    *,
    marker: Mapping[str, str] | str,
    segment: object = None,
    event: str | None = None,
    id: str | None = None,
    decision_field: str | None = None,
) -> bytes:
    """One marked server-sent event, to yield from a `StreamingResponse` of `text/event-stream`.

    ```python
    async def offers(request):
        async def events():
            async for offer in live_offers(request.user):
                yield personalized_event(
                    offer.for_person,
                    segment=offer.for_everyone,
                    marker=personalization("live-offers", signals=["purchase_history"]),
                    event="offer",
                )
        return StreamingResponse(events(), media_type="text/event-stream")
    ```
    - `personalized`, `segment`: a str, or anything `json.dumps` takes; `segment=None` lets
      the fallback provider (or the policy's content) stand in.
    - `marker`: `personalization(...)`'s headers, or the header's value.
    - `decision_field`: name of a field the middleware adds to a JSON object's `data`, saying
      the decision (`"segment;reason=frequency-cap;..."`), when the policy sends decisions.

    Raises `MarkerError` when the marker cannot be carried, `ValueError` when `event`, `id` or
    `decision_field` holds a line break.
    """
    from throttle.errors import MarkerError

    value = marker_value(marker)
    if value is None or b"\n" in value or b"\r" in value:
        raise MarkerError("marker: give personalization(...)'s headers or the header's value")
    for name, text in (("event", event), ("id", id), ("decision_field", decision_field)):
        if text is not None and ("\n" in text or "\r" in text):
            raise ValueError(f"{name}: a server-sent event field cannot hold a line break")
    lines = [MARKER_FIELD + b": " + value]
    lines += [b"data: " + line.encode() for line in _text(personalized).splitlines() or [""]]
    if segment is not None:
        lines += [SEGMENT_FIELD + b": " + line.encode() for line in _text(segment).splitlines()]
    if decision_field is not None:
        lines.append(DECISION_FIELD_FIELD + b": " + decision_field.encode())
    if event is not None:
        lines.append(b"event: " + event.encode())
    if id is not None:
        lines.append(b"id: " + id.encode())
    return b"\n".join(lines) + b"\n\n"


class ThrottledWebSocket:
    """Sends marked messages on a Starlette `WebSocket`; each returns its decision.

    ```python
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        throttled = ThrottledWebSocket(websocket)
        async for offer in live_offers(websocket.user):
            decision = await throttled.send_json(
                offer.for_person,
                segment=offer.for_everyone,
                marker=personalization("live-offers", segment="eu/de"),
            )
    ```
    Unmarked messages go through `websocket.send_json` and the like, untouched. Without
    `ThrottleMiddleware` in front of the app, a marked message is never sent personalized: its
    segment version goes (nothing when it has none), an error is logged, and `None` returned.
    """

    def __init__(self, websocket: WebSocket, *, decision_field: str | None = None) -> None:
        self.websocket = websocket
        self.decision_field = decision_field

    async def send_json(
        self, personalized: Any, *, marker: Mapping[str, str] | str, segment: Any = None
    ) -> Decision | None:
        """Send `personalized` or `segment` (`None`: the fallback's), each as JSON text."""
        message: dict[str, Any] = {
            "type": "websocket.send",
            "text": json.dumps(personalized, separators=(",", ":"), ensure_ascii=False),
            MARKER_KEY: marker_value(marker),
            MEDIA_TYPE_KEY: "application/json",
        }
        if segment is not None:
            message[SEGMENT_TEXT_KEY] = json.dumps(
                segment, separators=(",", ":"), ensure_ascii=False
            )
        return await self._send(message)

    async def send_text(
        self, personalized: str, *, marker: Mapping[str, str] | str, segment: str | None = None
    ) -> Decision | None:
        """Send `personalized` or `segment` (`None`: the fallback's) as a text message."""
        message = {"type": "websocket.send", "text": personalized, MARKER_KEY: marker_value(marker)}
        if segment is not None:
            message[SEGMENT_TEXT_KEY] = segment
        return await self._send(message)

    async def send_bytes(
        self,
        personalized: bytes,
        *,
        marker: Mapping[str, str] | str,
        segment: bytes | None = None,
    ) -> Decision | None:
        """Send `personalized` or `segment` (`None`: the fallback's) as a binary message."""
        message = {
            "type": "websocket.send", "bytes": personalized, MARKER_KEY: marker_value(marker)
        }  # fmt: skip
        if segment is not None:
            message[SEGMENT_BYTES_KEY] = segment
        return await self._send(message)

    async def _send(self, message: dict[str, Any]) -> Decision | None:
        if self.decision_field is not None:
            message[DECISION_FIELD_KEY] = self.decision_field
        if not self.websocket.scope.get(REALTIME_SCOPE_KEY):
            _logs.warning(
                "unthrottled",
                "throttle: a marked WebSocket message on an app without ThrottleMiddleware in "
                "front; sending its segment version only",
            )
            segment = {
                key: message[name]
                for key, name in (("text", SEGMENT_TEXT_KEY), ("bytes", SEGMENT_BYTES_KEY))
                if name in message
            }
            if segment:
                await self.websocket.send({"type": "websocket.send", **segment})
            return None
        await self.websocket.send(message)
        decision: Decision | None = message.get(MESSAGE_DECISION_KEY)
        return decision
