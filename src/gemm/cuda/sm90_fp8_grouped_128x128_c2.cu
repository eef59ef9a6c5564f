// Grouped FP8 GEMM (ptr-array; contiguous and masked), 128x128x128 tiles, cooperative, 2x1 cluster: the two CTAs
// of a cluster compute vertically adjacent tiles of one problem and share each B tile by TMA multicast.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_grouped_cooperative_128x128_cluster2x1(const GroupedArgs& args) {
  using Gemm = GroupedGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_2, cute::_1, cute::_1>,
                           cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                           cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
