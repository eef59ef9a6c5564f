// The weight-gradient GEMMs' sm_90a kernel against the CPU implementation: the same inputs, out prefilled with
// random values (both add to them). Tolerance: each element within 1e-3 of its sum of |terms| (the tensor cores sum
// a 128-wide K block of fp8 products with fewer mantissa bits than fp32, which is why each block is promoted), and
// calc_diff < 1e-6 over the output. A wrong scale, row or block shows far beyond either. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <tuple>
#include <vector>

#include "ff/gemm/gemm.h"
#include "test_util.h"

namespace ff::gemm {
namespace {

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

template <typename T>
T* to_device(const std::vector<T>& host) {
  T* data = nullptr;
  if (cudaMalloc(&data, sizeof(T) * std::max<size_t>(host.size(), 1)) != cudaSuccess) std::abort();
  if (!host.empty() && cudaMemcpy(data, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice) != cudaSuccess) {
    std::abort();
  }
  return data;
}

template <typename T>
std::vector<T> to_host(const T* data, size_t count) {
  std::vector<T> host(count);
  if (count > 0 && cudaMemcpy(host.data(), data, sizeof(T) * count, cudaMemcpyDeviceToHost) != cudaSuccess) {
    std::abort();
  }
  return host;
}

// Random finite fp8 operands and scales, and out prefilled with values in [-2, 2) (the GEMM adds to them).
void fill_random(std::vector<uint8_t>& a, std::vector<uint8_t>& b, std::vector<float>& sa, std::vector<float>& sb,
                 std::vector<float>& out, std::mt19937& rng) {
  testing::fill_fp8(a, rng);
  testing::fill_fp8(b, rng);
  testing::fill_scales(sa, rng);
  testing::fill_scales(sb, rng);
  std::uniform_real_distribution<float> start(-2.0f, 2.0f);
  for (float& value : out) value = start(rng);
}

struct Host {
  int64_t m, n, k;
  std::vector<uint8_t> a, b;
  std::vector<float> sa, sb, out;  // scales (rows, kb) row-major
  Host(int64_t m_, int64_t n_, int64_t k_, uint32_t seed) : m(m_), n(n_), k(k_) {
    std::mt19937 rng(seed);
    const int64_t kb = ceil_div(k, 128);
    a.resize(static_cast<size_t>(m * k));
    b.resize(static_cast<size_t>(n * k));
    sa.resize(static_cast<size_t>(m * kb));
    sb.resize(static_cast<size_t>(n * kb));
    out.resize(static_cast<size_t>(m * n));
    fill_random(a, b, sa, sb, out, rng);
  }
  // The CPU implementation's result.
  std::vector<float> cpu() const {
    std::vector<float> result = out;
    auto a_copy = a, b_copy = b;
    auto sa_copy = sa, sb_copy = sb;
    const int64_t kb = ceil_div(k, 128);
    const Status status = wgrad_gemm_fp8_fp8_fp32_nt({TensorView::contiguous(a_copy.data(), DType::kFloat8E4M3, {m, k}),
                                                      TensorView::contiguous(sa_copy.data(), DType::kFloat32, {m, kb})},
                                                     {TensorView::contiguous(b_copy.data(), DType::kFloat8E4M3, {n, k}),
                                                      TensorView::contiguous(sb_copy.data(), DType::kFloat32, {n, kb})},
                                                     TensorView::contiguous(result.data(), DType::kFloat32, {m, n}));
    if (!status.is_ok()) std::abort();
    return result;
  }
  // Sum of |terms| of element (row, col): the scale of the rounding difference between two fp32 K sums.
  double magnitude(int64_t row, int64_t col) const {
    const int64_t kb = ceil_div(k, 128);
    double total = std::fabs(out[static_cast<size_t>(row * n + col)]);
    for (int64_t kk = 0; kk < k; ++kk) {
      total += std::fabs(
          testing::e4m3_reference(a[static_cast<size_t>(row * k + kk)]) * sa[static_cast<size_t>(row * kb + kk / 128)] *
          testing::e4m3_reference(b[static_cast<size_t>(col * k + kk)]) * sb[static_cast<size_t>(col * kb + kk / 128)]);
    }
    return total;
  }
};

// Runs the GPU kernel with the scales either row-major (repacked by the backend) or transposed (M-/N-major, read
// in place) and compares with the CPU result.
void expect_gpu_matches_cpu(int64_t m, int64_t n, int64_t k, bool transposed_scales) {
  const Host host(m, n, k, static_cast<uint32_t>(m * 3 + n * 5 + k));
  const int64_t kb = ceil_div(k, 128);
  auto transpose = [&](const std::vector<float>& scales, int64_t rows, int64_t ld) {
    std::vector<float> column_major(static_cast<size_t>(ld * kb), std::nanf(""));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t block = 0; block < kb; ++block) {
        column_major[static_cast<size_t>(r + block * ld)] = scales[static_cast<size_t>(r * kb + block)];
      }
    }
    return column_major;
  };
  const int64_t lda = (m + 3) / 4 * 4, ldb = (n + 3) / 4 * 4;
  uint8_t* a = to_device(host.a);
  uint8_t* b = to_device(host.b);
  float* sa = to_device(transposed_scales ? transpose(host.sa, m, lda) : host.sa);
  float* sb = to_device(transposed_scales ? transpose(host.sb, n, ldb) : host.sb);
  float* out = to_device(host.out);
  TensorView sa_view = TensorView::contiguous(sa, DType::kFloat32, {m, kb}, Device::kCuda, 0);
  TensorView sb_view = TensorView::contiguous(sb, DType::kFloat32, {n, kb}, Device::kCuda, 0);
  if (transposed_scales) {
    sa_view.strides = {1, lda, 0};
    sb_view.strides = {1, ldb, 0};
  }
  const Status status =
      wgrad_gemm_fp8_fp8_fp32_nt({TensorView::contiguous(a, DType::kFloat8E4M3, {m, k}, Device::kCuda, 0), sa_view},
                                 {TensorView::contiguous(b, DType::kFloat8E4M3, {n, k}, Device::kCuda, 0), sb_view},
                                 TensorView::contiguous(out, DType::kFloat32, {m, n}, Device::kCuda, 0));
  ASSERT_TRUE(status.is_ok()) << status.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> gpu = to_host(out, host.out.size());
  const std::vector<float> cpu = host.cpu();
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      const size_t i = static_cast<size_t>(row * n + col);
      ASSERT_LE(std::fabs(static_cast<double>(gpu[i]) - cpu[i]), 1e-3 * host.magnitude(row, col) + 1e-30)
          << "m=" << m << " n=" << n << " k=" << k << " at (" << row << ", " << col << "): gpu " << gpu[i] << " cpu "
          << cpu[i];
    }
  }
  EXPECT_LT(
      testing::calc_diff(std::vector<double>(gpu.begin(), gpu.end()), std::vector<double>(cpu.begin(), cpu.end())),
      1e-6);
  for (void* pointer : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(sa), static_cast<void*>(sb),
                        static_cast<void*>(out)}) {
    cudaFree(pointer);
  }
}

