// Host side of the ep CUDA intranode backend (see include/ff/ep/cuda_buffer.h and docs/ep.md).
//
// Normal mode (default, "GPU layout"): a dispatch without a handle launches the notify kernel (per
// destination counts, token positions and per-expert counts computed on the GPU and written into the
// peers' buffers), waits (bounded) for it and reads back only the counts it needs to size the outputs; the
// send and receive kernels are then ordered by flags in device memory (every wait bounded on the GPU), so a
// cached dispatch or a combine is kernels only. FF_EP_NORMAL_LAYOUT=host selects the earlier path: the
// routing is planned on the host and the phases are separated by host barriers and stream waits.
// Low-latency mode: kernels only, ordered by device flags (low_latency_kernels.cu); a switch between the
// modes first synchronises every rank once (both use the data area).
#include "ff/ep/cuda_buffer.h"

#include <cuda_runtime.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "ff/common/clock.h"
#include "kernels.h"

namespace ff::ep {

namespace {

using cuda::kControlBytes;

constexpr int64_t kAlign = 256;
constexpr int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

Status cuda_status(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return Status::ok();
  return internal_error("CUDA error in {}: {} ({})", what, cudaGetErrorString(error), cudaGetErrorName(error));
}
#define FF_EP_CUDA(call) FF_RETURN_IF_ERROR(cuda_status((call), #call))

void sleep_us(int64_t us) {
  timespec duration{0, us * 1000};
  ::nanosleep(&duration, nullptr);
}

// Device memory (cudaMalloc) or pinned host memory (cudaHostAlloc, for the plan uploads and layout
// downloads), freed with the object.
enum class MemoryKind { kDevice, kPinnedHost };

template <MemoryKind kKind>
struct CudaArray {
  void* pointer = nullptr;
  int64_t bytes = 0;
  CudaArray() = default;
  CudaArray(const CudaArray&) = delete;
  CudaArray& operator=(const CudaArray&) = delete;
  ~CudaArray() { release(); }
  // Grows (never shrinks) to at least `wanted` bytes; the old contents are lost.
  Status reserve(int64_t wanted) {
    if (wanted <= bytes) return Status::ok();
    release();
    if constexpr (kKind == MemoryKind::kDevice) {
      FF_EP_CUDA(cudaMalloc(&pointer, static_cast<size_t>(wanted)));
    } else {
      FF_EP_CUDA(cudaHostAlloc(&pointer, static_cast<size_t>(wanted), cudaHostAllocDefault));
    }
    bytes = wanted;
    return Status::ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(pointer);
  }

 private:
  void release() {
    if (pointer == nullptr) return;
    if constexpr (kKind == MemoryKind::kDevice) {
      cudaFree(pointer);
    } else {
      cudaFreeHost(pointer);
    }
    pointer = nullptr;
    bytes = 0;
  }
};
using DeviceArray = CudaArray<MemoryKind::kDevice>;
using PinnedArray = CudaArray<MemoryKind::kPinnedHost>;

// Appends a trivially copyable value to a blob / reads one back.
template <typename T>
void put(std::vector<uint8_t>& blob, const T& value) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  blob.insert(blob.end(), bytes, bytes + sizeof(T));
}
template <typename T>
T get(const std::vector<uint8_t>& blob, size_t& offset) {
  T value{};
  if (offset + sizeof(T) <= blob.size()) std::memcpy(&value, blob.data() + offset, sizeof(T));
  offset += sizeof(T);
  return value;
}

// Shapes every rank must agree on in a call; exchanged at its start.
struct CallShape {
  int32_t op;
  int32_t dtype;
  int64_t hidden;
  int64_t num_topk;
  int64_t num_experts;
  bool operator==(const CallShape&) const = default;
};

enum CallOp : int32_t { kOpDispatch = 1, kOpCachedDispatch = 2, kOpCombine = 3, kOpLowLatency = 4, kOpNormal = 5 };

// The word a normal data phase's receivers compare with every source's (a rank in another call or with
// other shapes is an error naming it, not garbage).
uint64_t shape_word(const CallShape& shape) {
  uint64_t word = 1469598103934665603ull;
  for (int64_t part : {int64_t{shape.op}, int64_t{shape.dtype}, shape.hidden, shape.num_topk, shape.num_experts}) {
    word = (word ^ static_cast<uint64_t>(part)) * 1099511628211ull;
  }
  return word | 1;  // never 0, the value of a buffer no source wrote yet
}

// Device memory of dispatch handles, recycled: a handle's block goes back here when the handle dies (a
// cudaFree would synchronise the device). Blocks are reused in stream order (one stream per buffer).
struct DevicePool {
  std::mutex mutex;  // guards free_blocks; handles may die on any thread
  std::vector<std::pair<void*, int64_t>> free_blocks;
  ~DevicePool() {
    for (auto& [pointer, bytes] : free_blocks) cudaFree(pointer);
  }
  Result<std::pair<void*, int64_t>> take(int64_t wanted) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (size_t i = 0; i < free_blocks.size(); ++i) {
        if (free_blocks[i].second >= wanted) {
          auto block = free_blocks[i];
          free_blocks.erase(free_blocks.begin() + static_cast<std::ptrdiff_t>(i));
          return block;
        }
      }
    }
    void* pointer = nullptr;
    const int64_t bytes = std::max<int64_t>(wanted, 64 * 1024);
    FF_EP_CUDA(cudaMalloc(&pointer, static_cast<size_t>(bytes)));
    return std::pair<void*, int64_t>{pointer, bytes};
  }
  void give(void* pointer, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    if (free_blocks.size() >= 8) {
      cudaFree(pointer);
      return;
    }
    free_blocks.emplace_back(pointer, bytes);
  }
};

// Phases timed with CUDA events when profiling is on (benchmarks).
enum Phase : int {
  kPhaseNotify,
  kPhaseDispatchSend,
  kPhaseDispatchRecv,
  kPhaseCombineSend,
  kPhaseCombineRecv,
  kPhaseLlDispatchSend,
  kPhaseLlDispatchRecv,
  kPhaseLlCombineSend,
  kPhaseLlCombineRecv,
  kNumPhases
};
constexpr const char* kPhaseNames[kNumPhases] = {"notify",           "dispatch_send",   "dispatch_recv",
                                                 "combine_send",     "combine_recv",    "ll_dispatch_send",
                                                 "ll_dispatch_recv", "ll_combine_send", "ll_combine_recv"};
constexpr int64_t kReadbackBytes = 64 * 1024;

}  // namespace

bool cuda_backend_built() { return true; }

struct CudaDispatchHandle::Device {
  // Send plan of this rank: item_token / item_dst / item_row (num_send each); combine items for the
  // received rows: combine_dst / combine_row (num_recv each); reduction CSR: row_ptr (num_tokens + 1),
  // rows (num_send).
  DeviceArray memory;
  int32_t* item_token = nullptr;
  int32_t* item_dst = nullptr;
  int32_t* item_row = nullptr;
  int32_t* combine_dst = nullptr;
  int32_t* combine_row = nullptr;
  int32_t* row_ptr = nullptr;
  int32_t* rows = nullptr;
  int64_t num_send = 0;
  int64_t num_recv = 0;
  // GPU layout: prefix (num_tokens, num_ranks), count_matrix (num_ranks, num_ranks), block_status
  // (num_ranks), in a block of `pool`.
  int32_t* prefix = nullptr;
  int32_t* count_matrix = nullptr;
  int32_t* block_status = nullptr;
  std::shared_ptr<DevicePool> pool;
  void* pooled = nullptr;
  int64_t pooled_bytes = 0;
  Device() = default;
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() {
    if (pooled != nullptr) pool->give(pooled, pooled_bytes);
  }
};

struct CudaBuffer::Impl {
  CudaBufferOptions options;
  int device = 0;
  std::unique_ptr<ShmBuffer> control;
  uint8_t* self = nullptr;                  // this rank's buffer (cudaMalloc)
  std::vector<uint8_t*> peer_bases;         // host copy; peer_bases[rank] == self
  DeviceArray peers;                        // uint8_t*[num_ranks] on the device
  cuda::DeviceError* error_host = nullptr;  // host-mapped
  cuda::DeviceError* error_device = nullptr;
  cudaEvent_t event = nullptr;
  PinnedArray pinned;
  bool failed = false;
  bool last_low_latency = false;
  bool gpu_layout = true;  // FF_EP_NORMAL_LAYOUT=host: the host-planned normal mode
  int sm_count = 132;
  uint64_t normal_seq = 0;  // normal data phases (dispatch, cached dispatch, combine) on the GPU-layout path
  uint64_t notify_seq = 0;  // non-cached dispatches on the GPU-layout path
  uint64_t recv_shape_word = 0;
  int64_t recv_num_recv = 0;
  std::shared_ptr<DevicePool> pool = std::make_shared<DevicePool>();
  int32_t* readback_host = nullptr;  // host-mapped, kReadbackBytes
  int32_t* readback_device = nullptr;
  bool profiling = false;
  cudaEvent_t phase_events[kNumPhases][2] = {};
  bool phase_recorded[kNumPhases] = {};

  void mark(int phase, int which, void* stream) {
    if (!profiling) return;
    cudaEventRecord(phase_events[phase][which], static_cast<cudaStream_t>(stream));
    if (which == 1) phase_recorded[phase] = true;
  }

