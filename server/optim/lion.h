// File: lion.h
//
// Lion: Chen et al. (2023), "EvoLved Sign Momentum" (not in torch.optim; reference: optax lion,
// lucidrains/lion-pytorch, Keras 3, which agree):
//
//   c = beta1 * m + (1 - beta1) * g
//   p = p * (1 - lr * weight_decay) - lr * sign(c)           sign(0) = 0
//   m = beta2 * m + (1 - beta2) * g                          (after the update, with beta2)
//
// Weight decay is decoupled and uses the lr passed to Step, as lion-pytorch does (p.mul_ first,
// then p.add_(sign, alpha=-lr)); optax's u = sign(c) + wd * p, p -= lr * u is the same math. Only
// the "hard" (sign) mode; no maximize (none of the references has it).
//
// State, created on a tensor's first step as zeros: m (4 bytes per element). Coefficients are
// rounded to float once per step; the element math is float32, one fused pass per tensor segment
// (on the pool for large steps, see Optimizer::UpdateSegments).
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_LION_H_
#define OPTD_SERVER_OPTIM_LION_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Lion final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Lion(const LionOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<LionOptions>(options);
  }

  LionOptions options_;
  std::vector<std::vector<float>> exp_avgs_;  // m, one per tensor; empty until its first step
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_LION_H_
