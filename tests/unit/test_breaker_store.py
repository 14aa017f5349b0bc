"""Breaker persistence: guarded writes, conflict retries, concurrent writers that lose nothing."""

from __future__ import annotations

import asyncio
import copy
import itertools
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from execution_operator.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitState,
    ControlMode,
    admit,
    advance,
    record_failure,
    record_success,
)
from execution_operator.breaker_control import MODE_ANNOTATION, RESET_ANNOTATION, apply_control
from execution_operator.breaker_store import (
    BreakerConflictError,
    admit_launch,
    breaker_of,
    class_path,
    record_launch,
    status_patch,
    sync_breaker,
    update_breaker,
)
from execution_operator.errors import ErrorType
from localcluster.schema import default_and_prune, validate

T0 = datetime(2026, 7, 1, 10, 0, 0, tzinfo=UTC)
NAME = "default"
PATH = class_path(NAME)


class FakeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = {"kind": "Status", "code": status, "reason": reason, "message": message}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeCluster:
    """One ExecutionClass behind an API that enforces resourceVersion preconditions like the server.

    Each call yields to the event loop a random number of times so concurrent writers interleave.
    """

    def __init__(self, obj: dict[str, Any], *, seed: int = 0, prune: tuple[str, ...] = ()) -> None:
        self.obj = copy.deepcopy(obj)
        self.obj.setdefault("metadata", {})["resourceVersion"] = "1"
        self.rng = random.Random(seed)
        self.prune = prune
        self.gets = 0
        self.patches = 0
        self.conflicts = 0
        self.history: list[BreakerState] = [breaker_of(self.obj)]
        self.before_patch: Callable[[], None] | None = None

    @property
    def rv(self) -> int:
        return int(self.obj["metadata"]["resourceVersion"])

    def bump(self) -> None:
        """Someone else (kopf, kubectl) wrote the object."""
        self.obj["metadata"]["resourceVersion"] = str(self.rv + 1)

    async def _interleave(self) -> None:
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        assert path == PATH
        self.gets += 1
        await self._interleave()
        return copy.deepcopy(self.obj)

    async def patch(
        self, path: str, body: Any, *, content_type: str = "application/merge-patch+json"
    ) -> dict[str, Any]:
        assert path == PATH + "/status"
        assert content_type == "application/merge-patch+json"
        await self._interleave()
        if self.before_patch:
            self.before_patch()
        self.patches += 1
        wanted = body.get("metadata", {}).get("resourceVersion")
        assert wanted is not None, "every breaker write must be guarded"
        if wanted != self.obj["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise FakeApiError(409, "Conflict", "the object has been modified")
        # The status subresource takes only status (and the precondition) from the patch.
        status = merge_patch(self.obj.get("status"), body.get("status"))
        for name in self.prune:
            status.get("circuitBreaker", {}).pop(name, None)
        self.obj["status"] = status
        self.bump()
        self.history.append(breaker_of(self.obj))
        # The answer is the object as this write left it, even if others write before it arrives.
        answer = copy.deepcopy(self.obj)
        await self._interleave()
        return answer


def exc_object(
    *, breaker: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "ExecutionClass",
        "metadata": {"name": NAME, "generation": 3, "annotations": annotations or {}},
        "spec": {
            "image": "python:3.11",
            "circuitBreaker": {"failureThreshold": 3, "openSeconds": 30, "successThreshold": 2},
            **spec,
        },
    }
    if breaker is not None:
        obj["status"] = {"circuitBreaker": breaker}
    return obj


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def available(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Available")


# -- single writer ------------------------------------------------------------------------------


async def test_first_failure_writes_status_and_condition_keeping_other_conditions() -> None:
    obj = exc_object()
    other = {
        "type": "Ready",
        "status": "True",
        "reason": "Installed",
        "message": "",
        "lastTransitionTime": "x",
    }
    obj["status"] = {"conditions": [other]}
    cluster = FakeCluster(obj)
    state, transitions = await record_launch(
        cluster, NAME, reached_user_code=False, error_type=ErrorType.IMAGE_PULL_ERROR, clock=Clock()
    )
    assert transitions == []
    assert state.failure_count == 1
    stored = cluster.obj["status"]
    assert stored["circuitBreaker"]["failureCount"] == 1
    assert stored["circuitBreaker"]["state"] == "closed"
    assert stored["circuitBreaker"]["lastFailure"]["type"] == "image_pull_error"
    assert stored["conditions"][0] == other
    condition = available(cluster.obj)
    assert (condition["status"], condition["reason"], condition["observedGeneration"]) == (
        "True",
        "CircuitClosed",
        3,
    )


async def test_opening_writes_open_state_and_reports_the_transition() -> None:
    cluster = FakeCluster(exc_object())
    clock = Clock()
    found: list[Any] = []
    for _ in range(3):
        _, transitions = await record_launch(
            cluster, NAME, reached_user_code=False, error_type=ErrorType.UNSCHEDULABLE, clock=clock
        )
        found += transitions
        clock.tick(1)
    assert [(t.from_state, t.to) for t in found] == [(CircuitState.CLOSED, "open")]
    breaker = cluster.obj["status"]["circuitBreaker"]
    assert breaker["state"] == "open"
    assert breaker["openedAt"] == "2026-07-01T10:00:02Z"
    assert breaker["retryAt"] == "2026-07-01T10:00:32Z"
    condition = available(cluster.obj)
    assert (condition["status"], condition["reason"]) == ("False", "CircuitOpen")
    assert condition["lastTransitionTime"] == "2026-07-01T10:00:02Z"


async def test_nothing_is_written_when_nothing_changes() -> None:
    cluster = FakeCluster(exc_object())
    for _ in range(5):
        admission, transitions = await admit_launch(cluster, NAME, clock=Clock())
        assert admission.allowed
        assert transitions == []
    # User-code failures are successes for the breaker; with no failures counted nothing changes...
    await record_launch(
        cluster, NAME, reached_user_code=True, error_type=ErrorType.VALUE_ERROR, clock=Clock()
    )
    # ...except the first write of the Available condition.
    assert cluster.patches == 1
    await record_launch(cluster, NAME, reached_user_code=True, clock=Clock())
    await sync_breaker(cluster, NAME, clock=Clock())
    assert cluster.patches == 1


async def test_a_cached_object_saves_the_read() -> None:
    cluster = FakeCluster(exc_object())
    admission, _ = await admit_launch(cluster, NAME, clock=Clock(), initial=copy.deepcopy(cluster.obj))
    assert admission.allowed
    assert cluster.gets == 0


async def test_a_stale_cached_object_is_re_read_after_the_conflict() -> None:
    cluster = FakeCluster(exc_object())
    stale = copy.deepcopy(cluster.obj)
    await record_launch(
        cluster, NAME, reached_user_code=False, error_type=ErrorType.CONFIG_ERROR, clock=Clock()
    )
    state, _ = await record_launch(
        cluster,
        NAME,
        reached_user_code=False,
        error_type=ErrorType.CONFIG_ERROR,
        clock=Clock(),
        initial=stale,
    )
    assert cluster.conflicts == 1
    assert state.failure_count == 2
    assert cluster.obj["status"]["circuitBreaker"]["failureCount"] == 2


async def test_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    obj = exc_object()
    since = "2026-06-30T00:00:00Z"
    obj["status"] = {
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "CircuitClosed",
                "message": "",
                "lastTransitionTime": since,
            }
        ]
    }
    cluster = FakeCluster(obj)
    await record_launch(
        cluster, NAME, reached_user_code=False, error_type=ErrorType.INTERNAL_ERROR, clock=Clock()
    )
    assert available(cluster.obj)["lastTransitionTime"] == since
    assert "1 consecutive" in available(cluster.obj)["message"]


