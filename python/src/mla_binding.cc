// fireflyer._C.mla: the MLA decode API over numpy arrays (CPU) and over CUDA tensors (DLPack, e.g.
// torch). The Python wrapper (fireflyer/mla.py) turns CPU bf16 inputs (ml_dtypes bfloat16,
// torch.bfloat16) into uint16 bit patterns and names their dtype, and allocates the outputs of a GPU
// call with torch; this layer describes each array as an ff::mla::TensorView (strides kept, so the
// C++ checks see non-contiguous inputs) and converts a Status to ValueError.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "binding.h"
#include "ff/mla/mla.h"

namespace ff::python {

namespace {

using AnyArray = nb::ndarray<nb::device::cpu>;
using DeviceArray = nb::ndarray<>;  // any device; the library checks that every view is on the GPU

// Moves values into a numpy array of the given shape that owns them (freed with the array).
template <typename T>
nb::object to_numpy(std::vector<T> values, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<T>*>(pointer); });
  return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.begin(), owner));
}

// The view of `array` with dtype `dtype` if its element type is `storage`; ValueError otherwise.
mla::TensorView view_of(const AnyArray& array, const char* name, mla::DType dtype, nb::dlpack::dtype storage,
                        const char* expected) {
  if (array.dtype() != storage)
    throw nb::value_error((std::string(name) + " has the wrong dtype; expected " + expected).c_str());
  if (array.ndim() > static_cast<size_t>(mla::TensorView::kMaxDims)) {
    throw nb::value_error(
        (std::string(name) + " has " + std::to_string(array.ndim()) + " dimensions; at most 4").c_str());
  }
  mla::TensorView view;
  view.data = array.data();
  view.dtype = dtype;
  view.ndim = static_cast<int>(array.ndim());
  for (int dim = 0; dim < view.ndim; ++dim) {
    view.shape[dim] = static_cast<int64_t>(array.shape(dim));
    view.strides[dim] = array.stride(dim);
  }
  return view;
}

mla::TensorView int32_view(const AnyArray& array, const char* name) {
  return view_of(array, name, mla::DType::kInt32, nb::dtype<int32_t>(), "int32");
}

mla::DType half_dtype(const std::string& name) {
  if (name == "bfloat16") return mla::DType::kBFloat16;
  if (name == "float16") return mla::DType::kFloat16;
  throw nb::value_error(("dtype '" + name + "' is not supported; expected 'bfloat16' or 'float16'").c_str());
}

nb::tuple get_mla_metadata(const AnyArray& cache_seqlens, int64_t num_q_tokens_per_head_k, int64_t num_heads_k,
                           int64_t num_sms) {
  const mla::TensorView view = int32_view(cache_seqlens, "cache_seqlens");
  if (view.ndim != 1)
    throw nb::value_error(("cache_seqlens has shape " + view.shape_string() + "; expected (b,)").c_str());
  std::vector<int32_t> seqlens(view.shape[0]);
  for (int64_t i = 0; i < view.shape[0]; ++i) seqlens[i] = view.data_as<const int32_t>()[i * view.strides[0]];
  mla::MlaMetadata metadata =
      value_or_throw(mla::get_mla_metadata(seqlens, num_q_tokens_per_head_k, num_heads_k, num_sms));
  const auto parts = static_cast<size_t>(metadata.num_sm_parts);
  return nb::make_tuple(to_numpy(std::move(metadata.tile_scheduler_metadata), {parts, size_t{8}}),
                        to_numpy(std::move(metadata.num_splits), {seqlens.size() + 1}));
}

