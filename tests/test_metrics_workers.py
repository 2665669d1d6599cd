"""/metrics as users run it: `uvicorn app:app --workers 2` with PROMETHEUS_MULTIPROC_DIR, on the
memory store and on a real redis-server; decisions made over HTTP by both workers, scraped
from whichever worker answers, add up to exactly the decisions made."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "a-secret-long-enough-0123456789"
PEOPLE = 7
CONCURRENT = 12
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Workers:
    """`uvicorn tests.metrics_server:app --workers 2` on a free loopback port."""

    def __init__(self, store: str, directory: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "THROTTLE_TEST_STORE": store,
            "THROTTLE_SECRET": SECRET,
        }
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.metrics_server:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    async def ready(self, http: httpx.AsyncClient) -> None:
        for _ in range(600):  # 60 s at most
            if self.process.poll() is not None:
                break
            try:
                if (await http.get(self.url + "/plain")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail(f"uvicorn did not start:\n{self.stop()}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        return output


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
def workers(store_url: str, tmp_path: Path) -> Iterator[Workers]:
    server = Workers(store_url, tmp_path)
    yield server
    server.stop()


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(url + "/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def test_metrics_add_up_every_workers_decisions(
    workers: Workers, store_url: str, tmp_path: Path
) -> None:
    # No keep-alive: each request a new connection, which either worker may accept.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        await workers.ready(http)
        made: collections.Counter[tuple[str, str]] = collections.Counter()
        pids: set[str] = set()
        for round_ in range(30):  # until both workers decided, 360 requests at most
            responses = await asyncio.gather(
                *(
                    http.get(workers.url + "/offer", headers={"x-test-user": f"u{n % PEOPLE}"})
                    for n in range(CONCURRENT)
                )
            )
            for response in responses:
                assert response.status_code == 200
                outcome, reason = response.headers["personalization-decision"].split(";")[:2]
                made[outcome, reason.removeprefix("reason=")] += 1
                pids.add(response.headers["x-worker-pid"])
            if len(pids) == 2 and round_ >= 2:
                break
        assert len(pids) == 2, "one worker made every decision"
        decided = sum(made.values())

        # Each worker writes what it counted within a second (a scrape may see it half
        # written); the worker that answers a scrape reads every worker's file.
        last = "throttle_store_round_trip_seconds_count"
        for _ in range(300):  # 30 s at most
            scraped = await scrape(http, workers.url)
            if total(scraped, "throttle_decisions_total") >= decided and (
                store_url.startswith("memory")
                or (
                    total(scraped, last) == total(scraped, "throttle_store_batch_decisions_count")
                    and total(scraped, "throttle_store_batch_decisions_sum") >= decided
                )
            ):
                break
            await asyncio.sleep(0.1)
        scrapes = [scraped, *[await scrape(http, workers.url) for _ in range(4)]]

    for samples in scrapes:
        assert total(samples, "throttle_decisions_total") == decided
        for (outcome, reason), count in made.items():
            labels = {"outcome": outcome, "reason": reason, "campaign": "spring-sale"}
            assert total(samples, "throttle_decisions_total", **labels) == count
        assert total(samples, "throttle_decision_seconds_count") == decided
        # Gauges combine across the live workers as their modes say: the policy in force is
        # 1 (the largest, not the sum 2), no failing guard, no pid label on any.
        assert [v for (n, _), v in samples.items() if n == "throttle_policy_info"] == [1.0]
        assert total(samples, "throttle_store_guard_failing") == 0
        cache_labels = [ls for (n, ls), _ in samples.items() if n == "throttle_cache_max_entries"]
        assert cache_labels and all("pid" not in dict(ls) for ls in cache_labels)
    assert made["segment", "frequency-cap"] > 0 and made["personalized", "allowed"] > 0
    if store_url.startswith("redis"):
        # Every decision went to Redis in some batch, each batch with one round trip.
        assert total(scraped, "throttle_store_batch_decisions_sum") == decided
        batches = total(scraped, "throttle_store_batch_decisions_count")
        assert total(scraped, "throttle_store_round_trip_seconds_count") == batches
        # One cap across both workers: each person was personalized 3 times in all.
        assert made["personalized", "allowed"] == 3 * PEOPLE
    # Both workers' counts are in the shared directory, each in a file of its own.
    files = await asyncio.to_thread(lambda: list(tmp_path.glob("counter_*.db")))
    counted_by = {path.stem.removeprefix("counter_") for path in files}
    assert pids <= counted_by
