"""The circuit breaker of an ExecutionClass end to end: open, fail fast, probe, close, survive restarts.

Every test makes its own ExecutionClass (unique name, deleted afterwards) whose image cannot be
pulled, so the breaker sees real `image_pull_error` failures from the cluster. Pods are counted with
a kubectl watch on the class's pod label: the operator deletes a pod that never started, so a plain
listing at the end would miss them.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import SANDBOX_IMAGE
from tests.e2e.kube import Kube, condition, execution, wait_until
from tests.e2e.procs import ClusterHandle, OperatorProcess

#: An image no registry serves: ErrImagePull on the local cluster and on kind alike.
BROKEN_IMAGE = "registry.invalid/execution-operator/no-such-image:0.0.0"
CLASS_LABEL = "sandbox.dev/execution-class"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


# ----------------------------------------------------------------------------- helpers


class Watch:
    """Lines printed by a `kubectl get --watch` running for the whole test (every event, deletes too)."""

    def __init__(self, kube: Kube, *args: str) -> None:
        env = dict(os.environ, KUBECONFIG=kube.kubeconfig)
        self.proc = subprocess.Popen(
            [kube.binary, "get", *args, "--watch"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                with self._lock:
                    self.lines.append(line.strip())

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def assert_alive(self) -> None:
        """A watch that ended early would undercount: the test must not pass on a blind spot."""
        assert self.proc.poll() is None, f"kubectl watch exited with {self.proc.returncode}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


class PodWatch(Watch):
    """Every pod of one ExecutionClass the API server reports, by pod name -> Execution name.

    A pod of a class whose image cannot be pulled lives at least `pendingTimeoutSeconds` before the
    operator deletes it, so a watch started before the first Execution sees every one of them.
    """

    def __init__(self, kube: Kube, class_name: str) -> None:
        super().__init__(
            kube, "pods", "-n", kube.namespace, "-l", f"{CLASS_LABEL}={class_name}",
            "-o", r'jsonpath={.metadata.name}{" "}{.metadata.labels.sandbox\.dev/execution}{"\n"}',
        )

    def pods(self) -> dict[str, str]:
        seen: dict[str, str] = {}
        for line in self.snapshot():
            name, _, owner = line.partition(" ")
            seen[name] = owner
        return seen

    def pods_of(self, execution_name: str) -> set[str]:
        return {pod for pod, owner in self.pods().items() if owner == execution_name}


class StateWatch(Watch):
    """The sequence of breaker states written to one ExecutionClass (one line per write)."""

    def __init__(self, kube: Kube, class_name: str) -> None:
        super().__init__(
            kube, "executionclass", class_name,
            "-o", r'jsonpath={.metadata.resourceVersion}{" "}{.status.circuitBreaker.state}{"\n"}',
        )

    def states(self) -> list[str]:
        """Distinct consecutive states (a write that keeps the state adds nothing)."""
        out: list[str] = []
        for line in self.snapshot():
            _, _, state = line.partition(" ")
            state = state or "closed"
            if not out or out[-1] != state:
                out.append(state)
        return out

    def half_open_rounds(self) -> int:
        return sum(1 for state in self.states() if state == "half_open")


def class_manifest(name: str, *, image: str = BROKEN_IMAGE, failure_threshold: int = 3, open_seconds: int = 15,
                   success_threshold: int = 1, pending_timeout: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "ExecutionClass",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "maxTimeoutSeconds": 60,
            "pendingTimeoutSeconds": pending_timeout,
            "resources": {"defaults": {"cpu": "250m", "memory": "128Mi"}, "max": {"cpu": "1", "memory": "512Mi"}},
            "circuitBreaker": {"failureThreshold": failure_threshold, "openSeconds": open_seconds,
                               "successThreshold": success_threshold},
        },
    }


@pytest.fixture
def make_class(cluster: ClusterHandle) -> Iterator[Callable[..., str]]:
    """Create ExecutionClasses with unique names (cluster-scoped) and delete them afterwards."""
    admin = Kube(cluster.kubeconfig)
    created: list[str] = []

    def make(**spec: Any) -> str:
        name = f"e2e-brk-{uuid.uuid4().hex[:8]}"
        # A real kubelet may still be at ContainerCreating after 3 s (then the error is internal_error).
        spec.setdefault("pending_timeout", 3 if cluster.local else 15)
        admin.run("apply", "-f", "-", input=yaml.safe_dump(class_manifest(name, **spec)), namespaced=False)
        created.append(name)
        return name

    yield make
    for name in created:
        admin.run("delete", "executionclass", name, "--wait=false", check=False, namespaced=False)


@pytest.fixture
def restartable(operator: OperatorProcess | None) -> OperatorProcess:
    if operator is None:
        pytest.skip("the operator is installed in the cluster; this test restarts a local operator process")
    return operator


def breaker(kube: Kube, class_name: str) -> dict[str, Any]:
    body = kube.get("executionclass", class_name)
    assert body is not None
    state: dict[str, Any] = (body.get("status") or {}).get("circuitBreaker") or {}
    return state


def exc_row(kube: Kube, class_name: str) -> dict[str, str]:
    """`kubectl get exc NAME` as the user sees it: the printer columns by header."""
    lines = kube.run("get", "exc", class_name, namespaced=False).stdout.splitlines()
    header, row = lines[0].split(), lines[1].split()
    return dict(zip(header, row, strict=True))


def available(kube: Kube, class_name: str) -> dict[str, Any]:
    body = kube.get("executionclass", class_name)
    assert body is not None
    cond = condition(body, "Available")
    assert cond is not None, f"ExecutionClass {class_name} has no Available condition"
    return cond


def class_events(kube: Kube, class_name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about the class (cluster-scoped: namespace `default`)."""
    items = kube.run(
        "get", "events", "-n", "default", "-o", "yaml",
        "--field-selector", f"involvedObject.kind=ExecutionClass,involvedObject.name={class_name}",
    ).stdout
    return [(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
            for e in (yaml.safe_load(items) or {}).get("items") or []]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the operator's metrics; 0 when the series does not exist yet."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def terminal(kube: Kube, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every named Execution is terminal; one kubectl call per poll, however many names."""

    def done() -> dict[str, dict[str, Any]] | None:
        items = {e["metadata"]["name"]: e for e in kube.items("executions")}
        picked = {n: items[n] for n in names if n in items}
        finished = [n for n, e in picked.items() if (e.get("status") or {}).get("phase") in TERMINAL]
        return picked if len(finished) == len(names) else None

    return wait_until(done, timeout=timeout, what=f"{len(names)} executions to finish", interval=0.5)


def create_many(kube: Kube, manifests: list[dict[str, Any]]) -> None:
    kube.apply(yaml.safe_dump_all(manifests))


def trip(kube: Kube, class_name: str, count: int) -> None:
    """Run `count` single-attempt Executions on the broken class at once; each fails to pull."""
    names = [f"trip-{i}" for i in range(count)]
    create_many(kube, [execution(n, "print('never runs')", executionClassName=class_name, retry={"maxAttempts": 1})
                       for n in names])
    for name, body in terminal(kube, names, timeout=60).items():
        assert body["status"]["error"]["type"] == "image_pull_error", (name, body["status"])


# ----------------------------------------------------------------------------- tests


def test_broken_image_opens_the_circuit_fails_fast_and_probes_close_it(
    kube: Kube, make_class: Callable[..., str], operator: OperatorProcess | None
) -> None:
    cls = make_class(failure_threshold=3, open_seconds=15, success_threshold=1)
    pods = PodWatch(kube, cls)
    states = StateWatch(kube, cls)
    before = operator.metrics_text() if operator else ""
    try:
        trip(kube, cls, 3)
        wait_until(lambda: breaker(kube, cls).get("state") == "open", timeout=30, what="the circuit to open")
        opened = breaker(kube, cls)
        retry_at = parse_time(opened["retryAt"])
        # Fixing the image does not close the circuit: only probes after openSeconds do.
        kube.run("patch", "exc", cls, "--type=merge", "-p", f'{{"spec":{{"image":"{SANDBOX_IMAGE}"}}}}',
                 namespaced=False)

        # While open, new Executions fail fast without a pod; one with retries left waits as Retrying.
        create_many(kube, [
            execution("fail-fast", "print(1)", executionClassName=cls, retry={"maxAttempts": 1}),
            execution("waits", "result = 'probe'", executionClassName=cls,
                      retry={"maxAttempts": 3, "backoffSeconds": 1}),
            execution("elsewhere", "result = 'unaffected'"),
        ])
        fast = kube.wait_terminal("fail-fast", timeout=30)
        assert datetime.now(UTC) < retry_at, "the open-state checks overran openSeconds; raise it"
        assert fast["status"]["phase"] == "Failed"
        error = fast["status"]["error"]
        assert error["type"] == "service_unavailable"
        assert error["retryable"] is True
        assert "circuit is open" in error["message"]
        assert error["meta"]["executionClass"] == cls
        assert "podName" not in fast["status"]
        assert condition(fast, "Succeeded")["reason"] == "ServiceUnavailable"  # type: ignore[index]

        def held() -> dict[str, Any] | None:
            body = kube.get("execution", "waits")
            launched = condition(body or {}, "Launched")
            return body if launched and launched["reason"] == "CircuitOpen" else None

        waiting = wait_until(held, timeout=30, what="the Execution to be held by the circuit")
        assert waiting["status"]["phase"] == "Retrying"
        assert condition(waiting, "Launched")["status"] == "False"  # type: ignore[index]
        assert waiting["status"]["error"]["type"] == "service_unavailable"
        assert parse_time(waiting["status"]["nextAttemptAt"]) >= retry_at

        # kubectl shows it all: the printer columns, the Available condition, an Event on the class.
        row = exc_row(kube, cls)
        assert row["CIRCUIT"] == "open", row
        assert row["FAILURES"] == "3", row
        avail = available(kube, cls)
        assert avail["status"] == "False"
        assert avail["reason"] == "CircuitOpen"
        assert "image_pull_error" in avail["message"]
        assert opened["failureCount"] == 3
        assert opened["lastFailure"]["type"] == "image_pull_error"
        events = wait_until(lambda: [e for e in class_events(kube, cls) if e[1] == "CircuitOpen"], timeout=30,
                            what="a CircuitOpen Event on the class")
        assert events[0][0] == "Warning"
        assert "closed -> open" in events[0][2]
        if operator:
            during = operator.metrics_text()
            assert metric(during, "sandbox_circuit_breaker_state", **{"class": cls}) == 2
            assert (metric(during, "sandbox_circuit_breaker_transitions_total", **{"class": cls, "to": "open"})
                    == metric(before, "sandbox_circuit_breaker_transitions_total", **{"class": cls, "to": "open"}) + 1)

        # Another class is unaffected: its Execution launched and succeeded while this circuit was open.
        other = kube.wait_terminal("elsewhere", timeout=60)
        assert other["status"]["phase"] == "Succeeded"
        assert other["status"]["output"] == "unaffected"
        assert parse_time(other["status"]["startTime"]) < retry_at

        # After openSeconds the held Execution is the probe; its success closes the circuit.
        kube.run("wait", f"exc/{cls}", "--for=condition=Available", "--timeout=90s", namespaced=False,
                 timeout=120)
        probe = kube.wait_terminal("waits", timeout=60)
        assert probe["status"]["phase"] == "Succeeded"
        assert probe["status"]["output"] == "probe"
        assert probe["status"]["attempt"] >= 2
        closed = breaker(kube, cls)
        assert closed["state"] == "closed"
        assert closed["failureCount"] == 0
        row = exc_row(kube, cls)
        assert row["CIRCUIT"] == "closed", row
        assert row["FAILURES"] == "0", row
        assert available(kube, cls)["reason"] == "CircuitClosed"
        wait_until(lambda: {"CircuitHalfOpen", "CircuitClosed"} <= {e[1] for e in class_events(kube, cls)},
                   timeout=30, what="half-open and closed Events on the class")
        if operator:
            after = operator.metrics_text()
            assert metric(after, "sandbox_circuit_breaker_state", **{"class": cls}) == 0
            for to in ("half_open", "closed"):
                assert metric(after, "sandbox_circuit_breaker_transitions_total", **{"class": cls, "to": to}) >= 1

        # The pods the cluster saw: one per tripping Execution, then the probe; none for fail-fast.
        pods.assert_alive()
        seen = pods.pods()
        assert not pods.pods_of("fail-fast"), seen
        assert len(pods.pods_of("waits")) == states.half_open_rounds() == 1, (seen, states.states())
        assert len(seen) == 3 + 1, seen
        assert states.states() == ["closed", "open", "half_open", "closed"], states.states()
    finally:
        pods.close()
        states.close()


def test_an_operator_restart_while_open_keeps_it_open_and_a_reset_closes_it(
    kube: Kube, make_class: Callable[..., str], restartable: OperatorProcess
) -> None:
    cls = make_class(failure_threshold=3, open_seconds=300)
    pods = PodWatch(kube, cls)
    try:
        trip(kube, cls, 3)
        wait_until(lambda: breaker(kube, cls).get("state") == "open", timeout=30, what="the circuit to open")
        opened = breaker(kube, cls)

        restartable.restart()

        # The state came back from the class's status, not from memory.
        assert breaker(kube, cls) == opened
        wait_until(lambda: metric(restartable.metrics_text(), "sandbox_circuit_breaker_state", **{"class": cls}) == 2,
                   timeout=30, what="the restarted operator to report the circuit open")
        kube.apply(execution("after-restart", "print(1)", executionClassName=cls, retry={"maxAttempts": 1}))
        body = kube.wait_terminal("after-restart", timeout=60)
        assert body["status"]["error"]["type"] == "service_unavailable"
        assert exc_row(kube, cls)["CIRCUIT"] == "open"

        # A new reset value closes it at once and clears the counts.
        kube.run("annotate", "exc", cls, "sandbox.dev/circuit-breaker-reset=e2e-1", "--overwrite", namespaced=False)
        kube.run("wait", f"exc/{cls}", "--for=condition=Available", "--timeout=60s", namespaced=False, timeout=90)
        state = breaker(kube, cls)
        assert state["state"] == "closed"
        assert state["failureCount"] == 0
        assert state["lastReset"] == "e2e-1"
        assert state["lastFailure"]["type"] == "image_pull_error", "lastFailure stays as history"
        wait_until(lambda: ("Normal", "CircuitClosed") in {e[:2] for e in class_events(kube, cls)}, timeout=30,
                   what="a CircuitClosed Event after the reset")

        pods.assert_alive()
        assert len(pods.pods()) == 3, pods.pods()
        assert not pods.pods_of("after-restart"), pods.pods()
    finally:
        pods.close()


def test_manual_control_force_open_auto_and_force_closed(kube: Kube, make_class: Callable[..., str]) -> None:
    cls = make_class(image=SANDBOX_IMAGE, failure_threshold=2, open_seconds=300, success_threshold=1)
    pods = PodWatch(kube, cls)
    try:
        # force-open: the class holds every launch although nothing failed.
        kube.run("annotate", "exc", cls, "sandbox.dev/circuit-breaker=force-open", namespaced=False)
        kube.run("wait", f"exc/{cls}", "--for=condition=Available=False", "--timeout=60s", namespaced=False,
                 timeout=90)
        assert "forced open" in available(kube, cls)["message"]
        assert breaker(kube, cls)["forced"] == "force-open"
        kube.apply(execution("held", "print(1)", executionClassName=cls, retry={"maxAttempts": 1}))
        body = kube.wait_terminal("held", timeout=60)
        assert body["status"]["error"]["type"] == "service_unavailable"

        # auto: the next launch is a probe; its success closes the circuit.
        kube.run("annotate", "exc", cls, "sandbox.dev/circuit-breaker=auto", "--overwrite", namespaced=False)
        kube.apply(execution("probe", "result = 1", executionClassName=cls))
        assert kube.wait_terminal("probe", timeout=60)["status"]["phase"] == "Succeeded"
        kube.run("wait", f"exc/{cls}", "--for=condition=Available", "--timeout=60s", namespaced=False, timeout=90)

        # force-closed: failures are recorded but never trip; back to auto the count starts from 0.
        kube.run("annotate", "exc", cls, "sandbox.dev/circuit-breaker=force-closed", "--overwrite", namespaced=False)
        wait_until(lambda: breaker(kube, cls).get("forced") == "force-closed", timeout=30, what="force-closed")
        kube.run("patch", "exc", cls, "--type=merge", "-p", f'{{"spec":{{"image":"{BROKEN_IMAGE}"}}}}',
                 namespaced=False)
        trip(kube, cls, 3)
        state = breaker(kube, cls)
        assert state["state"] == "closed", state
        assert state["failureCount"] == 3, state
        assert available(kube, cls)["status"] == "True"
        kube.run("annotate", "exc", cls, "sandbox.dev/circuit-breaker-", namespaced=False)
        wait_until(lambda: breaker(kube, cls).get("forced") == "auto", timeout=30, what="the mode back to auto")
        assert breaker(kube, cls)["failureCount"] == 0

        pods.assert_alive()
        assert not pods.pods_of("held"), pods.pods()
        assert len(pods.pods_of("probe")) == 1, pods.pods()
    finally:
        pods.close()


STORM = 40


def test_a_storm_on_an_open_circuit_creates_no_more_pods_than_threshold_plus_probes(
    kube: Kube, make_class: Callable[..., str]
) -> None:
    threshold, open_seconds = 3, 8
    cls = make_class(failure_threshold=threshold, open_seconds=open_seconds, success_threshold=1)
    pods = PodWatch(kube, cls)
    states = StateWatch(kube, cls)
    try:
        trip(kube, cls, threshold)
        wait_until(lambda: breaker(kube, cls).get("state") == "open", timeout=30, what="the circuit to open")
        storm = [f"storm-{i:03d}" for i in range(STORM)]
        started = time.monotonic()
        create_many(kube, [execution(n, "print(1)", executionClassName=cls,
                                     retry={"maxAttempts": 2, "backoffSeconds": 1}) for n in storm])
        # Meanwhile another class keeps working.
        healthy = [f"healthy-{i}" for i in range(3)]
        create_many(kube, [execution(n, f"result = {i}") for i, n in enumerate(healthy)])
        for i, (name, body) in enumerate(sorted(terminal(kube, healthy, timeout=60).items())):
            assert body["status"]["phase"] == "Succeeded", (name, body["status"])
            assert body["status"]["output"] == i, (name, body["status"])
        healthy_done = time.monotonic() - started

        # Every storm Execution is refused once, comes back after openSeconds, and (but for the
        # probe, which meets the broken image again) is refused for good.
        results = terminal(kube, storm, timeout=open_seconds + 120)
        errors = sorted(body["status"]["error"]["type"] for body in results.values())
        assert set(errors) <= {"service_unavailable", "image_pull_error"}, errors
        assert errors.count("service_unavailable") >= STORM - states.half_open_rounds()

        pods.assert_alive()
        states.assert_alive()
        rounds = states.half_open_rounds()
        assert rounds >= 1, states.states()
        seen = pods.pods()
        assert len(seen) <= threshold + rounds * 1, (len(seen), rounds, seen)
        assert healthy_done < open_seconds + 30
    finally:
        pods.close()
        states.close()
