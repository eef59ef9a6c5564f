// Normal-mode (throughput) kernels of the ep CUDA backend: dispatch send (rows, scales and top-k of each
// (token, destination) item copied by one warp straight into the destination's buffer), the local
// top-k conversion of received rows, combine send, and the combine reduction (float32 sums in source
// rank order, as the CPU reference). No kernel waits for another process: the host orders the phases.
#include "device_utils.cuh"

namespace ff::ep::cuda {
namespace {

constexpr int kSendThreads = 512;

__global__ void __launch_bounds__(kSendThreads) dispatch_send_kernel(DispatchSendArgs args) {
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t item = warp; item < args.num_items; item += num_warps) {
    const int64_t token = args.item_token[item];
    const int64_t row = args.item_row[item];
    uint8_t* base = args.peers[args.item_dst[item]];
    warp_copy(base + args.regions.x + row * args.x_bytes, args.x + token * args.x_bytes, args.x_bytes, lane);
    if (args.num_scales > 0) {
      warp_copy(base + args.regions.scales + row * args.num_scales * 4, args.scales + token * args.num_scales,
                args.num_scales * 4, lane);
    }
    if (args.num_topk > 0) {
      auto* idx = reinterpret_cast<int64_t*>(base + args.regions.topk_idx) + row * args.num_topk;
      auto* weights = reinterpret_cast<float*>(base + args.regions.topk_weights) + row * args.num_topk;
      for (int64_t k = lane; k < args.num_topk; k += 32) {
        idx[k] = args.topk_idx[token * args.num_topk + k];
        weights[k] = args.topk_weights != nullptr ? args.topk_weights[token * args.num_topk + k] : 0.0f;
      }
    }
  }
}

__global__ void dispatch_recv_topk_kernel(const int64_t* recv_idx, const float* recv_weights, int64_t count,
                                          int64_t first_expert, int64_t num_local_experts, int64_t* out_idx,
                                          float* out_weights) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t expert = recv_idx[i];
    const int64_t local = expert - first_expert;
    const bool here = expert >= 0 && local >= 0 && local < num_local_experts;
    if (out_idx != nullptr) out_idx[i] = here ? local : -1;
    if (out_weights != nullptr) out_weights[i] = here ? recv_weights[i] : 0.0f;
  }
}

__global__ void __launch_bounds__(kSendThreads) combine_send_kernel(CombineSendArgs args) {
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t item = warp; item < args.num_items; item += num_warps) {
    const int64_t row = args.item_row[item];
    uint8_t* base = args.peers[args.item_dst[item]];
    warp_copy(base + args.regions.x + row * args.x_bytes, args.x + item * args.x_bytes, args.x_bytes, lane);
    auto* weights = reinterpret_cast<float*>(base + args.regions.topk_weights) + row * args.num_topk;
    for (int64_t k = lane; k < args.num_topk; k += 32) {
      weights[k] = args.topk_weights != nullptr ? args.topk_weights[item * args.num_topk + k] : 0.0f;
    }
  }
}

// The start of a combined element's float32 sum: 0, plus bias0's element, plus bias1's (DeepEP's order; each
// may be null).
template <typename T>
__device__ __forceinline__ float bias_start(const void* bias0, const void* bias1, int64_t index) {
  float sum = 0.0f;
  if (bias0 != nullptr) sum += to_float<T>(static_cast<const T*>(bias0)[index]);
  if (bias1 != nullptr) sum += to_float<T>(static_cast<const T*>(bias1)[index]);
  return sum;
}

