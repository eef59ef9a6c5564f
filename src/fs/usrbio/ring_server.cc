// RingServer: serves one Ior over a BatchIo (usrbio.h; layout and doorbell protocol in ring_layout.h).
//
// Threading: one ring thread per ring takes entries, validates them and opens files (it owns `files`
// and `sq_head`); the I/O of a batch runs on the ring thread or, up to max_batches_in_flight at once, on
// the ring's pool threads; completions are published under `publish_mutex` (cq_tail, in_flight_entries).
// A batch with a close runs on the ring thread after every earlier batch finished.
//
// The shared memory is untrusted input: entries are copied out before they are validated, indices are
// checked against the capacity copied at attach, and the Iov's size is checked before every batch.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ring_layout.h"

namespace ff::fs::usrbio {

using internal::RingHeader;
using State = ServerStatus::State;

namespace {

struct OpenHandles {
  std::optional<FileHandle> read;
  std::optional<FileHandle> write;
};

constexpr const char* kFaultDuringBatch =
    "its Iov or ring file shrank during a batch (an access faulted; the SIGBUS guard caught it)";

// The -errno an entry completes with for a BatchIo error.
int64_t negative_errno(const Status& status) { return -static_cast<int64_t>(meta::errno_of(status)); }

}  // namespace

struct RingServer::Impl {
  std::string name;
  BatchIo* io = nullptr;
  RingServerOptions options;
  internal::Mapping ring;
  internal::Mapping iov;
  std::string ring_path, iov_path;
  dev_t ring_device = 0, iov_device = 0;  // the files mapped at start (remove_files_of_gone_owner)
  ino_t ring_inode = 0, iov_inode = 0;
  int ring_guard = -1, iov_guard = -1;  // internal::fault_guard_add slots of the two mappings
  RingHeader* header = nullptr;
  const SubmitEntry* sq = nullptr;
  Completion* cq = nullptr;
  uint32_t entries = 0;
  uint32_t mask = 0;
  uint64_t iov_size = 0;
  uint64_t owner_start_time = 0;
  int32_t io_depth = 0;       // the ring's batching (IorOptions::io_depth), copied at attach
  int64_t io_timeout_ns = 0;  // with io_depth > 0: 0 = wait for a full batch however long

  // Ring thread only.
  uint32_t sq_head = 0;
  uint32_t tail_seen = 0;         // sq_tail as take() last read it
  int64_t first_waiting_ns = 0;   // io_depth > 0: when take() first held back the entries now waiting
  int64_t hold_remaining_ns = 0;  // io_depth > 0: how long take() will still hold them back (0: no limit)
  std::unordered_map<meta::InodeId, OpenHandles> files;

  // One batch: the entries taken at one wake-up (copied out of shared memory) and what they became.
  struct Batch {
    std::vector<SubmitEntry> entries;
    std::vector<Completion> completions;
    std::vector<BatchIo::ReadOp> reads;
    std::vector<BatchIo::WriteOp> writes;
    std::vector<size_t> read_index, write_index, close_index;
    std::vector<meta::InodeId> write_inodes;  // per write
  };
  using BatchPtr = std::shared_ptr<Batch>;

  // Publishing (any thread running a batch).
  std::mutex publish_mutex;
  uint32_t cq_tail = 0;            // guarded by publish_mutex
  uint32_t in_flight_entries = 0;  // taken, not yet published; guarded by publish_mutex

  // The pool: batches whose I/O runs off the ring thread.
  std::mutex pool_mutex;
  std::condition_variable pool_work, pool_done;
  std::deque<BatchPtr> queue;      // guarded by pool_mutex
  uint32_t batches_in_flight = 0;  // queued or running on the pool; guarded by pool_mutex
  bool pool_stop = false;          // guarded by pool_mutex
  std::vector<std::thread> pool;
  std::atomic<bool> fault_in_batch{false};  // a pooled batch saw a guarded fault

  std::thread thread;
  std::atomic<bool> stop_requested{false};
  std::atomic<bool> running{false};
  std::atomic<bool> owner_gone{false};

