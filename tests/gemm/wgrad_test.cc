// The weight-gradient GEMMs (wgrad_gemm_fp8_fp8_fp32_nt, k_grouped_wgrad_gemm_fp8_fp8_fp32_nt) on the CPU backend,
// against an independent float64 reference, and their argument checks.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "ff/gemm/gemm.h"
#include "test_util.h"

namespace ff::gemm {
namespace {

using ::testing::HasSubstr;
using testing::make_tensor;
using testing::Owned;

// One wgrad problem: a (m, k), b (n, k), both scaled per 1x128 ((rows, kb) row-major), out (m, n) prefilled with
// random values (the GEMM adds to them).
struct WgradProblem {
  int64_t m, n, k;
  Owned<uint8_t> a, b;
  Owned<float> sa, sb, out;
  std::vector<float> initial;

  WgradProblem(int64_t m_, int64_t n_, int64_t k_, uint32_t seed) : m(m_), n(n_), k(k_) {
    std::mt19937 rng(seed);
    a = make_tensor<uint8_t>(DType::kFloat8E4M3, {m, k});
    b = make_tensor<uint8_t>(DType::kFloat8E4M3, {n, k});
    sa = make_tensor<float>(DType::kFloat32, {m, ceil_div(k, 128)});
    sb = make_tensor<float>(DType::kFloat32, {n, ceil_div(k, 128)});
    out = make_tensor<float>(DType::kFloat32, {m, n});
    testing::fill_fp8(a.values, rng);
    testing::fill_fp8(b.values, rng);
    testing::fill_scales(sa.values, rng);
    testing::fill_scales(sb.values, rng);
    std::uniform_real_distribution<float> start(-4.0f, 4.0f);
    for (float& value : out.values) value = start(rng);
    initial = out.values;
  }
  ScaledTensor lhs() const { return {a.view, sa.view}; }
  ScaledTensor rhs() const { return {b.view, sb.view}; }
};

// initial + sum over k of a * sa[row, kb] * b * sb[col, kb] in float64, and the sum of |terms|.
testing::Expected wgrad_reference(const WgradProblem& p, int64_t row, int64_t col) {
  const int64_t k_blocks = ceil_div(p.k, 128);
  testing::Expected expected;
  for (int64_t kk = 0; kk < p.k; ++kk) {
    const double term = testing::e4m3_reference(p.a.values[static_cast<size_t>(row * p.k + kk)]) *
                        p.sa.values[static_cast<size_t>(row * k_blocks + kk / 128)] *
                        testing::e4m3_reference(p.b.values[static_cast<size_t>(col * p.k + kk)]) *
                        p.sb.values[static_cast<size_t>(col * k_blocks + kk / 128)];
    expected.value += term;
    expected.magnitude += std::fabs(term);
  }
  const double start = p.initial[static_cast<size_t>(row * p.n + col)];
  expected.value += start;
  expected.magnitude += std::fabs(start);
  return expected;
}

void expect_matches_reference(const WgradProblem& p, const std::string& label) {
  std::vector<double> actual, expected;
  for (int64_t row = 0; row < p.m; ++row) {
    for (int64_t col = 0; col < p.n; ++col) {
      const testing::Expected reference = wgrad_reference(p, row, col);
      const double value = p.out.values[static_cast<size_t>(row * p.n + col)];
      // fp32 accumulation: a few ulps of the sum of |terms|.
      ASSERT_LE(std::fabs(value - reference.value), 1e-5 * reference.magnitude + 1e-30)
          << label << " at (" << row << ", " << col << ")";
      actual.push_back(value);
      expected.push_back(reference.value);
    }
  }
  EXPECT_LT(testing::calc_diff(actual, expected), 1e-9) << label;
}

class WgradShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(WgradShapes, AddsTheScaledProductToOut) {
  const auto [m, n, k] = GetParam();
  WgradProblem problem(m, n, k, static_cast<uint32_t>(m * 131 + n * 17 + k));
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  expect_matches_reference(problem, fmt::format("m={} n={} k={}", m, n, k));
}

// Odd m and n, n beyond one 128 block, k with a partial last block (200, 100) and several blocks.
INSTANTIATE_TEST_SUITE_P(Wgrad, WgradShapes,
                         ::testing::Values(std::make_tuple(1, 4, 128), std::make_tuple(65, 200, 256),
                                           std::make_tuple(129, 132, 384), std::make_tuple(4, 64, 200),
                                           std::make_tuple(3, 130, 100), std::make_tuple(17, 256, 512)));

TEST(Wgrad, ScalesEachBlockPerRowOfBothOperands) {
  // a = b = 1.0 everywhere (e4m3 0x38), k = 256: two K blocks of 128 ones. Scales chosen per row and block, so
  // out[r, c] = 128 * (sa[r, 0] * sb[c, 0] + sa[r, 1] * sb[c, 1]) exactly.
  WgradProblem problem(2, 3, 256, 1);
  std::fill(problem.a.values.begin(), problem.a.values.end(), uint8_t{0x38});
  std::fill(problem.b.values.begin(), problem.b.values.end(), uint8_t{0x38});
  testing::set_values(problem.sa, {1.0f, 2.0f, 0.5f, 0.25f});
  testing::set_values(problem.sb, {1.0f, 4.0f, 2.0f, 0.5f, 8.0f, 1.0f});
  std::fill(problem.out.values.begin(), problem.out.values.end(), 1.0f);
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  const float sa[2][2] = {{1.0f, 2.0f}, {0.5f, 0.25f}};
  const float sb[3][2] = {{1.0f, 4.0f}, {2.0f, 0.5f}, {8.0f, 1.0f}};
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 3; ++c) {
      const float expected = 1.0f + 128.0f * (sa[r][0] * sb[c][0] + sa[r][1] * sb[c][1]);
      EXPECT_EQ(problem.out.values[static_cast<size_t>(r * 3 + c)], expected) << r << ", " << c;
    }
  }
}

