// Argument checks shared by every backend: dtypes, shapes, one device, and, for host-readable index tensors,
// their contents. A backend runs only on arguments that passed these checks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "ff/common/result.h"
#include "ff/gemm/gemm.h"

namespace ff::gemm::internal {

// Sizes of a validated call.
struct GemmShape {
  int64_t num_groups = 1;  // 1 for the dense GEMM
  int64_t m = 0;           // rows of a.data: m, m_sum, or m_max per group
  int64_t n = 0;
  int64_t k = 0;
  Device device = Device::kCpu;
};

Result<GemmShape> validate_dense(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out);
// Also checks m_indices' values when it lives on the host: each in [-1, num_groups), one group per aligned
// block of 128 rows.
Result<GemmShape> validate_contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                      const TensorView& m_indices);
// Also checks masked_m's values when it lives on the host: each in [0, m_max].
Result<GemmShape> validate_masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                  const TensorView& masked_m, int64_t expected_m);

// The weight-gradient GEMM: a (m, k), b (n, k), both with (rows, ceil(k/128)) scales; out (m, n) float32.
Result<GemmShape> validate_wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out);
// Its GPU requirements (validate_wgrad first): k a multiple of 16, n of 4, extents below 2^31, a.data, b.data and
// out contiguous and 16-byte aligned. The scales may have any strides (repacked when not M-/N-major).
Status validate_wgrad_cuda_layout(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                  const GemmShape& shape);

// One batch of the k-grouped weight-gradient GEMM: its operands as 2-D views into the flat inputs (the scales as
// (rows, ceil(k/128)) views of the transposed blocks) and its output out[g].
struct WgradBatch {
  ScaledTensor a;
  ScaledTensor b;
  TensorView out;
  int64_t k = 0;
};
// Checks the flat inputs against batch_sizes (dtypes, extents, one device) and splits them per batch.
Result<std::vector<WgradBatch>> split_k_grouped_wgrad(const ScaledTensor& a, const ScaledTensor& b,
                                                      const TensorView& out, std::span<const int64_t> batch_sizes);

// The extra requirements of the CUDA kernels (validate_* first): k a multiple of 128 (whole K blocks for the
// scales and TMA), n a multiple of 8 (16-byte output rows for the TMA store), dimensions below 2^31, a.data,
// b.data, b.scales, out and the index tensor contiguous (row-major), and the fp8 and output pointers 16-byte
// aligned. a.scales may have any strides: a layout other than the kernel's is repacked first (docs/gemm.md).
// `indices` is m_indices or masked_m, nullptr for the dense GEMM.
Status validate_cuda_layout(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                            const TensorView* indices, const GemmShape& shape);

// The 2-D view of index `index` along dimension 0 of a 3-D view.
TensorView select_group(const TensorView& view, int64_t index);

}  // namespace ff::gemm::internal
