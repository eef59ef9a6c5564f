// Local reads (include/ff/fs/local_read.h).
#include "ff/fs/local_read.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <vector>

#include "../chunk/io_context.h"
#include "../chunk/read_buffer_pool.h"
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
  const uint64_t segment = extent.segment_bytes;
  if (segment == 0 || extent.skip + extent.count > extent.verify_bytes || extent.position % segment != 0 ||
      extent.segment_crcs.size() != (extent.verify_bytes + segment - 1) / segment) {
    return invalid_argument(
        "local read of {}: extent does not add up (position {}, {} bytes to verify, skip {}, "
        "count {}, segment {} bytes, {} segment CRCs)",
        extent.path, extent.position, extent.verify_bytes, extent.skip, extent.count, segment,
        extent.segment_crcs.size());
  }
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
  uint64_t done = 0;
  while (done < extent.verify_bytes) {
    const ssize_t n = ::pread(fd, bytes + done, read_bytes - done, static_cast<off_t>(extent.file_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(errno, fmt::format("local read of {} at {}", extent.path, extent.file_offset + done));
    if (n == 0) {
      return io_error("local read of {}: end of file at {}, {} bytes short", extent.path, extent.file_offset + done,
                      extent.verify_bytes - done);
    }
    done += static_cast<uint64_t>(n);
  }
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

Result<SharedBytes> read_local_extent(const LocalExtent& extent, uint64_t piece_bytes) {
  FF_ASSIGN_OR_RETURN(LocalBytes bytes, read_local_bytes(extent, piece_bytes));
  return bytes.answer(extent);
}

}  // namespace ff::fs
