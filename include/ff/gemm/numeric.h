// Bit-exact scalar conversions of the gemm component: float8 e4m3fn <-> float32 and float32 -> bfloat16.
// They define the numbers of the CPU backend and of the quantisation helpers, and the GPU kernels must agree
// with them bit for bit (the hardware cvt instructions do, with the satfinite flag off).
//
// Thread-safety: pure functions; safe from any thread.
#pragma once

#include <array>
#include <cstdint>

namespace ff::gemm {

// Largest finite e4m3fn magnitude (0x7e / 0xfe).
inline constexpr float kFloat8E4M3Max = 448.0f;

// The float32 value of every e4m3fn code, indexed by the code: exact (every e4m3 value is a float32),
// NaN for 0x7f and 0xff, subnormals m * 2^-9 for exponent field 0.
const std::array<float, 256>& e4m3_decode_table();

inline float e4m3_to_float(uint8_t code) { return e4m3_decode_table()[code]; }

// Rounds a float32 to the nearest e4m3fn code, ties to even, WITHOUT saturation, exactly as torch's
// `.to(torch.float8_e4m3fn)` (c10 fp8e4m3fn_from_fp32_value) and CUDA's __nv_cvt_float_to_fp8(..., __NV_NOSAT,
// __NV_E4M3): magnitudes that round above 448 (that is, above 464, the midpoint of 448 and the would-be 480)
// become NaN (0x7f with the sign), as do infinities and NaN. Zero keeps its sign.
uint8_t float_to_e4m3(float value);

// bfloat16 bits -> float32 (exact).
float bf16_to_float(uint16_t bits);
// float32 -> bfloat16 bits, round to nearest even; NaN stays NaN (a quiet NaN with the sign), infinities stay.
uint16_t float_to_bf16(float value);

}  // namespace ff::gemm
