// TensorView: a non-owning description of a strided tensor (data pointer, dtype, shape, strides in
// elements, device), the one currency of the mla API. It lets the same entry points take numpy
// arrays, torch tensors (through DLPack) or raw buffers, on the CPU now and on the GPU later.
//
// Ownership: a view never owns or frees its data; the caller keeps the memory alive for the call.
// Thread-safety: a view is a value; concurrent reads of the described memory are the caller's concern.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace ff::mla {

enum class DType : int {
  kBFloat16,
  kFloat16,
  kFloat32,
  kInt32,
  kUInt8,        // raw bytes: the FP8 KV cache (see mla.h for its per-token layout)
  kFloat8E4M3,   // same bytes as kUInt8, named so torch.float8_e4m3fn tensors pass unchanged
};

enum class Device : int { kCpu, kCuda };

// "bfloat16", "float16", "float32", "int32", "uint8", "float8_e4m3fn".
std::string_view dtype_name(DType dtype);
// Bytes per element: 2, 2, 4, 4, 1, 1.
int64_t dtype_size(DType dtype);

struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements, not bytes (as torch and DLPack)
  Device device = Device::kCpu;
  int device_index = 0;

  // A C-contiguous view of `shape` over `data`.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::kCpu);
  static TensorView contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::kCpu) {
    return contiguous(const_cast<void*>(data), dtype, shape, device);
  }

  // size(-1) is the last dimension; the index must be within [-ndim, ndim).
  int64_t size(int dim) const;
  int64_t stride(int dim) const;
  int64_t numel() const;
  bool is_contiguous() const;
  // "(4, 2, 128, 576)".
  std::string shape_string() const;

  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data);
  }
};

}  // namespace ff::mla