TEST(Wgrad, AccumulatesOnEveryCallAndKZeroLeavesOutAlone) {
  WgradProblem problem(9, 12, 256, 7);
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  const std::vector<float> once = problem.out.values;
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  for (size_t i = 0; i < once.size(); ++i) {
    const float added = once[i] - problem.initial[i];
    EXPECT_NEAR(problem.out.values[i], once[i] + added, 1e-5f * (std::fabs(once[i]) + std::fabs(added)) + 1e-6f);
  }

  WgradProblem empty(3, 4, 0, 3);
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(empty.lhs(), empty.rhs(), empty.out.view).is_ok());
  EXPECT_EQ(empty.out.values, empty.initial);
}

TEST(Wgrad, TransposedScalesGiveTheSameBits) {
  // DeepGEMM's TMA-aligned transposed scales: (rows, kb) views with strides (1, aligned rows).
  WgradProblem problem(6, 10, 384, 11);
  WgradProblem transposed = problem;
  const int64_t k_blocks = 3;
  auto transpose = [&](Owned<float>& scales, int64_t rows) {
    const int64_t ld = (rows + 3) / 4 * 4;
    std::vector<float> column_major(static_cast<size_t>(ld * k_blocks), std::nanf(""));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t kb = 0; kb < k_blocks; ++kb) {
        column_major[static_cast<size_t>(r + kb * ld)] = scales.values[static_cast<size_t>(r * k_blocks + kb)];
      }
    }
    scales.values = column_major;
    scales.view.data = scales.values.data();
    scales.view.strides = {1, ld, 0};
  };
  transposed.a.view.data = transposed.a.values.data();
  transposed.b.view.data = transposed.b.values.data();
  transposed.out.view.data = transposed.out.values.data();
  transpose(transposed.sa, 6);
  transpose(transposed.sb, 10);
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(transposed.lhs(), transposed.rhs(), transposed.out.view).is_ok());
  EXPECT_EQ(0, std::memcmp(problem.out.values.data(), transposed.out.values.data(),
                           problem.out.values.size() * sizeof(float)));
}

// The k-grouped form: batches laid out flat, each equal to its own dense call; a k = 0 batch is left alone.
TEST(KGroupedWgrad, EachBatchEqualsItsDenseCall) {
  const int64_t m = 5, n = 12;
  const std::vector<int64_t> sizes = {256, 0, 200, 128};
  std::vector<WgradProblem> problems;
  for (size_t g = 0; g < sizes.size(); ++g) problems.emplace_back(m, n, sizes[g], static_cast<uint32_t>(40 + g));

  int64_t k_sum = 0, blocks_sum = 0;
  for (int64_t k : sizes) {
    k_sum += k;
    blocks_sum += ceil_div(k, 128);
  }
  Owned<uint8_t> a = make_tensor<uint8_t>(DType::kFloat8E4M3, {m * k_sum});
  Owned<uint8_t> b = make_tensor<uint8_t>(DType::kFloat8E4M3, {n * k_sum});
  Owned<float> sa = make_tensor<float>(DType::kFloat32, {blocks_sum, m});
  Owned<float> sb = make_tensor<float>(DType::kFloat32, {blocks_sum, n});
  Owned<float> out = make_tensor<float>(DType::kFloat32, {static_cast<int64_t>(sizes.size()), m, n});
  int64_t k_offset = 0, block_offset = 0;
  for (size_t g = 0; g < sizes.size(); ++g) {
    const WgradProblem& p = problems[g];
    const int64_t k_blocks = ceil_div(p.k, 128);
    std::copy(p.a.values.begin(), p.a.values.end(), a.values.begin() + m * k_offset);
    std::copy(p.b.values.begin(), p.b.values.end(), b.values.begin() + n * k_offset);
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      for (int64_t r = 0; r < m; ++r) {
        sa.values[static_cast<size_t>((block_offset + kb) * m + r)] =
            p.sa.values[static_cast<size_t>(r * k_blocks + kb)];
      }
      for (int64_t c = 0; c < n; ++c) {
        sb.values[static_cast<size_t>((block_offset + kb) * n + c)] =
            p.sb.values[static_cast<size_t>(c * k_blocks + kb)];
      }
    }
    std::copy(p.initial.begin(), p.initial.end(), out.values.begin() + static_cast<int64_t>(g) * m * n);
    k_offset += p.k;
    block_offset += k_blocks;
  }
  ASSERT_TRUE(k_grouped_wgrad_gemm_fp8_fp8_fp32_nt({a.view, sa.view}, {b.view, sb.view}, out.view, sizes).is_ok());
  for (size_t g = 0; g < sizes.size(); ++g) {
    WgradProblem& p = problems[g];
    ASSERT_TRUE(wgrad_gemm_fp8_fp8_fp32_nt(p.lhs(), p.rhs(), p.out.view).is_ok());
    EXPECT_EQ(0, std::memcmp(p.out.values.data(), out.values.data() + static_cast<int64_t>(g) * m * n,
                             p.out.values.size() * sizeof(float)))
        << "batch " << g << " (k=" << sizes[g] << ")";
    if (sizes[g] == 0) {
      EXPECT_EQ(p.out.values, p.initial);
    }
  }
}

