"""The API server emulator over HTTP: discovery, object semantics, patches, validation, deletion, GC."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_apiserver_support import (
    APPLY,
    JSONPATCH,
    STRATEGIC,
    WIDGET_CRD,
    Api,
    cm,
    eventually,
    pod,
)

from localcluster.apiserver import ApiServer
from localcluster.apiserver.store import dumps as store_dumps

HAS_SCHEMA = importlib.util.find_spec("localcluster.schema") is not None
needs_schema = pytest.mark.skipif(not HAS_SCHEMA, reason="localcluster.schema is not available")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    s = ApiServer(tmp_path, bookmark_interval=0.2)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def api(server: ApiServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.url)


async def install_widgets(api: Api) -> dict[str, Any]:
    status, crd = await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    assert status == 201, crd
    return crd


def widget(name: str, size: int = 3, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "test.dev/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": size, **spec}}


W = "/apis/test.dev/v1/namespaces/default/widgets"
CM = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"


# ---------------------------------------------------------------------------------------------- discovery
async def test_discovery_documents(api: Api) -> None:
    status, body = await api.get("/api")
    assert status == 200
    assert body["versions"] == ["v1"]
    _, v1 = await api.get("/api/v1")
    by_name = {r["name"]: r for r in v1["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"]
    assert by_name["pods"]["namespaced"] is True
    assert "watch" in by_name["pods"]["verbs"]
    assert by_name["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert by_name["pods/log"]["kind"] == "Pod"
    assert by_name["namespaces"]["namespaced"] is False
    _, groups = await api.get("/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {"apps", "coordination.k8s.io", "networking.k8s.io", "events.k8s.io", "apiextensions.k8s.io",
            "rbac.authorization.k8s.io", "policy"} <= names
    _, coord = await api.get("/apis/coordination.k8s.io/v1")
    assert coord["resources"][0]["kind"] == "Lease"
    _, version = await api.get("/version")
    assert version["gitVersion"].startswith("v1.35")
    for path in ("/healthz", "/readyz", "/livez"):
        assert (await api.get(path))[0] == 200


async def test_crd_install_serves_resource_with_established_conditions(api: Api) -> None:
    crd = await install_widgets(api)
    # As on a real server, the create answer has no conditions yet: the names controller adds them.
    assert crd["status"] == {"conditions": None, "acceptedNames": {"plural": "", "kind": ""},
                             "storedVersions": ["v1"]}

    async def established() -> dict[str, Any] | None:
        _, got = await api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}")
        return got if got["status"].get("conditions") else None

    crd = await eventually(established)
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds == {"Established": "True", "NamesAccepted": "True"}
    assert crd["status"]["acceptedNames"]["kind"] == "Widget"
    _, groups = await api.get("/apis")
    assert "test.dev" in {g["name"] for g in groups["groups"]}
    _, res = await api.get("/apis/test.dev/v1")
    by_name = {r["name"]: r for r in res["resources"]}
    assert by_name["widgets"]["shortNames"] == ["wd"]
    assert by_name["widgets"]["categories"] == ["testing"]
    assert "widgets/status" in by_name
    status, created = await api.post(W, widget("a"))
    assert status == 201
    assert created["kind"] == "Widget"
    assert created["apiVersion"] == "test.dev/v1"
    status, lst = await api.get(W)
    assert lst["kind"] == "WidgetList"
    assert lst["apiVersion"] == "test.dev/v1"
    assert [i["metadata"]["name"] for i in lst["items"]] == ["a"]


async def test_crd_deletion_removes_resource_and_objects(api: Api, server: ApiServer) -> None:
    await install_widgets(api)
    await api.post(W, widget("a"))
    status, _ = await api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.dev")
    assert status == 200
    assert (await api.get(W))[0] == 404
    assert server.store.count(("test.dev", "widgets")) == 0
    assert (await api.get("/apis/test.dev/v1"))[0] == 404


# ---------------------------------------------------------------------------------------------- object semantics
async def test_create_sets_server_fields_and_rv_increases(api: Api) -> None:
    _, a = await api.post(CM, cm("a", x="1"))
    _, b = await api.post(CM, cm("b", x="1"))
    for o in (a, b):
        meta = o["metadata"]
        assert meta["uid"]
        assert meta["creationTimestamp"].endswith("Z")
        assert meta["namespace"] == "default"
        [entry] = meta["managedFields"]
        assert entry["operation"] == "Update"
        assert entry["fieldsV1"] == {"f:data": {".": {}, "f:x": {}}}
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])


async def test_values_json_cannot_carry(api: Api) -> None:
    """NaN is refused like the real decoder refuses it; huge integers and odd text still round-trip."""
    status, body = await api.post(CM, '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n"}, '
                                      '"data": {"x": NaN}}')
    assert status == 400
    assert "invalid character 'N'" in body["message"]
    status, _ = await api.post(CM, {**cm("text"), "data": {"s": "caf\u00e9 \U0001f600"}})
    _, got = await api.get(f"{CM}/text")
    assert status == 201
    assert got["data"] == {"s": "caf\u00e9 \U0001f600"}
    assert json.loads(store_dumps({"n": 2**70, "f": 0.1})) == {"n": 2**70, "f": 0.1}


async def test_generate_name(api: Api) -> None:
    status, o = await api.post(CM, {"metadata": {"generateName": "job-"}, "data": {}})
    assert status == 201
    name = o["metadata"]["name"]
    assert name.startswith("job-")
    assert len(name) == len("job-") + 5
    assert (await api.get(f"{CM}/{name}"))[0] == 200


async def test_already_exists_is_a_status_409(api: Api) -> None:
    await api.post(CM, cm("a"))
    status, body = await api.post(CM, cm("a"))
    assert status == 409
    assert body["kind"] == "Status"
    assert body["reason"] == "AlreadyExists"
    assert body["code"] == 409
    assert body["message"] == 'configmaps "a" already exists'
    assert body["details"] == {"name": "a", "kind": "configmaps"}


async def test_not_found_status(api: Api) -> None:
    status, body = await api.get(f"{CM}/nope")
    assert status == 404
    assert body["reason"] == "NotFound"
    assert body["message"] == 'configmaps "nope" not found'


async def test_put_with_stale_resource_version_conflicts(api: Api) -> None:
    _, a = await api.post(CM, cm("a", x="1"))
    stale = a["metadata"]["resourceVersion"]
    a["data"]["x"] = "2"
    status, updated = await api.put(f"{CM}/a", a)
    assert status == 200
    assert updated["data"]["x"] == "2"
    a["data"]["x"] = "3"
    a["metadata"]["resourceVersion"] = stale
    status, body = await api.put(f"{CM}/a", a)
    assert status == 409
    assert body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]


async def test_merge_patch_guarded_by_resource_version(api: Api) -> None:
    _, a = await api.post(CM, cm("a", x="1"))
    rv = a["metadata"]["resourceVersion"]
    status, p = await api.patch(f"{CM}/a", {"metadata": {"resourceVersion": rv}, "data": {"y": "2"}})
    assert status == 200
    assert p["data"] == {"x": "1", "y": "2"}
    status, body = await api.patch(f"{CM}/a", {"metadata": {"resourceVersion": rv}, "data": {"z": "3"}})
    assert status == 409
    assert body["reason"] == "Conflict"
    status, p = await api.patch(f"{CM}/a", {"data": {"x": None}})
    assert status == 200
    assert p["data"] == {"y": "2"}


async def test_json_patch_and_failed_test_is_422(api: Api) -> None:
    _, a = await api.post(CM, cm("a", x="1"))
    rv = a["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
           {"op": "replace", "path": "/data/x", "value": "2"}]
    status, p = await api.patch(f"{CM}/a", ops, JSONPATCH)
    assert status == 200
    assert p["metadata"]["finalizers"] == ["x/y"]
    assert p["data"]["x"] == "2"
    status, body = await api.patch(f"{CM}/a", ops, JSONPATCH)
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["kind"] == "Status"
    status, body = await api.patch(f"{CM}/a", [{"op": "remove", "path": "/data/missing"}], JSONPATCH)
    assert status == 422


async def test_noop_update_keeps_resource_version(api: Api, server: ApiServer) -> None:
    _, a = await api.post(CM, cm("a", x="1"))
    before = server.store.rv
    status, p = await api.patch(f"{CM}/a", {"data": {"x": "1"}})
    assert status == 200
    assert p["metadata"]["resourceVersion"] == a["metadata"]["resourceVersion"]
    assert server.store.rv == before


async def test_strategic_merge_for_core_kinds(api: Api) -> None:
    deploy = "/apis/apps/v1/namespaces/default/deployments"
    containers = [
        {"name": "a", "image": "img:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
        {"name": "b", "image": "img:1"},
    ]
    await api.post(deploy, {"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": containers}}}})
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "b", "image": "img:2"}, {"name": "a", "env": [{"name": "Y", "$patch": "delete"}]}]}}},
        "metadata": {"labels": {"l": "v"}}}
    status, d = await api.patch(f"{deploy}/d", patch, STRATEGIC)
    assert status == 200, d
    cs = {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}
    assert cs["b"]["image"] == "img:2"
    assert cs["a"]["image"] == "img:1"
    assert cs["a"]["env"] == [{"name": "X", "value": "1"}]
    assert d["metadata"]["labels"] == {"l": "v"}
    assert d["metadata"]["generation"] == 2
    # pods: container images may change (merged by name), the rest of the spec may not
    await api.post(PODS, pod("p"))
    status, p = await api.patch(f"{PODS}/p", {"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}},
                                STRATEGIC)
    assert status == 200
    assert p["spec"]["containers"][0]["image"] == "busybox:2"
    assert p["spec"]["containers"][0]["terminationMessagePolicy"] == "File"


async def test_strategic_merge_on_custom_resource_is_415(api: Api) -> None:
    await install_widgets(api)
    await api.post(W, widget("a"))
    status, body = await api.patch(f"{W}/a", {"spec": {"size": 4}}, STRATEGIC)
    assert status == 415
    assert body["reason"] == "UnsupportedMediaType"


async def test_server_side_apply_creates_then_merges(api: Api) -> None:
    path = f"{CM}/ssa?fieldManager=test"
    status, o = await api.patch(path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"},
                                       "data": {"a": "1"}}, APPLY)
    assert status == 201
    assert o["data"] == {"a": "1"}
    status, o = await api.patch(path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"},
                                       "data": {"b": "2"}}, APPLY)
    # the manager no longer applies "a" and nobody else owns it: removed
    assert status == 200
    assert o["data"] == {"b": "2"}
    status, o = await api.patch(f"{CM}/ssa?fieldManager=other", {"apiVersion": "v1", "kind": "ConfigMap",
                                                                 "metadata": {"name": "ssa"}, "data": {"c": "3"}},
                                APPLY)
    assert status == 200
    assert o["data"] == {"b": "2", "c": "3"}
    owners = {e["manager"]: e["fieldsV1"] for e in o["metadata"]["managedFields"]}
    assert owners == {"test": {"f:data": {"f:b": {}}}, "other": {"f:data": {"f:c": {}}}}
    status, body = await api.patch(f"{CM}/ssa", {"metadata": {"name": "ssa"}}, APPLY)
    assert status == 422
    assert body["details"]["kind"] == "PatchOptions"
    assert body["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                               "is required for apply patch")


async def test_dry_run_does_not_persist(api: Api, server: ApiServer) -> None:
    status, o = await api.post(f"{CM}?dryRun=All", cm("dry"))
    assert status == 201
    assert o["metadata"]["name"] == "dry"
    assert (await api.get(f"{CM}/dry"))[0] == 404
    await api.post(CM, cm("a", x="1"))
    status, o = await api.patch(f"{CM}/a?dryRun=All", {"data": {"x": "2"}})
    assert status == 200
    assert o["data"]["x"] == "2"
    assert (await api.get(f"{CM}/a"))[1]["data"]["x"] == "1"


async def test_invalid_metadata_name_is_422(api: Api) -> None:
    status, body = await api.post(CM, cm("Bad_Name"))
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    assert "RFC 1123 subdomain" in body["message"]
    status, body = await api.post(CM, {"metadata": {}})
    assert status == 422
    assert "name or generateName is required" in body["message"]


async def test_create_in_missing_namespace_is_404(api: Api) -> None:
    status, body = await api.post("/api/v1/namespaces/nope/configmaps", cm("a"))
    assert status == 404
    assert body["message"] == 'namespaces "nope" not found'


# ---------------------------------------------------------------------------------------------- generation / status
async def test_generation_and_status_subresource(api: Api) -> None:
    await install_widgets(api)
    body = widget("a")
    body["status"] = {"phase": "ignored on create"}
    _, o = await api.post(W, body)
    assert o["metadata"]["generation"] == 1
    assert "status" not in o
    status, o = await api.patch(f"{W}/a/status", {"status": {"phase": "Running"}, "spec": {"size": 99}})
    assert status == 200
    assert o["status"] == {"phase": "Running"}
    assert o["spec"]["size"] == 3
    assert o["metadata"]["generation"] == 1
    status, o = await api.patch(f"{W}/a", {"spec": {"size": 5}, "status": {"phase": "ignored"}})
    assert o["metadata"]["generation"] == 2
    assert o["status"] == {"phase": "Running"}
    status, o = await api.patch(f"{W}/a", {"metadata": {"labels": {"x": "y"}}})
    assert o["metadata"]["generation"] == 2
    o["status"] = {"phase": "Done"}
    status, o = await api.put(f"{W}/a/status", o)
    assert status == 200
    assert o["status"] == {"phase": "Done"}
    del o["metadata"]["resourceVersion"]
    status, body = await api.put(f"{W}/a", o)  # custom resources allow no unconditional update
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.resourceVersion"


# ---------------------------------------------------------------------------------------------- validation
@needs_schema
async def test_custom_resource_validation_422_with_causes(api: Api) -> None:
    await install_widgets(api)
    status, body = await api.post(W, widget("a", size=301))
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == ('Widget.test.dev "a" is invalid: spec.size: Invalid value: 301: spec.size in body '
                               "should be less than or equal to 300")
    assert body["details"]["causes"][0]["field"] == "spec.size"
    assert body["details"]["name"] == "a"
    assert body["details"]["group"] == "test.dev"


@needs_schema
async def test_defaults_pruning_and_transition_rules(api: Api) -> None:
    await install_widgets(api)
    status, o = await api.post(W, widget("a", frozen="x", unknown="dropped"))
    assert status == 201
    assert o["spec"] == {"size": 3, "color": "blue", "frozen": "x"}
    status, body = await api.patch(f"{W}/a", {"spec": {"frozen": "y"}})
    assert status == 422
    assert "frozen is immutable" in body["message"]
    status, o = await api.patch(f"{W}/a", {"spec": {"size": 4}})
    assert status == 200


@needs_schema
async def test_field_validation_strict_warn_ignore(api: Api, server: ApiServer) -> None:
    await install_widgets(api)
    status, body = await api.post(f"{W}?fieldValidation=Strict", widget("a", bogus=1))
    assert status == 400
    assert 'strict decoding error: unknown field "spec.bogus"' in body["message"]
    async with api.session.post(f"{server.url}{W}?fieldValidation=Warn", json=widget("b", bogus=1)) as resp:
        assert resp.status == 201
        assert 'unknown field \\"spec.bogus\\"' in resp.headers.get("Warning", "")
    status, _ = await api.post(f"{W}?fieldValidation=Ignore", widget("c", bogus=1))
    assert status == 201
    status, body = await api.patch(f"{W}/c?fieldValidation=Strict", {"spec": {"other": 2}})
    assert status == 400
    assert 'unknown field "spec.other"' in body["message"]
    status, o = await api.patch(f"{W}/c", {"spec": {"other": 2}})  # pruned without complaint
    assert status == 200
    assert "other" not in o["spec"]


# ---------------------------------------------------------------------------------------------- deletion
async def test_finalizers_hold_deletion(api: Api) -> None:
    o = cm("a")
    o["metadata"]["finalizers"] = ["test/hold"]
    await api.post(CM, o)
    status, d = await api.delete(f"{CM}/a")
    assert status == 200
    assert d["metadata"]["deletionTimestamp"]
    assert d["metadata"]["deletionGracePeriodSeconds"] == 0
    assert (await api.get(f"{CM}/a"))[0] == 200
    status, _body = await api.patch(f"{CM}/a", {"metadata": {"finalizers": ["test/hold", "test/other"]}})
    assert status == 422
    status, _ = await api.patch(f"{CM}/a", {"metadata": {"finalizers": None}})
    assert status == 200
    assert (await api.get(f"{CM}/a"))[0] == 404


def owned(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    o = cm(name)
    o["metadata"]["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                         "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                         "controller": True, "blockOwnerDeletion": True}]
    return o


async def test_gc_background(api: Api) -> None:
    _, owner = await api.post(CM, cm("owner"))
    await api.post(CM, owned("dep1", owner))
    await api.post(CM, owned("dep2", owner))
    await api.delete(f"{CM}/owner")
    for n in ("owner", "dep1", "dep2"):
        assert (await api.get(f"{CM}/{n}"))[0] == 404


async def test_gc_foreground_waits_for_dependents(api: Api) -> None:
    _, owner = await api.post(CM, cm("owner"))
    dep = owned("dep", owner)
    dep["metadata"]["finalizers"] = ["test/hold"]
    await api.post(CM, dep)
    status, o = await api.delete(f"{CM}/owner", {"propagationPolicy": "Foreground"})
    assert status == 200
    _, o = await api.get(f"{CM}/owner")
    assert "foregroundDeletion" in o["metadata"]["finalizers"]
    assert o["metadata"]["deletionTimestamp"]
    _, d = await api.get(f"{CM}/dep")
    assert d["metadata"]["deletionTimestamp"]
    await api.patch(f"{CM}/dep", {"metadata": {"finalizers": None}})
    assert (await api.get(f"{CM}/dep"))[0] == 404
    assert (await api.get(f"{CM}/owner"))[0] == 404


async def test_gc_orphan_removes_owner_references(api: Api) -> None:
    _, owner = await api.post(CM, cm("owner"))
    await api.post(CM, owned("dep", owner))
    await api.delete(f"{CM}/owner?propagationPolicy=Orphan")
    status, d = await api.get(f"{CM}/dep")
    assert status == 200
    assert "ownerReferences" not in d["metadata"]


async def test_gc_deletes_dependents_created_after_their_owner_is_gone(api: Api, server: ApiServer) -> None:
    server.gc_delay = 0.0
    _, owner = await api.post(CM, cm("owner"))
    await api.delete(f"{CM}/owner")
    status, _ = await api.post(CM, owned("late", owner))
    assert status == 201  # created, then collected by the garbage collector

    async def gone() -> bool:
        return (await api.get(f"{CM}/late"))[0] == 404

    await eventually(gone, within=5)
    _, other = await api.post(CM, cm("other-owner"))
    await api.post(CM, owned("kept", other))
    await api.post(CM, owned("late2", owner))
    await eventually(lambda: server.store.find("", "configmaps", "late2", "default") is None)
    assert (await api.get(f"{CM}/kept"))[0] == 200  # its owner exists: the collector left it alone


async def test_delete_preconditions(api: Api) -> None:
    _, a = await api.post(CM, cm("a"))
    status, _body = await api.delete(f"{CM}/a", {"preconditions": {"uid": "other"}})
    assert status == 409
    status, _ = await api.delete(f"{CM}/a", {"preconditions": {"uid": a["metadata"]["uid"]}})
    assert status == 200


async def test_namespace_lifecycle_default_sa_and_cascade(api: Api) -> None:
    status, ns = await api.post("/api/v1/namespaces", {"metadata": {"name": "team"}})
    assert status == 201
    assert ns["status"]["phase"] == "Active"
    _, sa = await api.get("/api/v1/namespaces/team/serviceaccounts/default")
    assert sa["metadata"]["name"] == "default"
    await api.post("/api/v1/namespaces/team/configmaps", cm("a"))
    held = cm("held")
    held["metadata"]["finalizers"] = ["test/hold"]
    await api.post("/api/v1/namespaces/team/configmaps", held)
    await api.delete("/api/v1/namespaces/team")
    _, ns = await api.get("/api/v1/namespaces/team")
    assert ns["status"]["phase"] == "Terminating"
    assert (await api.get("/api/v1/namespaces/team/configmaps/a"))[0] == 404
    status, body = await api.post("/api/v1/namespaces/team/configmaps", cm("new"))
    assert status == 403
    assert "being terminated" in body["message"]
    await api.patch("/api/v1/namespaces/team", {"metadata": {"labels": {"x": "y"}}})
    assert (await api.get("/api/v1/namespaces/team"))[0] == 200  # still terminating: content remains
    await api.patch("/api/v1/namespaces/team/configmaps/held", {"metadata": {"finalizers": None}})
    assert (await api.get("/api/v1/namespaces/team"))[0] == 404
    _, nss = await api.get("/api/v1/namespaces")
    assert {"default", "kube-system", "kube-public"} <= {n["metadata"]["name"] for n in nss["items"]}


# ---------------------------------------------------------------------------------------------- pods
async def test_pod_defaults_and_pending_status(api: Api) -> None:
    status, p = await api.post(PODS, pod("p"))
    assert status == 201
    assert p["status"]["phase"] == "Pending"
    assert p["status"]["qosClass"] == "BestEffort"
    c = p["spec"]["containers"][0]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "File"
    assert p["spec"]["restartPolicy"] == "Always"
    assert p["spec"]["terminationGracePeriodSeconds"] == 30
    assert "nodeName" not in p["spec"]


async def test_pod_binding_sets_node_and_condition(api: Api) -> None:
    await api.post(PODS, pod("p"))
    status, body = await api.post(f"{PODS}/p/binding", {"apiVersion": "v1", "kind": "Binding",
                                                        "metadata": {"name": "p"},
                                                        "target": {"kind": "Node", "name": "local-node"}})
    assert status == 201, body
    _, p = await api.get(f"{PODS}/p")
    assert p["spec"]["nodeName"] == "local-node"
    assert {"type": "PodScheduled", "status": "True"}.items() <= p["status"]["conditions"][0].items()
    status, _ = await api.post(f"{PODS}/p/binding", {"target": {"name": "other"}})
    assert status == 409


async def test_scheduled_pod_graceful_deletion_waits_for_node(api: Api) -> None:
    await api.post(PODS, pod("p", nodeName="local-node"))
    status, p = await api.delete(f"{PODS}/p")
    assert status == 200
    assert p["metadata"]["deletionGracePeriodSeconds"] == 30
    assert p["metadata"]["deletionTimestamp"]
    assert (await api.get(f"{PODS}/p"))[0] == 200
    await api.delete(f"{PODS}/p", {"gracePeriodSeconds": 0})
    assert (await api.get(f"{PODS}/p"))[0] == 404


async def test_unscheduled_or_finished_pod_deleted_at_once(api: Api) -> None:
    await api.post(PODS, pod("p"))
    await api.delete(f"{PODS}/p")
    assert (await api.get(f"{PODS}/p"))[0] == 404
    await api.post(PODS, pod("q", nodeName="local-node"))
    await api.patch(f"{PODS}/q/status", {"status": {"phase": "Succeeded"}})
    await api.delete(f"{PODS}/q")
    assert (await api.get(f"{PODS}/q"))[0] == 404


async def test_pod_spec_is_immutable(api: Api) -> None:
    await api.post(PODS, pod("p"))
    status, body = await api.patch(f"{PODS}/p", {"spec": {"restartPolicy": "Never"}})
    assert status == 422
    assert "pod updates may not change fields" in body["message"]


async def test_resource_quota_pods_limit(api: Api) -> None:
    await api.post("/api/v1/namespaces/default/resourcequotas",
                   {"metadata": {"name": "q"}, "spec": {"hard": {"count/pods": "2"}}})
    assert (await api.post(PODS, pod("a")))[0] == 201
    assert (await api.post(PODS, pod("b")))[0] == 201
    status, body = await api.post(PODS, pod("c"))
    assert status == 403
    assert body["reason"] == "Forbidden"
    assert body["message"] == ('pods "c" is forbidden: exceeded quota: q, requested: count/pods=1, '
                               "used: count/pods=2, limited: count/pods=2")


async def test_service_account_must_exist(api: Api) -> None:
    status, body = await api.post(PODS, pod("p", serviceAccountName="robot"))
    assert status == 403
    assert 'serviceaccount "robot" not found' in body["message"]
    await api.post("/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "robot"}})
    assert (await api.post(PODS, pod("p", serviceAccountName="robot")))[0] == 201


async def test_runtime_class_must_exist(api: Api) -> None:
    status, body = await api.post(PODS, pod("p", runtimeClassName="gvisor"))
    assert status == 403
    assert body["message"] == 'pods "p" is forbidden: pod rejected: RuntimeClass "gvisor" not found'
    await api.post("/apis/node.k8s.io/v1/runtimeclasses", {"metadata": {"name": "gvisor"}, "handler": "runsc"})
    assert (await api.post(PODS, pod("p", runtimeClassName="gvisor")))[0] == 201


async def test_eviction_deletes_pod(api: Api) -> None:
    await api.post(PODS, pod("p"))
    status, _ = await api.post(f"{PODS}/p/eviction", {"apiVersion": "policy/v1", "kind": "Eviction",
                                                      "metadata": {"name": "p"}})
    assert status == 201
    assert (await api.get(f"{PODS}/p"))[0] == 404


async def test_events_core_and_events_k8s_io(api: Api) -> None:
    ev = {"metadata": {"generateName": "x-"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
          "reason": "Started", "message": "hi", "type": "Normal"}
    status, _ = await api.post("/api/v1/namespaces/default/events", ev)
    assert status == 201
    status, lst = await api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dp")
    assert [e["reason"] for e in lst["items"]] == ["Started"]
    status, _ = await api.post("/apis/events.k8s.io/v1/namespaces/default/events",
                               {"metadata": {"name": "e2"}, "reason": "R", "note": "n", "action": "A",
                                "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "c",
                                "reportingInstance": "i", "regarding": {"kind": "Pod", "name": "p"},
                                "type": "Normal"})
    assert status == 201


async def test_cluster_scoped_and_other_builtin_kinds(api: Api) -> None:
    for path, body in [
        ("/apis/coordination.k8s.io/v1/namespaces/default/leases", {"metadata": {"name": "l"},
                                                                    "spec": {"holderIdentity": "me"}}),
        ("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
         {"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {"metadata": {"name": "r"}, "rules": []}),
        ("/apis/apps/v1/namespaces/default/deployments", {"metadata": {"name": "d"}, "spec": {}}),
        ("/apis/policy/v1/namespaces/default/poddisruptionbudgets", {"metadata": {"name": "p"}, "spec": {}}),
        ("/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
        ("/api/v1/nodes", {"metadata": {"name": "n1"}}),
    ]:
        status, o = await api.post(path, body)
        assert status == 201, (path, o)
        assert (await api.get(f"{path}/{o['metadata']['name']}"))[0] == 200
    status, svc = await api.post("/api/v1/namespaces/default/services",
                                 {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})
    assert status == 201
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"][0]["targetPort"] == 80
    _, s = await api.get("/api/v1/namespaces/default/secrets/s")
    assert s["data"] == {"k": "dg=="}
    assert s["type"] == "Opaque"
    assert "stringData" not in s


async def test_multi_version_crd_serves_each_version(api: Api) -> None:
    crd = {**WIDGET_CRD, "metadata": {"name": "gadgets.test.dev"}}
    crd["spec"] = {**WIDGET_CRD["spec"], "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"}}
    v1 = {**WIDGET_CRD["spec"]["versions"][0], "name": "v1beta1", "storage": True}
    v2 = {**WIDGET_CRD["spec"]["versions"][0], "name": "v1", "storage": False}
    crd["spec"]["versions"] = [v1, v2]
    assert (await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd))[0] == 201
    _, group = await api.get("/apis/test.dev")
    assert group["preferredVersion"]["version"] == "v1"
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]
    status, _ = await api.post("/apis/test.dev/v1beta1/namespaces/default/gadgets",
                               {"metadata": {"name": "g"}, "spec": {"size": 1}})
    assert status == 201
    _, g = await api.get("/apis/test.dev/v1/namespaces/default/gadgets/g")
    assert g["apiVersion"] == "test.dev/v1"
    _, lst = await api.get("/apis/test.dev/v1/namespaces/default/gadgets")
    assert lst["apiVersion"] == "test.dev/v1"
    assert lst["items"][0]["apiVersion"] == "test.dev/v1"


@needs_schema
async def test_unknown_and_duplicate_fields_of_a_custom_resource_warn_and_are_dropped(api: Api) -> None:
    await install_widgets(api)
    body = ('{"apiVersion":"test.dev/v1","kind":"Widget","metadata":{"name":"w","bogus":1},'
            '"spec":{"size":1,"size":2,"foo":1}}')
    async with api.session.post(api.url + W, data=body, headers={"Content-Type": "application/json"}) as resp:
        got = await resp.json()
        assert resp.status == 201
        assert resp.headers.getall("Warning") == ['299 - "duplicate field \\"spec.size\\""',
                                                  '299 - "unknown field \\"metadata.bogus\\""',
                                                  '299 - "unknown field \\"spec.foo\\""']
    assert "bogus" not in got["metadata"]
    assert got["spec"]["size"] == 2
    assert "foo" not in got["spec"]
    async with api.session.post(api.url + W + "?fieldValidation=Strict", data=body.replace('"w"', '"s"'),
                                headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["message"] == (
            'Widget in version "v1" cannot be handled as a Widget: strict decoding error: '
            'duplicate field "spec.size", unknown field "metadata.bogus", unknown field "spec.foo"')


async def test_an_update_naming_another_uid_is_a_409_precondition_failure(api: Api) -> None:
    _, a = await api.post(CM, cm("u", x="1"))
    status, body = await api.put(f"{CM}/u", {**a, "metadata": {**a["metadata"], "uid": "other"}, "data": {"x": "2"}})
    assert status == 409
    assert body["reason"] == "Conflict"
    assert body["message"].endswith(f"Precondition failed: UID in precondition: other, UID in object meta: "
                                    f"{a['metadata']['uid']}")
    assert "Key: /registry/configmaps/default/u," in body["message"]
    status, same = await api.put(f"{CM}/u", {**a, "data": {"x": "2"}})
    assert status == 200
    assert same["data"] == {"x": "2"}


# ---------------------------------------------------------------------------------------------- real-server limits
async def test_annotations_are_limited_to_256_kib_of_keys_and_values(api: Api) -> None:
    at_limit = {"metadata": {"name": "max", "annotations": {"a": "x" * (262144 - 1)}}}
    assert (await api.post(CM, at_limit))[0] == 201
    status, body = await api.post(CM, {"metadata": {"name": "over", "annotations": {"a": "x" * 262144}}})
    assert status == 422
    assert body["message"] == 'ConfigMap "over" is invalid: metadata.annotations: Too long: may not be more than ' \
                              "262144 bytes"


async def test_size_limits_answer_by_layer(api: Api) -> None:
    await install_widgets(api)
    status, body = await api.post(CM, cm("huge", big="x" * (3 * 1024 * 1024)))
    assert status == 413
    assert body["message"] == "Request entity too large: limit is 3145728"
    status, body = await api.post(CM, cm("toobig", a="x" * 524288, b="x" * 524289))
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "[]"
    status, body = await api.post(W, widget("w-etcd", frozen="x" * 1572864))
    assert status == 500
    assert body["message"] == "etcdserver: request is too large"
    assert "reason" not in body
    status, body = await api.post(W, widget("w-grpc", frozen="x" * 2097152))
    assert status == 500
    assert body["message"].startswith(
        "rpc error: code = ResourceExhausted desc = trying to send message larger than max (")
    assert (await api.get(f"{W}/w-etcd"))[0] == 404


async def test_names_labels_and_finalizers_follow_the_real_rules(api: Api) -> None:
    status, body = await api.post(CM, cm("n" * 254))
    assert status == 422
    assert body["details"]["causes"][0]["message"].endswith("must be no more than 253 characters")
    status, body = await api.post(CM, cm("l", labels={"k": "bad value"}))
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.labels"
    status, body = await api.post(CM, {"metadata": {"name": "f", "finalizers": ["hold"]}})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.finalizers[0]"
    status, body = await api.post(CM, {"metadata": {"generateName": "g" * 70}})
    assert status == 201
    assert len(body["metadata"]["name"]) == 63


async def test_delete_answers_a_status_unless_finalizers_keep_the_object(api: Api) -> None:
    await api.post(CM, cm("plain"))
    status, body = await api.delete(f"{CM}/plain")
    assert status == 200
    assert body["kind"] == "Status"
    assert body["details"]["kind"] == "configmaps"
    await api.post(CM, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    status, body = await api.delete(f"{CM}/held")
    assert status == 200
    assert body["kind"] == "ConfigMap"
    assert body["metadata"]["deletionGracePeriodSeconds"] == 0
    status, owner = await api.post(CM, cm("owner"))
    dep = {"metadata": {"name": "dep", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}}
    await api.post(CM, dep)
    status, body = await api.delete(f"{CM}/owner", {"propagationPolicy": "Orphan"})
    assert status == 200
    assert body["metadata"]["finalizers"] == ["orphan"]
    status, kept = await api.get(f"{CM}/dep")
    assert status == 200
    assert "ownerReferences" not in kept["metadata"]
    assert (await api.get(f"{CM}/owner"))[0] == 404


async def test_pods_mount_the_service_account_token_unless_they_opt_out(api: Api) -> None:
    status, p = await api.post(PODS, pod("with-token"))
    assert status == 201
    volume = p["spec"]["volumes"][0]
    assert volume["name"].startswith("kube-api-access-")
    assert p["spec"]["containers"][0]["volumeMounts"] == [
        {"name": volume["name"], "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
    assert (await api.get(f"{CM}/kube-root-ca.crt"))[0] == 200
    status, p = await api.post(PODS, pod("no-token", automountServiceAccountToken=False))
    assert status == 201
    assert "volumes" not in p["spec"]


async def test_values_of_the_wrong_json_type_are_a_400_not_a_crash(api: Api) -> None:
    status, body = await api.post(PODS, {"metadata": {"name": "p"}, "spec": {"containers": "sandbox"}})
    assert status == 400
    assert body["message"].startswith('Pod in version "v1" cannot be handled as a Pod: json: ')
    status, body = await api.post(CM, {"metadata": {"name": "c"}, "data": {"n": 1}})
    assert status == 400
    assert "ConfigMap.data of type string" in body["message"]
    status, body = await api.post(PODS, {"metadata": {"name": "p"}, "spec": None})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "spec.containers"  # null is unset


async def test_an_event_is_one_object_read_through_both_event_apis(api: Api) -> None:
    core = {"metadata": {"name": "ev1"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Started", "message": "hi", "type": "Normal", "reportingComponent": "op",
            "reportingInstance": "op-0", "count": 1}
    status, created = await api.post("/api/v1/namespaces/default/events", core)
    assert status == 201
    assert created["eventTime"] is None
    assert created["source"] == {}
    status, v1 = await api.get("/apis/events.k8s.io/v1/namespaces/default/events/ev1")
    assert status == 200
    assert (v1["note"], v1["regarding"]["name"], v1["reportingController"], v1["deprecatedCount"]) == \
        ("hi", "p", "op", 1)
    assert v1["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    await api.delete("/apis/events.k8s.io/v1/namespaces/default/events/ev1")
    assert (await api.get("/api/v1/namespaces/default/events/ev1"))[0] == 404


async def test_pod_updates_follow_the_real_rules(api: Api) -> None:
    await api.post(PODS, pod("u", activeDeadlineSeconds=100))
    status, body = await api.patch(f"{PODS}/u", {"spec": {"containers": []}})
    assert status == 422
    assert [c["message"] for c in body["details"]["causes"]] == [
        "Required value", "Forbidden: pod updates may not add or remove containers"]
    status, body = await api.patch(f"{PODS}/u", {"spec": {"activeDeadlineSeconds": 200}})
    assert status == 422
    assert body["details"]["causes"][0]["message"] == (
        "Invalid value: 200: must be less than or equal to previous value")
    status, body = await api.patch(f"{PODS}/u", {"spec": {"activeDeadlineSeconds": 50}})
    assert status == 200
    assert body["metadata"]["generation"] == 2


async def test_an_immutable_configmap_keeps_its_data_and_its_flag(api: Api) -> None:
    await api.post(CM, {"metadata": {"name": "frozen"}, "immutable": True, "data": {"a": "1"}})
    status, body = await api.patch(f"{CM}/frozen", {"data": {"a": "2"}})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "data"
    status, body = await api.patch(f"{CM}/frozen", {"immutable": False})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "immutable"


@needs_schema
async def test_a_custom_resource_lists_its_metadata_errors_before_its_schema_errors(api: Api) -> None:
    await install_widgets(api)
    body = widget("w-bad", size=0)
    body["metadata"]["labels"] = {"k": "bad value"}
    status, answer = await api.post(W, body)
    assert status == 422
    fields = [c["field"] for c in answer["details"]["causes"]]
    assert fields[0] == "metadata.labels"
    assert "spec.size" in fields
