// Tests of the CPU shared-memory backend of ff::ep. Each multi-rank test forks one process per rank; a
// rank reports a failed check on stderr and exits non-zero, and the parent bounds the whole run (10 s),
// killing the ranks if they hang. Every rank derives every rank's inputs from the same seed, so each can
// compute what it must receive with a plain loop.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <thread>

#include "ff/ep/buffer.h"
#include "ff/ep/cuda_buffer.h"
#include "ff/gemm/numeric.h"

namespace ff::ep {
namespace {

// Fails the current rank (a child process) with a message.
#define RANK_CHECK(condition, ...)                                                                 \
  do {                                                                                             \
    if (!(condition)) {                                                                            \
      std::fprintf(stderr, "rank check failed at %s:%d: %s: %s\n", __FILE__, __LINE__, #condition, \
                   fmt::format("" __VA_ARGS__).c_str());                                           \
      std::fflush(stderr);                                                                         \
      ::_exit(1);                                                                                  \
    }                                                                                              \
  } while (false)

std::string unique_group(const char* name) {
  static int counter = 0;
  return fmt::format("test_{}_{}_{}", name, ::getpid(), counter++);
}

// Forks num_ranks processes running body(buffer); returns the exit code of each rank (or 128 + signal).
std::vector<int> run_ranks(int num_ranks, const std::function<void(ShmBuffer&)>& body, int64_t timeout_ms = 5000,
                           int64_t num_bytes = 8 << 20, int64_t limit_ms = 10000) {
  const std::string group = unique_group("g");
  std::vector<pid_t> pids;
  for (int rank = 0; rank < num_ranks; ++rank) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      Result<std::unique_ptr<ShmBuffer>> buffer = ShmBuffer::create({group, rank, num_ranks, num_bytes, timeout_ms});
      RANK_CHECK(buffer.is_ok(), "{}", buffer.status().to_string());
      body(**buffer);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  std::vector<int> codes(static_cast<size_t>(num_ranks), -1);
  const auto start = std::chrono::steady_clock::now();
  int remaining = num_ranks;
  while (remaining > 0) {
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      for (int rank = 0; rank < num_ranks; ++rank) {
        if (pids[static_cast<size_t>(rank)] == done) {
          codes[static_cast<size_t>(rank)] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          --remaining;
        }
      }
      continue;
    }
    if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(limit_ms)) {
      ADD_FAILURE() << "ranks still running after " << limit_ms << " ms: killing them (a hang)";
      for (int rank = 0; rank < num_ranks; ++rank) {
        if (codes[static_cast<size_t>(rank)] == -1) ::kill(pids[static_cast<size_t>(rank)], SIGKILL);
      }
      limit_ms = 1 << 30;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return codes;
}

void expect_all_ok(const std::vector<int>& codes) {
  for (size_t rank = 0; rank < codes.size(); ++rank) EXPECT_EQ(codes[rank], 0) << "rank " << rank;
}

// Every rank's inputs, reproducible from (seed, rank).
struct RankInput {
  int64_t num_tokens;
  std::vector<float> x;           // (num_tokens, hidden)
  std::vector<int64_t> topk_idx;  // (num_tokens, num_topk), distinct experts or -1
  std::vector<float> weights;
};

RankInput make_input(int rank, int64_t num_tokens, int64_t hidden, int64_t num_topk, int64_t num_experts, uint64_t seed,
                     int only_rank = -1, int num_ranks = 1) {
  std::mt19937_64 rng(seed * 1000 + static_cast<uint64_t>(rank));
  RankInput input;
  input.num_tokens = num_tokens;
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  input.x.resize(static_cast<size_t>(num_tokens * hidden));
  for (float& v : input.x) v = value(rng);
  const int64_t low = only_rank >= 0 ? only_rank * (num_experts / num_ranks) : 0;
  const int64_t count = only_rank >= 0 ? num_experts / num_ranks : num_experts;
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::vector<int64_t> experts;
    for (int64_t k = 0; k < num_topk; ++k) {
      int64_t expert = -1;
      if (rng() % 5 != 0) {  // 1 in 5 entries is -1
        do expert = low + static_cast<int64_t>(rng() % static_cast<uint64_t>(count));
        while (std::find(experts.begin(), experts.end(), expert) != experts.end() &&
               static_cast<int64_t>(experts.size()) < count);
        if (std::find(experts.begin(), experts.end(), expert) != experts.end()) expert = -1;
      }
      experts.push_back(expert);
      input.topk_idx.push_back(expert);
      input.weights.push_back(expert >= 0 ? value(rng) : 0.0f);
    }
  }
  return input;
}

RowsView view(const std::vector<float>& x, int64_t hidden) {
  return {x.data(), DType::kFloat32, static_cast<int64_t>(x.size()) / hidden, hidden, nullptr};
}

double calc_diff(const std::vector<float>& x, const std::vector<float>& y) {
  double sum_xy = 0, sum_xx = 0, sum_yy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sum_xy += double{x[i]} * y[i];
    sum_xx += double{x[i]} * x[i];
    sum_yy += double{y[i]} * y[i];
  }
  const double denominator = sum_xx + sum_yy;
  return denominator == 0 ? 0 : 1 - 2 * sum_xy / denominator;
}

