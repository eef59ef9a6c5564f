// Local reads (include/ff/fs/local_read.h).
#include "ff/fs/local_read.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "../chunk/io_context.h"
#include "../chunk/read_buffer_pool.h"
#include "ff/common/log.h"
#include "ff/fs/crc32c.h"

namespace ff::fs {

namespace {

using chunk_internal::align_up;
using chunk_internal::kIoAlignment;

// Open data files by path: each opened once (O_DIRECT where allowed), checked against the device and
// inode the target named; reopened when a target names another file at the same path. A descriptor
// closes when the last reader holding it is done (a replaced or evicted entry may still be in a read).
class OpenFiles {
 public:
  struct File {
    int fd = -1;
    uint64_t device = 0;
    uint64_t inode = 0;
    ~File() {
      if (fd >= 0) ::close(fd);
    }
  };

  Result<std::shared_ptr<const File>> open(const LocalExtent& extent) {
    {
      std::lock_guard lock(mutex_);
      auto found = files_.find(extent.path);
      if (found != files_.end() && found->second->device == extent.device && found->second->inode == extent.inode) {
        return std::shared_ptr<const File>(found->second);
      }
    }
    auto file = std::make_shared<File>();
    file->fd = ::open(extent.path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (file->fd < 0 && errno == EINVAL)
      file->fd = ::open(extent.path.c_str(), O_RDONLY | O_CLOEXEC);  // no O_DIRECT there
    if (file->fd < 0) return unavailable("local read: cannot open {}: {}", extent.path, std::strerror(errno));
    struct stat info {};
    if (::fstat(file->fd, &info) != 0 || static_cast<uint64_t>(info.st_dev) != extent.device ||
        static_cast<uint64_t>(info.st_ino) != extent.inode) {
      return unavailable("local read: {} here is device {} inode {}, the target named device {} inode {}", extent.path,
                         info.st_dev, info.st_ino, extent.device, extent.inode);
    }
    file->device = extent.device;
    file->inode = extent.inode;
    std::lock_guard lock(mutex_);
    // A bound, for processes that see many targets come and go (tests): drop one entry (the first path).
    if (files_.size() >= kMaxFiles && !files_.contains(extent.path)) files_.erase(files_.begin());
    files_[extent.path] = file;
    return std::shared_ptr<const File>(file);
  }

 private:
  static constexpr size_t kMaxFiles = 256;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<File>> files_;  // guarded by mutex_
};

OpenFiles& open_files() {
  static OpenFiles* files = new OpenFiles();  // never destroyed: reads may run on threads at exit
  return *files;
}

// This thread's ring for reads in pieces, set up at its first such read; null where io_uring is refused (then a
// read is one pread). A ring whose wait timed out may still have reads in flight into the buffers it was given: it
// and those buffers are kept forever (never reused or freed), and the thread gets a new ring.
chunk_internal::IoContext* thread_ring() {
  thread_local std::unique_ptr<chunk_internal::IoContext> ring;
  thread_local bool refused = false;
  if (ring != nullptr && !ring->usable()) (void)ring.release();  // leaked on purpose, see above
  if (ring == nullptr && !refused) {
    chunk_internal::IoSettings settings;
    settings.queue_depth = 16;
    settings.buffer_bytes = chunk_internal::kIoAlignment;  // the ring's own buffer is not used
    settings.timeout_ms = 30000;
    bool uring_ok = false;
    Result<std::unique_ptr<chunk_internal::IoContext>> created = chunk_internal::IoContext::create(settings, &uring_ok);
    if (created.is_ok() && uring_ok) {
      ring = std::move(*created);
    } else {
      refused = true;
    }
  }
  return ring.get();
}

// Buffers that a timed-out ring may still read into: never handed back to the pool.
void abandon(std::shared_ptr<std::byte> buffer) {
  static std::mutex mutex;
  static auto* abandoned = new std::vector<std::shared_ptr<std::byte>>();
  std::lock_guard lock(mutex);
  abandoned->push_back(std::move(buffer));
}

// What a read does with each piece of the extent as soon as it is in memory: the CRC32C of its segments, then (for a
// read staged for the caller's buffer) its copy there, 64 KiB or more at a time so that the copy reads what the CRC
// just brought into cache.
struct PieceChecker {
  const std::byte* bytes;
  uint64_t verify_bytes;
  uint64_t segment;
  std::vector<uint32_t>* crcs;
  std::byte* copy_to;                                      // null: no copy
  const std::vector<chunk_internal::IoOp>* ops = nullptr;  // reads in pieces: the pieces, into `bytes`

