"""The `Personalization` marker: an RFC 8941 dictionary that reads back to the marker it carries."""

from __future__ import annotations

import gc
import re
import string
import tracemalloc
from collections.abc import Callable

import pytest
from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList
from http_sfv.types import Token
from hypothesis import given
from hypothesis import strategies as st

from throttle import Marker, MarkerError, parse_marker, personalization
from throttle.message import MARKER_CACHE_BYTES, PERSONALIZATION_HEADER

EVERY_MEMBER = Marker(
    campaign="spring-sale",
    segment="eu/de/returning",
    channel="email",
    signals=("purchase_history", "location.city"),
    event_age=120,
    inferred=True,
    third_party=True,
    explained=True,
    transactional=True,
)


def header(marker: Marker) -> str:
    headers = personalization(
        marker.campaign,
        segment=marker.segment,
        channel=marker.channel,
        signals=list(marker.signals),
        event_age=marker.event_age,
        inferred=marker.inferred,
        third_party=marker.third_party,
        explained=marker.explained,
        transactional=marker.transactional,
    )
    assert list(headers) == [PERSONALIZATION_HEADER]
    return headers[PERSONALIZATION_HEADER]


def test_every_member_survives_the_round_trip() -> None:
    value = header(EVERY_MEMBER)
    assert value == (
        'campaign="spring-sale", segment="eu/de/returning", channel=email, '
        'signals=("purchase_history" "location.city"), event-age=120, '
        "inferred, third-party, explained, transactional"
    )
    assert parse_marker(value.encode()) == EVERY_MEMBER


@pytest.mark.parametrize("flag", ["inferred", "third_party", "explained", "transactional"], ids=str)
def test_each_boolean_reads_back_on_its_own(flag: str) -> None:
    marker = Marker(campaign="spring-sale", **{flag: True})  # type: ignore[arg-type]
    value = header(marker)
    assert value == f'campaign="spring-sale", {flag.replace("_", "-")}'
    assert parse_marker(value.encode()) == marker


def test_a_bare_marker_names_only_the_campaign_and_reads_back_with_the_defaults() -> None:
    assert personalization("spring-sale") == {"Personalization": 'campaign="spring-sale"'}
    parsed = parse_marker(b'campaign="spring-sale"')
    assert parsed.channel == "web"
    assert parsed.segment == ""
    assert parsed.signals == ()
    assert parsed.event_age is None
    assert not (parsed.inferred or parsed.third_party or parsed.explained or parsed.transactional)


def test_an_event_age_of_zero_is_carried() -> None:
    value = header(Marker(campaign="spring-sale", event_age=0))
    assert value == 'campaign="spring-sale", event-age=0'
    assert parse_marker(value.encode()).event_age == 0


def test_false_booleans_read_as_false() -> None:
    parsed = parse_marker(b'campaign="spring-sale", inferred=?0, explained=?1')
    assert parsed.inferred is False
    assert parsed.explained is True


def test_the_header_is_a_structured_field_dictionary() -> None:
    value = header(EVERY_MEMBER)
    members = Dictionary()
    members.parse(value.encode())
    assert list(members) == [
        "campaign",
        "segment",
        "channel",
        "signals",
        "event-age",
        "inferred",
        "third-party",
        "explained",
        "transactional",
    ]
    assert members["campaign"].value == "spring-sale"
    assert not isinstance(members["campaign"].value, Token)
    assert isinstance(members["channel"].value, Token)
    assert members["channel"].value == "email"
    signals = members["signals"]
    assert isinstance(signals, InnerList)
    assert [item.value for item in signals] == ["purchase_history", "location.city"]
    assert members["event-age"].value == 120
    for flag in ("inferred", "third-party", "explained", "transactional"):
        assert members[flag].value is True
    assert str(members) == value


_PRINTABLE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128
).filter(str.strip)  # all-blank text is refused, as tested below
_PART = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=10).filter(
    lambda part: part not in (".", "..")  # refused, as tested below
)
_SEGMENTS = st.one_of(st.just(""), st.lists(_PART, min_size=1, max_size=8).map("/".join))
_CHANNELS = st.from_regex(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]{0,20}", fullmatch=True)
_MARKERS = st.builds(
    Marker,
    campaign=_PRINTABLE,
    segment=_SEGMENTS,
    channel=_CHANNELS,
    signals=st.lists(_PRINTABLE, max_size=32).map(tuple),
    event_age=st.none() | st.integers(min_value=0, max_value=999_999_999_999_999),
    inferred=st.booleans(),
    third_party=st.booleans(),
    explained=st.booleans(),
    transactional=st.booleans(),
)


