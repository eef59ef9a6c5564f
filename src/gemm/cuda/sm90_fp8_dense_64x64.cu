// Dense FP8 GEMM, 64x64x128 tiles, ping-pong, 1x1 cluster, B scales read from the caller's 128x128 blocks at a
// 64-row granularity (run_narrow_dense): small m with few 128-wide column tiles, where more and narrower tiles put
// more CTAs on B.
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x64(const DenseArgs& args) { return run_narrow_dense<64>(args); }

}  // namespace ff::gemm::cuda
