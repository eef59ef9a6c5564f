// Ior: the client side of a submission/completion ring (usrbio.h; layout in ring_layout.h).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "ff/common/assert.h"
#include "ring_layout.h"

namespace ff::fs::usrbio {

using internal::RingHeader;

struct Ior::State {
  std::string name;
  internal::Mapping mapping;
  RingHeader* header = nullptr;
  SubmitEntry* sq = nullptr;
  Completion* cq = nullptr;
  uint32_t entries = 0;
  uint32_t mask = 0;
  uint64_t iov_size = 0;
  std::string iov_name;

  // Producer thread only.
  uint32_t prepare_tail = 0;    // next slot to prepare
  uint32_t published_tail = 0;  // last value stored to header->sq_tail
  // Consumer thread only.
  uint32_t cq_head = 0;
  // Shared by the producer and the consumer (this process only).
  std::atomic<uint32_t> in_flight{0};  // prepared + submitted + completed-not-reaped
  std::atomic<uint32_t> submitted{0};  // submitted and not reaped

  std::string mount_link;  // the registered symlink, empty when none

  ~State() {
    if (!mount_link.empty()) ::unlink(mount_link.c_str());
    if (header != nullptr) ::unlink(internal::ior_path(name).c_str());
  }
};

Ior::Ior() = default;
Ior::~Ior() = default;
Ior::Ior(Ior&& other) noexcept = default;
Ior& Ior::operator=(Ior&& other) noexcept = default;

Result<Ior> Ior::create(std::string_view name, const Iov& iov, IorOptions options) {
  FF_RETURN_IF_ERROR(validate_name(name));
  if (iov.data() == nullptr) return invalid_argument("Ior '{}': the Iov is empty (moved from?)", name);
  if (options.entries < 2 || options.entries > kMaxEntries || (options.entries & (options.entries - 1)) != 0) {
    return invalid_argument("Ior '{}': entries={}; expected a power of two in 2 .. {}", name, options.entries,
                            kMaxEntries);
  }
  if (iov.name().size() >= internal::kMaxIovNameBytes) {
    return invalid_argument("Ior '{}': Iov name '{}' is too long", name, iov.name());
  }
  if (!internal::batching_fits(options.io_depth, 0, options.entries)) {
    return invalid_argument("Ior '{}': io_depth={}; expected -{} .. {} (at most the ring's entries)", name,
                            options.io_depth, options.entries, options.entries);
  }
  if (!internal::batching_fits(0, options.io_timeout_ms, options.entries)) {
    return invalid_argument("Ior '{}': io_timeout_ms={}; expected >= 0 (0: no limit)", name, options.io_timeout_ms);
  }
  const uint64_t bytes = internal::ring_bytes(options.entries);
  FF_ASSIGN_OR_RETURN(internal::Mapping mapping, internal::Mapping::create(internal::ior_path(name), bytes));
  auto state = std::make_unique<State>();
  state->name = std::string(name);
  // The file's pages are zero; construct the atomics in place before anyone else can attach (the
  // server checks `magic`, stored last with release).
  auto* header = new (mapping.data()) RingHeader();
  header->version = internal::kVersion;
  header->entries = options.entries;
  header->iov_size = iov.size();
  header->sq_offset = internal::sq_offset();
  header->cq_offset = internal::cq_offset(options.entries);
  header->total_bytes = bytes;
  header->start_index = options.start_index;
  header->creator_pid = static_cast<uint32_t>(::getpid());
  header->io_depth = options.io_depth;
  header->io_timeout_ms = options.io_timeout_ms;
  std::memcpy(header->iov_name, iov.name().data(), iov.name().size());
  header->sq_tail.store(options.start_index, std::memory_order_relaxed);
  header->sq_head.store(options.start_index, std::memory_order_relaxed);
  header->cq_tail.store(options.start_index, std::memory_order_relaxed);
  header->cq_head.store(options.start_index, std::memory_order_relaxed);
  header->magic.store(internal::kMagic, std::memory_order_release);

  state->header = header;
  state->sq = reinterpret_cast<SubmitEntry*>(mapping.data() + header->sq_offset);
  state->cq = reinterpret_cast<Completion*>(mapping.data() + header->cq_offset);
  state->entries = options.entries;
  state->mask = options.entries - 1;
  state->iov_size = iov.size();
  state->iov_name = iov.name();
  state->prepare_tail = state->published_tail = state->cq_head = options.start_index;
  state->mapping = std::move(mapping);
  Ior ior;
  ior.state_ = std::move(state);
  return ior;
}

Result<uint32_t> Ior::prep_io(Op op, FileId file, uint64_t offset, uint64_t length, uint64_t iov_offset,
                              uint64_t user_data) {
  FF_ASSERT(state_ != nullptr, "prep_io on an empty Ior");
  State& s = *state_;
  if (op != Op::kRead && op != Op::kWrite && op != Op::kClose) {
    return invalid_argument("Ior '{}': op {} is not kRead (1), kWrite (2) or kClose (3)", s.name, static_cast<int>(op));
  }
  if (file == 0) return invalid_argument("Ior '{}': file id 0 names no file", s.name);
  if (op != Op::kClose) {
    if (length == 0 || length > internal::kMaxIoBytes) {
      return invalid_argument("Ior '{}': length {} bytes; expected 1 .. {} per entry", s.name, length,
                              internal::kMaxIoBytes);
    }
    if (iov_offset > s.iov_size || length > s.iov_size - iov_offset) {
      return invalid_argument("Ior '{}': iov range [{}, {}) is outside Iov '{}' of {} bytes", s.name, iov_offset,
                              iov_offset + length, s.iov_name, s.iov_size);
    }
  }
  if (s.in_flight.load(std::memory_order_acquire) >= s.entries) {
    return resource_exhausted("Ior '{}': all {} entries are in flight; reap completions (wait_for_ios) first", s.name,
                              s.entries);
  }
  const uint32_t index = s.prepare_tail;
  SubmitEntry& entry = s.sq[index & s.mask];
  entry.file = file;
  entry.offset = offset;
  entry.length = length;
  entry.iov_offset = iov_offset;
  entry.user_data = user_data;
  entry.op = static_cast<uint8_t>(op);
  s.prepare_tail = index + 1;
  s.in_flight.fetch_add(1, std::memory_order_acq_rel);
  return index;
}

Result<uint32_t> Ior::submit() {
  FF_ASSERT(state_ != nullptr, "submit on an empty Ior");
  State& s = *state_;
  const uint32_t count = s.prepare_tail - s.published_tail;
  if (count == 0) return 0u;
  const auto state = static_cast<ServerStatus::State>(s.header->server_state.load(std::memory_order_acquire));
  if (state == ServerStatus::State::kDetached || state == ServerStatus::State::kBroken) {
    return unavailable("Ior '{}': cannot submit {} entries: its server is {}", s.name, count, server_state_name(state));
  }
  s.submitted.fetch_add(count, std::memory_order_acq_rel);
  s.header->sq_tail.store(s.prepare_tail, std::memory_order_release);
  s.published_tail = s.prepare_tail;
  // NOTE: one doorbell per submit, and a system call only when the server sleeps.
  s.header->sq_doorbell.fetch_add(1, std::memory_order_seq_cst);
  if (s.header->server_waiting.load(std::memory_order_seq_cst) != 0) internal::futex_wake(s.header->sq_doorbell, 1);
  return count;
}

Result<size_t> Ior::wait_for_ios(std::span<Completion> out, size_t min_results, int64_t timeout_ms) {
  FF_ASSERT(state_ != nullptr, "wait_for_ios on an empty Ior");
  State& s = *state_;
  if (min_results > out.size()) {
    return invalid_argument("Ior '{}': min_results={} exceeds the output's {} slots", s.name, min_results, out.size());
  }
  if (min_results > s.entries) {
    return invalid_argument("Ior '{}': min_results={} can never be met by a ring of {} entries", s.name, min_results,
                            s.entries);
  }
  RingHeader& header = *s.header;
  const int64_t deadline_ns = internal::monotonic_ns() + std::max<int64_t>(timeout_ms, 0) * 1'000'000;
  for (int spins = 0;; ++spins) {
    const uint32_t seq = header.cq_seq.load(std::memory_order_seq_cst);
    const uint32_t available = header.cq_tail.load(std::memory_order_acquire) - s.cq_head;
    if (available > s.entries) {
      return internal_error("Ior '{}': the server published {} completions into a ring of {}", s.name, available,
                            s.entries);
    }
    if (available >= min_results) {
      const uint32_t count = std::min<uint32_t>(available, static_cast<uint32_t>(out.size()));
      for (uint32_t i = 0; i < count; ++i) out[i] = s.cq[(s.cq_head + i) & s.mask];
      s.cq_head += count;
      header.cq_head.store(s.cq_head, std::memory_order_release);
      s.submitted.fetch_sub(count, std::memory_order_acq_rel);
      s.in_flight.fetch_sub(count, std::memory_order_acq_rel);
      return static_cast<size_t>(count);
    }
    const uint32_t submitted = s.submitted.load(std::memory_order_acquire);
    const ServerStatus server = server_status();
    if (server.state == ServerStatus::State::kDetached || server.state == ServerStatus::State::kBroken) {
      return unavailable("Ior '{}': waiting for {} completions ({} ready, {} outstanding), but its server is {}",
                         s.name, min_results, available, submitted, server_state_name(server.state));
    }
    const int64_t now = internal::monotonic_ns();
    if (now >= deadline_ns) {
      std::string heartbeat =
          server.heartbeat_age_ms < 0
              ? std::string("the server never beat: is a server attached?")
              : fmt::format("the server (pid {}) last beat {} ms ago{}", server.server_pid, server.heartbeat_age_ms,
                            server.heartbeat_age_ms > 2000 ? ": it is probably dead" : "");
      // With io_depth > 0 the server holds back a partial batch: say so when that is what we wait for.
      const uint32_t waiting_in_ring = header.sq_tail.load(std::memory_order_acquire) -
                                       header.sq_head.load(std::memory_order_acquire);
      const int32_t depth = header.io_depth, timeout = header.io_timeout_ms;  // fixed at create
      std::string batching;
      if (depth > 0 && waiting_in_ring > 0 && waiting_in_ring < static_cast<uint32_t>(depth)) {
        batching = fmt::format("; the ring's io_depth is {}: {} submitted entries wait for a full batch {}", depth,
                               waiting_in_ring,
                               timeout > 0 ? fmt::format("or io_timeout_ms {}", timeout) : "(no io_timeout_ms)");
      }
      return deadline_exceeded(
          "Ior '{}': waited {} ms for {} completions, {} ready ({} submitted and outstanding, {} prepared but not "
          "submitted); server {}; {}{}",
          s.name, timeout_ms, min_results, available, submitted, s.prepare_tail - s.published_tail,
          server_state_name(server.state), heartbeat, batching);
    }
    if (spins < 64) {
      // NOTE: a short spin catches completions of fast batches without two system calls.
      continue;
    }
    header.client_waiting.store(1, std::memory_order_seq_cst);
    internal::futex_wait(header.cq_seq, seq, std::min<int64_t>(deadline_ns - now, 100'000'000));
    header.client_waiting.store(0, std::memory_order_relaxed);
  }
}

Status Ior::register_with_mount(std::string_view mount_path) {
  FF_ASSERT(state_ != nullptr, "register_with_mount on an empty Ior");
  State& s = *state_;
  if (!s.mount_link.empty()) {
    return failed_precondition("Ior '{}' is already registered as {}", s.name, s.mount_link);
  }
  std::string_view mount = mount_path;
  while (mount.size() > 1 && mount.back() == '/') mount.remove_suffix(1);
  // NOTE: fmt, not "/" + std::string(...): GCC 12 at -O3 (pip's Release build) reports a false -Wrestrict
  // in that string concatenation, which -Werror makes fatal.
  const std::string link = fmt::format("{}/{}/{}", mount, kVirtualDir, s.name);
  const std::string target = internal::ior_path(s.name);
  if (::symlink(target.c_str(), link.c_str()) != 0) {
    const int error = errno;
    return errno_error(error, fmt::format("register Ior '{}': symlink {} -> {} (is {} an ff-fuse mount with usrbio?)",
                                          s.name, link, target, mount_path));
  }
  s.mount_link = link;
  return Status::ok();
}

Status Ior::unregister_from_mount() {
  FF_ASSERT(state_ != nullptr, "unregister_from_mount on an empty Ior");
  State& s = *state_;
  if (s.mount_link.empty()) return Status::ok();
  const std::string link = std::exchange(s.mount_link, std::string());
  if (::unlink(link.c_str()) != 0 && errno != ENOENT) return errno_error(errno, "unregister: unlink " + link);
  return Status::ok();
}

uint32_t Ior::capacity() const { return state_ ? state_->entries : 0; }
uint32_t Ior::in_flight() const { return state_ ? state_->in_flight.load(std::memory_order_acquire) : 0; }
uint32_t Ior::prepared() const { return state_ ? state_->prepare_tail - state_->published_tail : 0; }
const std::string& Ior::name() const {
  static const std::string empty;
  return state_ ? state_->name : empty;
}
std::string Ior::path() const { return state_ ? internal::ior_path(state_->name) : std::string(); }

ServerStatus Ior::server_status() const {
  ServerStatus status;
  if (!state_) return status;
  const RingHeader& header = *state_->header;
  status.state = static_cast<ServerStatus::State>(header.server_state.load(std::memory_order_acquire));
  status.server_pid = header.server_pid.load(std::memory_order_relaxed);
  const int64_t beat = header.server_heartbeat_ns.load(std::memory_order_acquire);
  status.heartbeat_age_ms = beat == 0 ? -1 : std::max<int64_t>(0, (internal::monotonic_ns() - beat) / 1'000'000);
  return status;
}

}  // namespace ff::fs::usrbio
