"""The local node's container runtime, without an API server: pod dict in, status transitions out."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localcluster.node_config import StaticLookups
from localcluster.node_images import ImageTable, prepare_python_runtime
from localcluster.node_runtime import MemoryMonitor, PodWorker, RuntimeConfig, python_installations

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

TEST_IMAGE = "example.test/shell:1"


def make_pod(
    name: str = "p",
    *,
    command: list[str] | None = None,
    image: str = TEST_IMAGE,
    container: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "main", "image": image}
    if command is not None:
        c["command"] = command
    c.update(container or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"containers": [c], "restartPolicy": "Never", **(spec or {})},
    }


class Harness:
    """Runs PodWorkers against a temp state dir and records every status they report."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.images = ImageTable.default()
        self.images.add(TEST_IMAGE, entrypoint=["sh", "-c", "echo default"])
        self.lookups = StaticLookups()
        self.monitor = MemoryMonitor()
        self.config = RuntimeConfig(
            state_dir=state_dir,
            pull_error_seconds=0.2,
            pull_backoff_initial=0.3,
            config_retry_seconds=0.2,
            runtime_dir=prepare_python_runtime(state_dir / "runtime").parent,
        )
        self.statuses: list[dict[str, Any]] = []

    def worker(self, pod: dict[str, Any]) -> PodWorker:
        return PodWorker(
            pod,
            config=self.config,
            images=self.images,
            lookups=self.lookups,
            monitor=self.monitor,
            sink=self.statuses.append,
        )

    async def run(self, pod: dict[str, Any], limit: float = 30) -> dict[str, Any]:
        return await asyncio.wait_for(self.worker(pod).run(), limit)

    def log_lines(self, pod: dict[str, Any], container: str = "main") -> list[dict[str, Any]]:
        m = pod["metadata"]
        path = self.state_dir / "pods" / f"{m['namespace']}_{m['name']}_{m['uid']}" / f"{container}.log"
        return [json.loads(line) for line in path.read_text().splitlines()]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], limit: float = 10) -> dict[str, Any]:
        """Wait until some reported status satisfies `predicate`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            for status in self.statuses:
                if predicate(status):
                    return status
            await asyncio.sleep(0.02)
        raise AssertionError(f"no status matched; last: {self.statuses[-1:]}")


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    h = Harness(tmp_path)
    yield h
    await h.monitor.stop()


def terminated(status: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return status["containerStatuses"][index]["state"]["terminated"]


def waiting(status: dict[str, Any]) -> dict[str, Any] | None:
    return status["containerStatuses"][0]["state"].get("waiting")


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


async def test_success_logs_and_transitions(harness: Harness) -> None:
    pod = make_pod(command=["sh", "-c", "echo out1; echo err1 >&2; echo out2"])
    final = await harness.run(pod)
    assert final["phase"] == "Succeeded"
    term = terminated(final)
    assert term["exitCode"] == 0
    assert term["reason"] == "Completed"
    assert term["containerID"].startswith("local://")
    assert cond(final, "Ready")["status"] == "False"
    assert cond(final, "Ready")["reason"] == "PodCompleted"
    phases = [s["phase"] for s in harness.statuses]
    assert phases[0] == "Pending"
    assert "Running" in phases
    assert phases[-1] == "Succeeded"
    first = harness.statuses[0]
    assert waiting(first) == {"reason": "ContainerCreating"}
    assert first["hostIP"] == "127.0.0.1"
    assert first["podIP"] == "127.0.0.1"
    assert first["startTime"]
    lines = harness.log_lines(pod)
    by_stream = {(ln["stream"], ln["log"]) for ln in lines}
    assert by_stream == {("stdout", "out1\n"), ("stderr", "err1\n"), ("stdout", "out2\n")}
    assert all(ln["time"].endswith("Z") and "." in ln["time"] for ln in lines)
    out_order = [ln["log"] for ln in lines if ln["stream"] == "stdout"]
    assert out_order == ["out1\n", "out2\n"]


async def test_image_default_entrypoint_and_args(harness: Harness) -> None:
    harness.images.add_command_image("example.test/echoer", ["echo"])
    pod = make_pod(image="example.test/echoer:v2", container={"args": ["hello", "$(WHO)", "$$(WHO)"]})
    pod["spec"]["containers"][0]["env"] = [{"name": "WHO", "value": "world"}]
    final = await harness.run(pod)
    assert final["phase"] == "Succeeded"
    assert [ln["log"] for ln in harness.log_lines(pod)] == ["hello world $(WHO)\n"]


async def test_nonzero_exit_and_termination_message(harness: Harness) -> None:
    pod = make_pod(command=["sh", "-c", "printf 'bye' > /dev/termination-log; exit 3"])
    final = await harness.run(pod)
    term = terminated(final)
    assert final["phase"] == "Failed"
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "bye")
    assert cond(final, "Ready")["reason"] == "PodFailed"


async def test_termination_message_truncated_and_fallback_to_logs(harness: Harness) -> None:
    pod = make_pod(command=["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x > /dev/termination-log"])
    final = await harness.run(pod)
    assert terminated(final)["message"] == "x" * 4096
    pod2 = make_pod("p2", command=["sh", "-c", "echo boom; exit 2"])
    pod2["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    final2 = await harness.run(pod2)
    assert terminated(final2)["message"] == "boom\n"


@pytest.mark.parametrize(("sig", "code"), [("SEGV", 139), ("ABRT", 134), ("KILL", 137)])
async def test_signal_exit_codes(harness: Harness, sig: str, code: int) -> None:
    # The command is PID 1 (immune to its own signals), so a child shell kills itself; `$$$$` is the
    # Kubernetes escape for the shell's `$$`. The outer shell exits with the child's 128+N.
    pod = make_pod(command=["sh", "-c", f"sh -c 'kill -{sig} $$$$'"])
    final = await harness.run(pod)
    assert terminated(final)["exitCode"] == code
    assert terminated(final)["reason"] == "Error"


async def test_memory_limit_oomkills_tree(harness: Harness) -> None:
    # The allocation happens in a grandchild, so the whole tree's RSS must be counted.
    script = "import time; b = bytearray(300 * 1024 * 1024); time.sleep(30)"
    pod = make_pod(
        command=["sh", "-c", f'python -c "{script}"; echo survived'],
        image="ghcr.io/execution-operator/sandbox:dev",
        container={"resources": {"limits": {"memory": "64Mi"}}},
    )
    final = await harness.run(pod, limit=20)
    term = terminated(final)
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)
    assert final["phase"] == "Failed"
    assert not any("survived" in ln["log"] for ln in harness.log_lines(pod))


async def test_active_deadline_sigterm(harness: Harness) -> None:
    pod = make_pod(
        command=["sh", "-c", "trap 'exit 143' TERM; sleep 30 & wait"],
        spec={"activeDeadlineSeconds": 1, "terminationGracePeriodSeconds": 5},
    )
    final = await harness.run(pod, limit=15)
    assert final["phase"] == "Failed"
    assert final["reason"] == "DeadlineExceeded"
    assert final["message"] == "Pod was active on the node longer than the specified deadline"
    assert terminated(final)["exitCode"] == 143


async def test_terminate_escalates_to_sigkill_after_grace(harness: Harness) -> None:
    pod = make_pod(command=["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"])
    worker = harness.worker(pod)
    task = asyncio.create_task(worker.run())
    await harness.wait_for(lambda s: s["phase"] == "Running")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(worker.terminate(0.5), 10)
    elapsed = loop.time() - t0
    final = await task
    assert terminated(final)["exitCode"] == 137
    assert 0.4 < elapsed < 5


async def test_evict_style_terminate_sets_reason_and_disruption(harness: Harness) -> None:
    pod = make_pod(command=["sleep", "30"])
    worker = harness.worker(pod)
    task = asyncio.create_task(worker.run())
    await harness.wait_for(lambda s: s["phase"] == "Running")
    disruption = {"reason": "TerminationByKubelet", "message": "evicting"}
    await asyncio.wait_for(worker.terminate(0, reason="Evicted", message="low", disruption=disruption, failed=True), 10)
    final = await task
    assert (final["phase"], final["reason"]) == ("Failed", "Evicted")
    assert cond(final, "DisruptionTarget")["reason"] == "TerminationByKubelet"
    assert terminated(final)["exitCode"] == 137


async def test_invalid_image_waits(harness: Harness) -> None:
    pod = make_pod(image="Example.test/BAD image")
    worker = harness.worker(pod)
    task = asyncio.create_task(worker.run())
    status = await harness.wait_for(lambda s: (waiting(s) or {}).get("reason") == "InvalidImageName")
    assert waiting(status)["message"] == (
        'Failed to apply default image tag "Example.test/BAD image": couldn\'t parse image name '
        '"Example.test/BAD image": invalid reference format'
    )
    assert status["phase"] == "Pending"
    await asyncio.wait_for(worker.terminate(0), 5)
    final = await task
    assert final["phase"] == "Failed"
    assert terminated(final)["reason"] == "ContainerStatusUnknown"


async def test_unknown_image_pull_backoff_then_recovers(harness: Harness) -> None:
    pod = make_pod(image="example.test/missing:1", command=["true"])
    worker = harness.worker(pod)
    task = asyncio.create_task(worker.run())
    err = await harness.wait_for(lambda s: (waiting(s) or {}).get("reason") == "ErrImagePull")
    assert "failed to pull and unpack image" in waiting(err)["message"]
    assert waiting(err)["message"].startswith("rpc error: code = NotFound")
    back = await harness.wait_for(lambda s: (waiting(s) or {}).get("reason") == "ImagePullBackOff")
    assert waiting(back)["message"] == 'Back-off pulling image "example.test/missing:1"'
    # The image "appears" (as if pushed): the next retry pulls it and the pod runs.
    harness.images.add("example.test/missing")
    final = await asyncio.wait_for(task, 10)
    assert final["phase"] == "Succeeded"


async def test_missing_configmap_is_config_error(harness: Harness) -> None:
    pod = make_pod(command=["sh", "-c", "echo $X"])
    pod["spec"]["containers"][0]["env"] = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x"}}}]
    worker = harness.worker(pod)
    task = asyncio.create_task(worker.run())
    status = await harness.wait_for(lambda s: (waiting(s) or {}).get("reason") == "CreateContainerConfigError")
    assert waiting(status)["message"] == 'configmap "cfg" not found'
    harness.lookups.configmaps[("ns", "cfg")] = {"data": {"x": "found-it"}}
    final = await asyncio.wait_for(task, 10)
    assert final["phase"] == "Succeeded"
    assert [ln["log"] for ln in harness.log_lines(pod)] == ["found-it\n"]


async def test_sandbox_pod_shape(harness: Harness) -> None:
    """A pod shaped like the operator's sandbox pods: payload volumes, emptyDirs, read-only root, uid."""
    harness.lookups.configmaps[("ns", "payload")] = {
        "data": {"code.py": "print('cm code')"},
        "binaryData": {"input.json.gz": base64.b64encode(b"\x1f\x8bgz").decode()},
    }
    script = r"""
set -e
id -u
cat /sandbox/payload/code.py; echo
cat /sandbox/payload/input.json; echo
cat /cm/code.py; echo
od -An -c -N2 /cm/input.json.gz | tr -d ' '
echo "$SANDBOX_TIMEOUT_SECONDS $POD_NAME $MEM"
touch /tmp/ok /output/ok
if touch /rootfile 2>/dev/null; then echo root-writable; fi
if touch /sandbox/payload/x 2>/dev/null; then echo payload-writable; fi
hostname
"""
    pod = make_pod(
        "sbx",
        command=["sh", "-c", script],
        annotations={"sandbox.dev/code": "print('hi')", "sandbox.dev/input": '{"a": 1}'},
        container={
            "env": [
                {"name": "SANDBOX_TIMEOUT_SECONDS", "value": "30"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {
                    "name": "MEM",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                },
            ],
            "resources": {
                "limits": {"memory": "256Mi", "cpu": "1"},
                "requests": {"memory": "256Mi", "cpu": "1"},
            },
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "payload", "mountPath": "/sandbox/payload", "readOnly": True},
                {"name": "cm", "mountPath": "/cm", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "output", "mountPath": "/output"},
            ],
        },
        spec={
            "volumes": [
                {
                    "name": "payload",
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "code.py",
                                "fieldRef": {"fieldPath": "metadata.annotations['sandbox.dev/code']"},
                            },
                            {
                                "path": "input.json",
                                "fieldRef": {"fieldPath": "metadata.annotations['sandbox.dev/input']"},
                            },
                        ]
                    },
                },
                {"name": "cm", "configMap": {"name": "payload"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                {"name": "output", "emptyDir": {}},
            ]
        },
    )
    final = await harness.run(pod)
    logs = "".join(ln["log"] for ln in harness.log_lines(pod))
    assert final["phase"] == "Succeeded", logs
    assert final["qosClass"] == "Guaranteed"
    assert logs.splitlines() == [
        "65532",
        "print('hi')",
        '{"a": 1}',
        "print('cm code')",
        "037213",
        "30 sbx 256",
        "sbx",
    ]


