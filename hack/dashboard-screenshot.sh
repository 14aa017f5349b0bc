#!/usr/bin/env bash
# Screenshot of the Grafana dashboard's data: a real Prometheus (127.0.0.1, temporary storage) scrapes the
# operator's metrics endpoint fed by a synthetic workload; every panel's query result is drawn on the
# dashboard's grid and captured with headless Chromium. Grafana itself is not needed.
#
# Usage: hack/dashboard-screenshot.sh [OUT.png] [SECONDS]   (default docs/img/dashboard.png, 60)
# Needs prometheus and chromium (hack/install-ci-deps.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/docs/img/dashboard.png}
SECONDS_=${2:-60}
PY=${PYTHON:-$ROOT/.venv/bin/python}
exec "$PY" "$ROOT/tests/tools/promlive.py" --screenshot "$OUT" --seconds "$SECONDS_"
