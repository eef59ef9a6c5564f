// Argument validation shared by every backend of flash_mla_with_kvcache, and the expansion of the
// scheduler metadata into pieces (see validate.h).
#include "validate.h"

#include <cmath>
#include <string>

namespace ff::mla::internal {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

Status check_view(const TensorView& view, const char* name, int ndim, std::initializer_list<DType> dtypes,
                  const char* expected_shape, Device device) {
  bool dtype_ok = false;
  for (DType dtype : dtypes) dtype_ok = dtype_ok || view.dtype == dtype;
  if (view.data == nullptr && view.numel() > 0) return invalid_argument("{} has no data", name);
  if (view.ndim != ndim) {
    return invalid_argument("{} has shape {} ({}-D); expected {}", name, view.shape_string(), view.ndim,
                            expected_shape);
  }
  if (!dtype_ok) {
    std::string names;
    for (DType dtype : dtypes) names += std::string(names.empty() ? "" : " or ") + std::string(dtype_name(dtype));
    return invalid_argument("{} has dtype {}; expected {}", name, dtype_name(view.dtype), names);
  }
  if (view.ndim > 0 && view.stride(-1) != 1 && view.size(-1) > 1) {
    return invalid_argument("{} has stride {} in its last dimension; it must be contiguous (1), e.g. .contiguous()",
                            name, view.stride(-1));
  }
  if (view.device != device) {
    return invalid_argument("{} is on the {}, but this call runs on the {}", name,
                            view.device == Device::kCpu ? "CPU" : "GPU", device == Device::kCpu ? "CPU" : "GPU");
  }
  return Status::ok();
}

Status check_shape(const TensorView& view, const char* name, std::initializer_list<int64_t> expected) {
  bool same = static_cast<int>(expected.size()) == view.ndim;
  int dim = 0;
  for (int64_t extent : expected) same = same && view.shape[dim++] == extent;
  if (same) return Status::ok();
  std::string text = "(";
  dim = 0;
  for (int64_t extent : expected) text += (dim++ == 0 ? "" : ", ") + std::to_string(extent);
  return invalid_argument("{} has shape {}; expected {}{}", name, view.shape_string(), text,
                          expected.size() == 1 ? ",)" : ")");
}

}  // namespace

