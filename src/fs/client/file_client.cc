// FileClient: the native file client (include/ff/fs/file_client.h). See docs/fs-client.md.
//
// Threading. The StorageClient lives on one Executor (its methods and callbacks run there). A call
// (read, write, batch) runs in the caller's thread as a bounded pipeline: the caller splits the I/O at
// chunk boundaries, posts up to max_parallel_chunks chunk I/Os to the executor, and waits for their
// completions, which the executor's callbacks hand back through a Pipeline (a queue under a mutex).
// The caller copies payloads (into the user's buffer for reads, out of it for writes), so copies run in
// parallel across calling threads and the executor only moves buffers. Callbacks never touch a user
// buffer, so a caller that gives up waiting (deadline) leaves nothing behind that could write into
// freed memory.
//
// Lock order: handles_mutex_ before an InodeState's mutex; a Pipeline's mutex is never held with
// either.
#include "ff/fs/file_client.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/client.h"
#include "ff/fs/rpc/tcp_transport.h"
#include "ff/fs/storage_files.h"

namespace ff::fs {

namespace {

using meta::meta_error;

constexpr int64_t kNsPerMs = 1'000'000;

uint64_t random_client_id() {
  std::random_device device;
  uint64_t id = 0;
  while (id == 0) id = (static_cast<uint64_t>(device()) << 32) ^ device();
  return id;
}

// Adds context to an errno-tagged Status, keeping the tag first (errno_of reads it there).
Status with_errno_context(const Status& status, std::string_view context) {
  std::string_view message = status.message();
  if (message.starts_with("[E")) {
    size_t close = message.find("] ");
    if (close != std::string_view::npos) message.remove_prefix(close + 2);
  }
  return meta_error(meta::errno_of(status), fmt::format("{}: {}", context, message));
}

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One chunk I/O of a call: a byte range of one chunk, and where its bytes sit in the op's buffer.
struct ChunkTask {
  size_t op = 0;
  ChainId chain = 0;
  ChunkId chunk;
  uint64_t chunk_offset = 0;
  uint64_t length = 0;
  uint64_t buffer_offset = 0;
};

// A finished chunk I/O, handed from the executor to the calling thread.
struct ChunkDone {
  size_t task = 0;
  Status status;
  // Reads: the bytes storage returned (short at the end of the chunk), in `pieces` where the transport
  // left them in what it received (gRPC), else in `data`.
  Bytes data;
  PayloadPieces pieces;

  size_t size() const { return pieces.is_set() ? pieces.size : data.size(); }
  void copy_to(std::span<std::byte> out) const {
    if (pieces.is_set()) {
      // A local read that read straight into `out` (StorageClient::claim_local_read) left nothing to copy.
      if (pieces.pieces.size() == 1 && pieces.pieces[0].data() == out.data()) return;
      pieces.copy_to(0, out);
    } else {
      std::memcpy(out.data(), data.data(), out.size());
    }
  }
};

// Zeros that holes and short chunks of read_pieces() point into.
constexpr size_t kZeroBytes = 1u << 20;
const std::shared_ptr<const void>& zero_buffer() {
  static const std::shared_ptr<const void> zeros(new std::byte[kZeroBytes](), [](const void* p) {
    delete[] static_cast<const std::byte*>(p);
  });
  return zeros;
}
void append_zeros(std::vector<SharedBytes>& out, size_t n) {
  const auto* zeros = static_cast<const std::byte*>(zero_buffer().get());
  while (n > 0) {
    size_t take = std::min(n, kZeroBytes);
    out.push_back(SharedBytes{zero_buffer(), std::span<const std::byte>(zeros, take)});
    n -= take;
  }
}

// Completions of one call's chunk I/Os. Shared by the caller and the callbacks (which may outlive an
// abandoned call).
struct Pipeline {
  std::mutex mutex;  // guards done
  std::condition_variable wake;
  std::vector<ChunkDone> done;

  void complete(ChunkDone item) {
    {
      std::lock_guard lock(mutex);
      done.push_back(std::move(item));
    }
    wake.notify_one();
  }
};

// What this client knows of one inode's length, shared by its open handles of that inode.
// eof() = max(meta_length, unreported_end): meta's length as last seen, and the end of this client's
// acknowledged writes that meta has not been told about yet.
struct InodeState {
  std::mutex mutex;  // guards everything below
  meta::Inode inode;
  uint64_t meta_length = 0;
  uint64_t unreported_end = 0;
  int64_t last_report_ns = 0;
  size_t handles = 0;

  uint64_t eof() const { return std::max(meta_length, unreported_end); }
  void adopt_meta_length(uint64_t length) {
    meta_length = length;
    if (unreported_end <= meta_length) unreported_end = 0;
  }
};

struct OpenHandle {
  FileHandle id = 0;
  meta::InodeId inode = 0;
  uint64_t session = 0;
  uint32_t flags = 0;
  std::shared_ptr<InodeState> state;
  std::mutex mutex;          // guards written_end and read_ends
  uint64_t written_end = 0;  // end of this handle's acknowledged writes (close's length hint)
  // Where this handle's last reads ended, one per sequential stream (threads sharing a handle each walking a
  // part of the file are streams of their own), most recent first: a read starting at one continues that stream.
  // UINT64_MAX: no stream (no read starts there). read_runs: how many reads in a row continued each stream.
  static constexpr size_t kReadStreams = 8;
  std::array<uint64_t, kReadStreams> read_ends = [] {
    std::array<uint64_t, kReadStreams> none;
    none.fill(UINT64_MAX);
    return none;
  }();
  std::array<uint32_t, kReadStreams> read_runs{};

