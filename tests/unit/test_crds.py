"""The CRDs in crds/: structural, documented, CEL rules that compile, behave and stay cheap, and the
same contract as the pydantic models (fields, bounds, defaults, enums, verdicts on sample objects)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from execution_operator import api, bounds, models
from execution_operator.errors import ErrorType

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
CRD_FILES = {
    "Execution": "executions.sandbox.dev.yaml",
    "ExecutionClass": "executionclasses.sandbox.dev.yaml",
    "DeadLetter": "deadletters.sandbox.dev.yaml",
    "WarmPool": "warmpools.sandbox.dev.yaml",
}
Schema = dict[str, Any]


def load_crd(kind: str) -> dict[str, Any]:
    return yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())


def root_schema(kind: str) -> Schema:
    version = next(v for v in load_crd(kind)["spec"]["versions"] if v["name"] == api.VERSION)
    return version["schema"]["openAPIV3Schema"]


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its dotted path (`[]` for array items)."""
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def untyped_ok(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields"))


# ---------------------------------------------------------------------------------------------------
# Kubernetes behaviours the tests emulate: defaulting, unknown fields, CEL rule evaluation
# ---------------------------------------------------------------------------------------------------


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural defaulting as the API server does it: absent fields get `default`, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def unknown_fields(schema: Schema, value: Any, path: str = "") -> list[str]:
    """Fields the server would prune (or refuse under strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
        return []
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for name, item in value.items():
            if name not in schema["properties"]:
                found.append(f"{path}.{name}")
            else:
                found += unknown_fields(schema["properties"][name], item, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            found += unknown_fields(schema["items"], item, f"{path}[]")
    return found


_CEL_ENV = celpy.Environment()


def cel_violations(schema: Schema, new: Any, old: Any = None, path: str = "") -> list[tuple[str, str]]:
    """(path, message) of every failing x-kubernetes-validations rule, Kubernetes style.

    Transition rules (those naming `oldSelf`) run only when an old value exists at that path.
    """
    failures: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        program = _CEL_ENV.program(_CEL_ENV.compile(rule["rule"]))
        result = program.evaluate(activation)
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            failures.append((path, rule["message"]))
    if isinstance(new, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in new:
                old_value = old.get(name) if isinstance(old, dict) else None
                failures += cel_violations(sub, new[name], old_value, f"{path}.{name}")
    return failures


def admit(kind: str, body: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would say about a create (old=None) or an update: [] means accepted."""
    schema = root_schema(kind)
    body = apply_defaults(schema, body)
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
    errors += [f"unknown field {p}" for p in unknown_fields(schema, body)]
    old_body = apply_defaults(schema, old) if old is not None else None
    errors += [f"{p}: {m}" for p, m in cel_violations(schema, body, old_body)]
    return errors


def execution(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Execution",
        "metadata": {"name": "ex1", "namespace": "default"},
        "spec": {"code": "print('hi')", **spec},
    }


# ---------------------------------------------------------------------------------------------------
# Shape of the CRDs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural", "short", "scope"),
    [
        ("Execution", "executions", "ex", "Namespaced"),
        ("ExecutionClass", "executionclasses", "exc", "Cluster"),
        ("DeadLetter", "deadletters", "dl", "Namespaced"),
        ("WarmPool", "warmpools", "wp", "Namespaced"),
    ],
)
def test_names_scope_version_and_status_subresource(kind: str, plural: str, short: str, scope: str) -> None:
    crd = load_crd(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.{api.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == api.GROUP
    assert spec["scope"] == scope
    assert spec["names"]["kind"] == kind
    assert spec["names"]["plural"] == plural
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["sandbox"]
    (version,) = spec["versions"]
    assert version["name"] == api.VERSION
    assert version["served"] is True
    assert version["storage"] is True
    expected: dict[str, Any] = {"status": {}}
    if kind == "WarmPool":
        # `kubectl scale`, an HPA or KEDA size the pool; the selector names its unclaimed pods.
        expected["scale"] = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                             "labelSelectorPath": ".status.selector"}
    assert version["subresources"] == expected


@pytest.mark.parametrize("kind", CRD_FILES)
def test_schema_is_structural(kind: str) -> None:
    """The apiextensions rules for a structural schema, checked node by node."""
    schema = root_schema(kind)
    jsonschema.Draft7Validator.check_schema(schema)
    problems: list[str] = []
    for path, node in walk(schema):
        if "type" not in node and not untyped_ok(node):
            problems.append(f"{path}: no type")
        if node.get("type") == "object" and "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: array without items")
        for branch in node.get("anyOf", []):
            # anyOf/allOf/oneOf branches may not carry type-independent metadata.
            if set(branch) - {"type"} or not node.get("x-kubernetes-int-or-string"):
                problems.append(f"{path}: anyOf outside the int-or-string idiom")
        if "$ref" in node or "additionalItems" in node or "uniqueItems" in node:
            problems.append(f"{path}: keyword not allowed in a CRD schema")
        if "default" in node:
            defaulted = apply_defaults(node, copy.deepcopy(node["default"]))
            errors = list(jsonschema.Draft7Validator(node).iter_errors(defaulted))
            if errors:
                problems.append(f"{path}: default {node['default']!r} is invalid: {errors[0].message}")
    assert problems == []


