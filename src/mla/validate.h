// Internal to src/mla: argument validation shared by every backend of flash_mla_with_kvcache, and the
// expansion of the scheduler metadata into pieces. The CPU backend runs all three steps; the CUDA
// backend runs validate_shapes always and the two value checks on host copies when asked to
// (FlashMlaArgs::check_values), since they read device memory.
#pragma once

#include <cstdint>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"
#include "ff/mla/mla.h"

namespace ff::mla::internal {

// One piece of the schedule: tokens [token_begin, token_end) of sequence `batch`, the split slot its
// partial result goes to, and whether it is the sequence's only piece (then it writes `out` directly).
struct Piece {
  int32_t batch;
  int32_t token_begin;
  int32_t token_end;
  int32_t split;
  bool only_piece;
};

// Shapes derived once from the validated arguments.
struct Problem {
  int64_t batch_size, s_q, h_q, h_kv, group, num_blocks, max_blocks;
  float scale_log2;
  int num_sm_parts;
};

inline int32_t read_int(const TensorView& view, int64_t i) { return view.data_as<const int32_t>()[i * view.stride(0)]; }
inline int32_t read_int(const TensorView& view, int64_t i, int64_t j) {
  return view.data_as<const int32_t>()[i * view.stride(0) + j * view.stride(1)];
}

// Dtypes, ranks, shapes, unit last strides and devices of every view, and the scalar arguments; reads
// no tensor data. Returns the shapes, or an error naming the offending value.
Result<Problem> validate_shapes(const FlashMlaArgs& args, Device device);

// Lengths (>= 0, within the block table) and the block ids they need (within k_cache). Reads
// cache_seqlens and block_table, which must be host memory here.
Status validate_values(const FlashMlaArgs& args, const Problem& problem);

// Expands the metadata into pieces, checking that it describes exactly these lengths: every token of
// every sequence in exactly one piece, pieces of a sequence in order, split slots as num_splits says.
// Reads cache_seqlens, tile_scheduler_metadata and num_splits (host memory).
Result<std::vector<Piece>> expand_schedule(const FlashMlaArgs& args, const Problem& problem);

// Backend::kCuda (decode_cuda.cc): the sm_90a kernel, or failed_precondition where it was not built.
Status flash_mla_with_kvcache_cuda(const FlashMlaArgs& args);
// Backend::kCuda of get_mla_metadata(MlaMetadataArgs): views already checked (shapes, dtypes, devices).
Status get_mla_metadata_cuda(const MlaMetadataArgs& args, int32_t num_sm_parts);

}  // namespace ff::mla::internal
