"""Helpers for the `tools` tier: locate external binaries (skip when absent) and render the chart."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "execution-operator"
TOOLS_BIN = ROOT / ".tools" / "bin"
RELEASE = "execution-operator"
NAMESPACE = "execution-operator"
MONITORING_API = "monitoring.coreos.com/v1"
INSTALL_HINT = "run hack/install-ci-deps.sh"


def find_tool(name: str, *extra: Path) -> str | None:
    """A binary from PATH, the project venv or .tools/, in that order."""
    found = shutil.which(name)
    if found:
        return found
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / name
    for candidate in (venv_bin, TOOLS_BIN / name, *extra):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str, *extra: Path) -> str:
    path = find_tool(name, *extra)
    if path is None:
        pytest.skip(f"{name} not installed ({INSTALL_HINT})")
    return path


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment keeping helm's cache/config/data out of the home directory."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env


@pytest.fixture(scope="session")
def helm() -> str:
    return require_tool("helm")


HelmRun = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def run_helm(helm: str, helm_env: dict[str, str]) -> HelmRun:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([helm, *args], capture_output=True, text=True, env=helm_env, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


def template_args(values: Sequence[str] = (), monitoring: bool = False, include_crds: bool = False) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if monitoring:
        args += ["--api-versions", MONITORING_API]
    if include_crds:
        args.append("--include-crds")
    for v in values:
        args += ["--set", v]
    return args


@pytest.fixture(scope="session")
def render(run_helm: HelmRun) -> Render:
    """Render the chart and return its objects (None documents dropped)."""

    def _render(
        values: Sequence[str] = (), monitoring: bool = False, include_crds: bool = False
    ) -> list[dict[str, Any]]:
        out = run_helm(*template_args(values, monitoring, include_crds)).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    return _render


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def operator_role(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ClusterRole that a ClusterRoleBinding grants to a ServiceAccount: the operator's own (the
    chart's other ClusterRoles are for users)."""
    (binding,) = [b for b in by_kind(objs, "ClusterRoleBinding")
                  if any(s.get("kind") == "ServiceAccount" for s in b.get("subjects") or [])]
    (role,) = [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"] == binding["roleRef"]["name"]]
    return role


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema for every CRD version in the chart's crds/."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group = doc["spec"]["group"]
            kind = doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out
