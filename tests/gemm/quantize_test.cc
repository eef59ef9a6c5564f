#include "ff/gemm/quantize.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "ff/gemm/gemm.h"
#include "ff/gemm/numeric.h"
#include "test_util.h"

namespace ff::gemm {
namespace {

using testing::make_tensor;

std::vector<float> random_values(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> values(count);
  for (float& value : values) value = normal(rng);
  return values;
}

TEST(PerTokenCast, FollowsTheAnchorFormulaBitForBitWithPartialBlocks) {
  const int64_t m = 3, k = 200;  // second K block has 72 columns
  auto x = make_tensor<float>(DType::kFloat32, {m, k});
  testing::set_values(x, random_values(static_cast<size_t>(m * k), 1));
  for (int64_t col = 128; col < k; ++col) x.values[static_cast<size_t>(2 * k + col)] = 0.0f;  // an all-zero block
  auto q = make_tensor<uint8_t>(DType::kFloat8E4M3, {m, k});
  auto scales = make_tensor<float>(DType::kFloat32, {m, 2});
  ASSERT_TRUE(per_token_cast_to_fp8(x.view, q.view, scales.view).is_ok());
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t block = 0; block < 2; ++block) {
      float amax = 0.0f;
      for (int64_t col = block * 128; col < std::min<int64_t>(k, block * 128 + 128); ++col) {
        amax = std::max(amax, std::fabs(x.values[static_cast<size_t>(row * k + col)]));
      }
      amax = std::max(amax, 1e-4f);
      const float scale = scales.values[static_cast<size_t>(row * 2 + block)];
      EXPECT_EQ(scale, amax / 448.0f) << row << " " << block;
      for (int64_t col = block * 128; col < std::min<int64_t>(k, block * 128 + 128); ++col) {
        const float value = x.values[static_cast<size_t>(row * k + col)];
        const uint8_t code = q.values[static_cast<size_t>(row * k + col)];
        ASSERT_EQ(code, float_to_e4m3(value * ((1.0f / amax) * 448.0f))) << row << " " << col;
        // Dequantised, within half an e4m3 ulp (2^-4 relative) or half a subnormal step.
        EXPECT_LE(std::fabs(e4m3_to_float(code) * scale - value),
                  std::max(std::fabs(value) / 16.0f, scale * std::ldexp(1.0f, -10)) * 1.0001f);
      }
    }
  }
  EXPECT_EQ(scales.values[5], 1e-4f / 448.0f);  // the all-zero block's clamped scale
  EXPECT_EQ(q.values[static_cast<size_t>(2 * k + 150)], 0);
}

TEST(PerTokenCast, TheBlockMaximumMapsTo448) {
  auto x = make_tensor<float>(DType::kFloat32, {1, 128}, 0.5f);
  x.values[7] = -3.0f;
  auto q = make_tensor<uint8_t>(DType::kFloat8E4M3, {1, 128});
  auto scales = make_tensor<float>(DType::kFloat32, {1, 1});
  ASSERT_TRUE(per_token_cast_to_fp8(x.view, q.view, scales.view).is_ok());
  EXPECT_EQ(q.values[7], 0xfe);  // -448
  EXPECT_EQ(e4m3_to_float(q.values[0]), 72.0f);  // 0.5 * 448 / 3 = 74.67 rounds to 72 (step 8 there)
  EXPECT_EQ(scales.values[0], 3.0f / 448.0f);
}

// torch evaluates the anchor's `448.0 / amax` as reciprocal(amax) * 448; with amax = 3 that is
// 149.33334 rather than 149.33333, so -2.25 maps just past the 320/352 midpoint (-336) to -352, as
// torch's own cast does (checked with torch 2.11 and 2.15). One rounding (448 / amax) would give -320.
TEST(PerTokenCast, MatchesTorchsReciprocalRoundingAtATie) {
  auto x = make_tensor<float>(DType::kFloat32, {1, 128}, 0.0f);
  x.values[0] = -3.0f;
  x.values[1] = -2.25f;
  auto q = make_tensor<uint8_t>(DType::kFloat8E4M3, {1, 128});
  auto scales = make_tensor<float>(DType::kFloat32, {1, 1});
  ASSERT_TRUE(per_token_cast_to_fp8(x.view, q.view, scales.view).is_ok());
  EXPECT_EQ(q.values[1], 0xfb);
  EXPECT_EQ(e4m3_to_float(q.values[1]), -352.0f);
}

TEST(PerTokenCast, AcceptsBf16Input) {
  auto x = make_tensor<uint16_t>(DType::kBFloat16, {2, 128});
  const std::vector<float> values = random_values(256, 2);
  for (size_t i = 0; i < values.size(); ++i) x.values[i] = float_to_bf16(values[i]);
  auto widened = make_tensor<float>(DType::kFloat32, {2, 128});
  for (size_t i = 0; i < values.size(); ++i) widened.values[i] = bf16_to_float(x.values[i]);
  auto q1 = make_tensor<uint8_t>(DType::kFloat8E4M3, {2, 128});
  auto q2 = make_tensor<uint8_t>(DType::kFloat8E4M3, {2, 128});
  auto s1 = make_tensor<float>(DType::kFloat32, {2, 1});
  auto s2 = make_tensor<float>(DType::kFloat32, {2, 1});
  ASSERT_TRUE(per_token_cast_to_fp8(x.view, q1.view, s1.view).is_ok());
  ASSERT_TRUE(per_token_cast_to_fp8(widened.view, q2.view, s2.view).is_ok());
  EXPECT_EQ(q1.values, q2.values);
  EXPECT_EQ(s1.values, s2.values);
}

