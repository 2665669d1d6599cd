"""Prometheus metrics, read the way Prometheus reads them: decisions by bounded labels, latency,
the store's batches, round trips and faults, the guard, the policy and its reloads, caches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps import storefront
from tests.conftest import ManualClock
from tests.helpers import NO_REPETITION, SECRET, marker, policy
from tests.redis_server import RedisServer
from throttle import Engine, Reason
from throttle.errors import ConfigurationError, StoreUnavailable
from throttle.metrics import (
    FAULT_KINDS,
    LiveProcessesCollector,
    Metrics,
    _Observations,
    fault_kind,
    flush,
    instrument,
    metrics_app,
)
from throttle.middleware import ThrottleMiddleware
from throttle.reload import PolicyWatcher
from throttle.store import MemoryStore, RedisStore, Store

ROOT = Path(__file__).resolve().parent.parent
TWO_PER_HOUR = (
    '[[caps]]\nname = "two-an-hour"\nper = "user"\nlimit = 2\nwindow = "1h"\n'
    + NO_REPETITION
    + '[fallback.content."spring-sale"]\nbody = "{}"\n'
)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric, as Prometheus would read it from the exposition, by labels."""
    flush()
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry, name).get(tuple(sorted(labels.items())), 0.0)


def instrumented(body: str, store: Store, **options: object) -> tuple[Engine, CollectorRegistry]:
    registry = CollectorRegistry()
    engine = Engine(policy(body), store, secret=SECRET)
    instrument(engine, registry=registry, **options)  # type: ignore[arg-type]
    return engine, registry


async def test_decisions_are_counted_by_outcome_reason_rule_campaign_and_channel(
    store: Store,
) -> None:
    engine, registry = instrumented(TWO_PER_HOUR, store)
    for _ in range(5):
        await engine.decide(marker(), person="ana")
    await engine.decide(marker(channel="email"), person=None)
    engine.invalid_marker("ana")

    counted = samples(registry, "throttle_decisions_total")
    common = {"campaign": "spring-sale", "shadow": "false"}
    expected = {
        ("personalized", "allowed", "none", "web"): 2,
        ("segment", "frequency-cap", "two-an-hour", "web"): 3,
        ("segment", "anonymous", "consent.anonymous", "email"): 1,
    }
    for (outcome, reason, rule, channel), count in expected.items():
        labels = {"outcome": outcome, "reason": reason, "rule": rule, "channel": channel}
        assert counted[tuple(sorted({**common, **labels}.items()))] == count
    unreadable = {
        "outcome": "segment", "reason": "invalid-marker", "rule": "marker", "campaign": "none",
        "channel": "none", "shadow": "false",
    }  # fmt: skip
    assert counted[tuple(sorted(unreadable.items()))] == 1
    assert sum(counted.values()) == 7
    assert value(registry, "throttle_decision_seconds_count") == 7
    assert value(registry, "throttle_policy_info", policy="test", version=engine.policy.version)
    await engine.aclose()


async def test_hostile_campaigns_rules_and_channels_make_no_labels_and_no_ids_leak() -> None:
    engine, registry = instrumented(TWO_PER_HOUR, MemoryStore(), campaigns=["winter-sale"])
    people = [f"user-{n}@example.com" for n in range(40)]
    for n, person in enumerate(people):
        # What an app might wrongly put in a marker: the person's id as a campaign or channel.
        await engine.decide(marker(f"offer-for-{person}"), person=person)
        await engine.decide(marker("winter-sale", channel=f"c{n}"), person=person)
        await engine.decide(marker("spring-sale", segment=f"u{n}"), person=person)
    # Rules come from the policy; a rule no policy names (a newer engine's) is "other".
    from throttle.metrics import _Vocabulary

    labels = _Vocabulary([engine.policy], Metrics()).labels(
        "segment", Reason.FREQUENCY_CAP, "cap-for-ana", None, None, False
    )
    assert labels == ("segment", "frequency-cap", "other", "none", "none", "false")

    counted = samples(registry, "throttle_decisions_total")
    assert sum(counted.values()) == 120
    values = {name: {dict(k)[name] for k in counted} for name in ("campaign", "channel", "rule")}
    assert values["campaign"] == {"other", "winter-sale", "spring-sale"}
    assert values["channel"] == {"web", "other"}
    assert values["rule"] <= {"none", "two-an-hour"}
    exposition = generate_latest(registry).decode()
    for person in people:
        assert person not in exposition
        assert engine.pseudonym(person) not in exposition


