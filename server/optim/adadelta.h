// File: adadelta.h
//
// Adadelta: torch.optim.Adadelta (1.13, single-tensor path), Zeiler (2012) with an extra lr:
//
//   d = g (-g if maximize) + weight_decay * p
//   square_avg = rho * square_avg + (1 - rho) * d * d
//   delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * d       (eps inside both sqrts)
//   acc_delta = rho * acc_delta + (1 - rho) * delta * delta          (the delta before lr)
//   p -= lr * delta
//
// State, created on a tensor's first step: square_avg and acc_delta (8 bytes per element). torch's
// step counter is unused by the update; this class keeps an int64 one only to know the first
// step. Coefficients are rounded to float once per step; the element math is float32, one fused
// pass per tensor segment (on the pool for large steps, see Optimizer::UpdateSegments).
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_ADADELTA_H_
#define OPTD_SERVER_OPTIM_ADADELTA_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Adadelta final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Adadelta(const AdadeltaOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  // One tensor's state; the vectors are empty until its first step.
  struct TensorState {
    int64_t step = 0;
    std::vector<float> square_avg;
    std::vector<float> acc_delta;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<AdadeltaOptions>(options);
  }

  AdadeltaOptions options_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_ADADELTA_H_
