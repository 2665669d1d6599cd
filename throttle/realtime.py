"""Per-message decisions on real-time channels: WebSocket messages and server-sent events.

The middleware hands a WebSocket's `send` to a `SocketSender`, and the body of every
`text/event-stream` response to an `EventStream`. Each decides every marked message on its own
(`throttle.envelope` says how one is marked) and sends only the version the decision allows;
unmarked messages pass untouched. Nothing here raises into the app or the server: a store
fault, a bad marker or a broken envelope gets the segment version, or no message at all,
never the personalized one and never a closed socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING

from starlette.types import Message, Scope, Send

from throttle.envelope import (
    DECISION_EVENT_FIELD,
    DECISION_FIELD_FIELD,
    DECISION_FIELD_KEY,
    MARKER_FIELD,
    MARKER_KEY,
    MEDIA_TYPE_KEY,
    MESSAGE_DECISION_KEY,
    SEGMENT_BYTES_KEY,
    SEGMENT_FIELD,
    SEGMENT_TEXT_KEY,
    marker_value,
)
from throttle.faults import LogLimiter

if TYPE_CHECKING:
    from throttle.decision import Decision
    from throttle.middleware import ThrottleMiddleware

EVENT_STREAM = "text/event-stream"
# throttle.middleware.MARKET_SCOPE_KEY (that module imports this one): the deciding market.
MARKET_SCOPE_KEY = "throttle.market"
# A marked event is held whole until its blank line; one longer than this is dropped (marked)
# or passed on as it comes (unmarked), so a stream cannot make the middleware hold unbounded.
MAX_EVENT_BYTES = 1024 * 1024
# Only these fields of a marked event go out: the rest (comments, unknown fields) could carry
# anything, and an EventSource reads nothing else.
_KEPT_FIELDS = frozenset({b"event", b"id", b"retry"})
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BLANK = frozenset({b"\n", b"\r", b"\r\n"})

logger = logging.getLogger(__name__)
_logs = LogLimiter(log=logger)


def is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response's headers say `Content-Type: text/event-stream`."""
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == EVENT_STREAM.encode()
    return False


def with_decision_field(text: str, field: str, decision: str) -> str:
    """A JSON object's text with `field` set to the decision (last, so it wins over the app's)."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return text
    body = stripped[:-1].rstrip()
    entry = json.dumps(field) + ":" + json.dumps(decision)
    return body + ("," if body != "{" else "") + entry + "}"


class SocketSender:
    """A WebSocket's `send` as the app sees it: marked messages decided, the rest untouched."""

    __slots__ = ("middleware", "scope", "send")

    def __init__(self, middleware: ThrottleMiddleware, scope: Scope, send: Send) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send = send

    async def __call__(self, message: Message) -> None:
        if message.get("type") != "websocket.send" or MARKER_KEY not in message:
            await self.send(message)
            return
        try:
            decision, outgoing = await self._decide(message)
        except Exception:  # the socket outlives any failure to decide: nothing is sent
            _logs.warning("socket", "throttle: deciding a WebSocket message failed", exc_info=True)
            market = self.middleware.market_of(self.scope)
            decision, outgoing = self.middleware.engine.internal_error(market), None
        self.scope[MESSAGE_DECISION_KEY] = decision
        with contextlib.suppress(TypeError):  # an immutable mapping: the scope has it too
            message[MESSAGE_DECISION_KEY] = decision
        if outgoing is not None:
            # A new message: the app's still holds the personalized version.
            await self.send(outgoing)

    async def _decide(self, message: Message) -> tuple[Decision, Message | None]:
        middleware = self.middleware
        personalized = _version(message.get("text"), message.get("bytes"))
        marker = marker_value(message[MARKER_KEY])
        if personalized is None or marker is None:
            _logs.warning(
                "envelope",
                "throttle: a marked WebSocket message without a str or bytes body, or with a "
                "marker that is not a str or bytes, is sent as its segment version",
            )
            decision = _unreadable(middleware, self.scope)
        else:
            decision = await middleware.decide(self.scope, marker)
        if decision.delivers_personalized and personalized is not None:
            content: str | bytes | None = personalized
        else:
            content = _version(message.get(SEGMENT_TEXT_KEY), message.get(SEGMENT_BYTES_KEY))
            if content is None:
                content = await self._fallback(decision, message, personalized)
        if content is None:
            return decision, None
        field = message.get(DECISION_FIELD_KEY)
        show = _shows_decisions(middleware, self.scope)
        if isinstance(content, str) and isinstance(field, str) and show:
            shown = middleware.decision_header(decision).decode("ascii")
            content = with_decision_field(content, field, shown)
        if isinstance(content, str):
            return decision, {"type": "websocket.send", "text": content}
        return decision, {"type": "websocket.send", "bytes": content}

    async def _fallback(
        self, decision: Decision, message: Message, personalized: str | bytes | None
    ) -> str | bytes | None:
        """The fallback provider's or the policy's content; `None` (nothing sent) when empty."""
        media_type = message.get(MEDIA_TYPE_KEY)
        if not (isinstance(media_type, str) and media_type.isascii() and media_type.isprintable()):
            binary = isinstance(personalized, bytes)
            media_type = "application/octet-stream" if binary else "text/plain; charset=utf-8"
        content = await self.middleware.segment_content(self.scope, decision, media_type)
        if not content.body:
            return None
        if content.media_type.startswith("application/octet-stream"):
            return content.body
        try:
            return content.body.decode("utf-8")
        except UnicodeDecodeError:
            return content.body


