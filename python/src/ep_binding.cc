// fireflyer._C.ep: the backends of ff::ep. ShmBuffer (CPU shared memory) over numpy arrays; CudaBuffer
// (CUDA intranode) over CUDA arrays that arrive through DLPack (torch tensors viewed as float32, int16 =
// bfloat16 bits, uint8 = e4m3 codes; outputs allocated by the caller) with the caller's stream handle. The
// Python wrapper (fireflyer/ep.py) gives both DeepEP's Buffer API; this layer maps dtypes, checks shapes,
// releases the GIL while a collective waits, and converts a Status to a Python exception.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <vector>

#include "binding.h"
#include "ff/ep/buffer.h"
#include "ff/ep/cuda_buffer.h"

namespace ff::python {

namespace {

using AnyMatrix = nb::ndarray<nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using FloatMatrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using IndexMatrix = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using IntVector = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using BoolMatrix = nb::ndarray<const bool, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// Opaque handles: Python keeps them and passes them back; only the C++ side reads them.
struct PyDispatchHandle {
  std::shared_ptr<const ep::DispatchHandle> value;
};
struct PyLowLatencyHandle {
  std::shared_ptr<const ep::LowLatencyHandle> value;
};

template <typename T>
nb::object owned_array(std::vector<T> values, std::vector<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<T>*>(pointer); });
  return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner));
}

// Rows as a numpy array of their dtype with the given shape (whose product is num_rows * hidden).
nb::object rows_array(ep::Rows rows, std::vector<size_t> shape) {
  auto* owned = new std::vector<uint8_t>(std::move(rows.bytes));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<uint8_t>*>(pointer); });
  switch (rows.dtype) {
    case ep::DType::kFloat32:
      return nb::cast(
          nb::ndarray<nb::numpy, float>(reinterpret_cast<float*>(owned->data()), shape.size(), shape.data(), owner));
    case ep::DType::kBFloat16:
      return nb::cast(nb::ndarray<nb::numpy, uint16_t>(reinterpret_cast<uint16_t*>(owned->data()), shape.size(),
                                                       shape.data(), owner));
    case ep::DType::kFloat8E4M3:
      return nb::cast(nb::ndarray<nb::numpy, uint8_t>(owned->data(), shape.size(), shape.data(), owner));
  }
  throw nb::value_error("unknown dtype");
}

ep::RowsView rows_view(const AnyMatrix& x, const char* name, std::optional<FloatMatrix> scales = std::nullopt) {
  ep::RowsView view;
  view.data = x.data();
  view.num_rows = static_cast<int64_t>(x.shape(0));
  view.hidden = static_cast<int64_t>(x.shape(1));
  if (x.dtype() == nb::dtype<float>()) {
    view.dtype = ep::DType::kFloat32;
  } else if (x.dtype() == nb::dtype<uint16_t>()) {
    view.dtype = ep::DType::kBFloat16;
  } else if (x.dtype() == nb::dtype<uint8_t>()) {
    view.dtype = ep::DType::kFloat8E4M3;
    if (!scales) throw nb::value_error(fmt::format("{} is uint8 (e4m3 codes) and needs per-128 scales", name).c_str());
    if (scales->shape(0) != x.shape(0) || static_cast<int64_t>(scales->shape(1)) * ep::kFp8BlockSize != view.hidden) {
      throw nb::value_error(fmt::format("{} scales have shape ({}, {}), expected ({}, {})", name, scales->shape(0),
                                        scales->shape(1), x.shape(0), view.hidden / ep::kFp8BlockSize)
                                .c_str());
    }
    view.scales = scales->data();
  } else {
    throw nb::value_error(
        fmt::format("{} must be float32, uint16 (bfloat16 bits) or uint8 (e4m3 codes) with scales", name).c_str());
  }
  return view;
}

class PyBuffer {
 public:
  PyBuffer(const std::string& group, int rank, int num_ranks, int64_t num_bytes, int64_t timeout_ms) {
    Result<std::unique_ptr<ep::ShmBuffer>> buffer = [&] {
      nb::gil_scoped_release release;
      return ep::ShmBuffer::create({group, rank, num_ranks, num_bytes, timeout_ms});
    }();
    buffer_ = value_or_throw(std::move(buffer));
  }

  int rank() const { return buffer_->rank(); }
  int num_ranks() const { return buffer_->num_ranks(); }
  int64_t timeout_ms() const { return buffer_->timeout_ms(); }