std::vector<float> as_floats(const Rows& rows) {
  std::vector<float> values(static_cast<size_t>(rows.num_rows * rows.hidden));
  std::memcpy(values.data(), rows.bytes.data(), values.size() * 4);
  return values;
}

TEST(EpLayout, MatchesPlainComputation) {
  const int num_ranks = 4;
  const int64_t num_experts = 16, num_topk = 3, num_tokens = 37;
  RankInput input = make_input(0, num_tokens, 1, num_topk, num_experts, 7);
  Result<DispatchLayout> layout = get_dispatch_layout(input.topk_idx, num_tokens, num_topk, num_experts, num_ranks);
  ASSERT_TRUE(layout.is_ok()) << layout.status().to_string();
  std::vector<int32_t> per_rank(num_ranks, 0), per_expert(num_experts, 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < num_ranks; ++r) {
      bool in_rank = false;
      for (int64_t k = 0; k < num_topk; ++k) {
        const int64_t e = input.topk_idx[static_cast<size_t>(t * num_topk + k)];
        if (e >= r * 4 && e < (r + 1) * 4) in_rank = true;
      }
      EXPECT_EQ(layout->is_token_in_rank[static_cast<size_t>(t * num_ranks + r)], in_rank ? 1 : 0);
      per_rank[static_cast<size_t>(r)] += in_rank;
    }
    for (int64_t k = 0; k < num_topk; ++k) {
      const int64_t e = input.topk_idx[static_cast<size_t>(t * num_topk + k)];
      if (e >= 0) ++per_expert[static_cast<size_t>(e)];
    }
  }
  EXPECT_EQ(layout->num_tokens_per_rank, per_rank);
  EXPECT_EQ(layout->num_tokens_per_expert, per_expert);
  EXPECT_FALSE(get_dispatch_layout(input.topk_idx, num_tokens, num_topk, 15, num_ranks).is_ok());
  std::vector<int64_t> bad = {0, 99};
  EXPECT_FALSE(get_dispatch_layout(bad, 1, 2, num_experts, num_ranks).is_ok());
}

