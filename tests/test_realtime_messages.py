"""Marked WebSocket messages and server-sent events through the middleware in-process: how an
event stream is read (any line ends, any chunking, events too long to hold), what a refused
message becomes, and what the app and the client see of each decision."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from tests.helpers import policy
from throttle import (
    FallbackRequest,
    SegmentContent,
    ThrottledWebSocket,
    ThrottleMiddleware,
    personalization,
    personalized_event,
    realtime,
)
from throttle.errors import MarkerError

ONE_A_DAY = policy('[[caps]]\nname = "one"\nper = "user"\nlimit = 1\nwindow = "24h"\n')
NO_HEADER = policy(
    '[[caps]]\nname = "one"\nper = "user"\nlimit = 1\nwindow = "24h"\n[decisions]\nheader = false\n'
)
SECRET = b"SECRET-for-ana"
MARKER = b'personalization: campaign="live"'


def through(
    chunks: list[bytes], *, who: str | None = None, **options: Any
) -> tuple[bytes, list[Message]]:
    """An event stream sent in `chunks` through the middleware: the body that left, and every
    message that left."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent: list[Message] = []

    async def run() -> None:
        middleware = ThrottleMiddleware(
            app,
            policy=options.pop("policy", ONE_A_DAY),
            identify=lambda scope: who,
            reload_interval=None,
            **options,
        )
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await middleware(scope, receive, send)

    asyncio.run(run())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return body, sent


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


values = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12
).map(str.encode)
plain_lines = st.one_of(
    values.map(lambda v: b"data: " + v),
    values.map(lambda v: b"data:" + v),
    values.map(lambda v: b": " + v),
    st.just(b"data"),
    st.just(b"event: tick"),
    st.just(b"id: 7"),
    st.just(b"retry: 100"),
    values.map(lambda v: b"personalizationx: " + v),
    values.map(lambda v: b"person: " + v),
)
terminators = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def events(draw: st.DrawFn, *, marked: bool, marker_first: bool = False) -> bytes:
    lines = draw(st.lists(plain_lines, min_size=1, max_size=5))
    if marked:
        lines.append(b"data: " + SECRET + draw(values))
        lines.insert(0 if marker_first else draw(st.integers(0, len(lines))), MARKER)
        if draw(st.booleans()):
            lines.append(b"segment: everyone")
    end = draw(terminators)
    return end.join(lines) + end + end


@st.composite
def streams(draw: st.DrawFn, *, marker_first: bool = False) -> tuple[list[bytes], list[bool]]:
    kinds = draw(st.lists(st.booleans(), max_size=6))
    return [draw(events(marked=kind, marker_first=marker_first)) for kind in kinds], kinds


def in_order(parts: list[bytes], body: bytes) -> bool:
    position = 0
    for part in parts:
        found = body.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