async def test_an_external_write_between_read_and_write_is_retried() -> None:
    cluster = FakeCluster(exc_object())
    writes = iter([True])
    cluster.before_patch = lambda: cluster.bump() if next(writes, False) else None
    state, _ = await record_launch(
        cluster, NAME, reached_user_code=False, error_type=ErrorType.IMAGE_PULL_ERROR, clock=Clock()
    )
    assert cluster.conflicts == 1
    assert cluster.patches == 2
    assert cluster.gets == 2
    assert state.failure_count == 1
    assert cluster.obj["status"]["circuitBreaker"]["failureCount"] == 1


async def test_endless_conflicts_give_up_with_a_clear_error() -> None:
    cluster = FakeCluster(exc_object())
    cluster.before_patch = cluster.bump
    with pytest.raises(BreakerConflictError, match="3 write conflicts"):
        await update_breaker(
            cluster,
            NAME,
            lambda s: record_failure(s, BreakerPolicy(), ErrorType.INTERNAL_ERROR, "x", T0),
            max_conflicts=3,
            conflict_backoff=0,
        )
    assert cluster.patches == 4
    assert "circuitBreaker" not in cluster.obj.get("status", {})


@pytest.mark.parametrize("status", [404, 422, 500])
async def test_other_api_errors_propagate(status: int) -> None:
    cluster = FakeCluster(exc_object())

    def fail() -> None:
        raise FakeApiError(status, "Invalid")

    cluster.before_patch = fail
    with pytest.raises(FakeApiError) as info:
        await record_launch(
            cluster, NAME, reached_user_code=False, error_type=ErrorType.INTERNAL_ERROR, clock=Clock()
        )
    assert info.value.status == status
    assert cluster.gets == 1


