// File: adafactor.h
//
// Adafactor: torch.optim.Adafactor's single-tensor path (reference/optimizers-lr-free.md
// section 8). For each tensor, at its step t (from 1), with lr the step's learning rate:
//
//   rho_hat = t^beta2_decay;  rho = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(p)) * rho
//   p *= 1 - lr * wd
//   matrix (the last two dims, n x m; leading dims are a batch):
//     R = lerp(R, ||g||^2 per row / m, rho_hat);  C = lerp(C, ||g||^2 per column / n, rho_hat)
//     V = (R outer C) / max(mean(R), eps1)
//   vector: V = lerp(V, g^2, rho_hat)
//   U = g / sqrt(max(V, eps1^2));  p -= alpha / max(1, RMS(U) / d) * U
//
// The factored statistics are computed per tensor on the calling thread; the sums of squares of p
// and U per tensor in double in a fixed order, and the update on the pool: the same bits whatever
// the pool size. No global reduction: row-sparse gradients are applied dense.
//
// State per tensor: step, and row_var and col_var (matrices: (n + m) floats per n x m matrix) or
// variance (vectors: 4 bytes per element). Not thread-safe, like every Optimizer.

#ifndef OPTD_SERVER_OPTIM_ADAFACTOR_H_
#define OPTD_SERVER_OPTIM_ADAFACTOR_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "server/optim/optimizer.h"
#include "server/optim/optimizer_options.h"

namespace optd {

class Adafactor final : public Optimizer {
 public:
  // REQUIRES: options.Validate().ok(), shapes non-empty and every dim >= 1.
  Adafactor(const AdafactorOptions& options, const TensorShapes& shapes);

  OptimizerOptions options() const override { return options_; }
  // 4 for the vectors; the matrices' (n + m) / (n m) is below 1 and rounds to 0.
  int64_t StateBytesPerElement() const override;

 private:
  struct Layout {
    int64_t batch = 1;  // matrices: product of the leading dims
    int64_t rows = 0;   // n (0: a vector)
    int64_t cols = 0;   // m
    bool factored() const { return rows > 0; }
  };
  struct TensorState {
    int64_t step = 0;
    std::vector<float> row_var;  // [batch, n]
    std::vector<float> col_var;  // [batch, m]
    std::vector<float> variance;
  };

  void StepImpl(absl::Span<const TensorGrad> tensors, double lr) override;
  StateRefs StateOf(size_t tensor) override;
  int64_t ArraySize(size_t tensor, std::string_view array) const override;
  void SetOptions(const OptimizerOptions& options) override {
    options_ = std::get<AdafactorOptions>(options);
  }

  AdafactorOptions options_;
  std::vector<Layout> layouts_;
  std::vector<TensorState> state_;
};

}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_ADAFACTOR_H_
