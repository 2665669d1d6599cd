"""`throttle audit` over the trail a running middleware wrote to a real Redis."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.apps import storefront
from tests.helpers import SECRET, policy
from throttle.cli import main
from throttle.store import RedisStore

CAPPED = policy(
    '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 1\nwindow = "1h"\n'
    "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n[fallback]\nk = 1\n"
)


async def shop_visits(redis_url: str) -> None:
    store = RedisStore(redis_url)
    app = storefront(policy=CAPPED, store=store, secret=SECRET)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as http:
        for person, segment, times in (("ana", "eu/de", 2), ("ben", "us/tx", 1), (None, "eu", 1)):
            headers = {"x-test-user": person} if person else {}
            for _ in range(times):
                await http.get(f"/offer?segment={segment}", headers=headers)
    await store.aclose()  # writes the last entries


def test_audit_summarizes_what_the_middleware_decided(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The command runs its own event loop, so this test drives the shop in one of its own.
    asyncio.run(shop_visits(redis_url))
    assert main(["audit", "--redis-url", redis_url, "--since", "1h", "--min-decisions", "1"]) == 0
    report = capsys.readouterr().out
    assert "ana" not in report and "ben" not in report
    assert (
        main(["audit", "--redis-url", redis_url, "--since", "1h", "--min-decisions", "1", "--json"])
        == 0
    )
    figures = json.loads(capsys.readouterr().out)
    assert figures["decisions"] == 4
    assert figures["reasons"] == {"allowed": 2, "frequency-cap": 1, "anonymous": 1}
    # The guest's segment content was their own situation, not the brand's choice: left out.
    fairness = {row["segment"]: row["rate"] for row in figures["fairness"]["segments"]}
    assert fairness == {"eu/de": 0.5, "us/tx": 0.0}
    assert figures["fairness"]["ratio_unbounded"] is True


def test_audit_refuses_a_period_it_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--since", "a while"]) == 2
    assert "'a while' is not a duration (7d, 24h) or a date" in capsys.readouterr().err


def test_audit_without_redis_says_so_and_hides_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["audit", "--redis-url", "redis://:hunter2@127.0.0.1:1/0"]) == 1
    error = capsys.readouterr().err
    assert "cannot read the audit trail" in error and "hunter2" not in error
