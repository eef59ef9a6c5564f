// The CPU backend: the reference semantics of every gemm function. Runs only on arguments that passed
// validate.h's checks (asserted where cheap).
#pragma once

#include "ff/gemm/gemm.h"
#include "validate.h"

namespace ff::gemm::cpu {

void gemm_dense(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape);
void gemm_contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& m_indices,
                     const internal::GemmShape& shape);
void gemm_masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const TensorView& masked_m,
                 const internal::GemmShape& shape);
// out (m, n) float32 += the two-level sum of A (m, k) * B (n, k)^T, A and B scaled per 1x128 (validate_wgrad).
void wgrad(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out, const internal::GemmShape& shape);

}  // namespace ff::gemm::cpu
