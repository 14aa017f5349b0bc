"""A real Prometheus on 127.0.0.1 scrapes the metrics endpoint while a synthetic workload records samples;
every dashboard panel's query (variables substituted) must return data, and the alert rules must load."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from promlive import Prometheus, has_finite_value, live_stack, substitute
from toolkit import Render, by_kind, find_tool, require_tool

from execution_operator import dashboard

pytestmark = pytest.mark.tools

QUERY_DEADLINE_S = 60.0


@pytest.fixture
def rule_file(render: Render, tmp_path: Path) -> Path:
    (rule,) = by_kind(render(["prometheusRule.enabled=true"], monitoring=True), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_every_panel_returns_data(rule_file: Path) -> None:
    prometheus = require_tool("prometheus")
    with live_stack(prometheus, rule_files=[rule_file]) as (prom, _workload):
        pending = {(title, substitute(expr)) for title, expr in dashboard.queries()}
        deadline = time.monotonic() + QUERY_DEADLINE_S
        while pending and time.monotonic() < deadline:
            pending = {(t, q) for t, q in pending if not has_finite_value(prom.query(q))}
            if pending:
                time.sleep(0.5)  # polling interval while waiting for scrapes, bounded by the deadline
        assert not pending, f"panels without data after {QUERY_DEADLINE_S}s: {sorted(pending)}"

        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 7
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_prometheus_helper_reports_a_dead_target() -> None:
    """The readiness logic is sharp: a target nobody serves never counts as up."""
    prometheus = find_tool("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed")
    with Prometheus(["127.0.0.1:1"], binary=prometheus) as prom, pytest.raises(TimeoutError):
        prom.wait_for(prom.targets_up, 4, "down target reported up")
