"""Load-test your own app with throttle in front of it, with Locust.

Locust is not a dependency of throttle: `pip install locust`, then, against your app:

    locust -f examples/locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 32 --spawn-rate 32 --run-time 1m

Each simulated user is one person of `THROTTLE_LOCUST_PEOPLE` (default 100000) who asks for
`THROTTLE_LOCUST_PATH` (default /offer) over and over. A response fails in Locust's statistics
when throttle did not decide it (no `Personalization-Decision` header: the page is not marked,
the middleware is not in front of it, or the policy sets `decisions.header = false`) or when the
`Personalization` marker leaked out. At the end it prints how the decisions came out: how much
was personalized, how much got segment content and why (per process: with distributed workers,
each worker prints its own).

How a person is named: by default the `X-User` header, which only the bench app reads:

    THROTTLE_BENCH_REDIS_URL=redis://127.0.0.1:6379/0 THROTTLE_SECRET=<32 hex bytes> \\
        uvicorn --factory throttle.bench.apps:throttled --port 8000

Change `sign_in` to what your app uses (a session cookie from a login request, a bearer
token); never identify people by a header a client can set in production.
"""

from __future__ import annotations

import collections
import os
import random
from typing import Any

from locust import HttpUser, between, events, task  # type: ignore[import-not-found]

PEOPLE = int(os.environ.get("THROTTLE_LOCUST_PEOPLE", "100000"))
PATH = os.environ.get("THROTTLE_LOCUST_PATH", "/offer")
DECISIONS: collections.Counter[str] = collections.Counter()


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def report_decisions(**_: Any) -> None:
    total = sum(DECISIONS.values())
    if total:
        shares = ", ".join(f"{key} {count / total:.1%}" for key, count in DECISIONS.most_common())
        print(f"throttle decisions: {total} responses: {shares}")


class Person(HttpUser):  # type: ignore[misc]
    # Think time between pages; set both to 0 to measure throughput instead of a visit's pace.
    wait_time = between(
        float(os.environ.get("THROTTLE_LOCUST_WAIT_MIN", "0.5")),
        float(os.environ.get("THROTTLE_LOCUST_WAIT_MAX", "2")),
    )

    def on_start(self) -> None:
        self.sign_in(f"person-{random.randrange(PEOPLE)}")

    def sign_in(self, person: str) -> None:
        """Make the following requests come from `person`; adapt this to your app's sign-in."""
        self.client.headers["X-User"] = person

    @task  # type: ignore[untyped-decorator]
    def personalized_page(self) -> None:
        with self.client.get(PATH, name=PATH, catch_response=True) as response:
            decision = response.headers.get("Personalization-Decision")
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif decision is None:
                response.failure("no Personalization-Decision: not marked, or throttle absent")
            elif "Personalization" in response.headers:
                response.failure("the Personalization marker reached the client")
            else:
                response.success()
                outcome = decision.split(";", 1)[0]
                reason = decision.split("reason=", 1)[-1].split(";", 1)[0]
                DECISIONS[f"{outcome}/{reason}"] += 1
