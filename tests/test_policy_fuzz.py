"""No text makes loading a policy or `throttle check` fail with anything but `PolicyError`.

Real policy files, mutated at random, and random TOML are fed to the loader, the layering and
the checker; each either loads or is refused with problems that name a line inside the file.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from throttle.check import check
from throttle.errors import PolicyError
from throttle.policy import Policy, layered_policy

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SHIPPED = {path.name: path.read_text() for path in sorted(POLICIES.rglob("*.toml"))}
DEFAULT = SHIPPED["default.toml"]

# What people paste, and what breaks parsers: brackets, quotes, huge numbers, deep nesting.
NASTY = [
    "[", "]", "[[", "]]", "{", "}", "=", '"', "'", '"""', "'''", "\n", "#", ".", ",",
    "9" * 5000, "1" * 4000, "-" + "9" * 30, "[" * 1000 + "]" * 1000, "{a = " * 300,
    "a." * 200 + "b = 1\n", "\u2011", "\x00", "\r\n", "\ufeff", "true", "false", "inf", "nan",
    "1e999", '"0.7"', '"no"', "[special.children]\n", "[[caps]]\n", "remove = true\n",
    "[policy]\n", 'special = "replace"\n', "1979-05-27T07:32:00Z", "0x_1", "+",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(sorted(SHIPPED.values())))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line"]))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 200)) :]
        elif kind == "duplicate-line":
            lines = text.splitlines(keepends=True) or [""]
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(draw(st.integers(0, len(lines))), lines[index])
            text = "".join(lines)
        else:
            fragment = draw(st.sampled_from(NASTY) | st.text(max_size=20))
            end = at + (draw(st.integers(1, 20)) if kind == "replace" else 0)
            text = text[:at] + fragment + text[end:]
    return text


KEYS = st.sampled_from(
    ["policy", "name", "mode", "special", "caps", "limit", "window", "per", "creepiness",
     "threshold", "signals", "fallback", "content", "media_type", "keep_headers", "body",
     "consent", "gpc_json", "tcf", "levels", "audit", "enabled", "decisions", "header", "store",
     "timeout", "health", "*"]
) | st.text(max_size=8)  # fmt: skip
SCALARS = (
    st.booleans()
    | st.integers()
    | st.integers(min_value=10**20, max_value=10**4000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    pairs = (f"{json.dumps(key)} = {toml_value(item)}" for key, item in value.items())
    return "{" + ", ".join(pairs) + "}"


@st.composite
def random_toml(draw: st.DrawFn) -> str:
    table = draw(st.dictionaries(KEYS, VALUES, max_size=6))
    text = "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items())
    if draw(st.booleans()):
        text = '[policy]\nname = "fuzz"\n' + "\n".join(
            f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items()
        )
    return text


def loads_or_refuses(text: str) -> None:
    """The property: a Policy, or a PolicyError whose problems read and point inside the file."""
    lines = text.count("\n") + 1
    for load in (
        lambda: Policy.from_toml(text, source="fuzz.toml"),
        lambda: layered_policy([("default.toml", DEFAULT), ("fuzz.toml", text)]),
    ):
        try:
            load()
        except PolicyError as error:
            assert error.problems
            for problem in error.problems:
                assert problem.message
                assert problem.line is None or 1 <= problem.line <= max(lines, DEFAULT_LINES)
            assert str(error)


DEFAULT_LINES = DEFAULT.count("\n") + 1
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated())
def test_a_mutated_policy_loads_or_is_refused_with_policy_error(text: str) -> None:
    loads_or_refuses(text)


@FUZZ
@given(random_toml())
def test_random_toml_loads_or_is_refused_with_policy_error(text: str) -> None:
    loads_or_refuses(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_check_reports_every_mutated_policy_without_raising(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out = io.StringIO()
        status = check([str(path)], out)
        assert status in (0, 1)
        assert out.getvalue()


def test_the_inputs_that_crashed_the_checker_are_named_with_their_line(tmp_path: Path) -> None:
    cases = {
        "deep.toml": ('[policy]\nname = "x"\n[creepiness]\nthreshold = ' + "[" * 1000
                      + "]" * 1000 + "\n", 4, "nest more than 16 deep"),
        "huge.toml": ('[policy]\nname = "x"\n[fallback]\nk = ' + "9" * 5000 + "\n", 4,
                      "a number with thousands of digits"),
        "dotted.toml": ('[policy]\nname = "x"\n' + "a." * 500 + "b = 1\n", 3,
                        "tables nest more than 16 deep"),
    }  # fmt: skip
    for name, (text, _, _) in cases.items():
        (tmp_path / name).write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "throttle.cli", "check", *(str(tmp_path / n) for n in cases)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr
    for name, (_, line, words) in cases.items():
        assert f"{tmp_path / name}:{line}:" in run.stdout
        assert words in run.stdout
