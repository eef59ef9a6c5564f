#!/usr/bin/env bash
# Configures the CMake build directory. Quiet unless something goes wrong.
# Usage: scripts/configure.sh BUILD_DIR BUILD_TYPE PYTHON [extra cmake args...]
set -euo pipefail
build_dir="$1"
build_type="$2"
python="$(command -v "$3")"
shift 3
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DPython_EXECUTABLE="$python" \
    -Wno-dev "$@" >"$log" 2>&1; then
  cat "$log"
  echo "configure: cmake failed (log above)" >&2
  exit 1
fi
grep -E "^-- Fireflyer:" "$log" || true
