"""DeadLetters end to end with the real kubectl: the snapshot, survival, replay, policies, restarts, retention."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import SANDBOX_IMAGE, ClusterHandle, OperatorProcess
from tests.e2e.kube import ROOT, Kube, condition, execution, wait_until

FAILING_CODE = """
import sys
print("loading the batch")
print("warning: row 3 looks odd", file=sys.stderr)
rows = input_data["rows"]
print(sum(rows) / (len(rows) - 3))
"""
REPLAY = "sandbox.dev/replay"


def dead_letters_of(kube: Kube, execution_name: str) -> list[dict[str, Any]]:
    return kube.items("deadletters", "-l", f"sandbox.dev/execution={execution_name}")


def wait_dead_letter(kube: Kube, execution_name: str, timeout: float = 60) -> dict[str, Any]:
    """The Execution's DeadLetter, once its status names it."""

    def named() -> str | None:
        body = kube.get("execution", execution_name, check=False) or {}
        return (body.get("status") or {}).get("deadLetterName")

    name = wait_until(named, timeout=timeout, what=f"status.deadLetterName of {execution_name}")
    found = kube.get("deadletter", name)
    assert found is not None
    return found


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample's value from Prometheus text, by name and exact labels."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def exec_class(name: str, image: str = SANDBOX_IMAGE, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "ExecutionClass",
        "metadata": {"name": name},
        "spec": {"image": image, "maxTimeoutSeconds": 60, "pendingTimeoutSeconds": 20, **spec},
    }


