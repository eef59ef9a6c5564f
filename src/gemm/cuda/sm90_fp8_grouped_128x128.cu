// Grouped FP8 GEMM (contiguous and masked), 128x128x128 tiles, cooperative, 1x1 cluster.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_grouped_cooperative_128x128(const GroupedArgs& args) {
  using Gemm = GroupedGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                           cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                           cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
