"""Failure semantics end to end: every way an Execution can fail, with real runs and the real kubectl.

Most scenarios need no interaction: they are created together in one namespace by a module-scoped
fixture and waited for together (the slowest one sets the pace, not their sum); each test then checks
its own Execution. Scenarios that act on a running Execution (cancel, pod deletion, Execution
deletion) and the TTL have their own tests.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import ClusterHandle, OperatorProcess
from tests.e2e.kube import Kube, condition, execution, wait_until

TERMINAL = ("Succeeded", "Failed", "Cancelled")
STREAM_TAIL_BYTES = 16384


@dataclass(frozen=True)
class Case:
    """One scenario: the code to run and the outcome the contract promises for it."""

    code: str
    error_type: str | None
    exit_code: int | None
    retryable: bool | None = None
    attempts: int = 1
    phase: str = "Failed"
    exception_type: str | None = None
    #: Accepted exitCodeSource values (a trusted runner report reads as `container`).
    sources: tuple[str, ...] = ("container",)
    spec: dict[str, Any] = field(default_factory=dict)


def _raise(exc: str, code: str) -> Case:
    return Case(code=code, error_type=exc, exit_code=1, retryable=False)


# Each of the Python exception types docs/errors.md lists, raised the way real code raises it.
EXCEPTIONS: dict[str, tuple[str, str]] = {
    "syntax_error": ("SyntaxError", "def broken(:\n    pass\n"),
    "import_error": ("ModuleNotFoundError", "import no_such_module_anywhere\n"),
    "type_error": ("TypeError", "total = 1 + 'one'\n"),
    "value_error": ("ValueError", "number = int('forty-two')\n"),
    "key_error": ("KeyError", "config = {}\nconfig['missing']\n"),
    "index_error": ("IndexError", "items = []\nitems[3]\n"),
    "attribute_error": ("AttributeError", "value = None\nvalue.strip()\n"),
    "name_error": ("NameError", "print(undefined_variable)\n"),
    "file_not_found": ("FileNotFoundError", "open('/input/no-such-file.csv').read()\n"),
    "recursion_error": ("RecursionError", "def down(n):\n    return down(n + 1)\ndown(0)\n"),
    "division_error": ("ZeroDivisionError", "rows = []\nprint(10 / len(rows))\n"),
    "encoding_error": ("UnicodeDecodeError", "b'\\xff\\xfe\\xfa'.decode('utf-8')\n"),
    "json_error": ("JSONDecodeError", "import json\njson.loads('{not json')\n"),
    "runtime_error": ("RuntimeError", "raise RuntimeError('the model did not converge')\n"),
    # No capabilities (CAP_DAC_OVERRIDE included): a file without permission bits cannot be read back.
    "permission": (
        "PermissionError",
        "import os\nopen('/tmp/secret', 'w').close()\nos.chmod('/tmp/secret', 0)\nopen('/tmp/secret').read()\n",
    ),
    # The root filesystem is read-only: EROFS, an OSError that is neither of the above.
    "os_error": ("OSError", "open('/etc/new-config', 'w').write('x')\n"),
    # Connection refused on loopback: no network needed, so it behaves the same behind the deny-all policy.
    "network_error": (
        "ConnectionRefusedError", "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=5)\n",
    ),
    # A peer that accepts but never answers: a socket read timeout.
    "network_timeout": (
        "TimeoutError",
        "import socket\nserver = socket.socket()\nserver.bind(('127.0.0.1', 0))\nserver.listen()\n"
        "client = socket.create_connection(server.getsockname(), timeout=5)\nclient.settimeout(0.5)\n"
        "client.recv(1)\n",
    ),
}

NETWORK_TYPES = ("network_error", "network_timeout")

CASES: dict[str, Case] = {
    **{
        f"exc-{etype.replace('_', '-')}": Case(
            code=code, error_type=etype, exit_code=1, retryable=etype in NETWORK_TYPES, exception_type=exc,
            spec={"retry": {"maxAttempts": 1}} if etype in NETWORK_TYPES else {},
        )
        for etype, (exc, code) in EXCEPTIONS.items()
    },
    "sys-exit-3": Case(code="import sys\nprint('giving up')\nsys.exit(3)\n", error_type="runtime_error",
                       exit_code=3, retryable=False),
    "segfault": Case(code="import ctypes\nctypes.string_at(0)\n", error_type="segfault", exit_code=139,
                     retryable=False),
    "abort": Case(code="import os\nos.abort()\n", error_type="abort", exit_code=134, retryable=False),
    # `killed` is retryable: the default budget (2 attempts) is used up, each attempt killed again.
    "sigkill-self": Case(code="import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", error_type="killed",
                         exit_code=137, retryable=True, attempts=2, spec={"retry": {"maxAttempts": 2,
                                                                                      "backoffSeconds": 1}}),
    "busy-loop": Case(code="print('spinning')\nwhile True:\n    pass\n", error_type="timeout", exit_code=137,
                      retryable=False, spec={"timeoutSeconds": 2}),
    "long-sleep": Case(code="import time\ntime.sleep(120)\n", error_type="timeout", exit_code=137,
                       retryable=False, spec={"timeoutSeconds": 2}),
    # The user's code itself ended normally (exit code 0); its result broke the output contract.
    "output-too-large": Case(code="result = 'x' * (200 * 1024)\n", error_type="output_too_large", exit_code=0,
                             retryable=False),
    "output-not-json": Case(code="result = {'when': object()}\n", error_type="output_error", exit_code=0,
                            retryable=False),
    "transient-then-ok": Case(
        code=(
            "import os\n"
            "if os.environ['SANDBOX_ATTEMPT'] == '1':\n"
            "    raise ConnectionError('upstream reset the connection')\n"
            "result = {'attempt': int(os.environ['SANDBOX_ATTEMPT'])}\n"
        ),
        error_type=None, exit_code=0, attempts=2, phase="Succeeded",
        spec={"retry": {"maxAttempts": 3, "backoffSeconds": 1}},
    ),
    "transient-exhausted": Case(
        code="raise ConnectionResetError('upstream reset the connection')\n",
        error_type="network_error", exit_code=1, retryable=True, attempts=3, exception_type="ConnectionResetError",
        spec={"retry": {"maxAttempts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2}},
    ),
    "huge-prints": Case(
        code=(
            "import sys\n"
            "print('STDOUT-HEAD')\n"
            "print('STDERR-HEAD', file=sys.stderr)\n"
            "for i in range(20000):\n"
            "    print(f'out line {i:06d} ' + 'o' * 40)\n"
            "    print(f'err line {i:06d} ' + 'e' * 40, file=sys.stderr)\n"
            "print('STDOUT-TAIL')\n"
            "print('STDERR-TAIL', file=sys.stderr)\n"
            "result = 'done'\n"
        ),
        error_type=None, exit_code=0, phase="Succeeded",
    ),
}

# Bounded at 2 GiB, so a limit that is not enforced ends in a timeout rather than exhausting the machine.
MEMORY_HOG = Case(
    code=(
        "import sys, time\nprint('allocating', flush=True)\nprint('warned', file=sys.stderr, flush=True)\n"
        "chunks = []\nfor _ in range(128):\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
        "print('all allocated', flush=True)\ntime.sleep(120)\n"
    ),
    error_type="oom", exit_code=137, retryable=False, sources=("container", "logMarker"),
    spec={"resources": {"memory": "96Mi"}, "timeoutSeconds": 15},
)

UNKNOWN_IMAGE = "ghcr.io/execution-operator/no-such-image:0.0.0"
INVALID_IMAGE = "ghcr.io/Execution-Operator/Not A Valid Image::tag"


def reason_of(error_type: str) -> str:
    return "".join(part.capitalize() for part in error_type.split("_"))


def class_manifest(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "ExecutionClass",
        "metadata": {"name": name},
        "spec": {"image": image, "maxTimeoutSeconds": 60, **spec},
    }


@dataclass
class Batch:
    kube: Kube
    bodies: dict[str, dict[str, Any]]

    def body(self, name: str) -> dict[str, Any]:
        assert name in self.bodies, f"{name} did not finish"
        return self.bodies[name]


@pytest.fixture(scope="module")
def batch(cluster: ClusterHandle, operator: OperatorProcess | None) -> Iterator[Batch]:
    """All non-interactive scenarios, created at once in one namespace and waited for together."""
    namespace = f"e2e-fail-{uuid.uuid4().hex[:8]}"
    admin = Kube(cluster.kubeconfig)
    admin.run("create", "namespace", namespace, namespaced=False)
    kube = Kube(cluster.kubeconfig, namespace=namespace)
    manifests = [execution(name, case.code, **case.spec) for name, case in CASES.items()]
    names = {m["metadata"]["name"] for m in manifests}
    try:
        kube.run("create", "-f", "-", input=yaml.safe_dump_all(manifests))
        bodies: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:
            for item in kube.items("executions"):
                if ((item.get("status") or {}).get("phase")) in TERMINAL:
                    bodies[item["metadata"]["name"]] = item
            return names <= set(bodies)

        # On a timeout the tests of the unfinished ones fail by name; the others still get checked.
        with contextlib.suppress(AssertionError):
            wait_until(all_done, timeout=150, what="every failure scenario to finish", interval=1.0)
        yield Batch(kube, bodies)
    finally:
        admin.run("delete", "namespace", namespace, "--wait=false", check=False, namespaced=False)


def assert_outcome(body: dict[str, Any], case: Case) -> dict[str, Any]:
    """The fields every scenario checks: phase, error type and flags, exit code, attempts, condition."""
    status = body["status"]
    shown = json.dumps({k: v for k, v in status.items() if k not in ("stdout", "stderr", "conditions")}, indent=1)
    assert status["phase"] == case.phase, shown
    assert status["success"] is (case.phase == "Succeeded")
    succeeded = condition(body, "Succeeded")
    assert succeeded is not None
    if case.error_type is None:
        assert not status.get("error"), status["error"]
        assert succeeded["status"] == "True"
        assert succeeded["reason"] == "Succeeded"
    else:
        error = status["error"]
        assert error["type"] == case.error_type, shown
        assert error["retryable"] is case.retryable
        assert error["message"]
        assert "\n" not in error["message"]
        assert succeeded["status"] == "False"
        assert succeeded["reason"] == ("Cancelled" if case.phase == "Cancelled" else reason_of(case.error_type))
        if case.exception_type:
            assert error["meta"]["exceptionType"] == case.exception_type, error
    if case.exit_code is None:
        assert status.get("exitCode") is None
        assert status["exitCodeSource"] == "unknown"
    else:
        assert status["exitCode"] == case.exit_code, shown
        assert status["exitCodeSource"] in case.sources
    assert status["attempt"] == case.attempts, shown
    history = status["attempts"]
    assert [a["attempt"] for a in history] == list(range(1, case.attempts + 1)), shown
    assert all(a["podName"] for a in history), history
    assert len({a["podName"] for a in history}) == case.attempts, "a new pod per attempt"
    assert history[-1]["errorType" if case.error_type else "attempt"] == (case.error_type or case.attempts)
    assert status["podName"] == history[-1]["podName"]
    return status


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("exc-")))
def test_python_exception_types(batch: Batch, name: str) -> None:
    case = CASES[name]
    status = assert_outcome(batch.body(name), case)
    assert case.exception_type, "the traceback tail"
    assert case.exception_type in status["error"]["details"], "the traceback tail"
    assert status["attempts"][0]["errorType"] == case.error_type
    assert status["attempts"][0]["exitCode"] == 1


@pytest.mark.parametrize("name", ["sys-exit-3", "segfault", "abort", "busy-loop", "long-sleep",
                                  "output-too-large", "output-not-json"])
def test_exits_signals_limits_and_output(batch: Batch, name: str) -> None:
    case = CASES[name]
    status = assert_outcome(batch.body(name), case)
    error = status["error"]
    if name == "sys-exit-3":
        assert "giving up" in status["stdout"]
    if name in ("segfault", "abort"):
        assert error["meta"]["signal"] == {"segfault": "SIGSEGV", "abort": "SIGABRT"}[name]
    if name == "busy-loop":
        assert "spinning" in status["stdout"]
    if name in ("busy-loop", "long-sleep"):
        assert "2" in error["message"], "the message names the limit"
    if name in ("output-too-large", "output-not-json"):
        assert status.get("output") is None


def test_sigkill_of_itself_is_killed_and_retried(batch: Batch) -> None:
    case = CASES["sigkill-self"]
    status = assert_outcome(batch.body("sigkill-self"), case)
    assert [a["errorType"] for a in status["attempts"]] == ["killed", "killed"]
    assert [a["exitCode"] for a in status["attempts"]] == [137, 137]
    assert status["error"]["meta"]["signal"] == "SIGKILL"


def test_transient_failure_succeeds_on_retry(batch: Batch) -> None:
    status = assert_outcome(batch.body("transient-then-ok"), CASES["transient-then-ok"])
    assert status["output"] == {"attempt": 2}
    first, second = status["attempts"]
    assert first["errorType"] == "network_error"
    assert first["exitCode"] == 1
    assert second.get("errorType") is None
    assert second["exitCode"] == 0
    assert first["completionTime"] <= second["startTime"]


def test_transient_failure_exhausts_its_attempts(batch: Batch) -> None:
    status = assert_outcome(batch.body("transient-exhausted"), CASES["transient-exhausted"])
    assert [a["errorType"] for a in status["attempts"]] == ["network_error"] * 3
    assert [a["exitCode"] for a in status["attempts"]] == [1, 1, 1]
    assert status.get("nextAttemptAt") is None


def test_stdout_and_stderr_are_kept_apart_as_bounded_tails(batch: Batch) -> None:
    status = assert_outcome(batch.body("huge-prints"), CASES["huge-prints"])
    out, err = status["stdout"], status["stderr"]
    assert out.rstrip().endswith("STDOUT-TAIL")
    assert err.rstrip().endswith("STDERR-TAIL")
    assert "STDOUT-HEAD" not in out, "the tail is kept, not the head"
    assert "STDERR-HEAD" not in err, "the tail is kept, not the head"
    assert "err line" not in out, "the streams are not mixed"
    assert "out line" not in err, "the streams are not mixed"
    assert "out line 019999" in out
    assert "err line 019999" in err
    assert len(out.encode()) <= STREAM_TAIL_BYTES + 256
    assert len(err.encode()) <= STREAM_TAIL_BYTES + 256
    assert status["stdoutTruncated"] is True
    assert status["stderrTruncated"] is True
    assert status["output"] == "done"


# -------------------------------------------------------------------------- scenarios of their own


@pytest.fixture
def image_classes(kube: Kube) -> Iterator[tuple[str, str]]:
    """Two cluster-scoped classes (unknown image, invalid image) with a short pending timeout; deleted after.

    10 s: short for the suite, long enough for a real kubelet to get as far as the pull error.
    """
    suffix = uuid.uuid4().hex[:6]
    names = (f"e2e-unknown-image-{suffix}", f"e2e-invalid-image-{suffix}")
    manifests = [class_manifest(names[0], UNKNOWN_IMAGE, pendingTimeoutSeconds=10),
                 class_manifest(names[1], INVALID_IMAGE, pendingTimeoutSeconds=10)]
    kube.run("apply", "-f", "-", input=yaml.safe_dump_all(manifests), namespaced=False)
    try:
        yield names
    finally:
        for name in names:
            kube.run("delete", "executionclass", name, "--ignore-not-found", check=False, namespaced=False)


def test_unknown_and_invalid_images(kube: Kube, image_classes: tuple[str, str]) -> None:
    """Not in the batch: a loaded node leaves pods unscheduled past a short pending timeout (`unschedulable`)."""
    unknown_cls, invalid_cls = image_classes
    kube.run("create", "-f", "-", input=yaml.safe_dump_all([
        execution("unknown-image", "print('never runs')", executionClassName=unknown_cls,
                  retry={"maxAttempts": 2, "backoffSeconds": 1}),
        execution("invalid-image", "print('never runs')", executionClassName=invalid_cls),
    ]))
    # An unknown image is retryable: both attempts end in image_pull_error after the pending timeout.
    status = assert_outcome(kube.wait_terminal("unknown-image", timeout=90),
                            Case(code="", error_type="image_pull_error", exit_code=None, retryable=True, attempts=2))
    assert [a["errorType"] for a in status["attempts"]] == ["image_pull_error"] * 2
    assert UNKNOWN_IMAGE in status["error"]["message"] + (status["error"].get("details") or "")
    assert status["error"]["meta"]["reason"] in ("ErrImagePull", "ImagePullBackOff")
    # An invalid image name is not retried.
    status = assert_outcome(kube.wait_terminal("invalid-image", timeout=60),
                            Case(code="", error_type="invalid_image", exit_code=None, retryable=False))
    assert status["error"]["meta"]["reason"] == "InvalidImageName"
    # The stuck pods are stopped, not left pulling forever.
    wait_until(lambda: not kube.items("pods", "-l", "sandbox.dev/execution in (unknown-image,invalid-image)"),
               timeout=30, what="the pods of both to be deleted")


def test_memory_hog_over_its_limit_is_oom_and_stdout_kept_after_oom(kube: Kube) -> None:
    """Run alone: a node that measures memory by polling (the local one) is most exact when not loaded."""
    kube.create(execution("memory-hog", MEMORY_HOG.code, **MEMORY_HOG.spec))
    status = assert_outcome(kube.wait_terminal("memory-hog", timeout=60), MEMORY_HOG)
    assert "all allocated" not in status.get("stdout", ""), "stopped at the limit, long before 2 GiB"
    # What the code printed before the kill stays in the streams (whether the runner or only the log told it).
    streams = status.get("stdout", "") + status.get("stderr", "")
    assert "allocating" in status.get("stdout", ""), status
    assert "warned" in streams, status
    assert "allocating" not in (status["error"].get("details") or "")
    assert status["error"]["meta"]["signal"] == "SIGKILL"


def wait_running(kube: Kube, name: str, timeout: float = 60) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        body = kube.get("execution", name, check=False) or {}
        status = body.get("status") or {}
        assert status.get("phase") not in TERMINAL, f"{name} finished before it was seen running: {status}"
        return body if status.get("phase") == "Running" else None

    return wait_until(running, timeout=timeout, what=f"{name} to be Running")


def pods_of(kube: Kube, name: str) -> list[dict[str, Any]]:
    return kube.items("pods", "-l", f"sandbox.dev/execution={name}")


def test_cancel_mid_run(kube: Kube) -> None:
    kube.create(execution("cancel-me", "import time\nprint('working', flush=True)\ntime.sleep(120)\n",
                          timeoutSeconds=60))
    body = wait_running(kube, "cancel-me")
    pod = body["status"]["podName"]
    kube.run("patch", "execution", "cancel-me", "--type", "merge", "-p", json.dumps({"spec": {"cancel": True}}))
    kube.wait("execution/cancel-me", "condition=Succeeded=False", timeout=60)
    final = kube.get("execution", "cancel-me")
    assert final is not None
    status = assert_outcome(final, Case(code="", error_type="cancelled", exit_code=None, retryable=False,
                                       phase="Cancelled", sources=("unknown",)))
    assert status["error"]["meta"]["podName"] == pod
    assert status["attempts"][0]["errorType"] == "cancelled"
    wait_until(lambda: kube.get("pod", pod, check=False) is None, timeout=60, what="the cancelled pod to be gone")


def test_pod_deleted_mid_run_is_retried_and_succeeds(kube: Kube) -> None:
    code = (
        "import os, time\n"
        "attempt = int(os.environ['SANDBOX_ATTEMPT'])\n"
        "if attempt == 1:\n"
        "    time.sleep(55)\n"
        "result = {'attempt': attempt}\n"
    )
    kube.create(execution("lose-pod", code, timeoutSeconds=60, retry={"maxAttempts": 1, "backoffSeconds": 1}))
    body = wait_running(kube, "lose-pod")
    first_pod = body["status"]["podName"]
    kube.run("delete", "pod", first_pod, "--wait=false")
    body = kube.wait_terminal("lose-pod", timeout=90)
    # maxAttempts 1: a disruption does not consume the user's retry budget.
    status = assert_outcome(body, Case(code="", error_type=None, exit_code=0, attempts=2, phase="Succeeded"))
    assert status["output"] == {"attempt": 2}
    first, second = status["attempts"]
    assert first["podName"] == first_pod
    assert first["errorType"] == "pod_deleted"
    assert second["podName"] != first_pod
    assert second.get("errorType") is None
    wait_until(lambda: [p["metadata"]["name"] for p in pods_of(kube, "lose-pod")] == [second["podName"]],
               timeout=60, what="only the second attempt's pod to remain")


def test_deleting_an_execution_mid_run_removes_its_pod(kube: Kube) -> None:
    kube.create(execution("delete-me", "import time\ntime.sleep(55)\n", timeoutSeconds=60))
    body = wait_running(kube, "delete-me")
    pod = kube.get("pod", body["status"]["podName"])
    assert pod is not None
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["uid"] == body["metadata"]["uid"]
    assert owner["controller"] is True
    kube.run("delete", "execution", "delete-me", "--wait=false")
    wait_until(lambda: not pods_of(kube, "delete-me"), timeout=60, what="the pod to be garbage-collected")
    wait_until(lambda: kube.get("execution", "delete-me", check=False) is None, timeout=60,
               what="the Execution to be gone")


def test_ttl_after_finished_deletes_the_execution_and_its_pod(kube: Kube) -> None:
    kube.create(execution("short-lived", "result = 1\n", ttlSecondsAfterFinished=5))
    body = kube.wait_terminal("short-lived", timeout=60)
    assert body["status"]["phase"] == "Succeeded"
    assert pods_of(kube, "short-lived"), "the finished pod stays until the TTL"
    wait_until(lambda: kube.get("execution", "short-lived", check=False) is None, timeout=60,
               what="the TTL to delete the Execution")
    wait_until(lambda: not pods_of(kube, "short-lived"), timeout=60, what="the pod to follow its Execution")
