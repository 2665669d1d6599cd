"""The policy model: a TOML file, validated once into frozen objects the engine reads.

Every key has a default except the policy's name, so a short file states only what it changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import math
import re
import tomllib
import unicodedata
import zoneinfo
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from throttle.errors import ConfigurationError, PolicyError, PolicyProblem
from throttle.locate import key_lines, line_of

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Words people write for units, mapped to the unit we ask for instead.
_UNIT_WORDS = {
    "millisecond": "ms", "milliseconds": "ms", "msec": "ms",
    "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "day": "d", "days": "d",
}  # fmt: skip
_MAX_DURATION = 366 * 86400.0
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def parse_duration(value: object) -> float:
    """`"90m"` -> 5400.0 seconds. Accepts a number with ms, s, m, h or d."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f'{value!r} is not a duration; write it as text with a unit, e.g. "1h"')
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration; {_duration_hint(value)}")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0 or seconds > _MAX_DURATION:
        raise ValueError(f"{value!r} must be longer than 0 and at most 366d")
    return seconds


def _duration_hint(value: str) -> str:
    words = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", value)
    if words and words[2].lower() in _UNIT_WORDS:
        return f"write {words[1]}{_UNIT_WORDS[words[2].lower()]}"
    return "write a number with ms, s, m, h or d, e.g. 90m or 24h"


def _at_least(minimum: float, words: str) -> Callable[[object], float]:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"{value!r} is too short; it must be at least {words}")
        return seconds

    return parse


def _within(minimum: float, maximum: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if not minimum <= seconds <= maximum:
            raise ValueError(
                f"{value!r} must be at least {format_duration(minimum)} and at most "
                f"{format_duration(maximum)}"
            )
        return seconds

    return parse


def _check_name(value: str) -> str:
    if not re.fullmatch(_NAME, value) or len(value) > 64:
        raise ValueError(
            f"{value!r} is not a usable name; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


# Editors see durations as what the file holds: text with a unit.
_DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"
_DURATION_SCHEMA = WithJsonSchema(
    {
        "type": "string",
        "pattern": _DURATION_PATTERN,
        "description": "A number with a unit: ms, s, m, h or d, e.g. 90m or 24h",
    }
)
Duration = Annotated[float, BeforeValidator(parse_duration), _DURATION_SCHEMA]
# Windows count whole seconds at least: delivery times are kept to the millisecond, but a
# window shorter than a second would cap nothing a person notices.
Window = Annotated[float, BeforeValidator(_at_least(1.0, "1s")), _DURATION_SCHEMA]
Name = Annotated[str, AfterValidator(_check_name)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
_TAG_PATTERN = r"^[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*$"
_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# What a value that does not match a pattern should look like, in words.
_PATTERN_WORDS = {
    _TAG_PATTERN: "write a tag as one word, such as service or black-friday",
    _DATE_PATTERN: "write a date such as 2026-11-01",
}
Tag = Annotated[str, Field(pattern=_TAG_PATTERN, max_length=128)]
# A TOML array becomes a tuple: the one conversion strict models allow, items stay strict.
_ARRAY = Field(strict=False)


def _check_zone(value: str) -> str:
    if not valid_zone(value):
        raise ValueError(
            f"{value!r} is not a time zone; write an IANA name such as Europe/Berlin or UTC"
        )
    return value


def valid_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _clock_time(value: object) -> int:
    """`"21:30"` -> minutes after midnight (1290)."""
    match = (
        re.fullmatch(r"\s*([01]?\d|2[0-3]):([0-5]\d)\s*", value) if isinstance(value, str) else None
    )
    if match is None:
        raise ValueError(f"{value!r} is not a time of day; write it as HH:MM, e.g. 21:00")
    return int(match[1]) * 60 + int(match[2])


def format_clock_time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


Zone = Annotated[str, AfterValidator(_check_zone)]
ClockTime = Annotated[
    int,
    BeforeValidator(_clock_time),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*([01]?\d|2[0-3]):[0-5]\d\s*$",
            "description": "A time of day, HH:MM, in the person's time zone",
        }
    ),
]


# Values that leave in a response header: RFC 9110's token, media type and field name, in
# visible ASCII. Anything else would fail to encode or split the response (CR, LF, NUL).
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = rf"{_TCHAR}+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_MEDIA_TYPE = rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*"
_FIELD_NAME = _TOKEN
# Headers segment content may not keep, and why: what the middleware owns, what belongs to one
# connection, and what describes (or came with) the personalized body that was replaced.
_NEVER_KEPT = {
    **dict.fromkeys(
        ("personalization", "personalization-decision"),
        "throttle's own: the marker never leaves, the decision is sent by decisions.header",
    ),
    **dict.fromkeys(
        ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
         "upgrade", "proxy-authenticate", "proxy-authorization"),
        "a hop-by-hop header belongs to one connection, not to the content",
    ),
    **dict.fromkeys(
        ("content-length", "content-type", "content-encoding", "content-range", "etag",
         "last-modified", "content-md5", "digest", "content-digest", "repr-digest",
         "content-location", "content-disposition"),
        "it describes the personalized body, which segment content replaces; throttle writes "
        "what the new body needs",
    ),
    **dict.fromkeys(
        ("set-cookie", "set-cookie2"),
        "it may hold what the personalized response stored about the person",
    ),
}  # fmt: skip


def _header_value(value: str) -> None:
    for position, char in enumerate(value, start=1):
        if not " " <= char <= "~":
            name = unicodedata.name(char, "a control character")
            raise ValueError(
                f"{value!r} holds U+{ord(char):04X} ({name}) at character {position}; a header "
                "carries visible ASCII only: retype it"
            )