// Normal dispatch, cached dispatch and combine, checked against a plain computation on every rank.
void check_dispatch_combine(ShmBuffer& buffer, int64_t num_experts, int only_rank, uint64_t seed) {
  const int n = buffer.num_ranks();
  const int me = buffer.rank();
  const int64_t hidden = 40, num_topk = 4, alignment = 4;
  const int64_t per_rank = num_experts / n;
  auto tokens_of = [&](int rank) { return int64_t{13} + 5 * rank; };  // different counts per rank
  RankInput mine = make_input(me, tokens_of(me), hidden, num_topk, num_experts, seed, only_rank, n);
  DispatchInput in;
  in.x = view(mine.x, hidden);
  in.topk_idx = mine.topk_idx;
  in.topk_weights = mine.weights;
  in.num_topk = num_topk;
  in.num_experts = num_experts;
  in.expert_alignment = alignment;
  Result<DispatchOutput> out = buffer.dispatch(in);
  RANK_CHECK(out.is_ok(), "{}", out.status().to_string());

  // Expected: rows from each source in rank order, token order within.
  std::vector<float> expected_x;
  std::vector<int64_t> expected_idx;
  std::vector<float> expected_w;
  std::vector<int64_t> expected_counts(static_cast<size_t>(per_rank), 0);
  for (int src = 0; src < n; ++src) {
    RankInput input = make_input(src, tokens_of(src), hidden, num_topk, num_experts, seed, only_rank, n);
    for (int64_t t = 0; t < input.num_tokens; ++t) {
      bool here = false;
      for (int64_t k = 0; k < num_topk; ++k) {
        const int64_t e = input.topk_idx[static_cast<size_t>(t * num_topk + k)];
        here |= e >= me * per_rank && e < (me + 1) * per_rank;
      }
      if (!here) continue;
      expected_x.insert(expected_x.end(), input.x.begin() + t * hidden, input.x.begin() + (t + 1) * hidden);
      for (int64_t k = 0; k < num_topk; ++k) {
        const int64_t e = input.topk_idx[static_cast<size_t>(t * num_topk + k)];
        const bool local = e >= me * per_rank && e < (me + 1) * per_rank;
        expected_idx.push_back(local ? e - me * per_rank : -1);
        expected_w.push_back(local ? input.weights[static_cast<size_t>(t * num_topk + k)] : 0.0f);
        if (local) ++expected_counts[static_cast<size_t>(e - me * per_rank)];
      }
    }
  }
  for (int64_t& count : expected_counts) count = (count + alignment - 1) / alignment * alignment;
  RANK_CHECK(as_floats(out->recv_x) == expected_x, "rank {}: {} rows received, {} expected", me, out->recv_x.num_rows,
             expected_x.size() / hidden);
  RANK_CHECK(out->recv_topk_idx == expected_idx, "rank {} recv_topk_idx", me);
  RANK_CHECK(out->recv_topk_weights == expected_w, "rank {} recv_topk_weights", me);
  RANK_CHECK(out->num_recv_tokens_per_expert == expected_counts, "rank {} per-expert counts", me);
  if (only_rank >= 0 && me != only_rank) RANK_CHECK(out->recv_x.num_rows == 0, "rank {} should receive nothing", me);

  // A cached dispatch moves the same rows.
  DispatchInput cached;
  cached.x = view(mine.x, hidden);
  cached.handle = out->handle;
  Result<DispatchOutput> again = buffer.dispatch(cached);
  RANK_CHECK(again.is_ok(), "{}", again.status().to_string());
  RANK_CHECK(again->recv_x.bytes == out->recv_x.bytes, "rank {}: cached dispatch differs", me);

  // combine(dispatch(x)) = x times the number of ranks that received the token; weights come back whole.
  Result<CombineOutput> combined =
      buffer.combine(view(as_floats(out->recv_x), hidden), *out->handle, out->recv_topk_weights, num_topk);
  RANK_CHECK(combined.is_ok(), "{}", combined.status().to_string());
  std::vector<float> expected_sum(mine.x.size());
  for (int64_t t = 0; t < mine.num_tokens; ++t) {
    int receivers = 0;
    for (int r = 0; r < n; ++r) {
      bool here = false;
      for (int64_t k = 0; k < num_topk; ++k) {
        const int64_t e = mine.topk_idx[static_cast<size_t>(t * num_topk + k)];
        here |= e >= r * per_rank && e < (r + 1) * per_rank;
      }
      receivers += here;
    }
    for (int64_t i = 0; i < hidden; ++i) {
      expected_sum[static_cast<size_t>(t * hidden + i)] = mine.x[static_cast<size_t>(t * hidden + i)] * receivers;
    }
  }
  const double diff = calc_diff(as_floats(combined->combined_x), expected_sum);
  RANK_CHECK(diff < 5e-6, "rank {}: combine calc_diff {}", me, diff);
  for (size_t i = 0; i < mine.weights.size(); ++i) {
    RANK_CHECK(std::fabs(combined->combined_topk_weights[i] - mine.weights[i]) < 1e-6, "rank {} weight {}", me, i);
  }
}