async def test_run_as_non_root_with_root_image_is_config_error(harness: Harness) -> None:
    pod = make_pod(command=["true"], spec={"securityContext": {"runAsNonRoot": True}})
    worker = harness.worker(pod)
    task = asyncio.create_task(worker.run())
    status = await harness.wait_for(lambda s: (waiting(s) or {}).get("reason") == "CreateContainerConfigError")
    assert "container has runAsNonRoot and image will run as root" in waiting(status)["message"]
    await asyncio.wait_for(worker.terminate(0), 5)
    await task


async def _network_probe(harness: Harness, pod_name: str, isolate: bool) -> bool:
    """Whether a container can reach a TCP listener on the host's loopback."""
    connected: list[bool] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(True)
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if isolate:
        harness.lookups.network_policies["ns"] = [
            {
                "spec": {
                    "podSelector": {"matchLabels": {"sandbox.dev/network": "deny"}},
                    "policyTypes": ["Ingress", "Egress"],
                }
            }
        ]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
    pod = make_pod(
        pod_name,
        image="ghcr.io/execution-operator/sandbox:dev",
        command=["python", "-c", code],
        labels={"sandbox.dev/network": "deny"},
    )
    final = await harness.run(pod)
    server.close()
    return terminated(final)["exitCode"] == 0


