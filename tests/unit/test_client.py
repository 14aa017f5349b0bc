"""The client's result and exception mapping for every error type, its credentials and its command line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from execution_operator.client import (
    FAMILIES,
    ClientError,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionResult,
    ExecutionUnavailable,
    InfrastructureError,
    InvalidExecution,
    ResourceLimitExceeded,
    UserCodeError,
    WaitTimeout,
    family_for,
)
from execution_operator.client.aio import execution_body
from execution_operator.client.apicalls import ApiCalls
from execution_operator.client.cli import build_parser
from execution_operator.client.credentials import Credentials, load_credentials
from execution_operator.client.exceptions import exit_status_for
from execution_operator.errors import ErrorType, flags
from execution_operator.k8s import ApiError, Endpoint

ROOT = Path(__file__).resolve().parents[2]


def documented_types() -> set[str]:
    """The `type` column of the tables under docs/errors.md's "Types" (a backticked first cell)."""
    text = (ROOT / "docs" / "errors.md").read_text()
    text = text[text.index("\n## Types"):text.index("\n## ", text.index("\n## Types") + 1)]
    return set(re.findall(r"^\| `([a-z_]+)`(?: ⚡)? \|", text, flags=re.MULTILINE))


def failed(error_type: str, *, exit_code: int | None = 1, stderr: str = "", phase: str = "Failed",
           retryable: bool | None = None) -> dict[str, Any]:
    known = error_type in set(ErrorType)
    return {
        "metadata": {"name": "job", "namespace": "team"},
        "spec": {"code": "x", "correlationId": "c-1"},
        "status": {
            "phase": phase, "success": False, "exitCode": exit_code, "exitCodeSource": "container", "stderr": stderr,
            "attempt": 2, "executionTimeSeconds": 0.5, "deadLetterName": "job-dl-1",
            "error": {"type": error_type, "message": "it broke", "details": "Traceback ...",
                      "retryable": flags(error_type).retryable if retryable is None and known else bool(retryable),
                      "meta": {"exitCode": exit_code, "podName": "job-a2"}},
        },
    }


def test_every_error_type_has_a_family_and_the_docs_list_them_all() -> None:
    assert documented_types() == {str(t) for t in ErrorType}
    missing = sorted(str(t) for t in ErrorType if str(t) not in FAMILIES)
    assert not missing, f"error types without an exception family: {missing}"


@pytest.mark.parametrize("error_type", [str(t) for t in ErrorType])
def test_result_and_exception_from_every_error_type(error_type: str) -> None:
    body = failed(error_type, stderr="line 1\nline 2\nline 3\nline 4\nline 5\nline 6\n")
    result = ExecutionResult.from_body(body)
    assert (result.name, result.namespace, result.phase, result.success) == ("job", "team", "Failed", False)
    assert result.error is not None
    assert result.error.type == error_type
    assert result.error.retryable is flags(error_type).retryable
    assert (result.attempts, result.execution_time, result.dead_letter_name) == (2, 0.5, "job-dl-1")
    assert result.correlation_id == "c-1"
    assert result.error.meta["podName"] == "job-a2"
    with pytest.raises(ExecutionFailed) as raised:
        result.raise_for_failure()
    exc = raised.value
    assert type(exc) is FAMILIES[error_type]
    assert type(exc) is not ExecutionFailed
    assert exc.result is result
    assert exc.error_type == error_type
    assert exc.retryable is flags(error_type).retryable
    message = str(exc)
    assert f"{error_type}: it broke" in message
    assert "team/job" in message
    assert "line 6" in message
    assert "line 2" in message
    assert "line 1" not in message