async def test_update_breaker_returns_the_mutation_result() -> None:
    cluster = FakeCluster(exc_object())
    state, result = await update_breaker(
        cluster, NAME, lambda s: (s.model_copy(update={"failure_count": 2}), "done"), clock=Clock()
    )
    assert result == "done"
    assert state.failure_count == 2
    assert cluster.obj["status"]["circuitBreaker"]["failureCount"] == 2


# -- restart, gating, control ---------------------------------------------------------------------


async def test_a_restarted_operator_resumes_open_from_the_status() -> None:
    cluster = FakeCluster(exc_object())
    clock = Clock()
    for _ in range(3):
        await record_launch(
            cluster, NAME, reached_user_code=False, error_type=ErrorType.IMAGE_PULL_ERROR, clock=clock
        )
    # A new process knows nothing but the stored object.
    restarted = FakeCluster(copy.deepcopy(cluster.obj))
    clock.tick(10)
    admission, _ = await admit_launch(restarted, NAME, clock=clock, holder="ns/x#1")
    assert not admission.allowed
    assert admission.retry_at == T0 + timedelta(seconds=30)
    clock.tick(25)
    admission, transitions = await admit_launch(restarted, NAME, clock=clock, holder="ns/x#1")
    assert admission.allowed
    assert admission.probe
    assert [t.to for t in transitions] == ["half_open"]
    assert restarted.obj["status"]["circuitBreaker"]["probes"][0]["holder"] == "ns/x#1"
    assert available(restarted.obj)["reason"] == "CircuitHalfOpen"


async def test_probes_close_the_breaker_through_the_store() -> None:
    open_state = record_failure(
        BreakerState(), BreakerPolicy(failure_threshold=1), ErrorType.IMAGE_PULL_ERROR, "x", T0
    )[0]
    cluster = FakeCluster(exc_object(breaker=open_state.to_status()))
    clock = Clock(T0 + timedelta(seconds=31))
    for holder in ("a", "b"):
        admission, _ = await admit_launch(cluster, NAME, clock=clock, holder=holder)
        assert admission.probe
    assert not (await admit_launch(cluster, NAME, clock=clock, holder="c"))[0].allowed
    await record_launch(cluster, NAME, reached_user_code=True, holder="a", clock=clock)
    _, transitions = await record_launch(cluster, NAME, reached_user_code=True, holder="b", clock=clock)
    assert [t.to for t in transitions] == ["closed"]
    assert cluster.obj["status"]["circuitBreaker"]["state"] == "closed"
    assert available(cluster.obj)["status"] == "True"


async def test_control_annotations_take_effect_on_the_next_update() -> None:
    cluster = FakeCluster(exc_object(annotations={MODE_ANNOTATION: "force-open"}))
    admission, transitions = await admit_launch(cluster, NAME, clock=Clock())
    assert not admission.allowed
    assert [t.reason for t in transitions] == ["ForcedOpen"]
    assert cluster.obj["status"]["circuitBreaker"]["forced"] == "force-open"
    assert "forced open" in available(cluster.obj)["message"]
    # Back to auto plus a reset: the sync applies both once.
    cluster.obj["metadata"]["annotations"] = {MODE_ANNOTATION: "auto", RESET_ANNOTATION: "r1"}
    state, transitions = await sync_breaker(cluster, NAME, clock=Clock())
    assert state.forced == ControlMode.AUTO
    assert state.last_reset == "r1"
    patches = cluster.patches
    await sync_breaker(cluster, NAME, clock=Clock())
    assert cluster.patches == patches


