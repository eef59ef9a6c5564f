// Contiguous grouped FP8 GEMM on the dense kernel with the group-indexed mainloop (IndexedGemm), 256x128x128 tiles,
// cooperative, 1x2 cluster (two N-adjacent CTAs share each 256-row A tile by TMA multicast), each consumer
// warpgroup holding two 64-row waves (WaveMma), the tile stored whole (WholeTileEpilogue: both 128x128 pieces
// written, then stored by TMA), as the dense 256x128 kernel's with the 1x2 cluster.
// Segments are 128-aligned, so a tile's two 128-row blocks may belong to two groups: ContiguousTileScheduler gives
// such a tile one pass over K per group (the rows of the other group's wave idle in that pass).
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_contiguous_indexed_256x128_cluster1x2(const GroupedArgs& args) {
  using Tile = cute::Shape<cute::_256, cute::_128, cute::_128>;
  using Cluster = cute::Shape<cute::_1, cute::_2, cute::_1>;
  using Pieces = cute::Shape<cute::_128, cute::_128>;
  using Gemm = IndexedGemm<Tile, Cluster, 128, Promotion::kWaves, Pieces, /*kWholeTileEpilogue=*/true>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
