#!/usr/bin/env bash
# One device session for the mla kernels (build, GPU tests, memcheck, benchmark), as run through the
# device tool: `bash bench/mla/device_session.sh STEPS...` with $OUT set; logs and JSON land in $OUT.
# Steps: build, sass, overhead (the fixed per-call cost at h_q 16), gtest, pytest, memcheck, racecheck, quick (bench h_q 128, 4K/8K), bench (the full benchmark),
# leanchecks (memcheck and racecheck of the FP8 lean kernel), ncu8l (its counters at h_q 128 8K),
# gtest8 / pytest8 / memcheck8 (the FP8 tests, memcheck and racecheck of the FP8 kernels for <= 32 rows), ab8 (the FP8 A/B),
# onebarrier (the one-barrier FP8 kernel: its gtests, memcheck, racecheck, the racecheck probe, A/B against two barriers),
# probe (the racecheck probe of the FP8 kernel's piece loop, racecheck_named_barriers.cu),
# ncu (h_q 128 8K counters, TMA and cp.async loads), ncusec (h_q 128 8K, the default kernel: SOL, compute /
# tensor pipes, memory incl. shared memory and L2, warp states, scheduler, per-instruction stall samples).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mla_out}
mkdir -p "$OUT"
# MLA_BUNDLE=1: at most 8 files come back from the device tool, so the logs go to a scratch folder that
# is archived into $OUT/mla_bundle.tgz after every step (a run cut short by its time limit still
# returns what the finished steps wrote).
BUNDLE_OUT=$OUT
if [ "${MLA_BUNDLE:-0}" = 1 ]; then
  OUT=/tmp/mla_logs
  mkdir -p "$OUT"
