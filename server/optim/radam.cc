#include "server/optim/radam.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"

namespace optd {
namespace {

using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::NonFiniteCount;

// The float32 coefficients of one step of one tensor, computed in double and rounded once.
struct RadamCoefficients {
  float weight_decay;
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float eps;
  bool rectified;  // rho_t > 5
  float neg_step;  // rectified: -lr * rect * sqrt(bc2) / bc1; else -lr / bc1
};

// One fused pass: the moments in torch's op order (mul_ then add_ / addcmul_), then the update
// with torch's scalars folded into one coefficient. Returns how many p it left non-finite.
template <bool kWeightDecay, bool kRectified>
OPTD_SIMD_CLONES int64_t RadamKernel(float* __restrict p, const float* __restrict g,
                                     float* __restrict m, float* __restrict v, int64_t n,
                                     const RadamCoefficients& c) {
  const float weight_decay = c.weight_decay;
  const float beta1 = c.beta1;
  const float one_minus_beta1 = c.one_minus_beta1;
  const float beta2 = c.beta2;
  const float one_minus_beta2 = c.one_minus_beta2;
  const float eps = c.eps;
  const float neg_step = c.neg_step;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i];
    float d = g[i];
    if constexpr (kWeightDecay) d += weight_decay * pi;
    const float mi = beta1 * m[i] + one_minus_beta1 * d;
    const float vi = beta2 * v[i] + (one_minus_beta2 * d) * d;
    m[i] = mi;
    v[i] = vi;
    float p_new;
    if constexpr (kRectified) {
      p_new = pi + (neg_step * mi) / (std::sqrt(vi) + eps);
    } else {
      p_new = pi + neg_step * mi;
    }
    p[i] = p_new;
    non_finite += IsNonFinite(p_new);
  }
  return non_finite;
}

}  // namespace

Radam::Radam(const RadamOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options), state_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Radam::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {&s.step, {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}}, {}};
}

int64_t Radam::StateBytesPerElement() const { return static_cast<int64_t>(2 * sizeof(float)); }

void Radam::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const double beta1 = options_.beta1;
  const double beta2 = options_.beta2;
  RadamCoefficients c = {};
  c.weight_decay = static_cast<float>(options_.weight_decay);
  c.beta1 = static_cast<float>(beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.eps = static_cast<float>(options_.eps);
  const bool has_weight_decay = options_.weight_decay != 0.0;
  // The maximum length of the approximated simple moving average.
  const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;

  // State and the per-tensor coefficients are set up before the loop, which runs on the pool.
  std::vector<RadamCoefficients> coefficients(tensors.size(), c);
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (s.step == 0) {
      const size_t n = tensors[t].param.size();
      s.exp_avg.assign(n, 0.0f);
      s.exp_avg_sq.assign(n, 0.0f);
    }
    ++s.step;
    const double step = static_cast<double>(s.step);
    const double bias_correction1 = 1.0 - std::pow(beta1, step);
    const double bias_correction2 = 1.0 - std::pow(beta2, step);
    const double rho_t = rho_inf - 2.0 * step * std::pow(beta2, step) / bias_correction2;
    RadamCoefficients& ct = coefficients[t];
    ct.rectified = rho_t > 5.0;
    if (ct.rectified) {
      const double rect = std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                    ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
      ct.neg_step =
          static_cast<float>(-(lr * rect * std::sqrt(bias_correction2) / bias_correction1));
    } else {
      ct.neg_step = static_cast<float>(-(lr / bias_correction1));
    }
  }

  UpdateSegments([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    const RadamCoefficients& ct = coefficients[seg.tensor];
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return DispatchBool(ct.rectified, [&](auto kRectified) {
        return RadamKernel<decltype(kWd)::value, decltype(kRectified)::value>(
            p, g, s.exp_avg.data() + seg.begin, s.exp_avg_sq.data() + seg.begin,
            seg.end - seg.begin, ct);
      });
    });
  });
}

}  // namespace optd
