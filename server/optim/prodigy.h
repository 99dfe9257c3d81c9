// File: prodigy.h
//
// Prodigy: konstmish/prodigy's Prodigy (reference/optimizers-lr-free.md section 1), an Adam whose
// step is scaled by d, an estimate of the distance to the solution that grows from d0. With one
// param group (a session is one), at completed step k and with lr the step's learning rate:
//
//   dlr = d * lr * bc                   bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1)) or 1
//   g += wd * p                         coupled weight decay only (decouple = false)
//   num += (d / d0) * dlr * <g[::sp], p0 - p[::sp]>                        (global reduction)
//   m = beta1 m + d (1 - beta1) g       v = beta2 v + d^2 (1 - beta2) g^2
//   s = beta3 s + (d / d0) * (safeguard_warmup ? d : dlr) * g[::sp]
//   den = sum ||s||_1                                                      (global reduction)
//   d_hat = d_coef * (beta3 * d_numerator + num) / den;  d = max(d, d_hat) if d == d0;
//   d_max = max(d_max, d_hat);  d = min(d_max, d * growth_rate)
//   p -= wd * dlr * p                   decoupled weight decay, with the old d
//   p -= dlr * m / (sqrt(v) + d eps)    (beta1 = 0: dlr * d * g / (...)), eps with the new d
//
// A step is two phases: the first updates m, v, s and folds the two sums per segment (in double,
// added in a fixed order: Optimizer::SumOverModel), the second moves p with the reduced d. So the
// result has the same bits whatever the pool size. When den is 0 (every gradient was zero) the
// step stops after the first phase, as upstream: m, v, s changed, d, k and p did not.
//
// Every tensor takes part in every step (a step names every tensor: session/gradient.cc), and
// row-sparse gradients are refused (RowSparse): the estimate is a sum over every element.
//
// State: per tensor exp_avg (unless beta1 = 0), exp_avg_sq, p0 and s (ceil(n / slice_p) each),
// created at the first step: 4 (2 + 2 / slice_p) bytes per element. Model-wide: d, d_max,
// d_numerator, d_hat, d_denom and the step count k.
//
// Built by CreateOptimizer (optimizer.h). Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_PRODIGY_H_
#define OPTD_SERVER_OPTIM_PRODIGY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Prodigy final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Prodigy(const ProdigyOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;
  absl::StatusOr<RowSparseRule> RowSparse() const override;
  absl::Status PartialSteps() const override;

  // {"d", d}, {"effective_lr", d * lr} with the options' lr: what the next step uses.
  std::vector<std::pair<std::string, double>> Estimates() const override {
    return {{"d", d_}, {"effective_lr", d_ * options_.lr}};
  }

 private:
  struct TensorState {
    std::vector<float> exp_avg;  // m, times d; beta1 > 0 only
    std::vector<float> exp_avg_sq;
    std::vector<float> p0;  // p[::slice_p] at the first step
    std::vector<float> s;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  std::vector<std::pair<std::string_view, double*>> GlobalScalars() override;
  int64_t ArraySize(size_t tensor, std::string_view array) const override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<ProdigyOptions>(options);
  }
  std::string_view StructuralChange(const OptimizerOptions& options) const override;

  ProdigyOptions options_;
  std::vector<TensorState> state_;
  double d_;
  double d_max_;
  double d_numerator_ = 0.0;
  double d_hat_ = 0.0;
  double d_denom_ = 0.0;
  double k_ = 0.0;  // completed steps
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_PRODIGY_H_
