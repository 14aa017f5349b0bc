"""`KubeClient.write_stdin` against the local API server (no node): how the attach's end is read.

Through a real API server (1.30+) an attach offering `v5.channel.k8s.io` is upgraded before the
kubelet is asked anything; the kubelet's refusal then arrives as a Failure Status on the error
channel (StreamTranslatorHandler.ServeHTTP in staging/src/k8s.io/apiserver/pkg/util/proxy/
streamtranslator.go), so the client must read that channel to know the handover happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest

from execution_operator.k8s import ApiError, KubeClient, path_for

pytest.importorskip("localcluster.apiserver.server")
from localcluster.apiserver.server import ApiServer

PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
async def client() -> AsyncIterator[KubeClient]:
    server = ApiServer()
    url = await server.start()
    kube = KubeClient(kopf.ConnectionInfo(server=url), user_agent="unit-attach")
    yield kube
    await kube.close()
    await server.stop()


async def pod_in_state(kube: KubeClient, name: str, state: dict[str, Any]) -> str:
    """A pod bound to a node with the sandbox container in `state`, as a kubelet would report it."""
    await kube.post(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                           "spec": {"nodeName": "node-1", "containers": [
                               {"name": "sandbox", "image": "sandbox", "stdin": True, "stdinOnce": True}]}})
    await kube.patch(f"{PODS}/{name}/status", {"status": {"phase": "Running", "containerStatuses": [
        {"name": "sandbox", "ready": True, "restartCount": 0, "image": "sandbox", "imageID": "",
         "state": state}]}})
    return path_for("v1", "pods", "default", name, "attach")


async def test_a_session_that_ends_with_success_is_a_handover(client: KubeClient) -> None:
    path = await pod_in_state(client, "up", {"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    await client.write_stdin(path, b'{"code": "x"}', container="sandbox")


async def test_a_refusal_on_the_error_channel_raises(client: KubeClient) -> None:
    # The upgrade succeeds (101); only the Status at the end tells that the kubelet refused.
    path = await pod_in_state(client, "gone", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    with pytest.raises(ApiError) as refused:
        await client.write_stdin(path, b'{"code": "x"}', container="sandbox")
    assert refused.value.status == 500
    assert refused.value.reason == "InternalError"
    assert "container sandbox not found in pod gone_default" in refused.value.message


async def test_a_refusal_before_the_upgrade_raises(client: KubeClient) -> None:
    path = await pod_in_state(client, "named", {"running": {}})
    with pytest.raises(ApiError) as refused:
        await client.write_stdin(path, b"x", container="other")
    assert refused.value.status == 400