Result<Problem> validate_shapes(const FlashMlaArgs& args, Device device) {
  const std::initializer_list<DType> half_types = {DType::kBFloat16, DType::kFloat16};
  FF_RETURN_IF_ERROR(check_view(args.q, "q", 4, half_types, "(b, s_q, h_q, 576)", device));
  if (args.is_fp8_kvcache) {
    FF_RETURN_IF_ERROR(check_view(args.k_cache, "k_cache", 4, {DType::kUInt8, DType::kFloat8E4M3},
                                  "(num_blocks, 64, h_kv, 656) FP8 layout", device));
  } else {
    FF_RETURN_IF_ERROR(check_view(args.k_cache, "k_cache", 4, half_types, "(num_blocks, 64, h_kv, 576)", device));
  }
  FF_RETURN_IF_ERROR(check_view(args.block_table, "block_table", 2, {DType::kInt32}, "(b, max_blocks)", device));
  FF_RETURN_IF_ERROR(check_view(args.cache_seqlens, "cache_seqlens", 1, {DType::kInt32}, "(b,)", device));
  FF_RETURN_IF_ERROR(check_view(args.tile_scheduler_metadata, "tile_scheduler_metadata", 2, {DType::kInt32},
                                "(num_sm_parts, 8)", device));
  FF_RETURN_IF_ERROR(check_view(args.num_splits, "num_splits", 1, {DType::kInt32}, "(b + 1,)", device));
  FF_RETURN_IF_ERROR(check_view(args.out, "out", 4, {args.q.dtype}, "(b, s_q, h_q, 512) in the dtype of q", device));
  FF_RETURN_IF_ERROR(check_view(args.softmax_lse, "softmax_lse", 3, {DType::kFloat32}, "(b, h_q, s_q)", device));

  Problem problem{};
  problem.batch_size = args.q.size(0);
  problem.s_q = args.q.size(1);
  problem.h_q = args.q.size(2);
  if (problem.batch_size < 1 || problem.s_q < 1 || problem.h_q < 1) {
    return invalid_argument("q has shape {}; b, s_q and h_q must be >= 1", args.q.shape_string());
  }
  if (args.q.size(3) != kHeadDimQk) {
    return invalid_argument("q has head dim {}; expected 576 (512 latent + 64 RoPE channels)", args.q.size(3));
  }
  if (args.head_dim_v != kHeadDimV) {
    return invalid_argument("head_dim_v is {}; only 512 (the latent part of the 576 channels) is supported",
                            args.head_dim_v);
  }
  const int64_t token_width = args.is_fp8_kvcache ? kFp8BytesPerToken : kHeadDimQk;
  if (args.k_cache.size(1) != kPageBlockSize || args.k_cache.size(3) != token_width) {
    return invalid_argument("k_cache has shape {}; expected (num_blocks, 64, h_kv, {}){}", args.k_cache.shape_string(),
                            token_width, args.is_fp8_kvcache ? " bytes per token (is_fp8_kvcache=True)" : "");
  }
  if (!args.is_fp8_kvcache && args.k_cache.dtype != args.q.dtype) {
    return invalid_argument("k_cache has dtype {} but q has {}; they must match", dtype_name(args.k_cache.dtype),
                            dtype_name(args.q.dtype));
  }
  problem.num_blocks = args.k_cache.size(0);
  problem.h_kv = args.k_cache.size(2);
  if (problem.h_kv < 1 || problem.h_q % problem.h_kv != 0) {
    return invalid_argument("h_q = {} is not a multiple of h_kv = {} (k_cache dimension 2)", problem.h_q, problem.h_kv);
  }
  problem.group = problem.h_q / problem.h_kv;
  FF_RETURN_IF_ERROR(check_shape(args.cache_seqlens, "cache_seqlens", {problem.batch_size}));
  if (args.block_table.size(0) != problem.batch_size) {
    return invalid_argument("block_table has {} rows; expected b = {}", args.block_table.size(0), problem.batch_size);
  }
  problem.max_blocks = args.block_table.size(1);
  FF_RETURN_IF_ERROR(check_shape(args.num_splits, "num_splits", {problem.batch_size + 1}));
  if (args.tile_scheduler_metadata.size(1) != kTileSchedulerMetadataSize || args.tile_scheduler_metadata.size(0) < 1) {
    return invalid_argument("tile_scheduler_metadata has shape {}; expected (num_sm_parts >= 1, 8)",
                            args.tile_scheduler_metadata.shape_string());
  }
  problem.num_sm_parts = static_cast<int>(args.tile_scheduler_metadata.size(0));
  FF_RETURN_IF_ERROR(check_shape(args.out, "out", {problem.batch_size, problem.s_q, problem.h_q, kHeadDimV}));
  FF_RETURN_IF_ERROR(check_shape(args.softmax_lse, "softmax_lse", {problem.batch_size, problem.h_q, problem.s_q}));

  const float scale = args.softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(kHeadDimQk)));
  if (!std::isfinite(scale)) return invalid_argument("softmax_scale is {}; it must be finite", scale);
  problem.scale_log2 = scale * kLog2e;
  return problem;
}

Status validate_values(const FlashMlaArgs& args, const Problem& problem) {
  // Lengths against the block table and the cache: only the columns a sequence needs are read.
  for (int64_t i = 0; i < problem.batch_size; ++i) {
    const int32_t seqlen = read_int(args.cache_seqlens, i);
    if (seqlen < 0) return invalid_argument("cache_seqlens[{}] is {}; lengths must be >= 0", i, seqlen);
    if (args.causal && seqlen < problem.s_q) {
      // Not an error: the first s_q - seqlen queries see nothing (out 0, lse +inf), as the anchor.
    }
    const int64_t needed = (seqlen + kPageBlockSize - 1) / kPageBlockSize;
    if (needed > problem.max_blocks) {
      return invalid_argument("block_table has {} columns, but seq {} needs {} blocks of 64 for {} tokens",
                              problem.max_blocks, i, needed, seqlen);
    }
    for (int64_t column = 0; column < needed; ++column) {
      const int32_t block = read_int(args.block_table, i, column);
      if (block < 0 || block >= problem.num_blocks) {
        return invalid_argument("block_table[{}][{}] = {} is outside k_cache's {} blocks (seq {} has {} tokens)", i,
                                column, block, problem.num_blocks, i, seqlen);
      }
    }
  }
  return Status::ok();
}

