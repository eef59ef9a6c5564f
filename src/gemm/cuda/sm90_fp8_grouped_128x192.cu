// Grouped FP8 GEMM (contiguous and masked, ptr-array), 128x192x128 tiles, cooperative, 1x1 cluster, B scales at a
// 64-row granularity (expanded per group from the 128x128 blocks).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_grouped_cooperative_128x192(const GroupedArgs& args) {
  using Gemm = GroupedGemm<cute::Shape<cute::_128, cute::_192, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                           cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                           cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, 64>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
