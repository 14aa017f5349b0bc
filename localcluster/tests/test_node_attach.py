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


def status_of(frames: list[bytes]) -> dict[str, Any]:
    """The Status the session ended with: the error channel's content (its first, empty frame only
    says the session is up)."""
    raw = b"".join(f[1:] for f in frames if f[:1] == b"\x03")
    result: dict[str, Any] = json.loads(raw)
    return result


def test_stdin_reaches_the_container_and_closes_after_the_first_session(cluster: Any, api: Api) -> None:
    api.create("/api/v1/namespaces/default/pods", stdin_pod("once", "cat; echo end"))
    api.wait_pod("once", running)
    frames = asyncio.run(attach(cluster.url, "once", [b"\x00hello ", b"\x00world\n", b"\xff\x00"]))
    # The stream translator's first message is empty, on the lowest channel it writes (the error
    # channel when only stdin is attached), and its last the Status, JSON on channel 3
    # (createWebSocketStreams and StreamTranslatorHandler.ServeHTTP, apiserver/pkg/util/proxy).
    assert frames[0] == b"\x03"
    assert frames[-1][:1] == b"\x03"
    assert status_of(frames) == {"metadata": {}, "status": "Success"}
    pod = api.wait_pod("once", phase_is("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert api.log("once") == "hello world\nend\n"


def test_a_second_attach_finds_stdin_closed(cluster: Any, api: Api) -> None:
    # The container outlives its closed stdin; a second session cannot write to it. The runtime does
    # not refuse it either: containerd's ContainerIO.Attach (internal/cri/io/container_io.go) copies
    # the session's stdin into the closed pipe, which fails on the first write, and the attach ends
    # without an error, so the session's Status is Success while nothing reaches the container.
    api.create("/api/v1/namespaces/default/pods", stdin_pod("twice", "cat; echo end; sleep 30"))
    api.wait_pod("twice", running)
    asyncio.run(attach(cluster.url, "twice", [b"\x00first\n"], protocol="v4.channel.k8s.io"))
    api.wait_pod("twice", lambda p: "first\nend\n" in api.log("twice"))
    frames = asyncio.run(attach(cluster.url, "twice", [b"\x00second\n", b"\xff\x00"]))
    assert status_of(frames)["status"] == "Success"
    assert "second" not in api.log("twice")
    api.call("DELETE", "/api/v1/namespaces/default/pods/twice", {"gracePeriodSeconds": 0})


def test_attach_to_a_container_without_stdin_drops_it(cluster: Any, api: Api) -> None:
    # No refusal anywhere on the real path: the kubelet does not look at the container's `stdin`, and
    # containerd's ContainerIO.Attach copies no stdin a container does not have; stdin being the only
    # stream, the attach ends at once, successfully.
    api.create("/api/v1/namespaces/default/pods", pod_manifest("nostdin", ["sh", "-c", "sleep 30"]))
    api.wait_pod("nostdin", running)
    frames = asyncio.run(attach(cluster.url, "nostdin", [b"\x00lost\n", b"\xff\x00"]))
    assert status_of(frames)["status"] == "Success"
    api.call("DELETE", "/api/v1/namespaces/default/pods/nostdin", {"gracePeriodSeconds": 0})


def test_what_the_api_server_refuses_before_the_upgrade(cluster: Any, api: Api) -> None:
    # AttachLocation (pkg/registry/core/pod/strategy.go: getPod, validateContainer, the node check)
    # answers before any upgrade; then the upgrade-aware proxy refuses a plain request, whatever
    # streams it asks for (proxy.UpgradeAwareHandler with upgradeRequired, from AttachREST.Connect).
    api.create("/api/v1/namespaces/default/pods", pod_manifest("plain", ["sh", "-c", "sleep 30"]))
    api.wait_pod("plain", running)
    code, body = api.call("GET", "/api/v1/namespaces/default/pods/absent/attach?stdin=true")
    assert (code, body["reason"], body["message"]) == (404, "NotFound", 'pods "absent" not found')
    code, body = api.call("GET", "/api/v1/namespaces/default/pods/plain/attach?container=other&stdin=true")
    assert (code, body["message"]) == (400, "container other is not valid for pod plain")
    for query in ("container=main&stdin=true", "container=main", "stdout=true"):
        code, body = api.call("GET", f"/api/v1/namespaces/default/pods/plain/attach?{query}")
        assert (code, body["message"]) == (400, "Upgrade request required")
    api.call("DELETE", "/api/v1/namespaces/default/pods/plain", {"gracePeriodSeconds": 0})


def test_a_pod_of_several_containers_needs_the_container_named(cluster: Any, api: Api) -> None:
    # validateContainer (pkg/registry/core/pod/strategy.go) lists every container, init ones first.
    manifest = pod_manifest("several", ["sh", "-c", "sleep 30"])
    manifest["spec"]["initContainers"] = [{"name": "setup", "image": manifest["spec"]["containers"][0]["image"],
                                           "command": ["true"]}]
    manifest["spec"]["containers"].append({**manifest["spec"]["containers"][0], "name": "side"})
    api.create("/api/v1/namespaces/default/pods", manifest)
    code, body = api.call("GET", "/api/v1/namespaces/default/pods/several/attach?stdin=true")
    assert (code, body["message"]) == (
        400, "a container name must be specified for pod several, choose one of: [setup main side]")
    api.call("DELETE", "/api/v1/namespaces/default/pods/several", {"gracePeriodSeconds": 0})


def test_what_the_kubelet_refuses_arrives_on_the_error_channel_in_v5(cluster: Any, api: Api) -> None:
    # With v5 the stream translator upgrades first, then dials the kubelet over SPDY; the kubelet's
    # refusal (remotecommand NewOptions: no stream; Kubelet.GetAttach: no running container of that
    # name) fails that dial, and the translator reports it as an InternalError Status on channel 3.
    api.create("/api/v1/namespaces/default/pods", pod_manifest("ended", ["sh", "-c", "true"]))
    api.wait_pod("ended", phase_is("Succeeded", "Failed"))
    status = status_of(asyncio.run(attach(cluster.url, "ended", [b"\xff\x00"], query="stdout=false")))
    assert (status["status"], status["code"], status["reason"]) == ("Failure", 500, "InternalError")
    assert status["message"] == ("Internal error occurred: unable to upgrade connection: "
                                 "you must specify at least 1 of stdin, stdout, stderr")
    status = status_of(asyncio.run(attach(cluster.url, "ended", [b"\x00x", b"\xff\x00"])))
    assert status["message"] == ("Internal error occurred: unable to upgrade connection: "
                                 "container main not found in pod ended_default")
    # Without v5 the request is proxied to the kubelet, whose refusal answers the upgrade, in plain text.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(attach(cluster.url, "ended", [], protocol="v4.channel.k8s.io"))
    assert refused.value.status == 500
    api.call("DELETE", "/api/v1/namespaces/default/pods/ended", {"gracePeriodSeconds": 0})


def test_stream_flags_read_as_the_api_server_reads_them(cluster: Any, api: Api) -> None:
    # Convert_Slice_string_To_bool (apimachinery runtime conversion): only "false" and "0" are false
    # once the parameter is present, so `stdin=` and `stdin=yes` both attach stdin.
    api.create("/api/v1/namespaces/default/pods", stdin_pod("flags", "cat"))
    api.wait_pod("flags", running)
    frames = asyncio.run(attach(cluster.url, "flags", [b"\x00yes\n", b"\xff\x00"], query="stdin=yes"))
    assert status_of(frames)["status"] == "Success"
    assert api.wait_pod("flags", phase_is("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
    assert api.log("flags") == "yes\n"


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


def test_an_unsupported_subprotocol_is_refused_403(cluster: Any, api: Api) -> None:
    # Without v5 the kubelet answers the upgrade; wsstream's handshake finds none of its subprotocols
    # offered and golang.org/x/net/websocket's Server answers 403 Forbidden.
    api.create("/api/v1/namespaces/default/pods", stdin_pod("subproto", "cat"))
    api.wait_pod("subproto", running)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(attach(cluster.url, "subproto", [], protocol="v9.channel.example"))
    assert refused.value.status == 403
    api.call("DELETE", "/api/v1/namespaces/default/pods/subproto", {"gracePeriodSeconds": 0})