@pytest.mark.parametrize("kind", CRD_FILES)
def test_every_field_is_described(kind: str) -> None:
    """`kubectl explain` shows a description for every field."""
    undocumented = [
        path
        for path, node in walk(root_schema(kind))
        if path and path != ".metadata" and not path.endswith("[]") and not node.get("description")
    ]
    assert undocumented == []


@pytest.mark.parametrize("kind", CRD_FILES)
def test_printer_columns_point_into_the_schema(kind: str) -> None:
    (version,) = load_crd(kind)["spec"]["versions"]
    paths = {path for path, _ in walk(root_schema(kind))}
    columns = version["additionalPrinterColumns"]
    for column in columns:
        json_path = column["jsonPath"]
        if json_path == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        assert json_path in paths, f"{column['name']}: {json_path} is not in the schema"
        node = dict(walk(root_schema(kind)))[json_path]
        expected = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
        if node.get("format") == "date-time":
            assert column["type"] in {"date", "string"}
        else:
            assert column["type"] == expected[node["type"]], column["name"]
    names = [c["name"] for c in columns if c.get("priority", 0) == 0]
    wanted = {
        "Execution": ["Phase", "Class", "Attempt", "Exit", "Error", "Duration", "Age"],
        "ExecutionClass": ["Image", "Circuit", "Failures", "Age"],
        "DeadLetter": ["Execution", "Error", "Attempts", "Age"],
        "WarmPool": ["Class", "Desired", "Ready", "Age"],
    }
    assert names == wanted[kind]


def test_error_column_and_conditions_follow_the_contract() -> None:
    (version,) = load_crd("Execution")["spec"]["versions"]
    error_column = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Error")
    assert error_column["jsonPath"] == ".status.error.type"
    for kind in ("Execution", "ExecutionClass"):
        conditions = root_schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        item = conditions["items"]
        assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
        assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


@pytest.mark.parametrize(
    "path",
    [
        ("Execution", ".spec.input"),
        ("Execution", ".status.output"),
        ("Execution", ".status.error.meta"),
        ("DeadLetter", ".spec.error.meta"),
        ("DeadLetter", ".spec.executionSpec.input"),
    ],
)
def test_free_json_fields_preserve_unknown_fields(path: tuple[str, str]) -> None:
    kind, dotted = path
    node = dict(walk(root_schema(kind)))[dotted]
    assert node["x-kubernetes-preserve-unknown-fields"] is True
    body = apply_defaults(root_schema(kind), {"x": 1})
    assert body  # defaulting an unrelated object works