class EpRanks : public testing::TestWithParam<int> {};

TEST_P(EpRanks, DispatchCachedDispatchAndCombine) {
  const int n = GetParam();
  expect_all_ok(run_ranks(n, [&](ShmBuffer& buffer) { check_dispatch_combine(buffer, 4 * n, -1, 1); }));
}

TEST_P(EpRanks, RanksThatReceiveNothing) {
  const int n = GetParam();
  expect_all_ok(run_ranks(n, [&](ShmBuffer& buffer) { check_dispatch_combine(buffer, 2 * n, 0, 2); }));
}

// Low-latency dispatch (bf16 or FP8) and the weighted combine, through the receive hook halves.
void check_low_latency(ShmBuffer& buffer, bool use_fp8) {
  const int n = buffer.num_ranks();
  const int me = buffer.rank();
  const int64_t hidden = 256, num_topk = 3, num_experts = 2 * n, max_tokens = 24;
  const int64_t per_rank = num_experts / n;
  auto tokens_of = [&](int rank) { return int64_t{11} + 4 * rank % 13; };
  RankInput mine = make_input(me, tokens_of(me), hidden, num_topk, num_experts, 3);
  std::vector<uint16_t> x_bf16(mine.x.size());
  for (size_t i = 0; i < x_bf16.size(); ++i) {
    x_bf16[i] = gemm::float_to_bf16(mine.x[i]);
    mine.x[i] = gemm::bf16_to_float(x_bf16[i]);
  }
  RowsView x{x_bf16.data(), DType::kBFloat16, mine.num_tokens, hidden, nullptr};
  Status sent = buffer.low_latency_dispatch_send(x, mine.topk_idx, num_topk, max_tokens, num_experts, use_fp8);
  RANK_CHECK(sent.is_ok(), "{}", sent.to_string());
  Result<LowLatencyDispatchOutput> out = buffer.low_latency_dispatch_receive();
  RANK_CHECK(out.is_ok(), "{}", out.status().to_string());
  const int64_t capacity = max_tokens * n;
  RANK_CHECK(out->recv_x.num_rows == per_rank * capacity, "recv_x rows {}", out->recv_x.num_rows);

  // Expected per local expert: rows from each source in rank order, token order within.
  for (int64_t e = 0; e < per_rank; ++e) {
    int64_t position = 0;
    for (int src = 0; src < n; ++src) {
      RankInput input = make_input(src, tokens_of(src), hidden, num_topk, num_experts, 3);
      for (int64_t t = 0; t < input.num_tokens; ++t) {
        for (int64_t k = 0; k < num_topk; ++k) {
          if (input.topk_idx[static_cast<size_t>(t * num_topk + k)] != me * per_rank + e) continue;
          const int64_t row = e * capacity + position++;
          for (int64_t i = 0; i < hidden; ++i) {
            const float want = gemm::bf16_to_float(gemm::float_to_bf16(input.x[static_cast<size_t>(t * hidden + i)]));
            float got;
            if (use_fp8) {
              got = gemm::e4m3_to_float(out->recv_x.bytes[static_cast<size_t>(row * hidden + i)]) *
                    out->recv_x.scales[static_cast<size_t>(row * (hidden / 128) + i / 128)];
              RANK_CHECK(std::fabs(got - want) <= 0.07f * 2.0f + 1e-3f, "fp8 row {} [{}]: {} vs {}", row, i, got, want);
            } else {
              uint16_t bits;
              std::memcpy(&bits, out->recv_x.bytes.data() + (row * hidden + i) * 2, 2);
              got = gemm::bf16_to_float(bits);
              RANK_CHECK(got == want, "bf16 row {} [{}]: {} vs {}", row, i, got, want);
            }
          }
        }
      }
    }
    RANK_CHECK(out->recv_count[static_cast<size_t>(e)] == position, "rank {} expert {}: count {} vs {}", me, e,
               out->recv_count[static_cast<size_t>(e)], position);
  }

  // The experts return their rows unchanged (as bf16): the combine is x times the sum of its valid weights.
  std::vector<uint16_t> expert_out(static_cast<size_t>(per_rank * capacity * hidden), 0);
  for (size_t i = 0; i < expert_out.size(); ++i) {
    float value;
    if (use_fp8) {
      value = gemm::e4m3_to_float(out->recv_x.bytes[i]) * out->recv_x.scales[i / 128];
    } else {
      uint16_t bits;
      std::memcpy(&bits, out->recv_x.bytes.data() + i * 2, 2);
      value = gemm::bf16_to_float(bits);
    }
    expert_out[i] = gemm::float_to_bf16(value);
  }
  RowsView y{expert_out.data(), DType::kBFloat16, per_rank * capacity, hidden, nullptr};
  Status combine_sent = buffer.low_latency_combine_send(y, mine.topk_idx, mine.weights, *out->handle);
  RANK_CHECK(combine_sent.is_ok(), "{}", combine_sent.to_string());
  Result<Rows> combined = buffer.low_latency_combine_receive();
  RANK_CHECK(combined.is_ok(), "{}", combined.status().to_string());
  std::vector<float> got(mine.x.size()), want(mine.x.size());
  for (int64_t t = 0; t < mine.num_tokens; ++t) {
    float weight_sum = 0;
    for (int64_t k = 0; k < num_topk; ++k) {
      if (mine.topk_idx[static_cast<size_t>(t * num_topk + k)] >= 0)
        weight_sum += mine.weights[static_cast<size_t>(t * num_topk + k)];
    }
    for (int64_t i = 0; i < hidden; ++i) {
      const size_t index = static_cast<size_t>(t * hidden + i);
      uint16_t bits;
      std::memcpy(&bits, combined->bytes.data() + index * 2, 2);
      got[index] = gemm::bf16_to_float(bits);
      want[index] = mine.x[index] * weight_sum;
    }
  }
  const double diff = calc_diff(got, want);
  RANK_CHECK(diff < (use_fp8 ? 1e-3 : 5e-5), "rank {}: low-latency combine calc_diff {}", me, diff);
}

