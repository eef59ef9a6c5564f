#!/usr/bin/env bash
# make soak: the fs deterministic simulation over many seeds (CI runs a smaller count in ctest).
# SOAK_SEEDS (default 100000) and SOAK_FIRST_SEED (default 1) choose the seeds.
set -euo pipefail
build_dir="${BUILD_DIR:-build}"
sim="$build_dir/bin/ff-fs-sim"
if [[ ! -x $sim ]]; then
  echo "soak: $sim is not built (the fs component needs its libraries; see docs/building.md)" >&2
  exit 1
fi
exec "$sim" --first-seed "${SOAK_FIRST_SEED:-1}" --seeds "${SOAK_SEEDS:-100000}" --progress