async def test_network_policy_denies_egress(harness: Harness) -> None:
    assert await _network_probe(harness, "open", isolate=False) is True
    assert await _network_probe(harness, "closed", isolate=True) is False


async def test_sandbox_image_runs_project_python(harness: Harness) -> None:
    pod = make_pod(
        image="ghcr.io/execution-operator/sandbox-data:1.2.3",
        command=["python", "-c", "from execution_operator import api; print(api.API_VERSION)"],
    )
    final = await harness.run(pod)
    logs = [ln["log"] for ln in harness.log_lines(pod)]
    assert final["phase"] == "Succeeded", logs
    assert logs == ["sandbox.dev/v1alpha1\n"]


async def test_sandbox_python_is_a_bare_environment(harness: Harness) -> None:
    """Like the images: the standard library and the runner, none of this environment's packages."""
    code = "import sys, importlib.util; print(sys.prefix != sys.base_prefix, importlib.util.find_spec('pydantic'))"
    pod = make_pod(image="ghcr.io/execution-operator/sandbox:1", command=["python", "-c", code])
    final = await harness.run(pod)
    logs = [ln["log"] for ln in harness.log_lines(pod)]
    assert final["phase"] == "Succeeded", logs
    assert logs == ["True None\n"]


async def test_container_root_shows_the_system_not_the_whole_host(harness: Harness) -> None:
    pod = make_pod(command=["sh", "-c", "ls -A /"])
    final = await harness.run(pod)
    assert final["phase"] == "Succeeded"
    seen = {ln["log"].strip() for ln in harness.log_lines(pod)}
    assert {"usr", "etc", "proc", "dev", "tmp"} <= seen
    host_only = {"boot", "srv", "media", "mnt", "var", "run", "opt", "sys"} & set(os.listdir("/"))
    assert not seen & host_only, seen & host_only