  // Records a read of [offset, end); how many reads in a row its stream has continued, this one included (0: it
  // continues none).
  uint32_t continues_a_stream(uint64_t offset, uint64_t end) {
    std::lock_guard lock(mutex);
    auto found = std::find(read_ends.begin(), read_ends.end(), offset);
    const bool continues = found != read_ends.end();
    // The stream read (or a new one, in place of the least recent) moves to the front.
    const size_t moved = continues ? static_cast<size_t>(found - read_ends.begin()) : kReadStreams - 1;
    const uint32_t run = continues ? read_runs[moved] + 1 : 0;
    std::rotate(read_ends.begin(), read_ends.begin() + moved, read_ends.begin() + moved + 1);
    std::rotate(read_runs.begin(), read_runs.begin() + moved, read_runs.begin() + moved + 1);
    read_ends.front() = end;
    read_runs.front() = run;
    return run;
  }
};

}  // namespace

struct FileClient::Impl {
  FileClientConfig config;
  meta::MetaApi& meta;
  // Owned transport (connect()); null when the caller gave its own (create()).
  std::unique_ptr<rpc::ThreadExecutor> owned_executor;
  std::unique_ptr<rpc::NetRpcClient> owned_rpc;
  Executor* executor = nullptr;
  std::unique_ptr<StorageClient> storage;
  // Chunk reads of at most this many bytes count against max_parallel_small_reads: those the storage client
  // coalesces (0 when it does not).
  uint64_t small_read_bytes = 0;

  mutable std::mutex handles_mutex;  // guards handles, inodes, next_handle
  std::unordered_map<FileHandle, std::shared_ptr<OpenHandle>> handles;
  std::unordered_map<meta::InodeId, std::shared_ptr<InodeState>> inodes;
  FileHandle next_handle = 1;

  // The background thread: length reports and lease renewal.
  std::mutex background_mutex;  // guards stopping
  std::condition_variable background_wake;
  bool stopping = false;
  std::thread background;

  // meta::FileStorage over `storage` (file_storage()).
  std::unique_ptr<meta::StorageFiles> storage_files;

  // Background closes (config.async_closes): close_handle queues them, `closer` sends them in batches.
  struct QueuedClose {
    meta::CloseRequest request;
    uint32_t attempts = 0;
  };
  // A close that failed for a transient reason (no meta server answered within RemoteMeta's own retries) is
  // sent again up to this many times in all, kCloseRetryPauseMs apart; not after the client began to stop.
  static constexpr uint32_t kCloseAttempts = 3;
  static constexpr int64_t kCloseRetryPauseMs = 200;
  std::mutex close_mutex;              // guards close_queue, closes_in_flight, close_stopping
  std::condition_variable close_wake;  // the closer: closes queued, or stopping
  std::condition_variable close_idle;  // flush_closes: nothing queued or in flight any more
  std::deque<QueuedClose> close_queue;
  size_t closes_in_flight = 0;
  bool close_stopping = false;
  std::thread closer;
  std::atomic<uint64_t> closes_queued{0}, close_batches{0}, closes_failed{0};

  Impl(FileClientConfig c, meta::MetaApi& m) : config(std::move(c)), meta(m) {}