  // Low-latency state (device arrays kept between the halves and for the combine).
  uint64_t ll_dispatch_seq = 0;
  uint64_t ll_combine_seq = 0;
  DeviceArray ll_positions, ll_counts, ll_recv_count, ll_src_info;
  cuda::LowLatencyLayout ll_layout;
  int pending = 0;  // 1: low-latency dispatch receive due, 2: low-latency combine receive due, 3: normal dispatch
  // The normal dispatch whose receive half is due.
  cuda::NormalRegions recv_regions;
  int64_t recv_x_bytes = 0, recv_num_scales = 0, recv_num_topk = 0, recv_experts_per_rank = 0;
  int64_t ll_hidden = 0, ll_num_tokens = 0, ll_num_topk = 0, ll_num_experts = 0, ll_max_tokens = 0;
  int32_t ll_x_dtype = 0;
  bool ll_use_fp8 = false;
  bool ll_have_dispatch = false;
  int32_t ll_combine_dtype = 0;
  int64_t ll_combine_hidden = 0;
  const int64_t* ll_combine_topk_idx = nullptr;
  const float* ll_combine_topk_weights = nullptr;

  int n() const { return options.num_ranks; }
  int me() const { return options.rank; }
  // The arguments every low-latency kernel shares, for call `seq` over `layout`.
  cuda::LowLatencyCommon ll_common(const cuda::LowLatencyLayout& layout, uint64_t seq) const {
    return {me(),
            n(),
            peers.as<uint8_t* const>(),
            self,
            layout,
            seq,
            static_cast<uint64_t>(options.timeout_ms) * 1000000,
            error_device};
  }
  int64_t data_bytes() const { return options.num_bytes - kControlBytes; }

  Status fail(Status status) {
    failed = true;
    // Kernels of this rank still waiting on the GPU see a non-zero error word and return.
    if (error_host != nullptr) {
      auto* code = reinterpret_cast<volatile int32_t*>(&error_host->code);
      if (*code == 0) *code = 2;
    }
    if (control) control->abort_group(status.to_string());
    return status;
  }

  // The first error of an earlier low-latency kernel, a CUDA error, or the group's state (with
  // check_liveness, also whether every peer process is alive).
  Status check(bool check_liveness = false) {
    if (error_host != nullptr) {
      const auto* volatile_error = reinterpret_cast<const volatile cuda::DeviceError*>(error_host);
      if (volatile_error->code == 1) {
        static constexpr const char* kWaits[] = {"?",
                                                 "to read its previous low-latency dispatch rows",
                                                 "to send its low-latency dispatch rows",
                                                 "to read its previous low-latency combine rows",
                                                 "to send its low-latency combine rows",
                                                 "(slot overflow)",
                                                 "to read the rows of the previous normal-mode call",
                                                 "to send its normal-mode rows",
                                                 "to send its dispatch counts (notify)",
                                                 "(shape mismatch)",
                                                 "(bad expert id)"};
        const int kind = std::clamp(static_cast<int>(volatile_error->kind), 0, 10);
        if (kind == cuda::kShapeMismatch) {
          return fail(invalid_argument(
              "ep group '{}' rank {}: rank {} made another normal-mode call or used other shapes in call {}; every "
              "rank must make the same calls with the same shapes",
              options.group, me(), volatile_error->peer, volatile_error->seq));
        }
        if (kind == cuda::kBadExpert) {
          return fail(invalid_argument(
              "ep group '{}' rank {}: token {} of a low-latency dispatch has a top-k expert id >= num_experts",
              options.group, me(), volatile_error->peer));
        }
        if (kind == cuda::kWaitOverflow) {
          return fail(resource_exhausted(
              "ep group '{}' rank {}: a low-latency dispatch sent more than num_max_dispatch_tokens_per_rank rows "
              "to one expert of rank {} (a token lists an expert twice?)",
              options.group, me(), volatile_error->peer));
        }
        return fail(deadline_exceeded(
            "ep group '{}' rank {}: a GPU wait timed out after {} ms waiting for rank {} {} (low-latency call {})",
            options.group, me(), options.timeout_ms, volatile_error->peer, kWaits[kind], volatile_error->seq));
      }
    }
    const cudaError_t sticky = cudaGetLastError();
    if (sticky != cudaSuccess) return fail(cuda_status(sticky, "an earlier ep kernel"));
    Status group = control->check_group(check_liveness);
    if (!group.is_ok()) {
      failed = true;
      return group;
    }
    if (failed) return failed_precondition("ep group '{}' rank {}: the buffer failed earlier", options.group, me());
    return Status::ok();
  }

  // Bounded wait for everything enqueued so far on `stream`; checks the group while waiting.
  Status wait_stream(void* stream, const char* what) {
    FF_EP_CUDA(cudaEventRecord(event, static_cast<cudaStream_t>(stream)));
    // Kernels' own waits are bounded by timeout_ms each and report themselves: give them time to.
    const int64_t limit_ms = 2 * options.timeout_ms + 1000;
    const int64_t started_ns = system_clock().now_ns();
    Deadline deadline(system_clock(), limit_ms * 1000000);
    for (int64_t iteration = 0;; ++iteration) {
      const cudaError_t state = cudaEventQuery(event);
      if (state == cudaSuccess) return Status::ok();
      if (state != cudaErrorNotReady) return fail(cuda_status(state, what));
      if (iteration % 256 == 255) FF_RETURN_IF_ERROR(check(/*check_liveness=*/true));
      if (deadline.expired()) {
        FF_RETURN_IF_ERROR(check(/*check_liveness=*/true));
        return fail(deadline_exceeded("ep group '{}' rank {}: the GPU did not finish {} within {} ms", options.group,
                                      me(), what, limit_ms));
      }
      // NOTE: spin for the first millisecond: a sleep of a few microseconds lasts ~50-60 us on Linux (timer
      // slack), which would be added to every short wait.
      if (system_clock().now_ns() - started_ns > 1000000) sleep_us(20);
    }
  }

  // Bounded wait until the notify kernel's readback carries `seq` (host-mapped memory, polled without a
  // CUDA call): the counts are then readable; the stream keeps running.
  Status wait_readback(uint64_t seq) {
    const int64_t limit_ms = 2 * options.timeout_ms + 1000;
    const int64_t started_ns = system_clock().now_ns();
    Deadline deadline(system_clock(), limit_ms * 1000000);
    const auto* word = reinterpret_cast<const volatile int32_t*>(readback_host);
    for (int64_t iteration = 0;; ++iteration) {
      if (*word == static_cast<int32_t>(seq)) {
        std::atomic_thread_fence(std::memory_order_acquire);
        return Status::ok();
      }
      if (iteration % 1024 == 1023) {
        FF_RETURN_IF_ERROR(check(/*check_liveness=*/true));  // also a GPU-side timeout of the notify kernel
        if (deadline.expired()) {
          return fail(
              deadline_exceeded("ep group '{}' rank {}: the dispatch layout (notify) did not finish within {} ms",
                                options.group, me(), limit_ms));
        }
      }
      if (system_clock().now_ns() - started_ns > 1000000) sleep_us(20);
    }
  }

  // A checked barrier that also verifies that every rank is in the same call with the same shapes.
  Result<std::vector<std::vector<uint8_t>>> exchange_shape(const CallShape& shape, const char* what,
                                                           std::vector<std::vector<uint8_t>> extra = {}) {
    std::vector<std::vector<uint8_t>> blobs(static_cast<size_t>(n()));
    for (int dst = 0; dst < n(); ++dst) {
      put(blobs[static_cast<size_t>(dst)], shape);
      if (!extra.empty()) {
        const auto& more = extra[static_cast<size_t>(dst)];
        blobs[static_cast<size_t>(dst)].insert(blobs[static_cast<size_t>(dst)].end(), more.begin(), more.end());
      }
    }
    Result<std::vector<std::vector<uint8_t>>> received = control->exchange(blobs, what);
    if (!received.is_ok()) {
      failed = true;
      return received.status();
    }
    for (int src = 0; src < n(); ++src) {
      size_t offset = 0;
      const CallShape theirs = get<CallShape>((*received)[static_cast<size_t>(src)], offset);
      if (!(theirs == shape)) {
        return fail(invalid_argument(
            "ep group '{}': rank {} called {} (dtype {}, hidden {}, {} top-k, {} experts) but rank {} called {} "
            "(dtype {}, hidden {}, {} top-k, {} experts); every rank must make the same calls with the same shapes",
            options.group, me(), shape.op, shape.dtype, shape.hidden, shape.num_topk, shape.num_experts, src, theirs.op,
            theirs.dtype, theirs.hidden, theirs.num_topk, theirs.num_experts));
      }
    }
    return received;
  }

  Status begin_normal(void* stream, const char* what) {
    if (pending != 0) {
      return failed_precondition("ep rank {}: {} called while a low-latency receive half (hook) is pending", me(),
                                 what);
    }
    FF_RETURN_IF_ERROR(check());
    if (!gpu_layout) {
      FF_RETURN_IF_ERROR(wait_stream(stream, what));
    } else if (last_low_latency) {
      // The low-latency mode used the same data area: every rank's low-latency kernels must be done.
      FF_RETURN_IF_ERROR(wait_stream(stream, what));
      FF_ASSIGN_OR_RETURN(auto unused, exchange_shape(CallShape{kOpNormal, 0, 0, 0, 0}, "to switch to normal mode"));
      (void)unused;
    }
    last_low_latency = false;
    return Status::ok();
  }