  struct AtomicStats {
    std::atomic<uint64_t> wakeups{0}, batches{0}, entries{0}, errors{0}, bytes_read{0}, bytes_written{0},
        max_batch_entries{0};
  } stats;

  ~Impl() {  // before the mappings (members) are unmapped
    internal::fault_guard_remove(ring_guard);
    internal::fault_guard_remove(iov_guard);
  }
  // Accesses to a shrunk ring or Iov file that the SIGBUS guard caught so far.
  uint32_t guarded_faults() const {
    return internal::fault_guard_faults(ring_guard) + internal::fault_guard_faults(iov_guard);
  }
  void run();
  void beat() { header->server_heartbeat_ns.store(internal::monotonic_ns(), std::memory_order_release); }
  bool owner_alive() const;
  // Takes up to what the completion ring can hold (counting entries of batches still running), in batches
  // as the ring's io_depth asks, into batch.entries; returns false when the ring is corrupt.
  bool take(Batch& batch, uint32_t& taken);
  // Ring thread: validates the entries and opens their files; the batch's reads and writes are then ready.
  void prepare(Batch& batch);
  // Any thread: the batch's reads as one read_batch and writes as one write_batch.
  void run_io(Batch& batch);
  // Ring thread, with no other batch running: the batch's closes.
  void run_closes(Batch& batch);
  void publish(Batch& batch);
  // The I/O of a batch on a pool thread, then its completions (run by the pool threads).
  void pool_loop();
  void wait_for_pool(uint32_t at_most);  // until at most this many batches run on the pool
  void mark_broken(const std::string& why);
  void close_all();
  // The handle for (inode, write), opening it on first use; -errno on failure.
  Result<FileHandle> handle_for(meta::InodeId inode, bool write, int64_t& error);
};

bool RingServer::Impl::owner_alive() const {
  if (options.owner_pid <= 0) return true;
  const uint64_t start = internal::process_start_time(options.owner_pid);
  return start != 0 && start == owner_start_time;
}

void RingServer::Impl::mark_broken(const std::string& why) {
  FF_LOG_ERROR("usrbio ring '{}' is broken and no longer served: {}", name, why);
  header->server_state.store(static_cast<uint32_t>(State::kBroken), std::memory_order_release);
  header->cq_seq.fetch_add(1, std::memory_order_seq_cst);
  internal::futex_wake(header->cq_seq, INT_MAX);
}

bool RingServer::Impl::take(Batch& batch, uint32_t& taken) {
  taken = 0;
  hold_remaining_ns = 0;
  const uint32_t tail = header->sq_tail.load(std::memory_order_acquire);
  tail_seen = tail;
  const uint32_t pending = tail - sq_head;
  if (pending > entries) {
    mark_broken(
        fmt::format("sq_tail {} is {} entries past sq_head {} in a ring of {}", tail, pending, sq_head, entries));
    return false;
  }
  uint32_t used = 0, running = 0;
  {
    std::lock_guard lock(publish_mutex);
    used = cq_tail - header->cq_head.load(std::memory_order_acquire);
    running = in_flight_entries;
    if (used > entries) {
      mark_broken(fmt::format("cq_head is {} entries behind cq_tail {} in a ring of {}", used, cq_tail, entries));
      return false;
    }
  }
  const uint32_t room = used + running >= entries ? 0 : entries - used - running;
  uint32_t count = std::min(pending, room);
  if (io_depth < 0) count = std::min(count, static_cast<uint32_t>(-int64_t{io_depth}));
  if (io_depth > 0) {
    const auto depth = static_cast<uint32_t>(io_depth);
    if (pending == 0) {
      first_waiting_ns = 0;
    } else if (pending >= depth && room >= depth) {
      count = depth;  // a full batch; the rest waits for its own
      first_waiting_ns = pending > depth ? internal::monotonic_ns() : 0;
    } else {
      // A partial batch (or no room for a full one): hold it back until it fills or, with a timeout, until
      // its first entry has waited that long.
      const int64_t now = internal::monotonic_ns();
      if (first_waiting_ns == 0) first_waiting_ns = now;
      if (io_timeout_ns > 0 && now - first_waiting_ns >= io_timeout_ns) {
        first_waiting_ns = 0;  // taken below: count = what there is room for
      } else {
        count = 0;
        hold_remaining_ns = io_timeout_ns > 0 ? io_timeout_ns - (now - first_waiting_ns) : 0;
      }
    }
  }
  if (options.max_batch != 0) count = std::min(count, options.max_batch);
  batch.entries.resize(count);
  // Copy out first: the client may scribble on its slots; we validate only our copy.
  for (uint32_t i = 0; i < count; ++i) batch.entries[i] = sq[(sq_head + i) & mask];
  sq_head += count;
  if (count > 0) {
    std::lock_guard lock(publish_mutex);
    in_flight_entries += count;
  }
  header->sq_head.store(sq_head, std::memory_order_release);
  taken = count;
  return true;
}

Result<FileHandle> RingServer::Impl::handle_for(meta::InodeId inode, bool write, int64_t& error) {
  auto found = files.find(inode);
  if (found != files.end()) {
    auto& slot = write ? found->second.write : found->second.read;
    if (slot) return *slot;
  } else if (files.size() >= options.max_open_files) {
    error = -EMFILE;
    return resource_exhausted("ring '{}' has {} files open (max_open_files)", name, files.size());
  }
  auto opened = io->open(options.caller, inode, write ? meta::kOpenWrite : meta::kOpenRead);
  if (!opened.is_ok()) {
    const int code = meta::errno_of(opened.status());
    // An inode that does not exist is a bad file id from the client's point of view.
    error = code == ENOENT ? -EBADF : -static_cast<int64_t>(code);
    return opened.status();
  }
  auto& handles = files[inode];
  (write ? handles.write : handles.read) = *opened;
  return *opened;
}

void RingServer::Impl::prepare(Batch& b) {
  const size_t count = b.entries.size();
  b.completions.assign(count, Completion{});
  b.reads.clear();
  b.writes.clear();
  b.read_index.clear();
  b.write_index.clear();
  b.close_index.clear();
  b.write_inodes.clear();
  std::vector<SubmitEntry>& batch = b.entries;
  std::vector<Completion>& completions = b.completions;
  // The Iov must still be as large as at attach: a client that shrank it would make us fault.
  struct stat info {};
  const bool iov_intact = ::stat(iov_path.c_str(), &info) == 0 && static_cast<uint64_t>(info.st_size) >= iov_size;
  std::unordered_map<meta::InodeId, int64_t> failed_opens;  // per batch: one open attempt per bad file
  for (size_t i = 0; i < count; ++i) {
    const SubmitEntry& entry = batch[i];
    Completion& done = completions[i];
    done.user_data = entry.user_data;
    const auto op = static_cast<Op>(entry.op);
    if (op != Op::kRead && op != Op::kWrite && op != Op::kClose) {
      done.result = -EINVAL;
      continue;
    }
    if (entry.file == 0) {
      done.result = -EBADF;
      continue;
    }
    if (op != Op::kClose) {
      if (entry.length > internal::kMaxIoBytes || entry.iov_offset > iov_size ||
          entry.length > iov_size - entry.iov_offset) {
        done.result = -EINVAL;
        continue;
      }
      if (!iov_intact) {
        done.result = -EFAULT;
        continue;
      }
      if (entry.length == 0) continue;  // result 0
    }
    meta::InodeId inode = entry.file;
    if (options.map_file) {
      auto mapped = options.map_file(entry.file);
      if (!mapped.is_ok()) {
        done.result = -EBADF;
        continue;
      }
      inode = *mapped;
    }
    if (op == Op::kClose) {
      b.close_index.push_back(i);
      batch[i].file = inode;
      continue;
    }
    const bool write = op == Op::kWrite;
    if (auto bad = failed_opens.find(inode * 2 + (write ? 1 : 0)); bad != failed_opens.end()) {
      done.result = bad->second;
      continue;
    }
    int64_t error = 0;
    auto handle = handle_for(inode, write, error);
    if (!handle.is_ok()) {
      failed_opens[inode * 2 + (write ? 1 : 0)] = error;
      done.result = error;
      continue;
    }
    std::byte* data = iov.data() + entry.iov_offset;
    if (write) {
      b.writes.push_back(
          {.handle = *handle, .offset = entry.offset, .data = std::span<const std::byte>(data, entry.length)});
      b.write_index.push_back(i);
      b.write_inodes.push_back(inode);
    } else {
      b.reads.push_back({.handle = *handle, .offset = entry.offset, .out = std::span<std::byte>(data, entry.length)});
      b.read_index.push_back(i);
    }
  }
}

void RingServer::Impl::run_io(Batch& b) {
  const std::vector<BatchIo::ReadOp>& reads = b.reads;
  const std::vector<BatchIo::WriteOp>& writes = b.writes;
  std::vector<Completion>& completions = b.completions;
  // NOTE: all reads of the batch in ONE read_batch, all writes in ONE write_batch: the client library
  // runs their chunk I/Os in parallel, and reads land straight in the Iov (no copy here).
  if (!reads.empty()) {
    auto results = io->read_batch(reads);
    FF_ASSERT_EQ(results.size(), reads.size());
    stats.batches.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < results.size(); ++k) {
      Completion& done = completions[b.read_index[k]];
      if (results[k].is_ok()) {
        done.result = static_cast<int64_t>(*results[k]);
        stats.bytes_read.fetch_add(*results[k], std::memory_order_relaxed);
      } else {
        done.result = negative_errno(results[k].status());
      }
    }
  }
  if (!writes.empty()) {
    auto results = io->write_batch(writes);
    FF_ASSERT_EQ(results.size(), writes.size());
    stats.batches.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < results.size(); ++k) {
      Completion& done = completions[b.write_index[k]];
      if (results[k].is_ok()) {
        done.result = static_cast<int64_t>(*results[k]);
        stats.bytes_written.fetch_add(*results[k], std::memory_order_relaxed);
        if (options.on_written && *results[k] > 0) options.on_written(b.write_inodes[k], writes[k].offset, *results[k]);
      } else {
        done.result = negative_errno(results[k].status());
      }
    }
  }
}

