// The CPU shared-memory backend of ff::ep. Protocol (docs/ep.md has the picture):
//   1. every rank writes its outgoing rows for destination d into slot (me, d) and publishes
//      ready[me][d] = seq (release);
//   2. every rank waits (acquire, bounded) for ready[s][me] >= seq from each source s in rank order and
//      copies the rows out;
//   3. a barrier (each rank stores barrier[me] = seq and waits for every other rank's) ends the call, so
//      the next call may overwrite the slots.
// Every wait checks the group's abort flag, the deadline and the liveness of the awaited rank; any error
// aborts the group so that the other ranks fail at once instead of timing out one after another.
#include "ff/ep/buffer.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <new>
#include <sstream>
#include <string_view>

#include "ff/common/clock.h"
#include "ff/gemm/numeric.h"

namespace ff::ep {

namespace {

constexpr uint64_t kMagic = 0x46465f45505f3031ull;  // "FF_EP_01"
constexpr int64_t kPageBytes = 4096;
constexpr int64_t kSlotHeaderBytes = 64;

enum Op : int32_t {
  kNone = 0,
  kDispatch = 1,
  kCombine = 2,
  kLowLatencyDispatch = 3,
  kLowLatencyCombine = 4,
  kExchange = 5
};

const char* op_name(int op) {
  switch (op) {
    case kDispatch: return "dispatch";
    case kCombine: return "combine";
    case kLowLatencyDispatch: return "low_latency_dispatch";
    case kLowLatencyCombine: return "low_latency_combine";
    case kExchange: return "exchange";
    default: return "none";
  }
}

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared-memory atomics must be lock-free");
static_assert(std::atomic<int32_t>::is_always_lock_free, "shared-memory atomics must be lock-free");

// The header every published slot starts with; the receiver checks it against its own call.
struct SlotHeader {
  uint64_t seq;
  int32_t op;
  int32_t dtype;
  int64_t num_rows;
  int64_t hidden;
  int64_t num_topk;
  int64_t row_stride;
  int64_t cached;
  int64_t reserved;
};
static_assert(sizeof(SlotHeader) <= kSlotHeaderBytes);

constexpr int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

float load_element(DType dtype, const uint8_t* row, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: {
      float value;
      std::memcpy(&value, row + i * 4, 4);
      return value;
    }
    case DType::kBFloat16: {
      uint16_t bits;
      std::memcpy(&bits, row + i * 2, 2);
      return gemm::bf16_to_float(bits);
    }
    case DType::kFloat8E4M3: return gemm::e4m3_to_float(row[i]);
  }
  FF_UNREACHABLE("dtype {}", static_cast<int>(dtype));
}

void store_row(DType dtype, const float* values, int64_t hidden, uint8_t* row) {
  FF_ASSERT(dtype != DType::kFloat8E4M3);
  if (dtype == DType::kFloat32) {
    std::memcpy(row, values, static_cast<size_t>(hidden) * 4);
    return;
  }
  for (int64_t i = 0; i < hidden; ++i) {
    uint16_t bits = gemm::float_to_bf16(values[i]);
    std::memcpy(row + i * 2, &bits, 2);
  }
}

// Quantizes one row to e4m3 codes with one scale per 128 elements (scale = amax / 448, amax >= 1e-4 as in DeepEP;
// round_scale: the power of two at or above it, low_latency_scale).
void quantize_row(DType dtype, const uint8_t* row, int64_t hidden, uint8_t* codes, float* scales, bool round_scale) {
  for (int64_t block = 0; block < hidden / kFp8BlockSize; ++block) {
    float amax = 1e-4f;
    for (int64_t i = block * kFp8BlockSize; i < (block + 1) * kFp8BlockSize; ++i) {
      amax = std::max(amax, std::fabs(load_element(dtype, row, i)));
    }
    const float scale = low_latency_scale(amax, round_scale);
    scales[block] = scale;
    for (int64_t i = block * kFp8BlockSize; i < (block + 1) * kFp8BlockSize; ++i) {
      codes[i] = gemm::float_to_e4m3(load_element(dtype, row, i) / scale);
    }
  }
}

bool process_alive(int32_t pid) {
  if (pid <= 0) return true;  // not joined yet: nothing to check
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A killed child that its parent has not reaped yet is a zombie: kill(pid, 0) still succeeds.
  // Plain read(2): the process can be reaped between the two checks, and then the read fails with
  // ESRCH (std::ifstream turned that into an exception, seen under load).
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno != ENOENT && errno != ESRCH;
  char buffer[512];
  const ssize_t got = ::read(fd, buffer, sizeof(buffer));
  const int read_errno = errno;
  ::close(fd);
  if (got < 0) return read_errno != ESRCH && read_errno != ENOENT;
  const std::string_view text(buffer, static_cast<size_t>(got));
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 >= text.size()) return true;
  const char state = text[paren + 2];
  return state != 'Z' && state != 'X';
}

void pause_briefly(int64_t iteration) {
  if (iteration < 64) return;
  // NOTE: short sleeps instead of a futex keep the code portable; 20 us bounds the added latency.
  timespec duration{0, iteration < 1024 ? 2000 : 20000};
  ::nanosleep(&duration, nullptr);
}

}  // namespace

struct alignas(64) RankState {
  std::atomic<int32_t> pid;
  std::atomic<uint64_t> barrier;
};

// The shared header, at offset 0 of the segment; the slots follow at header_bytes().
struct ShmBuffer::Segment {
  std::atomic<uint64_t> magic;
  int32_t num_ranks;
  int32_t creator_pid;
  int64_t num_bytes;
  int64_t slot_bytes;
  std::atomic<int32_t> abort_state;  // 0 running, 1 message being written, 2 aborted
  char abort_message[1024];
  RankState ranks[kMaxRanks];
  std::atomic<uint64_t> ready[kMaxRanks * kMaxRanks];  // ready[src * num_ranks + dst]
};

namespace {
constexpr int64_t header_bytes() { return round_up(sizeof(ShmBuffer::Segment), kPageBytes); }
}  // namespace

struct ShmBuffer::Pending {
  int op = kNone;
  // low_latency_dispatch
  DType out_dtype = DType::kFloat32;
  int64_t hidden = 0, num_tokens = 0, num_topk = 0, num_experts = 0, max_tokens_per_rank = 0;
  // low_latency_combine
  std::vector<float> topk_weights;
};

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
    case DType::kFloat8E4M3: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat8E4M3: return "float8_e4m3fn";
  }
  return "unknown";
}

int64_t DispatchHandle::num_recv_tokens() const {
  int64_t total = 0;
  for (int64_t count : recv_counts) total += count;
  return total;
}