  cuda::NormalCommon normal_common(uint64_t seq, uint64_t word) const {
    return {me(),
            n(),
            peers.as<uint8_t* const>(),
            self,
            seq,
            word,
            static_cast<uint64_t>(options.timeout_ms) * 1000000,
            error_device};
  }

  int num_blocks() const { return std::max(1, options.num_sms); }

  static cuda::NormalRegions dispatch_regions(int64_t capacity, int64_t x_bytes, int64_t num_scales, int64_t num_topk) {
    cuda::NormalRegions regions;
    regions.x = kControlBytes;
    regions.scales = round_up(regions.x + capacity * x_bytes, kAlign);
    regions.topk_idx = round_up(regions.scales + capacity * num_scales * 4, kAlign);
    regions.topk_weights = round_up(regions.topk_idx + capacity * num_topk * 8, kAlign);
    return regions;
  }
  // The most rows a dispatch (or, with num_scales = 0 and no index region, a combine) can place here.
  int64_t capacity_rows(int64_t row_bytes) const {
    return std::max<int64_t>(0, (data_bytes() - 4 * kAlign) / std::max<int64_t>(1, row_bytes));
  }

  // Row geometry of a dispatch of `x` with `num_topk` ids per row, after checking that every receiver can
  // hold its rows. Every rank checks every destination with the same count matrix, so all ranks fail together.
  struct DispatchRows {
    int64_t x_bytes = 0;
    int64_t num_scales = 0;
    int64_t row_bytes = 0;
    int64_t capacity = 0;
  };
  Result<DispatchRows> dispatch_rows(const DeviceRows& x, int64_t num_topk, const std::vector<int64_t>& count_matrix) {
    DispatchRows rows;
    rows.x_bytes = x.hidden * dtype_size(x.dtype);
    rows.num_scales = x.dtype == DType::kFloat8E4M3 ? x.hidden / kFp8BlockSize : 0;
    rows.row_bytes = rows.x_bytes + rows.num_scales * 4 + num_topk * 12;
    rows.capacity = capacity_rows(rows.row_bytes);
    const int num_ranks = n();
    for (int dst = 0; dst < num_ranks; ++dst) {
      int64_t received = 0;
      for (int src = 0; src < num_ranks; ++src) received += count_matrix[static_cast<size_t>(src * num_ranks + dst)];
      if (received > rows.capacity) {
        return fail(resource_exhausted(
            "ep dispatch: rank {} receives {} rows of {} bytes, but a {}-byte buffer holds {}; give the buffer at "
            "least {} bytes",
            dst, received, rows.row_bytes, options.num_bytes, rows.capacity,
            kControlBytes + 4 * kAlign + received * rows.row_bytes));
      }
    }
    return rows;
  }
};

CudaBuffer::CudaBuffer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaBuffer::~CudaBuffer() {
  if (!impl_) return;
  Impl& s = *impl_;
  // Peers may still write acknowledgements into this buffer: wait for them (bounded) before freeing it,
  // unless the group already failed.
  if (s.control && !s.failed && s.check().is_ok()) {
    cudaDeviceSynchronize();
    (void)s.control->exchange(std::vector<std::vector<uint8_t>>(static_cast<size_t>(s.n())), "to close the buffer");
  }
  for (int peer = 0; peer < static_cast<int>(s.peer_bases.size()); ++peer) {
    if (peer != s.me() && s.peer_bases[static_cast<size_t>(peer)] != nullptr) {
      cudaIpcCloseMemHandle(s.peer_bases[static_cast<size_t>(peer)]);
    }
  }
  if (s.self != nullptr) cudaFree(s.self);
  if (s.error_host != nullptr) cudaFreeHost(s.error_host);
  if (s.readback_host != nullptr) cudaFreeHost(s.readback_host);
  if (s.event != nullptr) cudaEventDestroy(s.event);
  for (auto& pair : s.phase_events) {
    for (cudaEvent_t event : pair) {
      if (event != nullptr) cudaEventDestroy(event);
    }
  }
}

Result<std::unique_ptr<CudaBuffer>> CudaBuffer::create(const CudaBufferOptions& options) {
  if (options.num_bytes < kControlBytes + 64 * 1024) {
    return invalid_argument("num_bytes={} is too small for a CUDA ep buffer (>= {})", options.num_bytes,
                            kControlBytes + 64 * 1024);
  }
  if (options.num_ranks < 1 || options.num_ranks > kMaxRanks) {
    return invalid_argument("num_ranks={} must be in [1, {}]", options.num_ranks, kMaxRanks);
  }
  if (options.num_sms < 1) return invalid_argument("num_sms={} must be positive", options.num_sms);
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  Impl& s = *impl;
  std::unique_ptr<CudaBuffer> buffer(new CudaBuffer(std::move(impl)));
  FF_EP_CUDA(cudaGetDevice(&s.device));
  FF_EP_CUDA(cudaMalloc(reinterpret_cast<void**>(&s.self), static_cast<size_t>(options.num_bytes)));
  FF_EP_CUDA(cudaMemset(s.self, 0, static_cast<size_t>(kControlBytes)));
  FF_EP_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&s.error_host), sizeof(cuda::DeviceError), cudaHostAllocMapped));
  std::memset(s.error_host, 0, sizeof(cuda::DeviceError));
  FF_EP_CUDA(cudaHostGetDevicePointer(reinterpret_cast<void**>(&s.error_device), s.error_host, 0));
  FF_EP_CUDA(cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming));
  FF_EP_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&s.readback_host), kReadbackBytes, cudaHostAllocMapped));
  std::memset(s.readback_host, 0, kReadbackBytes);
  FF_EP_CUDA(cudaHostGetDevicePointer(reinterpret_cast<void**>(&s.readback_device), s.readback_host, 0));
  FF_EP_CUDA(cudaDeviceGetAttribute(&s.sm_count, cudaDevAttrMultiProcessorCount, s.device));
  for (auto& pair : s.phase_events) {
    for (cudaEvent_t& event : pair) FF_EP_CUDA(cudaEventCreate(&event));
  }
  if (const char* layout = std::getenv("FF_EP_NORMAL_LAYOUT");
      layout != nullptr && std::string_view(layout) == "host") {
    s.gpu_layout = false;
  }
  FF_EP_CUDA(cudaDeviceSynchronize());

  // The control group: one small slot per (source, destination) for handles, counts and barriers.
  const int64_t control_slot_bytes = 64 + 64 + 8 * kMaxRanks + 8 * 4096;
  FF_ASSIGN_OR_RETURN(
      s.control, ShmBuffer::create({options.group + "_ctl", options.rank, options.num_ranks,
                                    control_slot_bytes * options.num_ranks * options.num_ranks, options.timeout_ms}));
  cudaIpcMemHandle_t handle;
  FF_EP_CUDA(cudaIpcGetMemHandle(&handle, s.self));
  std::vector<uint8_t> blob;
  put(blob, handle);
  put(blob, options.num_bytes);
  put(blob, static_cast<int32_t>(s.gpu_layout));
  FF_ASSIGN_OR_RETURN(
      auto handles, s.control->exchange(std::vector<std::vector<uint8_t>>(static_cast<size_t>(options.num_ranks), blob),
                                        "to exchange CUDA IPC handles"));
  s.peer_bases.assign(static_cast<size_t>(options.num_ranks), nullptr);
  for (int peer = 0; peer < options.num_ranks; ++peer) {
    size_t offset = 0;
    const auto peer_handle = get<cudaIpcMemHandle_t>(handles[static_cast<size_t>(peer)], offset);
    const auto peer_bytes = get<int64_t>(handles[static_cast<size_t>(peer)], offset);
    const auto peer_gpu_layout = get<int32_t>(handles[static_cast<size_t>(peer)], offset);
    if (peer_bytes != options.num_bytes) {
      return s.fail(invalid_argument("ep group '{}': rank {} has a {}-byte buffer, rank {} a {}-byte one",
                                     options.group, peer, peer_bytes, options.rank, options.num_bytes));
    }
    if (peer_gpu_layout != static_cast<int32_t>(s.gpu_layout)) {
      return s.fail(invalid_argument("ep group '{}': rank {} and rank {} disagree on FF_EP_NORMAL_LAYOUT",
                                     options.group, peer, options.rank));
    }
    if (peer == options.rank) {
      s.peer_bases[static_cast<size_t>(peer)] = s.self;
      continue;
    }
    void* mapped = nullptr;
    Status opened = cuda_status(cudaIpcOpenMemHandle(&mapped, peer_handle, cudaIpcMemLazyEnablePeerAccess),
                                fmt::format("cudaIpcOpenMemHandle of rank {}'s buffer", peer));
    if (!opened.is_ok()) return s.fail(opened);
    s.peer_bases[static_cast<size_t>(peer)] = static_cast<uint8_t*>(mapped);
  }
  FF_RETURN_IF_ERROR(s.peers.reserve(8 * options.num_ranks));
  FF_EP_CUDA(cudaMemcpy(s.peers.pointer, s.peer_bases.data(), 8 * static_cast<size_t>(options.num_ranks),
                        cudaMemcpyHostToDevice));
  // Every rank has opened every handle before anyone writes into a peer.
  FF_ASSIGN_OR_RETURN(auto unused,
                      s.control->exchange(std::vector<std::vector<uint8_t>>(static_cast<size_t>(options.num_ranks)),
                                          "to open the CUDA IPC handles"));
  (void)unused;
  return buffer;
}