TEST(WgradErrors, NameTheBadArgument) {
  {
    // b's scales in the bf16 GEMMs' 128x128 blocks, not per row.
    WgradProblem problem(4, 256, 256, 1);
    Owned<float> blocks = make_tensor<float>(DType::kFloat32, {2, 2}, 1.0f);
    const Status status = wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), {problem.b.view, blocks.view}, problem.out.view);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("b.scales has shape [2, 2]; expected [256, 2]"));
  }
  {
    WgradProblem problem(4, 8, 128, 1);
    Owned<uint16_t> bf16 = make_tensor<uint16_t>(DType::kBFloat16, {4, 8});
    const Status status = wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), problem.rhs(), bf16.view);
    EXPECT_THAT(status.message(), HasSubstr("out has dtype bfloat16; expected float32"));
  }
  {
    WgradProblem problem(4, 8, 128, 1);
    Owned<uint8_t> short_b = make_tensor<uint8_t>(DType::kFloat8E4M3, {8, 64});
    const Status status = wgrad_gemm_fp8_fp8_fp32_nt(problem.lhs(), {short_b.view, problem.sb.view}, problem.out.view);
    EXPECT_THAT(status.message(), HasSubstr("k mismatch"));
  }
  {
    // GPU requirements, checked before anything runs (views marked as CUDA, never read).
    auto run_as_cuda = [](WgradProblem& problem) {
      ScaledTensor lhs = problem.lhs(), rhs = problem.rhs();
      TensorView out = problem.out.view;
      for (TensorView* view : {&lhs.data, &lhs.scales, &rhs.data, &rhs.scales, &out}) view->device = Device::kCuda;
      return wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out);
    };
    WgradProblem odd_k(4, 8, 200, 1);
    EXPECT_THAT(run_as_cuda(odd_k).message(), HasSubstr("k=200 is not a multiple of 16"));
    WgradProblem odd_n(4, 6, 128, 1);
    EXPECT_THAT(run_as_cuda(odd_n).message(), HasSubstr("n=6 is not a multiple of 4"));
    EXPECT_EQ(odd_n.out.values, odd_n.initial);
  }
}

TEST(KGroupedWgradErrors, NameTheBadArgument) {
  Owned<uint8_t> a = make_tensor<uint8_t>(DType::kFloat8E4M3, {4 * 256});
  Owned<uint8_t> b = make_tensor<uint8_t>(DType::kFloat8E4M3, {8 * 256});
  Owned<float> sa = make_tensor<float>(DType::kFloat32, {2, 4}, 1.0f);
  Owned<float> sb = make_tensor<float>(DType::kFloat32, {2, 8}, 1.0f);
  Owned<float> out = make_tensor<float>(DType::kFloat32, {2, 4, 8}, 3.0f);
  const ScaledTensor lhs{a.view, sa.view}, rhs{b.view, sb.view};
  {
    const std::vector<int64_t> sizes = {128, 128, 0};
    EXPECT_THAT(k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out.view, sizes).message(),
                HasSubstr("out has shape [2, 4, 8] (2 batches) but batch_sizes has 3 entries"));
  }
  {
    const std::vector<int64_t> sizes = {384, -128};
    EXPECT_THAT(k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out.view, sizes).message(),
                HasSubstr("batch_sizes[1] = -128 is negative"));
  }
  {
    const std::vector<int64_t> sizes = {128, 64};  // 192 tokens, but a holds 4 * 256 elements
    EXPECT_THAT(k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out.view, sizes).message(),
                HasSubstr("a.data has shape [1024]; expected [768]"));
  }
  for (float value : out.values) ASSERT_EQ(value, 3.0f);
}

}  // namespace
}  // namespace ff::gemm
