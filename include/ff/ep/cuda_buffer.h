// ff::ep CUDA intranode backend (CudaBuffer): one process per rank, every rank's buffer in GPU memory,
// peers' buffers mapped through CUDA IPC handles, kernels writing tokens straight into the receivers'
// buffers over a configurable number of SMs. Several processes may share one GPU (that is how it is
// tested on one H200). Semantics are those of ShmBuffer (buffer.h), the reference it is tested against;
// docs/ep.md has the protocol.
//
// Control plane: a small ShmBuffer (POSIX shared memory) of the same group carries the IPC handles, the
// per-call counts and the host barriers, so a dead or silent rank is found exactly as in ShmBuffer and
// every host wait is bounded. Normal mode: send kernel -> bounded wait for it -> host barrier -> receive
// kernel (no kernel ever waits for another process). Low-latency mode: no host synchronisation at all;
// the receive kernels wait on per-source flags in device memory with a clock64 timeout that writes an
// error code into host-mapped memory instead of hanging, and the next call (or check()) reports it.
//
// Pointers: every data pointer is a device pointer on the buffer's device; `stream` is a cudaStream_t
// (nullptr: the legacy default stream). Work is enqueued on that stream in order; outputs are ready in
// stream order. Thread-safety: one thread at a time (a buffer is one rank).
//
// Built only when CUDA is (FF_EP_HAVE_CUDA); otherwise create() returns Unimplemented saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"
#include "ff/ep/buffer.h"

namespace ff::ep {

// True when this build has the CUDA backend (its kernels were compiled).
bool cuda_backend_built();

struct CudaBufferOptions {
  std::string group;  // names the control segment "/ff_ep_<group>_ctl"; same on every rank
  int rank = 0;
  int num_ranks = 1;
  int64_t num_bytes = 0;  // GPU bytes of this rank's buffer (receive side of every collective)
  int64_t timeout_ms = 30000;
  int num_sms = 20;  // blocks (channels) of the send kernels; one block per SM
};

// A device matrix (num_rows, hidden); scales (num_rows, hidden / 128) float32 for kFloat8E4M3.
struct DeviceRows {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t num_rows = 0;
  int64_t hidden = 0;
  float* scales = nullptr;
};

// The layout of a normal dispatch on the CUDA backend: the host plan (as ShmBuffer's) plus the device
// arrays the combine and cached dispatches reuse. Owns device memory (freed when the last copy goes).
struct CudaDispatchHandle {
  DispatchHandle host;
  int64_t num_topk = 0;
  int64_t num_experts = 0;
  std::vector<int64_t> count_matrix;  // (num_ranks, num_ranks): rows sent from rank s to rank d
  struct Device;
  std::shared_ptr<Device> device;
};

struct CudaDispatchInput {
  DeviceRows x;                         // (num_tokens, hidden)
  const int64_t* topk_idx = nullptr;    // (num_tokens, num_topk) device; unused with a handle
  const float* topk_weights = nullptr;  // (num_tokens, num_topk) device or nullptr
  int64_t num_topk = 0;
  int64_t num_experts = 0;
  const int32_t* num_tokens_per_rank = nullptr;      // (num_ranks) device or nullptr: checked when given
  const bool* is_token_in_rank = nullptr;            // (num_tokens, num_ranks) device or nullptr: computed
  std::shared_ptr<const CudaDispatchHandle> handle;  // non-null: cached dispatch
  int64_t expert_alignment = 1;
};

// What the send half of a normal dispatch tells the caller, who then allocates the outputs.
struct CudaDispatchPlan {
  int64_t num_recv_tokens = 0;
  std::vector<int64_t> num_recv_tokens_per_expert;  // aligned
  std::shared_ptr<const CudaDispatchHandle> handle;
};

// Caller-allocated outputs of a normal dispatch (device): recv_x (num_recv, hidden) in x's dtype,
// recv_scales (num_recv, hidden/128) for FP8, recv_topk_idx int64 and recv_topk_weights float32
// (num_recv, num_topk) (nullptr for a cached dispatch or when not wanted).
struct CudaDispatchOutputs {
  void* recv_x = nullptr;
  float* recv_scales = nullptr;
  int64_t* recv_topk_idx = nullptr;
  float* recv_topk_weights = nullptr;
};

class CudaBuffer {
 public:
  // Selects the current CUDA device, allocates num_bytes on it, joins the control group, exchanges and
  // opens the peers' IPC handles. Fails (never hangs) when a rank does not come within the timeout.
  static Result<std::unique_ptr<CudaBuffer>> create(const CudaBufferOptions& options);
  ~CudaBuffer();
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  int rank() const;
  int num_ranks() const;
  int64_t num_bytes() const;
  void set_num_sms(int num_sms);
  int num_sms() const;

