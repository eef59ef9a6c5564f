// Backend::kCuda of flash_mla_with_kvcache: host-side checks, workspace, and the launch of the sm_90a
// kernels (cuda/sm90_mla_decode.cu). Compiled in every build; without FF_MLA_HAVE_CUDA (no nvcc, or
// FF_CUDA_COMPONENTS leaves mla out) the backend reports that it was not built.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <utility>
#include <vector>

#include "cuda/decode_params.h"
#include "ff/mla/mla.h"
#include "validate.h"

#ifdef FF_MLA_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ff::mla {

int64_t flash_mla_workspace_bytes(int64_t batch_size, int64_t s_q, int64_t h_q, int64_t h_kv, int64_t num_sm_parts) {
  const int64_t rows = h_kv > 0 ? s_q * (h_q / h_kv) : 0;
  return cuda::workspace_bytes(batch_size, rows, h_kv, num_sm_parts);
}

#ifdef FF_MLA_HAVE_CUDA
namespace {
// The cuda::KernelKind of the last launch in this process (0: none yet).
std::atomic<int> last_kernel{0};
}  // namespace
#endif

std::string_view last_cuda_kernel() {
#ifdef FF_MLA_HAVE_CUDA
  const int kind = last_kernel.load(std::memory_order_relaxed);
  return kind == 0 ? std::string_view() : std::string_view(cuda::kernel_name(static_cast<cuda::KernelKind>(kind)));
#else
  return {};
#endif
}

