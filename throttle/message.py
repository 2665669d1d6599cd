"""What is being sent: the `Personalization` marker a handler puts on a response.

The marker is an RFC 8941 structured-field dictionary, e.g.

    Personalization: campaign="spring-sale", segment="eu/de/returning", channel=web,
                     signals=("purchase_history" "location.city"), event-age=120, explained,
                     tags=(promo)
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList
from http_sfv.types import Token

from throttle.errors import MarkerError

PERSONALIZATION_HEADER = "Personalization"

_MAX_TEXT = 128
# A segment is a path from broad to narrow; each level costs an audience lookup in the store,
# so the depth is bounded (eight levels: region/country/city/... with room to spare).
MAX_SEGMENT_DEPTH = 8
_MAX_SIGNALS = 32
_MAX_TAGS = 8
# Printable ASCII is what an RFC 8941 string may hold.
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
# Parsed markers are cached within this many bytes (values, markers and their strings counted);
# a value longer than _MAX_CACHED_MARKER, rare, is parsed every time instead.
MARKER_CACHE_BYTES = 4 * 1024 * 1024
_MAX_CACHED_MARKER = 4096
# What a dict entry and the (marker, cost) pair it holds take besides the objects counted.
_ENTRY_OVERHEAD = 256
_BOOLEAN_MEMBERS = {
    "inferred": "inferred",
    "third-party": "third_party",
    "explained": "explained",
    "transactional": "transactional",
    "advertising": "advertising",
}
_MEMBERS = frozenset(
    {
        "campaign", "segment", "channel", "signals", "tags", "event-age", "category",
        "relevance", "decides", *_BOOLEAN_MEMBERS,
    }
)  # fmt: skip
# What a message may decide about a person that GDPR Art. 22 keeps from personalization.
DECISIONS = ("price", "credit", "eligibility")
_MISSPELT = {
    "event_age": "event-age", "third_party": "third-party", "eventage": "event-age",
    "decide": "decides", "decision": "decides", "advertisement": "advertising",
    "ad": "advertising", "relevancy": "relevance",
}  # fmt: skip
# RFC 8941 integers have at most 15 digits.
_MAX_EVENT_AGE = 999_999_999_999_999


@dataclass(frozen=True, slots=True)
class Marker:
    """A response's declaration of what personal data its content used.

    - `campaign`: the campaign the content belongs to (required).
    - `segment`: the audience whose generic content may stand in, as a path from broad to
      narrow (`"eu/de/returning"`); empty means everyone.
    - `channel`: where the message is shown (`web`, `email`, `push`, ...).
    - `signals`: the data categories the content used (`"purchase_history"`, `"location.city"`).
    - `event_age`: seconds since the behaviour that triggered the message, if it was triggered.
    - `inferred`, `third_party`: the data was guessed rather than given, or came from elsewhere.
    - `explained`: the message tells the person why they see it.
    - `transactional`: a message the person asked for (a receipt); exempt from caps, not consent.
    - `tags`: the campaign's tags (`promo`, `service`, ...), which caps may exempt or favour.
    - `advertising`: an ad-like message; TCF consent is checked for the advertising purposes.
    - `category`: what the content is about in general (`running-shoes`), for content about the
      category when the score falls in the policy's middle band.
    - `relevance`: the benefit the app expects for the person, in [0, 1], weighed against the
      creepiness by the policy's privacy calculus.
    - `decides`: `price`, `credit` or `eligibility` when the content sets one for the person:
      such a message is never personalized (GDPR Art. 22).
    """

    campaign: str
    segment: str = ""
    channel: str = "web"
    signals: tuple[str, ...] = ()
    event_age: int | None = None
    inferred: bool = False
    third_party: bool = False
    explained: bool = False
    transactional: bool = False
    tags: tuple[str, ...] = ()
    advertising: bool = False
    category: str = ""
    relevance: float | None = None
    decides: str = ""

    def __post_init__(self) -> None:
        _check_text("campaign", self.campaign)
        if self.segment:
            _check_segment(self.segment)
        if not (len(self.channel) <= _MAX_TEXT and _TOKEN.fullmatch(self.channel)):
            raise MarkerError(f"channel {self.channel!r} must be a token such as web or email")
        if len(self.signals) > _MAX_SIGNALS:
            raise MarkerError(f"at most {_MAX_SIGNALS} signals, got {len(self.signals)}")
        for signal in self.signals:
            _check_text("signal", signal)
        if len(self.tags) > _MAX_TAGS:
            raise MarkerError(f"at most {_MAX_TAGS} tags, got {len(self.tags)}")
        for tag in self.tags:
            if not (len(tag) <= _MAX_TEXT and _TOKEN.fullmatch(tag)):
                raise MarkerError(f"tag {tag!r} must be a token such as promo or service")
        if self.category and not (
            len(self.category) <= _MAX_TEXT and _TOKEN.fullmatch(self.category)
        ):
            raise MarkerError(f"category {self.category!r} must be a token such as running-shoes")
        if self.relevance is not None and (
            isinstance(self.relevance, bool)
            or not isinstance(self.relevance, int | float)
            or not 0 <= self.relevance <= 1
        ):
            raise MarkerError(f"relevance must be a number from 0 to 1, got {self.relevance!r}")
        if self.decides and self.decides not in DECISIONS:
            raise MarkerError(
                f"decides must be one of {', '.join(DECISIONS)}, got {self.decides!r}"
            )
        if self.event_age is not None and (
            type(self.event_age) is not int or not 0 <= self.event_age <= _MAX_EVENT_AGE
        ):
            raise MarkerError(
                f"event-age must be a whole number of seconds from 0 to {_MAX_EVENT_AGE}, "
                f"got {self.event_age!r}"
            )

    def header_value(self) -> str:
        """The marker serialized as the `Personalization` header's value."""
        members = Dictionary()
        members["campaign"] = self.campaign
        if self.segment:
            members["segment"] = self.segment
        if self.channel != "web":
            members["channel"] = Token(self.channel)
        if self.signals:
            members["signals"] = InnerList(list(self.signals))
        if self.tags:
            members["tags"] = InnerList([Token(tag) for tag in self.tags])
        if self.event_age is not None:
            members["event-age"] = self.event_age
        if self.category:
            members["category"] = Token(self.category)
        if self.relevance is not None:
            members["relevance"] = Decimal(str(round(self.relevance, 3)))
        if self.decides:
            members["decides"] = Token(self.decides)
        for member, attribute in _BOOLEAN_MEMBERS.items():
            if getattr(self, attribute):
                members[member] = True
        return str(members)


