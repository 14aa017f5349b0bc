"""The Python client and `execution-operator run` end to end, on the local cluster or E2E_KUBECONFIG's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from execution_operator.client import (
    Client,
    ExecutionCancelled,
    ExecutionUnavailable,
    InfrastructureError,
    InvalidExecution,
    ResourceLimitExceeded,
    UserCodeError,
    WaitTimeout,
)
from tests.e2e.conftest import SANDBOX_IMAGE
from tests.e2e.kube import ROOT, Kube, wait_until
from tests.e2e.procs import ClusterHandle
from tests.e2e.test_breaker import make_class  # noqa: F401 - a fixture

TERMINAL = ("Succeeded", "Failed", "Cancelled")


@pytest.fixture
def client(kube: Kube, cluster: ClusterHandle) -> Iterator[Client]:
    with Client(kube.namespace, kubeconfig=cluster.kubeconfig) as c:
        yield c


def phase(kube: Kube, name: str) -> str | None:
    body = kube.get("execution", name, check=False) or {}
    return (body.get("status") or {}).get("phase")


def test_success_with_input_and_output(client: Client) -> None:
    result = client.run("print('summing')\nresult = {'sum': sum(input_data['numbers'])}\n",
                        {"numbers": [1, 2, 3]}, correlation_id="order-17")
    assert result.success
    assert result.phase == "Succeeded"
    assert result.output == {"sum": 6}
    assert result.stdout == "summing\n"
    assert result.exit_code == 0
    assert result.exit_code_source == "container"
    assert result.error is None
    assert result.attempts == 1
    assert result.correlation_id == "order-17"
    assert result.execution_time is not None
    assert result.name.startswith("run-")
    assert client.get(result.name).output == {"sum": 6}


def test_user_code_error_carries_the_result_and_the_stderr_tail(client: Client) -> None:
    with pytest.raises(UserCodeError) as raised:
        client.run("def ratio(a, b):\n    return a / b\nratio(1, 0)\n")
    exc = raised.value
    assert exc.error_type == "division_error"
    assert exc.exit_code == 1
    assert exc.retryable is False
    assert exc.result.error is not None
    assert exc.result.error.meta["exceptionType"] == "ZeroDivisionError"
    assert "ZeroDivisionError: division by zero" in str(exc)
    assert "return a / b" in str(exc)
    assert exc.result.dead_letter_name


def test_resource_limit(client: Client) -> None:
    with pytest.raises(ResourceLimitExceeded) as raised:
        client.run("while True:\n    pass\n", timeout_seconds=1)
    assert raised.value.error_type == "timeout"
    assert raised.value.exit_code == 137


def test_invalid_request(client: Client) -> None:
    with pytest.raises(InvalidExecution) as raised:
        client.run("result = 1", execution_class="small", timeout_seconds=20)  # over small's maxTimeoutSeconds 10
    assert raised.value.error_type == "validation_error"
    assert 'ExecutionClass "small"' in str(raised.value)


def test_cancelled(client: Client, kube: Kube) -> None:
    handle = client.submit("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    handle.cancel()
    with pytest.raises(ExecutionCancelled) as raised:
        handle.wait()
    assert raised.value.result.phase == "Cancelled"
    assert phase(kube, handle.name) == "Cancelled"


def test_infrastructure_error(client: Client, make_class: Callable[..., str]) -> None:  # noqa: F811
    broken = make_class()
    with pytest.raises(InfrastructureError) as raised:
        client.run("result = 1", execution_class=broken, retry={"maxAttempts": 1})
    assert raised.value.error_type in ("image_pull_error", "internal_error")
    assert raised.value.retryable is True


def test_unavailable_while_the_circuit_is_open(client: Client, kube: Kube,
                                               make_class: Callable[..., str]) -> None:  # noqa: F811
    cls = make_class(image=SANDBOX_IMAGE, failure_threshold=2, open_seconds=300)
    kube.run("annotate", "exc", cls, "sandbox.dev/circuit-breaker=force-open", namespaced=False)
    kube.run("wait", f"exc/{cls}", "--for=condition=Available=False", "--timeout=60s", namespaced=False, timeout=90)
    with pytest.raises(ExecutionUnavailable) as raised:
        client.run("result = 1", execution_class=cls, retry={"maxAttempts": 1})
    assert raised.value.error_type == "service_unavailable"
    assert raised.value.retryable is True


def test_raise_on_failure_false_returns_the_failed_result(client: Client) -> None:
    result = client.run("import sys\nprint('giving up')\nsys.exit(3)\n", raise_on_failure=False)
    assert not result.success
    assert result.phase == "Failed"
    assert result.exit_code == 3
    assert result.error is not None
    assert result.error.type == "runtime_error"
    assert result.stdout == "giving up\n"


def test_wait_timeout_cancels_by_default(client: Client, kube: Kube) -> None:
    with pytest.raises(WaitTimeout) as raised:
        client.run("import time\ntime.sleep(120)\n", wait_timeout=2)
    exc = raised.value
    assert exc.cancelled
    assert exc.name in str(exc)
    assert "it was cancelled" in str(exc)
    assert exc.result is not None
    assert exc.result.phase == "Cancelled"
    assert phase(kube, exc.name) == "Cancelled"


def test_wait_timeout_without_cancel_leaves_it_running(client: Client, kube: Kube) -> None:
    handle = client.submit("import time\ntime.sleep(120)\n")
    with pytest.raises(WaitTimeout) as raised:
        handle.wait(wait_timeout=2, cancel_on_timeout=False)
    assert not raised.value.cancelled
    assert "left running" in str(raised.value)
    body = kube.get("execution", handle.name)
    assert body is not None
    assert not body["spec"].get("cancel")
    assert phase(kube, handle.name) not in TERMINAL
    handle.cancel()
    with pytest.raises(ExecutionCancelled):
        handle.wait()


def test_run_many_of_50(client: Client) -> None:
    results = list(client.run_many([("result = input_data * 2", i) for i in range(50)]))
    assert len(results) == 50
    assert len({r.name for r in results}) == 50
    assert all(r.success for r in results), [r.error for r in results if not r.success]
    assert sorted(r.output for r in results) == [2 * i for i in range(50)]


def test_on_output_is_live_and_has_no_report_lines(client: Client, kube: Kube) -> None:
    code = ("import sys, time\nprint('first', flush=True)\nprint('to stderr', file=sys.stderr, flush=True)\n"
            "time.sleep(4)\nprint('last')\nresult = 'done'\n")
    handle = client.submit(code)
    lines: list[str] = []
    phase_at_first: list[str | None] = []

    def on_output(line: str) -> None:
        if not lines:
            phase_at_first.append(phase(kube, handle.name))
        lines.append(line)

    result = handle.wait(on_output=on_output)
    assert result.output == "done"
    assert lines == ["first", "to stderr", "last"]
    assert phase_at_first
    assert phase_at_first[0] not in TERMINAL  # the first line came while it ran
    logs = handle.logs()  # the pod is gone by now: the recorded streams
    assert "first\n" in logs
    assert "to stderr\n" in logs
    assert "SANDBOX-REPORT" not in logs


def test_a_watch_dropped_mid_wait_and_a_410_still_return_the_result(cluster: ClusterHandle, kube: Kube,
                                                                     unique: str) -> None:
    if not cluster.local:
        pytest.skip("fault injection is a feature of the local API server")
    with open(cluster.kubeconfig) as config:
        server = yaml.safe_load(config)["clusters"][0]["cluster"]["server"]
    agent = f"e2e-watch-drop-{unique}"
    rules = [{"verb": "watch", "resource": "executions", "userAgent": agent, "dropAfter": 1.0, "times": 1},
             {"verb": "watch", "resource": "executions", "userAgent": agent, "status": 410, "times": 1}]
    request = urllib.request.Request(f"{server}/debug/faults", data=json.dumps(rules).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    with Client(kube.namespace, kubeconfig=cluster.kubeconfig, user_agent=agent) as client:
        result = client.run("import time\ntime.sleep(3)\nresult = 'survived'\n")
    assert result.output == "survived"
    with urllib.request.urlopen(f"{server}/debug/requests", timeout=10) as answer:
        mine = [(r["verb"], r["code"]) for r in json.load(answer)["items"] if r["user_agent"] == agent]
    watches = [code for verb, code in mine if verb == "watch"]
    assert watches[:3] == [200, 410, 200], mine  # dropped, refused as too old, then resumed
    after_410 = mine[mine.index(("watch", 410)) + 1:]
    assert after_410[0] == ("list", 200), mine  # a 410 is answered by a new list


# ---------------------------------------------------------------------------------------------- the command
def run_command(cluster: ClusterHandle, kube: Kube, code: str, *args: str,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    return subprocess.run([sys.executable, "-m", "execution_operator", "run", "-", "-n", kube.namespace, *args],
                          input=code, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_command_success(cluster: ClusterHandle, kube: Kube) -> None:
    proc = run_command(cluster, kube, "import sys\nprint('working')\nprint('careful', file=sys.stderr)\n"
                                      "result = {'sum': sum(input_data)}\n", "--input", "[1, 2, 3]")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"sum": 6}\n'
    assert proc.stderr.splitlines() == ["working", "careful"]


def test_command_user_exception(cluster: ClusterHandle, kube: Kube) -> None:
    proc = run_command(cluster, kube, "print('about to fail')\nraise KeyError('name')\n")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "about to fail" in proc.stderr
    assert "KeyError: 'name'" in proc.stderr
    assert "failed: key_error" in proc.stderr.splitlines()[-1]


def test_command_sys_exit_3_and_json_output(cluster: ClusterHandle, kube: Kube) -> None:
    proc = run_command(cluster, kube, "import sys\nsys.exit(3)\n", "-o", "json")
    assert proc.returncode == 3
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["exit_code"] == 3
    assert result["error"]["type"] == "runtime_error"
    assert result["success"] is False


def test_command_timeouts(cluster: ClusterHandle, kube: Kube) -> None:
    proc = run_command(cluster, kube, "while True:\n    pass\n", "--timeout", "1")
    assert proc.returncode == 66
    assert proc.stdout == ""
    assert "timeout: The code ran longer than its timeout of 1s" in proc.stderr
    proc = run_command(cluster, kube, "import time\ntime.sleep(120)\n", "--wait-timeout", "2")
    assert proc.returncode == 124
    assert "it was cancelled" in proc.stderr


def test_command_ctrl_c_cancels_and_waits(cluster: ClusterHandle, kube: Kube, tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import time\nprint('running', flush=True)\ntime.sleep(120)\n")
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    proc = subprocess.Popen([sys.executable, "-m", "execution_operator", "run", str(job), "-n", kube.namespace],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        running = wait_until(lambda: [e for e in kube.items("executions")
                                      if (e.get("status") or {}).get("phase") == "Running"],
                             timeout=60, what="the Execution to run")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert phase(kube, running[0]["metadata"]["name"]) == "Cancelled"
    assert "cancelling Execution" in err
    assert out == ""
