// The executor's built-in MLP stage and the unpipelined reference.
#include <cmath>
#include <map>
#include <random>

#include "ff/pipe/executor.h"

namespace ff::pipe {

namespace {

// out (m, n) = a (m, k) * b (k, n); transpose flags read a or b transposed from row-major storage.
void matmul(const Vector& a, const Vector& b, Vector& out, int32_t m, int32_t k, int32_t n, bool transpose_a,
            bool transpose_b, bool accumulate) {
  FF_ASSERT_EQ(a.size(), static_cast<size_t>(m) * k);
  FF_ASSERT_EQ(b.size(), static_cast<size_t>(k) * n);
  if (!accumulate) out.assign(static_cast<size_t>(m) * n, 0.0);
  for (int32_t i = 0; i < m; ++i) {
    for (int32_t p = 0; p < k; ++p) {
      const double av = transpose_a ? a[static_cast<size_t>(p) * m + i] : a[static_cast<size_t>(i) * k + p];
      for (int32_t j = 0; j < n; ++j) {
        const double bv = transpose_b ? b[static_cast<size_t>(j) * k + p] : b[static_cast<size_t>(p) * n + j];
        out[static_cast<size_t>(i) * n + j] += av * bv;
      }
    }
  }
}

class MlpStage final : public Stage {
 public:
  MlpStage(const MlpConfig& config, Vector w1, Vector w2)
      : config_(config), w1_(std::move(w1)), w2_(std::move(w2)), grad_w1_(w1_.size(), 0.0),
        grad_w2_(w2_.size(), 0.0) {}

  Vector forward(int32_t micro_batch, const Vector& input) override {
    Saved& saved = begin_forward(micro_batch, input);
    return finish_forward(saved);
  }

  Vector backward(int32_t micro_batch, const Vector& output_grad, bool defer_weight) override {
    Saved& saved = state(micro_batch);
    Vector input_grad = backward_second(saved, output_grad);
    backward_first(saved, input_grad);
    if (!defer_weight) weight(micro_batch);
    return input_grad;
  }

  void weight(int32_t micro_batch) override {
    Saved& saved = state(micro_batch);
    FF_ASSERT(!saved.hidden_grad.empty(), "W of mb={} before its backward", micro_batch);
    const MlpConfig& c = config_;
    matmul(saved.activation, saved.output_grad, grad_w2_, c.ffn, c.rows, c.hidden, true, false, true);
    matmul(saved.input, saved.hidden_grad, grad_w1_, c.hidden, c.rows, c.ffn, true, false, true);
    saved_.erase(micro_batch);
  }

  // Interleaves layer by layer: forward layer 1, backward layer 2, forward layer 2, backward layer 1,
  // the pattern the anchor uses to hide one micro-batch's communication behind the other's compute.
  void overlapped_forward_backward(int32_t forward_mb, const Vector& input, Vector& output, Stage& backward_stage,
                                   int32_t backward_mb, const Vector& output_grad, Vector& input_grad) override {
    auto* other = dynamic_cast<MlpStage*>(&backward_stage);
    if (other == nullptr) {
      Stage::overlapped_forward_backward(forward_mb, input, output, backward_stage, backward_mb, output_grad,
                                         input_grad);
      return;
    }
    Saved& forward_saved = begin_forward(forward_mb, input);
    Saved& backward_saved = other->state(backward_mb);
    input_grad = other->backward_second(backward_saved, output_grad);
    output = finish_forward(forward_saved);
    other->backward_first(backward_saved, input_grad);
    other->weight(backward_mb);
  }

  Vector gradients() const override {
    Vector all = grad_w1_;
    all.insert(all.end(), grad_w2_.begin(), grad_w2_.end());
    return all;
  }

 private:
  struct Saved {
    Vector input;        // (rows, hidden)
    Vector activation;   // tanh(x W1): (rows, ffn)
    Vector output_grad;  // (rows, hidden), set by the backward
    Vector hidden_grad;  // d(x W1): (rows, ffn), set by the backward
  };

  Saved& state(int32_t micro_batch) {
    auto it = saved_.find(micro_batch);
    FF_ASSERT(it != saved_.end(), "no forward state for mb={}", micro_batch);
    return it->second;
  }

  Saved& begin_forward(int32_t micro_batch, const Vector& input) {
    const MlpConfig& c = config_;
    FF_ASSERT_EQ(input.size(), static_cast<size_t>(c.rows) * c.hidden);
    auto [it, inserted] = saved_.try_emplace(micro_batch);
    FF_ASSERT(inserted, "second forward of mb={}", micro_batch);
    Saved& saved = it->second;
    saved.input = input;
    matmul(saved.input, w1_, saved.activation, c.rows, c.hidden, c.ffn, false, false, false);
    for (double& value : saved.activation) value = std::tanh(value);
    return saved;
  }

