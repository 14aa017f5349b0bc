"""The Grafana dashboard, built from code so its queries stay in step with :mod:`execution_operator.metrics`.

``python -m execution_operator.dashboard PATH`` writes the JSON the Helm chart ships
(``charts/execution-operator/dashboards/execution-operator.json``); a test fails when the file drifts from
:func:`render`. Every panel and target uses the ``${datasource}`` variable, and every rate uses
``$__rate_interval`` so the dashboard works with any scrape interval.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

UID: Final[str] = "execution-operator"
TITLE: Final[str] = "Execution operator"
DATASOURCE: Final[dict[str, str]] = {"type": "prometheus", "uid": "${datasource}"}
#: Label filter applied to every series that has both labels.
NS_CLASS: Final[str] = 'namespace=~"$namespace", class=~"$class"'
CLASS: Final[str] = 'class=~"$class"'
NS: Final[str] = 'namespace=~"$namespace"'
QUANTILES: Final[tuple[float, ...]] = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Target:
    """One PromQL query and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """A panel definition before layout: kind, queries and display options."""

    title: str
    description: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    field_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """A collapsible row of panels."""

    title: str
    panels: tuple[Panel, ...]


def _quantiles(metric: str, selector: str, by: str = "") -> tuple[Target, ...]:
    extra = f", {by}" if by else ""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by (le{extra}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{round(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in QUANTILES
    )


_BREAKER_MAPPINGS: Final[list[dict[str, Any]]] = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": "green", "index": 0},
            "1": {"text": "half-open", "color": "yellow", "index": 1},
            "2": {"text": "open", "color": "red", "index": 2},
        },
    }
]


