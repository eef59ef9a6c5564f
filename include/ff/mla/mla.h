// MLA decode attention over a paged KV cache: the counterpart of DeepSeek FlashMLA's dense decode
// (`get_mla_metadata` + `flash_mla_with_kvcache`), with the same names, shapes and semantics, plus
// an FP8 (e4m3) KV cache. See docs/mla.md for the full contract; src/mla/README.md for internals.
//
//   ff::mla::MlaMetadata metadata = *ff::mla::get_mla_metadata(seqlens, s_q * h_q / h_kv, h_kv);
//   for (layer : layers) FF_RETURN_IF_ERROR(ff::mla::flash_mla_with_kvcache(args_of(layer, metadata)));
//
// Shapes (d_qk = 576 = 512 latent + 64 RoPE channels, d_v = 512, page block = 64 tokens):
//   q                        (b, s_q, h_q, 576)            bf16 or fp16
//   k_cache                  (num_blocks, 64, h_kv, 576)   same dtype as q; V = channels [0, 512)
//                            (num_blocks, 64, h_kv, 656)   uint8 / float8_e4m3fn when is_fp8_kvcache
//   block_table              (b, max_blocks)               int32: physical block of each 64-token page
//   cache_seqlens            (b)                           int32: tokens in the cache, new ones included
//   tile_scheduler_metadata  (num_sm_parts, 8)             int32, from get_mla_metadata
//   num_splits               (b + 1)                       int32, from get_mla_metadata
//   out                      (b, s_q, h_q, 512)            dtype of q
//   softmax_lse              (b, h_q, s_q)                 float32, natural log; +inf for empty rows
//
// FP8 cache, per token and KV head (656 bytes, all little-endian):
//   bytes [0, 512)    512 latent channels in e4m3
//   bytes [512, 528)  4 float32 scales, scale g for channels [128 g, 128 g + 128)
//   bytes [528, 656)  64 RoPE channels in bf16
//   channel c < 512 dequantizes to e4m3_to_float(byte c) * scale[c / 128].
//
// Thread-safety: every function is reentrant; concurrent calls must not share output memory.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"
#include "ff/mla/tensor_view.h"

namespace ff::mla {

inline constexpr int kPageBlockSize = 64;  // tokens per KV cache page (block_size_n)
inline constexpr int kHeadDimQk = 576;     // latent (512) + RoPE (64)
inline constexpr int kHeadDimV = 512;      // V is the latent part of the cache
inline constexpr int kRopeDim = kHeadDimQk - kHeadDimV;
inline constexpr int kBlockSizeM = 64;             // query rows one SM tile processes (block_size_m)
inline constexpr int kFixedOverheadNumBlocks = 5;  // scheduling cost of starting a sequence, in blocks
inline constexpr int kTileSchedulerMetadataSize = 8;
inline constexpr int kDefaultNumSms = 132;  // H100 / H800 SXM
inline constexpr int kFp8GroupSize = 128;   // channels per fp32 scale
inline constexpr int kFp8NumScales = kHeadDimV / kFp8GroupSize;
inline constexpr int kFp8BytesPerToken = kHeadDimV + kFp8NumScales * 4 + kRopeDim * 2;  // 656
static_assert(kFp8BytesPerToken == 656, "the documented FP8 layout is 656 bytes per token");

// Where a call runs. kCuda is the sm_90a kernel (asynchronous on FlashMlaArgs::stream; where the
// library was built without it, failed_precondition); every tensor of a call must live on the
// matching device.
enum class Backend : int { kCpu, kCuda };

// One row of tile_scheduler_metadata: the contiguous run of work one SM part executes, from token
// begin_token of sequence begin_batch to token end_token (exclusive) of sequence end_batch. Sequences
// strictly between the two are done whole. begin_split is the split index, within begin_batch's
// splits, of this part's first piece. An empty part has begin_batch == b and end_batch == b - 1.
// Column layout: [begin_batch, begin_token, end_batch, end_token, begin_split, 0, 0, 0].
struct TileSchedulerPart {
  int32_t begin_batch = 0;
  int32_t begin_token = 0;  // a multiple of 64
  int32_t end_batch = 0;
  int32_t end_token = 0;
  int32_t begin_split = 0;
};

struct MlaMetadata {
  int32_t num_sm_parts = 0;
  std::vector<int32_t> tile_scheduler_metadata;  // (num_sm_parts, 8), row-major
  std::vector<int32_t> num_splits;               // (b + 1): sequence i owns splits [num_splits[i], num_splits[i+1])

