// Low-latency kernels of the ep CUDA backend. No host synchronisation: a sender writes rows into the
// receivers' staging areas and publishes a per-source flag (the call's sequence number, release store,
// system scope) when all its blocks are done; a receiver waits for every source's flag (bounded by
// %globaltimer; a timeout is written to host-mapped memory, never a hang), packs the rows and
// acknowledges each source, which waits for that acknowledgement before it overwrites the staging area in
// the next call. Rows are packed per local expert in source-rank order, token order within (the CPU
// reference's order), from positions computed before sending.
#include <cuda_fp8.h>

#include "device_utils.cuh"

namespace ff::ep::cuda {
namespace {

constexpr int kThreads = 512;
constexpr uint32_t kDispatchSendCounter = 0, kDispatchRecvCounter = 1, kCombineSendCounter = 2, kCombineRecvCounter = 3;

__device__ __forceinline__ uint32_t* done_counter(uint8_t* self, uint32_t which) {
  return reinterpret_cast<uint32_t*>(self + kDoneCounterOffset) + which;
}
__device__ __forceinline__ uint64_t* control_word(uint8_t* base, int64_t offset, int index) {
  return reinterpret_cast<uint64_t*>(base + offset) + index;
}

// One warp per expert: the position of each (token, k) entry among the entries of its expert, in
// (token, k) order, and each expert's entry count.
__global__ void positions_kernel(const int64_t* topk_idx, int64_t num_entries, int64_t num_experts, int32_t* positions,
                                 int32_t* counts) {
  const int lane = threadIdx.x % 32;
  const int64_t expert = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (expert >= num_experts) return;
  int32_t running = 0;
  for (int64_t base = 0; base < num_entries; base += 32) {
    const int64_t i = base + lane;
    const bool match = i < num_entries && topk_idx[i] == expert;
    const uint32_t ballot = __ballot_sync(0xffffffffu, match);
    if (match) positions[i] = running + __popc(ballot & ((1u << lane) - 1u));
    running += __popc(ballot);
  }
  if (lane == 0) counts[expert] = running;
}

// ff::ep::low_latency_scale (include/ff/ep/buffer.h) on the device: amax / 448, or with round_scale the power of
// two 2^ceil(log2(amax * (1 / 448))).
__device__ __forceinline__ float low_latency_scale(float amax, bool round_scale) {
  if (!round_scale) return amax / 448.0f;
  const uint32_t bits = __float_as_uint(amax * (1.0f / 448.0f));
  const int exponent = static_cast<int>((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
  return __uint_as_float(static_cast<uint32_t>(exponent + 127) << 23);
}

// Quantizes one row to e4m3 with per-128 scales (low_latency_scale of max(amax, 1e-4), no saturation: the CPU
// reference's rule) and writes codes and scales. The whole warp; 256 elements per step when hidden allows
// (each lane 8 consecutive values: one 16-byte load of bf16, 8-byte stores), else 128.
template <typename T>
__device__ __forceinline__ void quantize_row(const T* __restrict__ in, int64_t hidden, uint8_t* out, float* scales,
                                             int lane, bool round_scale) {
  if (hidden % 256 == 0 && (reinterpret_cast<uintptr_t>(in) & 15) == 0) {
    // NOTE: the loads of four steps are issued before any of them is used, so a warp keeps four 16-byte
    // (bf16) loads per lane in flight instead of waiting for each step's load in turn.
    constexpr int kVectors = static_cast<int>(sizeof(T)) / 2;  // int4 per lane per step: 1 (bf16), 2 (float)
    constexpr int kBatch = 4;
    const int64_t num_steps = hidden / 256;
    for (int64_t first_step = 0; first_step < num_steps; first_step += kBatch) {
      int4 raw[kBatch][kVectors];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (first_step + u < num_steps) {
          const auto* source = reinterpret_cast<const int4*>(in + (first_step + u) * 256 + lane * 8);
#pragma unroll
          for (int v = 0; v < kVectors; ++v) raw[u][v] = __ldg(source + v);
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (first_step + u >= num_steps) break;
        const int64_t step = first_step + u;
        const T* typed = reinterpret_cast<const T*>(raw[u]);
        float values[8];
#pragma unroll
        for (int v = 0; v < 8; ++v) values[v] = to_float<T>(typed[v]);
        float amax = 0.0f;
#pragma unroll
        for (int v = 0; v < 8; ++v) amax = fmaxf(amax, fabsf(values[v]));
          // Lanes 0-15 hold one 128-block, 16-31 the next.
#pragma unroll
        for (int offset = 8; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
        const float scale = low_latency_scale(fmaxf(amax, 1e-4f), round_scale);
        uint32_t packed[2] = {0, 0};
#pragma unroll
        for (int v = 0; v < 8; ++v) {
          const auto code = static_cast<uint32_t>(__nv_cvt_float_to_fp8(values[v] / scale, __NV_NOSAT, __NV_E4M3));
          packed[v / 4] |= code << (8 * (v % 4));
        }
        reinterpret_cast<uint2*>(out + step * 256 + lane * 8)[0] = make_uint2(packed[0], packed[1]);
        if (lane % 16 == 0) scales[step * 2 + lane / 16] = scale;
      }
    }
    return;
  }
  for (int64_t block = 0; block < hidden / 128; ++block) {
    float values[4];
    float amax = 0.0f;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      values[v] = to_float<T>(in[block * 128 + lane * 4 + v]);
      amax = fmaxf(amax, fabsf(values[v]));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float scale = low_latency_scale(fmaxf(amax, 1e-4f), round_scale);
    uint32_t packed = 0;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const auto code = static_cast<uint32_t>(__nv_cvt_float_to_fp8(values[v] / scale, __NV_NOSAT, __NV_E4M3));
      packed |= code << (8 * v);
    }
    reinterpret_cast<uint32_t*>(out + block * 128)[lane] = packed;
    if (lane == 0) scales[block] = scale;
  }
}

// One warp per (token, k) entry. With args.positions null (the usual case) each block first copies the
// routing into shared memory and every warp finds its entry's slot among its expert's entries itself (a
// ballot count over the entries before it), so no separate positions kernel runs; the last block counts
// the entries per expert for the counts it publishes.
template <typename T>
__global__ void __launch_bounds__(kThreads) dispatch_send_kernel(LowLatencyDispatchArgs args) {
  const LowLatencyCommon& c = args.common;
  extern __shared__ int32_t shared_routing[];  // fused: (num_entries) expert ids, then (num_experts) counts
  const bool fused = args.positions == nullptr;
  const int64_t num_items = args.num_tokens * args.num_topk;
  if (fused) {
    for (int64_t i = threadIdx.x; i < num_items; i += blockDim.x) {
      shared_routing[i] = static_cast<int32_t>(__ldg(args.topk_idx + i));
    }
  }
  // The previous call's rows in each destination must have been read before they are overwritten.
  if (!block_wait_flags(c.self, kDispatchAckOffset, c.num_ranks, c.seq - 1, c.timeout_ns, c.error, kWaitDispatchAck)) {
    return;
  }
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const int64_t data_bytes = args.use_fp8 ? args.hidden : args.hidden * static_cast<int64_t>(sizeof(T));
  const int64_t num_scales = args.use_fp8 ? args.hidden / 128 : 0;
  const T* x = static_cast<const T*>(args.x);
  for (int64_t item = warp; item < num_items; item += num_warps) {
    const int64_t expert = fused ? shared_routing[item] : args.topk_idx[item];
    if (expert < 0) continue;
    if (expert >= args.num_local_experts * c.num_ranks) {
      if (lane == 0) report_error(c.error, kBadExpert, static_cast<int32_t>(item / args.num_topk), c.seq);
      continue;
    }
    int64_t position;
    if (fused) {
      int32_t before = 0;
      for (int64_t first = 0; first < item; first += 32) {
        const int64_t j = first + lane;
        before += __popc(__ballot_sync(0xffffffffu, j < item && shared_routing[j] == expert));
      }
      position = before;
    } else {
      position = args.positions[item];
    }
    const int64_t token = item / args.num_topk;
    const int64_t k = item % args.num_topk;
    const int64_t dst = expert / args.num_local_experts;
    const int64_t local = expert % args.num_local_experts;
    if (position >= args.max_tokens) {
      if (lane == 0) report_error(c.error, kWaitOverflow, static_cast<int32_t>(dst), c.seq);
      continue;
    }
    const int64_t row = (local * c.num_ranks + c.rank) * args.max_tokens + position;
    uint8_t* base = c.peers[dst];
    uint8_t* out = base + c.layout.x + row * data_bytes;
    const T* in = x + token * args.hidden;
    if (args.use_fp8) {
      quantize_row<T>(in, args.hidden, out, reinterpret_cast<float*>(base + c.layout.scales) + row * num_scales, lane,
                      args.round_scale);
    } else {
      warp_copy_any(out, reinterpret_cast<const uint8_t*>(in), data_bytes, lane);
    }
    if (lane == 0) {
      auto* meta = reinterpret_cast<int32_t*>(base + c.layout.meta) + row * 2;
      meta[0] = static_cast<int32_t>(token);
      meta[1] = static_cast<int32_t>(k);
    }
  }
  if (last_block_done(done_counter(c.self, kDispatchSendCounter))) {
    const int64_t num_experts = args.num_local_experts * c.num_ranks;
    const int32_t* counts = args.counts;
    if (fused) {
      int32_t* expert_counts = shared_routing + num_items;
      for (int64_t e = threadIdx.x; e < num_experts; e += blockDim.x) expert_counts[e] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < num_items; i += blockDim.x) {
        if (shared_routing[i] >= 0 && shared_routing[i] < num_experts) atomicAdd(&expert_counts[shared_routing[i]], 1);
      }
      __syncthreads();
      counts = expert_counts;
    }
    for (int64_t i = threadIdx.x; i < num_experts; i += blockDim.x) {
      const int64_t dst = i / args.num_local_experts;
      const int64_t local = i % args.num_local_experts;
      reinterpret_cast<int32_t*>(c.peers[dst] + c.layout.counts)[c.rank * args.num_local_experts + local] = counts[i];
    }
    __threadfence_system();
    __syncthreads();
    for (int dst = threadIdx.x; dst < c.num_ranks; dst += blockDim.x) {
      store_release_sys(control_word(c.peers[dst], kDispatchFlagOffset, c.rank), c.seq);
    }
  }
}

// Block (local expert, source): packs that source's rows after the rows of lower sources.
__global__ void __launch_bounds__(kThreads) dispatch_recv_kernel(LowLatencyDispatchRecvArgs args) {
  const LowLatencyCommon& c = args.common;
  if (!block_wait_flags(c.self, kDispatchFlagOffset, c.num_ranks, c.seq, c.timeout_ns, c.error, kWaitDispatchFlag)) {
    return;
  }
  const int64_t local = blockIdx.x / c.num_ranks;
  const int src = static_cast<int>(blockIdx.x % c.num_ranks);
  const auto* counts = reinterpret_cast<const int32_t*>(c.self + c.layout.counts);
  __shared__ int32_t offset, count;
  if (threadIdx.x == 0) {
    int32_t before = 0;
    for (int s = 0; s < src; ++s) before += load_volatile(counts + s * args.num_local_experts + local);
    offset = before;
    count = load_volatile(counts + src * args.num_local_experts + local);
    if (src == c.num_ranks - 1) {
      args.out_count[local] = before + count;
      args.recv_count[local] = before + count;
    }
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int capacity = static_cast<int>(c.num_ranks * args.max_tokens);
  for (int i = threadIdx.x / 32; i < count; i += blockDim.x / 32) {
    const int64_t staged = (local * c.num_ranks + src) * args.max_tokens + i;
    const int64_t packed = local * capacity + offset + i;
    warp_copy(static_cast<uint8_t*>(args.out_x) + packed * args.data_bytes,
              c.self + c.layout.x + staged * args.data_bytes, args.data_bytes, lane);
    if (args.num_scales > 0) {
      warp_copy(args.out_scales + packed * args.num_scales,
                reinterpret_cast<const float*>(c.self + c.layout.scales) + staged * args.num_scales,
                args.num_scales * 4, lane);
    }
    if (lane == 0) {
      const auto* meta = reinterpret_cast<const int32_t*>(c.self + c.layout.meta) + staged * 2;
      args.src_info[packed * 3 + 0] = src;
      args.src_info[packed * 3 + 1] = meta[0];
      args.src_info[packed * 3 + 2] = meta[1];
    }
  }
  if (last_block_done(done_counter(c.self, kDispatchRecvCounter))) {
    for (int peer = threadIdx.x; peer < c.num_ranks; peer += blockDim.x) {
      store_release_sys(control_word(c.peers[peer], kDispatchAckOffset, c.rank), c.seq);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) combine_send_kernel(LowLatencyCombineArgs args) {
  const LowLatencyCommon& c = args.common;
  if (!block_wait_flags(c.self, kCombineAckOffset, c.num_ranks, c.seq - 1, c.timeout_ns, c.error, kWaitCombineAck)) {
    return;
  }
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const int64_t capacity = c.num_ranks * args.max_tokens;
  const int64_t row_bytes = args.hidden * static_cast<int64_t>(sizeof(T));
  for (int64_t item = warp; item < args.num_local_experts * capacity; item += num_warps) {
    const int64_t local = item / capacity;
    if (item % capacity >= args.recv_count[local]) continue;
    const int32_t src = args.src_info[item * 3 + 0];
    const int64_t token = args.src_info[item * 3 + 1];
    const int64_t k = args.src_info[item * 3 + 2];
    uint8_t* out = c.peers[src] + c.layout.combine_x + (token * args.num_topk + k) * row_bytes;
    warp_copy(out, static_cast<const uint8_t*>(args.x) + item * row_bytes, row_bytes, lane);
  }
  if (last_block_done(done_counter(c.self, kCombineSendCounter))) {
    for (int dst = threadIdx.x; dst < c.num_ranks; dst += blockDim.x) {
      store_release_sys(control_word(c.peers[dst], kCombineFlagOffset, c.rank), c.seq);
    }
  }
}

// out[t] = sum over valid k of weight[t, k] * row(t, k), float32, rounded once. One block per token
// (grid-stride), 16-byte loads of the rows.
template <typename T>
__global__ void __launch_bounds__(256) combine_recv_kernel(LowLatencyCombineRecvArgs args) {
  const LowLatencyCommon& c = args.common;
  if (!block_wait_flags(c.self, kCombineFlagOffset, c.num_ranks, c.seq, c.timeout_ns, c.error, kWaitCombineFlag)) {
    return;
  }
  const auto* rows = reinterpret_cast<const T*>(c.self + c.layout.combine_x);
  auto* out = static_cast<T*>(args.out);
  constexpr int kVector = 16 / sizeof(T);
  const bool vectorized = args.hidden % kVector == 0;
  __shared__ float weights[64];
  for (int64_t token = blockIdx.x; token < args.num_tokens; token += gridDim.x) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < args.num_topk && k < 64; k += blockDim.x) {
      const int64_t entry = token * args.num_topk + k;
      weights[k] = args.topk_idx[entry] < 0 ? 0.0f : args.topk_weights[entry];
    }
    __syncthreads();
    if (vectorized && args.num_topk <= 64) {
      for (int64_t chunk = threadIdx.x; chunk < args.hidden / kVector; chunk += blockDim.x) {
        float sum[kVector];
#pragma unroll
        for (int v = 0; v < kVector; ++v) sum[v] = 0.0f;
        for (int64_t k = 0; k < args.num_topk; ++k) {
          const int64_t entry = token * args.num_topk + k;
          if (args.topk_idx[entry] < 0) continue;
          const int4 packed = __ldcg(reinterpret_cast<const int4*>(rows + entry * args.hidden) + chunk);
          const T* values = reinterpret_cast<const T*>(&packed);
#pragma unroll
          for (int v = 0; v < kVector; ++v) sum[v] += weights[k] * to_float<T>(values[v]);
        }
        int4 result;
        T* result_values = reinterpret_cast<T*>(&result);
#pragma unroll
        for (int v = 0; v < kVector; ++v) result_values[v] = from_float<T>(sum[v]);
        reinterpret_cast<int4*>(out + token * args.hidden)[chunk] = result;
      }
    } else {
      for (int64_t h = threadIdx.x; h < args.hidden; h += blockDim.x) {
        float sum = 0.0f;
        for (int64_t k = 0; k < args.num_topk; ++k) {
          const int64_t entry = token * args.num_topk + k;
          if (args.topk_idx[entry] < 0) continue;
          sum += args.topk_weights[entry] * to_float<T>(__ldcg(rows + entry * args.hidden + h));
        }
        out[token * args.hidden + h] = from_float<T>(sum);
      }
    }
  }
  if (last_block_done(done_counter(c.self, kCombineRecvCounter))) {
    for (int peer = threadIdx.x; peer < c.num_ranks; peer += blockDim.x) {
      store_release_sys(control_word(c.peers[peer], kCombineAckOffset, c.rank), c.seq);
    }
  }
}

}  // namespace

void launch_ll_positions(const int64_t* topk_idx, int64_t num_entries, int64_t num_experts, int32_t* positions,
                         int32_t* counts, void* stream) {
  const int64_t threads = 256;
  const int64_t blocks = (num_experts * 32 + threads - 1) / threads;
  positions_kernel<<<static_cast<unsigned>(blocks), threads, 0, as_stream(stream)>>>(topk_idx, num_entries, num_experts,
                                                                                     positions, counts);
}

void launch_ll_dispatch_send(const LowLatencyDispatchArgs& args, int num_blocks, void* stream) {
  const size_t shared =
      args.positions != nullptr
          ? 0
          : static_cast<size_t>(args.num_tokens * args.num_topk + args.num_local_experts * args.common.num_ranks) * 4;
  if (args.x_dtype == 0) {
    dispatch_send_kernel<float><<<num_blocks, kThreads, shared, as_stream(stream)>>>(args);
  } else {
    dispatch_send_kernel<__nv_bfloat16><<<num_blocks, kThreads, shared, as_stream(stream)>>>(args);
  }
}

void launch_ll_dispatch_recv(const LowLatencyDispatchRecvArgs& args, void* stream) {
  const auto blocks = static_cast<unsigned>(args.num_local_experts * args.common.num_ranks);
  dispatch_recv_kernel<<<blocks, kThreads, 0, as_stream(stream)>>>(args);
}

void launch_ll_combine_send(const LowLatencyCombineArgs& args, int num_blocks, void* stream) {
  if (args.dtype == 0) {
    combine_send_kernel<float><<<num_blocks, kThreads, 0, as_stream(stream)>>>(args);
  } else {
    combine_send_kernel<__nv_bfloat16><<<num_blocks, kThreads, 0, as_stream(stream)>>>(args);
  }
}

void launch_ll_combine_recv(const LowLatencyCombineRecvArgs& args, int num_blocks, void* stream) {
  const int64_t wanted = args.num_tokens > 0 ? args.num_tokens : 1;
  const int blocks = static_cast<int>(wanted < num_blocks ? wanted : num_blocks);
  if (args.dtype == 0) {
    combine_recv_kernel<float><<<blocks, 256, 0, as_stream(stream)>>>(args);
  } else {
    combine_recv_kernel<__nv_bfloat16><<<blocks, 256, 0, as_stream(stream)>>>(args);
  }
}

}  // namespace ff::ep::cuda
