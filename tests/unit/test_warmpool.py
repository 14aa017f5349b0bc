"""Warm pools, the pure part: pool pods, template hashes, the claim patch, the refill plan, conditions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from execution_operator import warmpool as wp
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.runner import warm
from execution_operator.sandbox import ExecutionRef, active_deadline_seconds

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CLS = ExecutionClassSpec.model_validate({
    "image": "img:1", "warmImports": ["decimal"], "resources": {"defaults": {"cpu": "250m", "memory": "128Mi"}},
    "env": [{"name": "A", "value": "1"}],
})
REF = ExecutionRef(namespace="ns", name="ex", uid="uid-1", correlation_id="corr-1")


def pool_pod(name: str = "p", *, state: str = "running", template: str | None = None, age: float = 10.0,
             waiting: str | None = None, deleting: bool = False) -> dict[str, Any]:
    pod = wp.build_pool_pod("ns", "pool", "pool-uid", "default", CLS, suffix=name)
    pod["metadata"]["resourceVersion"] = "7"
    pod["metadata"]["uid"] = f"uid-{name}"
    pod["metadata"]["creationTimestamp"] = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if template is not None:
        pod["metadata"]["labels"][wp.TEMPLATE_LABEL] = template
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    if state == "running":
        pod["status"] = {"phase": "Running", "containerStatuses": [{"name": "sandbox", "state": {
            "running": {"startedAt": "2026-01-01T11:59:55Z"}}}]}
    elif state == "pending":
        pod["status"] = {"phase": "Pending", "containerStatuses": [{"name": "sandbox", "state": {
            "waiting": {"reason": waiting or "ContainerCreating", "message": f"{waiting} message"}}}]}
    elif state == "failed":
        pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "sandbox", "state": {
            "terminated": {"exitCode": 1, "reason": "Error"}}}]}
    return pod


def never_stuck(_pod: Any, _seconds: float) -> ErrorInfo | None:
    return None


def test_a_pool_pod_is_the_hardened_class_pod_waiting_on_stdin() -> None:
    pod = wp.build_pool_pod("ns", "pool", "pool-uid", "default", CLS)
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["stdin"] is True
    assert container["stdinOnce"] is True
    assert container["tty"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert "activeDeadlineSeconds" not in spec  # set at the claim, from then on
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "250m",
                                                                                       "memory": "128Mi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert all(v["name"] != "payload" for v in spec["volumes"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[warm.WARM_ENV] == "1"
    assert env[warm.WARM_IMPORTS_ENV] == "decimal"
    assert env["A"] == "1"
    assert "SANDBOX_EXECUTION" not in env
    assert "SANDBOX_ATTEMPT" not in env
    meta = pod["metadata"]
    assert meta["labels"][wp.POOL_LABEL] == "pool"
    assert meta["labels"]["sandbox.dev/network"] == "deny"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "execution-operator"
    assert meta["ownerReferences"] == [{"apiVersion": "sandbox.dev/v1alpha1", "kind": "WarmPool", "name": "pool",
                                        "uid": "pool-uid", "controller": True, "blockOwnerDeletion": True}]
    assert "annotations" not in meta  # no code, no input: nothing of any Execution before the claim
    assert len(meta["name"]) <= 63


@pytest.mark.parametrize("change", [
    {"image": "img:2"}, {"env": [{"name": "A", "value": "2"}]}, {"warmImports": ["json"]},
    {"resources": {"defaults": {"cpu": "1", "memory": "128Mi"}}}, {"runtimeClassName": "gvisor"},
    {"allowNetwork": True},
])
def test_the_template_hash_follows_what_the_pod_is_built_from(change: dict[str, Any]) -> None:
    other = ExecutionClassSpec.model_validate({**CLS.to_k8s(), **change})
    assert wp.template_hash(other) != wp.template_hash(CLS)


def test_the_template_hash_ignores_what_does_not_shape_the_pod() -> None:
    other = ExecutionClassSpec.model_validate({**CLS.to_k8s(), "circuitBreaker": {"failureThreshold": 9},
                                               "maxConcurrent": 3})
    assert wp.template_hash(other) == wp.template_hash(CLS)


def test_the_claim_is_guarded_and_hands_the_pod_to_the_execution() -> None:
    pod = pool_pod(age=100)
    spec = ExecutionSpec(code="x", timeoutSeconds=5)
    patch = wp.claim_patch(pod, REF, "default", spec, CLS, 2, NOW)
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "7"
    assert meta["labels"][wp.POOL_LABEL] is None  # merge patch: removed, the pod leaves the pool
    assert meta["labels"][wp.CLAIMED_FROM_LABEL] == "pool"
    assert meta["labels"]["sandbox.dev/execution"] == "ex"
    assert meta["labels"]["sandbox.dev/attempt"] == "2"
    assert meta["labels"]["sandbox.dev/correlation-id"] == "corr-1"
    assert meta["ownerReferences"] == [{"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution", "name": "ex",
                                        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert patch["spec"]["activeDeadlineSeconds"] == 101 + active_deadline_seconds(spec, CLS)
    claimed = {**pod, "metadata": {**pod["metadata"], "labels": {
        k: v for k, v in {**pod["metadata"]["labels"], **meta["labels"]}.items() if v is not None},
        "ownerReferences": meta["ownerReferences"]}}
    assert wp.claimed_for(claimed, "uid-1", 2)
    assert not wp.claimed_for(claimed, "uid-1", 1)
    assert not wp.claimed_for(claimed, "other", 2)
    assert not wp.claimed_for(pod, "pool-uid", 2)  # owned by the pool, not claimed


def test_only_specs_at_the_class_defaults_fit_a_pool_pod() -> None:
    assert wp.fits_pool(ExecutionSpec(code="x"), CLS)
    assert wp.fits_pool(ExecutionSpec.model_validate({"code": "x", "resources": {"cpu": "250m"}}), CLS)
    assert not wp.fits_pool(ExecutionSpec.model_validate({"code": "x", "resources": {"memory": "1Gi"}}), CLS)


def test_the_payload_round_trips_through_the_runners_parser() -> None:
    spec = ExecutionSpec.model_validate({"code": "print(1)", "input": {"k": ["é", 1]}, "timeoutSeconds": 7})
    parsed = warm.parse_payload(wp.payload(REF, spec, 3))
    assert parsed["code"] == "print(1)"
    assert json.loads(parsed["input"]) == {"k": ["é", 1]}
    assert (parsed["timeoutSeconds"], parsed["attempt"], parsed["execution"]) == (7, 3, "ex")
    assert warm.payload_timeout(wp.payload(REF, spec, 3), 30.0) == 7.0


def test_handed_over_needs_the_runners_marker() -> None:
    assert wp.handed_over(f"import noise\n{warm.PAYLOAD_MARKER} 120\nout\n")
    assert not wp.handed_over("out\n")
    assert not wp.handed_over(None)


def test_plan_keeps_ready_pods_and_fills_the_rest() -> None:
    template = wp.template_hash(CLS)
    pods = [pool_pod("a"), pool_pod("b", state="pending", age=1)]
    plan = wp.plan_pool(pods, replicas=4, template=template, now=NOW, pending_timeout=60, stuck=never_stuck)
    assert [p["metadata"]["name"] for p in plan.ready] == [pods[0]["metadata"]["name"]]
    assert len(plan.starting) == 1
    assert plan.create == 1
    assert not plan.delete
    assert plan.wake_at is not None
    assert plan.wake_at > NOW


def test_a_large_pool_fills_a_quarter_at_a_time() -> None:
    plan = wp.plan_pool([], replicas=40, template=wp.template_hash(CLS), now=NOW, pending_timeout=60,
                        stuck=never_stuck)
    assert plan.create == 10 == wp.surge(40)


def test_plan_replaces_stale_finished_and_stuck_pods_and_trims_surplus() -> None:
    template = wp.template_hash(CLS)
    stale = pool_pod("old", template="0000000000")
    finished = pool_pod("done", state="failed")
    stuck = pool_pod("stuck", state="pending", waiting="ImagePullBackOff", age=200)
    going = pool_pod("going", deleting=True)
    error = ErrorInfo.of(ErrorType.IMAGE_PULL_ERROR, "cannot pull")

    def classify(pod: Any, seconds: float) -> ErrorInfo | None:
        return error if seconds > 60 else None

    plan = wp.plan_pool([stale, finished, stuck, going, pool_pod("a"), pool_pod("b"), pool_pod("c")], replicas=2,
                        template=template, now=NOW, pending_timeout=60, stuck=classify)
    deleted = {p["metadata"]["name"]: e for p, e in plan.delete}
    assert set(deleted) == {stale["metadata"]["name"], finished["metadata"]["name"], stuck["metadata"]["name"]}
    assert deleted[stale["metadata"]["name"]] is None  # replaced, not a failure
    assert deleted[stuck["metadata"]["name"]] == error
    # Ended unclaimed: the sandbox failed by itself, a failure that trips the breaker (no restart loop).
    ended = deleted[finished["metadata"]["name"]]
    assert ended is not None
    assert ended.type == ErrorType.INTERNAL_ERROR
    assert "exit code 1" in ended.message
    assert len(plan.surplus) == 1
    assert plan.create == 0


def test_a_pool_without_its_class_keeps_nothing() -> None:
    plan = wp.plan_pool([pool_pod("a")], replicas=3, template=None, now=NOW, pending_timeout=60, stuck=never_stuck)
    assert len(plan.delete) == 1
    assert plan.create == 0


@pytest.mark.parametrize(("kwargs", "pods", "expected"), [
    ({}, ["running", "running"], ("True", "Ready")),
    ({"class_missing": True}, [], ("False", "ClassNotFound")),
    ({"circuit_message": "open"}, [], ("False", "CircuitOpen")),
    ({"quota_message": "quota"}, [], ("False", "QuotaExceeded")),
    ({}, ["pull"], ("False", "ImagePullFailing")),
    ({}, ["running"], ("False", "Filling")),
])
def test_the_ready_condition_says_why_a_pool_cannot_fill(kwargs: dict[str, Any], pods: list[str],
                                                          expected: tuple[str, str]) -> None:
    built = [pool_pod(str(i), state="pending", waiting="ErrImagePull", age=1) if kind == "pull" else pool_pod(str(i))
             for i, kind in enumerate(pods)]
    plan = wp.plan_pool(built, replicas=2, template=wp.template_hash(CLS), now=NOW, pending_timeout=60,
                        stuck=never_stuck)
    args = {"class_missing": False, "circuit_message": None, "quota_message": None, **kwargs}
    status, reason, _ = wp.pool_condition(plan, replicas=2, **args)
    assert (status, reason) == expected
