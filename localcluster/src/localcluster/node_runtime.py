"""The container runtime half of the local node: runs one pod's containers as sandboxed local processes.

`PodWorker` takes a pod object and drives it like a kubelet would: image "pull" through the
`ImageTable`, volumes and env through `Lookups`, containers under bubblewrap, status transitions
reported as complete `PodStatus` dicts to a callback. It knows nothing about HTTP, which is the
`LocalNode`'s business.

Isolation per container: a read-only root built fresh (so volumes can be mounted at paths the host
lacks) that shows the host's system directories and Python installations, not the rest of the host
(see `_root_binds`), private /dev, /proc, /tmp, PID, IPC
and UTS namespaces, a new session, `--die-with-parent`, a user namespace when the container runs as a
non-root uid, and no network when a NetworkPolicy denies all egress. The command runs as PID 1 of its
PID namespace, so, as in a real container, it ignores SIGTERM unless it installs a handler, and its
exit takes every other process of the container with it.

Resource limits: `limits.memory` is enforced by polling the process tree's RSS every 50 ms (no cgroups
here; a fast allocator can overshoot by what it allocates in one interval), with RLIMIT_DATA at four
times the limit (at least limit + 1 GiB) per process as a backstop; CPU limits are ignored. emptyDir
`sizeLimit` is enforced as the kubelet's eviction manager does it: usage is measured periodically and a
pod over the limit is evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .node_attach import StdinRelay
from .node_config import (
    ContainerConfigError,
    Lookups,
    container_env,
    container_mounts,
    egress_denied,
    expand,
    materialize_volumes,
)
from .node_images import ImageSpec, ImageTable, InvalidImageName, parse_image, runner_source_root
from .node_sched import parse_quantity

StatusSink = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)

TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_BYTES = 2048
FALLBACK_LOG_LINES = 80
LOG_LINE_MAX = 16 * 1024
PUMP_DRAIN_SECONDS = 5.0
DATA_LIMIT_SLACK = 1 << 30
#: Niceness of container processes (0 disables): the control plane on the same machine goes first.
CONTAINER_NICENESS = int(os.environ.get("LOCALCLUSTER_CONTAINER_NICENESS", "10"))
SANDBOX_RUNTIME_DIR = "/.localcluster/runtime"
SANDBOX_SOURCE_DIR = "/.localcluster/src"
CONTAINER_STATUS_UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def now_rfc3339() -> str:
    """Second-precision UTC timestamp, as metav1.Time serialises."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339_nano() -> str:
    """Nanosecond UTC timestamp for log lines (the CRI log format)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


# --- process tree monitoring ------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, rss bytes) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[21]) * _PAGE_SIZE


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, rss bytes) for every process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _read_stat(int(entry))
            if info is not None:
                table[int(entry)] = info
    return table


def descendants(root: int, table: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """(pid, depth) for every descendant of `root` (depth 1 = child), breadth first."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: list[tuple[int, int]] = []
    frontier = [(root, 0)]
    while frontier:
        pid, depth = frontier.pop()
        for child in children.get(pid, []):
            out.append((child, depth + 1))
            frontier.append((child, depth + 1))
    return out


@dataclass
class _Watch:
    root: int
    limit: int
    on_exceed: Callable[[int], None]
    fired: bool = False


