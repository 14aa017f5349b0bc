#!/usr/bin/env bash
# The demo: start the local cluster and the operator, apply the examples, show what kubectl shows.
#   DEMO_KEEP=1 leaves the cluster and the operator running afterwards (stop them with hack/demo.sh stop).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
STATE=$ROOT/.localcluster
export KUBECONFIG=$STATE/kubeconfig
export PATH=$ROOT/.tools/bin:$PATH

stop() {
  for pidfile in "$STATE/operator.pid" "$STATE/cluster.pid"; do
    [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}
if [[ ${1:-} == stop ]]; then stop; exit 0; fi

command -v kubectl >/dev/null || { echo "demo: kubectl missing (make tools)" >&2; exit 1; }
stop
rm -rf "$STATE"; mkdir -p "$STATE"
[[ ${DEMO_KEEP:-} == 1 ]] || trap stop EXIT

echo "==> starting the local cluster (API server emulator + local node)"
"$PY" -m localcluster up --state-dir "$STATE/state" --port 0 --kubeconfig "$KUBECONFIG" >"$STATE/cluster.log" 2>&1 &
echo $! >"$STATE/cluster.pid"
for _ in $(seq 1 300); do grep -q "localcluster ready" "$STATE/cluster.log" && break; sleep 0.1; done
grep -q "localcluster ready" "$STATE/cluster.log" || { cat "$STATE/cluster.log"; echo "demo: cluster did not start" >&2; exit 1; }

echo "==> installing the CRDs and the ExecutionClasses"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null
kubectl apply -f manifests/local/classes.yaml

echo "==> starting the operator (log: .localcluster/operator.log)"
"$PY" -m execution_operator --metrics-port 18080 --liveness-port 18081 --bind-address 127.0.0.1 \
  --log-format json >"$STATE/operator.log" 2>&1 &
echo $! >"$STATE/operator.pid"

echo "==> kubectl apply -f manifests/examples/"
kubectl apply -f manifests/examples/
for ex in hello with-input; do kubectl wait "ex/$ex" --for=condition=Succeeded --timeout=120s >/dev/null; done
for ex in zero-division timeout memory-hog; do
  kubectl wait "ex/$ex" --for=condition=Succeeded=False --timeout=120s >/dev/null
done

echo; echo "==> kubectl get executions"
kubectl get executions
echo; echo "==> kubectl get ex hello -o jsonpath='{.status.output}'"
kubectl get ex hello -o jsonpath='{.status.output}'; echo
echo; echo "==> kubectl get ex zero-division -o jsonpath='{.status.error}'"
kubectl get ex zero-division -o jsonpath='{.status.error}'; echo
if [[ ${DEMO_KEEP:-} == 1 ]]; then
  echo; echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG; stop it with: hack/demo.sh stop"
fi
