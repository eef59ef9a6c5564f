// Trace analysis: streaming event parser, bounded interval store with spill-to-disk, and the sweep
// that turns sorted intervals into busy/compute/comm/hidden figures.
//
// Data flow: JsonReader -> TraceParser (one compact Interval per complete event, per-name and
// per-track statistics updated in place) -> IntervalStore (in memory up to a budget, then sorted
// runs on disk) -> one merged pass in (process, start) order -> Sweep (running unions) -> report.
//
// Why (process, start) order and not (track, start): the hidden-communication figure needs the
// unions of comm and compute across all streams of one GPU; with a process's intervals in start
// order, every union (per track, per process, per class) is a running "current segment" that closes
// when the next interval starts after its end, so one pass with O(tracks) state computes all of
// them, and |comm ∩ compute| = |comm| + |compute| - |comm ∪ compute| needs no interval lists.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <queue>
#include <regex>
#include <unordered_map>

#include "ff/common/assert.h"
#include "ff/trace/analysis.h"
#include "json_reader.h"
#include "timeline_svg.h"

namespace ff::trace {

std::string_view event_class_name(EventClass event_class) {
  switch (event_class) {
    case EventClass::kCompute: return "compute";
    case EventClass::kComm: return "comm";
    case EventClass::kOther: return "other";
  }
  return "unknown";
}

std::vector<std::string> default_comm_patterns() {
  // "_?" lets one pattern match all_to_all, alltoall and AllToAll (the match ignores case).
  return {"nccl",          "all_?to_?all", "deep_?ep",     "dispatch",  "combine",
          "all_?reduce",   "all_?gather",  "reduce_?scatter", "send_?recv", "broadcast",
          "c10d::",        "memcpy ?ptop"};
}

std::vector<std::string> default_ignore_categories() {
  return {"cpu_op",      "python_function", "user_annotation", "cuda_runtime", "cuda_driver", "ac2g",
          "Trace",       "fwdbwd",          "gpu_user_annotation", "cpu_instant_event", "overhead"};
}

namespace {

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace

struct EventClassifier::Impl {
  std::vector<std::regex> comm_patterns;
  std::vector<std::string> ignore_categories_lower;
};

Result<EventClassifier> EventClassifier::create(const std::vector<std::string>& comm_patterns,
                                                const std::vector<std::string>& ignore_categories) {
  auto impl = std::make_shared<Impl>();
  for (const std::string& pattern : comm_patterns) {
    if (pattern.empty()) return invalid_argument("comm pattern is empty (it would match every event)");
    // NOTE: std::regex throws on a bad pattern; the exception stays inside this function.
    try {
      impl->comm_patterns.emplace_back(pattern, std::regex::ECMAScript | std::regex::icase | std::regex::optimize);
    } catch (const std::regex_error& error) {
      return invalid_argument("comm pattern '{}' is not a valid regular expression: {}", pattern, error.what());
    }
  }
  for (const std::string& category : ignore_categories) impl->ignore_categories_lower.push_back(lowercase(category));
  return EventClassifier(std::move(impl));
}

EventClassifier EventClassifier::defaults() {
  Result<EventClassifier> classifier = create(default_comm_patterns(), default_ignore_categories());
  FF_ASSERT(classifier.is_ok(), "default patterns must compile: {}", classifier.status().to_string());
  return *std::move(classifier);
}

bool EventClassifier::is_comm_name(std::string_view name) const {
  for (const std::regex& pattern : impl_->comm_patterns) {
    if (std::regex_search(name.begin(), name.end(), pattern)) return true;
  }
  return false;
}

bool EventClassifier::is_ignored_category(std::string_view category) const {
  const std::string lower = lowercase(category);
  return std::find(impl_->ignore_categories_lower.begin(), impl_->ignore_categories_lower.end(), lower) !=
         impl_->ignore_categories_lower.end();
}

EventClass EventClassifier::classify(std::string_view name, std::string_view category) const {
  if (is_ignored_category(category)) return EventClass::kOther;
  return is_comm_name(name) ? EventClass::kComm : EventClass::kCompute;
}

namespace {

using internal::ByteSource;
using internal::JsonReader;

// The compact per-event record; everything else about an event is folded into statistics at parse
// time. 24 bytes, so a 1 GiB PyTorch trace (~4M kernels and ops) needs ~100 MB of records.
struct Interval {
  int64_t start_ns;
  int64_t end_ns;
  uint32_t process;
  uint32_t track_and_class;  // track << 2 | EventClass.

  uint32_t track() const { return track_and_class >> 2; }
  EventClass event_class() const { return static_cast<EventClass>(track_and_class & 3); }
};
static_assert(sizeof(Interval) == 24, "Interval must stay compact: it is stored per event");

bool interval_before(const Interval& a, const Interval& b) {
  if (a.process != b.process) return a.process < b.process;
  if (a.start_ns != b.start_ns) return a.start_ns < b.start_ns;
  return a.end_ns < b.end_ns;
}

struct FileCloser {
  void operator()(FILE* file) const {
    if (file != nullptr) std::fclose(file);
  }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

// A sorted run of intervals in an anonymous temporary file.
struct Run {
  FilePtr file;
  uint64_t count = 0;
};

// Reads a run back in blocks.
class RunReader {
 public:
  RunReader(Run run, size_t block_records) : run_(std::move(run)), remaining_(run_.count), block_(block_records) {}

  // False at the end of the run; a read error is reported through status().
  bool next(Interval& out) {
    if (position_ == filled_) {
      if (remaining_ == 0) return false;
      const size_t want = static_cast<size_t>(std::min<uint64_t>(remaining_, block_.size()));
      const size_t got = std::fread(block_.data(), sizeof(Interval), want, run_.file.get());
      if (got != want) {
        status_ = data_loss("reading a spilled run: got {} of {} records", got, want);
        return false;
      }
      remaining_ -= got;
      filled_ = got;
      position_ = 0;
    }
    out = block_[position_++];
    return true;
  }
  const Status& status() const { return status_; }

