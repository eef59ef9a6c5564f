// Tests of ff::mla: scalar conversions, the tile scheduler's invariants, the CPU decode against an
// independent float64 attention (bf16, fp16, FP8 cache; causal; split and unsplit schedules; NaN in
// every cache slot it must not read), and the error messages of bad input.
#include "ff/mla/mla.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string_view>
#include <vector>

#include "ff/mla/numerics.h"

#ifdef FF_MLA_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ff::mla {
namespace {

using ::testing::HasSubstr;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// The kernel the dispatch takes for a bf16 / fp16 cache with >= 64 rows per KV head and TMA loads
// (cuda::kDefaultSchedule: the fastest schedule on the H200, the lean kernel with grouped mbarriers and
// the folded softmax) where softmax_scale > 0.
constexpr const char* kDefaultTmaKernel = "wgmma_tma_lean2";
// The FP8-cache kernels the dispatch takes with <= 16 and with 17..32 query rows per KV head
// (cuda::kDefaultFp8FewRows16 / kDefaultFp8FewRows32).
constexpr const char* kDefaultFp8Kernel16 = "wgmma_fp8_transposed_wg";
constexpr const char* kDefaultFp8Kernel32 = "mma_sync_fp8_channels_split_s";

// ---------------------------------------------------------------------------------------------
// Numerics

TEST(Numerics, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(kNaN))));
}

TEST(Numerics, Fp16MatchesKnownEncodings) {
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(1e6f), 0x7c00);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {                 // every finite non-negative half round-trips
    ASSERT_EQ(float_to_fp16(fp16_to_float(static_cast<uint16_t>(bits))), bits) << bits;
  }
}

TEST(Numerics, E4m3DecodesEveryCodeAndRoundTrips) {
  for (int bits = 0; bits < 256; ++bits) {
    const float value = e4m3_to_float(static_cast<uint8_t>(bits));
    // Independent decoding: sign * 2^(e - 7) * (1 + m / 8), subnormal 2^-6 * m / 8.
    const int e = (bits >> 3) & 15, m = bits & 7;
    if (e == 15 && m == 7) {
      EXPECT_TRUE(std::isnan(value)) << bits;
      continue;
    }
    const double expected =
        (bits & 0x80 ? -1.0 : 1.0) * (e == 0 ? std::pow(2.0, -6) * m / 8.0 : std::pow(2.0, e - 7) * (1.0 + m / 8.0));
    EXPECT_EQ(value, expected) << bits;
    if (bits != 0x80) {  // -0 encodes as 0x80 too
      EXPECT_EQ(float_to_e4m3(value), bits) << bits;
    }
  }
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1000.0f)), 448.0f);              // saturates
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.0625f)), 1.0f);                // halfway between 1 and 1.125: even
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.1875f)), 1.25f);               // halfway between 1.125 and 1.25: even
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(std::ldexp(1.0f, -10))), 0.0f);  // half the smallest subnormal: even
}

// ---------------------------------------------------------------------------------------------
// Tile scheduler

// Checks every property a kernel relies on and returns the largest cost any part carries.
int64_t check_schedule(const MlaMetadata& metadata, const std::vector<int32_t>& seqlens) {
  const auto b = static_cast<int32_t>(seqlens.size());
  EXPECT_EQ(metadata.tile_scheduler_metadata.size(), static_cast<size_t>(metadata.num_sm_parts) * 8);
  EXPECT_EQ(metadata.num_splits.size(), seqlens.size() + 1);
  EXPECT_EQ(metadata.num_splits[0], 0);
  // Every (sequence, block) exactly once, in order, pieces numbered as num_splits says.
  std::vector<std::vector<int>> block_owner(b);
  for (int32_t i = 0; i < b; ++i) block_owner[i].assign((seqlens[i] + 63) / 64, -1);
  std::vector<int> pieces(b, 0);
  int64_t total_cost = 0, largest_part = 0;
  for (int32_t part = 0; part < metadata.num_sm_parts; ++part) {
    const TileSchedulerPart row = metadata.part(part);
    for (int column = 5; column < 8; ++column) EXPECT_EQ(metadata.tile_scheduler_metadata[part * 8 + column], 0);
    EXPECT_EQ(row.begin_token % 64, 0);
    int64_t cost = 0;
    for (int32_t batch = row.begin_batch; batch <= row.end_batch; ++batch) {
      const int32_t lo = batch == row.begin_batch ? row.begin_token : 0;
      const int32_t hi = batch == row.end_batch ? row.end_token : seqlens[batch];
      EXPECT_LE(lo, hi);
      EXPECT_EQ(batch == row.begin_batch ? row.begin_split : 0, pieces[batch]) << "part " << part;
      for (int32_t block = lo / 64; block < (hi + 63) / 64; ++block) {
        EXPECT_EQ(block_owner[batch][block], -1) << "seq " << batch << " block " << block << " twice";
        block_owner[batch][block] = part;
      }
      ++pieces[batch];
      cost += (hi + 63) / 64 - lo / 64 + kFixedOverheadNumBlocks;
    }
    largest_part = std::max(largest_part, cost);
  }
  for (int32_t i = 0; i < b; ++i) {
    for (size_t block = 0; block < block_owner[i].size(); ++block) EXPECT_NE(block_owner[i][block], -1) << i;
    EXPECT_EQ(metadata.num_splits[i + 1] - metadata.num_splits[i], pieces[i]) << "seq " << i;
    total_cost += (seqlens[i] + 63) / 64 + kFixedOverheadNumBlocks;
  }
  EXPECT_LE(metadata.num_splits[b], b + metadata.num_sm_parts);
  // Balance: no part exceeds the payload ceil(total / parts) + overhead.
  const int64_t payload = (total_cost + metadata.num_sm_parts - 1) / metadata.num_sm_parts + kFixedOverheadNumBlocks;
  EXPECT_LE(largest_part, payload);
  return largest_part;
}

TEST(Metadata, NumSmPartsFollowsTheAnchor) {
  EXPECT_EQ(num_sm_parts_for(128, 1), 66);  // s_q 1, h_q 128: two 64-row tiles per sequence
  EXPECT_EQ(num_sm_parts_for(64, 1), 132);
  EXPECT_EQ(num_sm_parts_for(2 * 128, 1), 33);  // s_q 2
  EXPECT_EQ(num_sm_parts_for(16, 1, 78), 78);
  EXPECT_EQ(num_sm_parts_for(1024, 4, 8), 1);  // never 0
}

TEST(Metadata, HandComputedSchedule) {
  // Lengths 300 and 100 -> 5 and 2 blocks; cost (5 + 5) + (2 + 5) = 17; 2 parts of payload 9 + 5 = 14.
  // Part 0 cannot take all of seq 0 (5 + 5 > 14? no, 10 <= 14): takes it, 4 left; seq 1 needs 7 > 4,
  // so part 0 takes 4 - 5 < 0 blocks of it: nothing. Part 1 takes seq 1 whole.
  Result<MlaMetadata> metadata = get_mla_metadata(std::vector<int32_t>{300, 100}, 128, 1, 4);
  ASSERT_TRUE(metadata.is_ok()) << metadata.status().to_string();
  ASSERT_EQ(metadata->num_sm_parts, 2);
  EXPECT_EQ(metadata->tile_scheduler_metadata,
            (std::vector<int32_t>{0, 0, 0, 300, 0, 0, 0, 0, /**/ 1, 0, 1, 100, 0, 0, 0, 0}));
  EXPECT_EQ(metadata->num_splits, (std::vector<int32_t>{0, 1, 2}));

  // One long sequence over 3 parts: 10 blocks + 5 = 15; payload 5 + 5 = 10; parts take 5, 5, then
  // the rest fits... part 0 takes 10 - 5 = 5 blocks (split 1), part 1 has 10 >= 5 + 5: the tail.
  metadata = get_mla_metadata(std::vector<int32_t>{600}, 64, 1, 3);
  ASSERT_TRUE(metadata.is_ok());
  EXPECT_EQ(
      metadata->tile_scheduler_metadata,
      (std::vector<int32_t>{0, 0, 0, 320, 0, 0, 0, 0, /**/ 0, 320, 0, 600, 1, 0, 0, 0, /**/ 1, 0, 0, 600, 0, 0, 0, 0}));
  EXPECT_EQ(metadata->num_splits, (std::vector<int32_t>{0, 2}));
}

TEST(Metadata, RandomBatchesCoverEveryBlockOnceWithinThePayload) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int b = 1 + static_cast<int>(rng() % 40);
    std::vector<int32_t> seqlens(b);
    const int max_len = trial % 3 == 0 ? 70 : 20000;
    for (int32_t& length : seqlens) length = static_cast<int32_t>(rng() % (max_len + 1));
    const int h_q = 16 << (rng() % 4), s_q = 1 + static_cast<int>(rng() % 2);
    const int num_sms = trial % 5 == 0 ? 1 + static_cast<int>(rng() % 200) : kDefaultNumSms;
    Result<MlaMetadata> metadata = get_mla_metadata(seqlens, s_q * h_q, 1, num_sms);
    ASSERT_TRUE(metadata.is_ok()) << metadata.status().to_string();
    EXPECT_EQ(metadata->num_sm_parts, num_sm_parts_for(s_q * h_q, 1, num_sms));
    check_schedule(*metadata, seqlens);
    if (::testing::Test::HasFailure()) FAIL() << "reproduce with trial=" << trial;
  }
}

