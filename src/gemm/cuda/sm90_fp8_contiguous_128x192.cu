// Contiguous grouped FP8 GEMM on the dense kernel with the group-indexed mainloop (IndexedGemm), 128x192x128 tiles,
// cooperative, 1x1 cluster, B scales at a 64-row granularity (read directly from each group's 128x128 blocks).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_contiguous_indexed_128x192(const GroupedArgs& args) {
  using Gemm = IndexedGemm<cute::Shape<cute::_128, cute::_192, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                           64>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