// One block per token (grid-stride): out[t] = its bias (if any) + the sum over its rows in rank order, float32,
// rounded once.
template <typename T>
__global__ void combine_reduce_kernel(CombineReduceArgs args) {
  const auto* rows_base = reinterpret_cast<const T*>(args.buffer + args.regions.x);
  const auto* weights_base = reinterpret_cast<const float*>(args.buffer + args.regions.topk_weights);
  auto* out = static_cast<T*>(args.out);
  constexpr int kVector = 16 / sizeof(T);
  const bool vectorized = args.hidden % kVector == 0;
  for (int64_t token = blockIdx.x; token < args.num_tokens; token += gridDim.x) {
    const int32_t begin = args.row_ptr[token];
    const int32_t end = args.row_ptr[token + 1];
    if (vectorized) {
      for (int64_t chunk = threadIdx.x; chunk < args.hidden / kVector; chunk += blockDim.x) {
        float sum[kVector];
#pragma unroll
        for (int v = 0; v < kVector; ++v)
          sum[v] = bias_start<T>(args.bias0, args.bias1, token * args.hidden + chunk * kVector + v);
        for (int32_t r = begin; r < end; ++r) {
          const int4 packed = __ldcg(reinterpret_cast<const int4*>(rows_base + args.rows[r] * args.hidden) + chunk);
          const T* values = reinterpret_cast<const T*>(&packed);
#pragma unroll
          for (int v = 0; v < kVector; ++v) sum[v] += to_float<T>(values[v]);
        }
        int4 result;
        T* result_values = reinterpret_cast<T*>(&result);
#pragma unroll
        for (int v = 0; v < kVector; ++v) result_values[v] = from_float<T>(sum[v]);
        reinterpret_cast<int4*>(out + token * args.hidden)[chunk] = result;
      }
    } else {
      for (int64_t h = threadIdx.x; h < args.hidden; h += blockDim.x) {
        float sum = bias_start<T>(args.bias0, args.bias1, token * args.hidden + h);
        for (int32_t r = begin; r < end; ++r) sum += to_float<T>(rows_base[args.rows[r] * args.hidden + h]);
        out[token * args.hidden + h] = from_float<T>(sum);
      }
    }
    if (args.out_weights != nullptr) {
      for (int64_t k = threadIdx.x; k < args.num_topk; k += blockDim.x) {
        float sum = 0.0f;
        for (int32_t r = begin; r < end; ++r) sum += weights_base[args.rows[r] * args.num_topk + k];
        args.out_weights[token * args.num_topk + k] = sum;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Normal mode with the layout on the GPU. Phases are ordered by flags in device memory: a sender waits
// until every destination acknowledged the previous data phase (it no longer reads its buffer), writes,
// and the last of its blocks publishes (shape word, then the phase's seq) in every destination; a
// receiver waits for every source's seq, checks its shape word, reads, and acknowledges every source.

constexpr int kNotifyThreads = 1024;
constexpr int kRecvThreads = 512;
constexpr uint32_t kNotifyCounter = 8, kSendCounter = 9, kRecvCounter = 10, kCombineSendCounter = 11,
                   kReduceCounter = 12;

__device__ __forceinline__ uint32_t* normal_counter(uint8_t* self, uint32_t which) {
  return reinterpret_cast<uint32_t*>(self + kDoneCounterOffset) + which;
}
__device__ __forceinline__ uint64_t* normal_word(uint8_t* base, int64_t offset, int index) {
  return reinterpret_cast<uint64_t*>(base + offset) + index;
}

// Every thread of the block: waits until every destination acknowledged phase seq - 1.
__device__ __forceinline__ bool wait_acks(const NormalCommon& c) {
  return block_wait_flags(c.self, kNormalAckOffset, c.num_ranks, c.seq - 1, c.timeout_ns, c.error, kWaitNormalAck);
}

// Every thread of the block: waits for every source's rows of phase seq and checks its shape word.
__device__ __forceinline__ bool wait_sources(const NormalCommon& c) {
  if (!block_wait_flags(c.self, kNormalFlagOffset, c.num_ranks, c.seq, c.timeout_ns, c.error, kWaitNormalFlag)) {
    return false;
  }
  __shared__ int mismatch;
  if (threadIdx.x == 0) mismatch = 0;
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < c.num_ranks) {
    const uint64_t theirs = *reinterpret_cast<volatile uint64_t*>(normal_word(c.self, kNormalShapeOffset, threadIdx.x));
    if (theirs != c.shape_word) {
      report_error(c.error, kShapeMismatch, static_cast<int32_t>(threadIdx.x), c.seq);
      atomicExch(&mismatch, 1);
    }
  }
  __syncthreads();
  return mismatch == 0;
}

// The last block of a sender: shape word then seq into every destination.
__device__ __forceinline__ void publish(const NormalCommon& c) {
  for (int dst = threadIdx.x; dst < c.num_ranks; dst += blockDim.x) {
    *normal_word(c.peers[dst], kNormalShapeOffset, c.rank) = c.shape_word;
    __threadfence_system();
    store_release_sys(normal_word(c.peers[dst], kNormalFlagOffset, c.rank), c.seq);
  }
}

// The last block of a receiver: acknowledges phase seq to every source.
__device__ __forceinline__ void acknowledge(const NormalCommon& c) {
  for (int src = threadIdx.x; src < c.num_ranks; src += blockDim.x) {
    store_release_sys(normal_word(c.peers[src], kNormalAckOffset, c.rank), c.seq);
  }
}

// Block r (one per destination rank): which tokens go to r, their index among them (a block-wide scan in
// token order), how many, and the per-expert counts of r's experts, written into r's notify slot. The last
// block publishes this rank's count row to every rank, then waits for every source's slot and writes the
// count matrix (device) and the readback (host-mapped).
__global__ void __launch_bounds__(kNotifyThreads) notify_kernel(NotifyArgs args) {
  const NormalCommon& c = args.common;
  extern __shared__ int32_t expert_counts[];  // (num_experts / num_ranks)
  __shared__ int32_t warp_sums[kNotifyThreads / 32];
  __shared__ int32_t status;
  const int r = blockIdx.x;
  const int R = c.num_ranks;
  const int64_t experts_per_rank = args.num_experts / R;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t parity = static_cast<int64_t>(c.seq % 2);
  const int64_t slot_bytes = notify_slot_bytes(R);
  for (int64_t e = threadIdx.x; e < experts_per_rank; e += blockDim.x) expert_counts[e] = 0;
  if (threadIdx.x == 0) status = 0;
  __syncthreads();
  int32_t running = 0;  // tokens to r before this chunk
  for (int64_t chunk = 0; chunk < args.num_tokens; chunk += blockDim.x) {
    const int64_t t = chunk + threadIdx.x;
    bool here = false;
    if (t < args.num_tokens) {
      bool any = false;
      for (int64_t k = 0; k < args.num_topk; ++k) {
        const int64_t expert = args.topk_idx[t * args.num_topk + k];
        if (expert < -1 || expert >= args.num_experts) {
          atomicOr(&status, kNotifyBadExpert);
          continue;
        }
        if (expert >= 0 && expert / experts_per_rank == r) any = true;
      }
      here = args.is_token_in_rank != nullptr ? args.is_token_in_rank[t * R + r] != 0 : any;
      if (here) {
        for (int64_t k = 0; k < args.num_topk; ++k) {
          const int64_t expert = args.topk_idx[t * args.num_topk + k];
          if (expert >= 0 && expert < args.num_experts && expert / experts_per_rank == r) {
            atomicAdd(&expert_counts[expert - r * experts_per_rank], 1);
          }
        }
      }
    }
    const uint32_t ballot = __ballot_sync(0xffffffffu, here);
    if (lane == 0) warp_sums[warp] = __popc(ballot);
    __syncthreads();
    int32_t before = running;
    for (int w = 0; w < warp; ++w) before += warp_sums[w];
    if (t < args.num_tokens) {
      args.prefix[t * R + r] = here ? before + __popc(ballot & ((1u << lane) - 1u)) : -1;
    }
    int32_t total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += warp_sums[w];
    running += total;
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
  uint8_t* slot = c.peers[r] + kNotifyOffset + (parity * R + c.rank) * slot_bytes;
  auto* slot_experts = reinterpret_cast<int32_t*>(slot + notify_experts_offset(R));
  for (int64_t e = threadIdx.x; e < experts_per_rank; e += blockDim.x) slot_experts[e] = expert_counts[e];
  if (threadIdx.x == 0) {
    args.count_matrix[c.rank * R + r] = running;
    int32_t block_status = status;
    if (args.num_tokens_per_rank != nullptr && args.num_tokens_per_rank[r] != running) {
      block_status |= kNotifyBadPerRank;
    }
    args.block_status[r] = block_status;
  }
  if (!last_block_done(normal_counter(c.self, kNotifyCounter))) return;
  // The last block: this rank's count row and status into every rank's slot, then the slot's seq.
  int32_t my_status = 0;
  for (int d = 0; d < R; ++d) my_status |= *reinterpret_cast<volatile int32_t*>(args.block_status + d);
  for (int d = threadIdx.x; d < R; d += blockDim.x) {
    uint8_t* theirs = c.peers[d] + kNotifyOffset + (parity * R + c.rank) * slot_bytes;
    auto* words = reinterpret_cast<int32_t*>(theirs + kNotifyStatusOffset);
    words[0] = my_status;
    for (int i = 0; i < 5; ++i) words[1 + i] = args.shape[i];
    auto* counts = reinterpret_cast<int32_t*>(theirs + kNotifyCountsOffset);
    for (int i = 0; i < R; ++i) counts[i] = *reinterpret_cast<volatile int32_t*>(args.count_matrix + c.rank * R + i);
    __threadfence_system();
    store_release_sys(reinterpret_cast<uint64_t*>(theirs), c.seq);
  }
  // Every source's slot in this rank's buffer.
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < R) {
    const auto* seq_word =
        reinterpret_cast<const uint64_t*>(c.self + kNotifyOffset + (parity * R + threadIdx.x) * slot_bytes);
    if (!wait_flag(seq_word, c.seq, c.timeout_ns, c.error, kWaitNotify, static_cast<int>(threadIdx.x))) {
      atomicExch(&failed, 1);
    }
  }
  __syncthreads();
  if (failed != 0) return;
  const int64_t per_source = kReadbackPerSource + R;
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(R) * per_source; i += blockDim.x) {
    const int64_t s = i / per_source;
    const int64_t word = i % per_source;
    const uint8_t* their_slot = c.self + kNotifyOffset + (parity * R + s) * slot_bytes;
    int32_t value;
    if (word < kReadbackPerSource) {
      value = *reinterpret_cast<const volatile int32_t*>(their_slot + kNotifyStatusOffset + word * 4);
    } else {
      value = *reinterpret_cast<const volatile int32_t*>(their_slot + kNotifyCountsOffset +
                                                         (word - kReadbackPerSource) * 4);
      args.count_matrix[s * R + (word - kReadbackPerSource)] = value;
    }
    args.readback[1 + i] = value;
  }
  for (int64_t e = threadIdx.x; e < experts_per_rank; e += blockDim.x) {
    int32_t sum = 0;
    for (int s = 0; s < R; ++s) {
      const uint8_t* their_slot = c.self + kNotifyOffset + (parity * R + s) * slot_bytes;
      sum += *reinterpret_cast<const volatile int32_t*>(their_slot + notify_experts_offset(R) + e * 4);
    }
    args.readback[1 + R * per_source + e] = sum;
  }
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0) *reinterpret_cast<volatile int32_t*>(args.readback) = static_cast<int32_t>(c.seq);
}

// One warp per (token, destination) pair with prefix >= 0: its row goes after the rows of lower sources.
__global__ void __launch_bounds__(kSendThreads) normal_dispatch_send_kernel(NormalSendArgs args) {
  const NormalCommon& c = args.common;
  if (!wait_acks(c)) return;
  __shared__ int32_t before[64];  // rows of lower sources at each destination
  const int R = c.num_ranks;
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    int32_t rows = 0;
    for (int s = 0; s < c.rank; ++s) rows += args.count_matrix[s * R + r];
    before[r] = rows;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const int64_t num_pairs = args.num_tokens * R;
  for (int64_t pair = warp; pair < num_pairs; pair += num_warps) {
    const int32_t index = args.prefix[pair];
    if (index < 0) continue;
    const int64_t token = pair / R;
    const int r = static_cast<int>(pair % R);
    const int64_t row = before[r] + index;
    uint8_t* base = c.peers[r];
    warp_copy_any(base + args.regions.x + row * args.x_bytes, args.x + token * args.x_bytes, args.x_bytes, lane);
    if (args.num_scales > 0) {
      warp_copy(base + args.regions.scales + row * args.num_scales * 4, args.scales + token * args.num_scales,
                args.num_scales * 4, lane);
    }
    if (args.num_topk > 0) {
      auto* idx = reinterpret_cast<int64_t*>(base + args.regions.topk_idx) + row * args.num_topk;
      auto* weights = reinterpret_cast<float*>(base + args.regions.topk_weights) + row * args.num_topk;
      for (int64_t k = lane; k < args.num_topk; k += 32) {
        idx[k] = args.topk_idx[token * args.num_topk + k];
        weights[k] = args.topk_weights != nullptr ? args.topk_weights[token * args.num_topk + k] : 0.0f;
      }
    }
  }
  if (last_block_done(normal_counter(c.self, kSendCounter))) publish(c);
}

// Grid-stride 16-byte copy of `bytes` (a multiple of 16, both ends aligned), else 4-byte.
__device__ __forceinline__ void grid_copy(void* dst, const void* src, int64_t bytes) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const auto alignment =
      reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(bytes);
  if ((alignment & 15) == 0) {
    auto* d = static_cast<int4*>(dst);
    const auto* s = static_cast<const int4*>(src);
    for (int64_t i = thread; i < bytes / 16; i += stride) d[i] = __ldcg(s + i);
  } else {
    auto* d = static_cast<int32_t*>(dst);
    const auto* s = static_cast<const int32_t*>(src);
    for (int64_t i = thread; i < bytes / 4; i += stride) d[i] = __ldcg(s + i);
  }
}

