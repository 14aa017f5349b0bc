"""Test-side access to a cluster: the real kubectl, and waits on conditions with deadlines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def kubectl_binary() -> str | None:
    local = ROOT / ".tools" / "bin" / "kubectl"
    if local.exists():
        return str(local)
    return shutil.which("kubectl")


class WaitTimeout(AssertionError):
    pass


def wait_until(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `probe` until it returns something truthy, failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Kube:
    """kubectl bound to one kubeconfig (and a default namespace)."""

    kubeconfig: str
    namespace: str = "default"
    binary: str = field(default_factory=lambda: kubectl_binary() or "kubectl")

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120,
            namespaced: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, *args]
        if namespaced and not any(a in ("-n", "--namespace", "-A", "--all-namespaces") for a in args):
            cmd += ["-n", self.namespace]
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def apply(self, manifest: dict[str, Any] | str, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.run("apply", "-f", "-", input=text, check=check)

    def create(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("create", "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, kind: str, name: str | None = None, *, check: bool = True) -> dict[str, Any] | None:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        proc = self.run(*args, check=check)
        if proc.returncode != 0:
            return None
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def items(self, kind: str, *selector: str) -> list[dict[str, Any]]:
        proc = self.run("get", kind, *selector, "-o", "json")
        items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
        return items

    def wait(self, kind_name: str, condition: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.run("wait", kind_name, f"--for={condition}", f"--timeout={int(timeout)}s",
                        timeout=timeout + 30)

    def wait_terminal(self, name: str, timeout: float = 90) -> dict[str, Any]:
        """Wait until the Execution's Succeeded condition is no longer Unknown; return the Execution."""

        def done() -> dict[str, Any] | None:
            body = self.get("execution", name, check=False)
            if not body:
                return None
            phase = (body.get("status") or {}).get("phase")
            return body if phase in ("Succeeded", "Failed", "Cancelled") else None

        return wait_until(done, timeout=timeout, what=f"execution {name} to finish")


def execution(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": {"code": code, **spec},
    }


def condition(body: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None
