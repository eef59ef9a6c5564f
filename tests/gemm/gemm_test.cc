#include "ff/gemm/gemm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

#include "ff/gemm/numeric.h"
#include "test_util.h"

namespace ff::gemm {
namespace {

using testing::calc_diff;
using ::testing::HasSubstr;
using testing::make_tensor;
using testing::Owned;

// One dense problem with random operands; out is prefilled with a NaN pattern so unwritten elements show.
struct Problem {
  int64_t m, n, k;
  Owned<uint8_t> a, b;
  Owned<float> sa, sb;
  Owned<uint16_t> out;

  Problem(int64_t m_, int64_t n_, int64_t k_, uint32_t seed) : m(m_), n(n_), k(k_) {
    std::mt19937 rng(seed);
    a = make_tensor<uint8_t>(DType::kFloat8E4M3, {m, k});
    b = make_tensor<uint8_t>(DType::kFloat8E4M3, {n, k});
    sa = make_tensor<float>(DType::kFloat32, {m, ceil_div(k, 128)});
    sb = make_tensor<float>(DType::kFloat32, {ceil_div(n, 128), ceil_div(k, 128)});
    out = make_tensor<uint16_t>(DType::kBFloat16, {m, n}, 0x7fc0);
    testing::fill_fp8(a.values, rng);
    testing::fill_fp8(b.values, rng);
    testing::fill_scales(sa.values, rng);
    testing::fill_scales(sb.values, rng);
  }
  ScaledTensor lhs() const { return {a.view, sa.view}; }
  ScaledTensor rhs() const { return {b.view, sb.view}; }
};

// Checks out (rows, n) against the float64 reference: calc_diff < 1e-5 overall, and every element within
// bf16 rounding (2^-8 relative) plus fp32 accumulation error (1e-5 of the sum of |terms|).
void expect_matches_reference(const std::vector<uint16_t>& out, const uint8_t* a, const float* sa, const uint8_t* b,
                              const float* sb, int64_t rows, int64_t n, int64_t k, const std::string& label) {
  std::vector<double> actual, expected;
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      const testing::Expected reference = testing::reference_element(a, sa, b, sb, k, 0, row, col);
      const double value = testing::bf16_value(out[static_cast<size_t>(row * n + col)]);
      ASSERT_LE(std::fabs(value - reference.value),
                std::ldexp(std::fabs(reference.value), -8) + 1e-5 * reference.magnitude)
          << label << " at (" << row << ", " << col << ")";
      actual.push_back(value);
      expected.push_back(reference.value);
    }
  }
  EXPECT_LT(calc_diff(actual, expected), 1e-5) << label;
}

class DenseShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(DenseShapes, MatchesFloat64Reference) {
  const auto [m, n, k] = GetParam();
  Problem problem(m, n, k, static_cast<uint32_t>(m * 31 + n * 7 + k));
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  expect_matches_reference(problem.out.values, problem.a.values.data(), problem.sa.values.data(),
                           problem.b.values.data(), problem.sb.values.data(), m, n, k,
                           fmt::format("m={} n={} k={}", m, n, k));
}

// Odd m (1, 65, 129), n not a multiple of 128 (112, 200), and k with a partial last block (200, 100).
INSTANTIATE_TEST_SUITE_P(Gemm, DenseShapes,
                         ::testing::Values(std::make_tuple(1, 112, 128), std::make_tuple(65, 200, 256),
                                           std::make_tuple(129, 128, 384), std::make_tuple(4, 64, 200),
                                           std::make_tuple(3, 130, 100), std::make_tuple(17, 256, 512)));

TEST(Gemm, AppliesScalesPerKBlockAfterAccumulating) {
  // A = 1, B = 2 everywhere; block 0 scales 0.5 * 2, block 1 scales 0.25 * 4: 128*2*1 + 128*2*1 = 512.
  auto a = make_tensor<uint8_t>(DType::kFloat8E4M3, {1, 256}, float_to_e4m3(1.0f));
  auto b = make_tensor<uint8_t>(DType::kFloat8E4M3, {1, 256}, float_to_e4m3(2.0f));
  auto sa = make_tensor<float>(DType::kFloat32, {1, 2});
  auto sb = make_tensor<float>(DType::kFloat32, {1, 2});
  testing::set_values(sa, {0.5f, 0.25f});
  testing::set_values(sb, {2.0f, 8.0f});
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {1, 1});
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({a.view, sa.view}, {b.view, sb.view}, out.view).is_ok());
  EXPECT_EQ(bf16_to_float(out.values[0]), 256.0f + 512.0f);
}