@pytest.fixture
def classes(kube: Kube) -> Iterator[list[str]]:
    """Cluster-scoped ExecutionClasses a test makes; deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        kube.run("delete", "executionclass", name, "--ignore-not-found", check=False, namespaced=False)


def make_class(kube: Kube, classes: list[str], manifest: dict[str, Any]) -> str:
    kube.run("apply", "-f", "-", input=yaml.safe_dump(manifest), namespaced=False)
    classes.append(manifest["metadata"]["name"])
    return str(manifest["metadata"]["name"])


def fail_and_wait(kube: Kube, name: str, code: str = FAILING_CODE, **spec: Any) -> dict[str, Any]:
    spec.setdefault("input", {"rows": [1, 2, 3]})
    spec.setdefault("retry", {"maxAttempts": 1})
    kube.create(execution(name, code, **spec))
    body = kube.wait_terminal(name, timeout=120)
    assert body["status"]["phase"] == "Failed", body["status"]
    return body


# ---------------------------------------------------------------------------------------------------


def test_a_failed_execution_yields_one_complete_dead_letter_that_outlives_it(
    kube: Kube, operator: OperatorProcess | None
) -> None:
    ex = fail_and_wait(kube, "etl-batch", correlationId="req-etl-1", ttlSecondsAfterFinished=3600)
    status = ex["status"]
    assert status["error"]["type"] == "division_error"
    dl = wait_dead_letter(kube, "etl-batch")
    name = dl["metadata"]["name"]
    assert name.startswith("etl-batch-dl-")
    assert len(dead_letters_of(kube, "etl-batch")) == 1

    meta, spec = dl["metadata"], dl["spec"]
    assert "ownerReferences" not in meta
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "execution-operator"
    assert meta["labels"]["sandbox.dev/error-type"] == "division_error"
    assert meta["labels"]["sandbox.dev/execution-class"] == "default"
    assert meta["labels"]["sandbox.dev/execution"] == "etl-batch"
    assert spec["executionRef"] == {"name": "etl-batch", "uid": ex["metadata"]["uid"]}
    assert spec["executionSpec"]["code"] == FAILING_CODE
    assert spec["executionSpec"]["input"] == {"rows": [1, 2, 3]}
    assert spec["executionSpec"]["ttlSecondsAfterFinished"] == 3600
    assert spec["executionSpec"]["correlationId"] == "req-etl-1"
    assert spec["error"] == status["error"]
    assert spec["attempts"] == 1
    assert len(spec["attemptHistory"]) == 1
    assert spec["attemptHistory"][0]["errorType"] == "division_error"
    assert spec["exitCode"] == status["exitCode"] == 1
    assert spec["exitCodeSource"] == status["exitCodeSource"]
    assert "loading the batch" in spec["stdout"]
    assert spec["stdout"] == status["stdout"]
    assert "row 3 looks odd" in spec["stderr"]
    assert spec["stderr"] == status["stderr"]
    assert spec["podName"] == status["podName"]
    assert spec["failedAt"] == status["completionTime"]
    assert spec["correlationId"] == "req-etl-1"
    assert spec["executionClassName"] == "default"
    assert spec["inputTruncated"] is False
    assert "output" not in spec

    # kubectl shows the contract's columns, and selects by error type.
    table = kube.run("get", "dl").stdout
    assert re.search(r"NAME\s+EXECUTION\s+ERROR\s+ATTEMPTS\s+AGE", table), table
    assert re.search(rf"{name}\s+etl-batch\s+division_error\s+1\s", table), table
    assert [d["metadata"]["name"] for d in kube.items("dl", "-l", "sandbox.dev/error-type=division_error")] == [name]
    assert kube.items("dl", "-l", "sandbox.dev/error-type=oom") == []
    if operator is not None:
        labels = {"namespace": kube.namespace, "class": "default", "error_type": "division_error"}
        wait_until(
            lambda: sample(operator.metrics_text(), "sandbox_dead_letters_total", labels) == 1.0,
            timeout=10,
            what="the dead letter counter",
        )

    # The DeadLetter outlives its Execution.
    kube.run("delete", "execution", "etl-batch", "--wait=true", "--timeout=60s")
    wait_until(lambda: kube.get("execution", "etl-batch", check=False) is None, timeout=60, what="the deletion")
    kept = kube.get("deadletter", name)
    assert kept is not None
    assert kept["metadata"]["uid"] == meta["uid"]


def test_replay_after_the_cause_is_fixed_succeeds_and_each_annotation_replays_once(
    kube: Kube, classes: list[str], unique: str
) -> None:
    # The transient cause: the class points at an image that does not exist (a bad rollout).
    cls = make_class(
        kube,
        classes,
        exec_class(
            f"dl-rollout-{unique}",
            image="ghcr.io/execution-operator/sandbox-missing:0.1.0",
            pendingTimeoutSeconds=3,
            circuitBreaker={"failureThreshold": 50},
        ),
    )
    ex = fail_and_wait(kube, "report", "result = {'total': sum(input_data['rows'])}", executionClassName=cls)
    assert ex["status"]["error"]["type"] == "image_pull_error"
    dl = wait_dead_letter(kube, "report")
    name = dl["metadata"]["name"]
    assert dl["metadata"]["labels"]["sandbox.dev/error-type"] == "image_pull_error"
    assert dl["spec"]["executionClassName"] == cls

    # The image is fixed; one kubectl command replays the failure.
    kube.run(
        "patch",
        "executionclass",
        cls,
        "--type=merge",
        "-p",
        f'{{"spec":{{"image":"{SANDBOX_IMAGE}"}}}}',
        namespaced=False,
    )
    kube.run("annotate", f"dl/{name}", f"{REPLAY}=true")
    replay = f"{name}-r1"
    wait_until(lambda: kube.get("execution", replay, check=False), timeout=30, what=f"the replay {replay}")
    kube.wait(f"execution/{replay}", "condition=Succeeded", timeout=120)
    replayed = kube.get("execution", replay)
    assert replayed is not None
    assert replayed["status"]["output"] == {"total": 6}
    assert replayed["metadata"]["labels"]["sandbox.dev/replay-of"] == name
    assert replayed["metadata"]["annotations"]["sandbox.dev/replay-of"] == name
    assert replayed["spec"]["correlationId"].endswith("-replay-1")
    assert replayed["spec"]["executionClassName"] == cls

    def settled() -> dict[str, Any] | None:
        body = kube.get("deadletter", name)
        if body is None:
            return None
        annotations = body["metadata"].get("annotations") or {}
        pending = any(k.startswith(REPLAY) for k in annotations)
        return body if not pending and (body.get("status") or {}).get("replays") else None

    after = wait_until(settled, timeout=30, what="the replay to be recorded and the annotation removed")
    assert [r["name"] for r in after["status"]["replays"]] == [replay]
    events = kube.items("events", "--field-selector", f"involvedObject.name={name}")
    assert any(e["reason"] == "Replayed" for e in events), events

    # A second annotation is a second replay: exactly one more Execution.
    kube.run("annotate", f"dl/{name}", f"{REPLAY}=true")
    wait_until(
        lambda: len((kube.get("deadletter", name) or {}).get("status", {}).get("replays", [])) == 2,
        timeout=30,
        what="the second replay",
    )
    wait_until(lambda: settled() is not None, timeout=30, what="the second annotation to be removed")
    made = kube.items("executions", "-l", f"sandbox.dev/replay-of={name}")
    assert sorted(e["metadata"]["name"] for e in made) == [replay, f"{name}-r2"]


@pytest.mark.parametrize(("policy", "code"), [("None", "1/0"), ("Infrastructure", "raise ValueError('bad row')")])
def test_a_policy_that_does_not_want_it_writes_none(
    kube: Kube, classes: list[str], unique: str, policy: str, code: str
) -> None:
    quiet = make_class(kube, classes, exec_class(f"dl-{policy.lower()}-{unique}", deadLetter=policy))
    ex = fail_and_wait(kube, "quiet", code, executionClassName=quiet)
    assert ex["status"]["phase"] == "Failed"
    # Barrier: an Execution that failed later under policy All has its DeadLetter by now.
    fail_and_wait(kube, "loud", "1/0")
    wait_dead_letter(kube, "loud")
    assert dead_letters_of(kube, "quiet") == []
    assert not (kube.get("execution", "quiet") or {}).get("status", {}).get("deadLetterName")
    assert len(kube.items("deadletters")) == 1


def test_an_operator_restart_between_failure_and_dead_letter_still_yields_one(
    kube: Kube, operator: OperatorProcess | None
) -> None:
    if operator is None:
        pytest.skip("the operator runs in the cluster: this test needs to kill it")
    kube.create(
        execution("slow-fail", "import time\ntime.sleep(4)\nraise RuntimeError('late')", retry={"maxAttempts": 1})
    )
    running = wait_until(
        lambda: (b := kube.get("execution", "slow-fail", check=False)) and b.get("status", {}).get("podName") and b,
        timeout=60,
        what="the pod to be launched",
    )
    pod = running["status"]["podName"]
    operator.kill()
    try:
        # The code fails while nobody is watching.
        wait_until(
            lambda: (kube.get("pod", pod, check=False) or {}).get("status", {}).get("phase") == "Failed",
            timeout=60,
            what="the pod to fail",
        )
        before = kube.get("execution", "slow-fail")
        assert before is not None
        assert not before["status"].get("deadLetterName")
        assert dead_letters_of(kube, "slow-fail") == []
    finally:
        operator.start()
    dl = wait_dead_letter(kube, "slow-fail")
    assert dl["spec"]["error"]["type"] == "runtime_error"
    # Another restart replays the whole listing; still one, and a later failure proves it was processed.
    operator.restart()
    fail_and_wait(kube, "after-restart", "1/0")
    wait_dead_letter(kube, "after-restart")
    assert [d["metadata"]["name"] for d in dead_letters_of(kube, "slow-fail")] == [dl["metadata"]["name"]]
    failed = kube.get("execution", "slow-fail")
    assert failed is not None
    assert condition(failed, "Succeeded")["status"] == "False"  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------
# Retention: a separate operator with short settings
# ---------------------------------------------------------------------------------------------------

RETENTION_FLAGS = ("--dead-letter-max-age", "--dead-letter-max-per-namespace")


class TunedOperator(OperatorProcess):
    """The operator with extra command-line flags."""

    extra: tuple[str, ...] = ()

    def start(self) -> None:
        command = [sys.executable, "-m", "execution_operator"]
        help_text = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False, cwd=ROOT).stdout
        if not all(flag in help_text for flag in RETENTION_FLAGS):
            pytest.skip("the operator has no --dead-letter-max-age/--dead-letter-max-per-namespace flags")
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1")
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [
                *command,
                *self.extra,
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                "--bind-address",
                "127.0.0.1",
                "--log-format",
                "json",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_until(self._ready, timeout=60, what="the tuned operator's liveness endpoint")


def dead_letter_manifest(name: str, error_type: str = "oom") -> dict[str, Any]:
    """A DeadLetter as the operator writes one (retention does not care who made it)."""
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "DeadLetter",
        "metadata": {"name": name, "labels": {"sandbox.dev/error-type": error_type}},
        "spec": {
            "executionRef": {"name": name.removesuffix("-dl")},
            "executionSpec": {"code": "1/0"},
            "error": {"type": error_type, "message": "made by the test", "retryable": False},
            "attempts": 1,
        },
    }


@pytest.fixture
def tuned(cluster: ClusterHandle, operator: OperatorProcess | None, tmp_path: Path) -> Iterator[TunedOperator]:
    """Stop the suite's operator and run one with short retention; restore the suite's afterwards."""
    if operator is None:
        pytest.skip("the operator runs in the cluster with its own settings")
    operator.stop()
    op = TunedOperator(cluster.kubeconfig, tmp_path / "tuned.log")
    op.extra = ("--dead-letter-max-age", str(MAX_AGE), "--dead-letter-max-per-namespace", "3")
    try:
        op.start()
        yield op
    finally:
        op.stop()
        operator.start()


MAX_AGE = 25


def test_retention_deletes_by_age_and_by_count_and_nothing_else(
    kube: Kube, cluster: ClusterHandle, tuned: TunedOperator
) -> None:
    other = Kube(cluster.kubeconfig, namespace=f"{kube.namespace}-b")
    kube.run("create", "namespace", other.namespace, namespaced=False)
    try:
        # By count, oldest first: five in one namespace with a cap of three. Created one after the other,
        # so (creationTimestamp, name) orders them c0 < c1 < ... even within one second.
        for i in range(5):
            kube.create(dead_letter_manifest(f"c{i}-dl"))
        # Another namespace is counted on its own.
        created_at = time.monotonic()
        for i in range(2):
            other.create(dead_letter_manifest(f"b{i}-dl"))

        def remaining(k: Kube) -> list[str]:
            return sorted(d["metadata"]["name"] for d in k.items("deadletters"))

        wait_until(lambda: remaining(kube) == ["c2-dl", "c3-dl", "c4-dl"], timeout=20, what="the cap of three")
        assert remaining(other) == ["b0-dl", "b1-dl"]

        # By age: each goes MAX_AGE seconds after its creation, and not before (timestamps are whole
        # seconds, hence the one second of slack).
        wait_until(lambda: remaining(other) == [], timeout=MAX_AGE + 30, what="expiry by age", interval=0.5)
        assert time.monotonic() - created_at >= MAX_AGE - 1
        wait_until(lambda: remaining(kube) == [], timeout=30, what="expiry of the rest")
    finally:
        kube.run("delete", "namespace", other.namespace, "--wait=false", check=False, namespaced=False)


def test_a_maximal_execution_makes_a_dead_letter_under_one_mebibyte_and_replays_with_its_input(kube: Kube) -> None:
    # 102400 characters of code (mostly a comment of `<`, six bytes each once the server escapes it), an
    # input of almost 1 MiB, and streams far past their tails.
    body = (
        "import sys\nsys.stdout.write('<' * 200000)\nsys.stderr.write('&' * 200000)\nraise ValueError('<' * 5000)\n# "
    )
    code = body + "<" * (102400 - len(body))
    big_input = {"blob": "a" * (1024 * 1024 - 64)}
    ex = fail_and_wait(kube, "maximal", code, input=big_input)
    assert ex["status"]["error"]["type"] == "value_error"
    assert ex["status"]["stdoutTruncated"] is True
    dl = wait_dead_letter(kube, "maximal")
    name = dl["metadata"]["name"]
    raw = kube.run("get", "deadletter", name, "-o", "json").stdout
    assert len(raw.encode()) < 1024 * 1024
    spec = dl["spec"]
    assert spec["executionSpec"]["code"] == code
    assert spec["inputTruncated"] is True
    assert spec["executionSpec"]["input"] == {
        "truncated": True,
        "originalBytes": len('{"blob":""}') + len(big_input["blob"]),
    }
    assert spec["error"] == ex["status"]["error"]
    assert spec["stdout"] == ex["status"]["stdout"]
    assert spec["stderr"] == ex["status"]["stderr"]

    # While the original exists, a replay takes the input from it.
    kube.run("annotate", f"dl/{name}", f"{REPLAY}=true")
    replay = wait_until(lambda: kube.get("execution", f"{name}-r1", check=False), timeout=30, what="the replay")
    assert replay["spec"]["input"] == big_input
    assert replay["spec"]["code"] == code