def test_label_names_given_must_be_labels() -> None:
    for bad in (["other"], ["none"], [""], ["x" * 101], ["tab\there"]):
        with pytest.raises(ConfigurationError, match="cannot be a label"):
            Metrics(campaigns=bad)
    assert Metrics(channels="kiosk").channels == ("kiosk",)
    assert "kiosk" in repr(Metrics(channels=["kiosk"]))


def test_a_policy_naming_too_many_campaigns_counts_the_rest_as_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    many = "".join(f'[fallback.content."c{n}"]\nbody = "{{}}"\n' for n in range(150))
    with caplog.at_level("WARNING", logger="throttle.metrics"):
        instrumented(many, MemoryStore())
    assert any("as 'other'" in r.getMessage() for r in caplog.records)
    from throttle.metrics import MAX_CAMPAIGNS, _Vocabulary

    assert len(_Vocabulary([policy(many)], Metrics()).campaigns) == MAX_CAMPAIGNS


def test_observations_written_at_once_equal_observing_each() -> None:
    """The recorder adds observations to a histogram bucket by bucket; Prometheus must read
    the same as if each had been observed (this also guards the histogram internals used)."""
    one, many = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1)
    each = Histogram("h", "h", buckets=buckets, registry=one)
    counted = _Observations(Histogram("h", "h", buckets=buckets, registry=many))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 0.1, 3.0, 0.0):
        each.observe(seconds)
        counted.add(seconds)
    counted.flush()
    counted.flush()  # nothing new: nothing written twice
    assert samples(one, "h_bucket") == samples(many, "h_bucket")
    assert samples(one, "h_sum") == samples(many, "h_sum")
    assert samples(one, "h_count") == samples(many, "h_count") == {(): 7.0}


@pytest.mark.redis_only
async def test_redis_batches_and_round_trips_count_every_decision(redis_url: str) -> None:
    store = RedisStore(redis_url)
    engine, registry = instrumented(TWO_PER_HOUR, store)
    await asyncio.gather(*(engine.decide(marker(), person=f"p{n}") for n in range(30)))
    await asyncio.gather(*(engine.decide(marker(), person=f"p{n}") for n in range(10)))
    assert value(registry, "throttle_store_batch_decisions_sum") == 40
    batches = value(registry, "throttle_store_batch_decisions_count")
    assert 2 <= batches <= 40
    assert value(registry, "throttle_store_round_trip_seconds_count") == batches
    assert value(registry, "throttle_store_round_trip_seconds_sum") > 0
    await engine.aclose()


@pytest.mark.redis_only
async def test_store_errors_by_kind_and_the_guard_state(clock: ManualClock) -> None:
    # maxmemory with noeviction: every write answers OOM, an error about the server.
    server = RedisServer("--maxmemory", "1", "--maxmemory-policy", "noeviction")
    server.start()
    registry = CollectorRegistry()
    store = RedisStore(server.url)
    engine = Engine(policy(TWO_PER_HOUR), store, secret=SECRET, monotonic=clock)
    instrument(engine, registry=registry)
    try:
        assert value(registry, "throttle_store_guard_failing") == 0
        decisions = [await engine.decide(marker(), person=f"p{n}") for n in range(5)]
        assert {d.reason for d in decisions} == {Reason.STORE_UNAVAILABLE}
        errors = samples(registry, "throttle_store_errors_total")
        assert {dict(labels)["kind"] for labels in errors} == set(FAULT_KINDS)
        assert errors[(("kind", "server"),)] >= 1
        assert sum(errors.values()) == errors[(("kind", "server"),)]
        assert value(registry, "throttle_store_guard_failing") == 1
        client = server.client()
        client.config_set("maxmemory", 0)
        client.close()
        clock.advance(engine.policy.store.retry_after)
        assert (await engine.decide(marker(), person="p0")).reason == Reason.ALLOWED
        assert value(registry, "throttle_store_guard_failing") == 0
        server.stop()
        assert (await engine.decide(marker(), person="p1")).reason == Reason.STORE_UNAVAILABLE
        assert value(registry, "throttle_store_errors_total", kind="connection") >= 1
        assert value(registry, "throttle_store_guard_failing") == 1
    finally:
        await engine.aclose()
        server.cleanup()