int CudaBuffer::rank() const { return impl_->me(); }
int CudaBuffer::num_ranks() const { return impl_->n(); }
int64_t CudaBuffer::num_bytes() const { return impl_->options.num_bytes; }
void CudaBuffer::set_num_sms(int num_sms) { impl_->options.num_sms = std::max(1, num_sms); }
void CudaBuffer::set_profiling(bool enabled) { impl_->profiling = enabled; }

std::vector<std::pair<std::string, double>> CudaBuffer::kernel_times_us() {
  Impl& s = *impl_;
  std::vector<std::pair<std::string, double>> times;
  for (int phase = 0; phase < kNumPhases; ++phase) {
    if (!s.phase_recorded[phase]) continue;
    s.phase_recorded[phase] = false;
    float ms = 0;
    if (cudaEventElapsedTime(&ms, s.phase_events[phase][0], s.phase_events[phase][1]) != cudaSuccess) {
      (void)cudaGetLastError();  // not complete yet: left out
      continue;
    }
    times.emplace_back(kPhaseNames[phase], static_cast<double>(ms) * 1000.0);
  }
  return times;
}
int CudaBuffer::num_sms() const { return impl_->options.num_sms; }

Status CudaBuffer::synchronize(void* stream) {
  FF_RETURN_IF_ERROR(impl_->wait_stream(stream, "synchronize"));
  return impl_->check();
}

// ---------------------------------------------------------------------------------------------------
// Normal dispatch

// ---------------------------------------------------------------------------------------------------
// Normal dispatch with the layout on the GPU

namespace {

Result<CudaDispatchPlan> dispatch_send_gpu(CudaBuffer::Impl& s, const CudaDispatchInput& in, void* stream) {
  const int n = s.n();
  const int me = s.me();
  const DeviceRows& x = in.x;
  const bool cached = in.handle != nullptr;
  const int64_t num_tokens = x.num_rows;
  const int64_t num_topk = cached ? in.handle->num_topk : in.num_topk;
  const int64_t num_experts = cached ? in.handle->num_experts : in.num_experts;
  const int64_t experts_per_rank = num_experts / n;
  const CallShape shape{cached ? kOpCachedDispatch : kOpDispatch, static_cast<int32_t>(x.dtype), x.hidden, num_topk,
                        num_experts};
  std::shared_ptr<CudaDispatchHandle> handle;
  if (cached) {
    if (!in.handle->device || in.handle->device->prefix == nullptr) {
      return s.fail(invalid_argument("ep rank {} dispatch: the handle was made by the host-planned normal mode", me));
    }
    handle = std::make_shared<CudaDispatchHandle>(*in.handle);
  } else {
    const int64_t readback_words = 1 + n * (cuda::kReadbackPerSource + n) + experts_per_rank;
    if (cuda::notify_experts_offset(n) + experts_per_rank * 4 > cuda::notify_slot_bytes(n) ||
        readback_words * 4 > kReadbackBytes || experts_per_rank * 4 > 48 * 1024) {
      return s.fail(invalid_argument(
          "ep rank {} dispatch: {} experts per rank on {} ranks do not fit the notify slots ({} bytes each)", me,
          experts_per_rank, n, cuda::notify_slot_bytes(n)));
    }
    handle = std::make_shared<CudaDispatchHandle>();
    auto device = std::make_shared<CudaDispatchHandle::Device>();
    const int64_t words = num_tokens * n + n * n + n;
    FF_ASSIGN_OR_RETURN(auto block, s.pool->take(std::max<int64_t>(words, 1) * 4));
    device->pool = s.pool;
    device->pooled = block.first;
    device->pooled_bytes = block.second;
    device->prefix = static_cast<int32_t*>(block.first);
    device->count_matrix = device->prefix + num_tokens * n;
    device->block_status = device->count_matrix + n * n;
    ++s.notify_seq;
    cuda::NotifyArgs notify{};
    notify.common = s.normal_common(s.notify_seq, shape_word(shape));
    notify.topk_idx = in.topk_idx;
    notify.is_token_in_rank = reinterpret_cast<const uint8_t*>(in.is_token_in_rank);
    notify.num_tokens_per_rank = in.num_tokens_per_rank;
    notify.num_tokens = num_tokens;
    notify.num_topk = num_topk;
    notify.num_experts = num_experts;
    const int32_t shape_words[5] = {shape.op, shape.dtype, static_cast<int32_t>(shape.hidden),
                                    static_cast<int32_t>(shape.num_topk), static_cast<int32_t>(shape.num_experts)};
    std::copy(shape_words, shape_words + 5, notify.shape);
    notify.prefix = device->prefix;
    notify.count_matrix = device->count_matrix;
    notify.block_status = device->block_status;
    notify.readback = s.readback_device;
    s.mark(kPhaseNotify, 0, stream);
    cuda::launch_notify(notify, stream);
    s.mark(kPhaseNotify, 1, stream);
    FF_EP_CUDA(cudaGetLastError());
    // The one host synchronisation of a dispatch: the receive counts size the outputs (as in DeepEP).
    FF_RETURN_IF_ERROR(s.wait_readback(s.notify_seq));
    const auto* readback = reinterpret_cast<const volatile int32_t*>(s.readback_host);
    if (readback[0] != static_cast<int32_t>(s.notify_seq)) {
      return s.fail(internal_error("ep rank {} dispatch: the notify kernel finished without its readback ({} != {})",
                                   me, readback[0], static_cast<int32_t>(s.notify_seq)));
    }
    const int64_t per_source = cuda::kReadbackPerSource + n;
    handle->count_matrix.assign(static_cast<size_t>(n * n), 0);
    for (int src = 0; src < n; ++src) {
      const volatile int32_t* words = readback + 1 + src * per_source;
      const int32_t status = words[0];
      if (status & cuda::kNotifyBadExpert) {
        return s.fail(invalid_argument("ep dispatch: rank {}'s topk_idx has entries outside [0, {}) other than -1", src,
                                       num_experts));
      }
      if (status & cuda::kNotifyBadPerRank) {
        return s.fail(
            invalid_argument("ep dispatch: rank {}'s num_tokens_per_rank does not match is_token_in_rank", src));
      }
      const CallShape theirs{words[1], words[2], words[3], words[4], words[5]};
      if (!(theirs == shape)) {
        return s.fail(invalid_argument(
            "ep group '{}': rank {} called {} (dtype {}, hidden {}, {} top-k, {} experts) but rank {} called {} "
            "(dtype {}, hidden {}, {} top-k, {} experts); every rank must make the same calls with the same shapes",
            s.options.group, me, shape.op, shape.dtype, shape.hidden, shape.num_topk, shape.num_experts, src, theirs.op,
            theirs.dtype, theirs.hidden, theirs.num_topk, theirs.num_experts));
      }
      for (int r = 0; r < n; ++r) {
        handle->count_matrix[static_cast<size_t>(src * n + r)] = words[cuda::kReadbackPerSource + r];
      }
    }
    std::vector<int64_t> per_expert(static_cast<size_t>(experts_per_rank));
    for (int64_t local = 0; local < experts_per_rank; ++local) {
      per_expert[static_cast<size_t>(local)] = round_up(readback[1 + n * per_source + local], in.expert_alignment);
    }
    handle->num_topk = num_topk;
    handle->num_experts = num_experts;
    handle->host.num_ranks = n;
    handle->host.num_tokens = num_tokens;
    handle->host.num_recv_tokens_per_expert = std::move(per_expert);
    handle->host.recv_counts.assign(static_cast<size_t>(n), 0);
    int64_t num_send = 0, num_recv = 0;
    for (int r = 0; r < n; ++r) {
      handle->host.recv_counts[static_cast<size_t>(r)] = handle->count_matrix[static_cast<size_t>(r * n + me)];
      num_recv += handle->count_matrix[static_cast<size_t>(r * n + me)];
      num_send += handle->count_matrix[static_cast<size_t>(me * n + r)];
    }
    device->num_send = num_send;
    device->num_recv = num_recv;
    handle->device = std::move(device);
  }
  FF_ASSIGN_OR_RETURN(const CudaBuffer::Impl::DispatchRows rows, s.dispatch_rows(x, num_topk, handle->count_matrix));
  const auto [x_bytes, num_scales, row_bytes, capacity] = rows;
  const cuda::NormalRegions regions = CudaBuffer::Impl::dispatch_regions(capacity, x_bytes, num_scales, num_topk);
  ++s.normal_seq;
  cuda::NormalSendArgs args{};
  args.common = s.normal_common(s.normal_seq, shape_word(shape));
  args.x = static_cast<const uint8_t*>(x.data);
  args.x_bytes = x_bytes;
  args.scales = x.scales;
  args.num_scales = num_scales;
  args.topk_idx = cached ? nullptr : in.topk_idx;
  args.topk_weights = cached ? nullptr : in.topk_weights;
  args.num_topk = cached ? 0 : num_topk;
  args.num_tokens = num_tokens;
  args.prefix = handle->device->prefix;
  args.count_matrix = handle->device->count_matrix;
  args.regions = regions;
  s.mark(kPhaseDispatchSend, 0, stream);
  cuda::launch_normal_dispatch_send(args, s.num_blocks(), stream);
  s.mark(kPhaseDispatchSend, 1, stream);
  FF_EP_CUDA(cudaGetLastError());
  s.pending = 3;
  s.recv_regions = regions;
  s.recv_x_bytes = x_bytes;
  s.recv_num_scales = num_scales;
  s.recv_num_topk = cached ? 0 : num_topk;
  s.recv_experts_per_rank = experts_per_rank;
  s.recv_shape_word = shape_word(shape);
  s.recv_num_recv = handle->device->num_recv;
  CudaDispatchPlan plan;
  plan.num_recv_tokens = handle->host.num_recv_tokens();
  plan.num_recv_tokens_per_expert = handle->host.num_recv_tokens_per_expert;
  plan.handle = std::move(handle);
  return plan;
}

}  // namespace

