"""manifests/install is generated from the chart by hack/render-manifests.sh and must not drift from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from toolkit import ROOT

pytestmark = pytest.mark.tools

INSTALL = ROOT / "manifests" / "install"


def test_manifests_match_chart(helm: str, helm_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(helm_env, HELM=helm)
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "render-manifests.sh"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.name for p in tmp_path.glob("*.yaml"))
    committed = sorted(p.name for p in INSTALL.glob("*.yaml"))
    assert fresh == committed
    for name in fresh:
        assert (tmp_path / name).read_text() == (INSTALL / name).read_text(), (
            f"manifests/install/{name} is stale: run hack/render-manifests.sh"
        )


def test_install_order_and_namespace() -> None:
    crds = [d for d in yaml.safe_load_all((INSTALL / "00-crds.yaml").read_text()) if d]
    assert crds
    assert all(d["kind"] == "CustomResourceDefinition" for d in crds)
    (ns,) = [d for d in yaml.safe_load_all((INSTALL / "01-namespace.yaml").read_text()) if d]
    assert ns["kind"] == "Namespace"
    objs = [d for d in yaml.safe_load_all((INSTALL / "02-operator.yaml").read_text()) if d]
    for obj in objs:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ExecutionClass"):
            assert obj["metadata"]["namespace"] == ns["metadata"]["name"], obj["kind"]