TEST(Gemm, RoundsOutputToNearestEvenBf16) {
  // 257 lies exactly between the bf16 neighbours 256 and 258: nearest even gives 256; 259 gives 260.
  auto a = make_tensor<uint8_t>(DType::kFloat8E4M3, {2, 2});
  testing::set_values(a, {float_to_e4m3(256.0f), float_to_e4m3(1.0f), float_to_e4m3(256.0f), float_to_e4m3(3.0f)});
  auto b = make_tensor<uint8_t>(DType::kFloat8E4M3, {1, 2}, float_to_e4m3(1.0f));
  auto sa = make_tensor<float>(DType::kFloat32, {2, 1}, 1.0f);
  auto sb = make_tensor<float>(DType::kFloat32, {1, 1}, 1.0f);
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {2, 1});
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({a.view, sa.view}, {b.view, sb.view}, out.view).is_ok());
  EXPECT_EQ(bf16_to_float(out.values[0]), 256.0f);
  EXPECT_EQ(bf16_to_float(out.values[1]), 260.0f);
}

TEST(Gemm, TmaAlignedColumnMajorScalesGiveTheSameOutput) {
  Problem problem(65, 200, 256, 3);
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  // Re-lay a.scales (65, 2) column-major with columns padded to 68 floats.
  const auto strides = col_major_tma_aligned_strides(2, problem.sa.view.shape);
  ASSERT_TRUE(strides.is_ok());
  EXPECT_EQ((*strides)[0], 1);
  EXPECT_EQ((*strides)[1], 68);
  std::vector<float> column_major(static_cast<size_t>(*col_major_tma_aligned_elements(2, problem.sa.view.shape)), NAN);
  EXPECT_EQ(column_major.size(), 136u);
  TensorView scales = problem.sa.view;
  scales.data = column_major.data();
  scales.strides = *strides;
  for (int64_t row = 0; row < 65; ++row) {
    for (int64_t block = 0; block < 2; ++block) *scales.at<float>(row, block) = problem.sa.values[row * 2 + block];
  }
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {65, 200});
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({problem.a.view, scales}, problem.rhs(), out.view).is_ok());
  EXPECT_EQ(out.values, problem.out.values);
}

TEST(Gemm, MultithreadedAndSingleThreadedAgree) {
  Problem problem(129, 200, 384, 5);  // enough work to use several threads
  ASSERT_TRUE(set_num_sms(1).is_ok());
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  const std::vector<uint16_t> single = problem.out.values;
  ASSERT_TRUE(set_num_sms(4).is_ok());
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
  EXPECT_EQ(problem.out.values, single);
}

TEST(Gemm, EmptyMIsANoOp) {
  Problem problem(0, 64, 128, 1);
  EXPECT_TRUE(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), problem.out.view).is_ok());
}

// Grouped contiguous: 3 experts with 5, 131 and 0 rows, each segment padded to 128 with -1 rows; plus a fully
// padded block at the end.
TEST(GroupedContiguous, MatchesReferencePerExpertAndZeroFillsPadding) {
  const int64_t groups = 3, n = 200, k = 256, m_sum = 128 + 256 + 128;
  std::mt19937 rng(21);
  auto a = make_tensor<uint8_t>(DType::kFloat8E4M3, {m_sum, k});
  auto sa = make_tensor<float>(DType::kFloat32, {m_sum, 2});
  auto b = make_tensor<uint8_t>(DType::kFloat8E4M3, {groups, n, k});
  auto sb = make_tensor<float>(DType::kFloat32, {groups, 2, 2});
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {m_sum, n}, 0x7fc0);
  auto m_indices = make_tensor<int32_t>(DType::kInt32, {m_sum}, -1);
  testing::fill_fp8(a.values, rng);
  testing::fill_fp8(b.values, rng);
  testing::fill_scales(sa.values, rng);
  testing::fill_scales(sb.values, rng);
  for (int64_t row = 0; row < 5; ++row) m_indices.values[row] = 0;
  for (int64_t row = 128; row < 128 + 131; ++row) m_indices.values[row] = 1;
  // Padding rows hold NaN A data, as uninitialised memory may: it must not reach the output.
  for (int64_t col = 0; col < k; ++col) a.values[static_cast<size_t>(300 * k + col)] = 0x7f;

  ASSERT_TRUE(m_grouped_gemm_fp8_fp8_bf16_nt_contiguous({a.view, sa.view}, {b.view, sb.view}, out.view, m_indices.view)
                  .is_ok());
  for (int64_t row = 0; row < m_sum; ++row) {
    const int32_t group = m_indices.values[static_cast<size_t>(row)];
    if (group < 0) {
      for (int64_t col = 0; col < n; ++col) ASSERT_EQ(out.values[static_cast<size_t>(row * n + col)], 0) << row;
      continue;
    }
    const std::vector<uint16_t> row_out(out.values.begin() + row * n, out.values.begin() + (row + 1) * n);
    expect_matches_reference(row_out, a.values.data() + row * k, sa.values.data() + row * 2,
                             b.values.data() + group * n * k, sb.values.data() + group * 4, 1, n, k,
                             fmt::format("row {} group {}", row, group));
  }
}

