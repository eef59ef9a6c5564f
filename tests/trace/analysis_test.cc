#include "ff/trace/analysis.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "ff/common/clock.h"
#include "ff/trace/recorder.h"

namespace ff::trace {
namespace {

namespace fs = std::filesystem;

class AnalysisTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("ff_analysis_test_{}_{}", ::getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out << content;
    return path;
  }

  TraceReport analyze(const std::string& content, AnalysisOptions options = {}) {
    const std::string path = write("trace.json", content);
    Result<TraceReport> report = analyze_trace_file(path, options);
    EXPECT_TRUE(report.is_ok()) << report.status().to_string();
    if (!report.is_ok()) return {};
    return *std::move(report);
  }

  Status analyze_error(const std::string& content, AnalysisOptions options = {}) {
    const std::string path = write("bad.json", content);
    Result<TraceReport> report = analyze_trace_file(path, options);
    EXPECT_FALSE(report.is_ok());
    return report.is_ok() ? Status::ok() : report.status();
  }

  fs::path dir_;
};

std::string event_x(std::string_view name, std::string_view category, int pid, int tid, double ts_us, double dur_us) {
  return fmt::format(R"({{"ph":"X","name":"{}","cat":"{}","pid":{},"tid":{},"ts":{},"dur":{}}})", name, category, pid,
                     tid, ts_us, dur_us);
}

std::string object_trace(const std::vector<std::string>& events) {
  std::string out = R"({"traceEvents":[)";
  for (size_t i = 0; i < events.size(); ++i) out += (i > 0 ? ",\n" : "") + events[i];
  return out + "]}";
}

const TrackReport* find_track(const TraceReport& report, std::string_view pid, std::string_view tid) {
  for (const TrackReport& track : report.tracks) {
    if (track.pid == pid && track.tid == tid) return &track;
  }
  return nullptr;
}

const ProcessReport* find_process(const TraceReport& report, std::string_view pid) {
  for (const ProcessReport& process : report.processes) {
    if (process.pid == pid) return &process;
  }
  return nullptr;
}

const NameReport* find_name(const TraceReport& report, std::string_view name) {
  for (const NameReport& entry : report.top) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

TEST_F(AnalysisTest, BusyTimeCountsOverlappingAndNestedEventsOnce) {
  // Track (1,1): [0,10) and [5,15) overlap, [2,4) is nested, [20,30) is separate:
  // union = [0,15) + [20,30) = 25 us over a span of 30 us.
  TraceReport report = analyze(object_trace({event_x("a", "op", 1, 1, 0, 10), event_x("b", "op", 1, 1, 5, 10),
                                             event_x("c", "op", 1, 1, 2, 2), event_x("a", "op", 1, 1, 20, 10),
                                             event_x("d", "op", 1, 2, 100, 1.5)}));
  const TrackReport* track = find_track(report, "1", "1");
  ASSERT_NE(track, nullptr);
  EXPECT_EQ(track->events, 4u);
  EXPECT_EQ(track->busy_ns, 25'000);
  EXPECT_EQ(track->first_ns, 0);
  EXPECT_EQ(track->last_ns, 30'000);
  EXPECT_DOUBLE_EQ(track->utilisation, 25.0 / 30.0);
  const TrackReport* other = find_track(report, "1", "2");
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->busy_ns, 1'500);
  EXPECT_EQ(report.busy_ns, 26'500);
  EXPECT_EQ(report.span_ns, 101'500);
  EXPECT_EQ(report.interval_events, 5u);
  // Top names: "a" twice for 20 us, then b (10), c (2), d (1.5).
  ASSERT_GE(report.top.size(), 4u);
  EXPECT_EQ(report.top[0].name, "a");
  EXPECT_EQ(report.top[0].count, 2u);
  EXPECT_EQ(report.top[0].total_ns, 20'000);
  EXPECT_EQ(report.top[0].max_ns, 10'000);
  EXPECT_DOUBLE_EQ(report.top[0].mean_ns, 10'000);
  EXPECT_DOUBLE_EQ(report.top[0].percent_of_busy, 100.0 * 20'000 / 26'500);
  EXPECT_EQ(report.top[1].name, "b");
}

TEST_F(AnalysisTest, TopNLimitsTheNameTable) {
  AnalysisOptions options;
  options.top_n = 2;
  TraceReport report = analyze(object_trace({event_x("a", "op", 1, 1, 0, 1), event_x("b", "op", 1, 1, 0, 3),
                                             event_x("c", "op", 1, 1, 0, 2)}),
                               options);
  ASSERT_EQ(report.top.size(), 2u);
  EXPECT_EQ(report.top[0].name, "b");
  EXPECT_EQ(report.top[1].name, "c");
  EXPECT_EQ(report.distinct_names, 3u);
}

TEST_F(AnalysisTest, HiddenCommIsOverlapWithComputeOnOtherStreamsOfTheSameGpuOnly) {
  // GPU 0: compute [0,100) and [150,200) on stream 7; NCCL [50,170) on stream 20.
  // comm = 120, compute = 150, hidden = [50,100) + [150,170) = 70.
  // GPU 1 computes during [100,150): it must not hide GPU 0's communication.
  TraceReport report = analyze(object_trace({
      event_x("sm90_xmma_gemm_bf16", "kernel", 0, 7, 0, 100),
      event_x("sm90_xmma_gemm_bf16", "kernel", 0, 7, 150, 50),
      event_x("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "kernel", 0, 20, 50, 120),
      event_x("sm90_xmma_gemm_bf16", "kernel", 1, 7, 100, 50),
  }));
  const ProcessReport* gpu0 = find_process(report, "0");
  ASSERT_NE(gpu0, nullptr);
  EXPECT_EQ(gpu0->comm_ns, 120'000);
  EXPECT_EQ(gpu0->compute_ns, 150'000);
  EXPECT_EQ(gpu0->hidden_comm_ns, 70'000);
  EXPECT_DOUBLE_EQ(gpu0->hidden_fraction, 70.0 / 120.0);
  EXPECT_EQ(gpu0->busy_ns, 200'000);
  EXPECT_EQ(gpu0->tracks, 2u);
  const ProcessReport* gpu1 = find_process(report, "1");
  ASSERT_NE(gpu1, nullptr);
  EXPECT_EQ(gpu1->comm_ns, 0);
  EXPECT_EQ(gpu1->hidden_comm_ns, 0);
  EXPECT_EQ(gpu1->hidden_fraction, 0.0);
  EXPECT_EQ(report.comm_ns, 120'000);
  EXPECT_EQ(report.compute_ns, 200'000);
  EXPECT_EQ(report.hidden_comm_ns, 70'000);
  // Per-track class unions.
  const TrackReport* comm_stream = find_track(report, "0", "20");
  ASSERT_NE(comm_stream, nullptr);
  EXPECT_EQ(comm_stream->comm_ns, 120'000);
  EXPECT_EQ(comm_stream->compute_ns, 0);
}

TEST_F(AnalysisTest, BeginEndPairsNestPerTrack) {
  const std::string trace = R"([
    {"ph":"B","name":"outer","pid":1,"tid":1,"ts":0},
    {"ph":"B","name":"inner","pid":1,"tid":1,"ts":2},
    {"ph":"B","name":"other_thread","pid":1,"tid":2,"ts":3},
    {"ph":"E","pid":1,"tid":1,"ts":5},
    {"ph":"E","pid":1,"tid":1,"ts":10},
    {"ph":"E","pid":1,"tid":1,"ts":11},
    {"ph":"E","pid":1,"tid":2,"ts":4.5},
    {"ph":"B","name":"never_closed","pid":1,"tid":3,"ts":1}
  ])";
  TraceReport report = analyze(trace);
  EXPECT_EQ(report.interval_events, 3u);
  EXPECT_EQ(report.unmatched_end_events, 1u);
  EXPECT_EQ(report.unclosed_begin_events, 1u);
  const TrackReport* track = find_track(report, "1", "1");
  ASSERT_NE(track, nullptr);
  EXPECT_EQ(track->busy_ns, 10'000);
  const NameReport* outer = find_name(report, "outer");
  const NameReport* inner = find_name(report, "inner");
  const NameReport* other = find_name(report, "other_thread");
  ASSERT_TRUE(outer && inner && other);
  EXPECT_EQ(outer->total_ns, 10'000);
  EXPECT_EQ(inner->total_ns, 3'000);
  EXPECT_EQ(other->total_ns, 1'500);
}

TEST_F(AnalysisTest, BeginDepthIsBoundedWithAClearError) {
  std::vector<std::string> events;
  for (int i = 0; i < 10; ++i) events.push_back(fmt::format(R"({{"ph":"B","name":"n","pid":3,"tid":4,"ts":{}}})", i));
  AnalysisOptions options;
  options.max_begin_depth = 8;
  Status error = analyze_error(object_trace(events), options);
  EXPECT_EQ(error.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(error.message().find("track pid=3 tid=4: more than 8 nested 'B' events"), std::string::npos)
      << error.message();
  options.max_begin_depth = 10;
  TraceReport report = analyze(object_trace(events), options);
  EXPECT_EQ(report.unclosed_begin_events, 10u);
}

TEST_F(AnalysisTest, MetadataNamesProcessesAndThreadsEvenWhenItComesLast) {
  TraceReport report = analyze(object_trace({
      event_x("k", "kernel", 0, 7, 0, 1),
      R"({"ph":"M","name":"process_name","pid":0,"tid":0,"args":{"name":"GPU 0 [H800]"}})",
      R"({"ph":"M","name":"thread_name","pid":0,"tid":7,"args":{"labels":"x","name":"stream 7 "}})",
      R"({"ph":"M","name":"process_sort_index","pid":0,"args":{"sort_index":5}})",
  }));
  EXPECT_EQ(report.metadata_events, 3u);
  ASSERT_EQ(report.tracks.size(), 1u);
  EXPECT_EQ(report.tracks[0].process_name, "GPU 0 [H800]");
  EXPECT_EQ(report.tracks[0].thread_name, "stream 7 ");
  ASSERT_EQ(report.processes.size(), 1u);
  EXPECT_EQ(report.processes[0].name, "GPU 0 [H800]");
  const std::string text = render_text(report);
  EXPECT_NE(text.find("GPU 0 [H800] / stream 7"), std::string::npos) << text;
}

TEST_F(AnalysisTest, PyTorchProfilerTraceObject) {
  // Shape of a PyTorch (Kineto) trace: schemaVersion, deviceProperties, CPU ops with args, runtime
  // calls, ac2g flows, kernels with args, a gpu_user_annotation on the GPU timeline.
  const std::string trace = R"json({
  "schemaVersion": 1,
  "deviceProperties": [{"id": 0, "name": "NVIDIA H800", "totalGlobalMem": 85031714816, "computeMajor": 9}],
  "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 8},
  "record_shapes": 1,
  "traceEvents": [
  {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 4242, "tid": 4242, "ts": 5139471567000.125, "dur": 30.5,
   "args": {"External id": 1, "Input Dims": [[4096, 7168], [7168, 2048]], "Input type": ["c10::BFloat16", "c10::BFloat16"]}},
  {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 4242, "tid": 4242, "ts": 5139471567010.000, "dur": 5,
   "args": {"External id": 1, "cbid": 211, "correlation": 7}},
  {"ph": "s", "id": 7, "pid": 4242, "tid": 4242, "ts": 5139471567010.000, "cat": "ac2g", "name": "ac2g"},
  {"ph": "f", "id": 7, "pid": 0, "tid": 7, "ts": 5139471567100.000, "cat": "ac2g", "name": "ac2g", "bp": "e"},
  {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "pid": 0, "tid": 7,
   "ts": 5139471567100.000, "dur": 200.25, "args": {"grid": [132, 1, 1], "block": [384, 1, 1], "stream": 7, "correlation": 7}},
  {"ph": "X", "cat": "gpu_user_annotation", "name": "forward", "pid": 0, "tid": 7, "ts": 5139471567000.000, "dur": 1000,
   "args": {}},
  {"ph": "X", "cat": "kernel", "name": "void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*)", "pid": 0,
   "tid": 20, "ts": 5139471567200.000, "dur": 150, "args": {"stream": 20}},
  {"ph": "i", "cat": "cpu_instant_event", "name": "step", "pid": 4242, "tid": 4242, "ts": 5139471567000.000, "s": "t"},
  {"ph": "C", "name": "memory", "pid": 0, "ts": 5139471567000.000, "args": {"bytes": 1e9}}
  ],
  "traceName": "rank0.json"
})json";
  TraceReport report = analyze(trace);
  EXPECT_EQ(report.events, 9u);
  EXPECT_EQ(report.interval_events, 5u);
  EXPECT_EQ(report.flow_events, 2u);
  EXPECT_EQ(report.instant_events, 1u);
  EXPECT_EQ(report.counter_events, 1u);
  const ProcessReport* gpu = find_process(report, "0");
  ASSERT_NE(gpu, nullptr);
  // The annotation is ignored (not compute): compute = gemm [100, 300.25); comm = dispatch [200, 350).
  EXPECT_EQ(gpu->compute_ns, 200'250);
  EXPECT_EQ(gpu->comm_ns, 150'000);
  EXPECT_EQ(gpu->hidden_comm_ns, 100'250);
  // The annotation still makes the stream busy for its whole 1000 us.
  const TrackReport* stream = find_track(report, "0", "7");
  ASSERT_NE(stream, nullptr);
  EXPECT_EQ(stream->busy_ns, 1'000'000);
  EXPECT_EQ(stream->first_ns, 5139471567000'000);
  const ProcessReport* host = find_process(report, "4242");
  ASSERT_NE(host, nullptr);
  EXPECT_EQ(host->compute_ns, 0);
  EXPECT_EQ(host->comm_ns, 0);
  EXPECT_EQ(host->busy_ns, 30'500);
  const NameReport* mm = find_name(report, "aten::mm");
  ASSERT_NE(mm, nullptr);
  EXPECT_EQ(mm->event_class, EventClass::kOther);
  EXPECT_EQ(mm->category, "cpu_op");
  // Microsecond decimals become exact nanoseconds (no double rounding at 16 significant digits).
  EXPECT_EQ(report.first_ns, 5139471567000'000);
  EXPECT_EQ(mm->total_ns, 30'500);
}

TEST_F(AnalysisTest, ArrayFormWithAndWithoutClosingBracket) {
  const std::string events = event_x("a", "op", 1, 1, 0, 10) + ",\n" + event_x("b", "op", 1, 1, 20, 5);
  for (const std::string& trace : {"[" + events + "]\n", "[" + events, "[" + events + ",\n", "[" + events + ","}) {
    TraceReport report = analyze(trace);
    EXPECT_EQ(report.interval_events, 2u) << trace;
    EXPECT_EQ(report.busy_ns, 15'000) << trace;
  }
}

TEST_F(AnalysisTest, GzipInputGivesTheSameReport) {
  const std::string trace = object_trace({event_x("a", "op", 1, 1, 0, 10), event_x("nccl_x", "op", 1, 2, 5, 10)});
  const std::string gz_path = (dir_ / "trace.json.gz").string();
  gzFile gz = gzopen(gz_path.c_str(), "wb");
  ASSERT_NE(gz, nullptr);
  ASSERT_EQ(gzwrite(gz, trace.data(), static_cast<unsigned>(trace.size())), static_cast<int>(trace.size()));
  ASSERT_EQ(gzclose(gz), Z_OK);
  // The gzip file must differ from the plain one, or this test would not exercise zlib.
  ASSERT_NE(fs::file_size(gz_path), trace.size());
  Result<TraceReport> compressed = analyze_trace_file(gz_path);
  ASSERT_TRUE(compressed.is_ok()) << compressed.status().to_string();
  TraceReport plain = analyze(trace);
  EXPECT_EQ(compressed->bytes_read, trace.size());
  EXPECT_EQ(compressed->interval_events, 2u);
  EXPECT_EQ(compressed->busy_ns, plain.busy_ns);
  EXPECT_EQ(compressed->hidden_comm_ns, 5'000);
  EXPECT_EQ(compressed->comm_ns, plain.comm_ns);
}

TEST_F(AnalysisTest, MalformedInputReportsTheExactByteOffset) {
  const std::string good = R"({"traceEvents":[{"ph":"X","name":"a","ts":1,"dur":2,"pid":1,"tid":1} )";
  const std::string trace = good + R"({"ph":"X"}]})";
  Status error = analyze_error(trace);
  EXPECT_EQ(error.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(error.message(), fmt::format("{}: byte {}: expected ',' or ']' after an event, found '{{'",
                                         (dir_ / "bad.json").string(), good.size()));

  // Inside an event: a missing colon after a key.
  const std::string prefix = R"([{"ph":"X","name")";
  error = analyze_error(prefix + R"( "a"}])");
  EXPECT_EQ(error.message(), fmt::format("{}: byte {}: expected ':' after an event key, found '\"'",
                                         (dir_ / "bad.json").string(), prefix.size() + 1));

  // Truncated object form: the closing brackets are required there.
  error = analyze_error(R"({"traceEvents":[{"ph":"X","name":"a","ts":1,"dur":2})");
  EXPECT_NE(error.message().find("byte 52: expected ',' or ']' after an event, found end of input"),
            std::string::npos)
      << error.message();

  // Malformed JSON inside skipped args is still caught.
  error = analyze_error(R"([{"ph":"X","args":{"a":[1,2,}]}])");
  EXPECT_NE(error.message().find("byte 28: expected a JSON value, found '}'"), std::string::npos) << error.message();

  error = analyze_error(R"([{"ph":"X","ts":1.2.3}])");
  EXPECT_NE(error.message().find("byte 16: invalid or out-of-range number '1.2.3'"), std::string::npos)
      << error.message();

  error = analyze_error("garbage");
  EXPECT_NE(error.message().find("byte 0: expected '{' or '[' at the start of a trace, found 'g'"),
            std::string::npos)
      << error.message();

  error = analyze_error(R"({"traceEvents":[]} x)");
  EXPECT_NE(error.message().find("byte 19: unexpected 'x' after the end of the trace"), std::string::npos)
      << error.message();

  error = analyze_error(R"({"displayTimeUnit":"ns"})");
  EXPECT_NE(error.message().find("no \"traceEvents\" array"), std::string::npos) << error.message();
}

TEST_F(AnalysisTest, EventsWithoutTimesAreSkippedAndCounted) {
  TraceReport report = analyze(object_trace({
      event_x("a", "op", 1, 1, 0, 10),
      R"({"ph":"X","name":"no_dur","pid":1,"tid":1,"ts":5})",
      R"({"ph":"X","name":"no_ts","pid":1,"tid":1,"dur":5})",
      R"({"ph":"X","name":"string_ts","pid":1,"tid":1,"ts":"5","dur":1})",
      R"({"ph":"X","name":"negative","pid":1,"tid":1,"ts":5,"dur":-1})",
  }));
  EXPECT_EQ(report.interval_events, 1u);
  EXPECT_EQ(report.skipped_events, 4u);
  EXPECT_EQ(report.busy_ns, 10'000);
  EXPECT_NE(render_text(report).find("Skipped: 4 events"), std::string::npos);

  // No usable event at all is an error.
  Status error = analyze_error(object_trace({R"({"ph":"X","name":"no_dur","pid":1,"tid":1,"ts":5})"}));
  EXPECT_NE(error.message().find("no usable events: 1 of 1 events"), std::string::npos) << error.message();
}

TEST_F(AnalysisTest, EmptyTraceIsAReportNotAnError) {
  for (const std::string trace : {R"({"traceEvents":[]})", "[]", "[", R"({"schemaVersion":1,"traceEvents":[ ]})"}) {
    TraceReport report = analyze(trace);
    EXPECT_EQ(report.events, 0u) << trace;
    EXPECT_TRUE(report.tracks.empty());
    EXPECT_NE(render_text(report).find("No interval events"), std::string::npos);
    nlohmann::json json = nlohmann::json::parse(render_json(report));
    EXPECT_EQ(json["events"]["total"], 0);
  }
  // Only metadata: still a report with no intervals.
  TraceReport report = analyze(object_trace({R"({"ph":"M","name":"process_name","pid":1,"args":{"name":"x"}})"}));
  EXPECT_EQ(report.metadata_events, 1u);
  EXPECT_EQ(report.interval_events, 0u);
}

TEST_F(AnalysisTest, StringPidsAndEscapedNames) {
  TraceReport report = analyze(object_trace({
      R"({"ph":"X","name":"say \"hi\" \u00e9\ud83d\ude00","pid":"Spans","tid":"main","ts":0,"dur":4})",
      R"({"ph":"X","name":"n","pid":"12","tid":3,"ts":0,"dur":2})",
  }));
  ASSERT_EQ(report.tracks.size(), 2u);
  // Numeric strings sort as numbers, before other strings.
  EXPECT_EQ(report.tracks[0].pid, "12");
  EXPECT_EQ(report.tracks[1].pid, "Spans");
  EXPECT_EQ(report.tracks[1].tid, "main");
  EXPECT_NE(find_name(report, "say \"hi\" \xc3\xa9\xf0\x9f\x98\x80"), nullptr);
}

TEST_F(AnalysisTest, MissingFileIsAnIoError) {
  Result<TraceReport> report = analyze_trace_file((dir_ / "does_not_exist.json").string());
  ASSERT_FALSE(report.is_ok());
  EXPECT_EQ(report.status().code(), StatusCode::kIoError);
  EXPECT_NE(report.status().message().find("No such file"), std::string::npos);
}

TEST_F(AnalysisTest, ClassificationDefaultsOnRealisticKernelNames) {
  EventClassifier classifier = EventClassifier::defaults();
  for (const char* name : {"ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "ncclKernel_AllGather_RING_LL_Sum_int8_t",
                           "void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*)",
                           "void deep_ep::internode::combine<__nv_bfloat16, 8>(int4*)", "all_to_all_single",
                           "AllToAll", "alltoall_base", "c10d::allreduce_", "ReduceScatter", "broadcast_coalesced",
                           "SendRecv", "record_param_comms c10d::all_gather"}) {
    EXPECT_TRUE(classifier.is_comm_name(name)) << name;
    EXPECT_EQ(classifier.classify(name, "kernel"), EventClass::kComm) << name;
  }
  for (const char* name :
       {"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel",
        "void deep_gemm::fp8_gemm_kernel<128u, 128u>", "void flash_fwd_splitkv_mla_kernel<576, 64>",
        "void at::native::vectorized_elementwise_kernel<4>", "Memcpy DtoD (Device -> Device)", "Memset (Device)"}) {
    EXPECT_FALSE(classifier.is_comm_name(name)) << name;
    EXPECT_EQ(classifier.classify(name, "kernel"), EventClass::kCompute) << name;
  }
  for (const char* category : {"cpu_op", "python_function", "user_annotation", "cuda_runtime", "cuda_driver", "ac2g",
                               "gpu_user_annotation", "Trace", "CPU_OP"}) {
    EXPECT_TRUE(classifier.is_ignored_category(category)) << category;
  }
  EXPECT_EQ(classifier.classify("nccl:all_reduce", "cpu_op"), EventClass::kOther);
  EXPECT_FALSE(classifier.is_ignored_category("kernel"));
  EXPECT_FALSE(classifier.is_ignored_category("ep"));  // Our own recorder's categories count.
}

TEST_F(AnalysisTest, CustomPatternsAndIgnoredCategories) {
  Result<EventClassifier> classifier = EventClassifier::create({"^send$", "my_comm"}, {"host"});
  ASSERT_TRUE(classifier.is_ok());
  EXPECT_TRUE(classifier->is_comm_name("SEND"));
  EXPECT_FALSE(classifier->is_comm_name("sendrecv"));
  EXPECT_TRUE(classifier->is_comm_name("x_My_Comm_y"));
  EXPECT_FALSE(classifier->is_comm_name("ncclKernel"));
  EXPECT_EQ(classifier->classify("gemm", "HOST"), EventClass::kOther);

  Result<EventClassifier> bad = EventClassifier::create({"(unclosed"}, {});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("'(unclosed' is not a valid regular expression"), std::string::npos);

  AnalysisOptions options;
  options.comm_patterns = {"(unclosed"};
  Status error = analyze_error(object_trace({event_x("a", "op", 1, 1, 0, 1)}), options);
  EXPECT_EQ(error.code(), StatusCode::kInvalidArgument);

  options.comm_patterns = {"gemm"};
  options.ignore_categories = {};
  TraceReport report = analyze(object_trace({event_x("gemm", "cpu_op", 1, 1, 0, 10)}), options);
  EXPECT_EQ(report.comm_ns, 10'000);
}

// A random trace: 3 processes x 4 threads, nested and overlapping events of all classes, plus B/E.
std::string random_trace(uint32_t seed, size_t events) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  const char* names[] = {"gemm", "ncclKernel_AllReduce", "attention", "deep_ep::dispatch", "aten::mm", "memcpy"};
  const char* categories[] = {"kernel", "kernel", "kernel", "kernel", "cpu_op", "gpu_memcpy"};
  for (size_t i = 0; i < events; ++i) {
    const size_t kind = rng() % 6;
    const int pid = static_cast<int>(rng() % 3);
    const int tid = static_cast<int>(rng() % 4);
    const double ts = static_cast<double>(rng() % 2'000'000) / 1000.0;  // Up to 2 s with ns precision.
    const double dur = static_cast<double>(rng() % 50'000) / 1000.0;
    if (rng() % 10 == 0) {
      out.push_back(fmt::format(R"({{"ph":"B","name":"{}","cat":"{}","pid":{},"tid":"t{}","ts":{}}})", names[kind],
                                categories[kind], pid, tid, ts));
      out.push_back(fmt::format(R"({{"ph":"E","pid":{},"tid":"t{}","ts":{}}})", pid, tid, ts + dur));
    } else {
      out.push_back(event_x(names[kind], categories[kind], pid, tid, ts, dur));
    }
  }
  return object_trace(out);
}

// Independent reference: per-track busy from sorting each track's intervals.
std::map<std::pair<std::string, std::string>, int64_t> reference_busy(const std::string& trace) {
  nlohmann::json json = nlohmann::json::parse(trace);
  std::map<std::pair<std::string, std::string>, std::vector<std::pair<int64_t, int64_t>>> intervals;
  std::map<std::pair<std::string, std::string>, std::vector<int64_t>> open;
  auto id = [](const nlohmann::json& value) {
    return value.is_string() ? value.get<std::string>() : std::to_string(value.get<int64_t>());
  };
  auto ns = [](const nlohmann::json& value) { return static_cast<int64_t>(std::llround(value.get<double>() * 1000)); };
  for (const auto& event : json["traceEvents"]) {
    auto key = std::make_pair(id(event["pid"]), id(event["tid"]));
    const std::string phase = event["ph"];
    if (phase == "X") {
      intervals[key].push_back({ns(event["ts"]), ns(event["ts"]) + ns(event["dur"])});
    } else if (phase == "B") {
      open[key].push_back(ns(event["ts"]));
    } else if (phase == "E") {
      intervals[key].push_back({open[key].back(), ns(event["ts"])});
      open[key].pop_back();
    }
  }
  std::map<std::pair<std::string, std::string>, int64_t> busy;
  for (auto& [key, list] : intervals) {
    std::sort(list.begin(), list.end());
    int64_t total = 0;
    int64_t start = list[0].first;
    int64_t end = list[0].second;
    for (const auto& [s, e] : list) {
      if (s > end) {
        total += end - start;
        start = s;
        end = e;
      } else {
        end = std::max(end, e);
      }
    }
    busy[key] = total + end - start;
  }
  return busy;
}

TEST_F(AnalysisTest, SpillPathEqualsInMemoryPathOnARandomTrace) {
  constexpr uint32_t kSeed = 20250321;
  const std::string trace = random_trace(kSeed, 20'000);
  AnalysisOptions in_memory;
  in_memory.top_n = 10;
  TraceReport expected = analyze(trace, in_memory);
  EXPECT_EQ(expected.spilled_runs, 0u);

  AnalysisOptions spilling = in_memory;
  spilling.max_buffered_intervals = 700;  // ~29 runs...
  spilling.max_merge_fan_in = 4;          // ...merged in several passes.
  spilling.tmp_dir = dir_.string();
  TraceReport actual = analyze(trace, spilling);
  EXPECT_GT(actual.spilled_runs, 29u) << "reproduce with seed=" << kSeed;
  EXPECT_GT(actual.spilled_bytes, 0u);

  // Identical reports apart from timing and spill counters.
  for (TraceReport* report : {&expected, &actual}) {
    report->elapsed_s = 0;
    report->spilled_runs = 0;
    report->spilled_bytes = 0;
  }
  EXPECT_EQ(render_json(expected), render_json(actual)) << "reproduce with seed=" << kSeed;
  // Run files are unlinked at creation: nothing is left in tmp_dir.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);  // trace.json only.

  // And both agree with an independent computation of per-track busy time.
  auto busy = reference_busy(trace);
  ASSERT_EQ(busy.size(), actual.tracks.size());
  for (const TrackReport& track : actual.tracks) {
    EXPECT_EQ(track.busy_ns, (busy[{track.pid, track.tid}])) << track.pid << "/" << track.tid << " seed=" << kSeed;
  }
  // Hidden comm can never exceed comm, per process.
  for (const ProcessReport& process : actual.processes) EXPECT_LE(process.hidden_comm_ns, process.comm_ns);
}

TEST_F(AnalysisTest, MemoryLimitSpillsWithoutTestOverrides) {
  // 1 MB budget -> 21845 records per run: 60000 events spill at least twice.
  const std::string trace = random_trace(7, 60'000);
  AnalysisOptions options;
  options.memory_limit_mb = 1;
  options.tmp_dir = dir_.string();
  TraceReport spilled = analyze(trace, options);
  EXPECT_GE(spilled.spilled_runs, 2u);
  TraceReport in_memory = analyze(trace);
  EXPECT_EQ(spilled.busy_ns, in_memory.busy_ns);
  EXPECT_EQ(spilled.hidden_comm_ns, in_memory.hidden_comm_ns);
  EXPECT_EQ(spilled.compute_ns, in_memory.compute_ns);
}

TEST_F(AnalysisTest, TraceWrittenByOurRecorder) {
  ManualClock clock(0);
  RecorderOptions recorder_options;
  recorder_options.clock = &clock;
  recorder_options.process_name = "simulated rank";
  Recorder recorder(recorder_options);
  recorder.set_enabled(true);
  const Track compute{5, 1};
  const Track comm{5, 2};
  recorder.set_track_name(compute, "compute stream");
  recorder.set_track_name(comm, "comm stream");
  recorder.set_process_name("GPU 5", 5);
  // compute [0, 40us) and [60us, 100us); ep dispatch [30us, 70us) -> hidden 20 us of 40.
  recorder.complete("fp8_gemm", "gemm", 0, 40'000, nullptr, 0, compute);
  recorder.complete("fp8_gemm", "gemm", 60'000, 40'000, nullptr, 0, compute);
  recorder.complete("dispatch", "ep", 30'000, 40'000, "tokens", 4096, comm);
  recorder.instant("step", "pipe", nullptr, 0, compute, 10'000);
  recorder.counter("queue", 3, nullptr, compute, 10'000);
  recorder.flow_start("send", "ep", 1, comm, 35'000);
  recorder.flow_end("send", "ep", 1, compute, 65'000);
  const std::string path = (dir_ / "recorded.json").string();
  ASSERT_TRUE(recorder.write_json(path).is_ok());

  Result<TraceReport> report = analyze_trace_file(path);
  ASSERT_TRUE(report.is_ok()) << report.status().to_string();
  EXPECT_EQ(report->interval_events, 3u);
  EXPECT_EQ(report->instant_events, 1u);
  EXPECT_EQ(report->counter_events, 1u);
  EXPECT_EQ(report->flow_events, 2u);
  const ProcessReport* gpu = find_process(*report, "5");
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->name, "GPU 5");
  EXPECT_EQ(gpu->compute_ns, 80'000);
  EXPECT_EQ(gpu->comm_ns, 40'000);
  EXPECT_EQ(gpu->hidden_comm_ns, 20'000);
  EXPECT_DOUBLE_EQ(gpu->hidden_fraction, 0.5);
  const TrackReport* comm_track = find_track(*report, "5", "2");
  ASSERT_NE(comm_track, nullptr);
  EXPECT_EQ(comm_track->thread_name, "comm stream");
  EXPECT_EQ(comm_track->process_name, "GPU 5");
}

TEST_F(AnalysisTest, SvgTimelineHasRowsLegendAndAxis) {
  AnalysisOptions options;
  options.svg_path = (dir_ / "timeline.svg").string();
  options.svg_buckets = 10;
  TraceReport report = analyze(object_trace({
                                   R"({"ph":"M","name":"thread_name","pid":0,"tid":7,"args":{"name":"stream 7"}})",
                                   event_x("gemm", "kernel", 0, 7, 0, 50),
                                   event_x("nccl_allreduce", "kernel", 0, 20, 50, 50),
                               }),
                               options);
  EXPECT_EQ(report.svg_path, options.svg_path);
  std::ifstream in(options.svg_path);
  std::stringstream content;
  content << in.rdbuf();
  const std::string svg = content.str();
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("pid 0 / stream 7"), std::string::npos);
  EXPECT_NE(svg.find("pid 0 / tid 20"), std::string::npos);
  EXPECT_NE(svg.find("communication"), std::string::npos);
  EXPECT_NE(svg.find("ms</text>"), std::string::npos);
  EXPECT_NE(svg.find("trace.json"), std::string::npos);
  // 5 full compute buckets on one row and 5 full comm buckets on the other.
  size_t compute_rects = 0;
  size_t comm_rects = 0;
  for (size_t at = svg.find("#4e79a7"); at != std::string::npos; at = svg.find("#4e79a7", at + 1)) ++compute_rects;
  for (size_t at = svg.find("#e15759"); at != std::string::npos; at = svg.find("#e15759", at + 1)) ++comm_rects;
  EXPECT_EQ(compute_rects, 5u + 1u);  // + the legend swatch.
  EXPECT_EQ(comm_rects, 5u + 1u);
}

TEST_F(AnalysisTest, JsonReportRoundTrips) {
  TraceReport report = analyze(object_trace({event_x("gemm", "kernel", 0, 7, 0, 50),
                                             event_x("ncclKernel", "kernel", 0, 20, 25, 50)}));
  nlohmann::json json = nlohmann::json::parse(render_json(report));
  EXPECT_EQ(json["comm_ns"], 50'000);
  EXPECT_EQ(json["hidden_comm_ns"], 25'000);
  EXPECT_DOUBLE_EQ(json["hidden_fraction"].get<double>(), 0.5);
  ASSERT_EQ(json["processes"].size(), 1u);
  EXPECT_EQ(json["processes"][0]["pid"], "0");
  ASSERT_EQ(json["tracks"].size(), 2u);
  EXPECT_EQ(json["top"][0]["name"], "gemm");
  EXPECT_EQ(json["top"][1]["class"], "comm");
}

TEST_F(AnalysisTest, ProgressIsReportedForLargeInput) {
  const std::string trace = random_trace(3, 5'000);
  AnalysisOptions options;
  options.progress_interval_bytes = 64 << 10;
  std::vector<AnalysisProgress> seen;
  options.progress = [&](const AnalysisProgress& progress) { seen.push_back(progress); };
  analyze(trace, options);
  ASSERT_GE(seen.size(), trace.size() / (64 << 10));
  EXPECT_EQ(seen.back().file_bytes_read, trace.size());
  EXPECT_EQ(seen.back().file_size_bytes, trace.size());
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_GE(seen[i].file_bytes_read, seen[i - 1].file_bytes_read);
}

}  // namespace
}  // namespace ff::trace