def _executions_row() -> Row:
    """The "Executions" row: outcomes, failures, success ratio, in flight, duration, launch latency, retries."""
    return Row(
        "Executions",
        (
            Panel(
                "Executions per second by outcome",
                "Executions reaching a terminal phase, split by outcome.",
                (
                    Target(
                        f"sum by (outcome) (rate(sandbox_executions_total{{{NS_CLASS}}}[$__rate_interval]))",
                        "{{outcome}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Failures per second by error type",
                "Terminal failures by their stable error type (see docs/errors.md).",
                (
                    Target(
                        "sum by (error_type) (rate(sandbox_executions_total"
                        f'{{{NS_CLASS}, outcome!="succeeded"}}[$__rate_interval]))',
                        "{{error_type}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Success ratio",
                "Share of terminal executions that succeeded.",
                (
                    Target(
                        "sum(rate(sandbox_executions_total"
                        f'{{{NS_CLASS}, outcome="succeeded"}}[$__rate_interval]))'
                        f" / sum(rate(sandbox_executions_total{{{NS_CLASS}}}[$__rate_interval]))",
                        "success ratio",
                    ),
                ),
                kind="stat",
                unit="percentunit",
                width=6,
                options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
                field_config={
                    "min": 0,
                    "max": 1,
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [
                            {"color": "red", "value": None},
                            {"color": "yellow", "value": 0.8},
                            {"color": "green", "value": 0.95},
                        ],
                    },
                },
            ),
            Panel(
                "In flight by phase",
                "Executions not yet terminal: Pending (waiting or queued), Running, Retrying.",
                (
                    Target(
                        f"sum by (phase) (sandbox_executions_in_flight{{{CLASS}}})",
                        "{{phase}}",
                    ),
                ),
                width=18,
            ),
            Panel(
                "Execution duration",
                "Run time of the user code, percentiles over all terminal executions.",
                _quantiles("sandbox_execution_duration_seconds", CLASS),
                unit="s",
            ),
            Panel(
                "Launch latency",
                "Execution created to user code started (scheduling, image pull, runner start), warm and "
                "cold launches together.",
                _quantiles("sandbox_launch_latency_seconds", CLASS),
                unit="s",
            ),
            Panel(
                "Retries per second by error type",
                "Attempts retried after a retryable failure.",
                (
                    Target(
                        f"sum by (error_type) (rate(sandbox_retries_total{{{CLASS}}}[$__rate_interval]))",
                        "{{error_type}}",
                    ),
                ),
                unit="ops",
                width=24,
            ),
        ),
    )


def _circuit_breaker_row() -> Row:
    """The "Circuit breaker" row: each class's circuit state and its transitions."""
    return Row(
        "Circuit breaker",
        (
            Panel(
                "Circuit breaker state per class",
                "0 closed, 1 half-open, 2 open. An open circuit holds launches of that class.",
                (
                    Target(
                        f"max by (class) (sandbox_circuit_breaker_state{{{CLASS}}})",
                        "{{class}}",
                    ),
                ),
                kind="state-timeline",
                field_config={
                    "mappings": _BREAKER_MAPPINGS,
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [
                            {"color": "green", "value": None},
                            {"color": "yellow", "value": 1},
                            {"color": "red", "value": 2},
                        ],
                    },
                },
            ),
            Panel(
                "Circuit breaker transitions",
                "State changes per class, by the state entered.",
                (
                    Target(
                        "sum by (class, to) (increase(sandbox_circuit_breaker_transitions_total"
                        f"{{{CLASS}}}[$__rate_interval]))",
                        "{{class}} → {{to}}",
                    ),
                ),
            ),
        ),
    )


def _warm_pools_row() -> Row:
    """The "Warm pools" row: pool pods, claims by result, and launch latency warm and cold apart."""
    return Row(
        "Warm pools",
        (
            Panel(
                "Warm pool pods",
                "Unclaimed pods of WarmPools: ready to be claimed, or still starting.",
                (
                    Target(
                        f"sum by (namespace, class, state) (sandbox_warm_pool_pods{{{NS_CLASS}}})",
                        "{{namespace}} {{class}} {{state}}",
                    ),
                ),
                width=8,
            ),
            Panel(
                "Warm claims per second by result",
                "hit: a warm pod ran the Execution; miss: no ready pod, launched cold; handover_failed: "
                "that pod deleted, launched cold.",
                (
                    Target(
                        "sum by (result) (rate(sandbox_warm_claims_total"
                        f"{{{CLASS}}}[$__rate_interval]))",
                        "{{result}}",
                    ),
                ),
                unit="ops",
                width=8,
            ),
            Panel(
                "Launch latency by path",
                "Execution created to user code started, warm (claimed pod) and cold (new pod) apart.",
                _quantiles("sandbox_launch_latency_seconds", CLASS, by="launch"),
                unit="s",
                width=8,
            ),
        ),
    )


def _dead_letters_row() -> Row:
    """The "Dead letters" row: DeadLetters created per second and stored per namespace."""
    return Row(
        "Dead letters",
        (
            Panel(
                "Dead letters created per second",
                "Terminal failures copied into DeadLetter objects, by error type.",
                (
                    Target(
                        "sum by (namespace, error_type) (rate(sandbox_dead_letters_total"
                        f"{{{NS_CLASS}}}[$__rate_interval]))",
                        "{{namespace}} {{error_type}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Dead letters stored",
                "DeadLetter objects currently kept per namespace (retention trims them).",
                (
                    Target(
                        f"sum by (namespace) (sandbox_dead_letters_present{{{NS}}})",
                        "{{namespace}}",
                    ),
                ),
            ),
        ),
    )


def _operator_health_row() -> Row:
    """The "Operator health" row: reconcile errors, API requests and their latency, watch restarts."""
    return Row(
        "Operator health",
        (
            Panel(
                "Reconcile errors per second",
                "Handler invocations that raised, by resource kind.",
                (
                    Target(
                        "sum by (kind) (rate(sandbox_reconcile_errors_total[$__rate_interval]))",
                        "{{kind}}",
                    ),
                ),
                unit="ops",
                width=8,
            ),
            Panel(
                "API requests per second",
                "Kubernetes API requests by verb and HTTP status code.",
                (
                    Target(
                        "sum by (verb, code) (rate(sandbox_api_requests_total[$__rate_interval]))",
                        "{{verb}} {{code}}",
                    ),
                ),
                unit="reqps",
                width=8,
            ),
            Panel(
                "API request latency p99",
                "99th percentile Kubernetes API latency by verb.",
                (
                    Target(
                        "histogram_quantile(0.99, sum by (le, verb) "
                        "(rate(sandbox_api_request_duration_seconds_bucket[$__rate_interval])))",
                        "{{verb}}",
                    ),
                ),
                unit="s",
                width=8,
            ),
            Panel(
                "Watch restarts",
                "Watch streams re-established; a steady climb means a flaky API connection.",
                (
                    Target(
                        "sum by (resource) (increase(sandbox_watch_restarts_total[$__rate_interval]))",
                        "{{resource}}",
                    ),
                ),
                width=24,
            ),
        ),
    )


def rows() -> tuple[Row, ...]:
    """The dashboard content, row by row."""
    return (
        _executions_row(),
        _circuit_breaker_row(),
        _warm_pools_row(),
        _dead_letters_row(),
        _operator_health_row(),
    )


def _variables() -> list[dict[str, Any]]:
    def label_var(name: str, label: str) -> dict[str, Any]:
        query = f"label_values(sandbox_executions_total, {label})"
        return {
            "name": name,
            "label": label.capitalize(),
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-values"},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        label_var("namespace", "namespace"),
        label_var("class", "class"),
    ]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.field_config}
    out: dict[str, Any] = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": panel.options or {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend,
                "range": True,
            }
            for i, t in enumerate(panel.targets)
        ],
    }
    return out


def _layout(all_rows: tuple[Row, ...]) -> Iterator[dict[str, Any]]:
    """Flow panels left to right in 24 columns, one Grafana row header per row."""
    pid = 1
    y = 0
    for row in all_rows:
        yield {
            "id": pid,
            "type": "row",
            "title": row.title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }
        pid += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                y += line_height
                x, line_height = 0, 0
            yield _panel_json(panel, pid, x, y)
            pid += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a Grafana JSON model (schemaVersion 39, Grafana 10+)."""
    return {
        "uid": UID,
        "title": TITLE,
        "description": "Executions, failures by error type, latency, circuit breakers and dead letters.",
        "tags": ["execution-operator", "kubernetes"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": list(_layout(rows())),
    }


def render() -> str:
    """The dashboard JSON exactly as the chart stores it."""
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every non-row panel."""
    d = dashboard if dashboard is not None else build_dashboard()
    return [(p["title"], t["expr"]) for p in d["panels"] if p.get("type") != "row" for t in p.get("targets", [])]


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON to the file given, or to stdout without one (or with `-`)."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args and args[0] != "-":
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
