"""Time as marketers count it: calendar days, weeks and months, and the time of day, in each
person's own time zone.

A request may name the person's zone; a name this machine does not know falls back to the
policy's zone. Boundaries are worked out once per zone and quarter hour (the finest step at
which any zone's offset changes), so a decision pays a dictionary lookup, not a calendar.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import NamedTuple

_QUARTER_MS = 15 * 60 * 1000
_DAY_MINUTES = 24 * 60
# Zone names come from requests: only plausible names reach the file system, and how many
# are remembered is bounded.
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}")
_MAX_ZONES = 1024

DAY, WEEK, MONTH = 1, 2, 3
PERIODS = {"day": DAY, "week": WEEK, "month": MONTH}


class LocalTime(NamedTuple):
    """One instant as the person lives it."""

    zone: str
    # Starts of the current calendar day, week and month, ms since the Unix epoch.
    period_starts: tuple[int, int, int]
    minute_of_day: int


class _Quarter(NamedTuple):
    start_ms: int
    end_ms: int
    offset_ms: int
    period_starts: tuple[int, int, int]


class LocalClock:
    """Calendar boundaries and the time of day in people's zones, falling back to `default`."""

    def __init__(self, default: str = "UTC", *, week_starts: str = "monday") -> None:
        self.default = default
        self._default_zone = zoneinfo.ZoneInfo(default)
        self._first_weekday = 0 if week_starts == "monday" else 6
        self._zones: dict[str, zoneinfo.ZoneInfo | None] = {}
        self._quarters: dict[str, _Quarter] = {}

    def at(self, now_ms: int, zone: str | None = None) -> LocalTime:
        """`now_ms` in `zone` (an IANA name), or in the default zone when it is unknown."""
        name = zone if zone is not None and self._known(zone) else self.default
        quarter = self._quarters.get(name)
        if quarter is None or not quarter.start_ms <= now_ms < quarter.end_ms:
            quarter = self._quarters[name] = self._quarter(now_ms, name)
        minute = ((now_ms + quarter.offset_ms) // 60_000) % _DAY_MINUTES
        return LocalTime(name, quarter.period_starts, minute)

    def _known(self, name: str) -> bool:
        if name in self._zones:
            return self._zones[name] is not None
        if len(self._zones) >= _MAX_ZONES:
            self._zones.clear()
            self._quarters.clear()
        found = None
        if len(name) <= 64 and _ZONE_NAME.fullmatch(name):
            try:
                found = zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                found = None
        self._zones[name] = found
        return found is not None

    def _quarter(self, now_ms: int, name: str) -> _Quarter:
        zone = self._zones.get(name) or self._default_zone
        start_ms = now_ms - now_ms % _QUARTER_MS
        local = dt.datetime.fromtimestamp(start_ms / 1000, zone)
        offset = local.utcoffset() or dt.timedelta()
        today = local.date()
        week = today - dt.timedelta(days=(today.weekday() - self._first_weekday) % 7)
        month = today.replace(day=1)
        starts = tuple(_midnight(day, zone) for day in (today, week, month))
        return _Quarter(
            start_ms,
            start_ms + _QUARTER_MS,
            int(offset.total_seconds() * 1000),
            (starts[0], starts[1], starts[2]),
        )


def _midnight(day: dt.date, zone: zoneinfo.ZoneInfo) -> int:
    """The first instant of `day` in `zone`, ms since the Unix epoch."""
    return round(dt.datetime.combine(day, dt.time(0), tzinfo=zone).timestamp() * 1000)
