"""What the README quotes of the shipped policies is what they are now."""

from __future__ import annotations

import re
from pathlib import Path

from throttle.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_quotes_the_shipped_policies_current_versions() -> None:
    readme = (ROOT / "README.md").read_text()
    default = load_policy(ROOT / "policies" / "default.toml")
    eu = load_policy(
        ROOT / "policies" / "default.toml", ROOT / "policies" / "overrides" / "eu.toml"
    )
    quoted = re.findall(r"\b(default(?:-eu)?) ?@([0-9a-f]{12})\b", readme)
    assert quoted, "the README quotes no policy version"
    expected = {"default": default.version, "default-eu": eu.version}
    assert {(name, version) for name, version in quoted} <= set(expected.items())
