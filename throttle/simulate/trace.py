"""Reading a trace: JSON lines of timestamped messages, as `examples/trace.py` writes them.

    {"t": 1793000000.0, "person": "p-42", "campaign": "spring-sale", "channel": "email",
     "segment": "eu/de", "signals": ["purchase_history"], "event_age": 300, "tags": ["promo"],
     "zone": "Europe/Berlin", "gpc": false}

`t` (seconds since the Unix epoch) and `campaign` are required; `person` may be null (not
signed in); the other keys are the marker's members (`segment`, `channel`, `signals`,
`event_age`, `inferred`, `third_party`, `explained`, `transactional`, `tags`, `advertising`,
`category`, `relevance`, `decides`) plus the person's `zone` and `gpc`, and the `market`
whose policy decides (with `throttle simulate --markets`; none: the base policy).
A line that cannot be used is reported with its number and skipped: one bad line must not
cost a marketer a week of replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from throttle.errors import MarkerError
from throttle.message import Marker

_MARKER_KEYS = (
    "campaign", "segment", "channel", "signals", "event_age", "inferred", "third_party",
    "explained", "transactional", "tags", "advertising", "category", "relevance", "decides",
)  # fmt: skip
_KNOWN_KEYS = frozenset({"t", "person", "zone", "gpc", "market", *_MARKER_KEYS})
_MARKER_CACHE_SIZE = 65_536


class TraceMessage(NamedTuple):
    line: int
    t: float
    person: str | None
    marker: Marker
    zone: str | None
    gpc: bool
    market: str | None = None


@dataclass(frozen=True, slots=True)
class TraceProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class TraceReader:
    """Iterates a trace's usable messages; `problems` collects the lines that were not."""

    def __init__(self, lines: Iterable[str | bytes]) -> None:
        self._lines = lines
        self.problems: list[TraceProblem] = []
        self.skipped = 0
        self._markers: dict[tuple[Any, ...], Marker] = {}

    def __iter__(self) -> Iterator[TraceMessage]:
        last_t = float("-inf")
        markers = self._markers
        for number, line in enumerate(self._lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                message = self._message(number, record, markers)
            except (ValueError, MarkerError) as error:
                self._problem(number, _words(error))
                continue
            if message.t < last_t:
                self._problem(
                    number,
                    f"t {message.t} is earlier than the line before ({last_t}); "
                    "sort the trace by t",
                )
                continue
            last_t = message.t
            yield message

    def _message(
        self, number: int, record: Any, markers: dict[tuple[Any, ...], Marker]
    ) -> TraceMessage:
        if not isinstance(record, dict):
            raise ValueError("a line must be a JSON object")
        t = record.get("t")
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise ValueError('"t" (seconds since the Unix epoch) is required and must be a number')
        person = record.get("person")
        if person is not None and not isinstance(person, str):
            raise ValueError('"person" must be a string, or null for someone not signed in')
        zone = record.get("zone")
        if zone is not None and not isinstance(zone, str):
            raise ValueError('"zone" must be a time zone name such as "Europe/Berlin"')
        gpc = record.get("gpc", False)
        if not isinstance(gpc, bool):
            raise ValueError('"gpc" must be true or false')
        market = record.get("market")
        if market is not None and not isinstance(market, str):
            raise ValueError('"market" must be the name of a market, such as "eu"')
        if not _KNOWN_KEYS.issuperset(record):
            unknown = sorted(set(record) - _KNOWN_KEYS)[0]
            raise ValueError(
                f"unknown key {unknown!r}; a line has t, person, zone, gpc, market and the "
                f"marker's {', '.join(_MARKER_KEYS)}"
            )
        # Traces repeat a few markers millions of times: each is built and checked once.
        get = record.get
        signals, tags = get("signals"), get("tags")
        key = (
            get("campaign"), get("segment"), get("channel"),
            tuple(signals) if type(signals) is list else signals,
            get("event_age"), get("inferred"), get("third_party"), get("explained"),
            get("transactional"),
            tuple(tags) if type(tags) is list else tags,
            get("advertising"), get("category"), get("relevance"), get("decides"),
        )  # fmt: skip
        try:
            marker = markers.get(key)
        except TypeError:  # a table or a nested list where a marker has text
            key = tuple(map(_hashable, map(get, _MARKER_KEYS)))
            marker = markers.get(key)
        if marker is None:
            marker = _marker(record)
            if len(markers) >= _MARKER_CACHE_SIZE:
                markers.clear()
            markers[key] = marker
        return TraceMessage(number, float(t), person or None, marker, zone, gpc, market)

    def _problem(self, number: int, message: str) -> None:
        self.skipped += 1
        if len(self.problems) < 20:  # enough to see what is wrong, not a second trace
            self.problems.append(TraceProblem(number, message))


def _marker(record: dict[str, Any]) -> Marker:
    fields: dict[str, Any] = {}
    for name in _MARKER_KEYS:
        if name not in record or record[name] is None:
            continue
        value = record[name]
        if name in ("signals", "tags"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f'"{name}" must be a list of strings')
            value = tuple(value)
        elif name in ("inferred", "third_party", "explained", "transactional", "advertising"):
            if not isinstance(value, bool):
                raise ValueError(f'"{name}" must be true or false')
        elif name == "event_age":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError('"event_age" must be a whole number of seconds')
        elif name == "relevance":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError('"relevance" must be a number from 0 to 1')
        elif not isinstance(value, str):
            raise ValueError(f'"{name}" must be a string')
        fields[name] = value
    if "campaign" not in fields:
        raise ValueError('"campaign" is required')
    return Marker(**fields)


def _hashable(value: Any) -> Any:
    """A JSON value as part of a cache key: lists as tuples, anything else unhashable as its
    repr (a marker is then built from the line itself, and says what is wrong)."""
    if isinstance(value, list):
        return tuple(v if isinstance(v, str) else repr(v) for v in value)
    return value if isinstance(value, str | int | float | None) else repr(value)


def _words(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON: {error.msg} (column {error.colno})"
    return str(error)