  nb::tuple dispatch(const AnyMatrix& x, std::optional<FloatMatrix> scales, std::optional<IndexMatrix> topk_idx,
                     std::optional<FloatMatrix> topk_weights, int64_t num_experts,
                     std::optional<IntVector> num_tokens_per_rank, std::optional<BoolMatrix> is_token_in_rank,
                     std::optional<PyDispatchHandle> handle, int64_t expert_alignment) {
    ep::DispatchInput in;
    in.x = rows_view(x, "x", scales);
    if (handle) {
      in.handle = handle->value;
    } else {
      if (!topk_idx) throw nb::value_error("dispatch without a handle needs topk_idx");
      if (topk_idx->shape(0) != x.shape(0)) {
        throw nb::value_error(fmt::format("topk_idx has {} rows, x has {}", topk_idx->shape(0), x.shape(0)).c_str());
      }
      in.topk_idx = {topk_idx->data(), topk_idx->size()};
      in.num_topk = static_cast<int64_t>(topk_idx->shape(1));
      if (topk_weights) in.topk_weights = {topk_weights->data(), topk_weights->size()};
      if (num_tokens_per_rank) in.num_tokens_per_rank = {num_tokens_per_rank->data(), num_tokens_per_rank->size()};
      if (is_token_in_rank) {
        in.is_token_in_rank = {reinterpret_cast<const uint8_t*>(is_token_in_rank->data()), is_token_in_rank->size()};
      }
    }
    in.num_experts = num_experts;
    in.expert_alignment = expert_alignment;
    Result<ep::DispatchOutput> result = [&] {
      nb::gil_scoped_release release;
      return buffer_->dispatch(in);
    }();
    ep::DispatchOutput out = value_or_throw(std::move(result));
    const size_t rows = static_cast<size_t>(out.recv_x.num_rows);
    const size_t hidden = static_cast<size_t>(out.recv_x.hidden);
    nb::object recv_scales = nb::none();
    if (out.recv_x.dtype == ep::DType::kFloat8E4M3) {
      recv_scales = owned_array(std::move(out.recv_x.scales), {rows, hidden / ep::kFp8BlockSize});
    }
    nb::object recv_x = rows_array(std::move(out.recv_x), {rows, hidden});
    nb::object recv_idx = nb::none(), recv_weights = nb::none();
    if (!handle) {
      const size_t topk = static_cast<size_t>(in.num_topk);
      recv_idx = owned_array(std::move(out.recv_topk_idx), {rows, topk});
      recv_weights = owned_array(std::move(out.recv_topk_weights), {rows, topk});
    }
    return nb::make_tuple(recv_x, recv_scales, recv_idx, recv_weights, out.num_recv_tokens_per_expert,
                          PyDispatchHandle{out.handle});
  }

  nb::tuple combine(const AnyMatrix& x, const PyDispatchHandle& handle, std::optional<FloatMatrix> topk_weights,
                    std::optional<AnyMatrix> bias0, std::optional<AnyMatrix> bias1) {
    ep::RowsView view = rows_view(x, "x");
    std::span<const float> weights;
    int64_t num_topk = 0;
    if (topk_weights) {
      weights = {topk_weights->data(), topk_weights->size()};
      num_topk = static_cast<int64_t>(topk_weights->shape(1));
    }
    std::vector<ep::RowsView> bias;
    if (bias0) bias.push_back(rows_view(*bias0, "bias"));
    if (bias1) bias.push_back(rows_view(*bias1, "bias"));
    Result<ep::CombineOutput> result = [&] {
      nb::gil_scoped_release release;
      return buffer_->combine(view, *handle.value, weights, num_topk, bias);
    }();
    ep::CombineOutput out = value_or_throw(std::move(result));
    const size_t rows = static_cast<size_t>(out.combined_x.num_rows);
    nb::object combined_weights = nb::none();
    if (topk_weights) {
      combined_weights = owned_array(std::move(out.combined_topk_weights), {rows, static_cast<size_t>(num_topk)});
    }
    const size_t hidden = static_cast<size_t>(out.combined_x.hidden);
    return nb::make_tuple(rows_array(std::move(out.combined_x), {rows, hidden}), combined_weights);
  }

