#!/usr/bin/env bash
# Puts the anchors' own kernels under .baselines/ (ignored by git) for bench/baselines/bench_anchors.py: FlashMLA's
# dense decode and DeepGEMM, as built into the vllm wheel for the GPU machine's torch (2.11, CUDA 13). Run where
# PyPI is reachable; the GPU machine gets .baselines/ with the working tree. About 4 MB (DeepGEMM's
# CUTLASS/CuTe headers are left out: run_on_gpu.sh links third_party/cutlass in their place).
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${VLLM_VERSION:-0.24.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$work" "vllm==$version"
wheel=$(ls "$work"/vllm-*.whl)
unzip -q -o "$wheel" 'vllm/_flashmla_C.abi3.so' 'vllm/third_party/flashmla/*' 'vllm/third_party/deep_gemm/*' -d "$work/x"
rm -rf .baselines/py
mkdir -p .baselines/py/vllm
cp "$work/x/vllm/_flashmla_C.abi3.so" .baselines/py/vllm/
cp -r "$work/x/vllm/third_party" .baselines/py/vllm/
touch .baselines/py/vllm/__init__.py .baselines/py/vllm/third_party/__init__.py
dg=.baselines/py/vllm/third_party/deep_gemm
rm -rf "$dg/include/cute" "$dg/include/cutlass"
find "$dg" -name '_C.cpython-*.so' ! -name '_C.cpython-312-*' -delete
du -sh .baselines
