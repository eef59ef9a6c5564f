// Dense FP8 GEMM, 64x192x128 tiles, ping-pong, 1x1 cluster, B scales at a 64-row granularity read from the caller's
// 128x128 blocks (WideTileMma): small m with n = 24576, where 64x128 tiles need two waves (192 tiles on 132 SMs)
// and 64x192 ones one (128 tiles).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x192(const DenseArgs& args) { return run_narrow_dense<192>(args); }

}  // namespace ff::gemm::cuda
