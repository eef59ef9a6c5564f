// The CUDA backend's tile heuristic is plain host code: its choices are fixed and tested without a GPU.
#include "cuda/heuristic.h"

#include <gtest/gtest.h>

#include "ff/gemm/gemm.h"

namespace ff::gemm::cuda {
namespace {

constexpr int kH100Sms = 132;

TEST(Heuristic, SmallMUses64RowTilesNarrowedToFillOneWave) {
  // The narrowest 64-row tile whose tiles fit one wave: n = 2112 is 132 tiles of 16 (m = 64) -> 64x16; at m = 128
  // 264 of 16 but 132 of 32 -> 64x32; n = 4096: 128 tiles of 32 (m = 64), 128 of 64 (m = 128); n = 7168: 112 tiles
  // of 64 (m = 64), at m = 128 even 64-wide tiles need 224 -> 64x128. Each with the promotion overlapped.
  EXPECT_EQ(choose_dense_config(64, 2112, 7168, kH100Sms), TileConfig::kPingpong64x16Overlap);
  EXPECT_EQ(choose_dense_config(128, 2112, 7168, kH100Sms), TileConfig::kPingpong64x32Overlap);
  EXPECT_EQ(choose_dense_config(64, 4096, 7168, kH100Sms), TileConfig::kPingpong64x32Overlap);
  EXPECT_EQ(choose_dense_config(128, 4096, 7168, kH100Sms), TileConfig::kPingpong64x64Overlap);
  EXPECT_EQ(choose_dense_config(1, 7168, 2048, kH100Sms), TileConfig::kPingpong64x64Overlap);
  EXPECT_EQ(choose_dense_config(64, 7168, 16384, kH100Sms), TileConfig::kPingpong64x64Overlap);
  EXPECT_EQ(choose_dense_config(128, 7168, 16384, kH100Sms), TileConfig::kPingpong64x128Overlap);
  // More than one wave of 64x128 tiles (n = 24576: 192) but one of 64x192 (128): the wider tile; two waves of both
  // (n = 32768: 256 and 171): 64x128.
  EXPECT_EQ(choose_dense_config(64, 24576, 1536, kH100Sms), TileConfig::kPingpong64x192);
  EXPECT_EQ(small_m_pingpong(64, 24576, kH100Sms), TileConfig::kPingpong64x192);
  EXPECT_EQ(choose_dense_config(64, 32768, 512, kH100Sms), TileConfig::kPingpong64x128Overlap);
  // Fewer SMs (set_num_sms): fewer tiles fit one wave.
  EXPECT_EQ(small_m_pingpong(64, 2112, 66), TileConfig::kPingpong64x32Overlap);
  // On 16 SMs: 17 tiles of 64x128 (two waves), 11 of 64x192 (one); on 8, two waves of either.
  EXPECT_EQ(small_m_pingpong(64, 2112, 16), TileConfig::kPingpong64x192);
  EXPECT_EQ(small_m_pingpong(64, 2112, 8), TileConfig::kPingpong64x128Overlap);
}

TEST(Heuristic, WaveQuantisationDecidesMidSizes) {
  // m=128, n=4096: 32 tiles of 128x128 (one wave) against 64 tiles of 64x128 (also one wave): the cost is one tile
  // time each, 0.7 < 1.0, so the 64-row tiles (then narrowed to 64x64, above).
  EXPECT_EQ(estimate_tiles(TileConfig::kPingpong64x128, 128, 4096, 1, kH100Sms).cost, 0.7);
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative128x128, 128, 4096, 1, kH100Sms).cost, 1.0);
  // m=128, n=24576: 192 tiles of 128x128 = 2 waves (cost 2) vs 384 of 64x128 = 3 waves (cost 2.1) vs 128 of
  // 128x192 = 1 wave (cost 1.5). Measured there: 128x192 and 128x128 within 2% of each other, both 3-5% faster
  // than the ping-pong kernel.
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative128x128, 128, 24576, 1, kH100Sms).waves, 2);
  EXPECT_EQ(estimate_tiles(TileConfig::kPingpong64x128, 128, 24576, 1, kH100Sms).waves, 3);
  EXPECT_EQ(choose_dense_config(128, 24576, 1536, kH100Sms), TileConfig::kCooperative128x192);
}