@pytest.mark.parametrize("kind", ["Execution", "DeadLetter"])
def test_error_type_enums_are_the_contract(kind: str) -> None:
    enums = [node["enum"] for path, node in walk(root_schema(kind)) if path.endswith(("error.type", "errorType"))]
    assert enums, "no error type field found"
    for enum in enums:
        assert enum == [t.value for t in ErrorType]


# ---------------------------------------------------------------------------------------------------
# CEL rules: compile, cost, behaviour
# ---------------------------------------------------------------------------------------------------


def rules(kind: str) -> list[tuple[str, dict[str, Any], Schema]]:
    return [
        (path, rule, node)
        for path, node in walk(root_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    ]


@pytest.mark.parametrize("kind", CRD_FILES)
def test_cel_rules_compile_and_have_messages(kind: str) -> None:
    for path, rule, _ in rules(kind):
        _CEL_ENV.compile(rule["rule"])
        assert rule.get("message"), f"{path}: rule without message"
        assert rule.get("reason", "FieldValueInvalid") in {
            "FieldValueInvalid",
            "FieldValueForbidden",
            "FieldValueRequired",
            "FieldValueDuplicate",
        }


# The API server's limits (k8s.io/apiserver/pkg/apis/cel/config.go): a rule's estimated cost must stay
# under PerCallLimit at runtime and StaticEstimatedCostLimit when the CRD is created.
PER_CALL_LIMIT = 1_000_000
STRING_TRAVERSAL_COST_FACTOR = 0.1


def cel_visible_size(node: Schema) -> float:
    """Upper bound of the estimated cost of comparing this node with `==`, as the estimator sees it.

    Strings cost 0.1 per byte of their maxLength x 4 (maxLength counts characters, a character may be
    4 bytes); untyped preserve-unknown fields are invisible to CEL's type checker (SchemaDeclType
    returns nil), so they add nothing to the static estimate; unbounded strings, lists or maps would
    be sized by the 3 MiB request limit, which this test refuses.
    """
    if "type" not in node:
        return 0.0 if node.get("x-kubernetes-preserve-unknown-fields") else 1.0
    kind = node["type"]
    if kind == "string":
        if "enum" in node:
            return max(len(v) for v in node["enum"]) * STRING_TRAVERSAL_COST_FACTOR
        if node.get("format") == "date-time":
            return 64 * STRING_TRAVERSAL_COST_FACTOR
        assert "maxLength" in node, "unbounded string under a CEL rule"
        return node["maxLength"] * 4 * STRING_TRAVERSAL_COST_FACTOR
    if kind == "array":
        assert "maxItems" in node, "unbounded list under a CEL rule"
        return node["maxItems"] * cel_visible_size(node["items"])
    if kind == "object":
        if "additionalProperties" in node:
            assert "maxProperties" in node, "unbounded map under a CEL rule"
            return node["maxProperties"] * cel_visible_size(node["additionalProperties"])
        return sum(cel_visible_size(sub) for sub in (node.get("properties") or {}).values()) + 1
    return 1.0


@pytest.mark.parametrize("kind", CRD_FILES)
def test_cel_rules_are_bounded_and_within_the_cost_budget(kind: str) -> None:
    """Every value a rule can see is bounded, and a generous estimate of its cost fits the budget.

    The estimate charges each rule the cost of comparing its whole subtree twice (self and oldSelf
    field by field), which is more than any of our rules does.
    """
    schema = root_schema(kind)
    for path, rule, node in rules(kind):
        assert "[]" not in path, f"{path}: rule inside a list multiplies its cost by the list size"
        estimate = 2 * cel_visible_size(node) + 10 * rule["rule"].count("&&")
        assert estimate < PER_CALL_LIMIT, f"{path}: estimated cost {estimate}"
    assert schema  # loaded


def test_spec_is_immutable_except_cancel() -> None:
    old = execution(input={"n": 1})
    assert admit("Execution", old) == []
    assert admit("Execution", copy.deepcopy(old), old=old) == []

    edited = execution(code="print('other')", input={"n": 1})
    errors = admit("Execution", edited, old=old)
    assert len(errors) == 1
    assert errors[0].startswith(".spec: spec is immutable after creation; only cancel may change")

    for change in (
        {"input": {"n": 2}},
        {"input": None},
        {"executionClassName": "data-processing"},
        {"timeoutSeconds": 60},
        {"resources": {"cpu": "1"}},
        {"retry": {"maxAttempts": 3}},
        {"correlationId": "abc"},
        {"ttlSecondsAfterFinished": 10},
    ):
        spec = {**old["spec"], **change}
        spec = {k: v for k, v in spec.items() if v is not None}
        body = {**old, "spec": spec}
        assert admit("Execution", body, old=old) != [], change


def test_cancel_may_be_set_once_and_never_reset() -> None:
    old = execution(input=[1, 2, 3])
    cancelled = execution(input=[1, 2, 3], cancel=True)
    assert admit("Execution", cancelled, old=old) == []
    # Setting cancel does not open a window for other typed fields.
    sneaky = execution(code="import os", input=[1, 2, 3], cancel=True)
    assert admit("Execution", sneaky, old=old) != []
    # And it is one-way.
    errors = admit("Execution", execution(input=[1, 2, 3], cancel=False), old=cancelled)
    assert errors == [".spec.cancel: cancel cannot be set back to false once it is true"]
    # Removing the field defaults it to false again: also refused.
    assert admit("Execution", execution(input=[1, 2, 3]), old=cancelled) != []


def test_retry_backoff_rule() -> None:
    assert admit("Execution", execution(retry={"backoffSeconds": 5, "maxBackoffSeconds": 5})) == []
    errors = admit("Execution", execution(retry={"backoffSeconds": 50, "maxBackoffSeconds": 5}))
    assert errors == [".spec.retry: backoffSeconds must not exceed maxBackoffSeconds"]


def dead_letter_body() -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "DeadLetter",
        "metadata": {"name": "dl-1", "namespace": "default"},
        "spec": {
            "executionRef": {"name": "ex1", "uid": "u-1"},
            "executionSpec": {"code": "1/0", "input": {"a": 1}},
            "error": {"type": "division_error", "message": "division by zero", "retryable": False},
            "attempts": 1,
        },
    }


