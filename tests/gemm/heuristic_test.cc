// The CUDA backend's tile heuristic is plain host code: its choices are fixed and tested without a GPU.
#include "cuda/heuristic.h"

#include <gtest/gtest.h>

namespace ff::gemm::cuda {
namespace {

constexpr int kH100Sms = 132;

TEST(Heuristic, SmallMUses64RowTiles) {
  EXPECT_EQ(choose_dense_config(1, 7168, kH100Sms), TileConfig::kPingpong64x128);
  EXPECT_EQ(choose_dense_config(64, 2112, kH100Sms), TileConfig::kPingpong64x128);
}

TEST(Heuristic, WaveQuantisationDecidesMidSizes) {
  // m=128, n=4096: 32 tiles of 128x128 (one wave) beat 64 tiles of 64x128 (also one wave, 0.6 each is cheaper)?
  // Both fit one wave, so the cost is one tile time each: 0.6 < 1.0, the 64-row tiles finish first.
  EXPECT_EQ(choose_dense_config(128, 4096, kH100Sms), TileConfig::kPingpong64x128);
  // m=128, n=24576: 192 tiles of 128x128 = 2 waves (cost 2) vs 384 of 64x128 = 3 waves (cost 1.8).
  EXPECT_EQ(estimate_tiles(TileConfig::kCooperative128x128, 128, 24576, 1, kH100Sms).waves, 2);
  EXPECT_EQ(estimate_tiles(TileConfig::kPingpong64x128, 128, 24576, 1, kH100Sms).waves, 3);
  EXPECT_EQ(choose_dense_config(128, 24576, kH100Sms), TileConfig::kPingpong64x128);
}

TEST(Heuristic, LargeMUsesTheClusteredCooperativeKernel) {
  EXPECT_EQ(choose_dense_config(4096, 7168, kH100Sms), TileConfig::kCooperative128x128Cluster2x1);
  EXPECT_EQ(choose_dense_config(4096, 2112, kH100Sms), TileConfig::kCooperative128x128Cluster2x1);
  // 512 rows: 4 row tiles, below the cluster threshold.
  EXPECT_EQ(choose_dense_config(512, 16384, kH100Sms), TileConfig::kCooperative128x128);
}

TEST(Heuristic, GroupedChoices) {
  // Contiguous: always the indexed dense kernel (any rows per group: segments are 128-aligned).
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 8192, 4096, 4, kH100Sms), TileConfig::kIndexed128x128);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kContiguous, 32, 7168, 64, kH100Sms), TileConfig::kIndexed128x128);
  EXPECT_TRUE(is_indexed(choose_grouped_config(GroupedKind::kContiguous, 4096, 7168, 8, kH100Sms)));
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 32, 4096, 8, kH100Sms), TileConfig::kPingpong64x128);
  EXPECT_EQ(choose_grouped_config(GroupedKind::kMasked, 1024, 7168, 1, kH100Sms), TileConfig::kCooperative128x128);
  // Masked never gets an indexed (contiguous-only) kernel, and dense never does either.
  for (int64_t rows : {1, 64, 256, 1024, 8192}) {
    EXPECT_FALSE(is_indexed(choose_grouped_config(GroupedKind::kMasked, rows, 4096, 4, kH100Sms))) << rows;
    EXPECT_FALSE(is_indexed(choose_dense_config(rows, 4096, kH100Sms))) << rows;
  }
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
