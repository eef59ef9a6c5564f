// ff::ep: expert-parallel dispatch and combine with DeepEP's v1 Buffer semantics. This header holds the
// CPU shared-memory backend (ShmBuffer): ranks are processes on one machine that share one POSIX
// shared-memory segment per buffer; it is the reference the CUDA backend will be tested against.
// See docs/ep.md for the segment layout and the protocol.
//
// Collectives: every rank of the group must call the same collectives in the same order (as with NCCL);
// a rank that calls a different one gets an error naming both. Every wait is bounded by the buffer's
// timeout; a rank that dies (or times out) aborts the group and every other rank's current or next call
// fails with an error naming it, never hangs.
//
// Thread-safety: a ShmBuffer is used by one thread at a time (it is one rank). Handles are immutable
// values and may be shared freely.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::ep {

inline constexpr int kMaxRanks = 64;
// FP8 rows carry one float32 scale per this many elements (DeepEP's per-128 scaling).
inline constexpr int64_t kFp8BlockSize = 128;

enum class DType : int32_t {
  kFloat32 = 0,
  kBFloat16 = 1,   // bfloat16 bit patterns (uint16)
  kFloat8E4M3 = 2  // float8 e4m3fn codes (uint8) with per-128 float32 scales
};
int64_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);

// The float32 scale of one 128-element block of a low-latency FP8 dispatch whose largest magnitude is amax
// (already raised to at least 1e-4): amax / 448; with round_scale (DeepEP's), the power of two at or above
// amax * (1 / 448), 2^ceil(log2(.)) taken from its bits as DeepEP does, so a code times its scale is exact. The
// codes are the values divided by the scale, rounded to e4m3 (src/ep/cuda/low_latency_kernels.cu does the same).
inline float low_latency_scale(float amax, bool round_scale) {
  if (!round_scale) return amax / 448.0f;
  const float x = amax * (1.0f / 448.0f);
  uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  const int exponent = static_cast<int>((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
  return std::ldexp(1.0f, exponent);
}

// A read-only row-major matrix (num_rows, hidden) owned by the caller. For kFloat8E4M3, `scales` points
// at (num_rows, hidden / 128) float32 scales; nullptr otherwise.
struct RowsView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t num_rows = 0;
  int64_t hidden = 0;
  const float* scales = nullptr;
};

// An owned row-major matrix (num_rows, hidden); `scales` is (num_rows, hidden / 128) for kFloat8E4M3.
struct Rows {
  DType dtype = DType::kFloat32;
  int64_t num_rows = 0;
  int64_t hidden = 0;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
};

// get_dispatch_layout: experts are split contiguously over ranks (num_experts / num_ranks each).
struct DispatchLayout {
  std::vector<int32_t> num_tokens_per_rank;    // (num_ranks)
  std::vector<int32_t> num_tokens_per_expert;  // (num_experts)
  std::vector<uint8_t> is_token_in_rank;       // (num_tokens, num_ranks), 0 or 1
};
// topk_idx is (num_tokens, num_topk); -1 entries are ignored. Pure; needs no buffer.
Result<DispatchLayout> get_dispatch_layout(std::span<const int64_t> topk_idx, int64_t num_tokens, int64_t num_topk,
                                           int64_t num_experts, int num_ranks);

// What a normal dispatch leaves behind for its combine and for cached dispatches.
struct DispatchHandle {
  int num_ranks = 0;
  int64_t num_tokens = 0;                            // tokens of this rank before dispatch
  std::vector<std::vector<int64_t>> send_token_ids;  // per destination rank, token indices in order
  std::vector<int64_t> recv_counts;                  // per source rank, rows received
  std::vector<int64_t> num_recv_tokens_per_expert;   // per local expert, aligned
  int64_t num_recv_tokens() const;
};

struct DispatchInput {
  RowsView x;                           // (num_tokens, hidden)
  std::span<const int64_t> topk_idx;    // (num_tokens, num_topk); empty with a handle
  std::span<const float> topk_weights;  // (num_tokens, num_topk) or empty
  int64_t num_topk = 0;
  int64_t num_experts = 0;                       // ignored with a handle
  std::span<const int32_t> num_tokens_per_rank;  // optional check: must equal is_token_in_rank's column sums
  std::span<const uint8_t> is_token_in_rank;     // (num_tokens, num_ranks); empty: computed from topk_idx
  std::shared_ptr<const DispatchHandle> handle;  // non-null: cached dispatch, only data moves
  int64_t expert_alignment = 1;
};

struct DispatchOutput {
  Rows recv_x;                                      // rows grouped by source rank in rank order, token order within
  std::vector<int64_t> recv_topk_idx;               // (num_recv, num_topk) local expert ids, -1 elsewhere
  std::vector<float> recv_topk_weights;             // (num_recv, num_topk), 0 where recv_topk_idx is -1
  std::vector<int64_t> num_recv_tokens_per_expert;  // per local expert, aligned up to expert_alignment
  std::shared_ptr<const DispatchHandle> handle;
};

struct CombineOutput {
  Rows combined_x;                           // (num_tokens, hidden), dtype of the input
  std::vector<float> combined_topk_weights;  // (num_tokens, num_topk) when weights were given
};

struct LowLatencyHandle {
  int num_ranks = 0;
  int64_t num_tokens = 0, num_topk = 0, hidden = 0, num_experts = 0, max_tokens_per_rank = 0;
  // Per local expert, per packed row: the source rank, token index and top-k slot.
  std::vector<std::vector<int32_t>> src_rank, src_token, src_k;
};

struct LowLatencyDispatchOutput {
  Rows recv_x;                      // (num_local_experts * max_tokens_per_rank * num_ranks, hidden), zero-padded
  std::vector<int32_t> recv_count;  // (num_local_experts)
  std::shared_ptr<const LowLatencyHandle> handle;
};

struct BufferOptions {
  std::string group;  // names the shared-memory segment: "/ff_ep_<group>"; same on every rank
  int rank = 0;
  int num_ranks = 1;
  int64_t num_bytes = 0;  // data bytes of the segment, split into num_ranks^2 per-(source,destination) slots
  int64_t timeout_ms = 30000;
};

class ShmBuffer {
 public:
  // Creates (rank 0) or attaches to (others) the group's segment and waits, bounded, until every rank
  // has joined. Fails with an error naming the ranks that did not come.
  static Result<std::unique_ptr<ShmBuffer>> create(const BufferOptions& options);
  ~ShmBuffer();
  ShmBuffer(const ShmBuffer&) = delete;
  ShmBuffer& operator=(const ShmBuffer&) = delete;

  int rank() const { return options_.rank; }
  int num_ranks() const { return options_.num_ranks; }
  int64_t slot_bytes() const { return slot_bytes_; }
  int64_t timeout_ms() const { return options_.timeout_ms; }

  Result<DispatchOutput> dispatch(const DispatchInput& input);
  // x: (num_recv, hidden) rows in the order dispatch returned them. Unweighted sum over the ranks that
  // received each token, in rank order, accumulated in float32. topk_weights: (num_recv, num_topk) or empty.
  // bias: none, one or two (num_tokens, hidden) matrices in x's dtype (DeepEP's bias), added to each token's
  // float32 sum first, in order, before the ranks' rows; the sum is rounded once.
  Result<CombineOutput> combine(const RowsView& x, const DispatchHandle& handle, std::span<const float> topk_weights,
                                int64_t num_topk, std::span<const RowsView> bias = {});

  // Low-latency dispatch in two halves: send writes and publishes, receive waits and copies out. x is
  // float32 or bfloat16; with use_fp8 the received rows are e4m3 with per-128 scales (low_latency_scale; with
  // round_scale, powers of two).
  Status low_latency_dispatch_send(const RowsView& x, std::span<const int64_t> topk_idx, int64_t num_topk,
                                   int64_t max_tokens_per_rank, int64_t num_experts, bool use_fp8,
                                   bool round_scale = false);
  Result<LowLatencyDispatchOutput> low_latency_dispatch_receive();
  // x: (num_local_experts * max_tokens_per_rank * num_ranks, hidden); output weighted by topk_weights.
  Status low_latency_combine_send(const RowsView& x, std::span<const int64_t> topk_idx,
                                  std::span<const float> topk_weights, const LowLatencyHandle& handle);
  Result<Rows> low_latency_combine_receive();

  // A small all-to-all of byte blobs, the control plane of the CUDA backend: to_each[d] goes to rank d;
  // returns from_each[s], the blob rank s sent here. A collective like the others (same order on every
  // rank, bounded waits, ends with a barrier); `what` names it in errors. An empty blob per rank makes it a
  // checked barrier. Each blob must fit a slot (slot_bytes() - 64 bytes).
  Result<std::vector<std::vector<uint8_t>>> exchange(const std::vector<std::vector<uint8_t>>& to_each,
                                                     const char* what);

  // Marks the group aborted with this message: every rank's current and next call fails with it.
  void abort_group(const std::string& message);
  // OK while the group runs; the Aborted status (with the first error's message) once a rank failed, and
  // (with check_liveness) Unavailable naming a dead rank. Non-blocking; for backends that wait on
  // something other than the slots. The liveness check reads /proc once per rank (tens of us in all).
  Status check_group(bool check_liveness = true) const;

  struct Segment;  // the shared layout (buffer.cc)

 private:
  explicit ShmBuffer(BufferOptions options) : options_(std::move(options)) {}
  Status attach();
  Status begin_call(int op);
  uint8_t* slot(int src, int dst) const;
  Status publish(int dst);
  Status wait_published(int src, const char* what);
  Status barrier(const char* what);
  Status wait_for(int peer, const char* what, const std::function<bool()>& done);
  Status fail(Status status);
  Status check_peer_alive(int peer) const;

  BufferOptions options_;
  std::string name_;
  int fd_ = -1;
  void* map_ = nullptr;
  int64_t map_bytes_ = 0;
  Segment* segment_ = nullptr;
  uint8_t* data_ = nullptr;
  int64_t slot_bytes_ = 0;
  uint64_t seq_ = 0;  // collectives started by this rank
  int op_ = 0;        // the collective in flight
  int pending_ = 0;   // a low-latency send half awaiting its receive half (op id), 0 when none
  struct Pending;
  std::shared_ptr<Pending> pending_state_;
};

}  // namespace ff::ep