def test_dead_letter_snapshot_is_immutable() -> None:
    old = dead_letter_body()
    assert admit("DeadLetter", old) == []
    assert admit("DeadLetter", copy.deepcopy(old), old=old) == []
    edited = copy.deepcopy(old)
    edited["spec"]["executionSpec"]["input"] = {"a": 2}
    assert admit("DeadLetter", edited, old=old) == [
        ".spec: a DeadLetter is an immutable snapshot; create a new Execution to run changed code"
    ]


# ---------------------------------------------------------------------------------------------------
# The server's verdicts on sample objects (the "bad input" cases of the contract)
# ---------------------------------------------------------------------------------------------------

REFUSED_EXECUTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "no code": ({"timeoutSeconds": 5}, "code"),
    "empty code": ({"code": ""}, "code"),
    "code too long": ({"code": "x" * (bounds.MAX_CODE_CHARS + 1)}, "code"),
    "timeout 0": ({"code": "1", "timeoutSeconds": 0}, "timeoutSeconds"),
    "timeout 301": ({"code": "1", "timeoutSeconds": 301}, "timeoutSeconds"),
    "maxAttempts 11": ({"code": "1", "retry": {"maxAttempts": 11}}, "maxAttempts"),
    "bad quantity": ({"code": "1", "resources": {"cpu": "two"}}, "cpu"),
    "long correlation id": ({"code": "1", "correlationId": "c" * 129}, "correlationId"),
    "negative ttl": ({"code": "1", "ttlSecondsAfterFinished": -1}, "ttlSecondsAfterFinished"),
    "unknown field": ({"code": "1", "timeout": 5}, "timeout"),
}


