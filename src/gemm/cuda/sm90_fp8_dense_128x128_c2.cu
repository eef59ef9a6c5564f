// Dense FP8 GEMM, 128x128x128 tiles, cooperative, 2x1 cluster: the two CTAs of a cluster compute vertically
// adjacent tiles and share each B tile by TMA multicast (half the B traffic from L2) for large m.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_cooperative_128x128_cluster2x1(const DenseArgs& args) {
  using Gemm = DenseGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_2, cute::_1, cute::_1>,
                         cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise,
                         cutlass::epilogue::TmaWarpSpecializedCooperative>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
