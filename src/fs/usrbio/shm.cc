// Iov, names, shared-memory mappings, futexes and register_fd (usrbio.h, ring_layout.h).
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <utility>

#include "ff/common/assert.h"
#include "ring_layout.h"

namespace ff::fs::usrbio {

Status validate_name(std::string_view name) {
  if (name.empty() || name.size() > 100) {
    return invalid_argument("usrbio name '{}' has {} bytes; expected 1..100 of [A-Za-z0-9._-]", name, name.size());
  }
  if (name == "." || name == "..") return invalid_argument("usrbio name '{}' is not allowed", name);
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return invalid_argument("usrbio name '{}' contains byte 0x{:02x}; expected only [A-Za-z0-9._-]", name,
                              static_cast<unsigned char>(c));
    }
  }
  return Status::ok();
}

std::string_view server_state_name(ServerStatus::State state) {
  switch (state) {
    case ServerStatus::State::kNone: return "none (no server attached yet)";
    case ServerStatus::State::kAttached: return "attached";
    case ServerStatus::State::kDetached: return "detached";
    case ServerStatus::State::kBroken: return "broken (corrupt ring indices, or the ring or Iov shrunk while served)";
  }
  return "unknown";
}

namespace internal {

namespace {

struct GuardSlot {
  std::atomic<bool> used{false};
  std::atomic<uintptr_t> begin{0}, end{0};  // [begin, end); end 0 while the slot is being set or cleared
  std::atomic<uint32_t> faults{0};
};
GuardSlot guard_slots[kFaultGuardSlots];
struct sigaction previous_sigbus {};
uintptr_t guard_page_bytes = 4096;  // set before the handler is installed

// Async-signal-safe: atomics, mmap and sigaction only.
void on_sigbus(int signal, siginfo_t* info, void* context) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (GuardSlot& slot : guard_slots) {
    const uintptr_t end = slot.end.load(std::memory_order_acquire);
    if (end == 0 || address < slot.begin.load(std::memory_order_acquire) || address >= end) continue;
    const uintptr_t page = guard_page_bytes;
    void* start = reinterpret_cast<void*>(address & ~(page - 1));
    if (::mmap(start, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
      slot.faults.fetch_add(1, std::memory_order_acq_rel);
      return;  // the faulting access runs again, on the anonymous page
    }
    break;
  }
  // Not ours (or the page could not be replaced): what SIGBUS did before the guard.
  if ((previous_sigbus.sa_flags & SA_SIGINFO) != 0 && previous_sigbus.sa_sigaction != nullptr) {
    previous_sigbus.sa_sigaction(signal, info, context);
    return;
  }
  if (previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN &&
      previous_sigbus.sa_handler != nullptr) {
    previous_sigbus.sa_handler(signal);
    return;
  }
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  ::sigemptyset(&default_action.sa_mask);
  ::sigaction(SIGBUS, &default_action, nullptr);  // the access faults again and the default kills
}

}  // namespace

int fault_guard_add(const void* data, uint64_t bytes) {
  static const bool installed = [] {
    guard_page_bytes = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    struct sigaction action {};
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    ::sigemptyset(&action.sa_mask);
    return ::sigaction(SIGBUS, &action, &previous_sigbus) == 0;
  }();
  if (!installed || data == nullptr || bytes == 0) return -1;
  for (int i = 0; i < kFaultGuardSlots; ++i) {
    bool expected = false;
    if (!guard_slots[i].used.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
    guard_slots[i].faults.store(0, std::memory_order_relaxed);
    guard_slots[i].begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    guard_slots[i].end.store(reinterpret_cast<uintptr_t>(data) + bytes, std::memory_order_release);
    return i;
  }
  return -1;
}

void fault_guard_remove(int slot) {
  if (slot < 0 || slot >= kFaultGuardSlots) return;
  guard_slots[slot].end.store(0, std::memory_order_release);
  guard_slots[slot].begin.store(0, std::memory_order_release);
  guard_slots[slot].faults.store(0, std::memory_order_release);
  guard_slots[slot].used.store(false, std::memory_order_release);
}

uint32_t fault_guard_faults(int slot) {
  if (slot < 0 || slot >= kFaultGuardSlots) return 0;
  return guard_slots[slot].faults.load(std::memory_order_acquire);
}

int64_t monotonic_ns() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

void futex_wait(std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns) {
  if (timeout_ns <= 0) return;
  timespec timeout{static_cast<time_t>(timeout_ns / 1'000'000'000), static_cast<long>(timeout_ns % 1'000'000'000)};
  // EAGAIN (value changed), ETIMEDOUT and EINTR all mean "look again": callers loop on their condition.
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT, expected, &timeout, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>& word, int count) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, count, nullptr, nullptr, 0);
}

std::string iov_path(std::string_view name) {
  return std::string(kShmDir) + std::string(kIovPrefix) + std::string(name);
}
std::string ior_path(std::string_view name) {
  return std::string(kShmDir) + std::string(kIorPrefix) + std::string(name);
}

Mapping::~Mapping() {
  if (data_ != nullptr) ::munmap(data_, bytes_);
}
Mapping::Mapping(Mapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, bytes_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Result<Mapping> Mapping::create(const std::string& path, uint64_t bytes) {
  FF_ASSERT_GT(bytes, 0u);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      return already_exists(
          "{} exists: another Iov/Ior uses that name, or a crashed process left it "
          "(Iov::remove_stale removes it)",
          path);
    }
    return errno_error(errno, "create " + path);
  }
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int error = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return errno_error(error, fmt::format("ftruncate {} to {} bytes", path, bytes));
  }
  auto mapping = map_fd(fd, path, bytes);
  ::close(fd);
  if (!mapping.is_ok()) ::unlink(path.c_str());
  return mapping;
}

Result<Mapping> Mapping::open(const std::string& path, struct stat* info) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return not_found("{} does not exist", path);
    if (errno == EACCES || errno == EPERM) return permission_denied("open {}: permission denied", path);
    return errno_error(errno, "open " + path);
  }
  if (::fstat(fd, info) != 0) {
    const int error = errno;
    ::close(fd);
    return errno_error(error, "fstat " + path);
  }
  if (!S_ISREG(info->st_mode) || info->st_size <= 0) {
    ::close(fd);
    return invalid_argument("{} is not a non-empty regular file (mode 0{:o}, {} bytes)", path, info->st_mode,
                            static_cast<int64_t>(info->st_size));
  }
  auto mapping = map_fd(fd, path, static_cast<uint64_t>(info->st_size));
  ::close(fd);
  return mapping;
}

Result<Mapping> Mapping::map_fd(int fd, const std::string& path, uint64_t bytes) {
  // NOTE: MAP_NORESERVE: a 1 TiB Iov costs nothing until its pages are touched.
  void* address = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (address == MAP_FAILED) return errno_error(errno, fmt::format("mmap {} ({} bytes)", path, bytes));
  return Mapping(static_cast<std::byte*>(address), bytes);
}

uint64_t process_start_time(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  if (!file) return 0;
  std::string line;
  std::getline(file, line);
  // The command name (field 2) is in parentheses and may contain spaces: start after the last ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  // Fields 3..21 precede the start time (field 22).
  for (int index = 3; index <= 22; ++index) {
    if (!(rest >> field)) return 0;
  }
  return std::strtoull(field.c_str(), nullptr, 10);
}

}  // namespace internal
}  // namespace ff::fs::usrbio