  // IoContext::run's completion: checks the op's piece.
  static Status landed(void* context, size_t index) {
    const auto& self = *static_cast<const PieceChecker*>(context);
    const chunk_internal::IoOp& op = (*self.ops)[index];
    const auto start = static_cast<uint64_t>(op.data - self.bytes);
    self.check(start, start + op.length);
    return Status::ok();
  }

  void check(uint64_t start, uint64_t end) const {
    end = std::min(end, verify_bytes);
    const uint64_t group = std::max<uint64_t>(segment, 64 << 10) / segment * segment;
    for (uint64_t from = start; from < end; from += group) {
      const uint64_t to = std::min(from + group, end);
      for (uint64_t at = from; at < to; at += segment) {
        (*crcs)[at / segment] = crc32c(std::span<const std::byte>(bytes + at, std::min(segment, to - at)));
      }
      if (copy_to != nullptr) std::memcpy(copy_to + from, bytes + from, to - from);
    }
  }
};

// The piece length for a read of `read_bytes` with crc segments of `segment` bytes: `piece_bytes` rounded up to whole
// segments and 4 KiB; 0 (one read) when that is not shorter than the read.
uint64_t piece_length(uint64_t piece_bytes, uint64_t segment, uint64_t read_bytes) {
  if (piece_bytes == 0) return 0;
  const uint64_t unit = std::lcm(segment, chunk_internal::kIoAlignment);
  const uint64_t piece = align_up(piece_bytes, unit);
  return piece < read_bytes ? piece : 0;
}

// An extent whose numbers add up: whole segments from a segment boundary, the answer's bytes inside them, one CRC each.
Status check_extent(const LocalExtent& extent) {
  const uint64_t segment = extent.segment_bytes;
  if (segment == 0 || extent.skip + extent.count > extent.verify_bytes || extent.position % segment != 0 ||
      extent.segment_crcs.size() != (extent.verify_bytes + segment - 1) / segment) {
    return invalid_argument(
        "local read of {}: extent does not add up (position {}, {} bytes to verify, skip {}, "
        "count {}, segment {} bytes, {} segment CRCs)",
        extent.path, extent.position, extent.verify_bytes, extent.skip, extent.count, segment,
        extent.segment_crcs.size());
  }
  return Status::ok();
}

// pread of up to `room` bytes of fd at `offset` into `bytes` until at least `need` are in (O_DIRECT: offset, room and
// bytes 4 KiB-aligned; need <= room, the file may end between the two).
Status pread_all(int fd, std::byte* bytes, uint64_t need, uint64_t room, uint64_t offset, const std::string& path) {
  uint64_t done = 0;
  while (done < need) {
    const ssize_t n = ::pread(fd, bytes + done, room - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(errno, fmt::format("local read of {} at {}", path, offset + done));
    if (n == 0) {
      return io_error("local read of {}: end of file at {}, {} bytes short", path, offset + done, need - done);
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::ok();
}

std::string read_boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

}  // namespace

const std::string& this_host_id() {
  static const std::string id = read_boot_id();
  return id;
}

bool reads_into(const LocalExtent& extent, std::span<const std::byte> into) {
  return extent.skip == 0 && align_up(extent.verify_bytes, kIoAlignment) <= into.size() &&
         reinterpret_cast<uintptr_t>(into.data()) % kIoAlignment == 0;
}

Result<LocalBytes> read_local_bytes(const LocalExtent& extent, uint64_t piece_bytes) {
  return read_local_bytes(extent, {}, piece_bytes);
}

Result<LocalBytes> read_local_bytes(const LocalExtent& extent, std::span<std::byte> into, uint64_t piece_bytes) {
  FF_RETURN_IF_ERROR(check_extent(extent));
  const uint64_t segment = extent.segment_bytes;
  FF_ASSIGN_OR_RETURN(std::shared_ptr<const OpenFiles::File> file, open_files().open(extent));
  const int fd = file->fd;
  // O_DIRECT wants the file offset, length and buffer 4 KiB-aligned; the block's room past the
  // version's end (blocks are whole 64 KiB or more) absorbs the rounding.
  const uint64_t read_bytes = align_up(extent.verify_bytes, kIoAlignment);
  // NOTE: recycled through a pool, as the engine's read buffers are: a fresh 1 MiB buffer per read costs
  // page faults, and O_DIRECT then pins pages not yet mapped (gup's slow path was 5 % of all CPU under
  // FUSE reads). The pool's buffers of 1 MiB and more are on huge pages, so the disk read lands there even for a
  // caller's buffer, into which each 64 KiB of segments is copied right after its CRC, while it is in cache: on the
  // 2-core VM a 1 MiB read with its CRC took 601 us that way against 870 us read into the caller's 4 KiB pages
  // (bench-tools/fs_read_touch_probe; docs/fs-client.md, "What a read at P = 1 costs"). Without huge pages the read
  // goes straight into the caller's buffer, as the copy would buy nothing.
  LocalBytes result;
  result.extent = extent;
  const bool into_caller = reads_into(extent, into);
  const bool staged =
      into_caller && read_bytes >= chunk_internal::ReadBufferPool::kHugeFrom && chunk_internal::huge_pages_available();
  std::shared_ptr<std::byte> staging;  // the disk read's buffer unless it reads straight into the caller's
  if (!into_caller || staged) {
    staging = chunk_internal::process_io_buffers().acquire(read_bytes);
    if (staging == nullptr) {
      return resource_exhausted("local read of {}: no memory for {} bytes", extent.path, read_bytes);
    }
  }
  // Into the caller's buffer, the result owns nothing.
  result.buffer = into_caller ? std::shared_ptr<std::byte>(std::shared_ptr<std::byte>{}, into.data()) : staging;
  std::byte* bytes = staging ? staging.get() : into.data();
  result.crcs.resize(extent.segment_crcs.size());
  PieceChecker checker{bytes, extent.verify_bytes, segment, &result.crcs, staged ? into.data() : nullptr};
  // Into a buffer of its own (staging), a read longer than a piece goes to the disk as pieces all in flight at once,
  // each checked (and copied) as soon as it lands while the disk moves the rest, so that only the last piece's pass
  // over the bytes follows the disk. Straight into the caller's buffer it stays one read: a ring that timed out could
  // still write into that buffer after the caller has it back.
  const uint64_t piece = staging ? piece_length(piece_bytes, segment, read_bytes) : 0;
  chunk_internal::IoContext* ring = piece > 0 ? thread_ring() : nullptr;
  if (ring != nullptr) {
    std::vector<chunk_internal::IoOp> ops;
    ops.reserve((read_bytes + piece - 1) / piece);
    for (uint64_t start = 0; start < read_bytes; start += piece) {
      ops.push_back({.fd = fd,
                     .offset = extent.file_offset + start,
                     .data = bytes + start,
                     .length = std::min(piece, read_bytes - start)});
    }
    checker.ops = &ops;
    Status status = ring->run(ops, {.context = &checker, .function = &PieceChecker::landed});
    if (!ring->usable()) abandon(staging);
    if (!status.is_ok()) {
      return Status(status.code(), fmt::format("local read of {}: {}", extent.path, status.message()));
    }
    return result;
  }
  FF_RETURN_IF_ERROR(pread_all(fd, bytes, extent.verify_bytes, read_bytes, extent.file_offset, extent.path));
  checker.check(0, extent.verify_bytes);
  return result;
}

bool LocalBytes::same_place(const LocalExtent& other) const {
  return extent.path == other.path && extent.device == other.device && extent.inode == other.inode &&
         extent.file_offset == other.file_offset && extent.position == other.position &&
         extent.verify_bytes == other.verify_bytes && extent.skip == other.skip && extent.count == other.count &&
         extent.segment_bytes == other.segment_bytes;
}

Result<std::optional<LocalExtent>> range_of_whole(const LocalExtent& whole, uint64_t offset, uint64_t length) {
  const uint64_t segment = whole.segment_bytes;
  const uint64_t end = whole.verify_bytes;
  if (whole.position != 0 || whole.skip != 0 || whole.count != end || segment == 0 ||
      whole.segment_crcs.size() != (end + segment - 1) / segment) {
    return invalid_argument(
        "{}: not a whole version's extent (position {}, skip {}, count {}, {} bytes in {} segments of {})", whole.path,
        whole.position, whole.skip, whole.count, end, whole.segment_crcs.size(), segment);
  }
  if (offset >= end || length == 0) return std::optional<LocalExtent>();
  const uint64_t count = std::min(length, end - offset);
  const uint64_t first = offset / segment * segment;
  const uint64_t last = std::min(align_up(offset + count, segment), end);
  LocalExtent range{.path = whole.path,
                    .device = whole.device,
                    .inode = whole.inode,
                    .file_offset = whole.file_offset + first,
                    .position = first,
                    .verify_bytes = last - first,
                    .skip = offset - first,
                    .count = count,
                    .segment_bytes = segment,
                    .segment_crcs = {},
                    .stamps = whole.stamps};
  range.segment_crcs.assign(whole.segment_crcs.begin() + static_cast<ptrdiff_t>(first / segment),
                            whole.segment_crcs.begin() + static_cast<ptrdiff_t>((last + segment - 1) / segment));
  return std::optional<LocalExtent>(std::move(range));
}

Result<SharedBytes> LocalBytes::answer(const LocalExtent& committed) const {
  if (!same_place(committed)) {
    return failed_precondition("local read of {}: read at file offset {} (+{}), the target now names {} at {} (+{})",
                               extent.path, extent.file_offset, extent.verify_bytes, committed.path,
                               committed.file_offset, committed.verify_bytes);
  }
  if (committed.segment_crcs.size() != crcs.size()) {
    return invalid_argument("local read of {}: {} segments read, the answer has {} segment CRCs", extent.path,
                            crcs.size(), committed.segment_crcs.size());
  }
  for (size_t i = 0; i < crcs.size(); ++i) {
    if (crcs[i] != committed.segment_crcs[i]) {
      const uint64_t start = extent.position + i * extent.segment_bytes;
      return data_loss(
          "local read of {}: bytes [{}, {}) of the version (file offset {}) have CRC32C {:#010x}, the "
          "target's committed version {:#010x}",
          extent.path, start, std::min(start + extent.segment_bytes, extent.position + extent.verify_bytes),
          extent.file_offset + i * extent.segment_bytes, crcs[i], committed.segment_crcs[i]);
    }
  }
  return SharedBytes{buffer, std::span<const std::byte>(buffer.get() + extent.skip, extent.count)};
}

struct LocalReadQueue::Impl {
  // One read: its buffer, the bytes moved so far (a short read is sent again for the rest).
  struct Slot {
    uint64_t tag = 0;
    LocalBytes bytes;
    std::shared_ptr<const OpenFiles::File> file;  // open while the read runs
    uint64_t room = 0;                            // the read's length: verify_bytes rounded up to 4 KiB
    uint64_t done = 0;
  };
  uint32_t depth = 0;
  uint32_t timeout_ms = 0;
  io_uring ring{};
  bool ring_set_up = false;
  bool have_ring = false;  // false: pread (refused at set-up, or given up after a timeout)
  // A ring of one thread (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, where the kernel has them): its
  // completions are posted when that thread asks for them, in the system call that submits the next reads, not by a
  // task-work interruption per completion. Only `owner` may submit to it or reap from it.
  bool single_issuer = false;
  std::thread::id owner;
  std::vector<Slot> slots;
  std::vector<uint32_t> free_slots;
  size_t in_ring = 0;           // slots whose read the ring holds
  std::deque<uint32_t> landed;  // slots whose bytes are in, not yet checked and handed back
  std::deque<Done> ready;       // done without the ring (pread, failures), not yet handed back
  bool unsubmitted = false;     // reads prepared since the last submission
  // The files this queue read last, by path (most reads of a queue go to a few targets' files): no trip through the
  // process's table and its mutex for them.
  struct RecentFile {
    std::string path;
    std::shared_ptr<const OpenFiles::File> file;
  };
  static constexpr size_t kRecentFiles = 8;
  std::vector<RecentFile> recent;
  size_t next_recent = 0;

  // Sets the ring up for this thread: one thread's ring where the kernel allows, else a plain one; false where io_uring
  // is refused.
  bool set_up_ring() {
    io_uring_params params{};
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    single_issuer = io_uring_queue_init_params(depth, &ring, &params) == 0;
    ring_set_up = single_issuer || io_uring_queue_init(depth, &ring, 0) == 0;
    owner = std::this_thread::get_id();
    return ring_set_up;
  }

  // Before a submission or a reap on another thread than the last: with nothing in the ring, the queue is this thread's
  // now (a ring of one thread is set up again for it); reads another thread left in the ring fail (a ring of one thread
  // could not reap them here; any ring, so that the rule does not depend on the kernel) and the queue reads with pread.
  void claim_ring() {
    if (!have_ring || owner == std::this_thread::get_id()) return;
    if (in_ring > 0) {
      give_up(failed_precondition("{} reads were submitted on another thread, whose ring only it can reap", in_ring));
      return;
    }
    owner = std::this_thread::get_id();
    if (!single_issuer) return;
    io_uring_queue_exit(&ring);
    have_ring = set_up_ring();
  }

  Result<std::shared_ptr<const OpenFiles::File>> open(const LocalExtent& extent) {
    for (const RecentFile& entry : recent) {
      if (entry.path == extent.path && entry.file->device == extent.device && entry.file->inode == extent.inode) {
        return entry.file;
      }
    }
    FF_ASSIGN_OR_RETURN(std::shared_ptr<const OpenFiles::File> file, open_files().open(extent));
    if (recent.size() < kRecentFiles) {
      recent.push_back(RecentFile{extent.path, file});
    } else {
      recent[next_recent++ % kRecentFiles] = RecentFile{extent.path, file};
    }
    return file;
  }

  void prepare(uint32_t index) {
    Slot& slot = slots[index];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    FF_ASSERT(sqe != nullptr, "local read queue of depth {} full with {} reads in the ring", depth, in_ring);
    io_uring_prep_read(sqe, slot.file->fd, slot.bytes.buffer.get() + slot.done,
                       static_cast<unsigned>(slot.room - slot.done), slot.bytes.extent.file_offset + slot.done);
    io_uring_sqe_set_data64(sqe, index);
    unsubmitted = true;
  }

  // The CRC32C of each segment of a read whose bytes are all in.
  static void compute_crcs(LocalBytes& bytes) {
    const LocalExtent& extent = bytes.extent;
    PieceChecker{bytes.buffer.get(), extent.verify_bytes, extent.segment_bytes, &bytes.crcs, nullptr}.check(
        0, extent.verify_bytes);
  }

  Done release(uint32_t index, Status status) {
    Slot& slot = slots[index];
    Done done;
    done.tag = slot.tag;
    if (status.is_ok()) {
      compute_crcs(slot.bytes);
      done.bytes = std::move(slot.bytes);
    } else {
      done.bytes = Status(status.code(), fmt::format("local read of {}: {}", slot.bytes.extent.path, status.message()));
    }
    slot = Slot{};
    free_slots.push_back(index);
    return done;
  }

  // Every completion the ring holds: whole reads land (checked when handed back), short ones go again.
  void drain() {
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      const auto index = static_cast<uint32_t>(io_uring_cqe_get_data64(cqe));
      Slot& slot = slots[index];
      const int res = cqe->res;
      if (res == -EAGAIN || res == -EINTR) {
        prepare(index);
        continue;
      }
      --in_ring;
      if (res < 0) {
        ready.push_back(
            release(index, errno_error(-res, fmt::format("read of {} bytes at file offset {}", slot.room - slot.done,
                                                         slot.bytes.extent.file_offset + slot.done))));
      } else if (res == 0 && slot.done < slot.bytes.extent.verify_bytes) {
        ready.push_back(
            release(index, io_error("end of file at {}, {} bytes short", slot.bytes.extent.file_offset + slot.done,
                                    slot.bytes.extent.verify_bytes - slot.done)));
      } else {
        slot.done += static_cast<uint64_t>(res);
        if (res > 0 && slot.done < slot.room) {
          ++in_ring;
          prepare(index);
        } else {
          landed.push_back(index);
        }
      }
    }
    io_uring_cq_advance(&ring, seen);
  }

  // A wait that timed out (or a ring that refuses work): every read in the ring fails, its buffer is never reused (the
  // disk may still write there), and the queue reads with pread from now on.
  void give_up(const Status& why) {
    std::vector<bool> landed_slot(slots.size());
    for (uint32_t index : landed) landed_slot[index] = true;
    for (uint32_t index = 0; index < slots.size(); ++index) {
      if (slots[index].room == 0 || landed_slot[index]) continue;
      abandon(slots[index].bytes.buffer);
      ready.push_back(release(index, why));
    }
    in_ring = 0;
    have_ring = false;  // the ring stays set up (closed with the queue) so that nothing it still does lands elsewhere
  }
};

LocalReadQueue::LocalReadQueue(uint32_t depth, uint32_t timeout_ms, bool use_io_uring)
    : impl_(std::make_unique<Impl>()) {
  impl_->depth = std::max<uint32_t>(depth, 1);
  impl_->timeout_ms = timeout_ms;
  impl_->slots.resize(impl_->depth);
  for (uint32_t index = impl_->depth; index > 0; --index) impl_->free_slots.push_back(index - 1);
  impl_->have_ring = use_io_uring && impl_->set_up_ring();
}

LocalReadQueue::~LocalReadQueue() {
  std::vector<Done> left;
  if (in_flight() > 0) reap(in_flight(), left);
  if (impl_->ring_set_up) io_uring_queue_exit(&impl_->ring);
}

size_t LocalReadQueue::in_flight() const { return impl_->in_ring + impl_->landed.size() + impl_->ready.size(); }
uint32_t LocalReadQueue::depth() const { return impl_->depth; }
bool LocalReadQueue::uses_io_uring() const { return impl_->have_ring; }

Status LocalReadQueue::submit(const LocalExtent& extent, uint64_t tag) { return submit(LocalExtent(extent), tag); }

Status LocalReadQueue::submit(LocalExtent&& taken, uint64_t tag) {
  Impl& q = *impl_;
  if (in_flight() >= q.depth) {
    return resource_exhausted("local read of {}: {} reads in flight, the queue's depth: reap first", taken.path,
                              in_flight());
  }
  FF_RETURN_IF_ERROR(check_extent(taken));
  q.claim_ring();
  FF_ASSIGN_OR_RETURN(std::shared_ptr<const OpenFiles::File> file, q.open(taken));
  const uint64_t room = align_up(taken.verify_bytes, kIoAlignment);
  std::shared_ptr<std::byte> buffer = chunk_internal::process_io_buffers().acquire(std::max(room, kIoAlignment));
  if (buffer == nullptr) return resource_exhausted("local read of {}: no memory for {} bytes", taken.path, room);
  LocalBytes bytes{.extent = std::move(taken), .buffer = std::move(buffer), .crcs = {}};
  const LocalExtent& extent = bytes.extent;
  bytes.crcs.resize(extent.segment_crcs.size());
  if (!q.have_ring || room == 0) {
    Status status = pread_all(file->fd, bytes.buffer.get(), extent.verify_bytes, room, extent.file_offset, extent.path);
    if (!status.is_ok()) {
      q.ready.push_back(Done{tag, std::move(status)});
    } else {
      Impl::compute_crcs(bytes);
      q.ready.push_back(Done{tag, std::move(bytes)});
    }
    return Status::ok();
  }
  const uint32_t index = q.free_slots.back();
  q.free_slots.pop_back();
  q.slots[index] = Impl::Slot{.tag = tag, .bytes = std::move(bytes), .file = std::move(file), .room = room, .done = 0};
  ++q.in_ring;
  q.prepare(index);
  return Status::ok();
}

void LocalReadQueue::reap(size_t min, std::vector<Done>& out, size_t max) {
  Impl& q = *impl_;
  q.claim_ring();
  min = std::min({min, in_flight(), max});
  const auto have = [&] { return q.landed.size() + q.ready.size(); };
  while (q.have_ring && (q.unsubmitted || (q.in_ring > 0 && have() < min))) {
    const unsigned wait = have() >= min ? 0 : 1;
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec timeout{.tv_sec = q.timeout_ms / 1000,
                              .tv_nsec = static_cast<long long>(q.timeout_ms % 1000) * 1000000};
    q.unsubmitted = false;
    // Submitting without a wait still asks for the completions there are (a ring of one thread posts them only then).
    const int rc = wait == 0 ? io_uring_submit_and_get_events(&q.ring)
                             : io_uring_submit_and_wait_timeout(&q.ring, &cqe, wait, &timeout, nullptr);
    if (rc == -ETIME) {
      q.give_up(deadline_exceeded("not done within {} ms ({} reads in the ring)", q.timeout_ms, q.in_ring));
      break;
    }
    if (rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
      q.give_up(errno_error(-rc, "io_uring_submit_and_wait_timeout"));
      break;
    }
    if (rc < 0) q.unsubmitted = true;  // try the submission again
    q.drain();
  }
  if (q.have_ring && q.in_ring > 0) q.drain();  // whatever else is done already
  // Each handed back read is checked here (its CRCs), after the submission above: the disk already has the next reads.
  while (max > 0 && !q.ready.empty()) {
    out.push_back(std::move(q.ready.front()));
    q.ready.pop_front();
    --max;
  }
  while (max > 0 && !q.landed.empty()) {
    out.push_back(q.release(q.landed.front(), Status::ok()));
    q.landed.pop_front();
    --max;
  }
}

Result<SharedBytes> read_local_extent(const LocalExtent& extent, uint64_t piece_bytes) {
  FF_ASSIGN_OR_RETURN(LocalBytes bytes, read_local_bytes(extent, piece_bytes));
  return bytes.answer(extent);
}

}  // namespace ff::fs
