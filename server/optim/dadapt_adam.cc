#include "server/optim/dadapt_adam.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "server/optim/kernel_internal.h"
#include "server/optim/lr_free_internal.h"

namespace optd {
namespace {

using optim_internal::AddCdiv;
using optim_internal::AddCmul;
using optim_internal::AddScaled;
using optim_internal::DispatchBool;
using optim_internal::IsNonFinite;
using optim_internal::MulAdd;
using optim_internal::NonFiniteCount;

struct Coefficients {
  float coupled_wd;  // 0 unless coupled
  float eps;
  float beta1;
  float m_scale;  // r dlr (1 - beta1)
  float beta2;
  float one_minus_beta2;
  float sqrt_beta2;
  float s_scale;  // dlr (1 - sqrt(beta2))
  float decay;    // -wd * dlr, decoupled
};

// Phase 1 on n elements: returns {<g, s / (sqrt(v) + eps)> with the old s and v, ||s_new||_1}.
// kCoupled: coupled_wd != 0 (else p is not read).
template <bool kCoupled>
OPTD_FMA_CLONES std::array<double, 2> Accumulate(const float* __restrict p,
                                                 const float* __restrict g, float* __restrict m,
                                                 float* __restrict v, float* __restrict s,
                                                 int64_t n, const Coefficients c) {
  return optim_internal::LaneSums<2>(n, [&](int64_t i) {
    const float gi = kCoupled ? AddScaled(g[i], p[i], c.coupled_wd) : g[i];
    const float denom = std::sqrt(v[i]) + c.eps;
    const double term = static_cast<double>(gi) * static_cast<double>(s[i] / denom);
    m[i] = MulAdd(m[i], c.beta1, gi, c.m_scale);
    v[i] = AddCmul(c.beta2 * v[i], gi, gi, c.one_minus_beta2);
    const float si = MulAdd(s[i], c.sqrt_beta2, gi, c.s_scale);
    s[i] = si;
    return std::array<double, 2>{term, std::abs(static_cast<double>(si))};
  });
}

// Phase 2: moves p. kDecay: decay != 0. Returns how many p it left non-finite.
template <bool kDecay>
OPTD_FMA_CLONES int64_t Finish(float* __restrict p, const float* __restrict m,
                               const float* __restrict v, int64_t n, const Coefficients c) {
  NonFiniteCount non_finite = 0;
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    const float denom = std::sqrt(v[i]) + c.eps;
    if constexpr (kDecay) pi = AddScaled(pi, pi, c.decay);
    pi = AddCdiv(pi, m[i], denom, -1.0f);
    p[i] = pi;
    non_finite += IsNonFinite(pi);
  }
  return non_finite;
}

}  // namespace

DAdaptAdam::DAdaptAdam(const DAdaptAdamOptions& options, std::vector<int64_t> tensor_sizes)
    : Optimizer(std::move(tensor_sizes)),
      options_(options),
      state_(this->tensor_sizes().size()),
      d_(options.d0) {}

absl::Status DAdaptAdam::PartialSteps() const {
  return optim_internal::RefusesPartialSteps("dadapt_adam",
                                             "its estimate of d sums every tensor's s each step");
}

absl::StatusOr<RowSparseRule> DAdaptAdam::RowSparse() const {
  return optim_internal::NeedsDenseGradients("dadapt_adam", "the estimate of d");
}

std::vector<std::pair<std::string, double>> DAdaptAdam::Estimates() const {
  return {{"d", d_}, {"effective_lr", d_ * options_.lr}};
}

Optimizer::StateRefs DAdaptAdam::StateOf(size_t tensor) {
  TensorState& s = state_[tensor];
  return {nullptr, {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}, {"s", &s.s}}, {}};
}

std::vector<std::pair<std::string_view, double*>> DAdaptAdam::GlobalScalars() {
  return {{"d", &d_}, {"numerator_weighted", &numerator_weighted_}, {"k", &k_}};
}

void DAdaptAdam::StepImpl(absl::Span<const TensorGrad> tensors, double lr) {
  const DAdaptAdamOptions& o = options_;
  const double bias_correction =
      o.use_bias_correction
          ? std::sqrt(1.0 - std::pow(o.beta2, k_ + 1)) / (1.0 - std::pow(o.beta1, k_ + 1))
          : 1.0;
  const double d = d_;
  const double dlr = d * lr * bias_correction;
  const double sqrt_beta2 = std::sqrt(o.beta2);
  const double r = o.layer_scale;

  for (size_t t = 0; t < tensors.size(); ++t) {
    TensorState& s = state_[t];
    if (!s.s.empty()) continue;
    const size_t n = static_cast<size_t>(tensor_sizes()[t]);
    s.exp_avg.assign(n, 0.0f);
    s.exp_avg_sq.assign(n, 0.0f);
    s.s.assign(n, 0.0f);
  }
  if (lr <= 0.0) return;  // upstream skips a group with lr 0, and then l1 is 0

  Coefficients c = {};
  c.coupled_wd = o.decouple ? 0.0f : static_cast<float>(o.weight_decay);
  c.eps = static_cast<float>(o.eps);
  c.beta1 = static_cast<float>(o.beta1);
  c.m_scale = static_cast<float>(r * dlr * (1.0 - o.beta1));
  c.beta2 = static_cast<float>(o.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
  c.sqrt_beta2 = static_cast<float>(sqrt_beta2);
  c.s_scale = static_cast<float>(dlr * (1.0 - sqrt_beta2));
  c.decay = o.decouple ? static_cast<float>(-o.weight_decay * dlr) : 0.0f;

  const std::array<double, 2> sums = SumOverModel<2>([&](const Segment& seg) {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    return DispatchBool(c.coupled_wd != 0.0f, [&](auto kCoupled) {
      return Accumulate<decltype(kCoupled)::value>(
          tensors[seg.tensor].param.data() + b, tensors[seg.tensor].grad.data() + b,
          s.exp_avg.data() + b, s.exp_avg_sq.data() + b, s.s.data() + b, seg.end - b, c);
    });
  });
  const double numerator_acc = r * dlr * sums[0];
  const double l1 = r * sums[1];
  if (l1 == 0.0) return;  // every gradient was zero: d, k and p stay, as upstream

  numerator_weighted_ = sqrt_beta2 * numerator_weighted_ + (1.0 - sqrt_beta2) * numerator_acc;
  const double d_hat = numerator_weighted_ / ((1.0 - sqrt_beta2) * l1);
  d_ = std::max(d, std::min(d_hat, d * o.growth_rate));

  UpdateSegments([&](const Segment& seg) -> int64_t {
    TensorState& s = state_[seg.tensor];
    const int64_t b = seg.begin;
    return DispatchBool(c.decay != 0.0f, [&](auto kDecay) {
      return Finish<decltype(kDecay)::value>(tensors[seg.tensor].param.data() + b,
                                             s.exp_avg.data() + b, s.exp_avg_sq.data() + b,
                                             seg.end - b, c);
    });
  });
  k_ += 1.0;
}

}  // namespace optd
