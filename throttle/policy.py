"""The policy model: a TOML file, validated once into frozen objects the engine reads.

Every key has a default except the policy's name, so a short file states only what it changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from throttle.errors import PolicyError, PolicyProblem
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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyInfo(_Model):
    name: Name
    mode: Literal["enforce", "shadow"] = "enforce"


class Cap(_Model):
    """At most `limit` personalized messages in any `window`, per user, channel or campaign."""

    name: Name
    per: Literal["user", "channel", "campaign"]
    limit: Annotated[int, Field(ge=1, le=1000)]
    window: Window


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


GpcBlock = Literal["all", "inferred", "third-party", "sensitive"]


class Consent(_Model):
    # What a person who sends Sec-GPC: 1 is not personalized with.
    gpc: tuple[GpcBlock, ...] = ("inferred", "third-party")
    # Signals at or above this weight count as "sensitive" for the gpc rule.
    sensitive_at: Share = 0.5
    anonymous: Literal["segment", "personalize"] = "segment"


class Content(_Model):
    media_type: Annotated[str, Field(pattern=r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$")] = "application/json"
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
    keep_headers: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")], ...] = ()


class Decisions(_Model):
    header: bool = True


class StoreOptions(_Model):
    timeout: Duration = Field(default=0.05, le=10.0)
    # After a failure the store is left alone this long, so a dead Redis costs requests nothing.
    retry_after: Duration = Field(default=1.0, le=300.0)
    on_error: Literal["segment", "personalize"] = "segment"


class Policy(_Model):
    """A validated, frozen policy. Build one with `load_policy` or `Policy.from_toml`."""

    policy: PolicyInfo
    caps: tuple[Cap, ...] = ()
    creepiness: Creepiness = Creepiness()
    consent: Consent = Consent()
    fallback: Fallback = Fallback()
    decisions: Decisions = Decisions()
    store: StoreOptions = StoreOptions()

    _version: str = PrivateAttr(default="")
    _source: str = PrivateAttr(default="<memory>")

    @field_validator("caps")
    @classmethod
    def _cap_names_are_unique(cls, caps: tuple[Cap, ...]) -> tuple[Cap, ...]:
        seen: set[str] = set()
        for cap in caps:
            if cap.name in seen:
                raise ValueError(f"two caps are named {cap.name!r}; give each its own name")
            seen.add(cap.name)
        return caps

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
        windows = [cap.window for cap in self.caps]
        if self.creepiness.budget is not None:
            windows.append(self.creepiness.budget.window)
        if self.creepiness.repetition.weight > 0:
            windows.append(self.creepiness.repetition.window)
        return max(windows, default=0.0)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<memory>") -> Policy:
        """Parse and validate policy text; raises `PolicyError` listing every problem."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PolicyError(source, [PolicyProblem("", f"not valid TOML: {error}")]) from None
        try:
            policy = cls.model_validate(data)
        except ValidationError as error:
            lines = key_lines(text)
            problems = [
                dataclasses.replace(_problem(item), line=line_of(lines, tuple(item["loc"])))
                for item in error.errors()
            ]
            raise PolicyError(source, problems) from None
        policy._version = hashlib.sha256(text.encode()).hexdigest()[:12]
        policy._source = source
        return policy


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
        for value in node.values():
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


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises `PolicyError` naming the file, key and problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(str(path), [PolicyProblem("", f"cannot be read: {error}")]) from None
    return Policy.from_toml(text, source=str(path))


def _problem(error: Any) -> PolicyProblem:
    location = tuple(error["loc"])
    key = _key_path(location)
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return PolicyProblem(key, "is required; add it")
    if kind == "extra_forbidden":
        return PolicyProblem(key, "is not a policy key" + _suggestion(location))
    if kind == "value_error":
        return PolicyProblem(key, str(error["ctx"]["error"]))
    message = str(error["msg"]).replace("Input should be", "should be")
    if kind in ("model_type", "dict_type", "tuple_type", "list_type"):
        return PolicyProblem(key, f"{message}, got {value!r}")
    return PolicyProblem(key, f"is {value!r}; {message}")


def _key_path(location: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            parts.append(f".{part}" if parts else str(part))
        else:
            parts.append(f'."{part}"' if parts else f'"{part}"')
    return "".join(parts)


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
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"


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
