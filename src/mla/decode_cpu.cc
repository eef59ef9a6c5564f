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
#include "validate.h"

namespace ff::mla {
namespace {

using internal::Piece;
using internal::Problem;
using internal::read_int;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = std::numeric_limits<float>::infinity();

float load_half(const void* base, int64_t index, DType dtype) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[index];
  return dtype == DType::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

uint16_t store_half(float value, DType dtype) {
  return dtype == DType::kBFloat16 ? float_to_bf16(value) : float_to_fp16(value);
}

// Scratch of one worker, sized once per call.
struct Workspace {
  std::vector<float> q;              // (rows, 576): the query rows of one KV head, as float
  std::vector<float> k;              // (64, 576): one page of dequantized cache tokens
  std::vector<float> scores;         // (64)
  std::vector<float> acc;            // (rows, 512)
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
        for (int c = 0; c < kHeadDimQk; ++c)
          work.q[r * kHeadDimQk + c] = load_half(args_.q.data, base + c, args_.q.dtype);
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
        for (int s = 0; s < count; ++s)
          max_lse = std::max(max_lse, accumulators_.lse[lse_index(first + s, head, token)]);
        if (max_lse == -kInf) max_lse = 0.0f;  // every split empty: keeps exp2 below finite
        float sum = 0.0f;
        for (int s = 0; s < count; ++s)
          sum += std::exp2(accumulators_.lse[lse_index(first + s, head, token)] - max_lse);
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
        accumulators_.lse[lse_index(piece.split, head, token)] =
            sum == 0.0f ? -kInf : std::log2(sum) + work.max_log2[r];
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
  size_t out_index(int64_t split, int64_t head, int64_t token) const {
    return lse_index(split, head, token) * kHeadDimV;
  }

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
  if (backend == Backend::kCuda) return internal::flash_mla_with_kvcache_cuda(args);
  if (args.num_threads < 1) return invalid_argument("num_threads is {}; expected >= 1", args.num_threads);
  FF_ASSIGN_OR_RETURN(const Problem problem, internal::validate_shapes(args, Device::kCpu));
  FF_RETURN_IF_ERROR(internal::validate_values(args, problem));
  FF_ASSIGN_OR_RETURN(const std::vector<Piece> pieces, internal::expand_schedule(args, problem));

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
