// Grouped FP8 GEMM (contiguous and masked, ptr-array), 128x112x128 tiles, cooperative, 1x1 cluster, B scales at a
// 16-row granularity (expanded per group from the 128x128 blocks).
// CUTLASS's MMA-atom selector offers N = 112 (m64n112k32) only with its extended GMMA shapes; without them it falls
// back to seven m64n16k32 WGMMAs per k-step, which ran at about half the speed (measured on an H200). Only this file
// instantiates 112-wide tiles, so the other kernels' atoms are unaffected.
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_grouped_cooperative_128x112(const GroupedArgs& args) {
  using Gemm = GroupedGemm<cute::Shape<cute::_128, cute::_112, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                           cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                           cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, 16>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
