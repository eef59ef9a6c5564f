// Dense FP8 GEMM, 128x128x128 tiles, cooperative (two consumer warpgroups per tile), 1x1 cluster.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_cooperative_128x128(const DenseArgs& args) {
  using Gemm = DenseGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                         cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise,
                         cutlass::epilogue::TmaWarpSpecializedCooperative>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