Result<CudaDispatchPlan> CudaBuffer::dispatch_send(const CudaDispatchInput& in, void* stream) {
  Impl& s = *impl_;
  FF_RETURN_IF_ERROR(s.begin_normal(stream, "dispatch"));
  const int n = s.n();
  const int me = s.me();
  const DeviceRows& x = in.x;
  const bool cached = in.handle != nullptr;
  const int64_t num_tokens = x.num_rows;
  const int64_t num_topk = cached ? in.handle->num_topk : in.num_topk;
  const int64_t num_experts = cached ? in.handle->num_experts : in.num_experts;
  Status valid = Status::ok();
  if (x.num_rows < 0 || x.hidden <= 0 || (x.num_rows > 0 && x.data == nullptr)) {
    valid = invalid_argument("x has shape ({}, {})", x.num_rows, x.hidden);
  } else if (x.dtype == DType::kFloat8E4M3 && (x.hidden % kFp8BlockSize != 0 || (num_tokens > 0 && !x.scales))) {
    valid =
        invalid_argument("float8 x needs hidden={} to be a multiple of {} and per-128 scales", x.hidden, kFp8BlockSize);
  } else if (cached && (in.handle->host.num_ranks != n || in.handle->host.num_tokens != num_tokens)) {
    valid = invalid_argument("the handle was made for {} ranks and {} tokens, but x has {} tokens on {} ranks",
                             in.handle->host.num_ranks, in.handle->host.num_tokens, num_tokens, n);
  } else if (!cached && (num_experts < 1 || num_experts % n != 0)) {
    valid = invalid_argument("num_experts={} must be a positive multiple of num_ranks={}", num_experts, n);
  } else if (!cached && num_tokens > 0 && (in.topk_idx == nullptr || num_topk < 1)) {
    valid = invalid_argument("dispatch without a handle needs topk_idx");
  } else if (in.expert_alignment < 1) {
    valid = invalid_argument("expert_alignment={} must be >= 1", in.expert_alignment);
  } else if (cached && (!in.handle->device || (in.handle->device->prefix != nullptr) != s.gpu_layout)) {
    valid = invalid_argument("the handle was made by the other normal-mode layout (FF_EP_NORMAL_LAYOUT)");
  }
  if (!valid.is_ok()) return s.fail(valid.with_context(fmt::format("ep rank {} dispatch", me)));
  if (s.gpu_layout) return dispatch_send_gpu(s, in, stream);
  const int64_t experts_per_rank = num_experts / n;

  auto handle = std::make_shared<CudaDispatchHandle>();
  std::vector<int64_t> per_expert_to(static_cast<size_t>(num_experts), 0);  // (dst, local expert) counts
  if (cached) {
    *handle = *in.handle;
  } else {
    // Download the routing (small: tokens x top-k) and plan on the host, as the CPU reference does.
    const int64_t idx_bytes = num_tokens * num_topk * 8;
    const int64_t in_rank_bytes = in.is_token_in_rank ? num_tokens * n : 0;
    const int64_t per_rank_bytes = in.num_tokens_per_rank ? n * 4 : 0;
    FF_RETURN_IF_ERROR(s.pinned.reserve(idx_bytes + in_rank_bytes + per_rank_bytes + 64));
    auto* pinned = s.pinned.as<uint8_t>();
    auto cu_stream = static_cast<cudaStream_t>(stream);
    if (idx_bytes > 0) {
      FF_EP_CUDA(cudaMemcpyAsync(pinned, in.topk_idx, idx_bytes, cudaMemcpyDeviceToHost, cu_stream));
    }
    if (in_rank_bytes > 0) {
      FF_EP_CUDA(
          cudaMemcpyAsync(pinned + idx_bytes, in.is_token_in_rank, in_rank_bytes, cudaMemcpyDeviceToHost, cu_stream));
    }
    if (per_rank_bytes > 0) {
      FF_EP_CUDA(cudaMemcpyAsync(pinned + idx_bytes + in_rank_bytes, in.num_tokens_per_rank, per_rank_bytes,
                                 cudaMemcpyDeviceToHost, cu_stream));
    }
    FF_RETURN_IF_ERROR(s.wait_stream(stream, "copying the routing to the host"));
    const std::span<const int64_t> topk_idx(reinterpret_cast<const int64_t*>(pinned),
                                            static_cast<size_t>(num_tokens * num_topk));
    Result<DispatchLayout> layout = get_dispatch_layout(topk_idx, num_tokens, num_topk, num_experts, n);
    if (!layout.is_ok()) return s.fail(layout.status().with_context(fmt::format("ep rank {} dispatch", me)));
    std::span<const uint8_t> in_rank = layout->is_token_in_rank;
    if (in_rank_bytes > 0) in_rank = {pinned + idx_bytes, static_cast<size_t>(in_rank_bytes)};
    handle->num_topk = num_topk;
    handle->num_experts = num_experts;
    handle->host.num_ranks = n;
    handle->host.num_tokens = num_tokens;
    handle->host.send_token_ids.assign(static_cast<size_t>(n), {});
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int r = 0; r < n; ++r) {
        if (!in_rank[static_cast<size_t>(t * n + r)]) continue;
        handle->host.send_token_ids[static_cast<size_t>(r)].push_back(t);
        for (int64_t k = 0; k < num_topk; ++k) {
          const int64_t expert = topk_idx[static_cast<size_t>(t * num_topk + k)];
          if (expert >= 0 && expert / experts_per_rank == r) ++per_expert_to[static_cast<size_t>(expert)];
        }
      }
    }
    if (per_rank_bytes > 0) {
      const auto* per_rank = reinterpret_cast<const int32_t*>(pinned + idx_bytes + in_rank_bytes);
      for (int r = 0; r < n; ++r) {
        const auto expected = static_cast<int64_t>(handle->host.send_token_ids[static_cast<size_t>(r)].size());
        if (per_rank[r] != expected) {
          return s.fail(
              invalid_argument("ep rank {} dispatch: num_tokens_per_rank[{}]={} does not match "
                               "is_token_in_rank ({} tokens)",
                               me, r, per_rank[r], expected));
        }
      }
    }
  }

  // Exchange: shapes (checked), this rank's row count to every rank, and each destination's per-expert
  // counts; afterwards every rank knows the whole count matrix.
  const CallShape shape{cached ? kOpCachedDispatch : kOpDispatch, static_cast<int32_t>(x.dtype), x.hidden, num_topk,
                        num_experts};
  std::vector<std::vector<uint8_t>> extra(static_cast<size_t>(n));
  if (!cached) {
    for (int dst = 0; dst < n; ++dst) {
      auto& blob = extra[static_cast<size_t>(dst)];
      for (int r = 0; r < n; ++r) {
        put(blob, static_cast<int64_t>(handle->host.send_token_ids[static_cast<size_t>(r)].size()));
      }
      for (int64_t local = 0; local < experts_per_rank; ++local) {
        put(blob, per_expert_to[static_cast<size_t>(dst * experts_per_rank + local)]);
      }
    }
  }
  FF_ASSIGN_OR_RETURN(auto received, s.exchange_shape(shape, "to exchange dispatch counts", extra));
  if (!cached) {
    handle->count_matrix.assign(static_cast<size_t>(n * n), 0);
    std::vector<int64_t> per_expert(static_cast<size_t>(experts_per_rank), 0);
    for (int src = 0; src < n; ++src) {
      size_t offset = sizeof(CallShape);
      for (int r = 0; r < n; ++r) {
        handle->count_matrix[static_cast<size_t>(src * n + r)] =
            get<int64_t>(received[static_cast<size_t>(src)], offset);
      }
      for (int64_t local = 0; local < experts_per_rank; ++local) {
        per_expert[static_cast<size_t>(local)] += get<int64_t>(received[static_cast<size_t>(src)], offset);
      }
    }
    for (int64_t& count : per_expert) count = round_up(count, in.expert_alignment);
    handle->host.num_recv_tokens_per_expert = per_expert;
    handle->host.recv_counts.assign(static_cast<size_t>(n), 0);
    for (int src = 0; src < n; ++src) {
      handle->host.recv_counts[static_cast<size_t>(src)] = handle->count_matrix[static_cast<size_t>(src * n + me)];
    }
  }
  const auto count = [&](int src, int dst) { return handle->count_matrix[static_cast<size_t>(src * n + dst)]; };

  FF_ASSIGN_OR_RETURN(const Impl::DispatchRows rows, s.dispatch_rows(x, num_topk, handle->count_matrix));
  const auto [x_bytes, num_scales, row_bytes, capacity] = rows;

  if (!cached) {
    // Device plan: send items, combine items and the reduction CSR, uploaded once per layout.
    auto device = std::make_shared<CudaDispatchHandle::Device>();
    int64_t num_send = 0;
    for (int r = 0; r < n; ++r) num_send += count(me, r);
    int64_t num_recv = 0;
    for (int r = 0; r < n; ++r) num_recv += count(r, me);
    device->num_send = num_send;
    device->num_recv = num_recv;
    const int64_t words = 3 * num_send + 2 * num_recv + (num_tokens + 1) + num_send;
    FF_RETURN_IF_ERROR(s.pinned.reserve(words * 4 + 64));
    auto* plan = s.pinned.as<int32_t>();
    int32_t* item_token = plan;
    int32_t* item_dst = item_token + num_send;
    int32_t* item_row = item_dst + num_send;
    int32_t* combine_dst = item_row + num_send;
    int32_t* combine_row = combine_dst + num_recv;
    int32_t* row_ptr = combine_row + num_recv;
    int32_t* rows = row_ptr + num_tokens + 1;
    int64_t item = 0;
    std::vector<int32_t> rows_per_token(static_cast<size_t>(num_tokens), 0);
    for (int dst = 0; dst < n; ++dst) {
      int64_t before = 0;  // rows of lower sources at dst
      for (int src = 0; src < me; ++src) before += count(src, dst);
      const auto& tokens = handle->host.send_token_ids[static_cast<size_t>(dst)];
      for (size_t i = 0; i < tokens.size(); ++i, ++item) {
        item_token[item] = static_cast<int32_t>(tokens[i]);
        item_dst[item] = dst;
        item_row[item] = static_cast<int32_t>(before + static_cast<int64_t>(i));
        ++rows_per_token[static_cast<size_t>(tokens[i])];
      }
    }
    // Combine: received row j (from source src, i-th of its rows) returns to src, after the rows src
    // gets back from lower ranks.
    int64_t j = 0;
    for (int src = 0; src < n; ++src) {
      int64_t before = 0;
      for (int r = 0; r < me; ++r) before += count(src, r);
      for (int64_t i = 0; i < count(src, me); ++i, ++j) {
        combine_dst[j] = src;
        combine_row[j] = static_cast<int32_t>(before + i);
      }
    }
    // Reduction CSR: token t's rows in this rank's combine region, in destination-rank order.
    row_ptr[0] = 0;
    for (int64_t t = 0; t < num_tokens; ++t) row_ptr[t + 1] = row_ptr[t] + rows_per_token[static_cast<size_t>(t)];
    std::vector<int32_t> fill(row_ptr, row_ptr + num_tokens);
    int64_t region_row = 0;
    for (int dst = 0; dst < n; ++dst) {
      for (int64_t t : handle->host.send_token_ids[static_cast<size_t>(dst)]) {
        rows[fill[static_cast<size_t>(t)]++] = static_cast<int32_t>(region_row++);
      }
    }
    FF_RETURN_IF_ERROR(device->memory.reserve(words * 4 + 64));
    auto* base = device->memory.as<int32_t>();
    device->item_token = base;
    device->item_dst = base + num_send;
    device->item_row = base + 2 * num_send;
    device->combine_dst = base + 3 * num_send;
    device->combine_row = base + 3 * num_send + num_recv;
    device->row_ptr = base + 3 * num_send + 2 * num_recv;
    device->rows = device->row_ptr + num_tokens + 1;
    FF_EP_CUDA(cudaMemcpyAsync(base, plan, static_cast<size_t>(words * 4), cudaMemcpyHostToDevice,
                               static_cast<cudaStream_t>(stream)));
    handle->device = std::move(device);
  }

  const cuda::NormalRegions regions = Impl::dispatch_regions(capacity, x_bytes, num_scales, num_topk);
  cuda::DispatchSendArgs args{};
  args.x = static_cast<const uint8_t*>(x.data);
  args.x_bytes = x_bytes;
  args.scales = x.scales;
  args.num_scales = num_scales;
  args.topk_idx = cached ? nullptr : in.topk_idx;
  args.topk_weights = cached ? nullptr : in.topk_weights;
  args.num_topk = cached ? 0 : num_topk;
  args.item_token = handle->device->item_token;
  args.item_dst = handle->device->item_dst;
  args.item_row = handle->device->item_row;
  args.num_items = handle->device->num_send;
  args.peers = s.peers.as<uint8_t* const>();
  args.regions = regions;
  s.mark(kPhaseDispatchSend, 0, stream);
  cuda::launch_dispatch_send(args, s.num_blocks(), stream);
  s.mark(kPhaseDispatchSend, 1, stream);
  FF_EP_CUDA(cudaGetLastError());
  FF_RETURN_IF_ERROR(s.wait_stream(stream, "the dispatch send kernel"));
  FF_ASSIGN_OR_RETURN(auto unused, s.exchange_shape(shape, "to finish writing its dispatch rows"));
  (void)unused;

  s.pending = 3;
  s.recv_regions = regions;
  s.recv_x_bytes = x_bytes;
  s.recv_num_scales = num_scales;
  s.recv_num_topk = cached ? 0 : num_topk;
  s.recv_experts_per_rank = experts_per_rank;
  CudaDispatchPlan plan;
  plan.num_recv_tokens = handle->host.num_recv_tokens();
  plan.num_recv_tokens_per_expert = handle->host.num_recv_tokens_per_expert;
  plan.handle = std::move(handle);
  return plan;
}

