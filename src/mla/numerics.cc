// Scalar conversions (numerics.h), TensorView helpers (tensor_view.h) and the FP8 cache quantizer.
#include "ff/mla/numerics.h"

#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "ff/common/assert.h"
#include "ff/mla/mla.h"
#include "ff/mla/tensor_view.h"

namespace ff::mla {

// ---------------------------------------------------------------------------------------------
// bf16 / fp16 / e4m3

float bf16_to_float(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

uint16_t float_to_bf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x0040);  // keep it a quiet NaN
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float fp16_to_float(uint16_t bits) {
  const uint32_t sign = (bits >> 15) & 1;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal: m * 2^-24
  } else if (exponent == 31) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 1024), static_cast<int>(exponent) - 25);
  }
  return sign ? -magnitude : magnitude;
}

uint16_t float_to_fp16(float value) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  if (std::isnan(value)) return 0x7e00;
  const float magnitude = std::fabs(value);
  if (magnitude >= 65520.0f) return sign | 0x7c00;  // rounds past the largest finite 65504
  if (magnitude < std::ldexp(1.0f, -14)) {
    // Subnormal (or zero): a multiple of 2^-24; nearbyint rounds ties to even in the default mode.
    const auto mantissa = static_cast<uint16_t>(std::nearbyint(std::ldexp(magnitude, 24)));
    return sign | mantissa;  // mantissa 1024 is exactly the smallest normal's encoding
  }
  int exponent = 0;
  std::frexp(magnitude, &exponent);  // magnitude = f * 2^exponent, f in [0.5, 1)
  const float quantum = std::ldexp(1.0f, exponent - 11);
  const float rounded = std::nearbyint(magnitude / quantum) * quantum;  // may carry into the next binade
  std::frexp(rounded, &exponent);
  const int biased = exponent - 1 + 15;
  const auto mantissa = static_cast<uint32_t>(std::ldexp(rounded, 11 - exponent)) - 1024;
  FF_ASSERT(biased >= 1 && biased <= 30 && mantissa < 1024, "fp16 encoding of {}", value);
  return static_cast<uint16_t>(sign | (biased << 10) | mantissa);
}

float e4m3_to_float(uint8_t bits) {
  const int sign = bits >> 7;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  const float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -9)  // subnormal: m/8 * 2^-6
                                        : std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  return sign ? -magnitude : magnitude;
}

uint8_t float_to_e4m3(float value) {
  if (std::isnan(value)) return 0x7f;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0;
  float magnitude = std::fmin(std::fabs(value), kE4m3Max);
  // The spacing of e4m3 values around `magnitude`: 2^-9 below the smallest normal 2^-6, else
  // 2^(e - 3) in the binade [2^e, 2^(e+1)).
  int exponent = 0;
  std::frexp(magnitude, &exponent);  // magnitude in [2^(exponent-1), 2^exponent)
  const int binade = magnitude < std::ldexp(1.0f, -6) ? -6 : exponent - 1;
  const float quantum = std::ldexp(1.0f, binade - 3);
  magnitude = std::fmin(std::nearbyint(magnitude / quantum) * quantum, kE4m3Max);
  if (magnitude < std::ldexp(1.0f, -6)) {
    return sign | static_cast<uint8_t>(std::ldexp(magnitude, 9));  // subnormal (mantissa 0..7)
  }
  std::frexp(magnitude, &exponent);
  const int biased = exponent - 1 + 7;
  const int mantissa = static_cast<int>(std::ldexp(magnitude, 4 - exponent)) - 8;
  FF_ASSERT(biased >= 1 && biased <= 15 && mantissa >= 0 && mantissa < 8, "e4m3 encoding of {}", value);
  return sign | static_cast<uint8_t>((biased << 3) | mantissa);
}

// ---------------------------------------------------------------------------------------------
// TensorView

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    case DType::kFloat32: return "float32";
    case DType::kInt32: return "int32";
    case DType::kUInt8: return "uint8";
    case DType::kFloat8E4M3: return "float8_e4m3fn";
  }
  FF_UNREACHABLE("dtype {}", static_cast<int>(dtype));
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
    case DType::kFloat16: return 2;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kUInt8:
    case DType::kFloat8E4M3: return 1;
  }
  FF_UNREACHABLE("dtype {}", static_cast<int>(dtype));
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  FF_ASSERT(shape.size() <= static_cast<size_t>(kMaxDims), "{} dimensions", shape.size());
  TensorView view;
  view.data = data;
  view.dtype = dtype;
  view.device = device;
  view.ndim = static_cast<int>(shape.size());
  int dim = 0;
  for (int64_t extent : shape) view.shape[dim++] = extent;
  int64_t stride = 1;
  for (dim = view.ndim - 1; dim >= 0; --dim) {
    view.strides[dim] = stride;
    stride *= view.shape[dim];
  }
  return view;
}

