// File: adam.h
//
// Adam: torch.optim.Adam and torch.optim.AdamW (1.13, single-tensor path), one kernel for both.
// At step t of a tensor (t counted per tensor, from 1):
//
//   d = g (-g if maximize)                         Adam: d += weight_decay * p   (coupled L2)
//                                                  AdamW: p *= 1 - lr * weight_decay, first
//   m = beta1 * m + (1 - beta1) * d
//   v = beta2 * v + (1 - beta2) * d * d
//   vmax = max(vmax, v)                            amsgrad only: max of the RAW v, as torch 1.13
//   p -= lr / (1 - beta1^t) * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps)
//
// State, created on a tensor's first step: m and v (8 bytes per element), plus vmax with amsgrad
// (12 bytes per element). Scalar coefficients are computed in double and rounded to float once per
// step; the element math is float32, one fused pass per tensor.
//
// Built by CreateOptimizer (optimizer.h) for AdamOptions and AdamWOptions; tests may construct it
// directly. Not thread-safe, like every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_ADAM_H_
#define OPTD_SERVER_OPTIM_ADAM_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Adam final : public Optimizer {
 public:
  // Adam: weight decay is coupled (added to the gradient).
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Adam(const AdamOptions& options, std::vector<int64_t> tensor_sizes);

  // AdamW: weight decay is decoupled (p *= 1 - lr * weight_decay before the Adam update).
  // REQUIRES: as above.
  Adam(const AdamWOptions& options, std::vector<int64_t> tensor_sizes);

  // Returns the AdamOptions or AdamWOptions this was constructed with.
  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;
  // Row-sparse gradients follow torch.optim.SparseAdam (lazy; eps outside the bias-corrected
  // root: p -= lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)), which has no weight decay and no
  // amsgrad: with either set, row-sparse gradients are refused.
  absl::StatusOr<RowSparseRule> RowSparse() const override;

 private:
  // The fields AdamOptions and AdamWOptions share, plus which weight decay applies.
  struct Hyperparameters {
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    bool amsgrad;
    bool maximize;
    bool decoupled_weight_decay;  // AdamW
  };

  // One tensor's state; the vectors are empty until its first step.
  struct TensorState {
    int64_t step = 0;
    std::vector<float> exp_avg;         // m
    std::vector<float> exp_avg_sq;      // v
    std::vector<float> max_exp_avg_sq;  // vmax, amsgrad only
  };

  Adam(OptimizerOptions options, const Hyperparameters& hyper, std::vector<int64_t> tensor_sizes);

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override;
  std::string_view StructuralChange(const OptimizerOptions& options) const override;

  // The hyperparameters of AdamOptions or AdamWOptions.
  static Hyperparameters HyperparametersOf(const OptimizerOptions& options);

  OptimizerOptions options_;
  Hyperparameters hyper_;
  std::vector<TensorState> state_;  // one per tensor
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_ADAM_H_
