"""The `throttle` command as a shell sees it: its version, `init`, one set of exit statuses for
every command, and never a traceback, even when the reader of its output goes away."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from throttle import cli
from throttle.cli import main
from throttle.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
# The console script pip installed beside this Python, as a user runs it.
THROTTLE = [str(Path(sys.executable).parent / "throttle")]


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert (
        capsys.readouterr().out == f"throttle {metadata.version('throttle-asgi')} (throttle-asgi)\n"
    )


def test_version_from_a_checkout_that_was_never_installed_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "DISTRIBUTION", "throttle-asgi-never-installed")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == (
        "throttle (version unknown: throttle-asgi-never-installed is not installed)\n"
    )


def test_init_writes_the_shipped_policy_and_keeps_a_file_already_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = (ROOT / "policies" / "default.toml").read_text(encoding="utf-8")
    path = tmp_path / "config" / "policy.toml"
    assert main(["init", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == shipped
    assert load_policy(path).name == "default"
    assert capsys.readouterr().out == (
        f"wrote the default policy to {path}; after an edit: throttle check {path}\n"
    )
    path.write_text("# my edits\n")
    assert main(["init", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"throttle init: {path} already exists; --force replaces it\n"
    )
    assert path.read_text() == "# my edits\n"
    assert main(["init", str(path), "--force"]) == 0
    assert path.read_text(encoding="utf-8") == shipped
    capsys.readouterr()
    assert main(["init", "-"]) == 0
    assert capsys.readouterr().out == shipped


def test_init_into_a_place_that_cannot_be_written_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path), "--force"]) == 1
    assert (
        capsys.readouterr().err == f"throttle init: {tmp_path}: cannot be written: Is a directory\n"
    )


def test_init_defaults_to_the_path_the_docs_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert load_policy("policies/default.toml").name == "default"


@pytest.mark.parametrize("command", ["init", "check", "simulate", "audit", "bench"])
def test_a_usage_error_exits_2_in_every_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--no-such-option"])
    assert stop.value.code == 2
    assert "error: " in capsys.readouterr().err


def test_input_that_cannot_be_used_exits_1_in_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[policy]\nname = "x"\nmode = "loud"\n')
    trace = tmp_path / "trace.jsonl"
    trace.write_text("not json\n")
    existing = tmp_path / "policy.toml"
    existing.write_text("")
    for argv in (
        ["init", str(existing)],
        ["check", str(broken)],
        ["simulate", str(broken), str(trace)],
        ["simulate", "policies/default.toml", str(trace)],
        ["audit", "--redis-url", "redis://127.0.0.1:1/0"],
        ["bench", "--smoke", "--policy", str(tmp_path / "missing.toml")],
    ):
        assert main(argv) == 1, argv
    capsys.readouterr()


def test_an_unexpected_error_is_one_line_and_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(*args: object, **kwargs: object) -> int:
        raise RecursionError("maximum recursion depth exceeded\nwhile checking")

    monkeypatch.setattr("throttle.check.check", fails)
    assert main(["check", "policies/default.toml"]) == 3
    assert capsys.readouterr().err == (
        "throttle check: stopped by an unexpected error (please report it): "
        "RecursionError: maximum recursion depth exceeded while checking\n"
    )


def test_ctrl_c_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("throttle.check.check", interrupted)
    assert main(["check", "policies/default.toml"]) == 130
    assert capsys.readouterr().err == ""


def run_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the command with standard output a pipe nobody reads any more, as `| head` leaves
    it once it has its lines; deterministic, since the reader is gone before the first write."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [*THROTTLE, *argv],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "policies/default.toml"],
        # Output past the buffer: the pipe breaks in the middle of the command, not at its end.
        ["check", *["policies/default.toml"] * 100],
        ["init", "-"],
    ],
    ids=["check", "check-many", "init"],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(argv: list[str]) -> None:
    done = run_into_a_closed_pipe(*argv)
    assert (done.stderr, done.returncode) == ("", 141)


@pytest.mark.parametrize("option", ["--version", "--help", "check --help"])
def test_help_and_version_into_a_closed_pipe_end_quietly(option: str) -> None:
    # argparse ignores a failed write of its own messages and exits 0, as before.
    done = run_into_a_closed_pipe(*option.split())
    assert (done.stderr, done.returncode) == ("", 0)


def test_simulate_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"t": 1793577600, "person": "ana", "campaign": "spring-sale"}\n')
    done = run_into_a_closed_pipe("simulate", "policies/default.toml", str(trace))
    assert (done.stderr, done.returncode) == ("", 141)


def test_check_piped_to_head_prints_its_first_line_and_no_traceback() -> None:
    # What a user types; how much is written before head leaves depends on timing, so only
    # what must hold either way is asserted.
    done = subprocess.run(
        shlex.join([*THROTTLE, "check", *["policies/default.toml"] * 100]) + " | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.stdout.startswith("policies/default.toml: ok, policy 'default' @")
    assert done.stdout.count("\n") == 1
    assert done.stderr == ""


def test_the_bench_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "uvicorn" else found(name)
    )
    assert main(["bench", "--smoke"]) == 1
    err = capsys.readouterr().err
    assert err == "throttle bench: the bench needs uvicorn: pip install 'throttle-asgi[bench]'\n"
