"""examples/grafana-dashboard.json: valid JSON Grafana can import, every query on a metric that
throttle exposes (read from a real exposition, histograms' and counters' suffixes included)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SECRET, marker, policy
from throttle import Engine
from throttle.metrics import flush, instrument
from throttle.store import MemoryStore

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"
METRIC = re.compile(r"\bthrottle_[a-z_]+\b")


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]


async def exposed() -> set[str]:
    registry = CollectorRegistry()
    engine = Engine(policy(), MemoryStore(), secret=SECRET)
    instrument(engine, registry=registry)
    await engine.decide(marker(), person="ana")
    flush()
    return {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "throttle" and dashboard["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job"}
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", ()):
            assert target["datasource"]["uid"] == "${datasource}"
            expression = target["expr"]
            assert expression.count("(") == expression.count(")"), expression
            assert expression.count("{") == expression.count("}"), expression
            # Every selector is filtered by the job variable, so one dashboard serves many apps.
            assert expression.count("{") == expression.count('job=~"$job"'), expression


async def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for expression in queries(dashboard) for name in METRIC.findall(expression)}
    names = await exposed()
    assert queried - names == set()
    # And the dashboard shows every family throttle exposes.
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in names}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in queried}
    assert families - shown == set()