Status CudaBuffer::dispatch_receive(const CudaDispatchPlan& plan, const CudaDispatchOutputs& out, void* stream) {
  Impl& s = *impl_;
  if (s.pending != 3) return failed_precondition("ep rank {}: dispatch_receive without dispatch_send", s.me());
  s.pending = 0;
  FF_RETURN_IF_ERROR(s.check());
  const int64_t num_recv = plan.num_recv_tokens;
  if (num_recv > 0 && (out.recv_x == nullptr || (s.recv_num_scales > 0 && out.recv_scales == nullptr))) {
    return s.fail(invalid_argument("ep rank {} dispatch_receive: recv_x{} missing", s.me(),
                                   s.recv_num_scales > 0 ? " or recv_scales" : ""));
  }
  if (s.gpu_layout) {
    // Always launched, also with nothing to receive: it acknowledges the phase to every source.
    cuda::NormalRecvArgs args{};
    args.common = s.normal_common(s.normal_seq, s.recv_shape_word);
    args.regions = s.recv_regions;
    args.num_recv = s.recv_num_recv;
    args.x_bytes = s.recv_x_bytes;
    args.num_scales = s.recv_num_scales;
    args.num_topk = s.recv_num_topk;
    args.first_expert = s.me() * s.recv_experts_per_rank;
    args.num_local_experts = s.recv_experts_per_rank;
    args.recv_x = out.recv_x;
    args.recv_scales = out.recv_scales;
    args.recv_topk_idx = out.recv_topk_idx;
    args.recv_topk_weights = out.recv_topk_weights;
    s.mark(kPhaseDispatchRecv, 0, stream);
    cuda::launch_normal_dispatch_recv(args, 2 * s.sm_count, stream);
    s.mark(kPhaseDispatchRecv, 1, stream);
    return cuda_status(cudaGetLastError(), "dispatch receive");
  }
  if (num_recv == 0) return Status::ok();
  auto cu_stream = static_cast<cudaStream_t>(stream);
  s.mark(kPhaseDispatchRecv, 0, stream);
  // Rows arrived grouped by source rank in rank order: the x and scales regions are the outputs as they are.
  FF_EP_CUDA(cudaMemcpyAsync(out.recv_x, s.self + s.recv_regions.x, static_cast<size_t>(num_recv * s.recv_x_bytes),
                             cudaMemcpyDeviceToDevice, cu_stream));
  if (s.recv_num_scales > 0) {
    FF_EP_CUDA(cudaMemcpyAsync(out.recv_scales, s.self + s.recv_regions.scales,
                               static_cast<size_t>(num_recv * s.recv_num_scales * 4), cudaMemcpyDeviceToDevice,
                               cu_stream));
  }
  if (s.recv_num_topk > 0 && (out.recv_topk_idx != nullptr || out.recv_topk_weights != nullptr)) {
    cuda::launch_dispatch_recv_topk(reinterpret_cast<const int64_t*>(s.self + s.recv_regions.topk_idx),
                                    reinterpret_cast<const float*>(s.self + s.recv_regions.topk_weights),
                                    num_recv * s.recv_num_topk, s.me() * s.recv_experts_per_rank,
                                    s.recv_experts_per_rank, out.recv_topk_idx, out.recv_topk_weights, s.num_blocks(),
                                    stream);
  }
  s.mark(kPhaseDispatchRecv, 1, stream);
  return cuda_status(cudaGetLastError(), "dispatch receive");
}