TEST(WgradCuda, MatchesCpuOnOddShapesAndBothScaleLayouts) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU";
  // Partial tiles in m and n, several K blocks, a partial last K block (k = 208, 16 past a block), one K block.
  for (const auto& [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {128, 128, 128}, {129, 132, 384}, {1, 4, 208}, {300, 260, 1024}, {64, 512, 2048}}) {
    for (bool transposed : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "m=" << m << " n=" << n << " k=" << k << " transposed=" << transposed);
      expect_gpu_matches_cpu(m, n, k, transposed);
    }
  }
}

TEST(WgradCuda, KGroupedBatchesMatchCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU";
  const int64_t m = 136, n = 72;
  const std::vector<int64_t> sizes = {256, 0, 208, 1024};
  int64_t k_sum = 0, blocks = 0;
  for (int64_t k : sizes) {
    k_sum += k;
    blocks += ceil_div(k, 128);
  }
  std::mt19937 rng(17);
  std::vector<uint8_t> a(static_cast<size_t>(m * k_sum)), b(static_cast<size_t>(n * k_sum));
  std::vector<float> sa(static_cast<size_t>(blocks * m)), sb(static_cast<size_t>(blocks * n));
  std::vector<float> out(static_cast<size_t>(sizes.size() * m * n));
  fill_random(a, b, sa, sb, out, rng);
  std::vector<float> cpu = out;
  const auto num_batches = static_cast<int64_t>(sizes.size());
  const Status cpu_status = k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(
      {TensorView::contiguous(a.data(), DType::kFloat8E4M3, {m * k_sum}),
       TensorView::contiguous(sa.data(), DType::kFloat32, {blocks, m})},
      {TensorView::contiguous(b.data(), DType::kFloat8E4M3, {n * k_sum}),
       TensorView::contiguous(sb.data(), DType::kFloat32, {blocks, n})},
      TensorView::contiguous(cpu.data(), DType::kFloat32, {num_batches, m, n}), sizes);
  ASSERT_TRUE(cpu_status.is_ok()) << cpu_status.message();
  uint8_t* a_d = to_device(a);
  uint8_t* b_d = to_device(b);
  float* sa_d = to_device(sa);
  float* sb_d = to_device(sb);
  float* out_d = to_device(out);
  const Status status = k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(
      {TensorView::contiguous(a_d, DType::kFloat8E4M3, {m * k_sum}, Device::kCuda, 0),
       TensorView::contiguous(sa_d, DType::kFloat32, {blocks, m}, Device::kCuda, 0)},
      {TensorView::contiguous(b_d, DType::kFloat8E4M3, {n * k_sum}, Device::kCuda, 0),
       TensorView::contiguous(sb_d, DType::kFloat32, {blocks, n}, Device::kCuda, 0)},
      TensorView::contiguous(out_d, DType::kFloat32, {num_batches, m, n}, Device::kCuda, 0), sizes);
  ASSERT_TRUE(status.is_ok()) << status.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> gpu = to_host(out_d, out.size());
  int64_t k_offset = 0, block_offset = 0;
  for (int64_t batch = 0; batch < num_batches; ++batch) {
    const int64_t k = sizes[static_cast<size_t>(batch)];
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t col = 0; col < n; ++col) {
        const size_t i = static_cast<size_t>((batch * m + row) * n + col);
        if (k == 0) {
          ASSERT_EQ(gpu[i], out[i]) << "the k = 0 batch must be left as it was";
          continue;
        }
        double magnitude = std::fabs(out[i]);
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t block = block_offset + kk / 128;
          magnitude += std::fabs(testing::e4m3_reference(a[static_cast<size_t>(m * k_offset + row * k + kk)]) *
                                 sa[static_cast<size_t>(block * m + row)] *
                                 testing::e4m3_reference(b[static_cast<size_t>(n * k_offset + col * k + kk)]) *
                                 sb[static_cast<size_t>(block * n + col)]);
        }
        ASSERT_LE(std::fabs(static_cast<double>(gpu[i]) - cpu[i]), 1e-3 * magnitude + 1e-30)
            << "batch " << batch << " (k=" << k << ") at (" << row << ", " << col << ")";
      }
    }
    k_offset += k;
    block_offset += ceil_div(k, 128);
  }
  EXPECT_LT(
      testing::calc_diff(std::vector<double>(gpu.begin(), gpu.end()), std::vector<double>(cpu.begin(), cpu.end())),
      1e-6);
  for (void* pointer : {static_cast<void*>(a_d), static_cast<void*>(b_d), static_cast<void*>(sa_d),
                        static_cast<void*>(sb_d), static_cast<void*>(out_d)}) {
    cudaFree(pointer);
  }
}

}  // namespace
}  // namespace ff::gemm
