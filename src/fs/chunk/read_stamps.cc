#include "ff/fs/read_stamps.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace ff::fs {

namespace {

constexpr uint64_t kMagic = 0x3153505453524646ull;  // "FFRSTPS1"
constexpr uint32_t kFormat = 1;

// The file: this header, then `slots` pairs of counters. Each counter is only ever incremented (begun before a
// change, ended after it), by the target's threads with atomic read-modify-writes.
struct Header {
  uint64_t magic;
  uint32_t format;
  uint32_t slots;
  int64_t lease_until_ns;  // CLOCK_MONOTONIC; 0: not serving
  uint64_t all_begun;
  uint64_t all_ended;
  uint64_t reserved[3];
};
static_assert(sizeof(Header) == 64);
struct Pair {
  uint64_t begun;
  uint64_t ended;
};
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free && std::atomic_ref<int64_t>::is_always_lock_free,
              "the stamps are shared between processes: their atomics must be lock-free");

size_t file_bytes(uint32_t slots) { return sizeof(Header) + size_t{slots} * sizeof(Pair); }

Header* header_of(void* map) { return static_cast<Header*>(map); }
const Header* header_of(const void* map) { return static_cast<const Header*>(map); }
Pair* pairs_of(void* map) { return reinterpret_cast<Pair*>(static_cast<std::byte*>(map) + sizeof(Header)); }
const Pair* pairs_of(const void* map) {
  return reinterpret_cast<const Pair*>(static_cast<const std::byte*>(map) + sizeof(Header));
}

// Reads a counter the other process writes (the mapping is read-only here, so no atomic_ref on a const object:
// an aligned 8-byte load is atomic on every platform we build for; the fences order it).
uint64_t load(const uint64_t& value) {
  return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(value)).load(std::memory_order_acquire);
}
int64_t load(const int64_t& value) {
  return std::atomic_ref<int64_t>(const_cast<int64_t&>(value)).load(std::memory_order_acquire);
}
void add(uint64_t& value) { std::atomic_ref<uint64_t>(value).fetch_add(1, std::memory_order_acq_rel); }

// The begun count of a pair when nothing is in progress (ended read first: ended <= begun at every moment, so
// ended == begun as read means nothing was in progress when begun was read), else nullopt.
std::optional<uint64_t> quiet(const uint64_t& begun, const uint64_t& ended) {
  const uint64_t ended_now = load(ended);
  const uint64_t begun_now = load(begun);
  if (begun_now != ended_now) return std::nullopt;
  return begun_now;
}

}  // namespace

int64_t monotonic_now_ns() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// ------------------------------------------------------------------ the target's side
ReadStamps::ReadStamps(std::string path, void* map, size_t bytes, uint32_t slots)
    : path_(std::move(path)), map_(map), bytes_(bytes), slots_(slots) {}

ReadStamps::~ReadStamps() {
  if (map_ != nullptr) {
    set_lease(0);
    ::munmap(map_, bytes_);
  }
}

Result<std::unique_ptr<ReadStamps>> ReadStamps::open(const std::string& path, uint32_t slots) {
  if (slots == 0) return invalid_argument("read stamps {}: 0 slots (expected at least 1)", path);
  // Readable by everyone who may read the target's data files (local reads need read access to those anyway).
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(errno, fmt::format("open read stamps {}", path));
  const size_t bytes = file_bytes(slots);
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    return errno_error(error, fmt::format("stat read stamps {}", path));
  }
  // Never shrunk: a reader still mapping a longer file must not touch pages past its end.
  if (static_cast<size_t>(info.st_size) < bytes && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int error = errno;
    ::close(fd);
    return errno_error(error, fmt::format("size read stamps {}", path));
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int error = errno;
  ::close(fd);
  if (map == MAP_FAILED) return errno_error(error, fmt::format("map read stamps {}", path));
  Header* header = header_of(map);
  if (header->magic != kMagic || header->format != kFormat || header->slots != slots) {
    // A new file (zeros), or one of another layout: readers that still map an old layout check the magic and the
    // slot count on every stamp, so they fail over to RPC reads.
    std::atomic_ref<uint64_t>(header->magic).store(0, std::memory_order_release);
    header->format = kFormat;
    header->slots = slots;
    std::atomic_ref<int64_t>(header->lease_until_ns).store(0, std::memory_order_release);
    std::atomic_ref<uint64_t>(header->magic).store(kMagic, std::memory_order_release);
  }
  auto stamps = std::unique_ptr<ReadStamps>(new ReadStamps(path, map, bytes, slots));
  stamps->set_lease(0);
  stamps->begin_all();
  // A run killed in the middle of a change left that change begun and never ended: with the whole target's change
  // (this opening) in progress, no reader trusts any slot, so the counters are squared here: from now on exactly
  // this opening is in progress, which end_all() ends.
  std::atomic_ref<uint64_t>(header->all_ended)
      .store(std::atomic_ref<uint64_t>(header->all_begun).load(std::memory_order_acquire) - 1,
             std::memory_order_release);
  Pair* pairs = pairs_of(map);
  for (uint32_t slot = 0; slot < slots; ++slot) {
    std::atomic_ref<uint64_t>(pairs[slot].ended)
        .store(std::atomic_ref<uint64_t>(pairs[slot].begun).load(std::memory_order_acquire), std::memory_order_release);
  }
  return stamps;
}