async def test_container_sees_only_the_interpreters_installation_not_its_home(harness: Harness) -> None:
    """The interpreter may live under a home directory (pyenv under /root, a venv in a checkout): the
    container gets that installation, never the directories around it (`.kube`, other checkouts)."""
    installations = python_installations(None)
    assert installations  # this environment's venv and source are outside the system directories
    ancestors = {str(a) for p in installations for a in Path(p).parents}
    around = sorted(
        str(entry) for p in installations for parent in Path(p).parents if str(parent) != "/"
        for entry in parent.iterdir()
        if str(entry) not in ancestors and not any(str(entry) == q or str(entry).startswith(q + os.sep)
                                                   for q in installations)
    )
    assert around, "nothing around the installations to hide"
    probe = "import os, sys; print(sorted(p for p in sys.argv[1:] if os.path.lexists(p)))"
    pod = make_pod(image="ghcr.io/execution-operator/sandbox:1",
                   command=["python", "-c", probe, *around[:200], *installations])
    final = await harness.run(pod)
    logs = [ln["log"] for ln in harness.log_lines(pod)]
    assert final["phase"] == "Succeeded", logs
    # A pod's /tmp is its own, so an installation under the host's /tmp (a checkout there) is not seen.
    visible = [p for p in installations if not (p == "/tmp" or p.startswith("/tmp/"))]
    assert logs == [f"{sorted(visible)!r}\n"]