 private:
  Run run_;
  uint64_t remaining_;
  std::vector<Interval> block_;
  size_t filled_ = 0;
  size_t position_ = 0;
  Status status_;
};

// Holds intervals in memory up to max_buffered, then spills sorted runs; for_each_sorted merges.
class IntervalStore {
 public:
  IntervalStore(size_t max_buffered, size_t fan_in, std::string tmp_dir)
      : max_buffered_(max_buffered), fan_in_(fan_in), tmp_dir_(std::move(tmp_dir)) {
    FF_ASSERT(max_buffered_ >= 1);
    FF_ASSERT(fan_in_ >= 2);
    // NOTE: reserving the whole buffer up front avoids vector doubling overshooting the budget by
    // up to 2x; pages that are never written are never resident, so small traces do not pay for it.
    buffer_.reserve(max_buffered_);
  }

  Status add(const Interval& interval) {
    if (buffer_.size() >= max_buffered_) FF_RETURN_IF_ERROR(spill());
    buffer_.push_back(interval);
    return Status::ok();
  }

  uint64_t runs_written() const { return runs_written_; }
  uint64_t bytes_written() const { return bytes_written_; }

  // Calls visit(interval) for every interval in (process, start) order. Consumes the store.
  template <typename Visit>
  Status for_each_sorted(Visit&& visit) {
    std::sort(buffer_.begin(), buffer_.end(), interval_before);
    if (runs_.empty()) {
      for (const Interval& interval : buffer_) visit(interval);
      return Status::ok();
    }
    // Multi-pass: merge groups of fan_in runs into longer runs until one final merge suffices, so
    // the number of open files and read buffers stays bounded.
    while (runs_.size() + 1 > fan_in_) {
      std::vector<Run> group;
      for (size_t i = 0; i < fan_in_; ++i) group.push_back(std::move(runs_[i]));
      runs_.erase(runs_.begin(), runs_.begin() + static_cast<std::ptrdiff_t>(fan_in_));
      FF_ASSIGN_OR_RETURN(Run merged, new_run());
      Status write_status;
      FF_RETURN_IF_ERROR(merge(std::move(group), {}, [&](const Interval& interval) {
        if (write_status.is_ok() && std::fwrite(&interval, sizeof(Interval), 1, merged.file.get()) != 1) {
          write_status = io_error("writing a merged run to {}: disk full?", tmp_dir_);
        }
        ++merged.count;
      }));
      FF_RETURN_IF_ERROR(write_status);
      FF_RETURN_IF_ERROR(rewind(merged));
      runs_.push_back(std::move(merged));
    }
    std::vector<Interval> memory = std::move(buffer_);
    return merge(std::move(runs_), std::move(memory), visit);
  }

 private:
  Result<Run> new_run() {
    std::string pattern = tmp_dir_ + "/ff-trace-run-XXXXXX";
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) return errno_error(errno, fmt::format("create a spill file in {}", tmp_dir_));
    // Unlinked at once: the space is freed when the file is closed, even if the process is killed.
    ::unlink(pattern.c_str());
    FILE* file = ::fdopen(fd, "w+b");
    if (file == nullptr) {
      ::close(fd);
      return errno_error(errno, "fdopen a spill file");
    }
    ++runs_written_;
    return Run{FilePtr(file), 0};
  }

  Status rewind(Run& run) {
    if (std::fflush(run.file.get()) != 0 || std::fseek(run.file.get(), 0, SEEK_SET) != 0) {
      return errno_error(errno, fmt::format("flush a spill file in {}", tmp_dir_));
    }
    return Status::ok();
  }

  Status spill() {
    std::sort(buffer_.begin(), buffer_.end(), interval_before);
    FF_ASSIGN_OR_RETURN(Run run, new_run());
    if (std::fwrite(buffer_.data(), sizeof(Interval), buffer_.size(), run.file.get()) != buffer_.size()) {
      return io_error("writing {} intervals to a spill file in {}: disk full?", buffer_.size(), tmp_dir_);
    }
    run.count = buffer_.size();
    bytes_written_ += buffer_.size() * sizeof(Interval);
    FF_RETURN_IF_ERROR(rewind(run));
    runs_.push_back(std::move(run));
    buffer_.clear();  // Keeps its capacity: the next run reuses the memory.
    return Status::ok();
  }

  // K-way merge of runs plus one sorted in-memory vector.
  template <typename Visit>
  Status merge(std::vector<Run> runs, std::vector<Interval> memory, Visit&& visit) {
    FF_ASSERT_LE(runs.size(), fan_in_);
    // Read buffers share the same budget as the in-memory buffer.
    const size_t block_records = std::max<size_t>(1024, max_buffered_ / (fan_in_ + 1));
    std::vector<RunReader> readers;
    readers.reserve(runs.size());
    for (Run& run : runs) readers.emplace_back(std::move(run), block_records);
    struct Head {
      Interval interval;
      size_t source;  // readers.size() means the in-memory vector.
    };
    auto after = [](const Head& a, const Head& b) { return interval_before(b.interval, a.interval); };
    std::priority_queue<Head, std::vector<Head>, decltype(after)> heap(after);
    size_t memory_position = 0;
    auto pull = [&](size_t source) {
      Interval interval;
      if (source == readers.size()) {
        if (memory_position < memory.size()) heap.push({memory[memory_position++], source});
      } else if (readers[source].next(interval)) {
        heap.push({interval, source});
      }
    };
    for (size_t source = 0; source <= readers.size(); ++source) pull(source);
    while (!heap.empty()) {
      const Head head = heap.top();
      heap.pop();
      visit(head.interval);
      pull(head.source);
    }
    for (const RunReader& reader : readers) FF_RETURN_IF_ERROR(reader.status());
    return Status::ok();
  }

