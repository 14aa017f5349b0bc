"""The controller against the in-process API server, with the test playing the kubelet.

No node and no kopf: events are handed to the controller directly, so each test controls exactly
which events arrive, in which order, and when the operator "crashes" (a new Controller instance).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from execution_operator.controller import Controller
from execution_operator.deadletters import DeadLetters
from execution_operator.k8s import KubeClient, path_for
from localcluster.apiserver import ApiServer
from localcluster.apiserver.logs import log_path

ROOT = Path(__file__).resolve().parents[2]
API = "sandbox.dev/v1alpha1"
NS = "default"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ApiServer, KubeClient]]:
    server = ApiServer(state_dir=tmp_path)
    url = await server.start()
    client = KubeClient(kopf.ConnectionInfo(server=url), user_agent="test")
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        await client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(path.read_text()))
    await client.post(path_for(API, "executionclasses"), {
        "apiVersion": API, "kind": "ExecutionClass", "metadata": {"name": "default"},
        "spec": {"image": "ghcr.io/execution-operator/sandbox:0.1.0", "pendingTimeoutSeconds": 60},
    })
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


async def create_execution(client: KubeClient, name: str, **spec: Any) -> dict[str, Any]:
    return await client.post(path_for(API, "executions", NS), {
        "apiVersion": API, "kind": "Execution", "metadata": {"name": name},
        "spec": {"code": "print(1)", **spec},
    })


async def pods(client: KubeClient) -> list[dict[str, Any]]:
    listed = await client.get(path_for("v1", "pods", NS))
    return list(listed["items"])


async def execution(client: KubeClient, name: str) -> dict[str, Any]:
    return await client.get(path_for(API, "executions", NS, name))


def operator_client(client: KubeClient) -> KubeClient:
    """The operator's own client, told apart from the test's by its user agent."""
    return KubeClient(kopf.ConnectionInfo(server=client.server), user_agent="execution-operator")


def writes(server: ApiServer) -> list[str]:
    return [
        f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
        for r in server.request_log
        if r.user_agent == "execution-operator" and r.verb in ("create", "update", "patch", "delete")
        and r.code < 300
    ]


async def finish_pod(server: ApiServer, client: KubeClient, pod: dict[str, Any], report: dict[str, Any],
                     *, exit_code: int) -> dict[str, Any]:
    """Play the kubelet and the runner: a log with the report line, then a terminated status."""
    nonce = "ab" * 16
    summary = {"v": 1, "nonce": nonce, "success": report["success"], "exitCode": report["exitCode"],
               "errorType": report.get("errorType"), "exceptionType": report.get("exceptionType"),
               "message": report.get("message", ""), "userCodeStarted": True,
               "startedAt": "2026-01-01T00:00:00.000Z", "finishedAt": "2026-01-01T00:00:01.000Z",
               "durationSeconds": 1.0}
    full = summary | {"stdout": report.get("stdout", ""), "stderr": "", "stdoutTruncated": False,
                      "stderrTruncated": False, "output": report.get("output"), "details": None, "meta": {}}
    meta = pod["metadata"]
    path = log_path(server.state_dir, NS, meta["name"], meta["uid"], "sandbox")  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [report.get("stdout", ""), f"SANDBOX-REPORT {nonce} {json.dumps(full)}\n"]
    path.write_text("".join(
        json.dumps({"time": "2026-01-01T00:00:01.000000000Z", "stream": "stdout", "log": line}) + "\n"
        for line in lines if line
    ))
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{
            "name": "sandbox", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                     "message": json.dumps(summary), "startedAt": "2026-01-01T00:00:00Z",
                                     "finishedAt": "2026-01-01T00:00:01Z"}},
        }],
    }
    return await client.patch(path_for("v1", "pods", NS, meta["name"], "status"), {"status": status})


async def test_success_costs_at_most_six_writes_and_records_everything(
    api: tuple[ApiServer, KubeClient],
) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    body = await create_execution(client, "ok")
    await controller.on_execution_event(body, "ADDED")
    (pod,) = await pods(client)
    assert pod["metadata"]["name"].endswith("-a1")
    launched = await execution(client, "ok")
    assert launched["status"]["phase"] == "Pending"
    assert launched["status"]["podName"] == pod["metadata"]["name"]
    finished = await finish_pod(server, client, pod, {"success": True, "exitCode": 0, "stdout": "1\n",
                                                     "output": {"x": 1}}, exit_code=0)
    await controller.on_pod_event(finished, "MODIFIED")
    done = await execution(client, "ok")
    status = done["status"]
    assert status["phase"] == "Succeeded"
    assert status["success"] is True
    assert status["output"] == {"x": 1}
    assert status["stdout"] == "1\n"
    assert status["exitCode"] == 0
    assert status["exitCodeSource"] == "container"
    for task in list(controller.state.tasks):
        await task
    made = writes(server)
    assert made.count("create pods") == 1
    # The deny-all NetworkPolicy is made once per namespace, not per Execution.
    per_execution = [w for w in made if w != "create networkpolicies"]
    assert len(per_execution) <= 6, made


async def test_a_burst_in_a_new_namespace_creates_its_network_policy_once(
    api: tuple[ApiServer, KubeClient],
) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    bodies = [await create_execution(client, f"burst-{i}") for i in range(8)]
    await asyncio.gather(*(controller.on_execution_event(body, "ADDED") for body in bodies))
    assert len(await pods(client)) == 8
    attempts = [r for r in server.request_log if r.user_agent == "execution-operator"
                and r.verb == "create" and r.resource == "networkpolicies"]
    assert len(attempts) == 1, [r.code for r in attempts]


async def test_repeated_events_and_a_restart_never_make_a_second_pod(api: tuple[ApiServer, KubeClient]) -> None:
    _, client = api
    body = await create_execution(client, "twice")
    first = Controller(operator_client(client))
    await first.on_execution_event(body, "ADDED")
    await first.on_execution_event(body, "ADDED")  # a stale redelivery of the same event
    # A "restart": a fresh controller that saw nothing, given the original (pre-launch) body.
    second = Controller(operator_client(client))
    await second.on_execution_event(body, None)
    listed = await pods(client)
    assert len(listed) == 1
    assert (await execution(client, "twice"))["status"]["attempt"] == 1


async def test_crash_between_pod_creation_and_status_write_adopts_the_pod(
    api: tuple[ApiServer, KubeClient],
) -> None:
    _, client = api
    body = await create_execution(client, "adopt")
    # The first operator created the pod and died before writing status: do the same by hand.
    from execution_operator.bodies import correlation_id
    from execution_operator.models import ExecutionClassSpec, ExecutionSpec
    from execution_operator.sandbox import ExecutionRef, build_pod

    ref = ExecutionRef(NS, "adopt", body["metadata"]["uid"], correlation_id(body))
    manifest = build_pod(ref, ExecutionSpec.model_validate(body["spec"]),
                         ExecutionClassSpec(image="ghcr.io/execution-operator/sandbox:0.1.0"), attempt=1)
    made = await client.post(path_for("v1", "pods", NS), manifest)
    controller = Controller(operator_client(client))
    await controller.on_execution_event(body, None)
    (pod,) = await pods(client)
    assert pod["metadata"]["uid"] == made["metadata"]["uid"]
    assert (await execution(client, "adopt"))["status"]["podName"] == made["metadata"]["name"]


async def test_a_stale_view_never_overwrites_a_newer_status(api: tuple[ApiServer, KubeClient]) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    body = await create_execution(client, "race")
    await controller.on_execution_event(body, "ADDED")
    (pod,) = await pods(client)
    finished = await finish_pod(server, client, pod, {"success": True, "exitCode": 0}, exit_code=0)
    await controller.on_pod_event(finished, "MODIFIED")
    assert (await execution(client, "race"))["status"]["phase"] == "Succeeded"
    # The watch now delivers an old body (launched, not finished): nothing may move backwards.
    await controller.on_execution_event(body, "MODIFIED")
    running_pod = dict(pod, status={"phase": "Running", "containerStatuses": [
        {"name": "sandbox", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
    await controller.on_pod_event(running_pod, "MODIFIED")
    assert (await execution(client, "race"))["status"]["phase"] == "Succeeded"


async def test_someone_elses_write_in_between_is_a_conflict_we_recover_from(
    api: tuple[ApiServer, KubeClient],
) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    body = await create_execution(client, "labelled")
    await controller.on_execution_event(body, "ADDED")
    (pod,) = await pods(client)
    # A user labels the Execution: the controller's cached resourceVersion is now stale.
    await client.patch(path_for(API, "executions", NS, "labelled"), {"metadata": {"labels": {"team": "a"}}})
    finished = await finish_pod(server, client, pod, {"success": False, "exitCode": 1, "errorType": "value_error",
                                                     "exceptionType": "ValueError", "message": "ValueError: no"},
                                exit_code=1)
    await controller.on_pod_event(finished, "MODIFIED")
    done = await execution(client, "labelled")
    assert done["status"]["phase"] == "Failed"
    assert done["status"]["error"]["type"] == "value_error"
    assert done["metadata"]["labels"] == {"team": "a"}
    conflicts = [r for r in server.request_log if r.user_agent == "execution-operator" and r.code == 409]
    assert conflicts, "the stale write was refused and retried"


async def test_failure_makes_exactly_one_dead_letter_even_when_handled_twice(
    api: tuple[ApiServer, KubeClient],
) -> None:
    server, client = api
    controller = Controller(operator_client(client), dead_letters=DeadLetters(client))
    body = await create_execution(client, "dead")
    await controller.on_execution_event(body, "ADDED")
    (pod,) = await pods(client)
    finished = await finish_pod(server, client, pod, {"success": False, "exitCode": 1, "errorType": "key_error",
                                                     "exceptionType": "KeyError", "message": "KeyError: 'a'"},
                                exit_code=1)
    await controller.on_pod_event(finished, "MODIFIED")
    # A restarted operator lists the failed Execution again.
    again = Controller(operator_client(client), dead_letters=DeadLetters(client))
    await again.on_execution_event(await execution(client, "dead"), None)
    listed = await client.get(path_for(API, "deadletters", NS))
    assert len(listed["items"]) == 1
    status = (await execution(client, "dead"))["status"]
    assert status["deadLetterName"] == listed["items"][0]["metadata"]["name"]


async def test_invalid_class_fails_without_launching(api: tuple[ApiServer, KubeClient]) -> None:
    _, client = api
    controller = Controller(operator_client(client))
    body = await create_execution(client, "nowhere", executionClassName="missing")
    await controller.on_execution_event(body, "ADDED")
    status = (await execution(client, "nowhere"))["status"]
    assert status["phase"] == "Failed"
    assert status["error"]["type"] == "validation_error"
    assert 'ExecutionClass "missing" does not exist' in status["error"]["message"]
    assert await pods(client) == []


async def test_finished_executions_leave_no_pods_in_memory(api: tuple[ApiServer, KubeClient]) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    body = await create_execution(client, "forget")
    await controller.on_execution_event(body, "ADDED")
    (pod,) = await pods(client)
    assert "sandbox.dev/code" not in controller.state.pods[(NS, pod["metadata"]["name"])]["metadata"].get(
        "annotations", {}), "the cached pod is a slim view without the payload"
    finished = await finish_pod(server, client, pod, {"success": True, "exitCode": 0}, exit_code=0)
    await controller.on_pod_event(finished, "MODIFIED")
    assert controller.state.pods == {}
    assert controller.state.executions == {}
    await controller.on_pod_event(finished, "MODIFIED")  # a late event about the same pod
    await controller.on_pod_event(finished, "DELETED")
    assert controller.state.pods == {}
    assert controller.state.vanished == {}
