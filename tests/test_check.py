"""`throttle check`: what a marketer sees for a good policy file and for a broken one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from throttle.check import check
from throttle.cli import main


def run(*paths: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    status = check([str(p) for p in paths], out)
    return status, out.getvalue()


def test_a_valid_policy_is_summarized_in_plain_words() -> None:
    status, text = run("policies/default.toml")
    assert status == 0
    lines = text.splitlines()
    assert lines[0].startswith("policies/default.toml: ok, policy 'default' @")
    assert "per-channel-hourly  4 per person and channel in any 1h" in text
    assert "per-user-daily      12 per person in any 1d" in text
    assert "threshold 0.7; budget 2.5 per 1d" in text
    assert "Sec-GPC: 1 rules out inferred, third-party" in text
    assert "a segment stands in once 50 people are in it" in text


def test_a_broken_policy_exits_1_naming_file_line_key_and_fix(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[policy]\nname = "spring"\n\n[[caps]]\nname = "hourly"\nper = "user"\n'
        'limit = 4\nwindow = "90 minutes"\n\n[fallback]\nk = 0\n'
    )
    status, text = run(broken)
    assert status == 1
    assert text.splitlines() == [
        f"{broken}:8: caps.\"hourly\".window: '90 minutes' is not a duration; write 90m",
        f"{broken}:11: fallback.k: is 0; should be greater than or equal to 1",
    ]


def test_every_file_is_checked_even_after_a_bad_one(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    status, text = run(missing, "policies/default.toml")
    assert status == 1
    assert f"{missing}: cannot be read" in text
    assert "policies/default.toml: ok" in text


def test_shadow_mode_is_spelled_out(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow.toml"
    shadow.write_text('[policy]\nname = "trial"\nmode = "shadow"\n')
    status, text = run(shadow)
    assert status == 0
    assert "shadow (decides and reports, delivers everything)" in text
    assert "caps:        none" in text


def test_the_command_line_checks_and_exits_with_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "policies/default.toml"]) == 0
    assert "policies/default.toml: ok" in capsys.readouterr().out
    broken = tmp_path / "broken.toml"
    broken.write_text('[policy]\nname = "x"\nmode = "loud"\n')
    assert main(["check", str(broken), "policies/default.toml"]) == 1
    out = capsys.readouterr().out
    assert f"{broken}:3: policy.mode: is 'loud'; should be 'enforce' or 'shadow'" in out


def test_the_summary_names_the_gates_levels_band_and_audit(tmp_path: Path) -> None:
    path = tmp_path / "gates.toml"
    path.write_text(
        '[policy]\nname = "gates"\n[consent.gpc_json]\nlast_update = "2026-11-01"\n'
        "[creepiness]\ncategory_band = { low = 0.5, high = 0.6 }\n[audit]\nenabled = false\n"
        '[special.health]\nsource = "GDPR Art. 9(1)"\nsignals = ["health"]\n'
    )
    path.write_text(
        path.read_text().replace('name = "gates"\n', 'name = "gates"\nspecial = "replace"\n')
    )
    status, text = run(path)
    assert status == 0
    assert "/.well-known/gpc.json served (last update 2026-11-01)" in text
    assert "special:     1 category needs explicit consent: health" in text
    assert "levels:      default standard; thresholds minimal 0.4, standard 0.7, full 0.85" in text
    assert "band:        scores above 0.5 up to 0.6 get category content" in text
    assert "audit:       off" in text


def test_check_names_what_a_file_changes_in_the_special_categories(tmp_path: Path) -> None:
    extended = tmp_path / "extended.toml"
    extended.write_text(
        '[policy]\nname = "shop"\n'
        '[special.children]\nsource = "COPPA"\nsignals = ["child_age"]\n'
        '[special.health]\nsignals = ["health", "medication", "pregnancy", "diagnosis"]\n'
    )
    status, text = run(extended)
    assert status == 0
    assert "13 categories need explicit consent" in text
    assert "changes to the default categories:" in text
    assert "added children: signals child_age" in text
    assert "health: signals added diagnosis" in text
    replaced = tmp_path / "replaced.toml"
    replaced.write_text(
        '[policy]\nname = "kids"\nspecial = "replace"\n'
        '[special.health]\nsource = "GDPR Art. 9(1)"\nsignals = ["health"]\n'
    )
    status, text = run(replaced)
    assert status == 0
    assert (
        'changes to the default categories (the file replaces them: special = "replace"):' in text
    )
    assert "removed genetic (signals genetic)" in text
    assert "health: signals removed medication, pregnancy" in text
    status, text = run("policies/default.toml")
    assert "the default categories and signals, unchanged" in text


def test_a_misspelt_special_signal_fails_the_check_with_file_line_and_key(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text(
        '[policy]\nname = "shop"\n[special.health]\n'
        'signals = ["helth", "medication", "pregnancy"]\n'
    )
    status, text = run(typo)
    assert status == 1
    assert text.startswith(f"{typo}:4: special.health.signals: leaves out 'health'")
