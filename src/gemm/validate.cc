#include "validate.h"

#include <fmt/format.h>

#include <array>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "ff/common/assert.h"

namespace ff::gemm::internal {

namespace {

std::string where(const TensorView& view) {
  return view.device == Device::kCpu ? "cpu" : fmt::format("{}:{}", device_name(view.device), view.device_index);
}

// name: how the caller spells the argument ("a.scales"); dims: the meaning of each dimension ("(m, k)").
Status check_view(const TensorView& view, std::string_view name, DType dtype, std::string_view dims) {
  if (view.ndim < 1 || view.ndim > kMaxDims) {
    return invalid_argument("{} has {} dimensions; expected {}", name, view.ndim, dims);
  }
  if (view.dtype != dtype) {
    return invalid_argument("{} has dtype {}; expected {} {}", name, dtype_name(view.dtype), dtype_name(dtype), dims);
  }
  for (int d = 0; d < view.ndim; ++d) {
    if (view.size(d) < 0) return invalid_argument("{} has a negative extent: shape {}", name, view.shape_string());
  }
  if (view.data == nullptr && view.numel() > 0) {
    return invalid_argument("{} has shape {} but no data (null pointer)", name, view.shape_string());
  }
  return Status::ok();
}

Status check_ndim(const TensorView& view, std::string_view name, int ndim, std::string_view dims) {
  if (view.ndim != ndim) {
    return invalid_argument("{} has shape {} ({}-D); expected {}-D {}", name, view.shape_string(), view.ndim, ndim,
                            dims);
  }
  return Status::ok();
}

// Checks the exact shape; `formula` explains where the expected extents come from.
Status check_shape(const TensorView& view, std::string_view name, std::vector<int64_t> expected, std::string_view dims,
                   std::string_view formula) {
  TensorView expected_view;
  expected_view.ndim = static_cast<int>(expected.size());
  for (size_t d = 0; d < expected.size(); ++d) expected_view.shape[d] = expected[d];
  bool same = view.ndim == expected_view.ndim;
  for (int d = 0; same && d < view.ndim; ++d) same = view.size(d) == expected_view.size(d);
  if (!same) {
    return invalid_argument("{} has shape {}; expected {} = {} for {}", name, view.shape_string(),
                            expected_view.shape_string(), dims, formula);
  }
  return Status::ok();
}

Status check_same_device(std::initializer_list<std::pair<std::string_view, const TensorView*>> views) {
  const auto& [first_name, first] = *views.begin();
  for (const auto& [name, view] : views) {
    if (view->device != first->device || view->device_index != first->device_index) {
      return invalid_argument("{} is on {} but {} is on {}; all tensors of one call must be on one device", name,
                              where(*view), first_name, where(*first));
    }
  }
  return Status::ok();
}

// Checks the four fp8 operand views; b is 2-D (dense) or 3-D (grouped). Fills shape.n, shape.k and, for 3-D b,
// shape.num_groups. The caller has set shape.m and checked a.data's rank.
Status check_b_and_scales(const ScaledTensor& a, const ScaledTensor& b, bool grouped, GemmShape& shape) {
  const int64_t k = a.data.size(a.data.ndim - 1);
  FF_RETURN_IF_ERROR(check_view(b.data, "b.data", DType::kFloat8E4M3, grouped ? "(num_groups, n, k)" : "(n, k)"));
  FF_RETURN_IF_ERROR(check_ndim(b.data, "b.data", grouped ? 3 : 2, grouped ? "(num_groups, n, k)" : "(n, k)"));
  const int64_t b_k = b.data.size(b.data.ndim - 1);
  if (b_k != k) {
    return invalid_argument("k mismatch: a.data has shape {} (k={}) but b.data has shape {} (k={})",
                            a.data.shape_string(), k, b.data.shape_string(), b_k);
  }
  shape.k = k;
  shape.n = b.data.size(b.data.ndim - 2);
  if (grouped) shape.num_groups = b.data.size(0);
  const int64_t k_blocks = ceil_div(k, kScaleBlock);
  const int64_t n_blocks = ceil_div(shape.n, kScaleBlock);
  const std::string sizes = fmt::format("m={}, n={}, k={}", shape.m, shape.n, shape.k);

  FF_RETURN_IF_ERROR(check_view(a.scales, "a.scales", DType::kFloat32, "per-1x128 scales"));
  if (a.data.ndim == 3) {
    FF_RETURN_IF_ERROR(check_shape(a.scales, "a.scales", {a.data.size(0), shape.m, k_blocks},
                                   "(num_groups, m_max, ceil(k/128))", sizes));
  } else {
    FF_RETURN_IF_ERROR(check_shape(a.scales, "a.scales", {shape.m, k_blocks}, "(m, ceil(k/128))", sizes));
  }
  FF_RETURN_IF_ERROR(check_view(b.scales, "b.scales", DType::kFloat32, "per-128x128 scales"));
  if (grouped) {
    FF_RETURN_IF_ERROR(check_shape(b.scales, "b.scales", {shape.num_groups, n_blocks, k_blocks},
                                   "(num_groups, ceil(n/128), ceil(k/128))", sizes));
  } else {
    FF_RETURN_IF_ERROR(check_shape(b.scales, "b.scales", {n_blocks, k_blocks}, "(ceil(n/128), ceil(k/128))", sizes));
  }
  return Status::ok();
}

// The output of a two-operand GEMM, (m, n) of `dtype`, and one device for all five views; sets shape.device.
Status check_out_and_device(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, DType dtype,
                            GemmShape& shape) {
  FF_RETURN_IF_ERROR(check_view(out, "out", dtype, "(m, n)"));
  FF_RETURN_IF_ERROR(check_shape(out, "out", {shape.m, shape.n}, "(m, n)",
                                 fmt::format("m={} (a.data) and n={} (b.data)", shape.m, shape.n)));
  FF_RETURN_IF_ERROR(check_same_device(
      {{"a.data", &a.data}, {"a.scales", &a.scales}, {"b.data", &b.data}, {"b.scales", &b.scales}, {"out", &out}}));
  shape.device = a.data.device;
  return Status::ok();
}

}  // namespace

TensorView select_group(const TensorView& view, int64_t index) {
  FF_ASSERT_EQ(view.ndim, 3);
  FF_ASSERT(index >= 0 && index < view.size(0), "group {} of {}", index, view.size(0));
  TensorView slice;
  slice.data = static_cast<char*>(view.data) + index * view.stride(0) * dtype_size_bytes(view.dtype);
  slice.dtype = view.dtype;
  slice.ndim = 2;
  slice.shape = {view.shape[1], view.shape[2], 0};
  slice.strides = {view.strides[1], view.strides[2], 0};
  slice.device = view.device;
  slice.device_index = view.device_index;
  return slice;
}

Result<GemmShape> validate_dense(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out) {
  GemmShape shape;
  FF_RETURN_IF_ERROR(check_view(a.data, "a.data", DType::kFloat8E4M3, "(m, k)"));
  FF_RETURN_IF_ERROR(check_ndim(a.data, "a.data", 2, "(m, k)"));
  shape.m = a.data.size(0);
  FF_RETURN_IF_ERROR(check_b_and_scales(a, b, /*grouped=*/false, shape));
  FF_RETURN_IF_ERROR(check_out_and_device(a, b, out, DType::kBFloat16, shape));
  return shape;
}

Result<GemmShape> validate_contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                      const TensorView& m_indices) {
  GemmShape shape;
  FF_RETURN_IF_ERROR(check_view(a.data, "a.data", DType::kFloat8E4M3, "(m_sum, k)"));
  FF_RETURN_IF_ERROR(check_ndim(a.data, "a.data", 2, "(m_sum, k)"));
  shape.m = a.data.size(0);
  FF_RETURN_IF_ERROR(check_b_and_scales(a, b, /*grouped=*/true, shape));
  FF_RETURN_IF_ERROR(check_view(out, "out", DType::kBFloat16, "(m_sum, n)"));
  FF_RETURN_IF_ERROR(check_shape(out, "out", {shape.m, shape.n}, "(m_sum, n)",
                                 fmt::format("m_sum={} (a.data) and n={} (b.data)", shape.m, shape.n)));
  FF_RETURN_IF_ERROR(check_view(m_indices, "m_indices", DType::kInt32, "(m_sum)"));
  FF_RETURN_IF_ERROR(check_shape(m_indices, "m_indices", {shape.m}, "(m_sum)", "the rows of a.data"));
  FF_RETURN_IF_ERROR(check_same_device({{"a.data", &a.data},
                                        {"a.scales", &a.scales},
                                        {"b.data", &b.data},
                                        {"b.scales", &b.scales},
                                        {"out", &out},
                                        {"m_indices", &m_indices}}));
  shape.device = a.data.device;
  if (shape.device != Device::kCpu) return shape;  // device memory: the kernel trusts the layout (docs/gemm.md)

  // Every aligned block of 128 rows must belong to one group: the GPU kernel reads the group of a whole M tile
  // from its first valid row, so a second group inside a tile would silently use the wrong weights.
  const int64_t alignment = kMAlignmentForContiguousLayout;
  for (int64_t block_begin = 0; block_begin < shape.m; block_begin += alignment) {
    int64_t block_group = -1;
    int64_t block_group_row = -1;
    for (int64_t row = block_begin; row < std::min(shape.m, block_begin + alignment); ++row) {
      const int32_t group = *m_indices.at<const int32_t>(row);
      if (group < -1 || group >= shape.num_groups) {
        return invalid_argument(
            "m_indices[{}] = {} is out of range: expected -1 (padding) or a group in [0, {}) (b.data has {} groups)",
            row, group, shape.num_groups, shape.num_groups);
      }
      if (group < 0) continue;
      if (block_group < 0) {
        block_group = group;
        block_group_row = row;
      } else if (group != block_group) {
        return invalid_argument(
            "m_indices[{}] = {} but m_indices[{}] = {} in the same aligned block of rows [{}, {}): each group's "
            "segment must start at a multiple of get_m_alignment_for_contiguous_layout() = {} (pad segments with "
            "rows of index -1)",
            row, group, block_group_row, block_group, block_begin, block_begin + alignment, alignment);
      }
    }
  }
  return shape;
}

