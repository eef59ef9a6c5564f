#include "ff/trace/recorder.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "ff/common/assert.h"
#include "ff/common/file.h"

namespace ff::trace {

// One thread's events. Only the owning thread writes `events` and `head`; readers copy under the
// protocol described in snapshot().
struct Recorder::ThreadRing {
  ThreadRing(size_t capacity, int32_t pid_value, int32_t tid_value)
      : events(new Event[capacity]), pid(pid_value), tid(tid_value) {}
  std::unique_ptr<Event[]> events;
  std::atomic<uint64_t> begun{0};           // 1 + index of the event being written (or last written).
  std::atomic<uint64_t> head{0};            // Index of the next event to write; never wraps.
  std::atomic<uint64_t> cleared_before{0};  // Events below this index were cleared.
  const int32_t pid;
  const int32_t tid;
};

namespace {

std::atomic<uint64_t> next_recorder_id{1};

int32_t current_tid() { return static_cast<int32_t>(::syscall(SYS_gettid)); }

int64_t track_key(int32_t pid, int32_t tid) {
  return (static_cast<int64_t>(pid) << 32) | static_cast<uint32_t>(tid);
}

// Per-thread cache of the rings this thread records into, keyed by recorder id (ids are never
// reused, so a destroyed recorder's entry can never be mistaken for a live one).
struct RingCacheEntry {
  uint64_t recorder_id = 0;
  void* ring = nullptr;
};
constexpr size_t kRingCacheSize = 8;
thread_local std::array<RingCacheEntry, kRingCacheSize> ring_cache{};
thread_local size_t ring_cache_next = 0;

void append_number(std::string& out, double value) {
  if (std::isfinite(value)) {
    fmt::format_to(std::back_inserter(out), "{}", value);
  } else {
    out += "null";
  }
}

void append_microseconds(std::string& out, int64_t nanoseconds) {
  // Chrome traces count microseconds; three decimals keep nanosecond precision.
  const char* sign = nanoseconds < 0 ? "-" : "";
  uint64_t magnitude = nanoseconds < 0 ? static_cast<uint64_t>(-nanoseconds) : static_cast<uint64_t>(nanoseconds);
  fmt::format_to(std::back_inserter(out), "{}{}.{:03}", sign, magnitude / 1000, magnitude % 1000);
}

void append_quoted(std::string& out, std::string_view text) {
  out += '"';
  append_json_escaped(out, text);
  out += '"';
}

}  // namespace

void append_json_escaped(std::string& out, std::string_view text) {
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          fmt::format_to(std::back_inserter(out), "\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
}

Recorder::Recorder(RecorderOptions options)
    : recorder_id_(next_recorder_id.fetch_add(1)),
      capacity_(options.events_per_thread),
      clock_(options.clock),
      pid_(static_cast<int32_t>(::getpid())) {
  FF_ASSERT(capacity_ >= 2 && (capacity_ & (capacity_ - 1)) == 0, "events_per_thread={} must be a power of two >= 2",
            capacity_);
  FF_ASSERT(clock_ != nullptr);
  if (!options.process_name.empty()) set_process_name(options.process_name);
}

Recorder::~Recorder() = default;

Recorder::ThreadRing* Recorder::ring_for_this_thread() {
  for (const RingCacheEntry& entry : ring_cache) {
    if (entry.recorder_id == recorder_id_) return static_cast<ThreadRing*>(entry.ring);
  }
  // First event of this thread on this recorder (or the cache entry was evicted): find or make the
  // ring under the lock. This is the only allocation, once per thread.
  const int32_t tid = current_tid();
  ThreadRing* ring = nullptr;
  {
    std::lock_guard lock(mutex_);
    for (const auto& candidate : rings_) {
      if (candidate->tid == tid && candidate->pid == pid_) ring = candidate.get();
    }
    if (ring == nullptr) {
      rings_.push_back(std::make_unique<ThreadRing>(capacity_, pid_, tid));
      ring = rings_.back().get();
    }
  }
  ring_cache[ring_cache_next] = RingCacheEntry{recorder_id_, ring};
  ring_cache_next = (ring_cache_next + 1) % kRingCacheSize;
  return ring;
}

void Recorder::record(const Event& event) {
  ThreadRing* ring = ring_for_this_thread();
  const uint64_t head = ring->head.load(std::memory_order_relaxed);
  // Seqlock-style: announce the index before touching its slot, so a concurrent snapshot knows
  // which old event may be half overwritten.
  ring->begun.store(head + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  Event& slot = ring->events[head & (capacity_ - 1)];
  slot = event;
  if (slot.pid < 0) slot.pid = ring->pid;
  if (slot.tid < 0) slot.tid = ring->tid;
  ring->head.store(head + 1, std::memory_order_release);
}

void Recorder::record_complete(const char* name, const char* category, int64_t start_ns, int64_t duration_ns,
                               const char* arg_name, double arg_value, Track track) {
  Event event;
  event.name = name;
  event.category = category;
  event.arg_name = arg_name;
  event.arg_value = arg_value;
  event.timestamp_ns = start_ns;
  event.duration_ns = duration_ns < 0 ? 0 : duration_ns;
  event.pid = track.pid;
  event.tid = track.tid;
  event.phase = Phase::kComplete;
  record(event);
}

void Recorder::instant(const char* name, const char* category, const char* arg_name, double arg_value, Track track,
                       int64_t timestamp_ns) {
  if (!enabled()) return;
  Event event;
  event.name = name;
  event.category = category;
  event.arg_name = arg_name;
  event.arg_value = arg_value;
  event.timestamp_ns = timestamp_ns >= 0 ? timestamp_ns : now_ns();
  event.pid = track.pid;
  event.tid = track.tid;
  event.phase = Phase::kInstant;
  record(event);
}

void Recorder::counter(const char* name, double value, const char* series, Track track, int64_t timestamp_ns) {
  if (!enabled()) return;
  Event event;
  event.name = name;
  event.arg_name = series != nullptr ? series : "value";
  event.arg_value = value;
  event.timestamp_ns = timestamp_ns >= 0 ? timestamp_ns : now_ns();
  event.pid = track.pid;
  event.tid = track.tid;
  event.phase = Phase::kCounter;
  record(event);
}

namespace {
Event flow_event(Phase phase, const char* name, const char* category, uint64_t id, Track track, int64_t timestamp_ns) {
  Event event;
  event.name = name;
  event.category = category;
  event.id = id;
  event.timestamp_ns = timestamp_ns;
  event.pid = track.pid;
  event.tid = track.tid;
  event.phase = phase;
  return event;
}
}  // namespace

void Recorder::flow_start(const char* name, const char* category, uint64_t id, Track track, int64_t timestamp_ns) {
  if (!enabled()) return;
  record(flow_event(Phase::kFlowStart, name, category, id, track, timestamp_ns >= 0 ? timestamp_ns : now_ns()));
}

void Recorder::flow_step(const char* name, const char* category, uint64_t id, Track track, int64_t timestamp_ns) {
  if (!enabled()) return;
  record(flow_event(Phase::kFlowStep, name, category, id, track, timestamp_ns >= 0 ? timestamp_ns : now_ns()));
}

void Recorder::flow_end(const char* name, const char* category, uint64_t id, Track track, int64_t timestamp_ns) {
  if (!enabled()) return;
  record(flow_event(Phase::kFlowEnd, name, category, id, track, timestamp_ns >= 0 ? timestamp_ns : now_ns()));
}

void Recorder::set_thread_name(std::string_view name) {
  std::lock_guard lock(mutex_);
  thread_names_[track_key(pid_, current_tid())] = std::string(name);
}

void Recorder::set_track_name(Track track, std::string_view name) {
  const int32_t pid = track.pid < 0 ? pid_ : track.pid;
  const int32_t tid = track.tid < 0 ? current_tid() : track.tid;
  std::lock_guard lock(mutex_);
  thread_names_[track_key(pid, tid)] = std::string(name);
}

void Recorder::set_process_name(std::string_view name, int32_t pid) {
  std::lock_guard lock(mutex_);
  process_names_[pid < 0 ? pid_ : pid] = std::string(name);
}

const char* Recorder::intern(std::string_view text) {
  std::lock_guard lock(mutex_);
  // NOTE: node-based set: element addresses stay valid across rehashing, so c_str() is stable.
  return interned_.emplace(text).first->c_str();
}

RecorderStats Recorder::stats() const {
  std::lock_guard lock(mutex_);
  RecorderStats stats;
  stats.threads = rings_.size();
  for (const auto& ring : rings_) {
    const uint64_t head = ring->head.load(std::memory_order_acquire);
    const uint64_t base = ring->cleared_before.load(std::memory_order_acquire);
    stats.recorded += head - base;
    const uint64_t oldest_kept = head > capacity_ ? head - capacity_ : 0;
    if (oldest_kept > base) stats.dropped += oldest_kept - base;
  }
  return stats;
}

void Recorder::clear() {
  std::lock_guard lock(mutex_);
  for (const auto& ring : rings_) {
    ring->cleared_before.store(ring->head.load(std::memory_order_acquire), std::memory_order_release);
  }
}

std::vector<Event> Recorder::snapshot() const {
  std::vector<Event> events;
  std::lock_guard lock(mutex_);
  for (const auto& ring : rings_) {
    // Copy [first, head) then re-read head: the writer may have overwritten slots while we copied.
    // Index i is intact if the writer never began i + capacity.
    // NOTE: copying a slot the writer is overwriting is a benign race that the re-check discards; it
    // keeps the recording path free of per-slot synchronisation.
    const uint64_t head_before = ring->head.load(std::memory_order_acquire);
    const uint64_t base = ring->cleared_before.load(std::memory_order_acquire);
    uint64_t first = head_before > capacity_ ? head_before - capacity_ : 0;
    first = std::max(first, base);
    const size_t start = events.size();
    for (uint64_t i = first; i < head_before; ++i) events.push_back(ring->events[i & (capacity_ - 1)]);
    std::atomic_thread_fence(std::memory_order_acquire);
    // Every index the writer has begun since (including one it may be writing now) destroyed the
    // event `capacity_` places before it.
    const uint64_t begun = ring->begun.load(std::memory_order_relaxed);
    const uint64_t valid_from = begun > capacity_ ? begun - capacity_ : 0;
    if (valid_from > first) {
      const size_t invalid = static_cast<size_t>(std::min<uint64_t>(valid_from - first, head_before - first));
      events.erase(events.begin() + static_cast<std::ptrdiff_t>(start),
                   events.begin() + static_cast<std::ptrdiff_t>(start + invalid));
    }
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const Event& a, const Event& b) { return a.timestamp_ns < b.timestamp_ns; });
  return events;
}

std::string Recorder::to_json() const {
  std::vector<Event> events = snapshot();
  std::string out;
  out.reserve(128 + events.size() * 120);
  out += "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n";
  bool first = true;
  auto separator = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  {
    std::lock_guard lock(mutex_);
    for (const auto& [pid, name] : process_names_) {
      separator();
      fmt::format_to(std::back_inserter(out), R"({{"name":"process_name","ph":"M","pid":{},"tid":0,"args":{{"name":)",
                     pid);
      append_quoted(out, name);
      out += "}}";
    }
    for (const auto& [key, name] : thread_names_) {
      separator();
      fmt::format_to(std::back_inserter(out), R"({{"name":"thread_name","ph":"M","pid":{},"tid":{},"args":{{"name":)",
                     static_cast<int32_t>(key >> 32), static_cast<int32_t>(key & 0xffffffff));
      append_quoted(out, name);
      out += "}}";
    }
  }
  for (const Event& event : events) {
    separator();
    out += "{\"name\":";
    append_quoted(out, event.name != nullptr ? event.name : "");
    if (event.category != nullptr) {
      out += ",\"cat\":";
      append_quoted(out, event.category);
    }
    fmt::format_to(std::back_inserter(out), ",\"ph\":\"{}\",\"ts\":", static_cast<char>(event.phase));
    append_microseconds(out, event.timestamp_ns);
    fmt::format_to(std::back_inserter(out), ",\"pid\":{},\"tid\":{}", event.pid, event.tid);
    switch (event.phase) {
      case Phase::kComplete:
        out += ",\"dur\":";
        append_microseconds(out, event.duration_ns);
        break;
      case Phase::kInstant: out += ",\"s\":\"t\""; break;
      case Phase::kFlowStart:
      case Phase::kFlowStep: fmt::format_to(std::back_inserter(out), ",\"id\":{}", event.id); break;
      case Phase::kFlowEnd: fmt::format_to(std::back_inserter(out), ",\"id\":{},\"bp\":\"e\"", event.id); break;
      case Phase::kCounter: break;
    }
    if (event.arg_name != nullptr) {
      out += ",\"args\":{";
      append_quoted(out, event.arg_name);
      out += ':';
      append_number(out, event.arg_value);
      out += '}';
    }
    out += '}';
  }
  out += "\n]}\n";
  return out;
}

Status Recorder::write_json(const std::string& path) const {
  return write_file_atomically(path, to_json()).with_context("writing trace");
}

Recorder& global() {
  // Never destroyed: threads may still record while static destructors run.
  static Recorder* recorder = new Recorder();
  return *recorder;
}

}  // namespace ff::trace
