"""End-to-end fixtures: the local cluster (or E2E_KUBECONFIG's cluster), the operator, a namespace per test.

With E2E_KUBECONFIG set, the suite talks to that cluster and expects the operator installed there (Helm),
unless E2E_RUN_OPERATOR=1 asks it to run the operator from this checkout against that cluster.
Without it, the suite starts the local cluster and the operator as subprocesses.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.kube import Kube, kubectl_binary
from tests.e2e.procs import ClusterHandle, OperatorProcess, start_local_cluster, stop_process

E2E_KUBECONFIG = os.environ.get("E2E_KUBECONFIG")
RUN_OPERATOR = os.environ.get("E2E_RUN_OPERATOR") == "1" or not E2E_KUBECONFIG
SANDBOX_IMAGE = os.environ.get("E2E_SANDBOX_IMAGE", "ghcr.io/execution-operator/sandbox:0.1.0")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    if kubectl_binary() is None:
        pytest.skip("kubectl not found: run `make tools` (hack/get-tools.sh)")
    if E2E_KUBECONFIG:
        # The chart installed `default`; the suite also needs `small` (a low maxTimeoutSeconds).
        small = {
            "apiVersion": "sandbox.dev/v1alpha1", "kind": "ExecutionClass", "metadata": {"name": "small"},
            "spec": {"image": SANDBOX_IMAGE, "maxTimeoutSeconds": 10, "pendingTimeoutSeconds": 120},
        }
        Kube(E2E_KUBECONFIG).run("apply", "-f", "-", input=json.dumps(small), namespaced=False)
        yield ClusterHandle(kubeconfig=E2E_KUBECONFIG, local=False)
        return
    handle = start_local_cluster(tmp_path_factory.mktemp("localcluster"))
    try:
        yield handle
    finally:
        stop_process(handle.process)


@pytest.fixture(scope="session")
def operator(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess | None]:
    if not RUN_OPERATOR:
        yield None
        return
    op = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def kube(cluster: ClusterHandle, operator: OperatorProcess | None) -> Iterator[Kube]:
    """A fresh namespace per test, deleted afterwards."""
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    admin = Kube(cluster.kubeconfig)
    admin.run("create", "namespace", namespace, namespaced=False)
    yield Kube(cluster.kubeconfig, namespace=namespace)
    admin.run("delete", "namespace", namespace, "--wait=false", check=False, namespaced=False)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:6]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)