Result<GemmShape> validate_masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                  const TensorView& masked_m, int64_t expected_m) {
  GemmShape shape;
  FF_RETURN_IF_ERROR(check_view(a.data, "a.data", DType::kFloat8E4M3, "(num_groups, m_max, k)"));
  FF_RETURN_IF_ERROR(check_ndim(a.data, "a.data", 3, "(num_groups, m_max, k)"));
  shape.m = a.data.size(1);
  FF_RETURN_IF_ERROR(check_b_and_scales(a, b, /*grouped=*/true, shape));
  if (a.data.size(0) != shape.num_groups) {
    return invalid_argument("a.data has shape {} ({} groups) but b.data has shape {} ({} groups)",
                            a.data.shape_string(), a.data.size(0), b.data.shape_string(), shape.num_groups);
  }
  FF_RETURN_IF_ERROR(check_view(out, "out", DType::kBFloat16, "(num_groups, m_max, n)"));
  FF_RETURN_IF_ERROR(check_shape(out, "out", {shape.num_groups, shape.m, shape.n}, "(num_groups, m_max, n)",
                                 fmt::format("num_groups={}, m_max={}, n={}", shape.num_groups, shape.m, shape.n)));
  FF_RETURN_IF_ERROR(check_view(masked_m, "masked_m", DType::kInt32, "(num_groups)"));
  FF_RETURN_IF_ERROR(check_shape(masked_m, "masked_m", {shape.num_groups}, "(num_groups)", "the groups of b.data"));
  if (expected_m < 0)
    return invalid_argument("expected_m={} must be >= 0 (a hint of the typical masked_m)", expected_m);
  FF_RETURN_IF_ERROR(check_same_device({{"a.data", &a.data},
                                        {"a.scales", &a.scales},
                                        {"b.data", &b.data},
                                        {"b.scales", &b.scales},
                                        {"out", &out},
                                        {"masked_m", &masked_m}}));
  shape.device = a.data.device;
  if (shape.device != Device::kCpu) return shape;
  for (int64_t group = 0; group < shape.num_groups; ++group) {
    const int32_t rows = *masked_m.at<const int32_t>(group);
    if (rows < 0 || rows > shape.m) {
      return invalid_argument("masked_m[{}] = {} is out of range [0, {}] (m_max = a.data.shape[1])", group, rows,
                              shape.m);
    }
  }
  return shape;
}