async def test_sync_moves_open_to_half_open_when_due() -> None:
    open_state = record_failure(
        BreakerState(), BreakerPolicy(failure_threshold=1), ErrorType.INTERNAL_ERROR, "x", T0
    )[0]
    cluster = FakeCluster(exc_object(breaker=open_state.to_status()))
    state, transitions = await sync_breaker(cluster, NAME, clock=Clock(T0 + timedelta(seconds=5)))
    assert state.state == CircuitState.OPEN
    assert transitions == []
    assert cluster.patches == 1
    state, transitions = await sync_breaker(cluster, NAME, clock=Clock(T0 + timedelta(seconds=30)))
    assert state.state == CircuitState.HALF_OPEN
    assert [t.to for t in transitions] == ["half_open"]


async def test_a_schema_that_drops_fields_is_reported() -> None:
    open_state = record_failure(
        BreakerState(), BreakerPolicy(failure_threshold=1), ErrorType.INTERNAL_ERROR, "x", T0
    )[0]
    cluster = FakeCluster(exc_object(breaker=open_state.to_status()), prune=("probes",))
    with structlog.testing.capture_logs() as logs:
        await admit_launch(cluster, NAME, clock=Clock(T0 + timedelta(seconds=31)), holder="a")
    assert any(entry["event"] == "breaker status not stored as written" for entry in logs)


# -- concurrent writers ---------------------------------------------------------------------------


async def test_concurrent_failures_lose_no_count() -> None:
    cluster = FakeCluster(exc_object(circuitBreaker={"failureThreshold": 1000}), seed=1)

    async def writer() -> None:
        for _ in range(25):
            await record_launch(
                cluster, NAME, reached_user_code=False, error_type=ErrorType.IMAGE_PULL_ERROR, clock=Clock()
            )

    await asyncio.gather(*(writer() for _ in range(4)))
    assert cluster.conflicts > 0  # the writers really did race
    assert cluster.obj["status"]["circuitBreaker"]["failureCount"] == 100
    assert [s.failure_count for s in cluster.history] == list(range(101))


async def test_concurrent_admissions_grant_no_more_than_the_probe_limit() -> None:
    open_state = record_failure(
        BreakerState(), BreakerPolicy(failure_threshold=1), ErrorType.INTERNAL_ERROR, "x", T0
    )[0]
    cluster = FakeCluster(exc_object(breaker=open_state.to_status()), seed=2)
    clock = Clock(T0 + timedelta(seconds=31))
    results = await asyncio.gather(
        *(admit_launch(cluster, NAME, clock=clock, holder=f"h{n}") for n in range(12))
    )
    allowed = [admission for admission, _ in results if admission.allowed]
    assert len(allowed) == 2
    assert all(a.probe for a in allowed)
    # Exactly one writer reports the open -> half_open move.
    assert sum(len(transitions) for _, transitions in results) == 1
    assert cluster.obj["status"]["circuitBreaker"]["probesInFlight"] == 2
    assert cluster.conflicts > 0


async def test_a_stale_success_cannot_undo_an_opening() -> None:
    """Writer B read 'closed, 2 failures' and wants to reset the count; writer A's third failure
    opens the breaker first. B must see the open breaker, not write 'closed, 0' over it."""
    cluster = FakeCluster(exc_object(breaker={"state": "closed", "failureCount": 2}))
    stale = copy.deepcopy(cluster.obj)
    _, opened = await record_launch(
        cluster, NAME, reached_user_code=False, error_type=ErrorType.IMAGE_PULL_ERROR, clock=Clock()
    )
    assert [t.to for t in opened] == ["open"]
    state, transitions = await record_launch(
        cluster, NAME, reached_user_code=True, clock=Clock(), initial=stale
    )
    assert transitions == []
    assert state.state == CircuitState.OPEN
    assert cluster.obj["status"]["circuitBreaker"]["state"] == "open"
    assert cluster.conflicts == 1


