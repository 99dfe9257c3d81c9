// File: muon.h
//
// Muon: KellerJordan/Muon's SingleDeviceMuon (reference/optimizers-lr-free.md section 7) for the
// matrices of a session, and the AdamW update of the same repository's MuonWithAuxAdam for its
// other tensors, as Muon's authors prescribe. With lr the step's learning rate:
//
//   matrices (2-D, or 4-D viewed as [out, rest]):
//     buf = lerp(buf, g, 1 - momentum);  u = nesterov ? lerp(g, buf, momentum) : buf
//     O = NS5(u) * sqrt(max(1, rows / cols))     (rows, cols: the last two dims of the shape)
//     p *= 1 - lr * wd;  p -= lr * O
//   other tensors (vectors, scalars, 3-D and 5-D+), at the tensor's step t:
//     m = lerp(m, g, 1 - adam_beta1);  v = lerp(v, g^2, 1 - adam_beta2)
//     u = (m / (1 - adam_beta1^t)) / (sqrt(v / (1 - adam_beta2^t)) + adam_eps)
//     p *= 1 - lr_a * adam_wd;  p -= lr_a * u      lr_a = adam_lr * lr / options.lr
//
// NS5 is the quintic Newton-Schulz iteration of upstream's zeropower_via_newtonschulz5 in float32
// (the Muon_fp32 golden vectors; upstream's default casts to bf16): X = u (transposed when
// rows > cols), X /= ||X||_F + 1e-7, then ns_steps times A = X X^T, B = b A + (c A) A,
// X = a X + B X with (a, b, c) = (3.4445, -4.7750, 2.0315). The matrix products are Eigen's
// (libeigen3-dev), on the calling thread, one tensor after another; the element passes run on the
// pool. No global reduction: row-sparse gradients are applied dense.
//
// State: matrices momentum_buffer (4 bytes per element); other tensors step, exp_avg and
// exp_avg_sq (8). Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_MUON_H_
#define OPTD_SERVER_OPTIM_MUON_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Muon final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), shapes non-empty and every dim >= 1.
  Muon(const MuonOptions& options, const TensorShapes& shapes);

  OptimizerOptions options() const override { return options_; }
  // 4 when every tensor is a matrix, else 8 (the AdamW tensors').
  int64_t StateBytesPerElement() const override;

  // O = NS5(u) for a rows x cols row-major matrix, in place, with `steps` iterations (exposed for
  // tests and the benchmark).
  static void NewtonSchulz(float* u, int64_t rows, int64_t cols, int64_t steps);

 private:
  struct Layout {
    bool matrix = false;
    int64_t rows = 0, cols = 0;  // the [out, rest] view
    double scale = 1.0;          // sqrt(max(1, shape[-2] / shape[-1]))
  };
  struct TensorState {
    int64_t step = 0;  // AdamW tensors only
    std::vector<float> momentum_buffer;
    std::vector<float> exp_avg;
    std::vector<float> exp_avg_sq;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<MuonOptions>(options);
  }

  MuonOptions options_;
  std::vector<Layout> layouts_;
  std::vector<TensorState> state_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_MUON_H_