// ---------------------------------------------------------------------------------------------------
// Normal combine

Status CudaBuffer::combine(const DeviceRows& x, const CudaDispatchHandle& handle, const float* topk_weights,
                           void* combined_x, float* combined_topk_weights, void* stream, const void* bias0,
                           const void* bias1) {
  Impl& s = *impl_;
  FF_RETURN_IF_ERROR(s.begin_normal(stream, "combine"));
  const int n = s.n();
  const int me = s.me();
  Status valid = Status::ok();
  if (x.dtype == DType::kFloat8E4M3 || x.hidden <= 0) {
    valid = invalid_argument("x must be float32 or bfloat16 with hidden > 0, not {} with hidden={}",
                             dtype_name(x.dtype), x.hidden);
  } else if (handle.host.num_ranks != n || !handle.device || x.num_rows != handle.device->num_recv) {
    valid = invalid_argument("x has {} rows but the handle received {} rows (on {} ranks; this group has {})",
                             x.num_rows, handle.device ? handle.device->num_recv : -1, handle.host.num_ranks, n);
  } else if (handle.host.num_tokens > 0 && combined_x == nullptr) {
    valid = invalid_argument("combined_x is missing");
  } else if (s.gpu_layout != (handle.device->prefix != nullptr)) {
    valid = invalid_argument("the handle was made by the other normal-mode layout (FF_EP_NORMAL_LAYOUT)");
  }
  if (!valid.is_ok()) return s.fail(valid.with_context(fmt::format("ep rank {} combine", me)));
  const int64_t num_topk = handle.num_topk;
  const CallShape shape{kOpCombine, static_cast<int32_t>(x.dtype), x.hidden, num_topk, handle.num_experts};
  if (!s.gpu_layout) {
    FF_ASSIGN_OR_RETURN(auto started, s.exchange_shape(shape, "to start combine"));
    (void)started;
  }
  const auto count = [&](int src, int dst) { return handle.count_matrix[static_cast<size_t>(src * n + dst)]; };
  const int64_t x_bytes = x.hidden * dtype_size(x.dtype);
  const int64_t row_bytes = x_bytes + num_topk * 4;
  const int64_t capacity = s.capacity_rows(row_bytes);
  for (int owner = 0; owner < n; ++owner) {
    int64_t rows = 0;
    for (int r = 0; r < n; ++r) rows += count(owner, r);
    if (rows > capacity) {
      return s.fail(resource_exhausted(
          "ep combine: rank {} gets back {} rows of {} bytes, but a {}-byte buffer holds {}; give the buffer at "
          "least {} bytes",
          owner, rows, row_bytes, s.options.num_bytes, capacity, kControlBytes + 4 * kAlign + rows * row_bytes));
    }
  }
  cuda::NormalRegions regions;
  regions.x = kControlBytes;
  regions.topk_weights = round_up(regions.x + capacity * x_bytes, kAlign);
  if (s.gpu_layout) {
    ++s.normal_seq;
    const uint64_t word = shape_word(shape);
    cuda::NormalCombineSendArgs send{};
    send.common = s.normal_common(s.normal_seq, word);
    send.x = static_cast<const uint8_t*>(x.data);
    send.x_bytes = x_bytes;
    send.topk_weights = topk_weights;
    send.num_topk = num_topk;
    send.num_recv = handle.device->num_recv;
    send.count_matrix = handle.device->count_matrix;
    send.regions = regions;
    s.mark(kPhaseCombineSend, 0, stream);
    cuda::launch_normal_combine_send(send, s.num_blocks(), stream);
    s.mark(kPhaseCombineSend, 1, stream);
    FF_EP_CUDA(cudaGetLastError());
    cuda::NormalCombineReduceArgs reduce{};
    reduce.common = s.normal_common(s.normal_seq, word);
    reduce.regions = regions;
    reduce.prefix = handle.device->prefix;
    reduce.count_matrix = handle.device->count_matrix;
    reduce.num_tokens = handle.host.num_tokens;
    reduce.hidden = x.hidden;
    reduce.num_topk = num_topk;
    reduce.dtype = x.dtype == DType::kFloat32 ? 0 : 1;
    reduce.out = combined_x;
    reduce.out_weights = combined_topk_weights;
    reduce.bias0 = bias0;
    reduce.bias1 = bias1;
    s.mark(kPhaseCombineRecv, 0, stream);
    cuda::launch_normal_combine_reduce(reduce, 4 * s.sm_count, stream);
    s.mark(kPhaseCombineRecv, 1, stream);
    return cuda_status(cudaGetLastError(), "combine reduce");
  }
  cuda::CombineSendArgs args{};
  args.x = static_cast<const uint8_t*>(x.data);
  args.x_bytes = x_bytes;
  args.topk_weights = topk_weights;
  args.num_topk = num_topk;
  args.item_dst = handle.device->combine_dst;
  args.item_row = handle.device->combine_row;
  args.num_items = handle.device->num_recv;
  args.peers = s.peers.as<uint8_t* const>();
  args.regions = regions;
  s.mark(kPhaseCombineSend, 0, stream);
  cuda::launch_combine_send(args, s.num_blocks(), stream);
  s.mark(kPhaseCombineSend, 1, stream);
  FF_EP_CUDA(cudaGetLastError());
  FF_RETURN_IF_ERROR(s.wait_stream(stream, "the combine send kernel"));
  FF_ASSIGN_OR_RETURN(auto finished, s.exchange_shape(shape, "to finish writing its combine rows"));
  (void)finished;
  cuda::CombineReduceArgs reduce{};
  reduce.buffer = s.self;
  reduce.regions = regions;
  reduce.row_ptr = handle.device->row_ptr;
  reduce.rows = handle.device->rows;
  reduce.num_tokens = handle.host.num_tokens;
  reduce.hidden = x.hidden;
  reduce.num_topk = num_topk;
  reduce.dtype = x.dtype == DType::kFloat32 ? 0 : 1;
  reduce.out = combined_x;
  reduce.out_weights = combined_topk_weights;
  reduce.bias0 = bias0;
  reduce.bias1 = bias1;
  s.mark(kPhaseCombineRecv, 0, stream);
  cuda::launch_combine_reduce(reduce, std::max(s.num_blocks(), 132) * 4, stream);
  s.mark(kPhaseCombineRecv, 1, stream);
  return cuda_status(cudaGetLastError(), "combine reduce");
}

// ---------------------------------------------------------------------------------------------------
// Low-latency mode

namespace {

cuda::LowLatencyLayout low_latency_layout(int num_ranks, int64_t num_local_experts, int64_t max_tokens,
                                          int64_t data_bytes, int64_t num_scales, int64_t num_topk,
                                          int64_t combine_row_bytes) {
  cuda::LowLatencyLayout layout;
  const int64_t slots = num_local_experts * num_ranks * max_tokens;
  layout.counts = kControlBytes;
  layout.x = round_up(layout.counts + num_ranks * num_local_experts * 4, kAlign);
  layout.scales = round_up(layout.x + slots * data_bytes, kAlign);
  layout.meta = round_up(layout.scales + slots * num_scales * 4, kAlign);
  layout.combine_x = round_up(layout.meta + slots * 8, kAlign);
  layout.end = round_up(layout.combine_x + max_tokens * num_topk * combine_row_bytes, kAlign);
  return layout;
}

}  // namespace