  // Benchmark aid: with profiling on, CUDA events are recorded around each phase's kernels (notify,
  // dispatch_send, dispatch_recv, combine_send, combine_recv and the ll_* phases). kernel_times_us returns
  // the microseconds of each phase recorded since the last call whose events completed (call it after the
  // stream is synchronised) and forgets them.
  void set_profiling(bool enabled);
  std::vector<std::pair<std::string, double>> kernel_times_us();

  // Normal dispatch, two halves: the send half computes the layout, exchanges the counts, writes the
  // rows into the receivers' buffers and waits (bounded, on the host) until every rank has; the caller
  // then allocates the outputs of plan.num_recv_tokens rows and calls dispatch_receive, which enqueues
  // the copies out of this rank's buffer on `stream`.
  Result<CudaDispatchPlan> dispatch_send(const CudaDispatchInput& input, void* stream);
  Status dispatch_receive(const CudaDispatchPlan& plan, const CudaDispatchOutputs& outputs, void* stream);

  // x: (num_recv, hidden) float32/bfloat16 in the order dispatch returned. combined_x: (num_tokens, hidden)
  // in x's dtype; topk_weights (num_recv, num_topk) or nullptr (zeros are sent); combined_topk_weights
  // (num_tokens, num_topk) or nullptr. bias0, bias1: (num_tokens, hidden) contiguous in x's dtype or nullptr,
  // added to each combined row before the ranks' rows (DeepEP's bias; float32 sums, rounded once).
  Status combine(const DeviceRows& x, const CudaDispatchHandle& handle, const float* topk_weights, void* combined_x,
                 float* combined_topk_weights, void* stream, const void* bias0 = nullptr, const void* bias1 = nullptr);

  // Low-latency dispatch: send enqueues kernels only (no host synchronisation); receive enqueues the
  // kernel that waits (bounded, on the GPU) for every source and packs the rows: recv_x
  // (num_local_experts, max_tokens * num_ranks, hidden) in e4m3 (use_fp8) or x's dtype, recv_scales
  // (..., hidden/128) for FP8, recv_count int32 (num_local_experts). Rows past recv_count are left as they
  // were. The layout the combine needs stays in this buffer until the next low-latency dispatch. round_scale
  // (with use_fp8): power-of-two scales (low_latency_scale, ff/ep/buffer.h).
  Status low_latency_dispatch_send(const DeviceRows& x, const int64_t* topk_idx, int64_t num_topk,
                                   int64_t max_tokens_per_rank, int64_t num_experts, bool use_fp8, void* stream,
                                   bool round_scale = false);
  Status low_latency_dispatch_receive(void* recv_x, float* recv_scales, int32_t* recv_count, void* stream);
  // x: (num_local_experts, max_tokens * num_ranks, hidden) float32/bfloat16; topk_idx/topk_weights are the
  // dispatch's (num_tokens, num_topk); combined_x (num_tokens, hidden) in x's dtype, weighted.
  Status low_latency_combine_send(const DeviceRows& x, const int64_t* topk_idx, const float* topk_weights,
                                  void* stream);
  Status low_latency_combine_receive(void* combined_x, void* stream);

  // Waits (bounded) for the stream, then reports a GPU-side timeout or CUDA error of earlier
  // low-latency kernels and the group's state. OK when everything so far succeeded.
  Status synchronize(void* stream);

  struct Impl;

 private:
  explicit CudaBuffer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::ep