@settings(max_examples=60, deadline=None)
@given(st.lists(events(marked=False), max_size=6), st.lists(st.integers(0, 10**4), max_size=8))
def test_an_unmarked_stream_leaves_byte_for_byte_however_it_is_chunked(
    stream: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(stream)
    assert through(chunked(data, cuts), who="ana")[0] == data


@settings(max_examples=60, deadline=None)
@given(streams(), st.lists(st.integers(0, 10**4), max_size=8))
def test_marked_events_never_leak_and_unmarked_ones_pass_among_them(
    stream: tuple[list[bytes], list[bool]], cuts: list[int]
) -> None:
    parts, kinds = stream
    body, _ = through(chunked(b"".join(parts), cuts))  # nobody signed in: every one refused
    assert SECRET not in body
    assert in_order([p for p, marked in zip(parts, kinds, strict=True) if not marked], body)
    assert body.count(b"personalization-decision: segment;reason=anonymous") == sum(kinds)
    assert b"personalization:" not in body


@settings(max_examples=50, deadline=None)
@given(streams(marker_first=True), st.lists(st.integers(0, 10**4), max_size=8))
def test_events_too_long_to_hold_are_dropped_when_marked_and_passed_when_not(
    stream: tuple[list[bytes], list[bool]], cuts: list[int]
) -> None:
    parts, kinds = stream
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(realtime, "MAX_EVENT_BYTES", 24)
        body, _ = through(chunked(b"".join(parts), cuts), who="ana")
    assert SECRET not in body
    assert in_order([p for p, marked in zip(parts, kinds, strict=True) if not marked], body)


def test_a_marker_after_the_first_megabyte_drops_the_rest_of_its_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(realtime, "MAX_EVENT_BYTES", 16)
    stream = b"data: a long public line\n" + MARKER + b"\ndata: " + SECRET + b"\n\ndata: next\n\n"
    body, _ = through([stream[:5], stream[5:]], who="ana")
    assert body == b"data: a long public line\ndata: next\n\n"


def test_an_allowed_event_keeps_its_data_and_a_refused_one_takes_its_segment() -> None:
    first = personalized_event(
        {"offer": SECRET.decode()},
        segment={"offer": "everyone"},
        marker=personalization("live"),
        event="offer",
        id="1",
        decision_field="decision",
    )
    body, _ = through([first, first.replace(b"id: 1", b"id: 2")], who="ana")
    allowed, refused, _ = body.split(b"\n\n")
    assert allowed.startswith(b"event: offer\nid: 1\npersonalization-decision: personalized;")
    assert json.loads(allowed.split(b"data: ")[1])["offer"] == SECRET.decode()
    assert json.loads(allowed.split(b"data: ")[1])["decision"].startswith("personalized;")
    assert SECRET not in refused
    assert json.loads(refused.split(b"data: ")[1]) == {
        "offer": "everyone",
        "decision": refused.split(b"personalization-decision: ")[1].split(b"\n")[0].decode(),
    }


def test_a_refused_event_without_a_segment_version_takes_the_fallback_providers() -> None:
    asked: list[FallbackRequest] = []

    async def fallback(request: FallbackRequest) -> SegmentContent:
        asked.append(request)
        return SegmentContent(b'{"for": "eu"}\n{"more": 1}', "application/json")

    event = personalized_event("x", marker=personalization("live"), id="4")
    body, _ = through([event], fallback=fallback)
    lines = body.split(b"\n")
    assert lines[0] == b"id: 4"
    assert lines[1].startswith(b"personalization-decision: segment;reason=anonymous;")
    assert lines[2:] == [b'data: {"for": "eu"}', b'data: {"more": 1}', b"", b""]
    assert [r.media_type for r in asked] == ["text/event-stream"]


def test_without_decisions_shown_no_field_says_them_and_an_empty_refusal_is_dropped() -> None:
    event = personalized_event("x", marker=personalization("live"), decision_field="d")
    body, _ = through([event], policy=NO_HEADER)
    assert body == b"\n"  # no data: an EventSource dispatches nothing


def test_an_event_stream_marked_and_allowed_as_a_whole_still_has_its_events_decided() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), *personalization_headers()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        event = personalized_event("SECRET", segment="public", marker=personalization("x"))
        await send({"type": "http.response.body", "body": event})

    sent: list[Message] = []

    async def run() -> None:
        middleware = ThrottleMiddleware(
            app, policy=policy(), identify=lambda scope: "ana", reload_interval=None
        )

        async def send(message: Message) -> None:
            sent.append(message)

        await middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, _nothing,
                         send)  # fmt: skip

    asyncio.run(run())
    assert b"data: SECRET\n" in sent[1]["body"]
    assert b"segment:" not in sent[1]["body"]


def personalization_headers() -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in personalization("stream").items()]


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def test_personalized_event_refuses_what_an_event_cannot_carry() -> None:
    with pytest.raises(MarkerError):
        personalized_event("x", marker={"other": "header"})
    with pytest.raises(MarkerError):
        personalized_event("x", marker='campaign="a"\ndata: injected')
    with pytest.raises(ValueError, match="line break"):
        personalized_event("x", marker=personalization("a"), id="1\ndata: injected")


# WebSocket, in-process (the uvicorn tests are in test_realtime.py).


def socket_app(
    handler: Callable[[ThrottledWebSocket, WebSocket], Any],
    *,
    throttled: bool = True,
    **options: Any,
) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        decisions = await handler(
            ThrottledWebSocket(websocket, decision_field="decision"), websocket
        )
        await websocket.send_json({"decisions": decisions})
        await websocket.close()

    middleware = (
        [Middleware(ThrottleMiddleware, reload_interval=None, **{"policy": ONE_A_DAY, **options})]
        if throttled
        else []
    )
    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], middleware=middleware)


def received(
    app: Starlette, count: int, headers: list[tuple[bytes, bytes]] | None = None
) -> list[Any]:
    """The first `count` messages the app sends on a socket after accepting it."""
    sent: list[Message] = []

    async def run() -> None:
        incoming = [{"type": "websocket.connect"}]

        async def receive() -> Message:
            return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws", "headers": headers or [], "query_string": b"",
                 "subprotocols": []}  # fmt: skip
        await app(scope, receive, send)

    asyncio.run(run())
    assert [m["type"] for m in sent][:1] == ["websocket.accept"]
    messages = [m for m in sent if m["type"] == "websocket.send"]
    assert len(messages) == count
    return messages


