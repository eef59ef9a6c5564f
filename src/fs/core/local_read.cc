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

Result<LocalBytes> read_local_bytes(const LocalExtent& extent) { return read_local_bytes(extent, {}); }

Result<LocalBytes> read_local_bytes(const LocalExtent& extent, std::span<std::byte> into) {
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
  result.crcs.resize(extent.segment_crcs.size());
  // Segments in groups of at least 64 KiB: CRC a group's segments, then copy the group on while it is in cache.
  const uint64_t group = std::max<uint64_t>(segment, 64 << 10) / segment * segment;
  for (uint64_t start = 0; start < extent.verify_bytes; start += group) {
    const uint64_t end = std::min(start + group, extent.verify_bytes);
    for (uint64_t at = start; at < end; at += segment) {
      result.crcs[at / segment] = crc32c(std::span<const std::byte>(bytes + at, std::min(segment, end - at)));
    }
    if (staged) std::memcpy(into.data() + start, bytes + start, end - start);
  }
  return result;
}

bool LocalBytes::same_place(const LocalExtent& other) const {
  return extent.path == other.path && extent.device == other.device && extent.inode == other.inode &&
         extent.file_offset == other.file_offset && extent.position == other.position &&
         extent.verify_bytes == other.verify_bytes && extent.skip == other.skip && extent.count == other.count &&
         extent.segment_bytes == other.segment_bytes;
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

Result<SharedBytes> read_local_extent(const LocalExtent& extent) {
  FF_ASSIGN_OR_RETURN(LocalBytes bytes, read_local_bytes(extent));
  return bytes.answer(extent);
}

}  // namespace ff::fs
