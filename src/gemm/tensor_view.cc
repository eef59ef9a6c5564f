#include "ff/gemm/tensor_view.h"

#include <fmt/format.h>

#include "ff/common/assert.h"

namespace ff::gemm {

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat8E4M3: return "float8_e4m3fn";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kInt32: return "int32";
  }
  FF_UNREACHABLE("dtype {}", static_cast<int>(dtype));
}

int64_t dtype_size_bytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat8E4M3: return 1;
    case DType::kBFloat16: return 2;
    case DType::kFloat32: return 4;
    case DType::kInt32: return 4;
  }
  FF_UNREACHABLE("dtype {}", static_cast<int>(dtype));
}

std::string_view device_name(Device device) {
  switch (device) {
    case Device::kCpu: return "cpu";
    case Device::kCuda: return "cuda";
  }
  FF_UNREACHABLE("device {}", static_cast<int>(device));
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device,
                                  int device_index) {
  FF_ASSERT(shape.size() >= 1 && shape.size() <= static_cast<size_t>(kMaxDims), "{} dimensions", shape.size());
  TensorView view;
  view.data = data;
  view.dtype = dtype;
  view.ndim = static_cast<int>(shape.size());
  view.device = device;
  view.device_index = device_index;
  size_t dim = 0;
  for (int64_t extent : shape) view.shape[dim++] = extent;
  int64_t stride = 1;
  for (int d = view.ndim - 1; d >= 0; --d) {
    view.strides[static_cast<size_t>(d)] = stride;
    stride *= view.shape[static_cast<size_t>(d)];
  }
  return view;
}

int64_t TensorView::numel() const {
  int64_t count = 1;
  for (int d = 0; d < ndim; ++d) count *= shape[static_cast<size_t>(d)];
  return count;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    // A dimension of extent 1 may carry any stride (numpy and torch leave arbitrary values there).
    if (shape[static_cast<size_t>(d)] != 1 && strides[static_cast<size_t>(d)] != expected) return false;
    expected *= shape[static_cast<size_t>(d)];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::string text = "[";
  for (int d = 0; d < ndim; ++d) {
    if (d > 0) text += ", ";
    text += fmt::format("{}", shape[static_cast<size_t>(d)]);
  }
  return text + "]";
}

}  // namespace ff::gemm
