// ChunkEngine: block-class files + RocksDB metadata + io_uring (see docs/fs-chunk-engine.md).
//
// Lock order: write stripe (std::mutex, one writer per chunk stripe for a whole update) -> read stripe
// (std::shared_mutex: readers hold it shared for the whole read; a writer takes it exclusively only for
// an instant after its metadata batch, to drain readers of a block it is about to release) -> class
// mutex (allocator state of one block class). Nothing is held across a call into user code except the
// fault hook, which tests use.
#include "ff/fs/chunk_engine.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/statistics.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>

#include "chunk_record.h"
#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/crc32c.h"
#include "ff/fs/read_stamps.h"
#include "io_context.h"
#include "read_buffer_pool.h"

namespace ff::fs {

using chunk_internal::align_down;
using chunk_internal::align_up;
using chunk_internal::BlockLocation;
using chunk_internal::ChunkRecord;
using chunk_internal::IoContext;
using chunk_internal::IoContextPool;
using chunk_internal::IoOp;
using chunk_internal::kIoAlignment;
using chunk_internal::PatchRecord;
using chunk_internal::VersionRecord;

std::string_view chunk_fault_point_name(ChunkFaultPoint point) {
  switch (point) {
    case ChunkFaultPoint::kAfterDataWrite: return "after_data_write";
    case ChunkFaultPoint::kAfterPendingBatch: return "after_pending_batch";
    case ChunkFaultPoint::kBeforeCommitBatch: return "before_commit_batch";
    case ChunkFaultPoint::kAfterCommitBatch: return "after_commit_batch";
    case ChunkFaultPoint::kBeforeDataRead: return "before_data_read";
    case ChunkFaultPoint::kAfterPatchApply: return "after_patch_apply";
    case ChunkFaultPoint::kBeforeGroupSync: return "before_group_sync";
  }
  return "unknown";
}

namespace {

constexpr size_t kLockStripes = kReadStampSlots;
constexpr size_t kRemoveBatch = 128;
// Zero-copy reads are split into I/Os of this size (at least one crc segment), all in flight at once.
constexpr uint64_t kReadSplitBytes = 1024ull << 10;

bool is_power_of_two(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

// Zeros the bytes of [zero_from, zero_to) (positions; the buffer starts at position `base`) that lie outside
// [keep_from, keep_to), the range the caller copies over next.
void zero_outside(std::byte* buffer, uint64_t base, uint64_t zero_from, uint64_t zero_to, uint64_t keep_from,
                  uint64_t keep_to) {
  if (keep_from >= keep_to) keep_from = keep_to = zero_to;  // nothing kept
  const uint64_t below_end = std::min(zero_to, keep_from);
  if (zero_from < below_end) std::memset(buffer + (zero_from - base), 0, below_end - zero_from);
  const uint64_t above_from = std::max(zero_from, keep_to);
  if (above_from < zero_to) std::memset(buffer + (above_from - base), 0, zero_to - above_from);
}

// One block class: a preallocated file of equal blocks and its free list.
struct BlockClass {
  uint64_t block_bytes = 0;
  std::string path;
  int fd = -1;
  uint64_t device = 0;  // the file's st_dev and st_ino (LocalExtent)
  uint64_t inode = 0;
  std::mutex mutex;
  uint64_t total_blocks = 0;   // guarded by mutex
  std::vector<uint32_t> free;  // guarded by mutex; a stack, lowest index on top
  std::vector<bool> used;      // guarded by mutex; used[b] == (b is referenced or being written)
  // Group sync: data was written to the file since the last sync took it (ChunkEngineOptions::group_sync_ms).
  std::atomic<bool> written_unsynced{false};
};

// CRC32C of a version's prefix [0, length): one per crc segment (last may be partial) and the whole CRC.
// append() reads the bytes once, for the segment CRCs; fold_whole() derives the whole CRC from them
// (crc32c_fold: ~5 ns per segment; extending the whole CRC over the bytes as well was a second pass,
// ~half the CRC time of a 1 MiB write).
struct CrcState {
  uint64_t length = 0;
  uint32_t whole = 0;  // valid after fold_whole() (or when set with segments that match it)
  std::vector<uint32_t> segments;

  void fold_whole(uint64_t segment_bytes) {
    whole = segments.empty() ? 0 : crc32c_fold(segments, segment_bytes, length - (segments.size() - 1) * segment_bytes);
  }
  void append(std::span<const std::byte> bytes, uint64_t segment_bytes) {
    while (!bytes.empty()) {
      const uint64_t in_segment = length % segment_bytes;
      const uint64_t take = std::min<uint64_t>(segment_bytes - in_segment, bytes.size());
      if (in_segment == 0) {
        segments.push_back(crc32c(bytes.first(take)));
      } else {
        segments.back() = crc32c_extend(segments.back(), bytes.first(take));
      }
      length += take;
      bytes = bytes.subspan(take);
    }
  }
};

// Errors tagged like ff/fs/types.h's fs_error() ("[chunk_not_found] ..." with the same StatusCode), so
// the storage service tells them apart the same way for this engine and MemChunkStore. Spelled out
// here because ff::fs_core (which defines fs_error) links this library, not the other way round.
template <typename... Args>
Status chunk_not_found(fmt::format_string<Args...> format, Args&&... args) {
  return Status(StatusCode::kNotFound, "[chunk_not_found] " + fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
Status oversize(fmt::format_string<Args...> format, Args&&... args) {
  return Status(StatusCode::kInvalidArgument, "[oversize] " + fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
Status checksum_mismatch(fmt::format_string<Args...> format, Args&&... args) {
  return Status(StatusCode::kDataLoss, "[checksum_mismatch] " + fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
Status version_mismatch(fmt::format_string<Args...> format, Args&&... args) {
  return Status(StatusCode::kFailedPrecondition,
                "[version_mismatch] " + fmt::format(format, std::forward<Args>(args)...));
}

Status rocks_status(const rocksdb::Status& status, std::string_view what) {
  if (status.ok()) return Status::ok();
  return io_error("{}: rocksdb: {}", what, status.ToString());
}

// Calls `visit` for every block the chunk metadata references: each chunk's committed and pending
// versions (an in-place append's or patched pending version shares the committed block and is visited
// once) and their patch blocks (as a version of the patch's length). Counts the chunks in *chunks and, when
// `committed_patches` is given, lists there the chunks whose committed version still has a patch to apply.
Status visit_referenced_blocks(rocksdb::DB* db,
                               const std::function<Status(const ChunkId&, const VersionRecord&)>& visit,
                               uint64_t* chunks, std::vector<ChunkId>* committed_patches = nullptr) {
  const auto visit_patch = [&](const ChunkId& id, const VersionRecord& version) -> Status {
    if (!version.present() || !version.patch.location.valid()) return Status::ok();
    VersionRecord as_version;
    as_version.version = version.version;
    as_version.length = version.patch.length;
    as_version.location = version.patch.location;
    return visit(id, as_version);
  };
  std::unique_ptr<rocksdb::Iterator> iterator(db->NewIterator(rocksdb::ReadOptions()));
  for (iterator->Seek("c"); iterator->Valid() && iterator->key().starts_with("c"); iterator->Next()) {
    FF_ASSIGN_OR_RETURN(ChunkId id, chunk_internal::decode_chunk_key(iterator->key().ToStringView()));
    FF_ASSIGN_OR_RETURN(ChunkRecord record, chunk_internal::decode(id, iterator->value().ToStringView()));
    FF_RETURN_IF_ERROR(visit(id, record.committed));
    if (!(record.pending.location == record.committed.location && record.committed.present())) {
      FF_RETURN_IF_ERROR(visit(id, record.pending));
    }
    FF_RETURN_IF_ERROR(visit_patch(id, record.committed));
    FF_RETURN_IF_ERROR(visit_patch(id, record.pending));
    if (committed_patches != nullptr && record.committed.patch.present()) committed_patches->push_back(id);
    ++*chunks;
  }
  return rocks_status(iterator->status(), "scan chunk metadata");
}

}  // namespace

struct ChunkEngine::Impl {
  ChunkEngineOptions options;
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::WriteOptions write_options;
  std::vector<std::unique_ptr<BlockClass>> classes;
  std::unique_ptr<IoContextPool> io;
  std::shared_ptr<chunk_internal::ReadBufferPool> read_buffers;  // read_shared's buffers; outlives the engine
  bool direct_io = false;
  // Local readers' stamps (read_stamps.h): <directory>/read_stamps, one slot per lock stripe.
  std::unique_ptr<ReadStamps> stamps;
  // A stripe's write lock. Every change of a chunk (its metadata, its blocks, a block it frees) happens under its
  // stripe's write lock, so taking the lock counts a change of the stripe's slot begun in the read stamps before
  // anything changes, and releasing it counts the change ended after everything did: a local reader that cached
  // where a chunk's committed bytes lie sees every change of it (docs/fs.md, "Cached local reads").
  struct StripeLock {
    std::mutex mutex;
    ReadStamps* stamps = nullptr;  // set once by open(), before any change
    uint32_t slot = 0;
    void lock() {
      mutex.lock();
      if (stamps != nullptr) stamps->begin(slot);
    }
    void unlock() {
      if (stamps != nullptr) stamps->end(slot);
      mutex.unlock();
    }
  };
  std::array<StripeLock, kLockStripes> write_locks;
  std::array<std::shared_mutex, kLockStripes> read_locks;

  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> locates{0};
  std::atomic<uint64_t> read_bytes{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> write_bytes{0};
  std::atomic<uint64_t> zero_copy_write_bytes{0};
  std::atomic<uint64_t> commits{0};
  std::atomic<uint64_t> inplace_appends{0};
  std::atomic<uint64_t> patched_writes{0};
  std::atomic<uint64_t> merged_patches{0};
  std::atomic<uint64_t> corruptions{0};
  // Synced I/O accounting (ChunkEngineStats).
  std::atomic<uint64_t> synced_batches{0};
  std::atomic<uint64_t> unsynced_batches{0};
  std::atomic<uint64_t> wal_syncs{0};
  std::atomic<uint64_t> dsync_data_writes{0};
  std::atomic<uint64_t> data_fdatasyncs{0};
  std::atomic<uint64_t> lazy_commits{0};
  std::atomic<uint64_t> patches_settled{0};
  std::atomic<uint64_t> patches_settled_by_updates{0};
  std::shared_ptr<rocksdb::Statistics> db_statistics;

  // Unsynced metadata batches are numbered in the order their Write() returned; every batch numbered
  // <= durable_upto is known durable (a synced batch or a WAL sync that started after it returned covers
  // it: RocksDB's WAL is one ordered log and a synced write syncs every earlier log record).
  std::atomic<uint64_t> unsynced_written{0};
  std::atomic<uint64_t> durable_upto{0};

  // Committed patches waiting to be applied in place (ChunkEngineOptions::settle_patches_in_background).
  std::mutex settle_mutex;
  std::condition_variable settle_cv;
  // chunk -> number of its unsynced commit batch (0: the commit batch was synced); guarded by settle_mutex
  std::map<ChunkId, uint64_t> to_settle;
  bool settle_stopping = false;  // guarded by settle_mutex
  std::thread settler;

  // Group sync (ChunkEngineOptions::group_sync_ms): the thread that makes everything durable every interval.
  std::mutex group_mutex;
  std::condition_variable group_cv;
  bool group_stopping = false;  // guarded by group_mutex
  std::thread group_syncer;

  bool group_sync() const { return options.group_sync_ms > 0; }

  // Group sync: set once a sync failed (what was acknowledged since the last good one may not be durable); from
  // then on every change is refused.
  std::atomic<bool> sync_failed{false};
  mutable std::mutex sync_failure_mutex;
  std::string sync_failure;  // guarded by sync_failure_mutex

  Status check_writable() const {
    if (!sync_failed.load(std::memory_order_acquire)) return Status::ok();
    std::lock_guard lock(sync_failure_mutex);
    return io_error("target {}: a group sync failed ({}); the target takes no changes until it is opened again",
                    options.directory, sync_failure);
  }

  void latch_sync_failure(const Status& status) {
    {
      std::lock_guard lock(sync_failure_mutex);
      if (sync_failed.load(std::memory_order_relaxed)) return;
      sync_failure = status.to_string();
    }
    sync_failed.store(true, std::memory_order_release);
    FF_LOG_ERROR(
        "chunk engine {}: group sync failed: {}; changes since the last good sync may not be durable, and the "
        "target refuses changes until it is opened again",
        options.directory, status);
  }

  ~Impl() {
    stop_settler();
    stop_group_syncer();
    db.reset();
    for (auto& block_class : classes) {
      if (block_class->fd >= 0) ::close(block_class->fd);
    }
  }

  // A chunk's lock stripe: its slot in the read stamps.
  static size_t stripe(const ChunkId& id) { return read_stamp_slot(id, kLockStripes); }

  Status hook(ChunkFaultPoint point, const ChunkId& id) const {
    if (!options.fault_hook) return Status::ok();
    return options.fault_hook(point, id);
  }

  Result<std::optional<ChunkRecord>> load(const ChunkId& id) const {
    std::string value;
    const rocksdb::Status status = db->Get(rocksdb::ReadOptions(), chunk_internal::chunk_key(id), &value);
    if (status.IsNotFound()) return std::optional<ChunkRecord>();
    FF_RETURN_IF_ERROR(rocks_status(status, fmt::format("read metadata of chunk {}", id.to_string())));
    FF_ASSIGN_OR_RETURN(ChunkRecord record, chunk_internal::decode(id, value));
    return std::optional<ChunkRecord>(std::move(record));
  }

  Status commit(const ChunkId& id, uint32_t version, bool sync);

  template <class ReadResult, class Body>
  Status with_committed(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode, ReadResult& result,
                        Body body);
  template <class ReadResult, class Destination>
  Status read_committed(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode, ReadResult& result,
                        Destination destination);

  // Patch blocks whose record no longer references them, by a batch written without sync: free only once
  // a later synced batch made that batch durable (the WAL is ordered), since a crash before then brings
  // the reference back and open() re-applies the patch from the block.
  std::mutex deferred_mutex;
  std::vector<BlockLocation> deferred;  // guarded by deferred_mutex

  // sync = false: an unsynced batch even when metadata is synced (ChunkUpdate::defer_metadata_sync);
  // the next synced batch makes it durable.
  // *ticket (when given) is set to the batch's number when it is written unsynced, else 0.
  Status write_batch(rocksdb::WriteBatch& batch, const ChunkId& id, bool sync = true, uint64_t* ticket = nullptr) {
    if (ticket != nullptr) *ticket = 0;
    if (group_sync() || (!sync && write_options.sync)) {
      rocksdb::WriteOptions no_sync = write_options;
      no_sync.sync = false;
      return write_unsynced(no_sync, batch, fmt::format("metadata batch of chunk {}", id.to_string()), ticket);
    }
    std::vector<BlockLocation> durable_after;
    if (write_options.sync) {
      std::lock_guard lock(deferred_mutex);
      durable_after.swap(deferred);
    }
    const uint64_t covers = unsynced_written.load(std::memory_order_acquire);
    const Status status =
        rocks_status(db->Write(write_options, &batch), fmt::format("metadata batch of chunk {}", id.to_string()));
    if (status.is_ok() && write_options.sync) {
      synced_batches.fetch_add(1, std::memory_order_relaxed);
      note_durable(covers);
    }
    if (!status.is_ok()) {
      std::lock_guard lock(deferred_mutex);
      deferred.insert(deferred.end(), durable_after.begin(), durable_after.end());
      return status;
    }
    for (BlockLocation location : durable_after) release_now(location);
    return status;
  }

  Status write_unsynced(const rocksdb::WriteOptions& no_sync, rocksdb::WriteBatch& batch, std::string_view what,
                        uint64_t* ticket = nullptr) {
    FF_RETURN_IF_ERROR(rocks_status(db->Write(no_sync, &batch), what));
    unsynced_batches.fetch_add(1, std::memory_order_relaxed);
    const uint64_t number = unsynced_written.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (ticket != nullptr) *ticket = number;
    return Status::ok();
  }

  // Makes unsynced batch number `ticket` durable (0: nothing to do): free when a synced batch or WAL
  // sync that started after it already did, else one WAL sync.
  Status ensure_durable(uint64_t ticket) {
    if (ticket == 0 || durable_upto.load(std::memory_order_acquire) >= ticket) return Status::ok();
    return sync_metadata_log();
  }

  void note_durable(uint64_t covers) {
    uint64_t seen = durable_upto.load(std::memory_order_acquire);
    while (seen < covers && !durable_upto.compare_exchange_weak(seen, covers, std::memory_order_acq_rel)) {
    }
  }

  // Makes every metadata batch written so far durable: nothing to do when a later synced batch already
  // did, else one WAL sync (shared by every lazy commit and patch drop before it).
  Status sync_metadata_log() {
    const uint64_t covers = unsynced_written.load(std::memory_order_acquire);
    if (durable_upto.load(std::memory_order_acquire) >= covers) return Status::ok();
    FF_RETURN_IF_ERROR(rocks_status(db->SyncWAL(), "sync metadata log"));
    wal_syncs.fetch_add(1, std::memory_order_relaxed);
    note_durable(covers);
    return Status::ok();
  }

  // Frees a block that an unsynced batch stopped referencing, once a later synced batch made that batch
  // durable (a crash before then brings the reference back).
  void release_after_sync(BlockLocation location) {
    if (!location.valid()) return;
    std::lock_guard lock(deferred_mutex);
    deferred.push_back(location);
  }

  // The smallest class whose blocks hold `length` bytes (length > 0 and <= max_block_bytes).
  uint8_t class_for(uint64_t length) const {
    FF_ASSERT(length > 0 && length <= options.max_block_bytes);
    const uint64_t block = std::max<uint64_t>(std::bit_ceil(length), options.min_block_bytes);
    return static_cast<uint8_t>(std::countr_zero(block) - std::countr_zero(options.min_block_bytes));
  }

  uint64_t block_bytes(BlockLocation location) const { return classes[location.block_class]->block_bytes; }

  uint64_t file_offset(BlockLocation location, uint64_t position) const {
    return static_cast<uint64_t>(location.block) * block_bytes(location) + position;
  }

  Status grow(BlockClass& block_class) {
    const uint64_t step = std::max<uint64_t>(1, options.preallocate_bytes_per_class / block_class.block_bytes);
    const uint64_t new_total = block_class.total_blocks + step;
    if (new_total > UINT32_MAX) {
      return resource_exhausted("block class {} of target {} has {} blocks, the most one class may hold",
                                block_class.block_bytes, options.directory, block_class.total_blocks);
    }
    const off_t from = static_cast<off_t>(block_class.total_blocks * block_class.block_bytes);
    const off_t bytes = static_cast<off_t>(step * block_class.block_bytes);
    int rc = ::fallocate(block_class.fd, 0, from, bytes);
    if (rc != 0 && (errno == EOPNOTSUPP || errno == ENOSYS)) rc = ::ftruncate(block_class.fd, from + bytes);
    if (rc != 0) {
      const int error = errno;
      const Status status = errno_error(error, fmt::format("grow {} to {} bytes", block_class.path, from + bytes));
      return error == ENOSPC ? Status(StatusCode::kResourceExhausted, status.message()) : status;
    }
    // The new size is file metadata: make it durable before any block in it is referenced.
    if (::fdatasync(block_class.fd) != 0) return errno_error(errno, fmt::format("fdatasync {}", block_class.path));
    block_class.used.resize(new_total, false);
    for (uint64_t block = new_total; block-- > block_class.total_blocks;) {
      block_class.free.push_back(static_cast<uint32_t>(block));
    }
    block_class.total_blocks = new_total;
    return Status::ok();
  }

  Result<BlockLocation> allocate(uint64_t length) {
    const uint8_t class_index = class_for(length);
    BlockClass& block_class = *classes[class_index];
    std::lock_guard lock(block_class.mutex);
    if (block_class.free.empty()) FF_RETURN_IF_ERROR(grow(block_class));
    const uint32_t block = block_class.free.back();
    block_class.free.pop_back();
    FF_ASSERT(!block_class.used[block], "free block {} of class {} is marked used", block, block_class.block_bytes);
    block_class.used[block] = true;
    return BlockLocation{class_index, block};
  }

  // Frees a block that no metadata references any more (the batch that stopped referencing it was written). With
  // group sync that batch may not be durable yet, so the block waits for the next sync (a crash before then could
  // bring the reference back).
  void release(BlockLocation location) {
    if (group_sync()) {
      release_after_sync(location);
    } else {
      release_now(location);
    }
  }

  void release_now(BlockLocation location) {
    if (!location.valid()) return;
    BlockClass& block_class = *classes[location.block_class];
    std::lock_guard lock(block_class.mutex);
    FF_ASSERT(block_class.used[location.block], "double release of block {} of class {}", location.block,
              block_class.block_bytes);
    block_class.used[location.block] = false;
    block_class.free.push_back(location.block);
  }

  // Waits until no read of a chunk in this stripe is in flight, so a block it used can be released.
  void drain_readers(size_t stripe_index) { std::unique_lock drain(read_locks[stripe_index]); }

  Status sync_data_file(BlockLocation location) {
    if (!location.valid()) return Status::ok();
    if (group_sync()) {
      classes[location.block_class]->written_unsynced.store(true, std::memory_order_release);
      return Status::ok();
    }
    if (direct_io || !options.sync_data) return Status::ok();
    const BlockClass& block_class = *classes[location.block_class];
    if (::fdatasync(block_class.fd) != 0) return errno_error(errno, fmt::format("fdatasync {}", block_class.path));
    data_fdatasyncs.fetch_add(1, std::memory_order_relaxed);
    return Status::ok();
  }

  void count_data_write() {
    if (direct_io && options.sync_data && !group_sync()) dsync_data_writes.fetch_add(1, std::memory_order_relaxed);
  }

  // Checks the segment CRCs of `version` over bytes [from, to) held in `bytes`, which start at version
  // position `base` (from is a multiple of the segment size; to is a segment end or the version's end).
  Status verify(const ChunkId& id, const VersionRecord& version, uint64_t base, const std::byte* bytes, uint64_t from,
                uint64_t to) {
    const uint64_t segment = options.crc_segment_bytes;
    for (uint64_t start = from; start < to; start += segment) {
      const uint64_t end = std::min(start + segment, version.length);
      const uint64_t index = start / segment;
      const uint32_t computed = crc32c(std::span<const std::byte>(bytes + (start - base), end - start));
      const uint32_t stored = index < version.segment_crcs.size() ? version.segment_crcs[index] : 0;
      if (computed != stored || index >= version.segment_crcs.size()) {
        corruptions.fetch_add(1, std::memory_order_relaxed);
        FF_LOG_ERROR("chunk {} on target {}: CRC32C mismatch in bytes [{}, {}) of version {}", id.to_string(),
                     options.directory, start, end, version.version);
        return checksum_mismatch(
            "chunk {} on target {}: CRC32C mismatch in bytes [{}, {}) of version {} (block {} of the {}-byte class, "
            "file offset {}): stored {:#010x}, computed {:#010x}",
            id.to_string(), options.directory, start, end, version.version, version.location.block,
            block_bytes(version.location), file_offset(version.location, start), stored, computed);
      }
    }
    return Status::ok();
  }

  // Reads [offset, offset + length) of `version` (inside it) into dst, verifying every crc segment it
  // touches. Zero-copy when dst, offset and length allow O_DIRECT straight into dst.
  Status read_version(IoContext& context, const ChunkId& id, const VersionRecord& version, uint64_t offset,
                      std::byte* dst, uint64_t length) {
    if (length == 0) return Status::ok();
    FF_ASSERT(offset + length <= version.length && version.location.valid());
    FF_RETURN_IF_ERROR(hook(ChunkFaultPoint::kBeforeDataRead, id));
    const uint64_t segment = options.crc_segment_bytes;
    const int fd = classes[version.location.block_class]->fd;
    const uint64_t first = align_down(offset, segment);
    const uint64_t last = std::min(align_up(offset + length, segment), version.length);
    const auto read_error = [&](const Status& status) {
      return checksum_mismatch("chunk {} on target {}: cannot read bytes [{}, {}) of version {}: {}", id.to_string(),
                               options.directory, offset, offset + length, version.version, status.to_string());
    };
    const bool zero_copy = reinterpret_cast<uintptr_t>(dst) % kIoAlignment == 0 && offset == first &&
                           offset + length == last && length % kIoAlignment == 0;
    if (zero_copy) {
      // NOTE: a large read is split into pieces that are all in flight at once, and each piece is
      // verified as soon as it lands, so the CRC of cold, freshly DMA'd bytes (memory-bound: ~3 GB/s on
      // the VMs measured) overlaps the disk reading the rest. Splitting 1 MiB reads finer (128/256 KiB)
      // did not measurably help on the virtio disk, so pieces are 1 MiB.
      const uint64_t split = std::max(kReadSplitBytes, segment);
      std::array<IoOp, 64> ops;
      struct Verifier {
        Impl* impl;
        const ChunkId* id;
        const VersionRecord* version;
        uint64_t offset;
        std::byte* dst;
        const IoOp* ops;
        uint64_t first_position;  // version position of ops[0]
        uint64_t split;
        bool failed_verify = false;
      } verifier{this, &id, &version, offset, dst, ops.data(), 0, split};
      const IoContext::OnComplete on_complete{&verifier, [](void* raw, size_t index) -> Status {
                                                auto* v = static_cast<Verifier*>(raw);
                                                const uint64_t from = v->first_position + index * v->split;
                                                const Status status =
                                                    v->impl->verify(*v->id, *v->version, v->offset, v->dst, from,
                                                                    from + v->ops[index].length);
                                                v->failed_verify = !status.is_ok();
                                                return status;
                                              }};
      uint64_t position = offset;
      while (position < last) {
        size_t count = 0;
        verifier.first_position = position;
        for (; count < ops.size() && position < last; ++count) {
          const uint64_t piece = std::min(split, last - position);
          ops[count] = IoOp{fd, file_offset(version.location, position), dst + (position - offset), piece, false};
          position += piece;
        }
        const Status status = context.run(std::span<const IoOp>(ops.data(), count), on_complete);
        if (!status.is_ok()) return verifier.failed_verify ? status : read_error(status);
      }
      return Status::ok();
    }
    std::span<std::byte> buffer = context.buffer();
    for (uint64_t piece_start = first; piece_start < last; piece_start += buffer.size()) {
      const uint64_t piece_end = std::min<uint64_t>(piece_start + buffer.size(), last);
      const uint64_t io_bytes = align_up(piece_end, kIoAlignment) - piece_start;
      const Status status =
          context.run_one(IoOp{fd, file_offset(version.location, piece_start), buffer.data(), io_bytes, false});
      if (!status.is_ok()) return read_error(status);
      FF_RETURN_IF_ERROR(verify(id, version, piece_start, buffer.data(), piece_start, piece_end));
      const uint64_t copy_from = std::max(piece_start, offset);
      const uint64_t copy_to = std::min(piece_end, offset + length);
      if (copy_from < copy_to) {
        std::memcpy(dst + (copy_from - offset), buffer.data() + (copy_from - piece_start), copy_to - copy_from);
      }
    }
    return Status::ok();
  }

  // Writes positions [write_from, new_length) of a new version into block `target`. The content is
  // `old`'s bytes below old_length (old may be null: none), overlaid with `data` at data_offset, zeros
  // elsewhere. `crc` holds the CRC state of positions [0, crc.length) (crc.length >= write_from) and is
  // extended to new_length. Old bytes read are verified when verify_old.
  Status write_version(IoContext& context, const ChunkId& id, BlockLocation target, uint64_t write_from,
                       uint64_t new_length, const VersionRecord* old, uint64_t old_length, bool verify_old,
                       uint64_t data_offset, std::span<const std::byte> data, CrcState& crc) {
    FF_ASSERT(write_from % kIoAlignment == 0 && crc.length >= write_from);
    if (crc.length >= new_length) return Status::ok();
    FF_ASSERT(target.valid() && new_length <= block_bytes(target));
    const int fd = classes[target.block_class]->fd;
    std::span<std::byte> buffer = context.buffer();
    const uint64_t data_end = data_offset + data.size();
    for (uint64_t piece_start = write_from; piece_start < new_length; piece_start += buffer.size()) {
      const uint64_t piece_end = std::min<uint64_t>(piece_start + buffer.size(), new_length);
      const uint64_t aligned_end = align_up(piece_end, kIoAlignment);
      const uint64_t old_end = old != nullptr ? std::min(piece_end, old_length) : 0;
      bool have_old = false;
      if (piece_start < old_end && !(data_offset <= piece_start && data_end >= old_end)) {
        const uint64_t io_bytes = align_up(old_end, kIoAlignment) - piece_start;
        const Status status =
            context.run_one(IoOp{classes[old->location.block_class]->fd, file_offset(old->location, piece_start),
                                 buffer.data(), io_bytes, false});
        if (!status.is_ok()) {
          return checksum_mismatch("chunk {} on target {}: cannot read version {} to copy it: {}", id.to_string(),
                                   options.directory, old->version, status.to_string());
        }
        if (verify_old) FF_RETURN_IF_ERROR(verify(id, *old, piece_start, buffer.data(), piece_start, old_end));
        have_old = true;
      }
      const uint64_t copy_from = std::max(piece_start, data_offset);
      const uint64_t copy_to = std::min(piece_end, data_end);
      // Zero-copy: a piece that `data` covers whole, ending on an I/O boundary, at a 4 KiB-aligned address (fs/rpc
      // receives write payloads into such buffers) is written from `data` itself, not copied into the buffer.
      std::byte* source = buffer.data();
      const std::byte* piece_data = data.data() + (copy_from - data_offset);
      if (!have_old && copy_from == piece_start && copy_to == piece_end && piece_end == aligned_end &&
          reinterpret_cast<uintptr_t>(piece_data) % kIoAlignment == 0) {
        // NOTE: IoOp takes a mutable pointer for both directions; a write never writes through it.
        source = const_cast<std::byte*>(piece_data);
        zero_copy_write_bytes.fetch_add(piece_end - piece_start, std::memory_order_relaxed);
      } else {
        // Zeros where neither the old bytes nor `data` land: only outside the copied range (a full replacement
        // used to zero the whole piece before copying over it: 6.5 % of the CPU under 4 MiB writes).
        const uint64_t zero_from = have_old ? std::max(piece_start, old_length) : piece_start;
        zero_outside(buffer.data(), piece_start, zero_from, aligned_end, copy_from, copy_to);
        if (copy_from < copy_to)
          std::memcpy(buffer.data() + (copy_from - piece_start), piece_data, copy_to - copy_from);
      }
      FF_ASSERT(crc.length >= piece_start && crc.length <= piece_end);
      crc.append(std::span<const std::byte>(source + (crc.length - piece_start), piece_end - crc.length),
                 options.crc_segment_bytes);
      const Status status =
          context.run_one(IoOp{fd, file_offset(target, piece_start), source, aligned_end - piece_start, true});
      if (!status.is_ok()) {
        return io_error("chunk {} on target {}: write of version bytes [{}, {}) failed: {}", id.to_string(),
                        options.directory, piece_start, piece_end, status.to_string());
      }
      write_bytes.fetch_add(aligned_end - piece_start, std::memory_order_relaxed);
      count_data_write();
    }
    crc.fold_whole(options.crc_segment_bytes);
    return sync_data_file(target);
  }

  // Writes the patch of a small overwrite: version positions [from, to) of the new version (the
  // committed bytes, overlaid with `data` at data_offset, zeros past the committed length) into block
  // `patch_block` from its position 0, and sets `segments`/`whole` to the new version's CRCs (the
  // committed segment CRCs with those of [from, to) replaced; the whole CRC folded from the segment
  // CRCs with crc32c_combine, so the untouched bytes are neither read nor written). `base`: the committed
  // version's inline patch, not applied to its block yet, which [from, to) covers (a merged patch,
  // mergeable_patch): the committed bytes under it come from it.
  Status write_patch(IoContext& context, const ChunkId& id, const VersionRecord& committed, uint64_t from, uint64_t to,
                     uint64_t new_length, uint64_t data_offset, std::span<const std::byte> data,
                     BlockLocation patch_block, std::string* inline_bytes, std::vector<uint32_t>& segments,
                     uint32_t& whole, const PatchRecord* base = nullptr) {
    const uint64_t segment = options.crc_segment_bytes;
    std::span<std::byte> buffer = context.buffer();
    const uint64_t aligned = align_up(to - from, kIoAlignment);
    FF_ASSERT(from % segment == 0 && to > from && aligned <= buffer.size() && to <= new_length);
    FF_ASSERT(base == nullptr ||
              (base->bytes.size() == base->length && from <= base->offset && base->offset + base->length <= to));
    const uint64_t data_end = data_offset + data.size();
    const int old_fd = classes[committed.location.block_class]->fd;
    // Old bytes of every committed segment the update covers only partly: without a base, the first and
    // the last (every segment in between is covered); with one, also those between the base and the update.
    // From the base where it holds them (its segments are whole: it starts on a segment and ends on one or at
    // the version's end), else read from the block, whose bytes outside the base are the committed
    // version's; verified against the committed CRCs either way.
    for (uint64_t start = from; start < std::min(to, committed.length); start += segment) {
      const uint64_t end = std::min(start + segment, committed.length);
      if (data_offset <= start && data_end >= end) continue;
      if (base != nullptr && start >= base->offset && start < base->offset + base->length) {
        std::memcpy(buffer.data() + (start - from), base->bytes.data() + (start - base->offset), end - start);
      } else {
        const Status status =
            context.run_one(IoOp{old_fd, file_offset(committed.location, start), buffer.data() + (start - from),
                                 align_up(end, kIoAlignment) - start, false});
        if (!status.is_ok()) {
          return checksum_mismatch("chunk {} on target {}: cannot read version {} to patch it: {}", id.to_string(),
                                   options.directory, committed.version, status.to_string());
        }
      }
      FF_RETURN_IF_ERROR(verify(id, committed, from, buffer.data(), start, end));
    }
    const uint64_t zero_from = std::max(from, std::min(committed.length, from + aligned));
    if (zero_from < from + aligned) std::memset(buffer.data() + (zero_from - from), 0, from + aligned - zero_from);
    const uint64_t copy_from = std::max(from, data_offset);
    const uint64_t copy_to = std::min(to, data_end);
    if (copy_from < copy_to) {
      std::memcpy(buffer.data() + (copy_from - from), data.data() + (copy_from - data_offset), copy_to - copy_from);
    }
    segments = committed.segment_crcs;
    segments.resize((new_length + segment - 1) / segment, 0);
    for (uint64_t start = from; start < to; start += segment) {
      const uint64_t end = std::min(start + segment, new_length);
      segments[start / segment] = crc32c(std::span<const std::byte>(buffer.data() + (start - from), end - start));
    }
    whole = segments.empty() ? 0 : crc32c_fold(segments, segment, new_length - (segments.size() - 1) * segment);
    if (!patch_block.valid()) {
      inline_bytes->assign(reinterpret_cast<const char*>(buffer.data()), to - from);
      return Status::ok();
    }
    const Status status = context.run_one(
        IoOp{classes[patch_block.block_class]->fd, file_offset(patch_block, 0), buffer.data(), aligned, true});
    if (!status.is_ok()) {
      return io_error("chunk {} on target {}: write of the patch of bytes [{}, {}) failed: {}", id.to_string(),
                      options.directory, from, to, status.to_string());
    }
    write_bytes.fetch_add(aligned, std::memory_order_relaxed);
    count_data_write();
    return sync_data_file(patch_block);
  }

  // Whether `update` of a version `committed` of new_length bytes can be stored as a patch of the
  // segments [from, to): inside the committed block, at most half the committed length (else a copy
  // writes little more), within one I/O buffer.
  bool patchable(const ChunkUpdate& update, const VersionRecord& committed, uint64_t new_length, uint64_t from,
                 uint64_t to) const {
    return !update.full_replacement && committed.present() && committed.location.valid() && !update.data.empty() &&
           update.offset < committed.length && new_length <= block_bytes(committed.location) &&
           (to - from) * 2 <= committed.length && align_up(to - from, kIoAlignment) <= options.io_buffer_bytes;
  }
  // Whether `update` can take in the committed version's patch, which the settler has not applied yet:
  // the patch is inline and the segments of both together span at most merge_patch_bytes (<= inline_patch_bytes:
  // no data write; the merged patch's bytes ride in the synced pending batch), with patchable()'s conditions.
  bool mergeable_patch(const ChunkUpdate& update, const VersionRecord& committed) const {
    const PatchRecord& base = committed.patch;
    if (!base.present() || base.location.valid() || update.full_replacement || update.data.empty()) return false;
    const uint64_t segment = options.crc_segment_bytes;
    const uint64_t update_end = update.offset + update.data.size();
    const uint64_t new_length = std::max(committed.length, update_end);
    const uint64_t from = std::min(align_down(update.offset, segment), base.offset);
    const uint64_t to = std::max(std::min(align_up(update_end, segment), new_length), base.offset + base.length);
    return to - from <= std::min(options.merge_patch_bytes, options.inline_patch_bytes) &&
           patchable(update, committed, new_length, from, to);
  }

  // Copies the committed version's patch into the version's own block (verifying it on the way), then
  // drops the patch with a synced batch and frees its block. Idempotent: after a crash anywhere in
  // here, open() runs it again. The caller holds the chunk's write stripe and keeps readers out.
  Status settle_patch(const ChunkId& id, ChunkRecord& record) {
    VersionRecord& version = record.committed;
    const PatchRecord patch = version.patch;
    if (!patch.present()) return Status::ok();
    FF_ASSIGN_OR_RETURN(IoContextPool::Lease context, io->borrow());
    std::span<std::byte> buffer = context->buffer();
    const int fd = classes[version.location.block_class]->fd;
    const uint64_t end = patch.offset + patch.length;
    if (!patch.location.valid() &&
        (patch.bytes.size() != patch.length || align_up(patch.length, kIoAlignment) > buffer.size())) {
      return data_loss("chunk {} on target {}: inline patch of version {} has {} bytes, expected {} (at most {})",
                       id.to_string(), options.directory, version.version, patch.bytes.size(), patch.length,
                       buffer.size());
    }
    for (uint64_t start = patch.offset; start < end; start += buffer.size()) {
      const uint64_t piece_end = std::min<uint64_t>(start + buffer.size(), end);
      const uint64_t io_bytes = align_up(piece_end - start, kIoAlignment);
      Status status = Status::ok();
      if (patch.location.valid()) {
        status =
            context->run_one(IoOp{classes[patch.location.block_class]->fd,
                                  file_offset(patch.location, start - patch.offset), buffer.data(), io_bytes, false});
      } else {
        std::memcpy(buffer.data(), patch.bytes.data(), patch.length);
        std::memset(buffer.data() + patch.length, 0, io_bytes - patch.length);
      }
      if (!status.is_ok()) {
        return checksum_mismatch("chunk {} on target {}: cannot read the patch of version {}: {}", id.to_string(),
                                 options.directory, version.version, status.to_string());
      }
      FF_RETURN_IF_ERROR(verify(id, version, start, buffer.data(), start, piece_end));
      status = context->run_one(IoOp{fd, file_offset(version.location, start), buffer.data(), io_bytes, true});
      if (!status.is_ok()) {
        return io_error("chunk {} on target {}: applying the patch of version {} failed: {}", id.to_string(),
                        options.directory, version.version, status.to_string());
      }
      write_bytes.fetch_add(io_bytes, std::memory_order_relaxed);
      count_data_write();
    }
    // NOTE: with group sync the patched bytes are made durable here too (not left to the next round), before the
    // batch that drops the patch: once that batch is durable nothing re-applies the patch, and a committed version
    // older than the interval must not be lost to a power failure.
    FF_RETURN_IF_ERROR(group_sync() ? sync_class_file(*classes[version.location.block_class])
                                    : sync_data_file(version.location));
    patches_settled.fetch_add(1, std::memory_order_relaxed);
    FF_RETURN_IF_ERROR(hook(ChunkFaultPoint::kAfterPatchApply, id));
    version.patch = PatchRecord{};
    rocksdb::WriteBatch batch;
    batch.Put(chunk_internal::chunk_key(id), chunk_internal::encode(record));
    if (!write_options.sync || !patch.location.valid()) {
      // Without a patch block there is nothing to free: a lost drop only makes open() re-apply it.
      if (write_options.sync) {
        rocksdb::WriteOptions no_sync = write_options;
        no_sync.sync = false;
        return write_unsynced(no_sync, batch, fmt::format("drop the patch of chunk {}", id.to_string()));
      }
      FF_RETURN_IF_ERROR(write_batch(batch, id));
      release(patch.location);
      return Status::ok();
    }
    // NOTE: dropping the patch need not be durable now (re-applying it is harmless), so this batch is
    // not synced, saving an fsync per patched commit; the block is freed by the next synced batch.
    rocksdb::WriteOptions no_sync = write_options;
    no_sync.sync = false;
    FF_RETURN_IF_ERROR(write_unsynced(no_sync, batch, fmt::format("drop the patch of chunk {}", id.to_string())));
    std::lock_guard lock(deferred_mutex);
    deferred.push_back(patch.location);
    return Status::ok();
  }

  // Makes every metadata write durable (WAL sync), then frees the deferred patch blocks.
  Status flush_deferred() {
    std::vector<BlockLocation> durable_after;
    {
      std::lock_guard lock(deferred_mutex);
      durable_after.swap(deferred);
    }
    const uint64_t covers = unsynced_written.load(std::memory_order_acquire);
    // Group sync: the data of every batch up to `covers` was written (and its file marked) before the batch.
    Status status = group_sync() ? hook(ChunkFaultPoint::kBeforeGroupSync, ChunkId{}) : Status::ok();
    if (status.is_ok() && group_sync()) status = sync_written_files();
    if (status.is_ok()) status = rocks_status(db->SyncWAL(), "sync metadata log");
    if (!status.is_ok()) {
      if (group_sync()) latch_sync_failure(status);
      std::lock_guard lock(deferred_mutex);
      deferred.insert(deferred.end(), durable_after.begin(), durable_after.end());
      return status;
    }
    wal_syncs.fetch_add(1, std::memory_order_relaxed);
    note_durable(covers);
    for (BlockLocation location : durable_after) release_now(location);
    return status;
  }

  Status sync_class_file(BlockClass& block_class) {
    block_class.written_unsynced.store(false, std::memory_order_release);
    if (::fdatasync(block_class.fd) != 0) {
      block_class.written_unsynced.store(true, std::memory_order_release);
      return errno_error(errno, fmt::format("fdatasync {}", block_class.path));
    }
    data_fdatasyncs.fetch_add(1, std::memory_order_relaxed);
    return Status::ok();
  }

  // Group sync: fdatasync of every block-class file written to since the last sync.
  Status sync_written_files() {
    for (auto& block_class : classes) {
      if (block_class->written_unsynced.load(std::memory_order_acquire))
        FF_RETURN_IF_ERROR(sync_class_file(*block_class));
    }
    return Status::ok();
  }

  bool anything_unsynced() {
    if (unsynced_written.load(std::memory_order_acquire) > durable_upto.load(std::memory_order_acquire)) return true;
    for (auto& block_class : classes) {
      if (block_class->written_unsynced.load(std::memory_order_acquire)) return true;
    }
    std::lock_guard lock(deferred_mutex);
    return !deferred.empty();
  }

  // The group sync thread: every group_sync_ms, makes what was written since the last sync durable and frees the
  // blocks that waited for it; once more when stopping.
  void group_sync_loop() {
    std::unique_lock lock(group_mutex);
    while (!group_stopping) {
      group_cv.wait_for(lock, std::chrono::milliseconds(options.group_sync_ms), [&] { return group_stopping; });
      lock.unlock();
      if (anything_unsynced()) {
        const Status status = flush_deferred();
        if (!status.is_ok()) FF_LOG_WARN("chunk engine {}: group sync: {}", options.directory, status);
      }
      lock.lock();
    }
  }

  void stop_group_syncer() {
    if (!group_syncer.joinable()) return;
    {
      std::lock_guard lock(group_mutex);
      group_stopping = true;
    }
    group_cv.notify_all();
    group_syncer.join();
    if (anything_unsynced()) {
      const Status status = flush_deferred();
      if (!status.is_ok()) FF_LOG_WARN("chunk engine {}: group sync at close: {}", options.directory, status);
    }
  }

  // Applies the committed patch of `id`, if it still has one: its commit batch is made durable first
  // (it may have been written lazily: the block must not change while a crash could still bring back
  // the version before it), then readers are kept out while the patch is copied in place.
  Status settle_now(const ChunkId& id, uint64_t ticket) {
    const size_t index = stripe(id);
    std::lock_guard write_lock(write_locks[index]);
    FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> record, load(id));
    if (!record || !record->committed.patch.present()) return Status::ok();
    FF_RETURN_IF_ERROR(ensure_durable(ticket));
    std::unique_lock readers(read_locks[index]);
    return settle_patch(id, *record);
  }

  // Wakes the settler only when the queue was empty: with patches queued already it is waiting out
  // settle_delay_us (a wait only stopping ends) or about to take the queue, so a wake-up per commit
  // was a context switch for nothing (~3 per replica per 4 KiB write at depth 1; docs/fs-operations.md).
  void queue_settle(const ChunkId& id, uint64_t ticket) {
    bool was_empty;
    {
      std::lock_guard lock(settle_mutex);
      was_empty = to_settle.empty();
      to_settle[id] = ticket;
    }
    if (was_empty) settle_cv.notify_one();
  }

  // The commit batch number of a chunk whose committed patch is about to be applied outside the
  // settler (a read, the next update): from the queue, else every batch so far (the settler may hold it).
  uint64_t ticket_of(const ChunkId& id) {
    std::lock_guard lock(settle_mutex);
    auto it = to_settle.find(id);
    return it != to_settle.end() ? it->second : unsynced_written.load(std::memory_order_acquire);
  }

  // The settler thread: waits settle_delay_us after the first queued patch (more commits gather, and
  // the next synced batch of a write often makes their commit batches durable for free), then one WAL
  // sync at most for all of them, then applies each in place. When idle, makes deferred block frees
  // durable now and then. Patches it could not apply stay in their records (reads and the next update
  // of the chunk apply them; open() too).
  void settle_loop() {
    std::unique_lock lock(settle_mutex);
    while (!settle_stopping) {
      settle_cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return settle_stopping || !to_settle.empty(); });
      if (to_settle.empty()) {
        if (settle_stopping) break;
        lock.unlock();
        bool have_deferred;
        {
          std::lock_guard deferred_lock(deferred_mutex);
          have_deferred = !deferred.empty();
        }
        if (have_deferred) {
          const Status status = flush_deferred();
          if (!status.is_ok()) FF_LOG_WARN("chunk engine {}: {}", options.directory, status);
        }
        lock.lock();
        continue;
      }
      if (!settle_stopping && options.settle_delay_us > 0) {
        settle_cv.wait_for(lock, std::chrono::microseconds(options.settle_delay_us), [&] { return settle_stopping; });
      }
      std::map<ChunkId, uint64_t> batch;
      batch.swap(to_settle);
      lock.unlock();
      settle_all(batch);
      lock.lock();
    }
  }

  void settle_all(const std::map<ChunkId, uint64_t>& ids) {
    uint64_t newest = 0;
    for (const auto& [id, ticket] : ids) newest = std::max(newest, ticket);
    Status status = ensure_durable(newest);  // one WAL sync at most for the whole batch
    for (const auto& [id, ticket] : ids) {
      if (status.is_ok()) status = settle_now(id, 0);
      if (!status.is_ok()) {
        FF_LOG_WARN("chunk engine {}: committed patch of chunk {} not applied yet: {}", options.directory,
                    id.to_string(), status);
        status = Status::ok();
      }
    }
  }

  void stop_settler() {
    if (!settler.joinable()) return;
    {
      std::lock_guard lock(settle_mutex);
      settle_stopping = true;
    }
    settle_cv.notify_all();
    settler.join();
    // What is left is applied now, so a clean shutdown leaves no patch behind (open() would apply it).
    std::map<ChunkId, uint64_t> rest;
    {
      std::lock_guard lock(settle_mutex);
      rest.swap(to_settle);
    }
    settle_all(rest);
  }

  // open(): settles every committed version that still has a patch (a crash after its commit batch), `ids`
  // (found by recover_allocator's scan).
  Status settle_patches(const std::vector<ChunkId>& ids) {
    // The commit batches may have been written lazily (and recovered from the log after a kill): make
    // them durable before changing any block.
    if (!ids.empty()) FF_RETURN_IF_ERROR(rocks_status(db->SyncWAL(), "sync metadata log"));
    for (const ChunkId& id : ids) {
      FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> record, load(id));
      if (record) FF_RETURN_IF_ERROR(settle_patch(id, *record));
    }
    if (!ids.empty())
      FF_LOG_INFO("chunk engine {}: applied {} committed patches at open", options.directory, ids.size());
    return flush_deferred();
  }

  Status open_files();
  // Rebuilds the free blocks from the records; lists the chunks with a committed patch in *committed_patches.
  Status recover_allocator(uint64_t* chunks, std::vector<ChunkId>* committed_patches);
};

Status ChunkEngine::Impl::open_files() {
  const size_t class_count =
      static_cast<size_t>(std::countr_zero(options.max_block_bytes) - std::countr_zero(options.min_block_bytes)) + 1;
  bool logged_fallback = false;
  direct_io = options.direct_io;
  for (size_t index = 0; index < class_count; ++index) {
    auto block_class = std::make_unique<BlockClass>();
    block_class->block_bytes = options.min_block_bytes << index;
    // Absolute: LocalExtent hands the path to readers with another working directory.
    block_class->path =
        (std::filesystem::absolute(options.directory) / fmt::format("blocks.{}", block_class->block_bytes)).string();
    int flags = O_RDWR | O_CREAT | O_CLOEXEC;
    if (direct_io) {
      block_class->fd = ::open(block_class->path.c_str(), flags | O_DIRECT, 0644);
      if (block_class->fd < 0 && errno == EINVAL) {
        direct_io = false;
        if (!logged_fallback) {
          FF_LOG_WARN("chunk engine {}: the file system refuses O_DIRECT; using buffered I/O + fdatasync",
                      options.directory);
          logged_fallback = true;
        }
      }
    }
    if (block_class->fd < 0) block_class->fd = ::open(block_class->path.c_str(), flags, 0644);
    if (block_class->fd < 0) return errno_error(errno, fmt::format("open {}", block_class->path));
    struct stat info {};
    if (::fstat(block_class->fd, &info) != 0) return errno_error(errno, fmt::format("stat {}", block_class->path));
    block_class->total_blocks = static_cast<uint64_t>(info.st_size) / block_class->block_bytes;
    block_class->device = static_cast<uint64_t>(info.st_dev);
    block_class->inode = static_cast<uint64_t>(info.st_ino);
    classes.push_back(std::move(block_class));
  }
  // If a later file refused O_DIRECT, reopen the earlier ones without it so every class agrees.
  if (options.direct_io && !direct_io) {
    for (auto& block_class : classes) {
      const int flags = ::fcntl(block_class->fd, F_GETFL);
      if (flags >= 0 && (flags & O_DIRECT) != 0) ::fcntl(block_class->fd, F_SETFL, flags & ~O_DIRECT);
    }
  }
  return Status::ok();
}

Status ChunkEngine::Impl::recover_allocator(uint64_t* chunks, std::vector<ChunkId>* committed_patches) {
  // Every block referenced by a committed or pending version is in use; every other block is free.
  *chunks = 0;
  for (auto& block_class : classes) block_class->used.assign(block_class->total_blocks, false);
  const auto mark = [&](const ChunkId& id, const VersionRecord& version) -> Status {
    if (!version.present() || !version.location.valid()) return Status::ok();
    if (version.location.block_class >= classes.size()) {
      return data_loss("chunk {} on target {}: version {} is in block class #{}, but the target has {} classes",
                       id.to_string(), options.directory, version.version, version.location.block_class,
                       classes.size());
    }
    BlockClass& block_class = *classes[version.location.block_class];
    if (version.location.block >= block_class.total_blocks || version.length > block_class.block_bytes) {
      return data_loss("chunk {} on target {}: version {} ({} bytes) is in block {} of {}, which has {} blocks of {}",
                       id.to_string(), options.directory, version.version, version.length, version.location.block,
                       block_class.path, block_class.total_blocks, block_class.block_bytes);
    }
    if (block_class.used[version.location.block]) {
      return data_loss("chunk {} on target {}: block {} of {} is referenced twice", id.to_string(), options.directory,
                       version.location.block, block_class.path);
    }
    block_class.used[version.location.block] = true;
    return Status::ok();
  };
  FF_RETURN_IF_ERROR(visit_referenced_blocks(db.get(), mark, chunks, committed_patches));
  for (auto& block_class : classes) {
    block_class->free.clear();
    for (uint64_t block = block_class->total_blocks; block-- > 0;) {
      if (!block_class->used[block]) block_class->free.push_back(static_cast<uint32_t>(block));
    }
  }
  return Status::ok();
}

ChunkEngine::ChunkEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkEngine::~ChunkEngine() = default;

Result<std::unique_ptr<ChunkEngine>> ChunkEngine::open(const ChunkEngineOptions& options) {
  if (options.directory.empty()) return invalid_argument("ChunkEngineOptions::directory is empty");
  if (!is_power_of_two(options.min_block_bytes) || options.min_block_bytes < kIoAlignment) {
    return invalid_argument("min_block_bytes={} must be a power of two >= {}", options.min_block_bytes, kIoAlignment);
  }
  if (!is_power_of_two(options.max_block_bytes) || options.max_block_bytes < options.min_block_bytes ||
      options.max_block_bytes > (1ull << 30)) {
    return invalid_argument("max_block_bytes={} must be a power of two in [min_block_bytes={}, 1 GiB]",
                            options.max_block_bytes, options.min_block_bytes);
  }
  if (!is_power_of_two(options.crc_segment_bytes) || options.crc_segment_bytes < kIoAlignment ||
      options.crc_segment_bytes > options.min_block_bytes) {
    return invalid_argument("crc_segment_bytes={} must be a power of two in [{}, min_block_bytes={}]",
                            options.crc_segment_bytes, kIoAlignment, options.min_block_bytes);
  }
  if (options.io_buffer_bytes < options.crc_segment_bytes || options.io_buffer_bytes % options.crc_segment_bytes != 0) {
    return invalid_argument("io_buffer_bytes={} must be a positive multiple of crc_segment_bytes={}",
                            options.io_buffer_bytes, options.crc_segment_bytes);
  }
  if (options.merge_patch_bytes % options.crc_segment_bytes != 0) {
    return invalid_argument("merge_patch_bytes={} must be a multiple of crc_segment_bytes={}",
                            options.merge_patch_bytes, options.crc_segment_bytes);
  }
  if (options.io_contexts == 0 || options.io_contexts > 1024) {
    return invalid_argument("io_contexts={} must be in [1, 1024]", options.io_contexts);
  }
  if (options.io_queue_depth == 0 || options.io_queue_depth > 4096) {
    return invalid_argument("io_queue_depth={} must be in [1, 4096]", options.io_queue_depth);
  }
  if (options.io_timeout_ms == 0) return invalid_argument("io_timeout_ms must be positive");
  if (options.group_sync_ms > 60'000) {
    return invalid_argument("group_sync_ms={} exceeds 60000 (a minute); 0 turns group sync off", options.group_sync_ms);
  }

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->write_options.sync = options.sync_metadata && options.group_sync_ms == 0;
  std::error_code error;
  std::filesystem::create_directories(options.directory + "/meta", error);
  if (error) return io_error("create target directory {}: {}", options.directory, error.message());

  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;
  // Tickers only (WAL syncs, writes grouped behind another writer): ChunkEngineStats reports them.
  impl->db_statistics = rocksdb::CreateDBStatistics();
  impl->db_statistics->set_stats_level(rocksdb::StatsLevel::kExceptHistogramOrTimers);
  db_options.statistics = impl->db_statistics;
  rocksdb::DB* db = nullptr;
  FF_RETURN_IF_ERROR(rocks_status(rocksdb::DB::Open(db_options, options.directory + "/meta", &db),
                                  fmt::format("open metadata of target {}", options.directory)));
  impl->db.reset(db);

  // The block classes and crc segment size are part of the on-disk format: refuse to reinterpret them.
  const std::string format = fmt::format("ff-chunk-engine 1 min_block_bytes={} max_block_bytes={} crc_segment_bytes={}",
                                         options.min_block_bytes, options.max_block_bytes, options.crc_segment_bytes);
  std::string stored;
  const rocksdb::Status get =
      impl->db->Get(rocksdb::ReadOptions(),
                    rocksdb::Slice(chunk_internal::kFormatKey.data(), chunk_internal::kFormatKey.size()), &stored);
  if (get.ok()) {
    if (stored != format) {
      return invalid_argument("target {} was created as \"{}\", but the options say \"{}\"", options.directory, stored,
                              format);
    }
  } else if (get.IsNotFound()) {
    rocksdb::WriteOptions sync_write;
    sync_write.sync = true;
    FF_RETURN_IF_ERROR(rocks_status(
        impl->db->Put(sync_write, rocksdb::Slice(chunk_internal::kFormatKey.data(), chunk_internal::kFormatKey.size()),
                      format),
        "write format record"));
  } else {
    FF_RETURN_IF_ERROR(rocks_status(get, "read format record"));
  }

  // Before anything of the target changes: a reader still mapping the stamps of an earlier run sees this opening
  // as a change of the whole target in progress until open() is done.
  FF_ASSIGN_OR_RETURN(impl->stamps, ReadStamps::open(options.directory + "/read_stamps", kReadStampSlots));
  for (uint32_t slot = 0; slot < kLockStripes; ++slot) {
    impl->write_locks[slot].stamps = impl->stamps.get();
    impl->write_locks[slot].slot = slot;
  }
  FF_RETURN_IF_ERROR(impl->open_files());
  for (auto& block_class : impl->classes) {
    if (block_class->total_blocks == 0) FF_RETURN_IF_ERROR(impl->grow(*block_class));
  }
  uint64_t chunks = 0;
  std::vector<ChunkId> committed_patches;
  FF_RETURN_IF_ERROR(impl->recover_allocator(&chunks, &committed_patches));

  chunk_internal::IoSettings settings;
  settings.use_io_uring = options.use_io_uring;
  settings.dsync_writes = impl->direct_io && options.sync_data && options.group_sync_ms == 0;
  settings.queue_depth = options.io_queue_depth;
  settings.buffer_bytes = options.io_buffer_bytes;
  settings.timeout_ms = options.io_timeout_ms;
  FF_ASSIGN_OR_RETURN(impl->io, IoContextPool::create(settings, options.io_contexts));
  impl->read_buffers = chunk_internal::ReadBufferPool::create(options.read_buffer_pool_bytes);
  if (options.use_io_uring && !impl->io->uring()) {
    FF_LOG_WARN("chunk engine {}: io_uring is unavailable; using pread/pwrite", options.directory);
  }
  FF_RETURN_IF_ERROR(impl->settle_patches(committed_patches));
  if (options.settle_patches_in_background) {
    Impl* raw = impl.get();
    impl->settler = std::thread([raw] {
      pthread_setname_np(pthread_self(), "ff-settle");
      raw->settle_loop();
    });
  }
  if (impl->group_sync()) {
    Impl* raw = impl.get();
    impl->group_syncer = std::thread([raw] {
      pthread_setname_np(pthread_self(), "ff-group-sync");
      raw->group_sync_loop();
    });
  }
  impl->stamps->end_all();
  FF_LOG_INFO("chunk engine {}: {} chunks, {} block classes {}..{} bytes, direct_io={}, io_uring={}", options.directory,
              chunks, impl->classes.size(), options.min_block_bytes, options.max_block_bytes, impl->direct_io,
              impl->io->uring());
  return std::unique_ptr<ChunkEngine>(new ChunkEngine(std::move(impl)));
}

uint64_t ChunkEngine::max_chunk_bytes() const { return impl_->options.max_block_bytes; }
const ChunkEngineOptions& ChunkEngine::options() const { return impl_->options; }
const std::string& ChunkEngine::directory() const { return impl_->options.directory; }

Result<ChunkMeta> ChunkEngine::stat(const ChunkId& id) {
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> record, impl_->load(id));
  if (!record) return chunk_not_found("chunk {} not found on target {}", id.to_string(), impl_->options.directory);
  return chunk_internal::to_meta(id, *record);
}

// The one read path behind read_into, read_shared, read and locate: under the chunk's read lock, loads
// its record, fills result.meta and result.dirty, stops there for a strict read of a chunk with a pending
// version, else calls body(committed version, count) with the bytes of [offset, offset + length) that
// the committed version holds (clipped to the chunk; also with count 0).
template <class ReadResult, class Body>
Status ChunkEngine::Impl::with_committed(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode,
                                         ReadResult& result, Body body) {
  std::shared_lock read_lock(read_locks[stripe(id)]);
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> record, load(id));
  // A committed patch not applied in place yet (the settler is behind): apply it now, then read.
  for (int attempt = 0; record && record->committed.patch.present(); ++attempt) {
    if (attempt == 3) {
      return internal_error("chunk {} on target {}: the committed patch of version {} is still not applied",
                            id.to_string(), options.directory, record->committed.version);
    }
    read_lock.unlock();
    FF_RETURN_IF_ERROR(settle_now(id, ticket_of(id)));
    read_lock.lock();
    FF_ASSIGN_OR_RETURN(record, load(id));
  }
  if (!record) return chunk_not_found("chunk {} not found on target {}", id.to_string(), options.directory);
  result.meta = chunk_internal::to_meta(id, *record);
  result.dirty = record->pending.present();
  if (!record->committed.present()) {
    return chunk_not_found("chunk {} on target {} has no committed version (pending version {})", id.to_string(),
                           options.directory, record->pending.version);
  }
  if (result.dirty && mode == ReadMode::kStrict) return Status::ok();
  const uint64_t chunk_length = record->committed.length;
  const uint64_t count = offset >= chunk_length ? 0 : std::min<uint64_t>(length, chunk_length - offset);
  return body(record->committed, count);
}

// with_committed() that reads the bytes into the buffer `destination(count)` returns (called once, also
// with count 0; may return nullptr then).
template <class ReadResult, class Destination>
Status ChunkEngine::Impl::read_committed(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode,
                                         ReadResult& result, Destination destination) {
  return with_committed(id, offset, length, mode, result,
                        [&](const VersionRecord& committed, uint64_t count) -> Status {
                          FF_ASSIGN_OR_RETURN(std::byte * out, destination(count));
                          if (count > 0) {
                            FF_ASSIGN_OR_RETURN(IoContextPool::Lease context, io->borrow());
                            FF_RETURN_IF_ERROR(read_version(*context, id, committed, offset, out, count));
                          }
                          reads.fetch_add(1, std::memory_order_relaxed);
                          read_bytes.fetch_add(count, std::memory_order_relaxed);
                          return Status::ok();
                        });
}

Result<ChunkEngine::ReadInto> ChunkEngine::read_into(const ChunkId& id, uint64_t offset, std::span<std::byte> out,
                                                     ReadMode mode) {
  ReadInto result;
  FF_RETURN_IF_ERROR(
      impl_->read_committed(id, offset, out.size(), mode, result, [&](uint64_t count) -> Result<std::byte*> {
        result.bytes_read = count;
        return out.data();
      }));
  return result;
}

Result<SharedChunkRead> ChunkEngine::read_shared(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) {
  SharedChunkRead result;
  result.data = SharedBytes{std::make_shared<int>(0), {}};
  FF_RETURN_IF_ERROR(impl_->read_committed(id, offset, length, mode, result, [&](uint64_t count) -> Result<std::byte*> {
    if (count == 0) return static_cast<std::byte*>(nullptr);
    // A 4 KiB-aligned buffer the caller keeps (whole crc segments are DMA'd straight into it).
    // NOTE: recycled from the pool, so a 1 MiB read no longer faults in and zeroes 256 fresh pages.
    std::shared_ptr<std::byte> buffer = impl_->read_buffers->acquire(count);
    if (buffer == nullptr)
      return resource_exhausted("chunk {}: cannot allocate a {} byte read buffer", id.to_string(), count);
    result.data = SharedBytes{buffer, std::span<const std::byte>(buffer.get(), count)};
    return buffer.get();
  }));
  return result;
}

Result<ChunkRead> ChunkEngine::read(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) {
  ChunkRead result;
  FF_RETURN_IF_ERROR(impl_->read_committed(id, offset, length, mode, result, [&](uint64_t count) -> Result<std::byte*> {
    result.data.resize(count);
    return result.data.data();
  }));
  return result;
}

Result<LocalChunkRead> ChunkEngine::locate(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) {
  LocalChunkRead result;
  Impl& impl = *impl_;
  FF_RETURN_IF_ERROR(
      impl.with_committed(id, offset, length, mode, result, [&](const VersionRecord& committed, uint64_t count) {
        impl.locates.fetch_add(1, std::memory_order_relaxed);
        if (count == 0) return Status::ok();
        const uint64_t segment = impl.options.crc_segment_bytes;
        const uint64_t first = align_down(offset, segment);
        const uint64_t last = std::min(align_up(offset + count, segment), committed.length);
        if (committed.segment_crcs.size() < (last + segment - 1) / segment) {
          return data_loss("chunk {} on target {}: version {} has {} segment CRCs for {} bytes", id.to_string(),
                           impl.options.directory, committed.version, committed.segment_crcs.size(), committed.length);
        }
        const BlockClass& block_class = *impl.classes[committed.location.block_class];
        LocalExtent extent{.path = block_class.path,
                           .device = block_class.device,
                           .inode = block_class.inode,
                           .file_offset = impl.file_offset(committed.location, first),
                           .position = first,
                           .verify_bytes = last - first,
                           .skip = offset - first,
                           .count = count,
                           .segment_bytes = segment,
                           .segment_crcs = {}};
        extent.stamps = impl.stamps->path();
        extent.segment_crcs.assign(
            committed.segment_crcs.begin() + static_cast<ptrdiff_t>(first / segment),
            committed.segment_crcs.begin() + static_cast<ptrdiff_t>((last + segment - 1) / segment));
        result.extent = std::move(extent);
        return Status::ok();
      }));
  return result;
}

void ChunkEngine::set_local_read_lease(int64_t until_monotonic_ns) { impl_->stamps->set_lease(until_monotonic_ns); }
void ChunkEngine::local_reads_changed() { impl_->stamps->bump_all(); }

// The checks every update passes before it is previewed or stored: a version, a full replacement
// from offset 0, and room in the largest block class.
static Status check_update(const ChunkUpdate& update, uint64_t max_bytes) {
  const ChunkId& id = update.id;
  if (update.version == 0) return invalid_argument("chunk {}: update version 0 (versions start at 1)", id.to_string());
  if (update.full_replacement && update.offset != 0) {
    return invalid_argument("chunk {}: full replacement at offset {} (must be 0)", id.to_string(), update.offset);
  }
  if (update.offset > max_bytes || update.data.size() > max_bytes - update.offset) {
    return oversize("chunk {}: update of {} bytes at offset {} exceeds the largest chunk, {} bytes", id.to_string(),
                    update.data.size(), update.offset, max_bytes);
  }
  return Status::ok();
}

// An update must create the version after the committed one, and may only repeat a pending one.
static Status check_update_version(const ChunkUpdate& update, const ChunkRecord& record) {
  const ChunkId& id = update.id;
  const VersionRecord& committed = record.committed;
  if (update.version != committed.version + 1) {
    return version_mismatch("chunk {}: update creates version {}, but the committed version is {} (expected {})",
                            id.to_string(), update.version, committed.version, committed.version + 1);
  }
  if (record.pending.present() && record.pending.version != update.version) {
    return version_mismatch("chunk {}: update creates version {}, but version {} is pending", id.to_string(),
                            update.version, record.pending.version);
  }
  return Status::ok();
}

Result<ChunkMeta> ChunkEngine::preview_pending(const ChunkUpdate& update) {
  Impl& impl = *impl_;
  const ChunkId& id = update.id;
  FF_RETURN_IF_ERROR(check_update(update, impl.options.max_block_bytes));
  // Shared read lock: the committed bytes read below are not changed under it (a patch is applied in
  // place with readers kept out). The caller serialises updates of the chunk (the service's lock).
  std::shared_lock read_lock(impl.read_locks[Impl::stripe(id)]);
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> loaded, impl.load(id));
  ChunkRecord record = loaded.value_or(ChunkRecord{});
  const VersionRecord& committed = record.committed;
  FF_RETURN_IF_ERROR(check_update_version(update, record));
  ChunkMeta meta = loaded ? chunk_internal::to_meta(id, record) : ChunkMeta{.id = id};
  meta.pending_version = update.version;
  const uint64_t update_end = update.offset + update.data.size();
  const uint64_t old_length = committed.present() ? committed.length : 0;
  if (update.full_replacement || (update.offset == 0 && update_end >= old_length)) {
    meta.pending_length = update.data.size();
    meta.pending_crc32c = crc32c(update.data);
    return meta;
  }
  // A committed patch still to apply: its bytes are read from the record below (an inline one) or not at all.
  if (committed.patch.location.valid()) {
    return unimplemented("chunk {}: committed version {} has a patch block still to apply", id.to_string(),
                         committed.version);
  }
  if (update.offset > old_length) {
    return unimplemented("chunk {}: update at {} leaves a hole after the committed length {}", id.to_string(),
                         update.offset, old_length);
  }
  if (update.offset == old_length) {
    meta.pending_length = update_end;
    meta.pending_crc32c = crc32c_extend(committed.crc32c, update.data);
    return meta;
  }
  // An overwrite inside the committed version (possibly past its end): the segment CRCs it touches are
  // recomputed over the committed bytes overlaid with the update; the whole CRC is folded from them.
  const uint64_t segment = impl.options.crc_segment_bytes;
  const uint64_t new_length = std::max(old_length, update_end);
  const uint64_t from = align_down(update.offset, segment);
  const uint64_t to = std::min(align_up(update_end, segment), new_length);
  std::vector<uint32_t> segments = committed.segment_crcs;
  segments.resize((new_length + segment - 1) / segment, 0);
  std::vector<std::byte> bytes;
  std::optional<IoContextPool::Lease> context;
  for (uint64_t start = from; start < to; start += segment) {
    const uint64_t end = std::min(start + segment, new_length);
    const bool covered = update.offset <= start && update_end >= end;
    if (covered) {
      segments[start / segment] = crc32c(update.data.subspan(start - update.offset, std::min(end, update_end) - start));
      continue;
    }
    // Partly covered (the first or the last segment): the committed bytes of it, overlaid.
    bytes.assign(end - start, std::byte{0});
    const uint64_t old_end = std::min(end, old_length);
    const PatchRecord& patch = committed.patch;
    if (start < old_end && patch.present() && start >= patch.offset && start < patch.offset + patch.length) {
      // Inside the inline patch not applied yet (whole segments: it starts and ends on segment boundaries or
      // at the version's end): the committed bytes are the patch's.
      if (patch.bytes.size() != patch.length || old_end > patch.offset + patch.length) {
        return data_loss("chunk {} on target {}: inline patch of version {} has {} bytes for [{}, {})", id.to_string(),
                         impl.options.directory, committed.version, patch.bytes.size(), patch.offset,
                         patch.offset + patch.length);
      }
      std::memcpy(bytes.data(), patch.bytes.data() + (start - patch.offset), old_end - start);
    } else if (start < old_end) {
      if (!context) {
        FF_ASSIGN_OR_RETURN(IoContextPool::Lease lease, impl.io->borrow());
        context.emplace(std::move(lease));
      }
      FF_RETURN_IF_ERROR(impl.read_version(**context, id, committed, start, bytes.data(), old_end - start));
    }
    const uint64_t copy_from = std::max(start, update.offset);
    const uint64_t copy_to = std::min(end, update_end);
    if (copy_from < copy_to) {
      std::memcpy(bytes.data() + (copy_from - start), update.data.data() + (copy_from - update.offset),
                  copy_to - copy_from);
    }
    segments[start / segment] = crc32c(bytes);
  }
  meta.pending_length = new_length;
  meta.pending_crc32c =
      segments.empty() ? 0 : crc32c_fold(segments, segment, new_length - (segments.size() - 1) * segment);
  return meta;
}

Status ChunkEngine::put_pending(const ChunkUpdate& update) {
  Impl& impl = *impl_;
  FF_RETURN_IF_ERROR(impl.check_writable());
  const ChunkId& id = update.id;
  const uint64_t max_bytes = impl.options.max_block_bytes;
  FF_RETURN_IF_ERROR(check_update(update, max_bytes));
  const size_t stripe = Impl::stripe(id);
  std::lock_guard write_lock(impl.write_locks[stripe]);
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> loaded, impl.load(id));
  ChunkRecord record = loaded.value_or(ChunkRecord{});
  // A committed patch the settler has not applied yet: a small overwrite near it takes it in (the new
  // version's patch covers both, so the block is not written now: docs/fs-chunk-engine.md, "Merged patches");
  // anything else applies it first.
  const bool merge = record.committed.patch.present() && impl.mergeable_patch(update, record.committed);
  if (record.committed.patch.present() && !merge) {
    // Not applied yet (or it could not be: an I/O error): apply it now, after making its commit batch
    // durable (it may have been written lazily).
    FF_RETURN_IF_ERROR(impl.ensure_durable(impl.ticket_of(id)));
    std::unique_lock readers(impl.read_locks[stripe]);
    FF_RETURN_IF_ERROR(impl.settle_patch(id, record));
    impl.patches_settled_by_updates.fetch_add(1, std::memory_order_relaxed);
  }
  const VersionRecord& committed = record.committed;
  FF_RETURN_IF_ERROR(check_update_version(update, record));
  const uint64_t update_end = update.offset + update.data.size();
  const uint64_t new_length = update.full_replacement ? update.data.size() : std::max(committed.length, update_end);
  const bool in_place = !update.full_replacement && committed.present() && committed.location.valid() &&
                        update.offset >= committed.length && new_length <= impl.block_bytes(committed.location);

