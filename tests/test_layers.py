"""Layered policies: a base plus overrides for a market or a channel, merged in a stated order."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from throttle.check import check
from throttle.cli import main
from throttle.errors import PolicyError
from throttle.policy import load_policy

BASE = """\
[policy]
name = "base"

[[caps]]
name = "hourly"
per = "channel"
limit = 4
window = "1h"

[[caps]]
name = "daily"
per = "user"
limit = 12
window = "24h"

[creepiness]
threshold = 0.7
signals = { "cart" = 0.05, "health" = 0.85 }

[consent]
gpc = ["inferred", "third-party"]
"""

EU = """\
[policy]
name = "eu"

[[caps]]
name = "daily"
limit = 8
calendar = "day"

[[caps]]
name = "hourly"
remove = true

[[caps]]
name = "weekly"
per = "user"
limit = 30
calendar = "week"

[creepiness]
threshold = 0.6
signals = { "health" = 0.95 }

[consent]
gpc = ["all"]

[time]
zone = "Europe/Berlin"
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    base, eu = tmp_path / "base.toml", tmp_path / "eu.toml"
    base.write_text(BASE)
    eu.write_text(EU)
    return base, eu


def test_an_override_changes_only_what_it_gives(files: tuple[Path, Path]) -> None:
    policy = load_policy(*files)
    assert policy.name == "eu"
    assert [(c.name, c.limit, c.window, c.calendar) for c in policy.caps] == [
        ("daily", 8, None, "day"),  # a calendar given replaces the base's window
        ("weekly", 30, None, "week"),  # new names are added at the end
    ]
    assert policy.creepiness.threshold == 0.6
    # Tables merge key by key: the base's cart weight stays, health is overridden.
    assert policy.creepiness.signals == {"cart": 0.05, "health": 0.95}
    assert policy.consent.gpc == ("all",)  # arrays are replaced whole
    assert policy.time.zone == "Europe/Berlin"
    assert policy.source == f"{files[0]} + {files[1]}"


def test_later_layers_win(files: tuple[Path, Path], tmp_path: Path) -> None:
    web = tmp_path / "web.toml"
    web.write_text('[[caps]]\nname = "daily"\nlimit = 5\n\n[creepiness]\nthreshold = 0.5\n')
    policy = load_policy(*files, web)
    assert (policy.caps[0].name, policy.caps[0].limit, policy.caps[0].calendar) == (
        "daily",
        5,
        "day",
    )
    assert policy.creepiness.threshold == 0.5


def test_the_version_covers_every_layer(files: tuple[Path, Path]) -> None:
    base, eu = files
    before = load_policy(base, eu).version
    assert before != load_policy(base).version
    eu.write_text(EU.replace("limit = 8", "limit = 7"))
    assert load_policy(base, eu).version != before


def test_removing_a_cap_the_base_lacks_is_an_error(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('[[caps]]\nname = "hourli"\nremove = true\n')
    with pytest.raises(PolicyError) as raised:
        load_policy(files[0], typo)
    assert [str(p) for p in raised.value.problems] == [
        f"{typo}: caps.\"hourli\".remove: there is no cap named 'hourli' to remove"
    ]


def test_a_problem_is_placed_in_the_layer_that_wrote_it(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[creepiness]\nthreshold = 2\n\n[[caps]]\nname = "daily"\nwindow = "1 day"\n'
        '\n[[caps]]\nname = "new"\nper = "user"\nlimit = 2\n'
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(*files, bad)
    problems = {(p.source, p.line, p.key) for p in raised.value.problems}
    assert problems == {
        (str(bad), 2, "creepiness.threshold"),
        (str(bad), 6, 'caps."daily".window'),
        (str(bad), 8, 'caps."new"'),  # "new" needs a window; its table starts on line 8
    }
    window = next(p for p in raised.value.problems if p.key == 'caps."daily".window')
    assert window.message == "'1 day' is not a duration; write 1d"


def test_a_problem_in_the_base_is_placed_in_the_base(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    base, eu = files
    base.write_text(BASE.replace('per = "user"', 'per = "everyone"'))
    with pytest.raises(PolicyError) as raised:
        load_policy(base, eu)
    (problem,) = raised.value.problems
    # The merged caps[0] ("daily", once eu.toml removes "hourly") is caps[1] in the base.
    assert (problem.source, problem.line, problem.key) == (str(base), 12, 'caps."daily".per')


def test_a_broken_override_names_its_file(files: tuple[Path, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[policy\n")
    with pytest.raises(
        PolicyError, match=r"broken\.toml cannot be used:\n  line 1: not valid TOML"
    ):
        load_policy(files[0], broken)
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(files[0], tmp_path / "missing.toml")


def test_check_shows_the_effective_policy_and_what_each_override_sets(
    files: tuple[Path, Path],
) -> None:
    base, eu = files
    out = io.StringIO()
    assert check([str(base)], out, overrides=[str(eu)]) == 0
    text = out.getvalue()
    assert text.startswith(f"{base} + {eu}: ok, policy 'eu' @")
    assert "daily   8 per person in calendar day" in text
    assert "weekly  30 per person in calendar week" in text
    assert "hourly" not in text.split(" sets:")[0]
    assert "in each person's own time zone (else Europe/Berlin)" in text
    assert text.endswith(
        f"  {eu} sets:\n"
        "    policy.name = 'eu'\n"
        "    caps.daily.limit = 8\n"
        "    caps.daily.calendar = 'day'\n"
        "    caps.hourly: removed\n"
        "    caps.weekly.per = 'user'\n"
        "    caps.weekly.limit = 30\n"
        "    caps.weekly.calendar = 'week'\n"
        "    creepiness.threshold = 0.6\n"
        "    creepiness.signals.health = 0.95\n"
        "    consent.gpc = ['all']\n"
        "    time.zone = 'Europe/Berlin'\n"
    )


def test_check_with_a_bad_override_exits_1_naming_its_file_and_line(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, eu = files
    eu.write_text(EU.replace('zone = "Europe/Berlin"', 'zone = "Europe/Atlantis"'))
    assert main(["check", str(base), "--with", str(eu)]) == 1
    assert capsys.readouterr().out == (
        f"{eu}:27: time.zone: 'Europe/Atlantis' is not a time zone; "
        "write an IANA name such as Europe/Berlin or UTC\n"
    )


def test_the_shipped_eu_override_layers_on_the_default_policy() -> None:
    policy = load_policy("policies/default.toml", "policies/overrides/eu.toml")
    caps = {cap.name: cap for cap in policy.caps}
    assert caps["per-user-daily"].calendar == "day"
    assert caps["per-user-daily"].except_tags == ("service",)
    assert caps["per-user-weekly"].shadow
    assert policy.quiet_hours is not None and policy.quiet_hours.channels == ("push", "email")


def test_check_with_a_missing_override_names_the_missing_file(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = files
    missing = tmp_path / "nope.toml"
    assert main(["check", str(base), "--with", str(missing)]) == 1
    assert capsys.readouterr().out.startswith(f"{missing}: cannot be read: ")
