// Dense FP8 GEMM, 64x32x128 tiles, ping-pong, 1x1 cluster, B scales at a 32-row granularity (expanded from the
// 128x128 blocks): small m with few 128-wide column tiles, where more and narrower tiles put more CTAs on B.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x32(const DenseArgs& args) {
  using Gemm =
      DenseGemm<cute::Shape<cute::_64, cute::_32, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise, cutlass::epilogue::TmaWarpSpecialized, 32>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
