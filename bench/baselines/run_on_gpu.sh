#!/usr/bin/env bash
# On the GPU machine, with .baselines/ (bench/baselines/fetch.sh) and third_party/cutlass beside the checkout
# (PREWARM=N shards DeepGEMM's compilation; PREWARM_ARGS="--part wgrad" compiles the wgrad shapes instead):
#   bash bench/baselines/run_on_gpu.sh build   # builds fireflyer._C (COMPONENTS, default mla;gemm) while DeepGEMM compiles its
#                                              # kernels for every benchmark shape; packs both into $OUT/carry.tgz.*
#   bash bench/baselines/run_on_gpu.sh bench [bench_anchors.py args]   # unpacks .baselines/carry.tgz.* if present, runs
#                                              # bench/baselines/bench_anchors.py; JSON and log in $OUT
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/anchors_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export DG_JIT_CACHE_DIR=${DG_JIT_CACHE_DIR:-$PWD/.baselines/deep_gemm_cache}
include=.baselines/py/vllm/third_party/deep_gemm/include
for d in cute cutlass; do [ -e "$include/$d" ] || ln -s "$PWD/third_party/cutlass/include/$d" "$include/$d"; done
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
mode=${1:-bench}
shift || true
case "$mode" in
  build)
    if ls .baselines/carry.tgz.* >/dev/null 2>&1; then  # DeepGEMM's compiled kernels from an earlier run
      cat .baselines/carry.tgz.* | tar xzf - -C .baselines deep_gemm_cache
    fi
    step build
    ( if [ -d .deps/debs ]; then bash scripts/device_deps.sh install >/dev/null 2>&1; fi
      cmake -G Ninja -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DFF_CUDA=ON "-DFF_CUDA_COMPONENTS=${COMPONENTS:-mla;gemm}" \
        -DFF_CUTLASS_INCLUDE_DIR="$PWD/third_party/cutlass/include" -DFF_BUILD_TOOLS=OFF -DFF_BUILD_BENCH=OFF \
        -DFF_BUILD_TESTS="${BUILD_TESTS:-OFF}" -DFF_BUILD_FS=OFF -DFF_MLA_SPLIT_COMPILE=ON -DCMAKE_CXX_FLAGS=-Wno-error=range-loop-construct &&
      timeout "${BUILD_TIMEOUT:-480}" cmake --build build-dev -j16 --target _C ${BUILD_TARGETS:-} ) >"$OUT/build.log" 2>&1 &
    build=$!
    for i in $(seq 0 $(( ${PREWARM:-4} - 1 ))); do python3 bench/baselines/bench_anchors.py --prewarm --shard "$i/${PREWARM:-4}" ${PREWARM_ARGS:-} >"/tmp/prewarm$i.log" 2>&1 & done
    wait $build
    echo "build exit $?"; grep -E "error|FAILED" "$OUT/build.log" | head -10
    wait
    cat /tmp/prewarm*.log | tail -40
    [ "${PACK:-1}" = 1 ] || exit 0
    step pack
    tar czf /tmp/carry.tgz python/fireflyer/_C*.so -C .baselines deep_gemm_cache
    split -b 15m /tmp/carry.tgz "$OUT/carry.tgz."
    ls -la "$OUT"
    if [ $(( $(date +%s) - start )) -lt "${QUICK_IF_BEFORE:-0}" ]; then
      step quick
      timeout 150 python3 bench/baselines/bench_anchors.py --quick --rounds 2 --out "$OUT/anchors_quick.json" >"$OUT/quick.log" 2>&1
      echo "quick exit $?"; cut -c1-600 "$OUT/quick.log" | tail -12
    fi
    ;;
  bench)
    # A fresh machine with a carried _C: the shared libraries it links (spdlog, fmt, ...) come from .deps.
    if [ -d .deps/debs ]; then bash scripts/device_deps.sh install >/dev/null 2>&1; fi
    if ls .baselines/carry.tgz.* >/dev/null 2>&1; then
      cat .baselines/carry.tgz.* | tar xzf - -C . python/fireflyer && cat .baselines/carry.tgz.* | tar xzf - -C .baselines deep_gemm_cache
    fi
    step bench
    python3 bench/baselines/bench_anchors.py --out "$OUT/anchors.json" "$@" >"$OUT/anchors.log" 2>&1
    echo "anchors exit $?"
    cut -c1-400 "$OUT/anchors.log" | tail -60
    ;;
esac
step done