TEST(Heuristic, LargeMUsesCooperativeTiles) {
  // From m = 2048 the 256x128 tile (1x2 cluster) where it costs less: n = 7168, 896 tiles, 7 waves x 1.9 = 13.3
  // against 14 waves of 128x128 tiles.
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative256x128Cluster1x2, 4096, 7168, 1, kH100Sms).waves, 7);
  EXPECT_EQ(choose_dense_config(4096, 7168, 16384, kH100Sms), TileConfig::kCooperative256x128Cluster1x2);
  EXPECT_EQ(choose_dense_config(4096, 24576, 1536, kH100Sms), TileConfig::kCooperative256x128Cluster1x2);
  // Below m = 2048, 128x128 tiles with the overlapped promotion (faster at steady state, docs/gemm.md).
  EXPECT_EQ(choose_dense_config(512, 16384, 7168, kH100Sms), TileConfig::kCooperative128x128Overlap);
  EXPECT_EQ(choose_dense_config(1024, 7168, 16384, kH100Sms), TileConfig::kCooperative128x128Overlap);
  // The 1x2 cluster pads an odd column count: n = 2112 is 17 column tiles of 128, launched as 18.
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative256x128Cluster1x2, 4096, 2112, 1, kH100Sms).tiles, 16 * 18);
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative256x128, 4096, 2112, 1, kH100Sms).tiles, 16 * 17);
  // n = 2112: 17 column tiles of 128 (544 tiles, 5 waves: cost 5) vs 11 of 192 (352 tiles, 3 waves x 1.5 = 4.5) vs
  // 288 tiles of 256x128 (3 waves x 1.9 = 5.7).
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative128x192, 4096, 2112, 1, kH100Sms).waves, 3);
  EXPECT_EQ(choose_dense_config(4096, 2112, 7168, kH100Sms), TileConfig::kCooperative128x192);
  // n = 7168: 14 waves of 128x128 (cost 14) vs 10 of 128x192 (cost 15) vs 7 of 256x128 (cost 13.3).
  EXPECT_EQ(choose_dense_config(4096, 7168, 2048, kH100Sms), TileConfig::kCooperative256x128Cluster1x2);
  EXPECT_EQ(choose_dense_config(4096, 4096, 7168, kH100Sms), TileConfig::kCooperative256x128Cluster1x2);
  // m = 2048, n = 2112: 8 x 18 = 144 tiles of 256x128, 2 waves (3.8) vs 272 of 128x128, 3 waves (3).
  EXPECT_EQ(choose_dense_config(2048, 2112, 7168, kH100Sms), TileConfig::kCooperative128x128Overlap);
}

TEST(Heuristic, ShortKUsesThePingpongKernelWhenThereAreManyTiles) {
  // k = 512 (4 K blocks): 63 waves of 128x128 tiles -> ping-pong below m = 2048; from it the 256x128 tile when
  // cheaper (4096 x 32768: 32 waves x 1.9 = 60.8 against 63); at m = 128 only 2 waves -> the cheaper 128x128.
  EXPECT_EQ(choose_dense_config(1024, 32768, 512, kH100Sms), TileConfig::kPingpong64x128);
  EXPECT_EQ(choose_dense_config(4096, 32768, 512, kH100Sms), TileConfig::kCooperative256x128Cluster1x2);
  EXPECT_EQ(choose_dense_config(128, 32768, 512, kH100Sms), TileConfig::kCooperative128x128Overlap);
  EXPECT_EQ(choose_dense_config(1024, 32768, 640, kH100Sms), TileConfig::kCooperative128x128Overlap);
}