  // A small overwrite inside the committed version: only the crc segments it touches are written, into
  // a patch block; the pending version shares the committed block (see PatchRecord). A merged patch spans
  // the committed patch too.
  const uint64_t segment = impl.options.crc_segment_bytes;
  uint64_t patch_from = align_down(update.offset, segment);
  uint64_t patch_to = std::min(align_up(update_end, segment), new_length);
  if (merge) {
    patch_from = std::min(patch_from, committed.patch.offset);
    patch_to = std::max(patch_to, committed.patch.offset + committed.patch.length);
  }
  const bool patched = merge || impl.patchable(update, committed, new_length, patch_from, patch_to);

  FF_ASSIGN_OR_RETURN(IoContextPool::Lease context, impl.io->borrow());
  CrcState crc;
  BlockLocation target;
  PatchRecord patch;
  Status status;
  if (patched) {
    target = committed.location;
    if (patch_to - patch_from > impl.options.inline_patch_bytes) {
      FF_ASSIGN_OR_RETURN(patch.location, impl.allocate(patch_to - patch_from));
    }
    patch.offset = patch_from;
    patch.length = patch_to - patch_from;
    status =
        impl.write_patch(*context, id, committed, patch_from, patch_to, new_length, update.offset, update.data,
                         patch.location, &patch.bytes, crc.segments, crc.whole, merge ? &committed.patch : nullptr);
  } else if (in_place) {
    // Only bytes beyond the committed length change; the committed version's bytes, length and CRCs stay.
    target = committed.location;
    crc.length = committed.length;
    crc.whole = committed.crc32c;
    crc.segments = committed.segment_crcs;
    status = impl.write_version(*context, id, target, align_down(committed.length, kIoAlignment), new_length,
                                &committed, committed.length, /*verify_old=*/false, update.offset, update.data, crc);
  } else {
    if (new_length > 0) {
      // NOTE: placing the version in a block of the file's chunk size (when the caller says it) lets
      // later appends take the in-place path instead of copying into a bigger block each time.
      const uint64_t capacity = std::max(new_length, std::min(update.chunk_size, max_bytes));
      FF_ASSIGN_OR_RETURN(target, impl.allocate(capacity));
    }
    const VersionRecord* old = update.full_replacement || !committed.present() ? nullptr : &committed;
    status = impl.write_version(*context, id, target, 0, new_length, old, old != nullptr ? committed.length : 0,
                                /*verify_old=*/true, update.full_replacement ? 0 : update.offset, update.data, crc);
  }
  if (status.is_ok()) status = impl.hook(ChunkFaultPoint::kAfterDataWrite, id);
  const BlockLocation replaced_pending = record.pending.location;
  const BlockLocation replaced_patch = record.pending.patch.location;
  if (status.is_ok()) {
    record.pending =
        VersionRecord{update.version, new_length, crc.whole, target, std::move(crc.segments), std::move(patch)};
    record.chain_version = update.chain_version;
    rocksdb::WriteBatch batch;
    batch.Put(chunk_internal::chunk_key(id), chunk_internal::encode(record));
    // Deferring the sync is only safe when no block is released below: a crash could bring back the
    // record that references it.
    const bool sync = !update.defer_metadata_sync || replaced_pending.valid() || replaced_patch.valid();
    status = impl.write_batch(batch, id, sync);
  }
  if (!status.is_ok()) {
    if (patched) {
      impl.release(patch.location);
    } else if (!in_place) {
      impl.release(target);
    }
    return status;
  }
  // A replaced pending version is never read, so its block is released without draining readers.
  if (replaced_pending.valid() && replaced_pending != target && replaced_pending != committed.location) {
    impl.release(replaced_pending);
  }
  impl.release(replaced_patch);
  impl.writes.fetch_add(1, std::memory_order_relaxed);
  if (in_place) impl.inplace_appends.fetch_add(1, std::memory_order_relaxed);
  if (patched) impl.patched_writes.fetch_add(1, std::memory_order_relaxed);
  if (merge) impl.merged_patches.fetch_add(1, std::memory_order_relaxed);
  return impl.hook(ChunkFaultPoint::kAfterPendingBatch, id);
}

Status ChunkEngine::commit(const ChunkId& id, uint32_t version) {
  FF_RETURN_IF_ERROR(impl_->check_writable());
  return impl_->commit(id, version, /*sync=*/true);
}

Status ChunkEngine::commit_lazily(const ChunkId& id, uint32_t version) {
  FF_RETURN_IF_ERROR(impl_->check_writable());
  return impl_->commit(id, version, /*sync=*/!impl_->options.lazy_commits);
}

Status ChunkEngine::Impl::commit(const ChunkId& id, uint32_t version, bool sync) {
  Impl& impl = *this;
  const size_t stripe_index = Impl::stripe(id);
  std::lock_guard write_lock(impl.write_locks[stripe_index]);
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> loaded, impl.load(id));
  if (!loaded) {
    return version_mismatch("commit of chunk {} version {}: the chunk does not exist on target {}", id.to_string(),
                            version, impl.options.directory);
  }
  ChunkRecord record = std::move(*loaded);
  if (record.pending.present() && record.pending.version == version) {
    FF_RETURN_IF_ERROR(impl.hook(ChunkFaultPoint::kBeforeCommitBatch, id));
    const BlockLocation old = record.committed.location;
    const bool patched = record.pending.patch.present();
    // A patched version: a reader that loads the record after the commit batch finds the committed
    // patch and applies it (settle_now) before reading the block; one that loaded it before reads the
    // old version's bytes, which stay untouched until the patch is applied with readers kept out.
    record.committed = std::move(record.pending);
    record.pending = VersionRecord{};
    rocksdb::WriteBatch batch;
    batch.Put(chunk_internal::chunk_key(id), chunk_internal::encode(record));
    // NOTE: a lazy commit (sync false) is an unsynced batch: durable with the next synced batch or WAL
    // sync of this target. Lost in a crash before that, the version is pending again, which the storage
    // service treats like a crash before the commit (docs/fs.md, "Lazy commits").
    uint64_t ticket = 0;
    FF_RETURN_IF_ERROR(impl.write_batch(batch, id, sync, &ticket));
    impl.commits.fetch_add(1, std::memory_order_relaxed);
    if (!sync && impl.write_options.sync) impl.lazy_commits.fetch_add(1, std::memory_order_relaxed);
    const Status hook_status = impl.hook(ChunkFaultPoint::kAfterCommitBatch, id);
    if (patched) {
      if (impl.settler.joinable()) {
        impl.queue_settle(id, ticket);
        return hook_status;
      }
      FF_RETURN_IF_ERROR(impl.ensure_durable(ticket));
      std::unique_lock readers(impl.read_locks[stripe_index]);
      FF_RETURN_IF_ERROR(impl.settle_patch(id, record));
      return hook_status;
    }
    if (old.valid() && old != record.committed.location) {
      impl.drain_readers(stripe_index);
      // After a lazy commit the old block stays referenced until the batch is durable.
      if (sync || !impl.write_options.sync) {
        impl.release(old);
      } else {
        impl.release_after_sync(old);
      }
    }
    return hook_status;
  }
  if (version != 0 && version == record.committed.version) return Status::ok();  // a retried acknowledgement
  return version_mismatch("commit of chunk {} version {}: committed version is {}, pending version is {}",
                          id.to_string(), version, record.committed.version, record.pending.version);
}

