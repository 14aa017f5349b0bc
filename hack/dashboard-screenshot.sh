#!/usr/bin/env bash
# Screenshot of the Grafana dashboard's data: the local cluster and the real operator run a mixed workload
# (successes, user errors, a retried flaky call, a class whose image cannot be pulled and trips its
# breaker, a warm pool in one namespace) while a real Prometheus (127.0.0.1, temporary storage) scrapes the operator; every panel's
# query result is drawn on the dashboard's grid and captured with headless Chromium. Grafana itself is
# not needed. SYNTHETIC=1 feeds a synthetic workload into an in-process metrics endpoint instead.
#
# Usage: hack/dashboard-screenshot.sh [OUT.png] [SECONDS]   (default docs/img/dashboard.png, 60)
# Needs prometheus and chromium (hack/install-ci-deps.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/docs/img/dashboard.png}
SECONDS_=${2:-60}
PY=${PYTHON:-$ROOT/.venv/bin/python}
MODE=(--operator)
[[ ${SYNTHETIC:-} == 1 ]] && MODE=()
export PATH="$ROOT/.tools/bin:$PATH"
exec "$PY" "$ROOT/tests/tools/promlive.py" "${MODE[@]}" --screenshot "$OUT" --seconds "$SECONDS_"