def _unreadable(middleware: ThrottleMiddleware, scope: Scope) -> Decision:
    """The decision on a message whose marker or body cannot be read."""
    market = scope[MARKET_SCOPE_KEY] = middleware.market_of(scope)
    return middleware.engine.invalid_marker(middleware.person(scope), market)


def _shows_decisions(middleware: ThrottleMiddleware, scope: Scope) -> bool:
    """Whether the policy that decided (the market's, or the default) sends decisions."""
    return middleware.engine.policy_for(scope.get(MARKET_SCOPE_KEY)).decisions.header


def _version(text: object, data: object) -> str | bytes | None:
    if isinstance(text, str):
        return str.__str__(text)
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return None


def _lines(text: str) -> list[bytes]:
    """Text as the values of `data` lines: split where a line would end."""
    return [line.encode() for line in re.split(r"\r\n|\r|\n", text)]


def _field(line: bytes) -> bytes:
    """A line's field name (`b""` for a comment); the line ends in its terminator or not."""
    colon = line.find(b":")
    return line[:colon] if colon >= 0 else line.rstrip(b"\r\n")


def _value(line: bytes) -> bytes:
    """A line's value: after the colon and one space, without the terminator."""
    colon = line.find(b":")
    if colon < 0:
        return b""
    value = line[colon + 1 :].rstrip(b"\r\n")
    return value[1:] if value.startswith(b" ") else value