  Vector finish_forward(const Saved& saved) {
    const MlpConfig& c = config_;
    Vector output;
    matmul(saved.activation, w2_, output, c.rows, c.ffn, c.hidden, false, false, false);
    return output;
  }

  // Second layer's backward: returns d(activation) in input_grad's place (reused as scratch).
  Vector backward_second(Saved& saved, const Vector& output_grad) {
    const MlpConfig& c = config_;
    FF_ASSERT_EQ(output_grad.size(), static_cast<size_t>(c.rows) * c.hidden);
    saved.output_grad = output_grad;
    Vector activation_grad;
    matmul(output_grad, w2_, activation_grad, c.rows, c.hidden, c.ffn, false, true, false);
    return activation_grad;
  }

  // First layer's backward: turns d(activation) into the input gradient, in place.
  void backward_first(Saved& saved, Vector& activation_grad_then_input_grad) {
    const MlpConfig& c = config_;
    saved.hidden_grad = activation_grad_then_input_grad;
    for (size_t i = 0; i < saved.hidden_grad.size(); ++i) {
      saved.hidden_grad[i] *= 1.0 - saved.activation[i] * saved.activation[i];
    }
    matmul(saved.hidden_grad, w1_, activation_grad_then_input_grad, c.rows, c.ffn, c.hidden, false, true, false);
  }

  MlpConfig config_;
  Vector w1_, w2_;
  Vector grad_w1_, grad_w2_;
  std::map<int32_t, Saved> saved_;
};

Vector random_vector(std::mt19937_64& rng, size_t size, double scale) {
  std::normal_distribution<double> normal(0.0, scale);
  Vector values(size);
  for (double& value : values) value = normal(rng);
  return values;
}

}  // namespace

MlpModel make_mlp_model(const MlpConfig& config, int32_t num_stages) {
  FF_ASSERT_GT(num_stages, 0);
  FF_ASSERT(config.hidden > 0 && config.ffn > 0 && config.rows > 0);
  std::mt19937_64 rng(config.seed);
  MlpModel model;
  model.config = config;
  for (int32_t s = 0; s < num_stages; ++s) {
    model.w1.push_back(random_vector(rng, static_cast<size_t>(config.hidden) * config.ffn, 1.0 / std::sqrt(config.hidden)));
    model.w2.push_back(random_vector(rng, static_cast<size_t>(config.ffn) * config.hidden, 1.0 / std::sqrt(config.ffn)));
  }
  return model;
}

Batch make_batch(const MlpConfig& config, int32_t num_micro_batches) {
  FF_ASSERT_GT(num_micro_batches, 0);
  std::mt19937_64 rng(config.seed * 7919 + 17);
  Batch batch;
  const size_t size = static_cast<size_t>(config.rows) * config.hidden;
  for (int32_t mb = 0; mb < num_micro_batches; ++mb) {
    batch.inputs.push_back(random_vector(rng, size, 1.0));
    batch.labels.push_back(random_vector(rng, size, 1.0));
  }
  return batch;
}

std::unique_ptr<Stage> make_mlp_stage(const MlpModel& model, int32_t stage) {
  FF_ASSERT(stage >= 0 && static_cast<size_t>(stage) < model.w1.size(), "stage {}", stage);
  return std::make_unique<MlpStage>(model.config, model.w1[stage], model.w2[stage]);
}

Gradients run_reference(const MlpModel& model, const Batch& batch) {
  const int32_t num_stages = static_cast<int32_t>(model.w1.size());
  std::vector<std::unique_ptr<Stage>> stages;
  for (int32_t s = 0; s < num_stages; ++s) stages.push_back(make_mlp_stage(model, s));
  Gradients result;
  for (size_t mb = 0; mb < batch.inputs.size(); ++mb) {
    Vector x = batch.inputs[mb];
    for (int32_t s = 0; s < num_stages; ++s) x = stages[s]->forward(static_cast<int32_t>(mb), x);
    double loss = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] -= batch.labels[mb][i];  // now dL/dy
      loss += 0.5 * x[i] * x[i];
    }
    result.losses.push_back(loss);
    for (int32_t s = num_stages - 1; s >= 0; --s) x = stages[s]->backward(static_cast<int32_t>(mb), x, false);
  }
  for (const auto& stage : stages) result.stages.push_back(stage->gradients());
  return result;
}

}  // namespace ff::pipe
