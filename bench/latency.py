"""Latency of one Execution, create -> terminal status, through a warm pool and through a cold pod.

Sends N trivial Executions one after another, as an agent would (each created once the previous one is
terminal), alternating between a namespace with a WarmPool of the class and one without, so both paths
see the same machine load; then a burst of B Executions at once against a pool of P, and the same burst
cold. Prints p50/p95/max per path, their ratio, burst throughput, the operator's API writes per
Execution of each path, the machine's load, and a last line

    SUMMARY warm_p50_ms=N warm_p95_ms=N cold_p50_ms=N ratio=N

    python bench/latency.py                    # starts the local cluster and the operator
    python bench/latency.py --kubeconfig K     # any cluster where the operator runs

Times are client-side: from sending the create to the watch event that shows the terminal phase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import kopf  # noqa: E402
from bench.throughput import (  # noqa: E402
    API,
    cluster_manifests,
    machine_busy_seconds,
    percentile,
    watch,
)

from execution_operator.k8s import ApiError, KubeClient, path_for  # noqa: E402
from localcluster.testing import OperatorProcess, start_cluster_process, stop_process  # noqa: E402

CODE = "result = 1 + 1\n"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


class Waiter:
    """Terminal phases of Executions in one namespace, from one watch."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.events: dict[str, asyncio.Event] = {}
        self.bodies: dict[str, dict[str, Any]] = {}
        #: When each Execution was first seen Running, and when created (monotonic seconds).
        self.running: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listed = await self.client.get(path_for(API, "executions", self.namespace))
        self.task = asyncio.create_task(watch(self.client, path_for(API, "executions", self.namespace),
                                              {"resourceVersion": listed["metadata"]["resourceVersion"]},
                                              self._on_event, self.stop))

    def _on_event(self, etype: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("status") or {}).get("phase") == "Running":
            self.running.setdefault(name, time.monotonic())
        if (obj.get("status") or {}).get("phase") in TERMINAL and name not in self.bodies:
            self.bodies[name] = obj
            self.events.setdefault(name, asyncio.Event()).set()

    async def run(self, name: str, limit: float = 120) -> tuple[float, dict[str, Any]]:
        """Create one Execution and wait for its terminal status; (seconds, body)."""
        event = self.events.setdefault(name, asyncio.Event())
        body = {"apiVersion": API, "kind": "Execution", "metadata": {"name": name}, "spec": {"code": CODE}}
        started = self.created[name] = time.monotonic()
        await self.client.post(path_for(API, "executions", self.namespace), body)
        await asyncio.wait_for(event.wait(), limit)
        return time.monotonic() - started, self.bodies[name]

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            self.task.cancel()