  int64_t wait_budget_ns() const { return (config.op_timeout_ms + config.rpc_timeout_ms) * kNsPerMs + 5'000'000'000; }

  // ---------------------------------------------------------------- handles
  Result<std::shared_ptr<OpenHandle>> find(FileHandle handle) const {
    std::lock_guard lock(handles_mutex);
    auto it = handles.find(handle);
    if (it == handles.end()) return meta_error(EBADF, fmt::format("file handle {} is not open", handle));
    return it->second;
  }

  Result<FileHandle> open_inode(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) {
    FF_ASSIGN_OR_RETURN(meta::OpenFile opened, meta.open(caller, inode, flags, config.client_id));
    return adopt(std::move(opened), flags);
  }

  // A handle for a session meta opened (open or create_open).
  Result<FileHandle> adopt(meta::OpenFile opened, uint32_t flags) {
    const meta::InodeId inode = opened.inode.id;
    if (opened.inode.type != meta::FileType::kRegular) {
      (void)meta.close(inode, opened.session, 0);
      if (opened.inode.type == meta::FileType::kDirectory) {
        return meta_error(EISDIR, fmt::format("inode {} is a directory", inode));
      }
      return meta_error(
          EINVAL, fmt::format("inode {} is a {}, not a regular file", inode, meta::file_type_name(opened.inode.type)));
    }
    if (opened.inode.layout.chains.empty() || opened.inode.layout.chunk_size == 0) {
      (void)meta.close(inode, opened.session, 0);
      return meta_error(EIO, fmt::format("inode {} has no layout (chains {}, chunk size {})", inode,
                                         opened.inode.layout.chains.size(), opened.inode.layout.chunk_size));
    }
    auto handle = std::make_shared<OpenHandle>();
    handle->inode = inode;
    handle->session = opened.session;
    handle->flags = flags;
    std::lock_guard lock(handles_mutex);
    auto& state = inodes[inode];
    if (!state) state = std::make_shared<InodeState>();
    {
      std::lock_guard state_lock(state->mutex);
      state->inode = opened.inode;
      if (flags & meta::kOpenTruncate) {
        state->meta_length = opened.inode.length;
        state->unreported_end = 0;
      } else {
        state->adopt_meta_length(opened.inode.length);
      }
      ++state->handles;
    }
    handle->state = state;
    handle->id = next_handle++;
    handles.emplace(handle->id, handle);
    return handle->id;
  }

  // Drops a handle from the table (false when another thread closed it first); its InodeState goes
  // with the inode's last handle.
  bool forget(const std::shared_ptr<OpenHandle>& handle) {
    std::lock_guard lock(handles_mutex);
    if (handles.erase(handle->id) == 0) return false;
    std::lock_guard state_lock(handle->state->mutex);
    if (--handle->state->handles == 0) {
      auto it = inodes.find(handle->inode);
      if (it != inodes.end() && it->second == handle->state) inodes.erase(it);
    }
    return true;
  }

  Status close_handle(FileHandle id) {
    FF_ASSIGN_OR_RETURN(auto handle, find(id));
    if (!forget(handle)) return meta_error(EBADF, fmt::format("file handle {} is not open", id));
    uint64_t hint = 0;
    if (handle->flags & meta::kOpenWrite) {
      std::lock_guard lock(handle->mutex);
      hint = handle->written_end;
    }
    if (config.async_closes && hint == 0) {
      queue_close(meta::CloseRequest{handle->inode, handle->session, 0});
      return Status::ok();
    }
    Status closed = meta.close(handle->inode, handle->session, hint);
    if (!closed.is_ok())
      return with_errno_context(closed, fmt::format("close of handle {} (inode {})", id, handle->inode));
    return Status::ok();
  }

  void note_written(OpenHandle& handle, uint64_t end) {
    {
      std::lock_guard lock(handle.mutex);
      handle.written_end = std::max(handle.written_end, end);
    }
    std::lock_guard lock(handle.state->mutex);
    if (end > handle.state->meta_length) handle.state->unreported_end = std::max(handle.state->unreported_end, end);
  }

  // Asks meta for the inode's length again (a read crossing the end this client knows).
  void refresh_length(InodeState& state, meta::InodeId inode) {
    Result<meta::Inode> fresh = meta.getattr(inode);
    if (!fresh.is_ok()) {
      FF_LOG_DEBUG("fs client: getattr of inode {} failed: {}", inode, fresh.status());
      return;
    }
    std::lock_guard lock(state.mutex);
    state.adopt_meta_length(fresh->length);
  }

  // ---------------------------------------------------------------- the chunk pipeline
  // Runs `count` chunk I/Os, at most max_parallel_chunks at once: issue(i, pipeline) starts I/O i
  // (posting to the executor), consume(done) handles a completion in this thread. I/Os still
  // unfinished when no completion arrived for the wait budget get `timeout` passed to consume.
  // while_first_wait (optional) runs in this thread once the first I/Os are issued, before any wait.
  // small (optional): I/O i is a small read, counted against max_parallel_small_reads instead (I/Os start in order).
  void run_pipeline(size_t count, const std::function<void(size_t, const std::shared_ptr<Pipeline>&)>& issue,
                    const std::function<void(ChunkDone&)>& consume, const std::function<void()>& while_first_wait = {},
                    const std::function<bool(size_t)>& small = {}) {
    if (count == 0) return;
    auto pipeline = std::make_shared<Pipeline>();
    const size_t window = std::max<uint32_t>(config.max_parallel_chunks, 1);
    const size_t small_window = std::max<uint32_t>(config.max_parallel_small_reads, 1);
    size_t next = 0, in_flight = 0, small_in_flight = 0, completed = 0;
    std::vector<bool> finished(count, false);
    std::vector<bool> is_small(count, false);
    if (small) {
      for (size_t i = 0; i < count; ++i) is_small[i] = small(i);
    }
    std::vector<ChunkDone> batch;
    bool first_wait_passed = false;
    while (completed < count) {
      while (next < count && (is_small[next] ? small_in_flight < small_window : in_flight < window)) {
        ++(is_small[next] ? small_in_flight : in_flight);
        issue(next++, pipeline);
      }
      if (while_first_wait && !first_wait_passed) while_first_wait();
      first_wait_passed = true;
      {
        std::unique_lock lock(pipeline->mutex);
        auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(wait_budget_ns());
        if (!pipeline->wake.wait_until(lock, deadline, [&] { return !pipeline->done.empty(); })) {
          lock.unlock();
          // NOTE: StorageClient bounds every operation by op_timeout, so this only fires when a
          // completion got lost; the late callbacks then only touch the pipeline.
          for (size_t i = 0; i < next; ++i) {
            if (finished[i]) continue;
            ChunkDone lost{i,
                           meta_error(ETIMEDOUT, fmt::format("chunk I/O {} had no answer within {} ms", i,
                                                             wait_budget_ns() / kNsPerMs)),
                           {},
                           {}};
            consume(lost);
          }
          for (size_t i = next; i < count; ++i) {
            ChunkDone skipped{i, meta_error(ETIMEDOUT, "not started: an earlier chunk I/O timed out"), {}, {}};
            consume(skipped);
          }
          return;
        }
        batch.swap(pipeline->done);
      }
      for (ChunkDone& item : batch) {
        FF_ASSERT(item.task < count && !finished[item.task], "chunk I/O {} completed twice", item.task);
        finished[item.task] = true;
        consume(item);
        ++completed;
        --(is_small[item.task] ? small_in_flight : in_flight);
      }
      batch.clear();
    }
  }

  // Splits [offset, offset + length) of a file into chunk tasks of op `op`.
  // piece_bytes > 0 cuts each chunk's range further into pieces of at most that many bytes.
  static void split(const meta::Layout& layout, meta::InodeId inode, size_t op, uint64_t offset, uint64_t length,
                    std::vector<ChunkTask>& tasks, uint64_t piece_bytes = 0) {
    const uint64_t chunk_size = layout.chunk_size;
    uint64_t position = offset;
    const uint64_t end = offset + length;
    while (position < end) {
      uint64_t index = position / chunk_size;
      uint64_t in_chunk = position % chunk_size;
      uint64_t take = std::min(end - position, chunk_size - in_chunk);
      if (piece_bytes > 0) take = std::min(take, piece_bytes);
      tasks.push_back(ChunkTask{.op = op,
                                .chain = layout.chain_of(index),
                                .chunk = ChunkId{inode, index},
                                .chunk_offset = in_chunk,
                                .length = take,
                                .buffer_offset = position - offset});
      position += take;
    }
  }

  // A read of `length` bytes at `offset` through `handle` (read_batch's ReadOp without the buffer).
  struct ReadRange {
    FileHandle handle = 0;
    uint64_t offset = 0;
    size_t length = 0;
  };
  // What a read does with a chunk's answer, in the calling thread: deliver(t, task, done) for data
  // (done.size() may be short of task.length: the rest is a hole), hole(t, task) for a missing chunk.
  // t is the task's index: a range's tasks are numbered in file order.
  // destination(task), when set: where the task's bytes end up, for a local read to read them straight there.
  struct ReadSink {
    std::function<void(size_t, const ChunkTask&, ChunkDone&)> deliver;
    std::function<void(size_t, const ChunkTask&)> hole;
    std::function<std::span<std::byte>(const ChunkTask&)> destination;
  };

  std::vector<Result<size_t>> read_batch(std::span<const ReadOp> ops) {
    std::vector<ReadRange> ranges(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) ranges[i] = ReadRange{ops[i].handle, ops[i].offset, ops[i].out.size()};
    const auto deliver = [&](size_t, const ChunkTask& task, ChunkDone& done) {
      std::byte* out = ops[task.op].out.data() + task.buffer_offset;
      size_t got = std::min<size_t>(done.size(), task.length);
      done.copy_to(std::span(out, got));
      // Short data inside the file's length: the chunk ends early (a hole up to the next write).
      if (got < task.length) std::memset(out + got, 0, task.length - got);
    };
    const auto hole = [&](size_t, const ChunkTask& task) {
      std::memset(ops[task.op].out.data() + task.buffer_offset, 0, task.length);  // no chunk was ever written there
    };
    const auto destination = [&](const ChunkTask& task) {
      return ops[task.op].out.subspan(task.buffer_offset, task.length);
    };
    return read_ranges(ranges, ReadSink{.deliver = deliver, .hole = hole, .destination = destination});
  }

  Result<std::vector<SharedBytes>> read_pieces(FileHandle handle, uint64_t offset, size_t length) {
    // Each task's pieces by task index (= file order), assembled once every task is in.
    std::map<size_t, std::vector<SharedBytes>> by_task;
    ReadRange range{handle, offset, length};
    std::vector<Result<size_t>> results = read_ranges(std::span(&range, 1), ReadSink{
      .deliver = [&](size_t t, const ChunkTask& task, ChunkDone& done) {
        std::vector<SharedBytes>& out = by_task[t];
        size_t got = std::min<size_t>(done.size(), task.length);
        if (done.pieces.is_set()) {
          size_t left = got;
          for (std::span<const std::byte> piece : done.pieces.pieces) {
            if (left == 0) break;
            size_t take = std::min(left, piece.size());
            out.push_back(SharedBytes{done.pieces.owner, piece.first(take)});
            left -= take;
          }
        } else if (got > 0) {
          SharedBytes held = SharedBytes::adopt(std::move(done.data));
          held.bytes = held.bytes.first(got);
          out.push_back(std::move(held));
        }
        if (got < task.length) append_zeros(out, task.length - got);
      },
      .hole = [&](size_t t, const ChunkTask& task) { append_zeros(by_task[t], task.length); }});
    if (!results[0].is_ok()) return results[0].status();
    std::vector<SharedBytes> pieces;
    for (auto& [t, task_pieces] : by_task) {
      for (SharedBytes& piece : task_pieces) pieces.push_back(std::move(piece));
    }
    return pieces;
  }

  std::vector<Result<size_t>> read_ranges(std::span<const ReadRange> ops, const ReadSink& sink) {
    std::vector<Result<size_t>> results(ops.size(), Result<size_t>(size_t{0}));
    std::vector<std::shared_ptr<OpenHandle>> op_handles(ops.size());
    std::vector<ChunkTask> tasks, next_tasks;
    for (size_t i = 0; i < ops.size(); ++i) {
      const ReadRange& op = ops[i];
      auto handle = find(op.handle);
      if (!handle.is_ok()) {
        results[i] = handle.status();
        continue;
      }
      if (!((*handle)->flags & meta::kOpenRead)) {
        results[i] = meta_error(EBADF, fmt::format("file handle {} is not open for reading", op.handle));
        continue;
      }
      if (op.offset > UINT64_MAX - op.length) {
        results[i] = meta_error(EINVAL, fmt::format("read of {} bytes at offset {} overflows", op.length, op.offset));
        continue;
      }
      InodeState& state = *(*handle)->state;
      uint64_t end = op.offset + op.length;
      uint64_t eof;
      meta::Layout layout;
      {
        std::lock_guard lock(state.mutex);
        eof = state.eof();
        layout = state.inode.layout;
      }
      if (end > eof) {
        // The read crosses the end known here: another client may have written more since.
        refresh_length(state, (*handle)->inode);
        std::lock_guard lock(state.mutex);
        eof = state.eof();
      }
      uint64_t length = op.offset >= eof ? 0 : std::min<uint64_t>(op.length, eof - op.offset);
      results[i] = static_cast<size_t>(length);
      op_handles[i] = *handle;
      split(layout, (*handle)->inode, i, op.offset, length, tasks, config.read_split_bytes);
      // A read that continues a stream: read the next ranges of this length ahead (those read ahead already are
      // left alone by StorageClient::read_ahead, so each read starts about one new range). The window opens as
      // the stream goes on (1, 2, 4, ... ranges, up to read_ahead_window_bytes), so that a random reader, whose
      // reads continue one of the handle's streams now and then by chance (8 streams: 1 in 16 reads of a 128-range
      // file), reads ahead one range then, not the whole window (measured: docs/fs-client.md, "Read-ahead").
      const uint64_t read_end = op.offset + length;
      const uint32_t run =
          config.local_reads && config.read_ahead && length > 0 && length <= config.read_ahead_max_bytes
              ? (*handle)->continues_a_stream(op.offset, read_end)
              : 0;
      if (run > 0) {
        const uint64_t window = std::max<uint64_t>(1, config.read_ahead_window_bytes / length);
        const uint64_t ranges = std::min<uint64_t>(window, uint64_t{1} << std::min<uint32_t>(run - 1, 16));
        for (uint64_t r = 0; r < ranges && read_end + r * length < eof; ++r) {
          const uint64_t start = read_end + r * length;
          split(layout, (*handle)->inode, i, start, std::min<uint64_t>(length, eof - start), next_tasks,
                config.read_split_bytes);
        }
      }
    }
    StorageClient* storage_client = storage.get();
    // Small chunk I/Os of kept chunks (cached local reads), when there are several: read by this thread all at once
    // through one io_uring before the pipeline starts; `queued` marks the ones the queue took (answered or handed
    // back changed: those read as usual, without trying read_cached_now again).
    std::vector<std::optional<Result<ReadRsp>>> kept(tasks.size());
    std::vector<bool> queued(tasks.size());
    if (config.local_reads) read_kept(tasks, kept, queued);
    // The first chunk's bytes, where this host's targets hold them at a known place, are read by this thread
    // while its request is on the way (no hand-off to the executor before the disk read, and none back after it
    // when the answer came first), straight into the caller's buffer where they fit.
    std::shared_ptr<StorageClient::CallerLocalRead> caller_read;
    if (config.local_reads && !tasks.empty() && !queued[0]) {
      const ChunkTask& first = tasks.front();
      caller_read =
          storage_client->claim_local_read(first.chunk, first.chunk_offset, first.length,
                                           sink.destination ? sink.destination(first) : std::span<std::byte>{});
    }
    run_pipeline(
        tasks.size(),
        [&](size_t t, const std::shared_ptr<Pipeline>& pipeline) {
          const ChunkTask& task = tasks[t];
          auto complete = [pipeline, t](Result<ReadRsp> rsp) {
            if (rsp.is_ok()) {
              pipeline->complete(ChunkDone{t, Status::ok(), std::move(rsp->data), std::move(rsp->pieces)});
            } else {
              pipeline->complete(ChunkDone{t, rsp.status(), {}, {}});
            }
          };
          // A chunk whose whole version a target on this host named is read right here while nothing of it changed
          // (cached local reads: no hand-off to the executor or an offload thread), unless this thread reads it
          // already (caller_read).
          std::optional<Result<ReadRsp>> now = std::move(kept[t]);
          if (config.local_reads && !queued[t] && !(t == 0 && caller_read)) {
            now = storage_client->read_cached_now(task.chain, task.chunk, task.chunk_offset, task.length);
          }
          if (now) {
            complete(std::move(*now));
          } else {
            executor->post([storage_client, complete, chain = task.chain, chunk = task.chunk,
                            offset = task.chunk_offset, length = task.length,
                            mine = t == 0 ? caller_read : nullptr]() mutable {
              storage_client->read(chain, chunk, offset, length, ReadMode::kStrict, complete,
                                   /*accept_pieces=*/true, std::move(mine));
            });
          }
          // After the last of this read's chunk I/Os: the next ranges, read ahead while this read runs; those
          // with a known place at once from this thread (so a later read finds them whatever the executor does
          // meanwhile), the others located on the executor.
          if (t + 1 == tasks.size() && !next_tasks.empty()) {
            std::erase_if(next_tasks, [&](const ChunkTask& task) {
              return storage_client->read_ahead_known(task.chunk, task.chunk_offset, task.length);
            });
            if (!next_tasks.empty()) {
              executor->post([storage_client, next = std::move(next_tasks)] {
                for (const ChunkTask& task : next) {
                  storage_client->read_ahead(task.chain, task.chunk, task.chunk_offset, task.length);
                }
              });
            }
          }
        },
        [&](ChunkDone& done) {
          const ChunkTask& task = tasks[done.task];
          if (!done.status.is_ok()) {
            if (fs_error_of(done.status) == FsError::kChunkNotFound) {
              if (results[task.op].is_ok()) sink.hole(done.task, task);  // no chunk was ever written there
              return;
            }
            if (results[task.op].is_ok()) {
              results[task.op] = meta_error(
                  EIO, fmt::format("read of chunk {} [{}, +{}) on chain {} failed: {}", task.chunk.to_string(),
                                   task.chunk_offset, task.length, task.chain, done.status.to_string()));
            }
            return;
          }
          if (results[task.op].is_ok()) sink.deliver(done.task, task, done);
        },
        [&] { StorageClient::run_local_read(caller_read); },
        [&](size_t t) { return tasks[t].length <= small_read_bytes; });
    return results;
  }

  // Reads through one StorageClient::CachedReadQueue (FileClientConfig::read_queue_depth) the tasks of at most
  // kQueuedReadMaxBytes whose chunk a kept answer serves, when there are two or more such tasks: their answers in
  // kept[t] (none where the chunk changed meanwhile), queued[t] set for each task the queue took.
  static constexpr uint64_t kQueuedReadMaxBytes = 64 << 10;
  void read_kept(const std::vector<ChunkTask>& tasks, std::vector<std::optional<Result<ReadRsp>>>& kept,
                 std::vector<bool>& queued) {
    const auto small = [](const ChunkTask& task) { return task.length <= kQueuedReadMaxBytes; };
    if (config.read_queue_depth == 0 || std::count_if(tasks.begin(), tasks.end(), small) < 2) return;
    // Always the configured depth, so that the thread's spare ring fits the next call whatever its size.
    StorageClient::CachedReadQueue queue(*storage, config.read_queue_depth);
    std::vector<StorageClient::CachedReadQueue::Done> done;
    const auto take = [&] {
      for (StorageClient::CachedReadQueue::Done& read : done) {
        if (read.rsp) kept[read.tag] = Result<ReadRsp>(std::move(*read.rsp));
      }
      done.clear();
    };
    for (size_t t = 0; t < tasks.size(); ++t) {
      const ChunkTask& task = tasks[t];
      if (!small(task)) continue;
      if (queue.in_flight() == queue.depth()) {
        queue.reap(1, done);
        take();
      }
      queued[t] = queue.submit(task.chain, task.chunk, task.chunk_offset, task.length, t);
    }
    queue.reap(queue.in_flight(), done);
    take();
  }

  std::vector<Result<size_t>> write_batch(std::span<const WriteOp> ops) {
    std::vector<Result<size_t>> results(ops.size(), Result<size_t>(size_t{0}));
    std::vector<std::shared_ptr<OpenHandle>> op_handles(ops.size());
    std::vector<ChunkTask> tasks;
    for (size_t i = 0; i < ops.size(); ++i) {
      const WriteOp& op = ops[i];
      auto handle = find(op.handle);
      if (!handle.is_ok()) {
        results[i] = handle.status();
        continue;
      }
      if (!((*handle)->flags & meta::kOpenWrite)) {
        results[i] = meta_error(EBADF, fmt::format("file handle {} is not open for writing", op.handle));
        continue;
      }
      if (op.offset > UINT64_MAX - op.data.size()) {
        results[i] =
            meta_error(EINVAL, fmt::format("write of {} bytes at offset {} overflows", op.data.size(), op.offset));
        continue;
      }
      meta::Layout layout;
      {
        std::lock_guard lock((*handle)->state->mutex);
        layout = (*handle)->state->inode.layout;
      }
      results[i] = op.data.size();
      op_handles[i] = *handle;
      split(layout, (*handle)->inode, i, op.offset, op.data.size(), tasks);
    }
    StorageClient* storage_client = storage.get();
    run_pipeline(
        tasks.size(),
        [&](size_t t, const std::shared_ptr<Pipeline>& pipeline) {
          const ChunkTask& task = tasks[t];
          const std::byte* source = ops[task.op].data.data() + task.buffer_offset;
          // The copy into the request happens here, in the caller's thread.
          Bytes payload(source, source + task.length);
          executor->post([storage_client, pipeline, t, chain = task.chain, chunk = task.chunk,
                          offset = task.chunk_offset, payload = std::move(payload)]() mutable {
            storage_client->write(chain, chunk, offset, std::move(payload), [pipeline, t](Result<WriteRsp> rsp) {
              pipeline->complete(ChunkDone{t, rsp.is_ok() ? Status::ok() : rsp.status(), {}, {}});
            });
          });
        },
        [&](ChunkDone& done) {
          const ChunkTask& task = tasks[done.task];
          if (!done.status.is_ok()) {
            if (results[task.op].is_ok()) {
              results[task.op] = meta_error(
                  EIO, fmt::format("write of chunk {} [{}, +{}) on chain {} failed: {}", task.chunk.to_string(),
                                   task.chunk_offset, task.length, task.chain, done.status.to_string()));
            }
            return;
          }
          note_written(*op_handles[task.op], ops[task.op].offset + task.buffer_offset + task.length);
        });
    return results;
  }

  // ---------------------------------------------------------------- background closes
  void queue_close(meta::CloseRequest request) {
    {
      std::lock_guard lock(close_mutex);
      close_queue.push_back(QueuedClose{request, 0});
    }
    closes_queued.fetch_add(1, std::memory_order_relaxed);
    close_wake.notify_one();
  }

  bool closes_pending() {
    std::lock_guard lock(close_mutex);
    return !close_queue.empty() || closes_in_flight > 0;
  }

  static bool transient(const Status& status) {
    return status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kDeadlineExceeded;
  }

  // Sends what is queued, up to kMaxCloseBatch per call, until stopping with nothing left. Closes queued while a
  // batch is in flight form the next batch (no waiting to fill one).
  void closer_loop() {
    std::unique_lock lock(close_mutex);
    while (true) {
      close_wake.wait_for(lock, std::chrono::seconds(1), [&] { return !close_queue.empty() || close_stopping; });
      if (close_queue.empty()) {
        if (close_stopping) break;
        continue;
      }
      std::vector<QueuedClose> batch;
      while (!close_queue.empty() && batch.size() < meta::kMaxCloseBatch) {
        batch.push_back(close_queue.front());
        close_queue.pop_front();
      }
      closes_in_flight = batch.size();
      const bool stopping_now = close_stopping;
      lock.unlock();
      std::vector<meta::CloseRequest> requests;
      requests.reserve(batch.size());
      for (const QueuedClose& queued : batch) requests.push_back(queued.request);
      std::vector<Status> results = meta.close_batch(requests);
      close_batches.fetch_add(1, std::memory_order_relaxed);
      std::vector<QueuedClose> again;
      for (size_t i = 0; i < batch.size(); ++i) {
        const Status result = i < results.size() ? results[i] : internal_error("close_batch returned too few outcomes");
        if (result.is_ok()) continue;
        if (transient(result) && !stopping_now && ++batch[i].attempts < kCloseAttempts) {
          again.push_back(batch[i]);
          continue;
        }
        closes_failed.fetch_add(1, std::memory_order_relaxed);
        FF_LOG_WARN(
            "fs client {:#x}: background close of inode {} session {:#x}: {} (meta reclaims the session "
            "when this client's lease ends)",
            config.client_id, batch[i].request.inode, batch[i].request.session, result);
      }
      lock.lock();
      for (QueuedClose& queued : again) close_queue.push_back(queued);
      closes_in_flight = 0;
      if (close_queue.empty()) close_idle.notify_all();
      if (!again.empty() && !close_stopping) {
        close_wake.wait_for(lock, std::chrono::milliseconds(kCloseRetryPauseMs), [&] { return close_stopping; });
      }
    }
    close_idle.notify_all();
  }

  Status flush_closes(int64_t timeout_ms) {
    std::unique_lock lock(close_mutex);
    if (close_idle.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0)),
                            [&] { return close_queue.empty() && closes_in_flight == 0; })) {
      return Status::ok();
    }
    return deadline_exceeded("fs client: {} closes queued and {} in flight after {} ms", close_queue.size(),
                             closes_in_flight, timeout_ms);
  }

  // Sends the closes still queued and ends the closer (bounded by meta's own timeouts: one attempt each).
  void stop_closer() {
    {
      std::lock_guard lock(close_mutex);
      close_stopping = true;
    }
    close_wake.notify_all();
    if (closer.joinable()) closer.join();
  }

  // ---------------------------------------------------------------- background: reports and leases
  void report_lengths(bool force) {
    std::vector<std::pair<meta::InodeId, std::shared_ptr<InodeState>>> states;
    {
      std::lock_guard lock(handles_mutex);
      states.assign(inodes.begin(), inodes.end());
    }
    int64_t now = steady_now_ns();
    for (auto& [inode, state] : states) {
      uint64_t end;
      {
        std::lock_guard lock(state->mutex);
        if (state->unreported_end <= state->meta_length) continue;
        if (!force && now - state->last_report_ns < config.report_interval_ms * kNsPerMs) continue;
        end = state->unreported_end;
        state->last_report_ns = now;
      }
      Status reported = meta.report_length(inode, end);
      if (!reported.is_ok()) {
        FF_LOG_DEBUG("fs client: length report of inode {} ({} bytes) failed: {}", inode, end, reported);
        continue;
      }
      std::lock_guard lock(state->mutex);
      state->meta_length = std::max(state->meta_length, end);
      if (state->unreported_end <= state->meta_length) state->unreported_end = 0;
    }
  }

  void background_loop() {
    int64_t tick_ms = std::max<int64_t>(10, std::min(config.report_interval_ms, config.lease_renew_interval_ms));
    int64_t last_renew_ns = steady_now_ns();
    std::unique_lock lock(background_mutex);
    while (!stopping) {
      background_wake.wait_for(lock, std::chrono::milliseconds(tick_ms), [&] { return stopping; });
      if (stopping) break;
      lock.unlock();
      report_lengths(false);
      int64_t now = steady_now_ns();
      if (now - last_renew_ns >= config.lease_renew_interval_ms * kNsPerMs) {
        last_renew_ns = now;
        bool any_open;
        {
          std::lock_guard handles_lock(handles_mutex);
          any_open = !handles.empty();
        }
        // Sessions whose close is still queued are open in meta: keep them from being reclaimed.
        any_open = any_open || closes_pending();
        if (any_open) {
          Status renewed = meta.renew_client(config.client_id);
          if (!renewed.is_ok()) FF_LOG_WARN("fs client {:#x}: lease renewal failed: {}", config.client_id, renewed);
        }
      }
      lock.lock();
    }
  }

  // Waits until every task posted to the executor before now has run.
  void drain_executor() {
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    executor->post([done] { done->set_value(); });
    if (future.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      FF_LOG_WARN("fs client: executor did not drain within 10 s");
    }
  }
};