// Waits for every source, copies the regions (rows arrived grouped by source in rank order, so they are
// the outputs as they are), converts the top-k ids to local ones, acknowledges.
__global__ void __launch_bounds__(kRecvThreads) normal_dispatch_recv_kernel(NormalRecvArgs args) {
  const NormalCommon& c = args.common;
  if (!wait_sources(c)) return;
  if (args.num_recv > 0) {
    grid_copy(args.recv_x, c.self + args.regions.x, args.num_recv * args.x_bytes);
    if (args.num_scales > 0) {
      grid_copy(args.recv_scales, c.self + args.regions.scales, args.num_recv * args.num_scales * 4);
    }
    if (args.num_topk > 0) {
      const auto* idx = reinterpret_cast<const int64_t*>(c.self + args.regions.topk_idx);
      const auto* weights = reinterpret_cast<const float*>(c.self + args.regions.topk_weights);
      const int64_t count = args.num_recv * args.num_topk;
      for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
           i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t expert = __ldcg(idx + i);
        const int64_t local = expert - args.first_expert;
        const bool here = expert >= 0 && local >= 0 && local < args.num_local_experts;
        if (args.recv_topk_idx != nullptr) args.recv_topk_idx[i] = here ? local : -1;
        if (args.recv_topk_weights != nullptr) args.recv_topk_weights[i] = here ? __ldcg(weights + i) : 0.0f;
      }
    }
  }
  if (last_block_done(normal_counter(c.self, kRecvCounter))) acknowledge(c);
}

