"""The real kubectl against the API server emulator (skipped when no kubectl binary is installed).

The cluster runs without the node here: these tests play the kubelet's part themselves (status
patches, log files), so they check the API server's side of each kubectl command deterministically.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_apiserver_support import wait_for

from localcluster.cluster import LocalCluster
from localcluster.testing import run_cluster_in_thread

ROOT = Path(__file__).resolve().parents[2]


def find_kubectl() -> str | None:
    local = ROOT / ".tools" / "bin" / "kubectl"
    if local.exists():
        return str(local)
    return shutil.which("kubectl")


KUBECTL = find_kubectl()
pytestmark = [pytest.mark.tools, pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")]

EXECUTION = """
apiVersion: sandbox.dev/v1alpha1
kind: Execution
metadata:
  name: {name}
spec:
  code: print("hi")
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("kubectl-cluster")
    with run_cluster_in_thread(state, with_node=False) as c:
        yield c


class Kubectl:
    def __init__(self, cluster: LocalCluster, home: Path) -> None:
        self.cluster = cluster
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig_path),
            "HOME": str(home),
            "KUBECACHEDIR": str(home / "cache"),
        }

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        proc = subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        assert KUBECTL is not None
        return subprocess.Popen(
            [KUBECTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    k = Kubectl(cluster, tmp_path_factory.mktemp("kubectl-home"))
    k("apply", "-f", str(ROOT / "crds"))
    return k


def api(
    cluster: LocalCluster, method: str, path: str, body: Any = None, ctype: str = "application/merge-patch+json"
) -> Any:
    """Plain HTTP from the test thread (stands in for the kubelet or the operator)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.url + path, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


EX = "/apis/sandbox.dev/v1alpha1/namespaces/default/executions"


def test_apply_crds_and_custom_resource_then_get_with_printer_columns(kubectl: Kubectl, cluster: LocalCluster) -> None:
    assert "executions.sandbox.dev" in kubectl("get", "crd").stdout
    out = kubectl("apply", "-f", "-", stdin=EXECUTION.format(name="cols")).stdout
    assert "execution.sandbox.dev/cols created" in out
    assert "unchanged" in kubectl("apply", "-f", "-", stdin=EXECUTION.format(name="cols")).stdout
    api(cluster, "PATCH", f"{EX}/cols/status", {"status": {"phase": "Succeeded", "exitCode": 0, "attempt": 1}})
    lines = kubectl("get", "ex", "cols").stdout.splitlines()
    header = lines[0].split()
    assert header[:5] == ["NAME", "PHASE", "CLASS", "ATTEMPT", "EXIT"]
    row = lines[1].split()
    assert row[:5] == ["cols", "Succeeded", "default", "1", "0"]
    assert "POD" in kubectl("get", "executions.sandbox.dev", "-o", "wide").stdout
    assert kubectl("get", "sandbox").stdout.count("cols") == 1  # the category


def test_apply_examples_directory(kubectl: Kubectl) -> None:
    out = kubectl("apply", "-f", str(ROOT / "manifests" / "examples")).stdout
    assert "created" in out or "unchanged" in out or "configured" in out
    assert "hello" in kubectl("get", "ex").stdout


LIST = """apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: listed-a}
  data: {x: "1"}
- apiVersion: sandbox.dev/v1alpha1
  kind: Execution
  metadata: {name: listed-b}
  spec: {code: "result = 1"}
"""


def test_apply_of_a_list_creates_its_items(kubectl: Kubectl) -> None:
    # kubectl reads /openapi/v2 (protobuf) before it applies a List; a 404 there fails the whole apply
    out = kubectl("apply", "-f", "-", stdin=LIST).stdout
    assert out.splitlines() == ["configmap/listed-a created", "execution.sandbox.dev/listed-b created"]
    assert "unchanged" in kubectl("apply", "-f", "-", stdin=LIST).stdout
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-", stdin=LIST).stdout
    assert kubectl("get", "cm", "listed-a", "-o", "jsonpath={.data.x}").stdout == "1"


def test_apply_rejects_invalid_and_unknown_fields(kubectl: Kubectl) -> None:
    bad = EXECUTION.format(name="bad") + "  timeoutSeconds: 301\n"
    proc = kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert proc.returncode != 0
    assert "spec.timeoutSeconds: Invalid value: 301" in proc.stderr
    unknown = EXECUTION.format(name="bad") + "  bogus: 1\n"
    proc = kubectl("apply", "-f", "-", stdin=unknown, check=False)
    assert proc.returncode != 0
    assert 'unknown field "spec.bogus"' in proc.stderr


def read_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """Lines of a child's stdout, read by a thread so a test can wait for them with a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def next_line(lines: queue.Queue[str], proc: subprocess.Popen[str], within: float = 60.0) -> str:
    try:
        return lines.get(timeout=within)
    except queue.Empty:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no output from kubectl within {within}s; stderr:\n{err}") from None


def test_get_watch_streams_changes(kubectl: Kubectl, cluster: LocalCluster) -> None:
    kubectl("apply", "-f", "-", stdin=EXECUTION.format(name="watched"))
    proc = kubectl.popen("get", "ex", "watched", "-w", "--output-watch-events")
    try:
        lines = read_lines(proc)
        header = next_line(lines, proc)
        assert header.split()[:3] == ["EVENT", "NAME", "PHASE"]
        first = next_line(lines, proc)
        assert "ADDED" in first
        assert "watched" in first
        api(cluster, "PATCH", f"{EX}/watched/status", {"status": {"phase": "Running"}})
        line = next_line(lines, proc)
        assert "MODIFIED" in line
        assert "Running" in line
    finally:
        proc.kill()
        proc.wait()


def test_wait_for_condition_true_and_false(kubectl: Kubectl, cluster: LocalCluster) -> None:
    for name, value in (("wait-ok", "True"), ("wait-fail", "False")):
        kubectl("apply", "-f", "-", stdin=EXECUTION.format(name=name))
        waiter = kubectl.popen("wait", f"--for=condition=Succeeded={value}", f"ex/{name}", "--timeout=30s")
        # let kubectl reach its watch before the condition appears
        wait_for(within=20.0, check=
            lambda n=name: any(
                r.verb == "watch" and r.resource == "executions" and n in r.path for r in cluster.apiserver.request_log
            )
        )
        cond = {
            "type": "Succeeded",
            "status": value,
            "reason": "Done",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        api(cluster, "PATCH", f"{EX}/{name}/status", {"status": {"conditions": [cond]}})
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert f"execution.sandbox.dev/{name} condition met" in out


def test_describe_shows_fields_and_events(kubectl: Kubectl, cluster: LocalCluster) -> None:
    kubectl("apply", "-f", "-", stdin=EXECUTION.format(name="described"))
    ex = kubectl.json("get", "ex", "described")
    api(
        cluster,
        "POST",
        "/api/v1/namespaces/default/events",
        {
            "metadata": {"generateName": "described-"},
            "involvedObject": {
                "apiVersion": "sandbox.dev/v1alpha1",
                "kind": "Execution",
                "name": "described",
                "namespace": "default",
                "uid": ex["metadata"]["uid"],
            },
            "reason": "Launched",
            "message": "pod described-1 created",
            "type": "Normal",
            "count": 1,
            "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T00:00:00Z",
            "source": {"component": "execution-operator"},
        },
        ctype="application/json",
    )
    out = kubectl("describe", "ex", "described").stdout
    assert "Name:         described" in out
    assert "Launched" in out
    assert "pod described-1 created" in out


def test_label_annotate_patch_and_delete(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=EXECUTION.format(name="edited"))
    kubectl("label", "ex", "edited", "team=a")
    kubectl("annotate", "ex", "edited", "sandbox.dev/note=x")
    kubectl("patch", "ex", "edited", "--type", "merge", "-p", '{"metadata":{"labels":{"merge":"yes"}}}')
    kubectl(
        "patch",
        "ex",
        "edited",
        "--type",
        "json",
        "-p",
        '[{"op":"add","path":"/metadata/annotations/json","value":"yes"}]',
    )
    ex = kubectl.json("get", "ex", "-l", "team=a,merge=yes")["items"][0]
    assert ex["metadata"]["annotations"]["sandbox.dev/note"] == "x"
    assert ex["metadata"]["annotations"]["json"] == "yes"
    proc = kubectl("patch", "ex", "edited", "-p", '{"metadata":{"labels":{"s":"1"}}}', check=False)
    assert proc.returncode != 0
    assert "strategic-merge-patch" in proc.stderr
    kubectl("delete", "ex", "edited")
    assert kubectl("get", "ex", "edited", check=False).returncode != 0


def test_strategic_patch_and_create_for_core_kinds(kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "kubectl-ns")
    kubectl("-n", "kubectl-ns", "create", "configmap", "c", "--from-literal=a=1")
    kubectl("-n", "kubectl-ns", "patch", "configmap", "c", "-p", '{"data":{"b":"2"}}')
    assert kubectl.json("-n", "kubectl-ns", "get", "cm", "c")["data"] == {"a": "1", "b": "2"}
    deploy = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: kubectl-ns}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers:
      - {name: a, image: "img:1", env: [{name: X, value: "1"}]}
      - {name: b, image: "img:1"}
"""
    proc = kubectl("apply", "-f", "-", stdin=deploy.replace("image:", "imagee:", 1), check=False)
    assert proc.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].imagee"' in proc.stderr
    kubectl("apply", "-f", "-", stdin=deploy)
    kubectl("apply", "-f", "-", stdin=deploy.replace('name: b, image: "img:1"', 'name: b, image: "img:2"'))
    d = kubectl.json("-n", "kubectl-ns", "get", "deploy", "d")
    images = {c["name"]: c["image"] for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"a": "img:1", "b": "img:2"}
    assert d["metadata"]["generation"] == 2
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=EXECUTION.format(name="ssa").replace("metadata:", "metadata:\n  namespace: kubectl-ns"),
    )
    assert kubectl.json("-n", "kubectl-ns", "get", "ex", "ssa")["spec"]["code"] == 'print("hi")'
    kubectl("delete", "namespace", "kubectl-ns")
    assert kubectl("get", "namespace", "kubectl-ns", check=False).returncode != 0


def test_auth_can_i_is_always_yes(kubectl: Kubectl) -> None:
    assert kubectl("auth", "can-i", "create", "executions.sandbox.dev").stdout.strip() == "yes"


def test_explain_uses_crd_schema(kubectl: Kubectl) -> None:
    out = kubectl("explain", "execution.spec").stdout
    assert "KIND:       Execution" in out
    assert "timeoutSeconds" in out
    assert "code" in kubectl("explain", "ex.spec.code").stdout


def test_logs_from_node_log_files(kubectl: Kubectl, cluster: LocalCluster) -> None:
    pod = {"metadata": {"name": "logged"}, "spec": {"containers": [{"name": "main", "image": "busybox:1"}]}}
    created = api(cluster, "POST", "/api/v1/namespaces/default/pods", pod, ctype="application/json")
    api(
        cluster,
        "POST",
        "/api/v1/namespaces/default/pods/logged/binding",
        {"target": {"kind": "Node", "name": "local-node"}},
        ctype="application/json",
    )
    d = cluster.state_dir / "pods" / f"default_logged_{created['metadata']['uid']}"
    d.mkdir(parents=True)
    lines = [("stdout", "out line\n"), ("stderr", "err line\n")]
    (d / "main.log").write_text(
        "".join(json.dumps({"time": "2026-01-01T00:00:00.000000000Z", "stream": s, "log": t}) + "\n" for s, t in lines)
    )
    api(
        cluster,
        "PATCH",
        "/api/v1/namespaces/default/pods/logged/status",
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "main",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    }
                ],
            }
        },
    )
    assert kubectl("logs", "logged").stdout == "out line\nerr line\n"
    assert kubectl("logs", "logged", "--tail=1").stdout == "err line\n"
    assert kubectl("logs", "-f", "logged").stdout == "out line\nerr line\n"
    row = kubectl("get", "pod", "logged").stdout.splitlines()[1].split()
    assert row[:3] == ["logged", "0/1", "Completed"]


HELM = str(ROOT / ".tools" / "bin" / "helm") if (ROOT / ".tools" / "bin" / "helm").exists() else shutil.which("helm")


@pytest.mark.skipif(HELM is None, reason="helm is not installed")
def test_helm_install_upgrade_uninstall_project_chart(kubectl: Kubectl, tmp_path: Path) -> None:
    """Helm 4 applies server-side and keeps releases in Secrets (protobuf bodies, DeleteOptions)."""
    assert HELM is not None
    env = {**kubectl.env, "HELM_CACHE_HOME": str(tmp_path), "HELM_CONFIG_HOME": str(tmp_path),
           "HELM_DATA_HOME": str(tmp_path)}
    chart = str(ROOT / "charts" / "execution-operator")

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        assert HELM is not None
        proc = subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc

    helm("install", "eo", chart, "-n", "helm-test", "--create-namespace")
    assert "eo" in helm("list", "-n", "helm-test").stdout
    assert kubectl("-n", "helm-test", "get", "deployment", "-o", "name").stdout.strip()
    helm("upgrade", "eo", chart, "-n", "helm-test")
    releases = kubectl.json("-n", "helm-test", "get", "secrets", "-l", "owner=helm")["items"]
    assert len(releases) == 2
    helm("uninstall", "eo", "-n", "helm-test")
    assert kubectl("-n", "helm-test", "get", "deployment", "-o", "name").stdout.strip() == ""


def test_client_side_apply_of_a_large_input_is_refused_as_a_real_server_refuses_it(
    kubectl: Kubectl, tmp_path: Path
) -> None:
    """Client-side apply copies the whole object into the last-applied annotation: a ~300 KB input puts the
    annotations over the 256 KiB total a real API server allows. Server-side apply and create keep no copy."""
    manifest = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution",
                "metadata": {"name": "big-input", "namespace": "default"},
                "spec": {"code": "result = len(input_data['blob'])", "input": {"blob": "x" * 300_000}}}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(manifest))
    proc = kubectl("apply", "-f", str(path), check=False)
    assert proc.returncode != 0
    # kubectl words the 422's details; the real server's are kind Execution, the field and this cause
    assert proc.stderr.strip() == ('The Execution "big-input" is invalid: metadata.annotations: Too long: may not '
                                   "be more than 262144 bytes")
    assert kubectl("get", "ex", "big-input", check=False).returncode != 0  # nothing was stored
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(path)).stdout
    stored = kubectl.json("get", "ex", "big-input")
    assert len(stored["spec"]["input"]["blob"]) == 300_000
    assert "kubectl.kubernetes.io/last-applied-configuration" not in (stored["metadata"].get("annotations") or {})
    kubectl("delete", "ex", "big-input")
    assert "created" in kubectl("create", "-f", str(path)).stdout
    kubectl("delete", "ex", "big-input")
