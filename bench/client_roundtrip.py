"""Round trip of `client.run("result = 1")` and the client's own CPU per call.

Runs N sequential calls with one `Client` (after a few warm-up calls that are not counted) and prints
p50/p95 of the wall time from the call to its returned result, and the CPU this process (the client:
its caller thread and its I/O thread) spent per call. The cluster and the operator run in other
processes, so their CPU is not in that figure.

    python bench/client_roundtrip.py                    # starts the local cluster and the operator
    python bench/client_roundtrip.py --kubeconfig K     # any cluster where the operator runs
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # for `bench.*`; the project and the local cluster are installed

from bench.throughput import cluster_manifests, percentile  # noqa: E402

from execution_operator.client import Client  # noqa: E402
from localcluster.testing import OperatorProcess, start_cluster_process, stop_process  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(kubeconfig: str, namespace: str | None, count: int, warmup: int) -> None:
    with Client(namespace, kubeconfig=kubeconfig) as client:
        for _ in range(warmup):
            client.run("result = 1")
        walls: list[float] = []
        cpu_before = cpu_seconds()
        for _ in range(count):
            started = time.perf_counter()
            result = client.run("result = 1")
            walls.append(time.perf_counter() - started)
            assert result.output == 1, result
        cpu = cpu_seconds() - cpu_before
    print(f"client.run('result = 1'), {count} sequential calls (after {warmup} warm-up calls):")
    print(f"  round trip:        p50 {percentile(walls, 50) * 1000:.0f} ms   p95 {percentile(walls, 95) * 1000:.0f} ms"
          f"   max {max(walls) * 1000:.0f} ms")
    print(f"  client CPU / call: {cpu / count * 1000:.1f} ms (user + system of this process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="a cluster to measure (default: start the local cluster)")
    parser.add_argument("--namespace", help="default: the kubeconfig context's namespace")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.kubeconfig:
        measure(args.kubeconfig, args.namespace, args.count, args.warmup)
        return
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cluster = start_cluster_process(Path(tmp), cluster_manifests(Path(tmp)), cwd=ROOT)
        op = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log", cwd=ROOT)
        try:
            op.start()
            measure(cluster.kubeconfig, args.namespace, args.count, args.warmup)
        finally:
            op.stop()
            stop_process(cluster.process)


if __name__ == "__main__":
    main()