// Received row j (the i-th from source s) goes back to s after the rows s gets back from lower ranks.
__global__ void __launch_bounds__(kSendThreads) normal_combine_send_kernel(NormalCombineSendArgs args) {
  const NormalCommon& c = args.common;
  if (!wait_acks(c)) return;
  __shared__ int32_t recv_begin[65];   // first received row of each source
  __shared__ int32_t return_base[64];  // rows source s gets back from ranks below this one
  const int R = c.num_ranks;
  if (threadIdx.x == 0) {
    int32_t rows = 0;
    for (int s = 0; s < R; ++s) {
      recv_begin[s] = rows;
      rows += args.count_matrix[s * R + c.rank];
      int32_t base = 0;
      for (int r = 0; r < c.rank; ++r) base += args.count_matrix[s * R + r];
      return_base[s] = base;
    }
    recv_begin[R] = rows;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t j = warp; j < args.num_recv; j += num_warps) {
    int s = 0;
    while (s + 1 < R && recv_begin[s + 1] <= j) ++s;
    const int64_t row = return_base[s] + (j - recv_begin[s]);
    uint8_t* base = c.peers[s];
    warp_copy_any(base + args.regions.x + row * args.x_bytes, args.x + j * args.x_bytes, args.x_bytes, lane);
    auto* weights = reinterpret_cast<float*>(base + args.regions.topk_weights) + row * args.num_topk;
    for (int64_t k = lane; k < args.num_topk; k += 32) {
      weights[k] = args.topk_weights != nullptr ? args.topk_weights[j * args.num_topk + k] : 0.0f;
    }
  }
  if (last_block_done(normal_counter(c.self, kCombineSendCounter))) publish(c);
}

