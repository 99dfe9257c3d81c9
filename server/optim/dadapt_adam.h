// File: dadapt_adam.h
//
// DAdaptAdam: facebookresearch/dadaptation's DAdaptAdam (reference/optimizers-lr-free.md
// section 2), Adam with the step scaled by d, D-Adaptation's lower bound on the distance to the
// solution. One param group (a session is one); at completed step k, lr the step's learning rate
// and r = layer_scale:
//
//   dlr = d * lr * bc                          bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1)) or 1
//   g += wd * p                                coupled weight decay (decouple = false)
//   num += r * dlr * <g, s / (sqrt(v) + eps)>  with the old s and v            (global reduction)
//   m = beta1 m + r dlr (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   s = sqrt(beta2) s + dlr (1 - sqrt(beta2)) g;  l1 += r ||s||_1              (global reduction)
//   numw = sqrt(beta2) numw + (1 - sqrt(beta2)) num
//   d = max(d, min(numw / ((1 - sqrt(beta2)) l1), d * growth_rate))
//   p -= wd * dlr * p (decoupled, old d);  p -= m / (sqrt(v) + eps)
//
// Two phases, as Prodigy (prodigy.h): the same bits whatever the pool size. When l1 is 0 the step
// stops after the first phase, as upstream. Row-sparse gradients are refused.
//
// State: per tensor exp_avg, exp_avg_sq and s (12 bytes per element); model-wide d,
// numerator_weighted and the step count k. Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_DADAPT_ADAM_H_
#define OPTD_SERVER_OPTIM_DADAPT_ADAM_H_

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

class DAdaptAdam final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  DAdaptAdam(const DAdaptAdamOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override { return 3 * sizeof(float); }
  absl::StatusOr<RowSparseRule> RowSparse() const override;
  absl::Status PartialSteps() const override;
  // {"d", d}, {"effective_lr", d * lr} with the options' lr.
  std::vector<std::pair<std::string, double>> Estimates() const override;

 private:
  struct TensorState {
    std::vector<float> exp_avg;
    std::vector<float> exp_avg_sq;
    std::vector<float> s;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  std::vector<std::pair<std::string_view, double*>> GlobalScalars() override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<DAdaptAdamOptions>(options);
  }

  DAdaptAdamOptions options_;
  std::vector<TensorState> state_;
  double d_;
  double numerator_weighted_ = 0.0;
  double k_ = 0.0;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_DADAPT_ADAM_H_
