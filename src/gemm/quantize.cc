#include "ff/gemm/quantize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ff/common/assert.h"
#include "ff/gemm/gemm.h"
#include "ff/gemm/numeric.h"

namespace ff::gemm {

namespace {

// x (m, k) float32 or bfloat16, read as float32 (a bf16 widens exactly, as torch's type promotion does).
float load(const TensorView& x, int64_t row, int64_t col) {
  if (x.dtype == DType::kBFloat16) return bf16_to_float(*x.at<const uint16_t>(row, col));
  return *x.at<const float>(row, col);
}

Status check_cast_args(const TensorView& x, const TensorView& q, const TensorView& scales, int64_t scale_rows,
                       std::string_view scale_dims) {
  if (x.ndim != 2 || (x.dtype != DType::kFloat32 && x.dtype != DType::kBFloat16)) {
    return invalid_argument("x has shape {} and dtype {}; expected a 2-D (m, k) float32 or bfloat16 tensor",
                            x.shape_string(), dtype_name(x.dtype));
  }
  const int64_t m = x.size(0);
  const int64_t k = x.size(1);
  if (q.ndim != 2 || q.dtype != DType::kFloat8E4M3 || q.size(0) != m || q.size(1) != k) {
    return invalid_argument("q has shape {} and dtype {}; expected ({}, {}) float8_e4m3fn like x", q.shape_string(),
                            dtype_name(q.dtype), m, k);
  }
  const int64_t k_blocks = ceil_div(k, kScaleBlock);
  if (scales.ndim != 2 || scales.dtype != DType::kFloat32 || scales.size(0) != scale_rows ||
      scales.size(1) != k_blocks) {
    return invalid_argument("scales has shape {} and dtype {}; expected ({}, {}) = {} float32 for x of shape {}",
                            scales.shape_string(), dtype_name(scales.dtype), scale_rows, k_blocks, scale_dims,
                            x.shape_string());
  }
  for (const TensorView* view : {&x, &q, &scales}) {
    if (view->device != Device::kCpu) {
      return unimplemented("the quantisation helpers run on the CPU; got a tensor on {}", device_name(view->device));
    }
    if (view->data == nullptr && view->numel() > 0) return invalid_argument("a tensor of shape {} has no data", view->shape_string());
  }
  return Status::ok();
}

// Quantises the tile rows [row_begin, row_end) x cols [col_begin, col_end) of x with one shared amax.
float cast_tile(const TensorView& x, const TensorView& q, int64_t row_begin, int64_t row_end, int64_t col_begin,
                int64_t col_end) {
  // amax over the tile, in float32; elements past the tensor edge count as zeros (the anchor pads with zeros).
  float amax = 0.0f;
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t col = col_begin; col < col_end; ++col) amax = std::max(amax, std::fabs(load(x, row, col)));
  }
  // std::max also maps a NaN amax to the floor, unlike torch's clamp (which keeps NaN); a NaN input then still
  // quantises to NaN codes below, and only its scale differs.
  amax = std::max(amax, kAmaxFloor);
  // The anchor multiplies by `448.0 / amax`, which torch evaluates as reciprocal(amax) * 448 (Tensor.__rtruediv__):
  // two float32 roundings, then the product. Bit-exactness needs the same three float32 operations (checked
  // against torch 2.11 and 2.15: one rounding instead, 448 / amax, flipped ties such as 84.0000076 -> 80 vs 88).
  const float inverse_scale = (1.0f / amax) * kFloat8E4M3Max;
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t col = col_begin; col < col_end; ++col) {
      *q.at<uint8_t>(row, col) = float_to_e4m3(load(x, row, col) * inverse_scale);
    }
  }
  return amax / kFloat8E4M3Max;
}

}  // namespace

Status per_token_cast_to_fp8(const TensorView& x, const TensorView& q, const TensorView& scales) {
  FF_RETURN_IF_ERROR(check_cast_args(x, q, scales, x.size(0), "(m, ceil(k/128))"));
  const int64_t m = x.size(0);
  const int64_t k = x.size(1);
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t block = 0; block * kScaleBlock < k; ++block) {
      const int64_t begin = block * kScaleBlock;
      *scales.at<float>(row, block) = cast_tile(x, q, row, row + 1, begin, std::min(k, begin + kScaleBlock));
    }
  }
  return Status::ok();
}

Status per_block_cast_to_fp8(const TensorView& x, const TensorView& q, const TensorView& scales) {
  FF_RETURN_IF_ERROR(check_cast_args(x, q, scales, ceil_div(x.size(0), kScaleBlock), "(ceil(m/128), ceil(k/128))"));
  const int64_t m = x.size(0);
  const int64_t k = x.size(1);
  for (int64_t row_block = 0; row_block * kScaleBlock < m; ++row_block) {
    for (int64_t col_block = 0; col_block * kScaleBlock < k; ++col_block) {
      const int64_t row_begin = row_block * kScaleBlock;
      const int64_t col_begin = col_block * kScaleBlock;
      *scales.at<float>(row_block, col_block) = cast_tile(x, q, row_begin, std::min(m, row_begin + kScaleBlock),
                                                          col_begin, std::min(k, col_begin + kScaleBlock));
    }
  }
  return Status::ok();
}

}  // namespace ff::gemm
