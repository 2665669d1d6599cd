"""One cap per person across channels and processes: a real uvicorn app with the middleware
and the example email worker in a process of its own, on the same private redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.apps import storefront
from tests.helpers import SECRET
from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
THREE_A_DAY = """
[policy]
name = "three-a-day"

[[caps]]
name = "three-a-day"
per = "user"
limit = 3
window = "24h"

[creepiness]
repetition = { weight = 0.0, window = "1h" }

[store]
timeout = "5s"
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(THREE_A_DAY)
    return path


@pytest.fixture
async def served(redis_url: str, policy_file: Path) -> AsyncIterator[str]:
    app = storefront(policy=policy_file, store=redis_url, secret=SECRET)
    async with serving(app) as url:
        yield url


async def email(redis_url: str, policy_file: Path, outbox: Path, person: str) -> str:
    """Run the example worker's job once, in its own process, as `python -m` runs it."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.email_worker",
        "--store", redis_url, "--policy", str(policy_file), "--outbox", str(outbox),
        person, "spring-sale",
        cwd=ROOT,
        env={**os.environ, "THROTTLE_SECRET": SECRET.decode()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(worker.communicate(), timeout=60)
    assert worker.returncode in (0, 1), err.decode()
    return out.decode().strip()


async def test_a_daily_cap_counts_web_offers_and_emails_from_a_worker_together(
    served: str, redis_url: str, policy_file: Path, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"

    async def offer(http: httpx.AsyncClient) -> str:
        response = await http.get("/offer", headers={"x-test-user": "ana"})
        assert response.status_code == 200
        return response.headers["personalization-decision"].split(";")[0]

    async with httpx.AsyncClient(base_url=served) as http:
        assert [await offer(http), await offer(http)] == ["personalized", "personalized"]
        # A send that fails downstream gives its slot back: the reservation is released.
        unwritable = tmp_path / "no-such-folder" / "outbox.jsonl"
        assert await email(redis_url, policy_file, unwritable, "ana") == "failed"
        assert await email(redis_url, policy_file, outbox, "ana") == "personalized"
        # The fourth message, on either channel, is refused: one cap, both channels.
        assert await offer(http) == "segment"
        assert await email(redis_url, policy_file, outbox, "ana") == "segment"
        # Someone else's cap is their own.
        assert await email(redis_url, policy_file, outbox, "ben") == "personalized"
    sent = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [(e["to"], e["subject"]) for e in sent] == [
        ("ana", "ana, picked for you"),
        ("ana", "This week's best sellers"),
        ("ben", "ben, picked for you"),
    ]