async def namespace(client: KubeClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await client.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


async def make_pool(client: KubeClient, ns: str, replicas: int, class_name: str, limit: float = 300) -> None:
    pool = {"apiVersion": API, "kind": "WarmPool", "metadata": {"name": "bench"},
            "spec": {"executionClassName": class_name, "replicas": replicas}}
    await client.post(path_for(API, "warmpools", ns), pool)
    await wait_pool_ready(client, ns, replicas, limit)


async def wait_pool_ready(client: KubeClient, ns: str, replicas: int, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = await client.get(path_for(API, "warmpools", ns, "bench"))
        if int((body.get("status") or {}).get("readyReplicas") or 0) >= replicas:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pool in {ns} not ready with {replicas} pods after {limit}s")


async def log_offset(client: KubeClient) -> int | None:
    try:
        return int((await client.get("/debug/requests", {"since": "0"})).get("total", 0))
    except ApiError:
        return None


async def writes_in(client: KubeClient, since: int | None, ns: str) -> tuple[int, dict[str, int]] | None:
    """Operator writes in one namespace since a request-log offset (local cluster only)."""
    if since is None:
        return None
    try:
        log = await client.get("/debug/requests", {"since": str(since)})
    except ApiError:
        return None
    by_kind: dict[str, int] = {}
    for rec in log.get("items", []):
        if rec.get("user_agent", "").startswith("execution-operator") and rec.get("namespace") == ns and \
                rec.get("verb") in ("create", "update", "patch", "delete"):
            key = f"{rec['verb']} {rec.get('resource')}{'/' + rec['subresource'] if rec.get('subresource') else ''}"
            if rec.get("code", 200) >= 300:
                key += f" ({rec['code']})"
            by_kind[key] = by_kind.get(key, 0) + 1
    return sum(by_kind.values()), by_kind


def figures(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{label:5s} n={len(ms):3d}  p50 {percentile(ms, 50):7.1f} ms  p95 {percentile(ms, 95):7.1f} ms  "
            f"max {max(ms) if ms else float('nan'):7.1f} ms")


async def burst(client: KubeClient, waiter: Waiter, count: int, prefix: str) -> tuple[float, int, int]:
    """`count` Executions created at once: (seconds first create -> last terminal, succeeded, warm)."""
    started = time.monotonic()
    results = await asyncio.gather(*(waiter.run(f"{prefix}-{i:04d}", limit=300) for i in range(count)))
    elapsed = time.monotonic() - started
    succeeded = sum(1 for _, body in results if body["status"]["phase"] == "Succeeded")
    warm = sum(1 for _, body in results if body["status"].get("launch") == "warm")
    return elapsed, succeeded, warm


async def bench(args: argparse.Namespace, kubeconfig: str) -> None:
    os.environ["KUBECONFIG"] = kubeconfig
    client = KubeClient(kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()), user_agent="bench",
                        pool_size=64)
    load_before = os.getloadavg()
    busy_before, stolen_before = machine_busy_seconds()
    wall_before = time.monotonic()
    warm_ns, cold_ns = await namespace(client, "lat-warm"), await namespace(client, "lat-cold")
    await make_pool(client, warm_ns, args.pool_size, args.execution_class)
    warm_wait, cold_wait = Waiter(client, warm_ns), Waiter(client, cold_ns)
    await warm_wait.start()
    await cold_wait.start()
    offset = await log_offset(client)
    warm: list[float] = []
    cold: list[float] = []
    misses = 0
    for i in range(args.count):
        seconds, body = await warm_wait.run(f"w-{i:04d}")
        if body["status"].get("launch") == "warm":
            warm.append(seconds)
        else:
            misses += 1
        seconds, body = await cold_wait.run(f"c-{i:04d}")
        cold.append(seconds)
    await asyncio.sleep(3)  # the last refill and the coalesced pool status write land
    warm_writes = await writes_in(client, offset, warm_ns)
    cold_writes = await writes_in(client, offset, cold_ns)
    print(f"sequential Executions, create -> terminal status ({args.count} per path, alternating):")
    print("  " + figures("warm", warm) + f"  ({misses} of {args.count} found the pool empty and ran cold)")
    print("  " + figures("cold", cold))
    ratio = percentile(cold, 50) / percentile(warm, 50) if warm else float("nan")
    print(f"  cold/warm at p50: {ratio:.1f}x")
    names = [n for n, b in warm_wait.bodies.items() if b["status"].get("launch") == "warm" and n in warm_wait.running]
    to_running = [warm_wait.running[n] - warm_wait.created[n] for n in names]
    print(f"  warm stages: create -> Running seen p50 {percentile(to_running, 50) * 1000:.0f} ms (claim, handover, "
          f"status write); Running -> terminal p50 "
          f"{percentile([t - r for t, r in zip(warm, to_running, strict=False)], 50) * 1000:.0f} ms (the code, "
          "the container's end, the node's report, the log read, the terminal status write)")
    for label, counted, n in (("warm", warm_writes, args.count), ("cold", cold_writes, args.count)):
        if counted is not None:
            total, kinds = counted
            print(f"  operator API writes per {label} Execution: {total / n:.2f}  {kinds}")

    burst_warm_ns, burst_cold_ns = await namespace(client, "lat-bw"), await namespace(client, "lat-bc")
    await make_pool(client, burst_warm_ns, args.burst_pool, args.execution_class)
    bw, bc = Waiter(client, burst_warm_ns), Waiter(client, burst_cold_ns)
    await bw.start()
    await bc.start()
    warm_elapsed, warm_ok, warm_claimed = await burst(client, bw, args.burst, "b")
    cold_elapsed, cold_ok, _ = await burst(client, bc, args.burst, "b")
    print(f"burst of {args.burst} at once:")
    print(f"  pool of {args.burst_pool}: {warm_ok}/{args.burst} succeeded, {warm_claimed} warm, "
          f"{warm_elapsed:.1f} s -> {args.burst / warm_elapsed:.1f} executions/s")
    print(f"  no pool:     {cold_ok}/{args.burst} succeeded, {cold_elapsed:.1f} s -> "
          f"{args.burst / cold_elapsed:.1f} executions/s")
    busy_after, stolen_after = machine_busy_seconds()
    wall = time.monotonic() - wall_before
    cores = os.cpu_count() or 1
    print(f"machine: load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on {cores} cores; "
          f"{(busy_after - busy_before) / wall / cores:.0%} busy during the run, "
          f"{stolen_after - stolen_before:.1f} s stolen by the hypervisor")
    for waiter in (warm_wait, cold_wait, bw, bc):
        await waiter.close()
    for ns in (warm_ns, cold_ns, burst_warm_ns, burst_cold_ns):
        await client.delete(f"/api/v1/namespaces/{ns}")
    await client.close()
    print(f"SUMMARY warm_p50_ms={percentile(warm, 50) * 1000:.0f} warm_p95_ms={percentile(warm, 95) * 1000:.0f} "
          f"cold_p50_ms={percentile(cold, 50) * 1000:.0f} ratio={ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="a cluster to measure (default: start the local cluster)")
    parser.add_argument("--count", type=int, default=30, help="sequential Executions per path")
    parser.add_argument("--pool-size", type=int, default=3, help="replicas of the sequential run's pool")
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--burst-pool", type=int, default=10)
    parser.add_argument("--execution-class", default="default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cluster = op = None
        kubeconfig = args.kubeconfig
        if not kubeconfig:
            cluster = start_cluster_process(Path(tmp), cluster_manifests(Path(tmp)), cwd=ROOT)
            kubeconfig = cluster.kubeconfig
            op = OperatorProcess(kubeconfig, Path(tmp) / "operator.log", cwd=ROOT)
            op.start()
        try:
            asyncio.run(bench(args, kubeconfig))
        finally:
            if op:
                op.stop()
            if cluster:
                stop_process(cluster.process)


if __name__ == "__main__":
    main()