void RingServer::Impl::run_closes(Batch& b) {
  // Closes run after the batch's I/O (and every earlier batch's), so a close submitted with reads of the
  // same file follows them.
  for (size_t i : b.close_index) {
    auto found = files.find(b.entries[i].file);
    if (found == files.end()) {
      b.completions[i].result = -EBADF;
      continue;
    }
    int64_t result = 0;
    for (auto& slot : {found->second.read, found->second.write}) {
      if (!slot) continue;
      Status closed = io->close(*slot);
      if (!closed.is_ok() && result == 0) result = negative_errno(closed);
    }
    files.erase(found);
    b.completions[i].result = result;
  }
}

void RingServer::Impl::publish(Batch& b) {
  const std::vector<Completion>& completions = b.completions;
  uint64_t errors = 0;
  for (const Completion& done : completions) errors += done.result < 0 ? 1 : 0;
  stats.errors.fetch_add(errors, std::memory_order_relaxed);
  std::lock_guard lock(publish_mutex);
  for (size_t i = 0; i < completions.size(); ++i) cq[(cq_tail + i) & mask] = completions[i];
  cq_tail += static_cast<uint32_t>(completions.size());
  in_flight_entries -= static_cast<uint32_t>(completions.size());
  // Counted before publishing, so a client that saw its completions sees them in stats() too.
  stats.entries.fetch_add(completions.size(), std::memory_order_relaxed);
  header->cq_tail.store(cq_tail, std::memory_order_release);
  header->cq_seq.fetch_add(1, std::memory_order_seq_cst);
  if (header->client_waiting.load(std::memory_order_seq_cst) != 0) internal::futex_wake(header->cq_seq, INT_MAX);
}

