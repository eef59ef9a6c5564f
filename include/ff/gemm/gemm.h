// ff::gemm: FP8 GEMM with fine-grained scaling, the counterpart of DeepGEMM's sm_90 API.
//
//   D[m, n] (bf16) = sum over K blocks kb of  (sum_{k in kb} A[m, k] * B[n, k]) * sa[m, kb] * sb[n / 128, kb]
//
// A (e4m3) is scaled per 1x128 (one fp32 scale per row and 128-wide K block), B (e4m3) per 128x128 block.
// The inner sum over one K block is accumulated in fp32, multiplied by both scales and added into an fp32
// accumulator (the two-level accumulation of DeepGEMM, which keeps fp8 products from losing precision over a
// long K); the result is rounded to bf16, nearest even. See docs/gemm.md for shapes, layouts and semantics.
//
// Tensors are TensorViews (tensor_view.h). All views of one call live on one device; that device picks the
// backend: Device::kCpu runs the CPU implementation (this file's reference semantics), Device::kCuda the sm_90a
// kernels, enqueued on LaunchOptions::stream without host synchronisation (a build without them returns an
// unimplemented Status). The GPU needs k % 128 == 0, n % 8 == 0, contiguous operands and 16-byte aligned fp8 and
// output pointers; a.scales may have any strides (docs/gemm.md). Input views are never written.
//
// Thread-safety: every function may be called from several threads at once, on disjoint outputs.
// set_num_sms changes a process-wide setting read at the start of each call.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ff/common/result.h"
#include "ff/common/status.h"
#include "ff/gemm/tensor_view.h"

namespace ff::gemm {

// The K granularity of every scale (A: 1x128, B: 128x128) and the N granularity of B's scales.
inline constexpr int64_t kScaleBlock = 128;
// Rows of each expert's segment in the grouped contiguous layout start at a multiple of this.
inline constexpr int64_t kMAlignmentForContiguousLayout = 128;

inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An fp8 operand and its fp32 scales, DeepGEMM's `(tensor, scales)` pair.
struct ScaledTensor {
  TensorView data;    // float8_e4m3fn
  TensorView scales;  // float32
};

struct LaunchOptions {
  // cudaStream_t the GPU backend enqueues on (nullptr: the default stream); ignored by the CPU backend.
  void* stream = nullptr;
};

// D = A * B^T.
//   a.data   (m, k)                    float8_e4m3fn
//   a.scales (m, ceil(k/128))          float32, any strides (row-major or the TMA-aligned column-major layout)
//   b.data   (n, k)                    float8_e4m3fn
//   b.scales (ceil(n/128), ceil(k/128)) float32
//   out      (m, n)                    bfloat16, written entirely
// k need not be a multiple of 128: the last K block is partial and its scale covers the k % 128 columns that
// exist (the CPU backend; the GPU backend requires k % 128 == 0 and says so).
Status gemm_fp8_fp8_bf16_nt(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                            const LaunchOptions& options = {});

// MoE grouped GEMM, contiguous layout: the rows of all experts stacked in one A.
//   a.data   (m_sum, k), a.scales (m_sum, ceil(k/128))
//   b.data   (num_groups, n, k), b.scales (num_groups, ceil(n/128), ceil(k/128))
//   out      (m_sum, n) bfloat16
//   m_indices (m_sum) int32: the expert of each row, or -1 for a padding row.
// out[r] = A[r] * B[m_indices[r]]^T. Every aligned block of 128 rows holds rows of at most one expert (each
// expert's segment starts at a multiple of get_m_alignment_for_contiguous_layout(); pad with -1 rows).
// Padding rows are zero-filled in out: the rows a dispatch leaves unused hold uninitialised A data (possibly
// NaN), and zeros let the combine step sum or copy whole tiles without masking; the GPU kernel writes whole
// tiles in its epilogue anyway, so zeros cost it nothing. The GPU kernel also reads the A rows (and scales) of
// padding rows, so they must be allocated (any values). a.scales: any strides; the GPU kernel reads the
// TMA-aligned column-major layout directly and repacks others.
Status m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                                 const TensorView& m_indices, const LaunchOptions& options = {});

// MoE grouped GEMM, masked layout (decode with CUDA graphs: shapes fixed, counts on the device):
//   a.data   (num_groups, m_max, k), a.scales (num_groups, m_max, ceil(k/128))
//   b.data   (num_groups, n, k),     b.scales (num_groups, ceil(n/128), ceil(k/128))
//   out      (num_groups, m_max, n) bfloat16
//   masked_m (num_groups) int32, each in [0, m_max]
// Only out[g, :masked_m[g]] is written; rows at and beyond masked_m[g] are left untouched (the kernel never
// reads or writes them, so the caller must not read them either). expected_m (>= 0) is a hint of the typical
// masked_m for the GPU block-size heuristic; the CPU backend ignores it.
Status m_grouped_gemm_fp8_fp8_bf16_nt_masked(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                             const TensorView& masked_m, int64_t expected_m,
                                             const LaunchOptions& options = {});

