"""A storm of Executions against an ExecutionClass whose image cannot be pulled.

Shows two things the circuit breaker promises:

* the storm creates no more pods than `failureThreshold` + the half-open probes, however many
  Executions arrive once the circuit is open;
* the operator stays responsive for other classes meanwhile: Executions on a healthy class are
  timed from creation to `Succeeded`, first alone (baseline), then while the storm arrives, is
  held, and comes back when the circuit goes half-open.

With `--cold` it also shows the limit of any breaker: a storm that arrives on a *closed* circuit
is launched in full until the first failures are counted (at `pendingTimeoutSeconds`).

    python bench/storm.py                      # starts the local cluster and the operator
    python bench/storm.py --kubeconfig K       # any cluster; the operator already runs there
    python bench/storm.py --kubeconfig K --run-operator   # run the operator from this checkout

Times come from a client-side watch: an Execution's time is when its event reached the watch.
Pods are counted with a watch on the broken class's pod label from a listed resourceVersion, so a
pod that is created and deleted in between is still counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # for `bench.*`; the project and the local cluster are installed

import kopf  # noqa: E402
from bench.throughput import apiserver_writes, cluster_manifests, cpu_seconds, operator_writes, percentile, watch  # noqa: E402

from execution_operator.k8s import ApiError, KubeClient, path_for  # noqa: E402
from localcluster.testing import OperatorProcess, start_cluster_process, stop_process  # noqa: E402

API = "sandbox.dev/v1alpha1"
BROKEN_IMAGE = "registry.invalid/execution-operator/no-such-image:0.0.0"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
CLASS_LABEL = "sandbox.dev/execution-class"


@dataclass
class Track:
    created: float
    held: float | None = None
    terminal: float | None = None
    phase: str | None = None
    error_type: str | None = None


@dataclass
class Observer:
    """What the watches saw: Executions by name, pods of the broken class, its breaker states."""

    tracks: dict[str, Track] = field(default_factory=dict)
    pods: set[str] = field(default_factory=set)
    states: list[tuple[float, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_execution(self, etype: str, obj: dict[str, Any]) -> None:
        track = self.tracks.get(obj["metadata"]["name"])
        if track is None:
            return
        status = obj.get("status") or {}
        now = time.monotonic()
        error_type = (status.get("error") or {}).get("type")
        if track.held is None and error_type == "service_unavailable":
            track.held = now
        if status.get("phase") in TERMINAL and track.terminal is None:
            track.terminal, track.phase, track.error_type = now, status["phase"], error_type
            self.changed.set()

    def on_pod(self, etype: str, obj: dict[str, Any]) -> None:
        self.pods.add(obj["metadata"]["name"])

    def on_class(self, etype: str, obj: dict[str, Any]) -> None:
        state = ((obj.get("status") or {}).get("circuitBreaker") or {}).get("state") or "closed"
        if not self.states or self.states[-1][1] != state:
            self.states.append((time.monotonic(), state))
            self.changed.set()

    def state(self) -> str:
        return self.states[-1][1] if self.states else "closed"

    def half_open_rounds(self) -> int:
        return sum(1 for _, state in self.states if state == "half_open")

    async def until(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        """Wait for `predicate` to hold, woken by watch events; fail after `within` seconds."""
        deadline = time.monotonic() + within
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))


def class_body(name: str, image: str, threshold: int, open_seconds: int, pending: int,
               max_concurrent: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API, "kind": "ExecutionClass", "metadata": {"name": name},
        "spec": {
            "image": image, "maxTimeoutSeconds": 60, "pendingTimeoutSeconds": pending,
            "resources": {"defaults": {"cpu": "100m", "memory": "64Mi"}, "max": {"cpu": "1", "memory": "512Mi"}},
            "circuitBreaker": {"failureThreshold": threshold, "openSeconds": open_seconds, "successThreshold": 1},
        },
    }
    if max_concurrent:
        body["spec"]["maxConcurrent"] = max_concurrent
    return body


def execution_body(name: str, code: str, class_name: str, max_attempts: int) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Execution", "metadata": {"name": name},
            "spec": {"code": code, "executionClassName": class_name,
                     "retry": {"maxAttempts": max_attempts, "backoffSeconds": 1}}}


class Storm:
    def __init__(self, client: KubeClient, namespace: str, args: argparse.Namespace) -> None:
        self.client = client
        self.namespace = namespace
        self.args = args
        self.obs = Observer()
        self.gate = asyncio.Semaphore(args.concurrency)
        self.stop = asyncio.Event()
        self.watchers: list[asyncio.Task[None]] = []

    async def start_watches(self, broken: str) -> None:
        ex_path = path_for(API, "executions", self.namespace)
        pod_path = path_for("v1", "pods", self.namespace)
        cls_path = path_for(API, "executionclasses")
        selector = {"labelSelector": f"{CLASS_LABEL}={broken}"}
        listed = {
            "ex": await self.client.get(ex_path),
            "pod": await self.client.get(pod_path, selector),
            "cls": await self.client.get(cls_path, {"fieldSelector": f"metadata.name={broken}"}),
        }
        for item in listed["cls"].get("items") or []:
            self.obs.on_class("ADDED", item)
        for item in listed["pod"].get("items") or []:
            self.obs.on_pod("ADDED", item)

        def rv(key: str) -> dict[str, str]:
            return {"resourceVersion": listed[key]["metadata"]["resourceVersion"]}

        self.watchers = [
            asyncio.create_task(watch(self.client, ex_path, rv("ex"), self.obs.on_execution, self.stop)),
            asyncio.create_task(watch(self.client, pod_path, {**rv("pod"), **selector}, self.obs.on_pod, self.stop)),
            asyncio.create_task(watch(self.client, cls_path, {**rv("cls"), "fieldSelector": f"metadata.name={broken}"},
                                      self.obs.on_class, self.stop)),
        ]

    async def close(self) -> None:
        self.stop.set()
        for task in self.watchers:
            task.cancel()

    async def create(self, name: str, code: str, class_name: str, max_attempts: int, gated: bool = True) -> None:
        """POST one Execution; storm creates share `concurrency` slots, timed ones do not queue behind them."""
        if gated:
            async with self.gate:
                await self._post(name, code, class_name, max_attempts)
        else:
            await self._post(name, code, class_name, max_attempts)

    async def _post(self, name: str, code: str, class_name: str, max_attempts: int) -> None:
        self.obs.tracks[name] = Track(created=time.monotonic())
        await self.client.post(path_for(API, "executions", self.namespace),
                               execution_body(name, code, class_name, max_attempts))

    async def healthy_series(self, prefix: str) -> list[float]:
        """Open loop: one healthy Execution every `interval` s; latency from creation to Succeeded."""
        names = [f"{prefix}-{i:03d}" for i in range(self.args.healthy)]
        tasks = []
        for i, name in enumerate(names):
            create = self.create(name, f"result = {i}", self.args.healthy_class, 1, gated=False)
            tasks.append(asyncio.create_task(create))
            await asyncio.sleep(self.args.interval)  # the load's pacing, not synchronisation
        await asyncio.gather(*tasks)
        await self.obs.until(lambda: all(self.obs.tracks[n].terminal for n in names), 120 + len(names),
                             f"{prefix} executions to finish")
        failed = [n for n in names if self.obs.tracks[n].phase != "Succeeded"]
        if failed:
            raise RuntimeError(f"healthy Executions did not succeed: {failed}")
        return [self.obs.tracks[n].terminal - self.obs.tracks[n].created for n in names]  # type: ignore[operator]

    async def trip(self, broken: str, count: int) -> None:
        names = [f"trip-{i}" for i in range(count)]
        await asyncio.gather(*(self.create(n, "print(1)", broken, 1) for n in names))
        await self.obs.until(lambda: self.obs.state() == "open", 60 + 10 * count, "the circuit to open")

    async def storm(self, broken: str, prefix: str) -> tuple[list[str], float]:
        names = [f"{prefix}-{i:04d}" for i in range(self.args.storm)]
        started = time.monotonic()
        await asyncio.gather(*(self.create(n, "print(1)", broken, self.args.max_attempts) for n in names))
        return names, time.monotonic() - started


def summary(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50):6.3f} s   p95 {percentile(values, 95):6.3f} s   "
            f"max {max(values):6.3f} s   (n={len(values)})")


async def request_log_position(client: KubeClient) -> int:
    """Where the local cluster's request log stands (0 on a cluster without one)."""
    try:
        position: int = (await client.get("/debug/requests", {"since": "0"})).get("total", 0)
    except ApiError:
        return 0
    return position


