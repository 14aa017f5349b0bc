"""Pure helpers of the local node: image references, quantities, selectors, fit, env expansion, events."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from localcluster.node import _StatusWriter, status_events
from localcluster.node_config import (
    ContainerConfigError,
    StaticLookups,
    container_env,
    egress_denied,
    expand,
    field_ref_value,
    materialize_volumes,
)
from localcluster.node_images import ImageTable, InvalidImageName, parse_image, sandbox_interpreter
from localcluster.node_runtime import _capabilities, disk_usage
from localcluster.node_sched import match_label_selector, parse_quantity, pod_requests, unschedulable_message


@pytest.mark.parametrize(
    ("image", "normalized"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("ghcr.io/execution-operator/sandbox:0.1.0", "ghcr.io/execution-operator/sandbox:0.1.0"),
        ("localhost:5000/x/y", "localhost:5000/x/y:latest"),
        ("registry.k8s.io/pause@sha256:" + "a" * 64, "registry.k8s.io/pause@sha256:" + "a" * 64),
    ],
)
def test_parse_image_normalizes(image: str, normalized: str) -> None:
    assert parse_image(image).normalized == normalized


@pytest.mark.parametrize("image", ["Busybox", "bad image", "repo::tag", "", "a/B:1", "x:tag with space"])
def test_parse_image_rejects_invalid(image: str) -> None:
    with pytest.raises(InvalidImageName, match="invalid reference format"):
        parse_image(image)


def test_image_table_patterns() -> None:
    table = ImageTable.default()
    table.add_command_image("busybox", ["sh"])
    table.add("example.test/pinned:1", entrypoint=["true"])
    sandbox = table.resolve(parse_image("ghcr.io/execution-operator/sandbox-data:2.0"))
    assert sandbox is not None
    assert sandbox[0].entrypoint == ["python", "-m", "execution_operator.runner"]
    assert sandbox[0].user == 65532
    assert sandbox[1] is True
    assert table.resolve(parse_image("docker.io/library/busybox:1.2")) is not None
    assert table.resolve(parse_image("example.test/pinned:1")) is not None
    assert table.resolve(parse_image("example.test/pinned:2")) is None
    assert table.resolve(parse_image("ghcr.io/execution-operator/operator:1")) is None


def test_image_argv_semantics() -> None:
    spec = ImageTable()
    spec.add("x.test/img", entrypoint=["ep"], cmd=["default"])
    image, _ = spec.resolve(parse_image("x.test/img")) or (None, None)
    assert image is not None
    assert image.argv(None, None) == ["ep", "default"]
    assert image.argv(None, ["a"]) == ["ep", "a"]
    assert image.argv(["cmd"], None) == ["cmd"]
    assert image.argv(["cmd"], ["a"]) == ["cmd", "a"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("500m", Decimal("0.5")),
        ("2", 2),
        ("1e3", 1000),
        ("1.5G", 1_500_000_000),
        (3, 3),
    ],
)
def test_parse_quantity(text: Any, value: Any) -> None:
    assert parse_quantity(text) == Decimal(value)


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a quantity: '12 bananas'"):
        parse_quantity("12 bananas")


def test_pod_requests_sum_and_init_max() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"resources": {"limits": {"cpu": "200m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"memory": "1Gi"}}}],
        }
    }
    req = pod_requests(pod)
    assert req["cpu"] == Decimal("0.3")
    assert req["memory"] == 2**30


def test_label_selectors() -> None:
    labels = {"app": "x", "tier": "web", "n": "5"}
    assert match_label_selector({}, labels)
    assert not match_label_selector(None, labels)
    assert match_label_selector({"matchLabels": {"app": "x"}}, labels)
    assert not match_label_selector({"matchLabels": {"app": "y"}}, labels)
    exprs = [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "gone", "operator": "DoesNotExist"},
        {"key": "n", "operator": "Gt", "values": ["3"]},
    ]
    assert match_label_selector({"matchExpressions": exprs}, labels)
    assert not match_label_selector(
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]}, labels
    )


def test_unschedulable_messages() -> None:
    labels = {"kubernetes.io/hostname": "local-node", "kubernetes.io/os": "linux"}
    alloc = {"cpu": "2", "memory": "8Gi", "pods": "110"}
    fits = {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{}]}}
    assert unschedulable_message(fits, "local-node", labels, alloc) is None
    selector = {"spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{}]}}
    assert (
        unschedulable_message(selector, "local-node", labels, alloc)
        == "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )
    cpu = {"spec": {"containers": [{"resources": {"requests": {"cpu": "3"}}}]}}
    assert unschedulable_message(cpu, "local-node", labels, alloc) == "0/1 nodes are available: 1 Insufficient cpu."
    affinity = {
        "spec": {
            "containers": [{}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}
                        ]
                    }
                }
            },
        }
    }
    assert "didn't match Pod's node affinity/selector" in (
        unschedulable_message(affinity, "local-node", labels, alloc) or ""
    )
    taint = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    assert "untolerated taint {dedicated=gpu}" in (
        unschedulable_message(fits, "local-node", labels, alloc, taint) or ""
    )
    tolerant = {"spec": {"containers": [{}], "tolerations": [{"key": "dedicated", "operator": "Exists"}]}}
    assert unschedulable_message(tolerant, "local-node", labels, alloc, taint) is None


def test_expand_kubernetes_variables() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)", env) == "1-two-$(C)"
    assert expand("$$(A) $$ $", env) == "$(A) $ $"


def test_egress_denied_only_for_deny_all_egress() -> None:
    pod = {"metadata": {"labels": {"sandbox.dev/network": "deny"}}}
    deny = {"spec": {"podSelector": {"matchLabels": {"sandbox.dev/network": "deny"}}, "policyTypes": ["Egress"]}}
    allow = {**deny, "spec": {**deny["spec"], "egress": [{}]}}
    ingress_only = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    other = {"spec": {"podSelector": {"matchLabels": {"app": "z"}}, "policyTypes": ["Egress"]}}
    assert egress_denied(pod, [deny])
    assert not egress_denied(pod, [deny, allow])
    assert not egress_denied(pod, [ingress_only, other])
    assert not egress_denied(pod, [])


def test_field_refs() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u",
            "labels": {"b": "2", "a": "1"},
            "annotations": {"k": "v"},
        },
        "spec": {"nodeName": "local-node"},
    }
    assert field_ref_value(pod, "metadata.annotations['k']", "127.0.0.1") == "v"
    assert field_ref_value(pod, "metadata.labels", "127.0.0.1") == 'a="1"\nb="2"'
    assert field_ref_value(pod, "status.podIP", "127.0.0.1") == "127.0.0.1"
    assert field_ref_value(pod, "spec.nodeName", "127.0.0.1") == "local-node"
    with pytest.raises(ContainerConfigError):
        field_ref_value(pod, "spec.bogus", "127.0.0.1")


async def test_container_env_sources_and_errors() -> None:
    lookups = StaticLookups(
        configmaps={("ns", "cm"): {"data": {"k": "from-cm", "other": "x"}}},
        secrets={("ns", "s"): {"data": {"pw": base64.b64encode(b"hunter2").decode()}}},
    )
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": []}}
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)b"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    env = await container_env(pod, container, lookups, {"PATH": "/bin"}, "127.0.0.1")
    assert env == {"PATH": "/bin", "CM_k": "from-cm", "CM_other": "x", "A": "a", "B": "ab", "S": "hunter2"}
    missing_key = {"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz"}}}]}
    with pytest.raises(ContainerConfigError, match="couldn't find key zz in ConfigMap ns/cm"):
        await container_env(pod, missing_key, lookups, {}, "127.0.0.1")
    missing_secret = {"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "no", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match='secret "no" not found'):
        await container_env(pod, missing_secret, lookups, {}, "127.0.0.1")


async def test_materialize_volumes(tmp_path: Path) -> None:
    lookups = StaticLookups(
        configmaps={("ns", "cm"): {"data": {"a": "1"}, "binaryData": {"b.gz": base64.b64encode(b"\x00\x01").decode()}}}
    )
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "annotations": {"x": "y"}},
        "spec": {
            "volumes": [
                {"name": "cm", "configMap": {"name": "cm", "items": [{"key": "b.gz", "path": "sub/b.gz"}]}},
                {
                    "name": "dw",
                    "downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "metadata.annotations['x']"}}]},
                },
                {"name": "e", "emptyDir": {}},
                {"name": "pr", "projected": {"sources": [{"configMap": {"name": "cm"}}]}},
            ]
        },
    }
    paths = await materialize_volumes(pod, tmp_path, lookups, "127.0.0.1")
    assert (paths["cm"] / "sub" / "b.gz").read_bytes() == b"\x00\x01"
    assert not (paths["cm"] / "a").exists()
    assert (paths["dw"] / "x").read_text() == "y"
    assert paths["e"].is_dir()
    assert (paths["pr"] / "a").read_text() == "1"
    bad = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"volumes": [{"name": "v", "secret": {"secretName": "s"}}]},
    }
    with pytest.raises(ContainerConfigError, match='secret "s" not found'):
        await materialize_volumes(bad, tmp_path, lookups, "127.0.0.1")
    pvc = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {}}]},
    }
    with pytest.raises(ContainerConfigError, match="unsupported volume type"):
        await materialize_volumes(pvc, tmp_path, lookups, "127.0.0.1")


def test_capabilities() -> None:
    assert _capabilities({"capabilities": {"drop": ["ALL"]}}) == []
    assert _capabilities({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}) == ["CAP_NET_BIND_SERVICE"]
    default = _capabilities({})
    assert "CAP_CHOWN" in default
    assert "CAP_SYS_ADMIN" not in default
    assert "CAP_KILL" not in _capabilities({"capabilities": {"drop": ["KILL"]}})
    assert _capabilities({"privileged": True}) == ["ALL"]


def test_disk_usage_counts_blocks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    used = disk_usage(tmp_path)
    assert used >= 100_000
    assert disk_usage(tmp_path, stop_above=10) > 10


def test_status_events_only_on_warning_transitions() -> None:
    def status(reason: str, message: str = "m") -> dict[str, Any]:
        return {
            "containerStatuses": [
                {"name": "c", "image": "img", "state": {"waiting": {"reason": reason, "message": message}}}
            ]
        }

    assert status_events(None, status("ContainerCreating")) == []
    pull = status_events(status("ContainerCreating"), status("ErrImagePull", "not found"))
    assert pull == [
        ("Warning", "Failed", 'Failed to pull image "img": not found', "spec.containers{c}"),
        ("Warning", "Failed", "Error: ErrImagePull", "spec.containers{c}"),
    ]
    assert status_events(status("ErrImagePull"), status("ErrImagePull")) == []
    deadline = {
        "reason": "DeadlineExceeded",
        "message": "Pod was active on the node longer than the specified deadline",
    }
    assert status_events({}, deadline) == [("Normal", "DeadlineExceeded", deadline["message"], None)]


def test_sandbox_interpreter_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chosen = sandbox_interpreter()
    assert os.access(chosen, os.X_OK)
    assert os.path.basename(chosen).startswith(f"python{sys.version_info.major}.")
    link = tmp_path / "python"
    link.symlink_to(sys.executable)
    monkeypatch.setenv("LOCALCLUSTER_SANDBOX_PYTHON", str(link))
    assert sandbox_interpreter() == os.path.realpath(sys.executable)


class _RecordingNode:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def record_event(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def _patch_status(self, namespace: str, name: str, status: dict[str, Any], pod: Any = None) -> None:
        self.sent.append(status["phase"])


async def test_status_writer_sends_each_transition_and_coalesces_those_made_during_a_write() -> None:
    node = _RecordingNode()
    writer = _StatusWriter(node, "ns", "p")  # type: ignore[arg-type]
    writer.submit({"phase": "Pending"})
    await asyncio.wait_for(writer.flush(), 10)
    writer.submit({"phase": "Running"})
    await asyncio.wait_for(writer.flush(), 10)
    writer.submit({"phase": "Succeeded"})
    await asyncio.wait_for(writer.flush(), 10)
    assert node.sent == ["Pending", "Running", "Succeeded"]

    busy = _StatusWriter(node, "ns", "q")  # type: ignore[arg-type]
    busy.submit({"phase": "Pending"})  # its write starts on the next turn of the loop
    busy.submit({"phase": "Running"})  # both made before it ran: only the latest goes
    await asyncio.wait_for(busy.flush(), 10)
    assert node.sent[3:] == ["Running"]