  void low_latency_dispatch_send(const AnyMatrix& x, const IndexMatrix& topk_idx, int64_t max_tokens_per_rank,
                                 int64_t num_experts, bool use_fp8, bool round_scale) {
    ep::RowsView view = rows_view(x, "x");
    if (topk_idx.shape(0) != x.shape(0)) {
      throw nb::value_error(fmt::format("topk_idx has {} rows, x has {}", topk_idx.shape(0), x.shape(0)).c_str());
    }
    Status status = [&] {
      nb::gil_scoped_release release;
      return buffer_->low_latency_dispatch_send(view, {topk_idx.data(), topk_idx.size()},
                                                static_cast<int64_t>(topk_idx.shape(1)), max_tokens_per_rank,
                                                num_experts, use_fp8, round_scale);
    }();
    throw_if_error(status);
  }

  nb::tuple low_latency_dispatch_receive() {
    Result<ep::LowLatencyDispatchOutput> result = [&] {
      nb::gil_scoped_release release;
      return buffer_->low_latency_dispatch_receive();
    }();
    ep::LowLatencyDispatchOutput out = value_or_throw(std::move(result));
    const size_t experts = out.recv_count.size();
    const size_t capacity = static_cast<size_t>(out.handle->max_tokens_per_rank * out.handle->num_ranks);
    const size_t hidden = static_cast<size_t>(out.recv_x.hidden);
    nb::object scales = nb::none();
    if (out.recv_x.dtype == ep::DType::kFloat8E4M3) {
      scales = owned_array(std::move(out.recv_x.scales), {experts, capacity, hidden / ep::kFp8BlockSize});
    }
    nb::object recv_x = rows_array(std::move(out.recv_x), {experts, capacity, hidden});
    nb::object count = owned_array(std::move(out.recv_count), {experts});
    return nb::make_tuple(recv_x, scales, count, PyLowLatencyHandle{out.handle});
  }

  void low_latency_combine_send(const AnyMatrix& x, const IndexMatrix& topk_idx, const FloatMatrix& topk_weights,
                                const PyLowLatencyHandle& handle) {
    ep::RowsView view = rows_view(x, "x");
    Status status = [&] {
      nb::gil_scoped_release release;
      return buffer_->low_latency_combine_send(view, {topk_idx.data(), topk_idx.size()},
                                               {topk_weights.data(), topk_weights.size()}, *handle.value);
    }();
    throw_if_error(status);
  }

  nb::object low_latency_combine_receive() {
    Result<ep::Rows> result = [&] {
      nb::gil_scoped_release release;
      return buffer_->low_latency_combine_receive();
    }();
    ep::Rows out = value_or_throw(std::move(result));
    const size_t rows = static_cast<size_t>(out.num_rows);
    const size_t hidden = static_cast<size_t>(out.hidden);
    return rows_array(std::move(out), {rows, hidden});
  }

 private:
  std::unique_ptr<ep::ShmBuffer> buffer_;
};

nb::tuple get_dispatch_layout(const IndexMatrix& topk_idx, int64_t num_experts, int num_ranks) {
  const int64_t num_tokens = static_cast<int64_t>(topk_idx.shape(0));
  ep::DispatchLayout layout = value_or_throw(ep::get_dispatch_layout(
      {topk_idx.data(), topk_idx.size()}, num_tokens, static_cast<int64_t>(topk_idx.shape(1)), num_experts, num_ranks));
  std::vector<uint8_t> in_rank = std::move(layout.is_token_in_rank);
  // numpy bool is one byte holding 0 or 1: the uint8 vector is its layout.
  auto* owned = new std::vector<uint8_t>(std::move(in_rank));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<uint8_t>*>(pointer); });
  size_t shape[2] = {static_cast<size_t>(num_tokens), static_cast<size_t>(num_ranks)};
  nb::object is_token_in_rank =
      nb::cast(nb::ndarray<nb::numpy, bool>(reinterpret_cast<bool*>(owned->data()), 2, shape, owner));
  return nb::make_tuple(owned_array(std::move(layout.num_tokens_per_rank), {static_cast<size_t>(num_ranks)}),
                        owned_array(std::move(layout.num_tokens_per_expert), {static_cast<size_t>(num_experts)}),
                        is_token_in_rank);
}

// ---------------------------------------------------------------------------------------------------
// CUDA backend

using CudaArray = nb::ndarray<nb::device::cuda, nb::c_contig>;

struct PyCudaDispatchHandle {
  std::shared_ptr<const ep::CudaDispatchHandle> value;
};