namespace {

Status check_contiguous(const TensorView& view, std::string_view name) {
  // A dimension of extent 0 or 1 never steps, so its stride is irrelevant.
  int64_t expected = 1;
  for (int d = view.ndim - 1; d >= 0; --d) {
    if (view.size(d) > 1 && view.stride(d) != expected) {
      std::string strides = "[";
      for (int i = 0; i < view.ndim; ++i) strides += fmt::format("{}{}", i ? ", " : "", view.stride(i));
      return invalid_argument(
          "{} has shape {} and strides {} (elements); the GPU kernels need it contiguous (row-major): call "
          ".contiguous() first",
          name, view.shape_string(), strides + "]");
    }
    expected *= view.size(d);
  }
  return Status::ok();
}

Status check_aligned(const TensorView& view, std::string_view name) {
  const auto address = reinterpret_cast<uintptr_t>(view.data);
  if (view.numel() > 0 && address % 16 != 0) {
    return invalid_argument(
        "{} starts at address {:#x}, which is not 16-byte aligned as TMA requires (offset {} "
        "bytes into an aligned allocation); pass a tensor that starts on a 16-byte boundary",
        name, address, address % 16);
  }
  return Status::ok();
}

}  // namespace

Status validate_cuda_layout(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                            const TensorView* indices, const GemmShape& shape) {
  if (shape.k % kScaleBlock != 0) {
    return invalid_argument(
        "k={} is not a multiple of 128: the GPU kernels need whole 128-wide K blocks (pad k with zeros to {}, or "
        "use CPU tensors, whose backend handles any k)",
        shape.k, ceil_div(shape.k, kScaleBlock) * kScaleBlock);
  }
  if (shape.n % 8 != 0) {
    return invalid_argument(
        "n={} is not a multiple of 8: the GPU kernels store output rows by TMA, which needs 16-byte (8 x bf16) "
        "row strides (pad n to {})",
        shape.n, ceil_div(shape.n, 8) * 8);
  }
  constexpr int64_t kMaxExtent = (int64_t{1} << 31) - 1;
  if (shape.m > kMaxExtent || shape.n > kMaxExtent || shape.k > kMaxExtent || shape.num_groups > kMaxExtent) {
    return invalid_argument("m={}, n={}, k={}, num_groups={}: the GPU kernels take each below 2^31", shape.m, shape.n,
                            shape.k, shape.num_groups);
  }
  FF_RETURN_IF_ERROR(check_contiguous(a.data, "a.data"));
  FF_RETURN_IF_ERROR(check_contiguous(b.data, "b.data"));
  FF_RETURN_IF_ERROR(check_contiguous(b.scales, "b.scales"));
  FF_RETURN_IF_ERROR(check_contiguous(out, "out"));
  if (indices != nullptr) {
    FF_RETURN_IF_ERROR(check_contiguous(*indices, a.data.ndim == 3 ? "masked_m" : "m_indices"));
  }
  FF_RETURN_IF_ERROR(check_aligned(a.data, "a.data"));
  FF_RETURN_IF_ERROR(check_aligned(b.data, "b.data"));
  FF_RETURN_IF_ERROR(check_aligned(out, "out"));
  const auto scales_address = reinterpret_cast<uintptr_t>(a.scales.data);
  if (a.scales.numel() > 0 && scales_address % 4 != 0) {
    return invalid_argument("a.scales starts at address {:#x}, which is not 4-byte aligned", scales_address);
  }
  return Status::ok();
}

