// Grouped FP8 GEMM (contiguous and masked), 64x128x128 tiles, ping-pong, 1x1 cluster: masked decode batches with
// few rows per group (expected_m <= 64).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_grouped_pingpong_64x128(const GroupedArgs& args) {
  using Gemm = GroupedGemm<cute::Shape<cute::_64, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                           cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8Blockwise,
                           cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
