"""The sandbox pod follows Pod Security `restricted` and every rule of the contract."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.sandbox import (
    ANNOTATION_CARRIER_MAX_BYTES,
    ExecutionRef,
    PayloadTooLarge,
    build_carrier,
    build_pod,
    carrier_name,
    deny_all_network_policy,
    label_value,
    pod_name,
    uses_configmap_carrier,
)

REF = ExecutionRef(namespace="team-a", name="hello", uid="0b9d6a6e-1111-2222-3333-444455556666",
                   correlation_id="req-42")
CLS = ExecutionClassSpec(image="ghcr.io/execution-operator/sandbox:0.1.0")


def spec(**fields: object) -> ExecutionSpec:
    return ExecutionSpec.model_validate({"code": "print(1)", **fields})


def test_pod_is_restricted_and_hardened() -> None:
    pod = build_pod(REF, spec(), CLS, attempt=1)
    pod_spec = pod["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] != 0
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["activeDeadlineSeconds"] > 30
    (container,) = pod_spec["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/sandbox/payload", "/tmp", "/input", "/output"}
    allowed = {"configMap", "downwardAPI", "emptyDir"}
    for volume in pod_spec["volumes"]:
        assert set(volume) - {"name"} <= allowed
        if "emptyDir" in volume:
            assert volume["emptyDir"]["sizeLimit"]
    assert "runtimeClassName" not in pod_spec


def test_pod_identity_labels_and_owner() -> None:
    pod = build_pod(REF, spec(), CLS, attempt=3)
    meta = pod["metadata"]
    assert meta["name"] == pod_name(REF, 3)
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "execution-operator"
    assert meta["labels"]["sandbox.dev/execution"] == "hello"
    assert meta["labels"]["sandbox.dev/attempt"] == "3"
    assert meta["labels"]["sandbox.dev/correlation-id"] == "req-42"
    assert meta["labels"]["sandbox.dev/network"] == "deny"
    owner = meta["ownerReferences"][0]
    assert owner["uid"] == REF.uid
    assert owner["controller"] is True
    assert owner["kind"] == "Execution"


def test_names_are_deterministic_valid_and_short_for_long_execution_names() -> None:
    long_ref = ExecutionRef("ns", "a" * 250 + ".b", "uid-1", "c" * 128)
    names = {pod_name(long_ref, n) for n in (1, 2, 10)}
    assert len(names) == 3
    for name in names:
        assert len(name) <= 63
        assert name == name.lower()
        assert "." not in name
    assert pod_name(long_ref, 1) == pod_name(long_ref, 1)
    assert pod_name(long_ref, 1) != pod_name(ExecutionRef("ns", "a" * 250 + ".b", "uid-2", "c"), 1)
    pod = build_pod(long_ref, spec(), CLS, attempt=1)
    assert "sandbox.dev/correlation-id" not in pod["metadata"]["labels"], "128 chars is not label-safe"
    assert len(pod["metadata"]["labels"]["sandbox.dev/execution"]) <= 63


def test_label_value_keeps_valid_values_and_fixes_others() -> None:
    assert label_value("hello") == "hello"
    fixed = label_value("x" * 100)
    assert len(fixed) <= 63
    assert fixed != label_value("x" * 101)


def test_small_payloads_travel_in_annotations() -> None:
    pod = build_pod(REF, spec(input={"a": [1, 2]}), CLS, attempt=1)
    annotations = pod["metadata"]["annotations"]
    assert annotations["sandbox.dev/code"] == "print(1)"
    assert json.loads(annotations["sandbox.dev/input"]) == {"a": [1, 2]}
    payload = next(v for v in pod["spec"]["volumes"] if v["name"] == "payload")
    paths = {item["path"] for item in payload["downwardAPI"]["items"]}
    assert paths == {"code.py", "input.json"}


def test_no_input_means_no_input_file() -> None:
    pod = build_pod(REF, spec(), CLS, attempt=1)
    payload = next(v for v in pod["spec"]["volumes"] if v["name"] == "payload")
    assert [item["path"] for item in payload["downwardAPI"]["items"]] == ["code.py"]


def test_large_payloads_travel_in_a_compressed_configmap() -> None:
    big = spec(input={"rows": ["x" * 100] * 3000})
    assert uses_configmap_carrier(big)
    carrier = build_carrier(REF, big, "default")
    assert carrier["metadata"]["name"] == carrier_name(REF)
    assert carrier["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    restored = json.loads(gzip.decompress(base64.b64decode(carrier["binaryData"]["input.json.gz"])))
    assert restored == big.input
    pod = build_pod(REF, big, CLS, attempt=1)
    payload = next(v for v in pod["spec"]["volumes"] if v["name"] == "payload")
    assert payload["configMap"]["name"] == carrier_name(REF)
    assert "sandbox.dev/code" not in pod["metadata"]["annotations"]


def test_incompressible_payload_over_the_configmap_limit_is_refused() -> None:
    import random

    rng = random.Random(1)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1_400_000))
    with pytest.raises(PayloadTooLarge):
        build_carrier(REF, spec(input=noise), "default")


def test_annotation_threshold() -> None:
    under = spec(code="x" * 100000, input="y" * (ANNOTATION_CARRIER_MAX_BYTES - 100010))
    over = spec(code="x" * 100000, input="y" * (ANNOTATION_CARRIER_MAX_BYTES - 99000))
    assert not uses_configmap_carrier(under)
    assert uses_configmap_carrier(over)


def test_class_settings_reach_the_pod() -> None:
    cls = ExecutionClassSpec.model_validate({
        "image": "ghcr.io/execution-operator/sandbox-data:0.1.0",
        "command": ["python", "-m", "execution_operator.runner", "--x"],
        "env": [{"name": "MPLBACKEND", "value": "Agg"}],
        "runtimeClassName": "gvisor",
        "allowNetwork": True,
        "resources": {"defaults": {"cpu": "250m", "memory": "128Mi"}},
    })
    pod = build_pod(REF, spec(timeoutSeconds=7), cls, attempt=1)
    container = pod["spec"]["containers"][0]
    assert container["image"] == cls.image
    assert container["command"][-1] == "--x"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MPLBACKEND"] == "Agg"
    assert env["SANDBOX_TIMEOUT_SECONDS"] == "7"
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "128Mi"}
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert "sandbox.dev/network" not in pod["metadata"]["labels"]
    explicit = build_pod(REF, spec(resources={"cpu": "1", "memory": "512Mi"}), cls, attempt=1)
    assert explicit["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}


def test_deny_all_policy_selects_only_denied_sandboxes() -> None:
    policy = deny_all_network_policy("team-a")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"sandbox.dev/network": "deny"}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    assert "egress" not in policy["spec"]
