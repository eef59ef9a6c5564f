// Dense FP8 GEMM, 256x128x128 tiles, cooperative: each consumer warpgroup holds two 64-row waves of the tile's total
// and promotes one wave's K block at a time (Promotion::kWaves, WaveMma). Cluster 1x1, or 1x2: the two CTAs of a
// cluster compute horizontally adjacent tiles and share each 256-row A tile by TMA multicast. The epilogue stores a
// tile in 128x128 pieces (CUTLASS's automatic choice is 128x32; 3 mainloop stages instead of 4 then): on an H200,
// 4096 x 32768 x 512 ran 1.12x the heuristic's former kernel with them against 1.06-1.07x with 128x32 and 128x64
// pieces (docs/gemm.md "256-row tiles"). With the 1x2 cluster (the heuristic's) both pieces are written before
// either is stored (WholeTileEpilogue): 1.00-1.06x CUTLASS's piece-by-piece store on the m = 4096 shapes (H200,
// same run; docs/gemm.md "Beside DeepGEMM").
#include "sm90_fp8_gemm.cuh"

namespace ff::gemm::cuda {

std::string run_dense_cooperative_256x128(const DenseArgs& args) {
  using Gemm = DenseGemm<cute::Shape<cute::_256, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                         cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise,
                         cutlass::epilogue::TmaWarpSpecializedCooperative, 128, Promotion::kWaves, false,
                         cute::Shape<cute::_128, cute::_128>>;
  return Gemm::run(args);
}

std::string run_dense_cooperative_256x128_cluster1x2(const DenseArgs& args) {
  using Tile = cute::Shape<cute::_256, cute::_128, cute::_128>;
  using Cluster = cute::Shape<cute::_1, cute::_2, cute::_1>;
  using Pieces = cute::Shape<cute::_128, cute::_128>;
  using Mainloop = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
  using Gemm = DenseGemm<Tile, Cluster, Mainloop, Epilogue, 128, Promotion::kWaves, false, Pieces, detail::ConvertToD,
                         /*kWholeTileEpilogue=*/true>;
  return Gemm::run(args);
}

}  // namespace ff::gemm::cuda