  TileSchedulerPart part(int32_t index) const;
};

// num_sm_parts = max(num_sms / h_kv / ceil(num_q_tokens_per_head_k / 64), 1), as the anchor.
int32_t num_sm_parts_for(int64_t num_q_tokens_per_head_k, int64_t num_heads_k, int64_t num_sms = kDefaultNumSms);

// The split-KV schedule for one decode step, reused by every layer of that step. Balances
// ceil(seqlen / 64) blocks plus a fixed overhead of 5 blocks per sequence over num_sm_parts parts of
// at most ceil(total / num_sm_parts) + 5 blocks each, walking sequences in order and splitting one
// where a part fills up (FlashMLA's algorithm). Deterministic; depends only on its arguments.
// num_q_tokens_per_head_k is s_q * h_q / h_kv. Errors: b == 0, negative lengths, counts < 1.
Result<MlaMetadata> get_mla_metadata(std::span<const int32_t> cache_seqlens, int64_t num_q_tokens_per_head_k,
                                     int64_t num_heads_k, int64_t num_sms = kDefaultNumSms);

// get_mla_metadata into caller-provided int32 views, on either backend (FlashMLA computes it on the GPU too):
// tile_scheduler_metadata (num_sm_parts_for(...), 8) and num_splits (b + 1), any strides. Backend::kCpu (host
// views) is the reference; Backend::kCuda (views on one GPU) is one kernel enqueued on `stream`, with no host
// synchronisation, so a decode step's metadata can be captured in a CUDA graph with its layers. Both write the
// schedule get_mla_metadata returns. A negative length: kCpu refuses it (invalid_argument, as get_mla_metadata);
// the kernel cannot report it without a synchronisation and counts it as 0 (flash_mla_with_kvcache's
// check_values then refuses the lengths). Errors: as get_mla_metadata, and views of the wrong dtype, shape or device.
struct MlaMetadataArgs {
  TensorView cache_seqlens;  // (b) int32
  int64_t num_q_tokens_per_head_k = 0;
  int64_t num_heads_k = 1;
  int64_t num_sms = kDefaultNumSms;
  TensorView tile_scheduler_metadata;  // (num_sm_parts, 8) int32, written
  TensorView num_splits;               // (b + 1) int32, written
  void* stream = nullptr;              // CUDA backend: the cudaStream_t (nullptr: the legacy stream)
};
Status get_mla_metadata(const MlaMetadataArgs& args, Backend backend);

struct FlashMlaArgs {
  TensorView q;                        // (b, s_q, h_q, 576)
  TensorView k_cache;                  // (num_blocks, 64, h_kv, 576), or (num_blocks, 64, h_kv, 656) bytes if fp8
  TensorView block_table;              // (b, max_blocks) int32
  TensorView cache_seqlens;            // (b) int32
  int64_t head_dim_v = kHeadDimV;      // must be 512
  TensorView tile_scheduler_metadata;  // (num_sm_parts, 8) int32
  TensorView num_splits;               // (b + 1) int32
  std::optional<float> softmax_scale;  // default 1 / sqrt(576)
  bool causal = false;                 // query i of s_q sees cache positions < seqlen - s_q + i + 1
  bool is_fp8_kvcache = false;
  TensorView out;          // (b, s_q, h_q, 512), written
  TensorView softmax_lse;  // (b, h_q, s_q) float32, written
  int num_threads = 1;     // CPU backend: worker threads over the schedule's pieces
  // CUDA backend only:
  void* stream = nullptr;  // cudaStream_t the kernels are enqueued on (nullptr: the legacy stream)
  // Split-KV scratch in device memory, at least flash_mla_workspace_bytes(...) bytes, 256-byte aligned;
  // reused across calls on one stream. With no data, the call takes it from the stream-ordered
  // allocator (cudaMallocAsync / cudaFreeAsync on `stream`, which CUDA graph capture records).
  TensorView workspace;
  // Copy cache_seqlens, block_table and the metadata to the host (a synchronization) and check them as
  // the CPU backend does (lengths within the block table, block ids within the cache, metadata for
  // these lengths). Off, the kernel still never reads outside the cache or the block table, but a bad
  // value gives a wrong result instead of an error. Must be off while the stream is being captured.
  bool check_values = false;
};

// Bytes of device workspace a CUDA-backend call needs: the fp32 partial outputs and lse of up to
// b + num_sm_parts splits of s_q * h_q / h_kv rows per KV head.
int64_t flash_mla_workspace_bytes(int64_t batch_size, int64_t s_q, int64_t h_q, int64_t h_kv, int64_t num_sm_parts);

// Attention of every query row over its sequence's cached tokens, executed as the split-KV schedule
// the metadata describes: each (part, sequence) piece computes a partial result with its own running
// max and sum (log2 domain, fp32), and sequences split over several parts are merged by a combine
// step. Reads no cache token at or beyond cache_seqlens[i], and no block_table column beyond
// ceil(cache_seqlens[i] / 64). A row that attends to nothing (length 0, or fully masked by causal)
// gets out = 0 and softmax_lse = +inf. Errors (invalid_argument, naming the value): dtypes, shapes,
// a non-unit last stride, lengths beyond the block table, block ids outside the cache, h_q not a
// multiple of h_kv, head_dim_v != 512, metadata of the wrong shape or computed for other lengths.
Status flash_mla_with_kvcache(const FlashMlaArgs& args, Backend backend = Backend::kCpu);

// The kernel the last Backend::kCuda call in this process launched: "wgmma_tma" (>= 64 query rows per
// KV head, bf16 / fp16 cache: full KV blocks loaded by TMA, pipelined warpgroup schedule),
// "wgmma_seesaw" (the same loads, seesaw schedule: only when asked for), "wgmma_fp8_lean" (the FP8 cache
// from 64 rows: the lean2 kernel fed by a dequantizing warpgroup), "wgmma" (the WGMMA kernel with
// cp.async loads; the FP8 cache with FF_MLA_FP8_LEAN=0), "mma_sync" or "mma_sync_fp8_direct"; empty before the first
// call or without the kernels. In the environment, FF_MLA_KERNEL=mma_sync makes the CUDA backend take the mma.sync
// kernels everywhere, FF_MLA_LOADS=cp_async keeps the WGMMA kernel on cp.async loads and FF_MLA_SCHEDULE=seesaw (or
// pipelined) picks the TMA kernel's schedule (for comparisons). For tests and benchmarks.
std::string_view last_cuda_kernel();

// Quantizes a bf16 cache (num_blocks, 64, h_kv, 576) into the FP8 layout (num_blocks, 64, h_kv, 656):
// per token and 128-channel group, scale = max|x| / 448 (1 for an all-zero group), e4m3 = round(x /
// scale); RoPE channels copied. Non-finite values propagate (NaN stays NaN), so tests can poison
// unused slots in either format. `out` must be uint8 or float8_e4m3fn with that shape.
Status quantize_kvcache_fp8(const TensorView& k_cache, const TensorView& out);

// The float value of channel `channel` (< 576) of one FP8-layout token (656 bytes).
float dequantize_fp8_channel(const uint8_t* token, int channel);

}  // namespace ff::mla
