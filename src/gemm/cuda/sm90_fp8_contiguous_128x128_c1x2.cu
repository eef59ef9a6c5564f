// Contiguous grouped FP8 GEMM on the dense kernel with the group-indexed mainloop (IndexedGemm), 128x128x128 tiles,
// cooperative, 1x2 cluster: two N-adjacent CTAs (same 128-row block, hence the same group) share each A tile by
// TMA multicast.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_contiguous_indexed_128x128_cluster1x2(const GroupedArgs& args) {
  using Gemm = IndexedGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_2, cute::_1>>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