TEST(GroupedMasked, ComputesOnlyTheFirstMaskedMRowsAndLeavesTheRestUntouched) {
  const int64_t groups = 3, m_max = 65, n = 112, k = 200;
  std::mt19937 rng(33);
  auto a = make_tensor<uint8_t>(DType::kFloat8E4M3, {groups, m_max, k});
  auto sa = make_tensor<float>(DType::kFloat32, {groups, m_max, 2});
  auto b = make_tensor<uint8_t>(DType::kFloat8E4M3, {groups, n, k});
  auto sb = make_tensor<float>(DType::kFloat32, {groups, 1, 2});
  constexpr uint16_t kSentinel = 0x1234;
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {groups, m_max, n}, kSentinel);
  auto masked_m = make_tensor<int32_t>(DType::kInt32, {groups});
  testing::set_values(masked_m, {0, 17, static_cast<int32_t>(m_max)});  // empty, partial, full
  testing::fill_fp8(a.values, rng);
  testing::fill_fp8(b.values, rng);
  testing::fill_scales(sa.values, rng);
  testing::fill_scales(sb.values, rng);

  ASSERT_TRUE(m_grouped_gemm_fp8_fp8_bf16_nt_masked({a.view, sa.view}, {b.view, sb.view}, out.view, masked_m.view,
                                                    /*expected_m=*/32)
                  .is_ok());
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t valid = masked_m.values[static_cast<size_t>(group)];
    const size_t base = static_cast<size_t>(group * m_max * n);
    for (int64_t row = valid; row < m_max; ++row) {
      for (int64_t col = 0; col < n; ++col) {
        ASSERT_EQ(out.values[base + static_cast<size_t>(row * n + col)], kSentinel) << group << " " << row;
      }
    }
    if (valid == 0) continue;
    const std::vector<uint16_t> rows(out.values.begin() + static_cast<int64_t>(base),
                                     out.values.begin() + static_cast<int64_t>(base) + valid * n);
    expect_matches_reference(rows, a.values.data() + group * m_max * k, sa.values.data() + group * m_max * 2,
                             b.values.data() + group * n * k, sb.values.data() + group * 2, valid, n, k,
                             fmt::format("group {}", group));
  }
}

// ---- bad input -----------------------------------------------------------------------------------------------

void expect_invalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

TEST(GemmErrors, NamesTheBadArgument) {
  Problem problem(65, 200, 256, 1);
  {
    ScaledTensor lhs = problem.lhs();
    lhs.data.dtype = DType::kFloat32;
    expect_invalid(gemm_fp8_fp8_bf16_nt(lhs, problem.rhs(), problem.out.view),
                   "a.data has dtype float32; expected float8_e4m3fn");
  }
  {
    ScaledTensor lhs = problem.lhs();
    lhs.scales.shape[1] = 3;
    expect_invalid(gemm_fp8_fp8_bf16_nt(lhs, problem.rhs(), problem.out.view),
                   "a.scales has shape [65, 3]; expected [65, 2] = (m, ceil(k/128))");
  }
  {
    ScaledTensor rhs = problem.rhs();
    rhs.scales.shape[0] = 1;
    expect_invalid(gemm_fp8_fp8_bf16_nt(problem.lhs(), rhs, problem.out.view),
                   "b.scales has shape [1, 2]; expected [2, 2] = (ceil(n/128), ceil(k/128))");
  }
  {
    ScaledTensor rhs = problem.rhs();
    rhs.data.shape[1] = 384;
    expect_invalid(gemm_fp8_fp8_bf16_nt(problem.lhs(), rhs, problem.out.view),
                   "k mismatch: a.data has shape [65, 256] (k=256) but b.data has shape [200, 384] (k=384)");
  }
  {
    TensorView out = problem.out.view;
    out.shape[1] = 201;
    expect_invalid(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), out),
                   "out has shape [65, 201]; expected [65, 200]");
  }
  {
    TensorView out = problem.out.view;
    out.dtype = DType::kFloat32;
    expect_invalid(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), out), "out has dtype float32; expected bfloat16");
  }
  {
    ScaledTensor lhs = problem.lhs();
    lhs.data.ndim = 3;
    lhs.data.shape[2] = 1;
    expect_invalid(gemm_fp8_fp8_bf16_nt(lhs, problem.rhs(), problem.out.view), "a.data has shape [65, 256, 1] (3-D)");
  }
  {
    ScaledTensor lhs = problem.lhs();
    lhs.data.data = nullptr;
    expect_invalid(gemm_fp8_fp8_bf16_nt(lhs, problem.rhs(), problem.out.view),
                   "a.data has shape [65, 256] but no data");
  }
  {
    TensorView out = problem.out.view;
    out.device = Device::kCuda;
    expect_invalid(gemm_fp8_fp8_bf16_nt(problem.lhs(), problem.rhs(), out), "out is on cuda:0 but a.data is on cpu");
  }
  // The output must not have been written by any of the rejected calls.
  for (uint16_t value : problem.out.values) ASSERT_EQ(value, 0x7fc0);
}

