#!/usr/bin/env bash
# Installs every Debian and PyPI package that the build, the demo and the tests need.
# Idempotent: when nothing is missing it checks and returns in about a second, printing nothing.
# Usage: scripts/bootstrap.sh [--quiet]
set -euo pipefail

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev
  libfmt-dev libspdlog-dev libcli11-dev nlohmann-json3-dev
)
# PyPI packages as "import_name:requirement".
pip_packages=(
  "nanobind:nanobind>=2.0"
  "scikit_build_core:scikit-build-core>=0.10"
  "numpy:numpy"
  "pytest:pytest"
)

python="${PYTHON:-python3}"

missing_apt=()
for package in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing_apt+=("$package")
  fi
done

if ((${#missing_apt[@]})); then
  echo "bootstrap: installing Debian packages: ${missing_apt[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists once per machine boot at most: an install right after a fresh
  # image would otherwise find nothing.
  stamp=/tmp/.fireflyer-apt-updated
  if [[ ! -f $stamp ]]; then
    "${sudo_cmd[@]}" apt-get update -qq
    touch "$stamp"
  fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing_apt[@]}" >/dev/null 2>&1 || {
    # Re-run loudly so the failure is visible.
    "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing_apt[@]}"
  }
fi

missing_pip=()
for entry in "${pip_packages[@]}"; do
  module="${entry%%:*}"
  requirement="${entry#*:}"
  if ! "$python" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$module') else 1)" 2>/dev/null; then
    missing_pip+=("$requirement")
  fi
done

if ((${#missing_pip[@]})); then
  echo "bootstrap: installing Python packages: ${missing_pip[*]}"
  "$python" -m pip install -q --disable-pip-version-check --root-user-action=ignore "${missing_pip[@]}"
fi
