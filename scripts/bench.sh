#!/usr/bin/env bash
# Runs every benchmark that this machine can run and prints one JSON line per case. Results that
# are worth keeping are written to bench/results/<name>.json with the device name.
#   bench/*/bench_*.py   Python benchmarks (run with the source tree's package)
#   build/bench-bin/*    C++ benchmarks
# BENCH_FILTER=regex limits the run to matching names.
set -euo pipefail
build_dir="${BUILD_DIR:-build}"
python="${PYTHON:-python3}"
filter="${BENCH_FILTER:-.}"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export FF_BUILD_DIR="$build_dir"
status=0

shopt -s nullglob
for binary in "$build_dir"/bench-bin/*; do
  name="$(basename "$binary")"
  [[ -x $binary && $name =~ $filter ]] || continue
  echo "== $name" >&2
  "$binary" --out "bench/results/${name%_bench}_cpu.json" || status=1
done
for script in bench/*/bench_*.py; do
  name="$(basename "$script" .py)"
  [[ $name =~ $filter ]] || continue
  echo "== $name" >&2
  "$python" "$script" || status=1
done
exit $status
