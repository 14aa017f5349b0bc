"""The API's names have one home (`execution_operator.api`): the code spells none of them out, and the CRDs
(source and chart copy) declare exactly those names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from execution_operator import api

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "execution_operator"
CRD_DIRS = (ROOT / "crds", ROOT / "charts" / "execution-operator" / "crds")

#: Strings that are names of the API wherever they appear whole.
WHOLE_NAMES = {
    api.API_VERSION, api.GROUP, api.EXECUTIONS, api.EXECUTION_CLASSES, api.DEAD_LETTERS, api.LABEL_MANAGED_BY,
    *api.Kind,
    api.ConditionReason.LAUNCHED, api.ConditionReason.CIRCUIT_OPEN, api.ConditionReason.CIRCUIT_HALF_OPEN,
    api.ConditionReason.CIRCUIT_CLOSED, api.ConditionReason.QUEUED, api.EventReason.DEAD_LETTERED,
    api.EventReason.REPLAYED, api.EventReason.REPLAY_REFUSED,
}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def literals_naming_the_api(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text in WHOLE_NAMES or f"{api.GROUP}/" in text or text.startswith(f"{api.GROUP}"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    return found


def test_the_code_takes_every_api_name_from_the_api_module() -> None:
    sources = [p for p in PACKAGE.rglob("*.py") if p.name != "api.py"]
    assert len(sources) > 20
    found = [hit for p in sources for hit in literals_naming_the_api(p)]
    assert not found, "use execution_operator.api instead of:\n" + "\n".join(found)


def test_the_scan_catches_a_spelled_out_name(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docstrings may say sandbox.dev/execution."""\nLABEL = "sandbox.dev/execution"\n'
                      'KIND = "DeadLetter"\nOTHER = f"{x} Execution"\n')
    (tmp_path / "x").mkdir()
    hits = [h.split(": ", 1)[1] for h in literals_naming_the_api(sample.rename(ROOT / ".api-names-probe.py"))]
    (ROOT / ".api-names-probe.py").unlink()
    assert hits == ["'sandbox.dev/execution'", "'DeadLetter'"]


@pytest.mark.parametrize("crd_dir", CRD_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_crds_declare_the_api_names(crd_dir: Path) -> None:
    declared = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        assert spec["group"] == api.GROUP
        assert [v["name"] for v in spec["versions"]] == [api.VERSION]
        names = spec["names"]
        assert crd["metadata"]["name"] == f"{names['plural']}.{api.GROUP}"
        assert api.CATEGORY in names.get("categories", [])
        declared[names["kind"]] = (names["plural"], names.get("shortNames"))
    for kind in api.Kind:
        assert declared.get(kind) == (api.RESOURCES[kind], [api.SHORT_NAMES[kind]]), kind