Status ChunkEngine::put_full_replacement(const ChunkId& id, uint32_t version, uint32_t chain_version,
                                         std::span<const std::byte> data) {
  Impl& impl = *impl_;
  FF_RETURN_IF_ERROR(impl.check_writable());
  if (version == 0) return invalid_argument("chunk {}: full replacement with version 0", id.to_string());
  if (data.size() > impl.options.max_block_bytes) {
    return oversize("chunk {}: full replacement of {} bytes exceeds the largest chunk, {} bytes", id.to_string(),
                    data.size(), impl.options.max_block_bytes);
  }
  const size_t stripe = Impl::stripe(id);
  std::lock_guard write_lock(impl.write_locks[stripe]);
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> loaded, impl.load(id));
  ChunkRecord record = loaded.value_or(ChunkRecord{});
  BlockLocation target;
  if (!data.empty()) {
    FF_ASSIGN_OR_RETURN(target, impl.allocate(data.size()));
  }
  CrcState crc;
  Status status;
  {
    auto context = impl.io->borrow();
    status = context.is_ok()
                 ? impl.write_version(**context, id, target, 0, data.size(), nullptr, 0, false, 0, data, crc)
                 : context.status();
  }
  if (status.is_ok()) status = impl.hook(ChunkFaultPoint::kAfterDataWrite, id);
  const BlockLocation old_committed = record.committed.location;
  const BlockLocation old_pending = record.pending.location;
  const BlockLocation old_committed_patch = record.committed.patch.location;
  const BlockLocation old_pending_patch = record.pending.patch.location;
  if (status.is_ok()) {
    record.committed = VersionRecord{version, data.size(), crc.whole, target, std::move(crc.segments)};
    record.pending = VersionRecord{};
    record.chain_version = chain_version;
    rocksdb::WriteBatch batch;
    batch.Put(chunk_internal::chunk_key(id), chunk_internal::encode(record));
    status = impl.write_batch(batch, id);
  }
  if (!status.is_ok()) {
    impl.release(target);
    return status;
  }
  impl.writes.fetch_add(1, std::memory_order_relaxed);
  const Status hook_status = impl.hook(ChunkFaultPoint::kAfterCommitBatch, id);
  impl.drain_readers(stripe);
  impl.release(old_committed);
  if (old_pending != old_committed) impl.release(old_pending);
  impl.release(old_committed_patch);
  impl.release(old_pending_patch);
  return hook_status;
}

