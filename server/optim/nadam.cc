#include "server/optim/nadam.h"

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
struct NadamCoefficients {
  float weight_decay;
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float bias_correction2;  // 1 - beta2^t
  float eps;
  float neg_grad_step;      // -lr * (1 - mu) / (1 - mu_product)
  float neg_momentum_step;  // -lr * mu_next / (1 - mu_product_next)
};

// One fused pass, in torch's op order (mul_ then add_, mul_ then addcmul_,
// div(bc2).sqrt().add_(eps), then two addcdiv_ into p, each rounded). Returns how many p it left
// non-finite.
template <bool kWeightDecay>
OPTD_SIMD_CLONES int64_t NadamKernel(float* __restrict p, const float* __restrict g,
                                     float* __restrict m, float* __restrict v, int64_t n,
                                     const NadamCoefficients& c) {
  const float weight_decay = c.weight_decay;
  const float beta1 = c.beta1;
  const float one_minus_beta1 = c.one_minus_beta1;
  const float beta2 = c.beta2;
  const float one_minus_beta2 = c.one_minus_beta2;
  const float bc2 = c.bias_correction2;
  const float eps = c.eps;
  const float neg_grad_step = c.neg_grad_step;
  const float neg_momentum_step = c.neg_momentum_step;
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    float d = g[i];
    if constexpr (kWeightDecay) d += weight_decay * pi;
    const float mi = beta1 * m[i] + one_minus_beta1 * d;
    const float vi = beta2 * v[i] + (one_minus_beta2 * d) * d;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi / bc2) + eps;
    pi += (neg_grad_step * d) / denom;
    pi += (neg_momentum_step * mi) / denom;
    p[i] = pi;
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

}  // namespace

Nadam::Nadam(const NadamOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)), options_(options), state_(this->tensor_sizes().size()) {}

Optimizer::StateRefs Nadam::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {&s.step,
          {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}},
          {{"mu_product", &s.mu_product}}};
}

int64_t Nadam::StateBytesPerElement() const { return static_cast<int64_t>(2 * sizeof(float)); }

void Nadam::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const double beta1 = options_.beta1;
  const double beta2 = options_.beta2;
  const double momentum_decay = options_.momentum_decay;
  NadamCoefficients c = {};
  c.weight_decay = static_cast<float>(options_.weight_decay);
  c.beta1 = static_cast<float>(beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.eps = static_cast<float>(options_.eps);
  const bool has_weight_decay = options_.weight_decay != 0.0;

  // State and the per-tensor coefficients are set up before the loop, which runs on the pool.
  std::vector<NadamCoefficients> coefficients(tensors.size(), c);
  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (s.step == 0) {
      const size_t n = tensors[t].param.size();
      s.exp_avg.assign(n, 0.0f);
      s.exp_avg_sq.assign(n, 0.0f);
    }
    ++s.step;
    const double step = static_cast<double>(s.step);
    const double mu = beta1 * (1.0 - 0.5 * std::pow(0.96, step * momentum_decay));
    const double mu_next = beta1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * momentum_decay));
    // float32 arithmetic, as torch's float32 mu_product tensor times a Python float.
    s.mu_product = s.mu_product * static_cast<float>(mu);
    const float mu_product_next =
        (s.mu_product * static_cast<float>(mu)) * static_cast<float>(mu_next);
    NadamCoefficients& ct = coefficients[t];
    ct.bias_correction2 = static_cast<float>(1.0 - std::pow(beta2, step));
    ct.neg_grad_step =
        static_cast<float>(-lr * (1.0 - mu) / (1.0 - static_cast<double>(s.mu_product)));
    ct.neg_momentum_step =
        static_cast<float>(-lr * mu_next / (1.0 - static_cast<double>(mu_product_next)));
  }

  UpdateSegments([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    float* p = tensors[seg.tensor].param.data() + seg.begin;
    const float* g = tensors[seg.tensor].grad.data() + seg.begin;
    return DispatchBool(has_weight_decay, [&](auto kWd) {
      return NadamKernel<decltype(kWd)::value>(p, g, s.exp_avg.data() + seg.begin,
                                               s.exp_avg_sq.data() + seg.begin, seg.end - seg.begin,
                                               coefficients[seg.tensor]);
    });
  });
}

}  // namespace optd
