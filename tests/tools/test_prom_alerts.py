"""The chart's alerting rules, checked and unit-tested by promtool (tests/tools/prometheus/alerts_test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from toolkit import ROOT, Render, by_kind, require_tool

pytestmark = pytest.mark.tools

TESTS = ROOT / "tests" / "tools" / "prometheus" / "alerts_test.yaml"


def render_rules(render: Render, values: list[str] | None = None) -> dict[str, Any]:
    """The PrometheusRule's spec (a plain Prometheus rules file) with the chart's default values."""
    (rule,) = by_kind(render(["prometheusRule.enabled=true", *(values or [])], monitoring=True), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


@pytest.fixture
def rules_dir(render: Render, tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(render_rules(render), sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return tmp_path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_promtool_check_rules(rules_dir: Path) -> None:
    proc = _promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


def test_promtool_unit_tests(rules_dir: Path) -> None:
    proc = _promtool("test", "rules", TESTS.name, cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_unit_test(render: Render) -> None:
    alerts = {r["alert"] for g in render_rules(render)["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        t["alertname"]
        for case in yaml.safe_load(TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts == tested


def test_unit_tests_fail_on_a_broken_threshold(render: Render, tmp_path: Path) -> None:
    """The unit tests are sharp: a rule rendered with a different threshold makes them fail."""
    spec = render_rules(render, ["prometheusRule.circuitOpenMinutes=30"])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    proc = _promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "SandboxCircuitBreakerOpen" in proc.stdout + proc.stderr


def test_runbook_sections_exist(render: Render) -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    anchors = {line.lstrip("#").strip().lower() for line in ops.splitlines() if line.startswith("### ")}
    for group in render_rules(render)["groups"]:
        for rule in group["rules"]:
            assert rule["alert"].lower() in anchors, f"docs/operations.md lacks a runbook for {rule['alert']}"