@given(_MARKERS)
def test_any_marker_the_helper_accepts_reads_back_equal(marker: Marker) -> None:
    value = header(marker)
    Dictionary().parse(value.encode())
    assert parse_marker(value.encode()) == marker


def test_unknown_members_are_ignored() -> None:
    parsed = parse_marker(
        b'campaign="spring-sale", priority=5, locale="de";q=1, future, later=(1 2)'
    )
    assert parsed == Marker(campaign="spring-sale")


@pytest.mark.parametrize(
    ("value", "meant"), [(b"event_age=7", "event-age"), (b"third_party", "third-party")]
)
def test_a_misspelt_member_is_refused_rather_than_silently_unscored(
    value: bytes, meant: str
) -> None:
    with pytest.raises(MarkerError, match=f"did you mean {meant}"):
        parse_marker(b'campaign="spring-sale", ' + value)


def test_members_may_come_in_any_order() -> None:
    parsed = parse_marker(b'explained, signals=("cart"), campaign="spring-sale", channel=push')
    assert parsed == Marker(
        campaign="spring-sale", channel="push", signals=("cart",), explained=True
    )


def test_a_channel_may_be_sent_as_a_string() -> None:
    assert parse_marker(b'campaign="spring-sale", channel="email"').channel == "email"


_THIRTY_THREE_SIGNALS = b" ".join(b'"s%d"' % number for number in range(33))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(b"", "the header is empty; campaign is required", id="empty"),
        pytest.param(b"  ", "the header is empty; campaign is required", id="blank"),
        pytest.param(b'campaign=" "', "campaign must be a non-empty string", id="campaign-blank"),
        pytest.param(b"campaign=", "not an RFC 8941 dictionary: Empty item", id="no-value"),
        pytest.param(b"campaign=1", "campaign must be a string, got 1", id="campaign-integer"),
        pytest.param(
            b'segment="eu/de", channel=web',
            'campaign is required, e.g. campaign="spring-sale"',
            id="no-campaign",
        ),
        pytest.param(b'campaign=""', "campaign must be a non-empty string", id="campaign-empty"),
        pytest.param(
            b'campaign="x", signals="a"',
            'signals must be an inner list of strings, e.g. ("a" "b")',
            id="signals-not-a-list",
        ),
        pytest.param(
            b'campaign="x", signals=(1 2)', "signals must be a string, got 1", id="signals-numbers"
        ),
        pytest.param(
            b'campaign="x", event-age=-1',
            "event-age must be a whole number of seconds from 0 to 999999999999999, got -1",
            id="event-age-negative",
        ),
        pytest.param(
            b'campaign="x", event-age="5"',
            "event-age must be a whole number of seconds, got 5",
            id="event-age-string",
        ),
        pytest.param(
            b'campaign="x", event-age=1.5',
            "event-age must be a whole number of seconds, got 1.5",
            id="event-age-decimal",
        ),
        pytest.param(
            b'campaign="x", event-age=?1',
            "event-age must be a whole number of seconds",
            id="event-age-boolean",
        ),
        pytest.param(
            b'campaign="x", inferred=1',
            "inferred must be a boolean (?1 or ?0), got 1",
            id="inferred-integer",
        ),
        pytest.param(
            b'campaign="x", inferred="yes"',
            "inferred must be a boolean (?1 or ?0), got yes",
            id="inferred-string",
        ),
        pytest.param(
            b'campaign="x", segment="eu//de"',
            "segment 'eu//de' must be a path of letters, digits",
            id="segment-empty-step",
        ),
        pytest.param(
            b'campaign="x", segment="a b"',
            "segment 'a b' must be a path of letters, digits",
            id="segment-space",
        ),
        pytest.param(
            b'campaign="x", segment=("eu")',
            "segment must be a single value, not a list",
            id="segment-list",
        ),
        pytest.param(
            b'campaign="x", channel="not a token"',
            "channel 'not a token' must be a token such as web or email",
            id="channel-not-a-token",
        ),
        pytest.param(
            'campaign="café"'.encode(),
            "not an RFC 8941 dictionary: String contains disallowed character",
            id="non-ascii",
        ),
        pytest.param(
            b'campaign="x",',
            "not an RFC 8941 dictionary: Dictionary has trailing comma",
            id="trailing-comma",
        ),
        pytest.param(
            b'campaign="x", signals=(' + _THIRTY_THREE_SIGNALS + b")",
            "at most 32 signals, got 33",
            id="33-signals",
        ),
        pytest.param(
            b'campaign="' + b"a" * 129 + b'"',
            "must be printable ASCII, at most 128 characters",
            id="campaign-129-characters",
        ),
        pytest.param(b"\x00\xff", "not an RFC 8941 dictionary", id="garbage"),
    ],
)
def test_a_malformed_marker_is_refused_naming_the_problem(value: bytes, problem: str) -> None:
    with pytest.raises(MarkerError, match=re.escape(problem)):
        parse_marker(value)


