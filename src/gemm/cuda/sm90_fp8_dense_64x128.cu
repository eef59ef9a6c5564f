// Dense FP8 GEMM, 64x128x128 tiles, ping-pong (two consumer warpgroups on alternate tiles), 1x1 cluster: small m,
// where a 128-row tile would be half empty. The epilogue stores each tile in one 64x128 piece (CUTLASS's automatic
// choice is 64x32): the same bits, ahead in three same-run A/Bs on the H200 (3-4 % at 4096 x 32768 x 512, within
// that shape's run-to-run spread; docs/gemm.md).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x128(const DenseArgs& args) {
  using Gemm =
      DenseGemm<cute::Shape<cute::_64, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise, cutlass::epilogue::TmaWarpSpecialized, 128,
                Promotion::kNone, false, cute::Shape<cute::_64, cute::_128>>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
