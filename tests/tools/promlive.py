"""A real Prometheus on 127.0.0.1 scraping the operator's metrics, plus a synthetic workload and a renderer.

Used by tests/tools/test_dashboard_live.py and, as a program, by hack/dashboard-screenshot.sh:

    python tests/tools/promlive.py --screenshot docs/img/dashboard.png [--seconds 40]

which feeds synthetic samples into an in-process metrics endpoint, lets Prometheus scrape it, renders every
dashboard panel's query result (range query, variables substituted) as an HTML page laid out like the
Grafana dashboard, and screenshots it with headless Chromium. There is no Grafana here; the page draws the
very numbers Prometheus returns for the dashboard's own queries.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import math
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from execution_operator import dashboard as dash  # noqa: E402
from execution_operator.metrics import OperatorMetrics, start_metrics_server  # noqa: E402

CLASSES = ("default", "data-processing")
NAMESPACES = ("team-a", "team-b")
FAIL_TYPES = ("value_error", "timeout", "oom", "image_pull_error", "killed", "syntax_error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def substitute(expr: str, rate_interval: str = "10s") -> str:
    """Replace the dashboard variables the way Grafana would with "All" selected."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r"\$\{?(namespace|class)\}?", ".*", expr)


class Workload:
    """Synthetic operator activity: terminal executions, retries, breaker cycles, dead letters, API calls."""

    def __init__(self, metrics: OperatorMetrics, seed: int = 7, period: float = 0.1) -> None:
        self.metrics = metrics
        self.rng = random.Random(seed)
        self.period = period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="synthetic-workload", daemon=True)
        self._breaker: dict[str, str] = {}
        self._level: dict[str, int] = {}

    def __enter__(self) -> Workload:
        self.seed_series()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def seed_series(self) -> None:
        """One sample of every family, so each series exists from the first scrape."""
        m = self.metrics
        m.set_info("synthetic")
        for cls in CLASSES:
            m.set_breaker_state(cls, "closed")
            m.record_retry(cls, "killed")
            for phase in ("Pending", "Running", "Retrying"):
                m.set_in_flight(cls, phase, 0)
        for ns in NAMESPACES:
            m.record_dead_letter(ns, CLASSES[0], "image_pull_error")
            m.set_dead_letters_present(ns, 1)
        m.record_reconcile_error("Execution")
        m.record_watch_restart("pods")
        m.observe_api_request("create", 201, 0.02)

    def _breaker_cycle(self, cls: str, now: float) -> str:
        """data-processing cycles closed (5 s) -> open (3 s) -> half_open (1.5 s); default stays closed."""
        if cls != "data-processing":
            return "closed"
        t = now % 9.5
        return "closed" if t < 5 else "open" if t < 8 else "half_open"

    def _launch(self, cls: str) -> None:
        """One launch: claimed from a warm pool, or cold after a miss or a failed handover."""
        m, rng = self.metrics, self.rng
        if rng.random() < 0.6:
            m.record_launch_latency(cls, rng.uniform(0.02, 0.12), "warm")
            m.record_warm_claim(cls, "hit")
        else:
            m.record_launch_latency(cls, rng.uniform(0.3, 2.0) if cls == "default" else rng.uniform(1, 8))
            m.record_warm_claim(cls, "miss" if rng.random() < 0.9 else "handover_failed")

    def tick(self, now: float) -> None:
        m, rng = self.metrics, self.rng
        for _ in range(rng.randint(1, 4)):
            ns, cls = rng.choice(NAMESPACES), rng.choice(CLASSES)
            roll = rng.random()
            if roll < 0.75:
                m.record_terminal(ns, cls, "succeeded", None, rng.lognormvariate(0.0, 1.0))
            elif roll < 0.78:
                m.record_terminal(ns, cls, "cancelled", "cancelled", rng.uniform(0.1, 5))
            else:
                et = rng.choice(FAIL_TYPES)
                m.record_terminal(ns, cls, "failed", et, rng.uniform(0.05, 30))
                if rng.random() < 0.5:
                    m.record_dead_letter(ns, cls, et)
            self._launch(cls)
            if rng.random() < 0.1:
                m.record_retry(cls, rng.choice(("killed", "image_pull_error", "evicted")))
        for ns in NAMESPACES:
            m.set_warm_pool_pods(ns, "default", "ready", rng.randint(0, 5))
            m.set_warm_pool_pods(ns, "default", "starting", rng.randint(0, 2))
        for cls in CLASSES:
            for phase, hi in (("Pending", 6), ("Running", 12), ("Retrying", 3)):
                key = f"{cls}/{phase}"
                self._level[key] = min(hi, max(0, self._level.get(key, hi // 2) + rng.choice((-1, 0, 0, 1))))
                m.set_in_flight(cls, phase, self._level[key])
            state = self._breaker_cycle(cls, now)
            if self._breaker.get(cls) != state:
                if cls in self._breaker:
                    m.record_breaker_transition(cls, state)
                m.set_breaker_state(cls, state)
                self._breaker[cls] = state
        for ns in NAMESPACES:
            key = f"dl/{ns}"
            self._level[key] = max(0, self._level.get(key, 5) + rng.choice((-1, 0, 0, 0, 1, 1)))
            m.set_dead_letters_present(ns, self._level[key])
        for _ in range(rng.randint(3, 8)):
            verb = rng.choice(("get", "list", "patch", "patch", "create", "delete", "watch"))
            code = rng.choices((200, 201, 409, 404, 500), weights=(80, 10, 5, 3, 2))[0]
            m.observe_api_request(verb, code, rng.lognormvariate(-4.0, 0.8))
        if rng.random() < 0.05:
            m.record_reconcile_error(rng.choice(("Execution", "DeadLetter")))
        if rng.random() < 0.02:
            m.record_watch_restart(rng.choice(("pods", "executions")))

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.tick(time.time())


class Prometheus:
    """A Prometheus server process on a free loopback port with temporary storage."""

    def __init__(
        self,
        targets: list[str],
        binary: str = "prometheus",
        rule_files: list[Path] | None = None,
        scrape_interval: str = "1s",
    ) -> None:
        self.binary = binary
        self.targets = targets
        self.rule_files = rule_files or []
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="prom-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        tmp = Path(self._tmp.name)
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": "execution-operator-metrics",
                    "honor_labels": True,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(self._ready, 30, "Prometheus did not become ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
        self._tmp.cleanup()

    def logs(self) -> str:
        return (Path(self._tmp.name) / "prometheus.log").read_text(errors="replace")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Prometheus exited:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @staticmethod
    def wait_for(cond: Any, timeout: float, message: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(message)
            time.sleep(interval)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = series.get("values") or [series.get("value")]
        for v in values:
            if v and math.isfinite(float(v[1])):
                return True
    return False


@contextlib.contextmanager
def live_stack(prometheus: str, rule_files: list[Path] | None = None) -> Iterator[tuple[Prometheus, Workload]]:
    """Metrics endpoint + synthetic workload + Prometheus scraping it; everything stopped on exit."""
    metrics = OperatorMetrics()
    server, thread = start_metrics_server(port=0, addr="127.0.0.1", metrics=metrics)
    try:
        with (
            Workload(metrics) as workload,
            Prometheus([f"127.0.0.1:{server.server_port}"], binary=prometheus, rule_files=rule_files) as prom,
        ):
            prom.wait_for(prom.targets_up, 30, "metrics target never came up")
            yield prom, workload
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- Rendering ----------------------------------------------------------------------------------------------

_COLORS = ("#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffb357", "#96d98d")
_CELL_W, _CELL_H = 56, 34  # pixels per Grafana grid column / row unit


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def _svg_timeseries(series: list[tuple[str, list[tuple[float, float]]]], w: int, h: int, unit: str) -> str:
    pts = [(t, v) for _, vals in series for t, v in vals if math.isfinite(v)]
    if not pts:
        return f'<svg width="{w}" height="{h}"><text x="10" y="20" fill="#ccc">No data</text></svg>'
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    lo, hi = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    hi = hi if hi > lo else lo + 1
    pad_l, pad_b, legend_h = 52, 18, 16 * min(len(series), 4)
    ph = h - pad_b - legend_h - 6
    pw = w - pad_l - 8

    def sx(t: float) -> float:
        return pad_l + (t - t0) / ((t1 - t0) or 1) * pw

    def sy(v: float) -> float:
        return 4 + ph - (v - lo) / (hi - lo) * ph

    parts = [f'<svg width="{w}" height="{h}" font-family="DejaVu Sans" font-size="10">']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = sy(v)
        parts.append(f'<line x1="{pad_l}" x2="{w - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#2c3235"/>')
        parts.append(f'<text x="{pad_l - 4}" y="{y + 3:.1f}" fill="#9fa7b3" text-anchor="end">'
                     f"{_fmt(v, unit)}</text>")  # fmt: skip
    for i, (_name, vals) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        path = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in vals if math.isfinite(v))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
    for i, (name, _vals) in enumerate(series[:4]):
        y = h - legend_h + 12 + 16 * i - 4
        parts.append(f'<rect x="{pad_l}" y="{y - 8}" width="10" height="3" fill="{_COLORS[i % len(_COLORS)]}"/>')
        parts.append(f'<text x="{pad_l + 14}" y="{y - 4}" fill="#ccccdc">{html.escape(name)}</text>')
    if len(series) > 4:
        parts.append(f'<text x="{w - 10}" y="{h - 4}" fill="#9fa7b3" text-anchor="end">'
                     f"+{len(series) - 4} more</text>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{v * 100:.0f}%"
    suffix = {"s": "s", "ops": "/s", "reqps": "/s"}.get(unit, "")
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k{suffix}"
    return f"{v:.2g}{suffix}" if abs(v) < 10 else f"{v:.0f}{suffix}"


def _state_timeline(series: list[tuple[str, list[tuple[float, float]]]], w: int, h: int) -> str:
    colors = {0: "#73bf69", 1: "#f2cc0c", 2: "#f2495c"}
    names = {0: "closed", 1: "half-open", 2: "open"}
    pts = [t for _, vals in series for t, _ in vals]
    if not pts:
        return f'<svg width="{w}" height="{h}"><text x="10" y="20" fill="#ccc">No data</text></svg>'
    t0, t1 = min(pts), max(pts)
    pad_l = 110
    row_h = min(36, (h - 24) / max(len(series), 1))
    parts = [f'<svg width="{w}" height="{h}" font-family="DejaVu Sans" font-size="11">']
    for i, (name, vals) in enumerate(series):
        y = 4 + i * (row_h + 4)
        parts.append(f'<text x="4" y="{y + row_h / 2 + 4:.1f}" fill="#ccccdc">{html.escape(name)}</text>')
        for j, (t, v) in enumerate(vals):
            t_next = vals[j + 1][0] if j + 1 < len(vals) else t1
            x = pad_l + (t - t0) / ((t1 - t0) or 1) * (w - pad_l - 8)
            x2 = pad_l + (t_next - t0) / ((t1 - t0) or 1) * (w - pad_l - 8)
            c = colors.get(int(v), "#888")
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(x2 - x, 1):.1f}" height="{row_h:.1f}" fill="{c}"/>'
            )
    for k, (state, c) in enumerate(colors.items()):
        parts.append(f'<rect x="{pad_l + k * 90}" y="{h - 14}" width="10" height="10" fill="{c}"/>')
        parts.append(f'<text x="{pad_l + k * 90 + 14}" y="{h - 5}" fill="#ccccdc">{names[state]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(prom: Prometheus, start: float, end: float, step: float = 1.0,
                source: str = "synthetic operator workload") -> str:
    """The dashboard's panels laid out on its grid, each drawn from its own queries' range results."""
    board = dash.build_dashboard()
    cells = []
    for panel in board["panels"]:
        g = panel["gridPos"]
        x, y, w, h = g["x"] * _CELL_W, g["y"] * _CELL_H, g["w"] * _CELL_W, g["h"] * _CELL_H
        if panel["type"] == "row":
            cells.append(f'<div class="row" style="left:{x}px;top:{y}px;width:{w}px">'
                         f"{html.escape(panel['title'])}</div>")  # fmt: skip
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series: list[tuple[str, list[tuple[float, float]]]] = []
        for target in panel["targets"]:
            for s in prom.query_range(substitute(target["expr"]), start, end, step):
                vals = [(float(t), float(v)) for t, v in s["values"]]
                series.append((_legend(target["legendFormat"], s["metric"]), vals))
        body_w, body_h = w - 16, h - 36
        if panel["type"] == "stat":
            last = [v for _, vals in series for _, v in vals[-1:] if math.isfinite(v)]
            body = f'<div class="stat">{_fmt(last[0], unit) if last else "No data"}</div>'
        elif panel["type"] == "state-timeline":
            body = _state_timeline(series, body_w, body_h)
        else:
            body = _svg_timeseries(series, body_w, body_h, unit)
        cells.append(
            f'<div class="panel" style="left:{x}px;top:{y}px;width:{w - 6}px;height:{h - 6}px">'
            f'<div class="title">{html.escape(panel["title"])}</div>{body}</div>'
        )
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"]) * _CELL_H
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(board["title"])}</title>
<style>
body {{ background:#111217; color:#ccccdc; font-family:'DejaVu Sans',sans-serif; margin:0; }}
header {{ padding:10px 16px; font-size:16px; border-bottom:1px solid #2c3235; }}
header small {{ color:#9fa7b3; margin-left:12px; font-size:11px; }}
.grid {{ position:relative; margin:10px; height:{height}px; }}
.panel {{ position:absolute; background:#181b1f; border:1px solid #2c3235; border-radius:3px; padding:4px 8px; }}
.title {{ font-size:12px; font-weight:bold; margin:2px 0 6px; }}
.row {{ position:absolute; font-size:14px; font-weight:bold; padding-top:8px; }}
.stat {{ font-size:48px; color:#73bf69; text-align:center; margin-top:50px; }}
</style></head><body>
<header>{html.escape(board["title"])}<small>datasource = Prometheus (loopback), namespace = All, class = All;
data: {html.escape(source)}; drawn from Prometheus query_range results of the dashboard's queries</small>
</header><div class="grid">{"".join(cells)}</div></body></html>"""


def page_height() -> int:
    """Pixels needed to show every panel of the dashboard (header and margins included)."""
    panels = dash.build_dashboard()["panels"]
    return max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * _CELL_H + 80


def screenshot(html_path: Path, png_path: Path, width: int = 1400, height: int | None = None) -> None:
    height = height or page_height()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise RuntimeError("chromium not installed (hack/install-ci-deps.sh)")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", f"--window-size={width},{height}",
                f"--screenshot={png_path}", html_path.as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


OPERATOR_WORKLOAD = {
    "ok": "print('hello')\nresult = {'ok': True}",
    "value-error": "raise ValueError('bad row')",
    "division": "1 / 0",
    "flaky": "import os\nif os.environ['SANDBOX_ATTEMPT'] == '1':\n    raise ConnectionError('flaky upstream')",
    "slow": "import time\ntime.sleep(3)",
}


@contextlib.contextmanager
def operator_stack(prometheus: str, seconds: float) -> Iterator[Prometheus]:
    """The local cluster, the real operator, Prometheus scraping it, and a mixed workload of Executions
    (successes, user errors, a retried flaky call, a class with a broken image that trips its breaker, and
    a warm pool in one namespace)."""
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repo root
    from tests.e2e.kube import Kube
    from tests.e2e.procs import OperatorProcess, start_local_cluster, stop_process

    with tempfile.TemporaryDirectory(prefix="dash-") as tmp:
        cluster = start_local_cluster(Path(tmp))
        op = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log")
        try:
            op.start()
            kube = Kube(cluster.kubeconfig)
            broken = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "ExecutionClass",
                      "metadata": {"name": "broken-registry"},
                      "spec": {"image": "registry.invalid/sandbox:missing", "pendingTimeoutSeconds": 2,
                               "circuitBreaker": {"failureThreshold": 2, "openSeconds": 8, "successThreshold": 1}}}
            kube.run("apply", "-f", "-", input=json.dumps(broken), namespaced=False)
            for team in ("team-a", "team-b"):
                kube.run("create", "namespace", team, namespaced=False)
            # team-a's Executions of the default class claim warm pods; a pool smaller than each round's
            # demand also shows misses that fall back to a cold launch.
            pool = {"apiVersion": "sandbox.dev/v1alpha1", "kind": "WarmPool",
                    "metadata": {"name": "default", "namespace": "team-a"},
                    "spec": {"executionClassName": "default", "replicas": 3}}
            kube.run("apply", "-f", "-", input=json.dumps(pool), namespaced=False)
            with Prometheus([f"127.0.0.1:{op.metrics_port}"], binary=prometheus) as prom:
                prom.wait_for(prom.targets_up, 30, "operator metrics target never came up")
                deadline = time.monotonic() + seconds
                round_ = 0
                while time.monotonic() < deadline:
                    items = []
                    for team in ("team-a", "team-b"):
                        for kind, code in OPERATOR_WORKLOAD.items():
                            items.append({"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution",
                                          "metadata": {"name": f"{kind}-{uuid.uuid4().hex[:6]}", "namespace": team},
                                          "spec": {"code": code, "retry": {"maxAttempts": 2, "backoffSeconds": 1}}})
                        if round_ % 2 == 0:
                            items.append({"apiVersion": "sandbox.dev/v1alpha1", "kind": "Execution",
                                          "metadata": {"name": f"pull-{uuid.uuid4().hex[:6]}", "namespace": team},
                                          "spec": {"code": "print(1)", "executionClassName": "broken-registry"}})
                    kube.run("create", "-f", "-", input="\n---\n".join(json.dumps(i) for i in items),
                             namespaced=False)
                    round_ += 1
                    time.sleep(3)  # pacing the workload, not synchronising
                yield prom
        finally:
            op.stop()
            stop_process(cluster.process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG to write")
    parser.add_argument("--html", type=Path, help="also keep the rendered HTML here")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to collect samples")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    parser.add_argument("--operator", action="store_true",
                        help="scrape the real operator on the local cluster running a mixed workload")
    args = parser.parse_args(argv)
    if args.operator:
        start = time.time()
        with operator_stack(args.prometheus, args.seconds) as prom:
            page = render_html(prom, start, time.time(), step=2.0,
                               source="the real operator on the local cluster, mixed workload")
    else:
        with live_stack(args.prometheus) as (prom, _workload):
            start = time.time()
            time.sleep(args.seconds)  # collecting data for the picture, not synchronising
            page = render_html(prom, start, time.time())
    with tempfile.TemporaryDirectory() as tmp:
        html_path = args.html or Path(tmp) / "dashboard.html"
        html_path.write_text(page, encoding="utf-8")
        screenshot(html_path, args.screenshot)
    print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
