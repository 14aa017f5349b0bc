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
