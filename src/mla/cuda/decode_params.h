// The plain-data interface between the host launcher (decode_cuda.cc, C++20) and the sm_90a kernels
// (sm90_mla_decode.cu, compiled by nvcc as C++17). No CUDA or ff/common types cross it, so the kernel
// file includes nothing of the library and the launcher needs no nvcc.
//
// Every pointer is device memory; strides are in elements of the tensor's own type (bytes for the FP8
// cache). The launcher validates shapes, strides and alignment before filling this in.
#pragma once

#include <cstdint>

namespace ff::mla::cuda {

// Warpgroup schedules of the bf16 / fp16 WGMMA kernel with TMA loads (docs/mla.md):
//   kPipelined  WgmmaPipelinedDecoder<., ., true>: warpgroup 0 computes S and the softmax of every
//               block, warpgroup 1 loads; each accumulates half of O ("wgmma_tma");
//   kSeesaw     WgmmaSeesawDecoder: the warpgroups take alternate blocks for S and the softmax, so the
//               softmax of one overlaps the MMAs of the other; each accumulates half of O ("wgmma_seesaw");
//   kLean       WgmmaPipelinedDecoder<., 0, true, true>: the pipelined schedule with a shorter chain per
//               block (warpgroup 0 does not wait at STAGE_FREE, a lighter softmax, 32-bit descriptor
//               arithmetic; "wgmma_tma_lean").
//   kLeanBar3, kLeanFold, kLean2, kLean2Early: the lean kernel with one mbarrier per 3 column blocks
//               (3 waits per block in S instead of 9; "wgmma_tma_lean_bar3"), with the softmax scale
//               folded into one FFMA per score and P stored by stmatrix ("wgmma_tma_lean_fold"), with
//               both ("wgmma_tma_lean2"), and with both plus S(j + 1) issued right behind warpgroup 0's
//               P V(j) instead of after waiting for it ("wgmma_tma_lean2_early"). The folded softmax
//               needs softmax_scale > 0 (the row max is taken on raw scores): with another scale the
//               dispatch takes kLean instead.
enum class Schedule : int {
  kDefault = 0,
  kPipelined = 1,
  kSeesaw = 2,
  kLean = 3,
  kLeanBar3 = 4,
  kLeanFold = 5,
  kLean2 = 6,
  kLean2Early = 7,
};

// The FP8-cache kernel for <= 32 query rows per KV head (FF_MLA_FP8=<name> in the environment;
// kDefault takes kDefaultFp8FewRows16 / kDefaultFp8FewRows32 below):
//   kDirect  Fp8Decoder<., ., 1>: one 64-token block per barrier round ("mma_sync_fp8_direct");
//   kPair    Fp8Decoder<., 4, 2>: two blocks per round, one softmax and two barriers per 128 tokens
//            ("mma_sync_fp8_pair"); <= 16 rows only (shared memory): with more, kDirect runs;
//   kWide    Fp8WideDecoder: 16 warps sharing one softmax, each with 32 of the 512 output channels,
//            two blocks per round ("mma_sync_fp8_wide"); <= 16 rows only, else kDirect;
//   kChannels Fp8Decoder<., ., 2, true>: 8 warps sharing one softmax, S split by tokens, P V by output
//            channels (64 per warp), every warp with all rows, so each K / V byte is converted once
//            ("mma_sync_fp8_channels"); <= 32 rows.
//   kChannelsSplitS Fp8Decoder<., ., 2, true, true>: kChannels with S computed by pairs of warps, each
//            over half of the channels for 32 tokens (half the Q reads per warp; "mma_sync_fp8_channels_split_s").
//   kTransposed Fp8TransposedDecoder<., 16 | 32>: WGMMA with the query rows as N, S^T = K Q^T and
//            O^T = V^T P^T, K and V^T converted into register operands ("wgmma_fp8_transposed"); <= 32 rows.
//   kTransposedWg Fp8TransposedWgDecoder: kTransposed with each warpgroup on its own blocks, softmax
//            state and barriers, merged per piece ("wgmma_fp8_transposed_wg"); <= 16 rows, else kTransposed.
enum class Fp8Kernel : int {
  kDefault = 0,
  kDirect = 1,
  kPair = 2,
  kWide = 3,
  kChannels = 4,
  kChannelsSplitS = 5,
  kTransposed = 6,
  kTransposedWg = 7,
};

struct DecodeParams {
  const void* q = nullptr;  // (b, s_q, h_q, 576) bf16 / fp16
  int64_t q_batch_stride = 0, q_token_stride = 0, q_head_stride = 0;
  const void* k_cache = nullptr;  // (num_blocks, 64, h_kv, 576) bf16 / fp16, or (…, 656) bytes when fp8
  int64_t k_block_stride = 0, k_token_stride = 0, k_head_stride = 0;
  const int32_t* block_table = nullptr;  // (b, max_blocks)
  int64_t block_table_batch_stride = 0, block_table_column_stride = 0;
  const int32_t* cache_seqlens = nullptr;  // (b)
  int64_t cache_seqlens_stride = 0;
  const int32_t* tile_scheduler_metadata = nullptr;  // (num_sm_parts, 8)
  int64_t metadata_row_stride = 0, metadata_column_stride = 0;
  const int32_t* num_splits = nullptr;  // (b + 1)
  int64_t num_splits_stride = 0;
  void* out = nullptr;  // (b, s_q, h_q, 512) dtype of q
  int64_t out_batch_stride = 0, out_token_stride = 0, out_head_stride = 0;
  float* softmax_lse = nullptr;  // (b, h_q, s_q)
  int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_token_stride = 0;
  // Split-KV partials: (max_splits, h_kv, rows, 512) normalized outputs and (max_splits, h_kv, rows)
  // log2-domain lse, rows = s_q * h_q / h_kv; max_splits = b + num_sm_parts.
  float* out_accum = nullptr;
  float* lse_accum = nullptr;

