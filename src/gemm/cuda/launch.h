// The boundary between the host code of the CUDA backend (gemm.cc, cuda_backend.cc: plain C++20 with ff::Status)
// and the nvcc-compiled translation units (C++17, CUTLASS): plain structs and std::string errors only, so neither
// side includes the other's headers. Every function enqueues on `stream` and returns without synchronising;
// an empty string means the work was enqueued, otherwise it says what failed.
#pragma once

#include <cstdint>
#include <string>

namespace ff::gemm::cuda {

// The tile configurations built ahead of time (one .cu file each; see docs/gemm.md "Kernels").
enum class TileConfig : int {
  kPingpong64x128 = 0,            // 64x128x128 tile, one consumer warpgroup per tile, two tiles in flight: small m
  kCooperative128x128,            // 128x128x128 tile, two consumer warpgroups split the tile's rows
  kCooperative128x128Cluster2x1,  // as above, 2-CTA cluster along M sharing each B tile by TMA multicast
  // Contiguous grouped GEMM only: the dense (non-ptr-array) kernel over all m_sum rows, each 128-row block taking
  // B and its scales from the group its m_indices name (looked up on the device per tile); no per-problem TMA
  // descriptor updates. 128x128x128 cooperative, cluster 1x1 or 1x2 (two N-adjacent CTAs share the A tile by
  // TMA multicast; a 2x1 cluster would need 256-row segments to share B).
  kIndexed128x128,
  kIndexed128x128Cluster1x2,
  // 128x192x128 cooperative tiles (two consumer warpgroups of 64x192: 96 fp32 accumulators each for the tensor
  // cores' block sum and 96 for the scaled total), B scales read at a 64-row granularity (expanded from the
  // caller's 128x128 blocks). kCooperative128x192 serves dense and grouped (ptr-array) GEMMs like
  // kCooperative128x128; kIndexed128x192 is the contiguous-only indexed kernel with that tile.
  kCooperative128x192,
  kIndexed128x192,
  // 128x128x128 cooperative tiles whose consumer overlaps the promotion (scaling and adding a K block's sum on the
  // CUDA cores) with tensor-core work (OverlappedPromotionMma in sm90_fp8_gemm.cuh): "overlap" keeps two K blocks'
  // WGMMAs in flight per warpgroup (a second block accumulator), "stagger" has the two warpgroups take turns
  // issuing K blocks so each promotes while the other's WGMMAs run. The cooperative ones serve dense and grouped
  // (ptr-array) GEMMs, the indexed ones the contiguous GEMM.
  kCooperative128x128Overlap,
  kCooperative128x128Stagger,
  kIndexed128x128Overlap,
  kIndexed128x128Stagger,
  // 128x112x128 cooperative tiles (dense and grouped ptr-array), B scales read at a 16-row granularity (expanded
  // from the caller's 128x128 blocks: a 112-row tile straddles two): 7/8 of a 128x128 tile's work, for shapes
  // where 128-wide tiles leave most of the last wave idle (DeepGEMM's BLOCK_N 112; n = 7168 is 64 tiles of 112).
  kCooperative128x112,
  // Dense only: 64-row ping-pong tiles narrower than 128 (64x64, 64x32, 64x16), B scales read at the tile's width
  // (expanded from the 128x128 blocks; one scale block per tile, CUTLASS's consumer): small m, where 128-wide tiles
  // leave most SMs idle and each of the few CTAs is bound by its own issue-wait-promote cycle per K block; narrower
  // tiles put more CTAs on the same bytes of B (DeepGEMM's BLOCK_N chosen to fill the SMs).
  kPingpong64x64,
  kPingpong64x32,
  kPingpong64x16,
  // Masked grouped GEMM only: the dense (non-ptr-array) kernel over the (m_max, n, k) problem with the groups as
  // its batch mode, a tile scheduler that hands out only tiles holding rows below masked_m[g], and an epilogue that
  // stores only those rows (sm90_fp8_masked.cuh). A's scales M-major per group, loaded by TMA. 128x128x128
  // cooperative tiles with the overlapped promotion.
  kMasked128x128Overlap,
  // As above with 64x128x128 ping-pong tiles (two consumer warpgroups on alternate tiles), CUTLASS's consumer, every
  // tile stored from registers: few rows per group.
  kMasked64x128,
  // Dense only: 256x128x128 cooperative tiles, each consumer warpgroup holding two 64-row waves of the total and
  // one wave's block accumulator (WaveMma in sm90_fp8_gemm.cuh; 128 + 64 fp32 registers per thread): per FLOP a
  // quarter fewer A/B bytes from L2 than 128x128 tiles. Cluster 1x1, or 1x2 (two N-adjacent CTAs share the
  // 256-row A tile by TMA multicast). DeepGEMM's tile for large m.
  kCooperative256x128,
  kCooperative256x128Cluster1x2,
  // Contiguous only: the indexed kernel with 256x128x128 tiles (WaveMma), 1x2 cluster. A tile's two 128-row blocks
  // may belong to two groups (segments are 128-aligned): ContiguousTileScheduler gives such a tile one pass over K
  // per group, each pass computing the rows of its group (sm90_fp8_gemm.cuh, GroupIndexedMainloop).
  kIndexed256x128Cluster1x2,
  // Dense only: 64x192 ping-pong tiles, B scales at a 64-row granularity read from the 128x128 blocks (WideTileMma):
  // small m with n = 24576 in one wave (128 tiles, against 192 of 64x128 on 132 SMs).
  kPingpong64x192,
  // Dense only: the 64-row ping-pong tiles with the promotion overlapped (Promotion::kOverlap).
  kPingpong64x16Overlap,
  kPingpong64x32Overlap,
  kPingpong64x64Overlap,
  kPingpong64x128Overlap,
};
inline constexpr int kNumTileConfigs = 25;
inline constexpr bool is_indexed(TileConfig config) {
  return config == TileConfig::kIndexed128x128 || config == TileConfig::kIndexed128x128Cluster1x2 ||
         config == TileConfig::kIndexed128x192 || config == TileConfig::kIndexed128x128Overlap ||
         config == TileConfig::kIndexed256x128Cluster1x2 || config == TileConfig::kIndexed128x128Stagger;
}
inline constexpr bool is_masked_only(TileConfig config) {
  return config == TileConfig::kMasked128x128Overlap || config == TileConfig::kMasked64x128;
}

const char* tile_config_name(TileConfig config);
// The narrow 64-row ping-pong tiles: built for the dense GEMM only.
inline constexpr bool is_narrow_pingpong(TileConfig config) {
  return config == TileConfig::kPingpong64x64 || config == TileConfig::kPingpong64x32 ||
         config == TileConfig::kPingpong64x16 || config == TileConfig::kPingpong64x192 ||
         config == TileConfig::kPingpong64x16Overlap || config == TileConfig::kPingpong64x32Overlap ||
         config == TileConfig::kPingpong64x64Overlap || config == TileConfig::kPingpong64x128Overlap;
}
// Built for the dense GEMM only: the narrow 64-row ping-pong tiles and the 256-row tiles.
inline constexpr bool is_dense_only(TileConfig config) {
  return is_narrow_pingpong(config) || config == TileConfig::kCooperative256x128 ||
         config == TileConfig::kCooperative256x128Cluster1x2;
}
inline constexpr int tile_m(TileConfig config) {
  if (config == TileConfig::kCooperative256x128 || config == TileConfig::kCooperative256x128Cluster1x2 ||
      config == TileConfig::kIndexed256x128Cluster1x2) {
    return 256;
  }
  return config == TileConfig::kPingpong64x128 || config == TileConfig::kMasked64x128 || is_narrow_pingpong(config)
             ? 64
             : 128;
}
inline constexpr int tile_n(TileConfig config) {
  if (config == TileConfig::kPingpong64x64 || config == TileConfig::kPingpong64x64Overlap) return 64;
  if (config == TileConfig::kPingpong64x32 || config == TileConfig::kPingpong64x32Overlap) return 32;
  if (config == TileConfig::kPingpong64x16 || config == TileConfig::kPingpong64x16Overlap) return 16;
  if (config == TileConfig::kPingpong64x192) return 192;
  if (config == TileConfig::kCooperative128x112) return 112;
  return config == TileConfig::kCooperative128x192 || config == TileConfig::kIndexed128x192 ? 192 : 128;
}

// The persistent tile scheduler's walk over output tiles (CUTLASS's raster order and swizzle). Defaults (0) keep
// CUTLASS's choice: dense and indexed kernels raster along the longer side (heuristic), ptr-array kernels along M;
// swizzle 1. FF_GEMM_SCHEDULE overrides it for experiments (backend.cc).
struct Schedule {
  int raster = 0;   // 0: CUTLASS's default, 1: along M, 2: along N
  int swizzle = 0;  // 0: default (1); else 1, 2, 4 or 8
};

// D (m, n) bf16 row-major = A (m, k) e4m3 row-major * B (n, k)^T e4m3 row-major, scaled per 128-wide K block.
// sa is M-major: element (row, kb) at sa[row + kb * sa_ld], sa_ld >= m and a multiple of 4 (16 bytes);
// sb is (ceil(n/128), ceil(k/128)) row-major.
struct DenseArgs {
  const void* a = nullptr;
  const float* sa = nullptr;
  int64_t sa_ld = 0;
  const void* b = nullptr;
  const float* sb = nullptr;
  void* out = nullptr;
  int m = 0, n = 0, k = 0;
  int num_sms = 0;
  Schedule schedule;
  void* stream = nullptr;
};
std::string run_dense(TileConfig config, const DenseArgs& args);

// Grouped GEMMs over a ptr-array of per-group problems built on the device (no host synchronisation):
//   contiguous: a (m, k), sa (m, ceil(k/128)) row-major, out (m, n), indices = m_indices (m) int32;
//   masked:     a (G, m, k), sa (G, m, ceil(k/128)) row-major, out (G, m, n), indices = masked_m (G) int32.
// b is (G, n, k) and sb (G, ceil(n/128), ceil(k/128)), both row-major. The indexed configurations (contiguous
// only) read sa M-major instead: element (row, kb) at sa[row + kb * sa_ld], sa_ld >= m rounded up to 4 and a
// multiple of 4 (DeepGEMM's TMA-aligned column-major layout, as the dense kernel). The masked-only configurations
// read sa M-major per group: element (g, row, kb) at sa[g * sa_group_stride + row + kb * sa_ld], sa_ld >= m rounded
// up to 4, both multiples of 4.
enum class GroupedKind : int { kContiguous, kMasked };
struct GroupedArgs {
  GroupedKind kind = GroupedKind::kContiguous;
  const void* a = nullptr;
  const float* sa = nullptr;
  int64_t sa_ld = 0;            // indexed and masked-only configurations: M-major leading dimension of sa
  int64_t sa_group_stride = 0;  // masked-only configurations: elements between two groups' scales
  const void* b = nullptr;
  const float* sb = nullptr;
  void* out = nullptr;
  const int32_t* indices = nullptr;
  int num_groups = 0;
  int m = 0, n = 0, k = 0;
  int num_sms = 0;
  Schedule schedule;
  void* stream = nullptr;
};
std::string run_grouped(TileConfig config, const GroupedArgs& args);

// The weight-gradient GEMM: out (m, n) float32 row-major += A (m, k) e4m3 row-major * B (n, k)^T e4m3 row-major,
// both scaled per 1x128 and read M-/N-major: element (row, kb) of A's scales at sa[row + kb * sa_ld], of B's at
// sb[row + kb * sb_ld] (sa_ld >= m, sb_ld >= n). k a multiple of 16, n of 4; a partial last K block is zero-filled
// by TMA. The kernel: 128x128x128 cooperative tiles, CUTLASS's blockwise collective at granularity (1, 1, 128) (each
// K block's sum scaled per element by sa[row] * sb[col]), the epilogue adding the tile of out read by TMA.
struct WgradArgs {
  const void* a = nullptr;
  const float* sa = nullptr;
  int64_t sa_ld = 0;
  const void* b = nullptr;
  const float* sb = nullptr;
  int64_t sb_ld = 0;
  float* out = nullptr;
  int m = 0, n = 0, k = 0;
  int num_sms = 0;
  void* stream = nullptr;
};
std::string run_wgrad(const WgradArgs& args);

// Contiguous layout: writes zeros into the output rows whose m_indices entry is not a valid group, on `stream`.
std::string zero_padding_rows(const GroupedArgs& args);

// Copies a float32 scale tensor of logical shape (groups, rows, cols) with arbitrary element strides into
// `dst` with the given strides (the layout a kernel needs), on `stream`.
struct RepackArgs {
  const float* src = nullptr;
  float* dst = nullptr;
  int64_t groups = 1, rows = 0, cols = 0;
  int64_t src_strides[3] = {0, 0, 0};
  int64_t dst_strides[3] = {0, 0, 0};
  void* stream = nullptr;
};
std::string repack_scales(const RepackArgs& args);

// B's scales (groups, ceil(n/128), k_blocks) row-major -> dst (groups, out_blocks, k_blocks) row-major, each
// 128-row block's scale repeated 128/granularity times along n (granularity dividing 128), blocks past the last
// one (out_blocks > ceil(n/granularity): padding to whole tiles) repeating the last, on `stream`: the layout of the
// kernels whose tile N is not a multiple of 128 (kCooperative128x192, kIndexed128x192, kCooperative128x112).
std::string expand_b_scales(const float* src, float* dst, int64_t groups, int64_t n, int64_t out_blocks,
                            int64_t k_blocks, int granularity, void* stream);

// Whether a GEMM that follows one of this call's small kernels is launched as its programmatic dependent (PDL):
// yes unless FF_GEMM_PDL=0 in the environment (read at each call, for A/B runs).
bool programmatic_launch_enabled();

// Whether the dense tiles built at a finer B-scale granularity than 128 (64x64, 64x32, 64x16, 128x192, 128x112)
// expand B's scales by a separate kernel before the GEMM instead of reading the 128x128 blocks directly: only with
// FF_GEMM_EXPAND_B_SCALES=1 in the environment (read at each call, for A/B runs).
bool expanded_b_scales_requested();

// Stream-ordered scratch memory (cudaMallocAsync / cudaFreeAsync): safe under CUDA graph capture and across
// concurrent streams.
std::string allocate_async(void** pointer, size_t bytes, void* stream);
void free_async(void* pointer, void* stream);

// Makes `index` the calling thread's current device, storing the previous one in *previous (restore with
// switch_device(previous, &ignored)).
std::string switch_device(int index, int* previous);

}  // namespace ff::gemm::cuda
