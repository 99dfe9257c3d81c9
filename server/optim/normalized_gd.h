// File: normalized_gd.h
//
// NormalizedGd: normalized gradient descent (reference/optimizers.md section 1.12; not in torch,
// the additive-eps form is optax's normalize_by_update_norm):
//
//   n = ||g||, over all tensors (Norm::kGlobal) or per tensor (Norm::kPerTensor)
//   p -= lr * g / (n + eps)            Guard::kAddEps
//   p -= lr * g / max(n, eps)          Guard::kMaxEps
//
// The norm is accumulated in double, in a fixed order (per block of the step, see
// Optimizer::SumPerTensor); the coefficient lr / (n + eps) is computed in double and rounded to
// float once, then p -= coef * g in float32. A zero gradient (n == 0) gives exactly no
// update, whatever eps (including 0): never 0/0. No state.
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_NORMALIZED_GD_H_
#define OPTD_SERVER_OPTIM_NORMALIZED_GD_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class NormalizedGd final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  NormalizedGd(const NormalizedGdOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override { return 0; }

 private:
  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<NormalizedGdOptions>(options);
  }

  // lr / denominator(norm), the coefficient of p -= coef * g; 0 if norm == 0.
  double Coefficient(double lr, double norm) const;

  NormalizedGdOptions options_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_NORMALIZED_GD_H_
