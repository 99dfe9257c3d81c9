// File: sgd.h
//
// Sgd: torch.optim.SGD (1.13, single-tensor path) with momentum, dampening, Nesterov, coupled
// weight decay and maximize:
//
//   d = g (-g if maximize) + weight_decay * p
//   buf = d on a tensor's first step, then momentum * buf + (1 - dampening) * d
//   p -= lr * (nesterov ? d + momentum * buf : buf)        (p -= lr * d without momentum)
//
// The momentum buffer (4 bytes per element, only when momentum != 0) is created on a tensor's
// first step as a copy of d, with no (1 - dampening) factor, as torch does.
//
// Built by CreateOptimizer (optimizer.h); tests may construct it directly. Not thread-safe, like
// every Optimizer. Errors: see Optimizer::Step.

#ifndef OPTD_SERVER_OPTIM_SGD_H_
#define OPTD_SERVER_OPTIM_SGD_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Sgd final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), tensor_sizes non-empty and every size >= 1.
  Sgd(const SgdOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override { return options_; }
  int64_t StateBytesPerElement() const override;

 private:
  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<SgdOptions>(options);
  }

  SgdOptions options_;
  // momentum_buffers_[i] is empty until tensor i's first step, and stays empty if momentum == 0.
  std::vector<std::vector<float>> momentum_buffers_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_SGD_H_
