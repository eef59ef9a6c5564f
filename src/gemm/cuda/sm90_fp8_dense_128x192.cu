// Dense FP8 GEMM, 128x192x128 tiles, cooperative (two consumer warpgroups of 64x192), 1x1 cluster, B scales at a
// 64-row granularity (read from the 128x128 blocks): 1.5x the work per tile of 128x128 for the same A tile,
// so fewer shared-memory bytes and per-tile overheads per FLOP; 192 divides n = 2112 and 24576 exactly.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_cooperative_128x192(const DenseArgs& args) {
  return run_dense_reading_scales_b<cute::Shape<cute::_128, cute::Int<192>, cute::_128>,
                                    cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise,
                                    cutlass::epilogue::TmaWarpSpecializedCooperative, 64>(args);
}

}  // namespace ff::gemm::cuda
