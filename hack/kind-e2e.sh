#!/usr/bin/env bash
# End-to-end tier on a kind cluster: build the three images, load them into kind, install the Helm chart,
# and run tests/e2e against that cluster (E2E_KUBECONFIG). Needs Docker and kind; helm and kubectl come
# from hack/get-tools.sh. CI runs it in .github/workflows/e2e-kind.yaml.
#
# Usage: hack/kind-e2e.sh [pytest args...]
#   KIND_CLUSTER   cluster name (default execution-operator-e2e); created when missing, kept afterwards
#   KEEP_CLUSTER=0 delete the cluster at the end
#   TAG            image tag (default: the chart's appVersion, which the chart's ExecutionClasses use)
#   SKIP_BUILD=1   reuse images already built with TAG
#   LATENCY_BENCH=1 after the suite, bench/latency.py against the cluster (LATENCY_ARGS: its arguments)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CLUSTER=${KIND_CLUSTER:-execution-operator-e2e}
NAMESPACE=execution-operator
REGISTRY=ghcr.io/execution-operator
TAG=${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/execution-operator/Chart.yaml)}
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
KUBECONFIG_E2E="$WORK/kubeconfig"

log() { echo "kind-e2e: $*" >&2; }
die() { log "$*"; exit 1; }
cleanup() {
  if [[ "${KEEP_CLUSTER:-1}" == "0" ]]; then kind delete cluster --name "$CLUSTER" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v docker >/dev/null || die "docker is required"
command -v kind >/dev/null || die "kind is required (https://kind.sigs.k8s.io)"
"$ROOT/hack/get-tools.sh" "$ROOT/.tools/bin" >/dev/null
export PATH="$ROOT/.tools/bin:$PATH"

# 1. Cluster (kindnet enforces NetworkPolicy since kind v0.24, so the sandbox deny-all policy is real).
if ! kind get clusters | grep -x "$CLUSTER" >/dev/null; then  # not -q: an early exit could SIGPIPE kind
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_E2E"
export KUBECONFIG="$KUBECONFIG_E2E"

# 2. Images.
images=(operator sandbox sandbox-data)
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  for target in "${images[@]}"; do
    log "building $REGISTRY/$target:$TAG"
    docker build --target "$target" -t "$REGISTRY/$target:$TAG" .
  done
fi
for target in "${images[@]}"; do
  kind load docker-image "$REGISTRY/$target:$TAG" --name "$CLUSTER"
done

# 3. Exactly what the chart ships: its CRDs as helm reads them from the chart (helm installs them only on a
# first install, so they are applied explicitly and an upgrade path is exercised too), then the chart.
helm show crds charts/execution-operator | kubectl apply --server-side --force-conflicts -f -
helm upgrade --install execution-operator charts/execution-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.tag="$TAG" \
  --set executionClasses.default.image.tag="$TAG" \
  --set executionClasses.dataProcessing.image.tag="$TAG" \
  --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status deployment/execution-operator --timeout=180s

# The suite's extra ExecutionClasses (e.g. "small"); this takes over a few fields of the chart's "default"
# class in this throwaway cluster.
sed "s#$REGISTRY/sandbox:[^ ]*#$REGISTRY/sandbox:$TAG#" tests/e2e/classes.yaml \
  | kubectl apply --server-side --force-conflicts --field-manager=e2e -f -

# 4. The end-to-end suite against this cluster, with the operator the chart installed.
log "running tests/e2e"
status=0
E2E_KUBECONFIG="$KUBECONFIG_E2E" E2E_SANDBOX_IMAGE="$REGISTRY/sandbox:$TAG" \
  "$PY" -m pytest tests/e2e -m cluster "$@" || status=$?

if [[ $status -ne 0 ]]; then
  log "suite failed; operator logs:"
  kubectl -n "$NAMESPACE" logs deployment/execution-operator --tail=200 || true
fi
# 5. LATENCY_BENCH=1: warm against cold where a cold pod start is a real one (sandbox, CNI, container
# runtime), ending with bench/latency.py's SUMMARY line.
if [[ $status -eq 0 && "${LATENCY_BENCH:-0}" == "1" ]]; then
  log "bench/latency.py against kind"
  "$PY" bench/latency.py --kubeconfig "$KUBECONFIG_E2E" ${LATENCY_ARGS:---count 30 --burst 30 --burst-pool 10} \
    || status=$?
fi
exit $status
