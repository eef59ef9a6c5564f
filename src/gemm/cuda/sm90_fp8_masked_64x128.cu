// Masked grouped FP8 GEMM on the dense kernel (MaskedGemm: groups as the batch mode, only valid tiles scheduled,
// only valid rows stored), 64x128x128 tiles, ping-pong (two consumer warpgroups on alternate tiles), 1x1 cluster,
// CUTLASS's consumer, every tile stored from registers: few rows per group (decode).
#include "sm90_fp8_masked.cuh"

namespace ff::gemm::cuda {

std::string run_masked_pingpong_64x128(const GroupedArgs& args) {
  using Gemm = MaskedGemm<cute::Shape<cute::_64, cute::_128, cute::_128>, Promotion::kNone, /*kPingpong=*/true>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