// Weight-gradient GEMM (DeepGEMM's wgrad_gemm_fp8_fp8_fp32_nt), accumulating into an fp32 output:
//   out[m, n] += sum over K blocks kb of (sum_{k in kb} A[m, k] * B[n, k]) * sa[m, kb] * sb[n, kb]
// Both operands are scaled per 1x128 (one fp32 scale per row and 128-wide K block: activations and output
// gradients, each cast with per_token_cast_to_fp8), so a weight gradient dW = dY^T X takes a = dY^T and b = X^T,
// both (rows, tokens) with the tokens along k.
//   a.data   (m, k) float8_e4m3fn, a.scales (m, ceil(k/128)) float32, any strides
//   b.data   (n, k) float8_e4m3fn, b.scales (n, ceil(k/128)) float32, any strides
//   out      (m, n) float32, read and written: the K sum is formed in fp32 (two-level, as the bf16 GEMMs) and
//            added to out once, out + total rounded once.
// k == 0 leaves out as it is. The GPU needs k a multiple of 16 and n of 4 (16-byte rows for TMA), contiguous
// data and out, 16-byte aligned data and out pointers; the scales in the M-/N-major layout (element (row, kb) at
// scales[row + kb * ld], ld >= rows, a multiple of 4: DeepGEMM's TMA-aligned transposed layout) are read in place,
// other layouts repacked first. A last K block shorter than 128 is scaled by its own scale (both backends).
Status wgrad_gemm_fp8_fp8_fp32_nt(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                  const LaunchOptions& options = {});

// K-grouped weight-gradient GEMM (DeepGEMM's k_grouped_wgrad_gemm_fp8_fp8_fp32_nt): one wgrad per batch g, each
// with its own k_g = batch_sizes[g] (the tokens routed to expert g) and one output, out[g] += A_g * B_g^T.
//   a.data   (sum_g m * k_g) float8_e4m3fn, 1-D: batch g's (m, k_g) row-major block follows batch g-1's
//   a.scales (sum_g ceil(k_g/128), m) float32: batch g's scales, transposed ((ceil(k_g/128), m): M-major), follow
//            batch g-1's
//   b.data   (sum_g n * k_g), b.scales (sum_g ceil(k_g/128), n): the same with n
//   out      (num_batches, m, n) float32, num_batches = batch_sizes.size()
// A batch with k_g == 0 leaves out[g] as it is. The GPU requirements are wgrad_gemm_fp8_fp8_fp32_nt's per batch
// (so every k_g a multiple of 16, and each batch's block 16-byte aligned: m * k_g and n * k_g multiples of 16).
Status k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(const ScaledTensor& a, const ScaledTensor& b, const TensorView& out,
                                            std::span<const int64_t> batch_sizes, const LaunchOptions& options = {});

// 128: the alignment of each expert's segment in the contiguous layout (DeepGEMM's BLOCK_M).
inline int64_t get_m_alignment_for_contiguous_layout() { return kMAlignmentForContiguousLayout; }

// TMA needs 16-byte aligned strides: mn rounded up to a multiple of 16 / element_size elements
// (4 for float32 scales). element_size must divide 16.
Result<int64_t> get_tma_aligned_size(int64_t mn, int64_t element_size);

// Strides, in elements, of DeepGEMM's TMA-aligned column-major layout of a float32 scale tensor of the given
// shape, (mn, kb) or (groups, mn, kb): the mn dimension is contiguous and each column is padded to
// get_tma_aligned_size(mn, 4) elements, so (mn, kb) has strides (1, aligned_mn) and (groups, mn, kb) has
// (aligned_mn * kb, 1, aligned_mn). A view with these strides over a buffer of
// col_major_tma_aligned_elements(...) floats is what get_col_major_tma_aligned_tensor returns.
Result<std::array<int64_t, kMaxDims>> col_major_tma_aligned_strides(int ndim, const std::array<int64_t, kMaxDims>& shape);
Result<int64_t> col_major_tma_aligned_elements(int ndim, const std::array<int64_t, kMaxDims>& shape);

// The most SMs a GEMM kernel may use (DeepGEMM's set_num_sms / get_num_sms). Without a setting, get_num_sms()
// returns the SM count of GPU 0 or, without a GPU, the number of hardware threads; the CPU backend uses it as
// its thread limit. set_num_sms rejects num_sms < 1 and, with a GPU present, more than its SM count.
Status set_num_sms(int num_sms);
int get_num_sms();

// The CUDA backend's heuristic choice for a GEMM of `rows` (per group; expected_m for masked) x n x k over `groups`
// groups on num_sms SMs, as "<tile configuration> <raster>:<swizzle>" (raster default, m or n; swizzle 0 =
// CUTLASS's default), e.g. "cooperative_128x128 n:8": what benchmarks and logs report. `kind` is "dense",
// "contiguous" or "masked". Ignores the FF_GEMM_TILE_CONFIG / FF_GEMM_SCHEDULE overrides; needs no GPU.
Result<std::string> cuda_kernel_choice(std::string_view kind, int64_t rows, int64_t n, int64_t k, int64_t groups,
                                       int num_sms);

}  // namespace ff::gemm
