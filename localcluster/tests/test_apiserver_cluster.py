"""`python -m localcluster up`, LocalCluster and the threaded runner used by synchronous tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_apiserver_support import wait_for

from localcluster.apiserver import FaultRule
from localcluster.cluster import LocalCluster
from localcluster.testing import run_cluster_in_thread

ROOT = Path(__file__).resolve().parents[2]


def http(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_up_command_prints_ready_line_writes_kubeconfig_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc" / "config"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcluster", "up", "--state-dir", str(tmp_path / "state"), "--no-node",
         "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"localcluster ready: KUBECONFIG={kubeconfig}"
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["current-context"] == "localcluster"
        server = config["clusters"][0]["cluster"]["server"]
        assert server.startswith("http://127.0.0.1:")
        status, version = http(server + "/version")
        assert status == 200
        assert version["gitVersion"].startswith("v1.")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_thread_runner_serves_sync_clients_and_faults(tmp_path: Path) -> None:
    with run_cluster_in_thread(tmp_path, with_node=False) as cluster:
        assert isinstance(cluster, LocalCluster)
        assert cluster.kubeconfig_path == tmp_path.absolute() / "kubeconfig"
        status, _ = http(cluster.url + "/api/v1/namespaces/default/configmaps", "POST", {"metadata": {"name": "a"}})
        assert status == 201
        assert cluster.apiserver.store.find("", "configmaps", "a", "default") is not None
        cluster.apiserver.faults.add(FaultRule(verb="get", resource="configmaps", status=500, times=1))
        assert http(cluster.url + "/api/v1/namespaces/default/configmaps/a")[0] == 500
        assert http(cluster.url + "/api/v1/namespaces/default/configmaps/a")[0] == 200
        runner = cluster.runner
        assert runner.call(cluster.apiserver.drop_watches) == 0
        assert cluster.apiserver.drop_watches() == 0  # from this thread too
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(cluster.url + "/healthz", timeout=2)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the local node needs bubblewrap")
def test_cluster_with_node_registers_node_and_runs_a_pod(tmp_path: Path) -> None:
    """The node is an ordinary client: it registers, binds the pod, runs it, and its logs are served."""
    with run_cluster_in_thread(tmp_path) as cluster:
        if cluster.node is None:
            pytest.skip("localcluster.node is not available")
        node = wait_for(lambda: http(cluster.url + "/api/v1/nodes/local-node")[1]
                        if http(cluster.url + "/api/v1/nodes/local-node")[0] == 200 else None)
        conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conds["Ready"] == "True"
        pod = {"metadata": {"name": "hello"}, "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "ghcr.io/execution-operator/sandbox:test",
            "command": ["python", "-c", "print('hello from the node')"]}]}}
        assert http(cluster.url + "/api/v1/namespaces/default/pods", "POST", pod)[0] == 201

        def finished() -> dict[str, Any] | None:
            _, p = http(cluster.url + "/api/v1/namespaces/default/pods/hello")
            return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

        p = wait_for(finished, within=60)
        assert p["spec"]["nodeName"] == "local-node"
        assert p["status"]["phase"] == "Succeeded", p["status"]
        with urllib.request.urlopen(cluster.url + "/api/v1/namespaces/default/pods/hello/log", timeout=10) as r:
            assert r.read() == b"hello from the node\n"