def test_each_helper_sends_the_allowed_version_and_returns_the_decision() -> None:
    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> list[str | None]:
        marker = personalization("live")
        sent = [
            await throttled.send_text("SECRET text", segment="public text", marker=marker),
            await throttled.send_bytes(b"SECRET bytes", segment=b"public bytes", marker=marker),
            await throttled.send_json({"o": "SECRET"}, segment={"o": "public"}, marker=marker),
        ]
        return [d.reason.value if d else None for d in sent]

    texts = received(socket_app(handler, identify=lambda scope: "ana"), 4)
    assert texts[0]["text"] == "SECRET text"
    assert texts[1]["bytes"] == b"public bytes"
    refused = json.loads(texts[2]["text"])
    assert refused["o"] == "public"
    assert refused["decision"].startswith("segment;reason=frequency-cap;")
    assert json.loads(texts[3]["text"]) == {"decisions": ["allowed", "frequency-cap"] * 1 + [
        "frequency-cap"]}  # fmt: skip


def test_a_refused_message_without_a_segment_version_takes_the_fallback_content() -> None:
    async def fallback(request: FallbackRequest) -> SegmentContent | None:
        if request.campaign == "binary":
            return SegmentContent(b"\xff\x00", "application/octet-stream")
        if request.campaign == "latin":
            return SegmentContent(b"caf\xe9", "text/plain")
        return SegmentContent.json({"for": request.segment, "type": request.media_type})

    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> None:
        await throttled.send_json({"o": "SECRET"}, marker=personalization("live", segment="eu"))
        await throttled.send_text("SECRET", marker=personalization("binary"))
        await throttled.send_text("SECRET", marker=personalization("latin"))

    messages = received(socket_app(handler, fallback=fallback), 4)
    first = json.loads(messages[0]["text"])
    assert (first["for"], first["type"]) == ("", "application/json")
    assert first["decision"].startswith("segment;reason=anonymous")
    assert messages[1]["bytes"] == b"\xff\x00"
    assert messages[2]["bytes"] == b"caf\xe9"


def test_without_the_middleware_only_segment_versions_leave() -> None:
    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> list[Any]:
        marker = personalization("live")
        return [
            await throttled.send_text("SECRET", segment="public", marker=marker),
            await throttled.send_text("SECRET", marker=marker),
            await throttled.send_bytes(b"SECRET", segment=b"public", marker=marker),
        ]

    messages = received(socket_app(handler, throttled=False), 3)
    assert messages[0]["text"] == "public"
    assert messages[1]["bytes"] == b"public"
    assert json.loads(messages[2]["text"]) == {"decisions": [None, None, None]}


def test_a_failure_to_decide_sends_nothing_and_keeps_the_socket() -> None:
    class Hostile(dict[str, str]):
        def items(self) -> Any:
            raise RuntimeError("hostile marker")

    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> list[Any]:
        message = {"type": "websocket.send", "text": "SECRET", "personalization": Hostile()}
        await websocket.send(message)
        await websocket.send_text("still open")
        return [message["throttle.decision"].reason.value]

    messages = received(socket_app(handler), 2)
    assert messages[0]["text"] == "still open"
    assert json.loads(messages[1]["text"]) == {"decisions": ["internal-error"]}


def test_a_refused_text_without_segment_content_sends_nothing_and_a_bad_body_is_refused() -> None:
    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> list[str]:
        await throttled.send_text("SECRET", marker=personalization("live"))
        message = {
            "type": "websocket.send",
            "text": 42,
            "segment_text": "public",
            "personalization": personalization("live"),
        }
        await websocket.send(message)
        return [message["throttle.decision"].reason.value]

    messages = received(socket_app(handler), 2)  # nobody signed in: the first is refused
    assert messages[0]["text"] == "public"
    assert json.loads(messages[1]["text"]) == {"decisions": ["invalid-marker"]}


def test_blank_lines_between_events_and_an_unfinished_event_pass_unless_marked() -> None:
    assert through([b"\n\ndata: a\n\n\n", b"data: unfinished"], who="ana")[0] == (
        b"\n\ndata: a\n\n\ndata: unfinished"
    )
    assert through([b"data: a\n\n", MARKER + b"\ndata: " + SECRET], who="ana")[0] == (
        b"data: a\n\n"
    )


def test_a_body_that_is_not_bytes_is_dropped_and_the_stream_goes_on() -> None:
    chunks: list[Any] = [b"data: a\n\n" + MARKER + b"\ndata: " + SECRET, "not bytes", b"\n\n"]
    body, _ = through([*chunks, b"data: b\n\n"], who="ana")
    assert body == b"data: a\n\ndata: b\n\n"


def test_a_marker_arriving_after_the_limit_in_pieces_drops_the_rest_of_its_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(realtime, "MAX_EVENT_BYTES", 16)
    chunks = [b"data: 0123456789abcdef\n", b"personali", b"zation: x", b"\ndata: " + SECRET]
    body, _ = through([*chunks, b"\n\ndata: next\n\n"], who="ana")
    assert body == b"data: 0123456789abcdef\ndata: next\n\n"


def test_the_handshakes_gpc_signal_holds_for_every_message_on_the_socket() -> None:
    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> list[Any]:
        inferred = personalization("live", inferred=True)
        first = await throttled.send_text("SECRET", segment="public", marker=inferred)
        second = await throttled.send_text("SECRET", segment="public", marker=inferred)
        return [d.reason.value if d else None for d in (first, second)]

    app = socket_app(handler, policy=policy(), identify=lambda scope: "ana")
    messages = received(app, 3, headers=[(b"sec-gpc", b"1")])
    assert [m["text"] for m in messages[:2]] == ["public", "public"]
    assert json.loads(messages[2]["text"]) == {"decisions": ["consent", "consent"]}


def test_the_market_scope_key_is_the_middlewares() -> None:
    from throttle import middleware

    assert realtime.MARKET_SCOPE_KEY == middleware.MARKET_SCOPE_KEY


def test_a_markets_policy_decides_its_messages_and_says_whether_decisions_show() -> None:
    quiet_market = {"de": NO_HEADER}

    async def handler(throttled: ThrottledWebSocket, websocket: WebSocket) -> list[Any]:
        marker = personalization("live")
        sent = [
            await throttled.send_json({"o": "SECRET"}, segment={"o": "public"}, marker=marker),
            await throttled.send_json({"o": "SECRET"}, segment={"o": "public"}, marker=marker),
            await throttled.send_text("SECRET", marker=5),  # type: ignore[arg-type]
        ]
        return [(d.reason.value, d.policy_version) for d in sent if d]

    app = socket_app(
        handler, identify=lambda scope: "ana", markets=quiet_market, market=lambda scope: "de"
    )
    messages = received(app, 3)
    # The market's policy shows no decisions: no field is added.
    assert [json.loads(m["text"]) for m in messages[:2]] == [{"o": "SECRET"}, {"o": "public"}]
    decided = json.loads(messages[2]["text"])["decisions"]
    assert decided == [[reason, NO_HEADER.version] for reason in
                       ("allowed", "frequency-cap", "invalid-marker")]  # fmt: skip


@pytest.mark.parametrize("marked_as_a_whole", [False, True])
def test_an_event_streams_content_length_goes_as_its_events_change_length(
    marked_as_a_whole: bool,
) -> None:
    event = personalized_event("SECRET", segment="everyone", marker=personalization("x"))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"content-length", b"%d" % len(event)),
            *(personalization_headers() if marked_as_a_whole else []),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": event})

    sent: list[Message] = []

    async def run() -> None:
        # Marked as a whole, the stream is allowed for ana, and then each event is decided.
        who = "ana" if marked_as_a_whole else None
        middleware = ThrottleMiddleware(
            app, policy=policy(), identify=lambda scope: who, reload_interval=None
        )

        async def send(message: Message) -> None:
            sent.append(message)

        await middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, _nothing,
                         send)  # fmt: skip

    asyncio.run(run())
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert b"content-length" not in {name.lower() for name, _ in start["headers"]}
    assert b"personalization-decision: " in body
    if not marked_as_a_whole:
        assert b"SECRET" not in body and b"data: everyone" in body


def test_a_socket_starts_the_alert_monitor_where_no_lifespan_did() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async def run() -> bool:
        middleware = ThrottleMiddleware(app, policy=policy(), reload_interval=None)
        messages = iter([{"type": "websocket.connect"}])

        async def receive() -> Message:
            return next(messages, {"type": "websocket.disconnect", "code": 1000})

        async def send(message: Message) -> None:
            pass

        scope = {"type": "websocket", "path": "/live", "headers": []}
        await middleware(scope, receive, send)
        started = middleware.alerts.started
        await middleware.alerts.aclose()
        return started

    assert asyncio.run(run())