TEST(Metadata, RejectsBadInput) {
  EXPECT_THAT(get_mla_metadata(std::vector<int32_t>{}, 128, 1).status().message(), HasSubstr("empty"));
  EXPECT_THAT(get_mla_metadata(std::vector<int32_t>{5, -3}, 128, 1).status().message(),
              HasSubstr("cache_seqlens[1] is -3"));
  EXPECT_THAT(get_mla_metadata(std::vector<int32_t>{5}, 0, 1).status().message(), HasSubstr("is 0"));
  EXPECT_THAT(get_mla_metadata(std::vector<int32_t>{5}, 16, 0).status().message(), HasSubstr("num_heads_k is 0"));
}

// The view form (the GPU kernel's interface) on the CPU backend: get_mla_metadata's schedule, written through any
// strides (the elements between them untouched), lengths read through theirs.
TEST(Metadata, ViewFormWritesTheSameScheduleThroughStrides) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const int b = 1 + static_cast<int>(rng() % 300);
    std::vector<int32_t> lengths(b), strided(2 * static_cast<size_t>(b), -99);
    for (int i = 0; i < b; ++i) {
      lengths[i] = rng() % 4 == 0 ? 0 : static_cast<int32_t>(rng() % 30000);
      strided[2 * static_cast<size_t>(i)] = lengths[i];
    }
    const int64_t rows = 16 << (rng() % 5);
    const int num_sms = trial % 4 == 0 ? 1 + static_cast<int>(rng() % 140) : kDefaultNumSms;
    const int32_t parts = num_sm_parts_for(rows, 1, num_sms);
    std::vector<int32_t> metadata(static_cast<size_t>(parts) * 16, -7), splits(3 * (static_cast<size_t>(b) + 1), -7);
    MlaMetadataArgs args;
    args.cache_seqlens = TensorView::contiguous(strided.data(), DType::kInt32, {b});
    args.cache_seqlens.strides[0] = 2;
    args.num_q_tokens_per_head_k = rows;
    args.num_sms = num_sms;
    args.tile_scheduler_metadata = TensorView::contiguous(metadata.data(), DType::kInt32, {parts, 8});
    args.tile_scheduler_metadata.strides = {16, 2, 0, 0};
    args.num_splits = TensorView::contiguous(splits.data(), DType::kInt32, {b + 1});
    args.num_splits.strides[0] = 3;
    const Status status = get_mla_metadata(args, Backend::kCpu);
    ASSERT_TRUE(status.is_ok()) << status.to_string();
    Result<MlaMetadata> expected = get_mla_metadata(lengths, rows, 1, num_sms);
    ASSERT_TRUE(expected.is_ok());
    for (size_t i = 0; i < metadata.size(); ++i) {
      const int32_t want = i % 2 == 1 ? -7 : expected->tile_scheduler_metadata[i / 2];
      ASSERT_EQ(metadata[i], want) << "trial " << trial << " metadata element " << i;
    }
    for (size_t i = 0; i < splits.size(); ++i) {
      const int32_t want = i % 3 != 0 ? -7 : expected->num_splits[i / 3];
      ASSERT_EQ(splits[i], want) << "trial " << trial << " num_splits element " << i;
    }
  }
}

TEST(Metadata, ViewFormNamesBadViews) {
  std::vector<int32_t> lengths{100, 0, 5000};
  std::vector<int32_t> metadata(static_cast<size_t>(num_sm_parts_for(128, 1)) * 8), splits(4);
  std::vector<float> floats(4);
  const auto make = [&] {
    MlaMetadataArgs args;
    args.cache_seqlens = TensorView::contiguous(lengths.data(), DType::kInt32, {3});
    args.num_q_tokens_per_head_k = 128;
    args.tile_scheduler_metadata = TensorView::contiguous(metadata.data(), DType::kInt32, {66, 8});
    args.num_splits = TensorView::contiguous(splits.data(), DType::kInt32, {4});
    return args;
  };
  ASSERT_TRUE(get_mla_metadata(make(), Backend::kCpu).is_ok());
  MlaMetadataArgs args = make();
  args.num_splits = TensorView::contiguous(floats.data(), DType::kFloat32, {4});
  EXPECT_THAT(get_mla_metadata(args, Backend::kCpu).message(),
              HasSubstr("num_splits has dtype float32; expected int32"));
  args = make();
  args.num_splits.shape[0] = 3;
  EXPECT_THAT(get_mla_metadata(args, Backend::kCpu).message(), HasSubstr("num_splits has shape (3,); expected (4,)"));
  args = make();
  args.tile_scheduler_metadata.shape[0] = 33;
  EXPECT_THAT(get_mla_metadata(args, Backend::kCpu).message(),
              HasSubstr("tile_scheduler_metadata has shape (33, 8); expected (66, 8)"));
  args = make();
  args.cache_seqlens.device = Device::kCuda;
  EXPECT_THAT(get_mla_metadata(args, Backend::kCpu).message(),
              HasSubstr("cache_seqlens is on the GPU; this backend needs it on the CPU"));
  args = make();
  args.num_sms = 0;
  EXPECT_THAT(get_mla_metadata(args, Backend::kCpu).message(), HasSubstr("num_sms is 0"));
  lengths[1] = -4;
  EXPECT_THAT(get_mla_metadata(make(), Backend::kCpu).message(), HasSubstr("cache_seqlens[1] is -4"));
}

// ---------------------------------------------------------------------------------------------
// Decode

struct Case {
  std::vector<int32_t> seqlens;
  int s_q = 1;
  int h_q = 16;
  int h_kv = 1;
  bool causal = false;
  DType dtype = DType::kBFloat16;
  bool fp8 = false;
  int num_sms = kDefaultNumSms;
  int num_threads = 1;
  int extra_columns = 1;        // block_table columns beyond what the longest sequence needs (left as -1)
  bool force_mma_sync = false;  // CUDA: FF_MLA_KERNEL=mma_sync for this call
  bool cp_async_loads = false;  // CUDA: FF_MLA_LOADS=cp_async (the WGMMA kernel without TMA) for this call
  // CUDA: FF_MLA_SCHEDULE for this call (the TMA WGMMA kernel's schedule: "pipelined", "seesaw",
  // "lean", "lean_bar3", "lean_fold", "lean2", "lean2_early"); nullptr: the default.
  const char* schedule = nullptr;
  double softmax_scale = 0.0;  // 0: the default, 1 / sqrt(576)
  // CUDA: FF_MLA_FP8 for this call (the FP8-cache kernel with <= 32 rows per KV head: "direct" or
  // "pair"); nullptr: the default.
  const char* fp8_kernel = nullptr;
  // CUDA: false sets FF_MLA_FP8_LEAN=0 for this call (the FP8 cache from 64 rows on the older
  // dequantizing WGMMA kernel instead of lean2 fed by a dequantizing warpgroup).
  bool fp8_lean = true;
  // CUDA: FF_MLA_FP8_PREFETCH for this call (the lean FP8 kernel with the first 1 or 2 pairs of column
  // blocks of each block loaded a block ahead into registers); nullptr: the default.
  const char* fp8_prefetch = nullptr;
};

// Inputs of one call: random q and cache, pages scattered over the cache by a permuted block table,
// NaN in every cache slot past each sequence's length and in every unused block.
struct Inputs {
  Case config;
  int64_t num_blocks = 0, max_blocks = 0;
  std::vector<uint16_t> q;           // (b, s_q, h_q, 576)
  std::vector<uint16_t> cache;       // (num_blocks, 64, h_kv, 576)
  std::vector<uint8_t> cache_fp8;    // (num_blocks, 64, h_kv, 656) when config.fp8
  std::vector<int32_t> block_table;  // (b, max_blocks)
  MlaMetadata metadata;
  std::vector<uint16_t> out;  // (b, s_q, h_q, 512)
  std::vector<float> lse;     // (b, h_q, s_q)