nb::tuple flash_mla_with_kvcache(const AnyArray& q, const std::string& dtype_name, const AnyArray& k_cache,
                                 const AnyArray& block_table, const AnyArray& cache_seqlens, int64_t head_dim_v,
                                 const AnyArray& tile_scheduler_metadata, const AnyArray& num_splits,
                                 std::optional<float> softmax_scale, bool causal, bool is_fp8_kvcache,
                                 int num_threads) {
  const mla::DType dtype = half_dtype(dtype_name);
  mla::FlashMlaArgs args;
  args.q = view_of(q, "q", dtype, nb::dtype<uint16_t>(), "bfloat16 or float16");
  args.k_cache = is_fp8_kvcache ? view_of(k_cache, "k_cache", mla::DType::kUInt8, nb::dtype<uint8_t>(),
                                          "uint8 (the 656-byte FP8 layout) when is_fp8_kvcache=True")
                                : view_of(k_cache, "k_cache", dtype, nb::dtype<uint16_t>(), "the dtype of q");
  args.block_table = int32_view(block_table, "block_table");
  args.cache_seqlens = int32_view(cache_seqlens, "cache_seqlens");
  args.head_dim_v = head_dim_v;
  args.tile_scheduler_metadata = int32_view(tile_scheduler_metadata, "tile_scheduler_metadata");
  args.num_splits = int32_view(num_splits, "num_splits");
  args.softmax_scale = softmax_scale;
  args.causal = causal;
  args.is_fp8_kvcache = is_fp8_kvcache;
  args.num_threads = num_threads;
  // Outputs are sized from q; a q of the wrong rank is reported by the library, not here.
  const size_t b = q.ndim() == 4 ? q.shape(0) : 0, s_q = q.ndim() == 4 ? q.shape(1) : 0;
  const size_t h_q = q.ndim() == 4 ? q.shape(2) : 0;
  std::vector<uint16_t> out(b * s_q * h_q * mla::kHeadDimV);
  std::vector<float> lse(b * h_q * s_q);
  args.out = mla::TensorView::contiguous(
      out.data(), dtype,
      {static_cast<int64_t>(b), static_cast<int64_t>(s_q), static_cast<int64_t>(h_q), mla::kHeadDimV});
  args.softmax_lse =
      mla::TensorView::contiguous(lse.data(), mla::DType::kFloat32,
                                  {static_cast<int64_t>(b), static_cast<int64_t>(h_q), static_cast<int64_t>(s_q)});
  Status status;
  {
    // The computation touches no Python object; other Python threads may run meanwhile.
    nb::gil_scoped_release release;
    status = mla::flash_mla_with_kvcache(args);
  }
  throw_if_error(status);
  return nb::make_tuple(to_numpy(std::move(out), {b, s_q, h_q, size_t{mla::kHeadDimV}}),
                        to_numpy(std::move(lse), {b, h_q, s_q}));
}

// The view of a DLPack array of any device, its dtype read from the array itself.
mla::TensorView device_view_of(const DeviceArray& array, const char* name) {
  const nb::dlpack::dtype dtype = array.dtype();
  const auto code = static_cast<nb::dlpack::dtype_code>(dtype.code);
  mla::TensorView view;
  if (dtype.lanes != 1) throw nb::value_error((std::string(name) + " has a vector dtype").c_str());
  if (code == nb::dlpack::dtype_code::Bfloat && dtype.bits == 16) {
    view.dtype = mla::DType::kBFloat16;
  } else if (code == nb::dlpack::dtype_code::Float && dtype.bits == 16) {
    view.dtype = mla::DType::kFloat16;
  } else if (code == nb::dlpack::dtype_code::Float && dtype.bits == 32) {
    view.dtype = mla::DType::kFloat32;
  } else if (code == nb::dlpack::dtype_code::Int && dtype.bits == 32) {
    view.dtype = mla::DType::kInt32;
  } else if (code == nb::dlpack::dtype_code::UInt && dtype.bits == 8) {
    view.dtype = mla::DType::kUInt8;
  } else {
    throw nb::value_error((std::string(name) + " has DLPack dtype (code " + std::to_string(dtype.code) + ", " +
                           std::to_string(dtype.bits) + " bits), which mla does not take")
                              .c_str());
  }
  if (array.ndim() > static_cast<size_t>(mla::TensorView::kMaxDims)) {
    throw nb::value_error(
        (std::string(name) + " has " + std::to_string(array.ndim()) + " dimensions; at most 4").c_str());
  }
  view.data = array.data();
  view.ndim = static_cast<int>(array.ndim());
  for (int dim = 0; dim < view.ndim; ++dim) {
    view.shape[dim] = static_cast<int64_t>(array.shape(dim));
    view.strides[dim] = array.stride(dim);
  }
  view.device = array.device_type() == nb::device::cuda::value ? mla::Device::kCuda : mla::Device::kCpu;
  view.device_index = array.device_id();
  return view;
}