TEST_P(EpRanks, LowLatencyBf16RoundTrip) {
  expect_all_ok(run_ranks(GetParam(), [](ShmBuffer& buffer) { check_low_latency(buffer, false); }));
}

TEST_P(EpRanks, LowLatencyFp8RoundTrip) {
  expect_all_ok(run_ranks(GetParam(), [](ShmBuffer& buffer) { check_low_latency(buffer, true); }));
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpRanks, testing::Values(2, 4, 8));

TEST(EpFailure, KilledRankFailsEveryOtherRankWithinTheTimeout) {
  const int n = 4;
  const auto start = std::chrono::steady_clock::now();
  std::vector<int> codes = run_ranks(
      n,
      [](ShmBuffer& buffer) {
        if (buffer.rank() == 3) ::raise(SIGKILL);
        // Give rank 3 time to die, then every survivor's dispatch must fail with an error naming it.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        std::vector<float> x(8 * 16, 1.0f);
        std::vector<int64_t> topk(8, 0);
        for (int64_t t = 0; t < 8; ++t) topk[static_cast<size_t>(t)] = t % 8;
        DispatchInput in;
        in.x = view(x, 16);
        in.topk_idx = topk;
        in.num_topk = 1;
        in.num_experts = 8;
        Result<DispatchOutput> out = buffer.dispatch(in);
        RANK_CHECK(!out.is_ok(), "dispatch succeeded with a dead rank");
        const std::string message = out.status().to_string();
        RANK_CHECK(message.find("rank 3") != std::string::npos, "error does not name rank 3: {}", message);
        // Detected by the liveness check, not by running into the timeout.
        RANK_CHECK(message.find("died") != std::string::npos, "error does not say rank 3 died: {}", message);
        ::_exit(42);
      },
      /*timeout_ms=*/2000);
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(codes[3], 128 + SIGKILL);
  for (int rank = 0; rank < 3; ++rank) EXPECT_EQ(codes[static_cast<size_t>(rank)], 42) << "rank " << rank;
  EXPECT_LT(elapsed_s, 4.0);
}

