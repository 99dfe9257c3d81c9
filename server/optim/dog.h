// File: dog.h
//
// Dog: formll/dog's DoG and LDoG (reference/optimizers-lr-free.md section 4), "distance over
// gradients": SGD whose step is the distance travelled from the first point over the root of the
// summed squared gradients, with the optional polynomial-decay iterate averager of the same
// package. One param group; at each step, with lr the step's learning rate:
//
//   first step: x0 = p;  rbar = reps_rel (1 + ||x||);  G = sum ||g||^2 + eps
//   later:      rbar = max(rbar, ||x - x0||);          G += sum ||g||^2
//   eta = lr * rbar / sqrt(G)  (init_eta on the first step when set);  p -= eta * g
//
// where g includes coupled weight decay (g += wd * p), and the norms are over the whole model for
// DoG (||x|| = the norm of the per-tensor norms) and per tensor for L-DoG, each tensor then with
// its own rbar, G and eta. rbar, G and eta are float32, as upstream keeps them. The averager, with
// t the step count from 1: avg = (1 - w) avg + w p, w = (gamma + 1) / (gamma + t).
//
// Two phases (prodigy.h): the sums per tensor in double in a fixed order, then the update; the
// same bits whatever the pool size. Row-sparse gradients are refused.
//
// State: per tensor init_buffer (x0), plus averaged_params with averaging (4 or 8 bytes per
// element); model-wide step, and DoG's G, eta, rbar (L-DoG's are per-tensor scalars).
// The evaluation point (EvaluationPoint) is the average when averaging is on.
// Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_DOG_H_
#define OPTD_SERVER_OPTIM_DOG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Dog final : public Optimizer {
 public:
  // DoG and L-DoG. REQUIRES: options.Validate().ok(), tensor_sizes non-empty, every size >= 1.
  Dog(const DogOptions& options, std::vector<int64_t> tensor_sizes);
  Dog(const LdogOptions& options, std::vector<int64_t> tensor_sizes);

  OptimizerOptions options() const override;
  int64_t StateBytesPerElement() const override;
  absl::StatusOr<RowSparseRule> RowSparse() const override;
  absl::Status PartialSteps() const override;
  bool HasEvaluationPoint() const override { return options_.averaging; }
  // DoG: {"eta", "rbar", "G"}; L-DoG: the same per tensor, as "eta[i]", ...
  std::vector<std::pair<std::string, double>> Estimates() const override;

 private:
  struct Scalars {  // float32, as upstream's 0-dim tensors
    float rbar = 0.0f;
    float g_sum = 0.0f;  // G
    float eta = 0.0f;
  };
  struct TensorState {
    std::vector<float> init_buffer;
    std::vector<float> averaged_params;
    Scalars layer;  // L-DoG
  };

  Dog(const DogOptions& options, bool layerwise, std::vector<int64_t> tensor_sizes);

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  std::vector<std::pair<std::string_view, double*>> GlobalScalars() override;
  void SetOptions(const OptimizerOptions& options) override;
  std::string_view StructuralChange(const OptimizerOptions& options) const override;
  void EvaluationPointImpl(size_t tensor, absl::Span<const float> param,
                           absl::Span<float> out) const override;

  // One step's new rbar, G and eta from the old ones and this step's sums.
  Scalars Next(const Scalars& old, double grad_squares, double distance_squares,
               double param_squares, double lr) const;

  DogOptions options_;  // L-DoG's fields are the same
  bool layerwise_;
  std::vector<TensorState> state_;
  double step_ = 0.0;  // completed steps
  // DoG's scalars: float32 values held in double (OptimizerState's model-wide scalars).
  double rbar_ = 0.0, g_sum_ = 0.0, eta_ = 0.0;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_DOG_H_
