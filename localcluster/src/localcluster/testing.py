"""Helpers for tests and benchmarks that use the local cluster.

A LocalCluster in a background thread with its own event loop (synchronous test code, subprocesses and
other event loops then talk to it over HTTP), and the cluster and the operator as child processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from localcluster.cluster import LocalCluster

T = TypeVar("T")


class ClusterThread:
    """The thread and loop a cluster runs in; `call` and `run` execute code on that loop."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="localcluster", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.cluster.start()
        except BaseException as e:  # noqa: BLE001 - handed to the thread waiting in start(), which raises it
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.cluster.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("local cluster did not start in time")
        if self._error is not None:
            raise RuntimeError("local cluster failed to start") from self._error

    def stop(self, timeout: float = 30.0) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the cluster's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Call a plain function on the cluster's loop (e.g. `apiserver.drop_watches`)."""

        async def _call() -> T:
            return fn(*args)

        return self.run(_call(), timeout)


@contextmanager
def run_cluster_in_thread(state_dir: Path | str, **kwargs: Any) -> Iterator[LocalCluster]:
    """Start a LocalCluster in a daemon thread; yields it once it serves (`cluster.runner` is the thread)."""
    cluster = LocalCluster(state_dir, **kwargs)
    runner = ClusterThread(cluster)
    cluster.runner = runner
    runner.start()
    try:
        yield cluster
    finally:
        runner.stop()


# ------------------------------------------------------------------------------ processes
# The end-to-end tests and the benchmarks run the cluster and the operator as child processes, so that
# they can be killed and restarted at any point.

T_co = TypeVar("T_co")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(probe: Callable[[], T_co | None], *, timeout: float, what: str, interval: float = 0.2) -> T_co:
    """Call `probe` until it returns something truthy; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@dataclass
class ClusterProcess:
    """`python -m localcluster up` as a child process, and the kubeconfig it wrote."""

    kubeconfig: str
    state_dir: Path
    process: subprocess.Popen[str]

    def stop(self) -> None:
        stop_process(self.process)


def start_cluster_process(state: Path, manifests: Sequence[Path] = (), cwd: Path | None = None) -> ClusterProcess:
    """Start the local cluster in `state`, wait until it serves, then `kubectl apply --server-side` the
    `manifests` (files or directories) in order, each once the CRDs before it are Established."""
    kubeconfig = state / "kubeconfig"
    log_path = state / "cluster.log"
    log: IO[str] = open(log_path, "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcluster", "up", "--state-dir", str(state), "--port", "0",
         "--kubeconfig", str(kubeconfig)],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"local cluster exited with {proc.returncode}: {log_path.read_text()}")
        return "localcluster ready" in log_path.read_text()

    try:
        wait_until(ready, timeout=60, what="the local cluster")
        _apply_in_order(kubeconfig, manifests)
    except BaseException:
        stop_process(proc)  # a cluster that failed to come up is not left running
        raise
    return ClusterProcess(kubeconfig=str(kubeconfig), state_dir=state, process=proc)


def _apply_in_order(kubeconfig: Path, manifests: Sequence[Path]) -> None:
    kubectl = kubectl_binary()
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    for manifest in manifests:
        applied = subprocess.run([kubectl, "apply", "--server-side", "-f", str(manifest)], env=env, check=False,
                                 capture_output=True, text=True, timeout=120)
        if applied.returncode != 0:
            raise AssertionError(f"kubectl apply -f {manifest} exited with {applied.returncode}: "
                                 f"{applied.stderr.strip() or applied.stdout.strip()}")
        # Before the next manifest, which may hold objects of these CRDs (none: kubectl says so, harmlessly).
        subprocess.run([kubectl, "wait", "crd", "--all", "--for=condition=Established", "--timeout=30s"],
                       env=env, check=False, capture_output=True, text=True, timeout=60)


def kubectl_binary() -> str:
    """The pinned kubectl of the repository (`.tools/bin`) when the working directory has one, else PATH's."""
    local = Path.cwd() / ".tools" / "bin" / "kubectl"
    return str(local) if local.exists() else (shutil.which("kubectl") or "kubectl")


@dataclass
class OperatorProcess:
    """The operator (`python -m MODULE`, by default `execution_operator`) as a child process against a
    cluster, with its metrics and liveness ports, so tests can kill and restart it at any point."""

    kubeconfig: str
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    module: str = "execution_operator"
    extra_args: list[str] = field(default_factory=list)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--metrics-port", str(self.metrics_port),
                "--liveness-port", str(self.liveness_port), "--bind-address", "127.0.0.1", "--log-format", "json",
                *self.extra_args]

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1")
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
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
