// Public entry points: validate, then dispatch on the device of the tensors.
#include "ff/gemm/gemm.h"

#include <fmt/format.h>

#include <atomic>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "cpu/gemm_cpu.h"
#ifdef FF_GEMM_HAVE_CUDA
#include "cuda/backend.h"
#endif
#include "ff/common/device.h"
#include "validate.h"

namespace ff::gemm {

namespace {

#ifndef FF_GEMM_HAVE_CUDA
Status no_gpu_backend(std::string_view function) {
  return unimplemented(
      "{} on CUDA tensors: this build has no gemm CUDA kernels (built without nvcc or CUTLASS, or with gemm left "
      "out of FF_CUDA_COMPONENTS); pass CPU tensors to use the CPU implementation",
      function);
}
#endif

// 0: not set; get_num_sms() then reports the hardware.
std::atomic<int> g_num_sms{0};

int hardware_sm_count() {
  static const int count = [] {
    const std::vector<GpuInfo> gpus = visible_gpus();
    return gpus.empty() ? 0 : gpus.front().sm_count;
  }();
  return count;
}

}  // namespace

Status gemm_fp8_fp8_bf16_nt(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                            const LaunchOptions& options) {
  FF_ASSIGN_OR_RETURN(internal::GemmShape shape, internal::validate_dense(a, b, out));
  if (shape.device == Device::kCuda) {
    FF_RETURN_IF_ERROR(internal::validate_cuda_layout(a, b, out, nullptr, shape));
#ifdef FF_GEMM_HAVE_CUDA
    return cuda::dense(a, b, out, shape, options);
#else
    (void)options;
    return no_gpu_backend("gemm_fp8_fp8_bf16_nt");
#endif
  }
  cpu::gemm_dense(a, b, out, shape);
  return Status::ok();
}

Status m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                                 const TensorView& m_indices, const LaunchOptions& options) {
  FF_ASSIGN_OR_RETURN(internal::GemmShape shape, internal::validate_contiguous(a, b, out, m_indices));
  if (shape.device == Device::kCuda) {
    FF_RETURN_IF_ERROR(internal::validate_cuda_layout(a, b, out, &m_indices, shape));
#ifdef FF_GEMM_HAVE_CUDA
    return cuda::contiguous(a, b, out, m_indices, shape, options);
#else
    (void)options;
    return no_gpu_backend("m_grouped_gemm_fp8_fp8_bf16_nt_contiguous");
#endif
  }
  cpu::gemm_contiguous(a, b, out, m_indices, shape);
  return Status::ok();
}

Status m_grouped_gemm_fp8_fp8_bf16_nt_masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                             const TensorView& masked_m, int64_t expected_m,
                                             const LaunchOptions& options) {
  FF_ASSIGN_OR_RETURN(internal::GemmShape shape, internal::validate_masked(a, b, out, masked_m, expected_m));
  if (shape.device == Device::kCuda) {
    FF_RETURN_IF_ERROR(internal::validate_cuda_layout(a, b, out, &masked_m, shape));
#ifdef FF_GEMM_HAVE_CUDA
    return cuda::masked(a, b, out, masked_m, expected_m, shape, options);
#else
    (void)options;
    return no_gpu_backend("m_grouped_gemm_fp8_fp8_bf16_nt_masked");
#endif
  }
  cpu::gemm_masked(a, b, out, masked_m, shape);
  return Status::ok();
}

namespace {

// The weight-gradient GEMM's checks: validate_wgrad, plus the GPU's layout requirements for CUDA tensors.
Result<internal::GemmShape> checked_wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out) {
  FF_ASSIGN_OR_RETURN(internal::GemmShape shape, internal::validate_wgrad(a, b, out));
  if (shape.device == Device::kCuda) FF_RETURN_IF_ERROR(internal::validate_wgrad_cuda_layout(a, b, out, shape));
  return shape;
}

// Runs one checked weight-gradient GEMM on its device's backend (both skip empty problems).
Status run_wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape,
                 const LaunchOptions& options, std::string_view function) {
  if (shape.device == Device::kCuda) {
#ifdef FF_GEMM_HAVE_CUDA
    (void)function;
    return cuda::wgrad(a, b, out, shape, options);
#else
    (void)options;
    return no_gpu_backend(function);
#endif
  }
  cpu::wgrad(a, b, out, shape);
  return Status::ok();
}

}  // namespace

