"""examples/trace.py: the traffic traces `throttle simulate` replays, and their format."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from examples import trace

ROOT = Path(__file__).resolve().parent.parent
PEOPLE, DAYS, SEED = 1000, 3, 7
MEMBERS = (
    "t",
    "person",
    "campaign",
    "channel",
    "segment",
    "signals",
    "event_age",
    "inferred",
    "third_party",
    "explained",
    "transactional",
    "tags",
    "zone",
    "gpc",
)
SEGMENT = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
PERSON = re.compile(r"p-\d{5,}")


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    return list(trace.generate(PEOPLE, DAYS, SEED))


def named(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each signed-in person's lines, in order."""
    people: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        if line["person"] is not None:
            people[line["person"]].append(line)
    return people


def local(line: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(line["t"], ZoneInfo(line["zone"]))


def test_the_same_seed_gives_the_same_trace(lines: list[dict[str, Any]]) -> None:
    assert len(lines) > 1000
    assert list(trace.generate(PEOPLE, DAYS, SEED, datetime(2026, 11, 2))) == lines
    assert list(trace.generate(PEOPLE, DAYS, SEED + 1)) != lines


def test_lines_are_sorted_by_time_within_the_trace(lines: list[dict[str, Any]]) -> None:
    times = [line["t"] for line in lines]
    assert times == sorted(times)
    start = trace.DEFAULT_START.timestamp()
    assert start <= times[0] and times[-1] < start + DAYS * 86_400
    assert times[-1] - times[0] > (DAYS - 0.1) * 86_400
    assert all(round(t, 3) == t for t in times)


def test_every_line_has_the_required_members_and_well_formed_values(
    lines: list[dict[str, Any]],
) -> None:
    for line in lines:
        assert tuple(line) == tuple(member for member in MEMBERS if member in line), line
        assert isinstance(line["t"], float)
        assert line["person"] is None or PERSON.fullmatch(line["person"])
        assert isinstance(line["campaign"], str) and line["campaign"]
        # Defaults are left out: no "web" channel, empty list or false flag is written.
        assert line.get("channel", "email") in {"email", "push"}
        assert SEGMENT.fullmatch(line["segment"])
        assert line.get("signals", ["x"]) and all(
            isinstance(s, str) for s in line.get("signals", [])
        )
        assert isinstance(line.get("event_age", 0), int) and line.get("event_age", 0) >= 0
        for flag in ("inferred", "third_party", "explained", "transactional", "gpc"):
            assert line.get(flag, True) is True
        assert line["tags"] and all(isinstance(tag, str) for tag in line["tags"])
        ZoneInfo(line["zone"])
    assert {line.get("channel", "web") for line in lines} == {"web", "email", "push"}


def test_signals_are_mostly_those_the_default_policy_weighs(lines: list[dict[str, Any]]) -> None:
    policy = tomllib.loads((ROOT / "policies" / "default.toml").read_text())
    weighed = set(policy["creepiness"]["signals"])
    signals = Counter(signal for line in lines for signal in line.get("signals", []))
    unknown = sum(count for signal, count in signals.items() if signal not in weighed)
    assert 0 < unknown < 0.05 * signals.total()
    assert {"cart", "purchase_history", "browsing_history", "health"} <= set(signals)


def test_the_top_tenth_of_people_get_a_large_share_of_messages(
    lines: list[dict[str, Any]],
) -> None:
    counts = sorted((len(own) for own in named(lines).values()), reverse=True)
    assert sum(counts[: PEOPLE // 10]) > 0.4 * sum(counts)
    assert counts[len(counts) // 2] <= 5


def test_people_come_in_bursts(lines: list[dict[str, Any]]) -> None:
    gaps = [
        later["t"] - earlier["t"]
        for own in named(lines).values()
        for earlier, later in itertools.pairwise(own)
    ]
    assert sum(gap < 600 for gap in gaps) > 0.4 * len(gaps)


def test_most_web_traffic_is_in_the_evening_and_little_at_night(
    lines: list[dict[str, Any]],
) -> None:
    hours = Counter(local(line).hour for line in lines if "channel" not in line)
    evening = sum(hours[h] for h in range(18, 23))
    night = sum(hours[h] for h in range(1, 6))
    assert evening > 8 * night > 0


def test_email_blasts_go_out_at_nine_in_each_persons_zone(lines: list[dict[str, Any]]) -> None:
    blasts = [
        line
        for line in lines
        if line.get("channel") == "email"
        and line["campaign"] not in {"order-update", "abandoned-cart"}
    ]
    assert blasts
    assert all(local(line).hour == 9 and local(line).minute < 30 for line in blasts)


def test_retargeting_carries_the_time_since_what_triggered_it(
    lines: list[dict[str, Any]],
) -> None:
    carts = [line for line in lines if line["campaign"] == "abandoned-cart"]
    assert carts and all("cart" in line["signals"] and "event_age" in line for line in carts)
    assert any(line["event_age"] < 1800 for line in carts)


def test_transactional_messages_are_service_messages(lines: list[dict[str, Any]]) -> None:
    transactional = [line for line in lines if line.get("transactional")]
    assert transactional
    assert all("service" in line["tags"] for line in transactional)
    tags = {(line["campaign"], tuple(line["tags"])) for line in lines}
    assert len(tags) == len({campaign for campaign, _ in tags}), "a campaign keeps its tags"


def test_a_person_keeps_one_zone_and_one_gpc_value(lines: list[dict[str, Any]]) -> None:
    people = named(lines)
    for own in people.values():
        assert len({line["zone"] for line in own}) == 1
        assert len({line.get("gpc", False) for line in own}) == 1
        assert len({line["segment"] for line in own}) == 1
    senders = sum(own[0].get("gpc", False) for own in people.values())
    assert 0.04 * len(people) < senders < 0.2 * len(people)


def test_zones_match_markets_and_guests_are_a_few_percent(lines: list[dict[str, Any]]) -> None:
    zones = {market: zone for market, zone, _ in trace.MARKETS}
    for line in lines:
        assert zones["/".join(line["segment"].split("/")[:2])] == line["zone"]
    guests = [line for line in lines if line["person"] is None]
    assert 0.02 * len(lines) < len(guests) < 0.08 * len(lines)
    assert not any({"purchase_history", "cart"} & set(line.get("signals", [])) for line in guests)
    assert {"eu/de", "us/ny"} <= {line["segment"].rsplit("/", 1)[0] for line in lines}


def test_messages_keeps_the_first_lines_of_the_trace(lines: list[dict[str, Any]]) -> None:
    assert list(trace.generate(PEOPLE, DAYS, SEED, messages=100)) == lines[:100]
    assert list(trace.generate(PEOPLE, DAYS, SEED, messages=0)) == []


@pytest.mark.parametrize(
    ("people", "days", "messages", "problem"),
    [
        (0, 1, None, "people must be at least 1"),
        (1, 0, None, "days must be at least 1"),
        (1, 1, -1, "messages must be at least 0"),
    ],
)
def test_generate_says_which_argument_is_wrong(
    people: int, days: int, messages: int | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        trace.generate(people, days, SEED, messages=messages)


def test_the_command_line_writes_the_trace_as_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    argv = ["--people", "50", "--days", "2", "--seed", "3", "--start", "2026-03-02T06:00+01:00"]
    assert trace.main([*argv, "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    start = datetime(2026, 3, 2, 5, tzinfo=UTC)
    assert written == list(trace.generate(50, 2, 3, start))
    assert written[0]["t"] >= start.timestamp()


def test_the_command_line_stops_after_messages_lines_on_standard_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert trace.main(["--people", "200", "--messages", "25"]) == 0
    output = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in output] == list(trace.generate(200, 7, 1, messages=25))


def test_the_command_line_explains_a_bad_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        trace.main(["--start", "next monday"])
    assert exit.value.code == 2
    assert "write it as 2026-11-02" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trace.main(["--people", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_the_script_stops_quietly_when_its_reader_does() -> None:
    """`python examples/trace.py ... | head` ends without a traceback."""
    script = subprocess.Popen(
        [sys.executable, "examples/trace.py", "--people", "3000", "--days", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert script.stdout is not None and script.stderr is not None
    first = json.loads(script.stdout.readline())
    script.stdout.close()
    assert script.wait(timeout=30) == 0
    assert script.stderr.read() == b""
    script.stderr.close()
    assert first["t"] >= trace.DEFAULT_START.timestamp()
