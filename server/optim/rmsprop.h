// File: rmsprop.h
//
// Rmsprop: torch.optim.RMSprop (1.13, single-tensor path) with momentum, centering, coupled weight
// decay and maximize:
//
//   d = g (-g if maximize) + weight_decay * p
//   square_avg = alpha * square_avg + (1 - alpha) * d * d
//   centered:  grad_avg = alpha * grad_avg + (1 - alpha) * d
//              avg = sqrt(max(square_avg - grad_avg^2, 0)) + eps
//   else:      avg = sqrt(square_avg) + eps                      (eps outside the sqrt)
//   momentum:  buf = momentum * buf + d / avg;  p -= lr * buf    (lr outside the buffer)
//   else:      p -= lr * d / avg
//
// The max(., 0) is the one departure from torch, which takes the sqrt of a square_avg - grad_avg^2
// that rounding made negative and so turns the parameter into NaN for good; mathematically the
// difference is >= 0, and where it is not negative the result is torch's.
//
// State, created on a tensor's first step as zeros: square_avg (4 bytes per element), plus the
// momentum buffer when momentum != 0 (4) and grad_avg when centered (4). Coefficients are rounded
// to float once per step; the element math is float32, one fused pass per tensor segment (on the
// pool for large steps, see Optimizer::UpdateSegments).
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_RMSPROP_H_
#define OPTD_SERVER_OPTIM_RMSPROP_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Rmsprop final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Rmsprop(const RmspropOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  // One tensor's state; the vectors are empty until its first step, and momentum_buffer and
  // grad_avg stay empty unless momentum != 0 and centered.
  struct TensorState {
    int64_t step = 0;
    std::vector<float> square_avg;
    std::vector<float> momentum_buffer;
    std::vector<float> grad_avg;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<RmspropOptions>(options);
  }
  std::string_view StructuralChange(const OptimizerOptions& options) const override;

  RmspropOptions options_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_RMSPROP_H_
