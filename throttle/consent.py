"""Consent signals: what a person has said no to, and which messages that rules out."""

from __future__ import annotations

from collections.abc import Iterable

from throttle.message import Marker
from throttle.policy import Consent
from throttle.scoring import Scorer

_GPC_HEADER = b"sec-gpc"


def gpc_opt_out(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when a `Sec-GPC` request header is exactly `1`; any other value is no signal."""
    return any(name == _GPC_HEADER and value.strip() == b"1" for name, value in headers)


def gpc_forbids(marker: Marker, consent: Consent, scorer: Scorer) -> bool:
    """Whether a person who sent `Sec-GPC: 1` may not receive this message personalized."""
    blocked = consent.gpc
    if "all" in blocked:
        return True
    if "inferred" in blocked and marker.inferred:
        return True
    if "third-party" in blocked and marker.third_party:
        return True
    return "sensitive" in blocked and any(
        scorer.weight(signal) >= consent.sensitive_at for signal in marker.signals
    )
