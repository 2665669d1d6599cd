"""The middleware behind a real server: uvicorn on loopback, a real redis-server behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.apps import storefront
from tests.helpers import SECRET, policy
from tests.servers import serving

TWO_PER_HOUR = policy(
    '[[caps]]\nname = "two"\nper = "user"\nlimit = 2\nwindow = "1h"\n'
    "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
)


@pytest.fixture
async def served(redis_url: str) -> AsyncIterator[str]:
    app = storefront(policy=TWO_PER_HOUR, store=redis_url, secret=SECRET)
    async with serving(app) as url:
        yield url


async def test_caps_hold_across_concurrent_requests_to_a_real_server(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        responses = await asyncio.gather(
            *(http.get("/offer", headers={"x-test-user": "ana"}) for _ in range(20))
        )
        plain = await http.get("/plain")
    assert {r.status_code for r in responses} == {200}
    decisions = [r.headers["personalization-decision"].split(";")[0] for r in responses]
    assert decisions.count("personalized") == 2
    assert decisions.count("segment") == 18
    for response in responses:
        assert "personalization" not in response.headers
        assert int(response.headers["content-length"]) == len(response.content)
    assert plain.text == "hello, nobody in particular"
    assert "personalization-decision" not in plain.headers