class MemoryMonitor:
    """Polls /proc and calls back when a watched tree's RSS passes its limit; one loop for all pods.

    Only the processes below the bubblewrap process (depth >= 1 under the watched root) count. To keep
    the cost low with many pods, a pid seen outside every tree is not re-read until it disappears: a
    process joins a tree only by being forked there, which gives it a new pid. A new watch forgets the
    "outside" pids at or above its root's pid (its descendants were forked after it, so they have higher
    pids unless pids wrapped around), and the whole set is forgotten every few seconds in any case. The
    polling interval stretches when a round gets expensive, so the monitor stays under ~20% of a core.
    """

    def __init__(self, interval: float = 0.05, refresh_seconds: float = 2.0) -> None:
        self.interval = interval
        self.refresh_seconds = refresh_seconds
        self._watches: dict[int, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._outside: set[int] = set()
        self._refreshed = time.monotonic()

    def watch(self, root: int, limit_bytes: int, on_exceed: Callable[[int], None]) -> None:
        """Start watching the tree under `root`; `on_exceed(rss)` is called once when over `limit_bytes`."""
        self._watches[root] = _Watch(root, limit_bytes, on_exceed)
        self._outside = {pid for pid in self._outside if pid < root}
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="memory-monitor")

    def unwatch(self, root: int) -> None:
        """Stop watching a tree."""
        self._watches.pop(root, None)

    async def stop(self) -> None:
        """Stop the polling loop."""
        self._watches.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while self._watches:
            started = time.perf_counter()
            self.check()
            await asyncio.sleep(max(self.interval, 4 * (time.perf_counter() - started)))

    def check(self) -> None:
        """One polling round (public so tests can drive it)."""
        if time.monotonic() - self._refreshed > self.refresh_seconds:
            self._outside.clear()
            self._refreshed = time.monotonic()
        pids = {int(e) for e in os.listdir("/proc") if e.isdigit()}
        self._outside &= pids
        table: dict[int, tuple[int, int]] = {}
        children: dict[int, list[int]] = {}
        for pid in pids - self._outside:
            info = _read_stat(pid)
            if info is not None:
                table[pid] = info
                children.setdefault(info[0], []).append(pid)
        members: set[int] = set(self._watches)
        for watch in list(self._watches.values()):
            total = 0
            frontier = list(children.get(watch.root, ()))
            while frontier:
                pid = frontier.pop()
                members.add(pid)
                total += table[pid][1]
                frontier.extend(children.get(pid, ()))
            if total > watch.limit and not watch.fired:
                watch.fired = True
                watch.on_exceed(total)
        self._outside |= table.keys() - members


# --- one container ----------------------------------------------------------------------------------


