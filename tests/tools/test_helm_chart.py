"""The Helm chart rendered by the real helm: lint, templates per toggle, schema rejections, object validity."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kopf._cogs.structs.references import match_namespace
from toolkit import CHART, NAMESPACE, ROOT, HelmRun, Render, by_kind, crd_schemas, operator_role, template_args

from execution_operator import dashboard
from execution_operator.__main__ import parse_args
from execution_operator.sandbox import NETWORK_POLICY_NAME, deny_all_network_policy

pytestmark = pytest.mark.tools

K8S_VERSION = "1.30"
CUSTOM_API_GROUPS = ("sandbox.dev/", "monitoring.coreos.com/")


def test_lint_strict(run_helm: HelmRun) -> None:
    proc = run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout


def test_lint_strict_with_everything_enabled(run_helm: HelmRun) -> None:
    proc = run_helm(
        "lint", "--strict", str(CHART),
        "--set", "metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true",
        "--set", "peering.enabled=true,replicaCount=2,watchNamespaces={team-a,team-b}",
    )  # fmt: skip
    assert "0 chart(s) failed" in proc.stdout


def test_crds_identical_to_repo() -> None:
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert repo, "no CRDs in crds/"
    assert chart == repo, "run hack/sync-crds.sh"
    for name in repo:
        assert filecmp.cmp(ROOT / "crds" / name, CHART / "crds" / name, shallow=False), (
            f"{name} differs: run hack/sync-crds.sh"
        )


def test_default_render(render: Render) -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == 1
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "ConfigMap"):
        assert kind in kinds
    assert not by_kind(objs, "ServiceMonitor")
    assert not by_kind(objs, "PrometheusRule")
    assert not by_kind(objs, "CustomResourceDefinition"), "CRDs belong in crds/, not templates"
    classes = {o["metadata"]["name"]: o for o in by_kind(objs, "ExecutionClass")}
    assert classes["default"]["spec"]["image"] == "ghcr.io/execution-operator/sandbox:0.1.0"
    assert classes["data-processing"]["spec"]["image"] == "ghcr.io/execution-operator/sandbox-data:0.1.0"


def test_deployment_shape(render: Render) -> None:
    (dep,) = by_kind(render(), "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/execution-operator/operator:0.1.0"
    assert "--all-namespaces" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert c["resources"]["limits"]["memory"]
    assert c["resources"]["requests"]["cpu"]
    # Pod Security Standard "restricted".
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_namespaces_and_digest_values(render: Render) -> None:
    (dep,) = by_kind(render(["watchNamespaces={team-a,team-b}", "image.digest=sha256:" + "a" * 64]), "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in c["args"]
    assert "--namespace=team-b" in c["args"]
    assert "--all-namespaces" not in c["args"]
    assert c["image"] == "ghcr.io/execution-operator/operator@sha256:" + "a" * 64


def _watched(plural: str, code: str, group: str = "GROUP", version: str = "VERSION") -> dict[tuple[str, str, str],
                                                                                           tuple[str, str]]:
    """kopf lists and watches what a handler follows (`@kopf.on.event(group, version, plural)`; `code` is how
    the handler names the plural)."""
    api_group = "sandbox.dev" if group == "GROUP" else group.strip('"')
    pattern = rf"@kopf\.on\.event\({group}, {version}, {code}"
    return {(api_group, plural, verb): ("operator", pattern) for verb in ("list", "watch")}


# Every permission the ClusterRole grants, with the code that needs it: a pattern that must occur in the
# operator's source (operator/execution_operator) or, for what kopf itself requests, in kopf's. The chart
# must grant exactly these; a permission whose code is gone, or one granted without code, fails the test.
NEEDED_PERMISSIONS: dict[tuple[str, str, str], tuple[str, str]] = {
    **_watched("executions", "EXECUTIONS"),
    **_watched("executionclasses", "EXECUTION_CLASSES"),
    **_watched("deadletters", "DEAD_LETTERS"),
    **_watched("warmpools", "WARM_POOLS"),
    **_watched("pods", '"pods"', '""', '"v1"'),
    ("sandbox.dev", "executions", "get"): ("operator", r"client\.get\(path_for\(API_VERSION, EXECUTIONS,"),
    ("sandbox.dev", "executions", "create"): ("operator", r"client\.post\(path_for\(API_VERSION, EXECUTIONS,"),
    ("sandbox.dev", "executions", "delete"): ("operator", r"client\.delete\(\s*path_for\(API_VERSION, EXECUTIONS,"),
    ("sandbox.dev", "executions/status", "patch"): ("operator", r'client\.patch\(\s*path_for\(API_VERSION, '
                                                                r'EXECUTIONS, key\[0\], key\[1\], "status"\)'),
    ("sandbox.dev", "executionclasses", "get"): ("operator", r"client\.get\(path_for\(API_VERSION, "
                                                             r"EXECUTION_CLASSES"),
    ("sandbox.dev", "executionclasses/status", "patch"): ("operator", r'client\.patch\(f"\{path\}/status"'),
    ("sandbox.dev", "deadletters", "create"): ("operator", r"client\.post\(path_for\(API_VERSION, DEAD_LETTERS,"),
    ("sandbox.dev", "deadletters", "get"): ("operator", r"client\.get\(self\._path\(namespace, name\)\)"),
    ("sandbox.dev", "deadletters", "patch"): ("operator", r"client\.patch\(\s*self\._path\(namespace, name\),"),
    ("sandbox.dev", "deadletters", "delete"): ("operator", r"client\.delete\(self\._path\(namespace, name\)"),
    ("sandbox.dev", "deadletters/status", "patch"): ("operator", r'client\.patch\(\s*self\._path\(namespace, '
                                                                 r'name, "status"\)'),
    ("sandbox.dev", "warmpools/status", "patch"): ("operator", r'client\.patch\(path_for\(API_VERSION, WARM_POOLS, '
                                                               r'key\[0\], key\[1\], "status"\)'),
    ("", "pods", "patch"): ("operator", r'client\.patch\(path_for\("v1", "pods", \*pkey\), patch\)'),
    # The attach's WebSocket upgrade is a GET; Kubernetes 1.35+ also checks create for it.
    ("", "pods/attach", "get"): ("operator", r'write_stdin\(path_for\("v1", "pods", .*"attach"\)'),
    ("", "pods/attach", "create"): ("operator", r'write_stdin\(path_for\("v1", "pods", .*"attach"\)'),
    ("", "pods", "create"): ("operator", r'create_or_get\(self\.client, path_for\("v1", "pods"'),
    ("", "pods", "get"): ("operator", r'client\.get\(path_for\("v1", "pods"'),
    ("", "pods", "delete"): ("operator", r'client\.delete\(path_for\("v1", "pods"'),
    ("", "pods/log", "get"): ("operator", r'get_text\(\s*path_for\("v1", "pods", namespace, pod, "log"\)'),
    ("", "configmaps", "create"): ("operator", r'create_or_get\(self\.client, path_for\("v1", "configmaps"'),
    ("", "configmaps", "get"): ("operator", r"return await client\.get\(f\"\{collection\}/"),
    ("networking.k8s.io", "networkpolicies", "create"): ("operator", r'create_or_get\(self\.client, path_for\('
                                                                     r'"networking\.k8s\.io/v1", "networkpolicies"'),
    ("networking.k8s.io", "networkpolicies", "get"): ("operator", r"return await client\.get\(f\"\{collection\}/"),
    ("", "events", "create"): ("operator", r'client\.post\(path_for\("v1", "events"'),
    # kopf: it follows the namespaces that match --namespace globs, and CRDs to find its resources.
    ("", "namespaces", "list"): ("kopf", r"NAMESPACES = Selector\('v1', 'namespaces'\)"),
    ("", "namespaces", "watch"): ("kopf", r"NAMESPACES = Selector\('v1', 'namespaces'\)"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): ("kopf", r"CRDS = Selector\("),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): ("kopf", r"CRDS = Selector\("),
}


def _source(where: str) -> str:
    import kopf

    root = ROOT / "operator" / "execution_operator" if where == "operator" else Path(kopf.__file__).parent
    return "\n".join(p.read_text() for p in sorted(root.rglob("*.py")))


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


GLOBS = ["team-*", "!kube-*", "ns-?", "*,!kube-system", "a-*, !a-tmp-*", "ns-[abc]", "[!k]*"]


def test_watch_namespaces_accepts_what_the_operator_accepts(run_helm: HelmRun) -> None:
    # Every glob kopf's --namespace understands renders into the operator's arguments...
    proc = run_helm(*template_args(), "--set-json", f"watchNamespaces={json.dumps(GLOBS)}")
    (dep,) = by_kind([d for d in yaml.safe_load_all(proc.stdout) if d], "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a.removeprefix("--namespace=") for a in args if a.startswith("--namespace=")] == GLOBS
    # ... and means what the operator makes of it.
    assert parse_args([f"--namespace={g}" for g in GLOBS]).namespace == GLOBS
    assert match_namespace("team-a", "team-*")
    assert not match_namespace("kube-system", "*,!kube-system")
    assert match_namespace("ns-b", "ns-[abc]")
    assert not match_namespace("kube-x", "[!k]*")


@pytest.mark.parametrize("bad", ["Team-A", "bad_ns", "", "team a", "!", "a,,b"])
def test_watch_namespaces_refuses_what_is_no_namespace_pattern(run_helm: HelmRun, bad: str) -> None:
    proc = run_helm(*template_args(), "--set-json", f"watchNamespaces={json.dumps([bad])}", check=False)
    assert proc.returncode != 0
    assert "watchNamespaces" in proc.stderr


def test_rbac_grants_only_what_the_code_uses(render: Render) -> None:
    role = operator_role(render())
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
    granted = _granted(role)
    assert granted - set(NEEDED_PERMISSIONS) == set(), "granted, but no code path needs it"
    assert set(NEEDED_PERMISSIONS) - granted == set(), "needed by the code, but not granted"
    sources = {where: _source(where) for where in ("operator", "kopf")}
    missing = {perm: pattern for perm, (where, pattern) in NEEDED_PERMISSIONS.items()
               if not re.search(pattern, sources[where])}
    assert not missing, f"the code that needed these permissions is gone (drop them from rbac.yaml): {missing}"


def test_user_roles_aggregate_into_the_built_in_roles(render: Render) -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(render(), "ClusterRole")}
    edit, view = roles["execution-operator-edit"], roles["execution-operator-view"]
    assert {k for k, v in edit["metadata"]["labels"].items() if v == "true"} == {
        "rbac.authorization.k8s.io/aggregate-to-admin", "rbac.authorization.k8s.io/aggregate-to-edit"}
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    edits, views = _granted(edit), _granted(view)
    assert ("sandbox.dev", "executions", "create") in edits
    assert ("sandbox.dev", "warmpools/scale", "update") in edits
    assert ("sandbox.dev", "deadletters", "patch") in edits, "a replay is an annotation"
    # DeadLetters are the operator's records; status is the operator's; pods are not these roles' business.
    assert not {p for p in edits if p[1] == "deadletters" and p[2] in ("create", "update")}
    assert not {p for p in edits | views if p[1].endswith("/status") or p[0] != "sandbox.dev"}
    assert {v for g, r, v in views} == {"get", "list", "watch"}
    assert ("sandbox.dev", "executionclasses", "list") in views
    for name in ("execution-operator-edit", "execution-operator-view"):
        assert name not in {r["metadata"]["name"] for r in by_kind(render(["rbac.aggregateToDefaultRoles=false"]),
                                                                     "ClusterRole")}


def test_peering_option(render: Render, run_helm: HelmRun) -> None:
    objs = render(["peering.enabled=true", "replicaCount=2"])
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert "--peering=execution-operator" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    crds = {o["metadata"]["name"] for o in by_kind(objs, "CustomResourceDefinition")}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert any("clusterkopfpeerings" in r["resources"] for r in operator_role(objs)["rules"])
    # Two replicas without peering would run two active operators.
    proc = run_helm(*template_args(["replicaCount=2"]), check=False)
    assert proc.returncode != 0
    assert "peering.enabled" in proc.stderr


def test_monitoring_gated_on_api(render: Render) -> None:
    values = ["metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true"]
    without_api = render(values)
    assert not by_kind(without_api, "ServiceMonitor")
    assert not by_kind(without_api, "PrometheusRule")
    objs = render(values, monitoring=True)
    (sm,) = by_kind(objs, "ServiceMonitor")
    (svc,) = by_kind(objs, "Service")
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics"
    assert isinstance(endpoint["port"], str)
    assert endpoint["honorLabels"] is True
    assert any(p["name"] == "metrics" for p in svc["spec"]["ports"])
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    (rule,) = by_kind(objs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "SandboxCircuitBreakerOpen",
        "SandboxExecutionFailureRatioHigh",
        "SandboxDeadLettersGrowing",
        "SandboxOperatorDown",
        "SandboxReconcileErrors",
        "SandboxOperatorNotReconciling",
        "SandboxApiErrors",
    }
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["runbook_url"].endswith("#" + r["alert"].lower())


def test_dashboard_configmap(render: Render) -> None:
    (cm,) = [o for o in by_kind(render(["grafanaDashboard.folder=Sandbox"]), "ConfigMap")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Sandbox"
    assert json.loads(cm["data"]["execution-operator.json"]) == dashboard.build_dashboard()
    (custom,) = by_kind(render(["grafanaDashboard.label=dash", "grafanaDashboard.labelValue=yes"]), "ConfigMap")
    assert custom["metadata"]["labels"]["dash"] == "yes"


def test_sandbox_network_policies(render: Render) -> None:
    pols = by_kind(render(["sandboxNetworkPolicy.namespaces={team-a,team-b}"]), "NetworkPolicy")
    sandbox = [p for p in pols if p["metadata"]["name"] == NETWORK_POLICY_NAME]
    assert sorted(p["metadata"]["namespace"] for p in sandbox) == ["team-a", "team-b"]
    for p in sandbox:
        # The same policy the operator creates on demand, so either finds the other's.
        assert p["spec"] == deny_all_network_policy(p["metadata"]["namespace"])["spec"]
        assert p["spec"]["podSelector"] == {"matchLabels": {"sandbox.dev/network": "deny"}}
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in p["spec"]
        assert "egress" not in p["spec"]
    default_ns = [p for p in by_kind(render(), "NetworkPolicy") if p["metadata"]["name"] == NETWORK_POLICY_NAME]
    assert [p["metadata"]["namespace"] for p in default_ns] == [NAMESPACE]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["replicaCount=abc"], "replicaCount"),
        (["replicaCount=3"], "replicaCount"),
        (["logFormat=xml"], "logFormat"),
        (["image.pullPolicy=Sometimes"], "pullPolicy"),
        (["image.digest=latest"], "digest"),
        (["watchNamespaces={Bad_Namespace}"], "watchNamespaces"),
        (["ports.metrics=80"], "metrics"),
        (["unknownTopLevel=1"], "unknownTopLevel"),
        (["prometheusRule.failureRatio=2"], "failureRatio"),
        (["executionClasses.default.spec.deadLetter=Sometimes"], "deadLetter"),
        (["executionClasses.default.spec.maxTimeoutSeconds=301"], "maxTimeoutSeconds"),
        (["executionClasses.default.spec.image=x:1"], "image"),
    ],
)
def test_schema_rejects_bad_values(run_helm: HelmRun, values: list[str], message: str) -> None:
    proc = run_helm(*template_args(values), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_kube_version_constraint(run_helm: HelmRun) -> None:
    proc = run_helm(*template_args(), "--kube-version", "1.27.0", check=False)
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr
    run_helm(*template_args(), "--kube-version", "1.28.0")


def test_notes_name_next_commands(run_helm: HelmRun) -> None:
    proc = run_helm("install", "x", str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl get executionclasses" in notes
    assert "rollout status deployment/x-execution-operator --timeout=" in notes  # never waits forever
    assert "kubectl wait --for=condition=Succeeded" in notes
    assert "jsonpath='{.status.output}" in notes


def _validate_custom(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in schemas:
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        errors = [e.message for e in jsonschema.Draft7Validator(schemas[key]).iter_errors(body)]
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
    elif obj["kind"] == "ServiceMonitor":
        for ep in obj["spec"]["endpoints"]:
            assert isinstance(ep["port"], str)
        assert obj["spec"]["selector"]["matchLabels"]
    elif obj["kind"] == "PrometheusRule":
        for group in obj["spec"]["groups"]:
            for rule in group["rules"]:
                assert rule["expr"]
                assert "alert" in rule or "record" in rule
    else:
        pytest.fail(f"no schema for {key}")


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="defaults"),
        pytest.param(["metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true"], id="monitoring"),
        pytest.param(["peering.enabled=true", "replicaCount=2", "watchNamespaces={a,b}"], id="peering"),
    ],
)
def test_every_object_validates(render: Render, values: list[str]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objs = render(values, monitoring=True, include_crds=True)
    schemas = crd_schemas()
    checked_custom = 0
    for obj in objs:
        if obj["apiVersion"].startswith(CUSTOM_API_GROUPS):
            _validate_custom(obj, schemas)
            checked_custom += 1
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert checked_custom >= 2  # the two ExecutionClasses at least