fi
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
# ncu_profile REPORT LOG METRICS PROFILE_ARGS...: the FP8 kernel of profile_mla.py (PROFILE_ARGS) under ncu
# (SOL, compute, memory, warp states, scheduler, instruction mix, per-instruction stall samples + METRICS).
ncu_profile() {
  local report=$1 log=$2 metrics=$3
  shift 3
  timeout 150 ncu --clock-control none -k regex:mla_decode_kernel --launch-skip 1 -c 1 --import-source no \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters \
    --metrics "$metrics" -o "$OUT/$report" python3 bench/mla/profile_mla.py "$@" --kinds fp8 >"$OUT/${log}_run.log" 2>&1
  ncu -i "$OUT/$report.ncu-rep" --page details >"$OUT/$log.log" 2>&1
  ncu -i "$OUT/$report.ncu-rep" --page source --csv --print-source sass >"$OUT/${log}_sass.csv" 2>/dev/null || true
  gzip -f "$OUT/${log}_sass.csv"
  grep -E "Duration|Throughput|Executed Ipc|Issue Slots|Stall|Warp Cycles|No Eligible|Registers|pipe|Pipe" "$OUT/$log.log" | head -60
}
# sanitize TEST LOG_SUFFIX MEMCHECK_S RACECHECK_S: one gtest under compute-sanitizer memcheck, then racecheck.
sanitize() {
  timeout "$3" compute-sanitizer --tool memcheck build-dev/tests/mla/mla_test --gtest_filter="$1" \
    >"$OUT/memcheck$2.log" 2>&1
  echo "memcheck:"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck$2.log" | head -4
  timeout "$4" compute-sanitizer --tool racecheck build-dev/tests/mla/mla_test --gtest_filter="$1" \
    >"$OUT/racecheck$2.log" 2>&1
  echo "racecheck:"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED|hazard" "$OUT/racecheck$2.log" | head -4
}
# racecheck_probe: bench/mla/racecheck_named_barriers.cu (named barriers; the FP8 kernel's piece loop in small)
# under racecheck, each mode.
racecheck_probe() {
  nvcc -gencode=arch=compute_90a,code=sm_90a -o build-dev/racecheck_probe bench/mla/racecheck_named_barriers.cu
  for variant in equal unequal pieces; do
    timeout 60 compute-sanitizer --tool racecheck build-dev/racecheck_probe $variant >"$OUT/racecheck_probe_$variant.log" 2>&1
    grep -E "barrier counts|pieces:|RACECHECK SUMMARY" "$OUT/racecheck_probe_$variant.log"
  done
}
for step in "$@"; do
  echo "=== $step ($(date +%T))"
  case "$step" in
    build)
      cmake -G Ninja -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DFF_CUDA=ON -DFF_CUDA_COMPONENTS=mla \
        -DFF_CUTLASS_INCLUDE_DIR="$PWD/third_party/cutlass/include" -DCMAKE_CXX_FLAGS=-Wno-error=range-loop-construct \
        -DFF_MLA_SPLIT_COMPILE=ON >"$OUT/configure.log" 2>&1 || tail -20 "$OUT/configure.log"
      timeout "${MLA_BUILD_TIMEOUT:-900}" cmake --build build-dev -j16 --target mla_test _C -- -k 0 >"$OUT/build.log" 2>&1 ||
        tail -40 "$OUT/build.log"
      grep -iE "C75[0-9]{2}|serializ" "$OUT/build.log" | grep -v C7519 | head -5
      ;;
    sass)
      cuobjdump -sass build-dev/src/mla/CMakeFiles/ff_mla.dir/cuda/sm90_mla_decode.cu.o >"$OUT/sass.txt" 2>&1
      echo "HGMMA instructions: $(grep -c HGMMA "$OUT/sass.txt")"
      ;;
    gtest)
      timeout "${MLA_GTEST_TIMEOUT:-240}" build-dev/tests/mla/mla_test --gtest_filter='CudaDecode.*' >"$OUT/gtest.log" 2>&1
      rc=$?
      grep -E "^\[  (FAILED|PASSED|  OK) |Failure|Expected|Which is|error" "$OUT/gtest.log" | head -60
      if [ $rc -eq 124 ]; then echo "gtest timed out (a hang?): stopping"; tail -3 "$OUT/gtest.log"; exit 1; fi
      ;;
    gtest8)
      # The FP8 GPU tests only (every FP8 kernel forced, the default route).
      timeout 40 build-dev/tests/mla/mla_test --gtest_filter='CudaDecode.Fp8*' >"$OUT/gtest8.log" 2>&1
      rc=$?
      grep -E "^\[  (FAILED|PASSED|  OK) |Failure|Expected|Which is|error" "$OUT/gtest8.log" | head -40
      if [ $rc -eq 124 ]; then echo "gtest8 timed out (a hang?): stopping"; tail -3 "$OUT/gtest8.log"; exit 1; fi
      ;;
    pytest8)
      timeout 45 python3 -m pytest -q -k "fp8" python/tests/test_mla_cuda.py >"$OUT/pytest8.log" 2>&1
      grep -E "passed|failed|Error|assert" "$OUT/pytest8.log" | head -20
      ;;
    memcheck8)
      # Every FP8 kernel for <= 32 rows (the forced-kernel test: 16 and 32 rows, splits, causal, fp16)
      # under memcheck and racecheck.
      sanitize CudaDecode.Fp8FewRowsKernelsForced 8 120 150
      ;;
    clocks)
      # SM / memory clocks, power, temperature and throttle reasons every 200 ms until the session ends.
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv -lms 200 >"$OUT/clocks.csv" 2>&1 &
      ;;
    ab8)
      # The FP8 A/B (h_q 16, s_q 1, fixed 4K-32K): bf16, FP8 direct / pair / wide in rotated rounds;
      # MLA_AB_CANDIDATES (bench_mla.py --candidates) and MLA_AB_ARGS (e.g. "--s-q 1 2 --ab-variable
      # --ab-lengths 4096,8192") change what it measures.
      # shellcheck disable=SC2086
      timeout "${MLA_AB_TIMEOUT:-50}" python3 bench/mla/bench_mla.py --fp8-ab --rounds 7 \
        ${MLA_AB_CANDIDATES:+--candidates "$MLA_AB_CANDIDATES"} ${MLA_AB_ARGS:-} --out "$OUT/fp8_ab.json" >"$OUT/ab8.log" 2>&1
      grep -E "^s_q|Error|error" "$OUT/ab8.log" | cut -c1-400 | tail -16
      ;;
    abl)
      # Lazy rescaling A/B (h_q 16, s_q 1, fixed 4K-32K): the bf16 kernel lazy and eager, the default FP8 kernel.
      timeout 80 python3 bench/mla/bench_mla.py --fp8-ab --rounds 7 --candidates bf16,bf16_eager,fp8_channels \
        --out "$OUT/lazy_ab.json" >"$OUT/abl.log" 2>&1
      grep -E "^s_q|Error|error" "$OUT/abl.log" | cut -c1-300 | tail -8
      ;;
    pytest)
      timeout 120 python3 -m pytest -q python/tests/test_mla_cuda.py >"$OUT/pytest.log" 2>&1
      grep -E "passed|failed|Error|assert" "$OUT/pytest.log" | head -30
      ;;
    memcheck)
      # The default kernel (also on 16 and 32 rows: Bf16VariableLengthsUnsplit, Bf16SplitsOnFewSms), then each
      # schedule in MLA_SANITIZE_SCHEDULES (FF_MLA_SCHEDULE for the whole run: the tests expect the kernel it names).
      for schedule in default ${MLA_SANITIZE_SCHEDULES:-}; do
        [ "$schedule" = default ] && env_schedule= || env_schedule=$schedule
        FF_MLA_SCHEDULE=$env_schedule timeout 120 compute-sanitizer --tool memcheck build-dev/tests/mla/mla_test \
          --gtest_filter='CudaDecode.WgmmaPartialRowTile:CudaDecode.WgmmaBf16SplitsCausalTwoQueries:CudaDecode.WgmmaTmaBadBlockIdsLoadZeros:CudaDecode.WgmmaFp16TwoKvHeadsCausal:CudaDecode.Bf16VariableLengthsUnsplit:CudaDecode.Bf16SplitsOnFewSms' \
          >"$OUT/memcheck_$schedule.log" 2>&1
        echo "memcheck $schedule:"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck_$schedule.log" | head
      done
      ;;
    racecheck)
      for schedule in default ${MLA_SANITIZE_SCHEDULES:-}; do
        [ "$schedule" = default ] && env_schedule= || env_schedule=$schedule
        FF_MLA_SCHEDULE=$env_schedule timeout 60 compute-sanitizer --tool racecheck build-dev/tests/mla/mla_test \
          --gtest_filter='CudaDecode.WgmmaPartialRowTile' >"$OUT/racecheck_$schedule.log" 2>&1
        echo "racecheck $schedule:"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED|hazard" "$OUT/racecheck_$schedule.log" | head
      done
      ;;
    quick)
      timeout 120 python3 bench/mla/bench_mla.py --quick --h-q 128 --probe --out "$OUT/quick.json" 2>&1 | tail -4 | cut -c1-1500
      ;;
    ncu)
      # h_q 128, 8K, bf16: the kernel's DRAM bytes, L2 traffic and hit rate, with TMA and with cp.async loads.
      for loads in tma cp_async; do
        FF_MLA_LOADS=$loads timeout 60 ncu --clock-control none -k regex:mla_decode_kernel --launch-skip 1 -c 1 \
          --metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_bytes.sum,lts__t_sector_hit_rate.pct \
          python3 bench/mla/profile_mla.py --h-q 128 --kinds bf16 >"$OUT/ncu_$loads.log" 2>&1
        echo "loads=$loads"; grep -E "gpu__time|dram__|lts__" "$OUT/ncu_$loads.log"
      done
      ;;
    ncusec)
      # The default kernel (TMA, pipelined unless FF_MLA_SCHEDULE says otherwise): where it stalls.
      timeout 150 ncu --clock-control none -k regex:mla_decode_kernel --launch-skip 1 -c 1 --import-source no \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats \
        --section InstructionStats --section Occupancy --section LaunchStats --section SourceCounters \
        -o "$OUT/ncu_default" python3 bench/mla/profile_mla.py --h-q 128 --kinds bf16 >"$OUT/ncusec_run.log" 2>&1
      ncu -i "$OUT/ncu_default.ncu-rep" --page details >"$OUT/ncusec.log" 2>&1
      ncu -i "$OUT/ncu_default.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu_sass.csv" 2>"$OUT/ncu_sass.err" || true
      grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Shared|Executed Ipc|Issue Slots|Stall|Warp Cycles|No Eligible|Registers|gmma|Tensor" "$OUT/ncusec.log" | head -60
      ;;
    overhead)
      # The fixed per-call cost at h_q 16 (bf16 and FP8): default vs fewer parts, kernel timeline, probe.
      # shellcheck disable=SC2086
      timeout 120 python3 bench/mla/overhead_mla.py ${MLA_OVERHEAD_ARGS:-} --out "$OUT/overhead.json" >"$OUT/overhead.log" 2>&1
      cut -c1-400 "$OUT/overhead.log" | tail -12
      ;;
    onebarrier)
      # wgmma_fp8_transposed_wg with one barrier per block (the default since 2026-12-03): the FP8 gtests, memcheck
      # and racecheck of the default-route 16-row test and of every forced FP8 kernel, the racecheck probe of
      # warpgroups meeting at different numbers of named barriers (racecheck_named_barriers.cu), then the
      # sustained A/B against two barriers per block (FF_MLA_FP8_ONE_BARRIER=0; 4K-32K, fixed and variable).
      timeout 40 build-dev/tests/mla/mla_test --gtest_filter='CudaDecode.Fp8*' >"$OUT/gtest8_one_barrier.log" 2>&1
      grep -E "^\[  (FAILED|PASSED) |Failure" "$OUT/gtest8_one_barrier.log" | head -10
      sanitize CudaDecode.Fp8CacheSixteenHeadsSplitTokens _one_barrier 100 100
      sanitize CudaDecode.Fp8FewRowsKernelsForced _one_barrier_forced 120 150
      racecheck_probe
      timeout "${MLA_AB_TIMEOUT:-300}" python3 bench/mla/bench_mla.py --fp8-ab --rounds 3 --ab-variable --sustained 1.0 \
        --candidates bf16,fp8_transposed_wg,fp8_transposed_wg_two_barriers --out "$OUT/fp8_one_barrier_ab.json" \
        >"$OUT/ab_one_barrier.log" 2>&1
      grep -E "^s_q|Error|error" "$OUT/ab_one_barrier.log" | cut -c1-300 | tail -8
      ;;
    probe)
      # The racecheck probe alone (bench/mla/racecheck_named_barriers.cu: named barriers, then the piece loop in
      # small with bulk copies, zero fills and the hand-off), about 10 s.
      racecheck_probe
      ;;
    ncu8)
      # The default FP8 kernel at h_q 16, 4K (s_q from MLA_NCU_SQ, 1 by default): pipes, warp states,
      # instruction mix, stall sources.
      ncu_profile ncu_fp8 ncu8 sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_uniform.avg.pct_of_peak_sustained_active \
        --h-q 16 --s-q "${MLA_NCU_SQ:-1}" --length 4096
      ;;
    ncu8l)
      # The default FP8 kernel at h_q 128, 8K (wgmma_fp8_lean): pipes (the conversions, FP16, tensor), warp
      # states, instruction mix, stall sources.
      ncu_profile ncu_fp8_lean ncu8l sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fp16.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_uniform.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active \
        --h-q 128 --length 8192
      ;;
    leanchecks)
      # The FP8 lean kernel and the older one (WgmmaFp8LeanAndOlderKernel) under memcheck and racecheck.
      sanitize CudaDecode.WgmmaFp8LeanAndOlderKernel _lean 150 200
      ;;
    sasssize)
      # SASS instructions per kernel function (16 bytes each): the instruction-cache footprint.
      find build-dev/src/mla -name "*.o" -exec cuobjdump -sass {} \; 2>/dev/null |
        awk '/Function :/ {name=$3} /^ +\/\*[0-9a-f]+\*\// {count[name]++} END {for (n in count) print count[n], n}' |
        sort -n | tail -45 >"$OUT/sasssize.txt"
      grep -iE "Fp8Decoder|Decoder(ILb0ELb0ELi4)" "$OUT/sasssize.txt" | cut -c1-160
      ;;
    bench)
      timeout 500 python3 bench/mla/bench_mla.py --out "$OUT/mla_h200.json" >"$OUT/bench.log" 2>&1
      tail -2 "$OUT/bench.log" | cut -c1-600
      # The FP8 A/B (s_q 1 and 2) merged into the same JSON as its "fp8_ab" entry.
      timeout 240 python3 bench/mla/bench_mla.py --fp8-ab --rounds 7 --s-q 1 2 --ab-variable --out "$OUT/mla_h200.json" \
        >"$OUT/ab8_full.log" 2>&1
      grep -E "^s_q|Error|error" "$OUT/ab8_full.log" | cut -c1-300 | tail -16
      ;;
  esac
  if [ "${MLA_BUNDLE:-0}" = 1 ]; then
    tar czf /tmp/mla_bundle.tgz -C "$OUT" . && mv /tmp/mla_bundle.tgz "$BUNDLE_OUT/"
  fi
done
# shellcheck disable=SC2046
kill $(jobs -p) 2>/dev/null  # the clocks logger
if [ "${MLA_BUNDLE:-0}" = 1 ]; then
  tar czf /tmp/mla_bundle.tgz -C "$OUT" . && mv /tmp/mla_bundle.tgz "$BUNDLE_OUT/"
fi
echo "=== end ($(date +%T))"