  const size_t max_buffered_;
  const size_t fan_in_;
  const std::string tmp_dir_;
  std::vector<Interval> buffer_;
  std::vector<Run> runs_;
  uint64_t runs_written_ = 0;
  uint64_t bytes_written_ = 0;
};

// Transparent hashing so lookups by string_view do not allocate a std::string per event.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct PairHash {
  size_t operator()(const std::pair<int64_t, int64_t>& key) const {
    const uint64_t a = static_cast<uint64_t>(key.first) * 0x9e3779b97f4a7c15ull;
    return static_cast<size_t>(a ^ (static_cast<uint64_t>(key.second) + 0x632be59bd9b4e019ull + (a << 6) + (a >> 2)));
  }
};

// Pid/tid values that were JSON strings map to ids from this base up, far from any real number.
constexpr int64_t kStringIdBase = INT64_MIN + 1;
constexpr uint32_t kNoName = UINT32_MAX;

struct NameEntry {
  std::string_view name;  // Points into the key of the names map (stable: node-based map).
  uint32_t category = 0;  // Of the first occurrence.
  bool is_comm = false;
  uint64_t count = 0;
  int64_t total_ns = 0;
  int64_t max_ns = 0;
};

struct CategoryEntry {
  std::string name;
  bool ignored = false;
};

struct OpenBegin {
  int64_t start_ns;
  uint32_t name;
  uint32_t category;
};

struct TrackState {
  int64_t pid_key = 0;
  int64_t tid_key = 0;
  uint32_t process = 0;
  uint64_t events = 0;
  int64_t first_ns = INT64_MAX;
  int64_t last_ns = INT64_MIN;
  std::vector<OpenBegin> open;  // "B" events awaiting their "E"; bounded by max_begin_depth.
};

struct ProcessState {
  int64_t pid_key = 0;
  std::vector<uint32_t> tracks;
  uint64_t events = 0;
  int64_t first_ns = INT64_MAX;
  int64_t last_ns = INT64_MIN;
};

class TraceParser {
 public:
  TraceParser(JsonReader& reader, const AnalysisOptions& options, const EventClassifier& classifier,
              IntervalStore& store)
      : reader_(reader), options_(options), classifier_(classifier), store_(store) {
    other_names_ = kNoName;
  }

  Status parse(std::chrono::steady_clock::time_point started, uint64_t file_size_bytes) {
    started_ = started;
    file_size_bytes_ = file_size_bytes;
    next_progress_bytes_ = options_.progress_interval_bytes;
    parse_document();
    if (!store_status_.is_ok()) return store_status_;
    if (reader_.failed()) return reader_.error();
    return Status::ok();
  }

  // Parsed state, read by the sweep and the report.
  std::vector<TrackState> tracks_;
  std::vector<ProcessState> processes_;
  std::vector<NameEntry> names_;
  std::vector<CategoryEntry> categories_;
  std::vector<std::string> string_ids_;  // kStringIdBase + i -> the string.
  std::unordered_map<int64_t, std::string> process_names_;
  std::unordered_map<std::pair<int64_t, int64_t>, std::string, PairHash> thread_names_;
  TraceReport counts_;  // Only the counters are filled here.

 private:
  void report_progress() {
    if (!options_.progress) return;
    AnalysisProgress progress;
    progress.file_bytes_read = reader_.file_bytes_consumed();
    progress.file_size_bytes = file_size_bytes_;
    progress.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    options_.progress(progress);
  }

  void parse_document() {
    const int first = reader_.peek();
    if (first == '[') {
      reader_.advance();
      parse_event_array(/*lenient_end=*/true);
    } else if (first == '{') {
      reader_.advance();
      bool found_events = false;
      if (reader_.peek() == '}') {
        reader_.advance();
      } else {
        for (;;) {
          if (!reader_.read_string(key_) || !reader_.consume(':', "after an object key")) return;
          if (key_ == "traceEvents") {
            if (reader_.peek() != '[') {
              reader_.fail("expected '[' after \"traceEvents\", found {}", JsonReader::describe(reader_.peek()));
              return;
            }
            reader_.advance();
            if (!parse_event_array(/*lenient_end=*/false)) return;
            found_events = true;
          } else if (!reader_.skip_value()) {
            return;
          }
          const JsonReader::Next next = reader_.next_item('}', "in the top-level object");
          if (next == JsonReader::Next::kError) return;
          if (next == JsonReader::Next::kEnd) break;
        }
      }
      if (!found_events) {
        reader_.fail_at(0, "the top-level object has no \"traceEvents\" array (is this a Chrome trace?)");
        return;
      }
    } else {
      if (reader_.failed()) return;
      reader_.fail("expected '{{' or '[' at the start of a trace, found {}", JsonReader::describe(first));
      return;
    }
    const int trailing = reader_.peek();
    if (trailing >= 0) reader_.fail("unexpected {} after the end of the trace", JsonReader::describe(trailing));
  }

  // Called after '['. lenient_end: the array form, whose closing bracket may be missing.
  bool parse_event_array(bool lenient_end) {
    if (reader_.peek() == ']') {
      reader_.advance();
      return true;
    }
    for (;;) {
      int c = reader_.peek();
      if (c < 0 && lenient_end && !reader_.failed()) return true;  // "[{...}," then end of file.
      if (c != '{') {
        if (!reader_.failed()) reader_.fail("expected '{{' to start an event, found {}", JsonReader::describe(c));
        return false;
      }
      if (!parse_event()) return false;
      if (reader_.offset() >= next_progress_bytes_) {
        next_progress_bytes_ = reader_.offset() + options_.progress_interval_bytes;
        report_progress();
      }
      c = reader_.peek();
      if (c == ',') {
        reader_.advance();
        continue;
      }
      if (c == ']') {
        reader_.advance();
        return true;
      }
      if (c < 0 && lenient_end && !reader_.failed()) return true;
      if (!reader_.failed()) reader_.fail("expected ',' or ']' after an event, found {}", JsonReader::describe(c));
      return false;
    }
  }

