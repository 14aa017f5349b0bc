"""The layer contracts (.importlinter) hold for the tree and fail on a violation: `make lint` enforces them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def lint_imports(source_root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's contracts over the packages found first in `source_root`."""
    env = dict(os.environ, PYTHONPATH=f"{source_root}{os.pathsep}{ROOT / 'localcluster' / 'src'}")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=source_root, timeout=120, check=False)


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT / "operator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("runner/report.py", "import kopf", "The sandbox runner imports only the standard library"),
    ("runner/outcome.py", "from execution_operator.runner import supervisor", "Inside the runner"),
    ("client/apicalls.py", "from execution_operator.client import aio", "Inside the client"),
    ("classify.py", "from execution_operator import k8s", "The pure core"),
    ("deadletters.py", "from execution_operator import controller", "The controller is imported by the handlers"),
    ("launch.py", "from execution_operator import controller", "The controller is imported by the handlers"),
    ("pools.py", "from execution_operator import attempt_outcomes", "The controller's steps"),
    ("attempt_plan.py", "from execution_operator import reconcile_state", "The pure core"),
    ("sandbox.py", "import localcluster", "The operator never imports the local cluster"),
])
def test_a_violation_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(ROOT / "operator" / "execution_operator", tmp_path / "execution_operator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "execution_operator" / module
    target.write_text(target.read_text() + f"\n{line}  # a deliberate violation\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout
