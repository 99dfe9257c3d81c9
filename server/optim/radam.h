// File: radam.h
//
// Radam: torch.optim.RAdam (1.13, single-tensor path), Liu et al.'s rectified Adam. At step t of a
// tensor (t counted per tensor, from 1), with bc1 = 1 - beta1^t and bc2 = 1 - beta2^t:
//
//   d = g + weight_decay * p                                     (coupled L2; no maximize in 1.13)
//   m = beta1 * m + (1 - beta1) * d
//   v = beta2 * v + (1 - beta2) * d * d
//   rho_inf = 2 / (1 - beta2) - 1
//   rho_t = rho_inf - 2 t beta2^t / bc2
//   rho_t > 5 (strict): rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2)
//                                    rho_t))
//                       p -= lr * rect * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)
//   otherwise:          p -= lr / bc1 * m                        (SGD with bias-corrected momentum)
//
// eps is added to the un-corrected sqrt(v), unlike Adam. rho_1 = 1 and rho_t < t, so the first
// five steps are never rectified; with beta2 = 0.999 the rectified branch starts at t = 6, and
// with beta2 <= 2/3 (rho_inf <= 5) never. rho_t and rect are computed in double exactly as torch
// does, so the branch taken is torch's.
//
// State, created on a tensor's first step: m and v (8 bytes per element), plus the int64 step.
// Coefficients are rounded to float once per step; the element math is float32, one fused pass
// per tensor segment (on the pool for large steps, see Optimizer::UpdateSegments).
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_RADAM_H_
#define OPTD_SERVER_OPTIM_RADAM_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Radam final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Radam(const RadamOptions& options, std::vector<int64_t> tensor_sizes);

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
    options_ = std::get<RadamOptions>(options);
  }

  RadamOptions options_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_RADAM_H_