// ---------------------------------------------------------------- FileClient

Result<std::unique_ptr<FileClient>> FileClient::connect(FileClientConfig config, meta::MetaApi& meta) {
  if (config.mgmtd_address.empty()) return invalid_argument("FileClientConfig.mgmtd_address is empty");
  // Offload threads serve local reads (blocking preads of targets' files); one is enough without them.
  const uint32_t offload_threads = config.local_reads ? std::clamp<uint32_t>(config.local_read_threads, 1, 64) : 1;
  auto executor = std::make_unique<rpc::ThreadExecutor>("fs-client", offload_threads);
  auto rpc_client = std::make_unique<rpc::NetRpcClient>(*executor);
  Result<std::unique_ptr<FileClient>> client = create(std::move(config), meta, *executor, *rpc_client);
  if (!client.is_ok()) {
    executor->stop();
    return client.status();
  }
  (*client)->impl_->owned_executor = std::move(executor);
  (*client)->impl_->owned_rpc = std::move(rpc_client);
  return client;
}

Result<std::unique_ptr<FileClient>> FileClient::create(FileClientConfig config, meta::MetaApi& meta, Executor& executor,
                                                       RpcClient& rpc) {
  if (config.max_parallel_chunks == 0)
    return invalid_argument("FileClientConfig.max_parallel_chunks is 0, expected >= 1");
  if (config.max_parallel_small_reads == 0)
    return invalid_argument("FileClientConfig.max_parallel_small_reads is 0, expected >= 1");
  if (config.rpc_timeout_ms <= 0 || config.op_timeout_ms <= 0) {
    return invalid_argument("FileClientConfig timeouts must be positive (rpc {} ms, op {} ms)", config.rpc_timeout_ms,
                            config.op_timeout_ms);
  }
  if (config.report_interval_ms <= 0 || config.lease_renew_interval_ms <= 0) {
    return invalid_argument("FileClientConfig intervals must be positive (report {} ms, lease renewal {} ms)",
                            config.report_interval_ms, config.lease_renew_interval_ms);
  }
  if (config.client_id == 0) config.client_id = random_client_id();
  auto impl = std::make_unique<Impl>(config, meta);
  impl->executor = &executor;
  ClientConfig storage_config;
  storage_config.client_id = config.client_id;
  storage_config.mgmtd_address = config.mgmtd_address;
  storage_config.rpc_timeout_ns = config.rpc_timeout_ms * kNsPerMs;
  storage_config.op_timeout_ns = config.op_timeout_ms * kNsPerMs;
  storage_config.local_reads = config.local_reads;
  storage_config.local_read_piece_bytes = config.local_read_piece_bytes;
  storage_config.read_rpcs_per_node = config.read_rpcs_per_node;
  impl->small_read_bytes = config.read_rpcs_per_node > 0 ? storage_config.coalesce_read_max_bytes : 0;
  impl->storage = std::make_unique<StorageClient>(storage_config, executor, rpc);
  // Each step of a FileStorage call waits as long as a chunk I/O of the data path may.
  impl->storage_files = std::make_unique<meta::StorageFiles>(
      *impl->storage, executor,
      meta::StorageFilesOptions{.op_timeout_ms = impl->wait_budget_ns() / kNsPerMs, .write_channel = 1});
  Impl* raw = impl.get();
  impl->background = std::thread([raw] { raw->background_loop(); });
  if (impl->config.async_closes) impl->closer = std::thread([raw] { raw->closer_loop(); });
  return std::unique_ptr<FileClient>(new FileClient(std::move(impl)));
}

