# ruff: noqa: F811
"""Trustworthy under API faults and hostile input: the operator process against the local cluster.

`test_burst_under_faults_and_sigkills` runs a modest burst in `make test`; sized by the environment it
is the full measurement, printing the figures:

    E2E_FAULT_BURST=300 E2E_FAULT_SIGKILLS=5 .venv/bin/pytest -s tests/e2e/test_faults.py -k burst

The others are single hostile Executions that once stopped the operator,
recorded a wrong outcome or opened a healthy class's circuit. Each also checks that the next, ordinary
Execution is still served.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import SANDBOX_IMAGE
from tests.e2e.faultburst import run_burst
from tests.e2e.kube import Kube, execution, wait_until
from tests.e2e.procs import OperatorProcess
from tests.e2e.test_restart import op  # noqa: F401 (the fixture)

BURST = int(os.environ.get("E2E_FAULT_BURST", "90"))
SIGKILLS = int(os.environ.get("E2E_FAULT_SIGKILLS", "2"))
RATE = float(os.environ.get("E2E_FAULT_RATE", "0.1"))


def _fault_injection(kube: Kube) -> None:
    from tests.e2e.faultburst import Cluster

    try:
        Cluster(kube.kubeconfig).request("GET", "/debug/faults")
    except OSError:
        pytest.skip("fault injection needs the local cluster's API server")


@pytest.mark.timeout(max(300, 10 * BURST))
def test_burst_under_faults_and_sigkills(kube: Kube, op: OperatorProcess) -> None:
    _fault_injection(kube)
    figures = run_burst(kube, op, count=BURST, sigkills=SIGKILLS, rate=RATE, timeout=max(280, 9 * BURST))
    print("\n" + "\n".join(figures.lines()))
    assert figures.faults_injected > 0
    assert figures.sigkills == SIGKILLS
    assert figures.clean, "\n".join(figures.lines())


def _served_after(kube: Kube, op: OperatorProcess | None = None) -> None:
    """The next ordinary Execution succeeds: nothing before it stopped the operator."""
    name = f"after-{uuid.uuid4().hex[:6]}"
    kube.create(execution(name, "result = 1 + 1"))
    body = kube.wait_terminal(name, timeout=90)
    assert body["status"]["phase"] == "Succeeded"
    assert body["status"]["output"] == 2
    if op is not None:
        assert op.process is not None, "the operator exited"
        assert op.process.poll() is None, "the operator exited"


def _error(body: dict[str, Any]) -> tuple[str, str, str]:
    status = body["status"]
    return status["phase"], (status.get("error") or {}).get("type", ""), (status.get("error") or {}).get("message", "")


#: Nesting levels of the deepest input the API server stores: its JSON decoder takes 10000 levels, and
#: the Execution's own object and its spec are two of them.
DEEPEST_INPUT = 9998


def test_input_nested_deeper_than_the_api_server_takes_is_refused_at_create(kube: Kube) -> None:
    deep = "[" * (DEEPEST_INPUT + 1) + "]" * (DEEPEST_INPUT + 1)
    manifest = ('{"apiVersion":"sandbox.dev/v1alpha1","kind":"Execution","metadata":{"name":"too-deep"},'
                '"spec":{"code":"result = 1","input":' + deep + "}}")
    refused = kube.run("create", "-f", "-", input=manifest, check=False)
    assert refused.returncode != 0
    assert "exceeded max depth" in refused.stderr


def test_input_nested_as_deep_as_the_api_server_takes_is_refused_and_the_operator_keeps_serving(
    kube: Kube, op: OperatorProcess,
) -> None:
    deep = "[" * DEEPEST_INPUT + "]" * DEEPEST_INPUT  # built as text: encoding it with json would recurse
    manifest = ('{"apiVersion":"sandbox.dev/v1alpha1","kind":"Execution","metadata":{"name":"deep"},'
                '"spec":{"code":"result = 1","input":' + deep + "}}")
    kube.run("create", "-f", "-", input=manifest)
    _served_after(kube, op)
    op.restart()  # and after a restart, which lists the deep object again
    _served_after(kube, op)

    def status() -> dict[str, Any] | None:  # the status alone: the whole object is too deep for json here
        text = kube.run("get", "execution", "deep", "-o", "jsonpath={.status}").stdout
        found = json.loads(text) if text else {}
        return found if found.get("phase") in ("Succeeded", "Failed") else None

    found = wait_until(status, timeout=60, what="the deep Execution to end")
    assert "RecursionError" not in op.log_path.read_text()  # every status write of the deep object was stored
    phase, error_type, message = _error({"status": found})
    assert (phase, error_type) == ("Failed", "validation_error")
    assert "nested more than 100 levels" in message


def test_huge_annotations_and_the_longest_name(kube: Kube) -> None:
    name = "n" * 253
    body = execution(name, "result = 'long'")
    body["metadata"]["annotations"] = {"example.com/blob": "x" * 200_000, "sandbox.dev/correlation-id": "c" * 303}
    kube.run("create", "-f", "-", input=json.dumps(body))
    done = kube.wait_terminal(name, timeout=90)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["output"] == "long"
    assert done["status"]["correlationId"] == "c" * 128

    def events() -> list[dict[str, Any]] | None:
        found = [e for e in kube.items("events") if e["involvedObject"].get("name") == name]
        return found or None

    assert wait_until(events, timeout=30, what="Events about the long-named Execution")


@pytest.mark.parametrize("resources", [{"cpu": "-1"}, {"memory": "-256Mi"}, {"cpu": "0"}])
def test_negative_or_zero_resources_are_a_validation_error(kube: Kube, resources: dict[str, str]) -> None:
    name = f"res-{uuid.uuid4().hex[:6]}"
    kube.create(execution(name, "result = 1", resources=resources))
    phase, error_type, message = _error(kube.wait_terminal(name, timeout=60))
    assert (phase, error_type) == ("Failed", "validation_error")
    assert "more than zero" in message
    assert not kube.items("pods", "-l", f"sandbox.dev/execution={name}")


def test_code_that_makes_the_termination_log_unwritable_cannot_open_the_circuit(kube: Kube) -> None:
    class_name = f"chmod-{uuid.uuid4().hex[:6]}"
    kube.run("apply", "-f", "-", namespaced=False, input=json.dumps({
        "apiVersion": "sandbox.dev/v1alpha1", "kind": "ExecutionClass", "metadata": {"name": class_name},
        "spec": {"image": SANDBOX_IMAGE, "circuitBreaker": {"failureThreshold": 2, "openSeconds": 60}},
    }))
    code = "import os\nos.chmod('/dev/termination-log', 0o444)\nresult = 7\n"
    names = [f"chmod-{i}" for i in range(4)]
    for name in names:
        kube.create(execution(name, code, executionClassName=class_name, retry={"maxAttempts": 1}))
    for name in names:
        body = kube.wait_terminal(name, timeout=90)
        assert body["status"]["phase"] == "Succeeded", body["status"]
        assert body["status"]["output"] == 7, body["status"]
    innocent = "innocent"
    kube.create(execution(innocent, "result = 'fine'", executionClassName=class_name))
    assert kube.wait_terminal(innocent, timeout=90)["status"]["output"] == "fine"
    breaker = (kube.get("executionclass", class_name) or {}).get("status", {}).get("circuitBreaker") or {}
    assert breaker.get("state", "closed") == "closed", breaker
    assert not breaker.get("failureCount"), breaker
