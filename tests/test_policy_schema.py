"""The JSON Schema shipped for editors: current, and true to the policy files it describes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from throttle.policy import format_duration, json_schema

SHIPPED = Path("policies/policy.schema.json")
REGENERATE = (
    '.venv/bin/python -c "import json; from throttle.policy import json_schema; '
    'print(json.dumps(json_schema(), indent=2, sort_keys=True))" > policies/policy.schema.json'
)


def test_the_shipped_schema_is_the_generated_one() -> None:
    shipped = json.loads(SHIPPED.read_text())
    assert shipped == json_schema(), f"regenerate it: {REGENERATE}"


@pytest.mark.parametrize("path", sorted(Path("policies").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_policy_passes_the_schema(path: Path) -> None:
    jsonschema.validate(tomllib.loads(path.read_text()), json_schema())


@pytest.mark.parametrize(
    ("toml", "wrong"),
    [
        ('[policy]\nname = "x"\nmode = "loud"\n', "'loud' is not one of"),
        ('[policy]\nname = "x"\n[[caps]]\nname = "c"\nper = "user"\nlimit = 3\nwindow = "1 hour"\n',
         "does not match"),
        ('[policy]\nname = "x"\n[creepiness]\nthreshhold = 0.5\n', "Additional properties"),
    ],
)  # fmt: skip
def test_the_schema_catches_what_editors_should_flag(toml: str, wrong: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=wrong):
        jsonschema.validate(tomllib.loads(toml), json_schema())


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.05, "50ms"), (1.0, "1s"), (90.0, "90s"), (5400.0, "90m"),
                          (86400.0, "1d"), (2_592_000.0, "30d"), (1.5, "1500ms")]
)  # fmt: skip
def test_durations_format_as_the_file_would_write_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
