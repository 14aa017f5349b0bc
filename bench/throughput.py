"""Throughput, latency, API writes and memory of the operator, end to end.

Creates N trivial Executions at once, watches them (and their pods) to the end, and prints:
executions per second, p50/p95 from creation to running and from pod termination to terminal
status, the operator's API writes per successful Execution, and the operator's memory with many
finished Executions present.

    python bench/throughput.py                      # starts the local cluster and the operator
    python bench/throughput.py --kubeconfig K       # any cluster; the operator already runs there
    python bench/throughput.py --kubeconfig K --run-operator   # run the operator from this checkout

Figures come from a client-side watch: each Execution's time is when its event reached the watch.
API writes come from the operator's own request metrics (any cluster) and, on the local cluster, also
from the API server's request log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # for `bench.*`; the project and the local cluster are installed

import aiohttp  # noqa: E402
import kopf  # noqa: E402

from execution_operator.k8s import ApiError, KubeClient, path_for  # noqa: E402
from localcluster.testing import OperatorProcess, start_cluster_process, stop_process  # noqa: E402

API = "sandbox.dev/v1alpha1"
CHART = ROOT / "charts" / "execution-operator"
WRITE_VERBS = ("create", "update", "patch", "delete")


def cluster_manifests(state: Path) -> tuple[Path, ...]:
    """What a local cluster of the benchmarks gets before the operator starts: the CRDs, then the
    ExecutionClasses the Helm chart installs (rendered by `helm template`, as `make demo` installs them)."""
    local = ROOT / ".tools" / "bin" / "helm"
    helm = str(local) if local.exists() else (shutil.which("helm") or "helm")
    rendered = subprocess.run([helm, "template", "bench", str(CHART), "--show-only", "templates/executionclasses.yaml"],
                              check=False, capture_output=True, text=True, timeout=120)
    if rendered.returncode != 0:
        raise SystemExit(f"helm template {CHART} failed (run `make tools`): {rendered.stderr.strip()}")
    classes = state / "executionclasses.yaml"
    classes.write_text(rendered.stdout, encoding="utf-8")
    return (ROOT / "crds", classes)


@dataclass
class Track:
    created: float = 0.0
    created_wall: float = 0.0
    started_wall: float | None = None
    finished_wall: float | None = None
    terminal_wall: float | None = None
    running: float | None = None
    pod_terminated: float | None = None
    terminal: float | None = None
    phase: str | None = None


@dataclass
class Run:
    tracks: dict[str, Track] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def watch(client: KubeClient, path: str, params: dict[str, str], on_event: Any, stop: asyncio.Event) -> None:
    """A plain watch loop (resume from the last resourceVersion) feeding `on_event(type, object)`."""
    session = client._get_session()
    rv = params.get("resourceVersion", "")
    while not stop.is_set():
        query = dict(params, watch="true", allowWatchBookmarks="true", resourceVersion=rv, timeoutSeconds="60")
        try:
            async with session.get(client.server + path, params=query,
                                   timeout=aiohttp.ClientTimeout(total=None, sock_read=90)) as response:
                async for line in response.content:
                    if stop.is_set():
                        return
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event["type"], obj)
        except (TimeoutError, aiohttp.ClientError):
            await asyncio.sleep(0.1)


def wall_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def container_terminated(pod: dict[str, Any]) -> bool:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if "terminated" in (status.get("state") or {}):
            return True
    return False


def _note_container_times(track: Track, pod: dict[str, Any]) -> None:
    """The container's start and end as the node reported them (the first report of each counts)."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        finished = (state.get("terminated") or {}).get("finishedAt")
        if started and track.started_wall is None:
            track.started_wall = wall_time(started)
        if finished and track.finished_wall is None:
            track.finished_wall = wall_time(finished)


