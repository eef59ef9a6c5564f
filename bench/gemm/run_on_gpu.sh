#!/usr/bin/env bash
# Builds the gemm kernels on the GPU machine and runs, in order of importance, the GPU gtests, the benchmark,
# Nsight Compute on the 128x128 kernels (NCU=1), the GPU pytest, the demo's MoE expert GEMMs (DEMO=1) and
# compute-sanitizer memcheck on small shapes. Logs go to $OUT (default .gemm-gpu-out); each step has its own
# timeout (overridable: BUILD_TIMEOUT, GTEST_TIMEOUT, BENCH_TIMEOUT, PYTEST_TIMEOUT, SANITIZER_TIMEOUT) so a slow
# one cannot starve the rest. SANITIZER_CONFIGS limits memcheck to the configurations named (FF_GEMM_TEST_CONFIGS).
#   bash bench/gemm/run_on_gpu.sh
set -u
OUT="${OUT:-$PWD/.gemm-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python"
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
step build
(cmake -G Ninja -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DFF_CUDA=ON -DFF_CUDA_COMPONENTS=gemm \
   -DFF_CUTLASS_INCLUDE_DIR="$PWD/third_party/cutlass/include" -DFF_BUILD_TOOLS=OFF -DFF_BUILD_BENCH=OFF &&
 timeout "${BUILD_TIMEOUT:-400}" cmake --build build-dev --target gemm_cuda_test gemm_test _C -j16 -- -k 0) >"$OUT/build.log" 2>&1
grep -E "error|FAILED" "$OUT/build.log" | head -20
step gtest
timeout "${GTEST_TIMEOUT:-150}" build-dev/tests/gemm/gemm_cuda_test >"$OUT/gtest.log" 2>&1
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|Failure|Expected|Which is|config" "$OUT/gtest.log" | head -30
timeout 30 build-dev/tests/gemm/gemm_test >/tmp/gtest_cpu.log 2>&1; tail -1 /tmp/gtest_cpu.log
step bench
timeout "${BENCH_TIMEOUT:-360}" python3 bench/gemm/bench_gemm.py ${BENCH_ARGS:-} --out "$OUT/gemm_h200.json" >"$OUT/bench.log" 2>&1
echo "bench exit $?"; tail -1 "$OUT/bench.log" | cut -c1-600
# Large cases: the heuristic's choice, ours, again, per configuration, and per configuration the best schedule.
python3 - "$OUT/gemm_h200.json" <<'PY' 2>&1 | head -40
import json, sys
for r in json.load(open(sys.argv[1]))["cases"]:
    if r["case"] == "dense" and r["m"] < 4096:
        continue
    shape = (r["case"][:4], r.get("groups", 1), r.get("m_per_group", r.get("m")), r["n"], r["k"])
    best = {c: max(v.items(), key=lambda kv: kv[1]) for c, v in (r.get("tflops_per_schedule") or {}).items()}
    print(*shape, r["heuristic"], r["ours"]["tflops"], r.get("ours_again", {}).get("tflops", ""),
          r.get("scaled_mm_rowwise", {}).get("tflops", ""), r.get("ratio_vs_scaled_mm", ""), r.get("tflops_per_config"), best)
PY
if [ "${NCU:-0}" = 1 ]; then
  step ncu
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  timeout "${NCU_TIMEOUT:-90}" "$ncu" --clock-control none -k regex:device_kernel -c 3 --section SpeedOfLight \
    --section WarpStateStats --section ComputeWorkloadAnalysis python3 bench/gemm/profile_gemm.py >"$OUT/ncu.log" 2>&1
  echo "ncu exit $?"
  grep -E "device_kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Warp Cycles Per Issued|profile_gemm" "$OUT/ncu.log" | cut -c1-160 | head -30
fi
step pytest
timeout "${PYTEST_TIMEOUT:-120}" python3 -m pytest -q -x python/tests/test_gemm_cuda.py python/tests/test_gemm.py >"$OUT/pytest.log" 2>&1
tail -3 "$OUT/pytest.log"
if [ "${DEMO:-1}" = 1 ]; then
step demo
timeout 40 python3 -c "import pathlib; from fireflyer.demo import Demo; Demo(pathlib.Path('build-dev'), pathlib.Path('/tmp')).gemm_on_gpu()" 2>&1 | tail -3
fi
step sanitizer
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
FF_GEMM_TEST_CONFIGS="${SANITIZER_CONFIGS:-}" timeout "${SANITIZER_TIMEOUT:-150}" "$sanitizer" --tool memcheck --error-exitcode 3 build-dev/tests/gemm/gemm_cuda_test \
  --gtest_filter="${SANITIZER_FILTER:-Shapes/DenseCuda.*/0:Shapes/DenseCuda.*/1:GroupedCuda.*}" >"$OUT/sanitizer.log" 2>&1
echo "sanitizer exit $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitizer.log" | tail -4
step done
