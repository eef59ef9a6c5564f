#include "ff/trace/recorder.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <thread>

namespace ff::trace {
namespace {

using nlohmann::json;

json events_of(const Recorder& recorder) { return json::parse(recorder.to_json())["traceEvents"]; }

std::vector<json> with_phase(const json& events, const std::string& phase) {
  std::vector<json> matching;
  for (const json& event : events) {
    if (event["ph"] == phase) matching.push_back(event);
  }
  return matching;
}

TEST(RecorderTest, DisabledRecordsNothing) {
  Recorder recorder;
  recorder.complete("work", "test", 0, 10);
  EXPECT_EQ(recorder.stats().recorded, 0u);
  EXPECT_TRUE(with_phase(events_of(recorder), "X").empty());
}

TEST(RecorderTest, WritesEveryEventKindAsChromeJson) {
  ManualClock clock(5'000);
  RecorderOptions options;
  options.clock = &clock;
  options.process_name = "demo \"process\"";
  Recorder recorder(options);
  recorder.set_enabled(true);
  recorder.set_thread_name("main");
  recorder.complete("matmul", "gemm", 1'000, 2'500, "tflops", 1.5);
  recorder.instant("checkpoint", "fs");
  recorder.counter("queue", 3, "depth");
  recorder.flow_start("send", "ep", 42, {}, 1'200);
  recorder.flow_end("send", "ep", 42, Track{7, 3}, 4'000);

  json events = events_of(recorder);
  auto complete = with_phase(events, "X");
  ASSERT_EQ(complete.size(), 1u);
  EXPECT_EQ(complete[0]["name"], "matmul");
  EXPECT_EQ(complete[0]["cat"], "gemm");
  EXPECT_DOUBLE_EQ(complete[0]["ts"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(complete[0]["dur"].get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(complete[0]["args"]["tflops"].get<double>(), 1.5);

  auto instants = with_phase(events, "i");
  ASSERT_EQ(instants.size(), 1u);
  EXPECT_DOUBLE_EQ(instants[0]["ts"].get<double>(), 5.0);  // the recorder's clock

  auto counters = with_phase(events, "C");
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_DOUBLE_EQ(counters[0]["args"]["depth"].get<double>(), 3.0);

  auto starts = with_phase(events, "s");
  auto ends = with_phase(events, "f");
  ASSERT_EQ(starts.size(), 1u);
  ASSERT_EQ(ends.size(), 1u);
  EXPECT_EQ(starts[0]["id"], 42);
  EXPECT_EQ(ends[0]["id"], 42);
  EXPECT_EQ(ends[0]["bp"], "e");
  EXPECT_EQ(ends[0]["pid"], 7);
  EXPECT_EQ(ends[0]["tid"], 3);

  auto metadata = with_phase(events, "M");
  std::set<std::string> names;
  for (const json& event : metadata) names.insert(event["name"].get<std::string>() + "=" + event["args"]["name"].get<std::string>());
  EXPECT_TRUE(names.count("process_name=demo \"process\""));
  EXPECT_TRUE(names.count("thread_name=main"));
}

TEST(RecorderTest, EventsAreSortedByTime) {
  Recorder recorder;
  recorder.set_enabled(true);
  recorder.complete("late", "t", 300, 1);
  recorder.complete("early", "t", 100, 1);
  recorder.complete("middle", "t", 200, 1);
  auto complete = with_phase(events_of(recorder), "X");
  ASSERT_EQ(complete.size(), 3u);
  EXPECT_EQ(complete[0]["name"], "early");
  EXPECT_EQ(complete[1]["name"], "middle");
  EXPECT_EQ(complete[2]["name"], "late");
}

TEST(RecorderTest, FullRingKeepsTheNewestEventsAndCountsDrops) {
  RecorderOptions options;
  options.events_per_thread = 8;
  Recorder recorder(options);
  recorder.set_enabled(true);
  for (int i = 0; i < 20; ++i) recorder.complete("e", "t", i, 1, "i", i);
  RecorderStats stats = recorder.stats();
  EXPECT_EQ(stats.recorded, 20u);
  EXPECT_EQ(stats.dropped, 12u);
  auto complete = with_phase(events_of(recorder), "X");
  ASSERT_EQ(complete.size(), 8u);
  EXPECT_EQ(complete.front()["args"]["i"], 12);
  EXPECT_EQ(complete.back()["args"]["i"], 19);
}

TEST(RecorderTest, ThreadsGetTheirOwnRingsAndTids) {
  Recorder recorder;
  recorder.set_enabled(true);
  constexpr int kThreads = 4;
  constexpr int kEvents = 1000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&recorder, t] {
      recorder.set_thread_name(fmt::format("worker {}", t));
      for (int i = 0; i < kEvents; ++i) recorder.complete("step", "t", i, 1);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(recorder.stats().threads, static_cast<size_t>(kThreads));
  json events = events_of(recorder);
  auto complete = with_phase(events, "X");
  EXPECT_EQ(complete.size(), static_cast<size_t>(kThreads * kEvents));
  std::set<int> tids;
  for (const json& event : complete) tids.insert(event["tid"].get<int>());
  EXPECT_EQ(tids.size(), static_cast<size_t>(kThreads));
  EXPECT_EQ(with_phase(events, "M").size(), static_cast<size_t>(kThreads));
}

TEST(RecorderTest, SnapshotWhileWritersRunYieldsValidJson) {
  RecorderOptions options;
  options.events_per_thread = 64;  // Small, so writers wrap while the snapshot copies.
  Recorder recorder(options);
  recorder.set_enabled(true);
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back([&] {
      int64_t i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        recorder.complete("spin", "t", i, 1, "i", static_cast<double>(i + 1));
        ++i;
      }
    });
  }
  for (int round = 0; round < 50; ++round) {
    json events = events_of(recorder);
    for (const json& event : events) {
      if (event["ph"] != "X") continue;
      ASSERT_EQ(event["name"], "spin");
      // Each event's argument is its timestamp (ns) + 1: a torn copy would break the pairing.
      ASSERT_NEAR(event["args"]["i"].get<double>(), event["ts"].get<double>() * 1000 + 1, 1e-3);
    }
  }
  stop = true;
  for (auto& writer : writers) writer.join();
}

TEST(RecorderTest, ClearForgetsEventsButKeepsRecording) {
  Recorder recorder;
  recorder.set_enabled(true);
  recorder.complete("before", "t", 0, 1);
  recorder.clear();
  EXPECT_EQ(recorder.stats().recorded, 0u);
  recorder.complete("after", "t", 5, 1);
  auto complete = with_phase(events_of(recorder), "X");
  ASSERT_EQ(complete.size(), 1u);
  EXPECT_EQ(complete[0]["name"], "after");
}

TEST(RecorderTest, InternReturnsStableSharedCopies) {
  Recorder recorder;
  std::string dynamic = "layer 7";
  const char* first = recorder.intern(dynamic);
  dynamic = "changed";
  const char* second = recorder.intern("layer 7");
  EXPECT_EQ(first, second);
  EXPECT_STREQ(first, "layer 7");
}

TEST(RecorderTest, EscapesNamesInJson) {
  Recorder recorder;
  recorder.set_enabled(true);
  recorder.complete(recorder.intern("a \"quoted\"\\name\n"), "t", 0, 1);
  auto complete = with_phase(events_of(recorder), "X");
  ASSERT_EQ(complete.size(), 1u);
  EXPECT_EQ(complete[0]["name"], "a \"quoted\"\\name\n");
}

TEST(RecorderTest, ScopeMacroRecordsOnGlobalRecorder) {
  Recorder& recorder = global();
  recorder.clear();
  recorder.set_enabled(true);
  {
    FF_TRACE_SCOPE("scoped", "test");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  recorder.set_enabled(false);
  auto complete = with_phase(events_of(recorder), "X");
  ASSERT_EQ(complete.size(), 1u);
  EXPECT_EQ(complete[0]["name"], "scoped");
  EXPECT_GE(complete[0]["dur"].get<double>(), 1000.0);
  recorder.clear();
}

TEST(RecorderTest, WriteJsonReportsBadPath) {
  Recorder recorder;
  Status status = recorder.write_json("/nonexistent-dir/trace.json");
  EXPECT_EQ(status.code(), StatusCode::kIoError);
  EXPECT_NE(status.message().find("/nonexistent-dir/trace.json"), std::string::npos);
}

}  // namespace
}  // namespace ff::trace