TEST(EpFailure, RankDyingMidCallFailsTheWaitersAndTheirNextCall) {
  std::vector<int> codes = run_ranks(
      3,
      [](ShmBuffer& buffer) {
        std::vector<float> x(4 * 8, 1.0f);
        std::vector<int64_t> topk = {0, 1, 2, 0};
        DispatchInput in;
        in.x = view(x, 8);
        in.topk_idx = topk;
        in.num_topk = 1;
        in.num_experts = 3;
        if (buffer.rank() == 1) {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the others are waiting for it now
          ::raise(SIGKILL);
        }
        Result<DispatchOutput> out = buffer.dispatch(in);
        RANK_CHECK(!out.is_ok(), "dispatch succeeded with a dead rank");
        RANK_CHECK(out.status().to_string().find("rank 1") != std::string::npos, "{}", out.status().to_string());
        RANK_CHECK(out.status().to_string().find("died") != std::string::npos, "{}", out.status().to_string());
        Result<DispatchOutput> next = buffer.dispatch(in);
        RANK_CHECK(!next.is_ok(), "the next call succeeded in an aborted group");
        ::_exit(42);
      },
      /*timeout_ms=*/2000);
  EXPECT_EQ(codes[1], 128 + SIGKILL);
  EXPECT_EQ(codes[0], 42);
  EXPECT_EQ(codes[2], 42);
}

TEST(EpFailure, RankThatNeverCallsTimesOutWithItsName) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<int> codes = run_ranks(
      2,
      [](ShmBuffer& buffer) {
        if (buffer.rank() == 1) {
          std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // alive but silent
          ::_exit(43);
        }
        std::vector<float> x(2 * 8, 1.0f);
        std::vector<int64_t> topk = {0, 1};
        DispatchInput in;
        in.x = view(x, 8);
        in.topk_idx = topk;
        in.num_topk = 1;
        in.num_experts = 2;
        Result<DispatchOutput> out = buffer.dispatch(in);
        RANK_CHECK(!out.is_ok(), "dispatch succeeded without rank 1");
        RANK_CHECK(out.status().code() == StatusCode::kDeadlineExceeded, "{}", out.status().to_string());
        RANK_CHECK(out.status().to_string().find("waiting for rank 1") != std::string::npos, "{}",
                   out.status().to_string());
        ::_exit(42);
      },
      /*timeout_ms=*/1000);
  EXPECT_EQ(codes[0], 42);
  EXPECT_EQ(codes[1], 43);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
}

TEST(EpFailure, SlotOverflowIsAnErrorOnEveryRank) {
  std::vector<int> codes = run_ranks(
      2,
      [](ShmBuffer& buffer) {
        std::vector<float> x(64 * 256, 1.0f);
        std::vector<int64_t> topk(64, 1);
        DispatchInput in;
        in.x = view(x, 256);
        in.topk_idx = topk;
        in.num_topk = 1;
        in.num_experts = 2;
        Result<DispatchOutput> out = buffer.dispatch(in);
        RANK_CHECK(!out.is_ok(), "dispatch of 64 KiB through 16 KiB slots succeeded");
        ::_exit(42);
      },
      2000, /*num_bytes=*/64 << 10);
  EXPECT_EQ(codes[0], 42);
  EXPECT_EQ(codes[1], 42);
}

TEST(EpBuffer, RejectsBadOptions) {
  EXPECT_FALSE(ShmBuffer::create({"bad/name", 0, 2, 1 << 20, 100}).is_ok());
  EXPECT_FALSE(ShmBuffer::create({"ok", 2, 2, 1 << 20, 100}).is_ok());
  EXPECT_FALSE(ShmBuffer::create({"ok", 0, 2, 16, 100}).is_ok());
  // A lone rank 1 waits for rank 0 boundedly.
  Result<std::unique_ptr<ShmBuffer>> alone = ShmBuffer::create({unique_group("alone"), 1, 2, 1 << 20, 200});
  ASSERT_FALSE(alone.is_ok());
  EXPECT_EQ(alone.status().code(), StatusCode::kDeadlineExceeded);
}