bool is_dtype(const CudaArray& array, nb::dlpack::dtype_code code, int bits) {
  return array.dtype().code == static_cast<uint8_t>(code) && array.dtype().bits == bits && array.dtype().lanes == 1;
}

// float32, bfloat16 (as such or as int16/uint16 bits) or uint8 (e4m3 codes).
ep::DType rows_dtype(const CudaArray& array, const char* name) {
  using Code = nb::dlpack::dtype_code;
  if (is_dtype(array, Code::Float, 32)) return ep::DType::kFloat32;
  if (is_dtype(array, Code::Bfloat, 16) || is_dtype(array, Code::Int, 16) || is_dtype(array, Code::UInt, 16)) {
    return ep::DType::kBFloat16;
  }
  if (is_dtype(array, Code::UInt, 8)) return ep::DType::kFloat8E4M3;
  throw nb::value_error(
      fmt::format("{} must be float32, bfloat16 (or its int16 bits) or uint8 (e4m3 codes) on the GPU", name).c_str());
}

ep::DeviceRows device_rows(const CudaArray& x, const char* name, const std::optional<CudaArray>& scales) {
  if (x.ndim() != 2) throw nb::value_error(fmt::format("{} must be 2-D, has {} dimensions", name, x.ndim()).c_str());
  ep::DeviceRows rows;
  rows.data = x.data();
  rows.dtype = rows_dtype(x, name);
  rows.num_rows = static_cast<int64_t>(x.shape(0));
  rows.hidden = static_cast<int64_t>(x.shape(1));
  if (rows.dtype == ep::DType::kFloat8E4M3) {
    if (!scales) throw nb::value_error(fmt::format("{} is uint8 (e4m3 codes) and needs per-128 scales", name).c_str());
    if (scales->ndim() != 2 || scales->shape(0) != x.shape(0) ||
        static_cast<int64_t>(scales->shape(1)) * ep::kFp8BlockSize != rows.hidden ||
        !is_dtype(*scales, nb::dlpack::dtype_code::Float, 32)) {
      throw nb::value_error(
          fmt::format("{} scales must be float32 ({}, {})", name, x.shape(0), rows.hidden / ep::kFp8BlockSize).c_str());
    }
    rows.scales = static_cast<float*>(scales->data());
  }
  return rows;
}

template <typename T>
T* typed(const std::optional<CudaArray>& array, const char* name, nb::dlpack::dtype_code code, size_t elements) {
  if (!array) return nullptr;
  if (!is_dtype(*array, code, static_cast<int>(sizeof(T) * 8)) || array->size() != elements) {
    throw nb::value_error(fmt::format("{} has the wrong dtype or {} elements, expected {} of {} bits", name,
                                      array->size(), elements, sizeof(T) * 8)
                              .c_str());
  }
  return static_cast<T*>(array->data());
}

void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// Runs a native call without the GIL, then raises its error with the GIL held (raising a Python exception
// without the GIL crashes the interpreter).
template <typename Call>
void call_released(Call&& call) {
  Status status;
  {
    nb::gil_scoped_release release;
    status = call();
  }
  throw_if_error(status);
}

class PyCudaBuffer {
 public:
  PyCudaBuffer(const std::string& group, int rank, int num_ranks, int64_t num_bytes, int64_t timeout_ms, int num_sms) {
    Result<std::unique_ptr<ep::CudaBuffer>> buffer = [&] {
      nb::gil_scoped_release release;
      return ep::CudaBuffer::create({group, rank, num_ranks, num_bytes, timeout_ms, num_sms});
    }();
    buffer_ = value_or_throw(std::move(buffer));
  }

  ep::CudaBuffer& get() {
    if (!buffer_) throw nb::value_error("the ep CUDA buffer is closed");
    return *buffer_;
  }

  void close() {
    nb::gil_scoped_release release;
    buffer_.reset();
  }

