"""`make demo` end to end: the storefront example under uvicorn, on Redis and on memory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from examples import demo
from tests.helpers import patient_copy


def outcomes(output: str) -> list[tuple[str, str, str]]:
    """(who, outcome, reason) of every request line the demo printed."""
    rows = re.findall(r"^(\S+)\s+/\S*\s+(personalized|segment|-)\s+(\S+)", output, re.MULTILINE)
    return [(who, outcome, reason) for who, outcome, reason in rows]


EXPECTED = (
    [("ana", "personalized", "allowed")] * 3
    + [("ana", "segment", "frequency-cap")] * 2
    + [("ben", "segment", "special-category")]
    + [("cleo", "segment", "consent")]
    + [("(anon)", "segment", "anonymous")]
    + [("dev", "personalized", "transactional")] * 4
    + [("ben", "-", "(unmarked)")]
)


@pytest.fixture
def patient_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's policy with a store timeout no busy machine reaches: the test reads what the
    demo decided, which a 50 ms timeout would turn into store-unavailable under load."""
    monkeypatch.setattr(demo, "POLICY", str(patient_copy(Path(demo.POLICY), tmp_path)))


@pytest.mark.usefixtures("patient_policy")
async def test_the_demo_runs_on_redis_and_shows_each_reason(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert await demo.main() == 0
    output = capsys.readouterr().out
    assert f"store: Redis at {redis_url}" in output
    assert outcomes(output) == EXPECTED
    email_shown(output)
    privacy_shown(output)
    keys = output.split("Person keys in Redis")[1].split("Removed")[0]
    # After ana's erasure: the records of ben, cleo and dev (their counters and recent
    # decisions), cleo's choices (her GPC opt-out sticks) and the tombstone of ana's erasure
    # (tests/test_erasure.py), all under pseudonyms.
    assert "Person keys in Redis: 5 (each person's record" in output
    assert "ana" not in keys and keys.count(":choices") == 1 and keys.count(":erased") == 1
    # The demo leaves nothing behind in the Redis it used.
    assert re.search(r"Removed this run's \d+ keys", output)
    assert await leftovers(redis_url) == []


async def leftovers(url: str) -> list[bytes]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return [key async for key in client.scan_iter(match="throttle-demo:*")]
    finally:
        await client.aclose()


def test_the_legend_has_words_for_every_reason() -> None:
    for reason in demo.Reason:
        assert reason.value in demo.REASONS and reason.label in demo.REASONS


def email_shown(output: str) -> None:
    """dev's spring sale: two web offers, a failed email released, one sent, then the
    campaign's daily cap refuses the web and the email alike."""
    scene = output.split("-- dev: the spring sale on the web and by email")[1].split("-- ana")[0]
    lines = [line.strip() for line in scene.splitlines()[2:] if line.strip()]
    assert lines == [
        "web    /offers/recommended: personalized (allowed)",
        "web    /offers/recommended: personalized (allowed)",
        "email  reserved (personalized (allowed)); the send failed: released",
        "email  preflight, nothing counted: personalized (allowed)",
        "email  reserved, sent, committed: personalized (allowed)",
        "web    /offers/recommended: segment (frequency-cap, per-campaign-daily)",
        "email  preflight: segment (frequency-cap, per-campaign-daily): the email is not built",
    ]


def privacy_shown(output: str) -> None:
    """dev's consent to health data; ana's visit to the privacy routes: why, level off,
    access, erasure."""
    consent = output.split("-- dev: an offer built on his health data")[1]
    assert "before consent: segment (special-category, special.health)" in consent
    assert "with his explicit consent: personalized (allowed)" in consent
    assert "after withdrawing it: segment (special-category, special.health)" in consent
    privacy = output.split("-- ana asks why")[1]
    assert "You saw general content instead of a message personalized for you" in privacy
    assert "It uses your purchase history." in privacy
    assert "/offers/recommended: segment (preference, level.off)" in privacy
    assert "/orders/latest: segment (preference, level.off)" in privacy
    assert "level off, 7 recent decisions, 7 audit entries" in privacy
    assert "deleted: state True, 7 recent decisions, and the token" in privacy
    assert "afterwards: 0 items held, level standard (the default)" in privacy


async def test_the_demo_falls_back_to_memory_when_no_redis_answers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert await demo.main() == 0
    output = capsys.readouterr().out
    assert "so: memory://" in output
    assert outcomes(output) == EXPECTED
    email_shown(output)
    privacy_shown(output)
