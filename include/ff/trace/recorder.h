// Chrome-trace (Perfetto-compatible) recorder used by every Fireflyer component.
//
// Events go into per-thread ring buffers sized at first use, so recording an event takes no lock and
// allocates nothing: it is one relaxed load when tracing is disabled and about a dozen stores when it
// is enabled. When a thread's ring is full the oldest events are overwritten and counted as dropped
// (a trace of the most recent window beats a stalled program). write_json() snapshots every ring and
// writes one JSON file that chrome://tracing, Perfetto UI and ff-trace open.
//
// Names and categories are `const char*` that must outlive the recorder: string literals, or strings
// returned by intern(), which copies a dynamic name once (under a lock, so not on the hot path).
//
// Tracks: an event belongs to the OS process and thread that record it, unless the caller passes an
// explicit Track, as simulators do to draw simulated ranks or GPU streams as threads.
//
// Thread-safety: every member function may be called from any thread at any time, including
// write_json() while other threads record. A Recorder must outlive the threads that record into it
// or those threads must stop recording before it is destroyed.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ff/common/clock.h"
#include "ff/common/status.h"

namespace ff::trace {

// Chrome trace event phases (the "ph" field).
enum class Phase : char {
  kComplete = 'X',
  kInstant = 'i',
  kCounter = 'C',
  kFlowStart = 's',
  kFlowStep = 't',
  kFlowEnd = 'f',
};

// A (pid, tid) pair that an event is drawn on. pid or tid < 0 means "the recording process/thread".
struct Track {
  int32_t pid = -1;
  int32_t tid = -1;
};

// One recorded event, fixed size so rings hold them by value.
struct Event {
  const char* name = nullptr;
  const char* category = nullptr;
  const char* arg_name = nullptr;  // Optional numeric argument; for counters, the series name.
  int64_t timestamp_ns = 0;
  int64_t duration_ns = 0;  // Complete events only.
  uint64_t id = 0;          // Flow events only: start, steps and end share one id.
  double arg_value = 0;
  int32_t pid = 0;
  int32_t tid = 0;
  Phase phase = Phase::kInstant;
};

struct RecorderOptions {
  // Capacity of each thread's ring, in events (about 72 bytes each). Must be a power of two.
  size_t events_per_thread = size_t{1} << 16;
  // Time source; simulations pass a ManualClock. Must outlive the recorder.
  const Clock* clock = &system_clock();
  // Shown as the process name in the trace viewer; empty keeps the viewer's default.
  std::string process_name;
};

struct RecorderStats {
  uint64_t recorded = 0;  // Events recorded since the last clear().
  uint64_t dropped = 0;   // Events overwritten because a ring was full.
  size_t threads = 0;     // Rings allocated.
};

class Recorder {
 public:
  explicit Recorder(RecorderOptions options = {});
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // Recording is off until enabled; disabled calls return after one relaxed load.
  void set_enabled(bool enabled) { enabled_.store(enabled, std::memory_order_relaxed); }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  int64_t now_ns() const { return clock_->now_ns(); }

  // A complete ("X") event [start_ns, start_ns + duration_ns).
  // NOTE: the enabled check is inline so a disabled recorder costs a load and a branch, not a call.
  void complete(const char* name, const char* category, int64_t start_ns, int64_t duration_ns,
                const char* arg_name = nullptr, double arg_value = 0, Track track = {}) {
    if (enabled()) record_complete(name, category, start_ns, duration_ns, arg_name, arg_value, track);
  }
  void instant(const char* name, const char* category, const char* arg_name = nullptr, double arg_value = 0,
               Track track = {}, int64_t timestamp_ns = -1);
  // A counter series: drawn as a step chart named `name`; `series` defaults to "value".
  void counter(const char* name, double value, const char* series = nullptr, Track track = {},
               int64_t timestamp_ns = -1);
  // Flow arrows join events across threads (a send to its receive): start on the producer, end on the
  // consumer, with the same id. The arrow binds to the enclosing complete event of each end.
  void flow_start(const char* name, const char* category, uint64_t id, Track track = {}, int64_t timestamp_ns = -1);
  void flow_step(const char* name, const char* category, uint64_t id, Track track = {}, int64_t timestamp_ns = -1);
  void flow_end(const char* name, const char* category, uint64_t id, Track track = {}, int64_t timestamp_ns = -1);

  // Names the calling thread, or an explicit track, in the viewer.
  void set_thread_name(std::string_view name);
  void set_track_name(Track track, std::string_view name);
  // Names a process (the current one when pid < 0).
  void set_process_name(std::string_view name, int32_t pid = -1);

  // Returns a copy of `text` that lives as long as the recorder; equal strings share one copy.
  const char* intern(std::string_view text);

  RecorderStats stats() const;
  // Drops every recorded event; names stay.
  void clear();

  // A Chrome trace JSON document of everything recorded so far, events sorted by time.
  std::string to_json() const;
  // Writes to_json() to path atomically (temporary file + rename).
  Status write_json(const std::string& path) const;

 private:
  struct ThreadRing;
  void record_complete(const char* name, const char* category, int64_t start_ns, int64_t duration_ns,
                       const char* arg_name, double arg_value, Track track);
  ThreadRing* ring_for_this_thread();
  void record(const Event& event);
  std::vector<Event> snapshot() const;

  const uint64_t recorder_id_;
  const size_t capacity_;
  const Clock* clock_;
  std::atomic<bool> enabled_{false};
  const int32_t pid_;

  mutable std::mutex mutex_;  // Guards the members below; never taken on the recording path.
  std::vector<std::unique_ptr<ThreadRing>> rings_;
  std::unordered_set<std::string> interned_;
  std::unordered_map<int64_t, std::string> thread_names_;   // key: pid << 32 | tid
  std::unordered_map<int32_t, std::string> process_names_;
};

// The process-wide recorder, disabled until enabled. Tools enable it with --trace FILE.
Recorder& global();

// Records a complete event for the lifetime of the object.
class Scope {
 public:
  Scope(Recorder& recorder, const char* name, const char* category)
      : recorder_(recorder.enabled() ? &recorder : nullptr), name_(name), category_(category),
        start_ns_(recorder_ ? recorder.now_ns() : 0) {}
  ~Scope() {
    if (recorder_ != nullptr) recorder_->complete(name_, category_, start_ns_, recorder_->now_ns() - start_ns_);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Recorder* recorder_;
  const char* name_;
  const char* category_;
  int64_t start_ns_;
};

// Appends `text` to `out` as the inside of a JSON string (quotes not included).
void append_json_escaped(std::string& out, std::string_view text);

}  // namespace ff::trace

#define FF_TRACE_CONCAT_INNER_(a, b) a##b
#define FF_TRACE_CONCAT_(a, b) FF_TRACE_CONCAT_INNER_(a, b)
// FF_TRACE_SCOPE("dispatch", "ep"): a complete event on the global recorder for the enclosing scope.
#define FF_TRACE_SCOPE(name, category) \
  ::ff::trace::Scope FF_TRACE_CONCAT_(ff_trace_scope_, __LINE__)(::ff::trace::global(), name, category)
