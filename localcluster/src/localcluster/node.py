"""The local node: scheduler and kubelet for one Node, as an ordinary HTTP client of the API server.

`LocalNode` registers a Ready Node, renews its Lease, binds unbound pods that fit (else marks them
`PodScheduled=False, reason=Unschedulable`), and runs the pods bound to it through `PodWorker`
(`node_runtime`): containers are local processes under bubblewrap. Status goes back with one merge
patch of `pods/NAME/status` per observed transition (a container's Running state is reported before its
end, as a kubelet reports a sandbox pod's; statuses produced while a patch is in flight are coalesced,
as in a kubelet's status manager); graceful deletion ends with
`DELETE ...?gracePeriodSeconds=0`, as a kubelet confirms it.

Differences from a real node, on purpose: CPU limits are ignored; the memory limit is enforced by RSS
polling (no cgroups); the scheduler checks each pod against allocatable without summing the requests
of pods already running; a restarted node cannot re-adopt containers (they die with the node process),
so it fails the pods it had started with `ContainerStatusUnknown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from .node_config import Lookups
from .node_images import ImageTable, prepare_python_runtime
from .node_runtime import (
    CONTAINER_STATUS_UNKNOWN_MESSAGE,
    MemoryMonitor,
    PodWorker,
    RuntimeConfig,
    now_rfc3339,
)
from .node_sched import unschedulable_message

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.31.0-localcluster"
KUBELET_UA = f"kubelet/{KUBELET_VERSION} (linux/amd64) localcluster"
SCHEDULER_UA = f"kube-scheduler/{KUBELET_VERSION} (linux/amd64) localcluster"
TERMINAL = ("Succeeded", "Failed")
#: Out-of-process trigger for the test simulations: `kubectl annotate pod P localcluster.dev/simulate=evict`
#: (or `node-lost`, `node-lost-delete`). A development aid only; real kubelets ignore the annotation.
SIMULATE_ANNOTATION = "localcluster.dev/simulate"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class _Client:
    """A thin JSON client over one aiohttp session (built once, shared by every role)."""

    def __init__(self, base_url: str, user_agent: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.user_agent = user_agent
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=32)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        request_timeout: float = 30.0,
    ) -> Any:
        """Send a request; returns the decoded JSON body or raises ApiError."""
        assert self.session is not None, "client not opened"
        headers = {"Content-Type": content_type} if json_body is not None else {}
        async with self.session.request(
            method,
            self.base_url + path,
            json=json_body,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise ApiError(resp.status, text)
            return await resp.json(content_type=None) if text else None

    async def watch(
        self, path: str, params: dict[str, str], on_event: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Stream a watch; returns when the server closes it."""
        assert self.session is not None
        async with self.session.get(
            self.base_url + path,
            params={**params, "watch": "1"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text())
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        await on_event(json.loads(line))


def _pod_path(namespace: str, name: str, sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
    return f"{path}/{sub}" if sub else path


class _ApiLookups:
    """Lookups through the API server.

    NetworkPolicies are listed afresh for every container start (no cache): a pod created right after
    its deny-all policy must never start with the network on.
    """

    def __init__(self, client: _Client, cache_seconds: float = 0.0) -> None:
        self.client = client
        self.cache_seconds = cache_seconds
        self._policies: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def _get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.client.request("GET", path)
            return result
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}")

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")

    async def list_network_policies(self, namespace: str) -> list[dict[str, Any]]:
        cached = self._policies.get(namespace)
        now = time.monotonic()
        if cached and self.cache_seconds > 0 and now - cached[0] < self.cache_seconds:
            return cached[1]
        path = f"/apis/networking.k8s.io/v1/namespaces/{quote(namespace)}/networkpolicies"
        try:
            items = list((await self.client.request("GET", path)).get("items") or [])
        except ApiError as exc:
            if exc.status != 404:
                raise
            items = []
        self._policies[namespace] = (now, items)
        return items


class _StatusWriter:
    """Sends the latest status of one pod; statuses produced while a patch is in flight are coalesced."""

    def __init__(self, node: LocalNode, namespace: str, name: str) -> None:
        self.node = node
        self.namespace = namespace
        self.name = name
        self.pending: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.gone = False
        self.entry: _PodEntry | None = None  # set once the entry exists; gives the latest pod seen
        self.last_submitted: dict[str, Any] | None = None

    def submit(self, status: dict[str, Any]) -> None:
        if self.gone:
            return
        uid = self.entry.worker.uid if self.entry is not None else ""
        for etype, reason, message, field in status_events(self.last_submitted, status):
            self.node.record_event(self.namespace, self.name, uid, etype, reason, message, field_path=field)
        self.last_submitted = status
        self.pending = status
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)

    async def _drain(self) -> None:
        while self.pending is not None and not self.gone:
            status, self.pending = self.pending, None
            if status is not None:
                await self._send(status)

    async def _send(self, status: dict[str, Any]) -> None:
        delay = 0.1
        for _ in range(8):
            try:
                latest = self.entry.latest if self.entry is not None else None
                await self.node._patch_status(self.namespace, self.name, status, latest)
                return
            except ApiError as exc:
                if exc.status == 404:
                    self.gone = True
                    return
                if exc.status not in (409, 429) and exc.status < 500:
                    log.warning("status patch for %s/%s refused: %s", self.namespace, self.name, exc)
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("status patch for %s/%s failed: %s", self.namespace, self.name, exc)
            if self.pending is not None:
                return  # a newer status supersedes this one
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


