"""The scale subresource of a custom resource (the WarmPool CRD of this repository), with the real kubectl."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_apiserver_kubectl import KUBECTL, ROOT

from localcluster.cluster import LocalCluster
from localcluster.testing import run_cluster_in_thread

pytestmark = [pytest.mark.tools, pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with run_cluster_in_thread(tmp_path_factory.mktemp("scale-cluster"), with_node=False) as c:
        yield c


def kubectl(cluster: LocalCluster, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path), "HOME": str(home)}
    proc = subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def call(cluster: LocalCluster, method: str, path: str, body: Any = None,
         ctype: str = "application/merge-patch+json") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.url + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


POOL = "/apis/sandbox.dev/v1alpha1/namespaces/default/warmpools/wp"


def test_scale_reads_and_writes_the_replicas(cluster: LocalCluster, tmp_path: Path) -> None:
    kubectl(cluster, tmp_path, "apply", "-f", str(ROOT / "crds" / "warmpools.sandbox.dev.yaml"))
    kubectl(cluster, tmp_path, "wait", "crd/warmpools.sandbox.dev", "--for=condition=Established")
    pool = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "WarmPool", "metadata": {"name": "wp"},
            "spec": {"executionClassName": "default", "replicas": 2}}
    code, _ = call(cluster, "POST", "/apis/sandbox.dev/v1alpha1/namespaces/default/warmpools", pool,
                   "application/json")
    assert code == 201
    call(cluster, "PATCH", POOL + "/status", {"status": {"replicas": 1, "selector": "sandbox.dev/warm-pool=wp"}})
    code, scale = call(cluster, "GET", POOL + "/scale")
    assert code == 200
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 1, "selector": "sandbox.dev/warm-pool=wp"}
    out = kubectl(cluster, tmp_path, "scale", "warmpool/wp", "--replicas=5")
    assert "scaled" in out.stdout
    code, body = call(cluster, "GET", POOL)
    assert body["spec"]["replicas"] == 5
    assert body["metadata"]["generation"] == 2
    # The object's schema still applies: 0..100.
    code, status = call(cluster, "PATCH", POOL + "/scale", {"spec": {"replicas": 101}})
    assert code == 422, status
    # And its resourceVersion precondition.
    code, status = call(cluster, "PUT", POOL + "/scale", {**scale, "spec": {"replicas": 3}}, "application/json")
    assert code == 409, status
    proc = kubectl(cluster, tmp_path, "scale", "warmpool/wp", "--replicas=4", "--current-replicas=9", check=False)
    assert proc.returncode != 0


# What follows is how the apiextensions server answers the scale subresource of a custom resource
# (staging/src/k8s.io/apiextensions-apiserver/pkg/registry/customresource/etcd.go, ScaleREST; the handler
# is serveScale in pkg/apiserver/customresource_handler.go).

WARMPOOLS = "/apis/sandbox.dev/v1alpha1/namespaces/default/warmpools"


def _pool(cluster: LocalCluster, tmp_path: Path, name: str, **spec: Any) -> dict[str, Any]:
    kubectl(cluster, tmp_path, "apply", "-f", str(ROOT / "crds" / "warmpools.sandbox.dev.yaml"))
    kubectl(cluster, tmp_path, "wait", "crd/warmpools.sandbox.dev", "--for=condition=Established")
    body = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "WarmPool", "metadata": {"name": name},
            "spec": {"executionClassName": "default", **spec}}
    code, obj = call(cluster, "POST", WARMPOOLS + "?fieldManager=creator", body, "application/json")
    assert code == 201, obj
    return obj


def test_scale_get_is_the_autoscaling_v1_scale_of_the_object(cluster: LocalCluster, tmp_path: Path) -> None:
    obj = _pool(cluster, tmp_path, "wp-get", replicas=0)
    code, scale = call(cluster, "GET", f"{WARMPOOLS}/wp-get/scale")
    assert code == 200
    meta = obj["metadata"]
    # scaleFromCustomResource: name, namespace, uid, resourceVersion, creationTimestamp and nothing else;
    # ScaleSpec.Replicas is omitempty (0 leaves spec empty), ScaleStatus.Replicas is not; no selector yet.
    assert scale == {"kind": "Scale", "apiVersion": "autoscaling/v1",
                     "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                       "creationTimestamp")},
                     "spec": {}, "status": {"replicas": 0}}


def test_scale_of_a_missing_object_is_the_objects_not_found(cluster: LocalCluster, tmp_path: Path) -> None:
    _pool(cluster, tmp_path, "wp-present")
    for method, body, ctype in (("GET", None, "application/json"),
                                ("PUT", {"metadata": {"name": "nope"}, "spec": {"replicas": 1}}, "application/json"),
                                ("PATCH", {"spec": {"replicas": 1}}, "application/merge-patch+json")):
        code, status = call(cluster, method, f"{WARMPOOLS}/nope/scale", body, ctype)
        assert code == 404, (method, status)
        # the store's NotFound names the custom resource, not the Scale
        assert status["message"] == 'warmpools.sandbox.dev "nope" not found'
        assert status["details"] == {"name": "nope", "group": "sandbox.dev", "kind": "warmpools"}


def test_scale_put_preconditions_and_names(cluster: LocalCluster, tmp_path: Path) -> None:
    obj = _pool(cluster, tmp_path, "wp-put", replicas=2)
    url = f"{WARMPOOLS}/wp-put/scale"
    # no resourceVersion: the update is unconditional (UpdatedObject keeps the stored one)
    code, scale = call(cluster, "PUT", url, {"metadata": {"name": "wp-put"}, "spec": {"replicas": 3}},
                       "application/json")
    assert code == 200, scale
    assert scale["spec"] == {"replicas": 3}
    # a stale one is the object's conflict
    stale = {"metadata": {"name": "wp-put", "resourceVersion": obj["metadata"]["resourceVersion"]},
             "spec": {"replicas": 4}}
    code, status = call(cluster, "PUT", url, stale, "application/json")
    assert code == 409
    assert status["message"] == ('Operation cannot be fulfilled on warmpools.sandbox.dev "wp-put": the object has '
                                 "been modified; please apply your changes to the latest version and try again")
    # the current one passes; a Scale without spec.replicas says 0
    code, scale = call(cluster, "PUT", url, {"metadata": {"name": "wp-put",
                                                          "resourceVersion": scale["metadata"]["resourceVersion"]}},
                       "application/json")
    assert (code, scale["spec"]) == (200, {})
    _, got = call(cluster, "GET", f"{WARMPOOLS}/wp-put")
    assert got["spec"]["replicas"] == 0
    # checkName: the body must name the object of the URL
    code, status = call(cluster, "PUT", url, {"spec": {"replicas": 1}}, "application/json")
    assert (code, status["message"]) == (
        400, "the name of the object (wp-put based on URL) was undeterminable: name must be provided")
    code, status = call(cluster, "PUT", url, {"metadata": {"name": "other"}, "spec": {"replicas": 1}},
                        "application/json")
    assert (code, status["message"]) == (400, "the name of the object (other) does not match the name on the URL "
                                              "(wp-put)")
    # a replicas that is no int32 does not decode as a Scale
    code, status = call(cluster, "PUT", url, {"metadata": {"name": "wp-put"}, "spec": {"replicas": "x"}},
                        "application/json")
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"] == ('Scale in version "v1" cannot be handled as a Scale: json: cannot unmarshal string '
                                 "into Go struct field ScaleSpec.spec.replicas of type int32")


def test_scale_patch_types(cluster: LocalCluster, tmp_path: Path) -> None:
    _pool(cluster, tmp_path, "wp-patch", replicas=2)
    url = f"{WARMPOOLS}/wp-patch/scale"
    code, scale = call(cluster, "PATCH", url, {"spec": {"replicas": 5}})
    assert (code, scale["spec"]) == (200, {"replicas": 5})
    code, scale = call(cluster, "PATCH", url, [{"op": "replace", "path": "/spec/replicas", "value": 6}],
                       "application/json-patch+json")
    assert (code, scale["spec"]) == (200, {"replicas": 6})
    # the custom resource handler's patch types: no strategic merge, for the Scale too
    code, status = call(cluster, "PATCH", url, {"spec": {"replicas": 7}}, "application/strategic-merge-patch+json")
    assert code == 415
    assert status["message"] == ("the body of the request was in an unknown format - accepted media types include: "
                                 "application/json-patch+json, application/merge-patch+json, "
                                 "application/apply-patch+yaml")
    # apply is accepted, then fails: the scale scope's field manager has no type for autoscaling/v1 Scale
    apply = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "wp-patch"},
             "spec": {"replicas": 7}}
    code, status = call(cluster, "PATCH", url + "?fieldManager=me", apply, "application/apply-patch+yaml")
    assert code == 500
    assert "reason" not in status
    assert status["message"].endswith("no corresponding type for autoscaling/v1, Kind=Scale")
    code, status = call(cluster, "PATCH", url + "?fieldManager=me", {**apply, "kind": "WarmPool"},
                        "application/apply-patch+yaml")
    assert (code, status["message"]) == (400, "invalid object type: autoscaling/v1, Kind=WarmPool")
    # a patched Scale whose replicas is no int32: jsonPatcher's 422 quoting the patched JSON
    code, status = call(cluster, "PATCH", url, {"spec": {"replicas": "x"}})
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"].startswith(' "" is invalid: patch: Invalid value: "{\\"apiVersion\\":\\"autoscaling/v1\\",'
                                        '\\"kind\\":\\"Scale\\",\\"metadata\\":{\\"name\\":\\"wp-patch\\",')
    assert status["message"].endswith('\\"spec\\":{\\"replicas\\":\\"x\\"},\\"status\\":{\\"replicas\\":0}}": '
                                      "json: cannot unmarshal string into Go struct field ScaleSpec.spec.replicas "
                                      "of type int32")
    assert status["details"]["causes"][0]["field"] == "patch"
    _, got = call(cluster, "GET", f"{WARMPOOLS}/wp-patch")
    assert got["spec"]["replicas"] == 6


def test_scale_bounds_are_the_objects_schema_and_scale_checks(cluster: LocalCluster, tmp_path: Path) -> None:
    _pool(cluster, tmp_path, "wp-bounds")
    url = f"{WARMPOOLS}/wp-bounds/scale"
    code, status = call(cluster, "PATCH", url, {"spec": {"replicas": 101}})
    assert code == 422
    assert status["message"] == ('WarmPool.sandbox.dev "wp-bounds" is invalid: spec.replicas: Invalid value: 101: '
                                 "spec.replicas in body should be less than or equal to 100")
    # below 0 the schema's minimum and ValidateScaleSpec both refuse (its path is the CRD's, dot included)
    code, status = call(cluster, "PATCH", url, {"spec": {"replicas": -1}})
    assert code == 422
    assert status["message"] == ('WarmPool.sandbox.dev "wp-bounds" is invalid: [spec.replicas: Invalid value: -1: '
                                 "spec.replicas in body should be greater than or equal to 0, .spec.replicas: "
                                 "Invalid value: -1: should be a non-negative integer]")
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.replicas", ".spec.replicas"]
    # the same checks on the object itself, and ValidateScaleStatus on its status
    code, status = call(cluster, "PATCH", f"{WARMPOOLS}/wp-bounds/status", {"status": {"replicas": -2}})
    assert code == 422
    assert status["message"].endswith(".status.replicas: Invalid value: -2: should be a non-negative integer]")


def test_scale_generation_dry_run_and_field_ownership(cluster: LocalCluster, tmp_path: Path) -> None:
    obj = _pool(cluster, tmp_path, "wp-gen", replicas=2)
    assert [(e["manager"], e["fieldsV1"]["f:spec"]) for e in obj["metadata"]["managedFields"]] == [
        ("creator", {".": {}, "f:executionClassName": {}, "f:replicas": {}})]
    url = f"{WARMPOOLS}/wp-gen/scale"
    code, scale = call(cluster, "PATCH", url + "?dryRun=All", {"spec": {"replicas": 9}})
    assert (code, scale["spec"]) == (200, {"replicas": 9})
    _, got = call(cluster, "GET", f"{WARMPOOLS}/wp-gen")
    assert (got["spec"]["replicas"], got["metadata"]["resourceVersion"]) == (2, obj["metadata"]["resourceVersion"])
    # the spec changes: generation 2 (the object's own strategy)
    call(cluster, "PATCH", url + "?fieldManager=scaler", {"spec": {"replicas": 3}})
    _, got = call(cluster, "GET", f"{WARMPOOLS}/wp-gen")
    assert (got["spec"]["replicas"], got["metadata"]["generation"]) == (3, 2)
    # The Scale's field manager cannot type a Scale: the scaler is not recorded, and ScaleHandler.ToParent,
    # given the live Scale's entries back (relabelled autoscaling/v1), splits the creator's replicas off
    # into a second entry without a time, sorted first
    entries = got["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"], e["fieldsV1"]["f:spec"], "time" in e) for e in entries] == [
        ("creator", "Update", {"f:replicas": {}}, False),
        ("creator", "Update", {".": {}, "f:executionClassName": {}}, True)]
    assert not any(e.get("subresource") for e in entries)
    # the next write decodes one entry per manager (the last): nobody owns the replicas any more
    call(cluster, "PATCH", url + "?fieldManager=scaler", {"spec": {"replicas": 3}})
    _, got = call(cluster, "GET", f"{WARMPOOLS}/wp-gen")
    assert got["metadata"]["generation"] == 2
    assert [(e["manager"], e["fieldsV1"]["f:spec"]) for e in got["metadata"]["managedFields"]] == [
        ("creator", {".": {}, "f:executionClassName": {}})]
    # with nobody owning the replicas, apply fails earlier, recording the live Scale's fields first
    apply = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 4}}
    code, status = call(cluster, "PATCH", url + "?fieldManager=me", apply, "application/apply-patch+yaml")
    assert (code, status["message"]) == (500, "failed to create manager for existing fields: failed to create typed "
                                              "new object (default/wp-gen; autoscaling/v1, Kind=Scale): no "
                                              "corresponding type for autoscaling/v1, Kind=Scale")


SCALED = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaleds.scale.example.com"},
    "spec": {"group": "scale.example.com", "scope": "Namespaced",
             "names": {"plural": "scaleds", "singular": "scaled", "kind": "Scaled", "listKind": "ScaledList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"scale": {"specReplicasPath": ".spec.replicas",
                                                      "statusReplicasPath": ".status.replicas"}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "properties": {"replicas": {"type": "integer"},
                                                                         "other": {"type": "string"}}},
                               "status": {"type": "object",
                                          "properties": {"replicas": {"type": "integer"}}}}}}}]}}


def test_scale_without_spec_replicas(cluster: LocalCluster, tmp_path: Path) -> None:
    code, crd = call(cluster, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", SCALED,
                     "application/json")
    assert code == 201, crd
    kubectl(cluster, tmp_path, "wait", "crd/scaleds.scale.example.com", "--for=condition=Established")
    base = "/apis/scale.example.com/v1/namespaces/default/scaleds"
    code, obj = call(cluster, "POST", base, {"apiVersion": "scale.example.com/v1", "kind": "Scaled",
                                             "metadata": {"name": "s"}, "spec": {"other": "x"}}, "application/json")
    assert code == 201, obj
    # ScaleREST.Get: no replicas to read is an internal error
    code, status = call(cluster, "GET", base + "/s/scale")
    assert code == 500
    assert status["reason"] == "InternalError"
    assert status["message"] == 'Internal error occurred: the spec replicas field ".spec.replicas" does not exist'
    # a patch that does not set them: 400 (UpdatedObject); one that does sets them
    code, status = call(cluster, "PATCH", base + "/s/scale", {"metadata": {"labels": {"a": "b"}}})
    assert (code, status["message"]) == (400, 'the spec replicas field ".spec.replicas" cannot be empty')
    code, scale = call(cluster, "PATCH", base + "/s/scale", {"spec": {"replicas": 2}})
    assert (code, scale["spec"]) == (200, {"replicas": 2})
    call(cluster, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/scaleds.scale.example.com")