async def run_batch(client: KubeClient, namespace: str, count: int, prefix: str, concurrency: int) -> Run:
    run = Run()
    stop = asyncio.Event()
    listed = await client.get(path_for(API, "executions", namespace))
    start_rv = listed["metadata"]["resourceVersion"]

    def on_execution(etype: str, obj: dict[str, Any]) -> None:
        track = run.tracks.get(obj["metadata"]["name"])
        if track is None:
            return
        phase = (obj.get("status") or {}).get("phase")
        now = time.monotonic()
        if phase == "Running" and track.running is None:
            track.running = now
        if phase in ("Succeeded", "Failed", "Cancelled") and track.terminal is None:
            track.terminal, track.phase = now, phase
            track.terminal_wall = time.time()
            if track.running is None:
                track.running = track.pod_terminated or now
            if all(t.terminal for t in run.tracks.values()) and len(run.tracks) == count:
                run.done.set()

    def on_pod(etype: str, obj: dict[str, Any]) -> None:
        owner = next((r["name"] for r in obj["metadata"].get("ownerReferences") or []
                      if r.get("kind") == "Execution"), None)
        track = run.tracks.get(owner or "")
        if track is None:
            return
        now = time.monotonic()
        _note_container_times(track, obj)
        if container_terminated(obj) and track.pod_terminated is None:
            track.pod_terminated = now
        statuses = obj.get("status", {}).get("containerStatuses") or []
        if track.running is None and any("running" in (s.get("state") or {}) for s in statuses):
            track.running = now

    watchers = [
        asyncio.create_task(watch(client, path_for(API, "executions", namespace), {"resourceVersion": start_rv},
                                  on_execution, stop)),
        asyncio.create_task(watch(client, path_for("v1", "pods", namespace),
                                  {"resourceVersion": start_rv,
                                   "labelSelector": "app.kubernetes.io/managed-by=execution-operator"},
                                  on_pod, stop)),
    ]
    gate = asyncio.Semaphore(concurrency)

    async def create(i: int) -> None:
        name = f"{prefix}-{i:05d}"
        run.tracks[name] = Track(created=time.monotonic(), created_wall=time.time())
        body = {"apiVersion": API, "kind": "Execution", "metadata": {"name": name},
                "spec": {"code": "print(sum(range(10)))\nresult = sum(range(10))"}}
        async with gate:
            await client.post(path_for(API, "executions", namespace), body)

    await asyncio.gather(*(create(i) for i in range(count)))
    await asyncio.wait_for(run.done.wait(), timeout=60 + count * 2)
    stop.set()
    for task in watchers:
        task.cancel()
    return run


