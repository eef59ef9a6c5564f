#include "heuristic.h"

#include <algorithm>

namespace ff::gemm::cuda {

namespace {

// Relative time of one tile against a 128x128 tile. A 64-row tile does half the tensor-core work but loads the
// same B tile and pays the same per-tile pipeline fill and epilogue, so it costs more than half.
double relative_tile_time(TileConfig config) {
  switch (config) {
    case TileConfig::kPingpong64x128: return 0.6;
    case TileConfig::kCooperative128x128: return 1.0;
    case TileConfig::kCooperative128x128Cluster2x1: return 1.0;
    case TileConfig::kIndexed128x128: return 1.0;
    case TileConfig::kIndexed128x128Cluster1x2: return 1.0;
  }
  return 1.0;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

const char* tile_config_name(TileConfig config) {
  switch (config) {
    case TileConfig::kPingpong64x128: return "pingpong_64x128";
    case TileConfig::kCooperative128x128: return "cooperative_128x128";
    case TileConfig::kCooperative128x128Cluster2x1: return "cooperative_128x128_cluster2x1";
    case TileConfig::kIndexed128x128: return "indexed_128x128";
    case TileConfig::kIndexed128x128Cluster1x2: return "indexed_128x128_cluster1x2";
  }
  return "?";
}

TileEstimate estimate_tiles(TileConfig config, int64_t rows, int64_t n, int64_t groups, int num_sms) {
  TileEstimate estimate;
  estimate.config = config;
  estimate.tiles = groups * ceil_div(rows, tile_m(config)) * ceil_div(n, tile_n(config));
  estimate.waves = ceil_div(estimate.tiles, std::max(1, num_sms));
  estimate.cost = static_cast<double>(estimate.waves) * relative_tile_time(config);
  return estimate;
}

TileConfig choose_dense_config(int64_t m, int64_t n, int num_sms) {
  const TileEstimate small = estimate_tiles(TileConfig::kPingpong64x128, m, n, 1, num_sms);
  const TileEstimate large = estimate_tiles(TileConfig::kCooperative128x128, m, n, 1, num_sms);
  if (small.cost < large.cost) return TileConfig::kPingpong64x128;
  constexpr int64_t kMinRowTilesForCluster = 8;
  if (ceil_div(m, 128) >= kMinRowTilesForCluster) return TileConfig::kCooperative128x128Cluster2x1;
  return TileConfig::kCooperative128x128;
}

TileConfig choose_grouped_config(GroupedKind kind, int64_t rows_per_group, int64_t n, int64_t num_groups, int num_sms) {
  if (kind == GroupedKind::kContiguous) return TileConfig::kIndexed128x128;
  const TileEstimate small = estimate_tiles(TileConfig::kPingpong64x128, rows_per_group, n, num_groups, num_sms);
  const TileEstimate large = estimate_tiles(TileConfig::kCooperative128x128, rows_per_group, n, num_groups, num_sms);
  return small.cost < large.cost ? TileConfig::kPingpong64x128 : TileConfig::kCooperative128x128;
}

std::optional<TileConfig> parse_tile_config(std::string_view name) {
  for (int i = 0; i < kNumTileConfigs; ++i) {
    const auto config = static_cast<TileConfig>(i);
    if (name == tile_config_name(config)) return config;
  }
  return std::nullopt;
}

}  // namespace ff::gemm::cuda
