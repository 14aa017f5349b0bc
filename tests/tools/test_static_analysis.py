"""Security and style linters on the chart and the Dockerfile: checkov and hadolint."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from toolkit import CHART, ROOT, TOOLS_BIN, require_tool, template_args

pytestmark = pytest.mark.tools

CHECKOV_CONFIG = CHART / ".checkov.yaml"


def _checkov() -> str:
    return require_tool("checkov", ROOT / ".tools" / "checkov" / "bin" / "checkov")


def _run_checkov(args: list[str], helm_env: dict[str, str], helm: str) -> dict[str, Any]:
    env = dict(helm_env)
    env["PATH"] = f"{Path(helm).parent}:{TOOLS_BIN}:{env.get('PATH', '')}"
    proc = subprocess.run(
        [_checkov(), *args, "--config-file", str(CHECKOV_CONFIG), "--output", "json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # several frameworks -> one report each
        report = report[0]
    failed = report["results"]["failed_checks"]
    assert not failed, [(c["check_id"], c["resource"]) for c in failed]
    assert proc.returncode == 0, proc.stderr
    return report


def test_checkov_chart(helm: str, helm_env: dict[str, str]) -> None:
    report = _run_checkov(["-d", str(CHART), "--framework", "helm"], helm_env, helm)
    assert report["summary"]["passed"] > 50


def test_checkov_all_options_rendered(helm: str, helm_env: dict[str, str], tmp_path: Path) -> None:
    values = ["metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true",
              "peering.enabled=true", "replicaCount=2"]  # fmt: skip
    proc = subprocess.run(
        [helm, *template_args(values, monitoring=True)],
        capture_output=True, text=True, env=helm_env, timeout=120, check=True,
    )  # fmt: skip
    (tmp_path / "rendered.yaml").write_text(proc.stdout)
    report = _run_checkov(["-d", str(tmp_path), "--framework", "kubernetes"], helm_env, helm)
    assert report["summary"]["passed"] > 50


def test_checkov_skips_are_justified() -> None:
    text = CHECKOV_CONFIG.read_text()
    skipped = re.findall(r"^\s*-\s*(CKV\w+)\s*$", text, flags=re.M)
    assert skipped
    for check in skipped:
        # Each skipped check is introduced by a comment naming it.
        assert re.search(rf"#\s*{check}\b.+", text), f"{check} skipped without a justification"
    for tpl in (CHART / "templates").glob("*.yaml"):
        for m in re.finditer(r"checkov\.io/skip\d+:\s*(CKV\w+)=(.*)", tpl.read_text()):
            assert len(m.group(2).strip()) > 20, f"{tpl.name}: {m.group(1)} needs a reason"


def test_hadolint_dockerfile() -> None:
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_targets_and_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M)
    assert {"operator", "sandbox", "sandbox-data"} <= set(stages)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.M)
    assert base
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    finals = re.split(r"^FROM ", text, flags=re.M)[1:]
    for block in finals:
        name = block.split()[2] if len(block.split()) > 2 else ""
        if name in {"operator", "sandbox", "sandbox-data"}:
            assert "USER 65532:65532" in block, name
            assert "pip install" not in block, name
            assert "apt-get" not in block, name
    assert 'ENTRYPOINT ["python", "-m", "execution_operator.runner"]' in text


def test_kind_e2e_wiring() -> None:
    """The kind tier is documented and consistent even where it cannot run (no Docker here)."""
    script = ROOT / "hack" / "kind-e2e.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "REGISTRY=ghcr.io/execution-operator" in text
    assert "images=(operator sandbox sandbox-data)" in text
    assert 'docker build --target "$target"' in text
    assert "kind load docker-image" in text
    assert "helm upgrade --install" in text
    assert "E2E_KUBECONFIG" in text
    assert "bench/latency.py --kubeconfig" in text, "warm against cold is measured where a cold start is real"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e-kind.yaml").read_text())
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("hack/kind-e2e.sh" in run for run in steps)