  // Reads a pid or tid: a number (rounded), or a string (a decimal string is taken as its number).
  bool read_track_id(int64_t& out) {
    const int c = reader_.peek();
    if (c == '"') {
      if (!reader_.read_string(scratch_)) return false;
      int64_t number = 0;
      if (!scratch_.empty() && internal::scaled_integer_from_token(scratch_, 0, number) &&
          scratch_.find_first_not_of("0123456789-") == std::string::npos) {
        out = number;
        return true;
      }
      auto found = string_id_index_.find(std::string_view(scratch_));
      if (found == string_id_index_.end()) {
        if (string_ids_.size() >= options_.max_tracks) {
          return reader_.fail("more than {} distinct string pids/tids", options_.max_tracks);
        }
        found = string_id_index_.emplace(scratch_, kStringIdBase + static_cast<int64_t>(string_ids_.size())).first;
        string_ids_.push_back(scratch_);
      }
      out = found->second;
      return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return reader_.read_scaled_integer(0, out);
    out = 0;
    return reader_.skip_value();
  }

  // Reads "args": only its "name" member matters (the name in process_name/thread_name metadata).
  bool read_args() {
    if (reader_.peek() != '{') return reader_.skip_value();
    reader_.advance();
    if (reader_.peek() == '}') {
      reader_.advance();
      return true;
    }
    for (;;) {
      if (!reader_.read_string(key_) || !reader_.consume(':', "after an object key")) return false;
      if (key_ == "name" && reader_.peek() == '"') {
        if (!reader_.read_string(args_name_)) return false;
        has_args_name_ = true;
      } else if (!reader_.skip_value()) {
        return false;
      }
      const JsonReader::Next next = reader_.next_item('}', "in \"args\"");
      if (next != JsonReader::Next::kMore) return next == JsonReader::Next::kEnd;
    }
  }

  // Reads a "ts"/"dur" value in microseconds into nanoseconds; a non-number leaves `present` false
  // (the event is then skipped and counted, as the format requires numbers).
  bool read_time(int64_t& out_ns, bool& present) {
    const int c = reader_.peek();
    if (c == '-' || (c >= '0' && c <= '9')) {
      present = true;
      return reader_.read_scaled_integer(3, out_ns);
    }
    present = false;
    return reader_.skip_value();
  }

  // Called at '{' of an event.
  bool parse_event() {
    const uint64_t event_offset = reader_.offset();
    reader_.advance();
    name_.clear();
    category_.clear();
    char phase = 0;
    int64_t ts_ns = 0;
    int64_t dur_ns = 0;
    bool has_ts = false;
    bool has_dur = false;
    int64_t pid = 0;
    int64_t tid = 0;
    has_args_name_ = false;
    if (reader_.peek() == '}') {
      reader_.advance();
    } else {
      for (;;) {
        if (!reader_.read_string(key_) || !reader_.consume(':', "after an event key")) return false;
        bool ok = true;
        // NOTE: dispatch on length first: most keys are rejected by one integer compare.
        switch (key_.size()) {
          case 2:
            if (key_ == "ph") {
              ok = reader_.read_string(scratch_);
              phase = scratch_.empty() ? 0 : scratch_[0];
            } else if (key_ == "ts") {
              ok = read_time(ts_ns, has_ts);
            } else {
              ok = reader_.skip_value();
            }
            break;
          case 3:
            if (key_ == "dur") {
              ok = read_time(dur_ns, has_dur);
            } else if (key_ == "cat") {
              ok = reader_.peek() == '"' ? reader_.read_string(category_) : reader_.skip_value();
            } else if (key_ == "pid") {
              ok = read_track_id(pid);
            } else if (key_ == "tid") {
              ok = read_track_id(tid);
            } else {
              ok = reader_.skip_value();
            }
            break;
          case 4:
            if (key_ == "name") {
              ok = reader_.peek() == '"' ? reader_.read_string(name_) : reader_.skip_value();
            } else if (key_ == "args") {
              ok = read_args();
            } else {
              ok = reader_.skip_value();
            }
            break;
          default: ok = reader_.skip_value(); break;
        }
        if (!ok) return false;
        const JsonReader::Next next = reader_.next_item('}', "in an event");
        if (next == JsonReader::Next::kError) return false;
        if (next == JsonReader::Next::kEnd) break;
      }
    }
    ++counts_.events;
    return handle_event(event_offset, phase, has_ts, ts_ns, has_dur, dur_ns, pid, tid);
  }

  bool handle_event(uint64_t event_offset, char phase, bool has_ts, int64_t ts_ns, bool has_dur, int64_t dur_ns,
                    int64_t pid, int64_t tid) {
    switch (phase) {
      case 'X': {
        if (!has_ts || !has_dur || dur_ns < 0) {
          ++counts_.skipped_events;
          return true;
        }
        uint32_t track = 0;
        if (!find_track(pid, tid, track)) return false;
        return add_interval(track, intern_name(), intern_category(), ts_ns, ts_ns + dur_ns);
      }
      case 'B': {
        if (!has_ts) {
          ++counts_.skipped_events;
          return true;
        }
        uint32_t track = 0;
        if (!find_track(pid, tid, track)) return false;
        TrackState& state = tracks_[track];
        if (state.open.size() >= options_.max_begin_depth) {
          return reader_.fail_at(event_offset, fmt::format("track pid={} tid={}: more than {} nested 'B' events "
                                                           "without their 'E' (unbalanced begin/end events?)",
                                                           id_label(pid), id_label(tid), options_.max_begin_depth));
        }
        state.open.push_back({ts_ns, intern_name(), intern_category()});
        return true;
      }
      case 'E': {
        if (!has_ts) {
          ++counts_.skipped_events;
          return true;
        }
        uint32_t track = 0;
        if (!find_track(pid, tid, track)) return false;
        TrackState& state = tracks_[track];
        if (state.open.empty()) {
          ++counts_.unmatched_end_events;
          return true;
        }
        const OpenBegin begin = state.open.back();
        state.open.pop_back();
        if (ts_ns < begin.start_ns) {
          ++counts_.skipped_events;
          return true;
        }
        return add_interval(track, begin.name, begin.category, begin.start_ns, ts_ns);
      }
      case 'i':
      case 'I':
      case 'n': ++counts_.instant_events; return true;
      case 'C': ++counts_.counter_events; return true;
      case 's':
      case 't':
      case 'f': ++counts_.flow_events; return true;
      case 'M': {
        ++counts_.metadata_events;
        if (!has_args_name_) return true;
        if (name_ == "process_name") {
          process_names_[pid] = args_name_;
        } else if (name_ == "thread_name") {
          thread_names_[{pid, tid}] = args_name_;
        }
        return true;
      }
      default: ++counts_.other_events; return true;
    }
  }

  std::string id_label(int64_t key) const {
    if (key >= kStringIdBase && key < kStringIdBase + static_cast<int64_t>(string_ids_.size())) {
      return string_ids_[static_cast<size_t>(key - kStringIdBase)];
    }
    return std::to_string(key);
  }

  bool find_track(int64_t pid, int64_t tid, uint32_t& out) {
    // NOTE: consecutive events are often on the same track; one compare skips the hash lookup.
    if (last_track_ != UINT32_MAX && tracks_[last_track_].pid_key == pid && tracks_[last_track_].tid_key == tid) {
      out = last_track_;
      return true;
    }
    auto found = track_index_.find({pid, tid});
    if (found == track_index_.end()) {
      if (tracks_.size() >= options_.max_tracks || tracks_.size() >= (size_t{1} << 30)) {
        store_status_ = resource_exhausted("more than {} distinct (pid, tid) tracks; raise max_tracks",
                                           options_.max_tracks);
        return reader_.fail("too many tracks");
      }
      auto process_found = process_index_.find(pid);
      if (process_found == process_index_.end()) {
        process_found = process_index_.emplace(pid, static_cast<uint32_t>(processes_.size())).first;
        processes_.push_back(ProcessState{pid, {}, 0, INT64_MAX, INT64_MIN});
      }
      const auto track = static_cast<uint32_t>(tracks_.size());
      TrackState state;
      state.pid_key = pid;
      state.tid_key = tid;
      state.process = process_found->second;
      tracks_.push_back(std::move(state));
      processes_[process_found->second].tracks.push_back(track);
      found = track_index_.emplace(std::make_pair(pid, tid), track).first;
    }
    last_track_ = found->second;
    out = found->second;
    return true;
  }

  uint32_t intern_category() {
    auto found = category_index_.find(std::string_view(category_));
    if (found != category_index_.end()) return found->second;
    const auto id = static_cast<uint32_t>(categories_.size());
    categories_.push_back({category_, classifier_.is_ignored_category(category_)});
    category_index_.emplace(category_, id);
    return id;
  }

  uint32_t intern_name() {
    auto found = name_index_.find(std::string_view(name_));
    if (found != name_index_.end()) return found->second;
    if (names_.size() >= options_.max_distinct_names) {
      // Bounded memory: further names share one bucket.
      counts_.names_truncated = true;
      if (other_names_ == kNoName) {
        other_names_ = static_cast<uint32_t>(names_.size());
        auto inserted = name_index_.emplace("(other names)", other_names_).first;
        names_.push_back({inserted->first, intern_category(), false, 0, 0, 0});
      }
      return other_names_;
    }
    const auto id = static_cast<uint32_t>(names_.size());
    auto inserted = name_index_.emplace(name_, id).first;
    // Classification runs once per distinct name: the regexes never see the hot path.
    names_.push_back({inserted->first, intern_category(), classifier_.is_comm_name(name_), 0, 0, 0});
    return id;
  }

  bool add_interval(uint32_t track, uint32_t name, uint32_t category, int64_t start_ns, int64_t end_ns) {
    FF_ASSERT_LE(start_ns, end_ns);
    NameEntry& entry = names_[name];
    const EventClass event_class = categories_[category].ignored ? EventClass::kOther
                                   : entry.is_comm                ? EventClass::kComm
                                                                  : EventClass::kCompute;
    TrackState& state = tracks_[track];
    Status status = store_.add(Interval{start_ns, end_ns, state.process, track << 2 | static_cast<uint32_t>(event_class)});
    if (!status.is_ok()) {
      store_status_ = status;
      return reader_.fail("{}", status.message());
    }
    ++counts_.interval_events;
    ++state.events;
    state.first_ns = std::min(state.first_ns, start_ns);
    state.last_ns = std::max(state.last_ns, end_ns);
    const int64_t duration_ns = end_ns - start_ns;
    ++entry.count;
    entry.total_ns += duration_ns;
    entry.max_ns = std::max(entry.max_ns, duration_ns);
    return true;
  }

  JsonReader& reader_;
  const AnalysisOptions& options_;
  const EventClassifier& classifier_;
  IntervalStore& store_;
  Status store_status_;
  std::chrono::steady_clock::time_point started_;
  uint64_t file_size_bytes_ = 0;
  uint64_t next_progress_bytes_ = 0;

  // Reused per event: their capacity grows to the longest value once, then nothing allocates.
  std::string key_;
  std::string name_;
  std::string category_;
  std::string scratch_;
  std::string args_name_;
  bool has_args_name_ = false;

  StringMap<uint32_t> name_index_;
  StringMap<uint32_t> category_index_;
  StringMap<int64_t> string_id_index_;
  std::unordered_map<std::pair<int64_t, int64_t>, uint32_t, PairHash> track_index_;
  std::unordered_map<int64_t, uint32_t> process_index_;
  uint32_t last_track_ = UINT32_MAX;
  uint32_t other_names_;
};

// A running union of intervals arriving in start order: the current segment grows while the next
// interval starts inside it, and is closed (its length added to total_ns) when one starts after it.
struct RunningUnion {
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  bool open = false;
  int64_t total_ns = 0;

