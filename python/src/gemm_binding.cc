// fireflyer._C.gemm: the gemm API over nanobind ndarrays (numpy on the CPU; torch tensors through DLPack, CPU or
// CUDA). The Python wrapper (fireflyer/gemm.py) hands over bit patterns: fp8 as uint8, bf16 as uint16/int16 (or a
// DLPack bfloat16); this layer turns each array into a TensorView, releases the GIL while the backend runs, and
// converts a Status to a Python exception (bad input -> ValueError).
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>
#include <vector>

#include "binding.h"
#include "ff/gemm/gemm.h"
#include "ff/gemm/numeric.h"
#include "ff/gemm/quantize.h"

namespace ff::python {

namespace {

using gemm::DType;
using gemm::TensorView;

using Input = nb::ndarray<nb::ro>;  // any dtype, shape, strides and device; never written
using Output = nb::ndarray<>;       // written in place

std::string dlpack_dtype_name(nb::dlpack::dtype dtype) {
  const char* kind = "?";
  switch (static_cast<nb::dlpack::dtype_code>(dtype.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
    default: kind = "dtype code "; break;
  }
  return std::string(kind) + std::to_string(dtype.bits);
}

// The gemm dtype an array's elements stand for: fp8 travels as 8-bit integers, bf16 as 16-bit integers or as a
// DLPack bfloat16. Other dtypes are rejected here, naming the argument.
template <typename Array>
TensorView view_of(const Array& array, const char* name, DType expected) {
  const nb::dlpack::dtype dtype = array.dtype();
  const auto code = static_cast<nb::dlpack::dtype_code>(dtype.code);
  const bool is_int = code == nb::dlpack::dtype_code::Int || code == nb::dlpack::dtype_code::UInt;
  DType actual;
  if (dtype.lanes == 1 && dtype.bits == 8 && (is_int || code == nb::dlpack::dtype_code::Float8_E4M3FN)) {
    actual = DType::kFloat8E4M3;
  } else if (dtype.lanes == 1 && dtype.bits == 16 && (is_int || code == nb::dlpack::dtype_code::Bfloat)) {
    actual = DType::kBFloat16;
  } else if (dtype.lanes == 1 && dtype.bits == 32 && code == nb::dlpack::dtype_code::Float) {
    actual = DType::kFloat32;
  } else if (dtype.lanes == 1 && dtype.bits == 32 && code == nb::dlpack::dtype_code::Int) {
    actual = DType::kInt32;
  } else {
    throw nb::value_error((std::string(name) + " has dtype " + dlpack_dtype_name(dtype) + "; expected " +
                           std::string(gemm::dtype_name(expected)))
                              .c_str());
  }
  if (array.ndim() < 1 || array.ndim() > static_cast<size_t>(gemm::kMaxDims)) {
    throw nb::value_error((std::string(name) + " has " + std::to_string(array.ndim()) + " dimensions; expected 1 to 3")
                              .c_str());
  }
  TensorView view;
  view.data = const_cast<void*>(static_cast<const void*>(array.data()));  // inputs are never written (gemm.h)
  view.dtype = actual;
  view.ndim = static_cast<int>(array.ndim());
  for (size_t d = 0; d < array.ndim(); ++d) {
    view.shape[d] = static_cast<int64_t>(array.shape(d));
    view.strides[d] = static_cast<int64_t>(array.stride(d));
  }
  const int device_type = array.device_type();
  if (device_type == nb::device::cpu::value) {
    view.device = gemm::Device::kCpu;
  } else if (device_type == nb::device::cuda::value) {
    view.device = gemm::Device::kCuda;
  } else {
    throw nb::value_error((std::string(name) + " lives on DLPack device type " + std::to_string(device_type) +
                           "; expected the CPU or a CUDA GPU")
                              .c_str());
  }
  view.device_index = array.device_id();
  return view;
}

gemm::LaunchOptions launch_options(uintptr_t stream) {
  gemm::LaunchOptions options;
  options.stream = reinterpret_cast<void*>(stream);
  return options;
}

void gemm_dense(const Input& a, const Input& a_scales, const Input& b, const Input& b_scales, const Output& out,
                uintptr_t stream) {
  const gemm::ScaledTensor lhs{view_of(a, "a", DType::kFloat8E4M3), view_of(a_scales, "a_scales", DType::kFloat32)};
  const gemm::ScaledTensor rhs{view_of(b, "b", DType::kFloat8E4M3), view_of(b_scales, "b_scales", DType::kFloat32)};
  const TensorView out_view = view_of(out, "out", DType::kBFloat16);
  Status status;
  {
    nb::gil_scoped_release release;
    status = gemm::gemm_fp8_fp8_bf16_nt(lhs, rhs, out_view, launch_options(stream));
  }
  throw_if_error(status);
}

void gemm_contiguous(const Input& a, const Input& a_scales, const Input& b, const Input& b_scales, const Output& out,
                     const Input& m_indices, uintptr_t stream) {
  const gemm::ScaledTensor lhs{view_of(a, "a", DType::kFloat8E4M3), view_of(a_scales, "a_scales", DType::kFloat32)};
  const gemm::ScaledTensor rhs{view_of(b, "b", DType::kFloat8E4M3), view_of(b_scales, "b_scales", DType::kFloat32)};
  const TensorView out_view = view_of(out, "out", DType::kBFloat16);
  const TensorView indices = view_of(m_indices, "m_indices", DType::kInt32);
  Status status;
  {
    nb::gil_scoped_release release;
    status = gemm::m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, rhs, out_view, indices, launch_options(stream));
  }
  throw_if_error(status);
}

void gemm_masked(const Input& a, const Input& a_scales, const Input& b, const Input& b_scales, const Output& out,
                 const Input& masked_m, int64_t expected_m, uintptr_t stream) {
  const gemm::ScaledTensor lhs{view_of(a, "a", DType::kFloat8E4M3), view_of(a_scales, "a_scales", DType::kFloat32)};
  const gemm::ScaledTensor rhs{view_of(b, "b", DType::kFloat8E4M3), view_of(b_scales, "b_scales", DType::kFloat32)};
  const TensorView out_view = view_of(out, "out", DType::kBFloat16);
  const TensorView counts = view_of(masked_m, "masked_m", DType::kInt32);
  Status status;
  {
    nb::gil_scoped_release release;
    status = gemm::m_grouped_gemm_fp8_fp8_bf16_nt_masked(lhs, rhs, out_view, counts, expected_m,
                                                           launch_options(stream));
  }
  throw_if_error(status);
}

void wgrad_dense(const Input& a, const Input& a_scales, const Input& b, const Input& b_scales, const Output& out,
                 uintptr_t stream) {
  const gemm::ScaledTensor lhs{view_of(a, "a", DType::kFloat8E4M3), view_of(a_scales, "a_scales", DType::kFloat32)};
  const gemm::ScaledTensor rhs{view_of(b, "b", DType::kFloat8E4M3), view_of(b_scales, "b_scales", DType::kFloat32)};
  const TensorView out_view = view_of(out, "out", DType::kFloat32);
  Status status;
  {
    nb::gil_scoped_release release;
    status = gemm::wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out_view, launch_options(stream));
  }
  throw_if_error(status);
}

void wgrad_k_grouped(const Input& a, const Input& a_scales, const Input& b, const Input& b_scales, const Output& out,
                     const std::vector<int64_t>& batch_sizes, uintptr_t stream) {
  const gemm::ScaledTensor lhs{view_of(a, "a", DType::kFloat8E4M3), view_of(a_scales, "a_scales", DType::kFloat32)};
  const gemm::ScaledTensor rhs{view_of(b, "b", DType::kFloat8E4M3), view_of(b_scales, "b_scales", DType::kFloat32)};
  const TensorView out_view = view_of(out, "out", DType::kFloat32);
  Status status;
  {
    nb::gil_scoped_release release;
    status = gemm::k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out_view, batch_sizes, launch_options(stream));
  }
  throw_if_error(status);
}

