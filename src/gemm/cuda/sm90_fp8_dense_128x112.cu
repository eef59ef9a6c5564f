// Dense FP8 GEMM, 128x112x128 tiles, cooperative (two consumer warpgroups of 64x112), 1x1 cluster, B scales at a
// 16-row granularity (read from the 128x128 blocks; a 112-row tile straddles two of them): 7/8 of the work of
// a 128x128 tile, for shapes whose 128-wide tile count leaves the last wave mostly idle (n = 7168: 64 column tiles
// instead of 56).
// CUTLASS's MMA-atom selector offers N = 112 (m64n112k32) only with its extended GMMA shapes; without them it falls
// back to seven m64n16k32 WGMMAs per k-step, which ran at about half the speed (measured on an H200). Only this file
// instantiates 112-wide tiles, so the other kernels' atoms are unaffected.
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_cooperative_128x112(const DenseArgs& args) {
  return run_dense_reading_scales_b<cute::Shape<cute::_128, cute::Int<112>, cute::_128>,
                                    cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise,
                                    cutlass::epilogue::TmaWarpSpecializedCooperative, 16>(args);
}

}  // namespace ff::gemm::cuda