Status CudaBuffer::low_latency_dispatch_send(const DeviceRows& x, const int64_t* topk_idx, int64_t num_topk,
                                             int64_t max_tokens_per_rank, int64_t num_experts, bool use_fp8,
                                             void* stream, bool round_scale) {
  Impl& s = *impl_;
  if (s.pending != 0) {
    return failed_precondition("ep rank {}: low_latency_dispatch called while a receive half is pending", s.me());
  }
  FF_RETURN_IF_ERROR(s.check());
  const int n = s.n();
  Status valid = Status::ok();
  if (x.dtype == DType::kFloat8E4M3 || x.hidden <= 0 || x.num_rows < 0) {
    valid = invalid_argument("x must be float32 or bfloat16 of shape (tokens, hidden > 0), not {} ({}, {})",
                             dtype_name(x.dtype), x.num_rows, x.hidden);
  } else if (x.num_rows > max_tokens_per_rank || max_tokens_per_rank < 1) {
    valid = invalid_argument("x has {} tokens, more than num_max_dispatch_tokens_per_rank={}", x.num_rows,
                             max_tokens_per_rank);
  } else if (use_fp8 && x.hidden % kFp8BlockSize != 0) {
    valid = invalid_argument("use_fp8 needs hidden={} to be a multiple of {}", x.hidden, kFp8BlockSize);
  } else if (num_experts < n || num_experts % n != 0) {
    valid = invalid_argument("num_experts={} must be a positive multiple of num_ranks={}", num_experts, n);
  } else if (num_topk < 1 || (x.num_rows > 0 && topk_idx == nullptr)) {
    valid = invalid_argument("topk_idx is missing or has {} columns", num_topk);
  }
  if (!valid.is_ok()) return s.fail(valid.with_context(fmt::format("ep rank {} low_latency_dispatch", s.me())));
  if (!s.last_low_latency) {
    // The normal mode used the same data area: every rank's earlier receive kernels must be done.
    FF_RETURN_IF_ERROR(s.wait_stream(stream, "the calls before low-latency mode"));
    const CallShape shape{kOpLowLatency, 0, 0, 0, 0};
    FF_ASSIGN_OR_RETURN(auto unused, s.exchange_shape(shape, "to switch to low-latency mode"));
    (void)unused;
    s.last_low_latency = true;
  }
  const int64_t local_experts = num_experts / n;
  const int64_t element = dtype_size(x.dtype);
  const int64_t data_bytes = use_fp8 ? x.hidden : x.hidden * element;
  const int64_t num_scales = use_fp8 ? x.hidden / kFp8BlockSize : 0;
  // The combine returns rows in the dispatch's dtype at most float32: reserve float32 rows.
  const cuda::LowLatencyLayout layout =
      low_latency_layout(n, local_experts, max_tokens_per_rank, data_bytes, num_scales, num_topk, x.hidden * 4);
  if (layout.end > s.options.num_bytes) {
    return s.fail(resource_exhausted(
        "ep low_latency_dispatch: {} local experts x {} ranks x {} tokens of hidden {} need a {}-byte buffer, this "
        "one has {} bytes",
        local_experts, n, max_tokens_per_rank, x.hidden, layout.end, s.options.num_bytes));
  }
  const int64_t entries = x.num_rows * num_topk;
  FF_RETURN_IF_ERROR(s.ll_positions.reserve(std::max<int64_t>(entries, 1) * 4));
  FF_RETURN_IF_ERROR(s.ll_counts.reserve(num_experts * 4));
  FF_RETURN_IF_ERROR(s.ll_recv_count.reserve(local_experts * 4));
  FF_RETURN_IF_ERROR(s.ll_src_info.reserve(local_experts * n * max_tokens_per_rank * 12));
  // NOTE: the send kernel finds each entry's slot itself (the routing in shared memory), saving the launch and
  // the round trip of a separate positions kernel; only routings too large for shared memory take that one.
  const bool fused = entries <= cuda::kMaxFusedEntries && (entries + num_experts) * 4 <= 48 * 1024;
  s.mark(kPhaseLlDispatchSend, 0, stream);
  if (!fused) {
    cuda::launch_ll_positions(topk_idx, entries, num_experts, s.ll_positions.as<int32_t>(), s.ll_counts.as<int32_t>(),
                              stream);
  }
  ++s.ll_dispatch_seq;
  cuda::LowLatencyDispatchArgs args{};
  args.common = s.ll_common(layout, s.ll_dispatch_seq);
  args.x = x.data;
  args.x_dtype = x.dtype == DType::kFloat32 ? 0 : 1;
  args.use_fp8 = use_fp8;
  args.round_scale = round_scale;
  args.hidden = x.hidden;
  args.num_tokens = x.num_rows;
  args.num_topk = num_topk;
  args.num_local_experts = local_experts;
  args.max_tokens = max_tokens_per_rank;
  args.topk_idx = topk_idx;
  args.positions = fused ? nullptr : s.ll_positions.as<int32_t>();
  args.counts = fused ? nullptr : s.ll_counts.as<int32_t>();
  cuda::launch_ll_dispatch_send(args, s.sm_count, stream);
  s.mark(kPhaseLlDispatchSend, 1, stream);
  FF_EP_CUDA(cudaGetLastError());
  s.ll_layout = layout;
  s.ll_hidden = x.hidden;
  s.ll_num_tokens = x.num_rows;
  s.ll_num_topk = num_topk;
  s.ll_num_experts = num_experts;
  s.ll_max_tokens = max_tokens_per_rank;
  s.ll_x_dtype = args.x_dtype;
  s.ll_use_fp8 = use_fp8;
  s.pending = 1;
  return Status::ok();
}

Status CudaBuffer::low_latency_dispatch_receive(void* recv_x, float* recv_scales, int32_t* recv_count, void* stream) {
  Impl& s = *impl_;
  if (s.pending != 1) {
    return failed_precondition("ep rank {}: low_latency_dispatch receive without a pending send", s.me());
  }
  s.pending = 0;
  if (recv_x == nullptr || recv_count == nullptr || (s.ll_use_fp8 && recv_scales == nullptr)) {
    return s.fail(invalid_argument("ep rank {}: low_latency_dispatch receive needs recv_x, recv_count{}", s.me(),
                                   s.ll_use_fp8 ? " and recv_scales" : ""));
  }
  const int64_t local_experts = s.ll_num_experts / s.n();
  cuda::LowLatencyDispatchRecvArgs args{};
  args.common = s.ll_common(s.ll_layout, s.ll_dispatch_seq);
  args.data_bytes = s.ll_use_fp8 ? s.ll_hidden : s.ll_hidden * (s.ll_x_dtype == 0 ? 4 : 2);
  args.num_scales = s.ll_use_fp8 ? s.ll_hidden / kFp8BlockSize : 0;
  args.num_local_experts = local_experts;
  args.max_tokens = s.ll_max_tokens;
  args.out_x = recv_x;
  args.out_scales = recv_scales;
  args.out_count = recv_count;
  args.recv_count = s.ll_recv_count.as<int32_t>();
  args.src_info = s.ll_src_info.as<int32_t>();
  s.mark(kPhaseLlDispatchRecv, 0, stream);
  cuda::launch_ll_dispatch_recv(args, stream);
  s.mark(kPhaseLlDispatchRecv, 1, stream);
  s.ll_have_dispatch = true;
  return cuda_status(cudaGetLastError(), "low-latency dispatch receive");
}

Status CudaBuffer::low_latency_combine_send(const DeviceRows& x, const int64_t* topk_idx, const float* topk_weights,
                                            void* stream) {
  Impl& s = *impl_;
  if (s.pending != 0) {
    return failed_precondition("ep rank {}: low_latency_combine called while a receive half is pending", s.me());
  }
  FF_RETURN_IF_ERROR(s.check());
  const int64_t local_experts = s.ll_num_experts / std::max(1, s.n());
  Status valid = Status::ok();
  if (!s.ll_have_dispatch || !s.last_low_latency) {
    valid = failed_precondition("low_latency_combine needs a received low_latency_dispatch before it");
  } else if (x.dtype == DType::kFloat8E4M3 || x.hidden != s.ll_hidden ||
             x.num_rows != local_experts * s.n() * s.ll_max_tokens) {
    valid = invalid_argument("x has {} ({}, {}), expected float32/bfloat16 ({} local experts x {}, {})",
                             dtype_name(x.dtype), x.num_rows, x.hidden, local_experts, s.n() * s.ll_max_tokens,
                             s.ll_hidden);
  } else if (s.ll_num_tokens > 0 && (topk_idx == nullptr || topk_weights == nullptr)) {
    valid = invalid_argument("topk_idx and topk_weights are required");
  }
  if (!valid.is_ok()) return s.fail(valid.with_context(fmt::format("ep rank {} low_latency_combine", s.me())));
  ++s.ll_combine_seq;
  cuda::LowLatencyCombineArgs args{};
  args.common = s.ll_common(s.ll_layout, s.ll_combine_seq);
  args.x = x.data;
  args.dtype = x.dtype == DType::kFloat32 ? 0 : 1;
  args.hidden = x.hidden;
  args.num_topk = s.ll_num_topk;
  args.num_local_experts = local_experts;
  args.max_tokens = s.ll_max_tokens;
  args.recv_count = s.ll_recv_count.as<int32_t>();
  args.src_info = s.ll_src_info.as<int32_t>();
  s.mark(kPhaseLlCombineSend, 0, stream);
  cuda::launch_ll_combine_send(args, s.sm_count, stream);
  s.mark(kPhaseLlCombineSend, 1, stream);
  FF_EP_CUDA(cudaGetLastError());
  s.ll_combine_dtype = args.dtype;
  s.ll_combine_hidden = x.hidden;
  s.ll_combine_topk_idx = topk_idx;
  s.ll_combine_topk_weights = topk_weights;
  s.pending = 2;
  return Status::ok();
}

Status CudaBuffer::low_latency_combine_receive(void* combined_x, void* stream) {
  Impl& s = *impl_;
  if (s.pending != 2) {
    return failed_precondition("ep rank {}: low_latency_combine receive without a pending send", s.me());
  }
  s.pending = 0;
  if (s.ll_num_tokens > 0 && combined_x == nullptr) {
    return s.fail(invalid_argument("ep rank {}: low_latency_combine receive needs combined_x", s.me()));
  }
  cuda::LowLatencyCombineRecvArgs args{};
  args.common = s.ll_common(s.ll_layout, s.ll_combine_seq);
  args.dtype = s.ll_combine_dtype;
  args.hidden = s.ll_combine_hidden;
  args.num_tokens = s.ll_num_tokens;
  args.num_topk = s.ll_num_topk;
  args.topk_idx = s.ll_combine_topk_idx;
  args.topk_weights = s.ll_combine_topk_weights;
  args.out = combined_x;
  s.mark(kPhaseLlCombineRecv, 0, stream);
  cuda::launch_ll_combine_recv(args, 2 * s.sm_count, stream);
  s.mark(kPhaseLlCombineRecv, 1, stream);
  return cuda_status(cudaGetLastError(), "low-latency combine receive");
}

}  // namespace ff::ep
