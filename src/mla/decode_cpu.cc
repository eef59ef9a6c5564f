// flash_mla_with_kvcache: argument validation (every backend) and the CPU implementation, which
// executes the same split-KV schedule as the GPU kernel: one partial attention per (part, sequence)
// piece, then a combine step for sequences split over several parts.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "ff/common/assert.h"
#include "ff/mla/mla.h"
#include "ff/mla/numerics.h"

namespace ff::mla {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = std::numeric_limits<float>::infinity();

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

Status check_view(const TensorView& view, const char* name, int ndim, std::initializer_list<DType> dtypes,
                  const char* expected_shape, Device device) {
  bool dtype_ok = false;
  for (DType dtype : dtypes) dtype_ok = dtype_ok || view.dtype == dtype;
  if (view.data == nullptr && view.numel() > 0) return invalid_argument("{} has no data", name);
  if (view.ndim != ndim) {
    return invalid_argument("{} has shape {} ({}-D); expected {}", name, view.shape_string(), view.ndim, expected_shape);
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
  return invalid_argument("{} has shape {}; expected {}{}", name, view.shape_string(), text, expected.size() == 1 ? ",)" : ")");
}

int32_t read_int(const TensorView& view, int64_t i) { return view.data_as<const int32_t>()[i * view.stride(0)]; }
int32_t read_int(const TensorView& view, int64_t i, int64_t j) {
  return view.data_as<const int32_t>()[i * view.stride(0) + j * view.stride(1)];
}

// Checks every argument and returns the shapes, or an error naming the offending value.
Result<Problem> validate(const FlashMlaArgs& args, Device device) {
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
  return problem;
}

// Expands the metadata into pieces, checking that it describes exactly these lengths: every token of
// every sequence in exactly one piece, pieces of a sequence in order, split slots as num_splits says.
// Metadata is input (a stale one from another decode step is a plausible mistake), so this is a
// Status, not an assertion.
Result<std::vector<Piece>> expand_schedule(const FlashMlaArgs& args, const Problem& problem) {
  const int64_t b = problem.batch_size;
  const auto stale = [](const std::string& what) {
    return invalid_argument("tile_scheduler_metadata / num_splits do not describe cache_seqlens: {} (compute them "
                            "with get_mla_metadata from this step's cache_seqlens)",
                            what);
  };
  if (read_int(args.num_splits, 0) != 0) return stale(fmt::format("num_splits[0] is {}, not 0", read_int(args.num_splits, 0)));
  for (int64_t i = 0; i < b; ++i) {
    const int32_t count = read_int(args.num_splits, i + 1) - read_int(args.num_splits, i);
    if (count < 1 || count > problem.num_sm_parts) {
      return stale(fmt::format("sequence {} has {} splits (num_splits[{}] - num_splits[{}])", i, count, i + 1, i));
    }
  }
  std::vector<int32_t> covered(b, 0);      // tokens of each sequence placed so far
  std::vector<int32_t> pieces_of(b, 0);    // pieces of each sequence so far
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
        return stale(fmt::format("part {} takes tokens [{}, {}) of sequence {} (length {}) as its split {}, but "
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

float load_half(const void* base, int64_t index, DType dtype) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[index];
  return dtype == DType::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

uint16_t store_half(float value, DType dtype) {
  return dtype == DType::kBFloat16 ? float_to_bf16(value) : float_to_fp16(value);
}

// Scratch of one worker, sized once per call.
struct Workspace {
  std::vector<float> q;       // (rows, 576): the query rows of one KV head, as float
  std::vector<float> k;       // (64, 576): one page of dequantized cache tokens
  std::vector<float> scores;  // (64)
  std::vector<float> acc;     // (rows, 512)
  std::vector<float> max_log2, sum;  // (rows)
};

// Where partial results of split sequences wait for the combine step.
struct Accumulators {
  std::vector<float> out;  // (total_splits, h_q, s_q, 512), normalized by each split's own sum
  std::vector<float> lse;  // (total_splits, h_q, s_q), log2 domain, -inf for a split that saw nothing
};

class CpuDecoder {
 public:
  CpuDecoder(const FlashMlaArgs& args, const Problem& problem, Accumulators& accumulators)
      : args_(args), problem_(problem), accumulators_(accumulators) {}

  void run_piece(const Piece& piece, Workspace& work) const {
    const Problem& p = problem_;
    const int64_t rows = p.s_q * p.group;  // row r is query token r / group, head r % group of the KV head
    const int32_t seqlen = read_int(args_.cache_seqlens, piece.batch);
    work.q.resize(rows * kHeadDimQk);
    work.k.resize(kPageBlockSize * kHeadDimQk);
    work.scores.resize(kPageBlockSize);
    work.acc.resize(rows * kHeadDimV);
    work.max_log2.resize(rows);
    work.sum.resize(rows);
    for (int64_t head_k = 0; head_k < p.h_kv; ++head_k) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t token = r / p.group, head = head_k * p.group + r % p.group;
        const int64_t base = piece.batch * args_.q.stride(0) + token * args_.q.stride(1) + head * args_.q.stride(2);
        for (int c = 0; c < kHeadDimQk; ++c) work.q[r * kHeadDimQk + c] = load_half(args_.q.data, base + c, args_.q.dtype);
      }
      std::fill(work.acc.begin(), work.acc.end(), 0.0f);
      std::fill(work.max_log2.begin(), work.max_log2.end(), -kInf);
      std::fill(work.sum.begin(), work.sum.end(), 0.0f);
      // Pages of the piece; begin is page-aligned, so each page is one block_table entry.
      for (int32_t page_start = piece.token_begin; page_start < piece.token_end; page_start += kPageBlockSize) {
        const int n = std::min<int32_t>(kPageBlockSize, piece.token_end - page_start);
        load_page(piece.batch, page_start, n, head_k, work.k.data());
        for (int64_t r = 0; r < rows; ++r) {
          // Causal: query token t of s_q sees positions < seqlen - s_q + t + 1.
          int visible = n;
          if (args_.causal) {
            const int64_t limit = seqlen - p.s_q + r / p.group + 1;
            visible = static_cast<int>(std::clamp<int64_t>(limit - page_start, 0, n));
          }
          if (visible == 0) continue;  // masked tokens are never read, so garbage there cannot leak in
          const float* q_row = work.q.data() + r * kHeadDimQk;
          float page_max = -kInf;
          for (int t = 0; t < visible; ++t) {
            const float* k_row = work.k.data() + t * kHeadDimQk;
            float dot = 0.0f;
            for (int c = 0; c < kHeadDimQk; ++c) dot += q_row[c] * k_row[c];
            work.scores[t] = dot * p.scale_log2;
            page_max = std::max(page_max, work.scores[t]);
          }
          // Online softmax in the log2 domain, one page at a time, as the kernel does per 64-token tile.
          const float new_max = std::max(work.max_log2[r], page_max);
          const float rescale = std::exp2(work.max_log2[r] - new_max);  // 0 on the first visible page
          float* acc = work.acc.data() + r * kHeadDimV;
          for (int c = 0; c < kHeadDimV; ++c) acc[c] *= rescale;
          float page_sum = 0.0f;
          for (int t = 0; t < visible; ++t) {
            const float weight = std::exp2(work.scores[t] - new_max);
            page_sum += weight;
            const float* v_row = work.k.data() + t * kHeadDimQk;  // V = the first 512 channels of K
            for (int c = 0; c < kHeadDimV; ++c) acc[c] += weight * v_row[c];
          }
          work.sum[r] = work.sum[r] * rescale + page_sum;
          work.max_log2[r] = new_max;
        }
      }
      finish_piece(piece, head_k, work);
    }
  }

  // Merges the splits of sequence `batch` (more than one) into out and softmax_lse.
  void combine(int32_t batch) const {
    const Problem& p = problem_;
    const int32_t first = read_int(args_.num_splits, batch);
    const int32_t count = read_int(args_.num_splits, batch + 1) - first;
    FF_ASSERT_GT(count, 1);
    std::vector<float> weights(count);
    for (int64_t head = 0; head < p.h_q; ++head) {
      for (int64_t token = 0; token < p.s_q; ++token) {
        float max_lse = -kInf;
        for (int s = 0; s < count; ++s) max_lse = std::max(max_lse, accumulators_.lse[lse_index(first + s, head, token)]);
        if (max_lse == -kInf) max_lse = 0.0f;  // every split empty: keeps exp2 below finite
        float sum = 0.0f;
        for (int s = 0; s < count; ++s) sum += std::exp2(accumulators_.lse[lse_index(first + s, head, token)] - max_lse);
        const float global_lse = sum == 0.0f ? kInf : std::log2(sum) + max_lse;
        for (int s = 0; s < count; ++s) {
          weights[s] = std::exp2(accumulators_.lse[lse_index(first + s, head, token)] - global_lse);
        }
        float* lse_out = args_.softmax_lse.data_as<float>() + batch * args_.softmax_lse.stride(0) +
                         head * args_.softmax_lse.stride(1) + token * args_.softmax_lse.stride(2);
        *lse_out = global_lse / kLog2e;
        uint16_t* out = out_row(batch, token, head);
        for (int c = 0; c < kHeadDimV; ++c) {
          float value = 0.0f;
          for (int s = 0; s < count; ++s) {
            if (weights[s] != 0.0f) value += weights[s] * accumulators_.out[out_index(first + s, head, token) + c];
          }
          out[c] = store_half(value, args_.out.dtype);
        }
      }
    }
  }

 private:
  // Dequantizes tokens [page_start, page_start + n) of sequence `batch`, KV head head_k, into k (n, 576).
  void load_page(int32_t batch, int32_t page_start, int n, int64_t head_k, float* k) const {
    const int32_t block = read_int(args_.block_table, batch, page_start / kPageBlockSize);
    FF_ASSERT(block >= 0 && block < problem_.num_blocks, "validated block id {}", block);
    const TensorView& cache = args_.k_cache;
    const int slot0 = page_start % kPageBlockSize;
    FF_ASSERT_EQ(slot0, 0, "pieces start on a page boundary");
    for (int t = 0; t < n; ++t) {
      const int64_t base = block * cache.stride(0) + t * cache.stride(1) + head_k * cache.stride(2);
      float* row = k + t * kHeadDimQk;
      if (args_.is_fp8_kvcache) {
        const uint8_t* token = static_cast<const uint8_t*>(cache.data) + base;  // (656) bytes
        for (int c = 0; c < kHeadDimQk; ++c) row[c] = dequantize_fp8_channel(token, c);
      } else {
        for (int c = 0; c < kHeadDimQk; ++c) row[c] = load_half(cache.data, base + c, cache.dtype);
      }
    }
  }

  void finish_piece(const Piece& piece, int64_t head_k, const Workspace& work) const {
    const Problem& p = problem_;
    const int64_t rows = p.s_q * p.group;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t token = r / p.group, head = head_k * p.group + r % p.group;
      const float sum = work.sum[r];
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;  // an empty row's output is 0
      const float* acc = work.acc.data() + r * kHeadDimV;
      if (piece.only_piece) {
        float* lse_out = args_.softmax_lse.data_as<float>() + piece.batch * args_.softmax_lse.stride(0) +
                         head * args_.softmax_lse.stride(1) + token * args_.softmax_lse.stride(2);
        *lse_out = sum == 0.0f ? kInf : (std::log2(sum) + work.max_log2[r]) / kLog2e;
        uint16_t* out = out_row(piece.batch, token, head);
        for (int c = 0; c < kHeadDimV; ++c) out[c] = store_half(acc[c] * inverse, args_.out.dtype);
      } else {
        accumulators_.lse[lse_index(piece.split, head, token)] = sum == 0.0f ? -kInf : std::log2(sum) + work.max_log2[r];
        float* partial = accumulators_.out.data() + out_index(piece.split, head, token);
        for (int c = 0; c < kHeadDimV; ++c) partial[c] = acc[c] * inverse;
      }
    }
  }

  uint16_t* out_row(int64_t batch, int64_t token, int64_t head) const {
    return args_.out.data_as<uint16_t>() + batch * args_.out.stride(0) + token * args_.out.stride(1) +
           head * args_.out.stride(2);
  }
  size_t lse_index(int64_t split, int64_t head, int64_t token) const {
    return static_cast<size_t>((split * problem_.h_q + head) * problem_.s_q + token);
  }
  size_t out_index(int64_t split, int64_t head, int64_t token) const { return lse_index(split, head, token) * kHeadDimV; }

  const FlashMlaArgs& args_;
  const Problem& problem_;
  Accumulators& accumulators_;
};

// Runs task(i) for i in [0, count) on up to num_threads threads (the caller's included).
template <typename Task>
void parallel_for(int64_t count, int num_threads, const Task& task) {
  const int workers = static_cast<int>(std::clamp<int64_t>(num_threads, 1, std::max<int64_t>(count, 1)));
  std::atomic<int64_t> next{0};
  const auto drain = [&](int worker) {
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) task(i, worker);
  };
  std::vector<std::thread> threads;
  for (int worker = 1; worker < workers; ++worker) threads.emplace_back(drain, worker);
  drain(0);
  for (std::thread& thread : threads) thread.join();
}

}  // namespace

