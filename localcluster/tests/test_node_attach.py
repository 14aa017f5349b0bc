"""`pods/NAME/attach` end to end: the API server's WebSocket, the node's stdin relay, the real kubectl."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_node
from test_node import Api, container_state, phase_is, pod_manifest

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(ROOT / ".tools" / "bin" / "kubectl") if (ROOT / ".tools" / "bin" / "kubectl").exists() else \
    shutil.which("kubectl")

# The node tests' cluster (with a shell image) and client, one cluster for this module.
cluster = test_node.cluster
api = test_node.api

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]


def stdin_pod(name: str, script: str, once: bool = True) -> dict[str, Any]:
    return pod_manifest(name, ["sh", "-c", script], container={"stdin": True, "stdinOnce": once})


def running(pod: dict[str, Any]) -> bool:
    return "running" in container_state(pod)


async def attach(url: str, name: str, frames: list[bytes], protocol: str = "v5.channel.k8s.io",
                 query: str = "container=main&stdin=true") -> list[bytes]:
    """Send `frames` (channel byte included), then read what the server sends until it closes."""
    received: list[bytes] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{url}/api/v1/namespaces/default/pods/{name}/attach?{query}", protocols=[protocol]
    ) as ws:
        assert ws.protocol == protocol
        for frame in frames:
            await ws.send_bytes(frame)
        if protocol.startswith("v4"):
            await ws.close()  # v4 has no close-stdin frame: ending the connection ends stdin
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                received.append(msg.data)
    return received


def test_stdin_reaches_the_container_and_closes_after_the_first_session(cluster: Any, api: Api) -> None:
    api.create("/api/v1/namespaces/default/pods", stdin_pod("once", "cat; echo end"))
    api.wait_pod("once", running)
    frames = asyncio.run(attach(cluster.url, "once", [b"\x00hello ", b"\x00world\n", b"\xff\x00"]))
    assert frames[-1][:1] == b"\x03"
    assert json.loads(frames[-1][1:])["status"] == "Success"
    pod = api.wait_pod("once", phase_is("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert api.log("once") == "hello world\nend\n"


def test_a_second_attach_finds_stdin_closed(cluster: Any, api: Api) -> None:
    # The container outlives its closed stdin; a second session cannot write to it.
    api.create("/api/v1/namespaces/default/pods", stdin_pod("twice", "cat; echo end; sleep 30"))
    api.wait_pod("twice", running)
    asyncio.run(attach(cluster.url, "twice", [b"\x00first\n"], protocol="v4.channel.k8s.io"))
    api.wait_pod("twice", lambda p: "first\nend\n" in api.log("twice"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(attach(cluster.url, "twice", [b"\x00second\n", b"\xff\x00"]))
    assert refused.value.status == 400
    assert "second" not in api.log("twice")
    api.call("DELETE", "/api/v1/namespaces/default/pods/twice", {"gracePeriodSeconds": 0})


def test_attach_is_refused_before_the_upgrade_when_it_cannot_work(cluster: Any, api: Api) -> None:
    api.create("/api/v1/namespaces/default/pods", pod_manifest("nostdin", ["sh", "-c", "sleep 30"]))
    api.wait_pod("nostdin", running)
    code, body = api.call("GET", "/api/v1/namespaces/default/pods/nostdin/attach?container=main&stdin=true")
    assert code == 400
    assert "stdin is not enabled" in body["message"]
    code, body = api.call("GET", "/api/v1/namespaces/default/pods/nostdin/attach?container=main")
    assert code == 400
    assert "at least 1 of stdin, stdout, stderr" in body["message"]
    code, body = api.call("GET", "/api/v1/namespaces/default/pods/nostdin/attach?container=main&stdout=true")
    assert code == 400
    assert body["message"] == "Upgrade request required"
    api.call("DELETE", "/api/v1/namespaces/default/pods/nostdin", {"gracePeriodSeconds": 0})


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_attach_sends_stdin_and_shows_output(cluster: Any, api: Api, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": cluster.url}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": "default"}}],
        "users": [{"name": "local", "user": {}}],
    }))
    api.create("/api/v1/namespaces/default/pods", stdin_pod("bykubectl", "read line; echo got:$line"))
    api.wait_pod("bykubectl", running)
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    proc = subprocess.run([KUBECTL, "attach", "-i", "bykubectl", "-c", "main"], input="over websocket\n",
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "got:over websocket" in proc.stdout
    assert api.wait_pod("bykubectl", phase_is("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