def test_faults_are_told_apart_by_kind() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    def wrapped(error: Exception) -> StoreUnavailable:
        try:
            raise StoreUnavailable(str(error)) from error
        except StoreUnavailable as unavailable:
            return unavailable

    kinds = {
        "timeout": [TimeoutError("no answer"), RedisTimeoutError(), wrapped(RedisTimeoutError())],
        "connection": [ConnectionRefusedError(), RedisConnectionError(), wrapped(OSError())],
        "server": [StoreUnavailable("Redis: OOM command not allowed"), ResponseError("NOAUTH")],
        "unavailable": [StoreUnavailable("the store is closed")],
        "other": [ValueError("limits we cannot encode")],
    }
    for kind, errors in kinds.items():
        for error in errors:
            assert fault_kind(error) == kind, error


async def test_reloads_by_result_and_the_policy_in_force(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nname = "shop"\n')
    engine, registry = Engine(policy(), MemoryStore(), secret=SECRET), CollectorRegistry()
    clock = ManualClock(0.0)
    watcher = PolicyWatcher(path, engine.policy, interval=1.0, clock=clock)
    instrument(engine, registry=registry, watchers=[watcher])
    first = engine.policy.version
    await engine.decide(marker(), person="ana")

    path.write_text('[policy]\nname = "shop"\n[creepiness]\nthreshold = "0.7"\n')
    clock.advance(2)
    assert watcher.poll() is None
    path.write_text('[policy]\nname = "shop"\n[creepiness]\nthreshold = 0.6\n')
    clock.advance(2)
    reloaded = watcher.poll()
    assert reloaded is not None
    engine.policy = reloaded
    await engine.decide(marker(), person="ana")

    assert value(registry, "throttle_policy_reloads_total", result="refused") == 1
    assert value(registry, "throttle_policy_reloads_total", result="applied") == 1
    info = samples(registry, "throttle_policy_info")
    assert info[(("policy", "test"), ("version", first))] == 0
    assert info[(("policy", "shop"), ("version", reloaded.version))] == 1


async def test_cache_sizes_are_read_with_their_bounds(store: Store) -> None:
    engine, registry = instrumented(TWO_PER_HOUR, store)
    for n in range(3):
        await engine.decide(marker(f"campaign-{n}"), person=f"p{n}")
    entries = samples(registry, "throttle_cache_entries")
    bounds = samples(registry, "throttle_cache_max_entries")
    assert entries[(("cache", "plans"),)] >= 3
    assert entries[(("cache", "markers"),)] >= 0
    for labels in bounds:
        assert entries[labels] <= bounds[labels]
    if isinstance(store, RedisStore):
        assert entries[(("cache", "store_limits"),)] >= 1
    assert value(registry, "throttle_marker_cache_max_bytes") > 0
    await engine.aclose()


async def test_the_middleware_measures_when_asked_and_metrics_app_serves_it() -> None:
    registry = CollectorRegistry()
    app = storefront(policy=policy(TWO_PER_HOUR), metrics=Metrics(registry=registry, spans=False))
    app.router.add_route("/metrics", metrics_app(registry))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for _ in range(3):
            await http.get("/offer", headers={"x-test-user": "ana"})
        await http.get("/plain")
        scraped = await http.get("/metrics")
        openmetrics = await http.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        head = await http.head("/metrics")
        post = await http.post("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    counted = sum(
        s.value for s in families["throttle_decisions"].samples if s.name.endswith("_total")
    )
    assert counted == 3
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_metrics_app_closes_a_websocket() -> None:
    sent = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await metrics_app(CollectorRegistry())({"type": "websocket"}, receive, send)  # type: ignore[arg-type]
    await metrics_app(CollectorRegistry())({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_metrics_without_prometheus_client_stop_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "throttle.metrics")
    with pytest.raises(ConfigurationError, match=r"pip install 'throttle-asgi\[metrics\]'"):
        ThrottleMiddleware(storefront(), policy=policy(), metrics=True)


def test_a_multiprocess_directory_that_cannot_work_stops_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="is not a writable directory"):
        metrics_app()
    # This process imported prometheus_client without the variable: its values are not in
    # files, so another worker could never read them.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match="set after prometheus_client was imported"):
        metrics_app()
    with pytest.raises(ConfigurationError, match="set after prometheus_client was imported"):
        ThrottleMiddleware(
            storefront(), policy=policy(), metrics=Metrics(registry=CollectorRegistry())
        )


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from tests.helpers import SECRET, marker, policy
    from throttle import Engine
    from throttle.metrics import flush, instrument
    from throttle.store import MemoryStore

    async def main():
        engine = Engine(policy(), MemoryStore(), secret=SECRET)
        instrument(engine)
        for n in range(int(sys.argv[1])):
            await engine.decide(marker(), person=f"p{n}")
        flush()  # what the loop would write within a second

    asyncio.run(main())
    print("decided", flush=True)
    sys.stdin.read()  # alive until the test closes its input
    """
)


def test_multiprocess_mode_adds_up_processes_and_forgets_the_gauges_of_dead_ones(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(decisions)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for decisions in (3, 4)
    ]
    registry = CollectorRegistry()
    LiveProcessesCollector(registry, str(tmp_path))
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline() == "decided\n"
        while_alive = {name: samples(registry, name) for name in ("throttle_decisions_total",
                       "throttle_policy_info", "throttle_cache_max_entries")}  # fmt: skip
    finally:
        for worker in workers:
            worker.communicate(timeout=30)
    after = {name: samples(registry, name) for name in while_alive}
    # Counters add up every process, alive or not; totals never go back.
    assert sum(while_alive["throttle_decisions_total"].values()) == 7
    assert sum(after["throttle_decisions_total"].values()) == 7
    # Gauges: the largest of the live processes (1, not 2 for two processes), no pid label;
    # once the processes are gone, so are their gauges.
    assert list(while_alive["throttle_policy_info"].values()) == [1]
    assert all("pid" not in dict(labels) for labels in while_alive["throttle_cache_max_entries"])
    assert after["throttle_policy_info"] == {}
    assert after["throttle_cache_max_entries"] == {}
    assert not list(tmp_path.glob("gauge_live*"))


async def test_measuring_an_engine_twice_counts_each_decision_once() -> None:
    engine, registry = instrumented("", MemoryStore())
    instrument(engine, registry=registry)
    await engine.decide(marker(), person="ana")
    assert sum(samples(registry, "throttle_decisions_total").values()) == 1


def test_spans_asked_for_without_opentelemetry_stop_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from throttle import tracing

    monkeypatch.setattr(tracing, "trace", None)
    engine = Engine(policy(), MemoryStore(), secret=SECRET)
    with pytest.raises(ConfigurationError, match=r"throttle-asgi\[tracing\]"):
        Metrics(registry=CollectorRegistry(), spans=True).instrument(engine)
    Metrics(registry=CollectorRegistry()).instrument(engine)  # spans when installed: none
    assert engine._observers and tracing.annotate not in engine._observers


async def test_each_markets_policy_names_its_rules_and_is_in_force() -> None:
    german = policy(
        '[[caps]]\nname = "de-daily"\nper = "user"\nlimit = 1\nwindow = "1d"\n' + NO_REPETITION,
        name="de",
    )
    engine = Engine(policy(NO_REPETITION), MemoryStore(), secret=SECRET, markets={"de": german})
    registry = CollectorRegistry()
    instrument(engine, registry=registry)
    for _ in range(2):
        await engine.decide(marker(), person="ana", market="de")
    assert value(registry, "throttle_decisions_total", outcome="segment", reason="frequency-cap",
                 rule="de-daily", campaign="other", channel="web", shadow="false") == 1  # fmt: skip
    info = samples(registry, "throttle_policy_info")
    assert info == {
        (("policy", "test"), ("version", engine.policy.version)): 1,
        (("policy", "de"), ("version", german.version)): 1,
    }
    changed = policy(
        '[[caps]]\nname = "de-weekly"\nper = "user"\nlimit = 1\nwindow = "7d"\n' + NO_REPETITION,
        name="de",
    )
    engine.set_market("de", changed)
    await engine.decide(marker(), person="ben", market="de")
    info = samples(registry, "throttle_policy_info")
    assert info[(("policy", "de"), ("version", german.version))] == 0
    assert info[(("policy", "de"), ("version", changed.version))] == 1