FileClient::FileClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FileClient::~FileClient() {
  {
    std::lock_guard lock(impl_->background_mutex);
    impl_->stopping = true;
  }
  impl_->background_wake.notify_all();
  if (impl_->background.joinable()) impl_->background.join();
  std::vector<FileHandle> open;
  {
    std::lock_guard lock(impl_->handles_mutex);
    for (auto& [id, handle] : impl_->handles) open.push_back(id);
  }
  for (FileHandle id : open) {
    Status closed = impl_->close_handle(id);
    if (!closed.is_ok()) FF_LOG_WARN("fs client: closing handle {} at shutdown: {}", id, closed);
  }
  impl_->stop_closer();
  // Tasks posted before now call into the StorageClient: let them run before it goes. Their
  // callbacks hold only shared state (the StorageClient's and the pipelines').
  impl_->drain_executor();
  if (impl_->owned_rpc) {
    for (int i = 0; i < 250 && impl_->owned_rpc->in_flight() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    impl_->owned_executor->stop();
  }
  impl_->storage_files.reset();
  impl_->storage.reset();
  impl_->owned_rpc.reset();
  impl_->owned_executor.reset();
}

meta::MetaApi& FileClient::meta() { return impl_->meta; }
uint64_t FileClient::client_id() const { return impl_->config.client_id; }

Result<FileHandle> FileClient::open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) {
  return impl_->open_inode(caller, inode, flags);
}