def _schema_errors_with_paths(kind: str, body: dict[str, Any]) -> list[str]:
    schema = root_schema(kind)
    body = apply_defaults(schema, body)
    errors = [
        ".".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in jsonschema.Draft7Validator(schema).iter_errors(body)
    ]
    return errors + [f"unknown field {p}" for p in unknown_fields(schema, body)]


@pytest.mark.parametrize("case", REFUSED_EXECUTIONS)
def test_bad_executions_are_refused_naming_the_field(case: str) -> None:
    spec, field = REFUSED_EXECUTIONS[case]
    body = execution()
    body["spec"] = spec
    errors = _schema_errors_with_paths("Execution", body)
    assert errors, case
    assert any(field in e for e in errors), errors


ACCEPTED_SPECS: list[dict[str, Any]] = [
    {"code": "x" * bounds.MAX_CODE_CHARS},
    {"code": "1", "timeoutSeconds": 300, "input": None},
    {"code": "1", "timeoutSeconds": 1, "input": [1, "a", None, {"b": [True]}]},
    {"code": "1", "input": "just a string"},
    {"code": "1", "input": 3.5},
    {"code": "1", "resources": {"cpu": 1, "memory": "512Mi"}},
    {"code": "1", "resources": {"cpu": "250m", "memory": 1073741824}},
    {"code": "1", "correlationId": "c" * 128, "ttlSecondsAfterFinished": 0, "cancel": True},
    {"code": "1", "retry": {"maxAttempts": 10, "backoffSeconds": 0, "maxBackoffSeconds": 0}},
    {"code": "1", "executionClassName": "data-processing"},
]


@pytest.mark.parametrize("spec", ACCEPTED_SPECS)
def test_models_accept_everything_the_server_accepts(spec: dict[str, Any]) -> None:
    """`from_body` must never fail on an object the API server admitted."""
    body = execution()
    body["spec"] = spec
    assert admit("Execution", body) == []
    defaulted = apply_defaults(root_schema("Execution"), body)
    parsed = models.Execution.from_body(defaulted)
    assert parsed.spec.code == spec["code"]
    # And the model writes back exactly what the server stored (quantities as strings).
    expected = copy.deepcopy(defaulted["spec"])
    for key, value in (expected.get("resources") or {}).items():
        expected["resources"][key] = str(value)
    if expected.get("input", 0) is None:
        del expected["input"]
    assert parsed.spec.to_k8s() == expected


@pytest.mark.parametrize("case", [c for c in REFUSED_EXECUTIONS if c != "unknown field"])
def test_models_refuse_what_the_server_refuses(case: str) -> None:
    spec, _ = REFUSED_EXECUTIONS[case]
    with pytest.raises(ValidationError):
        models.ExecutionSpec.model_validate(spec)


def test_backoff_rule_holds_in_the_model_too() -> None:
    with pytest.raises(ValidationError, match="backoffSeconds must not exceed maxBackoffSeconds"):
        models.RetryPolicy.model_validate({"backoffSeconds": 50, "maxBackoffSeconds": 5})


# ---------------------------------------------------------------------------------------------------
# Models and CRDs: same fields, bounds, defaults, enums
# ---------------------------------------------------------------------------------------------------

