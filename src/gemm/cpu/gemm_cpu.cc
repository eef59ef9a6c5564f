#include "gemm_cpu.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "ff/common/assert.h"
#include "ff/gemm/numeric.h"

namespace ff::gemm::cpu {

namespace {

using internal::GemmShape;
using internal::select_group;

// Multiply-adds below which a call stays on the calling thread: starting threads costs more than it saves.
constexpr int64_t kMinWorkPerThread = int64_t{1} << 20;

// B of every group decoded to float32, row-major (num_groups, n, k).
// NOTE: decoding once per call instead of per output element keeps the inner loop a plain float dot product;
// it costs num_groups * n * k floats, acceptable for a reference backend (the GPU backend reads fp8 directly).
std::vector<float> decode_b(const TensorView& b_data, const GemmShape& shape) {
  const auto& table = e4m3_decode_table();
  std::vector<float> decoded(static_cast<size_t>(shape.num_groups * shape.n * shape.k));
  size_t next = 0;
  for (int64_t group = 0; group < shape.num_groups; ++group) {
    const TensorView b = b_data.ndim == 3 ? select_group(b_data, group) : b_data;  // (n, k)
    for (int64_t col = 0; col < shape.n; ++col) {
      for (int64_t kk = 0; kk < shape.k; ++kk) decoded[next++] = table[*b.at<const uint8_t>(col, kk)];
    }
  }
  FF_ASSERT_EQ(next, decoded.size());
  return decoded;
}

// One row of the output: out_row[col] = bf16(sum_kb (A_row . B_col over kb) * sa[kb] * sb[col / 128, kb]).
//   a_row    (k)          the decoded fp8 row of A
//   a_scales (k_blocks)   as a strided pointer
//   b        (n, k)       one group's decoded B, row-major
//   b_scales (ceil(n/128), k_blocks) view
struct RowTask {
  const float* a_row;
  const float* a_scales;
  int64_t a_scales_stride;
  const float* b;
  TensorView b_scales;
  uint16_t* out_row;
  int64_t out_stride;
};

void compute_row(const RowTask& task, const GemmShape& shape) {
  const int64_t k_blocks = ceil_div(shape.k, kScaleBlock);
  for (int64_t col = 0; col < shape.n; ++col) {
    const float* b_row = task.b + col * shape.k;
    // Two-level accumulation: each 128-wide K block is summed on its own in fp32 (as a WGMMA accumulates one
    // block), then scaled and added into the fp32 total; the scales never multiply inside a block.
    float total = 0.0f;
    for (int64_t block = 0; block < k_blocks; ++block) {
      const int64_t begin = block * kScaleBlock;
      const int64_t end = std::min(shape.k, begin + kScaleBlock);
      float partial = 0.0f;
      for (int64_t kk = begin; kk < end; ++kk) partial += task.a_row[kk] * b_row[kk];
      const float scale = task.a_scales[block * task.a_scales_stride] *
                          *task.b_scales.at<const float>(col / kScaleBlock, block);
      total += partial * scale;
    }
    task.out_row[col * task.out_stride] = float_to_bf16(total);
  }
}

void decode_a_row(const TensorView& a_data, int64_t row, const GemmShape& shape, float* a_row) {  // a_data (m, k)
  const auto& table = e4m3_decode_table();
  for (int64_t kk = 0; kk < shape.k; ++kk) a_row[kk] = table[*a_data.at<const uint8_t>(row, kk)];
}

// Runs fn(begin, end) over [0, rows) split into contiguous ranges, on up to get_num_sms() threads.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t work_per_row, const Fn& fn) {
  const int64_t by_work = std::max<int64_t>(1, rows * work_per_row / kMinWorkPerThread);
  const int64_t threads = std::min({static_cast<int64_t>(get_num_sms()), rows, by_work});
  if (threads <= 1) {
    fn(int64_t{0}, rows);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(threads));
  const int64_t chunk = ceil_div(rows, threads);
  for (int64_t begin = 0; begin < rows; begin += chunk) {
    workers.emplace_back([&fn, begin, end = std::min(rows, begin + chunk)] { fn(begin, end); });
  }
  for (std::thread& worker : workers) worker.join();
}

}  // namespace

void gemm_dense(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const GemmShape& shape) {
  FF_ASSERT_EQ(shape.num_groups, 1);
  const std::vector<float> decoded_b = decode_b(b.data, shape);
  parallel_rows(shape.m, shape.n * shape.k, [&](int64_t begin, int64_t end) {
    std::vector<float> a_row(static_cast<size_t>(shape.k));
    for (int64_t row = begin; row < end; ++row) {
      decode_a_row(a.data, row, shape, a_row.data());
      compute_row({a_row.data(), a.scales.at<const float>(row, 0), a.scales.stride(1), decoded_b.data(), b.scales,
                   out.at<uint16_t>(row, 0), out.stride(1)},
                  shape);
    }
  });
}