_WAITING_EVENTS: dict[str, list[tuple[str, str, str]]] = {
    # waiting reason -> (type, reason, message template) as the kubelet records them
    "ErrImagePull": [
        ("Warning", "Failed", 'Failed to pull image "{image}": {message}'),
        ("Warning", "Failed", "Error: ErrImagePull"),
    ],
    "ImagePullBackOff": [("Normal", "BackOff", "{message}"), ("Warning", "Failed", "Error: ImagePullBackOff")],
    "InvalidImageName": [("Warning", "InspectFailed", "{message}"), ("Warning", "Failed", "Error: InvalidImageName")],
    "CreateContainerConfigError": [("Warning", "Failed", "Error: {message}")],
}


def status_events(previous: dict[str, Any] | None, status: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    """Warning-path Events implied by a status transition: (type, reason, message, fieldPath).

    The normal path (Scheduled, Pulled, Created, Started) records nothing, to keep API writes per pod low.
    """
    events: list[tuple[str, str, str, str | None]] = []
    before: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in (previous or {}).get(key) or []:
            before[cs["name"]] = ((cs.get("state") or {}).get("waiting") or {}).get("reason", "")
    for key, kind in (("initContainerStatuses", "initContainers"), ("containerStatuses", "containers")):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if not reason or reason == before.get(cs["name"]) or reason not in _WAITING_EVENTS:
                continue
            field = f"spec.{kind}{{{cs['name']}}}"
            for etype, ereason, template in _WAITING_EVENTS[reason]:
                message = template.format(image=cs.get("image", ""), message=waiting.get("message", ""))
                events.append((etype, ereason, message, field))
    reason = status.get("reason")
    if reason and reason != (previous or {}).get("reason"):
        if reason == "DeadlineExceeded":
            events.append(("Normal", "DeadlineExceeded", status.get("message", ""), None))
        elif reason == "Evicted":
            events.append(("Warning", "Evicted", status.get("message", ""), None))
    return events


class _PodEntry:
    """What the kubelet role keeps per pod uid."""

    def __init__(self, worker: PodWorker, writer: _StatusWriter) -> None:
        self.worker = worker
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self.deleting: asyncio.Task[None] | None = None
        self.latest: dict[str, Any] = worker.pod
        self.simulated = False


class LocalNode:
    """One Node: registration, scheduler and kubelet against the API server at `api_url`."""

    def __init__(
        self,
        api_url: str,
        state_dir: Path,
        name: str = "local-node",
        images: ImageTable | None = None,
        *,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        capacity: dict[str, str] | None = None,
        lease_seconds: float = 10.0,
        pull_error_seconds: float = 1.0,
        pull_backoff_initial: float = 2.0,
        pull_backoff_max: float = 20.0,
        lookups: Lookups | None = None,
    ) -> None:
        self.api_url = api_url
        self.state_dir = Path(state_dir).absolute()
        self.name = name
        self.images = images if images is not None else ImageTable.default()
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "local",
            **(labels or {}),
        }
        self.taints = list(taints or [])
        self.capacity = dict(capacity or {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"})
        self.lease_seconds = lease_seconds
        self.config = RuntimeConfig(
            state_dir=self.state_dir,
            node_name=name,
            pull_error_seconds=pull_error_seconds,
            pull_backoff_initial=pull_backoff_initial,
            pull_backoff_max=pull_backoff_max,
        )
        self.kubelet = _Client(api_url, KUBELET_UA)
        self.scheduler = _Client(api_url, SCHEDULER_UA)
        self.lookups: Lookups = lookups if lookups is not None else _ApiLookups(self.kubelet)
        self.monitor = MemoryMonitor()
        self.pods: dict[str, _PodEntry] = {}
        self._unschedulable: dict[str, str] = {}
        self._binding: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._synced = asyncio.Event()
        self._events_seen: set[tuple[str, str, str]] = set()
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the node and start the scheduler, kubelet and lease loops; returns once synced."""
        if shutil.which(self.config.bwrap) is None:
            raise RuntimeError("bubblewrap (bwrap) is required by the local node: apt-get install -y bubblewrap")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pods").mkdir(exist_ok=True)
        self.config.runtime_dir = prepare_python_runtime(self.state_dir / "runtime").parent
        await self.kubelet.open()
        await self.scheduler.open()
        delay = 0.1
        for attempt in range(8):
            # A kubelet keeps trying to register; the API server may still be warming up.
            try:
                await self._register()
                break
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                if attempt == 7:
                    await self.kubelet.close()
                    await self.scheduler.close()
                    raise RuntimeError(f"node {self.name} could not register: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._kubelet_loop(), name="node-kubelet"),
            loop.create_task(self._scheduler_loop(), name="node-scheduler"),
            loop.create_task(self._lease_loop(), name="node-lease"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), 10)

    async def stop(self) -> None:
        """Stop every loop and kill every container (without reporting: the node goes away)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for entry in self.pods.values():
            entry.worker.kill_silently()
        running = [e.task for e in self.pods.values() if e.task is not None]
        running += [e.deleting for e in self.pods.values() if e.deleting is not None]
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, *self._background, return_exceptions=True)
        await self.monitor.stop()
        await self.kubelet.close()
        await self.scheduler.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- node object and lease ----------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        now = now_rfc3339()

        def condition(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        uname = platform.uname()
        return {
            "capacity": dict(self.capacity),
            "allocatable": dict(self.capacity),
            "conditions": [
                condition(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
                ),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": _machine_id(),
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "bootID": _boot_id(),
                "kernelVersion": uname.release,
                "osImage": _os_image(),
                "containerRuntimeVersion": "bwrap://" + _bwrap_version(),
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def _register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"taints": self.taints} if self.taints else {},
        }
        try:
            await self.kubelet.request("POST", "/api/v1/nodes", json_body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self.kubelet.request(
                "PATCH",
                f"/api/v1/nodes/{self.name}",
                json_body={"metadata": {"labels": self.labels}, "spec": {"taints": self.taints or None}},
                content_type="application/merge-patch+json",
            )
        await self.kubelet.request(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            json_body={"status": self._node_status()},
            content_type="application/merge-patch+json",
        )

    async def _lease_loop(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        while True:
            now = time.time()
            renew = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": self.name,
                    "leaseDurationSeconds": 40,
                    "renewTime": renew,
                },
            }
            try:
                try:
                    await self.kubelet.request(
                        "PATCH", path, json_body={"spec": body["spec"]}, content_type="application/merge-patch+json"
                    )
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    await self.kubelet.request(
                        "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", json_body=body
                    )
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.debug("lease renewal failed: %s", exc)
            await asyncio.sleep(self.lease_seconds)

    # -- list + watch -------------------------------------------------------------------------------

    async def _list_watch(
        self,
        client: _Client,
        field_selector: str,
        on_list: Callable[[list[dict[str, Any]]], Awaitable[None]],
        on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
    ) -> None:
        """Informer-style loop: list, then watch from the list's resourceVersion; relist on 410 Gone."""
        backoff = 0.2
        while not self._stopping:
            try:
                listing = await client.request("GET", "/api/v1/pods", params={"fieldSelector": field_selector})
                rv = listing["metadata"]["resourceVersion"]
                await on_list(list(listing.get("items") or []))
                backoff = 0.2
                while not self._stopping:
                    state = {"rv": rv, "gone": False}

                    async def handle(event: dict[str, Any], state: dict[str, Any] = state) -> None:
                        etype, obj = event.get("type", ""), event.get("object") or {}
                        if etype == "ERROR":
                            if obj.get("code") == 410:
                                state["gone"] = True
                            return
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if new_rv:
                            state["rv"] = new_rv
                        if etype in ("ADDED", "MODIFIED", "DELETED"):
                            await on_event(etype, obj)

                    params = {
                        "fieldSelector": field_selector,
                        "resourceVersion": rv,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": "300",
                    }
                    await client.watch("/api/v1/pods", params, handle)
                    if state["gone"]:
                        break
                    rv = state["rv"]
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status != 410:
                    log.warning("pod watch (%s) failed: %s", field_selector, exc)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                log.debug("pod watch (%s) interrupted: %s", field_selector, exc)
            except Exception:
                # A bug in handling one event must not stop the node for good: relist and carry on.
                log.exception("pod watch (%s) handler failed", field_selector)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    # -- scheduler ----------------------------------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        async def on_list(items: list[dict[str, Any]]) -> None:
            for pod in items:
                self._consider(pod)

        async def on_event(etype: str, pod: dict[str, Any]) -> None:
            if etype == "DELETED":
                uid = pod["metadata"].get("uid", "")
                self._unschedulable.pop(uid, None)
                if uid not in self.pods:
                    self._events_seen = {k for k in self._events_seen if k[0] != uid}
            else:
                self._consider(pod)

        await self._list_watch(self.scheduler, "spec.nodeName=", on_list, on_event)

    def _consider(self, pod: dict[str, Any]) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = meta.get("uid", "")
        if spec.get("nodeName") or meta.get("deletionTimestamp") or uid in self._binding:
            return
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler" or spec.get("schedulingGates"):
            return
        if (pod.get("status") or {}).get("phase") in TERMINAL:
            return
        message = unschedulable_message(pod, self.name, self.labels, self.capacity, self.taints)
        if message is None:
            self._binding.add(uid)
            self._spawn(self._bind(pod))
        elif self._unschedulable.get(uid) != message:
            self._unschedulable[uid] = message
            self._spawn(self._mark_unschedulable(pod, message))
            self.record_event(
                meta.get("namespace", ""),
                meta.get("name", ""),
                uid,
                "Warning",
                "FailedScheduling",
                message,
                component="default-scheduler",
            )

    async def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            for attempt in range(5):
                try:
                    await self.scheduler.request(
                        "POST", _pod_path(meta["namespace"], meta["name"], "binding"), json_body=body
                    )
                    return
                except ApiError as exc:
                    if exc.status in (404, 409) or (400 <= exc.status < 500 and exc.status != 429):
                        return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1 * 2**attempt)
        finally:
            self._binding.discard(meta.get("uid", ""))

    async def _mark_unschedulable(self, pod: dict[str, Any], message: str) -> None:
        meta = pod["metadata"]
        status = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                }
            ],
        }
        with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
            await self.scheduler.request(
                "PATCH",
                _pod_path(meta["namespace"], meta["name"], "status"),
                json_body={"status": status},
                content_type="application/merge-patch+json",
            )

    # -- kubelet ------------------------------------------------------------------------------------

    async def _kubelet_loop(self) -> None:
        first = True

        async def on_list(items: list[dict[str, Any]]) -> None:
            nonlocal first
            seen = {p["metadata"].get("uid", "") for p in items}
            for uid in list(self.pods):
                if uid not in seen:
                    self._forget(uid)
            for pod in items:
                await self._observe(pod, initial=first)
            first = False
            self._synced.set()

        async def on_event(etype: str, pod: dict[str, Any]) -> None:
            if etype == "DELETED":
                self._forget(pod["metadata"].get("uid", ""))
            else:
                await self._observe(pod, initial=False)

        await self._list_watch(self.kubelet, f"spec.nodeName={self.name}", on_list, on_event)

    async def _observe(self, pod: dict[str, Any], initial: bool) -> None:
        meta = pod["metadata"]
        uid = meta.get("uid", "")
        entry = self.pods.get(uid)
        if entry is not None:
            entry.latest = pod
            entry.worker.update(pod)
            if meta.get("deletionTimestamp") and entry.deleting is None:
                entry.deleting = self._spawn(self._graceful_delete(entry, pod))
            simulate = (meta.get("annotations") or {}).get(SIMULATE_ANNOTATION)
            if simulate and not entry.simulated and not entry.worker.done:
                entry.simulated = True
                self._spawn(self._simulate(entry, simulate))
            return
        status = pod.get("status") or {}
        if status.get("phase") in TERMINAL:
            if meta.get("deletionTimestamp"):
                self._spawn(self._confirm_delete(pod))
            return
        if meta.get("deletionTimestamp") and not _ever_started(pod):
            self._spawn(self._confirm_delete(pod))
            return
        if initial and _ever_started(pod):
            # Started by an earlier node process: its containers died with that process.
            self._spawn(self._fail_lost(pod))
            return
        self._admit(pod)

    def _admit(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        writer = _StatusWriter(self, meta["namespace"], meta["name"])
        worker = PodWorker(
            pod,
            config=self.config,
            images=self.images,
            lookups=self.lookups,
            monitor=self.monitor,
            sink=writer.submit,
        )
        entry = _PodEntry(worker, writer)
        writer.entry = entry
        self.pods[meta.get("uid", "")] = entry
        entry.task = self._spawn(self._run_pod(entry))
        if meta.get("deletionTimestamp"):
            entry.deleting = self._spawn(self._graceful_delete(entry, pod))

    async def _run_pod(self, entry: _PodEntry) -> None:
        try:
            await entry.worker.run()
        except Exception:
            log.exception("pod %s/%s crashed in the runtime", entry.worker.namespace, entry.worker.name)

    async def _graceful_delete(self, entry: _PodEntry, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        for cs in entry.worker.states:
            if cs.running:
                self.record_event(
                    entry.worker.namespace,
                    entry.worker.name,
                    entry.worker.uid,
                    "Normal",
                    "Killing",
                    f"Stopping container {cs.name}",
                    field_path=f"spec.containers{{{cs.name}}}",
                )
        await entry.worker.terminate(float(grace))
        await entry.writer.flush()
        await self._confirm_delete(pod)

    async def _confirm_delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta.get("uid")},
        }
        for attempt in range(5):
            try:
                await self.kubelet.request(
                    "DELETE",
                    _pod_path(meta["namespace"], meta["name"]),
                    json_body=body,
                    params={"gracePeriodSeconds": "0"},
                )
                return
            except ApiError as exc:
                if exc.status in (404, 409) or (400 <= exc.status < 500 and exc.status != 429):
                    return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1 * 2**attempt)

    def _forget(self, uid: str) -> None:
        """The pod object is gone: kill what is left and remove its directory."""
        self._events_seen = {k for k in self._events_seen if k[0] != uid}
        self._unschedulable.pop(uid, None)
        entry = self.pods.pop(uid, None)
        if entry is None:
            return
        entry.writer.gone = True
        entry.worker.kill_silently()
        pod_dir = entry.worker.pod_dir

        async def cleanup() -> None:
            if entry.task is not None:
                await asyncio.gather(entry.task, return_exceptions=True)
            await asyncio.to_thread(shutil.rmtree, pod_dir, True)

        self._spawn(cleanup())

    async def _fail_lost(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        status = _lost_status(pod)
        with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
            await self._patch_status(meta["namespace"], meta["name"], status, pod)
        if meta.get("deletionTimestamp"):
            await self._confirm_delete(pod)

    async def _patch_status(
        self, namespace: str, name: str, status: dict[str, Any], pod: dict[str, Any] | None = None
    ) -> None:
        """Merge-patch the pod status, keeping conditions owned by others (e.g. DisruptionTarget)."""
        mine = {c["type"] for c in status.get("conditions") or []}
        foreign = [c for c in ((pod or {}).get("status") or {}).get("conditions") or [] if c.get("type") not in mine]
        body = {"status": {**status, "conditions": [*status.get("conditions", []), *foreign]}}
        await self.kubelet.request(
            "PATCH",
            _pod_path(namespace, name, "status"),
            json_body=body,
            content_type="application/merge-patch+json",
        )

    # -- events -------------------------------------------------------------------------------------

    def record_event(
        self,
        namespace: str,
        name: str,
        uid: str,
        etype: str,
        reason: str,
        message: str,
        *,
        component: str = "kubelet",
        field_path: str | None = None,
    ) -> None:
        """Post a core/v1 Event about a pod, in the background; identical repeats are recorded once."""
        key = (uid, reason, message)
        if key in self._events_seen or self._stopping:
            return
        self._events_seen.add(key)
        now = now_rfc3339()
        involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": uid}
        if field_path:
            involved["fieldPath"] = field_path
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": component, "host": self.name}
            if component == "kubelet"
            else {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": self.name if component == "kubelet" else "",
        }
        client = self.kubelet if component == "kubelet" else self.scheduler

        async def post() -> None:
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await client.request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", json_body=body)

        self._spawn(post())

    # -- simulations for tests ----------------------------------------------------------------------

    def _entry(self, namespace: str, name: str) -> _PodEntry:
        for entry in self.pods.values():
            if entry.worker.namespace == namespace and entry.worker.name == name:
                return entry
        raise KeyError(f"pod {namespace}/{name} is not running on {self.name}")

    async def evict(
        self,
        namespace: str,
        name: str,
        message: str | None = None,
        grace_seconds: float = 0,
    ) -> None:
        """Evict a pod as the kubelet's eviction manager does under node pressure (pod becomes Failed)."""
        entry = self._entry(namespace, name)
        message = message or ("The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. ")
        await entry.worker.terminate(
            grace_seconds,
            reason="Evicted",
            message=message,
            disruption={"reason": "TerminationByKubelet", "message": message},
            failed=True,
        )
        await entry.writer.flush()

    async def _simulate(self, entry: _PodEntry, what: str) -> None:
        namespace, name = entry.worker.namespace, entry.worker.name
        try:
            if what == "evict":
                await self.evict(namespace, name)
            elif what in ("node-lost", "node-lost-delete"):
                await self.lose_pod(namespace, name, delete=what == "node-lost-delete")
            else:
                log.warning("unknown %s value %r on %s/%s", SIMULATE_ANNOTATION, what, namespace, name)
        except (KeyError, ApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("simulation %s of %s/%s failed: %s", what, namespace, name, exc)

    async def lose_pod(self, namespace: str, name: str, delete: bool = False) -> None:
        """Simulate losing the node under a pod: processes vanish, PodGC marks it Failed (and deletes it).

        The pod ends `Failed` with `reason=NodeLost`, `DisruptionTarget=True (DeletionByPodGC)` and its
        containers `ContainerStatusUnknown` (exit 137), without the kubelet reporting any exit code.
        """
        entry = self._entry(namespace, name)
        entry.writer.gone = True
        await entry.writer.flush()
        last_known = entry.worker.status  # before the kill: nobody observes the exit on a lost node
        entry.worker.kill_silently()
        if entry.task is not None:
            await asyncio.gather(entry.task, return_exceptions=True)
        pod = {**entry.latest, "status": last_known}
        status = _lost_status(pod, node_lost=True, node_name=self.name)
        await self._patch_status(namespace, name, status, entry.latest)
        if delete:
            await self._confirm_delete(entry.latest)


def _ever_started(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state = cs.get("state") or {}
        if "running" in state or "terminated" in state:
            return True
    return False


def _lost_status(pod: dict[str, Any], node_lost: bool = False, node_name: str = "") -> dict[str, Any]:
    """The status of a pod whose containers vanished: Failed, containers ContainerStatusUnknown (137)."""
    status = dict(pod.get("status") or {})
    now = now_rfc3339()

    def lost(cs: dict[str, Any]) -> dict[str, Any]:
        state = cs.get("state") or {}
        if "terminated" in state:
            return cs
        started = (state.get("running") or {}).get("startedAt")
        terminated: dict[str, Any] = {
            "exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": CONTAINER_STATUS_UNKNOWN_MESSAGE,
            "finishedAt": now,
        }
        if started:
            terminated["startedAt"] = started
        return {**cs, "ready": False, "started": False, "state": {"terminated": terminated}, "lastState": {}}

    conditions = [
        c
        for c in status.get("conditions") or []
        if c.get("type") not in ("Ready", "ContainersReady", "DisruptionTarget")
    ]
    for ctype in ("Ready", "ContainersReady"):
        conditions.append(
            {"type": ctype, "status": "False", "reason": "PodFailed", "lastProbeTime": None, "lastTransitionTime": now}
        )
    out: dict[str, Any] = {
        **status,
        "phase": "Failed",
        "conditions": conditions,
        "containerStatuses": [lost(cs) for cs in status.get("containerStatuses") or []],
    }
    if status.get("initContainerStatuses"):
        out["initContainerStatuses"] = [lost(cs) for cs in status["initContainerStatuses"]]
    if node_lost:
        name = (pod.get("metadata") or {}).get("name", "")
        out["reason"] = "NodeLost"
        out["message"] = f"Node {node_name} which was running pod {name} is unresponsive"
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
        )
    return out


def _read_first_line(path: str, default: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip() or default
    except OSError:
        return default


def _machine_id() -> str:
    return _read_first_line("/etc/machine-id", uuid.uuid5(uuid.NAMESPACE_DNS, platform.node()).hex)


def _boot_id() -> str:
    return _read_first_line("/proc/sys/kernel/random/boot_id", str(uuid.uuid4()))


def _os_image() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


@functools.cache
def _bwrap_version() -> str:
    path = shutil.which("bwrap") or "bwrap"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip().split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


__all__ = ["ImageTable", "LocalNode"]