@dataclass
class ContainerState:
    """What the kubelet knows about one container; rendered into a ContainerStatus."""

    name: str
    image: str
    init: bool
    state: dict[str, Any] = field(default_factory=dict)
    image_id: str = ""
    container_id: str = ""
    started: bool = False
    ready: bool = False

    def render(self) -> dict[str, Any]:
        """The v1.ContainerStatus for this container."""
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "restartCount": 0,
            "started": self.started,
            "state": self.state,
            "lastState": {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")

    @property
    def running(self) -> bool:
        return "running" in self.state


class ContainerProcess:
    """A started container: the outer `bwrap` process, its log pumps and its kill switches."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        log_path: Path,
        termination_path: Path,
        fallback_to_logs: bool,
    ) -> None:
        self.proc = proc
        self.log_path = log_path
        self.termination_path = termination_path
        self.fallback_to_logs = fallback_to_logs
        self.oom_killed = False
        self._tail: deque[str] = deque(maxlen=FALLBACK_LOG_LINES)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in wait()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]
        self._kill_timer: asyncio.TimerHandle | None = None
        self.stdin_relay: StdinRelay | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Copy a stream into the CRI-style JSON log, line by line as it arrives."""
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            out = [line + b"\n" for line in lines]
            while len(pending) >= LOG_LINE_MAX:
                out.append(pending[:LOG_LINE_MAX])
                pending = pending[LOG_LINE_MAX:]
            self._write(name, out)
        if pending:
            self._write(name, [pending])

    def _write(self, stream: str, lines: list[bytes]) -> None:
        if not lines:
            return
        stamp = now_rfc3339_nano()
        for raw in lines:
            text = raw.decode("utf-8", errors="replace")
            self._tail.append(text)
            self._log.write(json.dumps({"time": stamp, "stream": stream, "log": text}) + "\n")
        self._log.flush()

    def main_pids(self) -> list[int]:
        """Host pids of the container's command (PID 1 of its namespace, the child of bubblewrap)."""
        table = process_table()
        return [pid for pid, depth in descendants(self.pid, table) if depth == 1]

    def signal_main(self, sig: int) -> None:
        """Deliver a signal to the container's command, as a runtime signals the container's PID 1."""
        targets = self.main_pids()
        if not targets:
            # Not started yet or already gone: signalling bwrap takes the whole sandbox down.
            targets = [self.pid]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL the container's processes, then bubblewrap.

        Killing the namespace's PID 1 takes the whole PID namespace down. It goes first, because a
        bubblewrap killed while its child is still being set up may leave that child orphaned (and
        holding the log pipes) before `--die-with-parent` is armed.
        """
        if self.proc.returncode is None:
            for pid, _depth in descendants(self.pid, process_table()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def stop(self, grace: float) -> None:
        """SIGTERM now, SIGKILL after `grace` seconds (a shorter later call wins)."""
        if self.proc.returncode is not None:
            return
        if grace <= 0:
            self.kill()
            return
        self.signal_main(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace
        if self._kill_timer is not None:
            if self._kill_timer.when() <= deadline:
                return
            self._kill_timer.cancel()
        self._kill_timer = asyncio.get_running_loop().call_at(deadline, self.kill)

    async def wait(self) -> tuple[int, str]:
        """Wait for exit; returns (exit code as a runtime reports it, termination message)."""
        rc = await self.proc.wait()
        if self.stdin_relay is not None:
            self.stdin_relay.close()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        # The pipes close when the last process holding them exits; never wait for a stray one forever.
        _, pending = await asyncio.wait(self._pumps, timeout=PUMP_DRAIN_SECONDS)
        for pump in pending:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._log.close()
        code = 128 - rc if rc < 0 else rc
        message = _read_termination_message(self.termination_path)
        if not message and self.fallback_to_logs and code != 0:
            tail = "".join(self._tail)[-FALLBACK_LOG_BYTES:]
            message = tail
        return code, message


def disk_usage(root: Path, stop_above: int | None = None) -> int:
    """Bytes of disk used under `root` (allocated blocks, like du); stops counting once past `stop_above`."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            try:
                total += os.lstat(os.path.join(dirpath, entry)).st_blocks * 512
            except OSError:
                continue
            if stop_above is not None and total > stop_above:
                return total
    return total


def _read_termination_message(path: Path) -> str:
    """The first 4096 bytes of the termination-message file, as the kubelet reads it."""
    try:
        with open(path, "rb") as fh:
            return fh.read(TERMINATION_MESSAGE_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- one pod ----------------------------------------------------------------------------------------


@dataclass
class RuntimeConfig:
    """Node-wide settings the runtime needs."""

    state_dir: Path
    node_name: str = "local-node"
    host_ip: str = "127.0.0.1"
    pull_error_seconds: float = 1.0
    pull_backoff_initial: float = 2.0
    pull_backoff_max: float = 20.0
    config_retry_seconds: float = 2.0
    storage_check_seconds: float = 1.0
    bwrap: str = "bwrap"
    runtime_dir: Path | None = None  # prepared python runtime (bin/python etc.)


class _Stop(Exception):
    """Raised inside the start-up sequence when the pod is being terminated."""


def _security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    merged = dict((pod.get("spec") or {}).get("securityContext") or {})
    merged.update({k: v for k, v in (container.get("securityContext") or {}).items() if v is not None})
    return merged


SHM_BYTES = 64 * 1024 * 1024  # a container runtime's default /dev/shm size
DEFAULT_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)


def _capabilities(sc: dict[str, Any]) -> list[str]:
    """The capabilities a root container keeps: the runtime default set, minus drop, plus add."""
    caps = sc.get("capabilities") or {}
    drop = {str(c).upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    add = {str(c).upper().removeprefix("CAP_") for c in caps.get("add") or []}
    if sc.get("privileged"):
        return ["ALL"]
    keep = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - drop
    keep |= add
    if "ALL" in keep:
        return ["ALL"]
    return [f"CAP_{c}" for c in sorted(keep)]


#: Top-level host entries every container sees: the operating system (merged-/usr links included).
_SYSTEM_ENTRIES = frozenset({"usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32"})


def _installation(executable: str) -> str:
    """The installation directory of an interpreter (`<prefix>/bin/python` -> `<prefix>`), resolved."""
    return os.path.dirname(os.path.dirname(os.path.realpath(executable)))


def python_installations(runtime_dir: Path | None) -> list[str]:
    """The exact directories a container needs beyond the system ones: the interpreters' installations
    (the sandbox images', this environment's and its virtualenv) and the project's source.

    Never their parents: an interpreter installed under a home directory (pyenv, a venv in a
    checkout) must not bring the rest of that home (`.kube`, `.ssh`, other checkouts) into the sandbox.
    """
    candidates = [sys.prefix, sys.base_prefix, _installation(sys.executable), str(runner_source_root())]
    if runtime_dir is not None:
        candidates.append(_installation(str(runtime_dir / "bin" / "python")))
    found: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates}):
        parts = Path(path).parts
        if len(parts) < 2 or parts[1] in _SYSTEM_ENTRIES or not os.path.isdir(path):
            continue  # inside a system directory, which is bound whole anyway
        if any(path == kept or path.startswith(kept + os.sep) for kept in found):
            continue
        found.append(path)
    return found