  template <typename OnClose>
  void add(int64_t start, int64_t end, OnClose&& on_close) {
    if (open && start <= end_ns) {
      end_ns = std::max(end_ns, end);
      return;
    }
    close(on_close);
    start_ns = start;
    end_ns = end;
    open = true;
  }
  void add(int64_t start, int64_t end) {
    add(start, end, [](int64_t, int64_t) {});
  }
  template <typename OnClose>
  void close(OnClose&& on_close) {
    if (!open) return;
    total_ns += end_ns - start_ns;
    on_close(start_ns, end_ns);
    open = false;
  }
  void close() {
    close([](int64_t, int64_t) {});
  }
};

// Adds [start, end) to per-bucket totals.
void add_to_buckets(std::vector<float>& buckets, int64_t first_ns, int64_t bucket_ns, int64_t start, int64_t end) {
  if (buckets.empty() || end <= start) return;
  const int64_t last_bucket = static_cast<int64_t>(buckets.size()) - 1;
  int64_t bucket = std::clamp<int64_t>((start - first_ns) / bucket_ns, 0, last_bucket);
  // Bounded: at most buckets.size() iterations.
  for (; bucket <= last_bucket; ++bucket) {
    const int64_t bucket_start = first_ns + bucket * bucket_ns;
    const int64_t bucket_end = bucket == last_bucket ? INT64_MAX : bucket_start + bucket_ns;
    if (bucket_start >= end) break;
    const int64_t overlap = std::min(end, bucket_end) - std::max(start, bucket_start);
    if (overlap > 0) buckets[static_cast<size_t>(bucket)] += static_cast<float>(overlap);
  }
}

std::string temporary_directory(const AnalysisOptions& options) {
  if (!options.tmp_dir.empty()) return options.tmp_dir;
  const char* env = std::getenv("TMPDIR");
  return env != nullptr && env[0] != '\0' ? env : "/tmp";
}

// Numbers sort numerically before strings.
bool pid_before(int64_t a, int64_t b) {
  const bool a_string = a >= kStringIdBase && a < kStringIdBase + (int64_t{1} << 32);
  const bool b_string = b >= kStringIdBase && b < kStringIdBase + (int64_t{1} << 32);
  if (a_string != b_string) return b_string;
  return a < b;
}

}  // namespace

Result<TraceReport> analyze_trace_file(const std::string& path, const AnalysisOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  if (options.svg_buckets == 0 || options.svg_buckets > 100000) {
    return invalid_argument("svg_buckets={} must be in [1, 100000]", options.svg_buckets);
  }
  if (options.memory_limit_mb == 0) return invalid_argument("memory_limit_mb must be at least 1");
  if (options.max_merge_fan_in < 2) return invalid_argument("max_merge_fan_in must be at least 2");
  FF_ASSIGN_OR_RETURN(EventClassifier classifier,
                      EventClassifier::create(options.comm_patterns, options.ignore_categories));
  FF_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, ByteSource::open(path));

