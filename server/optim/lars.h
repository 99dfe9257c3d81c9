// File: lars.h
//
// Lars: LARS, You et al. (2017), as optax's lars (not in torch.optim): add_decayed_weights, then
// scale_by_trust_ratio, then the learning rate, then trace (momentum with lr inside the buffer).
// Per tensor:
//
//   u = g + weight_decay * p
//   trust = trust_coefficient * ||p|| / (||u|| + eps), or 1 when ||p|| == 0 or ||u|| == 0
//   s = lr * trust * u
//   buf = momentum * buf + s                                 (buf starts at zeros)
//   p -= nesterov ? s + momentum * buf : buf                 (p -= s when momentum == 0)
//
// The norm in the denominator is of the sum g + wd * p (optax), not ||g|| + wd * ||p|| (the paper
// and the pl_bolts/lightly copies). Every tensor gets weight decay and the trust ratio: the
// service has no masks, so exclude bias and normalisation tensors by giving them their own
// session if they must not be adapted. Because lr sits inside the buffer, a schedule's change of
// lr does not rescale the velocity already accumulated (unlike torch SGD).
//
// Two passes per tensor: the first accumulates ||p||^2 and ||u||^2 in double (per segment, added
// in a fixed order: see Optimizer::SumPerTensor); the second recomputes u with the same float32
// code and applies the update. lr * trust is computed in double and rounded to float once (kept in
// double in the rare case a float cannot hold it). Both passes run on the pool for large steps.
//
// State, created on a tensor's first step: the momentum buffer (4 bytes per element) when
// momentum != 0, none otherwise.
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_LARS_H_
#define OPTD_SERVER_OPTIM_LARS_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Lars final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Lars(const LarsOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<LarsOptions>(options);
  }

  LarsOptions options_;
  // momentum_buffers_[i] is empty until tensor i's first step, and stays empty if momentum == 0.
  std::vector<std::vector<float>> momentum_buffers_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_LARS_H_
