"""The local node against the API server emulator: registration, scheduling, kubelet behaviour."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localcluster.node import LocalNode
from localcluster.node_images import ImageTable
from localcluster.testing import run_cluster_in_thread

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]

IMAGE = "example.test/shell:1"


class Api:
    """A minimal synchronous JSON client for the emulator."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode()

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        status, body = self.call("POST", path, obj)
        assert status == 201, (status, body)
        return body

    def pod(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        status, body = self.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        return body if status == 200 else None

    def log(self, name: str, ns: str = "default") -> str:
        status, body = self.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}/log")
        assert status == 200, body
        return body if isinstance(body, str) else json.dumps(body)

    def wait_pod(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], limit: float = 20, ns: str = "default"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        last = None
        while time.monotonic() < deadline:
            last = self.pod(name, ns)
            if last is not None and predicate(last):
                return last
            time.sleep(0.05)
        raise AssertionError(f"pod {name} never matched; last: {json.dumps(last)[:2000]}")

    def wait_gone(self, name: str, limit: float = 20, ns: str = "default") -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.pod(name, ns) is None:
                return
            time.sleep(0.05)
        raise AssertionError(f"pod {name} still exists")


def pod_manifest(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": spec.pop("image", IMAGE), "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda p: (p.get("status") or {}).get("phase") in phases


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0].get("state") or {}


def condition(pod: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    images = ImageTable.default()
    images.add(IMAGE, entrypoint=["sh"])
    with run_cluster_in_thread(tmp_path_factory.mktemp("cluster"), images=images) as c:
        yield c


@pytest.fixture
def api(cluster: Any) -> Api:
    return Api(cluster.url)


def test_node_registered_ready_with_lease(api: Api) -> None:
    node = api.get("/api/v1/nodes/local-node")
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "local-node"
    status = node["status"]
    assert status["capacity"] == {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    assert status["allocatable"]["memory"] == "8Gi"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        code, lease = api.call("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/local-node")
        if code == 200:
            break
        time.sleep(0.05)
    assert lease["spec"]["holderIdentity"] == "local-node"


def test_pod_scheduled_run_and_logged(cluster: Any, api: Api) -> None:
    before = len(cluster.apiserver.request_log)
    api.create("/api/v1/namespaces/default/pods", pod_manifest("hello", ["sh", "-c", "echo hi; echo oops >&2"]))
    pod = api.wait_pod("hello", phase_is("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == "local-node"
    assert condition(pod, "PodScheduled")["status"] == "True"
    term = container_state(pod)["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert api.log("hello") == "hi\noops\n"
    records = cluster.apiserver.request_log[before:]
    writes = [
        r
        for r in records
        if r.method in ("POST", "PATCH", "PUT", "DELETE") and "kubelet" in r.user_agent and "/pods/hello" in r.path
    ]
    # At most one status patch per transition: Pending, Running, Succeeded (passing states are batched).
    assert 1 <= len(writes) <= 3, [(r.method, r.path) for r in writes]


def test_unschedulable_node_selector(api: Api) -> None:
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("nowhere", ["true"], nodeSelector={"disktype": "ssd"}),
    )
    pod = api.wait_pod("nowhere", lambda p: condition(p, "PodScheduled").get("reason") == "Unschedulable")
    cond = condition(pod, "PodScheduled")
    assert cond["status"] == "False"
    assert cond["message"] == "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_unschedulable_resources(api: Api) -> None:
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("huge", ["true"], container={"resources": {"requests": {"memory": "64Gi"}}}),
    )
    pod = api.wait_pod("huge", lambda p: condition(p, "PodScheduled").get("reason") == "Unschedulable")
    assert condition(pod, "PodScheduled")["message"] == "0/1 nodes are available: 1 Insufficient memory."


def test_failure_exit_code_and_termination_message(api: Api) -> None:
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("fails", ["sh", "-c", "echo -n custom > /dev/termination-log; exit 7"]),
    )
    pod = api.wait_pod("fails", phase_is("Succeeded", "Failed"))
    term = container_state(pod)["terminated"]
    assert (pod["status"]["phase"], term["exitCode"], term["reason"], term["message"]) == (
        "Failed",
        7,
        "Error",
        "custom",
    )
    assert condition(pod, "Ready")["reason"] == "PodFailed"


def test_graceful_deletion_sigterm_grace_sigkill(cluster: Any, api: Api) -> None:
    script = "trap 'echo got-term' TERM; echo started; while true; do sleep 0.1; done"
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("stubborn", ["sh", "-c", script], terminationGracePeriodSeconds=1),
    )
    api.wait_pod("stubborn", phase_is("Running"))
    t0 = time.monotonic()
    code, body = api.call("DELETE", "/api/v1/namespaces/default/pods/stubborn")
    assert code == 200
    assert body["metadata"]["deletionTimestamp"]
    api.wait_gone("stubborn")
    elapsed = time.monotonic() - t0
    assert 0.8 < elapsed < 10
    confirms = [
        r
        for r in cluster.apiserver.request_log
        if r.method == "DELETE" and "/pods/stubborn" in r.path and "kubelet" in r.user_agent
    ]
    assert confirms
    assert "gracePeriodSeconds=0" in confirms[-1].path


def test_active_deadline_exceeded(api: Api) -> None:
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("slow", ["sleep", "60"], activeDeadlineSeconds=1, terminationGracePeriodSeconds=2),
    )
    pod = api.wait_pod("slow", phase_is("Failed"), limit=15)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["message"] == "Pod was active on the node longer than the specified deadline"
    assert container_state(pod)["terminated"]["exitCode"] in (137, 143)


