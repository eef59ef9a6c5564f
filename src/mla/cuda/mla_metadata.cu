// get_mla_metadata on the GPU: the same schedule as the host's walk (metadata.cc, the reference the tests compare
// it with), in one CTA, with no host synchronisation.
//
// The fast kernel (the lengths' prefix sums and the parts' records fit in shared memory): all threads turn the
// lengths into costs (blocks + the fixed overhead) and scan them into prefix sums; then one warp walks the parts,
// taking up to 32 whole sequences per step (each lane tests one sequence's prefix sum against the part's budget: a
// ballot says how many fit) and cutting the first one that does not; then all threads write the parts' rows. The
// walk's only serial chain is one step per part and per 32 sequences, all in shared memory.
// The serial kernel (more sequences than shared memory holds): one thread runs the host's walk (metadata_walk.h).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "decode_params.h"
#include "metadata_walk.h"

namespace ff::mla::cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxShared = 200 * 1024;
constexpr unsigned kFullMask = 0xffffffffu;

// A part's run, as the walk leaves it (written out as a row afterwards).
struct PartRecord {
  int32_t begin_batch, begin_block, end_batch, end_block, begin_split;  // end_block 0: ends with end_batch
};

size_t fast_shared_bytes(int batch_size, int parts) {
  return sizeof(int64_t) * (static_cast<size_t>(batch_size) + 1) + sizeof(PartRecord) * static_cast<size_t>(parts);
}

__device__ int32_t length_of(const MetadataParams& p, int64_t batch) {
  return max(p.cache_seqlens[batch * p.seqlens_stride], 0);
}

__device__ int64_t blocks_of(const MetadataParams& p, int64_t batch) {
  return (static_cast<int64_t>(length_of(p, batch)) + kMetadataPageBlockSize - 1) / kMetadataPageBlockSize;
}

__device__ void write_row(const MetadataParams& p, int part, int32_t begin_batch, int32_t begin_token,
                          int32_t end_batch, int32_t end_token, int32_t begin_split) {
  int32_t* row = p.tile_scheduler_metadata + part * p.metadata_row_stride;
  const int64_t column = p.metadata_column_stride;
  const int32_t values[kMetadataRowSize] = {begin_batch, begin_token, end_batch, end_token, begin_split, 0, 0, 0};
  for (int c = 0; c < kMetadataRowSize; ++c) row[c * column] = values[c];
}