// One block per token (grid-stride): its bias (if any) + the sum of its rows in destination-rank order, float32,
// rounded once.
template <typename T>
__global__ void normal_combine_reduce_kernel(NormalCombineReduceArgs args) {
  const NormalCommon& c = args.common;
  if (!wait_sources(c)) return;
  __shared__ int32_t base[64];  // first row returned by rank r
  const int R = c.num_ranks;
  if (threadIdx.x == 0) {
    int32_t rows = 0;
    for (int r = 0; r < R; ++r) {
      base[r] = rows;
      rows += args.count_matrix[c.rank * R + r];
    }
  }
  __syncthreads();
  const auto* rows_base = reinterpret_cast<const T*>(c.self + args.regions.x);
  const auto* weights_base = reinterpret_cast<const float*>(c.self + args.regions.topk_weights);
  auto* out = static_cast<T*>(args.out);
  constexpr int kVector = 16 / sizeof(T);
  const bool vectorized = args.hidden % kVector == 0;
  for (int64_t token = blockIdx.x; token < args.num_tokens; token += gridDim.x) {
    int32_t rows[64];
    int num_rows = 0;
    for (int r = 0; r < R; ++r) {
      const int32_t index = args.prefix[token * R + r];
      if (index >= 0) rows[num_rows++] = base[r] + index;
    }
    if (vectorized) {
      for (int64_t chunk = threadIdx.x; chunk < args.hidden / kVector; chunk += blockDim.x) {
        float sum[kVector];
#pragma unroll
        for (int v = 0; v < kVector; ++v)
          sum[v] = bias_start<T>(args.bias0, args.bias1, token * args.hidden + chunk * kVector + v);
        for (int i = 0; i < num_rows; ++i) {
          const int4 packed = __ldcg(reinterpret_cast<const int4*>(rows_base + rows[i] * args.hidden) + chunk);
          const T* values = reinterpret_cast<const T*>(&packed);
#pragma unroll
          for (int v = 0; v < kVector; ++v) sum[v] += to_float<T>(values[v]);
        }
        int4 result;
        T* result_values = reinterpret_cast<T*>(&result);
#pragma unroll
        for (int v = 0; v < kVector; ++v) result_values[v] = from_float<T>(sum[v]);
        reinterpret_cast<int4*>(out + token * args.hidden)[chunk] = result;
      }
    } else {
      for (int64_t h = threadIdx.x; h < args.hidden; h += blockDim.x) {
        float sum = bias_start<T>(args.bias0, args.bias1, token * args.hidden + h);
        for (int i = 0; i < num_rows; ++i) sum += to_float<T>(__ldcg(rows_base + rows[i] * args.hidden + h));
        out[token * args.hidden + h] = from_float<T>(sum);
      }
    }
    if (args.out_weights != nullptr) {
      for (int64_t k = threadIdx.x; k < args.num_topk; k += blockDim.x) {
        float sum = 0.0f;
        for (int i = 0; i < num_rows; ++i) sum += __ldcg(weights_base + rows[i] * args.num_topk + k);
        args.out_weights[token * args.num_topk + k] = sum;
      }
    }
  }
  if (last_block_done(normal_counter(c.self, kReduceCounter))) acknowledge(c);
}

}  // namespace

