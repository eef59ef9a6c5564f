// The deterministic block-size heuristic of the CUDA backend: which ahead-of-time tile configuration runs a given
// shape. Plain C++ (no CUDA) so CI tests it on a machine without a GPU. See docs/gemm.md "Heuristic".
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "launch.h"

namespace ff::gemm::cuda {

struct TileEstimate {
  TileConfig config = TileConfig::kCooperative128x128;
  int64_t tiles = 0;  // output tiles of the whole call
  int64_t waves = 0;  // ceil(tiles / num_sms): rounds of the persistent grid
  double cost = 0.0;  // waves x relative time of one tile (a 128x128 tile = 1)
};

// The estimate of one configuration for `rows` output rows (per group) x n, over `groups` independent groups.
TileEstimate estimate_tiles(TileConfig config, int64_t rows, int64_t n, int64_t groups, int num_sms);

// Small m (the dense 64x128 ping-pong tile chosen by cost below): the narrowest 64-row tile (16, 32, 64 wide)
// whose tiles still fit one wave of num_sms CTAs, else 64x192 where its tiles fit one wave and 64x128 ones do not,
// else 64x128. Why: with few 128-wide column tiles, each of the few
// CTAs is bound by its own K-block cycle, and more, narrower tiles put more SMs on the same bytes of B; one wave,
// because a second wave of narrow tiles re-reads A and pays the per-tile costs again (measured on an H200,
// docs/gemm.md "Narrow tiles").
TileConfig small_m_pingpong(int64_t m, int64_t n, int num_sms);

// Dense: the configuration with the least cost (wave quantisation over the SMs); ties go to the larger tile; from
// m = 2048 the 256x128 tile (1x2 cluster) where it costs less than the 128-row tiles; short K (at most 4 K blocks)
// with at least 4 waves of 128x128 tiles takes the ping-pong kernel (overlapped epilogue).
// Between the 128x128 and 128x192 tiles the lower cost wins, ties to 128x128. The 2x1 cluster is not chosen
// (docs/gemm.md "Heuristic": not faster in the measurements).
TileConfig choose_dense_config(int64_t m, int64_t n, int64_t k, int num_sms);

// Grouped: `rows_per_group` is expected_m (masked) or m_sum / num_groups (contiguous). Contiguous always uses an
// indexed kernel (the dense kernel over all rows, B picked per 128-row block: the 128x128 one with the overlapped
// promotion, or 128x192 where it needs fewer waves, or from 2048 rows in all the 256x128 one with a 1x2 cluster where
// it costs less, counting half the group boundaries as tiles run twice; segments are 128-aligned, so 64-row tiles
// would only add tiles). K does not enter the choice.
// Masked uses the masked dense kernel (the groups as its batch): 128x128 tiles, or its 64-row ping-pong variant when
// that costs less (few rows per group).
TileConfig choose_grouped_config(GroupedKind kind, int64_t rows_per_group, int64_t n, int64_t k, int64_t num_groups,
                                 int num_sms);

// The tile scheduler's walk (raster order, swizzle) for `config` on `rows` (per group) x n x k over `groups`
// groups; `grouped` for the grouped GEMMs. {0, 0} keeps CUTLASS's choice. Rule and measurements: docs/gemm.md
// "Heuristic", docs/decisions.md.
Schedule choose_schedule(TileConfig config, bool grouped, int64_t rows, int64_t n, int64_t k, int64_t groups,
                         int num_sms);

// FF_GEMM_TILE_CONFIG, when set to a tile_config_name(), forces that configuration (benchmarks and tests compare
// configurations with it); nullopt when unset. An unknown name is an error the caller reports.
std::optional<TileConfig> parse_tile_config(std::string_view name);

}  // namespace ff::gemm::cuda