void ReadStamps::begin(uint32_t slot) { add(pairs_of(map_)[slot % slots_].begun); }
void ReadStamps::end(uint32_t slot) { add(pairs_of(map_)[slot % slots_].ended); }
void ReadStamps::begin_all() { add(header_of(map_)->all_begun); }
void ReadStamps::end_all() { add(header_of(map_)->all_ended); }
void ReadStamps::bump_all() {
  begin_all();
  end_all();
}
void ReadStamps::set_lease(int64_t until_ns) {
  std::atomic_ref<int64_t>(header_of(map_)->lease_until_ns).store(until_ns, std::memory_order_release);
}

// ------------------------------------------------------------------ a reader's view
ReadStampsView::ReadStampsView(std::string path, const void* map, size_t bytes, uint32_t slots, uint64_t device,
                               uint64_t inode)
    : path_(std::move(path)), map_(map), bytes_(bytes), slots_(slots), device_(device), inode_(inode) {}

ReadStampsView::~ReadStampsView() {
  if (map_ != nullptr) ::munmap(const_cast<void*>(map_), bytes_);
}

Result<std::shared_ptr<ReadStampsView>> ReadStampsView::map(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unavailable("read stamps {}: {}", path, std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || static_cast<size_t>(info.st_size) < sizeof(Header)) {
    ::close(fd);
    return invalid_argument("read stamps {}: {} bytes, expected a header of {}", path, info.st_size, sizeof(Header));
  }
  const size_t bytes = static_cast<size_t>(info.st_size);
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  const int error = errno;
  ::close(fd);
  if (map == MAP_FAILED) return unavailable("read stamps {}: map: {}", path, std::strerror(error));
  const Header* header = header_of(static_cast<const void*>(map));
  const uint64_t magic = load(header->magic);
  if (magic != kMagic || header->format != kFormat || header->slots == 0 || file_bytes(header->slots) > bytes) {
    ::munmap(map, bytes);
    return invalid_argument("read stamps {}: not a stamps file of format {} (magic {:#x}, {} bytes)", path, kFormat,
                            magic, bytes);
  }
  return std::shared_ptr<ReadStampsView>(new ReadStampsView(
      path, map, bytes, header->slots, static_cast<uint64_t>(info.st_dev), static_cast<uint64_t>(info.st_ino)));
}

std::optional<ReadStampsView::Stamp> ReadStampsView::stamp(const ChunkId& chunk, int64_t now_ns) const {
  const Header* header = header_of(map_);
  if (load(header->magic) != kMagic || header->slots != slots_) return std::nullopt;
  const int64_t lease = load(header->lease_until_ns);
  if (lease == 0 || now_ns >= lease) return std::nullopt;
  std::optional<uint64_t> all = quiet(header->all_begun, header->all_ended);
  if (!all) return std::nullopt;
  const Pair& pair = pairs_of(map_)[read_stamp_slot(chunk, slots_)];
  std::optional<uint64_t> slot = quiet(pair.begun, pair.ended);
  if (!slot) return std::nullopt;
  // The whole target's pair again: a change of it that began after it was read above ends the stamp's moment.
  if (load(header->all_begun) != *all) return std::nullopt;
  return Stamp{.slot = *slot, .all = *all};
}

bool ReadStampsView::unchanged(const ChunkId& chunk, const Stamp& stamp, int64_t now_ns) const {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // after the reader's disk read
  const Header* header = header_of(map_);
  if (load(header->magic) != kMagic || header->slots != slots_) return false;
  const int64_t lease = load(header->lease_until_ns);
  if (lease == 0 || now_ns >= lease) return false;
  const Pair& pair = pairs_of(map_)[read_stamp_slot(chunk, slots_)];
  return load(pair.begun) == stamp.slot && load(header->all_begun) == stamp.all;
}

}  // namespace ff::fs
