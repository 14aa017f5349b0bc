"""Prometheus metrics of the operator: the documented set (docs/operations.md) plus its own health.

Dashboards and alerts rely on those names.

Everything lives in one :class:`OperatorMetrics` object with its own ``CollectorRegistry`` (never the
process-global default), so tests can build a fresh, isolated instance. The operator uses the module-level
default instance through the small ``record_*``/``set_*`` functions below.

Cardinality is bounded by construction: label values are namespaces, ExecutionClass names and values from
closed sets (outcome, phase, error type, breaker state, HTTP verb and code). Free-form values are folded into
``unknown``/``other``; execution names and correlation IDs never become labels.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from execution_operator import api
from execution_operator.errors import ErrorType

#: Durations from 50 ms (a trivial script) up to the 300 s timeout cap.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0,
)  # fmt: skip
#: Creation -> code started: tens of milliseconds from a warm pool, seconds for a cold pod.
LAUNCH_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0,
)  # fmt: skip
#: How an attempt's pod was obtained (the `launch` label).
LAUNCH_PATHS: Final[frozenset[str]] = frozenset({"warm", "cold"})
#: Results of a warm pool claim (the `result` label of sandbox_warm_claims_total).
CLAIM_RESULTS: Final[frozenset[str]] = frozenset({"hit", "miss", "handover_failed"})
#: States of a pool's pods (the `state` label of sandbox_warm_pool_pods).
POOL_POD_STATES: Final[tuple[str, ...]] = ("ready", "starting")
#: Kubernetes API round trips: milliseconds normally, seconds when throttled.
API_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

#: Terminal outcomes; the label value is the lower-cased terminal phase.
OUTCOMES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})
#: Non-terminal phases counted as in flight.
IN_FLIGHT_PHASES: Final[tuple[str, ...]] = tuple(api.IN_FLIGHT_PHASES)
#: Breaker states and their gauge values (0 closed, 1 half-open, 2 open), as docs/operations.md documents them.
BREAKER_STATES: Final[dict[str, int]] = {"closed": 0, "half_open": 1, "open": 2}
#: Kubernetes API verbs; anything else is folded into ``other``.
API_VERBS: Final[frozenset[str]] = frozenset(
    {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
)
#: ``error_type`` label value for a successful execution.
NO_ERROR: Final[str] = "none"
UNKNOWN: Final[str] = "unknown"

_ERROR_TYPES: Final[frozenset[str]] = frozenset(t.value for t in ErrorType)


def _outcome(outcome: str) -> str:
    value = outcome.strip().lower()
    return value if value in OUTCOMES else UNKNOWN


def _error_type(error_type: ErrorType | str | None) -> str:
    if error_type is None or error_type == "":
        return NO_ERROR
    value = str(error_type.value if isinstance(error_type, ErrorType) else error_type)
    return value if value in _ERROR_TYPES else UNKNOWN


def _phase(phase: str) -> str:
    for known in IN_FLIGHT_PHASES:
        if phase.lower() == known.lower():
            return known
    return UNKNOWN


def _breaker_state(state: str | int) -> tuple[str, int]:
    if isinstance(state, int):
        for name, value in BREAKER_STATES.items():
            if value == state:
                return name, value
        raise ValueError(f"breaker state value must be 0, 1 or 2, not {state}")
    name = state.strip().lower().replace("-", "_")
    if name not in BREAKER_STATES:
        raise ValueError(f"unknown breaker state {state!r}")
    return name, BREAKER_STATES[name]


def _verb(verb: str) -> str:
    value = verb.strip().lower()
    return value if value in API_VERBS else "other"


def _code(code: int | str | None) -> str:
    """HTTP status as a string; ``error`` when no response came back (connection error, timeout)."""
    try:
        value = int(code) if code is not None else 0
    except ValueError:
        return "error"
    return str(value) if 100 <= value <= 599 else "error"


class OperatorMetrics:
    """All operator metrics, registered in a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # --- The documented metrics ----------------------------------------------------------------
        self.executions_total = Counter(
            "sandbox_executions_total",
            "Executions that reached a terminal phase, by outcome and error type.",
            ["namespace", "class", "outcome", "error_type"],
            registry=r,
        )
        self.execution_duration_seconds = Histogram(
            "sandbox_execution_duration_seconds",
            "Run time of the user code of terminal executions.",
            ["class", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.launch_latency_seconds = Histogram(
            "sandbox_launch_latency_seconds",
            "Time from Execution creation to the user code starting, by launch path (warm or cold).",
            ["class", "launch"],
            buckets=LAUNCH_BUCKETS,
            registry=r,
        )
        self.warm_pool_pods = Gauge(
            "sandbox_warm_pool_pods",
            "Unclaimed pods of WarmPools, by state (ready to be claimed, or starting).",
            ["namespace", "class", "state"],
            registry=r,
        )
        self.warm_claims_total = Counter(
            "sandbox_warm_claims",
            "Warm pool claims by result: hit (claimed and handed over), miss (no ready pod: cold launch), "
            "handover_failed (pod deleted, cold launch).",
            ["class", "result"],
            registry=r,
        )
        self.executions_in_flight = Gauge(
            "sandbox_executions_in_flight",
            "Executions not yet terminal, by phase.",
            ["class", "phase"],
            registry=r,
        )
        self.retries_total = Counter(
            "sandbox_retries_total",
            "Attempts retried after a retryable failure.",
            ["class", "error_type"],
            registry=r,
        )
        self.circuit_breaker_state = Gauge(
            "sandbox_circuit_breaker_state",
            "Circuit breaker state per ExecutionClass: 0 closed, 1 half-open, 2 open.",
            ["class"],
            registry=r,
        )
        self.circuit_breaker_transitions_total = Counter(
            "sandbox_circuit_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            ["class", "to"],
            registry=r,
        )
        self.dead_letters_total = Counter(
            "sandbox_dead_letters_total",
            "DeadLetter objects created.",
            ["namespace", "class", "error_type"],
            registry=r,
        )
        # --- Operator health ------------------------------------------------------------------------
        self.dead_letters_present = Gauge(
            "sandbox_dead_letters_present",
            "DeadLetter objects currently stored, per namespace.",
            ["namespace"],
            registry=r,
        )
        self.reconcile_errors_total = Counter(
            "sandbox_reconcile_errors_total",
            "Handler invocations that raised, by resource kind.",
            ["kind"],
            registry=r,
        )
        self.api_requests_total = Counter(
            "sandbox_api_requests_total",
            "Kubernetes API requests made by the operator, by verb and HTTP status code.",
            ["verb", "code"],
            registry=r,
        )
        self.api_request_duration_seconds = Histogram(
            "sandbox_api_request_duration_seconds",
            "Kubernetes API request latency by verb.",
            ["verb"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.watch_restarts_total = Counter(
            "sandbox_watch_restarts_total",
            "Watch streams re-established after an error or expiry, by resource.",
            ["resource"],
            registry=r,
        )
        self.operator_info = Gauge(
            "sandbox_operator_info",
            "Always 1 while the operator runs; the version label tells which build.",
            ["version"],
            registry=r,
        )

    # --- Recording helpers ------------------------------------------------------------------------------

    def record_terminal(
        self,
        namespace: str,
        cls: str,
        outcome: str,
        error_type: ErrorType | str | None,
        duration: float | None,
    ) -> None:
        """Count a terminal Execution and observe its duration (when the user code ran at all)."""
        out = _outcome(outcome)
        et = NO_ERROR if out == "succeeded" else _error_type(error_type)
        self.executions_total.labels(namespace, cls, out, et).inc()
        if duration is not None and duration >= 0:
            self.execution_duration_seconds.labels(cls, out).observe(duration)

    def record_launch_latency(self, cls: str, seconds: float, launch: str = "cold") -> None:
        """Observe the creation → user-code-started latency of one attempt, by launch path."""
        if seconds >= 0:
            self.launch_latency_seconds.labels(cls, launch if launch in LAUNCH_PATHS else "cold").observe(seconds)

    def set_warm_pool_pods(self, namespace: str, cls: str, state: str, n: float) -> None:
        """Set how many unclaimed pods of a class's pools in a namespace are in `state`."""
        self.warm_pool_pods.labels(namespace, cls, state).set(n)

    def forget_warm_pool(self, namespace: str, cls: str) -> None:
        """Drop the pool pod series of a deleted pool."""
        for state in POOL_POD_STATES:
            with contextlib.suppress(KeyError):
                self.warm_pool_pods.remove(namespace, cls, state)

    def record_warm_claim(self, cls: str, result: str) -> None:
        """Count one claim by result: hit, miss or handover_failed."""
        if result in CLAIM_RESULTS:
            self.warm_claims_total.labels(cls, result).inc()

    def set_in_flight(self, cls: str, phase: str, n: float) -> None:
        """Set the in-flight count (used by a periodic recount, which corrects any drift)."""
        self.executions_in_flight.labels(cls, _phase(phase)).set(n)

    def inc_in_flight(self, cls: str, phase: str) -> None:
        """One Execution entered `phase`."""
        self.executions_in_flight.labels(cls, _phase(phase)).inc()

    def dec_in_flight(self, cls: str, phase: str) -> None:
        """One Execution left `phase`."""
        self.executions_in_flight.labels(cls, _phase(phase)).dec()

    def move_in_flight(self, cls: str, from_phase: str | None, to_phase: str | None) -> None:
        """Move one Execution between phases; ``None`` means "not in flight" (new or terminal)."""
        if from_phase is not None and _phase(from_phase) != UNKNOWN:
            self.dec_in_flight(cls, from_phase)
        if to_phase is not None and _phase(to_phase) != UNKNOWN:
            self.inc_in_flight(cls, to_phase)

    def record_retry(self, cls: str, error_type: ErrorType | str | None) -> None:
        """Count a retry, labelled with the error type that caused it."""
        self.retries_total.labels(cls, _error_type(error_type)).inc()

    def set_breaker_state(self, cls: str, value: str | int) -> None:
        """Set the breaker gauge from a state name (``closed``/``half_open``/``open``) or its number."""
        _, number = _breaker_state(value)
        self.circuit_breaker_state.labels(cls).set(number)

    def record_breaker_transition(self, cls: str, to: str) -> None:
        """Count a transition and update the state gauge to match."""
        name, number = _breaker_state(to)
        self.circuit_breaker_transitions_total.labels(cls, name).inc()
        self.circuit_breaker_state.labels(cls).set(number)

    def record_dead_letter(self, namespace: str, cls: str, error_type: ErrorType | str | None) -> None:
        """Count a DeadLetter created, labelled with the error type of the failure."""
        self.dead_letters_total.labels(namespace, cls, _error_type(error_type)).inc()

    def set_dead_letters_present(self, namespace: str, n: float) -> None:
        """Set how many DeadLetters exist in `namespace`."""
        self.dead_letters_present.labels(namespace).set(n)

    def record_reconcile_error(self, kind: str) -> None:
        """Count a reconcile that failed unexpectedly, by the kind of object."""
        self.reconcile_errors_total.labels(kind).inc()

    def observe_api_request(self, verb: str, code: int | str | None, seconds: float) -> None:
        """Count one API request and its latency; ``code`` None means no HTTP response."""
        v = _verb(verb)
        self.api_requests_total.labels(v, _code(code)).inc()
        if seconds >= 0:
            self.api_request_duration_seconds.labels(v).observe(seconds)

    def record_watch_restart(self, resource: str) -> None:
        """Count a restart of the watch on `resource`."""
        self.watch_restarts_total.labels(resource).inc()

    def set_info(self, version: str) -> None:
        """Publish the running version as the info metric's label."""
        self.operator_info.labels(version).set(1)

    # --- Introspection --------------------------------------------------------------------------------

    def family_names(self) -> set[str]:
        """Metric family names as exposed (counters with their ``_total`` suffix)."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(family.name + "_total" if family.type == "counter" else family.name)
        return names

    def sample_names(self) -> set[str]:
        """Every series name a query may use: families plus histogram ``_bucket``/``_sum``/``_count``."""
        names: set[str] = set()
        for family in self.registry.collect():
            if family.type == "counter":
                names.update({family.name + "_total", family.name + "_created"})
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count", "_created"))
            else:
                names.add(family.name)
        return names


#: The process-wide instance the operator records into.
METRICS: Final[OperatorMetrics] = OperatorMetrics()


def start_metrics_server(
    port: int = 8080, addr: str = "0.0.0.0", metrics: OperatorMetrics | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` of ``metrics`` (default :data:`METRICS`) from a daemon thread.

    Returns the server and its thread; ``server.shutdown()`` stops it (tests do). ``port=0`` picks a free
    port, readable as ``server.server_port``.
    """
    m = metrics if metrics is not None else METRICS
    server, thread = start_http_server(port, addr=addr, registry=m.registry)
    return server, thread


# Module-level shortcuts on the default instance, so callers need not pass it around.


def record_terminal(
    namespace: str, cls: str, outcome: str, error_type: ErrorType | str | None, duration: float | None
) -> None:
    """`OperatorMetrics.record_terminal` on the default instance."""
    METRICS.record_terminal(namespace, cls, outcome, error_type, duration)


def record_launch_latency(cls: str, seconds: float, launch: str = "cold") -> None:
    """`OperatorMetrics.record_launch_latency` on the default instance."""
    METRICS.record_launch_latency(cls, seconds, launch)


def set_warm_pool_pods(namespace: str, cls: str, state: str, n: float) -> None:
    """`OperatorMetrics.set_warm_pool_pods` on the default instance."""
    METRICS.set_warm_pool_pods(namespace, cls, state, n)


def forget_warm_pool(namespace: str, cls: str) -> None:
    """`OperatorMetrics.forget_warm_pool` on the default instance."""
    METRICS.forget_warm_pool(namespace, cls)


def record_warm_claim(cls: str, result: str) -> None:
    """`OperatorMetrics.record_warm_claim` on the default instance."""
    METRICS.record_warm_claim(cls, result)


def set_in_flight(cls: str, phase: str, n: float) -> None:
    """`OperatorMetrics.set_in_flight` on the default instance."""
    METRICS.set_in_flight(cls, phase, n)


def inc_in_flight(cls: str, phase: str) -> None:
    """`OperatorMetrics.inc_in_flight` on the default instance."""
    METRICS.inc_in_flight(cls, phase)


def dec_in_flight(cls: str, phase: str) -> None:
    """`OperatorMetrics.dec_in_flight` on the default instance."""
    METRICS.dec_in_flight(cls, phase)


def move_in_flight(cls: str, from_phase: str | None, to_phase: str | None) -> None:
    """`OperatorMetrics.move_in_flight` on the default instance."""
    METRICS.move_in_flight(cls, from_phase, to_phase)


def record_retry(cls: str, error_type: ErrorType | str | None) -> None:
    """`OperatorMetrics.record_retry` on the default instance."""
    METRICS.record_retry(cls, error_type)


def set_breaker_state(cls: str, value: str | int) -> None:
    """`OperatorMetrics.set_breaker_state` on the default instance."""
    METRICS.set_breaker_state(cls, value)


def record_breaker_transition(cls: str, to: str) -> None:
    """`OperatorMetrics.record_breaker_transition` on the default instance."""
    METRICS.record_breaker_transition(cls, to)


def record_dead_letter(namespace: str, cls: str, error_type: ErrorType | str | None) -> None:
    """`OperatorMetrics.record_dead_letter` on the default instance."""
    METRICS.record_dead_letter(namespace, cls, error_type)


def set_dead_letters_present(namespace: str, n: float) -> None:
    """`OperatorMetrics.set_dead_letters_present` on the default instance."""
    METRICS.set_dead_letters_present(namespace, n)


def record_reconcile_error(kind: str) -> None:
    """`OperatorMetrics.record_reconcile_error` on the default instance."""
    METRICS.record_reconcile_error(kind)


def observe_api_request(verb: str, code: int | str | None, seconds: float) -> None:
    """`OperatorMetrics.observe_api_request` on the default instance."""
    METRICS.observe_api_request(verb, code, seconds)


def record_watch_restart(resource: str) -> None:
    """`OperatorMetrics.record_watch_restart` on the default instance."""
    METRICS.record_watch_restart(resource)


def set_info(version: str) -> None:
    """`OperatorMetrics.set_info` on the default instance."""
    METRICS.set_info(version)


def reset_in_flight(classes: Iterable[str]) -> None:
    """Zero the in-flight gauges of ``classes`` before a full recount."""
    for cls in classes:
        for phase in IN_FLIGHT_PHASES:
            METRICS.set_in_flight(cls, phase, 0)