  nb::tuple dispatch_send(const CudaArray& x, std::optional<CudaArray> scales, std::optional<CudaArray> topk_idx,
                          std::optional<CudaArray> topk_weights, int64_t num_experts,
                          std::optional<CudaArray> num_tokens_per_rank, std::optional<CudaArray> is_token_in_rank,
                          std::optional<PyCudaDispatchHandle> handle, int64_t expert_alignment, uintptr_t stream) {
    using Code = nb::dlpack::dtype_code;
    ep::CudaDispatchInput in;
    in.x = device_rows(x, "x", scales);
    const size_t tokens = x.shape(0);
    if (handle) {
      in.handle = handle->value;
    } else {
      if (!topk_idx || topk_idx->ndim() != 2 || topk_idx->shape(0) != tokens) {
        throw nb::value_error("dispatch without a handle needs topk_idx (num_tokens, num_topk)");
      }
      in.num_topk = static_cast<int64_t>(topk_idx->shape(1));
      const size_t entries = tokens * static_cast<size_t>(in.num_topk);
      in.topk_idx = typed<const int64_t>(topk_idx, "topk_idx", Code::Int, entries);
      in.topk_weights = typed<const float>(topk_weights, "topk_weights", Code::Float, entries);
      in.num_experts = num_experts;
      in.num_tokens_per_rank = typed<const int32_t>(num_tokens_per_rank, "num_tokens_per_rank", Code::Int,
                                                    static_cast<size_t>(get().num_ranks()));
      in.is_token_in_rank = reinterpret_cast<const bool*>(typed<const uint8_t>(
          is_token_in_rank, "is_token_in_rank (as uint8)", Code::UInt, tokens * get().num_ranks()));
    }
    in.expert_alignment = expert_alignment;
    Result<ep::CudaDispatchPlan> result = [&] {
      nb::gil_scoped_release release;
      return get().dispatch_send(in, as_stream(stream));
    }();
    plan_ = value_or_throw(std::move(result));
    return nb::make_tuple(plan_.num_recv_tokens, plan_.num_recv_tokens_per_expert, PyCudaDispatchHandle{plan_.handle});
  }

  void dispatch_receive(std::optional<CudaArray> recv_x, std::optional<CudaArray> recv_scales,
                        std::optional<CudaArray> recv_topk_idx, std::optional<CudaArray> recv_topk_weights,
                        uintptr_t stream) {
    ep::CudaDispatchOutputs out;
    out.recv_x = recv_x ? recv_x->data() : nullptr;
    out.recv_scales = recv_scales ? static_cast<float*>(recv_scales->data()) : nullptr;
    out.recv_topk_idx = recv_topk_idx ? static_cast<int64_t*>(recv_topk_idx->data()) : nullptr;
    out.recv_topk_weights = recv_topk_weights ? static_cast<float*>(recv_topk_weights->data()) : nullptr;
    call_released([&] { return get().dispatch_receive(plan_, out, as_stream(stream)); });
  }

  void combine(const CudaArray& x, const PyCudaDispatchHandle& handle, std::optional<CudaArray> topk_weights,
               std::optional<CudaArray> combined_x, std::optional<CudaArray> combined_topk_weights, uintptr_t stream,
               std::optional<CudaArray> bias0, std::optional<CudaArray> bias1) {
    using Code = nb::dlpack::dtype_code;
    ep::DeviceRows rows = device_rows(x, "x", std::nullopt);
    const size_t topk = static_cast<size_t>(handle.value->num_topk);
    const float* weights = typed<const float>(topk_weights, "topk_weights", Code::Float, x.shape(0) * topk);
    const size_t tokens = static_cast<size_t>(handle.value->host.num_tokens);
    if (combined_x && combined_x->size() != tokens * x.shape(1)) {
      throw nb::value_error("combined_x has the wrong number of elements");
    }
    float* out_weights = typed<float>(combined_topk_weights, "combined_topk_weights", Code::Float, tokens * topk);
    void* out = combined_x ? combined_x->data() : nullptr;
    const auto bias_data = [&](const std::optional<CudaArray>& bias) -> const void* {
      if (!bias) return nullptr;
      if (bias->ndim() != 2 || bias->shape(0) != tokens || bias->shape(1) != x.shape(1) ||
          rows_dtype(*bias, "bias") != rows.dtype) {
        throw nb::value_error(fmt::format("bias must be ({}, {}) in x's dtype", tokens, x.shape(1)).c_str());
      }
      return bias->data();
    };
    const void* b0 = bias_data(bias0);
    const void* b1 = bias_data(bias1);
    call_released(
        [&] { return get().combine(rows, *handle.value, weights, out, out_weights, as_stream(stream), b0, b1); });
  }

