"""Restart safety: SIGKILL the operator mid-launch, mid-run and between a pod's end and its status write.

After every restart each Execution must reach the terminal state its code calls for, none may be stuck,
and no attempt may have two pods (the pods carry `sandbox.dev/execution` and `sandbox.dev/attempt`).
These tests kill the operator process, so they need it running from this checkout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import OperatorProcess
from tests.e2e.kube import Kube, condition, execution, wait_until

TERMINAL = ("Succeeded", "Failed", "Cancelled")


@dataclass(frozen=True)
class Kind:
    """A kind of Execution in a batch and the outcome it must reach."""

    code: str
    phase: str
    error_type: str | None
    attempts: int
    output: Any = None
    spec: dict[str, Any] | None = None


def kinds(run_seconds: float) -> dict[str, Kind]:
    """Succeeds, fails with a user error, fails once with a retryable error then succeeds."""
    pause = f"import time\ntime.sleep({run_seconds})\n" if run_seconds else ""
    return {
        "ok": Kind(pause + "result = {'ok': True}\n", "Succeeded", None, 1, {"ok": True}),
        "bad": Kind(pause + "int('not a number')\n", "Failed", "value_error", 1),
        "flaky": Kind(
            pause
            + "import os\nif os.environ['SANDBOX_ATTEMPT'] == '1':\n    raise ConnectionError('reset')\n"
            + "result = {'ok': 'retried'}\n",
            "Succeeded", None, 2, {"ok": "retried"},
            {"retry": {"maxAttempts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2}},
        ),
    }


@pytest.fixture
def op(operator: OperatorProcess | None) -> Iterator[OperatorProcess]:
    """The operator process; whatever a test does to it, it is running again afterwards."""
    if operator is None:
        pytest.skip("restart tests need the operator running from this checkout (E2E_RUN_OPERATOR=1)")
    try:
        yield operator
    finally:
        if operator.process is None or operator.process.poll() is not None:
            operator.start()


def create_batch(kube: Kube, prefix: str, per_kind: int, run_seconds: float) -> dict[str, Kind]:
    """`per_kind` Executions of each kind, created with one kubectl call; returns name -> kind."""
    batch: dict[str, Kind] = {}
    for kind_name, kind in kinds(run_seconds).items():
        for i in range(per_kind):
            batch[f"{prefix}-{kind_name}-{i}"] = kind
    manifests = [execution(name, kind.code, **(kind.spec or {})) for name, kind in batch.items()]
    kube.run("create", "-f", "-", input=yaml.safe_dump_all(manifests))
    return batch


def wait_all_terminal(kube: Kube, names: set[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    bodies: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        for item in kube.items("executions"):
            if item["metadata"]["name"] in names and (item.get("status") or {}).get("phase") in TERMINAL:
                bodies[item["metadata"]["name"]] = item
        return names <= set(bodies)

    try:
        wait_until(done, timeout=timeout, what="every Execution to finish", interval=1.0)
    except AssertionError as exc:
        stuck = {n: (kube.get("execution", n, check=False) or {}).get("status") for n in sorted(names - set(bodies))}
        raise AssertionError(f"{exc}; stuck: {stuck}") from None
    return bodies


def assert_outcomes(kube: Kube, batch: dict[str, Kind]) -> None:
    """Right terminal state for each, one pod per attempt, no pod for an attempt the status does not know."""
    bodies = wait_all_terminal(kube, set(batch))
    pods = kube.items("pods", "-l", "app.kubernetes.io/managed-by=execution-operator")
    per_attempt = Counter(
        (p["metadata"]["labels"]["sandbox.dev/execution"], p["metadata"]["labels"]["sandbox.dev/attempt"])
        for p in pods
    )
    duplicates = {key: n for key, n in per_attempt.items() if n > 1}
    assert not duplicates, f"attempts with more than one pod: {duplicates}"
    problems: list[str] = []
    for name, kind in sorted(batch.items()):
        status = bodies[name]["status"]
        error_type = (status.get("error") or {}).get("type")
        succeeded = condition(bodies[name], "Succeeded") or {}
        history = status.get("attempts") or []
        pod_attempts = sorted(int(a) for (ex, a) in per_attempt if ex == name)
        seen = {
            "phase": status["phase"], "error": error_type, "attempt": status.get("attempt"),
            "history": [a["attempt"] for a in history], "pods": pod_attempts, "output": status.get("output"),
            "condition": succeeded.get("status"),
        }
        want = {
            "phase": kind.phase, "error": kind.error_type, "attempt": kind.attempts,
            "history": list(range(1, kind.attempts + 1)), "pods": list(range(1, kind.attempts + 1)),
            "output": kind.output, "condition": "True" if kind.phase == "Succeeded" else "False",
        }
        if seen != want:
            problems.append(f"{name}: saw {seen}, want {want}")
        elif len({a["podName"] for a in history}) != kind.attempts:
            problems.append(f"{name}: pod names in history are not one per attempt: {history}")
    assert not problems, "\n".join(problems)
    # A failure is recorded once, however many operators saw it.
    failed = sorted(name for name, kind in batch.items() if kind.phase == "Failed")

    def dead_letters_named() -> bool:
        return all((kube.get("execution", n) or {}).get("status", {}).get("deadLetterName") for n in failed)

    wait_until(dead_letters_named, timeout=60, what="every failed Execution to name its DeadLetter")
    per_execution = Counter(d["metadata"]["labels"].get("sandbox.dev/execution") for d in kube.items("deadletters"))
    assert {n: per_execution[n] for n in failed} == dict.fromkeys(failed, 1), per_execution


def test_kill_mid_launch(kube: Kube, op: OperatorProcess) -> None:
    """Killed right after a batch is created: some pods made, some statuses written, most not."""
    batch = create_batch(kube, "launch", per_kind=3, run_seconds=0)
    op.kill()
    op.start()
    assert_outcomes(kube, batch)


def test_kill_mid_run(kube: Kube, op: OperatorProcess) -> None:
    """Killed while pods run; they finish while the operator is down; the new one reads their ends."""
    batch = create_batch(kube, "run", per_kind=3, run_seconds=3)

    def some_running() -> bool:
        phases = [(i.get("status") or {}).get("phase") for i in kube.items("executions")]
        return phases.count("Running") >= 2

    wait_until(some_running, timeout=60, what="some Executions to be Running")
    op.kill()
    # Let the pods end with nobody watching, so the restart finds finished pods and stale statuses.
    wait_until(lambda: all_pods_finished(kube), timeout=60, what="the running pods to end")
    op.start()
    assert_outcomes(kube, batch)


def all_pods_finished(kube: Kube) -> bool:
    pods = kube.items("pods", "-l", "app.kubernetes.io/managed-by=execution-operator")
    return bool(pods) and all((p.get("status") or {}).get("phase") in ("Succeeded", "Failed") for p in pods)


def finished_pods(kube: Kube) -> int:
    pods = kube.items("pods", "-l", "app.kubernetes.io/managed-by=execution-operator")
    return sum((p.get("status") or {}).get("phase") in ("Succeeded", "Failed") for p in pods)


@pytest.mark.parametrize("ended", [1, 3, 5])
def test_kill_between_pod_end_and_status_write(kube: Kube, op: OperatorProcess, ended: int) -> None:
    """Fast Executions; killed the moment `ended` pods have finished, before their statuses are all written."""
    batch = create_batch(kube, f"end{ended}", per_kind=2, run_seconds=0)
    wait_until(lambda: finished_pods(kube) >= ended, timeout=60, what=f"{ended} pods to finish", interval=0.1)
    op.kill()
    op.start()
    # And once more, as soon as the restarted operator has moved anything forward.
    before = finished_pods(kube)
    wait_until(lambda: finished_pods(kube) > before or all_pods_finished(kube), timeout=60,
               what="the restarted operator to make progress", interval=0.1)
    op.kill()
    op.start()
    assert_outcomes(kube, batch)