Result<GemmShape> validate_wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out) {
  GemmShape shape;
  FF_RETURN_IF_ERROR(check_view(a.data, "a.data", DType::kFloat8E4M3, "(m, k)"));
  FF_RETURN_IF_ERROR(check_ndim(a.data, "a.data", 2, "(m, k)"));
  FF_RETURN_IF_ERROR(check_view(b.data, "b.data", DType::kFloat8E4M3, "(n, k)"));
  FF_RETURN_IF_ERROR(check_ndim(b.data, "b.data", 2, "(n, k)"));
  shape.m = a.data.size(0);
  shape.n = b.data.size(0);
  shape.k = a.data.size(1);
  if (b.data.size(1) != shape.k) {
    return invalid_argument("k mismatch: a.data has shape {} (k={}) but b.data has shape {} (k={})",
                            a.data.shape_string(), shape.k, b.data.shape_string(), b.data.size(1));
  }
  const int64_t k_blocks = ceil_div(shape.k, kScaleBlock);
  const std::string sizes = fmt::format("m={}, n={}, k={}", shape.m, shape.n, shape.k);
  FF_RETURN_IF_ERROR(check_view(a.scales, "a.scales", DType::kFloat32, "per-1x128 scales"));
  FF_RETURN_IF_ERROR(check_shape(a.scales, "a.scales", {shape.m, k_blocks}, "(m, ceil(k/128))", sizes));
  FF_RETURN_IF_ERROR(check_view(b.scales, "b.scales", DType::kFloat32, "per-1x128 scales"));
  FF_RETURN_IF_ERROR(check_shape(b.scales, "b.scales", {shape.n, k_blocks},
                                 "(n, ceil(k/128)): the wgrad GEMM scales b per row and 128-wide K block, not per "
                                 "128x128 block",
                                 sizes));
  FF_RETURN_IF_ERROR(check_out_and_device(a, b, out, DType::kFloat32, shape));
  return shape;
}