async def test_init_container_runs_first_and_failure_fails_pod(harness: Harness) -> None:
    ok = make_pod("ok", command=["cat", "/data/x"])
    ok["spec"]["initContainers"] = [
        {
            "name": "init",
            "image": TEST_IMAGE,
            "command": ["sh", "-c", "echo from-init > /data/x"],
            "volumeMounts": [{"name": "w", "mountPath": "/data"}],
        }
    ]
    ok["spec"]["containers"][0]["volumeMounts"] = [{"name": "w", "mountPath": "/data"}]
    ok["spec"]["volumes"] = [{"name": "w", "emptyDir": {}}]
    final = await harness.run(ok)
    assert final["phase"] == "Succeeded"
    assert final["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert [ln["log"] for ln in harness.log_lines(ok)] == ["from-init\n"]
    bad = make_pod("bad", command=["true"])
    bad["spec"]["initContainers"] = [{"name": "init", "image": TEST_IMAGE, "command": ["false"]}]
    final = await harness.run(bad)
    assert final["phase"] == "Failed"
    assert cond(final, "Initialized")["status"] == "False"


def sandbox_pod(name: str, code: str, *, timeout: int = 30, memory: str = "256Mi") -> dict[str, Any]:
    """A pod shaped as contract_sandbox describes, running the real runner image entrypoint."""
    env = {
        "SANDBOX_PAYLOAD_DIR": "/sandbox/payload",
        "SANDBOX_INPUT_DIR": "/input",
        "SANDBOX_OUTPUT_DIR": "/output",
        "SANDBOX_TIMEOUT_SECONDS": str(timeout),
        "SANDBOX_OUTPUT_LIMIT_BYTES": "131072",
        "SANDBOX_STREAM_TAIL_BYTES": "16384",
        "SANDBOX_TERMINATION_LOG": "/dev/termination-log",
    }
    field = "metadata.annotations['sandbox.dev/{}']"
    return make_pod(
        name,
        image="ghcr.io/execution-operator/sandbox:0.1.0",
        annotations={"sandbox.dev/code": code, "sandbox.dev/input": '{"n": 2}'},
        labels={"sandbox.dev/network": "deny"},
        container={
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": {"limits": {"cpu": "500m", "memory": memory}, "requests": {"cpu": "500m", "memory": memory}},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "payload", "mountPath": "/sandbox/payload", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "input", "mountPath": "/input"},
                {"name": "output", "mountPath": "/output"},
            ],
        },
        spec={
            "activeDeadlineSeconds": timeout + 30,
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                {
                    "name": "payload",
                    "downwardAPI": {
                        "items": [
                            {"path": "code.py", "fieldRef": {"fieldPath": field.format("code")}},
                            {"path": "input.json", "fieldRef": {"fieldPath": field.format("input")}},
                        ]
                    },
                },
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                {"name": "input", "emptyDir": {"sizeLimit": "4Mi"}},
                {"name": "output", "emptyDir": {"sizeLimit": "16Mi"}},
            ],
        },
    )


