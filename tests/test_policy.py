"""Policies: a TOML file read once into frozen objects, or refused with every problem named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from throttle import Policy, PolicyError, PolicyProblem, load_policy

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.toml"
HEADER = '[policy]\nname = "test"\n'


def refusal(text: str, *, source: str = "<test>") -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml(text, source=source)
    return caught.value


def problems(text: str) -> dict[str, str]:
    return {problem.key: problem.message for problem in refusal(text).problems}


def cap(window: str, *, name: str = "hourly", limit: str = "4") -> str:
    return f'[[caps]]\nname = "{name}"\nper = "user"\nlimit = {limit}\nwindow = {window}\n'


def test_the_default_policy_loads_with_caps_and_a_budget() -> None:
    policy = load_policy(DEFAULT_POLICY)
    assert policy.name == "default"
    assert policy.source == str(DEFAULT_POLICY)
    assert [c.name for c in policy.caps] == [
        "per-channel-hourly",
        "per-user-daily",
        "per-campaign-daily",
    ]
    assert policy.creepiness.budget is not None
    assert policy.creepiness.budget.limit == 2.5
    assert policy.creepiness.budget.window == 86400.0
    assert re.fullmatch(r"[0-9a-f]{12}", policy.version)


def test_the_default_policy_loads_from_a_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DEFAULT_POLICY.parent.parent)
    policy = load_policy("policies/default.toml")
    assert policy.source == "policies/default.toml"
    assert policy.caps


def test_the_version_follows_the_text(tmp_path: Path) -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    first = tmp_path / "first.toml"
    first.write_text(text, encoding="utf-8")
    same = tmp_path / "same.toml"
    same.write_text(text, encoding="utf-8")
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace("threshold = 0.7", "threshold = 0.6"), encoding="utf-8")
    assert load_policy(first).version == load_policy(same).version
    assert load_policy(changed).version != load_policy(first).version
    assert Policy.from_toml(text + "# a comment\n").version != load_policy(first).version


def test_a_policy_that_names_itself_gets_the_documented_defaults() -> None:
    policy = Policy.from_toml('[policy]\nname="x"')
    assert policy.name == "x"
    assert policy.policy.mode == "enforce"
    assert policy.caps == ()
    assert policy.creepiness.threshold == 0.7
    assert policy.creepiness.budget is None
    assert policy.creepiness.default_signal == 0.3
    assert policy.fallback.k == 50
    assert policy.store.timeout == 0.05
    assert policy.store.on_error == "segment"
    assert policy.source == "<memory>"
    assert re.fullmatch(r"[0-9a-f]{12}", policy.version)


def test_a_policy_is_frozen() -> None:
    policy = Policy.from_toml(HEADER + cap('"1h"'))
    with pytest.raises(ValidationError, match="frozen"):
        policy.caps[0].limit = 5


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("2d", 172_800.0),
        ("50ms", 0.05),
        (" 7d ", 604_800.0),
        ("366d", 31_622_400.0),
    ],
)
def test_durations_are_a_number_with_a_unit(text: str, seconds: float) -> None:
    policy = Policy.from_toml(HEADER + f'[creepiness.recency]\nwindow = "{text}"\n')
    assert policy.creepiness.recency.window == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        pytest.param('"90 minutes"', "'90 minutes' is not a duration; write 90m", id="words"),
        pytest.param('"2 Hours"', "'2 Hours' is not a duration; write 2h", id="capitals"),
        pytest.param('"1.5 days"', "'1.5 days' is not a duration; write 1.5d", id="decimal-words"),
        pytest.param(
            '"an hour"',
            "'an hour' is not a duration; write a number with ms, s, m, h or d, e.g. 90m or 24h",
            id="no-number",
        ),
        pytest.param(
            '"-1s"',
            "'-1s' is not a duration; write a number with ms, s, m, h or d",
            id="negative",
        ),
        pytest.param(
            "90",
            '90 is not a duration; write it as text with a unit, e.g. "1h"',
            id="number",
        ),
        pytest.param(
            "true",
            'True is not a duration; write it as text with a unit, e.g. "1h"',
            id="boolean",
        ),
        pytest.param('"0s"', "'0s' must be longer than 0 and at most 366d", id="zero"),
        pytest.param('"400d"', "'400d' must be longer than 0 and at most 366d", id="too-long"),
    ],
)
def test_a_bad_duration_says_how_to_write_it(window: str, message: str) -> None:
    found = problems(HEADER + cap(window))
    assert list(found) == ['caps."hourly".window']
    assert message in found['caps."hourly".window']


def test_a_cap_window_under_a_second_is_refused() -> None:
    assert problems(HEADER + cap('"50ms"')) == {
        'caps."hourly".window': "'50ms' is too short; it must be at least 1s"
    }


def test_every_problem_is_listed_at_once_with_its_key_path() -> None:
    error = refusal(
        '[policy]\nname = "test"\nmode = "loud"\n'
        + cap('"1h"', name="first")
        + cap('"1h"', name="second", limit="0")
        + '[creepiness.signals]\n"location.precise" = 2\ncart = -0.1\n'
    )
    assert error.source == "<test>"
    assert error.problems == (
        PolicyProblem("policy.mode", "is 'loud'; should be 'enforce' or 'shadow'", 3),
        PolicyProblem('caps."second".limit', "is 0; should be greater than or equal to 1", 12),
        PolicyProblem(
            'creepiness.signals."location.precise"', "is 2; should be less than or equal to 1", 15
        ),
        PolicyProblem(
            "creepiness.signals.cart", "is -0.1; should be greater than or equal to 0", 16
        ),
    )
    assert str(error) == (
        "policy <test> cannot be used:\n"
        "  line 3: policy.mode: is 'loud'; should be 'enforce' or 'shadow'\n"
        '  line 12: caps."second".limit: is 0; should be greater than or equal to 1\n'
        '  line 15: creepiness.signals."location.precise": is 2; '
        "should be less than or equal to 1\n"
        "  line 16: creepiness.signals.cart: is -0.1; should be greater than or equal to 0"
    )


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        pytest.param(
            HEADER + '[[caps]]\nname = "a"\nper = "user"\nlimt = 1\nwindow = "1h"\n',
            'caps."a".limt',
            "is not a policy key (did you mean 'limit'?)",
            id="cap",
        ),
        pytest.param(
            HEADER + "[creepiness]\nthreshhold = 0.5\n",
            "creepiness.threshhold",
            "is not a policy key (did you mean 'threshold'?)",
            id="section",
        ),
        pytest.param(
            HEADER + "[creepiness.recency]\nwieght = 0.5\n",
            "creepiness.recency.wieght",
            "is not a policy key (did you mean 'weight'?)",
            id="nested",
        ),
        pytest.param(
            HEADER + '[creepiness]\nbudget = { limit = 1, window = "1h", entires = 8 }\n',
            "creepiness.budget.entires",
            "is not a policy key (did you mean 'entries'?)",
            id="optional-section",
        ),
        pytest.param(
            HEADER + "[creepines]\nthreshold = 0.5\n",
            "creepines",
            "is not a policy key (did you mean 'creepiness'?)",
            id="top-level",
        ),
        pytest.param(
            HEADER + "colour = 1\n",
            "policy.colour",
            "is not a policy key (known keys: name, mode, special)",
            id="nothing-close",
        ),
    ],
)
def test_a_misspelt_key_suggests_the_right_one(text: str, key: str, message: str) -> None:
    assert problems(text)[key] == message


def test_a_misspelt_key_reports_the_key_it_left_missing() -> None:
    assert problems(HEADER + '[[caps]]\nname = "a"\nper = "user"\nlimt = 1\nwindow = "1h"\n') == {
        'caps."a".limit': "is required; add it",
        'caps."a".limt': "is not a policy key (did you mean 'limit'?)",
    }


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("", "policy", id="policy"),
        pytest.param('[policy]\nmode = "shadow"\n', "policy.name", id="name"),
        pytest.param(
            HEADER + '[[caps]]\nname = "a"\nlimit = 1\nwindow = "1h"\n',
            'caps."a".per',
            id="cap-per",
        ),
        pytest.param(
            HEADER + '[fallback.content."*"]\nmedia_type = "text/plain"\n',
            'fallback.content."*".body',
            id="content-body",
        ),
    ],
)
def test_a_missing_required_key_is_named(text: str, key: str) -> None:
    assert problems(text) == {key: "is required; add it"}


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        pytest.param(
            "caps = 3\n" + HEADER, "caps", "should be a valid tuple, got 3", id="caps-not-a-list"
        ),
        pytest.param(
            "creepiness = 3\n" + HEADER,
            "creepiness",
            "should be a valid dictionary or instance of Creepiness, got 3",
            id="section-not-a-table",
        ),
        pytest.param(
            HEADER + '[creepiness.signals]\nhealth = "high"\n',
            "creepiness.signals.health",
            "is 'high', text; write a number, without quotes",
            id="signal-not-a-number",
        ),
        pytest.param(
            HEADER + cap('"1h"', limit='"four"'),
            'caps."hourly".limit',
            "is 'four', text; write a whole number, without quotes",
            id="limit-not-a-number",
        ),
        pytest.param(
            HEADER + '[store]\ntimeout = "11s"\n',
            "store.timeout",
            "is 11.0; should be less than or equal to 10",
            id="timeout-too-long",
        ),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_with_what_it_should_be(
    text: str, key: str, message: str
) -> None:
    assert problems(text) == {key: message}


def test_invalid_toml_names_the_problem() -> None:
    error = refusal('[policy\nname = "x"\n', source="broken.toml")
    assert error.problems == (
        PolicyProblem(
            "", "not valid TOML: Expected ']' at the end of a table declaration (column 8)", 1
        ),
    )
    assert str(error).startswith("policy broken.toml cannot be used:\n  line 1: not valid TOML: ")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(PolicyError) as caught:
        load_policy(missing)
    assert caught.value.source == str(missing)
    [problem] = caught.value.problems
    assert problem.message.startswith("cannot be read: ")
    assert "No such file or directory" in problem.message
    assert str(caught.value).startswith(f"policy {missing} cannot be used:\n  cannot be read: ")


def test_a_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match=rf"^policy {re.escape(str(binary))} cannot be used:"):
        load_policy(binary)


def test_a_directory_is_not_a_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be read: "):
        load_policy(tmp_path)


def test_a_bad_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(HEADER + cap('"90 minutes"'), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == (
        f"policy {path} cannot be used:\n"
        "  line 7: caps.\"hourly\".window: '90 minutes' is not a duration; write 90m"
    )


def test_two_caps_may_not_share_a_name() -> None:
    error = refusal(HEADER + cap('"1h"', name="hourly") + cap('"2h"', name="hourly"))
    assert [problem.message for problem in error.problems] == [
        "two caps are named 'hourly'; give each its own name"
    ]


def test_the_error_message_starts_with_the_source() -> None:
    error = refusal('[policy]\nname = "x"\nmode = "loud"\n', source="policies/shop.toml")
    assert str(error).startswith("policy policies/shop.toml cannot be used:\n")


def test_the_longest_window_is_the_longest_cap_budget_or_repetition_window() -> None:
    caps = cap('"4h"', name="a") + cap('"2d"', name="b")
    assert Policy.from_toml(HEADER + caps).longest_window == 2 * 86400.0
    budget = '[creepiness]\nbudget = { limit = 1, window = "3d" }\n'
    assert Policy.from_toml(HEADER + caps + budget).longest_window == 3 * 86400.0
    repetition = (
        '[creepiness]\nbudget = { limit = 1, window = "3d" }\n'
        'repetition = { weight = 0.1, window = "5d" }\n'
    )
    assert Policy.from_toml(HEADER + caps + repetition).longest_window == 5 * 86400.0


def test_the_default_repetition_window_counts_towards_the_longest_window() -> None:
    assert Policy.from_toml(HEADER).longest_window == 86400.0
    assert Policy.from_toml(HEADER + cap('"4h"')).longest_window == 86400.0


def test_a_repetition_without_weight_keeps_no_window() -> None:
    off = '[creepiness]\nrepetition = { weight = 0.0, window = "5d" }\n'
    assert Policy.from_toml(HEADER + cap('"4h"') + off).longest_window == 4 * 3600.0
    assert Policy.from_toml(HEADER + off).longest_window == 0.0


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(HEADER + cap('"2 hours"'), 7, id="array-of-tables"),
        pytest.param(HEADER + "[creepiness]\nbudget = { limit = 0, window = '1h' }\n", 4,
                     id="inline-table"),
        pytest.param("creepiness.threshold = 3\n" + HEADER, 1, id="dotted-key"),
        pytest.param(HEADER + '[fallback.content."*"]\nmedia_type = "json"\nbody = "{}"\n', 4,
                     id="quoted-table"),
        pytest.param(HEADER + '[[caps]]\nname = "a"\nper = "user"\nlimit = 1\n', 3,
                     id="missing-key-points-at-its-table"),
        pytest.param(HEADER + '[fallback.content."*"]\nbody = """\nk = 0\n"""\n[fallback]\nk = 0\n',
                     8, id="after-a-multiline-string"),
    ],
)  # fmt: skip
def test_each_problem_names_the_line_to_edit(text: str, line: int) -> None:
    (problem,) = refusal(text).problems
    assert problem.line == line


def test_a_cap_needs_a_window_or_a_calendar_period_not_both() -> None:
    neither = HEADER + '[[caps]]\nname = "c"\nper = "user"\nlimit = 3\n'
    assert problems(neither) == {
        'caps."c"': 'needs a window (e.g. window = "24h") or a calendar period (calendar = "day")'
    }
    both = neither + 'window = "1h"\ncalendar = "day"\n'
    assert problems(both) == {
        'caps."c"': 'give either window (rolling, e.g. window = "24h") or calendar '
        '(calendar = "day", "week" or "month"), not both'
    }
    assert problems(neither + 'calendar = "fortnight"\n') == {
        'caps."c".calendar': "is 'fortnight'; should be 'day', 'week' or 'month'"
    }


def test_a_reserve_must_leave_room_for_everyone_else() -> None:
    text = HEADER + cap('"1h"', limit="2") + 'reserve = { slots = 2, tags = ["launch"] }\n'
    assert problems(text) == {
        'caps."hourly".reserve': "reserve.slots (2) must be less than limit (2)"
    }
    no_tags = HEADER + cap('"1h"') + "reserve = { slots = 1, tags = [] }\n"
    assert problems(no_tags) == {'caps."hourly".reserve.tags': "is empty; give at least 1"}


def test_tags_must_be_tokens() -> None:
    assert problems(HEADER + cap('"1h"') + 'except_tags = ["two words"]\n') == {
        'caps."hourly".except_tags[0]': "is 'two words'; write a tag as one word, such as service "
        "or black-friday"
    }


def test_time_zone_and_quiet_hours_are_checked() -> None:
    text = (
        HEADER
        + '[time]\nzone = "Europe/Atlantis"\nweek_starts = "friday"\n'
        + '[quiet_hours]\nstart = "9pm"\nend = "24:00"\n'
    )
    assert problems(text) == {
        "time.zone": "'Europe/Atlantis' is not a time zone; write an IANA name such as "
        "Europe/Berlin or UTC",
        "time.week_starts": "is 'friday'; should be 'monday' or 'sunday'",
        "quiet_hours.start": "'9pm' is not a time of day; write it as HH:MM, e.g. 21:00",
        "quiet_hours.end": "'24:00' is not a time of day; write it as HH:MM, e.g. 21:00",
    }
    same = HEADER + '[quiet_hours]\nstart = "22:00"\nend = "22:00"\n'
    assert problems(same) == {
        "quiet_hours": "start and end are the same time; quiet hours would be empty"
    }


def test_calendar_caps_keep_state_long_enough_for_their_period() -> None:
    text = HEADER + '[[caps]]\nname = "m"\nper = "user"\nlimit = 3\ncalendar = "month"\n'
    assert Policy.from_toml(text).longest_window == 32 * 86400


def test_values_of_the_wrong_form_say_what_form_is_wanted() -> None:
    text = (
        HEADER
        + '[fallback]\nkeep_headers = ["X Request"]\n'
        + '[fallback.content."*"]\nmedia_type = "json"\nbody = "{}"\n'
    )
    assert problems(text) == {
        "fallback.keep_headers[0]": "'X Request' is not a header name; write one such as "
        "X-Request-Id",
        'fallback.content."*".media_type': "'json' is not a media type; write one such as "
        "application/json or text/html; charset=utf-8",
    }


def test_the_default_policy_lists_every_special_category_with_its_source() -> None:
    from throttle.policy import DEFAULT_SPECIAL

    shipped = load_policy(DEFAULT_POLICY)
    assert shipped.special == DEFAULT_SPECIAL
    assert all(category.source for category in shipped.special.values())


def test_the_gates_settings_are_checked() -> None:
    text = (
        HEADER
        + "[creepiness]\ncategory_band = { low = 0.6, high = 0.4 }\n"
        + '[consent.gpc_json]\nlast_update = "last tuesday"\n'
        + '[special.health]\nsource = "GDPR Art. 9(1)"\nsignals = []\n'
        + "[calculus]\nminimal = -1\n"
    )
    assert problems(text) == {
        "creepiness.category_band": "low (0.6) must be below high (0.4)",
        "consent.gpc_json.last_update": "is 'last tuesday'; write a date such as 2026-11-01",
        "special.health.signals": "is empty; give at least 1",
        "calculus.minimal": "is -1; should be greater than or equal to 0",
    }


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        pytest.param('[fallback.content."*"]\nmedia_type = "application/j\u2011son"\nbody = "{}"\n',
                     'fallback.content."*".media_type', "U+2011 (NON-BREAKING HYPHEN)", id="u2011"),
        pytest.param('[fallback.content."*"]\nmedia_type = "text/html\\r\\nX-A: 1"\nbody = ""\n',
                     'fallback.content."*".media_type', "U+000D", id="cr"),
        pytest.param('[fallback.content."*"]\nmedia_type = "text/html\\u0000"\nbody = ""\n',
                     'fallback.content."*".media_type', "U+0000", id="nul"),
        pytest.param('[fallback]\nkeep_headers = ["X-Ok", "Personalization"]\n',
                     "fallback.keep_headers[1]", "throttle's own", id="marker"),
        pytest.param('[fallback]\nkeep_headers = ["personalization-decision"]\n',
                     "fallback.keep_headers[0]", "throttle's own", id="decision"),
        pytest.param('[fallback]\nkeep_headers = ["Content-Length"]\n',
                     "fallback.keep_headers[0]", "describes the personalized body", id="length"),
        pytest.param('[fallback]\nkeep_headers = ["Transfer-Encoding"]\n',
                     "fallback.keep_headers[0]", "hop-by-hop", id="hop-by-hop"),
        pytest.param('[fallback]\nkeep_headers = ["Set-Cookie"]\n',
                     "fallback.keep_headers[0]", "stored about the person", id="cookie"),
        pytest.param("[creepiness]\nthreshold = \"0.7\"\n", "creepiness.threshold",
                     "is '0.7', text; write a number, without quotes", id="number-as-text"),
        pytest.param('[audit]\nenabled = "no"\n', "audit.enabled",
                     "is 'no', text; write true or false, without quotes", id="bool-as-text"),
        pytest.param('[decisions]\nheader = "off"\n', "decisions.header",
                     "is 'off', text; write true or false", id="header-off"),
        pytest.param("[fallback]\nk = 50.0\n", "fallback.k", "should be a valid integer",
                     id="float-for-int"),
        pytest.param("[consent.tcf]\ncontent = [5, true]\n", "consent.tcf.content[1]",
                     "should be a valid integer", id="bool-in-int-array"),
    ],
)  # fmt: skip
def test_values_headers_cannot_carry_and_loose_types_are_refused_with_line_and_key(
    body: str, key: str, words: str
) -> None:
    (problem,) = refusal(HEADER + body).problems
    assert problem.key == key
    assert words in problem.message
    assert problem.line == 4


def test_a_media_type_with_parameters_and_a_kept_custom_header_are_fine() -> None:
    policy = Policy.from_toml(
        HEADER + '[fallback]\nkeep_headers = ["X-Request-Id", "Vary"]\n'
        '[fallback.content."*"]\nmedia_type = "text/html; charset=utf-8"\nbody = ""\n'
    )
    assert policy.fallback.keep_headers == ("X-Request-Id", "Vary")


def test_rules_across_keys_name_the_key_and_line_that_broke_them() -> None:
    levels = refusal(HEADER + "[levels]\nminimal_threshold = 0.8\n").problems
    assert [(p.key, p.line) for p in levels] == [("levels.minimal_threshold", 4)]
    threshold = refusal(HEADER + "[creepiness]\nthreshold = 0.9\n").problems
    assert [(p.key, p.line) for p in threshold] == [("creepiness.threshold", 4)]
    twice = refusal(HEADER + cap('"1h"', name="daily") + cap('"2h"', name="daily")).problems
    assert [(p.key, p.line) for p in twice] == [('caps."daily"', 8)]
    reserve = HEADER + cap('"1h"', limit="2") + "reserve = { slots = 2, tags = ['x'] }\n"
    assert [(p.key, p.line) for p in refusal(reserve).problems] == [('caps."hourly".reserve', 8)]


def test_a_cap_without_a_usable_name_is_named_by_its_place() -> None:
    text = HEADER + '[[caps]]\nname = 5\nper = "user"\nlimit = 1\nwindow = "1h"\n'
    (problem,) = refusal(text).problems
    assert problem.key == "caps[0].name"


def test_a_special_table_adds_to_the_default_categories() -> None:
    from throttle.policy import DEFAULT_SPECIAL

    text = HEADER + '[special.children]\nsource = "COPPA"\nsignals = ["child_age"]\n'
    policy = Policy.from_toml(text)
    assert set(policy.special) == {*DEFAULT_SPECIAL, "children"}
    more = HEADER + '[special.health]\nsignals = ["health", "medication", "pregnancy", "dx"]\n'
    assert Policy.from_toml(more).special["health"].signals[-1] == "dx"


def test_dropping_or_misspelling_a_default_special_signal_is_refused() -> None:
    typo = HEADER + '[special.health]\nsignals = ["helth", "medication", "pregnancy"]\n'
    (problem,) = refusal(typo).problems
    assert (problem.key, problem.line) == ("special.health.signals", 4)
    assert "leaves out 'health' ('helth' is written instead: a typo?)" in problem.message
    assert 'special = "replace" in [policy]' in problem.message


def test_a_file_may_replace_the_default_categories_when_it_says_so() -> None:
    text = (
        '[policy]\nname = "kids"\nspecial = "replace"\n'
        '[special.children]\nsource = "COPPA"\nsignals = ["child_age"]\n'
    )
    assert set(Policy.from_toml(text).special) == {"children"}
    assert Policy.from_toml('[policy]\nname = "none"\nspecial = "replace"\n').special == {}


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        pytest.param(
            HEADER + '[consent.tcf]\nrequired = false\ngpc_json = { last_update = "2026-11-01" }\n',
            "consent.tcf.gpc_json",
            "gpc_json is a key of [consent]: written below the [consent.tcf] header",
            id="nested",
        ),
        pytest.param(
            HEADER + '[store]\ntimeout = "1s"\nquiet_hours = { start = "21:00", end = "08:00" }\n',
            "store.quiet_hours",
            "quiet_hours is a top-level key: written below the [store] header",
            id="top-level",
        ),
    ],
)
def test_a_key_that_landed_in_the_table_above_says_so(text: str, key: str, words: str) -> None:
    assert words in problems(text)[key]


def test_uncommenting_gpc_json_in_the_default_policy_turns_it_on() -> None:
    text = DEFAULT_POLICY.read_text()
    suggested = '# gpc_json = { last_update = "2026-11-01" }\n'
    assert text.count(suggested) == 1
    policy = Policy.from_toml(text.replace(suggested, suggested.removeprefix("# ")))
    assert policy.consent.gpc_json is not None
    assert policy.consent.gpc_json.last_update == "2026-11-01"


def test_a_top_level_key_added_at_the_end_of_the_default_policy_is_explained() -> None:
    text = DEFAULT_POLICY.read_text() + 'quiet_hours = { start = "21:00", end = "08:00" }\n'
    (problem,) = refusal(text).problems
    assert problem.key == "store.quiet_hours"
    assert problem.line == text.count("\n")
    assert "quiet_hours is a top-level key: written below the [store] header" in problem.message