@functools.cache
def _root_binds(runtime_dir: Path | None) -> tuple[str, ...]:
    """bwrap arguments for a container's read-only root: the host's OS and its Python installations.

    Like an image's root file system, a container sees the system directories, the installations of
    the interpreters it may run and the project's source (`python_installations`); not the rest of the
    host (home directories, /var, /run, /sys, mounts). Symlinks stay symlinks. Each bind costs bwrap
    time on every container start, so there are few.
    """
    args: list[str] = []
    for entry in sorted(set(os.listdir("/")) & _SYSTEM_ENTRIES):
        path = f"/{entry}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    for path in python_installations(runtime_dir):
        args += ["--ro-bind", path, path]
    return tuple(args)


def _qos_class(pod: dict[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        if limits or requests:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in limits or requests.get(r, limits[r]) != limits[r]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


class PodWorker:
    """Runs one pod to completion like a kubelet, reporting each status transition to `sink`.

    `sink` receives the complete desired `status` (a v1.PodStatus dict) each time it changes; it must
    not block. `run()` returns when the pod is terminal. `terminate()` stops it gracefully (deletion,
    deadline, eviction); `kill_silently()` drops it without reporting (the pod vanished).
    """

    def __init__(
        self,
        pod: dict[str, Any],
        *,
        config: RuntimeConfig,
        images: ImageTable,
        lookups: Lookups,
        monitor: MemoryMonitor,
        sink: StatusSink,
    ) -> None:
        self.pod = pod
        self.config = config
        self.images = images
        self.lookups = lookups
        self.monitor = monitor
        self.sink = sink
        meta = pod["metadata"]
        self.namespace: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.uid: str = meta.get("uid", "")
        self.pod_dir = config.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        spec = pod.get("spec") or {}
        self.init_states = [
            ContainerState(c["name"], c.get("image", ""), True) for c in spec.get("initContainers") or []
        ]
        self.states = [ContainerState(c["name"], c.get("image", ""), False) for c in spec.get("containers") or []]
        for cs in self.init_states:
            cs.state = {"waiting": {"reason": "PodInitializing"}}
        for cs in self.states:
            cs.state = {"waiting": {"reason": "PodInitializing" if self.init_states else "ContainerCreating"}}
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        self.processes: dict[str, ContainerProcess] = {}
        self.phase: str = "Pending"
        self.pod_reason: str | None = None
        self.pod_message: str | None = None
        self.disruption: dict[str, Any] | None = None
        self.force_failed = False
        self.sandbox_ready = False
        self._terminating = asyncio.Event()
        self._grace = 30.0
        self._silent = False
        self._done = asyncio.Event()
        self._transitions: dict[str, tuple[str, str]] = {}
        self._last_status: dict[str, Any] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._storage_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- public API ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def status(self) -> dict[str, Any]:
        """The latest status this worker derived."""
        return self._build_status()

    async def run(self) -> dict[str, Any]:
        """Drive the pod until it is terminal; returns the final status."""
        self._arm_deadline()
        try:
            self.pod_dir.mkdir(parents=True, exist_ok=True)
            self.sandbox_ready = True
            self._emit()
            volumes = await self._prepare_volumes()
            self._watch_storage(volumes)
            if await self._run_init_containers(volumes):
                await self._run_main_containers(volumes)
        except _Stop:
            pass
        except Exception as exc:
            # The runtime itself failed (e.g. bubblewrap could not be started): end the pod the way
            # containerd reports a container that could not start, instead of leaving it hanging.
            log.exception("pod %s/%s: container start failed", self.namespace, self.name)
            self._start_error(f"failed to start container: {type(exc).__name__}: {exc}")
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            if self._storage_task is not None:
                self._storage_task.cancel()
            for proc in self.processes.values():
                if proc.proc.returncode is None:
                    proc.kill()
                self.monitor.unwatch(proc.pid)
            self._finish()
            self._done.set()
        return self._build_status()

    def _start_error(self, message: str) -> None:
        now = now_rfc3339()
        for cs in [*self.init_states, *self.states]:
            if cs.terminated is None and not cs.running:
                cs.state = {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": message,
                        "startedAt": "1970-01-01T00:00:00Z",
                        "finishedAt": now,
                    }
                }
        self.force_failed = True

    async def terminate(
        self,
        grace: float,
        *,
        reason: str | None = None,
        message: str | None = None,
        disruption: dict[str, Any] | None = None,
        failed: bool = False,
    ) -> None:
        """Stop the pod (SIGTERM, `grace` seconds, SIGKILL) and wait until `run()` has finished."""
        if reason and not self.done:
            self.pod_reason, self.pod_message = reason, message
        if disruption and not self.done:
            self.disruption = disruption
            self._emit()
        if failed:
            self.force_failed = True
        self._grace = min(self._grace, grace) if self._terminating.is_set() else grace
        self._terminating.set()
        for proc in self.processes.values():
            proc.stop(self._grace)
        await self._done.wait()

    def kill_silently(self) -> None:
        """Kill every process and stop reporting (the pod object is gone)."""
        self._silent = True
        self._terminating.set()
        for proc in self.processes.values():
            proc.kill()

    async def wait(self) -> None:
        """Wait until the pod is terminal."""
        await self._done.wait()

    # -- lifecycle ----------------------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        """Take a newer version of the pod object (only `activeDeadlineSeconds` may change what we do)."""
        old = (self.pod.get("spec") or {}).get("activeDeadlineSeconds")
        self.pod = pod
        if (pod.get("spec") or {}).get("activeDeadlineSeconds") != old and not self.done:
            self._arm_deadline()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _arm_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        seconds = (self.pod.get("spec") or {}).get("activeDeadlineSeconds")
        if not seconds:
            return
        try:
            started = datetime.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            started = time.time()
        delay = max(0.0, started + float(seconds) - time.time())
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_later(delay, lambda: self._spawn(self._deadline_exceeded()))

    def _watch_storage(self, volumes: dict[str, Path]) -> None:
        limited: list[tuple[str, Path, str, int]] = []
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            limit = (volume.get("emptyDir") or {}).get("sizeLimit")
            if "emptyDir" in volume and limit and volume.get("name") in volumes:
                limited.append((volume["name"], volumes[volume["name"]], str(limit), int(parse_quantity(limit))))
        if limited:
            self._storage_task = asyncio.get_running_loop().create_task(self._storage_loop(limited))

    async def _storage_loop(self, limited: list[tuple[str, Path, str, int]]) -> None:
        """Evict the pod when an emptyDir grows past its sizeLimit (the kubelet's local-storage eviction)."""
        while not self.done:
            await asyncio.sleep(self.config.storage_check_seconds)
            for name, path, limit_text, limit in limited:
                used = await asyncio.to_thread(disk_usage, path, limit)
                if used > limit:
                    message = f'Usage of EmptyDir volume "{name}" exceeds the limit "{limit_text}". '
                    self._spawn(
                        self.terminate(
                            0,
                            reason="Evicted",
                            message=message,
                            disruption={"reason": "TerminationByKubelet", "message": message},
                            failed=True,
                        )
                    )
                    return

    async def _deadline_exceeded(self) -> None:
        if self.done:
            return
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        await self.terminate(grace, reason="DeadlineExceeded", message=DEADLINE_MESSAGE, failed=True)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._terminating.wait(), timeout=seconds)
        if self._terminating.is_set():
            raise _Stop

    def _check_stop(self) -> None:
        if self._terminating.is_set():
            raise _Stop

    async def _prepare_volumes(self) -> dict[str, Path]:
        while True:
            self._check_stop()
            try:
                return await materialize_volumes(self.pod, self.pod_dir, self.lookups, self.config.host_ip)
            except ContainerConfigError as exc:
                for cs in [*self.init_states, *self.states]:
                    self._set_waiting(cs, "CreateContainerConfigError", str(exc))
                self._emit()
                await self._sleep_or_stop(self.config.config_retry_seconds)

    async def _pull(self, cs: ContainerState) -> tuple[ImageSpec, bool]:
        """Resolve the image like a pull: invalid names wait forever, unknown ones back off and retry."""
        backoff = self.config.pull_backoff_initial
        while True:
            self._check_stop()
            try:
                ref = parse_image(cs.image)
            except InvalidImageName as exc:
                self._set_waiting(cs, "InvalidImageName", str(exc))
                self._emit()
                await self._sleep_or_stop(3600.0)
                continue
            found = self.images.resolve(ref)
            if found is not None:
                digest = hashlib.sha256(ref.normalized.encode()).hexdigest()
                cs.image_id = f"{ref.repository}@sha256:{digest}"
                return found
            self._set_waiting(
                cs,
                "ErrImagePull",
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref.normalized}": '
                f'failed to resolve reference "{ref.normalized}": {ref.normalized}: not found',
            )
            self._emit()
            await self._sleep_or_stop(self.config.pull_error_seconds)
            self._set_waiting(cs, "ImagePullBackOff", f'Back-off pulling image "{cs.image}"')
            self._emit()
            await self._sleep_or_stop(backoff)
            backoff = min(backoff * 2, self.config.pull_backoff_max)

    async def _prepare(
        self, spec: dict[str, Any], cs: ContainerState, volumes: dict[str, Path]
    ) -> tuple[list[str], dict[str, str]]:
        """Pull, build env and mounts; returns (bwrap argv, env). Config errors are retried like a kubelet."""
        image, uses_python = await self._pull(cs)
        while True:
            self._check_stop()
            try:
                return await self._bwrap_argv(spec, image, uses_python, volumes)
            except ContainerConfigError as exc:
                self._set_waiting(cs, "CreateContainerConfigError", str(exc))
                self._emit()
                await self._sleep_or_stop(self.config.config_retry_seconds)

    async def _bwrap_argv(
        self, spec: dict[str, Any], image: ImageSpec, uses_python: bool, volumes: dict[str, Path]
    ) -> tuple[list[str], dict[str, str]]:
        sc = _security(self.pod, spec)
        uid = sc.get("runAsUser")
        if uid is None:
            uid = image.user
        gid = sc.get("runAsGroup", uid if uid is not None else 0)
        pod_ref = f'(pod: "{self.name}_{self.namespace}({self.uid})", container: {spec["name"]})'
        if sc.get("runAsNonRoot") and uid == 0:
            if sc.get("runAsUser") == 0:
                raise ContainerConfigError(f"container's runAsUser breaks non-root policy {pod_ref}")
            raise ContainerConfigError(f"container has runAsNonRoot and image will run as root {pod_ref}")
        base: dict[str, str] = {
            "PATH": image.path([f"{SANDBOX_RUNTIME_DIR}/bin"] if uses_python else None),
            "HOSTNAME": self.name,
            "HOME": "/root" if uid == 0 else "/",
        }
        if uses_python:
            base["PYTHONPATH"] = SANDBOX_SOURCE_DIR
            base["PYTHONDONTWRITEBYTECODE"] = "1"
        base.update(image.env)
        env = await container_env(self.pod, spec, self.lookups, base, self.config.host_ip)
        argv = image.argv(spec.get("command"), spec.get("args"))
        argv = [expand(str(a), env) for a in argv]
        if not argv:
            raise ContainerConfigError("no command specified")
        mounts = container_mounts(spec, volumes)
        policies = await self.lookups.list_network_policies(self.namespace)
        no_network = egress_denied(self.pod, policies)

        args: list[str] = [self.config.bwrap]
        args += _root_binds(self.config.runtime_dir)
        args += ["--dev", "/dev", "--proc", "/proc", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--dir", "/tmp"]
        # Other pods' payloads and logs live in the state dir: hide it behind an empty directory.
        hidden = self.config.state_dir.resolve()
        if hidden.parts[1:2] and hidden.parts[1] not in ("tmp", "proc", "dev"):
            empty = self.config.state_dir / "empty"
            empty.mkdir(exist_ok=True)
            args += ["--ro-bind", str(empty), str(hidden)]
        if uses_python and self.config.runtime_dir is not None:
            args += ["--ro-bind", str(self.config.runtime_dir), SANDBOX_RUNTIME_DIR]
            args += ["--ro-bind", str(runner_source_root()), SANDBOX_SOURCE_DIR]
        if not sc.get("readOnlyRootFilesystem") and not any(m.target == "/tmp" for m in mounts):
            # Without a read-only root a container can write /tmp; a per-container directory stands in.
            scratch = self.pod_dir / "scratch" / spec["name"]
            scratch.mkdir(parents=True, exist_ok=True)
            os.chmod(scratch, 0o1777)
            args += ["--bind", str(scratch), "/tmp"]
        for mount in mounts:
            args += ["--ro-bind" if mount.read_only else "--bind", str(mount.source), mount.target]
        term_path = spec.get("terminationMessagePath") or "/dev/termination-log"
        term_file = self._termination_file(spec["name"])
        args += ["--bind", str(term_file), term_path]
        # The rest of the root is read-only whatever readOnlyRootFilesystem says (it is the host's).
        args += ["--remount-ro", "/"]
        args += ["--cap-drop", "ALL"]
        for cap in _capabilities(sc) if uid == 0 else []:
            args += ["--cap-add", cap]
        # The command is PID 1 of its namespace, as in a container: SIGTERM is ignored unless handled.
        args += ["--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--hostname", self.name[:63]]
        args += ["--die-with-parent", "--new-session"]
        if no_network:
            args += ["--unshare-net"]
        if uid != 0 or gid != 0:
            args += ["--unshare-user", "--uid", str(uid), "--gid", str(gid)]
        workdir = spec.get("workingDir") or image.working_dir or "/"
        args += ["--chdir", workdir, "--"]
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        prlimit = shutil.which("prlimit")
        if limit is not None and prlimit:
            # A backstop under the RSS poller: no single process may map far more than the limit.
            limit_bytes = int(parse_quantity(limit))
            data = max(4 * limit_bytes, limit_bytes + DATA_LIMIT_SLACK)
            args = [prlimit, f"--data={data}", "--", *args]
        nice = shutil.which("nice")
        if nice and CONTAINER_NICENESS and shutil.which(self.config.bwrap):  # a missing bwrap is a StartError
            # Like a kubelet's system-reserved CPU: containers yield to the control plane (API server,
            # node, operator) sharing this machine, so a burst of pods cannot starve it.
            args = [nice, "-n", str(CONTAINER_NICENESS), *args]
        return args + argv, env

    def _termination_file(self, name: str) -> Path:
        path = self.pod_dir / "termination" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.chmod(path, 0o666)
        return path

    async def _start(
        self, spec: dict[str, Any], cs: ContainerState, argv: list[str], env: dict[str, str]
    ) -> ContainerProcess:
        log_path = self.pod_dir / f"{cs.name}.log"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if spec.get("stdin") else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ContainerConfigError(f"failed to start bubblewrap: {exc}") from exc
        process = ContainerProcess(
            proc,
            log_path,
            self._termination_file_path(cs.name),
            spec.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        )
        self.processes[cs.name] = process
        if proc.stdin is not None:
            # `stdin: true`: reachable by `pods/NAME/attach` (once, with stdinOnce) until the container ends.
            process.stdin_relay = StdinRelay(proc.stdin, self.pod_dir, cs.name, once=bool(spec.get("stdinOnce")))
            await process.stdin_relay.start()
        cs.container_id = f"local://{secrets.token_hex(32)}"
        cs.state = {"running": {"startedAt": now_rfc3339()}}
        cs.started = True
        cs.ready = not cs.init
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is not None:
            limit_bytes = int(parse_quantity(limit))

            def over(_rss: int, process: ContainerProcess = process) -> None:
                process.oom_killed = True
                process.kill()

            self.monitor.watch(proc.pid, limit_bytes, over)
        if self._terminating.is_set():
            process.stop(self._grace)
        return process

    def _termination_file_path(self, name: str) -> Path:
        return self.pod_dir / "termination" / name

    async def _finish_container(self, cs: ContainerState, process: ContainerProcess) -> int:
        code, message = await process.wait()
        self.monitor.unwatch(process.pid)
        if process.oom_killed:
            reason = "OOMKilled"
            code = 137
        else:
            reason = "Completed" if code == 0 else "Error"
        started = (cs.state.get("running") or {}).get("startedAt") or now_rfc3339()
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": now_rfc3339(),
            "containerID": cs.container_id,
        }
        if message:
            terminated["message"] = message
        cs.state = {"terminated": terminated}
        cs.ready = False
        cs.started = False
        return code

    async def _run_init_containers(self, volumes: dict[str, Path]) -> bool:
        specs = {c["name"]: c for c in (self.pod.get("spec") or {}).get("initContainers") or []}
        for cs in self.init_states:
            argv, env = await self._prepare(specs[cs.name], cs, volumes)
            self._check_stop()
            process = await self._start(specs[cs.name], cs, argv, env)
            self._emit()
            code = await self._finish_container(cs, process)
            self._emit()
            if code != 0:
                return False
        for cs in self.states:
            cs.state = {"waiting": {"reason": "ContainerCreating"}}
        if self.init_states:
            self._emit()
        return True

    async def _run_main_containers(self, volumes: dict[str, Path]) -> None:
        specs = {c["name"]: c for c in (self.pod.get("spec") or {}).get("containers") or []}
        started: list[tuple[ContainerState, ContainerProcess]] = []
        for cs in self.states:
            argv, env = await self._prepare(specs[cs.name], cs, volumes)
            self._check_stop()
            started.append((cs, await self._start(specs[cs.name], cs, argv, env)))
        self._emit()

        async def finish(cs: ContainerState, process: ContainerProcess) -> None:
            await self._finish_container(cs, process)
            if not all(c.terminated for c in self.states):
                self._emit()

        await asyncio.gather(*(finish(cs, p) for cs, p in started))

    def _finish(self) -> None:
        """Settle the terminal phase and report it (once)."""
        if self._silent:
            return
        for cs in [*self.init_states, *self.states]:
            if cs.terminated is None and self._terminating.is_set():
                cs.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": CONTAINER_STATUS_UNKNOWN_MESSAGE,
                    }
                }
                cs.ready = cs.started = False
        all_states = [*self.init_states, *self.states]
        nonzero = any((cs.terminated or {}).get("exitCode") != 0 for cs in all_states if cs.terminated)
        never_ran = any(cs.terminated is None for cs in self.states)
        failed = self.force_failed or nonzero or never_ran
        self.phase = "Failed" if failed else "Succeeded"
        self.sandbox_ready = False
        self._emit()

    # -- status -------------------------------------------------------------------------------------

    def _set_waiting(self, cs: ContainerState, reason: str, message: str) -> None:
        cs.state = {"waiting": {"reason": reason, "message": message}}

    def _condition(
        self, ctype: str, status: str, reason: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        previous = self._transitions.get(ctype)
        if previous is None or previous[0] != status:
            self._transitions[ctype] = (status, now_rfc3339())
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[ctype][1],
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    def _current_phase(self) -> str:
        if self.phase in ("Succeeded", "Failed"):
            return self.phase
        if any(cs.running or cs.terminated for cs in self.states):
            return "Running"
        return "Pending"

    def _build_status(self) -> dict[str, Any]:
        phase = self._current_phase()
        terminal = phase in ("Succeeded", "Failed")
        inits_done = all((cs.terminated or {}).get("exitCode") == 0 for cs in self.init_states)
        incomplete = [cs.name for cs in self.init_states if (cs.terminated or {}).get("exitCode") != 0]
        unready = [cs.name for cs in self.states if not cs.ready]
        conditions = [self._condition("PodReadyToStartContainers", "True" if self.sandbox_ready else "False")]
        if inits_done or (terminal and not self.init_states):
            conditions.append(self._condition("Initialized", "True"))
        elif terminal and phase == "Succeeded":
            conditions.append(self._condition("Initialized", "True", "PodCompleted"))
        else:
            conditions.append(
                self._condition(
                    "Initialized",
                    "False",
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(incomplete)}]",
                )
            )
        if terminal:
            why = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            ready = self._condition("Ready", "False", why)
            containers_ready = self._condition("ContainersReady", "False", why)
        elif unready:
            msg = f"containers with unready status: [{' '.join(unready)}]"
            ready = self._condition("Ready", "False", "ContainersNotReady", msg)
            containers_ready = self._condition("ContainersReady", "False", "ContainersNotReady", msg)
        else:
            ready = self._condition("Ready", "True")
            containers_ready = self._condition("ContainersReady", "True")
        conditions += [ready, containers_ready, self._condition("PodScheduled", "True")]
        if self.disruption:
            conditions.append(
                self._condition(
                    "DisruptionTarget", "True", self.disruption.get("reason"), self.disruption.get("message")
                )
            )
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.config.host_ip,
            "hostIPs": [{"ip": self.config.host_ip}],
            "podIP": self.config.host_ip,
            "podIPs": [{"ip": self.config.host_ip}],
            "startTime": self.start_time,
            "qosClass": _qos_class(self.pod),
            "containerStatuses": [cs.render() for cs in self.states],
        }
        if self.init_states:
            status["initContainerStatuses"] = [cs.render() for cs in self.init_states]
        if self.pod_reason:
            status["reason"] = self.pod_reason
        if self.pod_message:
            status["message"] = self.pod_message
        return status

    def _emit(self) -> None:
        if self._silent:
            return
        status = self._build_status()
        if status != self._last_status:
            self._last_status = status
            self.sink(status)
