#!/usr/bin/env bash
# Copy the repository's CRDs (crds/*.yaml, the single source) into the Helm chart's crds/ directory,
# byte for byte, and drop chart copies whose source is gone. tests/tools/test_helm_chart.py fails on drift.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC="$ROOT/crds"
DST="$ROOT/charts/execution-operator/crds"
mkdir -p "$DST"
shopt -s nullglob
for f in "$DST"/*.yaml; do
  [[ -e "$SRC/$(basename "$f")" ]] || { rm -f "$f"; echo "sync-crds: removed $(basename "$f")"; }
done
for f in "$SRC"/*.yaml; do
  if ! cmp -s "$f" "$DST/$(basename "$f")"; then
    cp "$f" "$DST/$(basename "$f")"
    echo "sync-crds: updated $(basename "$f")"
  fi
done
