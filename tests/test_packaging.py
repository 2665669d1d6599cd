"""The wheel a pip user installs: published as throttle-asgi, every module, and the default
policy inside it, which `throttle init` writes and which loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built offline with the setuptools of this environment, from a copy of the files a
    source distribution carries (setuptools writes build/ and *.egg-info where it builds)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("throttle", "policies"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("*.whl")
    return path


def test_the_wheel_is_throttle_asgi_with_the_throttle_command(wheel: Path) -> None:
    assert wheel.name.startswith("throttle_asgi-")
    with zipfile.ZipFile(wheel) as archive:
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert meta["Name"] == "throttle-asgi"
    assert "throttle = throttle.cli:main" in entry_points


def test_the_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    source = {
        path.relative_to(ROOT).as_posix()
        for pattern in ("*.py", "*.lua", "*.html", "py.typed")
        for path in (ROOT / "throttle").rglob(pattern)
    }
    assert source - names == set()
    policies = {
        "throttle/" + path.relative_to(ROOT).as_posix()
        for path in (ROOT / "policies").rglob("*")
        if path.is_file()
    }
    assert "throttle/policies/default.toml" in policies
    assert policies - names == set()


def test_the_wheels_default_policy_is_the_checkouts_and_init_writes_it(
    wheel: Path, tmp_path: Path
) -> None:
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
        assert (
            archive.read("throttle/policies/default.toml")
            == (ROOT / "policies" / "default.toml").read_bytes()
        )
    work = tmp_path / "app"
    work.mkdir()
    # The unpacked wheel first on the path, run away from the checkout: its files, not ours.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(installed)}

    def throttle(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "throttle.cli", *argv],
            cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    where = subprocess.run(
        [sys.executable, "-c", "import throttle; print(throttle.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(installed))
    done = throttle("init")
    assert done.returncode == 0, done.stderr
    written = work / "policies" / "default.toml"
    assert written.read_bytes() == (ROOT / "policies" / "default.toml").read_bytes()
    done = throttle("check", "policies/default.toml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("policies/default.toml: ok, policy 'default' @")
    done = throttle("--version")
    assert done.stdout.startswith("throttle 0.") and done.stdout.endswith(" (throttle-asgi)\n")
