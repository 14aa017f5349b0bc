"""Warm pools end to end: claim, handover, the same outcomes as a cold pod, fallbacks, refill, restarts.

Each test makes its own namespace and WarmPool (of the `default` class, or a class of its own), so
pools of other tests never hand it a pod.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import SANDBOX_IMAGE, OperatorProcess
from tests.e2e.kube import Kube, condition, execution, wait_until
from tests.e2e.procs import ClusterHandle
from tests.e2e.test_breaker import PodWatch, make_class  # noqa: F401 - make_class is a fixture
from tests.e2e.test_restart import op  # noqa: F401 - a fixture

POOL_LABEL = "sandbox.dev/warm-pool"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def pool(name: str, class_name: str = "default", replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "WarmPool",
        "metadata": {"name": name},
        "spec": {"executionClassName": class_name, "replicas": replicas},
    }


def pool_pods(kube: Kube, name: str) -> list[dict[str, Any]]:
    return kube.items("pods", "-l", f"{POOL_LABEL}={name}")


def ready_pods(kube: Kube, name: str) -> list[dict[str, Any]]:
    return [p for p in pool_pods(kube, name) if not p["metadata"].get("deletionTimestamp") and any(
        "running" in (cs.get("state") or {}) for cs in (p.get("status") or {}).get("containerStatuses") or [])]


def make_pool(kube: Kube, name: str, class_name: str = "default", replicas: int = 2) -> None:
    """Create the pool and wait until it reports all its pods ready."""
    kube.apply(pool(name, class_name, replicas))

    def filled() -> bool:
        body = kube.get("warmpool", name) or {}
        ready = condition(body, "Ready") or {}
        return ready.get("status") == "True" and len(ready_pods(kube, name)) >= replicas

    wait_until(filled, timeout=120, what=f"pool {name} to be Ready with {replicas} pods")


def run(kube: Kube, name: str, code: str, timeout: float = 90, **spec: Any) -> dict[str, Any]:
    kube.create(execution(name, code, **spec))
    return kube.wait_terminal(name, timeout=timeout)


# ----------------------------------------------------------------------------- the warm path


def test_warm_success_reports_as_a_cold_pod_does(kube: Kube) -> None:
    make_pool(kube, "wp", replicas=2)
    idle = {p["metadata"]["name"] for p in ready_pods(kube, "wp")}
    body = run(kube, "warm-ok", "import os\nprint('out')\nresult = {'x': input_data['x'] * 2, "
                                 "'attempt': os.environ['SANDBOX_ATTEMPT'], 'ex': os.environ['SANDBOX_EXECUTION']}\n",
               input={"x": 21}, correlationId="corr-warm-1")
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert status["launch"] == "warm"
    assert status["podName"] in idle
    assert status["output"] == {"x": 42, "attempt": "1", "ex": "warm-ok"}
    assert status["stdout"].strip() == "out"
    assert status["exitCode"] == 0
    assert status["exitCodeSource"] == "container"
    assert status["attempts"][0]["launch"] == "warm"
    assert (condition(body, "Launched") or {}).get("reason") == "WarmPodClaimed"
    # The claimed pod now belongs to the Execution, carries its labels, and left the pool.
    pod = kube.get("pod", status["podName"])
    assert pod is not None
    meta = pod["metadata"]
    assert [r["uid"] for r in meta["ownerReferences"]] == [body["metadata"]["uid"]]
    assert meta["labels"]["sandbox.dev/execution"] == "warm-ok"
    assert meta["labels"]["sandbox.dev/attempt"] == "1"
    assert meta["labels"]["sandbox.dev/correlation-id"] == "corr-warm-1"
    assert POOL_LABEL not in meta["labels"]
    assert meta["labels"]["sandbox.dev/claimed-from"] == "wp"
    assert pod["spec"]["activeDeadlineSeconds"] > 0
    assert pod["spec"]["automountServiceAccountToken"] is False
    # Refill: the pool is back to two ready pods, neither of them the claimed one.
    wait_until(lambda: len(ready_pods(kube, "wp")) == 2, timeout=60, what="the pool to refill")
    assert status["podName"] not in {p["metadata"]["name"] for p in ready_pods(kube, "wp")}
    wp_body = kube.get("warmpool", "wp") or {}
    wait_until(lambda: ((kube.get("warmpool", "wp") or {}).get("status") or {}).get("claimed") == 1,
               timeout=30, what="status.claimed to count the claim")
    assert wp_body["status"]["selector"] == f"{POOL_LABEL}=wp"
    table = kube.run("get", "wp", "wp").stdout
    assert "CLASS" in table
    assert "DESIRED" in table
    assert "READY" in table


@pytest.mark.parametrize(
    ("code", "error_type", "exit_code"),
    [
        ("1 / 0\n", "division_error", 1),
        ("x = bytearray(1024 * 1024 * 1024)\nimport time\ntime.sleep(5)\n", "oom", 137),
        ("import time\ntime.sleep(30)\n", "timeout", 137),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "segfault", 139),
    ],
    ids=["user-exception", "oom", "timeout", "signal"],
)
def test_warm_failures_are_classified_as_cold_ones(kube: Kube, code: str, error_type: str, exit_code: int) -> None:
    make_pool(kube, "wp", replicas=1)
    body = run(kube, "warm-fail", code, timeoutSeconds=2, retry={"maxAttempts": 1})
    status = body["status"]
    assert status["launch"] == "warm"
    assert status["phase"] == "Failed"
    assert status["error"]["type"] == error_type, status["error"]
    assert status["exitCode"] == exit_code
    if error_type == "timeout":
        # The timeout counts from when the code started, not from when the pool pod did.
        assert status["error"]["meta"]["timeoutSeconds"] == 2


def test_cancel_a_claimed_pod(kube: Kube) -> None:
    make_pool(kube, "wp", replicas=1)
    kube.create(execution("warm-cancel", "import time\nprint('started', flush=True)\ntime.sleep(60)\n"))
    wait_until(lambda: ((kube.get("execution", "warm-cancel") or {}).get("status") or {}).get("phase") == "Running",
               timeout=60, what="the Execution to run")
    pod_name = kube.get("execution", "warm-cancel")["status"]["podName"]  # type: ignore[index]
    kube.run("patch", "execution", "warm-cancel", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    body = kube.wait_terminal("warm-cancel", timeout=60)
    assert body["status"]["phase"] == "Cancelled"
    assert body["status"]["error"]["type"] == "cancelled"
    wait_until(lambda: (kube.get("pod", pod_name, check=False) or {}).get("metadata", {}).get("deletionTimestamp")
               or kube.get("pod", pod_name, check=False) is None, timeout=60, what="the claimed pod to be deleted")


def test_retry_claims_a_second_warm_pod(kube: Kube) -> None:
    make_pool(kube, "wp", replicas=2)
    code = ("import os\nif os.environ['SANDBOX_ATTEMPT'] == '1':\n    raise ConnectionError('reset')\n"
            "result = os.environ['SANDBOX_ATTEMPT']\n")
    body = run(kube, "warm-retry", code, retry={"maxAttempts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 1})
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["output"] == "2"
    assert [a["launch"] for a in status["attempts"]] == ["warm", "warm"]
    assert len({a["podName"] for a in status["attempts"]}) == 2


def test_pool_empty_falls_back_to_cold(kube: Kube) -> None:
    kube.apply(pool("wp", replicas=0))
    body = run(kube, "warm-miss", "result = 1\n")
    assert body["status"]["phase"] == "Succeeded"
    assert body["status"]["launch"] == "cold"


def test_spec_that_needs_another_pod_launches_cold(kube: Kube) -> None:
    make_pool(kube, "wp", replicas=1)
    body = run(kube, "warm-big", "result = 1\n", resources={"memory": "512Mi"})
    assert body["status"]["launch"] == "cold"
    assert body["status"]["phase"] == "Succeeded"
    assert len(ready_pods(kube, "wp")) == 1  # untouched


def test_handover_failure_deletes_the_pod_and_launches_cold(kube: Kube, cluster: ClusterHandle) -> None:
    if not cluster.local:
        pytest.skip("making the attach fail needs the local API server's fault injection")
    make_pool(kube, "wp", replicas=1)
    (victim,) = ready_pods(kube, "wp")
    with open(cluster.kubeconfig) as config:
        server = yaml.safe_load(config)["clusters"][0]["cluster"]["server"]
    rule = {"resource": "pods/attach", "namespace": kube.namespace, "status": 500, "times": 1}
    request = urllib.request.Request(f"{server}/debug/faults", data=json.dumps(rule).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    body = run(kube, "warm-handover", "result = 'ran'\n")
    status = body["status"]
    # The claimed pod could not take the payload: deleted (never back in the pool), the attempt cold.
    assert status["phase"] == "Succeeded"
    assert status["output"] == "ran"
    assert status["launch"] == "cold"
    assert status["podName"] != victim["metadata"]["name"]
    wait_until(lambda: (kube.get("pod", victim["metadata"]["name"], check=False) or {}).get("metadata", {}).get(
        "deletionTimestamp") or kube.get("pod", victim["metadata"]["name"], check=False) is None,
        timeout=60, what="the pod whose handover failed to be deleted")
    assert victim["metadata"]["name"] not in {p["metadata"]["name"] for p in ready_pods(kube, "wp")}


def test_a_warm_pod_takes_one_payload_and_one_execution_cannot_read_anothers(kube: Kube) -> None:
    make_pool(kube, "wp", replicas=2)
    secret = run(kube, "warm-secret", "import time\nprint(input_data['secret'])\ntime.sleep(3)\nresult = 'done'\n",
                 input={"secret": "s3cr3t-one"})
    first_pod = secret["status"]["podName"]
    assert secret["status"]["launch"] == "warm"
    # A second payload on the same pod is refused or ignored: its stdin closed with the first one.
    payload = json.dumps({"v": 1, "code": "result = 'second'\n", "input": None, "timeoutSeconds": 5})
    kube.run("attach", "-i", first_pod, "-c", "sandbox", input=payload, check=False, timeout=60)
    logs = kube.run("logs", first_pod, "-c", "sandbox").stdout
    assert "second" not in logs
    assert logs.count("SANDBOX-PAYLOAD-RECEIVED") == 1
    assert (kube.get("execution", "warm-secret") or {})["status"]["output"] == "done"
    # Another Execution gets another pod, and nothing of the first one's input.
    probe = ("import os, glob\nseen = []\nfor p in glob.glob('/input/*') + glob.glob('/tmp/*') + "
             "glob.glob('/output/*'):\n    seen.append(open(p).read() if os.path.isfile(p) else p)\n"
             "result = {'input': input_data, 'files': seen, 'env': [v for v in os.environ.values() "
             "if 's3cr3t' in v]}\n")
    other = run(kube, "warm-other", probe, input={"mine": True})
    assert other["status"]["podName"] != first_pod
    assert "s3cr3t-one" not in json.dumps(other["status"]["output"])
    assert other["status"]["output"]["input"] == {"mine": True}


def test_a_pool_of_a_broken_image_never_storms(kube: Kube, make_class: Callable[..., str]) -> None:  # noqa: F811
    broken = make_class(failure_threshold=2, open_seconds=120, success_threshold=1)
    watch = PodWatch(kube, broken)
    try:
        kube.apply(pool("broken", broken, replicas=3))

        def circuit_open() -> bool:
            body = kube.get("warmpool", "broken") or {}
            return (condition(body, "Ready") or {}).get("reason") == "CircuitOpen"

        wait_until(circuit_open, timeout=90, what="the pool to report CircuitOpen")
        seen = set(watch.pods())
        watch.assert_alive()
        # Size plus the breaker's one probe at most, however long it stays broken.
        assert 1 <= len(seen) <= 3 + 1, seen
        body = kube.get("executionclass", broken, check=False) or {}
        assert (body.get("status") or {}).get("circuitBreaker", {}).get("state") == "open"
    finally:
        watch.close()


def test_class_change_replaces_the_pools_pods(kube: Kube, make_class: Callable[..., str]) -> None:  # noqa: F811
    name = make_class(image=SANDBOX_IMAGE, failure_threshold=5, pending_timeout=60)
    make_pool(kube, "wp", name, replicas=1)
    (old,) = ready_pods(kube, "wp")
    kube.run("patch", "executionclass", name, "--type=merge", "-p",
             json.dumps({"spec": {"env": [{"name": "CHANGED", "value": "1"}]}}), namespaced=False)

    def replaced() -> bool:
        pods = ready_pods(kube, "wp")
        return len(pods) == 1 and pods[0]["metadata"]["name"] != old["metadata"]["name"]

    wait_until(replaced, timeout=90, what="the pool pod of the old class spec to be replaced")
    body = run(kube, "warm-new-spec", "import os\nresult = os.environ.get('CHANGED')\n", executionClassName=name)
    assert body["status"]["launch"] == "warm"
    assert body["status"]["output"] == "1"


def test_deleting_the_pool_removes_its_pods(kube: Kube) -> None:
    make_pool(kube, "wp", replicas=2)
    kube.run("delete", "warmpool", "wp")
    wait_until(lambda: not ready_pods(kube, "wp"), timeout=60, what="the pool's pods to go")
    body = run(kube, "after-pool", "result = 1\n")
    assert body["status"]["launch"] == "cold"


# ----------------------------------------------------------------------------- restart safety


def claim_by_hand(kube: Kube, pod: dict[str, Any], ex: dict[str, Any], attempt: int = 1) -> None:
    """What the operator's claim writes, done while it is down: as if it was killed right after."""
    meta = pod["metadata"]
    patch = {"metadata": {
        "resourceVersion": meta["resourceVersion"],
        "labels": {POOL_LABEL: None, "sandbox.dev/claimed-from": meta["labels"][POOL_LABEL],
                   "sandbox.dev/execution": ex["metadata"]["name"], "sandbox.dev/attempt": str(attempt)},
        "ownerReferences": [{"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution", "name": ex["metadata"]["name"],
                             "uid": ex["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}],
    }}
    kube.run("patch", "pod", meta["name"], "--type=merge", "-p", json.dumps(patch))


def claimed_while_down(kube: Kube, operator_process: OperatorProcess, name: str, code: str) -> dict[str, Any]:
    """A pool pod claimed for a new Execution while the operator is down; returns the pod."""
    make_pool(kube, "wp", replicas=1)
    (pod,) = ready_pods(kube, "wp")
    operator_process.kill()
    kube.create(execution(name, code))
    ex = kube.get("execution", name)
    assert ex is not None
    claim_by_hand(kube, pod, ex)
    return pod


def test_sigkill_between_claim_and_handover(kube: Kube, op: OperatorProcess) -> None:  # noqa: F811
    claimed_while_down(kube, op, "mid-claim", "result = 'once'\nprint('ran')\n")
    op.start()
    body = kube.wait_terminal("mid-claim", timeout=90)
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["output"] == "once"
    # Handed its payload, or deleted and launched cold: either way one pod ran the attempt, once.
    pods = [p for p in kube.items("pods", "-l", "sandbox.dev/execution=mid-claim")
            if not p["metadata"].get("deletionTimestamp")]
    ran = [p for p in pods if "ran" in kube.run("logs", p["metadata"]["name"], "-c", "sandbox", check=False).stdout]
    assert [p["metadata"]["name"] for p in ran] == [status["podName"]]


def test_sigkill_after_handover_before_the_status_write(kube: Kube, op: OperatorProcess) -> None:  # noqa: F811
    pod = claimed_while_down(kube, op, "mid-handover", "print('ran')\nresult = 'adopted'\n")
    payload = json.dumps({"v": 1, "code": "print('ran')\nresult = 'adopted'\n", "input": None, "timeoutSeconds": 30,
                          "attempt": 1, "execution": "mid-handover", "correlationId": "c"})
    kube.run("attach", "-i", pod["metadata"]["name"], "-c", "sandbox", input=payload, check=False)
    op.start()
    body = kube.wait_terminal("mid-handover", timeout=90)
    status = body["status"]
    # Adopted: the pod that already ran the code is the attempt's pod; nothing ran it a second time.
    assert status["phase"] == "Succeeded"
    assert status["output"] == "adopted"
    assert status["podName"] == pod["metadata"]["name"]
    assert status["launch"] == "warm"
    pods = kube.items("pods", "-l", "sandbox.dev/execution=mid-handover")
    assert [p["metadata"]["name"] for p in pods] == [pod["metadata"]["name"]]


def test_sigkill_during_a_burst_of_claims(kube: Kube, op: OperatorProcess) -> None:  # noqa: F811
    make_pool(kube, "wp", replicas=4)
    names = [f"burst-{i}" for i in range(8)]
    kube.run("create", "-f", "-", input=yaml.safe_dump_all([execution(n, f"result = {i}\n")
                                                             for i, n in enumerate(names)]))
    op.kill()
    op.start()

    def all_done() -> list[dict[str, Any]] | None:
        items = [i for i in kube.items("executions") if i["metadata"]["name"] in names]
        return items if len(items) == len(names) and all(
            (i.get("status") or {}).get("phase") in TERMINAL for i in items) else None

    items = wait_until(all_done, timeout=120, what="every Execution of the burst to finish", interval=1.0)
    assert sorted((i["metadata"]["name"], i["status"]["output"]) for i in items) == sorted(
        (n, i) for i, n in enumerate(names))
    pods = kube.items("pods", "-l", "sandbox.dev/execution")
    labels = [p["metadata"]["labels"] for p in pods if not p["metadata"].get("deletionTimestamp")]
    per_attempt = Counter((lb["sandbox.dev/execution"], lb["sandbox.dev/attempt"]) for lb in labels)
    assert all(n == 1 for n in per_attempt.values()), per_attempt
