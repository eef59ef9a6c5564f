// Launchers of the ep CUDA kernels (intranode_kernels.cu, low_latency_kernels.cu), called by the host
// code in cuda_buffer.cc. Plain C++: no CUDA types cross this header (streams are void*).
//
// A rank's GPU buffer starts with a 4 KiB control block (flags written by peers, counters of its own
// kernels), then the data area whose layout each call fixes (the same on every rank, computed from the
// call's shapes): NormalRegions for the normal mode, LowLatencyLayout for the low-latency mode.
#pragma once

#include <cstdint>

namespace ff::ep::cuda {

// (constexpr functions: callable from kernels under --expt-relaxed-constexpr.)
// Control block: flags (first 4 KiB) and the notify slots of the normal mode's GPU layout (the rest).
inline constexpr int64_t kControlBytes = 64 * 1024;
// Byte offsets in the control block: uint64 arrays indexed by the peer rank that writes them.
inline constexpr int64_t kDispatchFlagOffset = 0;    // [src] = low-latency dispatch seq whose rows src wrote here
inline constexpr int64_t kDispatchAckOffset = 512;   // [dst] = low-latency dispatch seq dst finished reading
inline constexpr int64_t kCombineFlagOffset = 1024;  // [src] = low-latency combine seq whose rows src wrote here
inline constexpr int64_t kCombineAckOffset = 1536;   // [dst] = low-latency combine seq dst finished reading
inline constexpr int64_t kDoneCounterOffset = 2048;  // uint32[16]: blocks finished, per kernel kind (own use)
inline constexpr int64_t kNormalFlagOffset = 2560;   // [src] = normal data phase seq whose rows src wrote here
inline constexpr int64_t kNormalAckOffset = 3072;    // [dst] = normal data phase seq dst finished reading
inline constexpr int64_t kNormalShapeOffset = 3584;  // [src] = shape word of src's latest normal data phase
inline constexpr int64_t kNotifyOffset = 4096;       // notify slots [parity][src], notify_slot_bytes each
constexpr int64_t notify_slot_bytes(int num_ranks) {
  return (kControlBytes - kNotifyOffset) / (2 * num_ranks) / 64 * 64;
}
// A notify slot: uint64 seq (released last) | int32 status, op, dtype, hidden, num_topk, num_experts |
// at kNotifyCountsOffset int32 counts[num_ranks] (rows the source sends to each rank) | at
// notify_experts_offset int32 per-expert counts for the destination's local experts.
inline constexpr int64_t kNotifyStatusOffset = 8;
inline constexpr int64_t kNotifyCountsOffset = 64;
constexpr int64_t notify_experts_offset(int num_ranks) { return kNotifyCountsOffset + (num_ranks * 4 + 15) / 16 * 16; }
// Bits of a notify status word (the source's own input checks, seen by every rank).
inline constexpr int32_t kNotifyBadExpert = 1;   // a top-k id outside [-1, num_experts)
inline constexpr int32_t kNotifyBadPerRank = 2;  // num_tokens_per_rank disagrees with the routing
// Host-mapped readback of a notify, int32 words: [0] = seq (low 32 bits, written last), then per source
// kReadbackPerSource + num_ranks words (status, op, dtype, hidden, num_topk, num_experts, counts...), then
// the per-local-expert sums over sources.
inline constexpr int64_t kReadbackPerSource = 6;

// Written into host-mapped memory by a kernel whose bounded wait expired; read by the host.
struct DeviceError {
  int32_t code;  // 0 none, 1 timeout
  int32_t peer;  // the rank that was awaited
  int32_t kind;  // which wait (WaitKind)
  int32_t seq;
};
enum WaitKind : int32_t {
  kWaitDispatchAck = 1,
  kWaitDispatchFlag = 2,
  kWaitCombineAck = 3,
  kWaitCombineFlag = 4,
  kWaitOverflow = 5,
  kWaitNormalAck = 6,
  kWaitNormalFlag = 7,
  kWaitNotify = 8,
  kShapeMismatch = 9,
  kBadExpert = 10  // peer holds the token index
};

// Element types of x: 0 float32, 1 bfloat16, 2 e4m3 (the DType values).
struct NormalRegions {
  int64_t x = 0, scales = 0, topk_idx = 0, topk_weights = 0;  // byte offsets from a buffer's base
};

struct DispatchSendArgs {
  const uint8_t* x;
  int64_t x_bytes;  // bytes per row
  const float* scales;
  int64_t num_scales;  // per row; 0 unless FP8
  const int64_t* topk_idx;
  const float* topk_weights;  // may be null: zeros are sent
  int64_t num_topk;           // 0 for a cached dispatch
  const int32_t* item_token;
  const int32_t* item_dst;
  const int32_t* item_row;
  int64_t num_items;
  uint8_t* const* peers;  // device array of num_ranks buffer bases
  NormalRegions regions;
};
void launch_dispatch_send(const DispatchSendArgs& args, int num_blocks, void* stream);

// Local top-k ids (-1 elsewhere) and weights (0 elsewhere) of the received rows.
void launch_dispatch_recv_topk(const int64_t* recv_idx_global, const float* recv_weights_global, int64_t count,
                               int64_t first_expert, int64_t num_local_experts, int64_t* out_idx, float* out_weights,
                               int num_blocks, void* stream);

struct CombineSendArgs {
  const uint8_t* x;
  int64_t x_bytes;
  const float* topk_weights;  // (num_items, num_topk) or null: zeros
  int64_t num_topk;
  const int32_t* item_dst;
  const int32_t* item_row;
  int64_t num_items;
  uint8_t* const* peers;
  NormalRegions regions;  // x and topk_weights used
};
void launch_combine_send(const CombineSendArgs& args, int num_blocks, void* stream);

struct CombineReduceArgs {
  const uint8_t* buffer;  // this rank's buffer base
  NormalRegions regions;
  const int32_t* row_ptr;  // (num_tokens + 1)
  const int32_t* rows;     // rows of the combine region, per token in rank order
  int64_t num_tokens;
  int64_t hidden;
  int64_t num_topk;
  int32_t dtype;  // 0 float32, 1 bfloat16
  void* out;
  float* out_weights;  // may be null
  const void* bias0;   // (num_tokens, hidden) in the rows' dtype, added first (DeepEP's bias); may be null
  const void* bias1;   // the same, added second; may be null
};
void launch_combine_reduce(const CombineReduceArgs& args, int num_blocks, void* stream);

// Normal mode with the layout on the GPU (DeepEP's notify + send + receive, no host barrier): every
// kernel waits on flags in device memory, bounded by the timeout, and reports into `error`.
struct NormalCommon {
  int rank;
  int num_ranks;
  uint8_t* const* peers;
  uint8_t* self;
  uint64_t seq;         // this data phase (dispatch, cached dispatch or combine), 1-based, the same on every rank
  uint64_t shape_word;  // checked against every source's
  uint64_t timeout_ns;
  DeviceError* error;
};

struct NotifyArgs {
  NormalCommon common;                 // common.seq is the notify's own sequence (non-cached dispatches)
  const int64_t* topk_idx;             // (num_tokens, num_topk)
  const uint8_t* is_token_in_rank;     // (num_tokens, num_ranks) or null: from topk_idx
  const int32_t* num_tokens_per_rank;  // (num_ranks) or null: checked when given
  int64_t num_tokens, num_topk, num_experts;
  int32_t shape[5];       // op, dtype, hidden, num_topk, num_experts
  int32_t* prefix;        // (num_tokens, num_ranks) out: index of the token among this rank's rows to r, or -1
  int32_t* count_matrix;  // (num_ranks, num_ranks) out: rows from s to r, every rank's
  int32_t* block_status;  // (num_ranks) scratch
  int32_t* readback;      // host-mapped
};
void launch_notify(const NotifyArgs& args, void* stream);

struct NormalSendArgs {
  NormalCommon common;
  const uint8_t* x;
  int64_t x_bytes;
  const float* scales;
  int64_t num_scales;
  const int64_t* topk_idx;    // null for a cached dispatch
  const float* topk_weights;  // may be null: zeros
  int64_t num_topk;           // 0 for a cached dispatch
  int64_t num_tokens;
  const int32_t* prefix;
  const int32_t* count_matrix;
  NormalRegions regions;
};
void launch_normal_dispatch_send(const NormalSendArgs& args, int num_blocks, void* stream);

struct NormalRecvArgs {
  NormalCommon common;
  NormalRegions regions;
  int64_t num_recv;
  int64_t x_bytes;
  int64_t num_scales;
  int64_t num_topk;  // 0: no top-k outputs
  int64_t first_expert, num_local_experts;
  void* recv_x;
  float* recv_scales;
  int64_t* recv_topk_idx;
  float* recv_topk_weights;
};
void launch_normal_dispatch_recv(const NormalRecvArgs& args, int num_blocks, void* stream);

struct NormalCombineSendArgs {
  NormalCommon common;
  const uint8_t* x;  // (num_recv, hidden)
  int64_t x_bytes;
  const float* topk_weights;  // (num_recv, num_topk) or null: zeros
  int64_t num_topk;
  int64_t num_recv;
  const int32_t* count_matrix;
  NormalRegions regions;
};
void launch_normal_combine_send(const NormalCombineSendArgs& args, int num_blocks, void* stream);

struct NormalCombineReduceArgs {
  NormalCommon common;
  NormalRegions regions;
  const int32_t* prefix;
  const int32_t* count_matrix;
  int64_t num_tokens, hidden, num_topk;
  int32_t dtype;
  void* out;
  float* out_weights;
  const void* bias0;  // as CombineReduceArgs
  const void* bias1;
};
void launch_normal_combine_reduce(const NormalCombineReduceArgs& args, int num_blocks, void* stream);

// Low-latency layout: byte offsets from a buffer's base, identical on every rank for one call shape.
struct LowLatencyLayout {
  int64_t counts = 0;     // int32 [num_ranks src][num_local_experts]
  int64_t x = 0;          // [local expert][src][max_tokens] rows of data_bytes
  int64_t scales = 0;     // float [local expert][src][max_tokens][num_scales]
  int64_t meta = 0;       // int32x2 [local expert][src][max_tokens]: (token, k)
  int64_t combine_x = 0;  // [max_tokens][num_topk] rows of the combine dtype
  int64_t end = 0;
};

struct LowLatencyCommon {
  int rank;
  int num_ranks;
  uint8_t* const* peers;
  uint8_t* self;  // this rank's buffer base
  LowLatencyLayout layout;
  uint64_t seq;
  uint64_t timeout_ns;
  DeviceError* error;  // host-mapped
};

void launch_ll_positions(const int64_t* topk_idx, int64_t num_entries, int64_t num_experts, int32_t* positions,
                         int32_t* counts, void* stream);

struct LowLatencyDispatchArgs {
  LowLatencyCommon common;
  const void* x;
  int32_t x_dtype;  // 0 float32, 1 bfloat16
  bool use_fp8;
  bool round_scale;  // with use_fp8: power-of-two scales (ff::ep::low_latency_scale)
  int64_t hidden;
  int64_t num_tokens;
  int64_t num_topk;
  int64_t num_local_experts;
  int64_t max_tokens;
  const int64_t* topk_idx;
  const int32_t* positions;  // from launch_ll_positions, or null: computed in the send kernel
  const int32_t* counts;     // (num_experts), or null with positions
};
// The most (token, k) entries the send kernel computes positions for itself (shared memory).
inline constexpr int64_t kMaxFusedEntries = 8192;
void launch_ll_dispatch_send(const LowLatencyDispatchArgs& args, int num_blocks, void* stream);

struct LowLatencyDispatchRecvArgs {
  LowLatencyCommon common;
  int64_t data_bytes;  // per row: hidden (FP8) or hidden * element size
  int64_t num_scales;  // per row, 0 unless FP8
  int64_t num_local_experts;
  int64_t max_tokens;
  void* out_x;          // (local experts, num_ranks * max_tokens, hidden)
  float* out_scales;    // (..., num_scales) or null
  int32_t* out_count;   // (local experts) caller's
  int32_t* recv_count;  // (local experts) kept for the combine
  int32_t* src_info;    // (local experts, num_ranks * max_tokens, 3): source rank, token, k
};
void launch_ll_dispatch_recv(const LowLatencyDispatchRecvArgs& args, void* stream);

struct LowLatencyCombineArgs {
  LowLatencyCommon common;
  const void* x;  // (local experts, num_ranks * max_tokens, hidden)
  int32_t dtype;  // 0 float32, 1 bfloat16
  int64_t hidden;
  int64_t num_topk;
  int64_t num_local_experts;
  int64_t max_tokens;
  const int32_t* recv_count;
  const int32_t* src_info;
};
void launch_ll_combine_send(const LowLatencyCombineArgs& args, int num_blocks, void* stream);

struct LowLatencyCombineRecvArgs {
  LowLatencyCommon common;
  int32_t dtype;
  int64_t hidden;
  int64_t num_tokens;
  int64_t num_topk;
  const int64_t* topk_idx;
  const float* topk_weights;
  void* out;  // (num_tokens, hidden)
};
void launch_ll_combine_recv(const LowLatencyCombineRecvArgs& args, int num_blocks, void* stream);

}  // namespace ff::ep::cuda
