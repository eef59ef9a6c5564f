// TensorView: a non-owning, strided description of a tensor that crosses the gemm API (data pointer,
// dtype, shape, strides, device). The same struct describes host memory (CPU backend) and device memory
// (the sm_90a backend), so a kernel slots in behind the same functions without changing callers.
//
// Ownership: a view never owns or frees memory; the caller keeps the memory alive for the duration of the
// call that receives the view (and, on a GPU, until the stream the call was enqueued on has passed it).
// Thread-safety: a view is a value; reading the memory it points to from several threads is the caller's
// business.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace ff::gemm {

// Element types of the gemm API. Each is stored as its bit pattern: kFloat8E4M3 as one byte
// (OCP float8 e4m3fn: 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities, NaN = 0x7f/0xff),
// kBFloat16 as two bytes (the upper half of an IEEE float32).
enum class DType : uint8_t { kFloat8E4M3, kBFloat16, kFloat32, kInt32 };

// "float8_e4m3fn", "bfloat16", "float32", "int32" (torch's names, so messages read like the caller's code).
std::string_view dtype_name(DType dtype);
int64_t dtype_size_bytes(DType dtype);

enum class Device : uint8_t { kCpu, kCuda };
std::string_view device_name(Device device);

inline constexpr int kMaxDims = 3;

struct TensorView {
  // NOTE: one mutable pointer for inputs and outputs keeps the struct single; the gemm functions never write
  // through a view they take as an input (documented per function).
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};    // shape[0..ndim)
  std::array<int64_t, kMaxDims> strides{};  // in elements, not bytes
  Device device = Device::kCpu;
  int device_index = 0;

  // A row-major (C-contiguous) view.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::kCpu, int device_index = 0);

  int64_t size(int dim) const { return shape[static_cast<size_t>(dim)]; }
  int64_t stride(int dim) const { return strides[static_cast<size_t>(dim)]; }
  int64_t numel() const;
  bool is_contiguous() const;
  // "[4, 128]"
  std::string shape_string() const;
  // Typed pointer to the element at the given indices (one per dimension), no bounds check.
  template <typename T>
  T* at(int64_t i0) const {
    return static_cast<T*>(data) + i0 * strides[0];
  }
  template <typename T>
  T* at(int64_t i0, int64_t i1) const {
    return static_cast<T*>(data) + i0 * strides[0] + i1 * strides[1];
  }
  template <typename T>
  T* at(int64_t i0, int64_t i1, int64_t i2) const {
    return static_cast<T*>(data) + i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
  }
};

}  // namespace ff::gemm
