// File: optimizer.h
//
// The optimizer interface of optd: a small stateful object that applies one update rule to a fixed
// list of float32 tensors. Everything in server/optim is pure math on spans of floats: C++17 and
// abseil only, no protobuf, no gRPC, no Prometheus.
//
// Who may call it: server/session, which owns one Optimizer per session and calls it under the
// session's lock, and tests. An Optimizer is NOT thread-safe: one caller at a time.
//
// Semantics follow torch.optim 1.13 single-tensor code paths (reference/optimizers.md): state is
// created lazily on a tensor's first step, step counters are int64 and per tensor, and scalar
// coefficients are computed in double and rounded to float once per step.

#ifndef OPTD_SERVER_OPTIM_OPTIMIZER_H_
#define OPTD_SERVER_OPTIM_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/optim/optimizer_options.h"

namespace optd {

// One tensor of a step: its parameters, updated in place, and its gradient.
// REQUIRES: param.size() == grad.size(), and the two do not overlap.
struct TensorGrad {
  absl::Span<float> param;
  absl::Span<const float> grad;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // Applies one step with learning rate `lr` (the schedule's value for this step; the options'
  // lr is the base) to every tensor. `tensors` lists the tensors in the order and with the sizes
  // given at creation.
  //
  // Returns InvalidArgument, and changes nothing, if the number of tensors or any size differs
  // from creation, a param and grad size differ, or `lr` is not finite and >= 0. Does not check
  // that gradients are finite: the caller does, before calling.
  absl::Status Step(absl::Span<const TensorGrad> tensors, double lr);

  // The options in force, with every default filled in.
  virtual OptimizerOptions options() const = 0;

  // Bytes of optimizer state allocated now (grows as tensors take their first step).
  virtual int64_t StateBytes() const = 0;

  // Bytes of state per parameter element once every tensor has stepped (e.g. 8 for Adam, 12 for
  // Adam with amsgrad, 0 for plain SGD and normalized GD).
  virtual int64_t StateBytesPerElement() const = 0;

  const std::vector<int64_t>& tensor_sizes() const { return tensor_sizes_; }

 protected:
  explicit Optimizer(std::vector<int64_t> tensor_sizes) : tensor_sizes_(std::move(tensor_sizes)) {}

  // Does the work of Step once the sizes are checked.
  virtual void StepImpl(absl::Span<const TensorGrad> tensors, double lr) = 0;

 private:
  const std::vector<int64_t> tensor_sizes_;
};

// Creates the optimizer `options` names for tensors of the given element counts.
// Returns InvalidArgument, naming the field, value and valid range, if options.Validate() fails or
// `tensor_sizes` is empty or has a size < 1.
absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(const OptimizerOptions& options,
                                                           std::vector<int64_t> tensor_sizes);

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_OPTIMIZER_H_
