"""Processes for the end-to-end suite and the benchmarks: the local cluster and the operator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.e2e.kube import ROOT, Kube, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ClusterHandle:
    kubeconfig: str
    local: bool
    state_dir: Path | None = None
    process: subprocess.Popen[str] | None = None


@dataclass
class OperatorProcess:
    """The operator as a child process, so tests can kill and restart it at any point."""

    kubeconfig: str
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1")
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "execution_operator", "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port), "--bind-address", "127.0.0.1", "--log-format", "json"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        wait_until(self._ready, timeout=60, what="the operator's liveness endpoint")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}; log: {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything, as in a node crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text



def start_local_cluster(state: Path) -> ClusterHandle:
    """Start `python -m localcluster up`, install the CRDs and the test ExecutionClasses."""
    kubeconfig = state / "kubeconfig"
    log: IO[str] = open(state / "cluster.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcluster", "up", "--state-dir", str(state), "--port", "0",
         "--kubeconfig", str(kubeconfig)],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"local cluster exited with {proc.returncode}: {(state / 'cluster.log').read_text()}")
        return "localcluster ready" in (state / "cluster.log").read_text()

    wait_until(ready, timeout=60, what="the local cluster")
    kube = Kube(str(kubeconfig))
    kube.run("apply", "--server-side", "-f", str(ROOT / "crds"), namespaced=False)
    for crd in ("executions", "executionclasses", "deadletters"):
        kube.run("wait", f"crd/{crd}.sandbox.dev", "--for=condition=Established", "--timeout=30s", namespaced=False)
    kube.run("apply", "-f", str(ROOT / "tests" / "e2e" / "classes.yaml"), namespaced=False)
    return ClusterHandle(kubeconfig=str(kubeconfig), local=True, state_dir=state, process=proc)


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
