// Internal to ff::fs_usrbio (and its tests): the shared-memory layout of an Ior, the futex doorbell and
// the shm file helpers. Clients and servers in different processes (and builds) must agree on this
// layout: any change bumps kVersion.
//
// An Ior file (/dev/shm/ff-ior-<name>):
//   [0, 4096)                  RingHeader
//   [sq_offset, +entries*48)   SubmitEntry[entries]   written by the client, read by the server
//   [cq_offset, +entries*16)   Completion[entries]    written by the server, read by the client
// Indices are free-running uint32 (slot = index & (entries - 1)); the number of entries between a
// head and a tail is tail - head (mod 2^32), never more than `entries`.
//   sq_tail: client publishes prepared entries (release) | sq_head: server took them (release)
//   cq_tail: server publishes completions (release)      | cq_head: client reaped them (release)
// Doorbells: `sq_doorbell` and `cq_seq` are futex words bumped after publishing a tail; a side about to
// sleep sets its waiting flag, then futex-waits on the word's value read BEFORE it looked at the tail,
// so a bump in between makes the wait return at once (no lost wake-up); the other side calls
// futex_wake only when the flag is set (the flag and the bump are seq_cst).
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "ff/common/result.h"
#include "ff/fs/usrbio.h"

namespace ff::fs::usrbio::internal {

inline constexpr uint64_t kMagic = 0x4f49425253554646ull;  // "FFUSRBIO" in little-endian bytes
inline constexpr uint32_t kVersion = 2;  // 2: io_depth, io_timeout_ms
inline constexpr size_t kHeaderBytes = 4096;
inline constexpr size_t kMaxIovNameBytes = 128;
inline constexpr uint64_t kMaxIovBytes = 1ull << 40;
inline constexpr uint64_t kMaxIoBytes = 1ull << 32;

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free,
              "the futex words must be plain lock-free 32-bit atomics");
static_assert(std::atomic<int64_t>::is_always_lock_free);

struct RingHeader {
  // The fixed fields are written by the creator before it stores `magic` (release); a server checks
  // `magic` (acquire) before reading them, then copies them and never reads them again.
  std::atomic<uint64_t> magic;
  uint32_t version;
  uint32_t entries;
  uint64_t iov_size;
  uint64_t sq_offset;
  uint64_t cq_offset;
  uint64_t total_bytes;
  uint32_t start_index;
  uint32_t creator_pid;
  int32_t io_depth;       // IorOptions::io_depth
  int32_t io_timeout_ms;  // IorOptions::io_timeout_ms
  char iov_name[kMaxIovNameBytes];

  alignas(64) std::atomic<uint32_t> sq_tail;
  alignas(64) std::atomic<uint32_t> sq_head;
  alignas(64) std::atomic<uint32_t> cq_tail;
  alignas(64) std::atomic<uint32_t> cq_head;
  alignas(64) std::atomic<uint32_t> sq_doorbell;
  std::atomic<uint32_t> server_waiting;
  alignas(64) std::atomic<uint32_t> cq_seq;
  std::atomic<uint32_t> client_waiting;
  alignas(64) std::atomic<uint32_t> server_state;  // ServerStatus::State
  std::atomic<uint32_t> server_pid;
  std::atomic<int64_t> server_heartbeat_ns;  // CLOCK_MONOTONIC (system-wide), 0: never
};
static_assert(sizeof(RingHeader) <= kHeaderBytes);

// Whether a ring of `entries` slots can batch as io_depth / io_timeout_ms ask (IorOptions): |io_depth| at
// most the ring's entries, a timeout of 0 or more. Checked by the creator and again by the server at attach.
inline bool batching_fits(int32_t io_depth, int32_t io_timeout_ms, uint32_t entries) {
  const int64_t depth = io_depth;
  return depth <= int64_t{entries} && -depth <= int64_t{entries} && io_timeout_ms >= 0;
}

// Byte sizes of a ring with `entries` slots.
inline uint64_t sq_offset() { return kHeaderBytes; }
inline uint64_t cq_offset(uint32_t entries) {
  return (kHeaderBytes + uint64_t{entries} * sizeof(SubmitEntry) + 63) / 64 * 64;
}
inline uint64_t ring_bytes(uint32_t entries) {
  return (cq_offset(entries) + uint64_t{entries} * sizeof(Completion) + 4095) / 4096 * 4096;
}

// CLOCK_MONOTONIC in ns: the same clock in every process of the machine.
int64_t monotonic_ns();

// futex(2) on a word in shared memory (not FUTEX_PRIVATE: the waker may be another process).
// Waits while *word == expected, at most timeout_ns; returns on wake, value change, timeout or signal.
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns);
void futex_wake(std::atomic<uint32_t>& word, int count);

std::string iov_path(std::string_view name);
std::string ior_path(std::string_view name);

// SIGBUS guard for the shared mappings a server touches on a client's behalf. A client can shrink its
// shm file while the server copies from or into it (between the server's size check and the copy, or
// on the client library's I/O threads), which would make the process fault with SIGBUS. A guarded range
// that faults gets an anonymous page mapped over the faulting page (the access then completes, on
// memory the client no longer shares) and its fault count goes up; the server checks the count after
// each batch, fails the batch's entries with -EFAULT and stops serving the ring (its mapping is no
// longer the client's). Faults outside every guarded range keep the previous SIGBUS disposition.
// Process-wide: the handler is installed on the first add(); kFaultGuardSlots ranges at most (add
// returns -1 when all are taken, and that range stays unguarded).
inline constexpr int kFaultGuardSlots = 4096;
int fault_guard_add(const void* data, uint64_t bytes);
void fault_guard_remove(int slot);        // -1: nothing
uint32_t fault_guard_faults(int slot);    // -1: 0

// A MAP_SHARED mapping of a whole shm file. Move-only; unmaps on destruction.
class Mapping {
 public:
  Mapping() = default;
  ~Mapping();
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  // Creates `path` (O_EXCL, mode 0600) with `bytes` bytes and maps it.
  static Result<Mapping> create(const std::string& path, uint64_t bytes);
  // Maps an existing file (not following symlinks; must be a regular file). `info` gets its fstat.
  static Result<Mapping> open(const std::string& path, struct stat* info);

  std::byte* data() const { return data_; }
  uint64_t bytes() const { return bytes_; }
  // Gives up ownership: the caller munmaps data() later.
  std::byte* release() {
    bytes_ = 0;
    return std::exchange(data_, nullptr);
  }

 private:
  Mapping(std::byte* data, uint64_t bytes) : data_(data), bytes_(bytes) {}
  static Result<Mapping> map_fd(int fd, const std::string& path, uint64_t bytes);
  std::byte* data_ = nullptr;
  uint64_t bytes_ = 0;
};

// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); 0 when the process is gone.
uint64_t process_start_time(pid_t pid);

}  // namespace ff::fs::usrbio::internal