  FlashMlaArgs args() {
    const int64_t b = static_cast<int64_t>(config.seqlens.size());
    FlashMlaArgs args;
    args.q = TensorView::contiguous(q.data(), config.dtype, {b, config.s_q, config.h_q, kHeadDimQk});
    args.k_cache =
        config.fp8
            ? TensorView::contiguous(cache_fp8.data(), DType::kUInt8, {num_blocks, 64, config.h_kv, kFp8BytesPerToken})
            : TensorView::contiguous(cache.data(), config.dtype, {num_blocks, 64, config.h_kv, kHeadDimQk});
    args.block_table = TensorView::contiguous(block_table.data(), DType::kInt32, {b, max_blocks});
    args.cache_seqlens = TensorView::contiguous(config.seqlens.data(), DType::kInt32, {b});
    args.tile_scheduler_metadata =
        TensorView::contiguous(metadata.tile_scheduler_metadata.data(), DType::kInt32, {metadata.num_sm_parts, 8});
    args.num_splits = TensorView::contiguous(metadata.num_splits.data(), DType::kInt32, {b + 1});
    args.causal = config.causal;
    args.is_fp8_kvcache = config.fp8;
    args.out = TensorView::contiguous(out.data(), config.dtype, {b, config.s_q, config.h_q, kHeadDimV});
    args.softmax_lse = TensorView::contiguous(lse.data(), DType::kFloat32, {b, config.h_q, config.s_q});
    args.num_threads = config.num_threads;
    if (config.softmax_scale != 0.0) args.softmax_scale = static_cast<float>(config.softmax_scale);
    return args;
  }
};

uint16_t encode(float value, DType dtype) {
  return dtype == DType::kBFloat16 ? float_to_bf16(value) : float_to_fp16(value);
}
double decode(uint16_t bits, DType dtype) {
  return dtype == DType::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

Inputs make_inputs(const Case& config, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Inputs inputs;
  inputs.config = config;
  const int64_t b = static_cast<int64_t>(config.seqlens.size());
  int64_t used_blocks = 0, longest = 0;
  for (int32_t length : config.seqlens) {
    used_blocks += (length + 63) / 64;
    longest = std::max<int64_t>(longest, (length + 63) / 64);
  }
  inputs.max_blocks = longest + config.extra_columns;
  inputs.num_blocks = used_blocks + 3;  // three blocks nobody uses
  inputs.q.resize(b * config.s_q * config.h_q * kHeadDimQk);
  for (uint16_t& value : inputs.q) value = encode(normal(rng), config.dtype);
  const int64_t token_stride = config.h_kv * kHeadDimQk;
  // The FP8 cache is quantized from a bf16 one (quantize_kvcache_fp8's input), whatever q's dtype.
  const DType cache_dtype = config.fp8 ? DType::kBFloat16 : config.dtype;
  inputs.cache.assign(inputs.num_blocks * 64 * token_stride, encode(kNaN, cache_dtype));
  std::vector<int32_t> physical(inputs.num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  inputs.block_table.assign(b * inputs.max_blocks, -1);  // unused columns hold an invalid id
  int64_t next = 0;
  for (int64_t i = 0; i < b; ++i) {
    for (int32_t token = 0; token < config.seqlens[i]; ++token) {
      if (token % 64 == 0) inputs.block_table[i * inputs.max_blocks + token / 64] = physical[next++];
      const int32_t block = inputs.block_table[i * inputs.max_blocks + token / 64];
      for (int64_t c = 0; c < token_stride; ++c) {
        inputs.cache[(block * 64 + token % 64) * token_stride + c] = encode(normal(rng), cache_dtype);
      }
    }
  }
  if (config.fp8) {
    inputs.cache_fp8.resize(inputs.num_blocks * 64 * config.h_kv * kFp8BytesPerToken);
    const Status status = quantize_kvcache_fp8(
        TensorView::contiguous(inputs.cache.data(), DType::kBFloat16, {inputs.num_blocks, 64, config.h_kv, kHeadDimQk}),
        TensorView::contiguous(inputs.cache_fp8.data(), DType::kUInt8,
                               {inputs.num_blocks, 64, config.h_kv, kFp8BytesPerToken}));
    EXPECT_TRUE(status.is_ok()) << status.to_string();
  }
  Result<MlaMetadata> metadata =
      get_mla_metadata(config.seqlens, config.s_q * config.h_q / config.h_kv, config.h_kv, config.num_sms);
  EXPECT_TRUE(metadata.is_ok()) << metadata.status().to_string();
  inputs.metadata = *metadata;
  inputs.out.assign(b * config.s_q * config.h_q * kHeadDimV, encode(kNaN, config.dtype));  // must all be written
  inputs.lse.assign(b * config.h_q * config.s_q, kNaN);
  return inputs;
}

// The float value of cache channel c of token `token` of sequence i, KV head `head_k`, decoded here
// independently of the library (e4m3 by formula, scales read from the documented byte offsets).
double cache_value(const Inputs& inputs, int64_t i, int32_t token, int64_t head_k, int c) {
  const Case& config = inputs.config;
  const int64_t block = inputs.block_table[i * inputs.max_blocks + token / 64];
  const int64_t row = (block * 64 + token % 64) * config.h_kv + head_k;
  if (!config.fp8) return decode(inputs.cache[row * kHeadDimQk + c], config.dtype);
  const uint8_t* bytes = inputs.cache_fp8.data() + row * kFp8BytesPerToken;
  if (c >= 512) {
    uint16_t bits;
    std::memcpy(&bits, bytes + 528 + (c - 512) * 2, 2);
    return bf16_to_float(bits);
  }
  float scale;
  std::memcpy(&scale, bytes + 512 + (c / 128) * 4, 4);
  const int code = bytes[c], e = (code >> 3) & 15, m = code & 7;
  const double magnitude = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (code & 0x80 ? -magnitude : magnitude) * scale;
}

struct Reference {
  std::vector<double> out;  // (b, s_q, h_q, 512)
  std::vector<double> lse;  // (b, h_q, s_q), natural log, +inf for empty rows
};

// Plain float64 attention, written from the definition.
Reference reference_attention(const Inputs& inputs) {
  const Case& config = inputs.config;
  const int64_t b = static_cast<int64_t>(config.seqlens.size());
  const int group = config.h_q / config.h_kv;
  // The scale as the library takes it (a float).
  const double scale =
      config.softmax_scale != 0.0 ? static_cast<double>(static_cast<float>(config.softmax_scale)) : 1.0 / std::sqrt(576.0);
  Reference reference;
  reference.out.assign(b * config.s_q * config.h_q * 512, 0.0);
  reference.lse.assign(b * config.h_q * config.s_q, 0.0);
  for (int64_t i = 0; i < b; ++i) {
    const int32_t seqlen = config.seqlens[i];
    for (int64_t head_k = 0; head_k < config.h_kv; ++head_k) {
      std::vector<std::vector<double>> keys(seqlen, std::vector<double>(576));
      for (int32_t t = 0; t < seqlen; ++t) {
        for (int c = 0; c < 576; ++c) keys[t][c] = cache_value(inputs, i, t, head_k, c);
      }
      for (int s = 0; s < config.s_q; ++s) {
        const int32_t visible = config.causal ? std::clamp(seqlen - config.s_q + s + 1, 0, seqlen) : seqlen;
        for (int g = 0; g < group; ++g) {
          const int64_t head = head_k * group + g;
          const uint16_t* q = inputs.q.data() + ((i * config.s_q + s) * config.h_q + head) * 576;
          std::vector<double> scores(visible);
          double max_score = -std::numeric_limits<double>::infinity();
          for (int32_t t = 0; t < visible; ++t) {
            double dot = 0.0;
            for (int c = 0; c < 576; ++c) dot += decode(q[c], config.dtype) * keys[t][c];
            scores[t] = dot * scale;
            max_score = std::max(max_score, scores[t]);
          }
          double sum = 0.0;
          for (double score : scores) sum += std::exp(score - max_score);
          double* out = reference.out.data() + ((i * config.s_q + s) * config.h_q + head) * 512;
          for (int32_t t = 0; t < visible; ++t) {
            const double weight = std::exp(scores[t] - max_score) / sum;
            for (int c = 0; c < 512; ++c) out[c] += weight * keys[t][c];
          }
          reference.lse[(i * config.h_q + head) * config.s_q + s] =
              visible == 0 ? std::numeric_limits<double>::infinity() : max_score + std::log(sum);
        }
      }
    }
  }
  return reference;
}

// FlashMLA's calc_diff: 1 - 2 sum(xy) / sum(x^2 + y^2); 0 for identical vectors.
double cos_diff(const std::vector<double>& x, const std::vector<double>& y) {
  double xy = 0.0, squares = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    xy += x[i] * y[i];
    squares += x[i] * x[i] + y[i] * y[i];
  }
  return squares == 0.0 ? 0.0 : 1.0 - 2.0 * xy / squares;
}

void run_and_compare(const Case& config, uint32_t seed) {
  Inputs inputs = make_inputs(config, seed);
  const Status status = flash_mla_with_kvcache(inputs.args());
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  const Reference reference = reference_attention(inputs);
  std::vector<double> out(inputs.out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = decode(inputs.out[i], config.dtype);
    ASSERT_TRUE(std::isfinite(out[i])) << "out[" << i << "] is not finite: an unused cache slot was read";
  }
  EXPECT_LT(cos_diff(out, reference.out), 1e-5);
  // Element-wise too, so a single wrong row cannot hide in the global metric (bf16: 8 bits).
  const double tolerance = config.dtype == DType::kBFloat16 ? 1e-2 : 2e-3;
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], reference.out[i], tolerance + tolerance * std::fabs(reference.out[i])) << "out[" << i << "]";
  }
  for (size_t i = 0; i < inputs.lse.size(); ++i) {
    if (std::isinf(reference.lse[i])) {
      EXPECT_EQ(inputs.lse[i], std::numeric_limits<float>::infinity()) << "lse[" << i << "]";
    } else {
      EXPECT_NEAR(inputs.lse[i], reference.lse[i], 1e-4 * (1.0 + std::fabs(reference.lse[i]))) << "lse[" << i << "]";
    }
  }
}

