// The split-KV schedule's greedy walk (FlashMLA's get_mla_metadata), written once for the host reference
// (metadata.cc, C++20) and the GPU's serial kernel (mla_metadata.cu, nvcc as C++17), so the two cannot drift apart.
// The GPU's fast kernel walks differently (a ballot over 32 sequences per step) and is tested against this one.
#pragma once

#include <cstdint>

#include "decode_params.h"

#if defined(__CUDACC__)
#define FF_MLA_HOST_DEVICE __host__ __device__
#else
#define FF_MLA_HOST_DEVICE
#endif

namespace ff::mla::cuda {

// Where the walk stopped: every sequence placed leaves batch == batch_size, block == 0, split == 0; `pieces` is
// num_splits[batch_size].
struct WalkEnd {
  int64_t batch = 0, block = 0, split = 0, pieces = 0;
};

// The walk over `parts` parts of `batch_size` sequences. blocks(i): sequence i's KV blocks (>= 0); length(i): its
// length in tokens; row(part, begin_batch, begin_token, end_batch, end_token, begin_split) writes a part's row;
// splits(i, n) writes num_splits[i] = n for i >= 1 (num_splits[0] = 0 is the caller's).
template <typename Blocks, typename Length, typename Row, typename Splits>
FF_MLA_HOST_DEVICE WalkEnd walk_schedule(int64_t batch_size, int32_t parts, const Blocks& blocks, const Length& length,
                                         const Row& row, const Splits& splits) {
  // Each sequence is charged a fixed overhead on top of its blocks. A part's budget: its even share of the total,
  // plus one overhead so the last piece of a sequence that had to be split still fits its own start-up cost.
  int64_t total_cost = 0;
  for (int64_t i = 0; i < batch_size; ++i) total_cost += blocks(i) + kMetadataFixedOverheadBlocks;
  const int64_t payload = (total_cost + parts - 1) / parts + kMetadataFixedOverheadBlocks;

  // Greedy, in sequence order: a part takes whole sequences while they fit, then the part of the next sequence that
  // fits (a split), and the next part resumes there.
  WalkEnd at;  // batch: the sequence being placed; block: its first block not placed; split: pieces earlier parts took
  for (int32_t part = 0; part < parts; ++part) {
    const int64_t begin_batch = at.batch, begin_block = at.block, begin_split = at.split;
    int64_t remaining = payload;
    while (at.batch < batch_size) {
      const int64_t blocks_left = blocks(at.batch) - at.block;
      if (remaining >= blocks_left + kMetadataFixedOverheadBlocks) {
        at.pieces += at.split + 1;
        splits(at.batch + 1, at.pieces);
        remaining -= blocks_left + kMetadataFixedOverheadBlocks;
        ++at.batch;
        at.block = 0;
        at.split = 0;
      } else {
        // Take what fits after paying the overhead; a sequence is only cut where blocks remain on both sides.
        if (remaining - kMetadataFixedOverheadBlocks > 0) {
          at.block += remaining - kMetadataFixedOverheadBlocks;
          ++at.split;
        }
        break;
      }
    }
    if (at.block > 0) {  // the part ends inside `batch`
      row(part, begin_batch, begin_block * kMetadataPageBlockSize, at.batch, at.block * kMetadataPageBlockSize,
          begin_split);
    } else {  // the part ends at the end of the previous sequence (b - 1 and its length when past the end)
      row(part, begin_batch, begin_block * kMetadataPageBlockSize, at.batch - 1,
          at.batch >= 1 ? static_cast<int64_t>(length(at.batch - 1)) : 0, begin_split);
    }
  }
  return at;
}

}  // namespace ff::mla::cuda