// Moves values into a numpy array of the given shape that owns them (freed with the array).
template <typename T>
nb::object to_numpy(std::vector<T> values, std::vector<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<T>*>(pointer); });
  return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner));
}

// per_token (per_block=false) or per_block cast of x (m, k) float32 or bf16 bits -> (q uint8, scales float32).
nb::tuple cast_to_fp8(const Input& x, bool per_block) {
  const TensorView x_view = view_of(x, "x", DType::kFloat32);
  if (x_view.ndim != 2) throw nb::value_error(("x has shape " + x_view.shape_string() + "; expected 2-D (m, k)").c_str());
  const int64_t m = x_view.size(0);
  const int64_t k = x_view.size(1);
  const int64_t scale_rows = per_block ? gemm::ceil_div(m, gemm::kScaleBlock) : m;
  const int64_t k_blocks = gemm::ceil_div(k, gemm::kScaleBlock);
  std::vector<uint8_t> q(static_cast<size_t>(m * k));
  std::vector<float> scales(static_cast<size_t>(scale_rows * k_blocks));
  const TensorView q_view = TensorView::contiguous(q.data(), DType::kFloat8E4M3, {m, k});
  const TensorView scales_view = TensorView::contiguous(scales.data(), DType::kFloat32, {scale_rows, k_blocks});
  Status status;
  {
    nb::gil_scoped_release release;
    status = per_block ? gemm::per_block_cast_to_fp8(x_view, q_view, scales_view)
                       : gemm::per_token_cast_to_fp8(x_view, q_view, scales_view);
  }
  throw_if_error(status);
  return nb::make_tuple(to_numpy(std::move(q), {static_cast<size_t>(m), static_cast<size_t>(k)}),
                        to_numpy(std::move(scales), {static_cast<size_t>(scale_rows), static_cast<size_t>(k_blocks)}));
}

