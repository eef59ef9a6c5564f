// Contiguous grouped FP8 GEMM on the dense kernel with the group-indexed mainloop (IndexedGemm), 128x128x128 tiles,
// cooperative, 1x1 cluster.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_contiguous_indexed_128x128(const GroupedArgs& args) {
  using Gemm = IndexedGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
