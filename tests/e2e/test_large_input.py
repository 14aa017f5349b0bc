"""A large input (300 KB), applied the ways the docs give: refused by client-side `kubectl apply` as a real
API server refuses it, run when applied server-side or created.

Client-side apply copies the whole object into the `kubectl.kubernetes.io/last-applied-configuration`
annotation, and the API server limits all annotations together to 262144 bytes.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.kube import Kube, execution

INPUT_CHARS = 300_000
CODE = 'result = {"chars": len(input_data["blob"]), "tail": input_data["blob"][-3:]}'
REFUSAL = "metadata.annotations: Too long: may not be more than 262144 bytes"


def big(name: str) -> dict[str, Any]:
    return execution(name, CODE, input={"blob": "x" * (INPUT_CHARS - 3) + "end"})


def test_client_side_apply_of_a_large_input_is_refused_as_a_real_api_server_does(kube: Kube) -> None:
    proc = kube.run("apply", "-f", "-", input=json.dumps(big("big-csa")), check=False)
    assert proc.returncode != 0, proc.stderr
    assert REFUSAL in proc.stderr, proc.stderr
    assert kube.get("execution", "big-csa", check=False) is None, "nothing is created"


def test_a_large_input_runs_when_applied_server_side_or_created(kube: Kube) -> None:
    kube.run("apply", "--server-side", "-f", "-", input=json.dumps(big("big-ssa")))
    kube.run("create", "-f", "-", input=json.dumps(big("big-create")))
    for name in ("big-ssa", "big-create"):
        status = kube.wait_terminal(name, timeout=120)["status"]
        assert status["phase"] == "Succeeded", status.get("error")
        assert status["output"] == {"chars": INPUT_CHARS, "tail": "end"}
