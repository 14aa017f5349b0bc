"""Field ownership and server-side apply (localcluster.apiserver.managedfields), as pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster.apiserver import managedfields as mf
from localcluster.apiserver.status import ApiError

NOW = "2001-02-03T04:05:06Z"
AV = "example.com/v1"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string"},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                                     "port": {"type": "integer"}}}},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def _obj(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": AV, "kind": "Thing", "metadata": {"name": "t", "namespace": "n", **meta}, "spec": spec}


def _owners(obj: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"], e.get("subresource", "")): e["fieldsV1"]
            for e in obj["metadata"].get("managedFields", [])}


def _apply(live: dict[str, Any], config: dict[str, Any], manager: str, force: bool = False) -> dict[str, Any]:
    merged = {**live, "spec": {**live.get("spec", {}), **config.get("spec", {})}}
    merged["metadata"] = dict(live["metadata"])
    return mf.apply(live, config, merged, SCHEMA, manager, AV, "", True, force, NOW)


def test_members_key_map_lists_and_keep_atomic_lists_whole() -> None:
    got = mf.members(_obj({"a": 1, "ports": [{"name": "x", "port": 1}], "tags": ["p", "q"]}, labels={"l": "v"}),
                     SCHEMA, nodes=False)
    assert got == {
        ("f:metadata", "f:labels", "f:l"): "v",
        ("f:spec", "f:a"): 1,
        ("f:spec", "f:ports", 'k:{"name":"x"}'): None,
        ("f:spec", "f:ports", 'k:{"name":"x"}', "f:name"): "x",
        ("f:spec", "f:ports", 'k:{"name":"x"}', "f:port"): 1,
        ("f:spec", "f:tags"): ["p", "q"],
    }


def test_update_takes_changed_fields_from_other_managers() -> None:
    obj = _obj({"a": 1, "b": "x"})
    mf.record_update(None, obj, SCHEMA, "creator", AV, "", True, NOW)
    assert _owners(obj) == {("creator", "Update", ""): {"f:spec": {".": {}, "f:a": {}, "f:b": {}}}}
    new = _obj({"a": 2, "b": "x"})
    new["metadata"]["managedFields"] = obj["metadata"]["managedFields"]
    mf.record_update(obj, new, SCHEMA, "editor", AV, "", True, NOW)
    assert _owners(new) == {("creator", "Update", ""): {"f:spec": {".": {}, "f:b": {}}},
                            ("editor", "Update", ""): {"f:spec": {"f:a": {}}}}


def test_a_status_write_owns_only_status_and_a_main_write_never_status() -> None:
    old = _obj({"a": 1})
    new = {**_obj({"a": 5}), "status": {"phase": "Running"}}
    mf.record_update(old, new, SCHEMA, "op", AV, "status", True, NOW)
    assert _owners(new) == {("op", "Update", "status"): {"f:status": {".": {}, "f:phase": {}}}}
    again = {**_obj({"a": 1}), "status": {"phase": "Done"}}
    mf.record_update(old, again, SCHEMA, "op", AV, "", True, NOW)
    assert _owners(again) == {}


def test_apply_conflicts_then_force_moves_the_field() -> None:
    live = _apply(_obj({}), _obj({"a": 1, "b": "x"}), "mgr-a")
    assert _owners(live) == {("mgr-a", "Apply", ""): {"f:spec": {"f:a": {}, "f:b": {}}}}
    with pytest.raises(ApiError) as err:
        _apply(live, _obj({"a": 2}), "mgr-b")
    assert err.value.code == 409
    assert err.value.message == 'Apply failed with 1 conflict: conflict with "mgr-a": .spec.a'
    assert err.value.details == {"causes": [{"reason": "FieldManagerConflict", "message": 'conflict with "mgr-a"',
                                             "field": ".spec.a"}]}
    forced = _apply(live, _obj({"a": 2}), "mgr-b", force=True)
    assert _owners(forced) == {("mgr-a", "Apply", ""): {"f:spec": {"f:b": {}}},
                               ("mgr-b", "Apply", ""): {"f:spec": {"f:a": {}}}}


def test_applying_the_same_value_shares_the_field_without_conflict() -> None:
    live = _apply(_obj({}), _obj({"a": 1}), "mgr-a")
    shared = _apply(live, _obj({"a": 1}), "mgr-b")
    assert set(_owners(shared)) == {("mgr-a", "Apply", ""), ("mgr-b", "Apply", "")}


def test_conflict_with_an_update_manager_names_its_version_and_time() -> None:
    obj = _obj({"a": 1})
    mf.record_update(None, obj, SCHEMA, "kubectl", AV, "", True, NOW)
    with pytest.raises(ApiError) as err:
        _apply(obj, _obj({"a": 3}), "mgr")
    assert err.value.message == (f'Apply failed with 1 conflict: conflict with "kubectl" using {AV} at {NOW}: '
                                 ".spec.a")


def test_several_conflicts_are_listed_per_manager() -> None:
    live = _apply(_obj({}), _obj({"a": 1, "b": "x"}), "mgr-a")
    with pytest.raises(ApiError) as err:
        _apply(live, _obj({"a": 2, "b": "y"}), "mgr-b")
    assert err.value.message == 'Apply failed with 2 conflicts: conflicts with "mgr-a":\n- .spec.a\n- .spec.b'


def test_a_field_the_manager_stops_applying_is_removed_unless_someone_else_owns_it() -> None:
    live = _apply(_obj({}), _obj({"a": 1, "b": "x"}), "mgr-a")
    live = _apply(live, _obj({"b": "x"}), "mgr-b")
    config = {k: v for k, v in _obj({}).items() if k != "spec"}
    merged = {**live, "metadata": dict(live["metadata"]), "spec": dict(live["spec"])}
    out = mf.apply(live, config, merged, SCHEMA, "mgr-a", AV, "", True, False, NOW)
    assert out["spec"] == {"b": "x"}
    assert _owners(out) == {("mgr-b", "Apply", ""): {"f:spec": {"f:b": {}}}}


def test_fields_v1_round_trips_with_dot_members() -> None:
    paths = {("f:spec",), ("f:spec", "f:a"), ("f:spec", "f:ports", 'k:{"name":"x"}'),
             ("f:spec", "f:ports", 'k:{"name":"x"}', "f:port")}
    tree = mf.to_fields_v1(paths)
    assert tree == {"f:spec": {".": {}, "f:a": {}, "f:ports": {'k:{"name":"x"}': {".": {}, "f:port": {}}}}}
    assert mf.from_fields_v1(tree) == paths


def test_merge_joins_map_lists_by_key_and_replaces_atomic_lists() -> None:
    live = {"spec": {"ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}], "tags": ["x"], "a": 1}}
    config = {"spec": {"ports": [{"name": "b", "port": 3}, {"name": "c", "port": 4}], "tags": ["y"]}}
    assert mf.merge(live, config, SCHEMA) == {"spec": {
        "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 3}, {"name": "c", "port": 4}],
        "tags": ["y"], "a": 1}}
    assert live["spec"]["ports"][1] == {"name": "b", "port": 2}