  // Half of the budget holds interval records; merge read buffers take at most as much again.
  const size_t max_buffered =
      options.max_buffered_intervals > 0
          ? options.max_buffered_intervals
          : std::max<size_t>(1024, options.memory_limit_mb * (size_t{1} << 20) / 2 / sizeof(Interval));
  IntervalStore store(max_buffered, options.max_merge_fan_in, temporary_directory(options));
  JsonReader reader(*source, path);
  TraceParser parser(reader, options, classifier, store);
  FF_RETURN_IF_ERROR(parser.parse(started, source->file_size_bytes()));

  TraceReport report = parser.counts_;
  report.source = path;
  report.bytes_read = reader.offset();
  report.distinct_names = parser.names_.size();
  for (const TrackState& track : parser.tracks_) report.unclosed_begin_events += track.open.size();
  if (report.interval_events == 0 && report.skipped_events > 0) {
    return invalid_argument("{}: no usable events: {} of {} events lack a numeric ts/dur or have a negative duration",
                            path, report.skipped_events, report.events);
  }

  std::vector<TrackState>& tracks = parser.tracks_;
  std::vector<ProcessState>& processes = parser.processes_;
  int64_t first_ns = INT64_MAX;
  int64_t last_ns = INT64_MIN;
  for (const TrackState& track : tracks) {
    if (track.events == 0) continue;
    first_ns = std::min(first_ns, track.first_ns);
    last_ns = std::max(last_ns, track.last_ns);
    ProcessState& process = processes[track.process];
    process.events += track.events;
    process.first_ns = std::min(process.first_ns, track.first_ns);
    process.last_ns = std::max(process.last_ns, track.last_ns);
  }
  if (report.interval_events > 0) {
    report.first_ns = first_ns;
    report.last_ns = last_ns;
    report.span_ns = last_ns - first_ns;
  }

  // Labels: pid/tid text and metadata names.
  auto label = [&](int64_t key) {
    if (key >= kStringIdBase && key < kStringIdBase + static_cast<int64_t>(parser.string_ids_.size())) {
      return parser.string_ids_[static_cast<size_t>(key - kStringIdBase)];
    }
    return std::to_string(key);
  };