Status validate_wgrad_cuda_layout(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                  const GemmShape& shape) {
  if (shape.k % 16 != 0) {
    return invalid_argument(
        "k={} is not a multiple of 16: the GPU kernel loads the fp8 rows by TMA, which needs 16-byte row strides "
        "(pad k with zeros to {}, or use CPU tensors)",
        shape.k, ceil_div(shape.k, 16) * 16);
  }
  if (shape.n % 4 != 0) {
    return invalid_argument(
        "n={} is not a multiple of 4: the GPU kernel reads and writes the float32 output rows by TMA, which needs "
        "16-byte row strides (pad n to {})",
        shape.n, ceil_div(shape.n, 4) * 4);
  }
  constexpr int64_t kMaxExtent = (int64_t{1} << 31) - 1;
  if (shape.m > kMaxExtent || shape.n > kMaxExtent || shape.k > kMaxExtent) {
    return invalid_argument("m={}, n={}, k={}: the GPU kernel takes each below 2^31", shape.m, shape.n, shape.k);
  }
  FF_RETURN_IF_ERROR(check_contiguous(a.data, "a.data"));
  FF_RETURN_IF_ERROR(check_contiguous(b.data, "b.data"));
  FF_RETURN_IF_ERROR(check_contiguous(out, "out"));
  FF_RETURN_IF_ERROR(check_aligned(a.data, "a.data"));
  FF_RETURN_IF_ERROR(check_aligned(b.data, "b.data"));
  FF_RETURN_IF_ERROR(check_aligned(out, "out"));
  for (const auto& [view, name] : {std::pair{&a.scales, "a.scales"}, std::pair{&b.scales, "b.scales"}}) {
    const auto address = reinterpret_cast<uintptr_t>(view->data);
    if (view->numel() > 0 && address % 4 != 0) {
      return invalid_argument("{} starts at address {:#x}, which is not 4-byte aligned", name, address);
    }
  }
  return Status::ok();
}

namespace {

// A view of `rows` x `cols` elements of `base`'s memory starting `offset` elements (of base's stride 1) in.
TensorView sub_view(const TensorView& base, int64_t offset, int64_t rows, int64_t cols, int64_t row_stride,
                    int64_t col_stride) {
  TensorView view;
  view.data = static_cast<char*>(base.data) + offset * dtype_size_bytes(base.dtype);
  view.dtype = base.dtype;
  view.ndim = 2;
  view.shape = {rows, cols, 0};
  view.strides = {row_stride, col_stride, 0};
  view.device = base.device;
  view.device_index = base.device_index;
  return view;
}

}  // namespace