def operator_writes(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("sandbox_api_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            if any(f'verb="{verb}"' in labels for verb in WRITE_VERBS):
                total += float(value)
    return total


async def apiserver_writes(client: KubeClient, since: int, agent: str = "execution-operator"
                           ) -> tuple[int, dict[str, int]]:
    try:
        log = await client.get("/debug/requests", {"since": str(since)})
    except ApiError:
        return -1, {}
    by_kind: dict[str, int] = {}
    for rec in log.get("items", []):
        if rec.get("user_agent", "").startswith(agent) and rec.get("verb") in (
            "create", "update", "patch", "delete"
        ):
            key = f"{rec['verb']} {rec.get('resource')}{'/' + rec['subresource'] if rec.get('subresource') else ''}"
            if rec.get("code", 200) >= 300:
                key += f" ({rec['code']})"
            by_kind[key] = by_kind.get(key, 0) + 1
    return sum(by_kind.values()), by_kind


def cpu_seconds(pid: int, children: bool = False) -> float:
    """A process's CPU (utime + stime), or that of its waited-for children (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / 100  # clock ticks (USER_HZ 100)


def machine_busy_seconds() -> tuple[float, float]:
    """CPU time of every core on anything but idling, and the part stolen by the hypervisor (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / 100, values[7] / 100


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench(args: argparse.Namespace, kubeconfig: str, op: OperatorProcess | None) -> None:
    import os

    os.environ["KUBECONFIG"] = kubeconfig
    client = KubeClient(kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()), user_agent="bench",
                        pool_size=args.concurrency)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    await client.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": namespace}})
    try:
        log_start = (await client.get("/debug/requests", {"since": "0"})).get("total", 0)
    except ApiError:
        log_start = 0
    writes_before = operator_writes(op.metrics_text()) if op else 0.0
    cpu_before = {name: cpu_seconds(pid) for name, pid in args.pids.items()}
    containers_before = cpu_seconds(args.pids["local node"], children=True) if "local node" in args.pids else 0.0
    me_before, machine_before = cpu_seconds(os.getpid()), machine_busy_seconds()
    started = time.monotonic()
    run = await run_batch(client, namespace, args.count, "t", args.concurrency)
    me_used = cpu_seconds(os.getpid()) - me_before
    machine_after = machine_busy_seconds()
    machine_used, stolen = machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]
    elapsed = max(t.terminal or 0 for t in run.tracks.values()) - min(t.created for t in run.tracks.values())
    succeeded = sum(1 for t in run.tracks.values() if t.phase == "Succeeded")
    # Container start and end come from the pod's own timestamps (the node's clock, this machine's here).
    to_running = [t.started_wall - t.created_wall for t in run.tracks.values() if t.started_wall]
    to_terminal = [t.terminal_wall - t.finished_wall for t in run.tracks.values()
                   if t.terminal_wall and t.finished_wall]
    seen_to_terminal = [t.terminal - t.pod_terminated for t in run.tracks.values() if t.terminal and t.pod_terminated]
    print(f"executions:                  {args.count} created at once ({args.concurrency} concurrent creates)")
    print(f"succeeded:                   {succeeded}")
    print(f"wall time:                   {elapsed:.2f} s  ->  {args.count / elapsed:.1f} executions/s end to end")
    print(f"creation -> code started:    p50 {percentile(to_running, 50):.3f} s   "
          f"p95 {percentile(to_running, 95):.3f} s")
    print(f"pod end -> terminal status:  p50 {percentile(to_terminal, 50):.3f} s   "
          f"p95 {percentile(to_terminal, 95):.3f} s  (container finishedAt -> status seen)")
    print(f"  of which the operator:     p50 {percentile(seen_to_terminal, 50):.3f} s   "
          f"p95 {percentile(seen_to_terminal, 95):.3f} s  (terminated pod seen -> status seen)")
    for name, pid in args.pids.items():
        used = cpu_seconds(pid) - cpu_before[name]
        print(f"CPU of the {name + ':':17s}{used:.1f} s, {1000 * used / args.count:.0f} ms per Execution")
    if "local node" in args.pids:
        used = cpu_seconds(args.pids["local node"], children=True) - containers_before
        print(f"CPU of the containers:       {used:.1f} s, {1000 * used / args.count:.0f} ms per Execution "
              "(sandbox processes the local node ran and reaped)")
    print(f"CPU of this benchmark:       {me_used:.1f} s, {1000 * me_used / args.count:.0f} ms per Execution")
    print(f"CPU of the whole machine:    {machine_used:.1f} s, {1000 * machine_used / args.count:.0f} ms per "
          f"Execution ({machine_used / elapsed / (os.cpu_count() or 1):.0%} of {os.cpu_count()} cores busy, "
          f"{stolen:.1f} s stolen by the hypervisor)")
    if op:
        await asyncio.sleep(2)  # Events are posted in the background: let the last ones land.
        writes = operator_writes(op.metrics_text()) - writes_before
        print(f"operator API writes:         {writes:.0f} total, {writes / max(succeeded, 1):.2f} per successful "
              "Execution (operator metrics)")
    node_total, node_kinds = await apiserver_writes(client, log_start, agent="kubelet/")
    if node_total >= 0:
        print(f"local node API writes:       {node_total / max(succeeded, 1):.2f} per Execution: "
              f"{json.dumps(node_kinds, sort_keys=True)}")
    total, by_kind = await apiserver_writes(client, log_start)
    if total >= 0:
        print(f"operator API writes:         {total} total, {total / max(succeeded, 1):.2f} per successful "
              f"Execution (API server log): {json.dumps(by_kind, sort_keys=True)}")
    if op and op.process and args.memory_count:
        remaining = args.memory_count - args.count
        prefix_n = 0
        while remaining > 0:
            batch = min(remaining, 500)
            await run_batch(client, namespace, batch, f"m{prefix_n}", args.concurrency)
            remaining -= batch
            prefix_n += 1
        await asyncio.sleep(3)
        print(f"operator memory:             {rss_mib(op.process.pid):.0f} MiB RSS with {args.memory_count} "
              "finished Executions present")
    print(f"total bench time:            {time.monotonic() - started:.1f} s")
    await client.delete(f"/api/v1/namespaces/{namespace}")
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="a cluster to measure (default: start the local cluster)")
    parser.add_argument("--run-operator", action="store_true", help="run the operator from this checkout")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--memory-count", type=int, default=2000,
                        help="finished Executions present for the memory figure (0 to skip)")
    args = parser.parse_args()
    cluster = None
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        kubeconfig = args.kubeconfig
        if not kubeconfig:
            cluster = start_cluster_process(Path(tmp), cluster_manifests(Path(tmp)), cwd=ROOT)
            kubeconfig = cluster.kubeconfig
        op = None
        if cluster is not None or args.run_operator:
            op = OperatorProcess(kubeconfig, Path(tmp) / "operator.log", cwd=ROOT)
            op.start()
        args.pids = {}
        if op and op.process:
            args.pids["operator"] = op.process.pid
        if cluster and cluster.process:
            args.pids["API server"] = cluster.process.pid
            for child in Path(f"/proc/{cluster.process.pid}/task/{cluster.process.pid}/children").read_text().split():
                if b"localcluster\x00node" in Path(f"/proc/{child}/cmdline").read_bytes():
                    args.pids["local node"] = int(child)
        try:
            asyncio.run(bench(args, kubeconfig, op))
        finally:
            if op:
                op.stop()
            if cluster:
                stop_process(cluster.process)


if __name__ == "__main__":
    main()
