// Executor: runs a schedule for real, one thread per rank, with bounded channels between ranks.
//
// Each rank owns the Stage objects of the stages the schedule places on it (DualPipe: two, the same
// model stage appears on two ranks, one per direction; their gradients add up). Ops run in the
// schedule's order: receive (blocking, with a timeout), compute, send (blocking while the link's
// channel is full, with a timeout). I computes the input gradient and keeps what W needs; W runs
// where the schedule puts it. FB calls Stage::overlapped_forward_backward, the anchor's hook for
// interleaving one micro-batch's forward with another's backward.
//
// The built-in stage is a small MLP in double precision (y = tanh(x W1) W2), with the loss
// 0.5 * |y - label|^2 at the last stage, so tests can compare against an unpipelined run.
//
// Thread-safety: execute_schedule may be called from any thread; it starts and joins its own
// threads. A Stage is used by one rank thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ff/common/result.h"
#include "ff/pipe/schedule.h"
#include "ff/trace/recorder.h"

namespace ff::pipe {

using Vector = std::vector<double>;

// One pipeline stage's computation. Implementations keep per-micro-batch state between forward,
// backward and weight.
class Stage {
 public:
  virtual ~Stage() = default;
  // Forward of `micro_batch`: returns the output, keeps what the backward needs.
  virtual Vector forward(int32_t micro_batch, const Vector& input) = 0;
  // Returns the input gradient. With defer_weight the weight gradient waits for weight(micro_batch);
  // otherwise it is accumulated now and the micro-batch's state released.
  virtual Vector backward(int32_t micro_batch, const Vector& output_grad, bool defer_weight) = 0;
  virtual void weight(int32_t micro_batch) = 0;
  // The anchor's overlapped_forward_backward: forward of forward_mb on this stage and full backward of
  // backward_mb on backward_stage, in any interleaving. The default runs one after the other.
  virtual void overlapped_forward_backward(int32_t forward_mb, const Vector& input, Vector& output,
                                           Stage& backward_stage, int32_t backward_mb, const Vector& output_grad,
                                           Vector& input_grad) {
    output = forward(forward_mb, input);
    input_grad = backward_stage.backward(backward_mb, output_grad, /*defer_weight=*/false);
  }
  // Accumulated parameter gradients, flattened (for comparison and reduction).
  virtual Vector gradients() const = 0;
};

struct MlpConfig {
  int32_t hidden = 8;   // Width of activations between stages.
  int32_t ffn = 16;     // Inner width of each stage.
  int32_t rows = 4;     // Rows (tokens) per micro-batch.
  uint64_t seed = 1;    // Weights and data are a deterministic function of the seed.
};

struct MlpModel {
  MlpConfig config;
  std::vector<Vector> w1;  // [stage] (hidden, ffn) row-major
  std::vector<Vector> w2;  // [stage] (ffn, hidden) row-major
};

struct Batch {
  std::vector<Vector> inputs;  // [micro_batch] (rows, hidden)
  std::vector<Vector> labels;  // [micro_batch] (rows, hidden)
};

MlpModel make_mlp_model(const MlpConfig& config, int32_t num_stages);
Batch make_batch(const MlpConfig& config, int32_t num_micro_batches);
// An MLP stage holding a copy of stage `stage` of model.
std::unique_ptr<Stage> make_mlp_stage(const MlpModel& model, int32_t stage);

struct Gradients {
  std::vector<Vector> stages;  // [stage] flattened gradients (w1 then w2), summed over copies
  Vector losses;               // [micro_batch]
};

// The same model run unpipelined on the calling thread, micro-batch after micro-batch.
Gradients run_reference(const MlpModel& model, const Batch& batch);

struct ExecutorOptions {
  int64_t timeout_ms = 10000;    // Every blocking send or receive gives up after this long.
  int32_t channel_capacity = 0;  // Messages per directed link; 0: as many as the schedule sends on it.
  bool validate = true;          // Validate first (tests of the timeout path turn this off).
  // Records one event per op on track {pid 2, tid rank} and a flow per transfer; may be null.
  trace::Recorder* recorder = nullptr;
};

struct ExecutionResult {
  Gradients gradients;
  double wall_s = 0;           // From the start of the first rank to the end of the last.
  std::vector<double> busy_s;  // [rank] time in Stage compute calls.
  // Mean measured seconds per op kind (index: OpKind), 0 where the schedule has none; feeds Costs to
  // compare the executor against the simulated ideal.
  double mean_op_s[5] = {0, 0, 0, 0, 0};
};

// Runs one training step of `model` on `batch` (batch.inputs.size() == num_micro_batches).
// Errors: invalid argument for a shape mismatch; the validator's error; deadline exceeded naming the
// rank, the op and the message it waited for ("rank 2 op #5 F(mb=3 s=2 d=0): timed out after 200 ms
// waiting for the activation of mb=3 s=2 d=0 from rank 1").
Result<ExecutionResult> execute_schedule(const Schedule& schedule, const MlpModel& model, const Batch& batch,
                                         const ExecutorOptions& options = {});

}  // namespace ff::pipe