Result<FileHandle> FileClient::create(const meta::Caller& caller, meta::InodeId parent, std::string_view name,
                                      uint32_t mode, uint32_t flags, std::optional<meta::Inode>* parent_after) {
  // One meta transaction for both (the creating open is not checked against the new file's mode).
  FF_ASSIGN_OR_RETURN(meta::OpenFile opened,
                      impl_->meta.create_open(caller, parent, name, mode, flags, impl_->config.client_id));
  if (parent_after != nullptr) *parent_after = opened.parent;
  return impl_->adopt(std::move(opened), flags);
}

Result<size_t> FileClient::read(FileHandle handle, uint64_t offset, std::span<std::byte> out) {
  ReadOp op{handle, offset, out};
  return std::move(impl_->read_batch(std::span<const ReadOp>(&op, 1))[0]);
}

StorageClient::LocalReadCounts FileClient::local_read_counts() const { return impl_->storage->local_read_counts(); }

StorageClient::CoalescedReadCounts FileClient::coalesced_read_counts() const {
  return impl_->storage->coalesced_read_counts();
}

FileClient::CloseCounts FileClient::close_counts() const {
  return CloseCounts{impl_->closes_queued.load(std::memory_order_relaxed),
                     impl_->close_batches.load(std::memory_order_relaxed),
                     impl_->closes_failed.load(std::memory_order_relaxed)};
}

