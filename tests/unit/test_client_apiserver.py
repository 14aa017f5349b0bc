"""The async client against the local API server (no node, no operator): the test writes the status.

Covers what needs exact control of the API: a watch dropped mid-wait, a 410 answered in the stream
and as a status code, retries of refused requests, deletion while waiting, the wait timeout, and the
API errors a person has to act on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from execution_operator.client import AsyncClient, ClientError, UserCodeError, WaitTimeout, apicalls
from execution_operator.client import aio as client_aio
from execution_operator.k8s import KubeClient

pytest.importorskip("localcluster.apiserver.server")
from localcluster.apiserver import FaultRule
from localcluster.apiserver.server import ApiServer
from localcluster.cluster import write_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
EXECUTIONS = "/apis/sandbox.dev/v1alpha1/namespaces/default/executions"
AGENT = "unit-client/1"


async def eventually(check: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)
    return result


async def start(tmp_path: Path, *, crd: bool = True, **server_args: Any) -> tuple[ApiServer, KubeClient, Path]:
    server = ApiServer(**server_args)
    url = await server.start()
    admin = KubeClient(kopf.ConnectionInfo(server=url), user_agent="admin")
    if crd:
        await admin.post(CRDS_PATH, yaml.safe_load((ROOT / "crds" / "executions.sandbox.dev.yaml").read_text()))

        async def established() -> bool:
            body = await admin.get(f"{CRDS_PATH}/executions.sandbox.dev")
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (body.get("status") or {}).get("conditions") or [])

        deadline = time.monotonic() + 10
        while not await established():
            assert time.monotonic() < deadline, "the CRD was not established"
            await asyncio.sleep(0.02)
    return server, admin, write_kubeconfig(tmp_path / "kubeconfig", url)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[ApiServer, KubeClient, AsyncClient]]:
    server, admin, kubeconfig = await start(tmp_path, history_size=20)
    client = AsyncClient(kubeconfig=kubeconfig, user_agent=AGENT)
    yield server, admin, client
    await client.close()
    await admin.close()
    await server.stop()


async def finish(admin: KubeClient, name: str, **status: Any) -> None:
    """What the operator would write at the end."""
    body = {"status": {"phase": "Succeeded", "success": True, "exitCode": 0, "exitCodeSource": "container",
                       "attempt": 1, **status}}
    await admin.patch(f"{EXECUTIONS}/{name}/status", body)


def watch_fault(**rule: Any) -> FaultRule:
    return FaultRule(verb="watch", resource="executions", user_agent=AGENT, times=1, **rule)


def requests_of(server: ApiServer, agent: str = AGENT) -> list[tuple[str, int]]:
    return [(r.verb, r.code) for r in server.request_log if r.user_agent == agent and r.resource == "executions"]


async def test_a_dropped_watch_is_resumed_and_a_410_status_relists(
        env: tuple[ApiServer, KubeClient, AsyncClient]) -> None:
    server, admin, client = env
    server.faults.add(watch_fault(drop_after=0.2))
    server.faults.add(watch_fault(status=410))
    handle = await client.submit("result = 1")
    waiting = asyncio.create_task(handle.wait())
    await eventually(lambda: requests_of(server)[-2:] == [("list", 200), ("watch", 200)])
    await finish(admin, handle.name, output=1)
    result = await asyncio.wait_for(waiting, 10)
    assert result.output == 1
    assert result.success
    assert requests_of(server) == [("create", 201), ("watch", 200), ("watch", 410), ("list", 200), ("watch", 200)]


async def test_a_410_inside_the_stream_relists(env: tuple[ApiServer, KubeClient, AsyncClient]) -> None:
    server, admin, client = env
    server.faults.add(watch_fault(drop_after=0.2))
    server.faults.add(watch_fault(delay=1.0))  # the resumed watch arrives after the history moved on
    handle = await client.submit("result = 1")
    waiting = asyncio.create_task(handle.wait())
    await eventually(lambda: len(requests_of(server)) == 2 and server.faults.rules[1].hits == 1)
    for n in range(50):  # compacts the history past the client's resourceVersion (history_size 20)
        await admin.post("/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"cm-{n}"}})
    await eventually(lambda: ("list", 200) in requests_of(server))
    await finish(admin, handle.name, output=2)
    assert (await asyncio.wait_for(waiting, 10)).output == 2
    verbs = requests_of(server)
    assert verbs[:4] == [("create", 201), ("watch", 200), ("watch", 200), ("list", 200)], verbs


async def test_refused_requests_are_retried_then_reported(env: tuple[ApiServer, KubeClient, AsyncClient],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server, admin, client = env
    server.faults.add(FaultRule(method="POST", resource="executions", status=500, times=2, user_agent=AGENT))
    server.faults.add(FaultRule(method="POST", resource="executions", status=429, retry_after=1, times=1,
                                user_agent=AGENT))
    handle = await client.submit("raise ValueError('x')")
    assert requests_of(server) == [("create", 500), ("create", 500), ("create", 429), ("create", 201)]
    await finish(admin, handle.name, phase="Failed", success=False, exitCode=1,
                 error={"type": "value_error", "message": "ValueError: x", "retryable": False})
    with pytest.raises(UserCodeError):
        await handle.wait()
    monkeypatch.setattr(apicalls, "REQUEST_ATTEMPTS", 2)
    server.faults.add(FaultRule(verb="get", resource="executions", status=503, user_agent=AGENT))
    with pytest.raises(ClientError) as raised:
        await client.get(handle.name)
    assert raised.value.reason == "ServerError"
    assert raised.value.http_status == 503


async def test_deleted_while_waiting(env: tuple[ApiServer, KubeClient, AsyncClient]) -> None:
    _, admin, client = env
    handle = await client.submit("result = 1")
    waiting = asyncio.create_task(handle.wait())  # watches from the create: sees the delete whenever it starts
    await admin.delete(f"{EXECUTIONS}/{handle.name}")
    with pytest.raises(ClientError) as raised:
        await asyncio.wait_for(waiting, 10)
    assert raised.value.reason == "Deleted"
    assert handle.name in str(raised.value)


async def test_wait_timeout_with_and_without_cancel(env: tuple[ApiServer, KubeClient, AsyncClient],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, admin, client = env
    monkeypatch.setattr(client_aio, "CANCEL_GRACE_SECONDS", 0.3)  # nothing here records the cancel
    handle = await client.submit("import time; time.sleep(60)")
    with pytest.raises(WaitTimeout) as raised:
        await handle.wait(wait_timeout=0.3, cancel_on_timeout=False)
    assert not raised.value.cancelled
    assert not (await admin.get(f"{EXECUTIONS}/{handle.name}"))["spec"].get("cancel")
    with pytest.raises(WaitTimeout) as raised:
        await handle.wait(wait_timeout=0.3)
    assert raised.value.cancelled
    assert raised.value.name == handle.name
    assert (await admin.get(f"{EXECUTIONS}/{handle.name}"))["spec"]["cancel"] is True


async def test_api_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, admin, kubeconfig = await start(tmp_path, crd=False)
    try:
        async with AsyncClient(kubeconfig=kubeconfig) as client:
            with pytest.raises(ClientError) as raised:
                await client.submit("result = 1")
            assert raised.value.reason == "NotInstalled"
            assert "kubectl apply -f crds/" in str(raised.value)
        await admin.post(CRDS_PATH, yaml.safe_load((ROOT / "crds" / "executions.sandbox.dev.yaml").read_text()))
        async with AsyncClient("no-such-namespace", kubeconfig=kubeconfig) as client:
            async def refused() -> ClientError | None:
                try:
                    await client.submit("result = 1")
                except ClientError as e:
                    return e if e.reason != "NotInstalled" else None
                raise AssertionError("created in a namespace that does not exist")

            deadline = time.monotonic() + 10
            while (error := await refused()) is None:
                assert time.monotonic() < deadline, "the CRD was never served"
                await asyncio.sleep(0.05)
            assert error.reason == "NamespaceNotFound"
            assert "kubectl create namespace no-such-namespace" in str(error)
            with pytest.raises(ClientError) as raised:
                await client.get("nothing-here", namespace="default")
            assert raised.value.reason == "NotFound"
    finally:
        await admin.close()
        await server.stop()
    monkeypatch.setattr(apicalls, "REQUEST_ATTEMPTS", 2)
    async with AsyncClient(kubeconfig=kubeconfig) as client:  # the server is gone now
        with pytest.raises(ClientError) as raised:
            await client.get("x")
        assert raised.value.reason == "Unreachable"
        assert "kubectl cluster-info" in str(raised.value)


async def test_run_many_yields_in_finishing_order_with_one_watch(
        env: tuple[ApiServer, KubeClient, AsyncClient]) -> None:
    server, admin, client = env
    batch = client.run_many(["result = 0", ("result = input_data", 1), {"code": "result = 2", "labels": {"a": "b"}}])
    first = asyncio.create_task(anext(batch))
    await eventually(lambda: requests_of(server).count(("create", 201)) == 3 and ("watch", 200) in requests_of(server))
    listed = (await admin.get(EXECUTIONS))["items"]
    by_code = {item["spec"]["code"]: item["metadata"]["name"] for item in listed}
    assert {item["metadata"]["labels"].get("a") for item in listed} == {None, "b"}
    await finish(admin, by_code["result = 2"], output=2)
    assert (await asyncio.wait_for(first, 10)).output == 2
    await finish(admin, by_code["result = input_data"], output=1)
    await finish(admin, by_code["result = 0"], output=0)
    assert [r.output async for r in batch] == [1, 0]
    assert [v for v, _ in requests_of(server)].count("watch") == 1


async def test_run_many_refused_request_cancels_the_rest_and_times_out(
        env: tuple[ApiServer, KubeClient, AsyncClient]) -> None:
    _, admin, client = env
    with pytest.raises(ClientError) as raised:
        async for _ in client.run_many(["result = 1", {"code": "result = 2", "timeout_seconds": 900}]):
            pass
    assert raised.value.reason == "Invalid"
    (created,) = (await admin.get(EXECUTIONS))["items"]
    assert created["spec"]["cancel"] is True
    with pytest.raises(WaitTimeout) as timed_out:
        async for _ in client.run_many(["result = 3"], wait_timeout=0.3):
            pass
    assert timed_out.value.cancelled