// The GPU kernels' extra requirements are checked before any launch, so host memory labelled as CUDA is never
// touched by these calls: each is rejected with a message naming the value.
TEST(GemmErrors, CudaLayoutRequirementsNameTheValue) {
  auto run_as_cuda = [](Problem& problem, auto&& edit) {
    ScaledTensor lhs = problem.lhs(), rhs = problem.rhs();
    TensorView out = problem.out.view;
    for (TensorView* view : {&lhs.data, &lhs.scales, &rhs.data, &rhs.scales, &out}) view->device = Device::kCuda;
    edit(lhs, rhs, out);
    return gemm_fp8_fp8_bf16_nt(lhs, rhs, out);
  };
  auto no_edit = [](ScaledTensor&, ScaledTensor&, TensorView&) {};
  {
    Problem problem(4, 64, 200, 1);
    const Status status = run_as_cuda(problem, no_edit);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("k=200 is not a multiple of 128"));
  }
  {
    Problem problem(4, 100, 128, 1);
    const Status status = run_as_cuda(problem, no_edit);
    EXPECT_THAT(status.message(), HasSubstr("n=100 is not a multiple of 8"));
  }
  {
    Problem problem(4, 64, 128, 1);
    const Status status = run_as_cuda(problem, [](ScaledTensor& lhs, ScaledTensor&, TensorView&) {
      lhs.data.strides = {256, 1, 0};  // a column slice of a wider matrix: rows not contiguous (never read here)
    });
    EXPECT_THAT(status.message(), HasSubstr("a.data has shape [4, 128] and strides [256, 1]"));
  }
  {
    Problem problem(4, 64, 256, 1);
    const Status status = run_as_cuda(problem, [](ScaledTensor& lhs, ScaledTensor&, TensorView&) {
      lhs.data.data = static_cast<uint8_t*>(lhs.data.data) + 1;  // never read: rejected first
    });
    EXPECT_THAT(status.message(), HasSubstr("a.data starts at address"));
    EXPECT_THAT(status.message(), HasSubstr("not 16-byte aligned"));
    for (uint16_t value : problem.out.values) ASSERT_EQ(value, 0x7fc0);
  }
}

struct ContiguousArgs {
  Owned<uint8_t> a = make_tensor<uint8_t>(DType::kFloat8E4M3, {256, 128});
  Owned<float> sa = make_tensor<float>(DType::kFloat32, {256, 1}, 1.0f);
  Owned<uint8_t> b = make_tensor<uint8_t>(DType::kFloat8E4M3, {2, 64, 128});
  Owned<float> sb = make_tensor<float>(DType::kFloat32, {2, 1, 1}, 1.0f);
  Owned<uint16_t> out = make_tensor<uint16_t>(DType::kBFloat16, {256, 64});
  Owned<int32_t> m_indices = make_tensor<int32_t>(DType::kInt32, {256}, 0);
  Status run() {
    return m_grouped_gemm_fp8_fp8_bf16_nt_contiguous({a.view, sa.view}, {b.view, sb.view}, out.view, m_indices.view);
  }
};