TEST(PerBlockCast, SharesOneScalePer128x128TileIncludingEdgeTiles) {
  const int64_t m = 130, k = 200;
  auto x = make_tensor<float>(DType::kFloat32, {m, k});
  testing::set_values(x, random_values(static_cast<size_t>(m * k), 3));
  auto q = make_tensor<uint8_t>(DType::kFloat8E4M3, {m, k});
  auto scales = make_tensor<float>(DType::kFloat32, {2, 2});
  ASSERT_TRUE(per_block_cast_to_fp8(x.view, q.view, scales.view).is_ok());
  for (int64_t row_block = 0; row_block < 2; ++row_block) {
    for (int64_t col_block = 0; col_block < 2; ++col_block) {
      float amax = 0.0f;
      for (int64_t row = row_block * 128; row < std::min<int64_t>(m, row_block * 128 + 128); ++row) {
        for (int64_t col = col_block * 128; col < std::min<int64_t>(k, col_block * 128 + 128); ++col) {
          amax = std::max(amax, std::fabs(x.values[static_cast<size_t>(row * k + col)]));
        }
      }
      ASSERT_EQ(scales.values[static_cast<size_t>(row_block * 2 + col_block)], amax / 448.0f);
      for (int64_t row = row_block * 128; row < std::min<int64_t>(m, row_block * 128 + 128); ++row) {
        for (int64_t col = col_block * 128; col < std::min<int64_t>(k, col_block * 128 + 128); ++col) {
          ASSERT_EQ(q.values[static_cast<size_t>(row * k + col)],
                    float_to_e4m3(x.values[static_cast<size_t>(row * k + col)] * (448.0f / amax)));
        }
      }
    }
  }
}

TEST(QuantizedGemm, EndToEndCloseToTheFloatProduct) {
  // Quantise float matrices with the helpers, multiply, and compare with the float64 product of the originals:
  // the FP8 error budget of DeepGEMM's tests (calc_diff < 0.001).
  const int64_t m = 33, n = 96, k = 256;
  auto x = make_tensor<float>(DType::kFloat32, {m, k});
  auto w = make_tensor<float>(DType::kFloat32, {n, k});
  testing::set_values(x, random_values(static_cast<size_t>(m * k), 4));
  testing::set_values(w, random_values(static_cast<size_t>(n * k), 5));
  auto a = make_tensor<uint8_t>(DType::kFloat8E4M3, {m, k});
  auto sa = make_tensor<float>(DType::kFloat32, {m, 2});
  auto b = make_tensor<uint8_t>(DType::kFloat8E4M3, {n, k});
  auto sb = make_tensor<float>(DType::kFloat32, {1, 2});
  ASSERT_TRUE(per_token_cast_to_fp8(x.view, a.view, sa.view).is_ok());
  ASSERT_TRUE(per_block_cast_to_fp8(w.view, b.view, sb.view).is_ok());
  auto out = make_tensor<uint16_t>(DType::kBFloat16, {m, n});
  ASSERT_TRUE(gemm_fp8_fp8_bf16_nt({a.view, sa.view}, {b.view, sb.view}, out.view).is_ok());
  std::vector<double> actual, expected;
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      double sum = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) {
        sum += static_cast<double>(x.values[static_cast<size_t>(row * k + kk)]) * w.values[static_cast<size_t>(col * k + kk)];
      }
      expected.push_back(sum);
      actual.push_back(bf16_to_float(out.values[static_cast<size_t>(row * n + col)]));
    }
  }
  const double diff = testing::calc_diff(actual, expected);
  EXPECT_LT(diff, 1e-3);
  EXPECT_GT(diff, 0.0);  // quantisation does lose something: a zero would mean the test compared nothing
}

TEST(CastErrors, NameTheShapes) {
  auto x = make_tensor<float>(DType::kFloat32, {4, 256});
  auto q = make_tensor<uint8_t>(DType::kFloat8E4M3, {4, 256});
  auto scales = make_tensor<float>(DType::kFloat32, {4, 3});
  Status status = per_token_cast_to_fp8(x.view, q.view, scales.view);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("scales has shape [4, 3] and dtype float32; expected (4, 2)"));
  status = per_block_cast_to_fp8(x.view, q.view, scales.view);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("expected (1, 2) = (ceil(m/128), ceil(k/128))"));
  x.view.dtype = DType::kInt32;
  status = per_token_cast_to_fp8(x.view, q.view, scales.view);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("x has shape [4, 256] and dtype int32"));
}

}  // namespace
}  // namespace ff::gemm
