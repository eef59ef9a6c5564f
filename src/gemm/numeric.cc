#include "ff/gemm/numeric.h"

#include <bit>
#include <cmath>
#include <limits>

#include "ff/common/assert.h"

namespace ff::gemm {

namespace {

std::array<float, 256> build_e4m3_table() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) {
    const int sign = code >> 7;
    const int exponent = (code >> 3) & 0xf;
    const int mantissa = code & 0x7;
    float magnitude;
    if (exponent == 0xf && mantissa == 0x7) {
      magnitude = std::numeric_limits<float>::quiet_NaN();  // e4m3fn has no infinities; S.1111.111 is NaN
    } else if (exponent == 0) {
      magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: 0.mmm * 2^(1 - 7)
    } else {
      magnitude = std::ldexp(static_cast<float>(8 + mantissa), exponent - 7 - 3);  // 1.mmm * 2^(e - 7)
    }
    table[static_cast<size_t>(code)] = sign ? -magnitude : magnitude;
  }
  return table;
}

}  // namespace

const std::array<float, 256>& e4m3_decode_table() {
  static const std::array<float, 256> table = build_e4m3_table();
  return table;
}

uint8_t float_to_e4m3(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  const uint32_t magnitude_bits = bits & 0x7fffffffu;
  // 0x43f00000 is 480.0f, the value the code 0x7f would have were it not NaN. Everything at or above it
  // (including infinities and NaN, whose bit patterns are larger) becomes NaN, as in torch (no saturation).
  constexpr uint32_t kNanThresholdBits = 0x43f00000u;
  constexpr uint32_t kSmallestNormalBits = 0x3c800000u;  // 2^-6
  if (magnitude_bits >= kNanThresholdBits) return static_cast<uint8_t>(sign | 0x7f);
  if (magnitude_bits < kSmallestNormalBits) {
    // Subnormal range: the codes are multiples of 2^-9, so round |value| * 2^9 (exact) to an integer, ties to
    // even (nearbyint under the default rounding mode). 8 means 2^-6, which is code 0x08, the smallest normal.
    const float steps = std::nearbyint(std::bit_cast<float>(magnitude_bits) * 512.0f);
    FF_ASSERT(steps >= 0.0f && steps <= 8.0f, "steps {}", steps);
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(steps));
  }
  // Normal range: keep 3 of float32's 23 mantissa bits, rounding the dropped 20 to nearest even (a carry into the
  // exponent is the correct next binade), then rebias the exponent from 127 to 7. Values in (464, 480) round up
  // to 0x7f, NaN, exactly like torch.
  const uint32_t lowest_kept_bit = (magnitude_bits >> 20) & 1u;
  const uint32_t rounded = magnitude_bits + 0x7ffffu + lowest_kept_bit;
  const uint32_t code = (rounded >> 20) - ((127u - 7u) << 3);
  FF_ASSERT(code >= 0x08u && code <= 0x7fu, "code {:#x} for {}", code, value);
  return static_cast<uint8_t>(sign | code);
}

float bf16_to_float(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

uint16_t float_to_bf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // keep it a (quiet) NaN
  const uint32_t lowest_kept_bit = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7fffu + lowest_kept_bit) >> 16);
}

}  // namespace ff::gemm
