// Dense FP8 GEMM, 64x128x128 tiles, ping-pong, 1x1 cluster, with the promotion overlapped with tensor-core work (two K
// blocks in flight per warpgroup, Promotion::kOverlap); the epilogue piece as in sm90_fp8_dense_64x128.cu.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x128_overlap(const DenseArgs& args) {
  using Gemm =
      DenseGemm<cute::Shape<cute::_64, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise, cutlass::epilogue::TmaWarpSpecialized, 128,
                Promotion::kOverlap, false, cute::Shape<cute::_64, cute::_128>>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
