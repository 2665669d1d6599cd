"""`throttle simulate`: a trace replayed through the real engine on a simulated clock."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from examples import trace as trace_generator
from tests.helpers import NO_REPETITION, policy
from throttle.cli import main
from throttle.decision import Reason
from throttle.simulate import TraceReader, replay, simulate

T0 = 1_793_577_600.0  # 2026-11-02 00:00 UTC, a Monday

HOURLY_2 = policy(
    '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 2\nwindow = "1h"\n' + NO_REPETITION,
    name="hourly-2",
)


def lines(*records: dict[str, Any]) -> list[str]:
    return [json.dumps(record) for record in records]


def message(seconds: float, person: str | None = "ana", **fields: Any) -> dict[str, Any]:
    return {"t": T0 + seconds, "person": person, "campaign": "spring-sale", **fields}


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(lines(*records)) + "\n")
    return path


async def test_the_replay_decides_with_the_engine_on_the_traces_clock() -> None:
    # Five messages in one hour, then one an hour later: the cap lets 2, then 1 more through.
    trace = lines(*(message(minute * 60) for minute in range(5)), message(3600 + 60))
    result = await replay([HOURLY_2], TraceReader(trace))
    (tally,) = result.tallies
    assert tally.messages == 6
    assert dict(tally.outcomes) == {"personalized": 3, "frequency-cap": 3}
    assert dict(tally.rules) == {"hourly": 3}
    assert tally.people_by_rule == {"hourly": {"ana"}}
    assert (result.first_t, result.last_t) == (T0, T0 + 3660)


async def test_the_trace_gives_each_persons_zone_and_gpc() -> None:
    quiet = policy('[quiet_hours]\nstart = "21:00"\nend = "08:00"\n' + NO_REPETITION)
    trace = lines(
        message(12 * 3600, person="cleo", gpc=True, inferred=True, signals=["browsing_history"]),
        message(22 * 3600, zone="Europe/Berlin"),  # 23:00 in Berlin: quiet
        message(22 * 3600, person="ben", zone="America/New_York"),  # 17:00 in New York
    )
    (tally,) = (await replay([quiet], TraceReader(trace))).tallies
    assert dict(tally.outcomes) == {"quiet-hours": 1, "personalized": 1, "consent": 1}


async def test_shadow_decisions_are_counted_as_enforcing_would_and_flagged() -> None:
    shadow = policy(HOURLY_2_TEXT, mode="shadow")
    trace = lines(*(message(minute) for minute in range(4)))
    (tally,) = (await replay([shadow], TraceReader(trace))).tallies
    assert dict(tally.outcomes) == {"personalized": 2, "frequency-cap": 2}
    assert tally.shadow == 2


HOURLY_2_TEXT = (
    '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 2\nwindow = "1h"\n' + NO_REPETITION
)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes (column 2)"),
        ("[1, 2]", "a line must be a JSON object"),
        (
            '{"campaign": "a"}',
            '"t" (seconds since the Unix epoch) is required and must be a number',
        ),
        ('{"t": true, "campaign": "a"}', '"t" (seconds since the Unix epoch) is required'),
        ('{"t": 1, "person": 7, "campaign": "a"}', '"person" must be a string, or null'),
        ('{"t": 1, "zone": 1, "campaign": "a"}', '"zone" must be a time zone name'),
        ('{"t": 1, "gpc": "yes", "campaign": "a"}', '"gpc" must be true or false'),
        ('{"t": 1, "campain": "a"}', "unknown key 'campain'; a line has t, person, zone, gpc"),
        ('{"t": 1}', '"campaign" is required'),
        ('{"t": 1, "campaign": {"name": "a"}}', '"campaign" must be a string'),
        ('{"t": 1, "campaign": "a", "signals": "cart"}', '"signals" must be a list of strings'),
        ('{"t": 1, "campaign": "a", "tags": [["x"]]}', '"tags" must be a list of strings'),
        ('{"t": 1, "campaign": "a", "inferred": 1}', '"inferred" must be true or false'),
        ('{"t": 1, "campaign": "a", "event_age": 1.5}', '"event_age" must be a whole number'),
        ('{"t": 1, "campaign": "a", "segment": "eu//de"}', "segment 'eu//de' must be a path"),
    ],
)
def test_each_unusable_line_is_reported_with_its_number_and_skipped(
    line: str, problem: str
) -> None:
    good = json.dumps({"t": 0, "campaign": "a"})
    reader = TraceReader([good, "", line, good])
    assert len(list(reader)) == 2
    (found,) = reader.problems
    assert found.line == 3
    assert found.message.startswith(problem), found.message


def test_a_line_earlier_than_the_one_before_is_reported() -> None:
    reader = TraceReader(lines(message(10), message(5), message(20)))
    assert [m.line for m in reader] == [1, 3]
    assert str(reader.problems[0]) == (
        f"line 2: t {T0 + 5} is earlier than the line before ({T0 + 10}); sort the trace by t"
    )


def test_an_unknown_key_is_refused_even_when_the_marker_is_known() -> None:
    reader = TraceReader(lines(message(1), message(2, colour="red")))
    assert len(list(reader)) == 1
    assert reader.problems[0].message.startswith("unknown key 'colour'")


def test_a_report_names_at_most_20_bad_lines_counts_the_rest_and_exits_1(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(["oops"] * 25 + lines(message(0))) + "\n")
    out, errors = io.StringIO(), io.StringIO()
    assert simulate([HOURLY_2], str(path), out, errors=errors) == 1
    reported = errors.getvalue().splitlines()
    assert reported[0] == f"{path}:1: not JSON: Expecting value (column 1)"
    assert len(reported) == 22
    assert reported[20] == f"{path}: 5 more lines cannot be used"
    assert reported[21] == (
        f"{path}: the report leaves out 25 lines that cannot be used; "
        "fix them, or pass --skip-bad-lines to accept that"
    )
    # The replay was made all the same, and says what it left out.
    assert out.getvalue().startswith(
        f"{path}: 1 messages to 1 people, 2026-11-02 00:00 to 2026-11-02 00:00 UTC; "
        "25 lines of the trace could not be used and are left out\n"
    )


def test_skip_bad_lines_lists_them_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "t.jsonl", [message(10), message(5), message(20)])
    assert main(["simulate", "policies/default.toml", str(path), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (
        f"{path}:2: t {T0 + 5} is earlier than the line before ({T0 + 10}); sort the trace by t"
    )
    assert json.loads(captured.out)["skipped_lines"] == 1
    assert main(["simulate", "policies/default.toml", str(path), "--json", "--skip-bad-lines"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"{path}:2: t {T0 + 5} is earlier than the line before ({T0 + 10}); sort the trace by t\n"
    )
    assert json.loads(captured.out)["skipped_lines"] == 1


def test_an_html_path_that_cannot_be_written_is_refused_before_the_replay(
    tmp_path: Path,
) -> None:
    trace = write(tmp_path / "t.jsonl", [message(0)])
    for page, why in (
        (tmp_path / "no-such-folder" / "report.html", "No such file or directory"),
        (tmp_path, "Is a directory"),
    ):
        out, errors = io.StringIO(), io.StringIO()
        assert simulate([HOURLY_2], str(trace), out, html_path=page, errors=errors) == 1
        assert errors.getvalue() == f"{page}: cannot be written: {why}\n"
        assert out.getvalue() == ""  # nothing was replayed


def test_a_replay_that_fails_leaves_no_page_and_an_old_page_as_it_was(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("oops\n")
    new_page, old_page = tmp_path / "new.html", tmp_path / "old.html"
    old_page.write_text("last week's report")
    for page in (new_page, old_page):
        assert (
            simulate([HOURLY_2], str(empty), io.StringIO(), html_path=page, errors=io.StringIO())
            == 1
        )
    assert not new_page.exists()
    assert old_page.read_text() == "last week's report"


def test_a_trace_without_a_usable_line_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    errors = io.StringIO()
    assert simulate([HOURLY_2], str(empty), io.StringIO(), errors=errors) == 1
    assert errors.getvalue() == f"{empty}: no message to replay\n"


def test_a_missing_or_binary_trace_exits_1(tmp_path: Path) -> None:
    errors = io.StringIO()
    assert simulate([HOURLY_2], str(tmp_path / "nope.jsonl"), io.StringIO(), errors=errors) == 1
    assert (
        errors.getvalue()
        == f"{tmp_path / 'nope.jsonl'}: cannot be read: No such file or directory\n"
    )
    binary = tmp_path / "trace.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    errors = io.StringIO()
    assert simulate([HOURLY_2], str(binary), io.StringIO(), errors=errors) == 1
    assert errors.getvalue().startswith(f"{binary}: is not UTF-8 text")


def test_the_text_report_compares_two_policies(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.jsonl", [message(minute * 60) for minute in range(4)])
    looser = policy(HOURLY_2_TEXT.replace("limit = 2", "limit = 3"), name="looser")
    out = io.StringIO()
    assert simulate([HOURLY_2, looser], str(trace), out, errors=io.StringIO()) == 0
    report = out.getvalue()
    assert report.startswith(
        f"{trace}: 4 messages to 1 people, 2026-11-02 00:00 to 2026-11-02 00:03 UTC\n"
    )
    assert "each decided by 2 policies" in report
    rows = {line.split()[0]: line for line in report.splitlines() if line.strip()}
    assert re.search(
        r"personalized\s+2  50.0%\s+3  75.0%\s+\+1 \(\+25.0 pts\)", rows["personalized"]
    )
    assert re.search(r"hourly\s+2 msgs, 1 people\s+1 msgs, 1 people\s+-1 msgs", rows["hourly"])
    assert re.search(r"spring-sale\s+2  50.0%\s+3  75.0%", rows["spring-sale"])


def test_the_json_report_has_every_figure(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.jsonl", [message(minute * 60) for minute in range(3)])
    out = io.StringIO()
    assert simulate([HOURLY_2], str(trace), out, as_json=True, errors=io.StringIO()) == 0
    (figures,) = json.loads(out.getvalue())["policies"]
    assert figures["outcomes"] == {"personalized": 2, "frequency-cap": 1}
    assert figures["rules"] == {"hourly": {"messages": 1, "people": 1}}
    assert figures["campaigns"] == {"spring-sale": {"personalized": 2, "frequency-cap": 1}}
    assert sum(figures["scores"]) == 3


def test_the_html_report_is_one_self_contained_page(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "t.jsonl",
        [message(m * 60, campaign="<script>alert(1)</script>") for m in range(3)],
    )
    page = tmp_path / "report.html"
    looser = policy(HOURLY_2_TEXT.replace("limit = 2", "limit = 3"), name="looser")
    assert (
        simulate(
            [HOURLY_2, looser], str(trace), io.StringIO(), html_path=page, errors=io.StringIO()
        )
        == 0
    )
    html = page.read_text()
    assert html.startswith("<!doctype html>")
    assert html.count("<svg") == 4  # outcomes, rules, campaigns, scores
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "&lt;script&gt;" in html  # names from the trace are escaped
    assert "+33.3 pts" in html


def test_simulate_on_the_command_line_with_an_override_and_a_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = tmp_path / "week.jsonl"
    start = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    with trace_path.open("w") as out:
        for record in trace_generator.generate(200, 2, 7, start=start):
            out.write(json.dumps(record) + "\n")
    proposed = tmp_path / "proposed.toml"
    proposed.write_text(
        Path("policies/default.toml").read_text().replace("limit = 4", "limit = 3", 1)
    )
    eu = tmp_path / "eu.toml"
    eu.write_text('[time]\nzone = "Europe/Berlin"\n[quiet_hours]\nstart = "22:00"\nend = "07:00"\n')
    status = main(
        ["simulate", "policies/default.toml", str(trace_path), "--with", str(eu),
         "--against", str(proposed)]
    )  # fmt: skip
    report = capsys.readouterr().out
    assert status == 0
    assert "quiet hours" in report and "per-channel-hourly" in report
    lines_in_trace = len(trace_path.read_text().splitlines())
    assert f"{lines_in_trace:,} messages" in report


def test_simulate_with_a_broken_policy_exits_1_as_check_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[policy]\nname = "x"\nmode = "loud"\n')
    assert main(["simulate", str(broken), "-"]) == 1
    assert "policy.mode: is 'loud'" in capsys.readouterr().err


async def test_the_trace_carries_the_gates_members() -> None:
    trace = lines(
        message(0, decides="price"),
        message(1, signals=["health"]),
        message(2, relevance=0.01, signals=["cart"]),
        message(3, relevance="high"),
    )
    reader = TraceReader(trace)
    (tally,) = (await replay([HOURLY_2], reader)).tallies
    assert dict(tally.outcomes) == {
        "automated-decision": 1,
        "special-category": 1,
        "calculus": 1,
    }
    assert reader.problems[0].message == '"relevance" must be a number from 0 to 1'


def test_the_report_shows_category_content_and_every_gate(tmp_path: Path) -> None:
    banded = policy(HOURLY_2_TEXT + "category_band = { low = 0.2, high = 0.5 }\n", name="banded")
    trace = write(
        tmp_path / "t.jsonl",
        [
            message(0, signals=["location.city"]),  # 0.3 at the default weight: in the band
            message(1, signals=["health"]),
            message(2, decides="credit"),
            message(3, relevance=0.01, signals=["cart"]),
        ],
    )
    out = io.StringIO()
    assert simulate([banded], str(trace), out, errors=io.StringIO()) == 0
    report = out.getvalue()
    for words in (
        "content about its category",
        Reason.SPECIAL_CATEGORY.label,
        Reason.AUTOMATED_DECISION.label,
        Reason.CALCULUS.label,
    ):
        assert re.search(rf"{re.escape(words)}\s+1  25.0%", report), words