TEST(Decode, Bf16SingleQueryVariableLengths) {
  run_and_compare({.seqlens = {300, 1, 64, 65, 0, 129}, .s_q = 1, .h_q = 16}, 1);
}

TEST(Decode, Bf16TwoQueriesCausal128Heads) {
  run_and_compare({.seqlens = {2, 150, 1, 77}, .s_q = 2, .h_q = 128, .causal = true}, 2);
}

TEST(Decode, Bf16TwoQueriesNotCausal) { run_and_compare({.seqlens = {97, 3}, .s_q = 2, .h_q = 32}, 3); }

TEST(Decode, Fp16WithSplitsOnTwoThreads) {
  // 4 SMs force long sequences to be split over parts, so the combine step is exercised.
  run_and_compare(
      {.seqlens = {700, 40, 260}, .s_q = 1, .h_q = 64, .dtype = DType::kFloat16, .num_sms = 4, .num_threads = 2}, 4);
}

TEST(Decode, CausalSplitsAndTwoKvHeads) {
  run_and_compare({.seqlens = {500, 2, 190}, .s_q = 2, .h_q = 32, .h_kv = 2, .causal = true, .num_sms = 8}, 5);
}

TEST(Decode, Fp8CacheMatchesTheDequantizedCache) {
  run_and_compare({.seqlens = {333, 0, 64, 1}, .s_q = 2, .h_q = 16, .causal = true, .fp8 = true, .num_sms = 6}, 6);
}

TEST(Decode, ScheduleDoesNotChangeTheResultBeyondRounding) {
  Case config{.seqlens = {1000, 30, 450}, .s_q = 1, .h_q = 16};
  std::vector<std::vector<uint16_t>> outputs;
  for (int num_sms : {1, 3, 132}) {
    config.num_sms = num_sms;
    Inputs inputs = make_inputs(config, 8);
    if (num_sms == 1) {
      EXPECT_EQ(inputs.metadata.num_splits.back(), 3);  // one part: nothing split
    } else {
      EXPECT_GT(inputs.metadata.num_splits.back(), 3);
    }
    ASSERT_TRUE(flash_mla_with_kvcache(inputs.args()).is_ok());
    outputs.push_back(inputs.out);
  }
  for (size_t i = 0; i < outputs[0].size(); ++i) {
    ASSERT_NEAR(bf16_to_float(outputs[0][i]), bf16_to_float(outputs[1][i]), 1e-2) << i;
    ASSERT_NEAR(bf16_to_float(outputs[0][i]), bf16_to_float(outputs[2][i]), 1e-2) << i;
  }
}

TEST(Decode, QuantizeKeepsNaNAndRope) {
  std::vector<uint16_t> cache(64 * 576, float_to_bf16(0.5f));
  cache[576 + 3] = float_to_bf16(kNaN);     // token 1, group 0
  cache[576 + 520] = float_to_bf16(-3.0f);  // token 1, RoPE channel 8
  std::vector<uint8_t> fp8(64 * 656);
  ASSERT_TRUE(quantize_kvcache_fp8(TensorView::contiguous(cache.data(), DType::kBFloat16, {1, 64, 1, 576}),
                                   TensorView::contiguous(fp8.data(), DType::kUInt8, {1, 64, 1, 656}))
                  .is_ok());
  EXPECT_EQ(dequantize_fp8_channel(fp8.data(), 0), 0.5f);
  EXPECT_EQ(dequantize_fp8_channel(fp8.data(), 575), 0.5f);
  EXPECT_TRUE(std::isnan(dequantize_fp8_channel(fp8.data() + 656, 3)));
  EXPECT_TRUE(std::isnan(dequantize_fp8_channel(fp8.data() + 656, 100)));  // the whole group's scale is NaN
  EXPECT_EQ(dequantize_fp8_channel(fp8.data() + 656, 200), 0.5f);          // other groups unaffected
  EXPECT_EQ(dequantize_fp8_channel(fp8.data() + 656, 520), -3.0f);
}

// ---------------------------------------------------------------------------------------------
// Errors

class DecodeErrors : public ::testing::Test {
 protected:
  void SetUp() override { inputs_ = make_inputs({.seqlens = {300, 10}, .s_q = 1, .h_q = 16}, 9); }
  std::string error_of(const FlashMlaArgs& args) {
    const Status status = flash_mla_with_kvcache(args);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
    return status.message();
  }
  std::string error_of_cuda(const FlashMlaArgs& args) {
    const Status status = flash_mla_with_kvcache(args, Backend::kCuda);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
    return status.message();
  }
  Inputs inputs_;
};

TEST_F(DecodeErrors, NameTheBadValue) {
  FlashMlaArgs args = inputs_.args();
  ASSERT_TRUE(flash_mla_with_kvcache(args).is_ok());

  args = inputs_.args();
  args.q.dtype = DType::kFloat32;
  EXPECT_THAT(error_of(args), HasSubstr("q has dtype float32; expected bfloat16 or float16"));

  args = inputs_.args();
  args.k_cache.dtype = DType::kFloat16;
  EXPECT_THAT(error_of(args), HasSubstr("k_cache has dtype float16 but q has bfloat16"));

  args = inputs_.args();
  args.q.strides = {576 * 16, 576 * 16, 576, 2};
  EXPECT_THAT(error_of(args), HasSubstr("q has stride 2 in its last dimension"));

  args = inputs_.args();
  args.q.shape[3] = 512;
  EXPECT_THAT(error_of(args), HasSubstr("q has head dim 512; expected 576"));

  args = inputs_.args();
  args.head_dim_v = 576;
  EXPECT_THAT(error_of(args), HasSubstr("head_dim_v is 576"));

  args = inputs_.args();
  args.block_table.shape[1] = 3;  // seq 0 needs 5
  EXPECT_THAT(error_of(args), HasSubstr("block_table has 3 columns, but seq 0 needs 5 blocks of 64 for 300 tokens"));

  args = inputs_.args();
  inputs_.block_table[1 * inputs_.max_blocks] = 99;
  EXPECT_THAT(error_of(args), HasSubstr("block_table[1][0] = 99 is outside k_cache's"));
}

TEST_F(DecodeErrors, HeadsShapesAndMetadata) {
  FlashMlaArgs args = inputs_.args();
  args.k_cache.shape[2] = 3;  // h_kv 3 does not divide h_q 16
  EXPECT_THAT(error_of(args), HasSubstr("h_q = 16 is not a multiple of h_kv = 3"));

  args = inputs_.args();
  args.tile_scheduler_metadata.shape[1] = 7;
  EXPECT_THAT(error_of(args), HasSubstr("tile_scheduler_metadata has shape"));

  args = inputs_.args();
  args.num_splits.shape[0] = 2;
  EXPECT_THAT(error_of(args), HasSubstr("num_splits has shape (2,); expected (3,)"));

  args = inputs_.args();
  args.is_fp8_kvcache = true;
  EXPECT_THAT(error_of(args), HasSubstr("k_cache has dtype bfloat16; expected uint8 or float8_e4m3fn"));

  // Metadata of another decode step: seq 1 grew from 10 to 40 tokens (still one block).
  inputs_.config.seqlens[1] = 40;
  args = inputs_.args();
  EXPECT_THAT(error_of(args), HasSubstr("do not describe cache_seqlens"));

  args = inputs_.args();
  args.out.shape[3] = 576;
  inputs_.config.seqlens[1] = 10;
  EXPECT_THAT(error_of(args), HasSubstr("out has shape"));

  // Host views on the CUDA backend: an error either way (not built here, or the wrong device).
  args = inputs_.args();
#ifdef FF_MLA_HAVE_CUDA
  EXPECT_THAT(error_of_cuda(args), HasSubstr("q is on the CPU, but this call runs on the GPU"));
#else
  EXPECT_EQ(flash_mla_with_kvcache(args, Backend::kCuda).code(), StatusCode::kFailedPrecondition);
#endif
}

// ---------------------------------------------------------------------------------------------
// CUDA backend: the kernel against the CPU implementation and the float64 reference.

