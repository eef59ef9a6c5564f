// Masked grouped FP8 GEMM on the dense kernel (MaskedGemm: groups as the batch mode, only valid tiles scheduled,
// only valid rows stored), 128x128x128 tiles, cooperative, 1x1 cluster, with the promotion overlapped with
// tensor-core work: two K blocks in flight per warpgroup (Promotion::kOverlap).
#include "sm90_fp8_masked.cuh"

namespace ff::gemm::cuda {

std::string run_masked_128x128_overlap(const GroupedArgs& args) {
  using Gemm = MaskedGemm<cute::Shape<cute::_128, cute::_128, cute::_128>, Promotion::kOverlap>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
