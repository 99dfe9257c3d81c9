// File: dadapt_sgd.h
//
// DAdaptSgd: facebookresearch/dadaptation's DAdaptSGD (reference/optimizers-lr-free.md
// section 3), dual averaging from the first point x0 with the step scaled by D-Adaptation's d.
// One param group; at completed step k and lr the step's learning rate:
//
//   k = 0: g0_norm = sqrt(sum ||g||^2), without weight decay             (global reduction)
//   dlr = d * lr / g0_norm
//   g += wd * p;  num += dlr * <g, s>;  s += dlr * g;  sq += ||s||^2     (global reduction)
//   numw += num;  d = max(d, min(2 numw / sqrt(sq), d * growth_rate))
//   z = x0 - s;  p = momentum p + (1 - momentum) z
//
// Two phases (prodigy.h): the same bits whatever the pool size. When sq is 0 the step stops
// before moving p, as upstream. Departure from upstream: a first step whose gradients are all zero
// (g0_norm = 0, which upstream turns into inf and NaN) changes nothing and is not counted.
// Row-sparse gradients are refused.
//
// State: per tensor z, s and x0 (12 bytes per element); model-wide d, numerator_weighted,
// g0_norm and the step count k. Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_DADAPT_SGD_H_
#define OPTD_SERVER_OPTIM_DADAPT_SGD_H_

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

class DAdaptSgd final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  DAdaptSgd(const DAdaptSgdOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override { return 3 * sizeof(float); }
  absl::StatusOr<RowSparseRule> RowSparse() const override;
  absl::Status PartialSteps() const override;
  // {"d", d}, {"effective_lr", d * lr / g0_norm} with the options' lr (0 before the first step).
  std::vector<std::pair<std::string, double>> Estimates() const override;

 private:
  struct TensorState {
    std::vector<float> s;
    std::vector<float> x0;
    std::vector<float> z;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  std::vector<std::pair<std::string_view, double*>> GlobalScalars() override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<DAdaptSgdOptions>(options);
  }

  DAdaptSgdOptions options_;
  std::vector<TensorState> state_;
  double d_;
  double numerator_weighted_ = 0.0;
  double g0_norm_ = 0.0;
  double k_ = 0.0;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_DADAPT_SGD_H_