class EventStream:
    """The body of a `text/event-stream` response: marked events decided, the rest untouched.

    Events are read line by line (CR, LF or CRLF ends a line; a blank line ends an event) and
    each is held until it ends, so its marker may be on any line. Unmarked events leave byte for
    byte as they came, chunked where they end; an EventSource acts on an event only at its end.
    """

    _HOLD, _PASS, _DROP = 0, 1, 2

    __slots__ = ("held", "held_size", "mid_line", "middleware", "mode", "pending", "scope", "send")

    def __init__(self, middleware: ThrottleMiddleware, scope: Scope, send: Send) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send = send
        self.mode = self._HOLD
        self.held: list[bytes] = []
        self.held_size = 0
        # Bytes of a line not yet complete (or ending in a CR that an LF may follow).
        self.pending = bytearray()
        # Passing or dropping a line whose start has gone (or been dropped) already.
        self.mid_line = False

    async def __call__(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        more = bool(message.get("more_body", False))
        try:
            out = await self._feed(bytes(message.get("body") or b""), end=not more)
        except Exception:  # never break the stream: what was held is dropped, the stream goes on
            _logs.warning("events", "throttle: reading an event stream failed", exc_info=True)
            self.mode, self.held, self.held_size, self.pending = self._DROP, [], 0, bytearray()
            self.mid_line = True
            out = b""
        if out or not more:
            await self.send({"type": "http.response.body", "body": out, "more_body": more})

    async def _feed(self, chunk: bytes, *, end: bool) -> bytes:
        # Each chunk is scanned once; a line's start waits in `pending` for its end.
        out = bytearray()
        position = 0
        if self.pending.endswith(b"\r") and (chunk or end):
            position = 1 if chunk[:1] == b"\n" else 0  # a CR's LF belongs to its line end
            line = bytes(self.pending) + chunk[:position]
            self.pending = bytearray()
            await self._line(line, out)
        for match in _LINE_END.finditer(chunk, position):
            if match.group() == b"\r" and match.end() == len(chunk) and not end:
                break  # an LF may follow in the next chunk
            line = chunk[position : match.end()]
            if self.pending:
                line, self.pending = bytes(self.pending) + line, bytearray()
            await self._line(line, out)
            position = match.end()
        if position < len(chunk):
            await self._partial(chunk[position:], out)
        if end:
            self._finish(out)
        return bytes(out)

    async def _line(self, line: bytes, out: bytearray) -> None:
        blank = not self.mid_line and line in _BLANK
        if self.mode == self._HOLD:
            if not blank:
                self.held.append(line)
                self.held_size += len(line)
                if self.held_size > MAX_EVENT_BYTES:
                    await self._oversized(out)
            elif self.held:
                out += await self._event(self.held, line)
                self.held, self.held_size = [], 0
            else:
                out += line  # a blank line between events: nothing to decide
            return
        if blank:
            if self.mode == self._PASS:
                out += line
            self.mode = self._HOLD
        elif self.mode == self._PASS:
            if not self.mid_line and _field(line) == MARKER_FIELD:
                self._late_marker()
            else:
                out += line
        self.mid_line = False

    async def _partial(self, rest: bytes, out: bytearray) -> None:
        """The start of a line not yet ended: kept, passed or dropped by the mode."""
        if self.mode == self._HOLD:
            self.pending += rest
            if self.held_size + len(self.pending) > MAX_EVENT_BYTES:
                await self._oversized(out)
            return
        start = bytes(self.pending) + rest
        cr = start.endswith(b"\r")
        body = start[:-1] if cr else start
        if not self.mid_line and b":" not in body and MARKER_FIELD.startswith(body):
            self.pending = bytearray(start)  # too short to tell whether it starts a marker line
            return
        if self.mode == self._PASS and not self.mid_line and _field(body) == MARKER_FIELD:
            self._late_marker()
        elif self.mode == self._PASS:
            out += body
        self.mid_line = self.mid_line or bool(body)
        self.pending = bytearray(b"\r" if cr else b"")

    async def _oversized(self, out: bytearray) -> None:
        """An event too long to hold: a marked one is dropped, an unmarked one passed on."""
        lines = [*self.held, bytes(self.pending)]
        # A line start that may yet become a marker line is not one yet: past this size, a
        # marker is too late (and what comes after it dropped).
        marked = any(_field(line) == MARKER_FIELD for line in self.held) or (
            b":" in lines[-1] and _field(lines[-1]) == MARKER_FIELD
        )
        self.held, self.held_size = [], 0
        pending, self.pending = lines[-1], bytearray()
        if marked:
            _logs.warning(
                "oversized",
                "throttle: a marked event longer than %d bytes is dropped",
                MAX_EVENT_BYTES,
            )
            self.mode = self._DROP
            decision = _unreadable(self.middleware, self.scope)
            self.scope[MESSAGE_DECISION_KEY] = decision
            out += await self._refused(decision, [], [], None, b"\n")
            # The dropped line goes on in the next chunk, unless it ended (a CR kept pending).
            body = pending[:-1] if pending.endswith(b"\r") else pending
            self.mid_line = bool(body)
            self.pending = bytearray(pending[len(body) :])
        else:
            self.mode = self._PASS
            out += b"".join(lines[:-1])
            if pending:
                await self._partial(pending, out)

    def _late_marker(self) -> None:
        _logs.warning(
            "late-marker",
            "throttle: a marker after the first %d bytes of an event; the rest of it is dropped",
            MAX_EVENT_BYTES,
        )
        self.mode = self._DROP

    def _finish(self, out: bytearray) -> None:
        """The stream ended: an event it left unfinished, which no EventSource dispatches, is
        passed on as it came unless it is marked."""
        lines = [*self.held, bytes(self.pending)]
        if self.mode == self._HOLD and not any(_field(line) == MARKER_FIELD for line in lines):
            out += b"".join(lines)
        elif self.mode == self._PASS:
            out += self.pending
        self.held, self.held_size, self.pending = [], 0, bytearray()

    async def _event(self, lines: list[bytes], terminator: bytes) -> bytes:
        """One whole event: itself when unmarked; otherwise the version its decision allows."""
        names = [_field(line) for line in lines]
        if MARKER_FIELD not in names:
            return b"".join(lines) + terminator
        kept: list[bytes] = []
        data: list[bytes] = []
        segment: list[bytes] = []
        markers: list[bytes] = []
        field: str | None = None
        for name, line in zip(names, lines, strict=True):
            if name == b"data":
                data.append(_value(line))
            elif name == SEGMENT_FIELD:
                segment.append(_value(line))
            elif name == MARKER_FIELD:
                markers.append(_value(line))
            elif name == DECISION_FIELD_FIELD:
                field = _value(line).decode("utf-8", "replace")
            elif name in _KEPT_FIELDS:
                kept.append(line.rstrip(b"\r\n") + b"\n")
        decision = await self.middleware.decide(self.scope, b", ".join(markers))
        self.scope[MESSAGE_DECISION_KEY] = decision
        if decision.delivers_personalized:
            return self._written(decision, kept, data, field, terminator)
        return await self._refused(decision, kept, segment, field, terminator)

    async def _refused(
        self,
        decision: Decision,
        kept: list[bytes],
        segment: list[bytes],
        field: str | None,
        terminator: bytes,
    ) -> bytes:
        if not segment:
            content = await self.middleware.segment_content(self.scope, decision, EVENT_STREAM)
            segment = _lines(content.body.decode("utf-8", "replace")) if content.body else []
        return self._written(decision, kept, segment, field, terminator)

    def _written(
        self,
        decision: Decision,
        kept: list[bytes],
        data: list[bytes],
        field: str | None,
        terminator: bytes,
    ) -> bytes:
        lines = list(kept)
        if _shows_decisions(self.middleware, self.scope):
            shown = self.middleware.decision_header(decision)
            lines.append(DECISION_EVENT_FIELD + b": " + shown + b"\n")
            if field is not None:
                text = b"\n".join(data).decode("utf-8", "replace") if data else "{}"
                shown_in = with_decision_field(text, field, shown.decode("ascii"))
                if shown_in != text:
                    data = _lines(shown_in)
        lines += [b"data: " + line + b"\n" for line in data]
        return b"".join(lines) + terminator
