"""`make up` and `make demo` (hack/demo.sh) as the README documents them.

`make up`: the chart installed by the real `helm install` into the local cluster, the operator run with
the arguments of the Deployment that helm created, Executions run through it. Chart values are set with
HELM_ARGS, and the test shows each one reached the running operator: the Deployment's `--namespace`
argument (it serves team-a) and the chart's ExecutionClass (its maxTimeoutSeconds refuses a longer
timeout). `make demo`: the README's tour, run literally with the two export lines the demo printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from toolkit import NAMESPACE, RELEASE, ROOT, TOOLS_BIN, find_tool

from localcluster.chart_operator import operator_command

pytestmark = pytest.mark.tools

DEMO = ROOT / "hack" / "demo.sh"
TEAM = "team-a"


def _start(tmp_path: Path, command: str, helm_args: str = "") -> Iterator[tuple[dict[str, str], str]]:
    """Run `hack/demo.sh COMMAND` with its state under tmp_path; yield kubectl's environment and its output."""
    for tool in ("helm", "kubectl"):
        if not (TOOLS_BIN / tool).exists():
            pytest.skip(f"{tool} not in .tools/bin (make tools)")
    if find_tool("bwrap") is None:
        pytest.skip("bubblewrap not installed (hack/install-ci-deps.sh --local-cluster)")
    state = tmp_path / "state"
    env = dict(os.environ, LOCALCLUSTER_STATE=str(state), PY=sys.executable,
               HELM_ARGS=helm_args)
    try:
        proc = subprocess.run(["bash", str(DEMO), command], env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, f"hack/demo.sh {command}:\n{proc.stdout}\n{proc.stderr}"
        assert f"export KUBECONFIG={state}/kubeconfig" in proc.stdout
        yield dict(os.environ, KUBECONFIG=str(state / "kubeconfig"), STATE=str(state)), proc.stdout
    finally:
        down = subprocess.run(["bash", str(DEMO), "down"], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert down.returncode == 0, down.stderr


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict[str, str]]:
    values = f"--set watchNamespaces={{{TEAM}}} --set executionClasses.default.spec.maxTimeoutSeconds=42"
    for env, _ in _start(tmp_path, "up", values):
        yield env


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    for _, output in _start(tmp_path, "demo"):
        yield output


def _run(env: dict[str, str], tool: str, *args: str, input: str | None = None) -> str:
    proc = subprocess.run([str(TOOLS_BIN / tool), *args], input=input, capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{tool} {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _execution(name: str, timeout: int) -> dict[str, Any]:
    return {"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution", "metadata": {"name": name, "namespace": TEAM},
            "spec": {"code": 'result = {"sum": sum(input_data["numbers"])}', "input": {"numbers": [1, 2, 3]},
                     "timeoutSeconds": timeout}}


def test_make_up_installs_the_chart_and_its_operator_runs_executions(up: dict[str, str]) -> None:
    def k(*args: str, input: str | None = None) -> str:
        return _run(up, "kubectl", *args, input=input)

    helm_env = dict(up, HELM_CACHE_HOME=f"{up['STATE']}/helm/cache", HELM_CONFIG_HOME=f"{up['STATE']}/helm/config",
                    HELM_DATA_HOME=f"{up['STATE']}/helm/data")
    release = json.loads(_run(helm_env, "helm", "status", RELEASE, "-n", NAMESPACE, "-o", "json"))
    assert release["info"]["status"] == "deployed"

    # The classes are the chart's, owned by the release (so a `helm upgrade` manages them).
    default = json.loads(k("get", "executionclass", "default", "-o", "json"))
    assert default["spec"]["maxTimeoutSeconds"] == 42
    assert default["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert default["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    # The running operator's command line is the Deployment's container arguments (ports aside).
    deployment = json.loads(k("get", "deployment", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator",
                              "-o", "json"))["items"][0]
    pid = int(Path(up["STATE"], "operator.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    expected, _ = operator_command(deployment, metrics_port=1, liveness_port=1)
    ported = ("--metrics-port=", "--liveness-port=")
    assert argv[1:3] == ["-m", "execution_operator"], argv
    assert [a for a in argv[3:] if not a.startswith(ported)] == [a for a in expected if not a.startswith(ported)], (
        argv, expected)
    assert f"--namespace={TEAM}" in argv

    k("create", "namespace", TEAM)
    k("apply", "-f", "-", input="\n---\n".join(json.dumps(_execution(*x)) for x in (("sum", 30), ("too-long", 60))))
    k("wait", "-n", TEAM, "--for=condition=Succeeded", "--timeout=120s", "execution/sum")
    k("wait", "-n", TEAM, "--for=condition=Succeeded=False", "--timeout=120s", "execution/too-long")
    status = json.loads(k("get", "-n", TEAM, "execution", "sum", "-o", "json"))["status"]
    assert status["output"] == {"sum": 6}, status
    error = json.loads(k("get", "-n", TEAM, "execution", "too-long", "-o", "jsonpath={.status.error}"))
    assert error["type"] == "validation_error", error
    assert "42" in error["message"], error


def _readme_tour() -> list[tuple[str, str]]:
    """The tour's code blocks, (language, text), from its heading to the first example of output."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## A tour with kubectl", 1)[1].split("What `kubectl describe", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", section, flags=re.S)


def test_the_readme_tour_runs_literally_after_make_demo(demo: str, tmp_path: Path) -> None:
    exports = [line.strip() for line in demo.splitlines() if line.strip().startswith("export ")]
    assert [e.split("=", 1)[0] for e in exports] == ["export KUBECONFIG", "export PATH"]
    blocks = _readme_tour()
    assert [lang for lang, _ in blocks].count("sh") >= 1
    assert any("kubectl logs" in b for _, b in blocks)
    lines = ["set -euo pipefail", *exports]
    for n, (lang, block) in enumerate(blocks):
        if lang == "python":
            (tmp_path / f"tour{n}.py").write_text(block)
            lines.append(f"python {tmp_path}/tour{n}.py")
        else:
            lines += [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    script = tmp_path / "tour.sh"
    script.write_text("\n".join(lines) + "\n")
    # A shell like the reader's: a PATH without the project's tools or venv, no KUBECONFIG.
    env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert '{"answer":42,"greeting":"hello"}' in proc.stdout
    assert "hello from the sandbox" in proc.stdout  # kubectl logs
    assert "deadletter.sandbox.dev/zero-division-dl-" in proc.stdout  # the replay annotation
