"""Memory stays flat whatever the app and its visitors send: every in-process cache is bounded.

Requests go through the middleware's ASGI interface in-process, each with a marker, a segment
and an id never seen before. The count is `THROTTLE_FLAT_REQUESTS` (default 16,000, so `make
test` stays quick); a million is the contract's figure:

    THROTTLE_FLAT_REQUESTS=1000000 .venv/bin/python -m pytest tests/test_memory_flat.py
"""

from __future__ import annotations

import gc
import os
import resource
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.helpers import policy
from throttle import FallbackRequest, SegmentContent, ThrottleMiddleware

REQUESTS = int(os.environ.get("THROTTLE_FLAT_REQUESTS", "16000"))
# Long enough to fill every cache to its bound (the marker cache's 4 MiB: some 5,000 markers).
WARM_UP = max(REQUESTS // 10, 8_000)
# Generous for a steady state (measured: +0.1 MB over 200,000 requests), yet a leak of a few
# hundred bytes per request exceeds it.
ALLOWED_BYTES = 8 * 1024 * 1024 + 32 * REQUESTS
STATM = Path("/proc/self/statm")
# Audiences only: not signed in means segment content, and the trail holds little.
FLAT_POLICY = policy("[audit]\nmax_entries = 1000\n\n[fallback]\nk = 1\n")


def resident_bytes() -> int:
    gc.collect()
    return int(STATM.read_text().split()[1]) * resource.getpagesize()


def odd_id(number: int) -> object:
    """A different id each time, each counted as nobody: too long, too large, or no id."""
    kind = number % 4
    if kind == 0:
        return "p" * 1025 + str(number)
    if kind == 1:
        return 10**1100 + number
    if kind == 2:
        return str(number).encode()
    return None


def distinct_segment(number: int) -> bytes:
    # Eight levels of about 120 characters, none seen before: the most a marker may name.
    return b"/".join([b"s%d" % number] + [b"level-%d-abcdefg" % level for level in range(7)])


@pytest.mark.skipif(not STATM.exists(), reason="reads resident memory from /proc")
@pytest.mark.parametrize(
    "vary_segment",
    [
        pytest.param(False, id="distinct-markers-and-people"),
        pytest.param(
            True,
            id="distinct-segments",
        ),
    ],
)
async def test_resident_memory_is_flat_over_distinct_markers_segments_and_people(
    vary_segment: bool,
) -> None:
    request: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"personalization", request["marker"]),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"offer": "for you"}'})

    async def provider(fallback: FallbackRequest) -> SegmentContent:
        return SegmentContent.json({"for": fallback.segment})

    middleware = ThrottleMiddleware(
        app,
        policy=FLAT_POLICY,
        identify=lambda scope: request["id"],
        fallback=provider,
        reload_interval=None,
    )
    sent: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    baseline = 0
    for number in range(REQUESTS):
        if number == WARM_UP:
            baseline = resident_bytes()
        segment = distinct_segment(number) if vary_segment else b"eu/de/returning"
        # Signals stay the same: each unknown signal is logged once, and captured logs grow.
        request["marker"] = b'campaign="c%d", segment="%s", signals=("cart"), event-age=%d' % (
            number,
            segment,
            number,
        )
        request["id"] = odd_id(number)
        gpc = [(b"sec-gpc", b"1")] if number % 3 == 0 else []
        await middleware(
            {"type": "http", "method": "GET", "path": "/", "headers": gpc}, receive, send
        )
    grown = resident_bytes() - baseline
    assert sent == [200] * REQUESTS
    assert grown < ALLOWED_BYTES, f"+{grown / 1e6:.1f} MB over {REQUESTS - WARM_UP} requests"