#: Deliberate differences, each with its reason. Keys are (kind, CRD path, what).
KNOWN_DIFFERENCES: dict[tuple[str, str, str], str] = {
    # errors.ErrorInfo is shared and frozen; ExecutionStatus/DeadLetterSpec clamp it before writing.
    ("Execution", ".status.error.message", "maxLength"): "clamped by ExecutionStatus",
    ("Execution", ".status.error.details", "maxLength"): "clamped by ExecutionStatus",
    ("DeadLetter", ".spec.error.message", "maxLength"): "clamped by DeadLetterSpec",
    ("DeadLetter", ".spec.error.details", "maxLength"): "clamped by DeadLetterSpec",
    # set_condition fills lastTransitionTime; the model lets callers build a condition without it.
    ("Execution", ".status.conditions[]", "required"): "lastTransitionTime filled by set_condition",
    ("ExecutionClass", ".status.conditions[]", "required"): "lastTransitionTime filled by set_condition",
    ("WarmPool", ".status.conditions[]", "required"): "lastTransitionTime filled by set_condition",
    # The breaker's own model (breaker.py) limits its message to 256 characters and its probes to
    # success_threshold/halfOpenMaxProbes; the CRD bounds are the outer envelope.
    ("ExecutionClass", ".status.circuitBreaker.lastFailure.message", "maxLength"): "breaker clamps to 256",
    ("ExecutionClass", ".status.circuitBreaker.probes", "maxItems"): "bounded by halfOpenMaxProbes",
    ("ExecutionClass", ".status.circuitBreaker.lastFailure.type", "enum"): "breaker writes ErrorType values",
    ("ExecutionClass", ".status.circuitBreaker.probesInFlight", "minimum"): "computed as len(probes)",
}

PAIRS: list[tuple[str, str, type[BaseModel]]] = [
    ("Execution", "spec", models.ExecutionSpec),
    ("Execution", "status", models.ExecutionStatus),
    ("ExecutionClass", "spec", models.ExecutionClassSpec),
    ("ExecutionClass", "status", models.ExecutionClassStatus),
    ("DeadLetter", "spec", models.DeadLetterSpec),
    ("DeadLetter", "status", models.DeadLetterStatus),
    ("WarmPool", "spec", models.WarmPoolSpec),
    ("WarmPool", "status", models.WarmPoolStatus),
]


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Follow $ref and drop the `null` branch pydantic adds for optional fields."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].split("/")[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            continue
        branches = node.get("anyOf")
        if branches:
            non_null = [b for b in branches if b.get("type") != "null"]
            if len(non_null) == 1:
                rest = {k: v for k, v in node.items() if k != "anyOf"}
                node = {**non_null[0], **rest}
                continue
        return node


_BOUNDS = ("minimum", "maximum", "minLength", "maxLength", "maxItems", "pattern")


Difference = tuple[str, str, str, str]  # kind, CRD path, what differs, detail


def _compare(kind: str, path: str, crd: Schema, model: Schema, defs: dict[str, Schema]) -> list[Difference]:
    """Every difference between a CRD schema node and the model's JSON schema for it, recursively."""
    model = _resolve(model, defs)
    problems: list[Difference] = []

    def differ(what: str, detail: str) -> None:
        problems.append((kind, path, what, detail))

    if crd.get("x-kubernetes-int-or-string"):
        if model.get("type") != "string" or "pattern" not in model:
            differ("type", "int-or-string in the CRD needs a quantity string with a pattern in the model")
        elif model["pattern"] != crd["pattern"]:
            differ("pattern", "quantity patterns differ")
        return problems
    if "type" not in crd:
        if "type" in model:
            differ("type", f"free JSON in the CRD but {model['type']} in the model")
        return problems
    model_type = "array" if model.get("type") == "array" else model.get("type")
    if crd["type"] != model_type:
        differ("type", f"CRD {crd['type']} vs model {model_type}")
        return problems
    for bound in _BOUNDS:
        if crd.get(bound) != model.get(bound):
            differ(bound, f"CRD {crd.get(bound)!r} vs model {model.get(bound)!r}")
    crd_enum, model_enum = sorted(map(str, crd.get("enum", []))), sorted(map(str, model.get("enum", [])))
    if crd_enum != model_enum:
        differ("enum", f"CRD {crd.get('enum')} vs model {model.get('enum')}")
    model_default = model.get("default")
    if isinstance(model_default, dict | list) or isinstance(crd.get("default"), dict | list):
        pass  # object and list defaults: test_server_defaults_equal_model_defaults
    elif crd.get("default") != model_default:
        differ("default", f"CRD {crd.get('default')!r} vs model {model_default!r}")
    if crd["type"] == "object" and "properties" in crd:
        problems += _compare_properties(kind, path, crd, model, defs)
    if crd["type"] == "array":
        problems += _compare(kind, f"{path}[]", crd["items"], model.get("items", {}), defs)
    return problems