void launch_dispatch_send(const DispatchSendArgs& args, int num_blocks, void* stream) {
  if (args.num_items == 0) return;
  dispatch_send_kernel<<<num_blocks, kSendThreads, 0, as_stream(stream)>>>(args);
}

void launch_dispatch_recv_topk(const int64_t* recv_idx_global, const float* recv_weights_global, int64_t count,
                               int64_t first_expert, int64_t num_local_experts, int64_t* out_idx, float* out_weights,
                               int num_blocks, void* stream) {
  if (count == 0) return;
  dispatch_recv_topk_kernel<<<num_blocks, 256, 0, as_stream(stream)>>>(
      recv_idx_global, recv_weights_global, count, first_expert, num_local_experts, out_idx, out_weights);
}

void launch_combine_send(const CombineSendArgs& args, int num_blocks, void* stream) {
  if (args.num_items == 0) return;
  combine_send_kernel<<<num_blocks, kSendThreads, 0, as_stream(stream)>>>(args);
}

void launch_combine_reduce(const CombineReduceArgs& args, int num_blocks, void* stream) {
  if (args.num_tokens == 0) return;
  const int blocks = static_cast<int>(args.num_tokens < num_blocks ? args.num_tokens : num_blocks);
  if (args.dtype == 0) {
    combine_reduce_kernel<float><<<blocks, 256, 0, as_stream(stream)>>>(args);
  } else {
    combine_reduce_kernel<__nv_bfloat16><<<blocks, 256, 0, as_stream(stream)>>>(args);
  }
}