  // Timeline rows: the tracks with most events, drawn in (pid, tid) order.
  internal::Timeline timeline;
  std::vector<int32_t> row_of_track(tracks.size(), -1);
  const bool want_svg = !options.svg_path.empty() && report.interval_events > 0;
  if (want_svg) {
    timeline.first_ns = first_ns;
    timeline.buckets = options.svg_buckets;
    timeline.bucket_ns = std::max<int64_t>(1, (report.span_ns + static_cast<int64_t>(options.svg_buckets) - 1) /
                                                  static_cast<int64_t>(options.svg_buckets));
    std::vector<uint32_t> candidates;
    for (uint32_t t = 0; t < tracks.size(); ++t) {
      if (tracks[t].events > 0) candidates.push_back(t);
    }
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](uint32_t a, uint32_t b) { return tracks[a].events > tracks[b].events; });
    if (candidates.size() > options.svg_max_rows) {
      timeline.omitted_rows = candidates.size() - options.svg_max_rows;
      candidates.resize(options.svg_max_rows);
    }
    std::sort(candidates.begin(), candidates.end(), [&](uint32_t a, uint32_t b) {
      if (tracks[a].pid_key != tracks[b].pid_key) return pid_before(tracks[a].pid_key, tracks[b].pid_key);
      return tracks[a].tid_key < tracks[b].tid_key;
    });
    for (uint32_t t : candidates) {
      const TrackState& track = tracks[t];
      std::string row_label;
      auto process_name = parser.process_names_.find(track.pid_key);
      auto thread_name = parser.thread_names_.find({track.pid_key, track.tid_key});
      row_label = process_name != parser.process_names_.end() ? process_name->second : "pid " + label(track.pid_key);
      row_label += " / ";
      row_label += thread_name != parser.thread_names_.end() ? thread_name->second : "tid " + label(track.tid_key);
      row_of_track[t] = static_cast<int32_t>(timeline.rows.size());
      timeline.rows.push_back({std::move(row_label), std::vector<float>(timeline.buckets, 0.0f),
                               std::vector<float>(timeline.buckets, 0.0f), std::vector<float>(timeline.buckets, 0.0f)});
    }
  }

  // The sweep: intervals arrive by (process, start).
  struct TrackUnions {
    RunningUnion busy;
    RunningUnion compute;
    RunningUnion comm;
  };
  struct ProcessUnions {
    RunningUnion busy;
    RunningUnion compute;
    RunningUnion comm;
    RunningUnion comm_or_compute;
  };
  std::vector<TrackUnions> track_unions(tracks.size());
  std::vector<ProcessUnions> process_unions(processes.size());
  uint32_t current_process = UINT32_MAX;
  auto finish_process = [&](uint32_t process) {
    ProcessUnions& unions = process_unions[process];
    unions.busy.close();
    unions.compute.close();
    unions.comm.close();
    unions.comm_or_compute.close();
    for (uint32_t t : processes[process].tracks) {
      TrackUnions& track = track_unions[t];
      const int32_t row = row_of_track[t];
      track.busy.close([&](int64_t start, int64_t end) {
        if (row >= 0) add_to_buckets(timeline.rows[row].busy_ns, timeline.first_ns, timeline.bucket_ns, start, end);
      });
      track.compute.close([&](int64_t start, int64_t end) {
        if (row >= 0) add_to_buckets(timeline.rows[row].compute_ns, timeline.first_ns, timeline.bucket_ns, start, end);
      });
      track.comm.close([&](int64_t start, int64_t end) {
        if (row >= 0) add_to_buckets(timeline.rows[row].comm_ns, timeline.first_ns, timeline.bucket_ns, start, end);
      });
    }
  };
  uint64_t visited = 0;
  int64_t previous_start_ns = INT64_MIN;
  FF_RETURN_IF_ERROR(store.for_each_sorted([&](const Interval& interval) {
    ++visited;
    if (interval.process != current_process) {
      if (current_process != UINT32_MAX) {
        FF_ASSERT_LT(current_process, interval.process, "intervals must arrive grouped by process");
        finish_process(current_process);
      }
      current_process = interval.process;
      previous_start_ns = INT64_MIN;
    }
    FF_ASSERT_LE(previous_start_ns, interval.start_ns, "intervals must arrive in start order");
    previous_start_ns = interval.start_ns;
    const uint32_t t = interval.track();
    const int32_t row = row_of_track[t];
    TrackUnions& track = track_unions[t];
    ProcessUnions& process = process_unions[interval.process];
    track.busy.add(interval.start_ns, interval.end_ns, [&](int64_t start, int64_t end) {
      if (row >= 0) add_to_buckets(timeline.rows[row].busy_ns, timeline.first_ns, timeline.bucket_ns, start, end);
    });
    process.busy.add(interval.start_ns, interval.end_ns);
    switch (interval.event_class()) {
      case EventClass::kCompute:
        track.compute.add(interval.start_ns, interval.end_ns, [&](int64_t start, int64_t end) {
          if (row >= 0) add_to_buckets(timeline.rows[row].compute_ns, timeline.first_ns, timeline.bucket_ns, start, end);
        });
        process.compute.add(interval.start_ns, interval.end_ns);
        process.comm_or_compute.add(interval.start_ns, interval.end_ns);
        break;
      case EventClass::kComm:
        track.comm.add(interval.start_ns, interval.end_ns, [&](int64_t start, int64_t end) {
          if (row >= 0) add_to_buckets(timeline.rows[row].comm_ns, timeline.first_ns, timeline.bucket_ns, start, end);
        });
        process.comm.add(interval.start_ns, interval.end_ns);
        process.comm_or_compute.add(interval.start_ns, interval.end_ns);
        break;
      case EventClass::kOther: break;
    }
  }));
  if (current_process != UINT32_MAX) finish_process(current_process);
  FF_ASSERT_EQ(visited, report.interval_events, "every stored interval must be swept exactly once");
  report.spilled_runs = store.runs_written();
  report.spilled_bytes = store.bytes_written();

  // Assemble the report.
  for (uint32_t p = 0; p < processes.size(); ++p) {
    const ProcessState& state = processes[p];
    if (state.events == 0) continue;
    const ProcessUnions& unions = process_unions[p];
    ProcessReport process;
    process.pid = label(state.pid_key);
    auto name = parser.process_names_.find(state.pid_key);
    if (name != parser.process_names_.end()) process.name = name->second;
    for (uint32_t t : state.tracks) process.tracks += tracks[t].events > 0 ? 1 : 0;
    process.events = state.events;
    process.first_ns = state.first_ns;
    process.last_ns = state.last_ns;
    process.busy_ns = unions.busy.total_ns;
    process.compute_ns = unions.compute.total_ns;
    process.comm_ns = unions.comm.total_ns;
    process.hidden_comm_ns = unions.compute.total_ns + unions.comm.total_ns - unions.comm_or_compute.total_ns;
    FF_ASSERT(process.hidden_comm_ns >= 0 && process.hidden_comm_ns <= process.comm_ns);
    process.hidden_fraction =
        process.comm_ns > 0 ? static_cast<double>(process.hidden_comm_ns) / static_cast<double>(process.comm_ns) : 0;
    const int64_t span_ns = state.last_ns - state.first_ns;
    process.utilisation = span_ns > 0 ? static_cast<double>(process.busy_ns) / static_cast<double>(span_ns) : 0;
    report.compute_ns += process.compute_ns;
    report.comm_ns += process.comm_ns;
    report.hidden_comm_ns += process.hidden_comm_ns;
    report.processes.push_back(std::move(process));
  }
  report.hidden_fraction =
      report.comm_ns > 0 ? static_cast<double>(report.hidden_comm_ns) / static_cast<double>(report.comm_ns) : 0;

  std::vector<uint32_t> track_order;
  for (uint32_t t = 0; t < tracks.size(); ++t) {
    if (tracks[t].events > 0) track_order.push_back(t);
  }
  std::sort(track_order.begin(), track_order.end(), [&](uint32_t a, uint32_t b) {
    if (tracks[a].pid_key != tracks[b].pid_key) return pid_before(tracks[a].pid_key, tracks[b].pid_key);
    return pid_before(tracks[a].tid_key, tracks[b].tid_key);
  });
  for (uint32_t t : track_order) {
    const TrackState& state = tracks[t];
    TrackReport track;
    track.pid = label(state.pid_key);
    track.tid = label(state.tid_key);
    auto process_name = parser.process_names_.find(state.pid_key);
    if (process_name != parser.process_names_.end()) track.process_name = process_name->second;
    auto thread_name = parser.thread_names_.find({state.pid_key, state.tid_key});
    if (thread_name != parser.thread_names_.end()) track.thread_name = thread_name->second;
    track.events = state.events;
    track.first_ns = state.first_ns;
    track.last_ns = state.last_ns;
    track.busy_ns = track_unions[t].busy.total_ns;
    track.compute_ns = track_unions[t].compute.total_ns;
    track.comm_ns = track_unions[t].comm.total_ns;
    const int64_t span_ns = state.last_ns - state.first_ns;
    track.utilisation = span_ns > 0 ? static_cast<double>(track.busy_ns) / static_cast<double>(span_ns) : 0;
    report.busy_ns += track.busy_ns;
    report.tracks.push_back(std::move(track));
  }
  // Processes in the same order as tracks.
  std::sort(report.processes.begin(), report.processes.end(), [](const ProcessReport& a, const ProcessReport& b) {
    int64_t a_number = 0;
    int64_t b_number = 0;
    const bool a_is_number = internal::scaled_integer_from_token(a.pid, 0, a_number);
    const bool b_is_number = internal::scaled_integer_from_token(b.pid, 0, b_number);
    if (a_is_number != b_is_number) return a_is_number;
    return a_is_number ? a_number < b_number : a.pid < b.pid;
  });

  // Top names by total time: a partial sort over the (bounded) name table.
  std::vector<uint32_t> name_order;
  for (uint32_t n = 0; n < parser.names_.size(); ++n) {
    if (parser.names_[n].count > 0) name_order.push_back(n);
  }
  const size_t top = std::min(options.top_n, name_order.size());
  std::partial_sort(name_order.begin(), name_order.begin() + static_cast<std::ptrdiff_t>(top), name_order.end(),
                    [&](uint32_t a, uint32_t b) {
                      if (parser.names_[a].total_ns != parser.names_[b].total_ns) {
                        return parser.names_[a].total_ns > parser.names_[b].total_ns;
                      }
                      return parser.names_[a].name < parser.names_[b].name;
                    });
  for (size_t i = 0; i < top; ++i) {
    const NameEntry& entry = parser.names_[name_order[i]];
    NameReport name;
    name.name = std::string(entry.name);
    name.category = parser.categories_[entry.category].name;
    name.event_class = parser.categories_[entry.category].ignored ? EventClass::kOther
                       : entry.is_comm                              ? EventClass::kComm
                                                                    : EventClass::kCompute;
    name.count = entry.count;
    name.total_ns = entry.total_ns;
    name.max_ns = entry.max_ns;
    name.mean_ns = static_cast<double>(entry.total_ns) / static_cast<double>(entry.count);
    name.percent_of_busy =
        report.busy_ns > 0 ? 100.0 * static_cast<double>(entry.total_ns) / static_cast<double>(report.busy_ns) : 0;
    report.top.push_back(std::move(name));
  }

  report.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (options.progress) {
    AnalysisProgress progress;
    progress.file_bytes_read = source->file_bytes_consumed();
    progress.file_size_bytes = source->file_size_bytes();
    progress.elapsed_s = report.elapsed_s;
    options.progress(progress);
  }
  if (!options.svg_path.empty()) {
    FF_RETURN_IF_ERROR(internal::write_timeline_svg(options.svg_path, timeline, report));
    report.svg_path = options.svg_path;
  }
  return report;
}

}  // namespace ff::trace