def _compare_properties(kind: str, path: str, crd: Schema, model: Schema, defs: dict[str, Schema]
                        ) -> list[Difference]:
    """The differences of an object node: its fields, which are required, then each field's own."""
    problems: list[Difference] = []
    crd_props, model_props = crd["properties"], model.get("properties", {})
    if set(crd_props) != set(model_props):
        problems.append((kind, path, "fields", f"only in CRD {set(crd_props) - set(model_props)}, "
                                               f"only in model {set(model_props) - set(crd_props)}"))
    required_crd, required_model = set(crd.get("required", [])), set(model.get("required", []))
    if required_crd != required_model:
        problems.append((kind, path, "required", f"CRD {sorted(required_crd)} vs model {sorted(required_model)}"))
    for name in set(crd_props) & set(model_props):
        problems += _compare(kind, f"{path}.{name}", crd_props[name], model_props[name], defs)
    return problems


@pytest.mark.parametrize(("kind", "part", "model"), PAIRS, ids=[f"{k}.{p}" for k, p, _ in PAIRS])
def test_models_and_crds_have_the_same_fields_bounds_defaults_and_enums(
    kind: str, part: str, model: type[BaseModel]
) -> None:
    unexplained = [d for d in _differences(kind, part, model) if d[:3] not in KNOWN_DIFFERENCES]
    assert unexplained == []


def _differences(kind: str, part: str, model: type[BaseModel]) -> list[Difference]:
    crd = root_schema(kind)["properties"][part]
    model_schema = _with_computed_fields(model)
    return _compare(kind, f".{part}", crd, model_schema, model_schema.get("$defs", {}))


def _with_computed_fields(model: type[BaseModel]) -> Schema:
    """The validation schema plus the computed fields only the serialization schema lists."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    written = model.model_json_schema(by_alias=True, mode="serialization")
    pairs = [(schema, written)] + [
        (schema["$defs"][name], written["$defs"][name])
        for name in schema.get("$defs", {})
        if name in written.get("$defs", {})
    ]
    for read, write in pairs:
        for name, prop in write.get("properties", {}).items():
            if prop.get("readOnly"):
                read.setdefault("properties", {})[name] = {k: v for k, v in prop.items() if k != "readOnly"}
    return schema


def test_known_differences_are_still_real() -> None:
    """A stale exception would hide a future mismatch: every listed one must still differ."""
    found = {d[:3] for kind, part, model in PAIRS for d in _differences(kind, part, model)}
    assert set(KNOWN_DIFFERENCES) - found == set()


@pytest.mark.parametrize(
    ("kind", "body", "model"),
    [
        ("Execution", {"spec": {"code": "1"}}, models.Execution),
        ("ExecutionClass", {"spec": {"image": "img:1"}}, models.ExecutionClass),
        ("DeadLetter", dead_letter_body(), models.DeadLetter),
    ],
)
def test_server_defaults_equal_model_defaults(kind: str, body: dict[str, Any], model: type[models.Execution]) -> None:
    """A minimal object defaulted by the API server is what the model writes for the same input."""
    defaulted = apply_defaults(root_schema(kind), {"metadata": {"name": "x"}, **body})
    parsed = model.from_body({"metadata": {"name": "x"}, "spec": body["spec"]})
    assert parsed.spec.to_k8s() == defaulted["spec"]


def test_status_written_by_the_models_is_admitted() -> None:
    """A full status as the operator writes it passes the CRD's status schema."""
    now = models.rfc3339()
    status = models.ExecutionStatus(
        phase=api.Phase.FAILED,
        success=False,
        output={"partial": [1, 2]},
        stdout="o" * 20000,
        stderr="e",
        stderr_truncated=False,
        exit_code=1,
        exit_code_source=models.ExitCodeSource.LOG_MARKER,
        error=models.ErrorInfo.of(
            ErrorType.DIVISION_ERROR, "division by zero", "t" * 40000, exceptionType="ZeroDivisionError"
        ),
        attempt=1,
        attempts=[
            models.AttemptRecord(attempt=i, pod_name=f"p-{i}", start_time=now, exit_code=1, error_type=ErrorType.KILLED)
            for i in range(1, 30)
        ],
        disruptions=0,
        pod_name="p-1",
        start_time=now,
        launch_time=now,
        completion_time=now,
        execution_time_seconds=0.25,
        correlation_id="c-1",
        dead_letter_name="dl-1",
        observed_generation=1,
        conditions=models.set_condition(
            [], models.Condition(type="Succeeded", status=api.ConditionStatus.FALSE, reason="DivisionError"), now
        ),
    )
    body = execution()
    body["status"] = status.to_k8s()
    assert admit("Execution", body) == []
    breaker = models.BreakerState.model_validate(
        {
            "state": "open",
            "failureCount": 5,
            "lastFailure": {"type": "image_pull_error", "message": "m", "time": now},
            "openedAt": now,
            "retryAt": now,
        }
    )
    klass = models.ExecutionClass.from_body({"metadata": {"name": "default"}, "spec": {"image": "img:1"}})
    klass.status = models.ExecutionClassStatus(circuit_breaker=breaker, observed_generation=3)
    assert admit("ExecutionClass", klass.to_body()) == []
    dead = models.DeadLetter.from_body(dead_letter_body())
    dead.status = models.DeadLetterStatus(replays=[models.Replay(name="ex1-r1", time=now)])
    assert admit("DeadLetter", dead.to_body()) == []


