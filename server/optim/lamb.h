// File: lamb.h
//
// Lamb: LAMB, You et al. (2019) Algorithm 2, as optax's lamb (not in torch.optim). Per tensor, at
// step t of the tensor (t counted per tensor, from 1):
//
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
//   trust = ||p|| / ||u||, or 1 when ||p|| == 0 or ||u|| == 0
//   p -= lr * trust * u
//
// Both moments are bias-corrected (optax scale_by_adam, eps outside the sqrt, eps_root = 0); the
// weight decay is decoupled from the moments but inside the trust ratio. Norms are per tensor:
// each tensor of a step is a "layer". No maximize and no gradient pre-clipping (timm's
// max_grad_norm); clip before the step if wanted.
//
// Two passes per tensor: the first updates m and v and accumulates ||p||^2 and ||u||^2 in double
// (per segment, added in a fixed order: see Optimizer::SumPerTensor); the second recomputes u with
// the same float32 code from the stored m and v and applies it, so the u applied is the u whose
// norm was taken. lr * trust is computed in double and rounded to float once (kept in double in
// the rare case a float cannot hold it). Both passes run on the pool for large steps.
//
// State, created on a tensor's first step: m and v (8 bytes per element), plus the int64 step.
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_LAMB_H_
#define OPTD_SERVER_OPTIM_LAMB_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Lamb final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Lamb(const LambOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  // One tensor's state; the vectors are empty until its first step.
  struct TensorState {
    int64_t step = 0;
    std::vector<float> exp_avg;     // m
    std::vector<float> exp_avg_sq;  // v
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<LambOptions>(options);
  }

  LambOptions options_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_LAMB_H_
