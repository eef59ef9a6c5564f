#!/usr/bin/env bash
# make soak: the fs deterministic simulation over many seeds (CI runs a smaller count in ctest).
# SOAK_SEEDS (default 100000) and SOAK_FIRST_SEED (default 1) choose the seeds; then SOAK_BURST_SEEDS (default
# 20000) more from the same first seed with bursts of writes of one chunk made together (--write-bursts 0.3: the
# clients' write coalescing under the faults).
set -euo pipefail
build_dir="${BUILD_DIR:-build}"
sim="$build_dir/bin/ff-fs-sim"
if [[ ! -x $sim ]]; then
  echo "soak: $sim is not built (the fs component needs its libraries; see docs/building.md)" >&2
  exit 1
fi
"$sim" --first-seed "${SOAK_FIRST_SEED:-1}" --seeds "${SOAK_SEEDS:-100000}" --progress
"$sim" --first-seed "${SOAK_FIRST_SEED:-1}" --seeds "${SOAK_BURST_SEEDS:-20000}" --write-bursts 0.3 --progress