LEGAL = {
    (CircuitState.CLOSED, CircuitState.OPEN),
    (CircuitState.OPEN, CircuitState.HALF_OPEN),
    (CircuitState.HALF_OPEN, CircuitState.OPEN),
    (CircuitState.HALF_OPEN, CircuitState.CLOSED),
}
OPS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "success", "failure", "sync"]),
        st.sampled_from([ErrorType.IMAGE_PULL_ERROR, ErrorType.UNSCHEDULABLE, ErrorType.VALUE_ERROR]),
        st.sampled_from(["a", "b", "c", None]),
        st.integers(min_value=0, max_value=20),
    ),
    max_size=15,
)


@settings(max_examples=60, deadline=None)
@given(writers=st.lists(OPS, min_size=2, max_size=4), seed=st.integers(0, 1000))
def test_concurrent_writers_are_linearizable(writers: list[list[tuple[Any, ...]]], seed: int) -> None:
    """Every committed state is one writer's step applied to the state committed just before it:
    no write is based on a stale read, so nothing is lost and no state moves backwards."""
    policy = BreakerPolicy(failure_threshold=2, open_seconds=30, success_threshold=2)
    cluster = FakeCluster(
        exc_object(circuitBreaker={"failureThreshold": 2, "openSeconds": 30, "successThreshold": 2}),
        seed=seed,
    )
    clock = Clock()
    steps: list[tuple[BreakerState, BreakerState]] = []

    def step_for(kind: str, error_type: ErrorType, holder: str | None) -> Callable[[BreakerState], Any]:
        def mutate(state: BreakerState) -> tuple[BreakerState, None]:
            now = clock()
            if kind == "admit":
                new = admit(state, policy, now, holder=holder).new_state
            elif kind == "success":
                new = record_success(state, policy, now, holder=holder)[0]
            elif kind == "failure":
                new = record_failure(state, policy, error_type, "x", now, holder=holder)[0]
            else:
                new = advance(state, policy, now)[0]
            steps.append((state, new))
            return new, None

        return mutate

    async def writer(ops: list[tuple[Any, ...]]) -> None:
        for kind, error_type, holder, delay in ops:
            clock.tick(delay)
            await update_breaker(
                cluster, NAME, step_for(kind, error_type, holder), clock=clock, conflict_backoff=0
            )

    async def main() -> None:
        await asyncio.gather(*(writer(ops) for ops in writers))

    asyncio.run(main())
    history = cluster.history
    for before, after in itertools.pairwise(history):
        assert (before, after) in steps
        assert before.state == after.state or (before.state, after.state) in LEGAL
    assert breaker_of(cluster.obj) == history[-1]


# -- the CRD keeps what the store writes --------------------------------------------------------

CRD = Path(__file__).resolve().parents[2] / "crds" / "executionclasses.sandbox.dev.yaml"


def _crd_schema() -> dict[str, Any]:
    if not CRD.exists():
        pytest.skip("no ExecutionClass CRD in this tree")
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


def _sample_states() -> list[BreakerState]:
    policy = BreakerPolicy(failure_threshold=1)
    opened = record_failure(BreakerState(), policy, ErrorType.IMAGE_PULL_ERROR, "pull failed", T0)[0]
    probing = admit(opened, policy, T0 + timedelta(seconds=31), holder="ns/a#1").new_state
    anonymous = admit(probing, policy, T0 + timedelta(seconds=32)).new_state
    forced = apply_control(opened, {MODE_ANNOTATION: "force-open", RESET_ANNOTATION: "r"}, T0)[0]
    return [BreakerState(), opened, probing, anonymous, forced]


@pytest.mark.parametrize("index", range(5))
def test_written_status_survives_crd_pruning_and_validation(index: int) -> None:
    schema = _crd_schema()
    state = _sample_states()[index]
    obj = exc_object()
    obj["metadata"]["resourceVersion"] = "7"
    patch = status_patch(obj, state, T0)
    assert patch is not None
    stored = merge_patch(obj, {"status": patch["status"]})
    stored = default_and_prune(schema, stored)
    assert validate(schema, stored) == []
    assert breaker_of(stored) == state
    assert available(stored)["type"] == "Available"