namespace internal {

#ifndef FF_MLA_HAVE_CUDA

Status get_mla_metadata_cuda(const MlaMetadataArgs&, int32_t) {
  return failed_precondition(
      "the get_mla_metadata kernel is not built into this library (no nvcc at configure time, or FF_CUDA_COMPONENTS "
      "leaves out mla); use Backend::kCpu");
}

Status flash_mla_with_kvcache_cuda(const FlashMlaArgs&) {
  return failed_precondition(
      "the sm_90a flash_mla_with_kvcache kernel is not built into this library (no nvcc at configure time, or "
      "FF_CUDA_COMPONENTS leaves out mla); use Backend::kCpu");
}

#else

namespace {

Status cuda_error(cudaError_t error, const char* what) {
  return internal_error("{} failed: {} ({})", what, cudaGetErrorString(error), static_cast<int>(error));
}

// The elements a strided view spans (its highest offset + 1).
int64_t span_elements(const TensorView& view) {
  if (view.numel() == 0) return 0;
  int64_t last = 0;
  for (int dim = 0; dim < view.ndim; ++dim) last += (view.shape[dim] - 1) * view.strides[dim];
  return last + 1;
}

// A host copy of an int32 device view, same shape and strides over `storage`.
Result<TensorView> host_copy(const TensorView& view, std::vector<int32_t>& storage, cudaStream_t stream) {
  storage.assign(static_cast<size_t>(span_elements(view)), 0);
  if (!storage.empty()) {
    const cudaError_t error =
        cudaMemcpyAsync(storage.data(), view.data, storage.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
    if (error != cudaSuccess) return cuda_error(error, "cudaMemcpyAsync of an index tensor to the host");
  }
  TensorView copy = view;
  copy.data = storage.data();
  copy.device = Device::kCpu;
  return copy;
}

// cp.async moves 16 bytes: rows of q and the cache must start on 16-byte boundaries.
Status check_alignment(const TensorView& view, const char* name, int element_multiple, int dims_checked) {
  const auto address = reinterpret_cast<uintptr_t>(view.data);
  const int64_t bytes = element_multiple * dtype_size(view.dtype);
  if (address % static_cast<uintptr_t>(bytes) != 0) {
    return invalid_argument("{} starts at address {:#x}, not a multiple of {} bytes, which the CUDA kernel needs", name,
                            address, bytes);
  }
  for (int dim = 0; dim < dims_checked; ++dim) {
    if (view.strides[dim] % element_multiple != 0 && view.shape[dim] > 1) {
      return invalid_argument("{} has stride {} in dimension {}; the CUDA kernel needs a multiple of {} elements", name,
                              view.strides[dim], dim, element_multiple);
    }
  }
  return Status::ok();
}

// Restores the caller's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      switched_ = cudaSetDevice(device) == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

}  // namespace

Status flash_mla_with_kvcache_cuda(const FlashMlaArgs& args) {
  FF_ASSIGN_OR_RETURN(const Problem problem, validate_shapes(args, Device::kCuda));
  const TensorView* views[] = {&args.q,   &args.k_cache,     &args.block_table, &args.cache_seqlens,
                               &args.out, &args.softmax_lse, &args.num_splits,  &args.tile_scheduler_metadata};
  const char* names[] = {"k_cache",     "block_table", "cache_seqlens",          "out",
                         "softmax_lse", "num_splits",  "tile_scheduler_metadata"};
  for (int i = 1; i < 8; ++i) {
    if (views[i]->device_index != args.q.device_index) {
      return invalid_argument("{} is on GPU {}, but q is on GPU {}", names[i - 1], views[i]->device_index,
                              args.q.device_index);
    }
  }
  FF_RETURN_IF_ERROR(check_alignment(args.q, "q", 8, 3));
  FF_RETURN_IF_ERROR(check_alignment(args.k_cache, "k_cache", args.is_fp8_kvcache ? 16 : 8, 3));
  FF_RETURN_IF_ERROR(check_alignment(args.out, "out", 4, 3));
  const int64_t rows = problem.s_q * problem.group;
  if (problem.batch_size * problem.s_q * problem.h_q > INT32_MAX / 2 || problem.num_blocks > INT32_MAX ||
      problem.max_blocks * kPageBlockSize > INT32_MAX) {
    return invalid_argument("q {} / k_cache {} / block_table {} exceed the kernel's 32-bit index range",
                            args.q.shape_string(), args.k_cache.shape_string(), args.block_table.shape_string());
  }
  if (problem.num_sm_parts > 65535) {
    return invalid_argument("tile_scheduler_metadata has {} parts; at most 65535", problem.num_sm_parts);
  }

  DeviceGuard guard(args.q.device_index);
  const auto stream = static_cast<cudaStream_t>(args.stream);
  if (args.check_values) {
    std::vector<int32_t> seqlens, block_table, metadata, splits;
    FlashMlaArgs host = args;
    FF_ASSIGN_OR_RETURN(host.cache_seqlens, host_copy(args.cache_seqlens, seqlens, stream));
    FF_ASSIGN_OR_RETURN(host.block_table, host_copy(args.block_table, block_table, stream));
    FF_ASSIGN_OR_RETURN(host.tile_scheduler_metadata, host_copy(args.tile_scheduler_metadata, metadata, stream));
    FF_ASSIGN_OR_RETURN(host.num_splits, host_copy(args.num_splits, splits, stream));
    // NOTE: a stream synchronization has no timeout; it waits for four small copies queued behind the
    // caller's earlier work on this stream.
    const cudaError_t error = cudaStreamSynchronize(stream);
    if (error != cudaSuccess) return cuda_error(error, "cudaStreamSynchronize (copying indices to check them)");
    FF_RETURN_IF_ERROR(validate_values(host, problem));
    FF_RETURN_IF_ERROR(expand_schedule(host, problem).status());
  }

  const int64_t needed = cuda::workspace_bytes(problem.batch_size, rows, problem.h_kv, problem.num_sm_parts);
  void* workspace = args.workspace.data;
  bool owned = false;
  if (workspace != nullptr) {
    const int64_t bytes = args.workspace.numel() * dtype_size(args.workspace.dtype);
    if (args.workspace.device != Device::kCuda || args.workspace.device_index != args.q.device_index) {
      return invalid_argument("workspace must be on GPU {}, the device of q", args.q.device_index);
    }
    if (bytes < needed || !args.workspace.is_contiguous() || reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
      return invalid_argument(
          "workspace has {} bytes (contiguous: {}); expected >= {} contiguous bytes, 256-byte "
          "aligned (flash_mla_workspace_bytes)",
          bytes, args.workspace.is_contiguous(), needed);
    }
  } else {
    const cudaError_t error = cudaMallocAsync(&workspace, static_cast<size_t>(needed), stream);
    if (error != cudaSuccess) return cuda_error(error, "cudaMallocAsync of the split-KV workspace");
    owned = true;
  }

  cuda::DecodeParams params;
  params.q = args.q.data;
  params.q_batch_stride = args.q.strides[0];
  params.q_token_stride = args.q.strides[1];
  params.q_head_stride = args.q.strides[2];
  params.k_cache = args.k_cache.data;
  params.k_block_stride = args.k_cache.strides[0];
  params.k_token_stride = args.k_cache.strides[1];
  params.k_head_stride = args.k_cache.strides[2];
  params.block_table = args.block_table.data_as<const int32_t>();
  params.block_table_batch_stride = args.block_table.strides[0];
  params.block_table_column_stride = args.block_table.strides[1];
  params.cache_seqlens = args.cache_seqlens.data_as<const int32_t>();
  params.cache_seqlens_stride = args.cache_seqlens.strides[0];
  params.tile_scheduler_metadata = args.tile_scheduler_metadata.data_as<const int32_t>();
  params.metadata_row_stride = args.tile_scheduler_metadata.strides[0];
  params.metadata_column_stride = args.tile_scheduler_metadata.strides[1];
  params.num_splits = args.num_splits.data_as<const int32_t>();
  params.num_splits_stride = args.num_splits.strides[0];
  params.out = args.out.data;
  params.out_batch_stride = args.out.strides[0];
  params.out_token_stride = args.out.strides[1];
  params.out_head_stride = args.out.strides[2];
  params.softmax_lse = args.softmax_lse.data_as<float>();
  params.lse_batch_stride = args.softmax_lse.strides[0];
  params.lse_head_stride = args.softmax_lse.strides[1];
  params.lse_token_stride = args.softmax_lse.strides[2];
  params.out_accum = static_cast<float*>(workspace);
  params.lse_accum =
      reinterpret_cast<float*>(static_cast<char*>(workspace) +
                               cuda::out_accum_bytes(problem.batch_size, rows, problem.h_kv, problem.num_sm_parts));
  params.batch_size = static_cast<int>(problem.batch_size);
  params.s_q = static_cast<int>(problem.s_q);
  params.h_q = static_cast<int>(problem.h_q);
  params.h_kv = static_cast<int>(problem.h_kv);
  params.group = static_cast<int>(problem.group);
  params.rows = static_cast<int>(rows);
  params.num_m_blocks = static_cast<int>((rows + kBlockSizeM - 1) / kBlockSizeM);
  params.num_sm_parts = problem.num_sm_parts;
  params.num_blocks = static_cast<int>(problem.num_blocks);
  params.max_blocks = static_cast<int>(problem.max_blocks);
  params.scale_log2 = problem.scale_log2;
  params.causal = args.causal;
  params.fp16 = args.q.dtype == DType::kFloat16;
  params.fp8_cache = args.is_fp8_kvcache;
  params.probe_loads_only = std::getenv("FF_MLA_PROBE_LOADS_ONLY") != nullptr;
  params.probe_half_loads = std::getenv("FF_MLA_PROBE_HALF_LOADS") != nullptr;
  if (const char* lazy = std::getenv("FF_MLA_LAZY"); lazy != nullptr) params.lazy_rescale = std::string_view(lazy) != "0";
  const char* probe_skip = std::getenv("FF_MLA_PROBE_SKIP");
  params.probe_skip = probe_skip != nullptr ? std::atoi(probe_skip) : 0;
  const char* forced = std::getenv("FF_MLA_KERNEL");
  params.force_mma_sync = forced != nullptr && std::string_view(forced) == "mma_sync";
  params.force_wgmma = forced != nullptr && std::string_view(forced) == "wgmma";
  if (const char* hint = std::getenv("FF_MLA_KV_HINT"); hint != nullptr) params.kv_evict_first = std::string_view(hint) != "0";
  if (const char* early = std::getenv("FF_MLA_FP8_EARLY_V"); early != nullptr) {
    params.fp8_early_v = std::string_view(early) != "0";
  }
  if (const char* descriptors = std::getenv("FF_MLA_FP8_DESCRIPTORS"); descriptors != nullptr) {
    params.fp8_joined_descriptors = std::string_view(descriptors) != "full";
  }
  if (const char* one = std::getenv("FF_MLA_FP8_ONE_BARRIER"); one != nullptr) {
    params.fp8_one_barrier = std::string_view(one) != "0";
  }
  if (const char* lean = std::getenv("FF_MLA_FP8_LEAN"); lean != nullptr) {
    params.fp8_lean = std::string_view(lean) != "0";
  }
  if (const char* prefetch = std::getenv("FF_MLA_FP8_PREFETCH"); prefetch != nullptr) {
    params.fp8_prefetch_pairs = std::clamp(std::atoi(prefetch), 0, 2);
  }
  if (const char* pairs = std::getenv("FF_MLA_FP8_EARLY_PAIRS"); pairs != nullptr) {
    params.fp8_early_pairs = std::clamp(std::atoi(pairs), 0, 4);
  }
  const char* loads = std::getenv("FF_MLA_LOADS");
  params.tma_loads = loads == nullptr || std::string_view(loads) != "cp_async";
  if (const char* fp8_kernel = std::getenv("FF_MLA_FP8"); fp8_kernel != nullptr) {
    const std::string_view name(fp8_kernel);
    params.fp8_kernel = name == "direct" ? cuda::Fp8Kernel::kDirect
                        : name == "pair" ? cuda::Fp8Kernel::kPair
                        : name == "wide" ? cuda::Fp8Kernel::kWide
                        : name == "channels" ? cuda::Fp8Kernel::kChannels
                        : name == "channels_split_s" ? cuda::Fp8Kernel::kChannelsSplitS
                        : name == "transposed" ? cuda::Fp8Kernel::kTransposed
                        : name == "transposed_wg" ? cuda::Fp8Kernel::kTransposedWg
                                                  : cuda::Fp8Kernel::kDefault;
  }
  if (const char* schedule = std::getenv("FF_MLA_SCHEDULE"); schedule != nullptr) {
    static constexpr std::pair<std::string_view, cuda::Schedule> kSchedules[] = {
        {"pipelined", cuda::Schedule::kPipelined}, {"seesaw", cuda::Schedule::kSeesaw},
        {"lean", cuda::Schedule::kLean},           {"lean_bar3", cuda::Schedule::kLeanBar3},
        {"lean_fold", cuda::Schedule::kLeanFold},  {"lean2", cuda::Schedule::kLean2},
        {"lean2_early", cuda::Schedule::kLean2Early}};
    for (const auto& [name, value] : kSchedules) {
      if (std::string_view(schedule) == name) params.schedule = value;
    }
  }

  cuda::KernelKind launched = cuda::select_kernel(params);
  const auto launch_error = static_cast<cudaError_t>(cuda::launch_decode(params, args.stream, &launched));
  last_kernel.store(static_cast<int>(launched), std::memory_order_relaxed);
  if (owned) {
    const cudaError_t error = cudaFreeAsync(workspace, stream);
    if (launch_error == cudaSuccess && error != cudaSuccess) return cuda_error(error, "cudaFreeAsync of the workspace");
  }
  if (launch_error != cudaSuccess) return cuda_error(launch_error, "launching the MLA decode kernels");
  return Status::ok();
}

Status get_mla_metadata_cuda(const MlaMetadataArgs& args, int32_t num_sm_parts) {
  cuda::MetadataParams params;
  params.cache_seqlens = args.cache_seqlens.data_as<const int32_t>();
  params.seqlens_stride = args.cache_seqlens.strides[0];
  params.tile_scheduler_metadata = args.tile_scheduler_metadata.data_as<int32_t>();
  params.metadata_row_stride = args.tile_scheduler_metadata.strides[0];
  params.metadata_column_stride = args.tile_scheduler_metadata.strides[1];
  params.num_splits = args.num_splits.data_as<int32_t>();
  params.num_splits_stride = args.num_splits.strides[0];
  params.batch_size = static_cast<int>(args.cache_seqlens.shape[0]);
  params.num_sm_parts = num_sm_parts;
  DeviceGuard guard(args.cache_seqlens.device_index);
  const auto error = static_cast<cudaError_t>(cuda::launch_metadata(params, args.stream));
  if (error != cudaSuccess) return cuda_error(error, "launching the get_mla_metadata kernel");
  return Status::ok();
}

#endif  // FF_MLA_HAVE_CUDA

}  // namespace internal
}  // namespace ff::mla