def _check_media_type(value: str) -> str:
    _header_value(value)
    if not re.fullmatch(_MEDIA_TYPE, value):
        raise ValueError(
            f"{value!r} is not a media type; write one such as application/json or "
            "text/html; charset=utf-8"
        )
    return value


def _check_kept_header(value: str) -> str:
    _header_value(value)
    if not re.fullmatch(_FIELD_NAME, value):
        raise ValueError(f"{value!r} is not a header name; write one such as X-Request-Id")
    why = _NEVER_KEPT.get(value.lower())
    if why is not None:
        raise ValueError(f"{value!r} cannot be kept on segment content: {why}")
    return value


MediaType = Annotated[
    str,
    AfterValidator(_check_media_type),
    Field(max_length=256, json_schema_extra={"pattern": f"^{_MEDIA_TYPE}$"}),
]
KeptHeader = Annotated[
    str,
    AfterValidator(_check_kept_header),
    Field(max_length=128, json_schema_extra={"pattern": f"^{_FIELD_NAME}$"}),
]


class _Model(BaseModel):
    # Strict: TOML has numbers and booleans of its own, so the text "0.7" or "no" standing for
    # one is a mistake to name, not a value to convert. Arrays are read as tuples (_ARRAY).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _rule(message: str, *path: str | int) -> PydanticCustomError:
    """A rule across keys, broken: `path` (below the model that checks it) is the key to edit."""
    return PydanticCustomError("policy_rule", "{rule}", {"rule": message, "path": path})


class PolicyInfo(_Model):
    name: Name
    mode: Literal["enforce", "shadow"] = "enforce"
    # "extend": the file's [special.*] tables add to throttle's default special categories and
    # may add signals to them, never drop one. "replace": they are the whole list, on purpose.
    special: Literal["extend", "replace"] = "extend"


Period = Literal["day", "week", "month"]
# How long a calendar cap keeps deliveries: its longest period, with room for a DST shift.
CALENDAR_SPANS = {"day": 26 * 3600.0, "week": 7 * 86400.0 + 7200.0, "month": 32 * 86400.0}


class Reserve(_Model):
    """The last `slots` of a cap are kept for campaigns carrying one of `tags`."""

    slots: Annotated[int, Field(ge=1, le=1000)]
    tags: Annotated[tuple[Tag, ...], _ARRAY, Field(min_length=1)]


class Cap(_Model):
    """At most `limit` personalized messages per user, channel or campaign, counted over a
    rolling `window` or the current calendar day, week or month in the person's time zone."""

    name: Name
    per: Literal["user", "channel", "campaign"]
    limit: Annotated[int, Field(ge=1, le=1000)]
    window: Window | None = None
    calendar: Period | None = None
    # Campaigns with one of these tags are neither capped nor counted by this cap.
    except_tags: Annotated[tuple[Tag, ...], _ARRAY] = ()
    reserve: Reserve | None = None
    # Decided and reported as if enforced, but the personalized content is delivered.
    shadow: bool = False

    @model_validator(mode="after")
    def _one_kind_of_window(self) -> Cap:
        if (self.window is None) == (self.calendar is None):
            raise _rule(
                'give either window (rolling, e.g. window = "24h") or calendar '
                '(calendar = "day", "week" or "month"), not both'
                if self.window is not None
                else 'needs a window (e.g. window = "24h") or a calendar period (calendar = "day")'
            )
        if self.reserve is not None and self.reserve.slots >= self.limit:
            raise _rule(
                f"reserve.slots ({self.reserve.slots}) must be less than limit ({self.limit})",
                "reserve",
            )
        return self

    @property
    def span(self) -> float:
        """Seconds of deliveries the cap needs to see."""
        return self.window if self.window is not None else CALENDAR_SPANS[self.calendar or "day"]

    @property
    def period(self) -> str:
        """The cap's window in words: "any 1h" or "calendar day"."""
        if self.window is not None:
            return f"any {format_duration(self.window)}"
        return f"calendar {self.calendar}"


class Budget(_Model):
    limit: Annotated[float, Field(gt=0.0, le=1000.0)]
    window: Window
    # Oldest deliveries are merged beyond this many, which only ever over-counts (privacy-safe).
    entries: Annotated[int, Field(ge=4, le=256)] = 32


class Recency(_Model):
    """Behaviour less than `window` ago adds up to `weight`, fading linearly."""

    weight: Share = 0.3
    window: Duration = 1800.0


class Repetition(_Model):
    """Each earlier delivery of the same campaign within `window` adds `weight`."""

    weight: Share = 0.1
    window: Duration = 86400.0


