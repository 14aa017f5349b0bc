"""The rendered chart applied to the local cluster with the real kubectl, the operator started with the
rendered Deployment's own arguments, Executions run through it, and a real Prometheus scraping it.

The local cluster has no container runtime for the operator image, so the operator runs as a local process
with exactly the container arguments the chart renders (ports moved to free ones, bound to loopback), as
`make up` runs it (localcluster.chart_operator).
The sandbox images of the chart's ExecutionClasses are run by the local node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promlive import Prometheus, free_port, has_finite_value, substitute
from toolkit import CHART, NAMESPACE, ROOT, TOOLS_BIN, HelmRun, find_tool, operator_role, template_args

from execution_operator import dashboard
from execution_operator.sandbox import NETWORK_POLICY_NAME
from localcluster.chart_operator import OPERATOR_MODULE, operator_command

pytestmark = pytest.mark.tools

USER_NS = "team-a"
#: Panels the operator feeds from ordinary successful and failed Executions.
CORE_PANELS = {
    "Executions per second by outcome",
    "Failures per second by error type",
    "Success ratio",
    "Execution duration",
    "Launch latency",
    "In flight by phase",
    "Circuit breaker state per class",
}


def wait_until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _kubectl_binary() -> str:
    local = TOOLS_BIN / "kubectl"
    if local.exists():
        return str(local)
    found = find_tool("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (run hack/get-tools.sh)")
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    testing = pytest.importorskip("localcluster.testing")
    if find_tool("bwrap") is None:
        pytest.skip("bubblewrap not installed (hack/install-ci-deps.sh)")
    with testing.run_cluster_in_thread(tmp_path / "cluster") as c:
        yield c


def test_chart_installs_and_runs_executions(cluster: Any, run_helm: HelmRun, tmp_path: Path) -> None:
    kubectl = _kubectl_binary()
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig_path))

    def k(*args: str, input: str | None = None) -> str:
        proc = subprocess.run(
            [kubectl, *args], input=input, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    # 1. What `helm install` does: CRDs first, then the templates (rendered by the real helm).
    k("apply", "--server-side", "-f", str(CHART / "crds"))
    for crd in ("executions", "executionclasses", "deadletters"):
        k("wait", f"crd/{crd}.sandbox.dev", "--for=condition=Established", "--timeout=30s")
    k("create", "namespace", NAMESPACE)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(run_helm(*template_args()).stdout)
    k("apply", "--server-side", "-f", str(rendered))

    classes = {i["metadata"]["name"]: i for i in json.loads(k("get", "executionclasses", "-o", "json"))["items"]}
    assert {"default", "data-processing"} <= set(classes)
    dep = json.loads(k("get", "deployment", "-n", NAMESPACE, "-o", "json"))["items"][0]
    assert k("get", "networkpolicy", NETWORK_POLICY_NAME, "-n", NAMESPACE, "-o", "name").strip()
    assert k("get", "configmap", "-n", NAMESPACE, "-l", "grafana_dashboard=1", "-o", "name").strip()

    # 2. The operator, started with the Deployment's arguments (what `make up` does).
    metrics_port, liveness_port = free_port(), free_port()
    args, op_env = operator_command(dep, metrics_port=metrics_port, liveness_port=liveness_port)
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        op = subprocess.Popen(
            [sys.executable, "-m", OPERATOR_MODULE, *args],
            env=dict(env, **op_env, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        try:
            _run_executions(k, op, metrics_port, liveness_port, log_path)
        finally:
            op.terminate()
            try:
                op.wait(timeout=20)
            except subprocess.TimeoutExpired:
                op.kill()
                op.wait(timeout=10)
    _assert_rbac_covers_the_operator(cluster.apiserver.request_log, rendered.read_text())


#: The operator's own client and kopf's.
OPERATOR_USER_AGENTS = ("execution-operator", "kopf/")


def _assert_rbac_covers_the_operator(records: list[Any], rendered: str) -> None:
    """Every API request the operator (its client and kopf) made is one the chart's ClusterRole allows."""
    role = operator_role([d for d in yaml.safe_load_all(rendered) if d])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    used: set[tuple[str, str, str]] = set()
    for rec in records:
        if not rec.user_agent.startswith(OPERATOR_USER_AGENTS) or not rec.resource:
            continue  # kubectl (this test) and the local node; discovery (no resource) is allowed to anyone
        parts = rec.path.split("?")[0].strip("/").split("/")
        group = parts[1] if parts[0] == "apis" else ""
        resource = f"{rec.resource}/{rec.subresource}" if rec.subresource else rec.resource
        used.add((group, resource, rec.verb))
    assert {("sandbox.dev", "executions/status", "patch"), ("", "pods", "create"), ("", "pods", "watch")} <= used
    assert used - granted == set(), "requests the chart's ClusterRole would deny"