// Elementwise conversions over C-contiguous CPU arrays, for callers without ml_dtypes.
using Bytes = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using Floats = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using Halves = nb::ndarray<const uint16_t, nb::c_contig, nb::device::cpu>;


template <typename To, typename From, typename Convert>
nb::object convert(const nb::ndarray<const From, nb::c_contig, nb::device::cpu>& input, Convert convert_one) {
  std::vector<To> output(input.size());
  const From* data = input.data();
  for (size_t i = 0; i < output.size(); ++i) output[i] = convert_one(data[i]);
  std::vector<size_t> shape(input.ndim());
  for (size_t d = 0; d < input.ndim(); ++d) shape[d] = input.shape(d);
  return to_numpy(std::move(output), std::move(shape));
}

}  // namespace

void bind_gemm(nb::module_& module) {
  module.def("gemm_fp8_fp8_bf16_nt", &gemm_dense, nb::arg("a"), nb::arg("a_scales"), nb::arg("b"),
             nb::arg("b_scales"), nb::arg("out"), nb::arg("stream") = 0,
             "out (m, n) bf16 bits = A (m, k) * B (n, k)^T with 1x128 / 128x128 fp32 scales, written in place.");
  module.def("m_grouped_gemm_fp8_fp8_bf16_nt_contiguous", &gemm_contiguous, nb::arg("a"), nb::arg("a_scales"),
             nb::arg("b"), nb::arg("b_scales"), nb::arg("out"), nb::arg("m_indices"), nb::arg("stream") = 0,
             "Grouped GEMM over stacked expert rows; m_indices (m_sum) int32 names each row's group, -1 = padding.");
  module.def("m_grouped_gemm_fp8_fp8_bf16_nt_masked", &gemm_masked, nb::arg("a"), nb::arg("a_scales"), nb::arg("b"),
             nb::arg("b_scales"), nb::arg("out"), nb::arg("masked_m"), nb::arg("expected_m"), nb::arg("stream") = 0,
             "Grouped GEMM over (num_groups, m_max, k); only the first masked_m[g] rows of each group are computed.");
  module.def("wgrad_gemm_fp8_fp8_fp32_nt", &wgrad_dense, nb::arg("a"), nb::arg("a_scales"), nb::arg("b"),
             nb::arg("b_scales"), nb::arg("out"), nb::arg("stream") = 0,
             "out (m, n) float32 += A (m, k) * B (n, k)^T, both with 1x128 fp32 scales (weight gradients).");
  module.def("k_grouped_wgrad_gemm_fp8_fp8_fp32_nt", &wgrad_k_grouped, nb::arg("a"), nb::arg("a_scales"), nb::arg("b"),
             nb::arg("b_scales"), nb::arg("out"), nb::arg("batch_sizes"), nb::arg("stream") = 0,
             "out[g] (m, n) float32 += A_g (m, k_g) * B_g (n, k_g)^T over flat batches, k_g = batch_sizes[g].");
  module.def(
      "per_token_cast_to_fp8", [](const Input& x) { return cast_to_fp8(x, /*per_block=*/false); }, nb::arg("x"),
      "x (m, k) float32 or bf16 bits -> (q (m, k) uint8 e4m3 bits, scales (m, ceil(k/128)) float32).");
  module.def(
      "per_block_cast_to_fp8", [](const Input& x) { return cast_to_fp8(x, /*per_block=*/true); }, nb::arg("x"),
      "x (m, k) float32 or bf16 bits -> (q (m, k) uint8 e4m3 bits, scales (ceil(m/128), ceil(k/128)) float32).");
  module.def(
      "get_tma_aligned_size",
      [](int64_t mn, int64_t element_size) { return value_or_throw(gemm::get_tma_aligned_size(mn, element_size)); },
      nb::arg("mn"), nb::arg("element_size"));
  module.def("get_m_alignment_for_contiguous_layout", &gemm::get_m_alignment_for_contiguous_layout);
  module.def(
      "set_num_sms", [](int num_sms) { throw_if_error(gemm::set_num_sms(num_sms)); }, nb::arg("num_sms"));
  module.def("get_num_sms", &gemm::get_num_sms);
  module.def(
      "heuristic_choice",
      [](std::string_view kind, int64_t rows, int64_t n, int64_t k, int64_t groups, int num_sms) {
        return value_or_throw(gemm::cuda_kernel_choice(kind, rows, n, k, groups, num_sms));
      },
      nb::arg("kind"), nb::arg("rows"), nb::arg("n"), nb::arg("k"), nb::arg("groups"), nb::arg("num_sms"),
      "The CUDA backend's heuristic kernel choice, '<tile configuration> <raster>:<swizzle>' (no GPU needed).");
  module.def(
      "e4m3_to_float32", [](const Bytes& codes) { return convert<float>(codes, gemm::e4m3_to_float); },
      nb::arg("codes"), "float32 values of e4m3fn bit patterns (uint8).");
  module.def(
      "float32_to_e4m3", [](const Floats& values) { return convert<uint8_t>(values, gemm::float_to_e4m3); },
      nb::arg("values"), "e4m3fn bit patterns (uint8) of float32 values: nearest even, no saturation.");
  module.def(
      "bf16_to_float32", [](const Halves& bits) { return convert<float>(bits, gemm::bf16_to_float); },
      nb::arg("bits"), "float32 values of bfloat16 bit patterns (uint16).");
  module.def(
      "float32_to_bf16", [](const Floats& values) { return convert<uint16_t>(values, gemm::float_to_bf16); },
      nb::arg("values"), "bfloat16 bit patterns (uint16) of float32 values: nearest even.");
}

}  // namespace ff::python