Result<DispatchLayout> get_dispatch_layout(std::span<const int64_t> topk_idx, int64_t num_tokens, int64_t num_topk,
                                           int64_t num_experts, int num_ranks) {
  if (num_ranks < 1 || num_experts < 1 || num_experts % num_ranks != 0) {
    return invalid_argument("num_experts={} must be a positive multiple of num_ranks={}", num_experts, num_ranks);
  }
  if (num_tokens < 0 || num_topk < 0 || static_cast<int64_t>(topk_idx.size()) != num_tokens * num_topk) {
    return invalid_argument("topk_idx has {} entries, expected num_tokens={} x num_topk={}", topk_idx.size(),
                            num_tokens, num_topk);
  }
  const int64_t experts_per_rank = num_experts / num_ranks;
  DispatchLayout layout;
  layout.num_tokens_per_rank.assign(static_cast<size_t>(num_ranks), 0);
  layout.num_tokens_per_expert.assign(static_cast<size_t>(num_experts), 0);
  layout.is_token_in_rank.assign(static_cast<size_t>(num_tokens * num_ranks), 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t k = 0; k < num_topk; ++k) {
      const int64_t expert = topk_idx[static_cast<size_t>(t * num_topk + k)];
      if (expert == -1) continue;
      if (expert < 0 || expert >= num_experts) {
        return invalid_argument("topk_idx[{}][{}]={} is outside [0, {}) (or -1 for none)", t, k, expert, num_experts);
      }
      ++layout.num_tokens_per_expert[static_cast<size_t>(expert)];
      layout.is_token_in_rank[static_cast<size_t>(t * num_ranks + expert / experts_per_rank)] = 1;
    }
    for (int r = 0; r < num_ranks; ++r)
      layout.num_tokens_per_rank[static_cast<size_t>(r)] +=
          layout.is_token_in_rank[static_cast<size_t>(t * num_ranks + r)];
  }
  return layout;
}

// ---------------------------------------------------------------------------------------------------
// Segment lifetime

Result<std::unique_ptr<ShmBuffer>> ShmBuffer::create(const BufferOptions& options) {
  if (options.group.empty() || options.group.size() > 200 ||
      !std::all_of(options.group.begin(), options.group.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
      })) {
    return invalid_argument("group '{}' must be 1-200 characters of [A-Za-z0-9_.-]", options.group);
  }
  if (options.num_ranks < 1 || options.num_ranks > kMaxRanks) {
    return invalid_argument("num_ranks={} must be in [1, {}]", options.num_ranks, kMaxRanks);
  }
  if (options.rank < 0 || options.rank >= options.num_ranks) {
    return invalid_argument("rank={} must be in [0, num_ranks={})", options.rank, options.num_ranks);
  }
  if (options.num_bytes <= 0) return invalid_argument("num_bytes={} must be positive", options.num_bytes);
  if (options.timeout_ms <= 0) return invalid_argument("timeout_ms={} must be positive", options.timeout_ms);
  std::unique_ptr<ShmBuffer> buffer(new ShmBuffer(options));
  FF_RETURN_IF_ERROR(buffer->attach());
  return buffer;
}

