// File: adagrad.h
//
// Adagrad: torch.optim.Adagrad (1.13, single-tensor path, dense gradients). At step t of a tensor
// (t counted per tensor, from 1):
//
//   d = g (-g if maximize) + weight_decay * p
//   clr = lr / (1 + (t - 1) * lr_decay)
//   sum += d * d
//   p -= clr * d / (sqrt(sum) + eps)              eps outside the sqrt
//
// State: `sum` (4 bytes per element), filled with initial_accumulator_value. torch creates it at
// construction; this class creates it on a tensor's first step, which gives the same results and
// lets StateBytes() report memory actually in use.
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_ADAGRAD_H_
#define OPTD_SERVER_OPTIM_ADAGRAD_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Adagrad final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Adagrad(const AdagradOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

  // Row-sparse gradients are applied dense-equivalent, which for Adagrad equals the lazy rule (no
  // state decays); as in torch, they are refused with weight decay.
  absl::StatusOr<RowSparseRule> RowSparse() const override;

 private:
  // One tensor's state; `sum` is empty until its first step.
  struct TensorState {
    int64_t step = 0;
    std::vector<float> sum;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<AdagradOptions>(options);
  }

  AdagradOptions options_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_ADAGRAD_H_
