#!/usr/bin/env bash
# Runs every test: the C++ suites through ctest, then the Python suites through pytest. Both always
# run, so both summaries print; the exit status is non-zero when either fails or ran no test.
set -uo pipefail
build_dir="${BUILD_DIR:-build}"
python="${PYTHON:-python3}"
jobs="$(nproc 2>/dev/null || echo 2)"

echo "== ctest (${build_dir})"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 600
ctest_status=$?

echo "== pytest (python/tests)"
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" FF_BUILD_DIR="$build_dir" \
  "$python" -m pytest python/tests -q -p no:cacheprovider
pytest_status=$?

if [[ $pytest_status -eq 5 ]]; then
  echo "test: pytest collected no tests" >&2
fi
if [[ $ctest_status -ne 0 || $pytest_status -ne 0 ]]; then
  echo "test: FAILED (ctest exit $ctest_status, pytest exit $pytest_status)" >&2
  exit 1
fi
echo "test: all suites passed"
