// Contiguous grouped FP8 GEMM on the dense kernel with the group-indexed mainloop (IndexedGemm), 256x128x128 tiles,
// cooperative, 1x2 cluster (two N-adjacent CTAs share each 256-row A tile by TMA multicast), each consumer
// warpgroup holding two 64-row waves (WaveMma), the tile stored in 128x128 pieces as the dense 256x128 kernel's.
// Segments are 128-aligned, so a tile's two 128-row blocks may belong to two groups: ContiguousTileScheduler gives
// such a tile one pass over K per group (the rows of the other group's wave idle in that pass).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_contiguous_indexed_256x128_cluster1x2(const GroupedArgs& args) {
  using Gemm = IndexedGemm<cute::Shape<cute::_256, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_2, cute::_1>,
                           128, Promotion::kWaves, cute::Shape<cute::_128, cute::_128>>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
