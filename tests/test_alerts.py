"""Alerts in one process: the rate rule, the policy table, check and simulate's words, the
quiet period kept by the store, the webhook's retries, and what a failing store or a refused
reload sends. (tests/test_alerts_uvicorn.py runs them under uvicorn with two workers.)"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.apps import storefront
from tests.conftest import ManualClock
from tests.helpers import SECRET, marker, policy
from tests.redis_server import RedisServer, free_port
from tests.webhook_receiver import Receiver
from throttle import Engine, Policy, ThrottleMiddleware
from throttle.alerts import AlertMonitor, Bucket, QuietPeriods, WebhookSender, risen
from throttle.check import check
from throttle.cli import main
from throttle.decision import Decision, Reason
from throttle.errors import PolicyError
from throttle.opsstate import OpsState
from throttle.policy import json_schema, webhook_shown
from throttle.reload import PolicyWatcher
from throttle.store import MemoryStore, RedisStore

SPIKE = """
[[caps]]
name = "once-a-day"
per = "campaign"
limit = 1
window = "1d"

[creepiness]
repetition = {{ weight = 0.0, window = "1h" }}

[fallback.content.sale]
body = "{{}}"

[alerts]
webhook = "{url}"
quiet = "1h"
resolution = "1m"

[[alerts.conditions]]
name = "campaign-refusals"
kind = "refusal-rate"
per = "campaign"
window = "5m"
baseline = "1h"
factor = 3.0
min_decisions = 20
min_rate = 0.2
"""


def rate_policy(**keys: Any) -> Policy:
    condition = {
        "name": "c", "kind": "refusal-rate", "per": "campaign", "window": "2m",
        "baseline": "10m", "factor": 3.0, "min_decisions": 10, "min_rate": 0.2, **keys,
    }  # fmt: skip
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in condition.items())
    return policy(f'[alerts]\nresolution = "1m"\n[[alerts.conditions]]\n{lines}\n')


def bucket(campaign: str, decisions: int, refused: int) -> Bucket:
    counted = Bucket(decisions=decisions)
    counted.count("campaign", campaign, decided=decisions, hit=refused)
    return counted


def test_a_rate_fires_only_well_above_its_own_baseline_and_with_enough_decisions() -> None:
    alerts = rate_policy().alerts
    condition = alerts.conditions[0]
    # Baseline: buckets 0-9, 10% refused; window: buckets 10-11.
    baseline = {n: bucket("sale", 10, 1) for n in range(10)}

    def fired(*window: Bucket) -> list[str]:
        buckets = {**baseline, **dict(zip((10, 11), window, strict=False))}
        return [rise.subject for rise in risen(alerts, condition, buckets, 11)]

    assert fired(bucket("sale", 10, 2), bucket("sale", 10, 2)) == []  # 20%: 2x its baseline
    assert fired(bucket("sale", 10, 3), bucket("sale", 10, 3)) == ["sale"]  # 30%: 3x
    assert fired(bucket("sale", 4, 4), bucket("sale", 5, 5)) == []  # 9 decisions: too few
    rise = risen(alerts, condition, {**baseline, 10: bucket("sale", 10, 9)}, 11)[0]
    assert (rise.decisions, rise.hits, rise.baseline_decisions, rise.baseline_hits) == (
        10, 9, 100, 10,
    )  # fmt: skip
    assert rise.summary() == (
        "campaign 'sale': refusal rate 90% over the last 2m (9 of 10 decisions), 9.0 times its "
        "baseline of 10% over the 10m before (10 of 100)"
    )
    # Without a baseline of its own, a new campaign does not fire, however it starts.
    assert risen(alerts, condition, {11: bucket("new", 50, 50)}, 11) == []
    # A baseline of none: the floor min_rate (20%) decides, not 3 x 0.
    quiet = {n: bucket("sale", 10, 0) for n in range(10)}
    assert risen(alerts, condition, {**quiet, 11: bucket("sale", 10, 1)}, 11) == []
    [rise] = risen(alerts, condition, {**quiet, 11: bucket("sale", 10, 2)}, 11)
    assert "against 0% over the 10m before" in rise.summary()


def decision(outcome: str, reason: Reason, rule: str | None, campaign: str = "sale") -> Decision:
    return Decision(outcome, reason, rule, 0.1, (), campaign, "web", None, False, "p", "v")  # type: ignore[arg-type]


def test_rules_count_out_of_every_decision_and_segments_by_their_top_level() -> None:
    counted = Bucket()
    for _ in range(6):
        counted.add(decision("personalized", Reason.ALLOWED, None), "eu/de")
    for _ in range(3):
        counted.add(decision("segment", Reason.FREQUENCY_CAP, "daily"), "eu/de/berlin")
    counted.add(decision("segment", Reason.PREFERENCE, "level.off"), "")
    shadow = decision("segment", Reason.FREQUENCY_CAP, "daily")._replace(shadow=True)
    counted.add(shadow, "eu")  # delivered all the same: not a refusal
    assert counted.decisions == 11
    assert counted.counts[("campaign", "sale")] == [11, 4]
    assert counted.counts[("rule", "daily")] == [0, 3]
    assert counted.counts[("segment", "eu")] == [10, 3]
    assert counted.counts[("segment", "*")] == [1, 1]
    alerts = rate_policy(per="rule", min_decisions=5).alerts
    baseline = {n: Bucket(decisions=10) for n in range(10)}
    [rise] = risen(alerts, alerts.conditions[0], {**baseline, 11: counted}, 11)
    assert (rise.subject, rise.decisions, rise.hits, rise.baseline_decisions) == (
        "daily", 11, 3, 100,
    )  # fmt: skip


def test_subjects_of_one_bucket_are_bounded() -> None:
    counted = Bucket()
    for number in range(1500):
        counted.add(decision("segment", Reason.FREQUENCY_CAP, "cap", f"c{number}"), "")
    campaigns = [subject for per, subject in counted.counts if per == "campaign"]
    assert len(campaigns) == 1001
    assert counted.counts[("campaign", "(others)")] == [500, 500]


@pytest.mark.parametrize(
    ("table", "line", "problem"),
    [
        ('[alerts]\nwebhook = "ftp://example.com/x"\n', 5,
         "alerts.webhook: 'ftp://example.com/...' is not a webhook address"),
        ('[alerts]\nquiet = "9d"\n', 5, "alerts.quiet: '9d' must be at least 1s and at most 7d"),
        ('[[alerts.conditions]]\nname = "x"\nkind = "refusal-rate"\nper = "segment"\n', 7,
         'alerts.conditions."x".per: a refusal-rate condition counts per "campaign" or "rule"'),
        ('[[alerts.conditions]]\nname = "x"\nkind = "store-failing"\nwindow = "5m"\n', 7,
         'alerts.conditions."x".window: window is read by refusal-rate and fallback-rate'),
        ('[[alerts.conditions]]\nname = "x"\nkind = "reload-rejected"\nafter = "5s"\n', 7,
         'alerts.conditions."x".after: after is read by store-failing conditions only'),
        ('[alerts]\nresolution = "5m"\n[[alerts.conditions]]\nname = "x"\nkind = "fallback-rate"'
         '\nwindow = "1m"\n', 9, 'alerts.conditions."x".window: window (1m) is shorter than '
         "alerts.resolution (5m)"),
        ('[alerts]\nresolution = "1s"\n[[alerts.conditions]]\nname = "x"\nkind = "fallback-rate"'
         '\nbaseline = "1d"\n', 9, 'alerts.conditions."x".baseline: window and baseline span '
         "86,700 buckets of 1s; at most 10,080"),
        ('[[alerts.conditions]]\nname = "x"\nkind = "reload-rejected"\n[[alerts.conditions]]\n'
         'name = "x"\nkind = "store-failing"\n', 8,
         "alerts.conditions.\"x\".name: two conditions are named 'x'"),
        ('[[alerts.conditions]]\nname = "x"\nkind = "rate"\n', 6, "alerts.conditions.\"x\".kind"),
    ],
)  # fmt: skip
def test_a_bad_alerts_table_is_refused_with_its_line_and_words(
    tmp_path: Path, table: str, line: int, problem: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f'[policy]\nname = "shop"\n\n{table}')
    out = io.StringIO()
    assert check([str(path)], out) == 1
    assert out.getvalue().startswith(f"{path}:{line}: {problem}"), out.getvalue()


README = Path("README.md").read_text()
README_EXAMPLE = README.split("```toml\n[alerts]")[1].split("```")[0]
README_BODY = json.loads(
    README.split("**The webhook** gets")[1].split("```json\n")[1].split("```")[0]
)


def test_the_readme_example_loads_and_check_explains_each_alert_in_words(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f'[policy]\nname = "shop"\n\n[alerts]{README_EXAMPLE}')
    jsonschema.validate(tomllib.loads(path.read_text()), json_schema())  # editors agree
    out = io.StringIO()
    assert check([str(path)], out) == 0
    text = out.getvalue()
    assert "alerts:      posted as JSON to https://ops.example.com/... (4 attempts" in text
    assert (
        "each alert at most once per 30m across all workers; rates are every worker's, "
        "counted per minute"
    ) in text
    assert "T0KEN" not in text  # a webhook's path often is its password
    assert (
        "campaign-refusals  when a campaign's refusal rate over the last 5m is at least 3 times "
        "its rate over the 1h before, and at least 10%, with at least 50 decisions in each"
    ) in text
    assert "segment-fallbacks  when a segment's fallback rate" in text
    assert "store-down         when the store has failed for 30s in a row" in text
    assert "bad-reload         when a hot reload refuses an edited policy file" in text


async def spike(engine: Engine, clock: ManualClock) -> None:
    """An hour of ordinary traffic (10% refused), then five minutes of nearly all refused."""
    for number in range(100):
        await engine.decide(marker("sale"), person=f"p{number}")
        if number % 10 == 0:
            await engine.decide(marker("sale"), person=f"p{number}")  # refused: once a day
        clock.advance(30)
    clock.advance(600)
    for _ in range(40):
        await engine.decide(marker("sale"), person="p0")
        clock.advance(5)


@pytest.mark.parametrize("counts", ["this process's", "the shared ops state's"])
async def test_a_spike_posts_one_alert_and_the_quiet_period_holds_for_every_monitor(
    counts: str,
) -> None:
    clock = ManualClock()
    store = MemoryStore()
    with Receiver() as hook:
        rules = policy(SPIKE.format(url=hook.url))
        engine = Engine(rules, store, secret=SECRET, clock=clock)
        ops = OpsState(engine, clock=clock) if counts != "this process's" else None
        monitor = AlertMonitor(engine, clock=clock, ops=ops)
        assert monitor.source is (monitor.counts if ops is None else monitor.shared)
        await spike(engine, clock)
        [alert] = await monitor.tick()
        assert await asyncio.to_thread(hook.wait_for, 1)
        # Another worker on the same store sees the same spike, and stays quiet.
        other = AlertMonitor(Engine(rules, store, secret=SECRET, clock=clock), clock=clock, ops=ops)
        other.counts.buckets = monitor.counts.buckets
        assert await other.tick() == []
        assert await monitor.tick() == []
        clock.advance(3600)  # the quiet period is over, but so is the spike
        assert await monitor.tick() == []
        await monitor.aclose()
        if ops is not None:
            await ops.aclose()
    [body] = hook.bodies
    assert body == {
        "alert": "campaign-refusals",
        "kind": "refusal-rate",
        "key": "campaign-refusals:campaign:sale",
        "per": "campaign",
        "subject": "sale",
        "summary": alert.summary,
        "figures": {
            "rate": 1.0, "decisions": 40, "refused": 40, "baseline_rate": 0.0909,
            "baseline_decisions": 110, "window_seconds": 300.0, "baseline_seconds": 3600.0,
            "factor": 3.0, "min_rate": 0.2, "min_decisions": 20,
        },
        "policy": f"test@{rules.version}",
        "at": body["at"],
        "quiet_seconds": 3600.0,
    }  # fmt: skip
    assert alert.summary.startswith("campaign 'sale': refusal rate 100% over the last 5m")
    assert list(body) == list(README_BODY)  # the README shows the body as it is
    assert list(body["figures"]) == list(README_BODY["figures"])


async def test_an_unreachable_webhook_is_retried_a_bounded_number_of_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    rules = policy(
        SPIKE.format(url=down).replace("[[alerts.", 'attempts = 3\nbackoff = "10ms"\n[[alerts.')
    )
    engine = Engine(rules, MemoryStore(), secret=SECRET, clock=clock)
    monitor = AlertMonitor(engine, clock=clock)
    await spike(engine, clock)
    with caplog.at_level(logging.WARNING, logger="throttle"):
        assert len(await monitor.tick()) == 1
        # Decisions go on while the sender retries.
        assert (await engine.decide(marker("other"), person="ana")).outcome == "personalized"
        sender = monitor._sender
        assert sender is not None
        for _ in range(500):  # at most 10 s
            if sender.failed:
                break
            await asyncio.sleep(0.02)
        await monitor.aclose()
    assert (sender.failed, sender.delivered) == (1, 0)
    [failure] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert "after 3 attempts: ConnectError" in failure.getMessage()
    assert failure.webhook == f"{down.rsplit('/', 1)[0]}/..."  # type: ignore[attr-defined]
    [logged] = [r for r in caplog.records if r.getMessage().startswith("throttle alert")]
    assert logged.alert_key == "campaign-refusals:campaign:sale"  # type: ignore[attr-defined]
    assert logged.subject == "sale"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("status", "posts"), [(503, 3), (429, 3), (400, 1)])
async def test_server_errors_are_retried_and_a_refusal_is_not(status: int, posts: int) -> None:
    with Receiver(status=status) as hook:
        sender = WebhookSender(hook.url, timeout=5.0, attempts=3, backoff=0.01)
        assert sender.send({"alert": "x", "key": "x:y:z"})
        for _ in range(500):  # at most 10 s
            if sender.failed:
                break
            await asyncio.sleep(0.02)
        await sender.aclose()
    assert (sender.failed, hook.posts) == (1, posts)


async def test_a_full_queue_drops_the_alert_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver() as hook:
        sender = WebhookSender(hook.url, timeout=5.0, attempts=1, backoff=0.01, queue_size=1)
        assert sender.send({"alert": "first", "key": "a"})
        assert not sender.send({"alert": "second", "key": "b"})  # the task has not run yet
        await sender.aclose()
        assert [body["alert"] for body in hook.bodies] == ["first"]
    assert sender.dropped == 1
    assert "alert second dropped" in caplog.text


async def test_without_the_store_the_workers_of_one_machine_agree_through_a_lock_file(
    tmp_path: Path,
) -> None:
    gone = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # a real client, nothing there
    workers = [QuietPeriods(gone, namespace="shop", lock_dir=tmp_path) for _ in range(2)]
    try:
        claims = [await quiet.claim("store-down:store-failing:store", 60) for quiet in workers]
        assert claims == [True, False]
        assert await workers[0].claim("another:alert:key", 60)
    finally:
        await gone.aclose()
    assert len(os.listdir(tmp_path)) == 2  # named by hashes, never by the subject


async def test_a_store_failing_longer_than_after_fires_once(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    clock = ManualClock()
    store = RedisStore(private_redis.url)
    rules = policy(
        '[alerts]\n[[alerts.conditions]]\nname = "store-down"\nkind = "store-failing"\n'
        'after = "10s"\n[store]\ntimeout = "1s"\n'
    )
    engine = Engine(rules, store, secret=SECRET, monotonic=clock)
    monitor = AlertMonitor(engine, monotonic=clock, lock_dir=tmp_path)
    try:
        await engine.decide(marker(), person="ana")
        private_redis.stop()
        assert (await engine.decide(marker(), person="ana")).reason == Reason.STORE_UNAVAILABLE
        assert await monitor.tick() == []  # failing, not yet for 10 s
        clock.advance(10)
        [alert] = await monitor.tick()
        assert alert.key == "store-down:store-failing:store"
        assert alert.summary.startswith("the store has failed for 10 s without answering once")
        assert await monitor.tick() == []
    finally:
        await monitor.aclose()
        await store.aclose()


async def test_a_refused_reload_fires_once(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[policy]\nname = "shop"\n[alerts]\n[[alerts.conditions]]\nname = "bad-reload"\n'
        'kind = "reload-rejected"\n'
    )
    clock = ManualClock()
    rules = Policy.from_toml(path.read_text(), source=str(path))
    engine = Engine(rules, MemoryStore(), secret=SECRET)
    monitor = AlertMonitor(engine)
    watcher = PolicyWatcher(path, rules, interval=1.0, clock=clock)
    watcher.on_refused = monitor.reload_rejected
    path.write_text(path.read_text() + '[creepiness]\nthreshold = "high"\n')
    clock.advance(1)
    assert watcher.poll() is None
    clock.advance(1)
    assert watcher.poll() is None  # the same refused edit: heard of once
    [alert] = await monitor.tick()
    assert alert.key == f"bad-reload:reload-rejected:{path}"
    assert alert.summary == (
        f"a hot reload refused the edited policy {path}; policy @{rules.version} stays in "
        "force: line 8: creepiness.threshold: is 'high', text; write a number, without quotes"
    )
    assert await monitor.tick() == []


def write_trace(path: Path) -> Path:
    start = 1_800_000_000.0
    lines = []
    for number in range(120):  # two hours, one in ten refused (the second of the day)
        t = start + number * 60
        lines.append({"t": t, "person": f"p{number}", "campaign": "sale"})
        if number % 10 == 0:
            lines.append({"t": t + 1, "person": f"p{number}", "campaign": "sale"})
    for number in range(60):  # then ten minutes of one person, refused
        lines.append({"t": start + 7200 + number * 10, "person": "p0", "campaign": "sale"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_simulate_reports_the_alerts_a_trace_would_have_fired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "policy.toml"
    rules.write_text(
        '[policy]\nname = "shop"\n'
        + SPIKE.format(url="https://ops.example.com/hook").replace('quiet = "1h"', 'quiet = "1d"')
    )
    trace = write_trace(tmp_path / "trace.jsonl")
    assert main(["simulate", str(rules), str(trace), "--json"]) == 0
    [shop] = json.loads(capsys.readouterr().out)["policies"]
    [fired] = shop["alerts"]  # once: the quiet period holds in trace time too
    assert (fired["alert"], fired["per"], fired["subject"]) == (
        "campaign-refusals",
        "campaign",
        "sale",
    )
    assert fired["figures"]["rate"] >= 0.6
    assert 1_800_007_200 < fired["t"] <= 1_800_007_200 + 600
    page = tmp_path / "report.html"
    assert main(["simulate", str(rules), str(trace), "--html", str(page)]) == 0
    assert "would have fired: 1</h2>" in page.read_text()
    assert "<td>campaign-refusals</td><td>campaign &#x27;sale&#x27;: refusal rate" in (
        page.read_text()
    )
    text = capsys.readouterr().out
    assert "alerts shop @" in text and "would have fired: 1 (each at most once per 1d)" in text
    assert "campaign-refusals  campaign 'sale': refusal rate" in text


def test_a_policy_without_alerts_changes_nothing_in_check_or_simulate() -> None:
    out = io.StringIO()
    assert check(["policies/default.toml"], out) == 0
    assert out.getvalue().rstrip().endswith("alerts:      none")
    with pytest.raises(PolicyError):
        policy('[alerts]\nwebhook = "https://a.example/x"\nretries = 3\n')


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/services/T0/B0/s3cret", "https://hooks.example.com/..."),
        ("https://ops:s3cret@alerts.example.com", "https://alerts.example.com"),
        ("http://127.0.0.1:8080/?token=s3cret", "http://127.0.0.1:8080/..."),
    ],
)
def test_a_webhook_is_shown_without_what_may_be_its_password(url: str, shown: str) -> None:
    assert webhook_shown(url) == shown


def test_the_tick_follows_the_smallest_thing_to_notice() -> None:
    from throttle.alerts.monitor import tick_seconds

    assert tick_seconds(policy().alerts) == 10.0
    assert tick_seconds(rate_policy().alerts) == 10.0
    fast = policy('[alerts]\nresolution = "1s"\n[[alerts.conditions]]\nname = "s"\n'
                  'kind = "store-failing"\nafter = "100ms"\n').alerts  # fmt: skip
    assert tick_seconds(fast) == 0.2


@pytest.mark.parametrize("edited", ["base", "market"])
async def test_the_middleware_starts_its_monitor_and_a_bad_edit_reaches_the_webhook(
    tmp_path: Path, edited: str
) -> None:
    path = tmp_path / "shop.toml"
    eu = tmp_path / "eu.toml"
    eu.write_text('[policy]\nname = "shop-eu"\n')
    with Receiver() as hook:
        path.write_text(
            f'[policy]\nname = "shop"\n[alerts]\nwebhook = "{hook.url}"\n'
            '[[alerts.conditions]]\nname = "bad-reload"\nkind = "reload-rejected"\n'
        )
        app = storefront(
            policy=str(path),
            store="memory://",
            reload_interval=0.01,
            markets={"eu": eu},
            market=lambda scope: "eu",
        )
        broken = path if edited == "base" else eu
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
            assert (await http.get("/offer", headers={"x-test-user": "ana"})).status_code == 200
            broken.write_text(broken.read_text() + "[[caps]]\n")
            for _ in range(200):  # at most 10 s: the watcher looks on a request's way
                await asyncio.sleep(0.05)
                await http.get("/offer", headers={"x-test-user": "ana"})
                if hook.posts:
                    break
        middleware = app.middleware_stack
        while not isinstance(middleware, ThrottleMiddleware):
            middleware = middleware.app  # type: ignore[union-attr]
        await middleware.alerts.aclose()
    [body] = hook.bodies
    source = str(path) if edited == "base" else f"{path} + {eu}"
    assert body["key"] == f"bad-reload:reload-rejected:{source}"
    assert "caps[0].name: is required; add it" in body["summary"]