// A guarded fault during a batch: what its I/O copied is not the client's data. Fails its I/O entries.
static void fail_io_entries(std::vector<SubmitEntry>& entries, std::vector<Completion>& completions) {
  for (size_t i = 0; i < completions.size(); ++i) {
    const auto op = static_cast<Op>(entries[i].op);
    if (op == Op::kRead || op == Op::kWrite) completions[i].result = -EFAULT;
  }
}

void RingServer::Impl::pool_loop() {
  for (;;) {
    BatchPtr batch;
    {
      std::unique_lock lock(pool_mutex);
      pool_work.wait(lock, [this] { return pool_stop || !queue.empty(); });
      if (queue.empty()) return;  // stopping, nothing left
      batch = std::move(queue.front());
      queue.pop_front();
    }
    run_io(*batch);
    if (guarded_faults() != 0) {
      fail_io_entries(batch->entries, batch->completions);
      fault_in_batch.store(true, std::memory_order_release);
    }
    publish(*batch);
    {
      std::lock_guard lock(pool_mutex);
      --batches_in_flight;
    }
    pool_done.notify_all();
  }
}

void RingServer::Impl::wait_for_pool(uint32_t at_most) {
  std::unique_lock lock(pool_mutex);
  const auto beat_every = std::chrono::milliseconds(std::max<int64_t>(options.heartbeat_interval_ms, 1));
  // NOTE: each pooled batch is bounded by the BatchIo's own timeouts; beating while waiting keeps the
  // client's view of this server alive meanwhile.
  while (batches_in_flight > at_most) {
    if (!pool_done.wait_for(lock, beat_every, [&] { return batches_in_flight <= at_most; })) beat();
  }
}