// Backend::kCuda: every array on one GPU; out, softmax_lse and workspace allocated by the caller;
// enqueued on `stream` (a cudaStream_t as an integer) and not waited for.
void flash_mla_with_kvcache_cuda(const DeviceArray& q, const DeviceArray& k_cache, const DeviceArray& block_table,
                                 const DeviceArray& cache_seqlens, int64_t head_dim_v,
                                 const DeviceArray& tile_scheduler_metadata, const DeviceArray& num_splits,
                                 std::optional<float> softmax_scale, bool causal, bool is_fp8_kvcache,
                                 const DeviceArray& out, const DeviceArray& softmax_lse, const DeviceArray& workspace,
                                 uintptr_t stream, bool check_values) {
  mla::FlashMlaArgs args;
  args.q = device_view_of(q, "q");
  args.k_cache = device_view_of(k_cache, "k_cache");
  args.block_table = device_view_of(block_table, "block_table");
  args.cache_seqlens = device_view_of(cache_seqlens, "cache_seqlens");
  args.head_dim_v = head_dim_v;
  args.tile_scheduler_metadata = device_view_of(tile_scheduler_metadata, "tile_scheduler_metadata");
  args.num_splits = device_view_of(num_splits, "num_splits");
  args.softmax_scale = softmax_scale;
  args.causal = causal;
  args.is_fp8_kvcache = is_fp8_kvcache;
  args.out = device_view_of(out, "out");
  args.softmax_lse = device_view_of(softmax_lse, "softmax_lse");
  args.workspace = device_view_of(workspace, "workspace");
  args.stream = reinterpret_cast<void*>(stream);
  args.check_values = check_values;
  Status status;
  {
    nb::gil_scoped_release release;
    status = mla::flash_mla_with_kvcache(args, mla::Backend::kCuda);
  }
  throw_if_error(status);
}

// get_mla_metadata on the GPU into caller-allocated CUDA arrays, enqueued on `stream`, not waited for.
void get_mla_metadata_cuda(const DeviceArray& cache_seqlens, int64_t num_q_tokens_per_head_k, int64_t num_heads_k,
                           int64_t num_sms, const DeviceArray& tile_scheduler_metadata, const DeviceArray& num_splits,
                           uintptr_t stream) {
  mla::MlaMetadataArgs args;
  args.cache_seqlens = device_view_of(cache_seqlens, "cache_seqlens");
  args.num_q_tokens_per_head_k = num_q_tokens_per_head_k;
  args.num_heads_k = num_heads_k;
  args.num_sms = num_sms;
  args.tile_scheduler_metadata = device_view_of(tile_scheduler_metadata, "tile_scheduler_metadata");
  args.num_splits = device_view_of(num_splits, "num_splits");
  args.stream = reinterpret_cast<void*>(stream);
  throw_if_error(mla::get_mla_metadata(args, mla::Backend::kCuda));
}

nb::object quantize_kvcache_fp8(const AnyArray& k_cache) {
  const mla::TensorView source = view_of(k_cache, "k_cache", mla::DType::kBFloat16, nb::dtype<uint16_t>(), "bfloat16");
  const size_t blocks = source.ndim == 4 ? static_cast<size_t>(source.shape[0]) : 0;
  const size_t heads = source.ndim == 4 ? static_cast<size_t>(source.shape[2]) : 0;
  std::vector<uint8_t> out(blocks * mla::kPageBlockSize * heads * mla::kFp8BytesPerToken);
  const mla::TensorView target = mla::TensorView::contiguous(
      out.data(), mla::DType::kUInt8,
      {static_cast<int64_t>(blocks), mla::kPageBlockSize, static_cast<int64_t>(heads), mla::kFp8BytesPerToken});
  throw_if_error(mla::quantize_kvcache_fp8(source, target));
  return to_numpy(std::move(out), {blocks, size_t{mla::kPageBlockSize}, heads, size_t{mla::kFp8BytesPerToken}});
}

}  // namespace

