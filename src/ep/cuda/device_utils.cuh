// Device helpers shared by the ep kernels: warp-wide copies, system-scope release/acquire flags, bounded
// waits that report instead of hanging, and the "last block publishes" completion pattern.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace ff::ep::cuda {

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  return now;
}

__device__ __forceinline__ uint64_t load_acquire_sys(const uint64_t* address) {
  uint64_t value;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(value) : "l"(address) : "memory");
  return value;
}

__device__ __forceinline__ void store_release_sys(uint64_t* address, uint64_t value) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(address), "l"(value) : "memory");
}

__device__ __forceinline__ int32_t load_volatile(const int32_t* address) {
  return *reinterpret_cast<const volatile int32_t*>(address);
}

// Records the first error of this rank's kernels in host-mapped memory.
__device__ __forceinline__ void report_error(DeviceError* error, int32_t kind, int32_t peer, uint64_t seq) {
  if (atomicCAS(&error->code, 0, -1) == 0) {
    error->peer = peer;
    error->kind = kind;
    error->seq = static_cast<int32_t>(seq);
    __threadfence_system();
    atomicExch(&error->code, 1);
  }
}

// Waits until *flag >= target or the deadline passes (then reports and returns false). One thread.
// NOTE: %globaltimer (ns) rather than clock64: it keeps counting while the GPU time-slices this
// process's context out, so the bound is wall time.
__device__ __forceinline__ bool wait_flag(const uint64_t* flag, uint64_t target, uint64_t timeout_ns,
                                          DeviceError* error, int32_t kind, int32_t peer) {
  const uint64_t start = global_timer_ns();
  // NOTE: the error word lives in host-mapped memory (a PCIe round trip per read) and the timer costs a
  // special-register read: both are checked every 256 polls only; the flag itself is polled back to back
  // for the first few thousand polls (microseconds) and with short sleeps after that.
  for (uint32_t polls = 0;; ++polls) {
    if (load_acquire_sys(flag) >= target) return true;
    if ((polls & 255) == 255) {
      if (*reinterpret_cast<volatile int32_t*>(&error->code) != 0) return false;  // an earlier wait failed
      if (global_timer_ns() - start > timeout_ns) {
        report_error(error, kind, peer, target);
        return false;
      }
    }
    if (polls > 4096) __nanosleep(128);
  }
}

// One poller per rank's flag (lane 0 of warp r when the block has a warp per rank, so that pollers do not
// diverge inside one warp; else thread r); every thread learns whether all arrived. Must be called by
// every thread of the block.
__device__ __forceinline__ bool block_wait_flags(const uint8_t* control, int64_t offset, int num_ranks, uint64_t target,
                                                 uint64_t timeout_ns, DeviceError* error, int32_t kind) {
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  __syncthreads();
  const bool warp_each = num_ranks <= static_cast<int>(blockDim.x / 32);
  const int poller =
      warp_each ? ((threadIdx.x % 32) == 0 ? static_cast<int>(threadIdx.x / 32) : -1) : static_cast<int>(threadIdx.x);
  if (poller >= 0 && poller < num_ranks && target > 0) {
    const auto* flag = reinterpret_cast<const uint64_t*>(control + offset) + poller;
    if (!wait_flag(flag, target, timeout_ns, error, kind, poller)) atomicExch(&failed, 1);
  }
  __syncthreads();
  return failed == 0;
}

// Called by every thread of every block at the end of a kernel: the last block to finish returns true
// (in every one of its threads) after a system fence, so what it then publishes is ordered after all
// blocks' writes. The counter is reset for the next launch.
// NOTE: one system fence per block, by the thread that then signals, after the barrier (the barrier orders
// the block's writes before it, and the fence is cumulative over them), instead of one per thread: a
// system-scope fence waits for the thread's outstanding NVLink writes, and hundreds of thousands of them
// cost tens of microseconds per kernel.
__device__ __forceinline__ bool last_block_done(uint32_t* counter) {
  __shared__ int last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    const uint32_t previous = atomicAdd(counter, 1u);
    last = previous == gridDim.x - 1;
    if (last) {
      __threadfence_system();
      atomicExch(counter, 0u);
    }
  }
  __syncthreads();
  return last != 0;
}

// Copies `bytes` from src to dst with the whole warp: 16-byte accesses when both ends and the size allow,
// else 4-byte, else bytes.
__device__ __forceinline__ void warp_copy(void* __restrict__ dst, const void* __restrict__ src, int64_t bytes,
                                          int lane) {
  const auto alignment =
      reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(bytes);
  if ((alignment & 15) == 0) {
    auto* d = static_cast<int4*>(dst);
    const auto* s = static_cast<const int4*>(src);
    const int64_t n = bytes / 16;
#pragma unroll 4
    for (int64_t i = lane; i < n; i += 32) d[i] = __ldcg(s + i);
  } else if ((alignment & 3) == 0) {
    auto* d = static_cast<int32_t*>(dst);
    const auto* s = static_cast<const int32_t*>(src);
    for (int64_t i = lane; i < bytes / 4; i += 32) d[i] = __ldcg(s + i);
  } else {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* s = static_cast<const uint8_t*>(src);
    for (int64_t i = lane; i < bytes; i += 32) d[i] = s[i];
  }
}

// Copies `bytes` with the whole warp, 16-byte accesses, four loads in flight per lane before the stores.
// NOTE: issuing the loads of several chunks before their stores keeps more NVLink/HBM requests in flight
// per warp than a load-store loop (the compiler does not reorder loads above stores to other addresses).
__device__ __forceinline__ void warp_copy_16(uint8_t* __restrict__ dst, const uint8_t* __restrict__ src, int64_t bytes,
                                             int lane) {
  auto* d = reinterpret_cast<int4*>(dst);
  const auto* s = reinterpret_cast<const int4*>(src);
  const int64_t n = bytes / 16;
  int64_t i = lane;
  for (; i + 96 < n; i += 128) {
    const int4 a = __ldg(s + i), b = __ldg(s + i + 32), c2 = __ldg(s + i + 64), e = __ldg(s + i + 96);
    d[i] = a;
    d[i + 32] = b;
    d[i + 64] = c2;
    d[i + 96] = e;
  }
  for (; i < n; i += 32) d[i] = __ldg(s + i);
}

__device__ __forceinline__ void warp_copy_any(uint8_t* dst, const uint8_t* src, int64_t bytes, int lane) {
  const auto alignment =
      reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(bytes);
  if ((alignment & 15) == 0) {
    warp_copy_16(dst, src, bytes, lane);
  } else {
    warp_copy(dst, src, bytes, lane);
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T value);
template <>
__device__ __forceinline__ float to_float<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 value) {
  return __bfloat162float(value);
}
template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace ff::ep::cuda