def test_date_time_fields_are_rfc3339() -> None:
    checker = jsonschema.FormatChecker()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", models.rfc3339())
    assert checker.conforms(models.rfc3339(), "date-time") or "date-time" not in checker.checkers


# ---------------------------------------------------------------------------------------------------
# The same verdicts from the local API server's schema engine (when it is present)
# ---------------------------------------------------------------------------------------------------


def _local_schema() -> Any:
    return pytest.importorskip("localcluster.schema")


@pytest.mark.parametrize("kind", CRD_FILES)
def test_local_api_server_accepts_the_crds(kind: str) -> None:
    schema_engine = _local_schema()
    assert [str(e) for e in schema_engine.validate_crd(load_crd(kind))] == []


def _local_admit(kind: str, body: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    engine = _local_schema()
    schema = root_schema(kind)
    unknown = [f"unknown field {p}" for p in engine.strict_unknown_fields(schema, body)]
    new = engine.default_and_prune(schema, copy.deepcopy(body))
    previous = engine.default_and_prune(schema, copy.deepcopy(old)) if old is not None else None
    return unknown + [str(e) for e in engine.validate(schema, new, previous)]


@pytest.mark.parametrize("case", REFUSED_EXECUTIONS)
def test_local_api_server_refuses_bad_executions_naming_the_field(case: str) -> None:
    spec, field = REFUSED_EXECUTIONS[case]
    body = execution()
    body["spec"] = spec
    errors = _local_admit("Execution", body)
    assert any(field in e for e in errors), errors


def test_local_api_server_enforces_immutability_and_one_way_cancel() -> None:
    old = execution(input={"n": 1})
    assert _local_admit("Execution", old) == []
    assert _local_admit("Execution", copy.deepcopy(old), old=old) == []
    errors = _local_admit("Execution", execution(code="print(2)", input={"n": 1}), old=old)
    assert len(errors) == 1
    assert "spec is immutable after creation; only cancel may change" in errors[0]
    assert _local_admit("Execution", execution(input={"n": 2}), old=old) != []
    cancelled = execution(input={"n": 1}, cancel=True)
    assert _local_admit("Execution", cancelled, old=old) == []
    errors = _local_admit("Execution", execution(input={"n": 1}, cancel=False), old=cancelled)
    assert len(errors) == 1
    assert "cancel cannot be set back to false" in errors[0]