def test_a_campaign_of_128_characters_is_accepted() -> None:
    assert parse_marker(b'campaign="' + b"a" * 128 + b'"').campaign == "a" * 128


def test_32_signals_are_accepted() -> None:
    signals = b" ".join(b'"s%d"' % number for number in range(32))
    assert len(parse_marker(b'campaign="x", signals=(' + signals + b")").signals) == 32


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        pytest.param(
            {"campaign": "spring\nsale"},
            "campaign 'spring\\nsale' must be printable ASCII",
            id="campaign-not-printable",
        ),
        pytest.param({"campaign": ""}, "campaign must be a non-empty string", id="campaign-empty"),
        pytest.param(
            {"campaign": "x", "segment": "eu//de"},
            "segment 'eu//de' must be a path",
            id="segment",
        ),
        pytest.param(
            {"campaign": "x", "channel": "in app"},
            "channel 'in app' must be a token such as web or email",
            id="channel",
        ),
        pytest.param(
            {"campaign": "x", "signals": ["ok", "caf\u00e9"]},
            "signal 'café' must be printable ASCII",
            id="signal-not-ascii",
        ),
        pytest.param(
            {"campaign": "x", "event_age": -1},
            "event-age must be a whole number of seconds from 0 to 999999999999999, got -1",
            id="event-age-negative",
        ),
        pytest.param(
            {"campaign": "x", "event_age": True},
            "event-age must be a whole number of seconds from 0 to 999999999999999, got True",
            id="event-age-bool",
        ),
        pytest.param(
            {"campaign": "x", "event_age": 1.0},
            "event-age must be a whole number of seconds from 0 to 999999999999999, got 1.0",
            id="event-age-float",
        ),
        pytest.param(
            {"campaign": "x", "event_age": 10**15},
            "event-age must be a whole number of seconds from 0 to 999999999999999",
            id="event-age-16-digits",
        ),
    ],
)
def test_the_helper_refuses_values_the_header_cannot_carry(
    fields: dict[str, object], problem: str
) -> None:
    campaign = fields.pop("campaign")
    with pytest.raises(MarkerError, match=re.escape(problem)):
        personalization(campaign, **fields)  # type: ignore[arg-type]


def test_parsed_markers_are_cached_by_value() -> None:
    first = parse_marker(b'campaign="cached", signals=("cart")')
    again = parse_marker(bytes(bytearray(b'campaign="cached", signals=("cart")')))
    assert again is first
    other = parse_marker(b'campaign="cached", signals=("cart"), explained')
    assert other is not first


def test_tags_are_an_inner_list_of_tokens_that_reads_back() -> None:
    tagged = Marker(campaign="order-update", tags=("service", "email-2026"))
    value = tagged.header_value()
    assert value == 'campaign="order-update", tags=(service email-2026)'
    assert parse_marker(value.encode()) == tagged
    assert personalization("a", tags=["promo"]) == {"Personalization": 'campaign="a", tags=(promo)'}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b'campaign="a", tags=promo', "tags must be an inner list of tokens, e.g. (promo service)"),
        (b'campaign="a", tags=("two words")', "tag 'two words' must be a token such as promo"),
        (b'campaign="a", tags=(1)', "tags must be a string, got 1"),
        (
            b'campaign="a", tags=(a b c d e f g h i)',
            "at most 8 tags, got 9",
        ),
    ],
)
def test_bad_tags_are_refused_in_words(value: bytes, problem: str) -> None:
    with pytest.raises(MarkerError) as raised:
        parse_marker(value)
    assert str(raised.value).startswith(problem)


