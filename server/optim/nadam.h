// File: nadam.h
//
// Nadam: torch.optim.NAdam (1.13, single-tensor path): Adam with Nesterov momentum and Dozat's
// momentum schedule. At step t of a tensor (t counted per tensor, from 1):
//
//   d = g + weight_decay * p                                     (coupled L2; no maximize in 1.13)
//   mu = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
//   mu_next = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
//   mu_product = mu_product * mu                                 (float32, from 1)
//   mu_product_next = mu_product * mu * mu_next                  (float32; mu twice, as 1.13 does)
//   m = beta1 * m + (1 - beta1) * d
//   v = beta2 * v + (1 - beta2) * d * d
//   denom = sqrt(v / (1 - beta2^t)) + eps
//   p -= lr * (1 - mu) / (1 - mu_product) * d / denom
//   p -= lr * mu_next / (1 - mu_product_next) * m / denom
//
// mu_product_next multiplies mu in twice: that is torch 1.13's code (`mu_product * mu * mu_next`
// after `mu_product *= mu`), and the reference golden vectors follow it; reference/optimizers.md
// section 1.7 writes mu_product * mu_next, which is torch 2.x. mu_product is kept in float32 and
// multiplied as torch's 0-dim float32 tensor does (each product rounded to float, mu and mu_next
// rounded to float first), which reproduces torch's values exactly; the step coefficients are then
// computed in double from it.
//
// State, created on a tensor's first step: m and v (8 bytes per element), plus the int64 step and
// float32 mu_product. The element math is float32, one fused pass per tensor segment (on the pool
// for large steps, see Optimizer::UpdateSegments).
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_NADAM_H_
#define OPTD_SERVER_OPTIM_NADAM_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Nadam final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Nadam(const NadamOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  // One tensor's state; the vectors are empty until its first step.
  struct TensorState {
    int64_t step = 0;
    float mu_product = 1.0f;
    std::vector<float> exp_avg;     // m
    std::vector<float> exp_avg_sq;  // v
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<NadamOptions>(options);
  }

  NadamOptions options_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_NADAM_H_