void launch_notify(const NotifyArgs& args, void* stream) {
  const auto shared = static_cast<size_t>(args.num_experts / args.common.num_ranks) * 4;
  notify_kernel<<<args.common.num_ranks, kNotifyThreads, shared, as_stream(stream)>>>(args);
}

void launch_normal_dispatch_send(const NormalSendArgs& args, int num_blocks, void* stream) {
  normal_dispatch_send_kernel<<<num_blocks, kSendThreads, 0, as_stream(stream)>>>(args);
}

void launch_normal_dispatch_recv(const NormalRecvArgs& args, int num_blocks, void* stream) {
  normal_dispatch_recv_kernel<<<num_blocks, kRecvThreads, 0, as_stream(stream)>>>(args);
}

void launch_normal_combine_send(const NormalCombineSendArgs& args, int num_blocks, void* stream) {
  normal_combine_send_kernel<<<num_blocks, kSendThreads, 0, as_stream(stream)>>>(args);
}

void launch_normal_combine_reduce(const NormalCombineReduceArgs& args, int num_blocks, void* stream) {
  const int64_t wanted = args.num_tokens > 0 ? args.num_tokens : 1;
  const int blocks = static_cast<int>(wanted < num_blocks ? wanted : num_blocks);
  if (args.dtype == 0) {
    normal_combine_reduce_kernel<float><<<blocks, 256, 0, as_stream(stream)>>>(args);
  } else {
    normal_combine_reduce_kernel<__nv_bfloat16><<<blocks, 256, 0, as_stream(stream)>>>(args);
  }
}

}  // namespace ff::ep::cuda