Status wgrad_gemm_fp8_fp8_fp32_nt(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                  const LaunchOptions& options) {
  FF_ASSIGN_OR_RETURN(const internal::GemmShape shape, checked_wgrad(a, b, out));
  return run_wgrad(a, b, out, shape, options, "wgrad_gemm_fp8_fp8_fp32_nt");
}

Status k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                            std::span<const int64_t> batch_sizes, const LaunchOptions& options) {
  FF_ASSIGN_OR_RETURN(const std::vector<internal::WgradBatch> batches,
                      internal::split_k_grouped_wgrad(a, b, out, batch_sizes));
  // Every batch is checked before any is enqueued, so a bad one leaves every output as it was.
  std::vector<internal::GemmShape> shapes;
  shapes.reserve(batches.size());
  for (size_t g = 0; g < batches.size(); ++g) {
    const internal::WgradBatch& batch = batches[g];
    Result<internal::GemmShape> shape = checked_wgrad(batch.a, batch.b, batch.out);
    if (!shape.is_ok()) return shape.status().with_context(fmt::format("batch {} (k={})", g, batch.k));
    shapes.push_back(*shape);
  }
  for (size_t g = 0; g < batches.size(); ++g) {
    FF_RETURN_IF_ERROR(run_wgrad(batches[g].a, batches[g].b, batches[g].out, shapes[g], options,
                                 "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt"));
  }
  return Status::ok();
}

Result<int64_t> get_tma_aligned_size(int64_t mn, int64_t element_size) {
  constexpr int64_t kTmaAlignmentBytes = 16;
  if (element_size <= 0 || kTmaAlignmentBytes % element_size != 0) {
    return invalid_argument("element_size={} must divide the TMA alignment of {} bytes", element_size,
                            kTmaAlignmentBytes);
  }
  if (mn < 0) return invalid_argument("mn={} must be >= 0", mn);
  const int64_t elements = kTmaAlignmentBytes / element_size;
  return ceil_div(mn, elements) * elements;
}

Result<std::array<int64_t, kMaxDims>> col_major_tma_aligned_strides(int ndim,
                                                                    const std::array<int64_t, kMaxDims>& shape) {
  if (ndim != 2 && ndim != 3) {
    return invalid_argument("a scale tensor is (mn, k_blocks) or (groups, mn, k_blocks), not {}-D", ndim);
  }
  const int64_t mn = shape[static_cast<size_t>(ndim - 2)];
  const int64_t k_blocks = shape[static_cast<size_t>(ndim - 1)];
  FF_ASSIGN_OR_RETURN(const int64_t aligned_mn, get_tma_aligned_size(mn, 4));
  if (ndim == 2) return std::array<int64_t, kMaxDims>{1, aligned_mn, 0};
  return std::array<int64_t, kMaxDims>{aligned_mn * k_blocks, 1, aligned_mn};
}

Result<int64_t> col_major_tma_aligned_elements(int ndim, const std::array<int64_t, kMaxDims>& shape) {
  FF_ASSIGN_OR_RETURN(const auto strides, col_major_tma_aligned_strides(ndim, shape));
  const int64_t groups = ndim == 3 ? shape[0] : 1;
  const int64_t per_group = strides[static_cast<size_t>(ndim - 1)] * shape[static_cast<size_t>(ndim - 1)];
  return groups * per_group;
}

Status set_num_sms(int num_sms) {
  const int hardware = hardware_sm_count();
  if (num_sms < 1) return invalid_argument("num_sms={} must be >= 1", num_sms);
  if (hardware > 0 && num_sms > hardware) {
    return invalid_argument("num_sms={} exceeds the {} SMs of GPU 0", num_sms, hardware);
  }
  g_num_sms.store(num_sms, std::memory_order_relaxed);
  return Status::ok();
}

int get_num_sms() {
  const int set = g_num_sms.load(std::memory_order_relaxed);
  if (set > 0) return set;
  const int hardware = hardware_sm_count();
  if (hardware > 0) return hardware;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace ff::gemm
