"""Hot reload: ops edit the policy file; the running app follows within the interval."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from tests.apps import storefront
from tests.conftest import ManualClock
from throttle import ConfigurationError, Policy, ThrottleMiddleware
from throttle.reload import PolicyWatcher

CAP = (
    '[policy]\nname = "ops"\n'
    '[[caps]]\nname = "hourly"\nper = "user"\nlimit = {limit}\nwindow = "1h"\n'
)


def write(path: Path, text: str) -> None:
    # A new inode each time, as editors that save by rename do; mtime alone may not tick.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def offer(http: httpx.AsyncClient) -> httpx.Response:
    return await http.get("/offer", headers={"x-test-user": "ana"})


def policy_of(response: httpx.Response) -> str:
    return response.headers["personalization-decision"].rsplit('policy="', 1)[1].rstrip('"')


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "ops.toml"
    write(path, CAP.format(limit=1))
    return path


def client(policy_file: Path) -> httpx.AsyncClient:
    app = storefront(policy=str(policy_file), reload_interval=0)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


async def test_an_edited_policy_takes_effect_without_a_restart(policy_file: Path) -> None:
    async with client(policy_file) as http:
        first = await offer(http)
        assert "segment" in (await offer(http)).headers["personalization-decision"]
        write(policy_file, CAP.format(limit=3))
        after = [await offer(http) for _ in range(2)]
    assert policy_of(after[0]) != policy_of(first)
    assert policy_of(after[0]) == "ops@" + Policy.from_toml(CAP.format(limit=3)).version
    # The counters carry over: one delivered before, two more fit under the new cap of 3.
    assert [r.headers["personalization-decision"].split(";")[0] for r in after] == [
        "personalized",
        "personalized",
    ]


async def test_an_invalid_edit_keeps_the_policy_and_is_logged_once(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(policy_file) as http:
        before = policy_of(await offer(http))
        write(policy_file, CAP.format(limit=1).replace('"1h"', '"an hour"'))
        with caplog.at_level(logging.WARNING, logger="throttle"):
            during = [await offer(http) for _ in range(5)]
        assert {r.status_code for r in during} == {200}
        assert {policy_of(r) for r in during} == {before}
        assert caplog.text.count("the edited file is not used") == 1
        assert "caps.\"hourly\".window: 'an hour' is not a duration" in caplog.text
        write(policy_file, CAP.format(limit=5))
        assert policy_of(await offer(http)) != before


async def test_a_deleted_policy_file_keeps_the_policy(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(policy_file) as http:
        before = policy_of(await offer(http))
        os.remove(policy_file)
        with caplog.at_level(logging.WARNING, logger="throttle"):
            during = [await offer(http) for _ in range(3)]
    assert {policy_of(r) for r in during} == {before}
    assert caplog.text.count("the edited file is not used") == 1


async def test_no_request_is_dropped_while_the_policy_changes(policy_file: Path) -> None:
    async with client(policy_file) as http:

        async def edit() -> None:
            for limit in range(2, 12):
                write(policy_file, CAP.format(limit=limit))
                await asyncio.sleep(0)

        responses, _ = await asyncio.gather(
            asyncio.gather(*(offer(http) for _ in range(100))), edit()
        )
    assert {r.status_code for r in responses} == {200}
    assert all("personalization-decision" in r.headers for r in responses)


def test_the_file_is_looked_at_no_more_often_than_the_interval(
    policy_file: Path, clock: ManualClock
) -> None:
    current = Policy.from_toml(CAP.format(limit=1))
    watcher = PolicyWatcher(policy_file, current, interval=2.0, clock=clock)
    write(policy_file, CAP.format(limit=2))
    assert watcher.poll() is None  # the interval has not passed
    clock.advance(2.0)
    reloaded = watcher.poll()
    assert reloaded is not None and reloaded.caps[0].limit == 2
    clock.advance(2.0)
    assert watcher.poll() is None  # unchanged since


async def test_an_edited_override_takes_effect_and_a_broken_one_keeps_the_policy(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    override = policy_file.with_name("eu.toml")
    write(override, '[[caps]]\nname = "hourly"\nlimit = 2\n')
    app = storefront(policy=[str(policy_file), str(override)], reload_interval=0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
        outcomes = [(await offer(http)).headers["personalization-decision"] for _ in range(3)]
        assert [o.split(";")[0] for o in outcomes] == ["personalized", "personalized", "segment"]
        write(override, '[[caps]]\nname = "hourly"\nlimit = 3\n')
        assert (await offer(http)).headers["personalization-decision"].startswith("personalized")
        version = policy_of(await offer(http))
        write(override, '[[caps]]\nname = "hourly"\nlimit = "three"\n')
        with caplog.at_level(logging.ERROR, logger="throttle"):
            after = await offer(http)
    assert policy_of(after) == version
    assert f'{override}: line 3: caps."hourly".limit' in caplog.text


def test_a_middleware_needs_at_least_one_policy_file() -> None:
    with pytest.raises(ConfigurationError, match="give at least one policy file"):
        ThrottleMiddleware(Starlette(), policy=[])


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ('[fallback.content."*"]\nmedia_type = "application/j\u2011son"\nbody = "{}"\n', "U+2011"),
        ('[fallback.content."*"]\nmedia_type = "text/html\\r\\nX: 1"\nbody = "{}"\n', "U+000D"),
        ('[fallback]\nkeep_headers = ["Personalization"]\n', "throttle's own"),
        ('[fallback]\nkeep_headers = ["Content-Length"]\n', "describes the personalized body"),
        ('[special.health]\nsignals = ["helth", "medication", "pregnancy"]\n', "'helth'"),
        ('[decisions]\nheader = "off"\n', "write true or false"),
    ],
    ids=["non-ascii-media-type", "crlf-media-type", "marker", "framing", "special-typo", "text"],
)
async def test_a_reload_refused_by_check_is_refused_live(
    policy_file: Path, caplog: pytest.LogCaptureFixture, edit: str, words: str
) -> None:
    async with client(policy_file) as http:
        before = await offer(http)
        write(policy_file, CAP.format(limit=5) + edit)
        with caplog.at_level(logging.ERROR, logger="throttle"):
            after = await offer(http)
    assert after.status_code == 200
    assert policy_of(after) == policy_of(before)
    assert "personalization" not in after.headers
    assert "the edited file is not used" in caplog.text
    assert words in caplog.text
