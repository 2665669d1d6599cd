"""The ops dashboard as users run it: uvicorn with two workers, a real Redis, real HTTP traffic,
and the page in a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.redis_server import free_port
from throttle import load_policy

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
OPS = {"x-test-user": "ops"}
# Generous: a busy CI machine may take seconds where a laptop takes milliseconds.
WAIT_MS = 30_000
POLICY = """
[policy]
name = "shop"
[[caps]]
name = "trial"
per = "user"
limit = 1
window = "1h"
shadow = true
[[caps]]
name = "two"
per = "user"
limit = 2
window = "1h"
[creepiness]
repetition = { weight = 0.0, window = "1h" }
[fallback.content."spring-sale"]
body = "{}"
[store]
timeout = "5s"
"""


class Served:
    """`uvicorn tests.dashboard_app:app --workers 2` on a free loopback port."""

    def __init__(self, policy: Path, store: str) -> None:
        env = {
            **os.environ,
            "DASHBOARD_POLICY": str(policy),
            "DASHBOARD_STORE": store,
            "THROTTLE_SECRET": "a-secret-long-enough-0123456789",
            "PYTHONPATH": str(ROOT),
        }
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.dashboard_app:app", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip

    def wait_until_both_workers_report(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                seen = httpx.get(self.url + "/ops/data.json", headers=OPS, timeout=5)
                if seen.status_code == 200 and len(seen.json()["workers"]) == 2:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"uvicorn did not start two workers:\n{self.stop()}")

    def stop(self) -> str:
        self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.toml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def served(policy_file: Path, redis_url: str) -> Iterator[Served]:
    server = Served(policy_file, redis_url)
    try:
        server.wait_until_both_workers_report()
        yield server
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is not installed; the dashboard is tested in a real browser: "
            "apt-get install chromium (.ci/run does)"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium)
        try:
            yield launched
        finally:
            await launched.close()


async def traffic(url: str, people: list[str], per_person: int, anonymous: int) -> Counter[str]:
    """Send marked requests; return what the decision headers say was decided, as the
    dashboard should count it."""
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        requests: list[tuple[dict[str, str], dict[str, str]]] = [
            ({"x-test-user": person}, {"segment": "eu/de/berlin"})
            for person in people
            for _ in range(per_person)
        ]
        requests += [({}, {"segment": "us/ny", "campaign": "autumn"})] * anonymous
        for headers, query in requests:
            response = await http.get("/offer", headers=headers, params=query)
            assert response.status_code == 200
            outcome, *parameters = response.headers["personalization-decision"].split(";")
            fields = dict(p.partition("=")[::2] for p in parameters)
            rule = fields.get("rule", "").strip('"')
            segment = "eu" if headers else "us"
            seen["decisions"] += 1
            seen[f"outcome:{outcome}"] += 1
            if "shadow" in fields:
                seen["shadowed"] += 1
                seen[f"shadow:{rule}"] += 1
            elif outcome != "personalized":
                seen["fallbacks"] += 1
                seen[f"rule:{rule}"] += 1
                seen[f"segment:{segment}"] += 1
    return seen


async def test_the_dashboard_shows_what_two_workers_decided_and_updates_live(
    served: Served, browser: Browser, policy_file: Path, tmp_path: Path
) -> None:
    decided = await traffic(served.url, [f"p{i}" for i in range(6)], per_person=3, anonymous=4)
    # What the policy makes of it: the trial cap would refuse each person's second message
    # (shadow), the cap "two" refuses their third, nobody signed in gets segment content.
    assert decided["shadowed"] == 6 and decided["rule:two"] == 6
    assert decided["rule:consent.anonymous"] == 4

    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, extra_http_headers=OPS
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(served.url + "/ops/")
    expect.set_options(timeout=WAIT_MS)
    await expect(page.get_by_test_id("status")).to_contain_text("live")
    await expect(page.get_by_test_id("kpi-decisions")).to_have_text(str(decided["decisions"]))
    await expect(page.get_by_test_id("kpi-personalized")).to_have_text(
        str(decided["outcome:personalized"])
    )
    await expect(page.get_by_test_id("kpi-fallbacks")).to_have_text(str(decided["fallbacks"]))
    await expect(page.get_by_test_id("kpi-shadowed")).to_have_text(str(decided["shadowed"]))
    await expect(page.get_by_test_id("kpi-store-unavailable")).to_have_text("0")
    rules = page.locator("#rules")
    await expect(rules.locator('[data-name="two"] .count')).to_have_text("6")
    await expect(rules.locator('[data-name="consent.anonymous"] .count')).to_have_text("4")
    campaigns = page.locator("#campaigns")
    await expect(campaigns.locator('[data-name="spring-sale"] .fallbacks')).to_have_text("6")
    await expect(campaigns.locator('[data-name="other"] .fallbacks')).to_have_text("4")
    segments = page.locator("#segments")
    await expect(segments.locator('[data-name="eu"] .rate')).to_have_text("33.3 %")
    await expect(segments.locator('[data-name="us"] .rate')).to_have_text("100.0 %")
    await expect(page.locator('#shadow [data-name="trial"] .count')).to_have_text("6")
    await expect(page.get_by_test_id("workers-failing")).to_have_text("0 of 2")
    await expect(page.locator("#chart-hour rect.b-personalized")).to_have_count(1)
    first_version = load_policy(policy_file).version
    await expect(page.get_by_test_id("policy-in-force")).to_have_text(f"shop@{first_version}")

    # An edited policy is reloaded by the workers that decide next; then new traffic arrives.
    edit(policy_file, POLICY + "\n# reviewed\n")
    new_version = load_policy(policy_file).version
    more = await traffic(served.url, ["q1", "q2"], per_person=3, anonymous=0)
    total = decided + more
    await expect(page.get_by_test_id("kpi-decisions")).to_have_text(str(total["decisions"]))
    await expect(rules.locator('[data-name="two"] .count')).to_have_text(str(total["rule:two"]))
    await expect(page.get_by_test_id("reloads")).to_contain_text(
        f"shop@{new_version} (was @{first_version})"
    )
    await page.get_by_role("button", name="Last day").click()
    await expect(page.locator(".range-words").first).to_have_text("in the last day")
    await expect(page.get_by_test_id("kpi-decisions")).to_have_text(str(total["decisions"]))

    shot = tmp_path / "dashboard.png"
    await page.get_by_role("button", name="Last hour").click()
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # A phone, and the polling fallback: the same figures, nothing wider than the screen.
    phone = await browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        extra_http_headers=OPS,
    )
    small = await phone.new_page()
    small.on("pageerror", lambda error: errors.append(str(error)))
    await small.goto(served.url + "/ops/?poll")
    await expect(small.get_by_test_id("status")).to_contain_text("polling")
    await expect(small.get_by_test_id("kpi-decisions")).to_have_text(str(total["decisions"]))
    overflow = await small.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    await small.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
    await phone.close()
    await context.close()
    assert errors == []

    # Behind the app's own rule (tests/dashboard_app.py): only the ops team gets in.
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        for path in ("/ops/", "/ops/data.json", "/ops/events"):
            assert (await http.get(path)).status_code == 403
            assert (await http.get(path, headers={"x-test-user": "ana"})).status_code == 403
        async with http.stream("GET", "/ops/events", headers=OPS) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            assert events.headers["cache-control"] == "no-store"
            lines = events.aiter_lines()
            assert (await anext(lines)).startswith("retry: ")
            while not (line := await anext(lines)).startswith("data: "):
                pass
    assert '"workers"' in line


def edit(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
