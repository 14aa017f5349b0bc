"""The local cluster and the operator for the end-to-end suite, from the local cluster's testing helpers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.testing import OperatorProcess, free_port, start_cluster_process, stop_process
from tests.e2e.kube import ROOT

__all__ = ["ClusterHandle", "OperatorProcess", "free_port", "start_local_cluster", "stop_process"]

#: What a test cluster gets before the operator starts: the CRDs, then the test ExecutionClasses.
MANIFESTS = (ROOT / "crds", ROOT / "tests" / "e2e" / "classes.yaml")


@dataclass
class ClusterHandle:
    kubeconfig: str
    local: bool
    state_dir: Path | None = None
    process: subprocess.Popen[str] | None = None


def start_local_cluster(state: Path) -> ClusterHandle:
    """Start `python -m localcluster up`, install the CRDs and the test ExecutionClasses."""
    cluster = start_cluster_process(state, MANIFESTS, cwd=ROOT)
    return ClusterHandle(kubeconfig=cluster.kubeconfig, local=True, state_dir=state, process=cluster.process)
