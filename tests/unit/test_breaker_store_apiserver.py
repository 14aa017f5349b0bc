"""The breaker store over HTTP against the local API server, with the real CRD and client.

Several operator replicas (separate clients) race on one ExecutionClass. The server checks the
resourceVersion precondition, prunes and validates the status against the CRD, and answers 409
Conflict to the writers that lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from execution_operator.breaker import CircuitState
from execution_operator.breaker_control import MODE_ANNOTATION
from execution_operator.breaker_store import admit_launch, breaker_of, class_path, record_launch, sync_breaker
from execution_operator.errors import ErrorType
from execution_operator.k8s import KubeClient

CRD = Path(__file__).resolve().parents[2] / "crds" / "executionclasses.sandbox.dev.yaml"
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CLASSES_PATH = "/apis/sandbox.dev/v1alpha1/executionclasses"
T0 = datetime(2026, 7, 1, 10, 0, 0, tzinfo=UTC)

pytest.importorskip("localcluster.apiserver.server")
if not CRD.exists():
    pytest.skip("no ExecutionClass CRD in this tree", allow_module_level=True)


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Any, list[KubeClient]]]:
    from localcluster.apiserver.server import ApiServer

    server = ApiServer()
    url = await server.start()
    clients = [KubeClient(kopf.ConnectionInfo(server=url), user_agent=f"replica-{n}") for n in range(3)]
    admin = clients[0]
    await admin.post(CRDS_PATH, yaml.safe_load(CRD.read_text()))

    async def established() -> bool:
        crd = await admin.get(f"{CRDS_PATH}/executionclasses.sandbox.dev")
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    await wait_for(established)
    spec = {"image": "python:3.11", "circuitBreaker": {"failureThreshold": 50, "openSeconds": 30}}
    body = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "ExecutionClass", "metadata": {"name": "c1"}, "spec": spec}
    await admin.post(CLASSES_PATH, body)
    try:
        yield server, clients
    finally:
        for client in clients:
            await client.close()
        await server.stop()


def conflicts(server: Any) -> int:
    return sum(1 for r in server.request_log if r.verb == "patch" and r.code == 409)


async def test_replicas_racing_lose_no_count(cluster: tuple[Any, list[KubeClient]]) -> None:
    server, clients = cluster

    async def replica(client: KubeClient) -> None:
        for _ in range(10):
            await record_launch(
                client, "c1", reached_user_code=False, error_type=ErrorType.UNSCHEDULABLE, clock=lambda: T0
            )

    await asyncio.gather(*(replica(c) for c in clients for _ in range(2)))
    stored = await clients[0].get(class_path("c1"))
    assert breaker_of(stored).failure_count == 60
    assert breaker_of(stored).state == CircuitState.OPEN  # threshold 50 crossed once
    assert conflicts(server) > 0
    available = next(c for c in stored["status"]["conditions"] if c["type"] == "Available")
    assert (available["status"], available["reason"]) == ("False", "CircuitOpen")


async def test_probe_slots_hold_across_replicas(cluster: tuple[Any, list[KubeClient]]) -> None:
    _, clients = cluster
    for _ in range(50):
        await record_launch(
            clients[0], "c1", reached_user_code=False, error_type=ErrorType.IMAGE_PULL_ERROR, clock=lambda: T0
        )
    later = T0 + timedelta(seconds=31)
    results = await asyncio.gather(
        *(admit_launch(clients[n % 3], "c1", holder=f"ns/e{n}#1", clock=lambda: later) for n in range(30))
    )
    granted = [a for a, _ in results if a.allowed]
    assert len(granted) == 2
    assert all(a.probe for a in granted)
    stored = breaker_of(await clients[1].get(class_path("c1")))
    assert stored.state == CircuitState.HALF_OPEN
    assert stored.probes_in_flight == 2
    assert {p.holder for p in stored.probes} <= {f"ns/e{n}#1" for n in range(30)}


async def test_force_open_annotation_through_the_api(cluster: tuple[Any, list[KubeClient]]) -> None:
    _, clients = cluster
    await clients[0].patch(class_path("c1"), {"metadata": {"annotations": {MODE_ANNOTATION: "force-open"}}})
    state, transitions = await sync_breaker(clients[1], "c1", clock=lambda: T0)
    assert [t.reason for t in transitions] == ["ForcedOpen"]
    stored = await clients[2].get(class_path("c1"))
    assert breaker_of(stored) == state
    assert stored["status"]["circuitBreaker"]["forced"] == "force-open"
    admission, _ = await admit_launch(clients[2], "c1", clock=lambda: T0 + timedelta(hours=1))
    assert not admission.allowed