Status ShmBuffer::attach() {
  name_ = "/ff_ep_" + options_.group;
  const int n = options_.num_ranks;
  const int64_t slot_bytes = options_.num_bytes / (int64_t{n} * n) / 64 * 64;
  if (slot_bytes < kSlotHeaderBytes + 64) {
    return invalid_argument("num_bytes={} gives {} bytes per (source, destination) slot for {} ranks; need >= {}",
                            options_.num_bytes, slot_bytes, n, kSlotHeaderBytes + 64);
  }
  const int64_t total = header_bytes() + slot_bytes * n * n;
  Deadline deadline(system_clock(), options_.timeout_ms * 1000000);
  if (options_.rank == 0) {
    ::shm_unlink(name_.c_str());  // a stale segment of a crashed run; ENOENT is the normal case
    fd_ = ::shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd_ < 0) return errno_error(errno, "shm_open " + name_);
    if (::ftruncate(fd_, total) != 0) return errno_error(errno, "ftruncate " + name_);
    map_ = ::mmap(nullptr, static_cast<size_t>(total), PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (map_ == MAP_FAILED) {
      map_ = nullptr;
      return errno_error(errno, "mmap " + name_);
    }
    map_bytes_ = total;
    segment_ = new (map_) Segment();  // the pages are zero: every counter starts at 0
    segment_->num_ranks = n;
    segment_->creator_pid = static_cast<int32_t>(::getpid());
    segment_->num_bytes = options_.num_bytes;
    segment_->slot_bytes = slot_bytes;
    segment_->magic.store(kMagic, std::memory_order_release);
  } else {
    for (int64_t attempt = 0;; ++attempt) {
      if (deadline.expired()) {
        return deadline_exceeded("ep group '{}' rank {}: timed out after {} ms waiting for rank 0 to create {}",
                                 options_.group, options_.rank, options_.timeout_ms, name_);
      }
      if (map_ != nullptr) {
        ::munmap(map_, static_cast<size_t>(map_bytes_));
        map_ = nullptr;
      }
      if (fd_ >= 0) ::close(fd_);
      fd_ = ::shm_open(name_.c_str(), O_RDWR, 0600);
      struct stat info {};
      if (fd_ < 0 || ::fstat(fd_, &info) != 0 || info.st_size < static_cast<off_t>(sizeof(Segment))) {
        pause_briefly(1024 + attempt);
        continue;
      }
      map_ = ::mmap(nullptr, static_cast<size_t>(info.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
      if (map_ == MAP_FAILED) {
        map_ = nullptr;
        return errno_error(errno, "mmap " + name_);
      }
      map_bytes_ = info.st_size;
      segment_ = static_cast<Segment*>(map_);
      if (segment_->magic.load(std::memory_order_acquire) != kMagic || !process_alive(segment_->creator_pid)) {
        pause_briefly(1024 + attempt);  // not initialized yet, or left by a dead run: look again
        continue;
      }
      if (segment_->num_ranks != n || segment_->num_bytes != options_.num_bytes || map_bytes_ != total) {
        return invalid_argument(
            "ep group '{}': rank 0 created the buffer with num_ranks={} num_bytes={}, but rank {} asks for "
            "num_ranks={} num_bytes={}",
            options_.group, segment_->num_ranks, segment_->num_bytes, options_.rank, n, options_.num_bytes);
      }
      break;
    }
  }
  data_ = static_cast<uint8_t*>(map_) + header_bytes();
  slot_bytes_ = slot_bytes;
  int32_t expected = 0;
  const int32_t me = static_cast<int32_t>(::getpid());
  RankState& state = segment_->ranks[options_.rank];
  if (!state.pid.compare_exchange_strong(expected, me, std::memory_order_acq_rel) && expected != me) {
    return already_exists("ep group '{}': rank {} is already taken by pid {}", options_.group, options_.rank, expected);
  }
  for (int peer = 0; peer < n; ++peer) {
    for (int64_t iteration = 0; segment_->ranks[peer].pid.load(std::memory_order_acquire) == 0; ++iteration) {
      if (deadline.expired()) {
        return deadline_exceeded("ep group '{}' rank {}: timed out after {} ms waiting for rank {} to join",
                                 options_.group, options_.rank, options_.timeout_ms, peer);
      }
      pause_briefly(iteration);
    }
  }
  // Every rank has the segment mapped: the name is no longer needed, and a crash cannot leak it.
  if (options_.rank == 0) ::shm_unlink(name_.c_str());
  return Status::ok();
}

ShmBuffer::~ShmBuffer() {
  if (map_ != nullptr) ::munmap(map_, static_cast<size_t>(map_bytes_));
  if (fd_ >= 0) ::close(fd_);
}

// ---------------------------------------------------------------------------------------------------
// Waiting, failure detection and the per-call protocol

void ShmBuffer::abort_group(const std::string& message) {
  int32_t expected = 0;
  if (segment_->abort_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    const size_t length = std::min(message.size(), sizeof(segment_->abort_message) - 1);
    std::memcpy(segment_->abort_message, message.data(), length);
    segment_->abort_message[length] = '\0';
    segment_->abort_state.store(2, std::memory_order_release);
  }
}

Status ShmBuffer::fail(Status status) {
  abort_group(status.to_string());
  return status;
}

namespace {
Status aborted_status(const ShmBuffer::Segment& segment, const std::string& group, int rank) {
  // The aborting rank writes its message between states 1 and 2: wait for it, boundedly.
  for (int i = 0; i < 1000 && segment.abort_state.load(std::memory_order_acquire) == 1; ++i) pause_briefly(1024);
  return aborted("ep group '{}' rank {}: the group was aborted: {}", group, rank,
                 segment.abort_state.load(std::memory_order_acquire) == 2 ? segment.abort_message : "(no message)");
}
}  // namespace

Status ShmBuffer::check_peer_alive(int peer) const {
  const int32_t pid = segment_->ranks[peer].pid.load(std::memory_order_acquire);
  if (process_alive(pid)) return Status::ok();
  return unavailable("rank {} (pid {}) of ep group '{}' died", peer, pid, options_.group);
}

Status ShmBuffer::wait_for(int peer, const char* what, const std::function<bool()>& done) {
  Deadline deadline(system_clock(), options_.timeout_ms * 1000000);
  for (int64_t iteration = 0;; ++iteration) {
    if (done()) return Status::ok();
    if (segment_->abort_state.load(std::memory_order_acquire) != 0) {
      return aborted_status(*segment_, options_.group, options_.rank);
    }
    if (iteration % 256 == 255) {
      Status alive = check_peer_alive(peer);
      if (!alive.is_ok()) {
        // A peer that failed first aborts the group and may exit before this rank looks: report the
        // group's first error (the root cause), not the exit that followed it.
        if (segment_->abort_state.load(std::memory_order_acquire) != 0) {
          return aborted_status(*segment_, options_.group, options_.rank);
        }
        return fail(unavailable("ep group '{}' rank {}: rank {} died while this rank waited for {} (call {}, {})",
                                options_.group, options_.rank, peer, what, seq_, op_name(op_)));
      }
    }
    if (deadline.expired()) {
      return fail(deadline_exceeded("ep group '{}' rank {}: timed out after {} ms waiting for rank {} {} (call {}, {})",
                                    options_.group, options_.rank, options_.timeout_ms, peer, what, seq_,
                                    op_name(op_)));
    }
    pause_briefly(iteration);
  }
}

Status ShmBuffer::begin_call(int op) {
  if (segment_->abort_state.load(std::memory_order_acquire) != 0) {
    return aborted_status(*segment_, options_.group, options_.rank);
  }
  if (pending_ != kNone) {
    return failed_precondition("ep rank {}: {} called while the receive half (hook) of {} is pending", options_.rank,
                               op_name(op), op_name(pending_));
  }
  // A dead peer fails the call at once, even if this call would not wait for it until later.
  for (int peer = 0; peer < options_.num_ranks; ++peer) {
    Status alive = check_peer_alive(peer);
    if (alive.is_ok()) continue;
    // As in wait_for: a peer may have aborted the group with the root cause and exited since the check above.
    if (segment_->abort_state.load(std::memory_order_acquire) != 0) {
      return aborted_status(*segment_, options_.group, options_.rank);
    }
    return fail(alive.with_context(fmt::format("ep rank {} starting {}", options_.rank, op_name(op))));
  }
  ++seq_;
  op_ = op;
  return Status::ok();
}

uint8_t* ShmBuffer::slot(int src, int dst) const {
  return data_ + (int64_t{src} * options_.num_ranks + dst) * slot_bytes_;
}

Status ShmBuffer::publish(int dst) {
  segment_->ready[options_.rank * options_.num_ranks + dst].store(seq_, std::memory_order_release);
  return Status::ok();
}

Status ShmBuffer::wait_published(int src, const char* what) {
  std::atomic<uint64_t>& ready = segment_->ready[src * options_.num_ranks + options_.rank];
  FF_RETURN_IF_ERROR(wait_for(src, what, [&] { return ready.load(std::memory_order_acquire) >= seq_; }));
  SlotHeader header;
  std::memcpy(&header, slot(src, options_.rank), sizeof(header));
  if (header.seq != seq_ || header.op != op_) {
    return fail(
        failed_precondition("ep group '{}': rank {} is in call {} ({}) but rank {} sent call {} ({}); every "
                            "rank must call the same collectives in the same order",
                            options_.group, options_.rank, seq_, op_name(op_), src, header.seq, op_name(header.op)));
  }
  return Status::ok();
}

Status ShmBuffer::barrier(const char* what) {
  segment_->ranks[options_.rank].barrier.store(seq_, std::memory_order_release);
  for (int peer = 0; peer < options_.num_ranks; ++peer) {
    std::atomic<uint64_t>& arrived = segment_->ranks[peer].barrier;
    FF_RETURN_IF_ERROR(wait_for(peer, what, [&] { return arrived.load(std::memory_order_acquire) >= seq_; }));
  }
  return Status::ok();
}

namespace {

// Writes the slot header; fails (the caller aborts) when the rows do not fit.
Status write_header(uint8_t* slot, int64_t slot_bytes, const SlotHeader& header, int src, int dst) {
  const int64_t needed = kSlotHeaderBytes + header.num_rows * header.row_stride;
  if (needed > slot_bytes) {
    return resource_exhausted(
        "{} rows of {} bytes from rank {} to rank {} need {} bytes, but a slot holds {} bytes; give the buffer at "
        "least {} bytes (num_ranks^2 slots)",
        header.num_rows, header.row_stride, src, dst, needed, slot_bytes, needed);
  }
  std::memcpy(slot, &header, sizeof(header));
  return Status::ok();
}

Status check_rows(const RowsView& x, const char* name, bool allow_fp8) {
  if (x.num_rows < 0 || x.hidden <= 0) return invalid_argument("{} has shape ({}, {})", name, x.num_rows, x.hidden);
  if (x.num_rows > 0 && x.data == nullptr) return invalid_argument("{} has no data", name);
  if (x.dtype == DType::kFloat8E4M3) {
    if (!allow_fp8) return invalid_argument("{} must be float32 or bfloat16, not float8_e4m3fn", name);
    if (x.hidden % kFp8BlockSize != 0) {
      return invalid_argument("{} is float8 with hidden={}, which must be a multiple of {}", name, x.hidden,
                              kFp8BlockSize);
    }
    if (x.num_rows > 0 && x.scales == nullptr) return invalid_argument("{} is float8 but has no scales", name);
  }
  return Status::ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Normal dispatch and combine

Result<DispatchOutput> ShmBuffer::dispatch(const DispatchInput& in) {
  FF_RETURN_IF_ERROR(begin_call(kDispatch));
  const int n = options_.num_ranks;
  const int me = options_.rank;
  const RowsView& x = in.x;
  const int64_t num_tokens = x.num_rows;
  const bool cached = in.handle != nullptr;
  Status valid = check_rows(x, "x", true);
  if (valid.is_ok() && cached && (in.handle->num_ranks != n || in.handle->num_tokens != num_tokens)) {
    valid = invalid_argument("the handle was made for {} ranks and {} tokens, but x has {} tokens on {} ranks",
                             in.handle->num_ranks, in.handle->num_tokens, num_tokens, n);
  }
  const int64_t num_topk = cached ? 0 : in.num_topk;
  if (valid.is_ok() && !cached && static_cast<int64_t>(in.topk_idx.size()) != num_tokens * num_topk) {
    valid = invalid_argument("topk_idx has {} entries, expected {} tokens x {} top-k", in.topk_idx.size(), num_tokens,
                             num_topk);
  }
  if (valid.is_ok() && !cached && !in.topk_weights.empty() && in.topk_weights.size() != in.topk_idx.size()) {
    valid = invalid_argument("topk_weights has {} entries, but topk_idx has {}", in.topk_weights.size(),
                             in.topk_idx.size());
  }
  if (valid.is_ok() && in.expert_alignment < 1) {
    valid = invalid_argument("expert_alignment={} must be >= 1", in.expert_alignment);
  }
  auto handle = std::make_shared<DispatchHandle>();
  if (cached) {
    *handle = *in.handle;
  } else if (valid.is_ok()) {
    handle->num_ranks = n;
    handle->num_tokens = num_tokens;
    handle->send_token_ids.assign(static_cast<size_t>(n), {});
    std::vector<uint8_t> computed;
    std::span<const uint8_t> in_rank = in.is_token_in_rank;
    Result<DispatchLayout> layout = get_dispatch_layout(in.topk_idx, num_tokens, num_topk, in.num_experts, n);
    if (!layout.is_ok()) valid = layout.status();
    if (valid.is_ok() && in_rank.empty()) in_rank = layout->is_token_in_rank;
    if (valid.is_ok() && static_cast<int64_t>(in_rank.size()) != num_tokens * n) {
      valid = invalid_argument("is_token_in_rank has {} entries, expected {} tokens x {} ranks", in_rank.size(),
                               num_tokens, n);
    }
    for (int64_t t = 0; valid.is_ok() && t < num_tokens; ++t) {
      for (int r = 0; r < n; ++r) {
        if (in_rank[static_cast<size_t>(t * n + r)]) handle->send_token_ids[static_cast<size_t>(r)].push_back(t);
      }
    }
    if (valid.is_ok() && !in.num_tokens_per_rank.empty()) {
      for (int r = 0; r < n && valid.is_ok(); ++r) {
        const int64_t expected = static_cast<int64_t>(handle->send_token_ids[static_cast<size_t>(r)].size());
        if (static_cast<int64_t>(in.num_tokens_per_rank.size()) != n ||
            in.num_tokens_per_rank[static_cast<size_t>(r)] != expected) {
          valid = invalid_argument("num_tokens_per_rank[{}] does not match is_token_in_rank ({} tokens)", r, expected);
        }
      }
    }
  }
  if (!valid.is_ok()) return fail(valid.with_context(fmt::format("ep rank {} dispatch", me)));

  const int64_t x_bytes = x.hidden * dtype_size(x.dtype);
  const int64_t num_scales = x.dtype == DType::kFloat8E4M3 ? x.hidden / kFp8BlockSize : 0;
  const int64_t stride = round_up(x_bytes + num_scales * 4 + num_topk * 12, 8);
  const auto* x_bytes_ptr = static_cast<const uint8_t*>(x.data);
  for (int dst = 0; dst < n; ++dst) {
    const std::vector<int64_t>& tokens = handle->send_token_ids[static_cast<size_t>(dst)];
    SlotHeader header{seq_,
                      kDispatch,
                      static_cast<int32_t>(x.dtype),
                      static_cast<int64_t>(tokens.size()),
                      x.hidden,
                      num_topk,
                      stride,
                      cached ? 1 : 0,
                      0};
    uint8_t* out = slot(me, dst);
    Status fits = write_header(out, slot_bytes_, header, me, dst);
    if (!fits.is_ok()) return fail(fits);
    uint8_t* row = out + kSlotHeaderBytes;
    for (int64_t t : tokens) {
      std::memcpy(row, x_bytes_ptr + t * x_bytes, static_cast<size_t>(x_bytes));
      if (num_scales > 0) std::memcpy(row + x_bytes, x.scales + t * num_scales, static_cast<size_t>(num_scales * 4));
      uint8_t* topk = row + x_bytes + num_scales * 4;
      if (num_topk > 0) {
        std::memcpy(topk, in.topk_idx.data() + t * num_topk, static_cast<size_t>(num_topk * 8));
        std::vector<float> weights(static_cast<size_t>(num_topk), 0.0f);
        if (!in.topk_weights.empty()) std::copy_n(in.topk_weights.data() + t * num_topk, num_topk, weights.begin());
        std::memcpy(topk + num_topk * 8, weights.data(), static_cast<size_t>(num_topk * 4));
      }
      row += stride;
    }
    FF_RETURN_IF_ERROR(publish(dst));
  }

  std::vector<int64_t> recv_counts(static_cast<size_t>(n), 0);
  for (int src = 0; src < n; ++src) {
    FF_RETURN_IF_ERROR(wait_published(src, "to publish its dispatch rows"));
    SlotHeader header;
    std::memcpy(&header, slot(src, me), sizeof(header));
    if (header.dtype != static_cast<int32_t>(x.dtype) || header.hidden != x.hidden || header.num_topk != num_topk) {
      return fail(invalid_argument(
          "ep dispatch: rank {} sent {} rows of hidden={} with {} top-k, but rank {} has {} rows of hidden={} with {}",
          src, dtype_name(static_cast<DType>(header.dtype)), header.hidden, header.num_topk, me, dtype_name(x.dtype),
          x.hidden, num_topk));
    }
    recv_counts[static_cast<size_t>(src)] = header.num_rows;
  }
  if (cached && recv_counts != handle->recv_counts) {
    return fail(
        failed_precondition("ep rank {}: cached dispatch received a different number of rows per source than "
                            "the handle records; the handle belongs to another layout",
                            me));
  }

  DispatchOutput output;
  int64_t num_recv = 0;
  for (int64_t count : recv_counts) num_recv += count;
  output.recv_x = Rows{x.dtype, num_recv, x.hidden, std::vector<uint8_t>(static_cast<size_t>(num_recv * x_bytes)),
                       std::vector<float>(static_cast<size_t>(num_recv * num_scales))};
  output.recv_topk_idx.resize(static_cast<size_t>(num_recv * num_topk));
  output.recv_topk_weights.resize(static_cast<size_t>(num_recv * num_topk));
  const int64_t experts_per_rank = cached ? 0 : in.num_experts / n;
  std::vector<int64_t> per_expert(static_cast<size_t>(experts_per_rank), 0);
  int64_t row_out = 0;
  for (int src = 0; src < n; ++src) {
    const uint8_t* row = slot(src, me) + kSlotHeaderBytes;
    for (int64_t i = 0; i < recv_counts[static_cast<size_t>(src)]; ++i, ++row_out, row += stride) {
      std::memcpy(output.recv_x.bytes.data() + row_out * x_bytes, row, static_cast<size_t>(x_bytes));
      if (num_scales > 0) {
        std::memcpy(output.recv_x.scales.data() + row_out * num_scales, row + x_bytes,
                    static_cast<size_t>(num_scales * 4));
      }
      const uint8_t* topk = row + x_bytes + num_scales * 4;
      for (int64_t k = 0; k < num_topk; ++k) {
        int64_t expert;
        float weight;
        std::memcpy(&expert, topk + k * 8, 8);
        std::memcpy(&weight, topk + num_topk * 8 + k * 4, 4);
        const int64_t local = expert - int64_t{me} * experts_per_rank;
        const bool here = expert >= 0 && local >= 0 && local < experts_per_rank;
        output.recv_topk_idx[static_cast<size_t>(row_out * num_topk + k)] = here ? local : -1;
        output.recv_topk_weights[static_cast<size_t>(row_out * num_topk + k)] = here ? weight : 0.0f;
        if (here) ++per_expert[static_cast<size_t>(local)];
      }
    }
  }
  FF_RETURN_IF_ERROR(barrier("to finish dispatch"));
  if (!cached) {
    handle->recv_counts = recv_counts;
    for (int64_t& count : per_expert) count = round_up(count, in.expert_alignment);
    handle->num_recv_tokens_per_expert = per_expert;
  }
  output.num_recv_tokens_per_expert = handle->num_recv_tokens_per_expert;
  output.handle = std::move(handle);
  return output;
}

Result<CombineOutput> ShmBuffer::combine(const RowsView& x, const DispatchHandle& handle,
                                         std::span<const float> topk_weights, int64_t num_topk,
                                         std::span<const RowsView> bias) {
  FF_RETURN_IF_ERROR(begin_call(kCombine));
  const int n = options_.num_ranks;
  const int me = options_.rank;
  Status valid = check_rows(x, "x", false);
  if (valid.is_ok() && (handle.num_ranks != n || x.num_rows != handle.num_recv_tokens())) {
    valid = invalid_argument("x has {} rows but the handle received {} rows (on {} ranks; this group has {})",
                             x.num_rows, handle.num_recv_tokens(), handle.num_ranks, n);
  }
  if (valid.is_ok() && !topk_weights.empty() && static_cast<int64_t>(topk_weights.size()) != x.num_rows * num_topk) {
    valid = invalid_argument("topk_weights has {} entries, expected {} rows x {} top-k", topk_weights.size(),
                             x.num_rows, num_topk);
  }
  if (valid.is_ok() && bias.size() > 2)
    valid = invalid_argument("{} bias matrices given, expected at most 2", bias.size());
  for (size_t i = 0; valid.is_ok() && i < bias.size(); ++i) {
    const RowsView& b = bias[i];
    valid = check_rows(b, "bias", false);
    if (valid.is_ok() && (b.dtype != x.dtype || b.num_rows != handle.num_tokens || b.hidden != x.hidden)) {
      valid =
          invalid_argument("bias {} is {} ({}, {}); expected x's dtype {} and (num_tokens, hidden) = ({}, {})", i,
                           dtype_name(b.dtype), b.num_rows, b.hidden, dtype_name(x.dtype), handle.num_tokens, x.hidden);
    }
  }
  if (!valid.is_ok()) return fail(valid.with_context(fmt::format("ep rank {} combine", me)));
  // A rank that received no rows passes no weights but still takes part in the weighted combine.
  if (topk_weights.empty() && x.num_rows > 0) num_topk = 0;

  const int64_t x_bytes = x.hidden * dtype_size(x.dtype);
  const int64_t stride = round_up(x_bytes + num_topk * 4, 8);
  const auto* x_ptr = static_cast<const uint8_t*>(x.data);
  int64_t offset = 0;
  for (int dst = 0; dst < n; ++dst) {
    const int64_t count = handle.recv_counts[static_cast<size_t>(dst)];
    SlotHeader header{seq_, kCombine, static_cast<int32_t>(x.dtype), count, x.hidden, num_topk, stride, 0, 0};
    uint8_t* out = slot(me, dst);
    Status fits = write_header(out, slot_bytes_, header, me, dst);
    if (!fits.is_ok()) return fail(fits);
    for (int64_t i = 0; i < count; ++i) {
      uint8_t* row = out + kSlotHeaderBytes + i * stride;
      std::memcpy(row, x_ptr + (offset + i) * x_bytes, static_cast<size_t>(x_bytes));
      if (num_topk > 0) {
        std::memcpy(row + x_bytes, topk_weights.data() + (offset + i) * num_topk, static_cast<size_t>(num_topk * 4));
      }
    }
    offset += count;
    FF_RETURN_IF_ERROR(publish(dst));
  }

  const int64_t num_tokens = handle.num_tokens;
  std::vector<float> sum(static_cast<size_t>(num_tokens * x.hidden), 0.0f);
  for (const RowsView& b : bias) {  // DeepEP's order: 0 + bias0 + bias1, then the ranks' rows
    const auto* rows = static_cast<const uint8_t*>(b.data);
    for (int64_t t = 0; t < num_tokens; ++t) {
      float* acc = sum.data() + t * x.hidden;
      for (int64_t i = 0; i < x.hidden; ++i) acc[i] += load_element(x.dtype, rows + t * x_bytes, i);
    }
  }
  CombineOutput output;
  output.combined_topk_weights.assign(static_cast<size_t>(num_tokens * num_topk), 0.0f);
  for (int src = 0; src < n; ++src) {
    FF_RETURN_IF_ERROR(wait_published(src, "to publish its combine rows"));
    SlotHeader header;
    std::memcpy(&header, slot(src, me), sizeof(header));
    const std::vector<int64_t>& tokens = handle.send_token_ids[static_cast<size_t>(src)];
    if (header.num_rows != static_cast<int64_t>(tokens.size()) || header.hidden != x.hidden ||
        header.dtype != static_cast<int32_t>(x.dtype) || (header.num_rows > 0 && header.num_topk != num_topk)) {
      return fail(
          invalid_argument("ep combine: rank {} sent {} {} rows of hidden={} ({} top-k) back to rank {}, which "
                           "dispatched {} {} rows of hidden={} ({} top-k) to it",
                           src, header.num_rows, dtype_name(static_cast<DType>(header.dtype)), header.hidden,
                           header.num_topk, me, tokens.size(), dtype_name(x.dtype), x.hidden, num_topk));
    }
    const uint8_t* row = slot(src, me) + kSlotHeaderBytes;
    for (int64_t t : tokens) {
      float* acc = sum.data() + t * x.hidden;
      for (int64_t i = 0; i < x.hidden; ++i) acc[i] += load_element(x.dtype, row, i);
      for (int64_t k = 0; k < num_topk; ++k) {
        float weight;
        std::memcpy(&weight, row + x_bytes + k * 4, 4);
        output.combined_topk_weights[static_cast<size_t>(t * num_topk + k)] += weight;
      }
      row += stride;
    }
  }
  FF_RETURN_IF_ERROR(barrier("to finish combine"));
  output.combined_x =
      Rows{x.dtype, num_tokens, x.hidden, std::vector<uint8_t>(static_cast<size_t>(num_tokens * x_bytes)), {}};
  for (int64_t t = 0; t < num_tokens; ++t) {
    store_row(x.dtype, sum.data() + t * x.hidden, x.hidden, output.combined_x.bytes.data() + t * x_bytes);
  }
  return output;
}

// ---------------------------------------------------------------------------------------------------
// Low-latency dispatch and combine. Wire rows: int32 local expert, int32 token, int32 k, int32 pad, data
// (e4m3 codes + scales when FP8, else the input dtype).

namespace {
constexpr int64_t kLowLatencyMetaBytes = 16;
}

Status ShmBuffer::low_latency_dispatch_send(const RowsView& x, std::span<const int64_t> topk_idx, int64_t num_topk,
                                            int64_t max_tokens_per_rank, int64_t num_experts, bool use_fp8,
                                            bool round_scale) {
  FF_RETURN_IF_ERROR(begin_call(kLowLatencyDispatch));
  const int n = options_.num_ranks;
  const int me = options_.rank;
  Status valid = check_rows(x, "x", false);
  if (valid.is_ok() && (x.num_rows > max_tokens_per_rank || max_tokens_per_rank < 1)) {
    valid = invalid_argument("x has {} tokens, more than num_max_dispatch_tokens_per_rank={}", x.num_rows,
                             max_tokens_per_rank);
  }
  if (valid.is_ok() && use_fp8 && x.hidden % kFp8BlockSize != 0) {
    valid = invalid_argument("use_fp8 needs hidden={} to be a multiple of {}", x.hidden, kFp8BlockSize);
  }
  if (valid.is_ok()) valid = get_dispatch_layout(topk_idx, x.num_rows, num_topk, num_experts, n).status();
  if (!valid.is_ok()) return fail(valid.with_context(fmt::format("ep rank {} low_latency_dispatch", me)));

  const DType out_dtype = use_fp8 ? DType::kFloat8E4M3 : x.dtype;
  const int64_t data_bytes = x.hidden * dtype_size(out_dtype);
  const int64_t num_scales = use_fp8 ? x.hidden / kFp8BlockSize : 0;
  const int64_t stride = round_up(kLowLatencyMetaBytes + data_bytes + num_scales * 4, 8);
  const int64_t experts_per_rank = num_experts / n;
  const int64_t x_bytes = x.hidden * dtype_size(x.dtype);
  const auto* x_ptr = static_cast<const uint8_t*>(x.data);
  for (int dst = 0; dst < n; ++dst) {
    uint8_t* out = slot(me, dst);
    int64_t num_rows = 0;
    for (int64_t t = 0; t < x.num_rows; ++t) {
      for (int64_t k = 0; k < num_topk; ++k) {
        const int64_t expert = topk_idx[static_cast<size_t>(t * num_topk + k)];
        if (expert < 0 || expert / experts_per_rank != dst) continue;
        if (kSlotHeaderBytes + (num_rows + 1) * stride > slot_bytes_) {
          return fail(resource_exhausted("ep rank {} low_latency_dispatch: rows for rank {} overflow the {}-byte slot",
                                         me, dst, slot_bytes_));
        }
        uint8_t* row = out + kSlotHeaderBytes + num_rows * stride;
        const int32_t meta[4] = {static_cast<int32_t>(expert - dst * experts_per_rank), static_cast<int32_t>(t),
                                 static_cast<int32_t>(k), 0};
        std::memcpy(row, meta, sizeof(meta));
        if (use_fp8) {
          float scales[4096];  // hidden / 128 <= 4096 for hidden <= 524288
          FF_ASSERT_LE(num_scales, 4096);
          quantize_row(x.dtype, x_ptr + t * x_bytes, x.hidden, row + kLowLatencyMetaBytes, scales, round_scale);
          std::memcpy(row + kLowLatencyMetaBytes + data_bytes, scales, static_cast<size_t>(num_scales * 4));
        } else {
          std::memcpy(row + kLowLatencyMetaBytes, x_ptr + t * x_bytes, static_cast<size_t>(x_bytes));
        }
        ++num_rows;
      }
    }
    SlotHeader header{seq_,
                      kLowLatencyDispatch,
                      static_cast<int32_t>(out_dtype),
                      num_rows,
                      x.hidden,
                      num_topk,
                      stride,
                      0,
                      /*reserved = num_experts*/ num_experts};
    FF_RETURN_IF_ERROR(write_header(out, slot_bytes_, header, me, dst));
    FF_RETURN_IF_ERROR(publish(dst));
  }
  pending_ = kLowLatencyDispatch;
  pending_state_ = std::make_shared<Pending>();
  pending_state_->op = kLowLatencyDispatch;
  pending_state_->out_dtype = out_dtype;
  pending_state_->hidden = x.hidden;
  pending_state_->num_tokens = x.num_rows;
  pending_state_->num_topk = num_topk;
  pending_state_->num_experts = num_experts;
  pending_state_->max_tokens_per_rank = max_tokens_per_rank;
  return Status::ok();
}

Result<LowLatencyDispatchOutput> ShmBuffer::low_latency_dispatch_receive() {
  if (pending_ != kLowLatencyDispatch) {
    return failed_precondition("ep rank {}: low_latency_dispatch receive without a pending send", options_.rank);
  }
  pending_ = kNone;
  const Pending state = *pending_state_;
  pending_state_.reset();
  const int n = options_.num_ranks;
  const int me = options_.rank;
  const int64_t experts_per_rank = state.num_experts / n;
  const int64_t capacity = state.max_tokens_per_rank * n;  // rows per local expert
  const int64_t data_bytes = state.hidden * dtype_size(state.out_dtype);
  const int64_t num_scales = state.out_dtype == DType::kFloat8E4M3 ? state.hidden / kFp8BlockSize : 0;
  LowLatencyDispatchOutput output;
  output.recv_x = Rows{state.out_dtype, experts_per_rank * capacity, state.hidden,
                       std::vector<uint8_t>(static_cast<size_t>(experts_per_rank * capacity * data_bytes)),
                       std::vector<float>(static_cast<size_t>(experts_per_rank * capacity * num_scales))};
  output.recv_count.assign(static_cast<size_t>(experts_per_rank), 0);
  auto handle = std::make_shared<LowLatencyHandle>();
  handle->num_ranks = n;
  handle->num_tokens = state.num_tokens;
  handle->num_topk = state.num_topk;
  handle->hidden = state.hidden;
  handle->num_experts = state.num_experts;
  handle->max_tokens_per_rank = state.max_tokens_per_rank;
  handle->src_rank.resize(static_cast<size_t>(experts_per_rank));
  handle->src_token.resize(static_cast<size_t>(experts_per_rank));
  handle->src_k.resize(static_cast<size_t>(experts_per_rank));
  for (int src = 0; src < n; ++src) {
    FF_RETURN_IF_ERROR(wait_published(src, "to publish its low-latency dispatch rows"));
    SlotHeader header;
    std::memcpy(&header, slot(src, me), sizeof(header));
    if (header.hidden != state.hidden || header.dtype != static_cast<int32_t>(state.out_dtype)) {
      return fail(invalid_argument(
          "ep low_latency_dispatch: rank {} sent {} rows of hidden={}, rank {} expects {} of {}", src,
          dtype_name(static_cast<DType>(header.dtype)), header.hidden, me, dtype_name(state.out_dtype), state.hidden));
    }
    if (header.reserved != state.num_experts) {
      return fail(invalid_argument("ep low_latency_dispatch: rank {} has num_experts={}, rank {} has {}", src,
                                   header.reserved, me, state.num_experts));
    }
    for (int64_t i = 0; i < header.num_rows; ++i) {
      const uint8_t* row = slot(src, me) + kSlotHeaderBytes + i * header.row_stride;
      int32_t meta[4];
      std::memcpy(meta, row, sizeof(meta));
      const int64_t expert = meta[0];
      FF_ASSERT(expert >= 0 && expert < experts_per_rank, "local expert {} from rank {}", expert, src);
      const int64_t position = output.recv_count[static_cast<size_t>(expert)];
      if (position >= capacity) {
        return fail(
            resource_exhausted("ep rank {}: local expert {} receives more than {} rows (a token lists one "
                               "expert twice?)",
                               me, expert, capacity));
      }
      const int64_t out_row = expert * capacity + position;
      std::memcpy(output.recv_x.bytes.data() + out_row * data_bytes, row + kLowLatencyMetaBytes,
                  static_cast<size_t>(data_bytes));
      if (num_scales > 0) {
        std::memcpy(output.recv_x.scales.data() + out_row * num_scales, row + kLowLatencyMetaBytes + data_bytes,
                    static_cast<size_t>(num_scales * 4));
      }
      ++output.recv_count[static_cast<size_t>(expert)];
      handle->src_rank[static_cast<size_t>(expert)].push_back(src);
      handle->src_token[static_cast<size_t>(expert)].push_back(meta[1]);
      handle->src_k[static_cast<size_t>(expert)].push_back(meta[2]);
    }
  }
  FF_RETURN_IF_ERROR(barrier("to finish low_latency_dispatch"));
  output.handle = std::move(handle);
  return output;
}

Status ShmBuffer::low_latency_combine_send(const RowsView& x, std::span<const int64_t> topk_idx,
                                           std::span<const float> topk_weights, const LowLatencyHandle& handle) {
  FF_RETURN_IF_ERROR(begin_call(kLowLatencyCombine));
  const int n = options_.num_ranks;
  const int me = options_.rank;
  const int64_t experts_per_rank = handle.num_experts / std::max(1, handle.num_ranks);
  const int64_t capacity = handle.max_tokens_per_rank * n;
  Status valid = check_rows(x, "x", false);
  if (valid.is_ok() &&
      (handle.num_ranks != n || x.num_rows != experts_per_rank * capacity || x.hidden != handle.hidden)) {
    valid = invalid_argument("x has shape ({}, {}), expected ({} local experts x {}, {}) from the handle", x.num_rows,
                             x.hidden, experts_per_rank, capacity, handle.hidden);
  }
  const size_t entries = static_cast<size_t>(handle.num_tokens * handle.num_topk);
  if (valid.is_ok() && (topk_idx.size() != entries || topk_weights.size() != entries)) {
    valid = invalid_argument("topk_idx has {} and topk_weights {} entries; the dispatch had {} tokens x {} top-k",
                             topk_idx.size(), topk_weights.size(), handle.num_tokens, handle.num_topk);
  }
  if (!valid.is_ok()) return fail(valid.with_context(fmt::format("ep rank {} low_latency_combine", me)));

  const int64_t x_bytes = x.hidden * dtype_size(x.dtype);
  const int64_t stride = round_up(kLowLatencyMetaBytes + x_bytes, 8);
  const auto* x_ptr = static_cast<const uint8_t*>(x.data);
  for (int dst = 0; dst < n; ++dst) {
    uint8_t* out = slot(me, dst);
    int64_t num_rows = 0;
    for (int64_t expert = 0; expert < experts_per_rank; ++expert) {
      const auto& ranks = handle.src_rank[static_cast<size_t>(expert)];
      for (size_t i = 0; i < ranks.size(); ++i) {
        if (ranks[i] != dst) continue;
        if (kSlotHeaderBytes + (num_rows + 1) * stride > slot_bytes_) {
          return fail(resource_exhausted("ep rank {} low_latency_combine: rows for rank {} overflow the {}-byte slot",
                                         me, dst, slot_bytes_));
        }
        uint8_t* row = out + kSlotHeaderBytes + num_rows * stride;
        const int32_t meta[4] = {static_cast<int32_t>(expert), handle.src_token[static_cast<size_t>(expert)][i],
                                 handle.src_k[static_cast<size_t>(expert)][i], 0};
        std::memcpy(row, meta, sizeof(meta));
        std::memcpy(row + kLowLatencyMetaBytes, x_ptr + (expert * capacity + static_cast<int64_t>(i)) * x_bytes,
                    static_cast<size_t>(x_bytes));
        ++num_rows;
      }
    }
    SlotHeader header{
        seq_, kLowLatencyCombine, static_cast<int32_t>(x.dtype), num_rows, x.hidden, handle.num_topk, stride, 0, 0};
    FF_RETURN_IF_ERROR(write_header(out, slot_bytes_, header, me, dst));
    FF_RETURN_IF_ERROR(publish(dst));
  }
  pending_ = kLowLatencyCombine;
  pending_state_ = std::make_shared<Pending>();
  pending_state_->op = kLowLatencyCombine;
  pending_state_->out_dtype = x.dtype;
  pending_state_->hidden = x.hidden;
  pending_state_->num_tokens = handle.num_tokens;
  pending_state_->num_topk = handle.num_topk;
  pending_state_->topk_weights.assign(topk_weights.begin(), topk_weights.end());
  return Status::ok();
}

Result<Rows> ShmBuffer::low_latency_combine_receive() {
  if (pending_ != kLowLatencyCombine) {
    return failed_precondition("ep rank {}: low_latency_combine receive without a pending send", options_.rank);
  }
  pending_ = kNone;
  const Pending state = *pending_state_;
  pending_state_.reset();
  const int n = options_.num_ranks;
  const int me = options_.rank;
  std::vector<float> sum(static_cast<size_t>(state.num_tokens * state.hidden), 0.0f);
  for (int src = 0; src < n; ++src) {
    FF_RETURN_IF_ERROR(wait_published(src, "to publish its low-latency combine rows"));
    SlotHeader header;
    std::memcpy(&header, slot(src, me), sizeof(header));
    if (header.hidden != state.hidden || header.dtype != static_cast<int32_t>(state.out_dtype)) {
      return fail(invalid_argument(
          "ep low_latency_combine: rank {} sent {} rows of hidden={}, rank {} expects {} of {}", src,
          dtype_name(static_cast<DType>(header.dtype)), header.hidden, me, dtype_name(state.out_dtype), state.hidden));
    }
    for (int64_t i = 0; i < header.num_rows; ++i) {
      const uint8_t* row = slot(src, me) + kSlotHeaderBytes + i * header.row_stride;
      int32_t meta[4];
      std::memcpy(meta, row, sizeof(meta));
      if (meta[1] < 0 || meta[1] >= state.num_tokens || meta[2] < 0 || meta[2] >= state.num_topk) {
        return fail(
            invalid_argument("ep low_latency_combine: rank {} returned token {} slot {} to rank {}, which has "
                             "{} tokens x {} top-k; was the handle from another dispatch?",
                             src, meta[1], meta[2], me, state.num_tokens, state.num_topk));
      }
      const float weight = state.topk_weights[static_cast<size_t>(meta[1] * state.num_topk + meta[2])];
      float* acc = sum.data() + int64_t{meta[1]} * state.hidden;
      for (int64_t e = 0; e < state.hidden; ++e)
        acc[e] += weight * load_element(state.out_dtype, row + kLowLatencyMetaBytes, e);
    }
  }
  FF_RETURN_IF_ERROR(barrier("to finish low_latency_combine"));
  const int64_t x_bytes = state.hidden * dtype_size(state.out_dtype);
  Rows out{state.out_dtype,
           state.num_tokens,
           state.hidden,
           std::vector<uint8_t>(static_cast<size_t>(state.num_tokens * x_bytes)),
           {}};
  for (int64_t t = 0; t < state.num_tokens; ++t) {
    store_row(state.out_dtype, sum.data() + t * state.hidden, state.hidden, out.bytes.data() + t * x_bytes);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Exchange: a small all-to-all of byte blobs (the CUDA backend's control plane). Wire: the blob.

Result<std::vector<std::vector<uint8_t>>> ShmBuffer::exchange(const std::vector<std::vector<uint8_t>>& to_each,
                                                              const char* what) {
  FF_RETURN_IF_ERROR(begin_call(kExchange));
  const int n = options_.num_ranks;
  const int me = options_.rank;
  if (static_cast<int>(to_each.size()) != n) {
    return fail(invalid_argument("ep rank {} exchange ({}): {} blobs for {} ranks", me, what, to_each.size(), n));
  }
  for (int dst = 0; dst < n; ++dst) {
    const std::vector<uint8_t>& blob = to_each[static_cast<size_t>(dst)];
    SlotHeader header{seq_, kExchange, 0, static_cast<int64_t>(blob.size()), 1, 0, 1, 0, 0};
    uint8_t* out = slot(me, dst);
    Status fits = write_header(out, slot_bytes_, header, me, dst);
    if (!fits.is_ok()) return fail(fits.with_context(fmt::format("ep rank {} exchange ({})", me, what)));
    if (!blob.empty()) std::memcpy(out + kSlotHeaderBytes, blob.data(), blob.size());
    FF_RETURN_IF_ERROR(publish(dst));
  }
  std::vector<std::vector<uint8_t>> from_each(static_cast<size_t>(n));
  for (int src = 0; src < n; ++src) {
    FF_RETURN_IF_ERROR(wait_published(src, what));
    SlotHeader header;
    std::memcpy(&header, slot(src, me), sizeof(header));
    const uint8_t* data = slot(src, me) + kSlotHeaderBytes;
    from_each[static_cast<size_t>(src)].assign(data, data + header.num_rows);
  }
  FF_RETURN_IF_ERROR(barrier(what));
  return from_each;
}

Status ShmBuffer::check_group(bool check_liveness) const {
  if (segment_->abort_state.load(std::memory_order_acquire) != 0) {
    return aborted_status(*segment_, options_.group, options_.rank);
  }
  if (!check_liveness) return Status::ok();
  for (int peer = 0; peer < options_.num_ranks; ++peer) FF_RETURN_IF_ERROR(check_peer_alive(peer));
  return Status::ok();
}

}  // namespace ff::ep