void RingServer::Impl::close_all() {
  for (auto& [inode, handles] : files) {
    for (auto& slot : {handles.read, handles.write}) {
      if (!slot) continue;
      Status closed = io->close(*slot);
      if (!closed.is_ok()) FF_LOG_WARN("usrbio ring '{}': closing inode {}: {}", name, inode, closed.to_string());
    }
  }
  files.clear();
}

void RingServer::Impl::run() {
  const int64_t heartbeat_ns = std::max<int64_t>(options.heartbeat_interval_ms, 1) * 1'000'000;
  int64_t last_owner_check_ns = internal::monotonic_ns();
  State final_state = State::kDetached;
  // Reused while batches run on this thread (its vectors keep their capacity); replaced after one is handed
  // to the pool.
  BatchPtr batch;
  if (options.max_batches_in_flight > 1) {
    for (uint32_t i = 0; i < options.max_batches_in_flight; ++i) pool.emplace_back([this] { pool_loop(); });
  }
  while (!stop_requested.load(std::memory_order_acquire)) {
    if (fault_in_batch.load(std::memory_order_acquire)) {
      mark_broken(kFaultDuringBatch);
      final_state = State::kBroken;
      break;
    }
    if (guarded_faults() != 0) {
      mark_broken("its ring file shrank while served (an access faulted; the SIGBUS guard caught it)");
      final_state = State::kBroken;
      break;
    }
    beat();
    const int64_t now = internal::monotonic_ns();
    if (now - last_owner_check_ns >= 1'000'000'000) {
      last_owner_check_ns = now;
      if (!owner_alive()) {
        FF_LOG_INFO("usrbio ring '{}': owner pid {} is gone; stopping", name, options.owner_pid);
        owner_gone.store(true, std::memory_order_release);
        break;
      }
    }
    const uint32_t doorbell = header->sq_doorbell.load(std::memory_order_seq_cst);
    uint32_t taken = 0;
    if (!batch) batch = std::make_shared<Batch>();
    if (!take(*batch, taken)) {
      final_state = State::kBroken;
      break;
    }
    if (taken == 0) {
      header->server_waiting.store(1, std::memory_order_seq_cst);
      // Look once more after raising the flag: a submit that saw the flag down did not wake us. (With
      // io_depth > 0 entries may be waiting for their batch to fill: sleep until more come, their timeout,
      // or the heartbeat.)
      if (header->sq_tail.load(std::memory_order_seq_cst) == tail_seen) {
        const int64_t sleep_ns = hold_remaining_ns > 0 ? std::min(hold_remaining_ns, heartbeat_ns) : heartbeat_ns;
        internal::futex_wait(header->sq_doorbell, doorbell, sleep_ns);
      }
      header->server_waiting.store(0, std::memory_order_relaxed);
      continue;
    }
    stats.wakeups.fetch_add(1, std::memory_order_relaxed);
    uint64_t largest = stats.max_batch_entries.load(std::memory_order_relaxed);
    if (taken > largest) stats.max_batch_entries.store(taken, std::memory_order_relaxed);
    prepare(*batch);
    // A batch goes to the pool when there is more to take or other batches are running; alone (nothing
    // else pending, the pool idle) it runs here, which saves a thread hand-off on the latency path (one
    // entry per doorbell: ~60 us round trip through the pool on the 2-core VM, a few us here).
    const bool more_pending = header->sq_tail.load(std::memory_order_acquire) != sq_head;
    bool pool_busy = false;
    if (!pool.empty()) {
      std::lock_guard lock(pool_mutex);
      pool_busy = batches_in_flight > 0;
    }
    if (!pool.empty() && batch->close_index.empty() && (more_pending || pool_busy)) {
      // Its I/O runs on the pool while this thread takes the next batch.
      wait_for_pool(static_cast<uint32_t>(pool.size()) - 1);
      {
        std::lock_guard lock(pool_mutex);
        ++batches_in_flight;
        queue.push_back(std::move(batch));
      }
      pool_work.notify_one();
      continue;
    }
    wait_for_pool(0);  // a close follows every earlier entry of its file
    run_io(*batch);
    if (guarded_faults() != 0) {
      // The client shrank a file under the batch: what the batch copied is not the client's data, and
      // this mapping no longer shows the client's pages. Fail its I/O entries and stop serving.
      fail_io_entries(batch->entries, batch->completions);
      publish(*batch);
      mark_broken(kFaultDuringBatch);
      final_state = State::kBroken;
      break;
    }
    run_closes(*batch);
    publish(*batch);
  }
  // Batches still on the pool finish and publish (their files stay open until then).
  wait_for_pool(0);
  {
    std::lock_guard lock(pool_mutex);
    pool_stop = true;
  }
  pool_work.notify_all();
  for (std::thread& thread : pool) thread.join();
  pool.clear();
  if (final_state != State::kBroken && fault_in_batch.load(std::memory_order_acquire)) {
    mark_broken(kFaultDuringBatch);
    final_state = State::kBroken;
  }
  close_all();
  if (final_state != State::kBroken) {
    header->server_state.store(static_cast<uint32_t>(final_state), std::memory_order_release);
    header->cq_seq.fetch_add(1, std::memory_order_seq_cst);
    internal::futex_wake(header->cq_seq, INT_MAX);
  }
  running.store(false, std::memory_order_release);
}