int64_t TensorView::size(int dim) const {
  const int index = dim < 0 ? dim + ndim : dim;
  FF_ASSERT(index >= 0 && index < ndim, "dimension {} of a {}-D view", dim, ndim);
  return shape[index];
}

int64_t TensorView::stride(int dim) const {
  const int index = dim < 0 ? dim + ndim : dim;
  FF_ASSERT(index >= 0 && index < ndim, "dimension {} of a {}-D view", dim, ndim);
  return strides[index];
}

int64_t TensorView::numel() const {
  int64_t count = 1;
  for (int dim = 0; dim < ndim; ++dim) count *= shape[dim];
  return count;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int dim = ndim - 1; dim >= 0; --dim) {
    if (shape[dim] != 1 && strides[dim] != expected) return false;
    expected *= shape[dim];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::string text = "(";
  for (int dim = 0; dim < ndim; ++dim) text += (dim == 0 ? "" : ", ") + std::to_string(shape[dim]);
  return text + (ndim == 1 ? ",)" : ")");
}

// ---------------------------------------------------------------------------------------------
// FP8 cache

float dequantize_fp8_channel(const uint8_t* token, int channel) {
  FF_ASSERT(channel >= 0 && channel < kHeadDimQk, "channel {}", channel);
  if (channel >= kHeadDimV) {
    uint16_t bits;
    std::memcpy(&bits, token + kHeadDimV + kFp8NumScales * 4 + (channel - kHeadDimV) * 2, sizeof(bits));
    return bf16_to_float(bits);
  }
  float scale;
  std::memcpy(&scale, token + kHeadDimV + (channel / kFp8GroupSize) * 4, sizeof(scale));
  return e4m3_to_float(token[channel]) * scale;
}

Status quantize_kvcache_fp8(const TensorView& k_cache, const TensorView& out) {
  if (k_cache.ndim != 4 || k_cache.dtype != DType::kBFloat16 || k_cache.size(1) != kPageBlockSize ||
      k_cache.size(3) != kHeadDimQk) {
    return invalid_argument("k_cache has shape {} and dtype {}; expected (num_blocks, 64, h_kv, 576) bfloat16",
                            k_cache.shape_string(), dtype_name(k_cache.dtype));
  }
  if (out.ndim != 4 || (out.dtype != DType::kUInt8 && out.dtype != DType::kFloat8E4M3) ||
      out.size(0) != k_cache.size(0) || out.size(1) != kPageBlockSize || out.size(2) != k_cache.size(2) ||
      out.size(3) != kFp8BytesPerToken) {
    return invalid_argument("the FP8 cache has shape {} and dtype {}; expected ({}, 64, {}, 656) uint8",
                            out.shape_string(), dtype_name(out.dtype), k_cache.size(0), k_cache.size(2));
  }
  if (k_cache.stride(-1) != 1 || out.stride(-1) != 1) {
    return invalid_argument("k_cache and the FP8 cache need a contiguous last dimension (strides {} and {})",
                            k_cache.stride(-1), out.stride(-1));
  }
  if (k_cache.device != Device::kCpu || out.device != Device::kCpu) {
    return unimplemented("quantize_kvcache_fp8 runs on the CPU only; move the cache to the CPU");
  }
  for (int64_t block = 0; block < k_cache.size(0); ++block) {
    for (int64_t slot = 0; slot < kPageBlockSize; ++slot) {
      for (int64_t head = 0; head < k_cache.size(2); ++head) {
        const uint16_t* source = k_cache.data_as<const uint16_t>() + block * k_cache.stride(0) +
                                 slot * k_cache.stride(1) + head * k_cache.stride(2);  // (576) bf16
        uint8_t* token = static_cast<uint8_t*>(out.data) + block * out.stride(0) + slot * out.stride(1) +
                         head * out.stride(2);  // (656) bytes
        for (int group = 0; group < kFp8NumScales; ++group) {
          float amax = 0.0f;
          for (int c = group * kFp8GroupSize; c < (group + 1) * kFp8GroupSize; ++c) {
            const float magnitude = std::fabs(bf16_to_float(source[c]));
            // NaN sticks: a group holding a NaN gets a NaN scale, so a poisoned slot stays poisoned.
            if (!std::isnan(amax) && !(magnitude <= amax)) amax = magnitude;
          }
          const float scale = amax == 0.0f ? 1.0f : amax / kE4m3Max;
          std::memcpy(token + kHeadDimV + group * 4, &scale, sizeof(scale));
          for (int c = group * kFp8GroupSize; c < (group + 1) * kFp8GroupSize; ++c) {
            token[c] = float_to_e4m3(bf16_to_float(source[c]) / scale);
          }
        }
        std::memcpy(token + kHeadDimV + kFp8NumScales * 4, source + kHeadDimV, kRopeDim * sizeof(uint16_t));
      }
    }
  }
  return Status::ok();
}

}  // namespace ff::mla
