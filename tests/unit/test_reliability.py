# ruff: noqa: F811
"""Issue 16's failures, one test each: API faults and hostile objects never give a wrong result, run code
twice, stop the operator or open a healthy class's circuit.

The controller runs against the in-process API server with its fault injection; the test plays the
kubelet (`finish_pod`). Backoffs are shortened so that retried paths finish quickly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_controller import (
    API,
    NS,
    api,  # noqa: F401 (the fixture; tests take it as a parameter)
    create_execution,
    execution,
    finish_pod,
    operator_client,
    pods,
)

from execution_operator import controller as controller_module
from execution_operator import k8s, kopf_guard, metrics, safejson
from execution_operator.bodies import correlation_id
from execution_operator.classify import classify_create_error, classify_finished_pod
from execution_operator.controller import Controller
from execution_operator.k8s import KubeClient, path_for
from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.sandbox import ExecutionRef, build_pod
from execution_operator.validation import validate_execution
from localcluster.apiserver import ApiServer, FaultRule

Api = tuple[ApiServer, KubeClient]
OK = {"success": True, "exitCode": 0, "output": 7}


@pytest.fixture(autouse=True)
def quick_backoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "TRANSIENT_BACKOFF", (0.0, 0.01, 0.01, 0.01))
    monkeypatch.setattr(controller_module, "RECONCILE_ERROR_BACKOFF", (0.02, 0.05, 0.1))


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 15.0) -> Any:
    """The first truthy result of `check`, polled for up to `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def phase_of(client: KubeClient, name: str, *phases: str) -> dict[str, Any] | None:
    body = await execution(client, name)
    return body if (body.get("status") or {}).get("phase") in phases else None


async def breaker_failures(client: KubeClient, name: str = "default") -> int:
    cls = await client.get(path_for(API, "executionclasses", None, name))
    return int(((cls.get("status") or {}).get("circuitBreaker") or {}).get("failureCount") or 0)


async def run_to_pod(controller: Controller, client: KubeClient, name: str, **spec: Any) -> dict[str, Any]:
    body = await create_execution(client, name, **spec)
    await controller.on_execution_event(body, "ADDED")
    (pod,) = await eventually(lambda: pods(client))
    return pod


async def finish(server: ApiServer, client: KubeClient, controller: Controller, pod: dict[str, Any],
                 report: dict[str, Any] = OK) -> None:
    finished = await finish_pod(server, client, pod, report, exit_code=0 if report["success"] else 1)
    await controller.on_pod_event(finished, "MODIFIED")


# 1 -- an object too deep to decode ------------------------------------------------------------------


def test_decoding_never_fails_for_depth() -> None:
    deep = "[" * 12000 + "]" * 12000  # deeper than any recursion limit
    event = ('{"type":"ADDED","object":{"apiVersion":"sandbox.dev/v1alpha1","kind":"Execution",'
             '"metadata":{"name":"deep"},"spec":{"code":"x = \\"[{\\"","input":' + deep + '}}}')
    decoded = safejson.loads(event)
    body = decoded["object"]
    assert safejson.quarantined(body) is not None
    assert safejson.quarantined(body).startswith("spec.input[0]")
    assert body["spec"]["code"] == 'x = "[{"'  # brackets inside strings are not structure
    assert safejson.quarantined(decoded) is None  # the object carries the mark, not the event
    assert safejson.loads('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}


async def test_an_object_too_deep_is_refused_and_the_rest_served(api: Api) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    stored = await create_execution(client, "deep", input=[1])
    deep = "[" * 12000 + "]" * 12000
    clipped = safejson.loads(json.dumps(stored)[:-2] + ',"input":' + deep + "}}")
    assert safejson.quarantined(clipped)
    await controller.on_execution_event(clipped, "ADDED")
    body = await execution(client, "deep")
    assert body["status"]["phase"] == "Failed"
    assert body["status"]["error"]["type"] == "validation_error"
    assert "nested more than 100 levels deep" in body["status"]["error"]["message"]
    assert await pods(client) == []
    assert not [d for d in (await client.get(path_for(API, "deadletters", NS)))["items"]]
    pod = await run_to_pod(controller, client, "after-deep")  # the next tenant is served
    await finish(server, client, controller, pod)
    assert (await execution(client, "after-deep"))["status"]["output"] == 7


def test_input_deeper_than_the_limit_is_refused_even_when_it_decodes() -> None:
    nested: Any = 1
    for _ in range(150):
        nested = [nested]
    problem = validate_execution(ExecutionSpec(code="x", input=nested), ExecutionClassSpec(image="i"),
                                 class_name="default")
    assert problem is not None
    assert "nested more than 100 levels deep" in problem
    flat = ExecutionSpec(code="x", input={"a": [[1, 2], {"b": None}]})
    assert validate_execution(flat, ExecutionClassSpec(image="i"), class_name="default") is None


async def test_kopf_decodes_watch_events_and_lists_with_safejson() -> None:
    kopf_guard.install()
    from kopf._cogs.clients import api as kopf_api
    from kopf._cogs.clients import watching as kopf_watching

    assert kopf_api.json.loads is safejson.loads
    assert kopf_api.get is kopf_guard._get  # used by kopf's list (fetching.py) for its pages
    assert kopf_watching.infinite_watch is kopf_guard.resilient_watch


# 12 -- a failed watch stream does not end the operator ---------------------------------------------


async def test_a_failing_watch_stream_is_reopened(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []

    async def flaky_watch(**_: Any) -> Any:
        opened.append(1)
        yield {"type": "ADDED", "n": len(opened)}
        if len(opened) < 3:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    monkeypatch.setattr(kopf_guard, "_original_watch", flaky_watch)
    monkeypatch.setattr(kopf_guard, "WATCH_FAILURE_BACKOFF", (0.0,))
    seen = [event["n"] async for event in kopf_guard.resilient_watch(resource="executions")]
    assert seen == [1, 2, 3]


def test_a_supervisor_failure_after_the_code_started_is_not_the_platforms() -> None:
    def pod(code: int) -> dict[str, Any]:
        return {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "sandbox", "state": {"terminated": {"exitCode": code, "reason": "Error",
                                                         "startedAt": "2026-01-01T00:00:00Z"}}}]}}

    after = classify_finished_pod(pod(3), "")
    assert after.error is not None
    assert after.error.type == "internal_error"
    assert after.user_code_started_at
    before = classify_finished_pod(pod(2), "")
    assert before.error is not None
    assert before.user_code_started_at is None


# 2 -- the log cannot be read ------------------------------------------------------------------------


async def test_a_log_read_failing_a_while_still_records_the_output(api: Api) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    pod = await run_to_pod(controller, client, "log-flaky")
    server.faults.add(FaultRule(resource="pods", subresource="log", status=500, times=12))
    await finish(server, client, controller, pod)
    body = await eventually(lambda: phase_of(client, "log-flaky", "Succeeded", "Failed"))
    assert body["status"]["phase"] == "Succeeded"
    assert body["status"]["output"] == 7


async def test_a_log_that_stays_unreadable_is_never_a_success_without_output(api: Api) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    pod = await run_to_pod(controller, client, "log-gone", retry={"maxAttempts": 1})
    server.faults.add(FaultRule(resource="pods", subresource="log", status=500))
    await finish(server, client, controller, pod)
    body = await eventually(lambda: phase_of(client, "log-gone", "Succeeded", "Failed"))
    assert body["status"]["phase"] == "Failed"
    assert body["status"]["error"]["type"] == "internal_error"
    assert "log could not be read" in body["status"]["error"]["message"]
    assert body["status"].get("output") is None
    assert await breaker_failures(client) == 0


# 3 -- the launch always finds the attempt's pod ---------------------------------------------------------


async def test_a_lost_launch_status_then_an_open_circuit_adopts_the_running_pod(api: Api) -> None:
    server, client = api
    body = await create_execution(client, "lost-write", retry={"maxAttempts": 3})
    ref = ExecutionRef(NS, "lost-write", body["metadata"]["uid"], correlation_id(body))
    manifest = build_pod(ref, ExecutionSpec.model_validate(body["spec"]),
                         ExecutionClassSpec(image="ghcr.io/execution-operator/sandbox:0.1.0"), attempt=1)
    made = await client.post(path_for("v1", "pods", NS), manifest)  # created; its status write was lost
    cls = await client.patch(path_for(API, "executionclasses", None, "default"),
                             {"metadata": {"annotations": {"sandbox.dev/circuit-breaker": "force-open"}}})
    controller = Controller(operator_client(client))
    await controller.on_class_event(cls, "MODIFIED")
    await controller.on_execution_event(body, "MODIFIED")
    status = (await execution(client, "lost-write"))["status"]
    assert status.get("podName") == made["metadata"]["name"], status
    assert status["phase"] in ("Pending", "Running")
    await finish(server, client, controller, made)
    done = await eventually(lambda: phase_of(client, "lost-write", "Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["output"] == 7
    assert [p["metadata"]["name"] for p in await pods(client)] == [made["metadata"]["name"]]


async def test_a_failed_status_write_then_a_throttled_create_never_runs_the_code_twice(
    api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, client = api
    monkeypatch.setattr(controller_module, "RECONCILE_ERROR_BACKOFF", (60.0,))  # the test drives each retry
    controller = Controller(operator_client(client))
    key = (NS, "write-lost")
    server.faults.add(FaultRule(method="PATCH", resource="executions", subresource="status", status=500, times=5))
    body = await create_execution(client, "write-lost", retry={"maxAttempts": 3})
    await controller.on_execution_event(body, "ADDED")  # the pod is made; the status write fails
    assert len(await pods(client)) == 1
    assert not (await execution(client, "write-lost")).get("status")
    server.faults.add(FaultRule(method="POST", resource="pods", status=429, times=5))
    await controller.reconcile(key)  # the repeated create is throttled: an API error, not the attempt's end
    await controller.reconcile(key)
    status = (await execution(client, "write-lost"))["status"]
    (pod,) = await pods(client)
    assert (status["phase"], status["attempt"], status["podName"]) == ("Pending", 1, pod["metadata"]["name"])


# 4 -- transient API errors are API errors ------------------------------------------------------------


async def test_throttled_and_failing_pod_creates_are_retried_and_never_trip_the_breaker(api: Api) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    server.faults.add(FaultRule(method="POST", resource="pods", status=429, retry_after=0, times=6))
    server.faults.add(FaultRule(method="POST", resource="pods", status=500, times=6))
    pod = await run_to_pod(controller, client, "throttled")
    await finish(server, client, controller, pod)
    body = await eventually(lambda: phase_of(client, "throttled", "Succeeded", "Failed"))
    assert body["status"]["phase"] == "Succeeded"
    assert body["status"]["attempt"] == 1
    assert await breaker_failures(client) == 0


def test_api_errors_carry_retry_after() -> None:
    exc = k8s.ApiError(429, {"reason": "TooManyRequests", "details": {"retryAfterSeconds": 3}})
    assert exc.transient
    assert exc.retry_after == 3
    assert k8s.ApiError(503, None, retry_after=7).retry_after == 7
    assert not k8s.ApiError(422, {"reason": "Invalid"}).transient


# 5 -- the code cannot open its class's circuit ----------------------------------------------------------


async def test_failures_after_the_code_started_never_count_against_the_class(api: Api) -> None:
    _, client = api
    controller = Controller(operator_client(client))
    await client.patch(path_for(API, "executionclasses", None, "default"),
                       {"spec": {"circuitBreaker": {"failureThreshold": 1}}})
    await controller.on_class_event(await client.get(path_for(API, "executionclasses", None, "default")), None)
    pod = await run_to_pod(controller, client, "exit-3", retry={"maxAttempts": 1})
    status = {"phase": "Failed", "containerStatuses": [{
        "name": "sandbox", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
        "state": {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": "2026-01-01T00:00:00Z",
                                 "finishedAt": "2026-01-01T00:00:01Z"}}}]}
    finished = await client.patch(path_for("v1", "pods", NS, pod["metadata"]["name"], "status"), {"status": status})
    await controller.on_pod_event(finished, "MODIFIED")
    body = await eventually(lambda: phase_of(client, "exit-3", "Failed"))
    assert body["status"]["error"]["type"] == "internal_error"
    assert await breaker_failures(client) == 0


# 6 -- a timer survives a failed wake-up ---------------------------------------------------------------


async def test_a_failed_wake_up_read_schedules_another(api: Api) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    await create_execution(client, "timer", ttlSecondsAfterFinished=0)
    server.faults.add(FaultRule(method="GET", resource="executions", name_pattern="timer", status=429, times=5))
    await controller._wake((NS, "timer"))  # must not raise: a raise here was a lost timer
    assert (NS, "timer") in controller.state.timers
    await eventually(lambda: pods(client))  # the next wake-up read the Execution and launched it


# 7 -- an over-long correlation id ---------------------------------------------------------------------


async def test_an_over_long_correlation_id_annotation_still_gets_a_status(api: Api) -> None:
    _, client = api
    controller = Controller(operator_client(client))
    body = await client.post(path_for(API, "executions", NS), {
        "apiVersion": API, "kind": "Execution",
        "metadata": {"name": "long-cid", "annotations": {"sandbox.dev/correlation-id": "c" * 303}},
        "spec": {"code": "print(1)"},
    })
    await controller.on_execution_event(body, "ADDED")
    status = (await execution(client, "long-cid"))["status"]
    assert status["phase"] == "Pending"
    assert status["correlationId"] == "c" * 128


# 8 -- resources ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("resources", [{"cpu": "-1"}, {"memory": "-256Mi"}, {"cpu": "0"}, {"memory": "0"}])
def test_negative_or_zero_resources_are_a_validation_error(resources: dict[str, str]) -> None:
    spec = ExecutionSpec.model_validate({"code": "x", "resources": resources})
    problem = validate_execution(spec, ExecutionClassSpec(image="i"), class_name="default")
    assert problem is not None
    assert "must be more than zero" in problem


def test_class_defaults_are_checked_against_the_class_maximum() -> None:
    cls = ExecutionClassSpec.model_validate({"image": "i", "resources": {"defaults": {"memory": "1Gi"},
                                                                          "max": {"memory": "512Mi"}}})
    problem = validate_execution(ExecutionSpec(code="x"), cls, class_name="small")
    assert problem is not None
    assert "resources.defaults.memory" in problem
    assert "512Mi" in problem
    within = ExecutionSpec.model_validate({"code": "x", "resources": {"memory": "256Mi"}})
    assert validate_execution(within, cls, class_name="small") is None


# 9 -- Events for long names ----------------------------------------------------------------------------


async def test_events_are_posted_for_the_longest_names(api: Api) -> None:
    _, client = api
    controller = Controller(operator_client(client))
    name = "e" * 253
    body = await create_execution(client, name)
    await controller.on_execution_event(body, "ADDED")

    async def events() -> list[dict[str, Any]]:
        items = (await client.get(path_for("v1", "events", NS)))["items"]
        return [e for e in items if e["involvedObject"]["name"] == name]

    posted = await eventually(events)
    assert all(len(e["metadata"]["name"]) <= 253 for e in posted)


# 10 -- metric labels from bounded sets -----------------------------------------------------------------


async def test_classes_that_do_not_exist_share_one_metric_label(
    api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, client = api
    own = metrics.OperatorMetrics()
    monkeypatch.setattr(metrics, "METRICS", own)
    controller = Controller(operator_client(client))
    for i in range(5):
        body = await create_execution(client, f"nowhere-{i}", executionClassName=f"random-{i}")
        await controller.on_execution_event(body, "ADDED")
    labels = {s.labels.get("class") for f in own.registry.collect() for s in f.samples if "class" in s.labels}
    assert labels == {"unknown"}


# issue 11 -- refusals keep the server's words; timers end with the Execution ---------------------------


def test_an_admission_refusal_keeps_the_servers_message() -> None:
    said = 'pods "x" is forbidden: RuntimeClass "no-such-runtime" not found'
    error = classify_create_error(403, {"reason": "Forbidden", "message": said})
    assert error.type == "config_error"
    assert said in error.message
    assert error.details == said


async def test_a_finished_execution_keeps_no_timer(api: Api) -> None:
    server, client = api
    controller = Controller(operator_client(client))
    pod = await run_to_pod(controller, client, "no-timer")
    assert (NS, "no-timer") in controller.state.timers  # the pending timeout
    await finish(server, client, controller, pod)
    await eventually(lambda: phase_of(client, "no-timer", "Succeeded"))
    assert (NS, "no-timer") not in controller.state.timers


def test_what_decodes_does_not_depend_on_the_recursion_limit() -> None:
    """A library (cel-python, for one) may raise or lower the limit; safejson decides by depth alone."""
    deep = ('{"metadata":{"name":"x"},"spec":{"input":' + "[" * 600 + "]" * 600 + "}}").encode()
    shallow = ('{"metadata":{"name":"y"},"spec":{"input":' + "[" * 400 + "]" * 400 + "}}").encode()
    before = sys.getrecursionlimit()
    try:
        for limit in (1500, 40000):
            sys.setrecursionlimit(limit)
            assert safejson.quarantined(safejson.loads(deep)) is not None
            assert safejson.quarantined(safejson.loads(shallow)) is None
    finally:
        sys.setrecursionlimit(before)
