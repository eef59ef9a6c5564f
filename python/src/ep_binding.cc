// fireflyer._C.ep: the CPU shared-memory backend of ff::ep over numpy arrays. The Python wrapper
// (fireflyer/ep.py) gives it DeepEP's Buffer API; this layer maps dtypes (float32, uint16 = bfloat16 bits,
// uint8 = e4m3 codes), checks shapes, releases the GIL while a collective waits, and converts a Status to
// a Python exception.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <vector>

#include "binding.h"
#include "ff/ep/buffer.h"

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

  nb::tuple combine(const AnyMatrix& x, const PyDispatchHandle& handle, std::optional<FloatMatrix> topk_weights) {
    ep::RowsView view = rows_view(x, "x");
    std::span<const float> weights;
    int64_t num_topk = 0;
    if (topk_weights) {
      weights = {topk_weights->data(), topk_weights->size()};
      num_topk = static_cast<int64_t>(topk_weights->shape(1));
    }
    Result<ep::CombineOutput> result = [&] {
      nb::gil_scoped_release release;
      return buffer_->combine(view, *handle.value, weights, num_topk);
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
                                 int64_t num_experts, bool use_fp8) {
    ep::RowsView view = rows_view(x, "x");
    if (topk_idx.shape(0) != x.shape(0)) {
      throw nb::value_error(fmt::format("topk_idx has {} rows, x has {}", topk_idx.shape(0), x.shape(0)).c_str());
    }
    Status status = [&] {
      nb::gil_scoped_release release;
      return buffer_->low_latency_dispatch_send(view, {topk_idx.data(), topk_idx.size()},
                                                static_cast<int64_t>(topk_idx.shape(1)), max_tokens_per_rank,
                                                num_experts, use_fp8);
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

}  // namespace

void bind_ep(nb::module_& module) {
  nb::class_<PyDispatchHandle>(module, "DispatchHandle", "Layout of a normal dispatch (opaque)")
      .def_prop_ro("num_recv_tokens", [](const PyDispatchHandle& h) { return h.value->num_recv_tokens(); })
      .def_prop_ro("recv_counts", [](const PyDispatchHandle& h) { return h.value->recv_counts; });
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
      .def("combine", &PyBuffer::combine, nb::arg("x"), nb::arg("handle"), nb::arg("topk_weights").none())
      .def("low_latency_dispatch_send", &PyBuffer::low_latency_dispatch_send, nb::arg("x"), nb::arg("topk_idx"),
           nb::arg("max_tokens_per_rank"), nb::arg("num_experts"), nb::arg("use_fp8"))
      .def("low_latency_dispatch_receive", &PyBuffer::low_latency_dispatch_receive)
      .def("low_latency_combine_send", &PyBuffer::low_latency_combine_send, nb::arg("x"), nb::arg("topk_idx"),
           nb::arg("topk_weights"), nb::arg("handle"))
      .def("low_latency_combine_receive", &PyBuffer::low_latency_combine_receive);
  module.def("get_dispatch_layout", &get_dispatch_layout, nb::arg("topk_idx"), nb::arg("num_experts"),
             nb::arg("num_ranks"),
             "(num_tokens_per_rank int32, num_tokens_per_expert int32, is_token_in_rank bool) of int64 topk_idx.");
}

}  // namespace ff::python
