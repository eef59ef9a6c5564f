// Dense FP8 GEMM, 64x64x128 tiles, ping-pong, 1x1 cluster, B scales read from the caller's 128x128 blocks, with the
// promotion overlapped with tensor-core work (two K blocks in flight per warpgroup, Promotion::kOverlap): small m,
// where each CTA runs one or two tiles and is bound by its own issue-wait-promote cycle per K block.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x64_overlap(const DenseArgs& args) {
  return run_narrow_dense<64, Promotion::kOverlap>(args);
}

}  // namespace ff::gemm::cuda