TEST(Heuristic, GroupedChoices) {
  // Contiguous: always an indexed dense kernel (any rows per group: segments are 128-aligned).
  // 128x128 tiles use the overlapped promotion (measured faster at steady state, docs/gemm.md).
  // The DeepSeek contiguous shapes take the 256x128 tile (1x2 cluster), with half the group boundaries counted as
  // tiles run twice: 8 x 4096 x 7168 x 2048: (128 x 56 + 4 x 56) tiles = 56 waves x 1.9 = 106.4 against 109 for
  // 128x128; at k = 7168 too (4 x 8192 x 4096: 32 waves x 1.9 = 60.8 against 63; 8 x 4096 x 4096: (128 + 4) x 32
  // tiles, 32 waves, 60.8 against 63).
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 8192, 4096, 7168, 4, kH100Sms),
            TileConfig::kIndexed256x128Cluster1x2);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 4096, 4096, 7168, 8, kH100Sms),
            TileConfig::kIndexed256x128Cluster1x2);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 8192, 4096, 2048, 4, kH100Sms),
            TileConfig::kIndexed256x128Cluster1x2);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 8192, 7168, 2048, 4, kH100Sms),
            TileConfig::kIndexed256x128Cluster1x2);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 4096, 7168, 2048, 8, kH100Sms),
            TileConfig::kIndexed256x128Cluster1x2);
  // Many small groups: the boundaries' second passes (32 x 56 tiles: 17 waves x 1.9 = 32.3) cost more than 128x128
  // tiles (28 waves); and below 2048 rows in all the 256-row tile is not a candidate.
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 32, 7168, 2048, 64, kH100Sms),
            TileConfig::kIndexed128x128Overlap);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 256, 7168, 2048, 4, kH100Sms),
            TileConfig::kIndexed128x128Overlap);
  EXPECT_TRUE(is_indexed(choose_grouped_config(GroupedKind::kContiguous, 4096, 7168, 2048, 8, kH100Sms)));
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 32, 4096, 7168, 8, kH100Sms), TileConfig::kMasked64x128);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 64, 4096, 7168, 16, kH100Sms), TileConfig::kMasked64x128);
  // n = 7168: 56 column tiles of 128 (8 x 56 = 448 tiles, 4 waves) vs 64 of 112 (512 tiles, also 4 waves): the
  // 112-wide tile fills the last wave but ran at 0.8x the 128-wide one's rate (docs/gemm.md), so it is never chosen.
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative128x112, 1024, 7168, 1, kH100Sms).tiles, 512);
  // Masked with 128-row tiles: the masked dense kernel (groups as the batch), whatever the width would save.
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 1024, 7168, 2048, 1, kH100Sms),
            TileConfig::kMasked128x128Overlap);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 256, 7168, 2048, 4, kH100Sms),
            TileConfig::kMasked128x128Overlap);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 512, 4096, 7168, 2, kH100Sms),
            TileConfig::kMasked128x128Overlap);
  EXPECT_TRUE(is_masked_only(choose_grouped_config(GroupedKind::kMasked, 1024, 4096, 7168, 1, kH100Sms)));
  // Masked never gets an indexed (contiguous-only) kernel, and dense never does either; only masked gets the
  // masked-only kernel.
  for (int64_t rows : {1, 64, 256, 1024, 8192}) {
    EXPECT_FALSE(is_indexed(choose_grouped_config(GroupedKind::kMasked, rows, 4096, 7168, 4, kH100Sms))) << rows;
    EXPECT_FALSE(is_indexed(choose_dense_config(rows, 4096, 7168, kH100Sms))) << rows;
    EXPECT_FALSE(is_masked_only(choose_dense_config(rows, 4096, 7168, kH100Sms))) << rows;
    EXPECT_FALSE(is_masked_only(choose_grouped_config(GroupedKind::kContiguous, rows, 4096, 7168, 4, kH100Sms)))
        << rows;
  }
}

