"""A burst of Executions under injected API faults and SIGKILLs of the operator, checked against the pods.

Run by `tests/e2e/test_faults.py` (a modest burst in `make test`, or >= 300 Executions and 5 SIGKILLs
when sized by E2E_FAULT_BURST and E2E_FAULT_SIGKILLS).
While the burst runs, the local API server fails a share of the operator's
requests (429 with Retry-After, 500, 409 on writes; 429/500 on reads, pods/log and executions/status
included; kopf's own list and watch requests too), watches are dropped, and the operator is SIGKILLed
and restarted. At the end, with the faults off, every Execution must be terminal; its recorded outcome
must equal what its pods really did (read from each pod: exit code, verified runner report, output,
error type); no attempt may have two pods and no pod may be unknown to its Execution's status; and the
class's circuit must never have opened (no attempt refused as `service_unavailable`, no failure counted).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml

from execution_operator.classify import sandbox_status
from execution_operator.report_parsing import parse_runner_report
from execution_operator.sandbox import label_value
from tests.e2e.kube import Kube, execution, wait_until
from tests.e2e.procs import OperatorProcess
from tests.e2e.test_restart import Kind, kinds

TERMINAL = ("Succeeded", "Failed", "Cancelled")
OPERATOR_AGENTS = ("execution-operator", "kopf/")  # User-Agent prefixes


def fault_rules(rate: float) -> list[dict[str, Any]]:
    """About `rate` of the operator's (and kopf's) requests fail, split over the answers it must survive."""
    rules: list[dict[str, Any]] = []
    for agent in OPERATOR_AGENTS:
        rules += [
            {"userAgent": agent, "method": "POST", "status": 429, "retryAfter": 1, "probability": rate * 0.3},
            {"userAgent": agent, "method": "POST", "status": 500, "probability": rate * 0.4},
            {"userAgent": agent, "method": "POST", "status": 409, "probability": rate * 0.3},
            {"userAgent": agent, "method": "PATCH", "status": 500, "probability": rate * 0.4},
            {"userAgent": agent, "method": "PATCH", "status": 429, "retryAfter": 1, "probability": rate * 0.3},
            {"userAgent": agent, "method": "PATCH", "status": 409, "probability": rate * 0.3},
            {"userAgent": agent, "method": "GET", "status": 500, "probability": rate * 0.5},
            {"userAgent": agent, "method": "GET", "status": 429, "retryAfter": 1, "probability": rate * 0.5},
        ]
    return rules


class Cluster:
    """The local API server's debug endpoints and raw reads (faster than a kubectl process per pod)."""

    def __init__(self, kubeconfig: str) -> None:
        with open(kubeconfig) as handle:
            config = yaml.safe_load(handle)
        self.server = config["clusters"][0]["cluster"]["server"].rstrip("/")
        user = (config.get("users") or [{}])[0].get("user") or {}
        self.headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        self.context = ssl._create_unverified_context() if self.server.startswith("https") else None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={**self.headers, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30, context=self.context) as response:
            text = response.read().decode()
        return json.loads(text) if text and text.lstrip()[:1] in "{[" else text

    def fault_hits(self) -> int:
        return sum(int(rule.get("hits") or 0) for rule in self.request("GET", "/debug/faults")["rules"])


@dataclass
class Figures:
    executions: int = 0
    faults_injected: int = 0
    watches_dropped: int = 0
    sigkills: int = 0
    pods: int = 0
    seconds: float = 0.0
    wrong: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"executions:        {self.executions} ({self.pods} pods) in {self.seconds:.1f} s",
            f"faults injected:   {self.faults_injected} API errors, {self.watches_dropped} watches dropped, "
            f"{self.sigkills} SIGKILLs of the operator",
            f"wrong outcomes:    {len(self.wrong)}",
            f"stuck:             {len(self.stuck)}",
            f"code run twice:    {len(self.duplicated)}",
            f"circuits opened:   {len(self.opened)}",
            *[f"  wrong: {w}" for w in self.wrong[:20]],
            *[f"  stuck: {s}" for s in self.stuck[:20]],
            *[f"  twice: {d}" for d in self.duplicated[:20]],
            *[f"  opened: {o}" for o in self.opened[:20]],
        ]

    @property
    def clean(self) -> bool:
        return not (self.wrong or self.stuck or self.duplicated or self.opened)