def test_image_pull_errors(api: Api) -> None:
    api.create("/api/v1/namespaces/default/pods", pod_manifest("noimg", ["true"], image="example.test/nope:1"))
    pod = api.wait_pod("noimg", lambda p: container_state(p).get("waiting", {}).get("reason") == "ErrImagePull")
    assert "not found" in container_state(pod)["waiting"]["message"]
    pod = api.wait_pod(
        "noimg", lambda p: container_state(p).get("waiting", {}).get("reason") == "ImagePullBackOff", limit=10
    )
    assert pod["status"]["phase"] == "Pending"
    api.create("/api/v1/namespaces/default/pods", pod_manifest("badimg", ["true"], image="Bad::Image"))
    pod = api.wait_pod("badimg", lambda p: container_state(p).get("waiting", {}).get("reason") == "InvalidImageName")
    assert container_state(pod)["waiting"]["message"].startswith('Failed to apply default image tag "Bad::Image"')


def test_configmap_volume_and_missing_configmap(api: Api) -> None:
    manifest = pod_manifest(
        "cmpod",
        ["sh", "-c", "cat /payload/code.py; echo; echo $GREETING"],
        container={
            "volumeMounts": [{"name": "payload", "mountPath": "/payload", "readOnly": True}],
            "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "carrier", "key": "greeting"}}}],
        },
        volumes=[{"name": "payload", "configMap": {"name": "carrier"}}],
    )
    api.create("/api/v1/namespaces/default/pods", manifest)
    pod = api.wait_pod(
        "cmpod", lambda p: container_state(p).get("waiting", {}).get("reason") == "CreateContainerConfigError"
    )
    assert container_state(pod)["waiting"]["message"] == 'configmap "carrier" not found'
    api.create(
        "/api/v1/namespaces/default/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "carrier"},
            "data": {"code.py": "print(1)", "greeting": "hello"},
        },
    )
    pod = api.wait_pod("cmpod", phase_is("Succeeded", "Failed"), limit=15)
    assert pod["status"]["phase"] == "Succeeded"
    assert api.log("cmpod") == "print(1)\nhello\n"


def test_network_policy_cuts_egress(api: Api) -> None:
    probe = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).close()"
    port = int(api.url.rsplit(":", 1)[1])
    labels = {"sandbox.dev/network": "deny"}
    api.create(
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all"},
            "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress", "Egress"]},
        },
    )
    image = "ghcr.io/execution-operator/sandbox:test"
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("isolated", ["python", "-c", probe, str(port)], image=image, labels=labels),
    )
    api.create("/api/v1/namespaces/default/pods", pod_manifest("open", ["python", "-c", probe, str(port)], image=image))
    isolated = api.wait_pod("isolated", phase_is("Succeeded", "Failed"))
    opened = api.wait_pod("open", phase_is("Succeeded", "Failed"))
    assert opened["status"]["phase"] == "Succeeded", api.log("open")
    assert isolated["status"]["phase"] == "Failed"


def test_evict_and_lose_pod(cluster: Any, api: Api) -> None:
    for name in ("victim", "orphan"):
        api.create("/api/v1/namespaces/default/pods", pod_manifest(name, ["sleep", "60"]))
        api.wait_pod(name, phase_is("Running"))
    cluster.runner.run(cluster.node.evict("default", "victim"))
    pod = api.wait_pod("victim", phase_is("Failed"))
    assert pod["status"]["reason"] == "Evicted"
    assert condition(pod, "DisruptionTarget")["reason"] == "TerminationByKubelet"
    assert container_state(pod)["terminated"]["exitCode"] == 137
    cluster.runner.run(cluster.node.lose_pod("default", "orphan"))
    pod = api.wait_pod("orphan", phase_is("Failed"))
    assert pod["status"]["reason"] == "NodeLost"
    assert condition(pod, "DisruptionTarget")["reason"] == "DeletionByPodGC"
    term = container_state(pod)["terminated"]
    assert (term["reason"], term["exitCode"]) == ("ContainerStatusUnknown", 137)


