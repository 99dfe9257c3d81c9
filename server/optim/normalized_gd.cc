#include "server/optim/normalized_gd.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"

namespace optd {
namespace {

using optim_internal::FitsFloat;
using optim_internal::IsNonFinite;
using optim_internal::NonFiniteCount;
using optim_internal::SumOfSquares;

// p -= coef * g. Returns how many p it left non-finite.
OPTD_SIMD_CLONES
int64_t ScaledSubtract(float* __restrict p, const float* __restrict g, int64_t n, float coef) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float p_new = p[i] - coef * g[i];
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

// p -= coef * g with coef kept in double, for coefficients a float cannot hold well. Returns how
// many p it left non-finite.
OPTD_SIMD_CLONES
int64_t ScaledSubtractDouble(float* __restrict p, const float* __restrict g, int64_t n,
                             double coef) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float p_new = static_cast<float>(p[i] - coef * g[i]);
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

NormalizedGd::NormalizedGd(const NormalizedGdOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options) {}

void NormalizedGd::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const std::vector<std::array<double, 1>> sums = SumPerTensor<1>([&](const Segment& s) {
    return std::array<double, 1>{
        SumOfSquares(tensors[s.tensor].grad.data() + s.begin, s.end - s.begin)};
  });
  std::vector<double> coefficients(tensors.size());
  if (options_.norm == NormalizedGdOptions::Norm::kPerTensor) {
    for (size_t t = 0; t < tensors.size(); ++t) {
      coefficients[t] = Coefficient(lr, std::sqrt(sums[t][0]));
    }
  } else {
    double sum_of_squares = 0.0;
    for (const std::array<double, 1>& sum : sums) sum_of_squares += sum[0];
    coefficients.assign(tensors.size(), Coefficient(lr, std::sqrt(sum_of_squares)));
  }
  UpdateSegments([&](const Segment& s) -> int64_t {
    const double coef = coefficients[s.tensor];
    if (coef == 0.0) return 0;  // no update: the parameters are not written
    float* p = tensors[s.tensor].param.data() + s.begin;
    const float* g = tensors[s.tensor].grad.data() + s.begin;
    // A tiny norm with a tiny eps can make coef overflow a float (inf * g); a huge norm can make
    // it subnormal. Both are rare, so keep the double path out of the common loop.
    if (!FitsFloat(coef)) return ScaledSubtractDouble(p, g, s.end - s.begin, coef);
    return ScaledSubtract(p, g, s.end - s.begin, static_cast<float>(coef));
  });
}

double NormalizedGd::Coefficient(double lr, double norm) const {
  // g == 0: no update. Without this guard eps = 0 would give 0 * (lr / 0) = NaN.
  if (norm == 0.0) return 0.0;
  const double denominator = options_.guard == NormalizedGdOptions::Guard::kAddEps
                                 ? norm + options_.eps
                                 : std::max(norm, options_.eps);
  return lr / denominator;
}

}  // namespace optd