  void low_latency_dispatch_send(const CudaArray& x, const CudaArray& topk_idx, int64_t max_tokens_per_rank,
                                 int64_t num_experts, bool use_fp8, uintptr_t stream, bool round_scale) {
    ep::DeviceRows rows = device_rows(x, "x", std::nullopt);
    if (topk_idx.ndim() != 2 || topk_idx.shape(0) != x.shape(0) ||
        !is_dtype(topk_idx, nb::dlpack::dtype_code::Int, 64)) {
      throw nb::value_error("topk_idx must be int64 (num_tokens, num_topk) with x's number of rows");
    }
    call_released([&] {
      return get().low_latency_dispatch_send(rows, static_cast<const int64_t*>(topk_idx.data()),
                                             static_cast<int64_t>(topk_idx.shape(1)), max_tokens_per_rank, num_experts,
                                             use_fp8, as_stream(stream), round_scale);
    });
  }

  void low_latency_dispatch_receive(const CudaArray& recv_x, std::optional<CudaArray> recv_scales,
                                    const CudaArray& recv_count, uintptr_t stream) {
    call_released([&] {
      return get().low_latency_dispatch_receive(recv_x.data(),
                                                recv_scales ? static_cast<float*>(recv_scales->data()) : nullptr,
                                                static_cast<int32_t*>(recv_count.data()), as_stream(stream));
    });
  }

  void low_latency_combine_send(const CudaArray& x, const CudaArray& topk_idx, const CudaArray& topk_weights,
                                uintptr_t stream) {
    ep::DeviceRows rows = device_rows(x, "x", std::nullopt);
    if (!is_dtype(topk_idx, nb::dlpack::dtype_code::Int, 64) ||
        !is_dtype(topk_weights, nb::dlpack::dtype_code::Float, 32) || topk_idx.size() != topk_weights.size()) {
      throw nb::value_error("topk_idx must be int64 and topk_weights float32 of the same shape");
    }
    call_released([&] {
      return get().low_latency_combine_send(rows, static_cast<const int64_t*>(topk_idx.data()),
                                            static_cast<const float*>(topk_weights.data()), as_stream(stream));
    });
  }

  void low_latency_combine_receive(const CudaArray& combined_x, uintptr_t stream) {
    call_released([&] { return get().low_latency_combine_receive(combined_x.data(), as_stream(stream)); });
  }

  // Low-latency calls with raw device pointers (the wrapper has checked dtypes, shapes, contiguity and the
  // device). NOTE: a DLPack conversion costs microseconds per tensor and a low-latency round trip passes
  // nine tensors; these keep the call's host work to the native call itself.
  static ep::DType float_dtype(int code) {
    if (code == 0) return ep::DType::kFloat32;
    if (code == 1) return ep::DType::kBFloat16;
    throw nb::value_error(fmt::format("dtype code {} must be 0 (float32) or 1 (bfloat16)", code).c_str());
  }

  void low_latency_dispatch_send_ptr(uintptr_t x, int dtype, int64_t num_tokens, int64_t hidden, uintptr_t topk_idx,
                                     int64_t num_topk, int64_t max_tokens_per_rank, int64_t num_experts, bool use_fp8,
                                     uintptr_t stream, bool round_scale) {
    ep::DeviceRows rows;
    rows.data = reinterpret_cast<void*>(x);
    rows.dtype = float_dtype(dtype);
    rows.num_rows = num_tokens;
    rows.hidden = hidden;
    call_released([&] {
      return get().low_latency_dispatch_send(rows, reinterpret_cast<const int64_t*>(topk_idx), num_topk,
                                             max_tokens_per_rank, num_experts, use_fp8, as_stream(stream), round_scale);
    });
  }

  void low_latency_dispatch_receive_ptr(uintptr_t recv_x, uintptr_t recv_scales, uintptr_t recv_count,
                                        uintptr_t stream) {
    call_released([&] {
      return get().low_latency_dispatch_receive(reinterpret_cast<void*>(recv_x), reinterpret_cast<float*>(recv_scales),
                                                reinterpret_cast<int32_t*>(recv_count), as_stream(stream));
    });
  }

  void low_latency_combine_send_ptr(uintptr_t x, int dtype, int64_t num_rows, int64_t hidden, uintptr_t topk_idx,
                                    uintptr_t topk_weights, uintptr_t stream) {
    ep::DeviceRows rows;
    rows.data = reinterpret_cast<void*>(x);
    rows.dtype = float_dtype(dtype);
    rows.num_rows = num_rows;
    rows.hidden = hidden;
    call_released([&] {
      return get().low_latency_combine_send(rows, reinterpret_cast<const int64_t*>(topk_idx),
                                            reinterpret_cast<const float*>(topk_weights), as_stream(stream));
    });
  }