@pytest.mark.parametrize(("error_type", "family"), [
    ("division_error", UserCodeError), ("runtime_error", UserCodeError), ("segfault", UserCodeError),
    ("output_error", UserCodeError), ("network_error", UserCodeError),
    ("oom", ResourceLimitExceeded), ("timeout", ResourceLimitExceeded), ("output_too_large", ResourceLimitExceeded),
    ("image_pull_error", InfrastructureError), ("unschedulable", InfrastructureError),
    ("evicted", InfrastructureError), ("node_lost", InfrastructureError), ("internal_error", InfrastructureError),
    ("killed", InfrastructureError), ("quota_exceeded", InfrastructureError),
    ("service_unavailable", ExecutionUnavailable), ("validation_error", InvalidExecution),
    ("cancelled", ExecutionCancelled),
])
def test_the_families_of_the_documented_examples(error_type: str, family: type[ExecutionFailed]) -> None:
    assert family_for(error_type) is family


def test_an_unknown_type_is_the_base_class_and_success_does_not_raise() -> None:
    exc = ExecutionResult.from_body(failed("quantum_decoherence", retryable=True)).raise_for_failure
    with pytest.raises(ExecutionFailed) as raised:
        exc()
    assert type(raised.value) is ExecutionFailed
    assert raised.value.retryable is True
    ok = ExecutionResult.from_body({"metadata": {"name": "a", "namespace": "n"},
                                    "status": {"phase": "Succeeded", "success": True, "output": {"x": 1}}})
    assert ok.raise_for_failure() is ok
    assert ok.output == {"x": 1}
    assert ok.finished
    cancelled = ExecutionResult.from_body({"metadata": {"name": "a"}, "status": {"phase": "Cancelled"}})
    with pytest.raises(ExecutionCancelled):
        cancelled.raise_for_failure()
    running = ExecutionResult.from_body({"metadata": {"name": "a"}, "status": {"phase": "Running"}})
    assert not running.finished
    assert not running.success


@pytest.mark.parametrize(("error_type", "exit_code", "expected"), [
    ("division_error", 1, 1), ("runtime_error", 3, 3), ("segfault", 139, 139),
    ("output_error", 0, 65),  # the code ended 0; its result broke the output contract
    ("timeout", 137, 66), ("oom", 137, 66), ("output_too_large", 0, 66),
    ("image_pull_error", None, 69), ("internal_error", 1, 69), ("service_unavailable", None, 75),
    ("validation_error", None, 64), ("cancelled", 143, 130), ("from_the_future", 1, 70),
])
def test_exit_status_of_run(error_type: str, exit_code: int | None, expected: int) -> None:
    assert exit_status_for(ExecutionResult.from_body(failed(error_type, exit_code=exit_code,
                                                            retryable=False))) == expected
    assert exit_status_for(ExecutionResult.from_body({"status": {"phase": "Succeeded", "success": True}})) == 0


def test_wait_timeout_says_name_phase_and_whether_it_was_cancelled() -> None:
    left = WaitTimeout("job", "team", "Running", waited=5, cancelled=False)
    assert "team/job" in str(left)
    assert "phase Running" in str(left)
    assert "left running" in str(left)
    assert "it was cancelled" in str(WaitTimeout("job", "team", None, waited=5, cancelled=True))
    assert isinstance(left, TimeoutError)
    assert left.exit_status == 124


def test_execution_body_keeps_unset_fields_out() -> None:
    body = execution_body("result = 1", None, name="run-1")
    assert body["spec"] == {"code": "result = 1", "executionClassName": "default"}
    assert "labels" not in body["metadata"]
    body = execution_body("x", {"a": 1}, name="run-2", execution_class="small", timeout_seconds=5,
                          resources={"memory": "64Mi"}, retry={"maxAttempts": 1}, correlation_id="c",
                          labels={"team": "a"})
    assert body["spec"] == {"code": "x", "executionClassName": "small", "input": {"a": 1}, "timeoutSeconds": 5,
                            "resources": {"memory": "64Mi"}, "retry": {"maxAttempts": 1}, "correlationId": "c"}
    assert body["metadata"] == {"name": "run-2", "labels": {"team": "a"}}


# ---------------------------------------------------------------------------------------------- API errors
def api() -> ApiCalls:
    return ApiCalls(Credentials(Endpoint("https://k8s.example:6443"), "team", "kubeconfig /k (context prod)"), "t")


def status(code: int, message: str, **details: Any) -> ApiError:
    return ApiError(code, {"kind": "Status", "code": code, "message": message, "details": details})