void bind_mla(nb::module_& module) {
  module.attr("PAGE_BLOCK_SIZE") = mla::kPageBlockSize;
  module.attr("HEAD_DIM_QK") = mla::kHeadDimQk;
  module.attr("HEAD_DIM_V") = mla::kHeadDimV;
  module.attr("FP8_BYTES_PER_TOKEN") = mla::kFp8BytesPerToken;
  module.attr("DEFAULT_NUM_SMS") = mla::kDefaultNumSms;
#ifdef FF_MLA_HAVE_CUDA
  module.attr("HAS_CUDA") = true;
#else
  module.attr("HAS_CUDA") = false;
#endif
  module.def("workspace_bytes", &mla::flash_mla_workspace_bytes, nb::arg("batch_size"), nb::arg("s_q"), nb::arg("h_q"),
             nb::arg("h_kv"), nb::arg("num_sm_parts"), "Bytes of GPU workspace flash_mla_with_kvcache_cuda needs.");
  module.def("flash_mla_with_kvcache_cuda", &flash_mla_with_kvcache_cuda, nb::arg("q"), nb::arg("k_cache"),
             nb::arg("block_table"), nb::arg("cache_seqlens"), nb::arg("head_dim_v"),
             nb::arg("tile_scheduler_metadata"), nb::arg("num_splits"), nb::arg("softmax_scale").none(),
             nb::arg("causal"), nb::arg("is_fp8_kvcache"), nb::arg("out"), nb::arg("softmax_lse"), nb::arg("workspace"),
             nb::arg("stream"), nb::arg("check_values"),
             "sm_90a MLA decode on CUDA arrays, into out / softmax_lse, enqueued on `stream`.");
  module.def(
      "last_cuda_kernel", [] { return std::string(mla::last_cuda_kernel()); },
      "The kernel the last GPU call launched: 'wgmma_tma', 'wgmma', 'mma_sync', 'mma_sync_fp8_direct' ('' before "
      "any).");
  module.def(
      "num_sm_parts",
      [](int64_t rows, int64_t h_kv, int64_t num_sms) {
        const std::pair<const char*, int64_t> counts[] = {
            {"num_q_tokens_per_head_k (s_q * h_q / h_kv)", rows}, {"num_heads_k", h_kv}, {"num_sms", num_sms}};
        for (const auto& [name, value] : counts) {
          if (value < 1)
            throw nb::value_error((std::string(name) + " is " + std::to_string(value) + "; expected >= 1").c_str());
        }
        return mla::num_sm_parts_for(rows, h_kv, num_sms);
      },
      nb::arg("num_q_tokens_per_head_k"), nb::arg("num_heads_k"), nb::arg("num_sms"),
      "Rows of tile_scheduler_metadata for this shape.");
  module.def("get_mla_metadata_cuda", &get_mla_metadata_cuda, nb::arg("cache_seqlens"),
             nb::arg("num_q_tokens_per_head_k"), nb::arg("num_heads_k"), nb::arg("num_sms"),
             nb::arg("tile_scheduler_metadata"), nb::arg("num_splits"), nb::arg("stream"),
             "The split-KV schedule computed on the GPU into CUDA arrays, enqueued on `stream`.");
  module.def("get_mla_metadata", &get_mla_metadata, nb::arg("cache_seqlens"), nb::arg("num_q_tokens_per_head_k"),
             nb::arg("num_heads_k"), nb::arg("num_sms") = mla::kDefaultNumSms,
             "Split-KV schedule: (tile_scheduler_metadata int32 (num_sm_parts, 8), num_splits int32 (b + 1)).");
  module.def("flash_mla_with_kvcache", &flash_mla_with_kvcache, nb::arg("q"), nb::arg("dtype"), nb::arg("k_cache"),
             nb::arg("block_table"), nb::arg("cache_seqlens"), nb::arg("head_dim_v"),
             nb::arg("tile_scheduler_metadata"), nb::arg("num_splits"), nb::arg("softmax_scale").none(),
             nb::arg("causal"), nb::arg("is_fp8_kvcache"), nb::arg("num_threads"),
             "CPU MLA decode over uint16 bit patterns of `dtype`: (out uint16 (b, s_q, h_q, 512), lse float32 (b, h_q, "
             "s_q)).");
  module.def("quantize_kvcache_fp8", &quantize_kvcache_fp8, nb::arg("k_cache"),
             "bf16 bit patterns (num_blocks, 64, h_kv, 576) -> FP8 layout uint8 (num_blocks, 64, h_kv, 656).");
}

}  // namespace ff::python
