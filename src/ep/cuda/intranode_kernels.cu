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

// One block per token (grid-stride): out[t] = sum over its rows in rank order, float32, rounded once.
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
        for (int v = 0; v < kVector; ++v) sum[v] = 0.0f;
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
        float sum = 0.0f;
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

}  // namespace ff::ep::cuda