__global__ void __launch_bounds__(kThreads) metadata_fast_kernel(MetadataParams p) {
  extern __shared__ __align__(16) unsigned char shared[];
  auto* prefix = reinterpret_cast<int64_t*>(shared);  // prefix[i]: the cost of sequences [0, i)
  auto* records = reinterpret_cast<PartRecord*>(prefix + p.batch_size + 1);
  __shared__ int64_t warp_totals[kThreads / 32];
  const int thread = static_cast<int>(threadIdx.x), lane = thread % 32, warp = thread / 32;
  const int64_t batch_size = p.batch_size;

  // Costs, then their exclusive prefix sums: thread t scans a contiguous chunk of the sequences.
  const int64_t chunk = (batch_size + kThreads - 1) / kThreads;
  const int64_t first = min(static_cast<int64_t>(thread) * chunk, batch_size), last = min(first + chunk, batch_size);
  int64_t mine = 0;
  for (int64_t i = first; i < last; ++i) {
    prefix[i] = blocks_of(p, i) + kMetadataFixedOverheadBlocks;
    mine += prefix[i];
  }
  int64_t inclusive = mine;
  for (int offset = 1; offset < 32; offset *= 2) {
    const int64_t before = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += before;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int64_t total = lane < kThreads / 32 ? warp_totals[lane] : 0;
    for (int offset = 1; offset < kThreads / 32; offset *= 2) {
      const int64_t before = __shfl_up_sync(kFullMask, total, offset);
      if (lane >= offset) total += before;
    }
    if (lane < kThreads / 32) warp_totals[lane] = total;
  }
  __syncthreads();
  int64_t running = inclusive - mine + (warp > 0 ? warp_totals[warp - 1] : 0);
  for (int64_t i = first; i < last; ++i) {
    const int64_t cost = prefix[i];
    prefix[i] = running;
    running += cost;
  }
  if (thread == 0) prefix[batch_size] = warp_totals[kThreads / 32 - 1];
  __syncthreads();

  // The walk (warp 0; every lane holds the same state).
  if (warp == 0) {
    const int32_t parts = p.num_sm_parts;
    const int64_t payload = (prefix[batch_size] + parts - 1) / parts + kMetadataFixedOverheadBlocks;
    int64_t batch = 0, block = 0, split = 0, pieces = 0;  // pieces: splits of the sequences before `batch`
    for (int32_t part = 0; part < parts; ++part) {
      PartRecord record{static_cast<int32_t>(batch), static_cast<int32_t>(block), 0, 0, static_cast<int32_t>(split)};
      int64_t remaining = payload;
      while (batch < batch_size) {
        if (block > 0) {  // the rest of a sequence an earlier part cut
          const int64_t blocks_left = prefix[batch + 1] - prefix[batch] - kMetadataFixedOverheadBlocks - block;
          if (remaining >= blocks_left + kMetadataFixedOverheadBlocks) {
            remaining -= blocks_left + kMetadataFixedOverheadBlocks;
            pieces += split + 1;
            if (lane == 0) p.num_splits[(batch + 1) * p.num_splits_stride] = static_cast<int32_t>(pieces);
            ++batch;
            block = 0;
            split = 0;
            continue;
          }
          if (remaining - kMetadataFixedOverheadBlocks > 0) {
            block += remaining - kMetadataFixedOverheadBlocks;
            ++split;
          }
          break;
        }
        // Whole sequences: lane j tests sequences batch .. batch + j together against the budget.
        const int64_t sequence = batch + lane;
        const int64_t cost = sequence < batch_size ? prefix[sequence + 1] - prefix[batch] : INT64_MAX;
        const bool fits = cost <= remaining;
        const int count = __popc(__ballot_sync(kFullMask, fits));  // fits holds for a prefix of the lanes
        if (fits) p.num_splits[(sequence + 1) * p.num_splits_stride] = static_cast<int32_t>(pieces + lane + 1);
        if (count > 0) {
          remaining -= __shfl_sync(kFullMask, cost, count - 1);
          pieces += count;
          batch += count;
        }
        if (count == 32) continue;
        if (batch < batch_size && remaining - kMetadataFixedOverheadBlocks > 0) {  // cut the next one
          block = remaining - kMetadataFixedOverheadBlocks;
          split = 1;
        }
        break;
      }
      record.end_batch = static_cast<int32_t>(block > 0 ? batch : batch - 1);
      record.end_block = static_cast<int32_t>(block);
      if (lane == 0) records[part] = record;
    }
    if (lane == 0) p.num_splits[0] = 0;
  }
  __syncthreads();

  for (int part = thread; part < p.num_sm_parts; part += kThreads) {
    const PartRecord record = records[part];
    const int32_t end_token = record.end_block > 0    ? record.end_block * kMetadataPageBlockSize
                              : record.end_batch >= 0 ? length_of(p, record.end_batch)
                                                      : 0;
    write_row(p, part, record.begin_batch, record.begin_block * kMetadataPageBlockSize, record.end_batch, end_token,
              record.begin_split);
  }
}

// More sequences than shared memory holds: one thread, the host's walk (metadata_walk.h).
__global__ void metadata_serial_kernel(MetadataParams p) {
  if (threadIdx.x != 0) return;
  p.num_splits[0] = 0;
  walk_schedule(
      p.batch_size, p.num_sm_parts, [&](int64_t i) { return blocks_of(p, i); },
      [&](int64_t i) { return length_of(p, i); },
      [&](int32_t part, int64_t begin_batch, int64_t begin_token, int64_t end_batch, int64_t end_token,
          int64_t begin_split) {
        write_row(p, part, static_cast<int32_t>(begin_batch), static_cast<int32_t>(begin_token),
                  static_cast<int32_t>(end_batch), static_cast<int32_t>(end_token), static_cast<int32_t>(begin_split));
      },
      [&](int64_t i, int64_t pieces) { p.num_splits[i * p.num_splits_stride] = static_cast<int32_t>(pieces); });
}

// Above 48 KiB of dynamic shared memory a kernel must opt in: once per device (the first launch there), not
// at every launch.
cudaError_t opt_in_shared_memory() {
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  static std::mutex mutex;
  static std::vector<bool> opted;  // by device ordinal
  std::lock_guard lock(mutex);
  if (static_cast<size_t>(device) < opted.size() && opted[static_cast<size_t>(device)]) return cudaSuccess;
  status = cudaFuncSetAttribute(metadata_fast_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(kMaxShared));
  if (status != cudaSuccess) return status;
  if (static_cast<size_t>(device) >= opted.size()) opted.resize(static_cast<size_t>(device) + 1);
  opted[static_cast<size_t>(device)] = true;
  return cudaSuccess;
}

}  // namespace

int launch_metadata(const MetadataParams& params, void* stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const size_t shared = fast_shared_bytes(params.batch_size, params.num_sm_parts);
  if (shared > kMaxShared) {
    metadata_serial_kernel<<<1, 32, 0, cuda_stream>>>(params);
    return static_cast<int>(cudaGetLastError());
  }
  const cudaError_t opted = opt_in_shared_memory();
  if (opted != cudaSuccess) return static_cast<int>(opted);
  metadata_fast_kernel<<<1, kThreads, shared, cuda_stream>>>(params);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace ff::mla::cuda
