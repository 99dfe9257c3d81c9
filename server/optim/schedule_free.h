// File: schedule_free.h
//
// ScheduleFree: facebookresearch/schedule_free's AdamWScheduleFree and SGDScheduleFree
// (reference/optimizers-lr-free.md sections 5 and 6), one class for both. The session's
// parameters are the training point y (upstream's train mode); the evaluation point
// x = (y - (1 - beta1) z) / beta1 is computed on request (EvaluationPoint), never stored. At
// completed step k, with lr the step's learning rate (beta1 = SGD's momentum):
//
//   lr_t = lr * min(1, (k + 1) / warmup_steps);  lr_max = max(lr_max, lr_t)
//   w = (k + 1)^r * lr_max^weight_lr_power;  weight_sum += w;  c = w / weight_sum
//   AdamW: v = beta2 v + (1 - beta2) g^2;  u = g / (sqrt(v / (1 - beta2^(k+1))) + eps)
//          (inner momentum: m = im m + (1 - im) g, u = m / (1 - im^(k+1)) / (...))
//          u += wd * y
//   SGD:   u = g + wd * y
//   y = lerp(y, z, c);  y += lr_t (beta1 (1 - c) - 1) u;  z -= lr_t u
//
// Every tensor is updated on its own: no global reduction, so row-sparse gradients are applied
// dense (rows not sent have a zero gradient, and y still moves toward z).
//
// State: per tensor z (SGD: 4 bytes per element), plus exp_avg_sq (AdamW: 8) and exp_avg with
// inner momentum (12); model-wide k, weight_sum, lr_max and scheduled_lr.
// Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_SCHEDULE_FREE_H_
#define OPTD_SERVER_OPTIM_SCHEDULE_FREE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class ScheduleFree final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  ScheduleFree(const ScheduleFreeAdamWOptions& options, std::vector<int64_t> tensor_sizes);
  ScheduleFree(const ScheduleFreeSgdOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;
  bool HasEvaluationPoint() const override { return true; }
  // {"scheduled_lr", lr_t}, {"c", the last interpolation weight}.
  std::vector<std::pair<std::string, double>> Estimates() const override;

 private:
  struct TensorState {
    std::vector<float> exp_avg;     // AdamW with inner momentum
    std::vector<float> exp_avg_sq;  // AdamW
    std::vector<float> z;
  };

  ScheduleFree(OptimizerOptions options, std::vector<int64_t> tensor_sizes);

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  std::vector<std::pair<std::string_view, double*>> GlobalScalars() override;
  void SetOptions(const OptimizerOptions& options) override { options_ = options; }
  std::string_view StructuralChange(const OptimizerOptions& options) const override;
  void EvaluationPointImpl(size_t tensor, absl::Span<const float> param,
                           absl::Span<float> out) const override;

  bool adamw() const { return std::holds_alternative<ScheduleFreeAdamWOptions>(options_); }
  bool inner_momentum() const;
  double beta1() const;

  OptimizerOptions options_;
  std::vector<TensorState> state_;
  double k_ = 0.0;
  double weight_sum_ = 0.0;
  double lr_max_ = -1.0;
  double scheduled_lr_ = 0.0;
  double c_ = 0.0;  // the last step's interpolation weight (not state: Estimates only)
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_SCHEDULE_FREE_H_
