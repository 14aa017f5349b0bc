"""Dashboard lint (the rules of grafana's dashboard-linter, re-implemented) and its drift from the code."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from typing import Any

import pytest
from toolkit import CHART, require_tool

from execution_operator import dashboard
from execution_operator.metrics import OperatorMetrics, start_metrics_server

pytestmark = pytest.mark.tools

CHART_JSON = CHART / "dashboards" / "execution-operator.json"
DS_UID = "${datasource}"


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_chart_dashboard_matches_code() -> None:
    assert CHART_JSON.read_text(encoding="utf-8") == dashboard.render(), (
        "run: python -m execution_operator.dashboard charts/execution-operator/dashboards/execution-operator.json"
    )


def test_structure() -> None:
    board = json.loads(CHART_JSON.read_text())
    assert board["uid"]
    assert board["title"]
    assert board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) for i in ids)
    occupied: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells


def test_datasource_variable_used_everywhere() -> None:
    board = json.loads(CHART_JSON.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == DS_UID
    for p in _panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DS_UID, p["title"]


def test_panels_have_title_description_unit() -> None:
    for p in _panels(dashboard.build_dashboard()):
        assert p["title"], p
        assert p["description"], p
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]


def test_rates_use_rate_interval() -> None:
    for title, expr in dashboard.queries():
        for m in re.finditer(r"\b(rate|increase|irate)\(([^\[]*)\[([^\]]+)\]", expr):
            assert m.group(3) == "$__rate_interval", f"{title}: {m.group(0)}"


def _metric_names(node: Any) -> set[str]:
    """Every metric name selected anywhere in a promql_parser AST."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        return {node.name} if node.name else set()
    if kind == "MatrixSelector":
        return _metric_names(node.vector_selector)
    names: set[str] = set()
    for attr in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            names |= _metric_names(child)
    for arg in getattr(node, "args", None) or []:
        names |= _metric_names(arg)
    return names


def test_queries_parse_and_use_existing_metrics() -> None:
    promql_parser = pytest.importorskip("promql_parser")
    known = OperatorMetrics().sample_names()
    used: set[str] = set()
    for title, expr in dashboard.queries():
        concrete = expr.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$\{?(\w+)\}?", "x", concrete)
        ast = promql_parser.parse(concrete)
        names = _metric_names(ast)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - known
        assert not unknown, f"{title}: unknown metrics {unknown}"
        used |= names
    # Every contract metric is on the dashboard.
    for name in (
        "sandbox_executions_total", "sandbox_execution_duration_seconds_bucket",
        "sandbox_launch_latency_seconds_bucket", "sandbox_executions_in_flight", "sandbox_retries_total",
        "sandbox_circuit_breaker_state", "sandbox_circuit_breaker_transitions_total",
        "sandbox_dead_letters_total", "sandbox_warm_pool_pods", "sandbox_warm_claims_total",
    ):  # fmt: skip
        assert name in used, name


def test_lint_catches_a_bad_query() -> None:
    """The parser step is not a no-op: an unbalanced query is rejected."""
    promql_parser = pytest.importorskip("promql_parser")
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_parser.parse("sum(rate(sandbox_executions_total[5m])")


def test_exposition_passes_promtool_check_metrics() -> None:
    promtool = require_tool("promtool")
    m = OperatorMetrics()
    m.record_terminal("ns", "default", "failed", "timeout", 3.0)
    m.observe_api_request("get", 200, 0.01)
    server, thread = start_metrics_server(port=0, addr="127.0.0.1", metrics=m)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as r:
            body = r.read()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