Status ChunkEngine::abort_pending(const ChunkId& id, uint32_t version) {
  Impl& impl = *impl_;
  FF_RETURN_IF_ERROR(impl.check_writable());
  std::lock_guard write_lock(impl.write_locks[Impl::stripe(id)]);
  FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> loaded, impl.load(id));
  // Nothing pending, or another version pending: nothing to abort (a retried or stale abort), as in
  // MemChunkStore.
  if (!loaded || !loaded->pending.present() || loaded->pending.version != version) return Status::ok();
  ChunkRecord record = std::move(*loaded);
  const BlockLocation pending = record.pending.location;
  const BlockLocation pending_patch = record.pending.patch.location;
  record.pending = VersionRecord{};
  rocksdb::WriteBatch batch;
  if (record.committed.present()) {
    batch.Put(chunk_internal::chunk_key(id), chunk_internal::encode(record));
  } else {
    batch.Delete(chunk_internal::chunk_key(id));
  }
  FF_RETURN_IF_ERROR(impl.write_batch(batch, id));
  if (pending != record.committed.location) impl.release(pending);
  impl.release(pending_patch);
  return Status::ok();
}

Result<uint64_t> ChunkEngine::remove_range(const ChunkId& begin, const ChunkId& end) {
  Impl& impl = *impl_;
  FF_RETURN_IF_ERROR(impl.check_writable());
  uint64_t removed = 0;
  if (!(begin < end)) return removed;
  const std::string end_key = chunk_internal::chunk_key(end);
  std::string next_key = chunk_internal::chunk_key(begin);
  for (;;) {
    std::vector<ChunkId> ids;
    {
      std::unique_ptr<rocksdb::Iterator> iterator(impl.db->NewIterator(rocksdb::ReadOptions()));
      for (iterator->Seek(next_key);
           iterator->Valid() && iterator->key().compare(end_key) < 0 && ids.size() < kRemoveBatch; iterator->Next()) {
        FF_ASSIGN_OR_RETURN(ChunkId id, chunk_internal::decode_chunk_key(iterator->key().ToStringView()));
        ids.push_back(id);
      }
      FF_RETURN_IF_ERROR(rocks_status(iterator->status(), "scan chunk metadata"));
    }
    if (ids.empty()) break;
    next_key = chunk_internal::chunk_key(ids.back()) + std::string(1, '\0');  // the smallest key after the last
    // Lock the stripes in ascending order (every other path holds at most one), then re-read under them.
    std::vector<size_t> stripes;
    for (const ChunkId& id : ids) stripes.push_back(Impl::stripe(id));
    std::sort(stripes.begin(), stripes.end());
    stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
    std::vector<std::unique_lock<Impl::StripeLock>> locks;
    locks.reserve(stripes.size());
    for (size_t stripe : stripes) locks.emplace_back(impl.write_locks[stripe]);
    rocksdb::WriteBatch batch;
    std::vector<BlockLocation> blocks;
    uint64_t batch_removed = 0;
    for (const ChunkId& id : ids) {
      FF_ASSIGN_OR_RETURN(std::optional<ChunkRecord> record, impl.load(id));
      if (!record) continue;
      batch.Delete(chunk_internal::chunk_key(id));
      blocks.push_back(record->committed.location);
      if (record->pending.location != record->committed.location) blocks.push_back(record->pending.location);
      blocks.push_back(record->committed.patch.location);
      blocks.push_back(record->pending.patch.location);
      ++batch_removed;
    }
    if (impl.group_sync()) {
      FF_RETURN_IF_ERROR(impl.write_unsynced(impl.write_options, batch, "remove chunk metadata"));
    } else {
      FF_RETURN_IF_ERROR(rocks_status(impl.db->Write(impl.write_options, &batch), "remove chunk metadata"));
    }
    for (size_t stripe : stripes) impl.drain_readers(stripe);
    for (BlockLocation location : blocks) impl.release(location);
    removed += batch_removed;
  }
  return removed;
}