def _report(harness: Harness, pod: dict[str, Any], final: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(termination summary, full report) after checking that their nonces agree."""
    from execution_operator.report_parsing import parse_runner_report

    summary = json.loads(terminated(final)["message"])
    log = "".join(ln["log"] for ln in harness.log_lines(pod))
    report = parse_runner_report(terminated(final)["message"], log, terminated(final)["exitCode"])
    assert report is not None
    assert report.full
    assert report.nonce == summary["nonce"]
    return summary, {"output": report.output, "stdout": report.stdout}


async def test_runner_success_end_to_end(harness: Harness) -> None:
    pod = sandbox_pod("run-ok", "import os\nprint('hello', input_data['n'])\nresult = {'double': input_data['n'] * 2}")
    final = await harness.run(pod, limit=60)
    assert final["phase"] == "Succeeded", harness.log_lines(pod)
    summary, report = _report(harness, pod, final)
    assert summary["success"] is True
    assert summary["exitCode"] == 0
    assert report["output"] == {"double": 4}
    assert "hello 2" in report["stdout"]
    assert any(ln["log"] == "hello 2\n" and ln["stream"] == "stdout" for ln in harness.log_lines(pod))


async def test_runner_exception_end_to_end(harness: Harness) -> None:
    pod = sandbox_pod("run-err", "raise ValueError('bad value')")
    final = await harness.run(pod, limit=60)
    term = terminated(final)
    assert (final["phase"], term["exitCode"]) == ("Failed", 1)
    summary, _ = _report(harness, pod, final)
    assert (summary["success"], summary["errorType"], summary["exceptionType"]) == (False, "value_error", "ValueError")


async def test_runner_memory_limit_end_to_end(harness: Harness) -> None:
    pod = sandbox_pod("run-oom", "import time\nb = bytearray(512 * 1024 * 1024)\ntime.sleep(10)", memory="96Mi")
    final = await harness.run(pod, limit=60)
    term = terminated(final)
    assert (final["phase"], term["reason"], term["exitCode"]) == ("Failed", "OOMKilled", 137)


async def test_empty_dir_over_size_limit_is_evicted(harness: Harness) -> None:
    harness.config.storage_check_seconds = 0.1
    pod = make_pod(
        "filler",
        command=["sh", "-c", "trap 'exit 143' TERM; head -c 3000000 /dev/zero > /scratch/blob; sleep 30 & wait"],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        spec={"volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]},
    )
    final = await harness.run(pod, limit=20)
    assert (final["phase"], final["reason"]) == ("Failed", "Evicted")
    assert final["message"] == 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". '
    assert cond(final, "DisruptionTarget")["reason"] == "TerminationByKubelet"
    assert terminated(final)["exitCode"] == 137


@pytest.mark.parametrize(
    ("security", "expected"),
    [({}, "00000000a80425fb"), ({"capabilities": {"drop": ["ALL"]}}, "0000000000000000")],
)
async def test_root_container_capabilities(harness: Harness, security: dict[str, Any], expected: str) -> None:
    """Root containers get the runtime's default capability set (or none), never the node's own."""
    pod = make_pod(
        "caps",
        command=["sh", "-c", "grep CapEff /proc/self/status; touch /newfile 2>/dev/null || echo ro; touch /tmp/ok"],
        container={"securityContext": security},
    )
    final = await harness.run(pod)
    assert final["phase"] == "Succeeded", harness.log_lines(pod)
    lines = [ln["log"].split() for ln in harness.log_lines(pod)]
    assert lines == [["CapEff:", expected], ["ro"]]


async def test_memory_monitor_sees_trees_spawned_before_their_watch() -> None:
    """Processes first seen while unwatched (the loop runs for other pods) still count once watched."""
    monitor = MemoryMonitor(refresh_seconds=3600)  # no periodic refresh to hide a miss
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "sh -c 'python3 -c \"import time; b = bytearray(64 << 20); time.sleep(30)\"' & wait"
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        fired: list[int] = []
        while loop.time() < deadline and not fired:
            monitor.check()  # marks the (still unwatched) tree as "outside"
            monitor.watch(proc.pid, 32 << 20, fired.append)
            monitor.check()
            monitor.unwatch(proc.pid)
            await asyncio.sleep(0.05)
        assert fired
        assert fired[0] > 32 << 20
    finally:
        proc.kill()
        await proc.wait()
        await monitor.stop()


async def test_runtime_failure_ends_pod_with_start_error(harness: Harness) -> None:
    harness.config.bwrap = "/nonexistent/bwrap"
    pod = make_pod("nostart", command=["true"])
    final = await harness.run(pod)
    term = terminated(final)
    assert (final["phase"], term["reason"], term["exitCode"]) == ("Failed", "StartError", 128)
    assert "failed to start" in term["message"]
