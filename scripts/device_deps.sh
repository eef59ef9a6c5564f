#!/usr/bin/env bash
# Build dependencies for the GPU machine, which reaches no package registry.
#
#   scripts/device_deps.sh fetch     # here: downloads the Debian packages into .deps/debs (ignored by git)
#   scripts/device_deps.sh install   # there (carry .deps): installs them with dpkg
#
# The GPU image has the CUDA toolkit, cmake, ninja, g++ and Python with nanobind, numpy and pytest; it
# lacks the C++ libraries below. scripts/bootstrap.sh calls `install` by itself when it cannot reach a
# registry and .deps/debs exists.
set -euo pipefail
cd "$(dirname "$0")/.."
deps_dir=.deps/debs
packages=(
  libfmt-dev libfmt9 libspdlog-dev libspdlog1.10 libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev googletest
)

case "${1:-}" in
  fetch)
    mkdir -p "$deps_dir"
    (cd "$deps_dir" && apt-get download -qq "${packages[@]}" 2>/dev/null || apt-get download "${packages[@]}")
    du -sh "$deps_dir"
    ;;
  install)
    shopt -s nullglob
    debs=("$deps_dir"/*.deb)
    if ((${#debs[@]} == 0)); then
      echo "device_deps: no packages in $deps_dir; run 'scripts/device_deps.sh fetch' where a registry is reachable" >&2
      exit 1
    fi
    # --force-depends: the image's own libraries satisfy the runtime needs even where dpkg's database
    # does not know them.
    dpkg -i --force-depends --force-confold "${debs[@]}" >/dev/null 2>&1 || dpkg -i --force-depends "${debs[@]}"
    ;;
  *)
    echo "usage: scripts/device_deps.sh fetch|install" >&2
    exit 2
    ;;
esac
