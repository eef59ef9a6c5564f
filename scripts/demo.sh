#!/usr/bin/env bash
# The end-to-end demo (python/fireflyer/demo.py) on the embedded defaults.
set -euo pipefail
build_dir="${BUILD_DIR:-build}"
python="${PYTHON:-python3}"
out_dir="${FF_DEMO_DIR:-.demo}"
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" "$python" -m fireflyer.demo --build-dir "$build_dir" --out "$out_dir"
