"""Selectors, list/watch options and continue tokens of the local API server, as pure functions.

The expected messages are the real kube-apiserver's (the fidelity corpus records several of them).
"""

from __future__ import annotations

from typing import Any

import pytest

from localcluster.apiserver.listopts import decode_continue, encode_continue, list_options, query_bool
from localcluster.apiserver.resources import Registry, resources_from_crd
from localcluster.apiserver.selectors import parse_field_selector, parse_label_selector
from localcluster.apiserver.status import ApiError

REG = Registry()
PODS = REG.get("", "v1", "pods")
CMS = REG.get("", "v1", "configmaps")
assert PODS is not None
assert CMS is not None


def labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "x", "labels": labels}}


def refused(fn: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args)
    return e.value


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ("app=a", {"app": "a"}, True), ("app==a", {"app": "a"}, True), ("app!=a", {}, True),
    ("app in (a,b)", {"app": "b"}, True), ("tier notin (x)", {}, True), ("!app", {"app": "a"}, False),
    ("app", {"app": ""}, True), ("app=", {"app": "a"}, False), ("app in ()", {"app": ""}, True),
    ("n>1", {"n": "2"}, True), ("n<1", {"n": "2"}, False), ("app>1", {"app": "a"}, False),
    ("a=1, b in (2)", {"a": "1", "b": "2"}, True), ("x in (in)", {"x": "in"}, True),
])
def test_label_selector_semantics(selector: str, labels: dict[str, str], matches: bool) -> None:
    m = parse_label_selector(selector)
    assert m is not None
    assert m(labelled(**labels)) is matches


@pytest.mark.parametrize(("selector", "message"), [
    ("app in (a", "unable to parse requirement: found '', expected: ',' or ')'"),
    ("app=a=b", "found '=', expected: ',' or 'end of string'"),
    ("Bad Key!=x", "unable to parse requirement: found 'Key', expected: in, notin, =, ==, !=, gt, lt"),
    ("app=bad value", "found 'value', expected: ',' or 'end of string'"),
    ("app=" + "v" * 64, "unable to parse requirement: values[0][app]: Invalid value: \"" + "v" * 64
     + "\": must be no more than 63 bytes"),
    ("a,", "found '', expected: identifier after ','"),
    ("n>x", "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value "
            "must be an integer"),
    ("a/b/c", "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a valid label key must consist of "
              "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
              "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
              "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' "
              "(e.g. 'example.com/MyName')"),
    ("!a=b", "found '=', expected: ',' or 'end of string'"),
])
def test_label_selector_errors_are_the_real_messages(selector: str, message: str) -> None:
    e = refused(parse_label_selector, selector)
    assert (e.code, e.reason, e.message) == (400, "BadRequest", message)


def test_field_selector_labels_per_kind() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n"}, "spec": {"schedulerName": "s", "hostNetwork": True},
           "status": {"phase": "Pending"}}
    for selector, matches in [("status.phase=Pending", True), ("spec.nodeName=", True),
                              ("spec.hostNetwork=true", True), ("spec.host=x", False),
                              ("metadata.name!=p", False), ("metadata.name==p,spec.schedulerName=s", True)]:
        m = parse_field_selector(selector, PODS)
        assert m is not None, selector
        assert m(pod) is matches, selector
    assert refused(parse_field_selector, "spec.foo=bar", PODS).message == "field label not supported: spec.foo"
    assert refused(parse_field_selector, "data.x=1", CMS).message == (
        '"data.x" is not a known field selector: only "metadata.name", "metadata.namespace"')
    assert refused(parse_field_selector, "metadata.name in (a)", PODS).message == (
        "invalid selector: 'metadata.name in (a)'; can't understand 'metadata.name in (a)'")


def test_custom_resources_select_by_metadata_and_their_selectable_fields() -> None:
    crd = {"spec": {"group": "t.dev", "names": {"plural": "ws", "kind": "W"}, "scope": "Namespaced",
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "selectableFields": [{"jsonPath": ".spec.color"}]}]}}
    info = resources_from_crd(crd)[0]
    m = parse_field_selector("spec.color=red", info)
    assert m is not None
    assert m({"metadata": {"name": "w"}, "spec": {"color": "red"}})
    assert refused(parse_field_selector, "spec.size=1", info).message == "field label not supported: spec.size"


def test_query_booleans_are_converted_as_the_api_server_does() -> None:
    assert [query_bool({"w": v}, "w") for v in ("true", "1", "", "maybe", "0", "FALSE")] == [
        True, True, True, True, False, False]
    assert query_bool({}, "w") is None


@pytest.mark.parametrize(("query", "watch", "code", "message"), [
    ({"resourceVersionMatch": "NotOlderThan"}, False, 422,
     'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden '
     "unless resourceVersion is provided"),
    ({"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}, False, 422,
     'ListOptions.meta.k8s.io "" is invalid: [resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden '
     "unless resourceVersion is provided, sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list]"),
    ({"sendInitialEvents": "true"}, True, 422,
     'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting '
     "resourceVersionMatch to NotOlderThan"),
    ({"resourceVersionMatch": "NotOlderThan"}, True, 422,
     'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for '
     "watch unless sendInitialEvents is provided"),
    ({"timeoutSeconds": "soon"}, True, 400, 'strconv.ParseInt: parsing "soon": invalid syntax'),
    ({"limit": "9" * 20}, False, 400, f'strconv.ParseInt: parsing "{"9" * 20}": value out of range'),
])
def test_list_option_rules(query: dict[str, str], watch: bool, code: int, message: str) -> None:
    e = refused(list_options, query, PODS, watch)
    assert (e.code, e.message) == (code, message)


def test_option_errors_come_in_the_real_order() -> None:
    """Integers are decoded before selectors, selectors' syntax before the option rules, field labels last."""
    both = {"timeoutSeconds": "x", "labelSelector": "a in ("}
    assert "strconv.ParseInt" in refused(list_options, both, PODS, True).message
    both = {"labelSelector": "a in (", "resourceVersionMatch": "Exact"}
    assert refused(list_options, both, PODS, False).code == 400
    both = {"fieldSelector": "spec.foo=x", "resourceVersionMatch": "Exact"}
    assert refused(list_options, both, PODS, False).code == 422


def test_continue_tokens_round_trip_and_bad_ones_are_refused_as_the_real_server_does() -> None:
    token = encode_continue(42, "fid/le-2")
    assert "=" not in token
    assert decode_continue(token) == (42, "fid/le-2")
    e = refused(decode_continue, "not-a-token")
    assert e.code == 400
    assert e.message.startswith("invalid continue token: continue key is not valid: ")
    assert refused(decode_continue, "a%b").message.endswith("illegal base64 data at input byte 1")
    assert "encoded start key empty" in refused(decode_continue, _token(rv=3)).message
    assert "incorrect encoded start resourceVersion" in refused(decode_continue, _token(rv=0, start="a")).message


def _token(rv: int, start: str = "") -> str:
    import base64
    import json
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_named_watch_takes_only_a_field_selector_that_repeats_its_name() -> None:
    assert list_options({"fieldSelector": "metadata.name=a,status.phase=x"}, PODS, True, "a").matcher is not None
    e = refused(list_options, {"fieldSelector": "metadata.name=b"}, PODS, True, "a")
    assert (e.code, e.message) == (400, "fieldSelector metadata.name doesn't match requested name")


def test_accept_negotiation() -> None:
    from localcluster.apiserver.negotiation import NotAcceptable, Output, negotiate

    table = "application/json;as=Table;v=v1;g=meta.k8s.io"
    assert negotiate("", True, "list") == Output()
    assert negotiate(f"{table}, application/json", True, "list").as_ == "Table"
    assert negotiate("application/json;as=Table;v=v1beta1;g=meta.k8s.io", False, "get").version == "v1beta1"
    assert negotiate("application/json;as=Table;v=v9;g=meta.k8s.io, application/json", True, "get") == Output()
    assert negotiate("application/vnd.kubernetes.protobuf, application/json", True, "list") == Output()
    assert negotiate("application/json;q=0.5, application/yaml", False, "get").media_type == "application/yaml"
    assert negotiate(table, True, "create") == Output()  # a write answers with the object
    with pytest.raises(NotAcceptable) as e:
        negotiate("application/vnd.kubernetes.protobuf", True, "list")
    assert e.value.code == 406
    assert e.value.protobuf_body
    assert e.value.message == ("only the following media types are accepted: application/json, application/yaml, "
                               "application/vnd.kubernetes.protobuf")
    with pytest.raises(NotAcceptable) as e:
        negotiate("text/html", False, "get")
    assert not e.value.protobuf_body
