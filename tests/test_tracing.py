"""Decision attributes on the request's OpenTelemetry span, read back with the SDK's in-memory
exporter: what a tracing backend would receive."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.apps import storefront
from tests.helpers import NO_REPETITION, SECRET, marker, policy
from throttle import Engine, tracing
from throttle.metrics import Metrics
from throttle.store import MemoryStore

ONE_AN_HOUR = '[[caps]]\nname = "one-an-hour"\nper = "user"\nlimit = 1\nwindow = "1h"\n'


class ServerSpans:
    """A span around each request, current while the app runs, as ASGI instrumentation opens."""

    def __init__(self, app: ASGIApp, provider: TracerProvider) -> None:
        self.app = app
        self.tracer = provider.get_tracer("tests")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.tracer.start_as_current_span(f"{scope.get('method')} {scope.get('path')}"):
            await self.app(scope, receive, send)


async def test_the_request_span_says_what_was_decided_and_why() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = storefront(
        policy=policy(ONE_AN_HOUR + NO_REPETITION),
        metrics=Metrics(registry=CollectorRegistry()),
        secret=SECRET,
    )
    transport = httpx.ASGITransport(app=ServerSpans(app, provider))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for _ in range(2):
            await http.get("/offer?signal=purchase_history", headers={"x-test-user": "ana-1234"})
        await http.get("/plain")
    first, second, plain = (span.attributes or {} for span in exporter.get_finished_spans())

    assert first["throttle.outcome"] == "personalized"
    assert first["throttle.reason"] == "allowed"
    assert "throttle.rule" not in first and "throttle.segment" not in first
    assert second["throttle.outcome"] == "segment"
    assert second["throttle.reason"] == "frequency-cap"
    assert second["throttle.rule"] == "one-an-hour"
    assert second["throttle.segment"] == "*"
    for decided in (first, second):
        assert decided["throttle.campaign"] == "spring-sale"
        assert decided["throttle.channel"] == "web"
        assert decided["throttle.policy"] == "test"
        assert decided["throttle.signed_in"] is True
        assert decided["throttle.shadow"] is False
        assert 0 <= float(decided["throttle.score"]) <= 1  # type: ignore[arg-type]
        assert float(decided["throttle.seconds"]) > 0  # type: ignore[arg-type]
        engine = Engine(policy(), MemoryStore(), secret=SECRET)
        for attribute in decided.values():
            assert "ana-1234" not in str(attribute)
            assert engine.pseudonym("ana-1234") not in str(attribute)
    assert not any(name.startswith("throttle.") for name in plain)


async def test_without_a_recording_span_nothing_is_set_and_nothing_fails() -> None:
    engine = Engine(policy(), MemoryStore(), secret=SECRET)
    engine.observe(tracing.annotate)
    assert tracing.available()
    decision = await engine.decide(marker(), person="ana")
    assert decision.outcome == "personalized"
