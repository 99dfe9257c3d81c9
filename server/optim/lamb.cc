#include "server/optim/lamb.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"

namespace optd {
namespace {

using optim_internal::DispatchBool;
using optim_internal::FitsFloat;
using optim_internal::IsNonFinite;
using optim_internal::NonFiniteCount;
using optim_internal::SumOfSquares;

// Pass 1 works on tiles this long: u goes to a stack buffer for the norm, then is dropped.
constexpr int64_t kTile = 256;

// The float32 coefficients of one step of one tensor, computed in double and rounded once.
struct LambCoefficients {
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float inv_bias_correction1;  // 1 / (1 - beta1^t)
  float inv_bias_correction2;  // 1 / (1 - beta2^t)
  float eps;
  float weight_decay;
};

// u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p. Both passes call this, so they agree on u.
template <bool kWeightDecay>
inline float Direction(float m, float v, float p, const LambCoefficients& c) {
  float u = (m * c.inv_bias_correction1) / (std::sqrt(v * c.inv_bias_correction2) + c.eps);
  if constexpr (kWeightDecay) u += c.weight_decay * p;
  return u;
}

// Pass 1 on one tile: updates m and v and writes u.
template <bool kWeightDecay>
void MomentsTile(const float* __restrict p, const float* __restrict g, float* __restrict m,
                 float* __restrict v, float* __restrict u, int64_t n, const LambCoefficients& c) {
  const float beta1 = c.beta1;
  const float one_minus_beta1 = c.one_minus_beta1;
  const float beta2 = c.beta2;
  const float one_minus_beta2 = c.one_minus_beta2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = beta1 * m[i] + one_minus_beta1 * gi;
    const float vi = beta2 * v[i] + (one_minus_beta2 * gi) * gi;
    m[i] = mi;
    v[i] = vi;
    u[i] = Direction<kWeightDecay>(mi, vi, p[i], c);
  }
}

// Pass 1 on one segment: returns {||p||^2, ||u||^2} of the segment.
template <bool kWeightDecay>
OPTD_SIMD_CLONES std::array<double, 2> Moments(const float* p, const float* g, float* m, float* v,
                                               int64_t n, const LambCoefficients& c) {
  std::array<double, 2> sums = {0.0, 0.0};
  float u[kTile];
  for (int64_t begin = 0; begin < n; begin += kTile) {
    const int64_t len = std::min(kTile, n - begin);
    MomentsTile<kWeightDecay>(p + begin, g + begin, m + begin, v + begin, u, len, c);
    sums[0] += SumOfSquares(p + begin, len);
    sums[1] += SumOfSquares(u, len);
  }
  return sums;
}

// Pass 2: p += neg_step * u, with neg_step = -lr * trust in float, or in double when a float cannot
// hold it. Returns how many p it left non-finite.
template <bool kWeightDecay, typename Coefficient>
OPTD_SIMD_CLONES int64_t Update(float* __restrict p, const float* __restrict m,
                                const float* __restrict v, int64_t n, const LambCoefficients& c,
                                Coefficient neg_step) {
  const LambCoefficients local = c;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i];
    const float u = Direction<kWeightDecay>(m[i], v[i], pi, local);
    const float p_new = static_cast<float>(pi + neg_step * u);
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Lamb::Lamb(const LambOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options), state_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Lamb::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {&s.step, {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}}, {}};
}

int64_t Lamb::StateBytesPerElement() const { return static_cast<int64_t>(2 * sizeof(float)); }

void Lamb::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  LambCoefficients c = {};
  c.beta1 = static_cast<float>(options_.beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - options_.beta1);
  c.beta2 = static_cast<float>(options_.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - options_.beta2);
  c.eps = static_cast<float>(options_.eps);
  c.weight_decay = static_cast<float>(options_.weight_decay);
  const bool has_weight_decay = options_.weight_decay != 0.0;

  // State and the per-tensor coefficients are set up before the passes, which run on the pool.
  std::vector<LambCoefficients> coefficients(tensors.size(), c);
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (s.step == 0) {
      const size_t n = tensors[t].param.size();
      s.exp_avg.assign(n, 0.0f);
      s.exp_avg_sq.assign(n, 0.0f);
    }
    ++s.step;
    const double step = static_cast<double>(s.step);
    coefficients[t].inv_bias_correction1 =
        static_cast<float>(1.0 / (1.0 - std::pow(options_.beta1, step)));
    coefficients[t].inv_bias_correction2 =
        static_cast<float>(1.0 / (1.0 - std::pow(options_.beta2, step)));
  }

  // Pass 1: the moments, and ||p||^2 and ||u||^2 per tensor.
  const std::vector<std::array<double, 2>> norms = SumPerTensor<2>([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    const float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    float* m = s.exp_avg.data() + seg.begin;
    float* v = s.exp_avg_sq.data() + seg.begin;
    const int64_t n = seg.end - seg.begin;
    return has_weight_decay ? Moments<true>(p, g, m, v, n, coefficients[seg.tensor])
                            : Moments<false>(p, g, m, v, n, coefficients[seg.tensor]);
  });

  // lr * trust per tensor, in double.
  std::vector<double> steps(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    const double param_norm = std::sqrt(norms[t][0]);
    const double update_norm = std::sqrt(norms[t][1]);
    const double trust = param_norm > 0.0 && update_norm > 0.0 ? param_norm / update_norm : 1.0;
    steps[t] = lr * trust;
  }

  // Pass 2: p -= lr * trust * u.
  UpdateSegments([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* m = s.exp_avg.data() + seg.begin;
    const float* v = s.exp_avg_sq.data() + seg.begin;
    const int64_t n = seg.end - seg.begin;
    const double step = steps[seg.tensor];
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      constexpr bool kWeightDecay = decltype(kWd)::value;
      if (FitsFloat(step)) {
        return Update<kWeightDecay>(p, m, v, n, coefficients[seg.tensor],
                                    static_cast<float>(-step));
      }
      return Update<kWeightDecay>(p, m, v, n, coefficients[seg.tensor], -step);
    });
  });
}

}  // namespace optd
