// Contiguous grouped FP8 GEMM on the dense kernel with the group-indexed mainloop (IndexedGemm), 128x128x128 tiles,
// cooperative, 1x1 cluster, with the promotion overlapped with tensor-core work: two K blocks in flight per warpgroup (Promotion::kOverlap).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_contiguous_indexed_128x128_overlap(const GroupedArgs& args) {
  using Gemm = IndexedGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                           128, Promotion::kOverlap>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