Status flash_mla_with_kvcache(const FlashMlaArgs& args, Backend backend) {
  if (backend == Backend::kCuda) {
    return unimplemented("the sm_90a flash_mla_with_kvcache kernel is not built yet; use Backend::kCpu "
                         "(docs/mla.md, Status)");
  }
  if (args.num_threads < 1) return invalid_argument("num_threads is {}; expected >= 1", args.num_threads);
  FF_ASSIGN_OR_RETURN(const Problem problem, validate(args, Device::kCpu));
  FF_ASSIGN_OR_RETURN(const std::vector<Piece> pieces, expand_schedule(args, problem));

  const int32_t total_splits = read_int(args.num_splits, problem.batch_size);
  Accumulators accumulators;
  // NOTE: the CPU path allocates its split accumulators per call; the GPU launcher will size them
  // once (total splits <= b + num_sm_parts) as STYLE rule 8 asks of hot paths.
  accumulators.lse.assign(static_cast<size_t>(total_splits) * problem.h_q * problem.s_q, -kInf);
  accumulators.out.assign(accumulators.lse.size() * kHeadDimV, 0.0f);
  const CpuDecoder decoder(args, problem, accumulators);
  std::vector<Workspace> workspaces(static_cast<size_t>(std::max(args.num_threads, 1)));
  // Pieces write disjoint memory: an only piece its sequence's rows of out / softmax_lse, a split
  // piece its own accumulator slot. The combine step reads slots after every piece is done.
  parallel_for(static_cast<int64_t>(pieces.size()), args.num_threads,
               [&](int64_t i, int worker) { decoder.run_piece(pieces[i], workspaces[worker]); });
  std::vector<int32_t> split_batches;
  for (int32_t batch = 0; batch < problem.batch_size; ++batch) {
    if (read_int(args.num_splits, batch + 1) - read_int(args.num_splits, batch) > 1) split_batches.push_back(batch);
  }
  parallel_for(static_cast<int64_t>(split_batches.size()), args.num_threads,
               [&](int64_t i, int) { decoder.combine(split_batches[i]); });
  return Status::ok();
}

}  // namespace ff::mla