def _batch(k: Callable[..., str], suffix: str) -> None:
    """One succeeding Execution per class and one failing one; wait until all are terminal."""
    executions: list[dict[str, Any]] = [
        {"name": "hello", "code": 'result = {"sum": sum(input_data["numbers"])}', "input": {"numbers": [1, 2, 3]}},
        {"name": "broken", "code": "raise ValueError('no')"},
        {"name": "data", "code": "result = 41 + 1", "executionClassName": "data-processing"},
    ]
    docs = [
        {
            "apiVersion": "sandbox.dev/v1alpha1",
            "kind": "Execution",
            "metadata": {"name": f"{ex['name']}-{suffix}", "namespace": USER_NS},
            "spec": {key: v for key, v in ex.items() if key != "name"},
        }
        for ex in executions
    ]
    k("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    k("wait", "-n", USER_NS, "--for=condition=Succeeded", "--timeout=120s", f"execution/hello-{suffix}",
      f"execution/data-{suffix}")  # fmt: skip
    k("wait", "-n", USER_NS, "--for=condition=Succeeded=False", "--timeout=120s", f"execution/broken-{suffix}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _run_executions(
    k: Callable[..., str], op: subprocess.Popen[bytes], metrics_port: int, liveness_port: int, log_path: Path
) -> None:
    def alive() -> bool:
        if op.poll() is not None:
            raise AssertionError(f"operator exited {op.returncode}:\n{log_path.read_text()[-3000:]}")
        return _http_ok(f"http://127.0.0.1:{liveness_port}/healthz")

    wait_until(alive, 60, "the operator's liveness endpoint")
    # JSON log lines from the start.
    first = next(line for line in log_path.read_text().splitlines() if line.startswith("{"))
    assert {"event", "level", "timestamp"} <= set(json.loads(first))

    prometheus = find_tool("prometheus")
    prom_ctx = Prometheus([f"127.0.0.1:{metrics_port}"], binary=prometheus) if prometheus else None
    if prom_ctx is not None:
        prom_ctx.__enter__()
    try:
        k("create", "namespace", USER_NS)
        _batch(k, "1")
        hello = json.loads(k("get", "execution", "hello-1", "-n", USER_NS, "-o", "json"))
        assert hello["status"]["output"] == {"sum": 6}
        broken = json.loads(k("get", "execution", "broken-1", "-n", USER_NS, "-o", "json"))
        assert broken["status"]["error"]["type"] == "value_error"
        if prom_ctx is not None:
            # A second batch after Prometheus has seen the first, so rates and quantiles have something to show.
            wait_until(lambda: prom_ctx.query("sandbox_executions_total"), 30, "a scrape of the first batch")
            _batch(k, "2")

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        runs = 2 if prom_ctx is not None else 1
        samples = [s for s in families["sandbox_executions"].samples if s.name == "sandbox_executions_total"]
        succeeded = sum(
            s.value for s in samples if s.labels["namespace"] == USER_NS and s.labels["outcome"] == "succeeded"
        )
        failed = sum(s.value for s in samples if s.labels["error_type"] == "value_error")
        assert (succeeded, failed) == (2 * runs, runs)
        latency = [s for s in families["sandbox_launch_latency_seconds"].samples if s.name.endswith("_count")]
        assert sum(s.value for s in latency) == 3 * runs

        # Log lines about an Execution carry its identity.
        lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
        about = [x for x in lines if x.get("execution") == "hello-1"]
        assert about
        assert all(x.get("namespace") == USER_NS for x in about)
        assert any("correlation_id" in x and "attempt" in x for x in about)

        if prom_ctx is not None:
            prom = prom_ctx
            queries = {(t, substitute(q, "1m")) for t, q in dashboard.queries() if t in CORE_PANELS}

            def all_have_data() -> bool:
                return all(has_finite_value(prom.query(q)) for _, q in queries)

            wait_until(all_have_data, 60, f"data for panels {sorted(CORE_PANELS)}", interval=1.0)
    finally:
        if prom_ctx is not None:
            prom_ctx.__exit__(None, None, None)