TEST(GroupedContiguousErrors, RejectsBadIndicesAndMisalignedSegments) {
  ContiguousArgs args;
  EXPECT_TRUE(args.run().is_ok());
  args.m_indices.values[200] = 2;
  expect_invalid(args.run(), "m_indices[200] = 2 is out of range: expected -1 (padding) or a group in [0, 2)");
  args.m_indices.values[200] = -2;
  expect_invalid(args.run(), "m_indices[200] = -2 is out of range");
  args.m_indices.values[200] = 0;
  // Expert 1 starting at row 100 shares the block [0, 128) with expert 0.
  for (int64_t row = 100; row < 256; ++row) args.m_indices.values[static_cast<size_t>(row)] = 1;
  expect_invalid(args.run(), "m_indices[100] = 1 but m_indices[0] = 0 in the same aligned block of rows [0, 128)");
  // Padded properly it passes.
  for (int64_t row = 100; row < 128; ++row) args.m_indices.values[static_cast<size_t>(row)] = -1;
  EXPECT_TRUE(args.run().is_ok());
  args.m_indices.view.dtype = DType::kFloat32;
  expect_invalid(args.run(), "m_indices has dtype float32; expected int32");
  args.m_indices.view.dtype = DType::kInt32;
  args.m_indices.view.shape[0] = 255;
  expect_invalid(args.run(), "m_indices has shape [255]; expected [256]");
  args.m_indices.view.shape[0] = 256;
  args.b.view.ndim = 2;
  expect_invalid(args.run(), "b.data has shape [2, 64] (2-D); expected 3-D (num_groups, n, k)");
}

TEST(GroupedMaskedErrors, RejectsMaskedMOutOfRangeAndGroupMismatch) {
  auto a = make_tensor<uint8_t>(DType::kFloat8E4M3, {2, 8, 128});
  auto sa = make_tensor<float>(DType::kFloat32, {2, 8, 1}, 1.0f);
  auto b = make_tensor<uint8_t>(DType::kFloat8E4M3, {2, 16, 128});
  auto sb = make_tensor<float>(DType::kFloat32, {2, 1, 1}, 1.0f);
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {2, 8, 16});
  auto masked_m = make_tensor<int32_t>(DType::kInt32, {2});
  auto run = [&](int64_t expected_m = 4) {
    return m_grouped_gemm_fp8_fp8_bf16_nt_masked({a.view, sa.view}, {b.view, sb.view}, out.view, masked_m.view,
                                                 expected_m);
  };
  testing::set_values(masked_m, {8, 0});
  EXPECT_TRUE(run().is_ok());
  testing::set_values(masked_m, {9, 0});
  expect_invalid(run(), "masked_m[0] = 9 is out of range [0, 8]");
  testing::set_values(masked_m, {0, -1});
  expect_invalid(run(), "masked_m[1] = -1 is out of range [0, 8]");
  testing::set_values(masked_m, {0, 0});
  expect_invalid(run(-1), "expected_m=-1 must be >= 0");
  b.view.shape[0] = 3;
  sb.view.shape[0] = 3;
  expect_invalid(run(), "a.data has shape [2, 8, 128] (2 groups) but b.data has shape [3, 16, 128] (3 groups)");
}

TEST(Helpers, AlignmentAndTmaSizes) {
  EXPECT_EQ(get_m_alignment_for_contiguous_layout(), 128);
  EXPECT_EQ(*get_tma_aligned_size(65, 4), 68);
  EXPECT_EQ(*get_tma_aligned_size(64, 4), 64);
  EXPECT_EQ(*get_tma_aligned_size(1, 2), 8);
  EXPECT_EQ(get_tma_aligned_size(10, 3).status().code(), StatusCode::kInvalidArgument);
  const auto strides = col_major_tma_aligned_strides(3, {4, 65, 3});
  ASSERT_TRUE(strides.is_ok());
  EXPECT_EQ(*strides, (std::array<int64_t, kMaxDims>{68 * 3, 1, 68}));
  EXPECT_EQ(*col_major_tma_aligned_elements(3, {4, 65, 3}), 4 * 68 * 3);
  EXPECT_EQ(col_major_tma_aligned_strides(1, {4, 0, 0}).status().code(), StatusCode::kInvalidArgument);
}

TEST(Helpers, NumSms) {
  ASSERT_TRUE(set_num_sms(2).is_ok());
  EXPECT_EQ(get_num_sms(), 2);
  const Status status = set_num_sms(0);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("num_sms=0 must be >= 1"));
  EXPECT_EQ(get_num_sms(), 2);  // a rejected setting changes nothing
}

}  // namespace
}  // namespace ff::gemm