def run_burst(kube: Kube, op: OperatorProcess, *, count: int, sigkills: int, rate: float = 0.1,
              run_seconds: float = 0.5, timeout: float = 600.0) -> Figures:
    """Run the burst in `kube`'s namespace on a class of its own; returns the figures (never raises on them)."""
    cluster = Cluster(kube.kubeconfig)
    class_name = f"burst-{uuid.uuid4().hex[:6]}"
    kube.run("apply", "-f", "-", namespaced=False, input=json.dumps({
        "apiVersion": "sandbox.dev/v1alpha1", "kind": "ExecutionClass", "metadata": {"name": class_name},
        "spec": {"image": "ghcr.io/execution-operator/sandbox:0.1.0", "pendingTimeoutSeconds": 120,
                 "circuitBreaker": {"failureThreshold": 3, "openSeconds": 30}},
    }))
    figures = Figures()
    batch: dict[str, Kind] = {}
    for i in range(count):
        kind_name = ("ok", "bad", "flaky")[i % 3]
        batch[f"b{i:04d}-{kind_name}"] = kinds(run_seconds)[kind_name]
    manifests = [execution(name, kind.code, executionClassName=class_name, **(kind.spec or {}))
                 for name, kind in batch.items()]
    started = time.monotonic()
    cluster.request("POST", "/debug/faults", fault_rules(rate))
    stop = threading.Event()
    dropper = threading.Thread(target=_drop_watches, args=(cluster, stop, figures), daemon=True)
    dropper.start()
    try:
        for chunk in range(0, len(manifests), 50):
            kube.run("create", "-f", "-", input=yaml.safe_dump_all(manifests[chunk:chunk + 50]))
        kills_done = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = _terminal(kube, set(batch))
            if len(done) == len(batch) and kills_done >= sigkills:
                break
            if kills_done < sigkills and len(done) >= len(batch) * kills_done / (sigkills + 1):
                op.kill()
                kills_done += 1
                figures.sigkills += 1
                op.start()
            time.sleep(0.5)
    finally:
        stop.set()
        dropper.join(timeout=10)
        figures.faults_injected = cluster.fault_hits()
        cluster.request("DELETE", "/debug/faults")
    # The faults are off: whatever is not terminal within a grace period is stuck.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: len(_terminal(kube, set(batch))) == len(batch), timeout=90,
                   what="every Execution of the burst to finish", interval=1.0)
    figures.seconds = time.monotonic() - started
    figures.executions = len(batch)
    _check(kube, cluster, batch, class_name, figures)
    return figures


def _drop_watches(cluster: Cluster, stop: threading.Event, figures: Figures) -> None:
    while not stop.wait(4.0):
        with contextlib.suppress(OSError):
            figures.watches_dropped += int(cluster.request("POST", "/debug/drop-watches", {})["dropped"])


def _terminal(kube: Kube, names: set[str]) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in kube.items("executions")
            if item["metadata"]["name"] in names and (item.get("status") or {}).get("phase") in TERMINAL}


def pod_outcome(cluster: Cluster, pod: dict[str, Any]) -> dict[str, Any] | None:
    """What the pod really did, from its container's end and its whole log (None if it never ended)."""
    status = sandbox_status(pod) or {}
    terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
    if not terminated:
        return None
    meta = pod["metadata"]
    log = cluster.request("GET", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log?container=sandbox")
    report = parse_runner_report(terminated.get("message"), log if isinstance(log, str) else "",
                                 terminated.get("exitCode"))
    if report is None:
        return {"exitCode": terminated.get("exitCode"), "success": None, "output": None, "errorType": None}
    return {"exitCode": report.exit_code if report.exit_code is not None else terminated.get("exitCode"),
            "success": report.success, "output": report.output if report.success else None,
            "errorType": None if report.success else report.error_type}


def _check(kube: Kube, cluster: Cluster, batch: dict[str, Kind], class_name: str, figures: Figures) -> None:
    bodies = {item["metadata"]["name"]: item for item in kube.items("executions") if item["metadata"]["name"] in batch}
    pods = [p for p in kube.items("pods", "-l", "app.kubernetes.io/managed-by=execution-operator")
            if p["metadata"]["labels"].get("sandbox.dev/execution-class") == class_name]
    figures.pods = len(pods)
    by_attempt: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for pod in pods:
        labels = pod["metadata"]["labels"]
        by_attempt.setdefault((labels["sandbox.dev/execution"], int(labels["sandbox.dev/attempt"])), []).append(pod)
    label_of = {name: _label(bodies[name]) for name in bodies}
    for name, kind in sorted(batch.items()):
        status = (bodies.get(name) or {}).get("status") or {}
        if status.get("phase") not in TERMINAL:
            figures.stuck.append(f"{name}: {status.get('phase')}")
            continue
        history = {int(a["attempt"]): a for a in status.get("attempts") or []}
        runs = {attempt: found for (ex, attempt), found in by_attempt.items() if ex == label_of[name]}
        for attempt, found in runs.items():
            if len(found) > 1:
                figures.duplicated.append(f"{name}: attempt {attempt} has {len(found)} pods")
            if attempt not in history:
                figures.duplicated.append(f"{name}: attempt {attempt} ran a pod its status does not know")
        if any(a.get("errorType") == "service_unavailable" for a in history.values()):
            figures.opened.append(f"{name}: an attempt was refused by the circuit breaker")
        last = max(runs) if runs else None
        real = pod_outcome(cluster, runs[last][0]) if last is not None else None
        error_type = (status.get("error") or {}).get("type")
        seen = {"phase": status["phase"], "errorType": error_type, "attempt": status.get("attempt"),
                "output": status.get("output"), "exitCode": status.get("exitCode")}
        want_real = None if real is None else {
            "phase": "Succeeded" if real["success"] else "Failed", "errorType": real["errorType"],
            "attempt": last, "output": real["output"], "exitCode": real["exitCode"],
        }
        want_kind = {"phase": kind.phase, "errorType": kind.error_type, "attempt": kind.attempts}
        if want_real is None or seen != want_real:
            figures.wrong.append(f"{name}: recorded {seen}, its pod did {want_real}")
        elif {k: seen[k] for k in want_kind} != want_kind:
            figures.wrong.append(f"{name}: recorded {seen}, its code calls for {want_kind}")
    breaker = (kube.get("executionclass", class_name) or {}).get("status", {}).get("circuitBreaker") or {}
    if breaker.get("state", "closed") != "closed" or int(breaker.get("failureCount") or 0):
        figures.opened.append(f"class {class_name}: breaker {breaker}")


def _label(body: dict[str, Any]) -> str:
    return label_value(body["metadata"]["name"])
