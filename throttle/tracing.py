"""Each decision's attributes on the current OpenTelemetry span, when opentelemetry-api is
installed: the request's server span (from your ASGI instrumentation) then says what throttle
decided for the response, and why.

`ThrottleMiddleware(metrics=True)` adds it when the package is there (`Metrics(spans=False)`
leaves spans alone); with an engine of your own, `engine.observe(throttle.tracing.annotate)`.
A span that is not recording (no SDK configured, or sampled out) costs one context look-up.
Attributes never hold an id or a pseudonym: outcome, reason, rule, score, campaign, channel,
the segment that stood in, shadow, the policy's name and version, signed in or not, seconds.
"""

from __future__ import annotations

from throttle.observe import Observation

try:
    from opentelemetry import trace
except ImportError:  # pragma: no cover - the tracing extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = ["annotate", "available"]


def available() -> bool:
    """Whether opentelemetry-api is installed."""
    return trace is not None


def annotate(observation: Observation) -> None:
    """Set the decision's attributes (`throttle.outcome`, `throttle.reason`, ...) on the
    current span, if it records."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    decision = observation.decision
    attributes: dict[str, str | bool | float] = {
        "throttle.outcome": decision.outcome,
        "throttle.reason": decision.reason.value,
        "throttle.shadow": decision.shadow,
        "throttle.policy": decision.policy,
        "throttle.policy_version": decision.policy_version,
        "throttle.signed_in": observation.signed_in,
        "throttle.seconds": observation.seconds,
    }
    if decision.rule is not None:
        attributes["throttle.rule"] = decision.rule
    if decision.score is not None:
        attributes["throttle.score"] = decision.score
    if decision.campaign is not None:
        attributes["throttle.campaign"] = decision.campaign
    if decision.channel is not None:
        attributes["throttle.channel"] = decision.channel
    if decision.segment is not None:
        attributes["throttle.segment"] = decision.segment or "*"
    span.set_attributes(attributes)
