"""DeadLetters against an in-memory API that behaves like the server where it matters.

The fake enforces resourceVersion preconditions, 409 AlreadyExists, the status subresource split, uid
delete preconditions and the CRD schemas (pruning, defaults, validation), so every object the code
writes is one the real API server would accept.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from execution_operator import deadletter_build, metrics, safejson
from execution_operator.api import ANNOTATION_REPLAY, ANNOTATION_REPLAY_OF, ANNOTATION_REPLAY_PENDING, LABEL_REPLAY_OF
from execution_operator.bounds import (
    DEAD_LETTER_MAX_INPUT_BYTES,
    MAX_CODE_CHARS,
    MAX_ERROR_DETAILS_CHARS,
    MAX_INPUT_BYTES,
    STREAM_TAIL_BYTES,
    json_size,
)
from execution_operator.deadletter_build import (
    MAX_REQUEST_BYTES,
    MAX_STORED_BYTES,
    ReplayRefused,
    build_dead_letter,
    dead_letter_name,
    next_replay_number,
    replay_correlation_id,
    replay_execution,
    replay_name,
    request_size,
    stored_size,
    wants_dead_letter,
)
from execution_operator.deadletters import DeadLetters
from execution_operator.errors import INFRASTRUCTURE_TYPES, ErrorType
from execution_operator.k8s import ApiError
from execution_operator.models import DeadLetter, DeadLetterPolicy, Execution
from localcluster.schema import default_and_prune, validate

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 7, 1, 10, 0, 0, tzinfo=UTC)
NS = "team-a"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"{plural}.sandbox.dev.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


SCHEMAS = {plural: crd_schema(plural) for plural in ("deadletters", "executions")}


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def rfc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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


_PATH = re.compile(
    r"^/apis?/(?:sandbox\.dev/v1alpha1|v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$"
)


def _status(code: int, reason: str, message: str = "") -> ApiError:
    return ApiError(code, {"kind": "Status", "code": code, "reason": reason, "message": message})


class FakeApi:
    """Namespaced objects by (plural, namespace, name), with the server's write semantics."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.rv = itertools.count(100)
        self.calls: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        #: Called before a write is applied, with (verb, plural, name, sub); may raise to inject a failure.
        self.before: Callable[[str, str, str | None, str | None], None] | None = None

    # -- helpers for tests --------------------------------------------------------------------------

    def of(self, plural: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (p, _, _), o in sorted(self.objects.items()) if p == plural]

    def obj(self, plural: str, name: str, namespace: str = NS) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def put(self, plural: str, body: dict[str, Any], *, created: datetime | None = None) -> dict[str, Any]:
        """Store an object directly (as if created earlier), with server-set metadata."""
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", NS)
        meta["uid"] = meta.get("uid") or str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self.rv))
        meta["creationTimestamp"] = rfc(created or self.clock())
        self.objects[(plural, meta["namespace"], meta["name"])] = body
        return copy.deepcopy(body)

    def annotate(self, name: str, key: str, value: str | None, namespace: str = NS) -> dict[str, Any]:
        """`kubectl annotate`: a write by someone else."""
        obj = self.objects[("deadletters", namespace, name)]
        obj["metadata"] = merge_patch(obj["metadata"], {"annotations": {key: value}})
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(obj)

    # -- the API ------------------------------------------------------------------------------------

    def _parse(self, path: str) -> tuple[str, str, str | None, str | None]:
        found = _PATH.match(path)
        assert found, path
        return found["plural"], found["ns"], found["name"], found["sub"]

    def _check(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        if plural not in SCHEMAS:
            return obj
        checked = default_and_prune(SCHEMAS[plural], copy.deepcopy(obj))
        errors = validate(SCHEMAS[plural], checked)
        if errors:
            raise _status(422, "Invalid", "; ".join(f"{e.field}: {e.message}" for e in errors))
        return dict(checked)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        plural, ns, name, _ = self._parse(path)
        self.calls.append(("get", path))
        await asyncio.sleep(0)
        if (plural, ns, name) not in self.objects:
            raise _status(404, "NotFound")
        return copy.deepcopy(self.objects[(plural, ns, str(name))])

    async def post(self, path: str, body: Any) -> dict[str, Any]:
        plural, ns, name, _ = self._parse(path)
        assert name is None
        self.calls.append(("post", path))
        await asyncio.sleep(0)
        if self.before:
            self.before("post", plural, body["metadata"].get("name"), None)
        if plural == "events":
            self.events.append(copy.deepcopy(body))
            return copy.deepcopy(body)
        key = (plural, ns, body["metadata"]["name"])
        assert body["metadata"].get("namespace", ns) == ns
        if key in self.objects:
            raise _status(409, "AlreadyExists", f"{plural} {key[2]} already exists")
        obj = self._check(plural, {k: v for k, v in copy.deepcopy(body).items() if k != "status"})
        obj["metadata"] = {
            **obj["metadata"],
            "namespace": ns,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(next(self.rv)),
            "creationTimestamp": rfc(self.clock()),
            "generation": 1,
        }
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def patch(
        self, path: str, body: Any, *, content_type: str = "application/merge-patch+json"
    ) -> dict[str, Any]:
        plural, ns, name, sub = self._parse(path)
        assert content_type == "application/merge-patch+json"
        self.calls.append(("patch", path))
        await asyncio.sleep(0)
        if self.before:
            self.before("patch", plural, name, sub)
        key = (plural, ns, str(name))
        if key not in self.objects:
            raise _status(404, "NotFound")
        old = self.objects[key]
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != old["metadata"]["resourceVersion"]:
            raise _status(
                409, "Conflict", "the object has been modified; please apply your changes to the latest version"
            )
        merged = merge_patch(old, body)
        new = copy.deepcopy(old)
        if sub == "status":
            new["status"] = merged.get("status")  # the status subresource takes only status
        else:
            new = {**merged, "status": old.get("status")}  # the main resource ignores status
            if new["status"] is None:
                new.pop("status")
        new = self._check(plural, new)
        new["metadata"]["resourceVersion"] = str(next(self.rv))
        self.objects[key] = new
        return copy.deepcopy(new)

    async def delete(self, path: str, body: Any = None) -> dict[str, Any]:
        plural, ns, name, _ = self._parse(path)
        self.calls.append(("delete", path))
        await asyncio.sleep(0)
        if self.before:
            self.before("delete", plural, name, None)
        key = (plural, ns, str(name))
        if key not in self.objects:
            raise _status(404, "NotFound")
        uid = ((body or {}).get("preconditions") or {}).get("uid")
        if uid and uid != self.objects[key]["metadata"]["uid"]:
            raise _status(409, "Conflict", "Precondition failed: UID in precondition")
        self.deleted.append((ns, str(name)))
        return self.objects.pop(key)


# ---------------------------------------------------------------------------------------------------
# Fixtures and builders
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_metrics(monkeypatch: pytest.MonkeyPatch) -> metrics.OperatorMetrics:
    om = metrics.OperatorMetrics()
    monkeypatch.setattr(metrics, "METRICS", om)
    return om


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> FakeApi:
    return FakeApi(clock)


def failed_execution(
    name: str = "etl-job",
    *,
    uid: str = "3f9c2a1b-0000-4000-8000-000000000001",
    error_type: ErrorType | str = ErrorType.DIVISION_ERROR,
    phase: str = "Failed",
    code: str = "print('about to divide')\n1/0\n",
    input_: Any = None,
    stdout: str = "about to divide\n",
    stderr: str = "Traceback (most recent call last):\nZeroDivisionError: division by zero\n",
    details: str | None = "Traceback ...\nZeroDivisionError: division by zero",
    message: str = "ZeroDivisionError: division by zero",
    attempts: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    """A failed Execution as the API server returns it (defaults applied)."""
    ex_spec: dict[str, Any] = {
        "code": code,
        "executionClassName": "default",
        "timeoutSeconds": 30,
        "retry": {"maxAttempts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 30},
        "cancel": False,
        **spec,
    }
    if input_ is not None:
        ex_spec["input"] = input_
    history = [
        {
            "attempt": n,
            "podName": f"{name}-abc123-a{n}",
            "startTime": "2026-07-01T09:59:00Z",
            "completionTime": "2026-07-01T09:59:30Z",
            "exitCode": 1,
            "errorType": str(error_type),
        }
        for n in range(1, attempts + 1)
    ]
    error: dict[str, Any] = {
        "type": str(error_type),
        "message": message,
        "retryable": False,
        "meta": {"exceptionType": "ZeroDivisionError"},
    }
    if details is not None:
        error["details"] = details
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "42", "generation": 1},
        "spec": ex_spec,
        "status": {
            "phase": phase,
            "success": False,
            "stdout": stdout,
            "stderr": stderr,
            "exitCode": 1,
            "exitCodeSource": "container",
            "error": error,
            "attempt": attempts,
            "attempts": history,
            "podName": f"{name}-abc123-a{attempts}",
            "startTime": "2026-07-01T09:59:00Z",
            "completionTime": "2026-07-01T09:59:30Z",
            "correlationId": "req-7",
        },
    }


def dead_letter_value(om: metrics.OperatorMetrics, name: str, labels: dict[str, str]) -> float:
    return om.registry.get_sample_value(name, labels) or 0.0


async def wait_for(probe: Callable[[], bool], *, within: float = 5.0, what: str) -> None:
    """Wait on a condition with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------


def test_name_is_deterministic_readable_and_unique_per_uid() -> None:
    a = dead_letter_name("etl-job", "uid-1")
    assert a == dead_letter_name("etl-job", "uid-1")
    assert a.startswith("etl-job-dl-")
    assert a != dead_letter_name("etl-job", "uid-2")
    for name in ("etl-job", "A.Very.Dotted.Name", "x" * 253, "-weird-", "UPPER"):
        made = dead_letter_name(name, str(uuid.uuid4()))
        assert len(made) <= 63, made
        assert DNS_LABEL.match(made), made
    assert len({dead_letter_name("same", str(uuid.uuid4())) for _ in range(500)}) == 500


def test_replay_names_and_correlation_ids_stay_in_bounds() -> None:
    dl = dead_letter_name("etl-job", "uid-1")
    assert replay_name(dl, 1) == f"{dl}-r1"
    assert replay_name(dl, 1) != replay_name(dl, 2)
    long_dl = "d" * 63
    names = {replay_name(long_dl, n) for n in (1, 2, 10, 12345)}
    assert len(names) == 4
    assert all(len(n) <= 63 and DNS_LABEL.match(n) for n in names)
    assert replay_correlation_id("req-7", 3) == "req-7-replay-3"
    cid = replay_correlation_id("c" * 128, 12)
    assert len(cid) == 128
    assert cid.endswith("-replay-12")


def test_next_replay_number_counts_past_the_kept_history() -> None:
    assert next_replay_number([]) == 1
    assert next_replay_number([{"name": "x-r1"}, {"name": "x-r2"}]) == 3
    last_fifty = [{"name": f"x-r{n}", "time": "t"} for n in range(31, 81)]
    assert next_replay_number(last_fifty) == 81


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_policies(error_type: ErrorType) -> None:
    assert wants_dead_letter(DeadLetterPolicy.ALL, "Failed", error_type) is (error_type != ErrorType.CANCELLED)
    assert wants_dead_letter("Infrastructure", "Failed", error_type) is (error_type in INFRASTRUCTURE_TYPES)
    assert wants_dead_letter(DeadLetterPolicy.NONE, "Failed", error_type) is False
    for phase in ("Succeeded", "Cancelled", "Running", "Retrying", "Pending", ""):
        for policy in DeadLetterPolicy:
            assert wants_dead_letter(policy, phase, error_type) is False


def test_failed_without_error_type_is_kept_only_under_all() -> None:
    assert wants_dead_letter("All", "Failed", None) is True
    assert wants_dead_letter("Infrastructure", "Failed", None) is False


def test_build_keeps_the_whole_story_and_passes_the_crd_schema() -> None:
    ex = failed_execution(input_={"rows": [1, 2, 3]}, attempts=2, ttlSecondsAfterFinished=600)
    body = build_dead_letter(ex, "default", "2026-07-01T10:00:00Z")
    meta, spec = body["metadata"], body["spec"]
    assert body["apiVersion"] == "sandbox.dev/v1alpha1"
    assert body["kind"] == "DeadLetter"
    assert meta["name"] == dead_letter_name("etl-job", ex["metadata"]["uid"])
    assert meta["namespace"] == NS
    assert "ownerReferences" not in meta
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "execution-operator",
        "sandbox.dev/error-type": "division_error",
        "sandbox.dev/execution-class": "default",
        "sandbox.dev/execution": "etl-job",
        "sandbox.dev/correlation-id": "req-7",
    }
    assert spec["executionRef"] == {"name": "etl-job", "uid": ex["metadata"]["uid"]}
    assert spec["executionSpec"]["code"] == ex["spec"]["code"]
    assert spec["executionSpec"]["input"] == {"rows": [1, 2, 3]}
    assert spec["executionSpec"]["ttlSecondsAfterFinished"] == 600
    assert spec["error"] == ex["status"]["error"]
    assert spec["attempts"] == 2
    assert [a["attempt"] for a in spec["attemptHistory"]] == [1, 2]
    assert spec["exitCode"] == 1
    assert spec["exitCodeSource"] == "container"
    assert spec["stdout"] == ex["status"]["stdout"]
    assert spec["stderr"] == ex["status"]["stderr"]
    assert spec["podName"] == "etl-job-abc123-a2"
    assert spec["failedAt"] == "2026-07-01T09:59:30Z"
    assert spec["correlationId"] == "req-7"
    assert spec["executionClassName"] == "default"
    assert spec["inputTruncated"] is False
    assert "output" not in json.dumps(spec)
    checked = default_and_prune(SCHEMAS["deadletters"], copy.deepcopy(body))
    assert validate(SCHEMAS["deadletters"], checked) == []
    assert checked["spec"] == spec, "nothing may be pruned: every field is in the CRD"
    assert DeadLetter.from_body(body).spec.error.type == ErrorType.DIVISION_ERROR


def test_build_makes_unsafe_values_label_safe_and_fills_gaps() -> None:
    ex = failed_execution("n" * 200, error_type="image_pull_error")
    ex["status"].pop("error")
    ex["status"].pop("completionTime")
    ex["status"]["correlationId"] = "has spaces / slashes"
    body = build_dead_letter(ex, "Class.With.Dots-" + "c" * 80, "2026-07-01T10:00:00Z")
    labels = body["metadata"]["labels"]
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values()), labels
    assert "sandbox.dev/correlation-id" not in labels
    assert body["spec"]["error"]["type"] == "internal_error"
    assert body["spec"]["failedAt"] == "2026-07-01T10:00:00Z"
    checked = default_and_prune(SCHEMAS["deadletters"], copy.deepcopy(body))
    assert validate(SCHEMAS["deadletters"], checked) == []


def test_large_input_is_replaced_by_a_marker() -> None:
    big = {"blob": "x" * (DEAD_LETTER_MAX_INPUT_BYTES + 1)}
    body = build_dead_letter(failed_execution(input_=big), "default", "2026-07-01T10:00:00Z")
    assert body["spec"]["inputTruncated"] is True
    assert body["spec"]["executionSpec"]["input"] == {
        "truncated": True,
        "originalBytes": DEAD_LETTER_MAX_INPUT_BYTES + 12,
    }
    kept = {"blob": "x" * (DEAD_LETTER_MAX_INPUT_BYTES - 100)}
    body = build_dead_letter(failed_execution(input_=kept), "default", "2026-07-01T10:00:00Z")
    assert body["spec"]["inputTruncated"] is False
    assert body["spec"]["executionSpec"]["input"] == kept


def go_json_bytes(obj: Any) -> int:
    """Bytes as Go's encoding/json writes them (what etcd stores for a custom resource)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return len(text.encode())


def maximal_execution(char: str, input_char: str) -> dict[str, Any]:
    code = char * MAX_CODE_CHARS
    overhead = len(json.dumps({"d": ""}))
    input_ = {"d": input_char * ((MAX_INPUT_BYTES - overhead) // len(input_char.encode()))}
    assert len(json.dumps(input_, ensure_ascii=False).encode()) <= MAX_INPUT_BYTES
    ex = failed_execution(
        code=code,
        input_=input_,
        stdout=char * STREAM_TAIL_BYTES,
        stderr=char * STREAM_TAIL_BYTES,
        details=char * MAX_ERROR_DETAILS_CHARS,
        message=char * 1024,
        attempts=20,
        correlationId="c" * 128,
    )
    ex["status"]["error"]["meta"] = {"podName": "p" * 253, "reason": "OOMKilled", "signal": "SIGKILL"}
    return ex


@pytest.mark.parametrize(
    ("char", "input_char"),
    [
        ("\U0001f600", "\U0001f600"),  # 4-byte UTF-8, 12 bytes as ASCII JSON
        ("<", "<"),  # 1 byte, 6 bytes as Go escapes it
        ("\u2028", "&"),  # 3 bytes, 6 escaped
        ("x", "\U0001f600"),
    ],
)
def test_maximal_execution_makes_a_dead_letter_under_one_mebibyte(char: str, input_char: str) -> None:
    ex = maximal_execution(char, input_char)
    body = build_dead_letter(ex, "default", "2026-07-01T10:00:00Z")
    # Leave room for what the server adds (metadata, managedFields) and status.replays.
    assert go_json_bytes(body) == stored_size(body)
    assert stored_size(body) <= MAX_STORED_BYTES < 1024 * 1024 - 64 * 1024
    assert request_size(body) < 3 * 1024 * 1024
    spec = body["spec"]
    assert spec["executionSpec"]["code"] == ex["spec"]["code"], "the code is always kept"
    assert spec["inputTruncated"] is True
    assert spec["executionSpec"]["input"]["truncated"] is True
    assert spec["error"]["type"] == "division_error"
    assert len(spec["error"]["message"]) == 1024
    # What was kept of the tails is the end, not the start.
    for key in ("stdout", "stderr"):
        assert ex["status"][key].endswith(spec[key])
    checked = default_and_prune(SCHEMAS["deadletters"], copy.deepcopy(body))
    assert validate(SCHEMAS["deadletters"], checked) == []


@pytest.mark.parametrize("char", ["<", "\U0001f600"])
def test_an_input_that_fits_its_own_bound_is_still_dropped_when_the_whole_would_not(char: str) -> None:
    """256 KiB of `<` is 1.5 MiB once Go escapes it: the input gives way, the code stays."""
    ex = maximal_execution(char, char)
    ex["spec"]["input"] = {"d": char * ((DEAD_LETTER_MAX_INPUT_BYTES - 8) // len(char.encode()))}
    assert json_size(ex["spec"]["input"]) <= DEAD_LETTER_MAX_INPUT_BYTES
    body = build_dead_letter(ex, "default", "2026-07-01T10:00:00Z")
    assert stored_size(body) <= MAX_STORED_BYTES
    assert request_size(body) <= MAX_REQUEST_BYTES
    assert body["spec"]["inputTruncated"] is True
    assert body["spec"]["executionSpec"]["input"] == {
        "truncated": True,
        "originalBytes": json_size(ex["spec"]["input"]),
    }
    assert body["spec"]["executionSpec"]["code"] == ex["spec"]["code"]


def test_an_input_that_fits_next_to_maximal_code_and_streams_is_kept() -> None:
    ex = maximal_execution("x", "x")
    ex["spec"]["input"] = {"d": "x" * (DEAD_LETTER_MAX_INPUT_BYTES - 8)}
    body = build_dead_letter(ex, "default", "2026-07-01T10:00:00Z")
    assert body["spec"]["inputTruncated"] is False
    assert body["spec"]["executionSpec"]["input"] == ex["spec"]["input"]


def test_tails_give_way_last_and_keep_their_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tighter bound the stream and details tails shrink, from the start, until the whole fits."""
    monkeypatch.setattr(deadletter_build, "MAX_STORED_BYTES", 700 * 1024)
    ex = maximal_execution("<", "<")
    for key in ("stdout", "stderr"):
        ex["status"][key] = "".join(chr(0x41 + i % 26) for i in range(STREAM_TAIL_BYTES))
    body = build_dead_letter(ex, "default", "2026-07-01T10:00:00Z")
    spec = body["spec"]
    assert stored_size(body) <= 700 * 1024
    assert spec["executionSpec"]["code"] == ex["spec"]["code"]
    assert spec["inputTruncated"] is True
    for key in ("stdout", "stderr"):
        assert 0 < len(spec[key]) < STREAM_TAIL_BYTES
        assert ex["status"][key].endswith(spec[key])
    assert 0 < len(spec["error"]["details"]) < MAX_ERROR_DETAILS_CHARS


def test_tails_are_kept_whole_when_they_fit() -> None:
    ex = maximal_execution("x", "x")
    ex["spec"]["code"] = "1/0"
    body = build_dead_letter(ex, "default", "2026-07-01T10:00:00Z")
    assert body["spec"]["stdout"] == "x" * STREAM_TAIL_BYTES
    assert body["spec"]["error"]["details"] == "x" * MAX_ERROR_DETAILS_CHARS


def test_replay_execution_is_the_snapshot_with_a_new_identity() -> None:
    dl = build_dead_letter(failed_execution(input_=[1, 2], ttlSecondsAfterFinished=60), "default", "t")
    dl["metadata"]["uid"] = "dl-uid"
    ex = replay_execution(dl, 3, None)
    name = dl["metadata"]["name"]
    assert ex["metadata"]["name"] == f"{name}-r3"
    assert ex["metadata"]["namespace"] == NS
    assert ex["metadata"]["labels"] == {LABEL_REPLAY_OF: name}
    assert ex["metadata"]["annotations"] == {ANNOTATION_REPLAY_OF: name}
    assert "ownerReferences" not in ex["metadata"]
    assert ex["spec"]["code"] == dl["spec"]["executionSpec"]["code"]
    assert ex["spec"]["input"] == [1, 2]
    assert ex["spec"]["cancel"] is False
    assert ex["spec"]["correlationId"] == "req-7-replay-3"
    assert ex["spec"]["ttlSecondsAfterFinished"] == 60
    checked = default_and_prune(SCHEMAS["executions"], copy.deepcopy(ex))
    assert validate(SCHEMAS["executions"], checked) == []
    assert Execution.from_body(ex).spec.input == [1, 2]


def test_replay_execution_with_a_dropped_input_needs_the_original() -> None:
    big = {"blob": "x" * (DEAD_LETTER_MAX_INPUT_BYTES + 1)}
    dl = build_dead_letter(failed_execution(input_=big), "default", "t")
    with pytest.raises(ReplayRefused):
        replay_execution(dl, 1, None)
    assert replay_execution(dl, 1, big)["spec"]["input"] == big


# ---------------------------------------------------------------------------------------------------
# record
# ---------------------------------------------------------------------------------------------------


async def test_record_creates_exactly_one_under_repeats_concurrency_and_restarts(
    api: FakeApi, clock: Clock, fresh_metrics: metrics.OperatorMetrics
) -> None:
    ex = failed_execution()
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    names = await asyncio.gather(*(dls.record(ex, "All") for _ in range(5)))
    names.append(await dls.record(ex, DeadLetterPolicy.ALL))
    restarted = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    names.append(await restarted.record(copy.deepcopy(ex), "All"))
    assert len(set(names)) == 1
    assert names[0] == dead_letter_name("etl-job", ex["metadata"]["uid"])
    assert len(api.of("deadletters")) == 1
    stored = api.obj("deadletters", names[0])
    assert stored["spec"]["executionRef"]["uid"] == ex["metadata"]["uid"]
    labels = {"namespace": NS, "class": "default", "error_type": "division_error"}
    assert dead_letter_value(fresh_metrics, "sandbox_dead_letters_total", labels) == 1.0


async def test_a_recreated_execution_of_the_same_name_gets_its_own(api: FakeApi, clock: Clock) -> None:
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    first = await dls.record(failed_execution(uid="uid-a"), "All")
    second = await dls.record(failed_execution(uid="uid-b"), "All")
    assert first != second
    assert len(api.of("deadletters")) == 2


async def test_record_follows_the_policy(api: FakeApi, clock: Clock, fresh_metrics: metrics.OperatorMetrics) -> None:
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    assert await dls.record(failed_execution(uid="u1"), "None") is None
    assert await dls.record(failed_execution(uid="u2"), "Infrastructure") is None
    assert await dls.record(failed_execution(uid="u3", phase="Cancelled", error_type="cancelled"), "All") is None
    assert await dls.record(failed_execution(uid="u4", phase="Succeeded"), "All") is None
    assert api.of("deadletters") == []
    name = await dls.record(failed_execution(uid="u5", error_type="image_pull_error"), "Infrastructure")
    assert name is not None
    assert api.obj("deadletters", name)["metadata"]["labels"]["sandbox.dev/error-type"] == (
        "image_pull_error"
    )
    assert (
        dead_letter_value(
            fresh_metrics,
            "sandbox_dead_letters_total",
            {"namespace": NS, "class": "default", "error_type": "division_error"},
        )
        == 0
    )


async def test_record_does_not_bring_back_a_purged_dead_letter(api: FakeApi, clock: Clock) -> None:
    ex = failed_execution()
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    name = await dls.record(ex, "All")
    assert name is not None
    ex["status"]["deadLetterName"] = name  # the controller wrote it
    await api.delete(f"/apis/sandbox.dev/v1alpha1/namespaces/{NS}/deadletters/{name}")
    assert await DeadLetters(api, clock=clock).record(ex, "All") == name  # type: ignore[arg-type]
    assert api.of("deadletters") == []


async def test_record_propagates_other_api_errors(api: FakeApi, clock: Clock) -> None:
    def refuse(verb: str, plural: str, name: str | None, sub: str | None) -> None:
        raise _status(500, "InternalError")

    api.before = refuse
    with pytest.raises(ApiError):
        await DeadLetters(api, clock=clock).record(failed_execution(), "All")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------------------------------


async def recorded(api: FakeApi, clock: Clock, **kwargs: Any) -> tuple[DeadLetters, str]:
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    name = await dls.record(failed_execution(**kwargs), "All")
    assert name is not None
    return dls, name


def replays_of(api: FakeApi, name: str) -> list[str]:
    return [r["name"] for r in (api.obj("deadletters", name).get("status") or {}).get("replays", [])]


def replay_executions(api: FakeApi, name: str) -> list[str]:
    return [
        e["metadata"]["name"]
        for e in api.of("executions")
        if (e["metadata"].get("labels") or {}).get(LABEL_REPLAY_OF) == name
    ]


async def test_replay_creates_one_execution_records_it_and_clears_the_annotation(api: FakeApi, clock: Clock) -> None:
    dls, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    clock.now += timedelta(minutes=5)
    await dls.on_event(body, "MODIFIED")
    assert replay_executions(api, name) == [f"{name}-r1"]
    ex = api.obj("executions", f"{name}-r1")
    assert ex["spec"]["correlationId"] == "req-7-replay-1"
    assert ex["spec"]["cancel"] is False
    dl = api.obj("deadletters", name)
    assert dl["status"]["replays"] == [{"name": f"{name}-r1", "time": "2026-07-01T10:05:00Z"}]
    annotations = dl["metadata"].get("annotations") or {}
    assert ANNOTATION_REPLAY not in annotations
    assert ANNOTATION_REPLAY_PENDING not in annotations
    replayed = [e for e in api.events if e["reason"] == "Replayed"]
    assert len(replayed) == 1
    assert replayed[0]["involvedObject"]["kind"] == "DeadLetter"
    assert replayed[0]["involvedObject"]["name"] == name
    assert f"{name}-r1" in replayed[0]["message"]
    # Every later event about the same object (our own writes echoing back) changes nothing.
    await dls.on_event(api.obj("deadletters", name), "MODIFIED")
    assert replay_executions(api, name) == [f"{name}-r1"]


async def test_a_redelivered_event_does_not_make_a_second_execution(api: FakeApi, clock: Clock) -> None:
    dls, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    await dls.on_event(copy.deepcopy(body), "MODIFIED")
    await dls.on_event(copy.deepcopy(body), "MODIFIED")  # the same event again, after the work is done
    restarted = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    await restarted.on_event(copy.deepcopy(body), None)  # and once more from a stale listing
    await asyncio.gather(*(restarted.on_event(copy.deepcopy(body), "MODIFIED") for _ in range(4)))
    assert replay_executions(api, name) == [f"{name}-r1"]
    assert replays_of(api, name) == [f"{name}-r1"]


async def test_concurrent_operators_handling_one_request_make_one_execution(api: FakeApi, clock: Clock) -> None:
    _, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    instances = [DeadLetters(api, clock=clock) for _ in range(4)]  # type: ignore[arg-type]
    await asyncio.gather(*(d.on_event(copy.deepcopy(body), "MODIFIED") for d in instances))
    assert replay_executions(api, name) == [f"{name}-r1"]
    assert replays_of(api, name) == [f"{name}-r1"]


async def test_replaying_twice_makes_two(api: FakeApi, clock: Clock) -> None:
    dls, name = await recorded(api, clock)
    await dls.on_event(api.annotate(name, ANNOTATION_REPLAY, "true"), "MODIFIED")
    await dls.on_event(api.annotate(name, ANNOTATION_REPLAY, "true"), "MODIFIED")
    assert replay_executions(api, name) == [f"{name}-r1", f"{name}-r2"]
    assert replays_of(api, name) == [f"{name}-r1", f"{name}-r2"]
    assert api.obj("executions", f"{name}-r2")["spec"]["correlationId"] == "req-7-replay-2"


async def test_a_stale_event_does_not_swallow_a_new_request(api: FakeApi, clock: Clock) -> None:
    """The first request's event arrives again after the user asked for a second replay."""
    dls, name = await recorded(api, clock)
    first = api.annotate(name, ANNOTATION_REPLAY, "true")
    await dls.on_event(copy.deepcopy(first), "MODIFIED")
    api.annotate(name, ANNOTATION_REPLAY, "true")
    await dls.on_event(copy.deepcopy(first), "MODIFIED")  # stale: its replays list is empty
    assert replay_executions(api, name) == [f"{name}-r1", f"{name}-r2"]
    assert replays_of(api, name) == [f"{name}-r1", f"{name}-r2"]


async def test_a_status_write_conflict_rereads_and_makes_one_execution(api: FakeApi, clock: Clock) -> None:
    dls, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    conflicts = 0

    def someone_writes_first(verb: str, plural: str, obj: str | None, sub: str | None) -> None:
        nonlocal conflicts
        if verb == "patch" and sub == "status" and conflicts < 2:
            conflicts += 1
            api.annotate(name, "team", f"ops-{conflicts}")  # e.g. kubectl label/annotate meanwhile

    api.before = someone_writes_first
    await dls.on_event(body, "MODIFIED")
    assert conflicts == 2
    assert replay_executions(api, name) == [f"{name}-r1"]
    assert replays_of(api, name) == [f"{name}-r1"]
    assert ANNOTATION_REPLAY_PENDING not in api.obj("deadletters", name)["metadata"]["annotations"]


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4], ids=["consume", "create", "status", "clear-pending"])
async def test_a_crash_at_any_step_then_a_restart_makes_exactly_one(api: FakeApi, clock: Clock, crash_at: int) -> None:
    """The process dies just before write n: 1 consume the request, 2 create the Execution, 3 record it in
    status, 4 clear the pending marker. A restart (listing, then stale events) finishes the job once."""
    dls, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    writes = 0

    def crash(verb: str, plural: str, obj: str | None, sub: str | None) -> None:
        nonlocal writes
        if plural == "events":
            return
        writes += 1
        if writes == crash_at:
            raise RuntimeError("operator killed")

    api.before = crash
    with pytest.raises(RuntimeError):
        await dls.on_event(copy.deepcopy(body), "MODIFIED")
    api.before = None
    restarted = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    # After the restart the listing shows the object as it is now, and stale events may follow.
    await restarted.on_event(api.obj("deadletters", name), None)
    await restarted.on_event(copy.deepcopy(body), "MODIFIED")
    assert replay_executions(api, name) == [f"{name}-r1"]
    assert replays_of(api, name) == [f"{name}-r1"]
    annotations = api.obj("deadletters", name)["metadata"].get("annotations") or {}
    assert ANNOTATION_REPLAY not in annotations
    assert ANNOTATION_REPLAY_PENDING not in annotations


async def test_truncated_input_is_taken_from_the_original_execution(api: FakeApi, clock: Clock) -> None:
    big = {"blob": "y" * (DEAD_LETTER_MAX_INPUT_BYTES + 5)}
    ex = failed_execution(input_=big)
    original = api.put("executions", {k: ex[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    ex["metadata"]["uid"] = original["metadata"]["uid"]
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    name = await dls.record(ex, "All")
    assert name is not None
    assert api.obj("deadletters", name)["spec"]["inputTruncated"] is True
    await dls.on_event(api.annotate(name, ANNOTATION_REPLAY, "true"), "MODIFIED")
    assert api.obj("executions", f"{name}-r1")["spec"]["input"] == big


@pytest.mark.parametrize("original", ["deleted", "recreated"])
async def test_truncated_input_without_its_original_is_refused(api: FakeApi, clock: Clock, original: str) -> None:
    big = {"blob": "y" * (DEAD_LETTER_MAX_INPUT_BYTES + 5)}
    ex = failed_execution(input_=big)
    if original == "recreated":  # same name, another object: its input is not the one that failed
        api.put(
            "executions",
            {k: ex[k] for k in ("apiVersion", "kind", "metadata", "spec")}
            | {"metadata": {"name": "etl-job", "uid": "other"}},
        )
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    name = await dls.record(ex, "All")
    assert name is not None
    await dls.on_event(api.annotate(name, ANNOTATION_REPLAY, "true"), "MODIFIED")
    assert replay_executions(api, name) == []
    dl = api.obj("deadletters", name)
    assert not (dl["metadata"].get("annotations"))
    assert not ({})
    assert not (dl.get("status") or {}).get("replays")
    warnings = [e for e in api.events if e["type"] == "Warning" and e["reason"] == "ReplayRefused"]
    assert len(warnings) == 1
    assert warnings[0]["involvedObject"]["name"] == name


async def test_a_dead_letter_too_deep_to_decode_is_never_replayed_from_its_clipped_copy(
    api: FakeApi, clock: Clock,
) -> None:
    dls, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    clipped = {**body, safejson.QUARANTINE_KEY: ".spec.executionSpec.input[0][0]"}  # as safejson marks one
    await dls.on_event(clipped, "MODIFIED")
    assert replay_executions(api, name) == []
    warnings = [e for e in api.events if e["type"] == "Warning" and e["reason"] == "ReplayRefused"]
    assert len(warnings) == 1
    assert "nested too deep" in warnings[0]["message"]


async def test_a_replay_of_a_deleted_dead_letter_is_dropped_quietly(api: FakeApi, clock: Clock) -> None:
    dls, name = await recorded(api, clock)
    body = api.annotate(name, ANNOTATION_REPLAY, "true")
    await api.delete(f"/apis/sandbox.dev/v1alpha1/namespaces/{NS}/deadletters/{name}")
    await dls.on_event(body, "MODIFIED")
    assert api.of("executions") == []


async def test_other_annotation_values_do_not_replay(api: FakeApi, clock: Clock) -> None:
    dls, name = await recorded(api, clock)
    for value in ("false", "yes", "True", ""):
        await dls.on_event(api.annotate(name, ANNOTATION_REPLAY, value), "MODIFIED")
    assert api.of("executions") == []


# ---------------------------------------------------------------------------------------------------
# retention
# ---------------------------------------------------------------------------------------------------


def dl_body(name: str, namespace: str = NS) -> dict[str, Any]:
    body = build_dead_letter(failed_execution(name, uid=f"uid-{name}"), "default", "t")
    body["metadata"]["name"] = name
    body["metadata"]["namespace"] = namespace
    return body


async def test_expired_dead_letters_are_deleted_when_seen_and_young_ones_kept(
    api: FakeApi, clock: Clock, fresh_metrics: metrics.OperatorMetrics
) -> None:
    clock.now = T0 + timedelta(days=30)
    old = api.put("deadletters", dl_body("old"), created=clock.now - timedelta(days=8))
    young = api.put("deadletters", dl_body("young"), created=clock.now - timedelta(days=1))
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    for body in (old, young):
        await dls.on_event(body, None)
    await dls.drain()
    assert [o["metadata"]["name"] for o in api.of("deadletters")] == ["young"]
    assert api.deleted == [(NS, "old")]
    assert dls.present(NS) == 1
    assert dead_letter_value(fresh_metrics, "sandbox_dead_letters_present", {"namespace": NS}) == 1.0
    dls.close()


async def test_each_dead_letter_is_scheduled_at_creation_plus_max_age(api: FakeApi, clock: Clock) -> None:
    dls = DeadLetters(api, clock=clock, max_age_seconds=3600)  # type: ignore[arg-type]
    body = api.put("deadletters", dl_body("a"), created=clock.now - timedelta(minutes=20))
    loop = asyncio.get_running_loop()
    before = loop.time()
    await dls.on_event(body, "ADDED")
    timer = dls._index[NS]["a"].timer
    assert timer is not None
    assert before + 40 * 60 - 1 <= timer.when() <= loop.time() + 40 * 60 + 1
    await dls.on_event(api.obj("deadletters", "a"), "MODIFIED")
    assert dls._index[NS]["a"].timer is timer, "a later event does not reschedule"
    await dls.on_event(body, "DELETED")
    assert timer.cancelled()
    assert dls.present(NS) == 0
    dls.close()


async def test_the_timer_deletes_at_expiry(api: FakeApi, clock: Clock) -> None:
    real = Clock(datetime.now(UTC))
    dls = DeadLetters(api, clock=lambda: datetime.now(UTC), max_age_seconds=60)  # type: ignore[arg-type]
    body = api.put("deadletters", dl_body("soon"), created=real.now - timedelta(seconds=59.8))
    keep = api.put("deadletters", dl_body("later"), created=real.now)
    await dls.on_event(body, "ADDED")
    await dls.on_event(keep, "ADDED")
    assert len(api.of("deadletters")) == 2
    await wait_for(lambda: api.deleted == [(NS, "soon")], what="the expiry timer")
    await dls.drain()
    assert [o["metadata"]["name"] for o in api.of("deadletters")] == ["later"]
    dls.close()


async def test_count_cap_deletes_the_oldest_first_in_any_listing_order(
    api: FakeApi, clock: Clock, fresh_metrics: metrics.OperatorMetrics
) -> None:
    bodies = [api.put("deadletters", dl_body(f"dl-{i}"), created=clock.now - timedelta(hours=10 - i)) for i in range(8)]
    other = api.put("deadletters", dl_body("elsewhere", "team-b"), created=clock.now - timedelta(days=2))
    for seed in range(5):
        listing = bodies[:]
        random.Random(seed).shuffle(listing)
        fake = FakeApi(clock)
        fake.objects = {k: copy.deepcopy(v) for k, v in api.objects.items()}
        dls = DeadLetters(fake, clock=clock, max_per_namespace=3)  # type: ignore[arg-type]
        for body in [other, *listing]:
            await dls.on_event(copy.deepcopy(body), None)
        await dls.drain()
        assert sorted(fake.deleted) == [(NS, f"dl-{i}") for i in range(5)], seed
        names = sorted(o["metadata"]["name"] for o in fake.of("deadletters"))
        assert names == ["dl-5", "dl-6", "dl-7", "elsewhere"]
        assert dls.present(NS) == 3
        assert dls.present("team-b") == 1
        assert dead_letter_value(fresh_metrics, "sandbox_dead_letters_present", {"namespace": NS}) == 3.0
        dls.close()


async def test_a_new_dead_letter_over_the_cap_pushes_out_the_oldest(api: FakeApi, clock: Clock) -> None:
    dls = DeadLetters(api, clock=clock, max_per_namespace=2)  # type: ignore[arg-type]
    for i in range(3):
        clock.now += timedelta(minutes=1)
        name = await dls.record(failed_execution(f"job-{i}", uid=f"u{i}"), "All")
        assert name is not None
        await dls.on_event(api.obj("deadletters", name), "ADDED")
    await dls.drain()
    assert sorted(o["spec"]["executionRef"]["name"] for o in api.of("deadletters")) == ["job-1", "job-2"]
    dls.close()


async def test_an_old_timer_never_deletes_a_recreated_object(api: FakeApi, clock: Clock) -> None:
    dls = DeadLetters(api, clock=clock, max_age_seconds=3600)  # type: ignore[arg-type]
    first = api.put("deadletters", dl_body("same"), created=clock.now)
    await dls.on_event(first, "ADDED")
    # Deleted and re-created while the operator missed the DELETED event.
    second = api.put("deadletters", dl_body("same"), created=clock.now + timedelta(minutes=59))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    clock.now += timedelta(minutes=61)
    dls._start_delete(NS, "same", "age")  # the old entry's deletion: guarded by the old uid
    await dls.drain()
    assert api.of("deadletters")[0]["metadata"]["uid"] == second["metadata"]["uid"]
    await dls.on_event(second, "MODIFIED")
    timer = dls._index[NS]["same"].timer
    assert timer is not None
    assert dls._index[NS]["same"].uid == second["metadata"]["uid"]
    dls.close()


async def test_a_failed_delete_is_retried(api: FakeApi, clock: Clock) -> None:
    clock.now = T0 + timedelta(days=30)
    failures = 0

    def flaky(verb: str, plural: str, name: str | None, sub: str | None) -> None:
        nonlocal failures
        if verb == "delete" and failures < 2:
            failures += 1
            raise _status(503, "ServiceUnavailable")

    api.before = flaky
    dls = DeadLetters(api, clock=clock, retry_seconds=0.01)  # type: ignore[arg-type]
    await dls.on_event(api.put("deadletters", dl_body("old"), created=T0), None)
    await wait_for(lambda: api.deleted == [(NS, "old")], what="the retried delete")
    assert failures == 2
    await dls.drain()
    assert dls.present(NS) == 0
    dls.close()


async def test_retention_leaves_objects_being_deleted_alone(api: FakeApi, clock: Clock) -> None:
    dls = DeadLetters(api, clock=clock, max_per_namespace=1)  # type: ignore[arg-type]
    going = api.put("deadletters", dl_body("going"), created=clock.now - timedelta(hours=2))
    going["metadata"]["deletionTimestamp"] = rfc(clock.now)
    staying = api.put("deadletters", dl_body("staying"), created=clock.now - timedelta(hours=1))
    await dls.on_event(going, "MODIFIED")
    await dls.on_event(staying, "ADDED")
    await dls.drain()
    assert api.deleted == []
    assert dls.present(NS) == 1
    dls.close()


@pytest.mark.parametrize(("age", "cap"), [(0, 10), (-1, 10), (60, 0)])
def test_retention_settings_must_be_positive(api: FakeApi, age: float, cap: int) -> None:
    with pytest.raises(ValueError, match="retention"):
        DeadLetters(api, max_age_seconds=age, max_per_namespace=cap)  # type: ignore[arg-type]


async def test_close_cancels_every_timer(api: FakeApi, clock: Clock) -> None:
    dls = DeadLetters(api, clock=clock)  # type: ignore[arg-type]
    for name in ("a", "b"):
        await dls.on_event(api.put("deadletters", dl_body(name)), "ADDED")
    timers = [e.timer for e in dls._index[NS].values()]
    dls.close()
    assert timers
    assert all(t is not None and t.cancelled() for t in timers)