Result<std::vector<ChunkMeta>> ChunkEngine::list(const ChunkId& begin, const ChunkId& end, uint64_t limit) {
  std::vector<ChunkMeta> result;
  if (!(begin < end) || limit == 0) return result;
  const std::string end_key = chunk_internal::chunk_key(end);
  std::unique_ptr<rocksdb::Iterator> iterator(impl_->db->NewIterator(rocksdb::ReadOptions()));
  for (iterator->Seek(chunk_internal::chunk_key(begin));
       iterator->Valid() && iterator->key().compare(end_key) < 0 && result.size() < limit; iterator->Next()) {
    FF_ASSIGN_OR_RETURN(ChunkId id, chunk_internal::decode_chunk_key(iterator->key().ToStringView()));
    FF_ASSIGN_OR_RETURN(ChunkRecord record, chunk_internal::decode(id, iterator->value().ToStringView()));
    result.push_back(chunk_internal::to_meta(id, record));
  }
  FF_RETURN_IF_ERROR(rocks_status(iterator->status(), "list chunk metadata"));
  return result;
}

Result<std::optional<ChunkStore::ScrubCursor>> ChunkEngine::load_scrub_cursor() {
  std::string stored;
  const rocksdb::Status get =
      impl_->db->Get(rocksdb::ReadOptions(),
                     rocksdb::Slice(chunk_internal::kScrubKey.data(), chunk_internal::kScrubKey.size()), &stored);
  if (get.IsNotFound()) return std::optional<ScrubCursor>{};
  FF_RETURN_IF_ERROR(rocks_status(get, "read the scrub record"));
  FF_ASSIGN_OR_RETURN(ScrubCursor cursor, chunk_internal::decode_scrub_cursor(stored));
  return std::optional<ScrubCursor>{cursor};
}

