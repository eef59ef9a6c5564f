// The CUDA backend behind gemm.h's entry points (compiled when the gemm kernels are built: FF_GEMM_HAVE_CUDA).
// Arguments have passed validate_* and validate_cuda_layout (validate.h); every call enqueues on options.stream
// and returns without synchronising.
#pragma once

#include "ff/common/status.h"
#include "ff/gemm/gemm.h"
#include "validate.h"

namespace ff::gemm::cuda {

Status dense(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape,
             const LaunchOptions& options);
Status contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& m_indices,
                  const internal::GemmShape& shape, const LaunchOptions& options);
Status masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& masked_m,
              int64_t expected_m, const internal::GemmShape& shape, const LaunchOptions& options);
Status wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape,
             const LaunchOptions& options);

}  // namespace ff::gemm::cuda
