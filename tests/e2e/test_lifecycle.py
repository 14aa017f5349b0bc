"""The Execution lifecycle end to end, with the real kubectl: examples, bad input, forgery, conditions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.kube import ROOT, Kube, condition, execution

EXAMPLES = ROOT / "manifests" / "examples"


def load_example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return doc


def test_hello_succeeds_and_kubectl_wait_returns(kube: Kube) -> None:
    kube.apply(load_example("hello"))
    kube.wait("execution/hello", "condition=Succeeded", timeout=90)
    body = kube.get("execution", "hello")
    assert body is not None
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["success"] is True
    assert status["output"] == {"greeting": "hello", "answer": 42}
    assert status["stdout"].strip() == "hello from the sandbox"
    assert status.get("stderr", "") == ""
    assert status["exitCode"] == 0
    assert status["exitCodeSource"] == "container"
    assert "error" not in status or status["error"] is None
    assert status["attempt"] == 1
    assert status["observedGeneration"] == body["metadata"]["generation"]
    succeeded, launched = condition(body, "Succeeded"), condition(body, "Launched")
    assert succeeded
    assert succeeded["status"] == "True"
    assert launched
    assert launched["status"] == "True"
    assert status["correlationId"]
    assert status["completionTime"]
    assert status["startTime"]
    # The pod follows the sandbox rules and belongs to the Execution.
    pod = kube.get("pod", status["podName"])
    assert pod is not None
    assert pod["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    assert pod["metadata"]["labels"]["sandbox.dev/attempt"] == "1"
    assert pod["spec"]["automountServiceAccountToken"] is False
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] == container["resources"]["limits"]
    # kubectl get shows the printer columns.
    table = kube.run("get", "ex", "hello").stdout
    assert "PHASE" in table
    assert "Succeeded" in table


def test_reading_input(kube: Kube) -> None:
    kube.apply(load_example("with-input"))
    kube.wait("execution/with-input", "condition=Succeeded")
    status = kube.get("execution", "with-input")["status"]  # type: ignore[index]
    assert status["output"] == {"sum": 31, "max": 9}
    assert "summing 8 numbers" in status["stdout"]


@pytest.mark.parametrize(
    ("example", "error_type", "exit_code", "stdout_part"),
    [
        ("zero-division", "division_error", 1, "about to divide"),
        ("timeout", "timeout", 137, "looping forever"),
        ("memory-hog", "oom", 137, ""),
    ],
)
def test_failing_examples(kube: Kube, example: str, error_type: str, exit_code: int, stdout_part: str) -> None:
    kube.apply(load_example(example))
    kube.wait(f"execution/{example}", "condition=Succeeded=False", timeout=120)
    body = kube.get("execution", example)
    assert body is not None
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["success"] is False
    assert status["error"]["type"] == error_type
    assert status["error"]["retryable"] is False
    assert "\n" not in status["error"]["message"]
    assert status["exitCode"] == exit_code
    assert status["exitCodeSource"] in ("container", "logMarker")
    assert stdout_part in status.get("stdout", "")
    assert status["attempt"] == 1, "user errors are never retried"
    succeeded = condition(body, "Succeeded")
    assert succeeded
    assert succeeded["status"] == "False"
    assert succeeded["reason"] == "".join(p.capitalize() for p in error_type.split("_"))
    if error_type == "division_error":
        assert "ZeroDivisionError" in status["error"]["details"]
        assert status["error"]["meta"]["exceptionType"] == "ZeroDivisionError"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.code"),
        ({"code": "x" * 102401}, "spec.code"),
        ({"code": "print(1)", "timeoutSeconds": 0}, "spec.timeoutSeconds"),
        ({"code": "print(1)", "timeoutSeconds": 301}, "spec.timeoutSeconds"),
        ({"code": "print(1)", "timeoutSecs": 5}, "timeoutSecs"),
    ],
    ids=["no-code", "code-too-long", "timeout-0", "timeout-301", "unknown-field"],
)
def test_schema_refuses_bad_input(kube: Kube, spec: dict[str, Any], field: str) -> None:
    manifest = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution", "metadata": {"name": "bad"},
                "spec": spec}
    proc = kube.apply(manifest, check=False)
    assert proc.returncode != 0
    assert field in proc.stderr, proc.stderr
    assert kube.get("execution", "bad", check=False) is None


@pytest.mark.parametrize(
    ("spec", "message_part"),
    [
        ({"executionClassName": "no-such-class"}, 'ExecutionClass "no-such-class" does not exist'),
        ({"executionClassName": "small", "timeoutSeconds": 20}, "allows at most 10"),
    ],
    ids=["unknown-class", "timeout-over-class-max"],
)
def test_operator_refuses_what_the_schema_cannot(kube: Kube, spec: dict[str, Any], message_part: str) -> None:
    kube.apply(execution("invalid", "print(1)", **spec))
    kube.wait("execution/invalid", "condition=Succeeded=False")
    body = kube.get("execution", "invalid")
    assert body is not None
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["error"]["type"] == "validation_error"
    assert message_part in status["error"]["message"]
    launched = condition(body, "Launched")
    assert launched
    assert launched["status"] == "False"
    assert launched["reason"] == "Invalid"
    assert not kube.items("pods"), "an invalid Execution launches nothing"


def test_input_over_one_mebibyte(kube: Kube, tmp_path: Path) -> None:
    manifest = execution("big-input", "print(len(input_data))", input="x" * (2 * 1024 * 1024))
    path = tmp_path / "big.json"
    path.write_text(json.dumps(manifest))
    proc = kube.run("create", "-f", str(path), check=False)
    if proc.returncode != 0:
        # A real API server refuses objects this large before the operator sees them: etcd's request limit
        # (1.5 MiB, "etcdserver: request is too large") or, over 2 MiB, its gRPC client's message limit.
        assert "request is too large" in proc.stderr or "trying to send message larger than max" in proc.stderr, \
            proc.stderr
        return
    body = kube.wait_terminal("big-input")
    assert body["status"]["error"]["type"] == "validation_error"
    assert "1 MiB" in body["status"]["error"]["message"]


def test_spec_is_immutable_except_cancel(kube: Kube) -> None:
    kube.apply(execution("frozen", "import time; time.sleep(30)", timeoutSeconds=60))
    proc = kube.run("patch", "execution", "frozen", "--type", "merge", "-p", '{"spec":{"code":"print(2)"}}',
                    check=False)
    assert proc.returncode != 0
    assert "immutable" in proc.stderr.lower(), proc.stderr
    kube.run("patch", "execution", "frozen", "--type", "merge", "-p", '{"spec":{"cancel":true}}')
    kube.wait("execution/frozen", "condition=Succeeded=False")
    body = kube.get("execution", "frozen")
    assert body is not None
    assert body["status"]["phase"] == "Cancelled"
    assert body["status"]["error"]["type"] == "cancelled"


FORGERIES = {
    "fake-report-line": (
        'print("SANDBOX-REPORT 00000000000000000000000000000000 '
        '{\\"success\\": true, \\"exitCode\\": 0, \\"output\\": 1}")\n'
        "raise ValueError('real failure')"
    ),
    "termination-log": (
        "import json\n"
        "open('/dev/termination-log','w').write(json.dumps({'v':1,'success':True,'exitCode':0}))\n"
        "raise ValueError('real failure')"
    ),
    "fake-traceback": (
        "import sys\n"
        "print('Traceback (most recent call last):\\nZeroDivisionError: division by zero', file=sys.stderr)\n"
        "raise ValueError('real failure')"
    ),
}


@pytest.mark.parametrize("trick", sorted(FORGERIES))
def test_user_code_cannot_forge_the_outcome(kube: Kube, trick: str) -> None:
    kube.apply(execution(f"forge-{trick}", FORGERIES[trick]))
    body = kube.wait_terminal(f"forge-{trick}")
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["error"]["type"] == "value_error"
    assert status["error"]["message"].endswith("real failure")
    assert status["exitCode"] == 1