  int batch_size = 0, s_q = 0, h_q = 0, h_kv = 0;
  int group = 0;         // h_q / h_kv
  int rows = 0;          // s_q * group: query rows per KV head, row r = token r / group, head r % group
  int num_m_blocks = 0;  // ceil(rows / 64)
  int num_sm_parts = 0;
  int num_blocks = 0;    // k_cache blocks, for the kernel's own bounds check
  int max_blocks = 0;    // block_table columns
  float scale_log2 = 0;  // softmax_scale * log2(e)
  bool causal = false;
  bool fp16 = false;  // q / out are fp16 (else bf16)
  bool fp8_cache = false;
  // Measurement probe (FF_MLA_PROBE_LOADS_ONLY in the environment): run the load pipeline and skip
  // the arithmetic, so a benchmark can tell the memory ceiling of the pipeline from the kernel's time.
  // The outputs are then meaningless.
  bool probe_loads_only = false;
  // Measurement probe (FF_MLA_PROBE_HALF_LOADS): in the TMA WGMMA kernels (h_q >= 64), odd m-blocks skip
  // the TMA requests of every full KV block after a piece's first two and compute on the block two
  // steps earlier that their stage still holds; the even m-blocks load as usual. The L2 -> SM traffic of
  // h_q 128 then halves (what a 2-CTA cluster multicast of each block to the two m-blocks would do), the
  // arithmetic stays the same. The outputs of odd m-blocks are then meaningless.
  bool probe_half_loads = false;
  // Lazy rescaling in the 16-bit mma.sync kernel (Decoder; see kLazyMaxLog2) and in the transposed WGMMA FP8
  // kernel for <= 16 rows (Fp8TransposedWgDecoder, also its channel groups' units; the other FP8 kernels keep
  // the eager rule); FF_MLA_LAZY=0 in the environment turns it off (every block's max moves the running max,
  // as before), for A/B runs.
  bool lazy_rescale = true;
  // Measurement probe of the bf16 WGMMA kernel (FF_MLA_PROBE_SKIP=1, 2, 4 or 7): leaves out the S MMAs,
  // the P V MMAs, the softmax arithmetic, or all three (loads and synchronization only). The outputs
  // are then meaningless.
  int probe_skip = 0;
  // Take the mma.sync kernels even where the WGMMA kernel applies (FF_MLA_KERNEL=mma_sync in the
  // environment): for benchmarks beside the older path and for tests of both.
  bool force_mma_sync = false;
  // Take the WGMMA kernels also for an FP8 cache with fewer than kWgmmaMinRows rows per KV head (a bf16 /
  // fp16 cache takes them at any row count; FF_MLA_KERNEL=wgmma in the environment): for benchmarks.
  bool force_wgmma = false;
  // Fp8Decoder's whole-block copies load the KV cache under an L2 evict-first policy
  // (FF_MLA_KV_HINT=0 in the environment: the normal priority, for A/B runs).
  bool kv_evict_first = true;
  // Fp8TransposedWgDecoder loads and converts the first V operands of a block before its softmax barriers
  // (FF_MLA_FP8_EARLY_V=0 in the environment: after them, as before; for A/B runs).
  bool fp8_early_v = true;
  // Fp8TransposedWgDecoder builds its wgmma descriptors from their lower halves (kTwgJoined;
  // FF_MLA_FP8_DESCRIPTORS=full in the environment: the whole 64-bit descriptor per wgmma, as before; for A/B runs).
  bool fp8_joined_descriptors = true;
  // Fp8TransposedWgDecoder meets at one barrier per block where nothing moves (kTwgOneBarrier, with lazy
  // rescaling; FF_MLA_FP8_ONE_BARRIER=0 in the environment: two barriers per block, as before; for A/B runs).
  bool fp8_one_barrier = true;
  // The FP8 cache with >= kWgmmaMinRows rows per KV head (or FF_MLA_KERNEL=wgmma) takes the lean2 kernel
  // with warpgroup 1 dequantizing (kWgmmaFp8Lean) where the scale is positive; FF_MLA_FP8_LEAN=0 in the
  // environment: the older dequantizing WGMMA kernel (kWgmma, WgmmaFp8Decoder), for A/B runs.
  bool fp8_lean = true;
  // kWgmmaFp8Lean without the prefetch: pairs of column blocks (of 4) a block's fill converts right after its
  // stage is freed; the rest while warpgroup 1's P V of the block before runs (FF_MLA_FP8_EARLY_PAIRS=0..4,
  // for A/B runs).
  int fp8_early_pairs = 1;
  // kWgmmaFp8Lean: pairs of column blocks (0, 1 or 2) of each block loaded into registers a block ahead
  // (kLeanFp8Prefetch; FF_MLA_FP8_PREFETCH=0|1|2 in the environment, for A/B runs; with 1 or 2,
  // fp8_early_pairs does not apply). 1 measured fastest (docs/mla.md, "FP8 at h_q 128").
  int fp8_prefetch_pairs = 1;
  // The bf16 / fp16 WGMMA kernel loads full KV blocks by TMA (default); false (FF_MLA_LOADS=cp_async in
  // the environment) keeps its cp.async pipeline, for benchmarks and tests of both.
  bool tma_loads = true;
  // The bf16 / fp16 TMA WGMMA kernel's schedule (FF_MLA_SCHEDULE=lean2, lean, lean_bar3, lean_fold,
  // lean2_early, pipelined or seesaw in the environment; kDefault takes kDefaultSchedule below), for
  // benchmarks and tests of each.
  Schedule schedule = Schedule::kDefault;
  // The FP8-cache kernel with <= 32 rows per KV head (FF_MLA_FP8=direct, pair or wide), for benchmarks
  // and tests of each.
  Fp8Kernel fp8_kernel = Fp8Kernel::kDefault;
  // The cache as a 4-D TMA tensor map (channels, KV heads, tokens, blocks), an opaque CUtensorMap that
  // launch_decode encodes; the kernel reads it from its __grid_constant__ parameter.
  alignas(64) unsigned char k_tensor_map[128] = {};
};

// The decode kernels launch_decode chooses between.
enum class KernelKind : int {
  kMmaSync = 1,              // Decoder: mma.sync m16n8k16 (FP8: dequantized into a 16-bit tile)
  kMmaSyncFp8Direct = 2,     // Fp8Decoder: FP8 cache with <= 32 rows, MMAs on the raw e4m3 bytes
  kWgmma = 3,                // WGMMA kernels: wgmma m64nNk16, cp.async loads (the FP8 cache from kWgmmaMinRows rows)
  kWgmmaTma = 4,             // the bf16 / fp16 WGMMA kernel with TMA loads of full KV blocks, pipelined schedule
  kWgmmaSeesaw = 5,          // the same loads, seesaw schedule (WgmmaSeesawDecoder)
  kWgmmaTmaLean = 6,         // the same loads, pipelined schedule with the lean block chain (kLean)
  kWgmmaTmaLeanBar3 = 7,     // kLean with one mbarrier per 3 column blocks
  kWgmmaTmaLeanFold = 8,     // kLean with the scale folded into the softmax's FFMA and stmatrix stores of P
  kWgmmaTmaLean2 = 9,        // kLean with both
  kWgmmaTmaLean2Early = 10,  // kLean2 with S(j + 1) issued behind warpgroup 0's P V(j)
  kMmaSyncFp8Pair = 11,      // Fp8Decoder with two 64-token blocks per barrier round
  kMmaSyncFp8Wide = 12,      // Fp8WideDecoder: 16 warps, one shared softmax, output channels split
  kMmaSyncFp8Channels = 13,  // Fp8Decoder in its channel-split mode: 8 warps, one shared softmax
  kMmaSyncFp8ChannelsSplitS = 14,  // the channel-split mode with S split over pairs of warps by channels
  kWgmmaFp8Transposed = 15,        // Fp8TransposedDecoder: FP8 cache with <= 32 rows on WGMMA, rows as N
  kWgmmaFp8TransposedWg = 16,      // Fp8TransposedWgDecoder: <= 16 rows, the warpgroups on alternate blocks
  kWgmmaFp8Lean = 17,  // the lean2 kernel on the FP8 cache: warpgroup 1 dequantizes each block into the 16-bit stage
};
// The lean TMA kernels (WgmmaPipelinedDecoder<., 0, true, true, flags>).
constexpr bool is_lean_tma_kernel(KernelKind kind) {
  return kind == KernelKind::kWgmmaTmaLean || kind == KernelKind::kWgmmaTmaLeanBar3 ||
         kind == KernelKind::kWgmmaTmaLeanFold || kind == KernelKind::kWgmmaTmaLean2 ||
         kind == KernelKind::kWgmmaTmaLean2Early;
}
// The FP8 cache takes the WGMMA kernel from this many rows per KV head on (a 16-bit cache at any count).
constexpr int kWgmmaMinRows = 64;
// The schedule the dispatch takes when the environment names none: the fastest on the H200
// (bench/results/mla_h200.json, all in the same run, docs/mla.md: lean2 was faster than lean in both of
// its measurements in most h_q 128 shapes, lean2_early slower than lean2; the seesaw schedule was 3-8%
// slower than the pipelined one, so it stays selectable by FF_MLA_SCHEDULE=seesaw only;
// FF_MLA_SCHEDULE=lean and pipelined keep the kernels before these changes).
constexpr Schedule kDefaultSchedule = Schedule::kLean2;
// The FP8-cache kernels the dispatch takes when the environment names none, for <= 16 and for 17..32
// query rows per KV head: on the H200 (h_q 16, b 128, 4K-32K fixed and variable, 5 rotated rounds in one
// run, 2026-12-02 21:01 UTC, bench/results/mla_fp8_transposed_ab_h200.json; docs/mla.md), s_q 1:
// transposed_wg 1.33-1.45x the bf16 default's speed, channels_split_s 1.32-1.45x, channels 1.17-1.43x,
// transposed 1.10-1.20x (transposed_wg ahead from 8K, by up to 10 % at 32K, 2 % behind at 4K fixed; in a
// 7-round repeat at 21:11 UTC within 1 % of channels_split_s at 4K-16K and 2-3 % ahead at 32K);
// s_q 2 (32 rows): channels_split_s 0.94-1.00x, transposed 0.88-0.93x, channels 0.80-0.95x. The
// 2026-11-30 23:19 UTC run (mma.sync kernels only) had channels_split_s within 2 % of channels at 16
// rows and ahead at 32.
constexpr Fp8Kernel kDefaultFp8FewRows16 = Fp8Kernel::kTransposedWg;
constexpr Fp8Kernel kDefaultFp8FewRows32 = Fp8Kernel::kChannelsSplitS;

// The kernel launch_decode enqueues for these parameters when the TMA tensor map can be encoded (else
// the TMA kernels become kWgmma), and its name ("wgmma_tma_lean2", "wgmma_tma_lean", "wgmma_tma_lean_bar3",
// "wgmma_tma_lean_fold", "wgmma_tma_lean2_early", "wgmma_seesaw", "wgmma_tma", "wgmma", "mma_sync",
// "mma_sync_fp8_direct", "mma_sync_fp8_pair", "mma_sync_fp8_wide", ..., "wgmma_fp8_lean").
KernelKind select_kernel(const DecodeParams& params);
const char* kernel_name(KernelKind kind);

// Bytes of split-KV workspace a call needs: out_accum, then lse_accum at out_accum_bytes(...).
constexpr int64_t out_accum_bytes(int64_t batch_size, int64_t rows, int64_t h_kv, int64_t num_sm_parts) {
  return ((batch_size + num_sm_parts) * h_kv * rows * 512 * 4 + 255) / 256 * 256;
}
constexpr int64_t workspace_bytes(int64_t batch_size, int64_t rows, int64_t h_kv, int64_t num_sm_parts) {
  return out_accum_bytes(batch_size, rows, h_kv, num_sm_parts) +
         ((batch_size + num_sm_parts) * h_kv * rows * 4 + 255) / 256 * 256;
}

// Enqueues the decode kernel and, when some sequence has several splits, the combine kernel on
// `stream` (a cudaStream_t); encodes k_tensor_map first where the kernel loads by TMA. Returns the
// cudaError_t of the launches (0 on success) and, in `launched`, the kernel enqueued. Asynchronous.
int launch_decode(const DecodeParams& params, void* stream, KernelKind* launched);

// get_mla_metadata on the GPU (cuda/mla_metadata.cu): the same walk as the host's (metadata.cc), lengths read
// through their stride, negative ones counted as 0. The schedule's constants, as ff/mla/mla.h's (which the
// C++17 device code cannot include; metadata.cc checks that they agree).
constexpr int kMetadataPageBlockSize = 64;
constexpr int kMetadataFixedOverheadBlocks = 5;
constexpr int kMetadataRowSize = 8;
struct MetadataParams {
  const int32_t* cache_seqlens = nullptr;
  int64_t seqlens_stride = 1;
  int32_t* tile_scheduler_metadata = nullptr;
  int64_t metadata_row_stride = 8;
  int64_t metadata_column_stride = 1;
  int32_t* num_splits = nullptr;
  int64_t num_splits_stride = 1;
  int batch_size = 0;
  int num_sm_parts = 0;
};

// Enqueues the metadata kernel on `stream` (a cudaStream_t); returns its cudaError_t (0 on success).
int launch_metadata(const MetadataParams& params, void* stream);

}  // namespace ff::mla::cuda
