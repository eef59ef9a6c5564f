// Quantisation helpers: the casts DeepGEMM's tests use to build FP8 operands, bit-exact with the anchor's torch
// formulas, computed on the CPU.
//
//   per token (1x128):  amax = max(|x[r, 128j : 128j+128]|, 1e-4);  q = e4m3(x * (448 / amax));  scale = amax / 448
//   per block (128x128): the same with amax over a 128x128 tile
//
// Every operation is float32 as in torch (a bf16 input is widened to float32 first, exactly); e4m3 rounding is to
// nearest even without saturation (numeric.h), which never matters here because |x * (448 / amax)| <= 448 up to
// one float32 rounding, far below the NaN threshold 464. Columns (and, per block, rows) beyond the tensor are
// treated as zeros, like the anchor's padding versions, so shapes need not be multiples of 128.
//
// Thread-safety: pure functions over caller-owned memory.
#pragma once

#include "ff/common/status.h"
#include "ff/gemm/tensor_view.h"

namespace ff::gemm {

// The clamp of amax: an all-zero block gets scale 1e-4 / 448 instead of 0 (no division by zero).
inline constexpr float kAmaxFloor = 1e-4f;

// x (m, k) float32 or bfloat16 -> q (m, k) float8_e4m3fn, scales (m, ceil(k/128)) float32. CPU views only.
Status per_token_cast_to_fp8(const TensorView& x, const TensorView& q, const TensorView& scales);

// x (m, k) float32 or bfloat16 -> q (m, k) float8_e4m3fn, scales (ceil(m/128), ceil(k/128)) float32. CPU only.
Status per_block_cast_to_fp8(const TensorView& x, const TensorView& q, const TensorView& scales);

}  // namespace ff::gemm
