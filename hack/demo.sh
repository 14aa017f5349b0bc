#!/usr/bin/env bash
# The local cluster with the chart installed by `helm install` and the operator run beside it.
#
#   hack/demo.sh [demo]   up, then apply manifests/examples/ and show what kubectl shows (make demo);
#                         everything keeps running for the README's tour (DEMO_KEEP=0 stops it at the end)
#   hack/demo.sh up       the cluster, `helm install` of charts/execution-operator, the operator (make up)
#   hack/demo.sh operator restart the operator with the arguments of the Deployment now in the cluster
#                         (after a `helm upgrade`)
#   hack/demo.sh env      print the two export lines that point the project's kubectl, and its venv's
#                         execution-operator command and Python client, at the cluster
#   hack/demo.sh down     stop the operator and the cluster (make down; `stop` is the same)
#
# The local node runs sandbox pods but not the operator's Deployment: `python -m localcluster operator`
# runs the operator as a local process with that Deployment's container arguments and environment
# (ports moved to free ones on 127.0.0.1). HELM_ARGS adds arguments to `helm install`, e.g.
# HELM_ARGS='--set watchNamespaces={team-a}'. LOCALCLUSTER_STATE moves the state (default .localcluster).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
STATE=${LOCALCLUSTER_STATE:-$ROOT/.localcluster}
RELEASE=execution-operator
NAMESPACE=execution-operator
export KUBECONFIG=$STATE/kubeconfig
export PATH=$ROOT/.tools/bin:$PATH
export HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config HELM_DATA_HOME=$STATE/helm/data

die() { echo "demo: $*" >&2; exit 1; }

# Stop what a pid file names, if it still is ours (a stale file may name a reused pid), and wait for it.
stop_pidfile() {
  local pidfile=$1 what=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  rm -f "$pidfile"
  grep -qa "$what" "/proc/$pid/cmdline" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  stop_pidfile "$STATE/operator.pid" execution_operator
  stop_pidfile "$STATE/cluster.pid" localcluster
}

print_env() {
  echo "export KUBECONFIG=$KUBECONFIG"
  echo "export PATH=$ROOT/.tools/bin:$ROOT/.venv/bin:\$PATH"
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The operator, as the Deployment that helm installed configures it.
start_operator() {
  stop_pidfile "$STATE/operator.pid" execution_operator
  kubectl get deployment -n "$NAMESPACE" -o json \
    -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=operator" >"$STATE/deployment.json"
  local metrics liveness
  metrics=$(free_port); liveness=$(free_port)
  "$PY" -m localcluster operator --deployment "$STATE/deployment.json" \
    --metrics-port "$metrics" --liveness-port "$liveness" >"$STATE/operator.log" 2>&1 &
  echo $! >"$STATE/operator.pid"
  echo "$metrics" >"$STATE/metrics-port"
  # Ready when kopf's liveness endpoint answers: the operator has logged in and started its watches.
  "$PY" - "$liveness" "$(cat "$STATE/operator.pid")" <<'PY' || { tail -20 "$STATE/operator.log" >&2; die "the operator did not start"; }
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
  echo "    operator running with: $(sed -n 's/^localcluster operator: //p' "$STATE/operator.log" | head -n 1)"
  echo "    metrics: http://127.0.0.1:$metrics/metrics"
}

up() {
  command -v bwrap >/dev/null \
    || die "bubblewrap (bwrap) is missing: run hack/install-ci-deps.sh --local-cluster (apt-get install -y bubblewrap)"
  command -v kubectl >/dev/null && command -v helm >/dev/null || die "kubectl or helm missing: run make tools"
  down
  rm -rf "$STATE"; mkdir -p "$STATE"

  echo "==> starting the local cluster (API server emulator + local node; log: ${STATE#"$ROOT"/}/cluster.log)"
  "$PY" -m localcluster up --state-dir "$STATE/state" --port 0 --kubeconfig "$KUBECONFIG" >"$STATE/cluster.log" 2>&1 &
  echo $! >"$STATE/cluster.pid"
  for _ in $(seq 1 300); do grep -q "localcluster ready" "$STATE/cluster.log" && break; sleep 0.1; done
  grep -q "localcluster ready" "$STATE/cluster.log" || { cat "$STATE/cluster.log"; die "the cluster did not start"; }

  echo "==> helm install $RELEASE charts/execution-operator --namespace $NAMESPACE --create-namespace ${HELM_ARGS:-}"
  # shellcheck disable=SC2086  # HELM_ARGS is split into arguments on purpose
  helm install "$RELEASE" charts/execution-operator --namespace "$NAMESPACE" --create-namespace ${HELM_ARGS:-} \
    >"$STATE/helm.log" || { cat "$STATE/helm.log"; die "helm install failed"; }

  echo "==> starting the operator from the chart's Deployment (log: ${STATE#"$ROOT"/}/operator.log)"
  start_operator
}

demo() {
  [[ ${DEMO_KEEP:-1} == 1 ]] || trap down EXIT  # replaces the trap below: stop whatever the outcome
  up
  echo; echo "==> kubectl apply -f manifests/examples/"
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
  if [[ ${DEMO_KEEP:-1} == 1 ]]; then
    echo
    echo "The local cluster and the operator keep running. For the README's tour, in your shell:"
    print_env | sed 's/^/  /'
    echo "Stop them with: make down"
  fi
}

# A start that fails part-way stops what it started.
trap 'rc=$?; if ((rc != 0)) && [[ ${1:-demo} =~ ^(demo|up)$ ]]; then down; fi' EXIT

case ${1:-demo} in
  demo) demo ;;
  up)
    up
    echo; echo "The local cluster and the operator are running. In your shell:"
    print_env | sed 's/^/  /'
    echo "Stop them with: make down"
    ;;
  operator)
    [[ -f $STATE/cluster.pid ]] || die "no local cluster is running: make up"
    start_operator
    ;;
  env) print_env ;;
  down | stop) down ;;
  *) die "unknown command $1 (demo, up, operator, env, down)" ;;
esac