@pytest.mark.parametrize(("error", "name", "reason", "says"), [
    (status(401, "Unauthorized"), None, "Unauthorized", "log in again"),
    (status(403, 'executions.sandbox.dev is forbidden: User "bob" cannot create resource'), None, "Forbidden",
     "kubectl auth can-i create executions.sandbox.dev -n team"),
    (status(404, 'namespaces "team" not found', name="team", kind="namespaces"), None, "NamespaceNotFound",
     "kubectl create namespace team"),
    (ApiError(404, None, text="404 page not found"), None, "NotInstalled", "kubectl apply -f crds/"),
    (status(404, "the server could not find the requested resource"), "job", "NotInstalled", "helm install"),
    (status(404, 'executions.sandbox.dev "job" not found', name="job", group="sandbox.dev", kind="executions"),
     "job", "NotFound", "team/job not found"),
    (status(422, "Execution is invalid", causes=[{"field": "spec.timeoutSeconds",
                                                  "message": "Invalid value: 900: must be <= 300"}]),
     None, "Invalid", "spec.timeoutSeconds: Invalid value: 900"),
    (status(500, "etcdserver: request timed out"), None, "ServerError", "etcdserver"),
])
def test_api_errors_become_actionable_client_errors(error: ApiError, name: str | None, reason: str,
                                                     says: str) -> None:
    translated = api().translate(error, "create executions.sandbox.dev", "team", name)
    assert isinstance(translated, ClientError)
    assert translated.reason == reason
    assert says in str(translated)
    assert translated.http_status == error.status
    assert translated.exit_status == 78
    assert "{" not in str(translated)  # no raw Status body


# ---------------------------------------------------------------------------------------------- credentials
def kubeconfig(tmp_path: Path, user: dict[str, Any], namespace: str | None = "team-a") -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "main",
        "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443", "insecure-skip-tls-verify": True,
                                                "tls-server-name": "api.internal"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": context}, {"name": "other", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def test_token_kubeconfig_namespace_and_tls_options(tmp_path: Path) -> None:
    creds = load_credentials(kubeconfig(tmp_path, {"token": "s3cret"}))
    assert creds.endpoint.server == "https://k8s.example:6443"
    assert creds.namespace == "team-a"
    assert creds.endpoint.auth_headers is not None
    assert creds.endpoint.auth_headers() == {
        "authorization": "Bearer s3cret"}
    assert creds.endpoint.server_hostname == "api.internal"
    assert "context main" in creds.source
    assert load_credentials(tmp_path / "config", context="other").namespace == "default"


def test_basic_auth_and_client_certificates(tmp_path: Path) -> None:
    creds = load_credentials(kubeconfig(tmp_path, {"username": "ada", "password": "pw"}))
    assert creds.endpoint.auth_headers is not None
    assert creds.endpoint.auth_headers() == {"authorization": "Basic YWRhOnB3"}
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a client certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ada",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    data = {name: base64.b64encode((tmp_path / f"{name}.pem").read_bytes()).decode() for name in ("cert", "key")}
    creds = load_credentials(kubeconfig(tmp_path, {"client-certificate-data": data["cert"],
                                                   "client-key-data": data["key"]}))
    assert isinstance(creds.endpoint.ssl, ssl.SSLContext)  # the pair loaded into the TLS context
    assert creds.endpoint.auth_headers is not None
    assert creds.endpoint.auth_headers() == {}


