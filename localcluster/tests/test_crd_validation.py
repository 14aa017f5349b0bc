"""CRD validation of the local API server against what a real kube-apiserver 1.36 answered.

The Execution and DeadLetter CRDs once shipped with ``retry: {default: {}}`` under the CEL rule
``self.backoffSeconds <= self.maxBackoffSeconds``. A real API server validates a default as written,
so it refused both CRDs; the local one accepted them, and every test passed while the product could
not be installed. ``fixtures/*.as-shipped-broken.yaml`` keep those CRDs; the local API server must
refuse them with the real message, and accept the CRDs the repository ships now.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from test_apiserver_support import Api

from localcluster.apiserver import ApiServer
from localcluster.celcheck import check_rule, decl_type
from localcluster.schema import validate_crd

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
RULE_MESSAGE = "backoffSeconds must not exceed maxBackoffSeconds"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    server = ApiServer(tmp_path)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, server.url)
    finally:
        await server.stop()


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(("fixture", "field"), [
    ("executions.as-shipped-broken.yaml", "properties[spec].properties[retry].default"),
    ("deadletters.as-shipped-broken.yaml", "properties[spec].properties[executionSpec].properties[retry].default"),
])
async def test_the_broken_crds_are_refused_with_the_real_message(api: Api, fixture: str, field: str) -> None:
    crd = _load(FIXTURES / fixture)
    name = crd["metadata"]["name"]
    path = f"spec.validation.openAPIV3Schema.{field}"
    detail = f'Invalid value: "object": no such key: backoffSeconds evaluating rule: {RULE_MESSAGE}'
    status, body = await api.post(CRDS, crd)
    assert status == 422, body
    assert body["reason"] == "Invalid"
    assert body["message"] == f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {path}: {detail}'
    assert body["details"] == {"name": name, "group": "apiextensions.k8s.io", "kind": "CustomResourceDefinition",
                               "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": path}]}
    status, _ = await api.get(f"{CRDS}/{name}")
    assert status == 404


@pytest.mark.parametrize("path", sorted((REPO / "crds").glob("*.yaml")), ids=lambda p: p.name)
async def test_the_shipped_crds_are_accepted(api: Api, path: Path) -> None:
    status, body = await api.post(CRDS, _load(path))
    assert status == 201, body


def _crd(props: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "things.example.com"}, "spec": {
        "group": "example.com", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object", "properties": props}}}}}]}}


def _messages(crd: dict[str, Any]) -> list[str]:
    return [f"{e.field}: {e.message}" for e in validate_crd(crd)]


def test_a_default_is_validated_as_written_even_when_the_missing_key_has_a_default() -> None:
    o = {"type": "object", "default": {"a": 1}, "x-kubernetes-validations": [{"rule": "self.a <= self.b"}],
         "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 5}}}
    assert _messages(_crd({"o": o})) == [
        "spec.validation.openAPIV3Schema.properties[spec].properties[o].default: "
        'Invalid value: "object": no such key: b evaluating rule: self.a <= self.b']
    o["default"] = {"a": 1, "b": 5}
    assert _messages(_crd({"o": o})) == []


def test_cost_factors_follow_the_real_estimates() -> None:
    rule = "self.all(x, x.matches('^[a-z]+$'))"
    base = "spec.validation.openAPIV3Schema"
    rule_path = f"{base}.properties[spec].properties[l].x-kubernetes-validations[0].rule"
    hint = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, " \
           "and strings are declared)"
    # maxLength 10 (40 bytes) for up to 1048575 strings: 14 a string -> 14680052, just over 10^7.
    rules = [{"rule": rule}]
    short = {"type": "array", "items": {"type": "string", "maxLength": 10}, "x-kubernetes-validations": rules}
    assert _messages(_crd({"l": short})) == [
        f"{rule_path}: Forbidden: estimated rule cost exceeds budget by factor of 1.468005x {hint}"]
    # maxItems only: each string may be a whole request long.
    long = {"type": "array", "maxItems": 1000, "items": {"type": "string"}, "x-kubernetes-validations": rules}
    assert _messages(_crd({"l": long})) == [
        f"{rule_path}: Forbidden: estimated rule cost exceeds budget by factor of 62.9x {hint}",
        f"{rule_path}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 "
        "schema",
        f"{base}: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds "
        f"budget by factor of 6.3x {hint}"]
    bounded = {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 64},
               "x-kubernetes-validations": [{"rule": rule}]}
    assert _messages(_crd({"l": bounded})) == []


def test_type_checking_finds_undefined_fields_and_mismatched_operands() -> None:
    t = decl_type({"type": "object", "properties": {"a": {"type": "integer"}}}, False)
    assert t is not None
    assert check_rule("self.nope == 1", t).error == (
        "ERROR: <input>:1:5: undefined field 'nope'\n | self.nope == 1\n | ....^")
    assert check_rule("self.a == 'x'", t).error == (
        "ERROR: <input>:1:8: found no matching overload for '_==_' applied to '(int, string)'\n"
        " | self.a == 'x'\n | .......^")
    assert check_rule("self.a + 1", t).error == "cel expression must evaluate to a bool"
    assert check_rule("has(self.a) && self.a > 0", t).error is None


def test_a_hostile_rule_is_answered_not_crashed_on() -> None:
    t = decl_type({"type": "integer"}, False)
    assert t is not None
    deep = "(" * 300 + "self > 0" + ")" * 300
    long = " && ".join(["self > 0"] * 3000)
    for rule in (deep, long):
        assert check_rule(rule, t).error is None
