"""The command line and the watch-restart counter."""

from __future__ import annotations

import logging

from execution_operator import metrics
from execution_operator.__main__ import WatchRestartCounter, parse_args


def restarts(resource: str) -> float:
    value = metrics.METRICS.registry.get_sample_value("sandbox_watch_restarts_total", {"resource": resource})
    return value or 0.0


def record(message: str, level: int = logging.DEBUG) -> logging.LogRecord:
    return logging.LogRecord("kopf._cogs.clients.watching", level, __file__, 1, message, None, None)


def test_watch_restarts_are_counted_and_debug_lines_dropped() -> None:
    counter = WatchRestartCounter()
    before_pods, before_ex = restarts("pods"), restarts("executions")
    assert counter.filter(record("Restarting the watch-stream for pods.v1 cluster-wide.")) is False
    assert counter.filter(record("Watch-stream for executions.v1alpha1.sandbox.dev cluster-wide is inactive, "
                                 "reconnecting.")) is False
    assert counter.filter(record("Starting the watch-stream for pods.v1 cluster-wide.")) is False
    assert counter.filter(record("Ignoring an unsupported event type", logging.WARNING)) is True
    assert restarts("pods") == before_pods + 1
    assert restarts("executions") == before_ex + 1


def test_defaults_and_flags() -> None:
    args = parse_args([])
    assert args.metrics_port == 8080
    assert args.liveness_port == 8081
    assert args.peering is None
    assert args.namespace == []
    args = parse_args(["-n", "team-a", "-n", "team-b", "--peering", "main", "--dead-letter-max-age", "60"])
    assert args.namespace == ["team-a", "team-b"]
    assert args.peering == "main"
    assert args.dead_letter_max_age == 60
