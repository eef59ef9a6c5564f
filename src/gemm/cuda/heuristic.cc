#include "heuristic.h"

#include <algorithm>
#include <string>
#include <utility>

#include "ff/gemm/gemm.h"

namespace ff::gemm::cuda {

namespace {

// CTAs per cluster along N and along M: the 1x2 clusters (two N-adjacent tiles sharing A) and the 2x1 one.
int64_t cluster_n(TileConfig config) {
  return config == TileConfig::kIndexed128x128Cluster1x2 || config == TileConfig::kCooperative256x128Cluster1x2 ||
                 config == TileConfig::kIndexed256x128Cluster1x2
             ? 2
             : 1;
}
int64_t cluster_m(TileConfig config) { return config == TileConfig::kCooperative128x128Cluster2x1 ? 2 : 1; }

// Relative time of one tile against a 128x128 tile. A 64-row tile does half the tensor-core work but loads the
// same B tile and pays the same per-tile pipeline fill and epilogue, so it costs more than half: 0.7 measured on an
// H200 where the ping-pong kernel ran 3 waves against 2 of 128x128 tiles (m = 128, n = 24576, k = 1536: 128x128
// 4.6-5.2% faster in three runs, bench/results/gemm_h200_tiles.json); it was 0.6 before, which chose the ping-pong
// kernel there (now the one-wave 128x192 tiles, level with 128x128 in those runs).
double relative_tile_time(TileConfig config) {
  switch (config) {
    case TileConfig::kPingpong64x128:
    case TileConfig::kMasked64x128: return 0.7;
    case TileConfig::kCooperative128x128: return 1.0;
    case TileConfig::kCooperative128x128Cluster2x1: return 1.0;
    case TileConfig::kIndexed128x128: return 1.0;
    case TileConfig::kIndexed128x128Cluster1x2: return 1.0;
    case TileConfig::kCooperative128x192: return 1.5;
    case TileConfig::kIndexed128x192: return 1.5;
    // 7/8 of a 128x128 tile's work at 0.8x its rate per FLOP (H200, docs/gemm.md): longer than a 128x128 tile, so
    // never cheaper; not among the heuristic's candidates (forced only).
    case TileConfig::kCooperative128x112: return 1.1;
    case TileConfig::kCooperative128x128Overlap:
    case TileConfig::kCooperative128x128Stagger:
    case TileConfig::kIndexed128x128Overlap:
    case TileConfig::kIndexed128x128Stagger:
    case TileConfig::kMasked128x128Overlap: return 1.0;
    // Not compared by cost: small_m_pingpong() swaps them in for the 64x128 tile by tile count.
    case TileConfig::kPingpong64x64:
    case TileConfig::kPingpong64x32:
    case TileConfig::kPingpong64x16:
    case TileConfig::kPingpong64x192:
    case TileConfig::kPingpong64x16Overlap:
    case TileConfig::kPingpong64x32Overlap:
    case TileConfig::kPingpong64x64Overlap:
    case TileConfig::kPingpong64x128Overlap: return 1.0;
    // Twice a 128x128 tile's work, done at 1.02-1.12x the 128x128 kernels' rate per FLOP on the H200 at m = 4096
    // with short K and level with long K (docs/gemm.md "256-row tiles"): 1.9 lets the tile win where it needs no
    // more waves per unit of work than the 128x128 one.
    case TileConfig::kCooperative256x128:
    case TileConfig::kCooperative256x128Cluster1x2:
    case TileConfig::kIndexed256x128Cluster1x2: return 1.9;
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
    case TileConfig::kCooperative128x192: return "cooperative_128x192";
    case TileConfig::kIndexed128x192: return "indexed_128x192";
    case TileConfig::kCooperative128x128Overlap: return "cooperative_128x128_overlap";
    case TileConfig::kCooperative128x128Stagger: return "cooperative_128x128_stagger";
    case TileConfig::kIndexed128x128Overlap: return "indexed_128x128_overlap";
    case TileConfig::kIndexed128x128Stagger: return "indexed_128x128_stagger";
    case TileConfig::kCooperative128x112: return "cooperative_128x112";
    case TileConfig::kPingpong64x64: return "pingpong_64x64";
    case TileConfig::kPingpong64x32: return "pingpong_64x32";
    case TileConfig::kPingpong64x16: return "pingpong_64x16";
    case TileConfig::kMasked128x128Overlap: return "masked_128x128_overlap";
    case TileConfig::kMasked64x128: return "masked_pingpong_64x128";
    case TileConfig::kCooperative256x128: return "cooperative_256x128";
    case TileConfig::kCooperative256x128Cluster1x2: return "cooperative_256x128_cluster1x2";
    case TileConfig::kIndexed256x128Cluster1x2: return "indexed_256x128_cluster1x2";
    case TileConfig::kPingpong64x192: return "pingpong_64x192";
    case TileConfig::kPingpong64x16Overlap: return "pingpong_64x16_overlap";
    case TileConfig::kPingpong64x32Overlap: return "pingpong_64x32_overlap";
    case TileConfig::kPingpong64x64Overlap: return "pingpong_64x64_overlap";
    case TileConfig::kPingpong64x128Overlap: return "pingpong_64x128_overlap";
  }
  return "?";
}

TileEstimate estimate_tiles(TileConfig config, int64_t rows, int64_t n, int64_t groups, int num_sms) {
  TileEstimate estimate;
  estimate.config = config;
  int64_t tiles_n = ceil_div(n, tile_n(config));
  // A 1x2 cluster launches whole CTA pairs along N: an odd column count runs one empty tile per row of tiles.
  tiles_n = ceil_div(tiles_n, cluster_n(config)) * cluster_n(config);
  estimate.tiles = groups * ceil_div(rows, tile_m(config)) * tiles_n;
  estimate.waves = ceil_div(estimate.tiles, std::max(1, num_sms));
  estimate.cost = static_cast<double>(estimate.waves) * relative_tile_time(config);
  return estimate;
}

namespace {

// Short K: with at most this many 128-wide K blocks per tile, the cooperative kernels' epilogue (not overlapped
// with the next tile's mainloop) is a large share of each tile, and the ping-pong kernel, whose two warpgroups
// overlap one tile's epilogue with the other's mainloop, wins once there are enough tiles to keep both busy.
constexpr int64_t kShortKBlocks = 4;
constexpr int64_t kMinWavesForShortKPingpong = 4;
// The 256-row tiles are candidates from 8 tiles along M (measured at m = 4096; below it a partial 256-row tile wastes
// up to half its work, and the 64- and 128-row tiles fit small m better).
constexpr int64_t kMinRowsFor256RowTiles = 2048;

// The cheapest of the 128-row configurations (`square` = the 128x128 one to use, `wide` = the 128x192 one);
// ties go to the 128x128 tile.
TileConfig cheaper_128_row(TileConfig square, TileConfig wide, int64_t rows, int64_t n, int64_t groups, int num_sms) {
  const TileEstimate a = estimate_tiles(square, rows, n, groups, num_sms);
  const TileEstimate b = estimate_tiles(wide, rows, n, groups, num_sms);
  return b.cost < a.cost ? wide : square;
}

}  // namespace

TileConfig small_m_pingpong(int64_t m, int64_t n, int num_sms) {
  // Each width with the promotion overlapped (two K blocks in flight per warpgroup): with one or two tiles per CTA
  // each CTA is bound by its own issue-wait-promote cycle per K block, which the overlap shortens; on an H200 beside
  // the same tiles without it, same run: 1.01-1.20x on the 9 small-m DeepSeek shapes where the heuristic takes them
  // (bench/results/anchors_h200_gemm_narrow_overlap_ab.json).
  for (const auto& [narrow, overlapped] : {std::pair{TileConfig::kPingpong64x16, TileConfig::kPingpong64x16Overlap},
                                           std::pair{TileConfig::kPingpong64x32, TileConfig::kPingpong64x32Overlap},
                                           std::pair{TileConfig::kPingpong64x64, TileConfig::kPingpong64x64Overlap}}) {
    if (estimate_tiles(narrow, m, n, 1, num_sms).tiles <= num_sms) return overlapped;
  }
  // Wider instead where that saves a wave: 64 x 24576 x 1536 ran 1.22x faster on 64x192 tiles (128, one wave) than on
  // 64x128 ones (192, two waves) on an H200, and 1.11x DeepGEMM's speed
  // (bench/results/anchors_h200_gemm_narrow_ab.json). Filling a wave's last SMs with tiles between 32 and 64 columns
  // did not pay: 64x56 (n = 7168: 128 tiles against 112 of 64x64) ran up to 1.2x slower (seven 8-row B-scale blocks per
  // tile, WideTileMma); nor did 1x2 clusters sharing A by multicast.
  if (estimate_tiles(TileConfig::kPingpong64x128, m, n, 1, num_sms).tiles > num_sms &&
      estimate_tiles(TileConfig::kPingpong64x192, m, n, 1, num_sms).tiles <= num_sms) {
    return TileConfig::kPingpong64x192;
  }
  return TileConfig::kPingpong64x128Overlap;
}

TileConfig choose_dense_config(int64_t m, int64_t n, int64_t k, int num_sms) {
  const TileEstimate small = estimate_tiles(TileConfig::kPingpong64x128, m, n, 1, num_sms);
  const TileEstimate large = estimate_tiles(TileConfig::kCooperative128x128, m, n, 1, num_sms);
  if (small.cost < large.cost) return small_m_pingpong(m, n, num_sms);
  // Large m: the 256x128 tile with the 1x2 cluster (A shared by multicast) where it costs less than the 128-row
  // tiles; it also beat the short-K ping-pong kernel (4096 x 32768 x 512: 1.12x, H200).
  if (m >= kMinRowsFor256RowTiles) {
    const TileEstimate tall = estimate_tiles(TileConfig::kCooperative256x128Cluster1x2, m, n, 1, num_sms);
    const TileConfig wide =
        cheaper_128_row(TileConfig::kCooperative128x128Overlap, TileConfig::kCooperative128x192, m, n, 1, num_sms);
    if (tall.cost < std::min(large.cost, estimate_tiles(wide, m, n, 1, num_sms).cost)) {
      return TileConfig::kCooperative256x128Cluster1x2;
    }
  }
  if (ceil_div(k, 128) <= kShortKBlocks && large.waves >= kMinWavesForShortKPingpong) {
    return TileConfig::kPingpong64x128;
  }
  // The 128x128 tile with the overlapped promotion: at steady state under the power cap it ran 2.4-5.0 % faster
  // than CUTLASS's consumer on the three large dense shapes measured (bench/gemm/energy_gemm.py, H200, 3 s per side,
  // 3 rounds; docs/gemm.md), at a lower clock: more work per cycle for the same power.
  return cheaper_128_row(TileConfig::kCooperative128x128Overlap, TileConfig::kCooperative128x192, m, n, 1, num_sms);
}

// K does not enter the choice (the 256-row contiguous tile won at k = 2048 and 7168 alike).
TileConfig choose_grouped_config(GroupedKind kind, int64_t rows_per_group, int64_t n, int64_t /*k*/,
                                 int64_t num_groups, int num_sms) {
  if (kind == GroupedKind::kContiguous) {
    // The 128x128 tile with the overlapped promotion (two K blocks in flight per warpgroup): faster than CUTLASS's
    // consumer on all four contiguous shapes measured (+0.3% to +3.4%, one run, docs/gemm.md), as on dense and
    // masked at steady state (masked: -0.3 % to +2.9 % on four shapes, bench/gemm/energy_gemm.py --family masked).
    const TileConfig square = cheaper_128_row(TileConfig::kIndexed128x128Overlap, TileConfig::kIndexed128x192,
                                              rows_per_group, n, num_groups, num_sms);
    // Large m_sum: the 256x128 tile (1x2 cluster) where it costs less, as for dense GEMMs (H200: 1.036-1.039x the
    // 128x128 overlap kernel at k = 2048 on the two DeepSeek shapes with n = 7168; at k = 7168 0.975-0.983x before
    // the whole-tile epilogue, 1.020-1.037x with it; docs/gemm.md "256-row tiles"). Where a group
    // boundary falls inside a tile, that tile runs twice (one pass per group); where the boundaries fall is known on
    // the device only, so the estimate counts half of them (segments of random multiples of 128 rows straddle a
    // 256-row tile half the time; the DeepSeek shapes' equal segments of multiples of 256 rows never do).
    const int64_t m_sum = rows_per_group * num_groups;
    if (m_sum >= kMinRowsFor256RowTiles) {
      // Each tile run twice counts as one more row of tiles: 256 more rows.
      const int64_t split_rows = ceil_div(num_groups - 1, 2) * tile_m(TileConfig::kIndexed256x128Cluster1x2);
      const TileEstimate tall =
          estimate_tiles(TileConfig::kIndexed256x128Cluster1x2, m_sum + split_rows, n, 1, num_sms);
      if (tall.cost < estimate_tiles(square, rows_per_group, n, num_groups, num_sms).cost) {
        return TileConfig::kIndexed256x128Cluster1x2;
      }
    }
    return square;
  }
  const TileEstimate small = estimate_tiles(TileConfig::kMasked64x128, rows_per_group, n, num_groups, num_sms);
  const TileEstimate large = estimate_tiles(TileConfig::kMasked128x128Overlap, rows_per_group, n, num_groups, num_sms);
  // Few rows per group: the masked kernel's 64-row ping-pong variant; on the three decode layouts measured it read
  // B at 1.00-1.06x the ptr-array ping-pong kernel's rate (bench/results/gemm_h200_masked_decode.json).
  if (small.cost < large.cost) return TileConfig::kMasked64x128;
  // Masked, 128-row tiles: the dense kernel with the groups as its batch (MaskedGemm): at steady state 16-19 % faster
  // than the ptr-array kernel with the same consumer on the four masked shapes measured, level with per-group
  // cuBLASLt (0.98-1.06x; bench/results/gemm_h200_energy_masked.json, docs/gemm.md "Masked kernel"). The ptr-array
  // 128x192 tile is no longer a candidate (forced only): the waves it saves on some shapes were never measured to
  // outweigh that gain.
  return TileConfig::kMasked128x128Overlap;
}

Schedule choose_schedule(TileConfig config, bool grouped, int64_t rows, int64_t n, int64_t k, int64_t groups,
                         int num_sms) {
  (void)num_sms;
  // Long K only: the swizzle narrows the band of A and B tiles the concurrently running CTAs read (L2 reuse),
  // which matters when each tile streams many K blocks.
  constexpr int64_t kMinKBlocksForSwizzle = 32;
  if (ceil_div(k, 128) < kMinKBlocksForSwizzle) return Schedule{};
  // The ptr-array (masked / forced grouped) kernels schedule per problem: keep CUTLASS's walk.
  const bool single_problem = !grouped || is_indexed(config);
  if (!single_problem) return Schedule{};
  // CUTLASS rounds both tile counts up to a multiple of swizzle x cluster size and computes the padding tiles
  // (empty, but each takes a CTA's turn: swizzle 8 on n = 2112, 17 -> 24 column tiles, measured 660 against
  // 1102 TFLOPS), so only a swizzle that divides both counts is used. And only on grids of at least 8 x 8 tiles,
  // where a band of 8 rows or columns is narrower than the grid: the measured gains (+5-11%) are on 32 x 32 and
  // larger grids, while m = 128 (2 row tiles of 64) with swizzle 2 ran 598-633 TFLOPS on 128 x 7168 x 16384
  // against 736 with CUTLASS's walk in an earlier run.
  const int64_t tiles_m = (grouped ? groups : 1) * ceil_div(rows, tile_m(config));
  const int64_t tiles_n = ceil_div(n, tile_n(config));
  constexpr int64_t kMinTilesForSwizzle = 8;
  if (std::min(tiles_m, tiles_n) < kMinTilesForSwizzle) return Schedule{};
  for (const int swizzle : {8, 4, 2}) {
    if (tiles_m % (swizzle * cluster_m(config)) == 0 && tiles_n % (swizzle * cluster_n(config)) == 0) {
      return Schedule{0, swizzle};
    }
  }
  return Schedule{};
}

std::optional<TileConfig> parse_tile_config(std::string_view name) {
  for (int i = 0; i < kNumTileConfigs; ++i) {
    const auto config = static_cast<TileConfig>(i);
    if (name == tile_config_name(config)) return config;
  }
  return std::nullopt;
}

}  // namespace ff::gemm::cuda

namespace ff::gemm {

Result<std::string> cuda_kernel_choice(std::string_view kind, int64_t rows, int64_t n, int64_t k, int64_t groups,
                                       int num_sms) {
  using namespace cuda;
  if (rows < 0 || n < 0 || k < 0 || groups < 1 || num_sms < 1) {
    return invalid_argument("cuda_kernel_choice: rows={}, n={}, k={}, groups={}, num_sms={}: expected sizes >= 0, "
                            "groups >= 1 and num_sms >= 1",
                            rows, n, k, groups, num_sms);
  }
  TileConfig config;
  bool grouped = true;
  if (kind == "dense") {
    config = choose_dense_config(rows, n, k, num_sms);
    grouped = false;
  } else if (kind == "contiguous") {
    config = choose_grouped_config(GroupedKind::kContiguous, rows, n, k, groups, num_sms);
  } else if (kind == "masked") {
    config = choose_grouped_config(GroupedKind::kMasked, rows, n, k, groups, num_sms);
  } else {
    return invalid_argument("cuda_kernel_choice: kind '{}' is not one of dense, contiguous, masked", kind);
  }
  const Schedule schedule = choose_schedule(config, grouped, rows, n, k, groups, num_sms);
  static constexpr const char* kRaster[] = {"default", "m", "n"};
  return std::string(tile_config_name(config)) + " " + kRaster[schedule.raster] + ":" +
         std::to_string(schedule.swizzle);
}

}  // namespace ff::gemm
