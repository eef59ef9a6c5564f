// Helpers of the gemm tests: owned host tensors, random fp8 operands, and an independent float64 reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <random>
#include <vector>

#include "ff/gemm/gemm.h"

namespace ff::gemm::testing {

// The value of an e4m3fn code from its definition, in float64, independent of numeric.cc's table.
inline double e4m3_reference(uint8_t code) {
  const int sign = code >> 7;
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  if (exponent == 15 && mantissa == 7) return std::nan("");
  const double magnitude =
      exponent == 0 ? std::ldexp(mantissa / 8.0, -6) : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return sign ? -magnitude : magnitude;
}

inline double bf16_value(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  static_assert(sizeof(value) == sizeof(wide));
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

template <typename T>
struct Owned {
  std::vector<T> values;
  TensorView view;
};

template <typename T>
Owned<T> make_tensor(DType dtype, std::initializer_list<int64_t> shape, T fill = T{}) {
  Owned<T> tensor;
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  tensor.values.assign(static_cast<size_t>(count), fill);
  tensor.view = TensorView::contiguous(tensor.values.data(), dtype, shape);
  return tensor;
}

// Overwrites the elements in place: assigning a new vector would move the storage out from under the view.
template <typename T>
void set_values(Owned<T>& tensor, const std::type_identity_t<std::vector<T>>& values) {
  if (values.size() != tensor.values.size()) std::abort();  // a test bug, not a tested behaviour
  std::copy(values.begin(), values.end(), tensor.values.begin());
}

// Random finite e4m3 codes (never NaN), so products stay in a sane range.
inline void fill_fp8(std::vector<uint8_t>& codes, std::mt19937& rng) {
  std::uniform_int_distribution<int> code(0, 255);
  for (uint8_t& c : codes) {
    do {
      c = static_cast<uint8_t>(code(rng));
    } while ((c & 0x7f) == 0x7f || ((c >> 3) & 0xf) > 9);  // no NaN; |value| <= 7.5 keeps sums moderate
  }
}

inline void fill_scales(std::vector<float>& scales, std::mt19937& rng) {
  std::uniform_real_distribution<float> mantissa(0.5f, 2.0f);
  std::uniform_int_distribution<int> exponent(-8, 0);
  for (float& s : scales) s = std::ldexp(mantissa(rng), exponent(rng));
}

// Dequantised float64 product of one output element, plus the sum of |terms| (the scale of rounding errors).
struct Expected {
  double value = 0.0;
  double magnitude = 0.0;
};

// a (m, k) codes row-major, sa (m, kb), b (n, k), sb (nb, kb): element (row, col).
inline Expected reference_element(const uint8_t* a, const float* sa, const uint8_t* b, const float* sb, int64_t k,
                                  int64_t n_blocks_unused, int64_t row, int64_t col) {
  (void)n_blocks_unused;
  const int64_t k_blocks = (k + 127) / 128;
  Expected expected;
  for (int64_t kk = 0; kk < k; ++kk) {
    const double term = e4m3_reference(a[row * k + kk]) * sa[row * k_blocks + kk / 128] *
                        e4m3_reference(b[col * k + kk]) * sb[(col / 128) * k_blocks + kk / 128];
    expected.value += term;
    expected.magnitude += std::fabs(term);
  }
  return expected;
}

// The field's similarity metric (DeepGEMM's calc_diff): 0 for identical, 1e-5 ~ 5 significant digits.
inline double calc_diff(const std::vector<double>& x, const std::vector<double>& y) {
  double dot = 0.0;
  double norms = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    dot += x[i] * y[i];
    norms += x[i] * x[i] + y[i] * y[i];
  }
  return norms == 0.0 ? 0.0 : 1.0 - 2.0 * dot / norms;
}

}  // namespace ff::gemm::testing