def test_exec_credential_plugin_is_run_like_kubectl_does(tmp_path: Path) -> None:
    plugin = tmp_path / "get-token"
    plugin.write_text("#!/bin/sh\necho '" + json.dumps({
        "apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
        "status": {"token": "from-the-plugin"}}) + "'\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                     "interactiveMode": "Never"}}
    creds = load_credentials(kubeconfig(tmp_path, user))
    assert creds.endpoint.auth_headers is not None
    assert creds.endpoint.auth_headers()["authorization"] == "Bearer from-the-plugin"


def test_several_files_in_kubeconfig_are_merged_as_kubectl_does(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    full = yaml.safe_load(kubeconfig(tmp_path, {"token": "merged"}).read_text())
    users = tmp_path / "users"
    users.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "users": full.pop("users")}))
    rest = tmp_path / "rest"
    rest.write_text(yaml.safe_dump(full))
    monkeypatch.setenv("KUBECONFIG", f"{rest}{os.pathsep}{users}")
    creds = load_credentials()
    assert creds.namespace == "team-a"
    assert creds.endpoint.auth_headers is not None
    assert creds.endpoint.auth_headers() == {"authorization": "Bearer merged"}


def test_in_a_pod_without_a_kubeconfig_the_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the cluster's CA certificate")
    from kubernetes.config import incluster_config

    from execution_operator.client import credentials

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.crt")],
                   check=True, capture_output=True)
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("tenant-7\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = load_credentials()
    assert creds.endpoint.server == "https://10.96.0.1:443"
    assert creds.namespace == "tenant-7"
    assert creds.source == "in-cluster service account"
    assert isinstance(creds.endpoint.ssl, ssl.SSLContext)
    assert creds.endpoint.auth_headers is not None
    assert creds.endpoint.auth_headers()["authorization"].lower() == "bearer sa-token"  # the scheme's case varies


def test_missing_kubeconfig_outside_a_pod_is_a_client_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(ClientError) as raised:
        load_credentials()
    assert raised.value.reason == "Credentials"
    assert "KUBECONFIG" in str(raised.value)
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\ncontexts: []\nclusters: []\nusers: []\n")
    with pytest.raises(ClientError) as raised:
        load_credentials(broken)
    assert raised.value.reason == "Credentials"


# ---------------------------------------------------------------------------------------------- imports and CLI
def test_the_client_imports_neither_kopf_nor_the_local_cluster() -> None:
    code = ("import sys, execution_operator.client, execution_operator.client.cli\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('kopf', 'localcluster')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    assert out.stdout.strip() == "[]"


def test_run_flags() -> None:
    args = build_parser().parse_args(["job.py", "--input", '{"a": 1}', "--class", "small", "--timeout", "5",
                                      "-n", "team", "--correlation-id", "c", "--no-wait", "-o", "json"])
    assert (args.file, args.input, args.execution_class, args.timeout, args.namespace) == (
        "job.py", '{"a": 1}', "small", 5, "team")
    assert args.correlation_id == "c"
    assert args.no_wait
    assert args.output == "json"
    assert build_parser().parse_args([]).file == "-"


def test_run_is_a_subcommand_and_the_operator_flags_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    from execution_operator.__main__ import main, parse_args

    with pytest.raises(SystemExit) as raised:
        main(["run", "--help"])
    assert raised.value.code == 0
    assert "execution-operator run" in capsys.readouterr().out
    assert parse_args(["--all-namespaces", "--metrics-port", "0"]).metrics_port == 0  # as the chart passes them


def test_the_sync_client_refuses_calls_from_its_own_io_thread() -> None:
    from execution_operator.client.sync import _Loop

    loop = _Loop()

    async def callback_calling_back() -> None:
        loop.run(asyncio.sleep(0))  # what a sync call inside on_output would do: deadlock, so refused

    try:
        with pytest.raises(RuntimeError, match="on_output"):
            loop.run(callback_calling_back())
        assert loop.run(asyncio.sleep(0, "still serving")) == "still serving"
    finally:
        loop.stop()


def test_the_runners_own_log_lines_are_not_the_codes_output() -> None:
    from execution_operator.client.follower import RUNNER_LINE_PREFIXES
    from execution_operator.runner.report import MARKER
    from execution_operator.runner.warm import PAYLOAD_MARKER

    lines = [f"{PAYLOAD_MARKER} 143", "hello", f"{MARKER} abc 1/1 {{}}", f"{MARKER}ish is the code's"]
    kept = [line for line in lines if not line.startswith(RUNNER_LINE_PREFIXES)]
    assert kept == ["hello", f"{MARKER}ish is the code's"]
