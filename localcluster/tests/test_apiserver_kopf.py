"""kopf (the operator framework the product uses) against the API server emulator, end to end.

kopf exercises the parts a real operator leans on: the initial list + watch with bookmarks,
finalizers added and removed by JSON patch with a resourceVersion test, merge patches of status
and annotations, and Events.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from test_apiserver_support import wait_for

from localcluster.cluster import LocalCluster
from localcluster.testing import run_cluster_in_thread

WIDGETS = "/apis/test.dev/v1/namespaces/default/widgets"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.dev"},
    "spec": {
        "group": "test.dev", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                          "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                          "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}],
    },
}


def http(cluster: LocalCluster, method: str, path: str, body: Any = None) -> Any:
    ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.url + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with run_cluster_in_thread(tmp_path, with_node=False, apiserver_options={"bookmark_interval": 1.0}) as c:
        http(c, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
        yield c


def make_registry(url: str) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 0
        settings.watching.server_timeout = 30

    @kopf.on.create("test.dev", "v1", "widgets", registry=registry)
    def created(spec: Any, patch: kopf.Patch, **_: Any) -> None:
        patch.status["doubled"] = spec.get("n", 0) * 2

    @kopf.on.update("test.dev", "v1", "widgets", field="spec.n", registry=registry)
    def updated(new: Any, patch: kopf.Patch, **_: Any) -> None:
        patch.status["doubled"] = new * 2

    @kopf.on.delete("test.dev", "v1", "widgets", registry=registry)
    def deleted(**_: Any) -> None:
        return None

    return registry


def test_kopf_operator_create_update_delete(cluster: LocalCluster) -> None:
    registry = make_registry(cluster.url)
    args = ["run", "--standalone", "--namespace", "default", "--verbose"]
    with KopfRunner(args, registry=registry, timeout=60) as runner:
        http(cluster, "POST", WIDGETS, {"metadata": {"name": "w"}, "spec": {"n": 2}})
        w = wait_for(lambda: (o := http(cluster, "GET", f"{WIDGETS}/w")) and
                     (o.get("status") or {}).get("doubled") == 4 and o)
        assert w["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        http(cluster, "PATCH", f"{WIDGETS}/w", {"spec": {"n": 5}})
        wait_for(lambda: ((http(cluster, "GET", f"{WIDGETS}/w") or {}).get("status") or {}).get("doubled") == 10)
        http(cluster, "DELETE", f"{WIDGETS}/w")
        wait_for(lambda: http(cluster, "GET", f"{WIDGETS}/w") is None)
        events = http(cluster, "GET", "/api/v1/namespaces/default/events")["items"]
        log = cluster.apiserver.request_log
        json_patches = [r for r in log if r.verb == "patch" and "json-patch" in r.content_type]
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0
    assert ".created' succeeded" in runner.output
    assert json_patches, "kopf guards finalizer changes with a JSON patch"
    assert all(r.code < 500 for r in log)
    assert isinstance(events, list)