// Expands the metadata into pieces, checking that it describes exactly these lengths: every token of
// every sequence in exactly one piece, pieces of a sequence in order, split slots as num_splits says.
// Metadata is input (a stale one from another decode step is a plausible mistake), so this is a
// Status, not an assertion.
Result<std::vector<Piece>> expand_schedule(const FlashMlaArgs& args, const Problem& problem) {
  const int64_t b = problem.batch_size;
  const auto stale = [](const std::string& what) {
    return invalid_argument(
        "tile_scheduler_metadata / num_splits do not describe cache_seqlens: {} (compute them "
        "with get_mla_metadata from this step's cache_seqlens)",
        what);
  };
  if (read_int(args.num_splits, 0) != 0)
    return stale(fmt::format("num_splits[0] is {}, not 0", read_int(args.num_splits, 0)));
  for (int64_t i = 0; i < b; ++i) {
    const int32_t count = read_int(args.num_splits, i + 1) - read_int(args.num_splits, i);
    if (count < 1 || count > problem.num_sm_parts) {
      return stale(fmt::format("sequence {} has {} splits (num_splits[{}] - num_splits[{}])", i, count, i + 1, i));
    }
  }
  std::vector<int32_t> covered(b, 0);    // tokens of each sequence placed so far
  std::vector<int32_t> pieces_of(b, 0);  // pieces of each sequence so far
  std::vector<Piece> pieces;
  for (int64_t part = 0; part < problem.num_sm_parts; ++part) {
    const int32_t begin_batch = read_int(args.tile_scheduler_metadata, part, 0);
    const int32_t begin_token = read_int(args.tile_scheduler_metadata, part, 1);
    const int32_t end_batch = read_int(args.tile_scheduler_metadata, part, 2);
    const int32_t end_token = read_int(args.tile_scheduler_metadata, part, 3);
    const int32_t begin_split = read_int(args.tile_scheduler_metadata, part, 4);
    if (begin_batch < 0 || begin_batch > b || end_batch < -1 || end_batch >= b) {
      return stale(fmt::format("part {} covers sequences {}..{} of a batch of {}", part, begin_batch, end_batch, b));
    }
    for (int32_t batch = begin_batch; batch <= end_batch; ++batch) {
      const int32_t seqlen = read_int(args.cache_seqlens, batch);
      const int32_t lo = batch == begin_batch ? begin_token : 0;
      const int32_t hi = batch == end_batch ? end_token : seqlen;
      const int32_t split_in_batch = batch == begin_batch ? begin_split : 0;
      // A piece that stops inside a sequence stops on a page boundary, so the next one starts on one.
      const bool aligned = hi == seqlen || hi % kPageBlockSize == 0;
      if (lo != covered[batch] || hi < lo || hi > seqlen || !aligned || split_in_batch != pieces_of[batch]) {
        return stale(
            fmt::format("part {} takes tokens [{}, {}) of sequence {} (length {}) as its split {}, but "
                        "tokens [0, {}) and {} splits come before it",
                        part, lo, hi, batch, seqlen, split_in_batch, covered[batch], pieces_of[batch]));
      }
      const int32_t first_split = read_int(args.num_splits, batch);
      const int32_t count = read_int(args.num_splits, batch + 1) - first_split;
      if (split_in_batch >= count) {
        return stale(fmt::format("sequence {} has more pieces than its {} splits", batch, count));
      }
      pieces.push_back({batch, lo, hi, first_split + split_in_batch, count == 1});
      covered[batch] = hi;
      ++pieces_of[batch];
    }
  }
  for (int64_t i = 0; i < b; ++i) {
    const int32_t seqlen = read_int(args.cache_seqlens, i);
    const int32_t count = read_int(args.num_splits, i + 1) - read_int(args.num_splits, i);
    if (covered[i] != seqlen || pieces_of[i] != count) {
      return stale(fmt::format("sequence {} has {} tokens but the parts cover {} in {} pieces (num_splits says {})", i,
                               seqlen, covered[i], pieces_of[i], count));
    }
  }
  return pieces;
}

}  // namespace ff::mla::internal