@pytest.mark.parametrize(
    ("member", "meant"),
    [("decide", "decides"), ("decision", "decides"), ("advertisement", "advertising"),
     ("relevancy", "relevance"), ("ad", "advertising")],
)  # fmt: skip
def test_a_misspelt_gate_member_is_refused_not_ignored(member: str, meant: str) -> None:
    with pytest.raises(MarkerError, match=f"unknown member {member}; did you mean {meant}"):
        parse_marker(f'campaign="a", {member}=price'.encode())


def test_an_empty_decides_is_refused() -> None:
    with pytest.raises(MarkerError, match="decides must be one of price, credit, eligibility"):
        parse_marker(b'campaign="a", decides=""')


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        pytest.param("../../etc/passwd", "must not have '.' or '..' levels", id="dot-dot"),
        pytest.param("eu/./de", "must not have '.' or '..' levels", id="dot"),
        pytest.param("..", "must not have '.' or '..' levels", id="only-dot-dot"),
        pytest.param("eu/..", "must not have '.' or '..' levels", id="trailing-dot-dot"),
        pytest.param("eu//de", "must be a path", id="empty-level"),
        pytest.param("/eu", "must be a path", id="leading-slash"),
        pytest.param("eu/", "must be a path", id="trailing-slash"),
        pytest.param("/".join("abcdefghi"), "has 9 levels; at most 8", id="9-levels"),
        pytest.param("/".join(["a"] * 64), "has 64 levels; at most 8", id="64-levels"),
        pytest.param("a" * 129, "at most 128 characters", id="129-characters"),
    ],
)
def test_a_segment_must_be_a_short_path_of_named_levels(segment: str, problem: str) -> None:
    # Segments reach the app's fallback provider and cost a store lookup per level.
    with pytest.raises(MarkerError, match=re.escape(problem)):
        parse_marker(f'campaign="x", segment="{segment}"'.encode())
    with pytest.raises(MarkerError, match=re.escape(problem)):
        personalization("x", segment=segment)


@pytest.mark.parametrize(
    "segment", ["/".join("abcdefgh"), "eu/de/berlin", "...", "eu/.hidden/de.v2", "a" * 128]
)
def test_segments_within_the_limits_are_accepted(segment: str) -> None:
    assert parse_marker(f'campaign="x", segment="{segment}"'.encode()).segment == segment
    assert personalization("x", segment=segment) == {
        "Personalization": f'campaign="x", segment="{segment}"'
    }


def test_the_helper_refuses_a_segment_that_is_not_a_string() -> None:
    with pytest.raises(MarkerError, match="segment must be a string, got 42"):
        personalization("x", segment=42)  # type: ignore[arg-type]


def _retained_by(parse: Callable[[], object]) -> int:
    """Bytes still allocated after `parse` returns and its garbage is collected."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parse()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_the_marker_cache_is_bounded_in_bytes_not_entries() -> None:
    # Unknown members are skipped, so a valid marker may be as large as the app makes it.
    padding = b"y" * 40_000

    def parse_large() -> None:
        for number in range(60):
            parse_marker(b'campaign="big-%d", later="%s"' % (number, padding))

    assert _retained_by(parse_large) < 1024 * 1024


def test_many_distinct_markers_fill_the_cache_to_its_budget_only() -> None:
    # Markers differ per request (event-age counts seconds): the cache must stop at its budget.
    signals = b" ".join(b'"signal-%02d"' % number for number in range(4))

    def parse_many() -> None:
        for number in range(8_000):
            parse_marker(b'campaign="c%d", segment="a/b/c/d", signals=(%s)' % (number, signals))

    assert _retained_by(parse_many) < MARKER_CACHE_BYTES * 1.1
