#include "server/optim/normalized_gd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace optd {
namespace {

// Sum of g[i]^2 in double. Four partial sums give the CPU independent chains to work on.
double SumOfSquares(const float* __restrict g, int64_t n) {
  double acc0 = 0.0, acc1 = 0.0, acc2 = 0.0, acc3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double g0 = g[i], g1 = g[i + 1], g2 = g[i + 2], g3 = g[i + 3];
    acc0 += g0 * g0;
    acc1 += g1 * g1;
    acc2 += g2 * g2;
    acc3 += g3 * g3;
  }
  for (; i < n; ++i) {
    const double gi = g[i];
    acc0 += gi * gi;
  }
  return (acc0 + acc1) + (acc2 + acc3);
}

// p -= coef * g.
void ScaledSubtract(float* __restrict p, const float* __restrict g, int64_t n, float coef) {
  for (int64_t i = 0; i < n; ++i) p[i] -= coef * g[i];
}

// p -= coef * g with coef kept in double, for coefficients a float cannot hold well.
void ScaledSubtractDouble(float* __restrict p, const float* __restrict g, int64_t n, double coef) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(p[i] - coef * g[i]);
}

}  // namespace

NormalizedGd::NormalizedGd(const NormalizedGdOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options) {}

void NormalizedGd::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  if (options_.norm == NormalizedGdOptions::Norm::kPerTensor) {
    for (const TensorGrad& tensor : tensors) {
      const double norm =
          std::sqrt(SumOfSquares(tensor.grad.data(), static_cast<int64_t>(tensor.grad.size())));
      Update(tensor, lr, norm);
    }
    return;
  }
  double sum_of_squares = 0.0;
  for (const TensorGrad& tensor : tensors) {
    sum_of_squares += SumOfSquares(tensor.grad.data(), static_cast<int64_t>(tensor.grad.size()));
  }
  const double norm = std::sqrt(sum_of_squares);
  for (const TensorGrad& tensor : tensors) Update(tensor, lr, norm);
}

void NormalizedGd::Update(const TensorGrad& tensor, double lr, double norm) const {
  // g == 0: no update. Without this guard eps = 0 would give 0 * (lr / 0) = NaN.
  if (norm == 0.0) return;
  const double denominator = options_.guard == NormalizedGdOptions::Guard::kAddEps
                                 ? norm + options_.eps
                                 : std::max(norm, options_.eps);
  const double coef = lr / denominator;
  float* p = tensor.param.data();
  const float* g = tensor.grad.data();
  const int64_t n = static_cast<int64_t>(tensor.param.size());
  // A tiny norm with a tiny eps can make coef overflow a float (inf * g); a huge norm can make it
  // subnormal. Both are rare, so keep the double path out of the common loop.
  if (coef > std::numeric_limits<float>::max() ||
      (coef > 0.0 && coef < std::numeric_limits<float>::min())) {
    ScaledSubtractDouble(p, g, n, coef);
    return;
  }
  ScaledSubtract(p, g, n, static_cast<float>(coef));
}

}  // namespace optd