Status ChunkEngine::save_scrub_cursor(const ScrubCursor& cursor) {
  return rocks_status(impl_->db->Put(rocksdb::WriteOptions(),
                                     rocksdb::Slice(chunk_internal::kScrubKey.data(), chunk_internal::kScrubKey.size()),
                                     chunk_internal::encode(cursor)),
                      "write the scrub record");
}

std::optional<ChunkStore::Space> ChunkEngine::space() const {
  struct statvfs info {};
  if (::statvfs(impl_->options.directory.c_str(), &info) != 0) return std::nullopt;
  return Space{.capacity_bytes = static_cast<uint64_t>(info.f_blocks) * info.f_frsize,
               .free_bytes = static_cast<uint64_t>(info.f_bavail) * info.f_frsize,
               .filesystem = static_cast<uint64_t>(info.f_fsid)};
}

Status ChunkEngine::health() const { return impl_->check_writable(); }

Status ChunkEngine::sync() {
  // Committed patches the settler has not applied yet are applied first, so their blocks are freed too.
  std::map<ChunkId, uint64_t> queued;
  {
    std::lock_guard lock(impl_->settle_mutex);
    queued.swap(impl_->to_settle);
  }
  impl_->settle_all(queued);
  for (auto& block_class : impl_->classes) {
    if (::fdatasync(block_class->fd) != 0) return errno_error(errno, fmt::format("fdatasync {}", block_class->path));
  }
  return impl_->flush_deferred();
}

