"""Consent signals: what a person has said no to, and which messages that rules out."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from functools import lru_cache

from starlette.requests import cookie_parser

from throttle.message import Marker
from throttle.policy import Consent
from throttle.scoring import Scorer
from throttle.tcf import ConsentStringError, decode

_GPC_HEADER = b"sec-gpc"
_COOKIE_HEADER = b"cookie"
TCF_COOKIE = "euconsent-v2"
NO_PURPOSES: frozenset[int] = frozenset()


def gpc_opt_out(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when a `Sec-GPC` request header is exactly `1`; any other value is no signal."""
    return any(name == _GPC_HEADER and value.strip() == b"1" for name, value in headers)


def gpc_forbids(
    marker: Marker, consent: Consent, scorer: Scorer, special: Collection[str] = ()
) -> bool:
    """Whether a person who sent `Sec-GPC: 1` may not receive this message personalized.

    "sensitive" covers signals weighing at least `sensitive_at` and every signal of a special
    category (`special`), whatever its weight."""
    blocked = consent.gpc
    if "all" in blocked:
        return True
    if "inferred" in blocked and marker.inferred:
        return True
    if "third-party" in blocked and marker.third_party:
        return True
    return "sensitive" in blocked and any(
        signal in special or scorer.weight(signal) >= consent.sensitive_at
        for signal in marker.signals
    )


def tcf_purposes(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[frozenset[int] | None, str | None]:
    """The TCF purposes the person consented to, from the `euconsent-v2` cookie (`None` when
    the request has no consent string), and why the string could not be read, if it could
    not. A string that cannot be read, an empty one too, consents to nothing."""
    for name, value in headers:
        if name == _COOKIE_HEADER and TCF_COOKIE.encode() in value:
            cookies = cookie_parser(value.decode("latin-1"))
            if TCF_COOKIE in cookies:
                return _purposes(cookies[TCF_COOKIE])
    return None, None


@lru_cache(maxsize=1024)
def _purposes(string: str) -> tuple[frozenset[int], str | None]:
    """Decoded once per distinct string: a person sends the same cookie on every request."""
    try:
        consent = decode(string)
    except ConsentStringError as error:
        return NO_PURPOSES, str(error)
    # Throttle acts for the site, so the publisher segment's purposes answer when present.
    publisher = consent.publisher_purpose_consents
    return (publisher if publisher is not None else consent.purpose_consents), None