Status FileClient::flush_closes(int64_t timeout_ms) { return impl_->flush_closes(timeout_ms); }

Result<std::vector<SharedBytes>> FileClient::read_pieces(FileHandle handle, uint64_t offset, size_t length) {
  return impl_->read_pieces(handle, offset, length);
}

Result<size_t> FileClient::write(FileHandle handle, uint64_t offset, std::span<const std::byte> data) {
  WriteOp op{handle, offset, data};
  return std::move(impl_->write_batch(std::span<const WriteOp>(&op, 1))[0]);
}

Result<meta::Inode> FileClient::fsync(FileHandle handle) {
  FF_ASSIGN_OR_RETURN(auto open, impl_->find(handle));
  uint64_t hint = 0;
  {
    std::lock_guard lock(open->mutex);
    hint = open->written_end;
  }
  FF_ASSIGN_OR_RETURN(meta::Inode synced, impl_->meta.sync(open->inode, hint));
  std::lock_guard lock(open->state->mutex);
  open->state->inode = synced;
  open->state->adopt_meta_length(synced.length);
  return synced;
}

Status FileClient::close(FileHandle handle) { return impl_->close_handle(handle); }

Result<meta::Inode> FileClient::stat(FileHandle handle) const {
  FF_ASSIGN_OR_RETURN(auto open, impl_->find(handle));
  std::lock_guard lock(open->state->mutex);
  meta::Inode inode = open->state->inode;
  inode.length = open->state->eof();
  return inode;
}

std::vector<Result<size_t>> FileClient::read_batch(std::span<const ReadOp> ops) { return impl_->read_batch(ops); }
std::vector<Result<size_t>> FileClient::write_batch(std::span<const WriteOp> ops) { return impl_->write_batch(ops); }

Result<meta::Inode> FileClient::setattr(const meta::Caller& caller, meta::InodeId inode, const meta::SetAttr& attr) {
  FF_ASSIGN_OR_RETURN(meta::Inode updated, impl_->meta.setattr(caller, inode, attr));
  std::shared_ptr<InodeState> state;
  {
    std::lock_guard lock(impl_->handles_mutex);
    auto it = impl_->inodes.find(inode);
    if (it != impl_->inodes.end()) state = it->second;
  }
  if (state) {
    std::lock_guard lock(state->mutex);
    state->inode = updated;
    state->meta_length = updated.length;
    // Writes acknowledged before the truncate are cut by it.
    if (attr.length) state->unreported_end = 0;
  }
  return updated;
}

meta::FileStorage& FileClient::file_storage() { return *impl_->storage_files; }

size_t FileClient::open_handles() const {
  std::lock_guard lock(impl_->handles_mutex);
  return impl_->handles.size();
}

}  // namespace ff::fs