def test_node_restart_fails_pods_it_lost(cluster: Any, api: Api) -> None:
    api.create("/api/v1/namespaces/default/pods", pod_manifest("survivor", ["sleep", "60"]))
    api.wait_pod("survivor", phase_is("Running"))
    old_node: LocalNode = cluster.node

    async def restart() -> LocalNode:
        await old_node.stop()
        node = LocalNode(cluster.url, old_node.state_dir, images=old_node.images)
        await node.start()
        return node

    cluster.node = cluster.runner.run(restart())
    pod = api.wait_pod("survivor", phase_is("Failed"))
    term = container_state(pod)["terminated"]
    assert (term["reason"], term["exitCode"]) == ("ContainerStatusUnknown", 137)
    assert term["message"] == "The container could not be located when the pod was terminated"
    # The restarted node still runs new pods.
    api.create("/api/v1/namespaces/default/pods", pod_manifest("after-restart", ["true"]))
    assert api.wait_pod("after-restart", phase_is("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"


def test_burst_of_pods_completes(api: Api) -> None:
    names = [f"burst-{i}" for i in range(20)]
    t0 = time.monotonic()
    for name in names:
        api.create("/api/v1/namespaces/default/pods", pod_manifest(name, ["true"]))
    for name in names:
        assert api.wait_pod(name, phase_is("Succeeded", "Failed"), limit=60)["status"]["phase"] == "Succeeded"
    assert time.monotonic() - t0 < 60


def test_warning_events_recorded(api: Api) -> None:
    api.create("/api/v1/namespaces/default/pods", pod_manifest("evpod", ["true"], image="example.test/absent:2"))
    deadline = time.monotonic() + 15
    reasons: set[str] = set()
    while time.monotonic() < deadline and not {"Failed", "BackOff"} <= reasons:
        events = api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Devpod")["items"]
        reasons = {e["reason"] for e in events}
        time.sleep(0.1)
    assert {"Failed", "BackOff"} <= reasons, reasons
    failed = next(e for e in events if e["reason"] == "Failed" and e["message"].startswith("Failed to pull image"))
    assert failed["type"] == "Warning"
    assert failed["source"]["component"] == "kubelet"
    assert failed["involvedObject"]["fieldPath"] == "spec.containers{main}"
    api.create("/api/v1/namespaces/default/pods", pod_manifest("evsched", ["true"], nodeSelector={"zone": "mars"}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Devsched")["items"]
        if events:
            break
        time.sleep(0.05)
    assert [e["reason"] for e in events] == ["FailedScheduling"]


def test_pods_still_run_after_watches_drop(cluster: Any, api: Api) -> None:
    cluster.runner.call(cluster.apiserver.drop_watches)
    api.create("/api/v1/namespaces/default/pods", pod_manifest("after-drop", ["true"]))
    assert api.wait_pod("after-drop", phase_is("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"


def test_active_deadline_shortened_on_running_pod(api: Api) -> None:
    script = "trap 'exit 143' TERM; sleep 60 & wait"
    api.create(
        "/api/v1/namespaces/default/pods",
        pod_manifest("shorten", ["sh", "-c", script], activeDeadlineSeconds=600, terminationGracePeriodSeconds=2),
    )
    api.wait_pod("shorten", phase_is("Running"))
    code, body = api.call(
        "PATCH",
        "/api/v1/namespaces/default/pods/shorten",
        {"spec": {"activeDeadlineSeconds": 1}},
        "application/merge-patch+json",
    )
    assert code == 200, body
    pod = api.wait_pod("shorten", phase_is("Failed"), limit=15)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert container_state(pod)["terminated"]["exitCode"] == 143


def test_simulations_by_annotation(api: Api) -> None:
    """Out-of-process tests (kubectl) trigger eviction and node loss with an annotation."""
    for name in ("ann-evict", "ann-lost"):
        api.create("/api/v1/namespaces/default/pods", pod_manifest(name, ["sleep", "60"]))
        api.wait_pod(name, phase_is("Running"))
    for name, what in (("ann-evict", "evict"), ("ann-lost", "node-lost-delete")):
        code, body = api.call(
            "PATCH",
            f"/api/v1/namespaces/default/pods/{name}",
            {"metadata": {"annotations": {"localcluster.dev/simulate": what}}},
            "application/merge-patch+json",
        )
        assert code == 200, body
    assert api.wait_pod("ann-evict", phase_is("Failed"))["status"]["reason"] == "Evicted"
    api.wait_gone("ann-lost")
