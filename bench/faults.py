"""The fault-injection burst at full size: Executions under API faults, dropped watches and SIGKILLs.

Starts the local cluster and the operator from this checkout, creates COUNT Executions (a third
succeed, a third fail with a user error, a third fail once with a retryable error and then succeed)
while ~RATE of the operator's and kopf's requests fail (429 with Retry-After, 500, 409 on writes;
429/500 on reads, pod logs and status writes included), every watch is dropped every 4 s, and the
operator is SIGKILLed and restarted SIGKILLS times. Then, with the faults off, it checks each Execution
against its pods (tests/e2e/faultburst.py) and prints the figures; exit status 1 unless all are 0.

    python bench/faults.py                          # 300 Executions, 5 SIGKILLs, 10% faults
    python bench/faults.py --count 600 --sigkills 8 --rate 0.15
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from tests.e2e.faultburst import run_burst  # noqa: E402
from tests.e2e.kube import Kube  # noqa: E402
from tests.e2e.procs import OperatorProcess, start_local_cluster, stop_process  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--sigkills", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.1, help="share of the operator's requests that fail")
    parser.add_argument("--run-seconds", type=float, default=0.5, help="how long each Execution's code runs")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        cluster = start_local_cluster(Path(tmp))
        op = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log")
        op.start()
        namespace = f"faults-{uuid.uuid4().hex[:6]}"
        Kube(cluster.kubeconfig).run("create", "namespace", namespace, namespaced=False)
        try:
            figures = run_burst(Kube(cluster.kubeconfig, namespace=namespace), op, count=args.count,
                                sigkills=args.sigkills, rate=args.rate, run_seconds=args.run_seconds,
                                timeout=args.timeout)
        finally:
            op.stop()
            stop_process(cluster.process)
    print("\n".join(figures.lines()))
    return 0 if figures.clean else 1


if __name__ == "__main__":
    sys.exit(main())
