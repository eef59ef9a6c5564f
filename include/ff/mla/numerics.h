// Scalar conversions of the mla component: bfloat16, float16 and FP8 e4m3 (the OCP "e4m3fn"
// format of torch.float8_e4m3fn and CUDA's __nv_fp8_e4m3: bias 7, no infinities, 0x7f/0xff NaN,
// largest finite 448). Exact decoding; encoding rounds to nearest, ties to even, as the hardware does.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

namespace ff::mla {

float bf16_to_float(uint16_t bits);
uint16_t float_to_bf16(float value);  // round to nearest even; NaN stays NaN
float fp16_to_float(uint16_t bits);
uint16_t float_to_fp16(float value);  // round to nearest even; overflow gives +-inf

float e4m3_to_float(uint8_t bits);
// Saturates: |value| > 448 (and +-inf) gives +-448, as a cast with saturation (satfinite) does.
uint8_t float_to_e4m3(float value);

inline constexpr float kE4m3Max = 448.0f;

}  // namespace ff::mla