  void low_latency_combine_receive_ptr(uintptr_t combined_x, uintptr_t stream) {
    call_released(
        [&] { return get().low_latency_combine_receive(reinterpret_cast<void*>(combined_x), as_stream(stream)); });
  }

  void synchronize(uintptr_t stream) {
    call_released([&] { return get().synchronize(as_stream(stream)); });
  }

  void set_num_sms(int num_sms) { get().set_num_sms(num_sms); }
  int num_sms() { return get().num_sms(); }
  void set_profiling(bool enabled) { get().set_profiling(enabled); }
  nb::dict kernel_times_us() {
    nb::dict times;
    for (const auto& [name, us] : get().kernel_times_us()) times[name.c_str()] = us;
    return times;
  }

 private:
  std::unique_ptr<ep::CudaBuffer> buffer_;
  ep::CudaDispatchPlan plan_;
};

}  // namespace

void bind_ep(nb::module_& module) {
  nb::class_<PyDispatchHandle>(module, "DispatchHandle", "Layout of a normal dispatch (opaque)")
      .def_prop_ro("num_recv_tokens", [](const PyDispatchHandle& h) { return h.value->num_recv_tokens(); })
      .def_prop_ro("recv_counts", [](const PyDispatchHandle& h) { return h.value->recv_counts; })
      .def_prop_ro("num_tokens", [](const PyDispatchHandle& h) { return h.value->num_tokens; });
  nb::class_<PyLowLatencyHandle>(module, "LowLatencyHandle", "Layout of a low-latency dispatch (opaque)");
  nb::class_<PyBuffer>(module, "ShmBuffer", "CPU shared-memory ep buffer of one rank")
      .def(nb::init<const std::string&, int, int, int64_t, int64_t>(), nb::arg("group"), nb::arg("rank"),
           nb::arg("num_ranks"), nb::arg("num_bytes"), nb::arg("timeout_ms"))
      .def_prop_ro("rank", &PyBuffer::rank)
      .def_prop_ro("num_ranks", &PyBuffer::num_ranks)
      .def_prop_ro("timeout_ms", &PyBuffer::timeout_ms)
      .def("dispatch", &PyBuffer::dispatch, nb::arg("x"), nb::arg("scales").none(), nb::arg("topk_idx").none(),
           nb::arg("topk_weights").none(), nb::arg("num_experts"), nb::arg("num_tokens_per_rank").none(),
           nb::arg("is_token_in_rank").none(), nb::arg("handle").none(), nb::arg("expert_alignment"))
      .def("combine", &PyBuffer::combine, nb::arg("x"), nb::arg("handle"), nb::arg("topk_weights").none(),
           nb::arg("bias0").none() = nb::none(), nb::arg("bias1").none() = nb::none())
      .def("low_latency_dispatch_send", &PyBuffer::low_latency_dispatch_send, nb::arg("x"), nb::arg("topk_idx"),
           nb::arg("max_tokens_per_rank"), nb::arg("num_experts"), nb::arg("use_fp8"), nb::arg("round_scale") = false)
      .def("low_latency_dispatch_receive", &PyBuffer::low_latency_dispatch_receive)
      .def("low_latency_combine_send", &PyBuffer::low_latency_combine_send, nb::arg("x"), nb::arg("topk_idx"),
           nb::arg("topk_weights"), nb::arg("handle"))
      .def("low_latency_combine_receive", &PyBuffer::low_latency_combine_receive);
  nb::class_<PyCudaDispatchHandle>(module, "CudaDispatchHandle", "Layout of a normal dispatch on the GPU (opaque)")
      .def_prop_ro("num_recv_tokens", [](const PyCudaDispatchHandle& h) { return h.value->host.num_recv_tokens(); })
      .def_prop_ro("recv_counts", [](const PyCudaDispatchHandle& h) { return h.value->host.recv_counts; })
      .def_prop_ro("num_tokens", [](const PyCudaDispatchHandle& h) { return h.value->host.num_tokens; })
      .def_prop_ro("num_topk", [](const PyCudaDispatchHandle& h) { return h.value->num_topk; });
  nb::class_<PyCudaBuffer>(module, "CudaBuffer", "CUDA intranode ep buffer of one rank (one process per rank)")
      .def(nb::init<const std::string&, int, int, int64_t, int64_t, int>(), nb::arg("group"), nb::arg("rank"),
           nb::arg("num_ranks"), nb::arg("num_bytes"), nb::arg("timeout_ms"), nb::arg("num_sms"))
      .def("close", &PyCudaBuffer::close)
      .def("dispatch_send", &PyCudaBuffer::dispatch_send, nb::arg("x"), nb::arg("scales").none(),
           nb::arg("topk_idx").none(), nb::arg("topk_weights").none(), nb::arg("num_experts"),
           nb::arg("num_tokens_per_rank").none(), nb::arg("is_token_in_rank").none(), nb::arg("handle").none(),
           nb::arg("expert_alignment"), nb::arg("stream"))
      .def("dispatch_receive", &PyCudaBuffer::dispatch_receive, nb::arg("recv_x").none(), nb::arg("recv_scales").none(),
           nb::arg("recv_topk_idx").none(), nb::arg("recv_topk_weights").none(), nb::arg("stream"))
      .def("combine", &PyCudaBuffer::combine, nb::arg("x"), nb::arg("handle"), nb::arg("topk_weights").none(),
           nb::arg("combined_x").none(), nb::arg("combined_topk_weights").none(), nb::arg("stream"),
           nb::arg("bias0").none() = nb::none(), nb::arg("bias1").none() = nb::none())
      .def("low_latency_dispatch_send", &PyCudaBuffer::low_latency_dispatch_send, nb::arg("x"), nb::arg("topk_idx"),
           nb::arg("max_tokens_per_rank"), nb::arg("num_experts"), nb::arg("use_fp8"), nb::arg("stream"),
           nb::arg("round_scale") = false)
      .def("low_latency_dispatch_receive", &PyCudaBuffer::low_latency_dispatch_receive, nb::arg("recv_x"),
           nb::arg("recv_scales").none(), nb::arg("recv_count"), nb::arg("stream"))
      .def("low_latency_combine_send", &PyCudaBuffer::low_latency_combine_send, nb::arg("x"), nb::arg("topk_idx"),
           nb::arg("topk_weights"), nb::arg("stream"))
      .def("low_latency_combine_receive", &PyCudaBuffer::low_latency_combine_receive, nb::arg("combined_x"),
           nb::arg("stream"))
      .def("low_latency_dispatch_send_ptr", &PyCudaBuffer::low_latency_dispatch_send_ptr, nb::arg("x"),
           nb::arg("dtype"), nb::arg("num_tokens"), nb::arg("hidden"), nb::arg("topk_idx"), nb::arg("num_topk"),
           nb::arg("max_tokens_per_rank"), nb::arg("num_experts"), nb::arg("use_fp8"), nb::arg("stream"),
           nb::arg("round_scale") = false)
      .def("low_latency_dispatch_receive_ptr", &PyCudaBuffer::low_latency_dispatch_receive_ptr, nb::arg("recv_x"),
           nb::arg("recv_scales"), nb::arg("recv_count"), nb::arg("stream"))
      .def("low_latency_combine_send_ptr", &PyCudaBuffer::low_latency_combine_send_ptr, nb::arg("x"), nb::arg("dtype"),
           nb::arg("num_rows"), nb::arg("hidden"), nb::arg("topk_idx"), nb::arg("topk_weights"), nb::arg("stream"))
      .def("low_latency_combine_receive_ptr", &PyCudaBuffer::low_latency_combine_receive_ptr, nb::arg("combined_x"),
           nb::arg("stream"))
      .def("synchronize", &PyCudaBuffer::synchronize, nb::arg("stream"))
      .def("set_num_sms", &PyCudaBuffer::set_num_sms, nb::arg("num_sms"))
      .def("num_sms", &PyCudaBuffer::num_sms)
      .def("set_profiling", &PyCudaBuffer::set_profiling, nb::arg("enabled"),
           "Benchmark aid: record CUDA events around each phase's kernels.")
      .def("kernel_times_us", &PyCudaBuffer::kernel_times_us,
           "{phase: microseconds} of the phases recorded since the last call (after a synchronize).");
  module.def("cuda_backend_built", &ep::cuda_backend_built, "True when this build has the ep CUDA backend.");
  module.def("get_dispatch_layout", &get_dispatch_layout, nb::arg("topk_idx"), nb::arg("num_experts"),
             nb::arg("num_ranks"),
             "(num_tokens_per_rank int32, num_tokens_per_expert int32, is_token_in_rank bool) of int64 topk_idx.");
}

}  // namespace ff::python