TEST(Heuristic, ScheduleSwizzlesLongKOnlyWithoutPaddingTiles) {
  // k = 16384, 32 x 56 tiles: both divisible by 8 -> swizzle 8, CUTLASS's raster.
  Schedule s = choose_schedule(TileConfig::kCooperative128x128, false, 4096, 7168, 16384, 1, kH100Sms);
  EXPECT_EQ(s.raster, 0);
  EXPECT_EQ(s.swizzle, 8);
  // n = 2112: 17 column tiles of 128; any swizzle would pad them -> CUTLASS's default walk.
  s = choose_schedule(TileConfig::kCooperative128x128, false, 4096, 2112, 7168, 1, kH100Sms);
  EXPECT_EQ(s.swizzle, 0);
  // 128x192 on n = 7168: 38 column tiles -> swizzle 2.
  EXPECT_EQ(choose_schedule(TileConfig::kCooperative128x192, false, 4096, 7168, 16384, 1, kH100Sms).swizzle, 2);
  // Short K: no swizzle.
  EXPECT_EQ(choose_schedule(TileConfig::kCooperative128x128, false, 4096, 7168, 2048, 1, kH100Sms).swizzle, 0);
  // Contiguous (indexed, one problem over all groups' rows): 4 x 8192 rows -> 256 row tiles.
  EXPECT_EQ(choose_schedule(TileConfig::kIndexed128x128, true, 8192, 4096, 7168, 4, kH100Sms).swizzle, 8);
  EXPECT_EQ(choose_schedule(TileConfig::kIndexed128x128Overlap, true, 8192, 4096, 7168, 4, kH100Sms).swizzle, 8);
  // Masked (ptr-array, per-problem scheduling): CUTLASS's walk. The masked-only kernel walks its own order (valid
  // tiles group by group): no schedule.
  EXPECT_EQ(choose_schedule(TileConfig::kCooperative128x128, true, 1024, 4096, 7168, 1, kH100Sms).swizzle, 0);
  s = choose_schedule(TileConfig::kMasked128x128Overlap, true, 1024, 4096, 7168, 8, kH100Sms);
  EXPECT_EQ(s.raster, 0);
  EXPECT_EQ(s.swizzle, 0);
  // The 2x1 cluster needs the row tiles to divide by 2 x swizzle.
  EXPECT_EQ(choose_schedule(TileConfig::kCooperative128x128Cluster2x1, false, 128 * 24, 1024, 8192, 1, kH100Sms)
                .swizzle,
            4);
}

TEST(Heuristic, KernelChoiceIsDescribedWithoutAGpu) {
  // 16 x 56 tiles of 256x128 in 1x2 clusters: the swizzle must divide 16 and 56 / 2.
  EXPECT_EQ(*cuda_kernel_choice("dense", 4096, 7168, 16384, 1, kH100Sms), "cooperative_256x128_cluster1x2 default:4");
  EXPECT_EQ(*cuda_kernel_choice("dense", 1024, 7168, 16384, 1, kH100Sms), "cooperative_128x128_overlap default:8");
  EXPECT_EQ(*cuda_kernel_choice("dense", 64, 2112, 7168, 1, kH100Sms), "pingpong_64x16_overlap default:0");
  EXPECT_EQ(*cuda_kernel_choice("dense", 64, 24576, 1536, 1, kH100Sms), "pingpong_64x192 default:0");
  EXPECT_EQ(*cuda_kernel_choice("contiguous", 8192, 4096, 7168, 4, kH100Sms), "indexed_256x128_cluster1x2 default:8");
  EXPECT_EQ(*cuda_kernel_choice("contiguous", 4096, 7168, 2048, 8, kH100Sms), "indexed_256x128_cluster1x2 default:0");
  EXPECT_EQ(*cuda_kernel_choice("masked", 1024, 4096, 7168, 1, kH100Sms), "masked_128x128_overlap default:0");
  EXPECT_FALSE(cuda_kernel_choice("sparse", 1, 1, 1, 1, kH100Sms).is_ok());
  EXPECT_FALSE(cuda_kernel_choice("dense", 1, 1, 1, 1, 0).is_ok());
}

TEST(Heuristic, ConfigNamesRoundTrip) {
  for (int i = 0; i < kNumTileConfigs; ++i) {
    const auto config = static_cast<TileConfig>(i);
    EXPECT_EQ(parse_tile_config(tile_config_name(config)), config);
  }
  EXPECT_FALSE(parse_tile_config("128x256").has_value());
}

}  // namespace
}  // namespace ff::gemm::cuda