Result<std::unique_ptr<RingServer>> RingServer::start(std::string_view ior_name, BatchIo& io,
                                                      RingServerOptions options) {
  if (Status valid = validate_name(ior_name); !valid.is_ok()) return meta::meta_error(EINVAL, valid.message());
  auto impl = std::make_unique<Impl>();
  impl->name = std::string(ior_name);
  impl->io = &io;
  const std::string ring_path = internal::ior_path(ior_name);
  struct stat ring_info {};
  auto ring = internal::Mapping::open(ring_path, &ring_info);
  if (!ring.is_ok()) {
    const StatusCode code = ring.status().code();
    const int error = code == StatusCode::kNotFound ? ENOENT : code == StatusCode::kPermissionDenied ? EACCES : EINVAL;
    return meta::meta_error(error, "usrbio ring '" + impl->name + "': " + ring.status().message());
  }
  impl->ring = std::move(*ring);
  impl->ring_guard = internal::fault_guard_add(impl->ring.data(), impl->ring.bytes());
  impl->ring_path = ring_path;
  impl->ring_device = ring_info.st_dev;
  impl->ring_inode = ring_info.st_ino;
  const uint32_t caller_uid = options.caller.uid;
  if (caller_uid != 0 && ring_info.st_uid != caller_uid) {
    return meta::meta_error(EACCES, fmt::format("usrbio ring '{}': {} belongs to uid {}, not to the caller (uid {})",
                                                impl->name, ring_path, ring_info.st_uid, caller_uid));
  }
  if (impl->ring.bytes() < internal::kHeaderBytes) {
    return meta::meta_error(EINVAL, fmt::format("usrbio ring '{}': {} has {} bytes, less than a ring header",
                                                impl->name, ring_path, impl->ring.bytes()));
  }
  auto* header = reinterpret_cast<RingHeader*>(impl->ring.data());
  if (header->magic.load(std::memory_order_acquire) != internal::kMagic || header->version != internal::kVersion) {
    return meta::meta_error(EINVAL, fmt::format("usrbio ring '{}': {} is not a usrbio ring of version {}", impl->name,
                                                ring_path, internal::kVersion));
  }
  const uint32_t entries = header->entries;
  if (entries < 2 || entries > kMaxEntries || (entries & (entries - 1)) != 0 ||
      header->sq_offset != internal::sq_offset() || header->cq_offset != internal::cq_offset(entries) ||
      internal::ring_bytes(entries) > impl->ring.bytes()) {
    return meta::meta_error(EINVAL, fmt::format("usrbio ring '{}': inconsistent layout (entries {}, {} bytes)",
                                                impl->name, entries, impl->ring.bytes()));
  }
  if (!internal::batching_fits(header->io_depth, header->io_timeout_ms, entries)) {
    return meta::meta_error(EINVAL, fmt::format("usrbio ring '{}': io_depth {} / io_timeout_ms {} do not fit a ring "
                                                "of {} entries",
                                                impl->name, header->io_depth, header->io_timeout_ms, entries));
  }
  impl->io_depth = header->io_depth;
  impl->io_timeout_ns = int64_t{header->io_timeout_ms} * 1'000'000;
  const std::string iov_name(header->iov_name, strnlen(header->iov_name, internal::kMaxIovNameBytes));
  if (Status valid = validate_name(iov_name); !valid.is_ok()) {
    return meta::meta_error(EINVAL, "usrbio ring '" + impl->name + "': its Iov: " + valid.message());
  }
  impl->iov_path = internal::iov_path(iov_name);
  struct stat iov_info {};
  auto iov = internal::Mapping::open(impl->iov_path, &iov_info);
  if (!iov.is_ok()) {
    const int error = iov.status().code() == StatusCode::kNotFound ? ENOENT : EINVAL;
    return meta::meta_error(error, "usrbio ring '" + impl->name + "': " + iov.status().message());
  }
  if (caller_uid != 0 && iov_info.st_uid != caller_uid) {
    return meta::meta_error(EACCES, fmt::format("usrbio ring '{}': {} belongs to uid {}, not to the caller (uid {})",
                                                impl->name, impl->iov_path, iov_info.st_uid, caller_uid));
  }
  impl->iov = std::move(*iov);
  impl->iov_guard = internal::fault_guard_add(impl->iov.data(), impl->iov.bytes());
  impl->iov_device = iov_info.st_dev;
  impl->iov_inode = iov_info.st_ino;
  if (impl->iov.bytes() < header->iov_size) {
    return meta::meta_error(EINVAL, fmt::format("usrbio ring '{}': Iov {} has {} bytes, the ring expects {}",
                                                impl->name, impl->iov_path, impl->iov.bytes(), header->iov_size));
  }
  if (options.owner_pid > 0) {
    impl->owner_start_time = internal::process_start_time(options.owner_pid);
    if (impl->owner_start_time == 0) {
      return meta::meta_error(
          ENOENT, fmt::format("usrbio ring '{}': owner pid {} is not running", impl->name, options.owner_pid));
    }
  }
  const auto state = static_cast<State>(header->server_state.load(std::memory_order_acquire));
  if (state == State::kAttached) {
    const int64_t beat = header->server_heartbeat_ns.load(std::memory_order_acquire);
    const int64_t age_ms = (internal::monotonic_ns() - beat) / 1'000'000;
    if (beat != 0 && age_ms < 5 * std::max<int64_t>(options.heartbeat_interval_ms, 100)) {
      return meta::meta_error(EEXIST, fmt::format("usrbio ring '{}' already has a live server (pid {}, beat {} ms ago)",
                                                  impl->name, header->server_pid.load(), age_ms));
    }
  }
  impl->header = header;
  impl->sq = reinterpret_cast<const SubmitEntry*>(impl->ring.data() + internal::sq_offset());
  impl->cq = reinterpret_cast<Completion*>(impl->ring.data() + internal::cq_offset(entries));
  impl->entries = entries;
  impl->mask = entries - 1;
  impl->iov_size = header->iov_size;
  impl->options = std::move(options);
  // A restarted server continues where the last one stopped: entries it took are lost (their
  // completions never come; the client's wait times out naming the dead server), later ones are served.
  impl->sq_head = header->sq_head.load(std::memory_order_acquire);
  impl->cq_tail = header->cq_tail.load(std::memory_order_acquire);
  header->server_pid.store(static_cast<uint32_t>(::getpid()), std::memory_order_relaxed);
  impl->beat();
  header->server_state.store(static_cast<uint32_t>(State::kAttached), std::memory_order_release);
  impl->running.store(true, std::memory_order_release);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<RingServer>(new RingServer(std::move(impl)));
}

