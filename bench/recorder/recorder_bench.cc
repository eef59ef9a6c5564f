// Cost of recording one trace event: disabled, enabled on one thread, and enabled on several threads
// at once (each has its own ring, so threads should not slow each other), beside the obvious baseline
// measured the same way in the same run: one mutex-protected std::vector<Event> that every thread
// appends to. Prints one JSON line per case; with --out FILE also writes them as a JSON document with
// the device name.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../cpu_model.h"
#include "ff/common/file.h"
#include "ff/trace/recorder.h"

namespace {

using Clock = std::chrono::steady_clock;

using ff::bench::cpu_model;

// The baseline: every event appended to one shared vector under one mutex.
class MutexVectorRecorder {
 public:
  void clear() {
    std::lock_guard lock(mutex_);
    events_.clear();
  }
  void complete(const char* name, const char* category, int64_t start_ns, int64_t duration_ns, const char* arg_name,
                double arg_value) {
    ff::trace::Event event;
    event.name = name;
    event.category = category;
    event.timestamp_ns = start_ns;
    event.duration_ns = duration_ns;
    event.arg_name = arg_name;
    event.arg_value = arg_value;
    event.phase = ff::trace::Phase::kComplete;
    std::lock_guard lock(mutex_);
    events_.push_back(event);
  }

 private:
  std::mutex mutex_;
  std::vector<ff::trace::Event> events_;
};

// Returns nanoseconds per event, the best of `repeats` rounds of `events` per thread.
template <typename AnyRecorder>
double time_per_event_ns(AnyRecorder& recorder, int threads, int events, int repeats) {
  double best = 1e30;
  for (int repeat = 0; repeat < repeats; ++repeat) {
    recorder.clear();
    std::vector<std::thread> workers;
    std::vector<double> per_thread(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        auto start = Clock::now();
        for (int i = 0; i < events; ++i) recorder.complete("event", "bench", i, 1, "i", i);
        per_thread[static_cast<size_t>(t)] =
            std::chrono::duration<double, std::nano>(Clock::now() - start).count() / events;
      });
    }
    for (auto& worker : workers) worker.join();
    best = std::min(best, *std::max_element(per_thread.begin(), per_thread.end()));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--out") out_path = argv[i + 1];
  }
  constexpr int kEvents = 2'000'000;
  nlohmann::json results = nlohmann::json::array();
  ff::trace::RecorderOptions options;
  options.events_per_thread = size_t{1} << 16;
  for (bool enabled : {false, true}) {
    for (int threads : {1, 2}) {
      ff::trace::Recorder recorder(options);
      recorder.set_enabled(enabled);
      const double ns = time_per_event_ns(recorder, threads, kEvents, 5);
      MutexVectorRecorder baseline;
      const double baseline_ns = time_per_event_ns(baseline, threads, kEvents, 5);
      nlohmann::json line = {{"bench", "trace_recorder"},
                             {"case", enabled ? "complete_event_enabled" : "complete_event_disabled"},
                             {"threads", threads},
                             {"events_per_thread", kEvents},
                             {"ns_per_event", ns},
                             {"baseline", "one mutex-protected std::vector<Event>, always recording"},
                             {"baseline_ns_per_event", baseline_ns},
                             {"speedup", baseline_ns / ns}};
      std::printf("%s\n", line.dump().c_str());
      results.push_back(line);
    }
  }
  if (!out_path.empty()) {
    nlohmann::json document = {{"device", cpu_model() + " (CPU)"}, {"results", results}};
    ff::Status status = ff::write_file_atomically(out_path, document.dump(2) + "\n");
    if (!status.is_ok()) {
      std::fprintf(stderr, "recorder_bench: %s\n", status.to_string().c_str());
      return 1;
    }
  }
  return 0;
}
