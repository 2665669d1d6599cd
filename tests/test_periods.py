"""The local clock: calendar boundaries and time of day in a person's zone, cheaply."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from throttle.periods import LocalClock

BERLIN = ZoneInfo("Europe/Berlin")


def ms(zone: ZoneInfo, *fields: int) -> int:
    return round(dt.datetime(*fields, tzinfo=zone).timestamp() * 1000)  # type: ignore[misc]


def test_boundaries_and_time_of_day_in_the_persons_zone() -> None:
    clock = LocalClock("UTC")
    now = ms(BERLIN, 2026, 11, 25, 1, 30)  # a Wednesday, 00:30 UTC
    berlin = clock.at(now, "Europe/Berlin")
    assert berlin.zone == "Europe/Berlin"
    assert berlin.period_starts == (
        ms(BERLIN, 2026, 11, 25, 0, 0),
        ms(BERLIN, 2026, 11, 23, 0, 0),
        ms(BERLIN, 2026, 11, 1, 0, 0),
    )
    assert berlin.minute_of_day == 90
    utc = clock.at(now, None)
    assert (utc.zone, utc.minute_of_day) == ("UTC", 30)


def test_the_time_of_day_follows_a_daylight_saving_change_within_the_day() -> None:
    clock = LocalClock("Europe/Berlin")
    before = ms(BERLIN, 2026, 3, 29, 1, 59)
    after = before + 60_000  # 02:00 CET is 03:00 CEST
    assert clock.at(before).minute_of_day == 119
    assert clock.at(after).minute_of_day == 180
    assert clock.at(before).period_starts == clock.at(after).period_starts


@pytest.mark.parametrize(
    "name",
    ["Nowhere/Atlantis", "../../etc/passwd", "/etc/localtime", "", "x" * 300, "Europe/Berlin\0"],
)
def test_names_that_are_not_zones_count_as_the_default(name: str) -> None:
    clock = LocalClock("Asia/Tokyo")
    assert clock.at(0, name).zone == "Asia/Tokyo"


def test_it_remembers_a_bounded_number_of_names() -> None:
    clock = LocalClock("UTC")
    for number in range(3000):
        clock.at(0, f"Made/Up_{number}")
    assert len(clock._zones) <= 1024
    assert clock.at(0, "Europe/Berlin").zone == "Europe/Berlin"
