// Executor: a pipelined step's gradients equal an unpipelined run's, for every schedule.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "ff/common/clock.h"
#include "ff/pipe/executor.h"

namespace ff::pipe {
namespace {

using ::testing::HasSubstr;

double relative_error(const Vector& a, const Vector& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    norm = std::max(norm, std::abs(b[i]));
  }
  return diff / std::max(norm, 1e-300);
}

TEST(Executor, GradientsMatchUnpipelinedRunForEverySchedule) {
  MlpConfig config;
  for (ScheduleKind kind : kAllScheduleKinds) {
    for (int32_t pp : {2, 4, 6}) {
      for (int32_t extra : {0, 4}) {
        const int32_t chunks = (kind == ScheduleKind::kDualPipe ? 2 * pp : pp) + extra;
        SCOPED_TRACE(fmt::format("{} pp={} chunks={}", schedule_kind_name(kind), pp, chunks));
        Result<Schedule> schedule = generate_schedule(kind, pp, chunks);
        ASSERT_TRUE(schedule.is_ok());
        config.seed = static_cast<uint64_t>(pp * 100 + chunks);
        const MlpModel model = make_mlp_model(config, pp);
        const Batch batch = make_batch(config, chunks);
        const Gradients reference = run_reference(model, batch);
        Result<ExecutionResult> result = execute_schedule(*schedule, model, batch);
        ASSERT_TRUE(result.is_ok()) << result.status().to_string();
        for (int32_t s = 0; s < pp; ++s) {
          EXPECT_LT(relative_error(result->gradients.stages[s], reference.stages[s]), 1e-6) << "stage " << s;
        }
        EXPECT_LT(relative_error(result->gradients.losses, reference.losses), 1e-12);
      }
    }
  }
}

TEST(Executor, DefaultOverlapHookAgreesWithInterleavedMlp) {
  // A stage without its own overlap hook, delegating the math to the MLP stage.
  struct Counting : Stage {
    std::unique_ptr<Stage> inner;
    Vector forward(int32_t mb, const Vector& x) override { return inner->forward(mb, x); }
    Vector backward(int32_t mb, const Vector& g, bool defer) override { return inner->backward(mb, g, defer); }
    void weight(int32_t mb) override { inner->weight(mb); }
    Vector gradients() const override { return inner->gradients(); }
  };
  MlpConfig config;
  const MlpModel model = make_mlp_model(config, 2);
  const Batch batch = make_batch(config, 4);
  Counting first;
  first.inner = make_mlp_stage(model, 0);
  Counting second;
  second.inner = make_mlp_stage(model, 1);
  // The default hook runs F then B: same numbers as the MLP's interleaved override.
  Vector out_default, grad_default;
  Vector x = batch.inputs[0];
  Vector y = second.forward(0, first.forward(0, x));
  first.overlapped_forward_backward(1, batch.inputs[1], out_default, second, 0, y, grad_default);
  auto a = make_mlp_stage(model, 0), b = make_mlp_stage(model, 1);
  Vector y2 = b->forward(0, a->forward(0, x));
  Vector out_mlp, grad_mlp;
  a->overlapped_forward_backward(1, batch.inputs[1], out_mlp, *b, 0, y2, grad_mlp);
  EXPECT_LT(relative_error(out_default, out_mlp), 1e-15);
  EXPECT_LT(relative_error(grad_default, grad_mlp), 1e-15);
  EXPECT_LT(relative_error(second.gradients(), b->gradients()), 1e-15);
}

TEST(Executor, DeadlockedScheduleTimesOutNamingRankAndOp) {
  Result<Schedule> schedule = generate_schedule(ScheduleKind::k1F1B, 2, 2);
  ASSERT_TRUE(schedule.is_ok());
  std::swap(schedule->ranks[0][1], schedule->ranks[0][2]);
  std::swap(schedule->ranks[1][1], schedule->ranks[1][2]);
  ASSERT_TRUE(finalize_schedule(*schedule).is_ok());
  MlpConfig config;
  const MlpModel model = make_mlp_model(config, 2);
  const Batch batch = make_batch(config, 2);
  ExecutorOptions options;
  // The validator refuses it up front ...
  Result<ExecutionResult> result = execute_schedule(*schedule, model, batch, options);
  ASSERT_FALSE(result.is_ok());
  EXPECT_THAT(result.status().message(), HasSubstr("deadlock"));
  // ... and without validation, the blocking waits time out instead of hanging.
  options.validate = false;
  options.timeout_ms = 200;
  const int64_t start_ns = system_clock().now_ns();
  result = execute_schedule(*schedule, model, batch, options);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_THAT(result.status().message(), HasSubstr("timed out after 200 ms waiting for the"));
  EXPECT_THAT(result.status().message(), ::testing::MatchesRegex("rank [01] op #1 .*"));
  EXPECT_LT(system_clock().now_ns() - start_ns, int64_t{5'000'000'000});
}

TEST(Executor, TracesEveryOpOnItsRankTrack) {
  Result<Schedule> schedule = generate_schedule(ScheduleKind::kDualPipeV, 4, 4);
  ASSERT_TRUE(schedule.is_ok());
  MlpConfig config;
  trace::Recorder recorder;
  recorder.set_enabled(true);
  ExecutorOptions options;
  options.recorder = &recorder;
  options.channel_capacity = 2;
  Result<ExecutionResult> result =
      execute_schedule(*schedule, make_mlp_model(config, 4), make_batch(config, 4), options);
  ASSERT_TRUE(result.is_ok()) << result.status().to_string();
  const std::string json = recorder.to_json();
  size_t events = 0;
  for (size_t at = json.find("\"pipe.exec\""); at != std::string::npos; at = json.find("\"pipe.exec\"", at + 1)) {
    ++events;
  }
  size_t transfers = 0;
  for (const auto& ops : schedule->ranks) {
    for (const Op& op : ops) transfers += op.sends.size();
  }
  EXPECT_EQ(events, schedule->num_ops() + 2 * transfers);  // ops + flow starts + flow ends
  EXPECT_GT(result->wall_s, 0);
  EXPECT_GT(result->mean_op_s[static_cast<int>(OpKind::kForward)], 0);
}

TEST(Executor, RejectsMismatchedInputs) {
  Result<Schedule> schedule = generate_schedule(ScheduleKind::k1F1B, 2, 4);
  ASSERT_TRUE(schedule.is_ok());
  MlpConfig config;
  Result<ExecutionResult> result = execute_schedule(*schedule, make_mlp_model(config, 3), make_batch(config, 4));
  ASSERT_FALSE(result.is_ok());
  EXPECT_THAT(result.status().message(), HasSubstr("model has 3 stages, schedule has 2"));
  result = execute_schedule(*schedule, make_mlp_model(config, 2), make_batch(config, 3));
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ff::pipe