Status ChunkEngine::check_allocator() {
  Impl& impl = *impl_;
  // Hold every write stripe so no update changes metadata or allocator state during the check.
  std::vector<std::unique_lock<Impl::StripeLock>> locks;
  locks.reserve(kLockStripes);
  for (auto& mutex : impl.write_locks) locks.emplace_back(mutex);
  std::vector<std::vector<bool>> referenced(impl.classes.size());
  for (size_t index = 0; index < impl.classes.size(); ++index) {
    std::lock_guard lock(impl.classes[index]->mutex);
    referenced[index].assign(impl.classes[index]->total_blocks, false);
  }
  const auto mark = [&](const ChunkId& id, const VersionRecord& version) -> Status {
    if (!version.present() || !version.location.valid()) return Status::ok();
    const BlockLocation location = version.location;
    if (location.block_class >= referenced.size() || location.block >= referenced[location.block_class].size()) {
      return data_loss("chunk {}: version {} references block {} of class #{}, outside the files", id.to_string(),
                       version.version, location.block, location.block_class);
    }
    if (referenced[location.block_class][location.block]) {
      return data_loss("chunk {}: block {} of class #{} is referenced twice", id.to_string(), location.block,
                       location.block_class);
    }
    referenced[location.block_class][location.block] = true;
    return Status::ok();
  };
  uint64_t chunks = 0;
  FF_RETURN_IF_ERROR(visit_referenced_blocks(impl.db.get(), mark, &chunks));
  {
    // Patch blocks waiting for a synced batch are still in use.
    std::lock_guard lock(impl.deferred_mutex);
    for (BlockLocation location : impl.deferred) {
      if (location.block_class < referenced.size() && location.block < referenced[location.block_class].size()) {
        referenced[location.block_class][location.block] = true;
      }
    }
  }
  for (size_t index = 0; index < impl.classes.size(); ++index) {
    BlockClass& block_class = *impl.classes[index];
    std::lock_guard lock(block_class.mutex);
    uint64_t used = 0;
    for (uint64_t block = 0; block < block_class.total_blocks; ++block) {
      if (block_class.used[block] != referenced[index][block]) {
        return internal_error("block {} of {}: allocator says {}, metadata says {}", block, block_class.path,
                              block_class.used[block] ? "used" : "free", referenced[index][block] ? "used" : "free");
      }
      used += block_class.used[block] ? 1 : 0;
    }
    if (used + block_class.free.size() != block_class.total_blocks) {
      return internal_error("{}: {} used + {} free blocks != {} blocks", block_class.path, used,
                            block_class.free.size(), block_class.total_blocks);
    }
  }
  return Status::ok();
}