// The control plane of the CUDA backend: every rank gets the blob each other rank addressed to it, and a
// rank in a different collective is an error naming both.
TEST(EpExchange, DeliversEachBlobToItsDestination) {
  for (int num_ranks : {2, 5}) {
    expect_all_ok(run_ranks(num_ranks, [num_ranks](ShmBuffer& buffer) {
      for (int round = 0; round < 3; ++round) {
        std::vector<std::vector<uint8_t>> to_each(static_cast<size_t>(num_ranks));
        for (int dst = 0; dst < num_ranks; ++dst) {
          // Size and contents depend on (round, src, dst); an empty blob for dst == src on round 1.
          const int size = round == 1 && dst == buffer.rank() ? 0 : 1 + (round + buffer.rank() * 7 + dst) % 50;
          for (int i = 0; i < size; ++i)
            to_each[static_cast<size_t>(dst)].push_back(uint8_t(round + buffer.rank() + dst + i));
        }
        Result<std::vector<std::vector<uint8_t>>> from_each = buffer.exchange(to_each, "to test exchange");
        RANK_CHECK(from_each.is_ok(), "{}", from_each.status().to_string());
        for (int src = 0; src < num_ranks; ++src) {
          const int me = buffer.rank();
          const int size = round == 1 && src == me ? 0 : 1 + (round + src * 7 + me) % 50;
          const auto& blob = (*from_each)[static_cast<size_t>(src)];
          RANK_CHECK(static_cast<int>(blob.size()) == size, "round {} from {}: {} bytes, expected {}", round, src,
                     blob.size(), size);
          for (int i = 0; i < size; ++i) RANK_CHECK(blob[static_cast<size_t>(i)] == uint8_t(round + src + me + i));
        }
        RANK_CHECK(buffer.check_group(/*check_liveness=*/false).is_ok());  // peers may have finished
      }
    }));
  }
}

TEST(EpExchange, MismatchedCollectiveIsAnError) {
  const std::vector<int> codes = run_ranks(2, [](ShmBuffer& buffer) {
    if (buffer.rank() == 0) {
      Result<std::vector<std::vector<uint8_t>>> out = buffer.exchange({{1}, {2}}, "to test a mismatch");
      RANK_CHECK(!out.is_ok(), "exchange against a dispatch succeeded");
    } else {
      std::vector<float> x(256, 1.0f);
      std::vector<int64_t> topk(1, 0);
      DispatchInput in;
      in.x = view(x, 256);
      in.topk_idx = topk;
      in.num_topk = 1;
      in.num_experts = 2;
      RANK_CHECK(!buffer.dispatch(in).is_ok(), "dispatch against an exchange succeeded");
    }
    RANK_CHECK(!buffer.check_group().is_ok(), "the group is not aborted");
    ::_exit(42);
  });
  EXPECT_EQ(codes[0], 42);
  EXPECT_EQ(codes[1], 42);
}

// Without the CUDA backend (or without a GPU) creating a CUDA buffer is an error value, never a crash.
// Runs in a child so that this process never initializes CUDA (the other tests fork).
TEST(EpCudaBuffer, CreateFailsCleanlyWithoutBackendOrGpu) {
  const std::vector<int> codes = run_ranks(1, [](ShmBuffer&) {
    if (ff::ep::cuda_backend_built()) {
      Result<std::unique_ptr<CudaBuffer>> small = CudaBuffer::create({unique_group("cuda_small"), 0, 1, 1024, 200});
      RANK_CHECK(!small.is_ok() && small.status().code() == StatusCode::kInvalidArgument, "{}",
                 small.status().to_string());
    }
    Result<std::unique_ptr<CudaBuffer>> buffer = CudaBuffer::create({unique_group("cuda"), 0, 1, 1 << 20, 500});
    if (!ff::ep::cuda_backend_built()) {
      RANK_CHECK(!buffer.is_ok() && buffer.status().code() == StatusCode::kUnimplemented, "{}",
                 buffer.status().to_string());
      RANK_CHECK(buffer.status().message().find("not built") != std::string::npos);
    }
    // With the backend built: OK on a GPU machine, an error value (no GPU / no driver) elsewhere.
    ::_exit(buffer.is_ok() ? 0 : 43);
  });
  EXPECT_TRUE(codes[0] == 0 || codes[0] == 43) << codes[0];
}

}  // namespace
}  // namespace ff::ep