class Band(_Model):
    """Scores above `low` and at most `high` get content about the message's category."""

    low: Share
    high: Share

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.low >= self.high:
            raise _rule(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


class Creepiness(_Model):
    threshold: Share = 0.7
    budget: Budget | None = None
    signals: dict[str, Share] = Field(default_factory=dict)
    default_signal: Share = 0.3
    inferred: Annotated[float, Field(ge=1.0, le=5.0)] = 1.5
    third_party: Annotated[float, Field(ge=1.0, le=5.0)] = 1.5
    explained_discount: Share = 0.3
    recency: Recency = Recency()
    repetition: Repetition = Repetition()
    category_band: Band | None = None


GpcBlock = Literal["all", "inferred", "third-party", "sensitive"]
Purpose = Annotated[int, Strict(), Field(ge=1, le=24)]


class Tcf(_Model):
    """IAB TCF v2.2 consent strings (the `euconsent-v2` cookie): the purposes a message needs."""

    # Purposes 5 "create profiles to personalise content", 6 "use profiles to select
    # personalised content"; for ad-like messages 3 and 4, their advertising counterparts.
    content: Annotated[tuple[Purpose, ...], _ARRAY] = (5, 6)
    advertising: Annotated[tuple[Purpose, ...], _ARRAY] = (3, 4)
    # Whether a request without a consent string may be personalized (no banner, no TCF).
    required: bool = False


class GpcJson(_Model):
    """What `/.well-known/gpc.json` says (the GPC specification's site support resource)."""

    last_update: Annotated[str, Field(pattern=_DATE_PATTERN)]


class Consent(_Model):
    # What a person who sends Sec-GPC: 1 is not personalized with.
    gpc: Annotated[tuple[GpcBlock, ...], _ARRAY] = ("inferred", "third-party")
    # Serve /.well-known/gpc.json, telling browsers the site honours the signal.
    gpc_json: GpcJson | None = None
    # Signals at or above this weight count as "sensitive" for the gpc rule.
    sensitive_at: Share = 0.5
    anonymous: Literal["segment", "personalize"] = "segment"
    tcf: Tcf = Tcf()


class SpecialCategory(_Model):
    """Data no score may weigh: a message using it needs the person's explicit consent."""

    # Where the law says so, in words a privacy officer can check.
    source: Annotated[str, Field(min_length=1)]
    # The signals that reveal the category, whether declared or inferred.
    signals: Annotated[tuple[str, ...], _ARRAY, Field(min_length=1)]


_ART9 = "GDPR Art. 9(1)"
_CO = "Colorado Privacy Act, C.R.S. 6-1-1303(24) and 4 CCR 904-3 (inferences count too)"
_CCPA = "CCPA, Cal. Civ. Code 1798.140(ae)"
DEFAULT_SPECIAL: dict[str, SpecialCategory] = {
    name: SpecialCategory(source=source, signals=signals)
    for name, source, signals in (
        ("racial_or_ethnic_origin", f"{_ART9} racial or ethnic origin; {_CCPA}(1)(D); {_CO}",
         ("ethnicity", "race")),
        ("political_opinions", f"{_ART9} political opinions", ("political_views",)),
        ("religious_or_philosophical_beliefs",
         f"{_ART9} religious or philosophical beliefs; {_CCPA}(1)(D); {_CO}",
         ("religion", "beliefs")),
        ("trade_union_membership", f"{_ART9} trade-union membership; {_CCPA}(1)(D)",
         ("trade_union",)),
        ("genetic", f"{_ART9} genetic data; {_CCPA}(1)(F); {_CO}", ("genetic",)),
        ("biometric", f"{_ART9} biometric data to identify a person; {_CCPA}(2)(A); {_CO}",
         ("biometric",)),
        ("health", f"{_ART9} data concerning health; {_CCPA}(2)(B); {_CO}",
         ("health", "medication", "pregnancy")),
        ("sex_life_or_sexual_orientation",
         f"{_ART9} sex life or sexual orientation; {_CCPA}(2)(C); {_CO}",
         ("sexual_orientation", "sex_life")),
        ("citizenship", f"{_CCPA}(1)(D) citizenship or immigration status; {_CO}",
         ("citizenship",)),
        ("precise_geolocation", f"{_CCPA}(1)(C) precise geolocation", ("location.precise",)),
        ("government_id", f"{_CCPA}(1)(A) social security, driver's license or passport number",
         ("government_id",)),
        ("financial_account", f"{_CCPA}(1)(B) account log-in, financial account or card number",
         ("financial_account",)),
    )
}  # fmt: skip


def _dropped_signals(category: str, dropped: list[str], written: Sequence[str]) -> str:
    new = [signal for signal in written if signal not in DEFAULT_SPECIAL[category].signals]
    words = []
    for signal in dropped:
        close = difflib.get_close_matches(signal, new, n=1, cutoff=0.6)
        typo = f" ({close[0]!r} is written instead: a typo?)" if close else ""
        words.append(f"{signal!r}{typo}")
    return (
        f"leaves out {', '.join(words)} of the default category {category!r}, so a message using "
        f"{'it' if len(dropped) == 1 else 'them'} would no longer need explicit consent. Keep the "
        "default signals (you may add others), or, to replace the default special categories on "
        'purpose, set special = "replace" in [policy]'
    )


class Calculus(_Model):
    """The privacy calculus: a message carrying a `relevance` is personalized only when
    relevance x (1 + trust) > lambda x creepiness. Trust grows with a signed-in person and with
    one who chose their level; lambda comes from the level."""

    signed_in: Annotated[float, Field(ge=0.0, le=5.0)] = 0.2
    declared: Annotated[float, Field(ge=0.0, le=5.0)] = 0.3
    minimal: Annotated[float, Field(ge=0.0, le=100.0)] = 2.0
    standard: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    full: Annotated[float, Field(ge=0.0, le=100.0)] = 0.6


Level = Literal["off", "minimal", "standard", "full"]
LEVELS: tuple[Level, ...] = ("off", "minimal", "standard", "full")


class Levels(_Model):
    """How much personalization each person chose; the policy gives the default.

    `off` objects to direct marketing and profiling (GDPR Art. 21(2)-(3)): nothing is
    personalized. `minimal` allows only data the person gave (`given`), below a stricter
    threshold. `standard` is the policy as written. `full` lifts the threshold to `full_threshold`.
    """

    default: Level = "standard"
    given: Annotated[tuple[str, ...], _ARRAY] = ("cart", "purchase_history")
    minimal_threshold: Share = 0.4
    full_threshold: Share = 0.85
    # A person's choice is kept this long after their last visit, then expires with their state.
    keep: Annotated[float, BeforeValidator(_at_least(86400.0, "1d")), _DURATION_SCHEMA] = (
        365 * 86400.0
    )


class Audit(_Model):
    """The audit trail: every decision, pseudonymized, in a stream bounded by size and age."""

    enabled: bool = True
    max_entries: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    max_age: Window = 30 * 86400.0
    # Recent decisions kept with each person, for "why am I seeing this".
    per_person: Annotated[int, Field(ge=0, le=100)] = 20


class Content(_Model):
    media_type: MediaType = "application/json"
    body: str


class Fallback(_Model):
    k: Annotated[int, Field(ge=1, le=100_000)] = 50
    # Distinct people are counted over this period, then the count starts again.
    audience_window: Annotated[
        float, BeforeValidator(_at_least(3600.0, "1h")), _DURATION_SCHEMA
    ] = 30 * 86400.0
    # Segment content per campaign; "*" stands in for campaigns not listed.
    content: dict[str, Content] = Field(default_factory=dict)
    # Response headers kept on segment content, besides those that say nothing about the body.
    keep_headers: Annotated[tuple[KeptHeader, ...], _ARRAY] = ()


class Time(_Model):
    # The time zone of people whose requests name none (or one this machine does not know).
    zone: Zone = "UTC"
    week_starts: Literal["monday", "sunday"] = "monday"


class QuietHours(_Model):
    """From `start` to `end` in the person's time zone, only transactional messages are
    personalized in `channels` (all when empty); `end` before `start` spans midnight."""

    start: ClockTime
    end: ClockTime
    channels: Annotated[tuple[Tag, ...], _ARRAY] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise _rule("start and end are the same time; quiet hours would be empty")
        return self

    def covers(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end


class Decisions(_Model):
    header: bool = True


class StoreOptions(_Model):
    timeout: Duration = Field(default=0.05, le=10.0)
    # After a failure the store is left alone this long, so a dead Redis costs requests nothing.
    retry_after: Duration = Field(default=1.0, le=300.0)
    on_error: Literal["segment", "personalize"] = "segment"
    # Replicas that must hold each decision batch (Redis WAIT) before it counts; fewer in time
    # is a late answer (the batch falls back). 0: replication stays asynchronous.
    replicas: int = Field(default=0, ge=0, le=100)


def _check_webhook(value: str) -> str:
    _header_value(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{_redacted(value)!r} is not a webhook address; write an http:// or https:// URL "
            "such as https://ops.example.com/hooks/throttle"
        )
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError(f"{_redacted(value)!r} has a port that is not a number") from None
    return value


def _redacted(url: str) -> str:
    """A webhook address without its path and query, which often hold its token."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url[:16] + ("..." if len(url) > 16 else "")
    # A password in the address (https://user:pass@host) is left out too.
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    return f"{shown}/..." if parts.path.strip("/") or parts.query else shown


def webhook_shown(url: str) -> str:
    """How `throttle check` and the logs name a webhook: scheme and host, never its token."""
    return _redacted(url)


WebhookUrl = Annotated[
    str,
    AfterValidator(_check_webhook),
    Field(max_length=2048, json_schema_extra={"pattern": "^https?://"}),
]
AlertKind = Literal["refusal-rate", "fallback-rate", "store-failing", "reload-rejected"]
RATE_KINDS: tuple[AlertKind, ...] = ("refusal-rate", "fallback-rate")
# The keys only a rate condition reads, and the one only store-failing reads.
_RATE_KEYS = ("per", "window", "baseline", "factor", "min_decisions", "min_rate")
_AlertSpan = Annotated[float, BeforeValidator(_within(1.0, 7 * 86400.0)), _DURATION_SCHEMA]
# At most this many buckets of counts are kept for a condition: a week of minutes.
MAX_ALERT_BUCKETS = 10_080


class AlertCondition(_Model):
    """One condition ops want to hear about; see `[alerts]`.

    - `refusal-rate` (`per` = "campaign" or "rule") and `fallback-rate` (`per` = "segment"):
      over the last `window`, the share refused (or fallen back) is at least `factor` times
      the share over the `baseline` before it, and at least `min_rate`, with at least
      `min_decisions` decisions in each of the two periods.
    - `store-failing`: the store has failed for `after` without a success in between.
    - `reload-rejected`: a hot reload refused an edited policy file.
    """

    name: Name
    kind: AlertKind
    per: Literal["campaign", "rule", "segment"] | None = None
    window: _AlertSpan = 300.0
    baseline: _AlertSpan = 3600.0
    factor: Annotated[float, Field(gt=1.0, le=1000.0)] = 3.0
    min_decisions: Annotated[int, Field(ge=1, le=10_000_000)] = 50
    min_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    after: Annotated[float, BeforeValidator(_within(0.001, 86400.0)), _DURATION_SCHEMA] = 30.0

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> AlertCondition:
        given = self.model_fields_set
        if self.kind in RATE_KINDS:
            allowed = ("campaign", "rule") if self.kind == "refusal-rate" else ("segment",)
            if self.per is not None and self.per not in allowed:
                words = " or ".join(f'"{a}"' for a in allowed)
                raise _rule(f"a {self.kind} condition counts per {words}, not {self.per!r}", "per")
            if "after" in given:
                raise _rule("after is read by store-failing conditions only; remove it", "after")
        else:
            for key in _RATE_KEYS:
                if key in given:
                    raise _rule(
                        f"{key} is read by refusal-rate and fallback-rate conditions only; "
                        f"remove it from this {self.kind} condition",
                        key,
                    )
            if self.kind == "reload-rejected" and "after" in given:
                raise _rule("after is read by store-failing conditions only; remove it", "after")
        return self

    @property
    def counted_per(self) -> str:
        """What a rate condition counts per: its `per`, else the kind's own."""
        if self.per is not None:
            return self.per
        return "segment" if self.kind == "fallback-rate" else "campaign"


class Alerts(_Model):
    """Conditions that ops want to hear about, posted to a webhook and written to the log.

    At most one delivery per alert (a condition, and the campaign, rule, segment or file it
    is about) per `quiet` period, across every worker sharing the store.
    """

    # Where alerts are posted as JSON; none: the log only.
    webhook: WebhookUrl | None = None
    quiet: Annotated[float, BeforeValidator(_within(1.0, 7 * 86400.0)), _DURATION_SCHEMA] = 1800.0
    # Rates are counted in buckets of this length; windows and baselines are whole buckets.
    resolution: Annotated[float, BeforeValidator(_within(1.0, 3600.0)), _DURATION_SCHEMA] = 60.0
    timeout: Annotated[float, BeforeValidator(_within(0.001, 60.0)), _DURATION_SCHEMA] = 5.0
    attempts: Annotated[int, Field(ge=1, le=10)] = 4
    backoff: Annotated[float, BeforeValidator(_within(0.001, 300.0)), _DURATION_SCHEMA] = 1.0
    conditions: Annotated[tuple[AlertCondition, ...], _ARRAY] = ()

    @model_validator(mode="after")
    def _conditions_fit(self) -> Alerts:
        seen: set[str] = set()
        for index, condition in enumerate(self.conditions):
            if condition.name in seen:
                raise _rule(
                    f"two conditions are named {condition.name!r}; give each its own name",
                    "conditions",
                    index,
                    "name",
                )
            seen.add(condition.name)
            if condition.kind not in RATE_KINDS:
                continue
            for key in ("window", "baseline"):
                value = getattr(condition, key)
                if value < self.resolution:
                    raise _rule(
                        f"{key} ({format_duration(value)}) is shorter than alerts.resolution "
                        f"({format_duration(self.resolution)}), the length rates are counted in",
                        "conditions",
                        index,
                        key,
                    )
            buckets = (condition.window + condition.baseline) / self.resolution
            if buckets > MAX_ALERT_BUCKETS:
                raise _rule(
                    f"window and baseline span {buckets:,.0f} buckets of "
                    f"{format_duration(self.resolution)}; at most {MAX_ALERT_BUCKETS:,}: "
                    "raise alerts.resolution or shorten them",
                    "conditions",
                    index,
                    "baseline",
                )
        return self

    def buckets(self, seconds: float) -> int:
        """Whole buckets of `resolution` covering `seconds`."""
        return max(1, math.ceil(seconds / self.resolution - 1e-9))


class Policy(_Model):
    """A validated, frozen policy. Build one with `load_policy` or `Policy.from_toml`."""

    policy: PolicyInfo
    caps: Annotated[tuple[Cap, ...], _ARRAY] = ()
    creepiness: Creepiness = Creepiness()
    consent: Consent = Consent()
    fallback: Fallback = Fallback()
    time: Time = Time()
    quiet_hours: QuietHours | None = None
    levels: Levels = Levels()
    special: dict[Name, SpecialCategory] = Field(default_factory=lambda: dict(DEFAULT_SPECIAL))
    calculus: Calculus = Calculus()
    audit: Audit = Audit()
    decisions: Decisions = Decisions()
    store: StoreOptions = StoreOptions()
    alerts: Alerts = Alerts()

    _version: str = PrivateAttr(default="")
    _source: str = PrivateAttr(default="<memory>")

    @field_validator("caps")
    @classmethod
    def _cap_names_are_unique(cls, caps: tuple[Cap, ...]) -> tuple[Cap, ...]:
        seen: set[str] = set()
        for index, cap in enumerate(caps):
            if cap.name in seen:
                raise _rule(f"two caps are named {cap.name!r}; give each its own name", index)
            seen.add(cap.name)
        return caps

    @model_validator(mode="before")
    @classmethod
    def _special_extends_the_defaults(cls, data: Any) -> Any:
        """Unless the file replaces them on purpose, its [special.*] tables merge into the
        default categories, key by key, so that writing one never drops the others."""
        if not isinstance(data, dict):
            return data
        info = data.get("policy")
        given = data.get("special", {})
        if isinstance(info, dict) and info.get("special") == "replace":
            # The file's tables are the whole list, none at all included.
            return {**data, "special": given}
        if not isinstance(given, dict):
            return data
        special: dict[str, Any] = {
            name: {"source": category.source, "signals": list(category.signals)}
            for name, category in DEFAULT_SPECIAL.items()
        }
        for name, category in given.items():
            default = special.get(name)
            special[name] = (
                {**default, **category}
                if isinstance(default, dict) and isinstance(category, dict)
                else category
            )
        return {**data, "special": special}

    @model_validator(mode="after")
    def _rules_across_tables(self) -> Policy:
        levels, threshold = self.levels, self.creepiness.threshold
        if not levels.minimal_threshold <= threshold <= levels.full_threshold:
            # The key to edit is the one the file set; if it set none, the threshold.
            low = threshold < levels.minimal_threshold
            key = "minimal_threshold" if low else "full_threshold"
            set_here = key in levels.model_fields_set
            path = ("levels", key) if set_here else ("creepiness", "threshold")
            raise _rule(
                f"levels.minimal_threshold ({levels.minimal_threshold:g}), "
                f"creepiness.threshold ({threshold:g}) and levels.full_threshold "
                f"({levels.full_threshold:g}) must rise in this order",
                *path,
            )
        if self.policy.special == "extend":
            for name, default in DEFAULT_SPECIAL.items():
                written = self.special[name].signals
                dropped = [signal for signal in default.signals if signal not in written]
                if dropped:
                    raise _rule(
                        _dropped_signals(name, dropped, written), "special", name, "signals"
                    )
        return self

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def version(self) -> str:
        """A short hash of the policy's text, so every decision names the policy that made it."""
        return self._version

    @property
    def source(self) -> str:
        return self._source

    @property
    def longest_window(self) -> float:
        """Seconds a person's state must be kept: the longest window anything counts over."""
        windows = [cap.span for cap in self.caps]
        if self.creepiness.budget is not None:
            windows.append(self.creepiness.budget.window)
        if self.creepiness.repetition.weight > 0:
            windows.append(self.creepiness.repetition.window)
        return max(windows, default=0.0)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<memory>") -> Policy:
        """Parse and validate policy text; raises `PolicyError` listing every problem."""
        return layered_policy([(source, text)])


def json_schema() -> dict[str, Any]:
    """The JSON Schema of policy files, for editors that complete and check TOML."""
    schema = Policy.model_json_schema(mode="validation")
    _durations_as_text(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "throttle policy"
    return schema


def _durations_as_text(node: Any) -> None:
    """Defaults of duration keys are seconds in the model; the file writes them as text.

    Defaults of whole tables are dropped: their keys state their own.
    """
    if isinstance(node, dict):
        if node.get("pattern") == _DURATION_PATTERN and isinstance(node.get("default"), float):
            node["default"] = format_duration(node["default"])
        if isinstance(node.get("default"), dict):
            del node["default"]
        for key, value in node.items():
            if key in ("properties", "$defs") and isinstance(value, dict):
                # Names, not schemas: a key named "default" here is a policy key.
                for schema in value.values():
                    _durations_as_text(schema)
            else:
                _durations_as_text(value)
    elif isinstance(node, list):
        for value in node:
            _durations_as_text(value)


def format_duration(seconds: float) -> str:
    """5400.0 -> "90m": the largest unit that states the duration exactly."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"


def load_policy(path: str | Path, *overrides: str | Path) -> Policy:
    """Read and validate a policy file, with any override files layered on top in order.

    Raises `PolicyError` naming the file, line, key and problem.
    """
    return layered_policy([(str(p), read_policy_text(p)) for p in (path, *overrides)])


def load_given_policy(given: str | Path | Sequence[str | Path] | Policy) -> Policy:
    """A policy as the middleware and the client take it: a file, a base and its overrides in
    layer order, or a `Policy` already loaded."""
    if isinstance(given, Policy):
        return given
    if isinstance(given, str | Path):
        return load_policy(given)
    paths = list(given)
    if not paths:
        raise ConfigurationError("policy: give at least one policy file")
    return load_policy(*paths)


def policy_files(given: str | Path | Sequence[str | Path] | Policy) -> tuple[Path, ...] | None:
    """The files a policy was given as, which markets' overrides layer on and reloads watch
    (`None` for a `Policy` object)."""
    if isinstance(given, Policy):
        return None
    if isinstance(given, str | Path):
        return (Path(given),)
    return tuple(Path(path) for path in given)


def read_policy_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(str(path), [PolicyProblem("", f"cannot be read: {error}")]) from None


def layered_policy(layers: Sequence[tuple[str, str]]) -> Policy:
    """The policy that `(source, text)` layers make, each overriding those before it.

    - tables merge key by key, at every depth; a value a later layer gives replaces the earlier
    - `[[caps]]` match by name: an override cap changes only the keys it gives (a `window`
      replaces a `calendar` and the other way round); a new name adds a cap at the end;
      `remove = true` takes the named cap out
    - every other array (`consent.gpc`, `except_tags`, ...) is replaced whole

    Whatever the text, the only exception is `PolicyError`.
    """
    tables = [_parsed(source, text) for source, text in layers]
    merged: dict[str, Any] = tables[0] if len(tables) == 1 else {}
    if len(tables) > 1:
        for (source, _), table in zip(layers, tables, strict=True):
            merged = _merge_layer(merged, table, source)
    source = " + ".join(source for source, _ in layers)
    try:
        policy = Policy.model_validate(merged)
    except ValidationError as error:
        raise PolicyError(
            source, [_placed(item, merged, layers, tables) for item in error.errors()]
        ) from None
    policy._version = version_of([text for _, text in layers])
    policy._source = source
    return policy


def version_of(texts: Sequence[str]) -> str:
    """The policy version: a short hash of the text of its file, or files in layer order."""
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]


# Deeper than any policy key goes, and shallow enough that nothing reading the data recurses
# out of stack (tomllib itself does at a few hundred nested arrays).
MAX_DEPTH = 16
_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_LONG_NUMBER = re.compile(r"[0-9_]{4000,}")


def _parsed(source: str, text: str) -> dict[str, Any]:
    def refused(message: str, line: int | None = None, key: str = "") -> PolicyError:
        return PolicyError(source, [PolicyProblem(key, message, line=line)])

    deep = _nesting_line(text)
    if deep is not None:
        raise refused(f"arrays or inline tables nest more than {MAX_DEPTH} deep", deep)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _POSITION.search(message)
        if position is None:
            raise refused(f"not valid TOML: {message}") from None
        message = _POSITION.sub(f"(column {position[2]})", message)
        raise refused(f"not valid TOML: {message}", int(position[1])) from None
    except (ValueError, RecursionError) as error:
        # int() refuses numbers of more than 4,300 digits; nothing else is expected here.
        long = _LONG_NUMBER.search(text)
        if long is None:
            raise refused(f"not valid TOML: {error}") from None
        line = text.count("\n", 0, long.start()) + 1
        raise refused("not valid TOML: a number with thousands of digits", line) from None
    path = _too_deep(data)
    if path is not None:
        raise refused(
            f"tables nest more than {MAX_DEPTH} deep",
            line_of(_lines(text), path),
            _key_path(path[:MAX_DEPTH]) + "...",
        )
    return data


def _nesting_line(text: str) -> int | None:
    """The line where arrays or inline tables nest deeper than MAX_DEPTH, if any.

    Strings and comments are skipped, so a bracket inside one does not count.
    """
    depth, line, index, size = 0, 1, 0, len(text)
    while index < size:
        char = text[index]
        if char == "\n":
            line += 1
        elif char == "#":
            end = text.find("\n", index)
            index = size if end < 0 else end
            continue
        elif char in "\"'":
            quote = text[index : index + 3] if text.startswith(char * 3, index) else char
            index += len(quote)
            while index < size and not text.startswith(quote, index):
                if text[index] == "\n":
                    line += 1
                    if len(quote) == 1:
                        break  # an unclosed string: tomllib names it
                index += 2 if text[index] == "\\" and char == '"' else 1
            index += len(quote)
            continue
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth = max(depth - 1, 0)
        index += 1
    return None


def _too_deep(data: dict[str, Any]) -> tuple[Any, ...] | None:
    """The path of a value nested deeper than MAX_DEPTH (dotted keys build tables too)."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_DEPTH:
            return path
        if isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
    return None


def _lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Where each key is written, and each table a dotted key or header opens implicitly."""
    lines = key_lines(text)
    for path, line in sorted(lines.items(), key=lambda item: item[1]):
        for end in range(1, len(path)):
            lines.setdefault(path[:end], line)
    return lines


def _merge_layer(base: dict[str, Any], layer: dict[str, Any], source: str) -> dict[str, Any]:
    merged = _merge_tables(base, {k: v for k, v in layer.items() if k != "caps"})
    if "caps" in layer:
        merged["caps"] = _merge_caps(base.get("caps", []), layer["caps"], source)
    return merged


def _merge_tables(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge_caps(base: Any, layer: Any, source: str) -> Any:
    if not isinstance(base, list) or not isinstance(layer, list):
        return layer  # validation names the shape that is wrong
    caps = list(base)
    names = [cap.get("name") if isinstance(cap, dict) else None for cap in caps]
    for index, cap in enumerate(layer):
        name = cap.get("name") if isinstance(cap, dict) else None
        if name is None or name not in names:
            if isinstance(cap, dict) and cap.get("remove") is True:
                raise PolicyError(
                    source,
                    [
                        PolicyProblem(
                            _key_path(("caps", index, "remove"), {"caps": layer}),
                            f"there is no cap named {name!r} to remove",
                            source=source,
                        )
                    ],
                )
            caps.append(cap)
            names.append(name)
            continue
        position = names.index(name)
        if cap.get("remove") is True:
            del caps[position], names[position]
            continue
        changed = dict(caps[position])
        # A cap counts over a window or a calendar period, so giving one replaces the other.
        for kind, other in (("window", "calendar"), ("calendar", "window")):
            if kind in cap:
                changed.pop(other, None)
        changed.update(cap)
        caps[position] = changed
    return caps


def _placed(
    error: Any,
    merged: dict[str, Any],
    layers: Sequence[tuple[str, str]],
    tables: list[dict[str, Any]],
) -> PolicyProblem:
    """A problem of the merged policy, placed in the layer that wrote the offending key."""
    location = _location(error)
    candidates: list[tuple[int, str, tuple[Any, ...], dict[str, Any]]] = []
    for (source, text), table in zip(layers, tables, strict=True):
        path: tuple[Any, ...] | None = location
        if len(layers) > 1 and len(location) >= 2 and location[0] == "caps":
            # The merged caps[i] is found in each layer by its name.
            path = _cap_path(location, merged, table)
        if path is None:
            continue
        lines = _lines(text)
        depth = max((end for end in range(len(path) + 1) if path[:end] in lines), default=0)
        candidates.append((depth, source, path, table))
    depth, source, path, table = max(candidates, key=lambda c: c[0])
    # Among layers that reach as deep, the last one wrote the value in force.
    for found, candidate_source, candidate_path, candidate_table in candidates:
        if found == depth:
            source, path, table = candidate_source, candidate_path, candidate_table
    problem = _problem({**error, "loc": path}, table)
    line = line_of(_lines(dict(layers)[source]), path)
    return dataclasses.replace(problem, line=line, source=source if len(layers) > 1 else None)


def _location(error: Any) -> tuple[Any, ...]:
    """Where a problem is: a rule across keys adds the path of the key it blames."""
    location = tuple(error["loc"])
    if error["type"] == "policy_rule":
        location += tuple(error["ctx"]["path"])
    return location


def _cap_path(
    location: tuple[Any, ...], merged: dict[str, Any], table: dict[str, Any]
) -> tuple[Any, ...] | None:
    """caps[i]... of the merged policy as the path of the same cap in one layer, if it has it."""
    caps = merged.get("caps")
    index = location[1]
    if (
        not isinstance(caps, list)
        or not isinstance(index, int)
        or index >= len(caps)
        or not isinstance(caps[index], dict)
    ):
        return location
    name = caps[index].get("name")
    for position, cap in enumerate(table.get("caps") or []):
        if isinstance(cap, dict) and cap.get("name") == name:
            return ("caps", position, *location[2:])
    return None


def _problem(error: Any, data: dict[str, Any]) -> PolicyProblem:
    location = tuple(error["loc"])
    key = _key_path(location, data)
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return PolicyProblem(key, "is required; add it")
    if kind == "extra_forbidden":
        return PolicyProblem(key, "is not a policy key" + _suggestion(location))
    if kind == "value_error":
        return PolicyProblem(key, str(error["ctx"]["error"]))
    if kind == "policy_rule":
        return PolicyProblem(key, str(error["ctx"]["rule"]))
    if kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(error["ctx"]["pattern"], "it does not have the expected form")
        return PolicyProblem(key, f"is {_shown(value)}; {words}")
    if kind == "too_short":
        return PolicyProblem(key, f"is empty; give at least {error['ctx']['min_length']}")
    if kind in _TYPE_WORDS and isinstance(value, str):
        return PolicyProblem(key, f"is {_shown(value)}, text; {_TYPE_WORDS[kind]}, without quotes")
    message = str(error["msg"]).replace("Input should be", "should be")
    if kind in ("model_type", "dict_type", "tuple_type", "list_type"):
        return PolicyProblem(key, f"{message}, got {_shown(value)}")
    return PolicyProblem(key, f"is {_shown(value)}; {message}")


_TYPE_WORDS = {
    "float_type": "write a number",
    "int_type": "write a whole number",
    "bool_type": "write true or false",
}


def _shown(value: object) -> str:
    """A value as the file would show it, cut short: a problem is one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:72] + "...(cut)"


def _key_path(location: tuple[Any, ...], data: dict[str, Any] | None = None) -> str:
    """`caps."per-campaign-daily".limit`: a cap is named by its name when it has one."""
    parts: list[str] = []
    for position, part in enumerate(location):
        if isinstance(part, int):
            name = _entry_name(data, location[:position], part)
            parts.append(f'."{name}"' if name is not None else f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            parts.append(f".{part}" if parts else str(part))
        else:
            parts.append(f'."{part}"' if parts else f'"{part}"')
    return "".join(parts)


# Arrays of tables whose entries a problem names by their `name`.
_NAMED_ARRAYS = (("caps",), ("alerts", "conditions"))


def _entry_name(data: dict[str, Any] | None, array: tuple[Any, ...], index: int) -> str | None:
    if array not in _NAMED_ARRAYS:
        return None
    entries: Any = data
    for part in array:
        entries = entries.get(part) if isinstance(entries, dict) else None
    if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
        name = entries[index].get("name")
        if isinstance(name, str) and re.fullmatch(_NAME, name) and len(name) <= 64:
            return name
    return None


def _suggestion(location: tuple[Any, ...]) -> str:
    model: Any = Policy
    parts = iter(location[:-1])
    for part in parts:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return ""
        if getattr(field.annotation, "__origin__", None) is dict:
            next(parts, None)  # the table's own key, e.g. the campaign in fallback.content
        model = _model_of(field.annotation)
        if model is None:
            return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(location[-1]), known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(known)})" + _landed(location)


def _landed(location: tuple[Any, ...]) -> str:
    """A key of another table, read into this one because it was written below this one's
    header: TOML puts every key under the header above it."""
    table = [part for part in location[:-1] if not isinstance(part, int)]
    homes = [home for home in _homes().get(str(location[-1]), []) if list(home) != table]
    if not homes or not table:
        return ""
    here = ".".join(table)
    home = homes[0]
    if not home:
        return (
            f". {location[-1]} is a top-level key: written below the [{here}] header, it is "
            f"read as part of [{here}]. Write it above the first table, or as a table of its "
            f"own ([{location[-1]}])"
        )
    return (
        f". {location[-1]} is a key of [{'.'.join(home)}]: written below the [{here}] header, "
        f"it is read as part of [{here}]. Move it under [{'.'.join(home)}], above any header "
        "that follows it"
    )


@functools.cache
def _homes() -> dict[str, list[tuple[str, ...]]]:
    """Each policy key's name, and the tables it belongs to."""
    homes: dict[str, list[tuple[str, ...]]] = {}
    stack: list[tuple[tuple[str, ...], Any]] = [((), Policy)]
    while stack:
        table, model = stack.pop()
        for name, field in model.model_fields.items():
            homes.setdefault(name, []).append(table)
            inner = _model_of(field.annotation)
            if inner is not None and getattr(field.annotation, "__origin__", None) is not dict:
                stack.append(((*table, name), inner))
    return homes


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_of(argument)
        if found is not None:
            return found
    return None


def milli(share: float) -> int:
    """A score in [0, 1] as whole thousandths, the unit the store counts in."""
    return math.floor(share * 1000 + 0.5)