void gemm_contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& m_indices,
                     const GemmShape& shape) {
  const std::vector<float> decoded_b = decode_b(b.data, shape);
  parallel_rows(shape.m, shape.n * shape.k, [&](int64_t begin, int64_t end) {
    std::vector<float> a_row(static_cast<size_t>(shape.k));
    for (int64_t row = begin; row < end; ++row) {
      const int32_t group = *m_indices.at<const int32_t>(row);
      uint16_t* out_row = out.at<uint16_t>(row, 0);
      if (group < 0) {
        // Padding row: zero-filled (gemm.h says why); its A data is never read.
        for (int64_t col = 0; col < shape.n; ++col) out_row[col * out.stride(1)] = 0;
        continue;
      }
      FF_ASSERT(group < shape.num_groups, "row {} group {}", row, group);
      decode_a_row(a.data, row, shape, a_row.data());
      compute_row({a_row.data(), a.scales.at<const float>(row, 0), a.scales.stride(1),
                   decoded_b.data() + group * shape.n * shape.k, select_group(b.scales, group), out_row,
                   out.stride(1)},
                  shape);
    }
  });
}

void gemm_masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& masked_m,
                 const GemmShape& shape) {
  const std::vector<float> decoded_b = decode_b(b.data, shape);
  // Rows are numbered group-major over (num_groups, m_max) so the work splits evenly across groups.
  parallel_rows(shape.num_groups * shape.m, shape.n * shape.k, [&](int64_t begin, int64_t end) {
    std::vector<float> a_row(static_cast<size_t>(shape.k));
    for (int64_t flat = begin; flat < end; ++flat) {
      const int64_t group = flat / std::max<int64_t>(1, shape.m);
      const int64_t row = flat % std::max<int64_t>(1, shape.m);
      const int32_t valid_rows = *masked_m.at<const int32_t>(group);
      FF_ASSERT(valid_rows >= 0 && valid_rows <= shape.m, "masked_m[{}] = {}", group, valid_rows);
      if (row >= valid_rows) continue;  // rows beyond masked_m[g] are neither read nor written
      const TensorView a_group = select_group(a.data, group);         // (m_max, k)
      const TensorView a_scales = select_group(a.scales, group);      // (m_max, k_blocks)
      const TensorView out_group = select_group(out, group);          // (m_max, n)
      decode_a_row(a_group, row, shape, a_row.data());
      compute_row({a_row.data(), a_scales.at<const float>(row, 0), a_scales.stride(1),
                   decoded_b.data() + group * shape.n * shape.k, select_group(b.scales, group),
                   out_group.at<uint16_t>(row, 0), out_group.stride(1)},
                  shape);
    }
  });
}

void wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const GemmShape& shape) {
  FF_ASSERT_EQ(shape.num_groups, 1);
  if (shape.k == 0) return;  // an empty K sum adds nothing
  const std::vector<float> decoded_b = decode_b(b.data, shape);
  const int64_t k_blocks = ceil_div(shape.k, kScaleBlock);
  parallel_rows(shape.m, shape.n * shape.k, [&](int64_t begin, int64_t end) {
    std::vector<float> a_row(static_cast<size_t>(shape.k));
    for (int64_t row = begin; row < end; ++row) {
      decode_a_row(a.data, row, shape, a_row.data());
      for (int64_t col = 0; col < shape.n; ++col) {
        const float* b_row = decoded_b.data() + col * shape.k;
        // Two-level accumulation as compute_row, with B's scale per row of B: the K sum is complete before it
        // is added to out (the GPU epilogue's out + total).
        float total = 0.0f;
        for (int64_t block = 0; block < k_blocks; ++block) {
          const int64_t block_begin = block * kScaleBlock;
          const int64_t block_end = std::min(shape.k, block_begin + kScaleBlock);
          float partial = 0.0f;
          for (int64_t kk = block_begin; kk < block_end; ++kk) partial += a_row[kk] * b_row[kk];
          const float scale = *a.scales.at<const float>(row, block) * *b.scales.at<const float>(col, block);
          total += partial * scale;
        }
        float* target = out.at<float>(row, col);
        *target = *target + total;
      }
    }
  });
}

}  // namespace ff::gemm::cpu