#ifdef FF_MLA_HAVE_CUDA

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define FF_CUDA_CHECK(expression)                                                        \
  do {                                                                                   \
    const cudaError_t error_ = (expression);                                             \
    ASSERT_EQ(error_, cudaSuccess) << #expression << ": " << cudaGetErrorString(error_); \
  } while (0)

// A device copy of a host vector, freed on destruction.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : size_(host.size()) {
    EXPECT_EQ(cudaMalloc(&data_, std::max<size_t>(size_, 1) * sizeof(T)), cudaSuccess);
    if (size_ > 0) {
      EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* data() const { return static_cast<T*>(data_); }
  std::vector<T> to_host() const {
    std::vector<T> host(size_);
    EXPECT_EQ(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

TensorView on_device(TensorView view, void* data) {
  view.data = data;
  view.device = Device::kCuda;
  view.device_index = 0;
  return view;
}

// Device copies of a case's inputs, the output and lse starting as `out` / `lse`, and `host`'s arguments
// pointed at them (the FP8 or the 16-bit cache, as the case says).
struct DeviceInputs {
  DeviceInputs(const Inputs& inputs, const std::vector<uint16_t>& out_start, const std::vector<float>& lse_start)
      : q(inputs.q),
        cache(inputs.cache),
        out(out_start),
        cache_fp8(inputs.cache_fp8),
        block_table(inputs.block_table),
        seqlens(inputs.config.seqlens),
        metadata(inputs.metadata.tile_scheduler_metadata),
        splits(inputs.metadata.num_splits),
        lse(lse_start),
        fp8(inputs.config.fp8) {}

  FlashMlaArgs args(FlashMlaArgs host) const {
    host.q = on_device(host.q, q.data());
    host.k_cache = on_device(host.k_cache, fp8 ? static_cast<void*>(cache_fp8.data()) : cache.data());
    host.block_table = on_device(host.block_table, block_table.data());
    host.cache_seqlens = on_device(host.cache_seqlens, seqlens.data());
    host.tile_scheduler_metadata = on_device(host.tile_scheduler_metadata, metadata.data());
    host.num_splits = on_device(host.num_splits, splits.data());
    host.out = on_device(host.out, out.data());
    host.softmax_lse = on_device(host.softmax_lse, lse.data());
    return host;
  }

  DeviceBuffer<uint16_t> q, cache, out;
  DeviceBuffer<uint8_t> cache_fp8;
  DeviceBuffer<int32_t> block_table, seqlens, metadata, splits;
  DeviceBuffer<float> lse;
  bool fp8;
};

// Sets an environment variable for its lifetime when `value` is given (the dispatch's FF_MLA_* switches).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(value != nullptr ? name : nullptr) {
    if (name_ != nullptr) {
      EXPECT_EQ(setenv(name_, value, 1), 0) << name_;
    }
  }
  ~ScopedEnv() {
    if (name_ != nullptr) {
      EXPECT_EQ(unsetenv(name_), 0) << name_;
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// The TMA kernel the dispatch takes for a bf16 / fp16 cache with >= 64 rows per KV head under the
// schedule named by the case, else by the environment of the whole run (device_session.sh runs the
// sanitizers on a refinement that way), else the default. The folded softmax (lean_fold, lean2,
// lean2_early, the default) needs softmax_scale > 0 (`positive_scale`); the lean kernel runs otherwise.
const char* expected_tma_kernel(const char* case_schedule, bool positive_scale) {
  const char* name = case_schedule != nullptr ? case_schedule : std::getenv("FF_MLA_SCHEDULE");
  const std::string_view schedule = name != nullptr ? name : "";
  return schedule == "seesaw"        ? "wgmma_seesaw"
         : schedule == "pipelined"   ? "wgmma_tma"
         : schedule == "lean"        ? "wgmma_tma_lean"
         : schedule == "lean_bar3"   ? "wgmma_tma_lean_bar3"
         : !positive_scale           ? "wgmma_tma_lean"
         : schedule == "lean_fold"   ? "wgmma_tma_lean_fold"
         : schedule == "lean2"       ? "wgmma_tma_lean2"
         : schedule == "lean2_early" ? "wgmma_tma_lean2_early"
                                     : kDefaultTmaKernel;
}

// The FP8-cache kernel the dispatch takes with <= 32 rows per KV head under the kernel named by the
// case, else by the environment of the whole run, else the default; the pair and wide kernels exist
// for <= 16 rows only (the direct one runs with more), the direct and channels ones for <= 32.
const char* expected_fp8_few_rows_kernel(const char* case_kernel, int rows) {
  const char* name = case_kernel != nullptr ? case_kernel : std::getenv("FF_MLA_FP8");
  const std::string_view kernel = name != nullptr ? name : "";
  const bool few_rows_only = kernel == "pair" || kernel == "wide";
  return rows > 16 && few_rows_only     ? "mma_sync_fp8_direct"
         : kernel == "direct"           ? "mma_sync_fp8_direct"
         : kernel == "pair"             ? "mma_sync_fp8_pair"
         : kernel == "wide"             ? "mma_sync_fp8_wide"
         : kernel == "channels"         ? "mma_sync_fp8_channels"
         : kernel == "channels_split_s" ? "mma_sync_fp8_channels_split_s"
         : kernel == "transposed"       ? "wgmma_fp8_transposed"
         : kernel == "transposed_wg"    ? (rows <= 16 ? "wgmma_fp8_transposed_wg" : "wgmma_fp8_transposed")
         : rows <= 16                   ? kDefaultFp8Kernel16
                                        : kDefaultFp8Kernel32;
}

// Runs the CPU backend and the CUDA backend (output poisoned with NaN first) on the same inputs and
// compares both with each other and with float64 attention.
void run_cuda_and_compare(const Case& config, uint32_t seed, bool check_values = true) {
  if (!have_gpu()) {
    GTEST_SKIP() << "no CUDA device";
  }
  Inputs inputs = make_inputs(config, seed);
  const FlashMlaArgs host_args = inputs.args();
  const Status cpu_status = flash_mla_with_kvcache(host_args);
  ASSERT_TRUE(cpu_status.is_ok()) << cpu_status.to_string();
  const std::vector<uint16_t> cpu_out = inputs.out;
  const std::vector<float> cpu_lse = inputs.lse;

  DeviceInputs device(inputs, std::vector<uint16_t>(inputs.out.size(), encode(kNaN, config.dtype)),
                      std::vector<float>(inputs.lse.size(), kNaN));
  FlashMlaArgs args = device.args(host_args);
  args.check_values = check_values;
  Status status;
  {
    const ScopedEnv kernel("FF_MLA_KERNEL", config.force_mma_sync ? "mma_sync" : nullptr);
    const ScopedEnv loads("FF_MLA_LOADS", config.cp_async_loads ? "cp_async" : nullptr);
    const ScopedEnv schedule("FF_MLA_SCHEDULE", config.schedule);
    const ScopedEnv fp8_kernel("FF_MLA_FP8", config.fp8_kernel);
    const ScopedEnv fp8_lean("FF_MLA_FP8_LEAN", config.fp8_lean ? nullptr : "0");
    const ScopedEnv fp8_prefetch("FF_MLA_FP8_PREFETCH", config.fp8_prefetch);
    status = flash_mla_with_kvcache(args, Backend::kCuda);
  }
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  FF_CUDA_CHECK(cudaDeviceSynchronize());
  // The dispatch (unless forced off): WGMMA for a bf16 / fp16 cache at any row count, with TMA loads
  // (unless forced off); for the FP8 cache from 64 query rows per KV head on, else mma.sync.
  const int rows = config.s_q * (config.h_q / config.h_kv);
  const bool wgmma = !config.force_mma_sync && (rows >= 64 || !config.fp8);
  const char* tma_kernel = expected_tma_kernel(config.schedule, config.softmax_scale >= 0.0);
  // The FP8 cache: lean2 fed by a dequantizing warpgroup unless turned off or the scale is not positive.
  const bool fp8_lean = config.fp8_lean && config.softmax_scale >= 0.0;
  const char* expected_kernel = wgmma && !config.fp8 && !config.cp_async_loads ? tma_kernel
                                : wgmma && config.fp8 && fp8_lean              ? "wgmma_fp8_lean"
                                : wgmma                                        ? "wgmma"
                                : config.fp8 && rows <= 32 ? expected_fp8_few_rows_kernel(config.fp8_kernel, rows)
                                                           : "mma_sync";
  EXPECT_EQ(last_cuda_kernel(), expected_kernel) << rows << " rows per KV head";
  const std::vector<uint16_t> gpu_out = device.out.to_host();
  const std::vector<float> gpu_lse = device.lse.to_host();

  const Reference reference = reference_attention(inputs);
  std::vector<double> gpu(gpu_out.size()), cpu(cpu_out.size());
  for (size_t i = 0; i < gpu.size(); ++i) {
    gpu[i] = decode(gpu_out[i], config.dtype);
    cpu[i] = decode(cpu_out[i], config.dtype);
    ASSERT_TRUE(std::isfinite(gpu[i])) << "gpu out[" << i << "] = " << gpu[i]
                                       << ": unwritten, or an unused slot was read";
  }
  EXPECT_LT(cos_diff(gpu, cpu), 1e-5);
  EXPECT_LT(cos_diff(gpu, reference.out), 1e-5);
  const double tolerance = config.dtype == DType::kBFloat16 ? 1.6e-2 : 4e-3;
  for (size_t i = 0; i < gpu.size(); ++i) {
    ASSERT_NEAR(gpu[i], reference.out[i], tolerance + tolerance * std::fabs(reference.out[i])) << "out[" << i << "]";
  }
  // With more than 32 query rows per KV head the kernel rounds a dequantized FP8 cache to the dtype
  // of q before its MMAs (as FlashMLA does), which moves scores by up to ~2^-9 relative per channel;
  // the CPU path keeps them in fp32. With fewer rows its MMAs take the exact e4m3 values (f16) and
  // fold the scales in fp32, so the bf16 bound holds.
  const bool rounded_fp8 = config.fp8 && config.s_q * (config.h_q / config.h_kv) > 32;
  const double lse_tolerance = rounded_fp8 ? 6e-3 : 1e-3;
  for (size_t i = 0; i < gpu_lse.size(); ++i) {
    if (std::isinf(reference.lse[i])) {
      EXPECT_EQ(gpu_lse[i], std::numeric_limits<float>::infinity()) << "lse[" << i << "]";
    } else {
      EXPECT_NEAR(gpu_lse[i], reference.lse[i], lse_tolerance * (1.0 + std::fabs(reference.lse[i])))
          << "lse[" << i << "]";
      EXPECT_NEAR(gpu_lse[i], cpu_lse[i], lse_tolerance * (1.0 + std::fabs(cpu_lse[i]))) << "lse[" << i << "]";
    }
  }
}

TEST(CudaDecode, Bf16VariableLengthsUnsplit) {
  run_cuda_and_compare({.seqlens = {1, 63, 64, 65, 300, 0, 129}, .s_q = 1, .h_q = 16}, 21);
}

TEST(CudaDecode, Bf16SplitsOnFewSms) {
  run_cuda_and_compare({.seqlens = {700, 65, 1000, 3}, .s_q = 1, .h_q = 32, .num_sms = 8}, 22);
}

// The combine kernel with many splits of one sequence (more than 32): a 30,000-token sequence over
// 100 SM parts, beside short ones; the bf16 and the FP8 kernels, 16 and 32 rows.
TEST(CudaDecode, CombineManySplits) {
  const std::vector<int32_t> seqlens = {30000, 70, 5000, 1};
  for (const int rows : {16, 32}) {
    const Result<MlaMetadata> metadata = get_mla_metadata(seqlens, rows, 1, 100);
    ASSERT_TRUE(metadata.is_ok()) << metadata.status().to_string();
    EXPECT_GT(metadata->num_splits[1] - metadata->num_splits[0], 32) << "rows " << rows;
  }
  for (const bool fp8 : {false, true}) {
    for (const int s_q : {1, 2}) {
      SCOPED_TRACE(testing::Message() << "fp8 " << fp8 << " s_q " << s_q);
      run_cuda_and_compare({.seqlens = seqlens, .s_q = s_q, .h_q = 16, .fp8 = fp8, .num_sms = 100}, 28);
    }
  }
}

TEST(CudaDecode, Bf16TwoQueriesCausal128Heads) {
  run_cuda_and_compare({.seqlens = {1, 2, 130, 511}, .s_q = 2, .h_q = 128, .causal = true, .num_sms = 6}, 23);
}

TEST(CudaDecode, Bf16TwoQueriesNotCausal64Heads) {
  run_cuda_and_compare({.seqlens = {97, 3, 640}, .s_q = 2, .h_q = 64, .num_sms = 10}, 24, false);
}

TEST(CudaDecode, Fp16CausalTwoKvHeads) {
  run_cuda_and_compare(
      {.seqlens = {200, 64, 5}, .s_q = 2, .h_q = 32, .h_kv = 2, .causal = true, .dtype = DType::kFloat16, .num_sms = 7},
      25);
}

TEST(CudaDecode, Fp8Cache) {
  run_cuda_and_compare({.seqlens = {333, 64, 1, 900}, .s_q = 1, .h_q = 64, .fp8 = true, .num_sms = 9}, 26);
}

TEST(CudaDecode, Fp8CacheSixteenHeadsSplitTokens) {
  run_cuda_and_compare({.seqlens = {500, 1, 64, 129}, .s_q = 1, .h_q = 16, .fp8 = true, .num_sms = 3}, 30);
}

TEST(CudaDecode, Fp8CacheTwoKvHeadsCausal) {
  run_cuda_and_compare(
      {.seqlens = {700, 2, 65, 191}, .s_q = 1, .h_q = 64, .h_kv = 2, .causal = true, .fp8 = true, .num_sms = 4}, 31);
}

TEST(CudaDecode, Fp8CacheCausalFp16) {
  run_cuda_and_compare(
      {.seqlens = {100, 260}, .s_q = 2, .h_q = 16, .causal = true, .dtype = DType::kFloat16, .fp8 = true, .num_sms = 5},
      27);
}

// The FP8-cache kernels for <= 32 rows per KV head (FF_MLA_FP8=direct, pair, wide, channels,
// channels_split_s, transposed, transposed_wg): lengths 0 to 500 around
// block and round edges (63..65, 127..129, 191..193) on 5 SMs (split pieces that start on odd blocks,
// rounds whose second block lies past the piece), long split sequences, unsplit, two KV heads causal,
// fp16 with two query tokens (32 rows, where "pair" and "wide" run the direct kernel) causal.
TEST(CudaDecode, Fp8FewRowsKernelsForced) {
  for (const char* kernel : {"direct", "pair", "wide", "channels", "channels_split_s", "transposed", "transposed_wg"}) {
    SCOPED_TRACE(kernel);
    run_cuda_and_compare({.seqlens = {1, 63, 64, 65, 127, 128, 129, 191, 192, 193, 300, 0, 500},
                          .s_q = 1,
                          .h_q = 16,
                          .fp8 = true,
                          .num_sms = 5,
                          .fp8_kernel = kernel},
                         64);
    run_cuda_and_compare(
        {.seqlens = {2048, 1500, 4097}, .s_q = 1, .h_q = 16, .fp8 = true, .num_sms = 11, .fp8_kernel = kernel}, 65);
    run_cuda_and_compare({.seqlens = {1000, 64, 3, 130}, .s_q = 1, .h_q = 16, .fp8 = true, .fp8_kernel = kernel}, 66);
    run_cuda_and_compare({.seqlens = {700, 2, 65, 191},
                          .s_q = 1,
                          .h_q = 32,
                          .h_kv = 2,
                          .causal = true,
                          .fp8 = true,
                          .num_sms = 4,
                          .fp8_kernel = kernel},
                         67);
    run_cuda_and_compare({.seqlens = {100, 260, 129, 640},
                          .s_q = 2,
                          .h_q = 16,
                          .causal = true,
                          .dtype = DType::kFloat16,
                          .fp8 = true,
                          .num_sms = 5,
                          .fp8_kernel = kernel},
                         68);
    run_cuda_and_compare({.seqlens = {100, 260, 129, 640, 1},
                          .s_q = 2,
                          .h_q = 8,
                          .causal = true,
                          .dtype = DType::kFloat16,
                          .fp8 = true,
                          .num_sms = 6,
                          .fp8_kernel = kernel},
                         69);
    // 32 rows, bf16, several pieces per CTA among them empty and one-token ones (the channel-split
    // kernel loads each next piece's first round during the last round of the one before).
    run_cuda_and_compare(
        {.seqlens = {0, 300, 1, 0, 129, 64, 2000, 0, 65, 700}, .s_q = 2, .h_q = 16, .fp8 = true, .num_sms = 3,
         .fp8_kernel = kernel},
        70);
  }
}

// The WGMMA kernel (>= 64 rows per KV head): long and ragged lengths (0, 1, block edges), unsplit and
// split schedules, causal, two KV heads, fp16, a partial second row tile, the FP8 cache; the mma.sync
// kernel on the same shapes when forced.
TEST(CudaDecode, WgmmaBf16VariableLengths128Heads) {
  run_cuda_and_compare({.seqlens = {1, 63, 64, 65, 300, 0, 129, 1000}, .s_q = 1, .h_q = 128}, 40);
}

TEST(CudaDecode, WgmmaBf16SplitsCausalTwoQueries) {
  run_cuda_and_compare({.seqlens = {700, 65, 1000, 3, 2}, .s_q = 2, .h_q = 64, .causal = true, .num_sms = 8}, 41);
}

TEST(CudaDecode, WgmmaFp16TwoKvHeadsCausal) {
  run_cuda_and_compare({.seqlens = {200, 64, 5, 450},
                        .s_q = 1,
                        .h_q = 128,
                        .h_kv = 2,
                        .causal = true,
                        .dtype = DType::kFloat16,
                        .num_sms = 7},
                       42);
}

TEST(CudaDecode, WgmmaPartialRowTile) {
  run_cuda_and_compare({.seqlens = {513, 31, 128}, .s_q = 2, .h_q = 48, .causal = true, .num_sms = 5}, 43);
}

TEST(CudaDecode, WgmmaFp8CacheTwoQueries) {
  run_cuda_and_compare({.seqlens = {600, 1, 64, 190}, .s_q = 2, .h_q = 64, .fp8 = true, .num_sms = 6}, 44);
}

// The FP8 cache from 64 rows: lean2 fed by warpgroup 1's dequantization ("wgmma_fp8_lean"; lengths at
// block edges, 0 and 1, pieces of 1 to many blocks split and unsplit, causal, fp16, two KV heads, a
// partial second row tile) with each next block's first pair of column blocks prefetched into registers (the
// default), the same shapes with no prefetch (FF_MLA_FP8_PREFETCH=0) and with two pairs (=2), and on the older
// dequantizing kernel (FF_MLA_FP8_LEAN=0).
TEST(CudaDecode, WgmmaFp8LeanAndOlderKernel) {
  const Case shapes[] = {
      {.seqlens = {1, 63, 64, 65, 300, 0, 129, 1000}, .s_q = 1, .h_q = 128},
      {.seqlens = {2048, 1500, 4097}, .s_q = 1, .h_q = 128, .num_sms = 11},
      {.seqlens = {200, 64, 5, 450}, .h_q = 128, .h_kv = 2, .causal = true, .dtype = DType::kFloat16, .num_sms = 7},
      {.seqlens = {513, 31, 128}, .s_q = 2, .h_q = 48, .causal = true, .num_sms = 5},
      // A non-positive scale keeps the older kernel (the folded softmax needs a positive one).
      {.seqlens = {300, 65}, .s_q = 1, .h_q = 64, .softmax_scale = -0.05},
  };
  struct Variant {
    bool lean;
    const char* prefetch;
  };
  for (const Variant variant :
       {Variant{true, nullptr}, Variant{true, "0"}, Variant{true, "2"}, Variant{false, nullptr}}) {
    uint32_t seed = 71;
    for (Case shape : shapes) {
      SCOPED_TRACE(testing::Message() << "fp8_lean " << variant.lean << ", prefetch "
                                      << (variant.prefetch ? variant.prefetch : "default") << ", seed " << seed);
      shape.fp8 = true;
      shape.fp8_lean = variant.lean;
      shape.fp8_prefetch = variant.prefetch;
      run_cuda_and_compare(shape, seed++);
    }
  }
}

// The TMA WGMMA kernel's seesaw schedule (FF_MLA_SCHEDULE=seesaw; not the default, it measured slower).
TEST(CudaDecode, WgmmaSeesawScheduleForced) {
  run_cuda_and_compare({.seqlens = {1, 63, 64, 65, 300, 0, 129, 1000}, .s_q = 1, .h_q = 128, .schedule = "seesaw"}, 49);
  run_cuda_and_compare({.seqlens = {2048, 1500, 4097}, .s_q = 1, .h_q = 128, .num_sms = 11, .schedule = "seesaw"}, 50);
}

// The seesaw schedule alternates blocks between the warpgroups: pieces of 1 to 6 blocks (odd and even
// counts, a partial last block or not), split and unsplit, fp16 and causal with two query tokens.
TEST(CudaDecode, WgmmaSeesawBlockCounts) {
  run_cuda_and_compare(
      {.seqlens = {64, 128, 192, 256, 320, 384, 100, 170, 250, 330}, .s_q = 1, .h_q = 128, .schedule = "seesaw"}, 51);
  run_cuda_and_compare({.seqlens = {64, 128, 192, 256, 320, 384, 100, 170, 250, 330},
                        .s_q = 1,
                        .h_q = 128,
                        .num_sms = 5,
                        .schedule = "seesaw"},
                       52);
  run_cuda_and_compare({.seqlens = {383, 64, 129, 7},
                        .s_q = 2,
                        .h_q = 64,
                        .causal = true,
                        .dtype = DType::kFloat16,
                        .num_sms = 7,
                        .schedule = "seesaw"},
                       53);
}

// The pipelined schedule without the lean changes (FF_MLA_SCHEDULE=pipelined; the default before them),
// and the lean one named explicitly, on the same cases.
// The cases every forced TMA schedule runs: h_q 128 with lengths 0 to 1000 (seed `short_seed`), long
// split sequences on 11 SMs (`long_seed`), and fp16 causal with two query tokens at h_q 64 on 7 SMs
// (`causal_seed`).
void run_schedule_cases(const char* schedule, uint32_t short_seed, uint32_t long_seed, uint32_t causal_seed) {
  run_cuda_and_compare({.seqlens = {1, 63, 64, 65, 300, 0, 129, 1000}, .s_q = 1, .h_q = 128, .schedule = schedule},
                       short_seed);
  run_cuda_and_compare({.seqlens = {2048, 1500, 4097}, .s_q = 1, .h_q = 128, .num_sms = 11, .schedule = schedule},
                       long_seed);
  run_cuda_and_compare({.seqlens = {383, 64, 129, 7, 640},
                        .s_q = 2,
                        .h_q = 64,
                        .causal = true,
                        .dtype = DType::kFloat16,
                        .num_sms = 7,
                        .schedule = schedule},
                       causal_seed);
}

TEST(CudaDecode, WgmmaPipelinedAndLeanSchedulesForced) {
  for (const char* schedule : {"pipelined", "lean"}) {
    SCOPED_TRACE(schedule);
    run_schedule_cases(schedule, 54, 55, 56);
  }
}

// The refinements of the lean kernel (FF_MLA_SCHEDULE=lean_bar3, lean_fold, lean2, lean2_early):
// lengths 0 to 1000, long split sequences, pieces of 1 to 6 blocks with full or partial last blocks
// (the grouped mbarriers of a tail block on cp.async), fp16 causal with two query tokens, and a
// negative softmax scale (the folded softmax needs a positive one: the dispatch takes the lean kernel).
TEST(CudaDecode, WgmmaLeanRefinementsForced) {
  for (const char* schedule : {"lean_bar3", "lean_fold", "lean2", "lean2_early"}) {
    SCOPED_TRACE(schedule);
    run_schedule_cases(schedule, 57, 58, 60);
    run_cuda_and_compare({.seqlens = {64, 128, 192, 256, 320, 384, 100, 170, 250, 330},
                          .s_q = 1,
                          .h_q = 128,
                          .num_sms = 5,
                          .schedule = schedule},
                         59);
    run_cuda_and_compare(
        {.seqlens = {700, 65, 3}, .s_q = 1, .h_q = 128, .num_sms = 4, .schedule = schedule, .softmax_scale = -0.03},
        61);
  }
  // The default with a negative scale, and with a scale > 0 other than the default.
  run_cuda_and_compare({.seqlens = {700, 65, 3}, .s_q = 1, .h_q = 128, .num_sms = 4, .softmax_scale = -0.03}, 62);
  run_cuda_and_compare({.seqlens = {700, 65, 3}, .s_q = 2, .h_q = 64, .causal = true, .softmax_scale = 0.07}, 63);
}

TEST(CudaDecode, WgmmaCpAsyncLoadsForced) {
  run_cuda_and_compare({.seqlens = {1, 63, 64, 65, 300, 0, 129, 1000}, .s_q = 1, .h_q = 128, .cp_async_loads = true},
                       46);
}

// Long runs of full blocks (TMA) with splits, and sequences whose last block is partial (cp.async).
TEST(CudaDecode, WgmmaTmaLongSplitSequences) {
  run_cuda_and_compare({.seqlens = {2048, 1500, 4097}, .s_q = 1, .h_q = 128, .num_sms = 11}, 47);
}

// A bad block id without the value check: the TMA path reads nothing outside the cache (zeros).
TEST(CudaDecode, WgmmaTmaBadBlockIdsLoadZeros) {
  if (!have_gpu()) {
    GTEST_SKIP() << "no CUDA device";
  }
  Inputs inputs = make_inputs({.seqlens = {640, 300}, .s_q = 1, .h_q = 128}, 48);
  inputs.block_table[0 * inputs.max_blocks + 2] = 1 << 30;
  inputs.block_table[1 * inputs.max_blocks + 1] = -7;
  const DeviceInputs device(inputs, inputs.out, inputs.lse);
  FlashMlaArgs args = device.args(inputs.args());
  args.check_values = false;
  ASSERT_TRUE(flash_mla_with_kvcache(args, Backend::kCuda).is_ok());
  FF_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(last_cuda_kernel(), std::string_view(expected_tma_kernel(nullptr, true)));
  for (const uint16_t bits : device.out.to_host()) ASSERT_TRUE(std::isfinite(bf16_to_float(bits)));
}

TEST(CudaDecode, MmaSyncForcedOn128Heads) {
  run_cuda_and_compare({.seqlens = {1, 300, 0, 129}, .s_q = 1, .h_q = 128, .num_sms = 9, .force_mma_sync = true}, 45);
}

// The 16-bit few-row shapes (16 and 32 rows) now take the WGMMA kernel; the mma.sync kernel and its token
// split (kSplit 4 and 2) stay selectable by FF_MLA_KERNEL=mma_sync and are checked here.
TEST(CudaDecode, Bf16FewRowsOnTheMmaSyncKernel) {
  for (const int s_q : {1, 2}) {
    SCOPED_TRACE(testing::Message() << "s_q " << s_q);
    run_cuda_and_compare(
        {.seqlens = {1, 63, 64, 65, 300, 0, 1029}, .s_q = s_q, .h_q = 16, .num_sms = 5, .force_mma_sync = true}, 46);
  }
}

TEST(CudaDecode, ErrorsNameTheBadValue) {
  if (!have_gpu()) {
    GTEST_SKIP() << "no CUDA device";
  }
  Inputs inputs = make_inputs({.seqlens = {300, 10}, .s_q = 1, .h_q = 16}, 28);
  inputs.block_table[1 * inputs.max_blocks] = 99;
  const DeviceInputs device(inputs, inputs.out, inputs.lse);
  FlashMlaArgs args = device.args(inputs.args());
  args.check_values = true;
  Status status = flash_mla_with_kvcache(args, Backend::kCuda);
  EXPECT_THAT(status.message(), HasSubstr("block_table[1][0] = 99 is outside k_cache's")) << status.to_string();
  FlashMlaArgs mixed = args;
  mixed.block_table = inputs.args().block_table;
  status = flash_mla_with_kvcache(mixed, Backend::kCuda);
  EXPECT_THAT(status.message(), HasSubstr("block_table is on the CPU, but this call runs on the GPU"));
  mixed = args;
  mixed.q.strides[2] = 580;
  status = flash_mla_with_kvcache(mixed, Backend::kCuda);
  EXPECT_THAT(status.message(), HasSubstr("q has stride 580 in dimension 2; the CUDA kernel needs a multiple of 8"));
  // Without the value check the bad block id is skipped (zeros), never read out of bounds.
  args.check_values = false;
  EXPECT_TRUE(flash_mla_with_kvcache(args, Backend::kCuda).is_ok());
  FF_CUDA_CHECK(cudaDeviceSynchronize());
}

// The metadata kernel against the host schedule: batch sizes from 1 to past what its shared memory holds, lengths
// with zeros and up to 200K tokens, strided lengths, several row counts, KV heads and SM counts; a negative length
// counts as 0. Every element of both outputs is written.
TEST(CudaMetadata, KernelMatchesTheHostSchedule) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(23);
  const int batches[] = {1, 2, 3, 37, 64, 128, 129, 1000, 4096, 12288, 20000, 30000};  // 30000: the serial kernel
  for (int trial = 0; trial < 48; ++trial) {
    const int b = batches[trial % std::size(batches)];
    const int stride = trial % 3 == 2 ? 2 : 1;
    std::vector<int32_t> lengths(b), strided(static_cast<size_t>(b) * stride, -99);
    for (int i = 0; i < b; ++i) {
      const uint32_t draw = rng();
      lengths[i] = draw % 5 == 0 ? 0 : static_cast<int32_t>(rng() % (trial % 2 == 0 ? 200000 : 300));
      strided[static_cast<size_t>(i) * stride] = lengths[i];
    }
    if (trial % 7 == 3) strided[0] = -5;  // counted as 0 by the kernel
    if (trial % 7 == 3) lengths[0] = 0;
    const int64_t rows = 16 << (rng() % 5);
    const int64_t h_kv = 1 + trial % 2;
    const int num_sms = trial % 4 == 1 ? 1 + static_cast<int>(rng() % 140) : kDefaultNumSms;
    Result<MlaMetadata> expected = get_mla_metadata(lengths, rows, h_kv, num_sms);
    ASSERT_TRUE(expected.is_ok()) << expected.status().to_string();
    const int32_t parts = expected->num_sm_parts;
    DeviceBuffer<int32_t> seqlens(strided), metadata(std::vector<int32_t>(static_cast<size_t>(parts) * 8, -7)),
        splits(std::vector<int32_t>(static_cast<size_t>(b) + 1, -7));
    MlaMetadataArgs args;
    args.cache_seqlens =
        on_device(TensorView::contiguous(static_cast<void*>(nullptr), DType::kInt32, {b}), seqlens.data());
    args.cache_seqlens.strides[0] = stride;
    args.num_q_tokens_per_head_k = rows;
    args.num_heads_k = h_kv;
    args.num_sms = num_sms;
    args.tile_scheduler_metadata =
        on_device(TensorView::contiguous(static_cast<void*>(nullptr), DType::kInt32, {parts, 8}), metadata.data());
    args.num_splits =
        on_device(TensorView::contiguous(static_cast<void*>(nullptr), DType::kInt32, {b + 1}), splits.data());
    const Status status = get_mla_metadata(args, Backend::kCuda);
    ASSERT_TRUE(status.is_ok()) << status.to_string();
    FF_CUDA_CHECK(cudaDeviceSynchronize());
    ASSERT_EQ(metadata.to_host(), expected->tile_scheduler_metadata) << "trial " << trial << ", b " << b;
    ASSERT_EQ(splits.to_host(), expected->num_splits) << "trial " << trial << ", b " << b;
  }
}

// Captured in a CUDA graph, the kernel reads the lengths when the graph is replayed.
TEST(CudaMetadata, ACapturedScheduleFollowsTheLengthsAtReplay) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const std::vector<int32_t> first(128, 64), second = [] {
    std::vector<int32_t> lengths(128);
    for (int i = 0; i < 128; ++i) lengths[i] = 1 + 97 * i;
    return lengths;
  }();
  const int32_t parts = num_sm_parts_for(128, 1);
  DeviceBuffer<int32_t> seqlens(first), metadata(std::vector<int32_t>(static_cast<size_t>(parts) * 8, -7)),
      splits(std::vector<int32_t>(129, -7));
  cudaStream_t stream = nullptr;
  FF_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  MlaMetadataArgs args;
  args.cache_seqlens =
      on_device(TensorView::contiguous(static_cast<void*>(nullptr), DType::kInt32, {128}), seqlens.data());
  args.num_q_tokens_per_head_k = 128;
  args.tile_scheduler_metadata =
      on_device(TensorView::contiguous(static_cast<void*>(nullptr), DType::kInt32, {parts, 8}), metadata.data());
  args.num_splits = on_device(TensorView::contiguous(static_cast<void*>(nullptr), DType::kInt32, {129}), splits.data());
  args.stream = stream;
  cudaGraph_t graph = nullptr;
  FF_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const Status status = get_mla_metadata(args, Backend::kCuda);
  FF_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  cudaGraphExec_t exec = nullptr;
  FF_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  FF_CUDA_CHECK(cudaMemcpy(seqlens.data(), second.data(), second.size() * 4, cudaMemcpyHostToDevice));
  FF_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  FF_CUDA_CHECK(cudaStreamSynchronize(stream));
  Result<MlaMetadata> expected = get_mla_metadata(second, 128, 1);
  ASSERT_TRUE(expected.is_ok());
  EXPECT_EQ(metadata.to_host(), expected->tile_scheduler_metadata);
  EXPECT_EQ(splits.to_host(), expected->num_splits);
  EXPECT_NE(expected->tile_scheduler_metadata, get_mla_metadata(first, 128, 1)->tile_scheduler_metadata);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

#else

TEST(CudaMetadata, NotBuiltIsAClearError) {
  std::vector<int32_t> lengths{10}, metadata(static_cast<size_t>(num_sm_parts_for(16, 1)) * 8), splits(2);
  MlaMetadataArgs args;
  args.cache_seqlens = TensorView::contiguous(lengths.data(), DType::kInt32, {1}, Device::kCuda);
  args.num_q_tokens_per_head_k = 16;
  args.tile_scheduler_metadata =
      TensorView::contiguous(metadata.data(), DType::kInt32, {num_sm_parts_for(16, 1), 8}, Device::kCuda);
  args.num_splits = TensorView::contiguous(splits.data(), DType::kInt32, {2}, Device::kCuda);
  const Status status = get_mla_metadata(args, Backend::kCuda);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("not built"));
}

TEST(CudaDecode, NotBuiltIsAClearError) {
  Inputs inputs = make_inputs({.seqlens = {10}, .s_q = 1, .h_q = 16}, 29);
  const Status status = flash_mla_with_kvcache(inputs.args(), Backend::kCuda);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("not built"));
}

#endif  // FF_MLA_HAVE_CUDA

}  // namespace
}  // namespace ff::mla