ChunkEngineStats ChunkEngine::stats() const {
  ChunkEngineStats stats;
  stats.reads = impl_->reads.load(std::memory_order_relaxed);
  stats.locates = impl_->locates.load(std::memory_order_relaxed);
  stats.read_bytes = impl_->read_bytes.load(std::memory_order_relaxed);
  stats.writes = impl_->writes.load(std::memory_order_relaxed);
  stats.write_bytes = impl_->write_bytes.load(std::memory_order_relaxed);
  stats.zero_copy_write_bytes = impl_->zero_copy_write_bytes.load(std::memory_order_relaxed);
  stats.commits = impl_->commits.load(std::memory_order_relaxed);
  stats.inplace_appends = impl_->inplace_appends.load(std::memory_order_relaxed);
  stats.patched_writes = impl_->patched_writes.load(std::memory_order_relaxed);
  stats.merged_patches = impl_->merged_patches.load(std::memory_order_relaxed);
  stats.corruptions = impl_->corruptions.load(std::memory_order_relaxed);
  stats.synced_batches = impl_->synced_batches.load(std::memory_order_relaxed);
  stats.unsynced_batches = impl_->unsynced_batches.load(std::memory_order_relaxed);
  stats.wal_syncs = impl_->wal_syncs.load(std::memory_order_relaxed);
  stats.dsync_data_writes = impl_->dsync_data_writes.load(std::memory_order_relaxed);
  stats.data_fdatasyncs = impl_->data_fdatasyncs.load(std::memory_order_relaxed);
  stats.lazy_commits = impl_->lazy_commits.load(std::memory_order_relaxed);
  stats.patches_settled = impl_->patches_settled.load(std::memory_order_relaxed);
  stats.patches_settled_by_updates = impl_->patches_settled_by_updates.load(std::memory_order_relaxed);
  stats.rocksdb_wal_file_syncs = impl_->db_statistics->getTickerCount(rocksdb::WAL_FILE_SYNCED);
  stats.rocksdb_writes_by_self = impl_->db_statistics->getTickerCount(rocksdb::WRITE_DONE_BY_SELF);
  stats.rocksdb_writes_by_other = impl_->db_statistics->getTickerCount(rocksdb::WRITE_DONE_BY_OTHER);
  const chunk_internal::ReadBufferPool::Stats pool = impl_->read_buffers->stats();
  stats.read_buffers = pool.acquired;
  stats.read_buffers_reused = pool.reused;
  stats.direct_io = impl_->direct_io;
  stats.io_uring = impl_->io->uring();
  for (const auto& block_class : impl_->classes) {
    std::lock_guard lock(block_class->mutex);
    stats.classes.push_back({block_class->block_bytes, block_class->total_blocks, block_class->free.size()});
  }
  return stats;
}

}  // namespace ff::fs
