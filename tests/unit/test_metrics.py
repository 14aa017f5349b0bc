"""The metrics module: contract names and labels, bounded label values, isolation from the global registry."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from execution_operator import metrics as m
from execution_operator.errors import ErrorType

CONTRACT = {
    "sandbox_executions_total": ("namespace", "class", "outcome", "error_type"),
    "sandbox_execution_duration_seconds": ("class", "outcome"),
    "sandbox_launch_latency_seconds": ("class", "launch"),
    "sandbox_warm_pool_pods": ("namespace", "class", "state"),
    "sandbox_warm_claims_total": ("class", "result"),
    "sandbox_executions_in_flight": ("class", "phase"),
    "sandbox_retries_total": ("class", "error_type"),
    "sandbox_circuit_breaker_state": ("class",),
    "sandbox_circuit_breaker_transitions_total": ("class", "to"),
    "sandbox_dead_letters_total": ("namespace", "class", "error_type"),
    "sandbox_reconcile_errors_total": ("kind",),
    "sandbox_api_requests_total": ("verb", "code"),
    "sandbox_api_request_duration_seconds": ("verb",),
    "sandbox_watch_restarts_total": ("resource",),
    "sandbox_dead_letters_present": ("namespace",),
}


@pytest.fixture
def om() -> m.OperatorMetrics:
    return m.OperatorMetrics()


def _value(om: m.OperatorMetrics, name: str, labels: dict[str, str]) -> float | None:
    return om.registry.get_sample_value(name, labels)


def test_contract_names_and_labels(om: m.OperatorMetrics) -> None:
    names = om.family_names()
    for name in CONTRACT:
        assert name in names
    by_name = {(f.name + "_total" if f.type == "counter" else f.name): f for f in om.registry.collect()}
    # Label names are checked through a recorded sample of each family.
    om.record_terminal("ns", "default", "Failed", ErrorType.TIMEOUT, 1.0)
    om.record_launch_latency("default", 0.3)
    om.set_warm_pool_pods("ns", "default", "ready", 3)
    om.record_warm_claim("default", "hit")
    om.set_in_flight("default", "Running", 2)
    om.record_retry("default", "killed")
    om.set_breaker_state("default", "open")
    om.record_breaker_transition("default", "open")
    om.record_dead_letter("ns", "default", "timeout")
    om.record_reconcile_error("Execution")
    om.observe_api_request("patch", 200, 0.01)
    om.record_watch_restart("executions")
    om.set_dead_letters_present("ns", 3)
    for family in om.registry.collect():
        exposed = family.name + "_total" if family.type == "counter" else family.name
        if exposed not in CONTRACT:
            continue
        sample = next(s for s in family.samples if not s.name.endswith(("_created", "_sum", "_count")))
        got = tuple(k for k in sample.labels if k != "le")
        assert set(got) == set(CONTRACT[exposed]), exposed
    assert set(CONTRACT) <= set(by_name)


def test_own_registry_not_global(om: m.OperatorMetrics) -> None:
    om.record_terminal("ns", "default", "succeeded", None, 0.5)
    assert (
        REGISTRY.get_sample_value(
            "sandbox_executions_total",
            {"namespace": "ns", "class": "default", "outcome": "succeeded", "error_type": "none"},
        )
        is None
    )
    other = m.OperatorMetrics()
    assert other.registry is not om.registry


def test_record_terminal_normalises_labels(om: m.OperatorMetrics) -> None:
    om.record_terminal("ns", "default", "Succeeded", ErrorType.TIMEOUT, 2.0)
    om.record_terminal("ns", "default", "failed", "made_up_type", None)
    om.record_terminal("ns", "default", "weird", ErrorType.OOM, 1.0)
    assert (
        _value(
            om,
            "sandbox_executions_total",
            {"namespace": "ns", "class": "default", "outcome": "succeeded", "error_type": "none"},
        )
        == 1
    )
    assert (
        _value(
            om,
            "sandbox_executions_total",
            {"namespace": "ns", "class": "default", "outcome": "failed", "error_type": "unknown"},
        )
        == 1
    )
    assert (
        _value(
            om,
            "sandbox_executions_total",
            {"namespace": "ns", "class": "default", "outcome": "unknown", "error_type": "oom"},
        )
        == 1
    )
    assert _value(om, "sandbox_execution_duration_seconds_count", {"class": "default", "outcome": "succeeded"}) == 1
    # No duration: counted, not observed.
    assert _value(om, "sandbox_execution_duration_seconds_count", {"class": "default", "outcome": "failed"}) is None


def test_buckets_cover_50ms_to_300s(om: m.OperatorMetrics) -> None:
    assert m.DURATION_BUCKETS[0] == 0.05
    assert m.DURATION_BUCKETS[-1] == 300.0
    om.record_launch_latency("default", 299.0)
    cold = {"class": "default", "launch": "cold"}
    assert _value(om, "sandbox_launch_latency_seconds_bucket", {**cold, "le": "300.0"}) == 1
    assert _value(om, "sandbox_launch_latency_seconds_bucket", {**cold, "le": "180.0"}) == 0
    om.record_launch_latency("default", 0.04, "warm")
    warm = {"class": "default", "launch": "warm"}
    assert _value(om, "sandbox_launch_latency_seconds_bucket", {**warm, "le": "0.05"}) == 1
    assert _value(om, "sandbox_launch_latency_seconds_bucket", {**warm, "le": "0.025"}) == 0


def test_in_flight_helpers(om: m.OperatorMetrics) -> None:
    om.move_in_flight("default", None, "Pending")
    om.move_in_flight("default", None, "Pending")
    om.move_in_flight("default", "Pending", "Running")
    om.move_in_flight("default", "Running", None)
    assert _value(om, "sandbox_executions_in_flight", {"class": "default", "phase": "Pending"}) == 1
    assert _value(om, "sandbox_executions_in_flight", {"class": "default", "phase": "Running"}) == 0
    om.set_in_flight("default", "retrying", 4)
    assert _value(om, "sandbox_executions_in_flight", {"class": "default", "phase": "Retrying"}) == 4


def test_breaker_state_values(om: m.OperatorMetrics) -> None:
    om.set_breaker_state("c", "half-open")
    assert _value(om, "sandbox_circuit_breaker_state", {"class": "c"}) == 1
    om.set_breaker_state("c", 2)
    assert _value(om, "sandbox_circuit_breaker_state", {"class": "c"}) == 2
    om.record_breaker_transition("c", "closed")
    assert _value(om, "sandbox_circuit_breaker_state", {"class": "c"}) == 0
    assert _value(om, "sandbox_circuit_breaker_transitions_total", {"class": "c", "to": "closed"}) == 1
    with pytest.raises(ValueError, match="unknown breaker state"):
        om.set_breaker_state("c", "ajar")
    with pytest.raises(ValueError, match="must be 0, 1 or 2"):
        om.set_breaker_state("c", 7)


def test_api_request_labels_are_bounded(om: m.OperatorMetrics) -> None:
    om.observe_api_request("PATCH", 409, 0.02)
    om.observe_api_request("frobnicate", None, 0.5)
    om.observe_api_request("get", "garbage", 0.1)
    assert _value(om, "sandbox_api_requests_total", {"verb": "patch", "code": "409"}) == 1
    assert _value(om, "sandbox_api_requests_total", {"verb": "other", "code": "error"}) == 1
    assert _value(om, "sandbox_api_requests_total", {"verb": "get", "code": "error"}) == 1
    assert _value(om, "sandbox_api_request_duration_seconds_count", {"verb": "patch"}) == 1


def test_sample_names_include_histogram_series(om: m.OperatorMetrics) -> None:
    names = om.sample_names()
    assert "sandbox_execution_duration_seconds_bucket" in names
    assert "sandbox_executions_total" in names
    assert "sandbox_circuit_breaker_state" in names


def test_http_server_serves_registry(om: m.OperatorMetrics) -> None:
    om.record_dead_letter("team-a", "default", ErrorType.IMAGE_PULL_ERROR)
    server, thread = m.start_metrics_server(port=0, addr="127.0.0.1", metrics=om)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = [s for s in families["sandbox_dead_letters"].samples if s.name == "sandbox_dead_letters_total"]
    assert samples
    assert samples[0].labels["error_type"] == "image_pull_error"
    assert samples[0].value == 1


def test_module_functions_use_default_instance() -> None:
    before = m.METRICS.registry.get_sample_value("sandbox_watch_restarts_total", {"resource": "zz-test"}) or 0
    m.record_watch_restart("zz-test")
    after = m.METRICS.registry.get_sample_value("sandbox_watch_restarts_total", {"resource": "zz-test"})
    assert after == before + 1