def personalization(
    campaign: str,
    *,
    segment: str = "",
    channel: str = "web",
    signals: tuple[str, ...] | list[str] = (),
    event_age: int | None = None,
    inferred: bool = False,
    third_party: bool = False,
    explained: bool = False,
    transactional: bool = False,
    tags: tuple[str, ...] | list[str] = (),
    advertising: bool = False,
    category: str = "",
    relevance: float | None = None,
    decides: str = "",
) -> dict[str, str]:
    """Headers that mark a response as personalized; pass them to any Starlette response.

    ```python
    return JSONResponse(
        offer,
        headers=personalization("spring-sale", segment="eu/de", signals=["purchase_history"]),
    )
    ```
    Raises `MarkerError` when a value cannot be carried in the header.
    """
    marker = Marker(
        campaign=campaign,
        segment=segment,
        channel=channel,
        signals=tuple(signals),
        event_age=event_age,
        inferred=inferred,
        third_party=third_party,
        explained=explained,
        transactional=transactional,
        tags=tuple(tags),
        advertising=advertising,
        category=category,
        relevance=relevance,
        decides=decides,
    )
    return {PERSONALIZATION_HEADER: marker.header_value()}


class _ParsedMarkers:
    """Parsed markers by header value, the latest kept within a budget of bytes.

    Counted in bytes, not entries: markers may carry members a newer throttle reads, so a count
    alone would let 4,096 markers of 100 KB hold 400 MB.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._entries: dict[bytes, tuple[Marker, int]] = {}
        self._lock = threading.Lock()  # parse_marker is public; threads may share the cache

    def get(self, value: bytes) -> Marker | None:
        known = self._entries.get(value)
        return None if known is None else known[0]

    def put(self, value: bytes, marker: Marker) -> None:
        cost = _footprint(value, marker)
        with self._lock:
            entries = self._entries
            if value in entries:
                return
            # The oldest go first (a dict keeps insertion order): the markers in use come back.
            while entries and self.size + cost > self.budget:
                self.size -= entries.pop(next(iter(entries)))[1]
            entries[value] = (marker, cost)
            self.size += cost


_parsed = _ParsedMarkers(MARKER_CACHE_BYTES)


def cached_markers() -> tuple[int, int, int]:
    """Parsed markers cached in this process, the bytes they take, and the budget (metrics)."""
    return len(_parsed._entries), _parsed.size, _parsed.budget


def parse_marker(value: bytes) -> Marker:
    """Read a `Personalization` header value; raises `MarkerError` saying what is wrong.

    Handlers send the same few markers over and over, so parsed markers are cached by value,
    within `MARKER_CACHE_BYTES` (4 MiB); a value over 4 KB (rare) is parsed every time.
    """
    value = bytes(value)
    marker = _parsed.get(value)
    if marker is None:
        marker = _parse(value)
        if len(value) <= _MAX_CACHED_MARKER:
            _parsed.put(value, marker)
    return marker


def _footprint(value: bytes, marker: Marker) -> int:
    """Bytes a cached marker holds: its value, the marker, its strings and tuples."""
    size = _ENTRY_OVERHEAD + sys.getsizeof(value) + sys.getsizeof(marker)
    for text in (marker.campaign, marker.segment, marker.channel, marker.category):
        size += sys.getsizeof(text)
    for texts in (marker.signals, marker.tags):
        size += sys.getsizeof(texts) + sum(sys.getsizeof(text) for text in texts)
    return size


def _parse(value: bytes) -> Marker:
    if not value.strip(b" \t"):
        raise MarkerError('the header is empty; campaign is required, e.g. campaign="spring-sale"')
    members = Dictionary()
    try:
        members.parse(value)
    except ValueError as error:
        raise MarkerError(f"not an RFC 8941 dictionary: {_root_cause(error)}") from None
    fields: dict[str, Any] = {}
    for name, member in members.items():
        if name not in _MEMBERS:
            if name in _MISSPELT:  # a typo here would silently under-score the message
                raise MarkerError(f"unknown member {name}; did you mean {_MISSPELT[name]}?")
            continue  # a dictionary may grow members a newer throttle reads
        if name == "signals":
            if not isinstance(member, InnerList):
                raise MarkerError('signals must be an inner list of strings, e.g. ("a" "b")')
            fields["signals"] = tuple(_text(name, item.value) for item in member)
            continue
        if name == "tags":
            if not isinstance(member, InnerList):
                raise MarkerError("tags must be an inner list of tokens, e.g. (promo service)")
            fields["tags"] = tuple(_text(name, item.value) for item in member)
            continue
        if isinstance(member, InnerList):
            raise MarkerError(f"{name} must be a single value, not a list")
        item = member.value
        if name in ("campaign", "segment", "channel", "category", "decides"):
            fields[name] = _text(name, item)
            if name == "decides" and not fields[name]:
                raise MarkerError("decides must be one of price, credit, eligibility, not empty")
        elif name == "relevance":
            if isinstance(item, bool) or not isinstance(item, int | float | Decimal):
                raise MarkerError(f"relevance must be a number from 0 to 1, got {item}")
            fields["relevance"] = float(item)
        elif name == "event-age":
            if type(item) is not int:
                raise MarkerError(f"event-age must be a whole number of seconds, got {item}")
            fields["event_age"] = item
        elif type(item) is not bool:
            raise MarkerError(f"{name} must be a boolean (?1 or ?0), got {item}")
        else:
            fields[_BOOLEAN_MEMBERS[name]] = item
    if "campaign" not in fields:
        raise MarkerError('campaign is required, e.g. campaign="spring-sale"')
    return Marker(**fields)


def _check_segment(segment: object) -> None:
    if not isinstance(segment, str):
        raise MarkerError(f"segment must be a string, got {segment!r}")
    if not (len(segment) <= _MAX_TEXT and _SEGMENT.fullmatch(segment)):
        raise MarkerError(
            f"segment {segment!r} must be a path of letters, digits, '.', '_' and '-' "
            f"separated by '/', at most {_MAX_TEXT} characters"
        )
    levels = segment.split("/")
    if any(level in (".", "..") for level in levels):
        raise MarkerError(f"segment {segment!r} must not have '.' or '..' levels")
    if len(levels) > MAX_SEGMENT_DEPTH:
        raise MarkerError(
            f"segment {segment!r} has {len(levels)} levels; at most {MAX_SEGMENT_DEPTH}"
        )


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):  # sf-string and sf-token are both str
        raise MarkerError(f"{name} must be a string, got {value!r}")
    return value


def _check_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise MarkerError(f"{name} must be a non-empty string")
    if len(value) > _MAX_TEXT or not _PRINTABLE.fullmatch(value):
        raise MarkerError(
            f"{name} {value!r} must be printable ASCII, at most {_MAX_TEXT} characters"
        )


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__