RingServer::RingServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RingServer::~RingServer() { stop(); }

void RingServer::stop() {
  if (!impl_->thread.joinable()) return;
  impl_->stop_requested.store(true, std::memory_order_release);
  // Wake the worker if it sleeps on the doorbell (a wake on a word it does not wait on is harmless).
  impl_->header->sq_doorbell.fetch_add(1, std::memory_order_seq_cst);
  internal::futex_wake(impl_->header->sq_doorbell, INT_MAX);
  impl_->thread.join();
}

bool RingServer::running() const { return impl_->running.load(std::memory_order_acquire); }
bool RingServer::owner_gone() const { return impl_->owner_gone.load(std::memory_order_acquire); }
const std::string& RingServer::iov_path() const { return impl_->iov_path; }

namespace {
// Unlinks `path` when it still names the file (device, inode) given; true when it did.
bool unlink_if_same(const std::string& path, dev_t device, ino_t inode) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0 || info.st_dev != device || info.st_ino != inode) return false;
  if (::unlink(path.c_str()) != 0) {
    FF_LOG_WARN("usrbio: unlink {}: {}", path, std::strerror(errno));
    return false;
  }
  return true;
}
}  // namespace

int RingServer::remove_files(bool iov_too) {
  if (!owner_gone()) return 0;
  int removed = unlink_if_same(impl_->ring_path, impl_->ring_device, impl_->ring_inode) ? 1 : 0;
  if (iov_too && unlink_if_same(impl_->iov_path, impl_->iov_device, impl_->iov_inode)) ++removed;
  return removed;
}
const std::string& RingServer::name() const { return impl_->name; }

RingServer::Stats RingServer::stats() const {
  const auto& s = impl_->stats;
  return Stats{.wakeups = s.wakeups.load(),
               .batches = s.batches.load(),
               .entries = s.entries.load(),
               .errors = s.errors.load(),
               .bytes_read = s.bytes_read.load(),
               .bytes_written = s.bytes_written.load(),
               .max_batch_entries = s.max_batch_entries.load()};
}

}  // namespace ff::fs::usrbio
