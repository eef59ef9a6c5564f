// Launchers of the ep CUDA kernels (intranode_kernels.cu, low_latency_kernels.cu), called by the host
// code in cuda_buffer.cc. Plain C++: no CUDA types cross this header (streams are void*).
//
// A rank's GPU buffer starts with a 4 KiB control block (flags written by peers, counters of its own
// kernels), then the data area whose layout each call fixes (the same on every rank, computed from the
// call's shapes): NormalRegions for the normal mode, LowLatencyLayout for the low-latency mode.
#pragma once

#include <cstdint>

namespace ff::ep::cuda {

inline constexpr int64_t kControlBytes = 4096;
// Byte offsets in the control block: uint64 arrays indexed by the peer rank that writes them.
inline constexpr int64_t kDispatchFlagOffset = 0;    // [src] = low-latency dispatch seq whose rows src wrote here
inline constexpr int64_t kDispatchAckOffset = 512;   // [dst] = low-latency dispatch seq dst finished reading
inline constexpr int64_t kCombineFlagOffset = 1024;  // [src] = low-latency combine seq whose rows src wrote here
inline constexpr int64_t kCombineAckOffset = 1536;   // [dst] = low-latency combine seq dst finished reading
inline constexpr int64_t kDoneCounterOffset = 2048;  // uint32[8]: blocks finished, per kernel kind (own use)

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
  kWaitOverflow = 5
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
};
void launch_combine_reduce(const CombineReduceArgs& args, int num_blocks, void* stream);

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
  int64_t hidden;
  int64_t num_tokens;
  int64_t num_topk;
  int64_t num_local_experts;
  int64_t max_tokens;
  const int64_t* topk_idx;
  const int32_t* positions;  // from launch_ll_positions
  const int32_t* counts;     // (num_experts)
};
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