def timeline(tracks: dict[str, Track], prefix: str, origin: float, bucket: float) -> str:
    """Median latency of the timed Executions by when they were created, to see which phase costs."""
    buckets: dict[int, list[float]] = {}
    for name, track in tracks.items():
        if name.startswith(prefix) and track.terminal is not None:
            buckets.setdefault(int((track.created - origin) // bucket), []).append(track.terminal - track.created)
    return "  ".join(f"[{k * bucket:+.0f}s] {percentile(v, 50):.2f}" for k, v in sorted(buckets.items()))


async def bench(args: argparse.Namespace, kubeconfig: str, op: OperatorProcess | None,
                pids: dict[str, int]) -> None:
    os.environ["KUBECONFIG"] = kubeconfig
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None, f"no credentials in {kubeconfig}"
    client = KubeClient(info, user_agent="bench-storm", pool_size=args.concurrency + 8)
    suffix = uuid.uuid4().hex[:6]
    namespace, broken = f"storm-{suffix}", f"storm-broken-{suffix}"
    classes = [broken]
    await client.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    await client.post(path_for(API, "executionclasses"),
                      class_body(broken, args.image, args.threshold, args.open_seconds, args.pending_timeout))
    run = Storm(client, namespace, args)
    try:
        await run.start_watches(broken)
        print(f"storm of {args.storm} Executions (maxAttempts {args.max_attempts}) on ExecutionClass {broken}: "
              f"image {args.image}, failureThreshold {args.threshold}, openSeconds {args.open_seconds}, "
              f"pendingTimeoutSeconds {args.pending_timeout}, successThreshold 1 (1 probe at a time)")
        print(f"healthy probe load: {args.healthy} Executions on class {args.healthy_class!r}, "
              f"one every {args.interval} s")
        print("machine load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + "\n")

        baseline = await run.healthy_series("base")
        print(f"healthy, no storm:          {summary(baseline)}")

        await run.trip(broken, args.threshold)
        opened_at = time.monotonic()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        writes_before = operator_writes(op.metrics_text()) if op else 0.0
        log_start = await request_log_position(client)
        during_task = asyncio.create_task(run.healthy_series("during"))
        storm_began = time.monotonic()
        storm_names, create_s = await run.storm(broken, "storm")
        await run.obs.until(lambda: all(run.obs.tracks[n].terminal for n in storm_names),
                            args.open_seconds + 300, "the storm's Executions to finish")
        storm_done = time.monotonic()
        during = await during_task
        print(f"healthy, during the storm:  {summary(during)}")
        print(f"  by creation time since the storm began ({args.bucket:.0f} s buckets): "
              + timeline(run.obs.tracks, "during-", storm_began, args.bucket))
        tracks = [run.obs.tracks[n] for n in storm_names]
        held = [t.held - t.created for t in tracks if t.held is not None]
        outcomes: dict[str, int] = {}
        for t in tracks:
            key = f"{t.phase}/{t.error_type}"
            outcomes[key] = outcomes.get(key, 0) + 1
        rounds = run.obs.half_open_rounds()
        print(f"storm created in:           {create_s:.2f} s ({args.concurrency} concurrent creates)")
        print(f"creation -> held (refused): {summary(held) if held else 'none held'}")
        print(f"storm finished after:       {storm_done - opened_at:.1f} s from the circuit opening; "
              f"outcomes {outcomes}")
        print(f"breaker states seen:        {' -> '.join(s for _, s in run.obs.states)}")
        bound = args.threshold + rounds * 1
        verdict = "within" if len(run.obs.pods) <= bound else "OVER"
        print(f"pods of the broken class:   {len(run.obs.pods)} ({verdict} the bound failureThreshold + probes = "
              f"{args.threshold} + {rounds} half-open round(s) x 1 probe = {bound})")
        for name, pid in pids.items():
            used = cpu_seconds(pid) - cpu_before[name]
            print(f"CPU of the {name} during the storm: {used:.1f} s over {storm_done - opened_at:.1f} s")
        if op:
            writes = operator_writes(op.metrics_text()) - writes_before
            print(f"operator API writes during the storm: {writes:.0f} ({writes / args.storm:.1f} per storm "
                  "Execution, healthy ones included)")
        total, by_kind = await apiserver_writes(client, log_start)
        if total >= 0:
            print(f"  by resource (API server log): {json.dumps(by_kind, sort_keys=True)}")
        print("machine load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))

        if args.cold:
            cold = f"storm-cold-{suffix}"
            classes.append(cold)
            await client.post(path_for(API, "executionclasses"),
                              class_body(cold, args.image, args.threshold, args.open_seconds, args.pending_timeout,
                                         args.cold_max_concurrent))
            cold_run = Storm(client, namespace, args)
            await cold_run.start_watches(cold)
            names, _ = await cold_run.storm(cold, "cold")
            await cold_run.obs.until(lambda: all(cold_run.obs.tracks[n].terminal for n in names),
                                     args.open_seconds + 300, "the cold storm's Executions to finish")
            await cold_run.close()
            cap = f", maxConcurrent {args.cold_max_concurrent}" if args.cold_max_concurrent else ""
            print(f"\ncold storm (circuit closed when it arrives{cap}): {len(cold_run.obs.pods)} pods for {len(names)} "
                  f"Executions; breaker states {' -> '.join(s for _, s in cold_run.obs.states)}")
    finally:
        await run.close()
        if not args.keep:
            await client.delete(f"/api/v1/namespaces/{namespace}")
            for name in classes:
                await client.delete(path_for(API, "executionclasses", name=name))
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="a cluster to measure (default: start the local cluster)")
    parser.add_argument("--run-operator", action="store_true", help="run the operator from this checkout")
    parser.add_argument("--storm", type=int, default=200, help="Executions in the storm")
    parser.add_argument("--max-attempts", type=int, default=2, help="retry.maxAttempts of the storm's Executions")
    parser.add_argument("--threshold", type=int, default=3, help="failureThreshold of the broken class")
    parser.add_argument("--open-seconds", type=int, default=10, help="openSeconds of the broken class")
    parser.add_argument("--pending-timeout", type=int, default=3, help="pendingTimeoutSeconds of the broken class")
    parser.add_argument("--image", default=BROKEN_IMAGE, help="the image that cannot be pulled")
    parser.add_argument("--healthy-class", default="default")
    parser.add_argument("--healthy", type=int, default=40, help="healthy Executions per series")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between healthy Executions")
    parser.add_argument("--bucket", type=float, default=2.5, help="seconds per bucket of the latency timeline")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent creates")
    parser.add_argument("--cold", action="store_true", help="also storm a class whose circuit is still closed")
    parser.add_argument("--cold-max-concurrent", type=int, help="maxConcurrent of the class the cold storm hits")
    parser.add_argument("--keep", action="store_true", help="keep the namespace and classes afterwards")
    args = parser.parse_args()
    cluster = None
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        kubeconfig = args.kubeconfig
        if not kubeconfig:
            cluster = start_cluster_process(Path(tmp), cluster_manifests(Path(tmp)), cwd=ROOT)
            kubeconfig = cluster.kubeconfig
        op = None
        if cluster is not None or args.run_operator:
            op = OperatorProcess(kubeconfig, Path(tmp) / "operator.log", cwd=ROOT)
            op.start()
        pids = {"operator": op.process.pid} if op and op.process else {}
        if cluster and cluster.process:
            pids["local cluster"] = cluster.process.pid
        try:
            asyncio.run(bench(args, kubeconfig, op, pids))
        finally:
            if op:
                op.stop()
            if cluster:
                stop_process(cluster.process)


if __name__ == "__main__":
    main()