Result<std::vector<WgradBatch>> split_k_grouped_wgrad(const ScaledTensor& a, const ScaledTensor& b,
                                                      const TensorView& out, std::span<const int64_t> batch_sizes) {
  FF_RETURN_IF_ERROR(check_view(out, "out", DType::kFloat32, "(num_batches, m, n)"));
  FF_RETURN_IF_ERROR(check_ndim(out, "out", 3, "(num_batches, m, n)"));
  const auto num_batches = static_cast<int64_t>(batch_sizes.size());
  if (out.size(0) != num_batches) {
    return invalid_argument("out has shape {} ({} batches) but batch_sizes has {} entries", out.shape_string(),
                            out.size(0), num_batches);
  }
  const int64_t m = out.size(1);
  const int64_t n = out.size(2);
  int64_t k_sum = 0;
  int64_t k_blocks_sum = 0;
  for (int64_t g = 0; g < num_batches; ++g) {
    const int64_t k = batch_sizes[static_cast<size_t>(g)];
    if (k < 0) return invalid_argument("batch_sizes[{}] = {} is negative; expected a k >= 0", g, k);
    k_sum += k;
    k_blocks_sum += ceil_div(k, kScaleBlock);
  }
  const std::string sizes = fmt::format("m={}, n={} (out) and sum(batch_sizes)={}", m, n, k_sum);
  for (const auto& [operand, name, rows] : {std::tuple{&a, "a", m}, std::tuple{&b, "b", n}}) {
    const std::string data_name = fmt::format("{}.data", name);
    const std::string scales_name = fmt::format("{}.scales", name);
    const std::string flat = fmt::format("(sum of {} * k over the batches)", name == std::string("a") ? "m" : "n");
    FF_RETURN_IF_ERROR(check_view(operand->data, data_name, DType::kFloat8E4M3, flat));
    FF_RETURN_IF_ERROR(check_shape(operand->data, data_name, {rows * k_sum}, flat, sizes));
    if (operand->data.numel() > 1 && operand->data.stride(0) != 1) {
      return invalid_argument("{} has stride {}; the flat batches must be contiguous", data_name,
                              operand->data.stride(0));
    }
    FF_RETURN_IF_ERROR(check_view(operand->scales, scales_name, DType::kFloat32, "per-1x128 scales"));
    FF_RETURN_IF_ERROR(check_shape(
        operand->scales, scales_name, {k_blocks_sum, rows},
        fmt::format("(sum of ceil(k/128) over the batches, {})", name == std::string("a") ? "m" : "n"), sizes));
  }
  FF_RETURN_IF_ERROR(check_same_device(
      {{"a.data", &a.data}, {"a.scales", &a.scales}, {"b.data", &b.data}, {"b.scales", &b.scales}, {"out", &out}}));

  std::vector<WgradBatch> batches;
  batches.reserve(static_cast<size_t>(num_batches));
  int64_t k_offset = 0;
  int64_t block_offset = 0;
  for (int64_t g = 0; g < num_batches; ++g) {
    const int64_t k = batch_sizes[static_cast<size_t>(g)];
    const int64_t k_blocks = ceil_div(k, kScaleBlock);
    WgradBatch batch;
    batch.k = k;
    batch.a.data = sub_view(a.data, m * k_offset, m, k, k, 1);
    batch.b.data = sub_view(b.data, n * k_offset, n, k, k, 1);
    // Rows [block_offset, block_offset + k_blocks) of the (blocks, rows) scales, seen as (rows, k_blocks).
    batch.a.scales =
        sub_view(a.scales, block_offset * a.scales.stride(0), m, k_blocks, a.scales.stride(1), a.scales.stride(0));
    batch.b.scales =
        sub_view(b.scales, block_offset * b.scales.stride(0), n, k_blocks, b.scales.stride(1), b.scales.stride(0));
    batch.out = select_group(out, g);
    batches.push_back(batch);
    k_offset += k;
    block_offset += k_blocks;
  }
  return batches;
}

}  // namespace ff::gemm::internal
